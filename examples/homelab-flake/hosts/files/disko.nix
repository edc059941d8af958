# The disks of `files` and the boot loader that goes with them: a GPT system disk with an EFI
# system partition (OVMF boots from it, ./nixprox.nix) and a data disk, each found by the
# serial its `nixprox.vm.disks.<slot>.serial` gives it.
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
        ESP = {
          size = "512M";
          type = "EF00";
          content = {
            type = "filesystem";
            format = "vfat";
            mountpoint = "/boot";
            mountOptions = [ "umask=0077" ];
          };
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
  disko.devices.disk.data = {
    type = "disk";
    device = byId config.nixprox.vm.disks.scsi1.serial;
    content = {
      type = "gpt";
      partitions.data = {
        size = "100%";
        content = {
          type = "filesystem";
          format = "ext4";
          mountpoint = "/srv/files";
        };
      };
    };
  };

  # GRUB for EFI (modules/common.nix enables GRUB on every host), installed on the ESP alone:
  # no BIOS boot partition, so no disk device. OVMF keeps its EFI variables on the VM's EFI
  # disk, so GRUB may register itself there.
  boot.loader.grub = {
    efiSupport = true;
    device = "nodev";
  };
  boot.loader.efi.canTouchEfiVariables = true;
}
