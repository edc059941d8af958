# `db`: the system on scsi0, PostgreSQL's data on scsi1, each found by its serial.
{ config, ... }:

let
  byId = serial: "/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_${serial}";
  disks = config.nixprox.vm.disks;
in
{
  disko.devices.disk = {
    root = {
      type = "disk";
      device = byId disks.scsi0.serial;
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
    data = {
      type = "disk";
      device = byId disks.scsi1.serial;
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
  };
}
