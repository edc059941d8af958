# What every managed host's NixOS shares (./nixprox.nix is what its VM shares). The address, prefix and gateway are declared once, in
# hosts/<name>/nixprox.nix: nixprox gives them to the bootstrap system through cloud-init, and
# the installed system takes them from `config.nixprox` here.
{ config, lib, ... }:

let
  cfg = config.nixprox;
  static = cfg.network.prefixLength != null;
in
{
  # nixprox asks the guest agent for the address of DHCP hosts; Proxmox uses it for clean
  # shutdowns and for `fstrim` after a clone.
  services.qemuGuest.enable = true;

  services.openssh = {
    enable = true;
    settings.PasswordAuthentication = false;
    settings.PermitRootLogin = "prohibit-password";
  };
  # nixprox logs in as root with the runner's key, as the bootstrap system let it.
  users.users.root.openssh.authorizedKeys.keys = cfg.bootstrap.sshKeys;

  # One NIC (`net0`, `ens18` in the guest). A static host uses the address, prefix and gateway
  # from `nixprox`; a DHCP host identifies by MAC, so the lease stays the one the bootstrap
  # system had (docs/troubleshooting.md, "The address changed after kexec").
  networking.useDHCP = false;
  networking.useNetworkd = true;
  systemd.network.networks."10-lan" = {
    matchConfig.Name = "en*";
    address = lib.optional static "${cfg.address}/${toString cfg.network.prefixLength}";
    gateway = lib.optional (static && cfg.network.gateway != null) cfg.network.gateway;
    networkConfig.DHCP = if static then "no" else "ipv4";
    dhcpV4Config.ClientIdentifier = "mac";
  };
  networking.nameservers = lib.mkIf static [ "10.0.20.1" ];

  # agenix decrypts with the host's SSH key, which nixprox installs from
  # `nixprox.install.hostKeyFile` (hosts/<name>/nixprox.nix) before the first boot.
  age.identityPaths = [ "/etc/ssh/ssh_host_ed25519_key" ];

  boot.loader.grub.enable = true;
  nix.settings.experimental-features = [
    "nix-command"
    "flakes"
  ];
  system.stateVersion = "25.11";
}
