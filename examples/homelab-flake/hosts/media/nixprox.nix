# The VM of `media`: made before nixprox (cloned by Terraform, configured with
# `nixos-rebuild --flake .#media --target-host root@10.0.20.12`), and adopted in place: no
# reinstall, its disks and data stay. Its block is what `nixprox import 130` wrote
# (docs/migrate.md), unchanged: the first plan must show only `adopt` and `switch`.
{ ... }:

{
  nixprox.vm = {
    # The VM's id: the host is this VM, whatever its name says.
    id = 130;
    node = "pve1";
    cores = 4;
    memory = 4096;
    # The disk as Terraform made it: on `virtio0`, without a serial. nixprox never adds one
    # to an existing disk (it would be a change pending a reboot, and the guest mounts by
    # label: ./hardware-configuration.nix).
    disks.virtio0 = {
      size = "64G";
      discard = true;
    };
    tags = [ "media" ];
  };
  nixprox.address = "10.0.20.12";
  nixprox.network = {
    prefixLength = 24;
    gateway = "10.0.20.1";
  };
  # The host key is read through the QEMU guest agent when nixprox adopts it (it runs
  # `services.qemuGuest`); declare `nixprox.ssh.hostKey` instead if yours does not.
  #
  # `nixos-rebuild` logged in as root: so does nixprox until the first switch has created the
  # deploy user (modules/common.nix). A later pull request deletes this line: from then on
  # nixprox logs in as `deploy`, and nobody logs in as root (docs/migrate.md, "The deploy user").
  nixprox.ssh.user = "root";
}
