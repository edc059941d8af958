# What every managed host's VM shares (nixprox options only, like hosts/<name>/nixprox.nix).
{ lib, ... }:

{
  nixprox.enable = true;
  # Who may log in to the bootstrap system (cloud-init `sshkeys`, as root): the public half of
  # the key nixprox and nixos-anywhere use on the runner. modules/common.nix lets the same key
  # log in to the installed system as `deploy`.
  nixprox.bootstrap.sshKeys = [ (lib.fileContents ../secrets/nixprox-ssh-key.pub) ];
  # Once NixOS is installed, nixprox logs in as `deploy` (not root) and runs what needs root
  # through `sudo -n` (docs/security.md, "A login user other than root"); modules/common.nix
  # creates the user and its passwordless sudo. A default: an adopted host logs in as root
  # until its first switch has created the user (hosts/media/nixprox.nix).
  nixprox.ssh.user = lib.mkDefault "deploy";
}
