# nixprox NixOS module: declares a host's Proxmox VM next to its NixOS system.
#
# Every option lives under `nixprox`. nixprox reads them with `nix eval` (see
# docs/configuration.md). On a host with `nixprox.enable`, `nixprox.hardware` configures
# NixOS for the declared VM (initrd modules, serial console, guest agent, boot checks; all
# overridable, `nixprox.hardware.enable = false` turns it off); otherwise nothing here changes
# the NixOS system (only assertions and, for image hosts, disko's image format default), so
# the module is safe to import on any host, enabled or not.
{ config, options, lib, ... }:

let
  inherit (lib) mkOption mkEnableOption types literalExpression literalMD;
  cfg = config.nixprox;
  image = cfg.bootstrap.image;
  # `nixprox.hardware` acts only on a host nixprox manages.
  derive = cfg.enable && cfg.hardware.enable;

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

  # The CPU flags Proxmox allows on a VM's own `cpu` line (qemu-server
  # PVE/QemuServer/CPUFlags.pm); others need a custom CPU model.
  cpuFlagList = [ "nested-virt" "md-clear" "pcid" "spec-ctrl" "ssbd" "ibpb" "virt-ssbd" "amd-ssbd" "amd-no-ssb" "pdpe1gb" "hv-tlbflush" "hv-evmcs" "aes" ];
  cpuFlagNames = lib.concatStringsSep "|" cpuFlagList;

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

  # A resource mapping's id (PVE's `pve-configid`).
  mappingId = types.strMatching "[a-zA-Z][a-zA-Z0-9_-]*";

  pciType = types.submodule {
    options = {
      mapping = mkOption {
        type = mappingId;
        example = "gpu";
        description = "The PCI resource mapping (`mapping=`); it must have a device on the VM's node.";
      };
      pcie = mkOption {
        type = types.bool;
        default = false;
        description = "Attach as PCI Express (`pcie=1`; needs `machine = \"q35\"`).";
      };
      rombar = mkOption {
        type = types.bool;
        default = true;
        description = "Map the device's ROM into the guest's memory (`rombar`).";
      };
      xVga = mkOption {
        type = types.bool;
        default = false;
        description = "Make it the VM's primary GPU (`x-vga=1`).";
      };
    };
  };

  virtiofsType = types.submodule {
    options = {
      mapping = mkOption {
        type = mappingId;
        example = "media";
        description = "The directory mapping (`dirid=`); also the tag NixOS mounts (`device`).";
      };
      cache = mkOption {
        type = types.enum [ "auto" "always" "metadata" "never" ];
        default = "auto";
        description = "virtiofsd's cache mode (`cache=`).";
      };
      directIo = mkOption {
        type = types.bool;
        default = false;
        description = "Honour the guest's O_DIRECT (`direct-io=1`).";
      };
      exposeAcl = mkOption {
        type = types.bool;
        default = false;
        description = "Expose POSIX ACLs (`expose-acl=1`; implies extended attributes).";
      };
      exposeXattr = mkOption {
        type = types.bool;
        default = false;
        description = "Expose extended attributes (`expose-xattr=1`).";
      };
    };
  };

  usbType = types.submodule {
    options = {
      mapping = mkOption {
        type = mappingId;
        example = "zigbee";
        description = "The USB resource mapping (`mapping=`); it must have a device on the VM's node.";
      };
      usb3 = mkOption {
        type = types.bool;
        default = false;
        description = "Attach to the USB 3 controller (`usb3=1`).";
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

  # What the declared VM needs inside NixOS (`nixprox.hardware`). NixOS's default initrd
  # (nixpkgs nixos/modules/system/boot/kernel.nix, `boot.initrd.includeDefaultModules`) has SATA,
  # IDE and USB drivers but no virtio one; nixpkgs' qemu-guest profile
  # (nixos/modules/profiles/qemu-guest.nix) adds all of them whatever the VM has. These are the
  # modules for the buses and NICs the VM declares: the disk controller nixprox creates VMs with
  # (`scsihw: virtio-scsi-single`, driver virtio_scsi) and the NIC models' drivers, so an initrd
  # with networking (remote unlock) finds its NIC too.
  diskBusModules = {
    scsi = [ "virtio_pci" "virtio_scsi" "sd_mod" ];
    virtio = [ "virtio_pci" "virtio_blk" ];
    sata = [ "ahci" "sd_mod" ];
    ide = [ "ata_piix" "sd_mod" ];
  };
  nicModules = {
    virtio = [ "virtio_pci" "virtio_net" ];
    e1000 = [ "e1000" ];
    e1000e = [ "e1000e" ];
    rtl8139 = [ "8139cp" "8139too" ];
    vmxnet3 = [ "vmxnet3" ];
  };
  busOf = slot: builtins.head (builtins.match "([a-z]+)[0-9]+" slot);
  derivedInitrdModules = lib.unique (
    lib.concatMap (slot: diskBusModules.${busOf slot}) (builtins.attrNames cfg.vm.disks)
    ++ lib.concatMap (net: nicModules.${net.model}) (builtins.attrValues cfg.vm.networks)
    ++ lib.optional (cfg.vm.virtiofs != { }) "virtiofs"
  );
  # The serial console's kernel parameters: the last `console=` is /dev/console (systemd starts
  # a getty on it); with the display on the serial port (`vga = "serial0"`) there is no tty0.
  derivedKernelParams = lib.optionals (cfg.vm.serial == true) (
    lib.optional (cfg.vm.vga != "serial0") "console=tty0" ++ [ "console=ttyS0,115200" ]
  );

  # The boot checks (`nixprox.hardware.checkBoot`), from what the host's NixOS declares. Read
  # with `or`, since a host may lack disko, lanzaboote or limine.
  efiMount = config.boot.loader.efi.efiSysMountPoint or "/boot";
  # disko's GPT partitions (`type = "EF00"`, or the ESP's GUID) formatted vfat: ESPs.
  espType = t: t == "EF00" || lib.toUpper t == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
  diskoEsps = lib.filter (p: espType (p.type or "") && (p.content.type or null) == "filesystem" && (p.content.format or null) == "vfat") (
    lib.concatMap (d: builtins.attrValues (d.content.partitions or { })) (builtins.attrValues (config.disko.devices.disk or { }))
  );
  mountedEsp =
    lib.any (p: (p.content.mountpoint or null) == efiMount) diskoEsps
    || ((config.fileSystems or { }) ? ${efiMount} && (config.fileSystems.${efiMount}.fsType or null) == "vfat");
  loader = config.boot.loader or { };
  efiLoader =
    (loader.systemd-boot.enable or false)
    || ((loader.grub.enable or false) && (loader.grub.efiSupport or false))
    || ((loader.limine.enable or false) && (loader.limine.efiSupport or false))
    || (config.boot.lanzaboote.enable or false);
  bootProblems =
    if cfg.vm.bios == "ovmf" then
      lib.optional (!mountedEsp) (
        if diskoEsps == [ ] then
          "nixprox.vm.bios is \"ovmf\", but the disk layout has no EFI system partition: add one to disko.devices (a partition with type = \"EF00\", formatted vfat, mounted at ${efiMount}), or set nixprox.vm.bios = \"seabios\""
        else
          "nixprox.vm.bios is \"ovmf\", but no EFI system partition is mounted at ${efiMount} (boot.loader.efi.efiSysMountPoint): mount the EF00 partition there"
      )
      ++ lib.optional (!efiLoader) "nixprox.vm.bios is \"ovmf\", but no EFI boot loader is enabled: set boot.loader.systemd-boot.enable = true (or boot.loader.grub.efiSupport = true), or set nixprox.vm.bios = \"seabios\""
    else
      lib.optional (loader.systemd-boot.enable or false) "nixprox.vm.bios is \"seabios\", which cannot boot systemd-boot (an EFI boot loader): set nixprox.vm.bios = \"ovmf\" (with an EFI system partition), or use GRUB";
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
        type = types.strMatching "[A-Za-z0-9._-]+(,flags=[+-]?(${cpuFlagNames})(;[+-]?(${cpuFlagNames}))*)?";
        default = "x86-64-v2-AES";
        example = "host";
        description = ''
          QEMU CPU type (`cpu: <type>`), optionally with flags as Proxmox writes them
          (`host,flags=+aes`); the flags join `cpuFlags`. A change waits for the VM's next reboot.
        '';
      };
      cpuFlags = mkOption {
        type = types.listOf (types.strMatching "[+-](${cpuFlagNames})");
        default = [ ];
        example = [ "+aes" "-pcid" ];
        description = ''
          CPU flags of the VM's `cpu` line (`flags=+aes;-pcid`), compared as a set with what
          Proxmox has: `+` turns a flag on, `-` off. Proxmox allows only these on a VM:
          ${lib.concatStringsSep ", " cpuFlagList} (others need a custom CPU model, named in
          `cpuType`). A change waits for the VM's next reboot.
        '';
      };
      numa = mkOption {
        type = types.nullOr types.bool;
        default = null;
        description = "Enable NUMA (`numa: 1`); `null` keeps what Proxmox has. A change waits for the VM's next reboot.";
      };
      startup = mkOption {
        type = types.nullOr (
          types.submodule {
            options = {
              order = mkOption {
                type = types.nullOr types.ints.unsigned;
                default = null;
                description = "Position in the node's start order (lower starts first, shuts down last).";
              };
              up = mkOption {
                type = types.nullOr types.ints.unsigned;
                default = null;
                description = "Seconds to wait after starting this VM before starting the next.";
              };
              down = mkOption {
                type = types.nullOr types.ints.unsigned;
                default = null;
                description = "Seconds this VM's shutdown may take before the node moves on.";
              };
            };
          }
        );
        default = null;
        example = literalExpression "{ order = 1; up = 30; }";
        description = ''
          Start and shutdown order on the node (`startup: order=1,up=30`), for VMs with `onBoot`.
          Applied at once, also to a running VM. Proxmox asks for `Sys.Modify` on `/` to set it
          (it changes the node's behaviour). `null` keeps what Proxmox has.
        '';
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
      serial = mkOption {
        type = types.nullOr types.bool;
        default = null;
        description = ''
          A serial console: `serial0: socket`, the port the Proxmox console's xterm.js attaches to
          (what nixpkgs' Proxmox image boots with). Inside NixOS it adds
          `console=ttyS0,115200` to the kernel parameters (`nixprox.hardware.kernelParams`).
          `false` removes a socket (a host device there, which only `root@pam` may set, is left
          alone); `null` keeps what Proxmox has (a template's serial port stays), except on an
          ISO or image host whose kernel parameters name `console=ttyS0`: there it means
          `true`. Adding or removing it waits for the VM's next reboot.
        '';
      };
      vga = mkOption {
        type = types.nullOr (types.strMatching "std|cirrus|vmware|qxl[2-4]?|serial[0-3]|virtio(-gl)?|none");
        default = null;
        example = "serial0";
        description = ''
          Display type (`vga: <type>`). `"serial0"` makes the serial console the VM's only
          display (needs `serial = true`; the kernel then logs to ttyS0 alone). `null` keeps what
          Proxmox has. A change waits for the VM's next reboot.
        '';
      };
      extraConfig = mkOption {
        type = types.attrsOf types.str;
        default = { };
        example = literalExpression ''{ tablet = "0"; cpuunits = "200"; watchdog = "model=i6300esb,action=reset"; }'';
        description = ''
          Proxmox config keys nixprox has no option for, as Proxmox writes them (`qm config`),
          compared exactly and written through the API. Applied at once where Proxmox applies the
          key to a running VM, else at its next reboot. Refused at evaluation: keys nixprox
          manages (use their options) and keys only `root@pam` may set (`args`, `affinity`,
          `hugepages`, `hookscript`, …; Proxmox refuses API tokens). Removing a key from here
          leaves it in Proxmox.
        '';
      };
      virtiofs = mkOption {
        type = slots "virtiofs[0-9]+" "shared directories" virtiofsType;
        default = { };
        example = literalExpression ''{ virtiofs0 = { mapping = "media"; }; }'';
        description = ''
          Host directories shared with the VM through virtiofs (Proxmox VE 8.4 or later), by slot,
          each through a directory mapping (Datacenter → Resource Mappings → Directory):
          `virtiofs0: dirid=media`. Inside NixOS, mount it by the mapping's id:
          `fileSystems."/mnt/media" = { device = "media"; fsType = "virtiofs"; };` (the module
          adds the `virtiofs` module to the initrd). Needs `VM.Config.Disk` and `Mapping.Use` on
          `/mapping/dir/<id>`. A change waits for the VM's next reboot; shares the flake does
          not declare are removed. On a cluster older than 8.4 the plan blocks the change,
          naming the host and the cluster's version.
        '';
      };
      tpm = mkOption {
        type = types.nullOr (
          types.submodule {
            options = {
              version = mkOption {
                type = types.enum [ "v1.2" "v2.0" ];
                default = "v2.0";
                description = "TPM version (`version=`). Changing it plans a `replace_vm`: a TPM's state cannot be converted.";
              };
              storage = mkOption {
                type = types.nullOr types.str;
                default = null;
                description = "Storage of the TPM state volume; `null`: the first disk's.";
              };
            };
          }
        );
        default = null;
        example = literalExpression "{ version = \"v2.0\"; }";
        description = ''
          A TPM (`tpmstate0`), e.g. for systemd-cryptenroll or measured boot. Added to an existing
          VM as a new state volume (on a running VM it waits for the next start); a new version
          or storage plans a `replace_vm`. `null` keeps what Proxmox has.
        '';
      };
      efi = {
        preEnrolledKeys = mkOption {
          type = types.nullOr types.bool;
          default = null;
          description = ''
            Enrol Microsoft's Secure Boot keys in the EFI disk of an OVMF VM
            (`pre-enrolled-keys=1`). `null` or `false`: none, so Secure Boot is off until you
            enrol your own (lanzaboote, sbctl). Proxmox sets them only when it creates the EFI
            disk: a declared value that differs from an existing VM's plans a `replace_vm`;
            `null` never compares.
          '';
        };
      };
      pci = mkOption {
        type = slots "hostpci[0-9]+" "PCI devices" pciType;
        default = { };
        example = literalExpression ''{ hostpci0 = { mapping = "gpu"; pcie = true; }; }'';
        description = ''
          PCI devices passed through by slot (`hostpci0`, …), each through a cluster resource
          mapping (Datacenter → Resource Mappings): `hostpci0: mapping=gpu,pcie=1`. An API token
          may only pass mapped devices (a raw `host=` device is root@pam's, and nixprox never
          touches one). Needs `VM.Config.HWType` and `Mapping.Use` on `/mapping/pci/<id>`.
          A change waits for the VM's next reboot; mapped devices the flake does not declare
          are removed. The plan checks that the mapping exists and has a device on the VM's node.
        '';
      };
      usb = mkOption {
        type = slots "usb[0-9]+" "USB devices" usbType;
        default = { };
        example = literalExpression ''{ usb0 = { mapping = "zigbee"; }; }'';
        description = ''
          USB devices passed through by slot (`usb0`, …), each through a cluster resource
          mapping: `usb0: mapping=zigbee`. Needs `VM.Config.HWType` and `Mapping.Use` on
          `/mapping/usb/<id>`. Hot-plugged into a running VM where Proxmox can (`usb` in the
          VM's `hotplug`, machine version 7.1 or later, `ostype` l26), else pending until the
          next reboot; mapped devices the flake does not declare are removed.
        '';
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

    hardware = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Configure NixOS for the VM this host declares (`nixprox.vm`): the initrd modules of its
          disk buses and NICs (`boot.initrd.availableKernelModules`), the serial console's kernel
          parameters, the QEMU guest agent's service (`services.qemuGuest.enable`, a default you
          can override) and the boot checks. Off: nixprox sets nothing in NixOS.
        '';
      };
      initrdModules = mkOption {
        type = types.listOf types.str;
        default = derivedInitrdModules;
        defaultText = literalMD "the modules of the declared disk buses (`scsi`: virtio_pci, virtio_scsi, sd_mod; `virtio`: virtio_pci, virtio_blk; `sata`: ahci, sd_mod; `ide`: ata_piix, sd_mod) and NIC models (`virtio`: virtio_pci, virtio_net; `e1000`, `e1000e`, `vmxnet3`: their namesakes; `rtl8139`: 8139cp, 8139too), and `virtiofs` with shared directories";
        example = [ "virtio_pci" "virtio_scsi" "sd_mod" "sym53c8xx" ];
        description = ''
          Kernel modules added to `boot.initrd.availableKernelModules`, so the initrd finds the
          VM's root disk. NixOS's default initrd has no virtio driver. Set it to replace the
          derived list (e.g. a template whose SCSI controller is not virtio-scsi).
        '';
      };
      kernelParams = mkOption {
        type = types.listOf types.str;
        default = derivedKernelParams;
        defaultText = literalMD "with `nixprox.vm.serial`: `console=tty0` (unless `vga = \"serial0\"`) and `console=ttyS0,115200`; else none";
        description = "Kernel parameters added to `boot.kernelParams` for the declared hardware.";
      };
      checkBoot = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Fail the evaluation (a NixOS assertion, so `nixprox plan` names the host) when the
          firmware cannot boot the system: with `bios = "ovmf"` the disk layout (disko, or
          `fileSystems`) must have an EFI system partition mounted at
          `boot.loader.efi.efiSysMountPoint` and an EFI boot loader must be enabled
          (systemd-boot, GRUB with `efiSupport`, limine with `efiSupport`, or lanzaboote); with
          SeaBIOS, systemd-boot is refused.
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

    allow = {
      reinstall = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Let this host's `reinstall` run (it wipes the VM's disks), without opening every
          host's as `policies.allow_reinstall` does: a pull request converting one VM sets it on
          that host alone, and the plan shows it next to the action it unblocks. Never on a VM
          protected in Proxmox. Remove it once the host is installed, or the next change of its
          `disko.devices` reinstalls it too.
        '';
      };
      replace = mkOption {
        type = types.bool;
        default = false;
        description = "Let this host's `replace_vm` run (destroy and recreate the VM), like `policies.allow_replace` for this host alone.";
      };
      detachDisks = mkOption {
        type = types.bool;
        default = false;
        description = "Let this host's `detach_disk` run, like `policies.allow_detach_disks` for this host alone (never the boot disk).";
      };
    };

    convert = {
      hostKey = mkOption {
        type = types.nullOr (
          types.strMatching "(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/]+=*( .*)?"
        );
        default = null;
        example = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI… root@debian";
        description = ''
          The SSH host key a VM that does not run NixOS yet presents today (one line of its
          `/etc/ssh/ssh_host_ed25519_key.pub`: a public key, never the private one), for its
          conversion to NixOS: nixprox verifies the machine against it before anything is sent
          to it, and the install then gives the host a new key. `null`: the key is read through
          the VM's QEMU guest agent over the Proxmox API. Only used while the VM is converted.
        '';
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
    (lib.optionalAttrs (lib.hasAttrByPath [ "boot" "initrd" "availableKernelModules" ] options) {
      boot.initrd.availableKernelModules = lib.mkIf derive cfg.hardware.initrdModules;
    })
    (lib.optionalAttrs (lib.hasAttrByPath [ "boot" "kernelParams" ] options) {
      boot.kernelParams = lib.mkIf derive cfg.hardware.kernelParams;
    })
    (lib.optionalAttrs (lib.hasAttrByPath [ "services" "qemuGuest" "enable" ] options) {
      services.qemuGuest.enable = lib.mkIf derive (lib.mkDefault cfg.vm.agent);
    })
    (lib.optionalAttrs (options ? assertions) {
      assertions = lib.optionals (derive && cfg.hardware.checkBoot) (
        map (message: {
          assertion = false;
          inherit message;
        }) bootProblems
      );
    })
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
