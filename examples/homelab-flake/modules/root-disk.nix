# The system disk every host has: `nixprox.vm.disks.scsi0`, found by its serial (a SCSI disk
# with serial `root` is /dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_root in the guest), so the
# layout never depends on the order the kernel finds disks in.
{ config, ... }:

{
  disko.devices.disk.root = {
    type = "disk";
    device = "/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_${config.nixprox.vm.disks.scsi0.serial}";
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
