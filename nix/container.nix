# nixprox NixOS module, container kind: `nixprox.container.*` declares the host as a Proxmox
# container (LXC) instead of a QEMU VM. Imported by ./module.nix; like it, it changes nothing in
# the NixOS system itself.
#
# The options follow what `POST /nodes/{node}/lxc` and `PUT /nodes/{node}/lxc/{vmid}/config`
# take (pve-container `src/PVE/LXC/Config.pm`, `$confdesc`). What only `root@pam` may set through
# the API (bind and device mounts, hookscripts, features of a privileged container) has no
# option, or is refused when nixprox resolves the host (docs/configuration.md).
{ config, lib, ... }:

let
  inherit (lib) mkOption mkEnableOption types literalExpression;

  dnsName = types.strMatching "[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?(\\.[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)*";
  tag = types.strMatching "[a-zA-Z0-9_][a-zA-Z0-9_+.-]*";
  size = types.strMatching "[0-9]+(\\.[0-9]+)?[KMGT]?";
  macAddress = types.strMatching "[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}";

  slots = pattern: what: elemType:
    let
      base = types.attrsOf elemType;
    in
    base
    // {
      name = "nixproxSlots";
      description = "attribute set of ${what} keyed by Proxmox slot (${pattern})";
      check = v: base.check v && lib.all (n: builtins.match pattern n != null) (builtins.attrNames v);
    };

  storage = mkOption {
    type = types.nullOr types.str;
    default = null;
    example = "local-lvm";
    description = ''
      Proxmox storage that holds the volume. `null` uses `defaults.storage` from nixprox.yaml. A
      host path (`/srv/data`) would be a bind mount, which only `root@pam` may set: refused.
    '';
  };

  mountPointType = types.submodule {
    options = {
      inherit storage;
      size = mkOption {
        type = size;
        example = "16G";
        description = "Volume size as Proxmox writes it (a bare number is GiB). Volumes only grow in place.";
      };
      path = mkOption {
        type = types.strMatching "/.*";
        example = "/var/lib/data";
        description = "Where the volume is mounted inside the container (`mp=`).";
      };
      backup = mkOption {
        type = types.bool;
        default = false;
        description = "Include the volume in vzdump backups (`backup=1`).";
      };
    };
  };

  networkType = types.submodule (
    { name, ... }:
    {
      options = {
        name = mkOption {
          type = types.strMatching "[a-zA-Z0-9_.-]{1,15}";
          default = "eth" + lib.removePrefix "net" name;
          defaultText = literalExpression ''"eth<N>" for netN'';
          description = "Interface name inside the container (`name=`).";
        };
        bridge = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "vmbr0";
          description = "Bridge the interface is attached to. `null` uses `defaults.bridge` from nixprox.yaml.";
        };
        vlan = mkOption {
          type = types.nullOr (types.ints.between 1 4094);
          default = null;
          description = "VLAN tag (`tag=`); `null` for untagged.";
        };
        macAddress = mkOption {
          type = types.nullOr macAddress;
          default = null;
          description = "Fixed MAC address (`hwaddr=`). `null` lets Proxmox choose one at creation and keeps it.";
        };
        firewall = mkOption {
          type = types.bool;
          default = false;
          description = "Enable the Proxmox firewall on this interface (`firewall=1`).";
        };
      };
    }
  );
