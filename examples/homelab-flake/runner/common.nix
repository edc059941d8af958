# What both runner machines share. They are not VMs nixprox manages (an apply must never
# switch the runner it runs on): deploy them with
# `nixos-rebuild switch --flake .#runner-apply --target-host root@runner-apply`.
{ config, ... }:

{
  # The machine's own hardware (`nixos-generate-config` on it).
  imports = [ ./hardware-configuration.nix ];

  age.secrets.forgejo-runner-token.file = ../secrets/forgejo-runner-token.age;

  services.openssh.enable = true;
  system.stateVersion = "25.11";
}
