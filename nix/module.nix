# nixprox NixOS module: declares a host's Proxmox VM next to its NixOS system.
#
# Every option lives under `nixprox`. nixprox reads them with `nix eval` (see
# docs/configuration.md); nothing here changes the NixOS system itself (only
# assertions and, for image hosts, disko's image format default), so the module
# is safe to import on any host, enabled or not.
{ config, options, lib, ... }:

let
  inherit (lib) mkOption mkEnableOption types literalExpression literalMD;
  cfg = config.nixprox;
  image = cfg.bootstrap.image;

  # `bootstrap.ipConfig` from a static address declared once (`address` with
  # `network.prefixLength`): what cloud-init gives the bootstrap system, so nixos-anywhere
  # finds it at the address the flake names, before any NixOS runs.
  isIPv4 = a: builtins.match "[0-9]{1,3}(\\.[0-9]{1,3}){3}" a != null;
  isIPv6 = a: builtins.match "[0-9a-fA-F]*:[0-9a-fA-F:.]*" a != null;
  staticIpConfig =
    let
      inherit (cfg) address;
      inherit (cfg.network) prefixLength gateway;
      withGateway = key: lib.optionalString (gateway != null) ",${key}=${gateway}";
    in
    if address == null || prefixLength == null then
      "ip=dhcp"
    else if isIPv4 address then
      "ip=${address}/${toString prefixLength}${withGateway "gw"}"
    else if isIPv6 address then
      "ip6=${address}/${toString prefixLength}${withGateway "gw6"}"
    else
      throw "nixprox.network.prefixLength is set, but nixprox.address `${address}` is not an IP address: set nixprox.address to the host's static IP address, or leave nixprox.network.prefixLength null (DHCP)";

  # Proxmox VM names must be DNS names (PVE's `dns-name` format).
  dnsName = types.strMatching "[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?(\\.[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)*";

  # PVE's tag syntax (`pve-tag`), case-insensitive.
  tag = types.strMatching "[a-zA-Z0-9_][a-zA-Z0-9_+.-]*";

  # Sizes the way Proxmox writes them: a number with an optional K, M, G or T suffix.
  size = types.strMatching "[0-9]+(\\.[0-9]+)?[KMGT]?";

  macAddress = types.strMatching "[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}";

  # `attrsOf` with a check on the attribute names, so `disks.sda` fails at
  # evaluation with the option path instead of reaching the Proxmox API.
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

  diskType = types.submodule {
    options = {
      storage = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "local-lvm";
        description = "Proxmox storage that holds the disk. `null` uses `defaults.storage` from nixprox.yaml.";
      };
      size = mkOption {
        type = size;
        example = "32G";
        description = ''
          Disk size as Proxmox writes it (`512M`, `20G`, `1T`; no suffix means bytes would be
          ambiguous, so a bare number is read as GiB). Disks only ever grow in place: a smaller
          size plans a `replace_vm`, which needs `allow_replace`.
        '';
      };
      serial = mkOption {
        type = types.nullOr (types.strMatching "[a-zA-Z0-9_-]{1,20}");
        default = null;
        description = "Disk serial exposed to the guest, so disko can address it as `/dev/disk/by-id/…-<serial>`.";
      };
      discard = mkOption {
        type = types.bool;
        default = false;
        description = "Pass TRIM/discard to the storage (`discard=on`).";
      };
      ssd = mkOption {
        type = types.bool;
        default = false;
        description = "Present the disk as an SSD to the guest (`ssd=1`; not for virtio disks).";
      };
      iothread = mkOption {
        type = types.bool;
        default = false;
        description = "Give the disk its own I/O thread (`iothread=1`; needs the virtio-scsi-single controller for SCSI disks).";
      };
    };
  };

  networkType = types.submodule {
    options = {
      bridge = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "vmbr0";
        description = "Bridge the NIC is attached to. `null` uses `defaults.bridge` from nixprox.yaml.";
      };
      vlan = mkOption {
        type = types.nullOr (types.ints.between 1 4094);
        default = null;
        description = "VLAN tag (`tag=`) on the bridge port; `null` for untagged.";
      };
      model = mkOption {
        type = types.enum [ "virtio" "e1000" "e1000e" "rtl8139" "vmxnet3" ];
        default = "virtio";
        description = "NIC model.";
      };
      macAddress = mkOption {
        type = types.nullOr macAddress;
        default = null;
        example = "BC:24:11:00:00:01";
        description = "Fixed MAC address. `null` lets Proxmox choose one at creation and keeps it afterwards.";
      };
      firewall = mkOption {
        type = types.bool;
        default = false;
        description = "Enable the Proxmox firewall on this NIC (`firewall=1`).";
      };
    };
  };
