# `db`: the system disk, and PostgreSQL's data in a ZFS pool on scsi1, also found by its
# serial (a dataset with PostgreSQL's page size as its record size, compressed).
{ config, ... }:

{
  imports = [ ../../modules/root-disk.nix ];

  disko.devices.disk.data = {
    type = "disk";
    device = "/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_${config.nixprox.vm.disks.scsi1.serial}";
    content = {
      type = "gpt";
      partitions.zfs = {
        size = "100%";
        content = {
          type = "zfs";
          pool = "tank";
        };
      };
    };
  };
  disko.devices.zpool.tank = {
    type = "zpool";
    rootFsOptions = {
      compression = "zstd";
      mountpoint = "none";
    };
    datasets.postgres = {
      type = "zfs_fs";
      mountpoint = "/var/lib/postgresql";
      options.recordsize = "8k";
    };
  };
}
