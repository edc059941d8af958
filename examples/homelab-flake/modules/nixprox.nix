# What every managed host's VM shares (nixprox options only, like hosts/<name>/nixprox.nix).
{ ... }:

{
  nixprox.enable = true;
  # Who may log in to the bootstrap system (cloud-init `sshkeys`): the public half of the key
  # nixprox and nixos-anywhere use on the runner. modules/common.nix lets it log in to the
  # installed system too.
  nixprox.bootstrap.sshKeys = [ (builtins.readFile ../secrets/nixprox-ssh-key.pub) ];
}
