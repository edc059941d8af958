# The VM of `db`: on the second node, with a data disk of its own.
{ config, ... }:

{
  nixprox.vm = {
    node = "pve2";
    cores = 4;
    memory = 8192;
    disks.scsi0 = {
      size = "32G";
      serial = "root";
      discard = true;
    };
    disks.scsi1 = {
      size = "100G";
      serial = "data";
      discard = true;
    };
    tags = [
      "db"
      "prod"
    ];
    # Never destroyed or replaced by nixprox, whatever the policies say.
    protection = true;
  };
  nixprox.address = "10.0.20.11";
  nixprox.network = {
    prefixLength = 24;
    gateway = "10.0.20.1";
  };
  nixprox.install.hostKeyFile = "/run/nixprox-runner/apply/host-key-${config.networking.hostName}";
}
