# The VM of `web` (nixprox options only: this is what `nixprox plan` reads).
{ config, ... }:

{
  nixprox.vm = {
    node = "pve1";
    cores = 2;
    memory = 2048;
    # The serial names the disk inside the guest: ./disko.nix finds it by it.
    disks.scsi0 = {
      size = "32G";
      serial = "root";
      discard = true;
      ssd = true;
    };
    tags = [ "web" ];
    description = "Reverse proxy and static sites.";
  };
  # The static address, declared once: SSH goes here, cloud-init configures it for the
  # bootstrap system, and modules/common.nix configures NixOS with it.
  nixprox.address = "10.0.20.10";
  nixprox.network = {
    prefixLength = 24;
    gateway = "10.0.20.1";
  };
  # The host key agenix decrypts with, kept on the runner (docs/guide.md, "Secrets").
  nixprox.install.hostKeyFile = "/run/nixprox-runner/apply/host-key-${config.networking.hostName}";
}
