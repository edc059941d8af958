# What `nixos-generate-config` wrote on `media` when it was installed by hand: its own file
# systems, by label, not a disko layout. An adopted host keeps it; nixprox records its layout
# as not managed and never reinstalls it for its disks (docs/plan.md, "Adopting a running VM").
{ modulesPath, ... }:

{
  imports = [ (modulesPath + "/profiles/qemu-guest.nix") ];

  boot.initrd.availableKernelModules = [
    "ata_piix"
    "uhci_hcd"
    "virtio_pci"
    "virtio_blk"
    "sr_mod"
  ];
  boot.loader.grub.device = "/dev/vda";

  fileSystems."/" = {
    device = "/dev/disk/by-label/nixos";
    fsType = "ext4";
  };
  swapDevices = [ { device = "/dev/disk/by-label/swap"; } ];
}
