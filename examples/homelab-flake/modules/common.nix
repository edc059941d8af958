# What every managed host's NixOS shares (./nixprox.nix is what its VM shares). The address,
# prefix and gateway are declared once, in hosts/<name>/nixprox.nix: nixprox gives them to the
# bootstrap system through cloud-init, and the installed system takes them from
# `config.nixprox` here. The same goes for the deploy user (`nixprox.ssh.user`) and its key.
{ config, lib, ... }:

let
  cfg = config.nixprox;
  static = cfg.network.prefixLength != null;
  # Who nixprox logs in as: the deploy user, or root on a host adopted from
  # `nixos-rebuild --target-host root@…` until a later pull request moves it to the deploy user.
  asRoot = cfg.ssh.user == "root";
  # The deploy user exists either way, so that move finds it there: created by the first
  # switch of an adopted host. Root is never a normal user (NixOS asserts a normal user's uid
  # is 1000 or above: nixos/modules/config/users-groups.nix).
  deployUser = if asRoot then "deploy" else cfg.ssh.user;
  # The plan runner's probe key (`drift --probe`, docs/ci.md): whatever it asks, it gets the
  # store path of the running system and nothing else.
  probeKey = ''command="/run/current-system/sw/bin/readlink /run/current-system",restrict ${lib.fileContents ../secrets/nixprox-probe-key.pub}'';
  sshKeys = cfg.bootstrap.sshKeys ++ [ probeKey ];
in
{
  # nixprox asks the guest agent for the address of DHCP hosts; Proxmox uses it for clean
  # shutdowns and for `fstrim` after a clone.
  services.qemuGuest.enable = true;

  services.openssh = {
    enable = true;
    settings.PasswordAuthentication = false;
    # Nobody logs in as root once nixprox uses the deploy user below; while it logs in as root
    # (an adopted host), root logs in with its key only. "no" there would lock nixprox out:
    # the switch's confirmation over a new SSH connection would fail and roll it back.
    settings.PermitRootLogin = if asRoot then "prohibit-password" else "no";
  };
  users.users.root.openssh.authorizedKeys.keys = lib.mkIf asRoot sshKeys;

  # The deploy user (`nixprox.ssh.user`, modules/nixprox.nix) with the runner's key, the same
  # one the bootstrap system let in as root (and the probe key, restricted as above). Activating a system runs its code as root, so any
  # sudo rule that allows it is root-equivalent: the user gets passwordless sudo for everything
  # (`sudo -n`, never a prompt; docs/security.md).
  users.users.${deployUser} = {
    isNormalUser = true;
    openssh.authorizedKeys.keys = sshKeys;
  };
  security.sudo.extraRules = [
    {
      users = [ deployUser ];
      commands = [
        {
          command = "ALL";
          options = [ "NOPASSWD" ];
        }
      ];
    }
  ];

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
