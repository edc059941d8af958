# `db`: the system disk, and PostgreSQL's data on scsi1, also found by its serial.
{ config, ... }:

{
  imports = [ ../../modules/root-disk.nix ];

  disko.devices.disk.data = {
    type = "disk";
    device = "/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_${config.nixprox.vm.disks.scsi1.serial}";
    content = {
      type = "gpt";
      partitions.data = {
        size = "100%";
        content = {
          type = "filesystem";
          format = "xfs";
          mountpoint = "/var/lib/postgresql";
        };
      };
    };
  };
}
