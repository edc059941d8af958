# The disk layout of `web`, on the disk whose serial nixprox.vm.disks.scsi0.serial declares.
{ config, ... }:

let
  byId = serial: "/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_${serial}";
in
{
  disko.devices.disk.root = {
    type = "disk";
    device = byId config.nixprox.vm.disks.scsi0.serial;
    content = {
      type = "gpt";
      partitions = {
        boot = {
          size = "1M";
          type = "EF02";
        };
        root = {
          size = "100%";
          content = {
            type = "filesystem";
            format = "ext4";
            mountpoint = "/";
          };
        };
      };
    };
  };
}
