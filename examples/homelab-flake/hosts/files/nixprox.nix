# The VM of `files`: UEFI (OVMF) with the serial console, on the first node. Its disk layout
# has an EFI system partition and its boot loader is GRUB for EFI (./disko.nix): nixprox
# checks both at evaluation (docs/configuration.md, "NixOS for the declared VM").
{ ... }:

{
  nixprox.vm = {
    node = "pve1";
    bios = "ovmf";
    machine = "q35";
    cores = 2;
    memory = 2048;
    # `serial0: socket`: the Proxmox console's xterm.js; nixprox adds the kernel's
    # `console=ttyS0,115200` inside NixOS.
    serial = true;
    disks.scsi0 = {
      size = "32G";
      serial = "root";
      discard = true;
      ssd = true;
    };
    disks.scsi1 = {
      size = "200G";
      serial = "data";
      discard = true;
    };
    tags = [ "files" ];
    description = "Samba shares.";
  };
  nixprox.address = "10.0.20.13";
  nixprox.network = {
    prefixLength = 24;
    gateway = "10.0.20.1";
  };
}