in
{
  # The container kind's options (`nixprox.container.*`): see ./container.nix.
  imports = [ ./container.nix ];

  options.nixprox = {
    enable = mkEnableOption "management of this host's Proxmox VM by nixprox";

    vm = {
      name = mkOption {
        type = types.nullOr dnsName;
        default = null;
        description = ''
          VM name in Proxmox. `null` uses `networking.hostName` when it is set explicitly, else the
          attribute name under `nixosConfigurations`. nixprox finds existing VMs by this name.
        '';
      };
      node = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "pve1";
        description = "Proxmox node the VM lives on. `null` uses `defaults.node` from nixprox.yaml.";
      };
      id = mkOption {
        type = types.nullOr (types.ints.between 100 999999999);
        default = null;
        description = "VMID. `null` lets Proxmox allocate the next free id when the VM is created.";
      };
      cores = mkOption {
        type = types.ints.between 1 512;
        default = 2;
        description = "CPU cores per socket.";
      };
      sockets = mkOption {
        type = types.ints.between 1 16;
        default = 1;
        description = "CPU sockets.";
      };
      cpuType = mkOption {
        type = types.str;
        default = "x86-64-v2-AES";
        example = "host";
        description = "QEMU CPU type (`cpu=`).";
      };
      memory = mkOption {
        type = types.ints.between 16 4194304;
        default = 2048;
        description = "Memory in MiB.";
      };
      balloon = mkOption {
        type = types.nullOr types.ints.unsigned;
        default = null;
        description = "Minimum balloon memory in MiB; `0` disables the balloon device; `null` keeps Proxmox's default.";
      };
      bios = mkOption {
        type = types.enum [ "seabios" "ovmf" ];
        default = "seabios";
        description = "Firmware. `ovmf` (UEFI) gets an EFI disk on the first disk's storage. Changing it plans a `replace_vm`.";
      };
      machine = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "q35";
        description = "QEMU machine type; `null` keeps Proxmox's default (i440fx).";
      };
      agent = mkOption {
        type = types.bool;
        default = true;
        description = "Enable the QEMU guest agent device. nixprox asks the agent for the address when `nixprox.address` is null.";
      };
      disks = mkOption {
        type = slots "(scsi|virtio|sata|ide)[0-9]+" "disks" diskType;
        default = {
          scsi0 = {
            size = "20G";
          };
        };
        example = literalExpression ''{ scsi0 = { size = "32G"; serial = "root"; discard = true; }; }'';
        description = "Disks by Proxmox slot (`scsi0`, `virtio0`, `sata0`, `ide0`, …).";
      };
      networks = mkOption {
        type = slots "net[0-9]+" "network interfaces" networkType;
        default = {
          net0 = { };
        };
        example = literalExpression ''{ net0 = { bridge = "vmbr0"; vlan = 20; }; }'';
        description = "Network interfaces by Proxmox slot (`net0`, `net1`, …).";
      };
      tags = mkOption {
        type = types.listOf tag;
        default = [ ];
        example = [ "web" "prod" ];
        description = "Proxmox tags, compared as a set. nixprox always adds its own `nixprox` tag.";
      };
      description = mkOption {
        type = types.str;
        default = "";
        description = "Notes shown in the Proxmox UI; nixprox keeps its metadata block below this text. An empty string leaves the VM's notes as they are.";
      };
      onBoot = mkOption {
        type = types.bool;
        default = true;
        description = "Start the VM when the node boots (`onboot`).";
      };
      protection = mkOption {
        type = types.bool;
        default = false;
        description = "Proxmox protection flag: a protected VM is never destroyed or replaced by nixprox.";
      };
      pool = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "Resource pool the VM belongs to.";
      };
      keep = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Let go of this host's VM without destroying it: the plan shows `release`, which removes
          the VM's `nixprox` tag and metadata block and leaves the VM, its disks and the rest of
          its notes as they are. From then on nixprox never creates, adopts or changes a VM for
          this host. (`nixprox forget HOST` does the same at once, without a plan.)
        '';
      };
    };

    bootstrap = {
      template = mkOption {
        type = types.nullOr (types.either types.ints.positive types.str);
        default = null;
        example = "nixos-bootstrap";
        description = ''
          Cloud-init template (name or VMID) that new VMs are fully cloned from. It only has to boot
          something nixos-anywhere can reach over SSH. `null` uses `defaults.template` from
          nixprox.yaml unless `iso` is set.
        '';
      };
      iso = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "local:iso/nixos-minimal.iso";
        description = "Instead of a template: create the VM from scratch and boot this ISO volume.";
      };
      user = mkOption {
        type = types.str;
        default = "root";
        description = "Cloud-init user (`ciuser`) that nixos-anywhere logs in as for the install.";
      };
      sshKeys = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "Public keys cloud-init authorizes for `user` (`sshkeys`).";
      };
      ipConfig = mkOption {
        type = types.str;
        default = staticIpConfig;
        defaultText = literalMD "`ip=<address>/<prefixLength>,gw=<gateway>` (`ip6=…,gw6=…` for IPv6) when `nixprox.address` is an IP address and `nixprox.network.prefixLength` is set, else `ip=dhcp`";
        example = "ip=10.0.0.5/24,gw=10.0.0.1";
        description = ''
          Cloud-init network config of the first NIC (`ipconfig0`) for the bootstrap system.
          Derived from the static address when there is one, so the address is declared once.
        '';
      };
      image = {
        enable = mkEnableOption ''
          booting new VMs straight from disk images of this host, built from the flake and
          imported through the Proxmox API (instead of a template or ISO and nixos-anywhere;
          needs Proxmox VE 8.4 or later). Excludes `bootstrap.template` and `bootstrap.iso`'';
        package = mkOption {
          type = types.nullOr types.package;
          default = config.system.build.diskoImages or null;
          defaultText = literalExpression "config.system.build.diskoImages (when disko is imported), else null";
          description = ''
            Derivation whose output holds one image per disk, named after the disk slot
            (`scsi0.qcow2`, `virtio1.raw`, …); a single image is used for a single declared disk
            whatever its name. disko's images are named after `disko.devices.disk.<name>.imageName`:
            set it to the slot. Only its store path is evaluated when planning; apply builds it.
          '';
        };
        format = mkOption {
          type = types.enum [ "qcow2" "raw" ];
          default = "qcow2";
          description = ''
            Format of the image files. With disko imported it is also disko's
            `imageBuilder.imageFormat` default. qcow2 uploads only the written blocks.
          '';
        };
        storage = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "local";
          description = ''
            File-based Proxmox storage with the `import` content type that the images are uploaded
            to. `null` uses `defaults.image_storage` from nixprox.yaml.
          '';
        };
      };
    };

    address = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "10.0.0.5";
      description = ''
        Address or DNS name nixprox uses to reach the host over SSH. `null` asks the QEMU guest
        agent and takes the first global unicast address of any non-loopback interface.
      '';
    };

    network = {
      prefixLength = mkOption {
        type = types.nullOr (types.ints.between 0 128);
        default = null;
        example = 24;
        description = ''
          Prefix length of the static `nixprox.address` (an IP address). With it, new VMs get
          that address through cloud-init (see `bootstrap.ipConfig`), and the host's NixOS
          networking can take address, prefix and gateway from `config.nixprox` so they are
          declared once. `null`: DHCP.
        '';
      };
      gateway = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "10.0.0.1";
        description = "Default gateway that goes with the static `nixprox.address` (`gw=` in `bootstrap.ipConfig`).";
      };
    };

    ssh = {
      user = mkOption {
        type = types.str;
        default = "root";
        description = "User nixprox and nixos-anywhere log in as once NixOS is installed.";
      };
      port = mkOption {
        type = types.port;
        default = 22;
        description = "SSH port.";
      };
      hostKey = mkOption {
        type = types.nullOr (
          types.strMatching "(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh.com|sk-ecdsa-sha2-nistp256@openssh.com) [A-Za-z0-9+/]+=*( .*)?"
        );
        default = null;
        example = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI… root@web";
        description = ''
          The host's SSH public host key, as one line of `/etc/ssh/ssh_host_ed25519_key.pub`
          (what agenix and sops-nix users already keep). nixprox verifies the host against it
          instead of the key in the VM's metadata block: to adopt a VM that already runs NixOS
          without trusting the network on first contact, and on every later connection. A VM
          nixprox installs then needs its private half in `install.hostKeyFile`. `null`: the key
          nixprox pinned when it installed the host, or, to adopt a VM, the key read through the
          QEMU guest agent.
        '';
      };
    };

    install = {
      buildOn = mkOption {
        type = types.enum [ "auto" "local" "remote" ];
        default = "auto";
        description = "Where nixos-anywhere builds the system (`--build-on`).";
      };
      extraFiles = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = ''
          Directory on the runner whose contents are copied to the new system's root
          (`--extra-files`). A string, not a Nix path, so secrets never enter the Nix store.
        '';
      };
      kexecImage = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "Local path or URL of the kexec tarball (`--kexec`), for VMs without internet access.";
      };
      diskEncryptionKeys = mkOption {
        type = types.attrsOf (types.strMatching "(file|env):.+");
        default = { };
        example = literalExpression ''{ "/tmp/disk.key" = "env:DISK_KEY"; }'';
        description = ''
          Disk encryption keys for disko, by path on the target: `file:/path/on/runner` or
          `env:VARIABLE` (`--disk-encryption-keys`).
        '';
      };
      hostKeyFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = ''
          Private ed25519 host key (path on the runner) to install as
          `/etc/ssh/ssh_host_ed25519_key`, for sops-nix/agenix setups. `null`: nixprox generates one.
        '';
      };
    };

    deploy = {
      strategy = mkOption {
        type = types.enum [ "switch" "boot" "none" ];
        default = "switch";
        description = "`switch-to-configuration` action for new configurations; `none` never deploys after install.";
      };
      rollback = mkOption {
        type = types.bool;
        default = true;
        description = "Roll back to the previous generation when nixprox cannot confirm the switch in time.";
      };
      confirmTimeout = mkOption {
        type = types.ints.positive;
        default = 60;
        description = "Seconds a switched host waits for nixprox's confirmation before rolling back.";
      };
      allowFailedUnits = mkOption {
        type = types.bool;
        default = false;
        description = "Count a switch whose units partly failed (exit code 4) as a success.";
      };
      allowReboot = mkOption {
        type = types.bool;
        default = false;
        description = "Let apply reboot the VM, once, when a change only takes effect after a reboot: Proxmox pending changes, the memory restored after a kexec install, or a switch that changes the kernel, initrd, kernel modules or kernel parameters. Without it the report lists them as pending_reboot.";
      };
    };

    summary = {
      extra = mkOption {
        # Lazy: listing the names must not evaluate the values, so one that throws fails alone.
        type = types.lazyAttrsOf types.anything;
        default = { };
        example = literalExpression ''{ "grafana port" = config.services.grafana.settings.server.http_port; }'';
        description = ''
          Your own probes for the plan's NixOS changes: each value (any JSON-able value) is shown
          as before → after when it differs between the pull request's base and head. Every
          entry is evaluated on its own, so one that throws only says so. Not part of the VM.
        '';
      };
    };
  };

  # Only where the options exist: the module must also evaluate with plain `lib.evalModules`.
  config = lib.mkMerge [
    (lib.optionalAttrs (options ? assertions) {
      assertions = [
        {
          assertion = !(image.enable && (cfg.bootstrap.template != null || cfg.bootstrap.iso != null));
          message = "nixprox.bootstrap.image.enable excludes nixprox.bootstrap.template and nixprox.bootstrap.iso: keep one way to bootstrap the VM";
        }
        {
          assertion = !(image.enable && image.package == null);
          message = "nixprox.bootstrap.image.enable needs nixprox.bootstrap.image.package (or disko's module, whose system.build.diskoImages is the default)";
        }
      ];
    })
    (lib.optionalAttrs (lib.hasAttrByPath [ "disko" "imageBuilder" "imageFormat" ] options) {
      disko.imageBuilder.imageFormat = lib.mkIf image.enable (lib.mkDefault image.format);
    })
  ];
}
