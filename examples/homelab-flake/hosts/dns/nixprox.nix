# The VM of `dns`: small, and on DHCP. Without a static address nixprox asks the QEMU guest
# agent for it, so the bootstrap template must run qemu-guest-agent (docs/guide.md).
{ ... }:

{
  nixprox.vm = {
    node = "pve1";
    cores = 1;
    # Less than the kexec installer needs: nixprox raises it to 1536 MiB for the install
    # and gives the VM its 1024 MiB back afterwards (docs/troubleshooting.md).
    memory = 1024;
    disks.scsi0 = {
      size = "8G";
      serial = "root";
    };
    tags = [ "dns" ];
  };
  # Let apply reboot it for changes that only take effect after a reboot (memory).
  nixprox.deploy.allowReboot = true;
}