in
{
  options.nixprox.container = {
    enable = mkEnableOption ''
      the container kind: this host is a Proxmox container (LXC) made from a NixOS template,
      not a QEMU VM. `nixprox.vm.*` and `nixprox.bootstrap.*` are then not read'';

    hostname = mkOption {
      type = types.nullOr dnsName;
      default = null;
      description = ''
        Container name (`hostname`) in Proxmox. `null` uses `networking.hostName` when it is set
        explicitly, else the attribute name under `nixosConfigurations`.
      '';
    };
    node = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "Proxmox node the container lives on. `null` uses `defaults.node` from nixprox.yaml. Changing it moves the container (restarted when it runs: containers cannot migrate live).";
    };
    id = mkOption {
      type = types.nullOr (types.ints.between 100 999999999);
      default = null;
      description = "VMID. `null` lets Proxmox allocate the next free id when the container is created.";
    };
    template = mkOption {
      type = types.nullOr (types.strMatching "[a-zA-Z0-9][a-zA-Z0-9_.-]*:vztmpl/.+");
      default = null;
      example = "local:vztmpl/nixos-25.11-proxmox-lxc.tar.xz";
      description = ''
        Prebuilt NixOS container template (`ostemplate`) new containers are created from, e.g.
        nixpkgs' `proxmox-lxc` image. It must carry `/etc/ssh` so that Proxmox generates the
        container's host keys (and prints their fingerprints for nixprox to pin); nixprox then
        switches the new container to the host's system over SSH. `null`: nixprox cannot create
        the container (an existing one is still managed, adopted or switched).
      '';
    };
    tarball = {
      enable = mkEnableOption ''
        creating new containers from this host's own template: `package` (nixpkgs' `proxmox-lxc`
        `system.build.tarball`) is built on the runner and uploaded with content `vztmpl` to
        `storage`, named after its store hash (`nixprox-<hash>.tar.xz`), so hosts that share
        it share the upload; the container boots into the host's system, no switch from a
        generic template. Excludes `template`'';
      package = mkOption {
        type = types.nullOr types.package;
        default = config.system.build.tarball or null;
        defaultText = literalExpression "config.system.build.tarball (nixpkgs' proxmox-lxc image), else null";
        description = ''
          Derivation whose output holds the template as `tarball/*.tar.xz` (what nixpkgs'
          `make-system-tarball` writes). It must carry `/etc/ssh` (e.g. an empty directory in
          `contents`) so that Proxmox generates the host keys nixprox pins. Only its store path
          is evaluated when planning.
        '';
      };
      storage = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "local";
        description = "File-based storage with the `vztmpl` content type the template is uploaded to. `null` uses `defaults.image_storage` from nixprox.yaml.";
      };
    };
    sshKeys = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = ''
        Public keys Proxmox writes to root's `authorized_keys` when it creates the container
        (`ssh-public-keys`; create-only: never an update). nixprox's own key must be among them, or
        in the template, for the first switch.
      '';
    };
    cores = mkOption {
      type = types.nullOr (types.ints.between 1 8192);
      default = null;
      description = "CPU cores the container may use (`cores`); `null`: all of the node's.";
    };
    memory = mkOption {
      type = types.ints.between 16 4194304;
      default = 1024;
      description = "Memory in MiB (`memory`); changed on the running container.";
    };
    swap = mkOption {
      type = types.ints.unsigned;
      default = 512;
      description = "Swap in MiB (`swap`); changed on the running container.";
    };
    rootfs = {
      inherit storage;
      size = mkOption {
        type = size;
        default = "8G";
        description = "Root volume size (a bare number is GiB). It only grows in place; a smaller size, or another storage, is a `replace_vm`.";
      };
    };
    mountPoints = mkOption {
      type = slots "mp[0-9]+" "mount points" mountPointType;
      default = { };
      example = literalExpression ''{ mp0 = { size = "32G"; path = "/var/lib/postgresql"; }; }'';
      description = "Storage volumes mounted into the container, by slot (`mp0`, `mp1`, …). A new one is added to the running container.";
    };
    networks = mkOption {
      type = slots "net[0-9]+" "network interfaces" networkType;
      default = {
        net0 = { };
      };
      example = literalExpression ''{ net0 = { bridge = "vmbr0"; vlan = 20; }; }'';
      description = ''
        Network interfaces by slot (`net0`, …). `net0` gets its address from `nixprox.address`
        and `nixprox.network` (`ip=…/…,gw=…`, else `ip=dhcp`); Proxmox writes it into the
        container as systemd-networkd files.
      '';
    };
    features = {
      nesting = mkOption {
        type = types.bool;
        default = true;
        description = "`features: nesting=1`, which systemd in NixOS needs. Pending until the container restarts.";
      };
      keyctl = mkOption {
        type = types.bool;
        default = false;
        description = "`features: keyctl=1`. Only `root@pam` may change it: nixprox refuses a plan that would.";
      };
      fuse = mkOption {
        type = types.bool;
        default = false;
        description = "`features: fuse=1`. Only `root@pam` may change it: nixprox refuses a plan that would.";
      };
    };
    unprivileged = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Run the container with a user namespace (`unprivileged=1`). A privileged container needs
        `Sys.Modify` on `/`, and its features can only be set by `root@pam`: `false` requires all
        `features.*` off. Changing it is a `replace_vm`.
      '';
    };
    onBoot = mkOption {
      type = types.bool;
      default = true;
      description = "Start the container when the node boots (`onboot`).";
    };
    startup = mkOption {
      type = types.nullOr (types.strMatching "((order=[0-9]+|up=[0-9]+|down=[0-9]+)(,|$))+");
      default = null;
      example = "order=2,up=30";
      description = "Start and shutdown order (`startup`); `null` leaves it unset.";
    };
    tags = mkOption {
      type = types.listOf tag;
      default = [ ];
      description = "Proxmox tags, compared as a set. nixprox always adds its own `nixprox` tag.";
    };
    description = mkOption {
      type = types.str;
      default = "";
      description = "Notes shown in the Proxmox UI, above nixprox's metadata block. An empty string leaves them as they are.";
    };
    protection = mkOption {
      type = types.bool;
      default = false;
      description = "Proxmox protection flag: a protected container is never destroyed or replaced by nixprox.";
    };
    pool = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "Resource pool the container belongs to.";
    };
    keep = mkOption {
      type = types.bool;
      default = false;
      description = "Let go of this host's container without destroying it (`release`), as `nixprox.vm.keep` does for a VM.";
    };
  };
}
