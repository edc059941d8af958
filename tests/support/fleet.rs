//! A generated fleet for the benchmark and its test: an N-host fixture flake (the style of
//! `fixtures/homelab`, built on `fixtures/lib`) and a fakepve cluster holding those hosts' VMs,
//! most in sync and a fixed share drifted or missing, so one plan exercises every read and
//! every common action at any N.
//!
//! Host `i` (attribute `h0000`, `h0001`, …) gets VMID `1000 + i`, node `pve{1 + i % nodes}`,
//! a loopback address, and by `i % 10` a state in the cluster:
//!
//! | `i % 10` | cluster                                  | plan                    |
//! | -------- | ---------------------------------------- | ----------------------- |
//! | 0–5      | VM matches, recorded system is current   | `noop`                  |
//! | 6        | 2 cores, the flake wants 4               | `update_vm`             |
//! | 7        | recorded system is an older store path   | `switch`                |
//! | 8        | no VM                                    | `create_vm` + `install` |
//! | 9        | root disk 10G, the flake wants 20G       | `resize_disk`           |
//!
//! Besides: one tagged VM per 50 hosts that no host declares (orphan: `destroy_vm`, blocked
//! since `prune_orphans` is off), one untagged VM per 20 hosts that nixprox must not read, and
//! the template `nixos-bootstrap`. Half the VMs run (so `/pending` is read for them).
//!
//! [`Fleet::generate_new_unnumbered`] is the same without declared VMIDs, every host on `pve1`:
//! nixprox picks the ids (the nextid race of many creates at once).
//! [`Fleet::generate_heavy`] is the same fleet with hosts that cost what a small NixOS costs to
//! evaluate: each imports `fixtures/lib/heavy.nix` with `standin.units` set (see
//! [`HEAVY_UNITS`] and docs/performance.md for the calibration).
//!
//! [`Fleet::generate_new`] is the apply benchmark's fleet: every host new (`create_vm` +
//! `install`), nothing else in the cluster but the template, the hosts' disks on an RBD storage
//! `ceph-pool` so fakepve's `ceph_slow` makes clone, resize and start take time
//! ([`Fleet::apply_scenario`]), and the host concurrency settable ([`Fleet::set_host_concurrency`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use nixprox::metadata::{Metadata, Notes};
use serde_json::{Value, json};

use super::fakepve::Scenario;
use super::nix::{nix, override_inputs, repo};

/// What a host's VM looks like in the generated cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    InSync,
    FewerCores,
    OldSystem,
    Missing,
    SmallDisk,
}

impl State {
    fn of(index: usize) -> State {
        match index % 10 {
            6 => State::FewerCores,
            7 => State::OldSystem,
            8 => State::Missing,
            9 => State::SmallDisk,
            _ => State::InSync,
        }
    }
}

/// One declared host.
#[derive(Debug, Clone)]
pub struct FleetHost {
    pub attr: String,
    /// The declared `vm.id` (an unnumbered fleet declares none and lets nixprox pick).
    pub vmid: u32,
    pub node: String,
    pub state: State,
    /// Whether its VM runs (and so has `/pending` read).
    pub running: bool,
}

/// The flake directory and what the cluster holds.
#[derive(Debug)]
pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub hosts: Vec<FleetHost>,
    /// Tagged VMs no host declares: `(vmid, name, node)`.
    pub orphans: Vec<(u32, String, String)>,
    /// Untagged VMs no host is named like: nixprox lists them and reads nothing else.
    pub strangers: usize,
    pub nodes: usize,
    /// Whether the flake declares each host's `vm.id`.
    pub declared_ids: bool,
}

/// How many actions of each kind the plan of a fleet must have.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Expected {
    pub noop: usize,
    pub update_vm: usize,
    pub switch: usize,
    pub create_vm: usize,
    pub install: usize,
    pub resize_disk: usize,
    /// Orphans; all blocked.
    pub destroy_vm: usize,
}

const TEMPLATE_VMID: u32 = 9000;

/// `standin.units` of a heavy host: about 0.3 s of CPU and 100 MiB of evaluator heap per host
/// on the benchmark machine (measured with `/usr/bin/time -v`, docs/performance.md).
pub const HEAVY_UNITS: usize = 650;
/// The RBD storage of [`Fleet::generate_new`]'s disks.
pub const SLOW_STORAGE: &str = "ceph-pool";

impl Fleet {
    /// Writes an `n`-host flake into a fresh temporary directory.
    pub fn generate(n: usize) -> Fleet {
        Fleet::build(n, State::of, true, 0, false)
    }

    /// [`Fleet::generate`] with heavy hosts: `units` stand-in units each ([`HEAVY_UNITS`]
    /// for the benchmark).
    pub fn generate_heavy(n: usize, units: usize) -> Fleet {
        Fleet::build(n, State::of, true, units, false)
    }

    /// Writes an `n`-host flake whose hosts declare the NixOS options the plan's NixOS changes
    /// read (`fixtures/lib/nixos.nix`), each host from `./nixos-host.nix`. In the first
    /// `changed` hosts it changes kernel, packages, a service, a port, a user and a user probe
    /// with `./version.nix` (written as 1: commit it as the base, then [`Fleet::set_version`] 2
    /// as the head), and their VMs record an older system, so they switch; the other hosts stay
    /// at version 1 and their VMs are in sync (give [`Fleet::scenario`] the head's toplevels).
    pub fn generate_nixos(n: usize, changed: usize) -> Fleet {
        let mut fleet = Fleet::build(n, |_| State::InSync, false, 0, true);
        for host in fleet.hosts.iter_mut().take(changed) {
            host.state = State::OldSystem;
        }
        let dir = fleet.dir.path();
        std::fs::write(dir.join("nixos-host.nix"), NIXOS_HOST).expect("write nixos-host.nix");
        // Attribute names are zero-padded: the first `changed` sort below this one.
        std::fs::write(dir.join("changed.nix"), format!("\"h{changed:04}\"\n")).expect("write changed.nix");
        fleet.set_version(1);
        fleet
    }

    /// Rewrites `./version.nix` of a [`Fleet::generate_nixos`] fleet.
    pub fn set_version(&self, version: u32) {
        std::fs::write(self.dir.path().join("version.nix"), format!("{version}\n"))
            .expect("write version.nix");
    }

    /// Writes an `n`-host flake whose hosts all lack a VM, with no orphans or strangers: the
    /// apply benchmark's fleet. Its disks go to `ceph-pool` (see [`Fleet::apply_scenario`]).
    pub fn generate_new(n: usize) -> Fleet {
        Fleet::build(n, |_| State::Missing, false, 0, false)
    }

    /// Like [`Fleet::generate_new`], but no host declares its `vm.id` and all are on `pve1`.
    pub fn generate_new_unnumbered(n: usize) -> Fleet {
        let mut fleet = Fleet::build(n, |_| State::Missing, false, 0, false);
        fleet.nodes = 1;
        fleet.declared_ids = false;
        for host in &mut fleet.hosts {
            host.node = "pve1".into();
        }
        fleet.write_flake(0, false);
        fleet.set_host_concurrency(None);
        fleet
    }

    fn build(n: usize, state: fn(usize) -> State, extras: bool, units: usize, nixos: bool) -> Fleet {
        let dir = tempfile::Builder::new().prefix(&format!("fleet-{n}-")).tempdir().expect("tempdir");
        let nodes = (n / 4).clamp(1, 10);
        let hosts: Vec<FleetHost> = (0..n)
            .map(|i| FleetHost {
                attr: format!("h{i:04}"),
                vmid: 1000 + u32::try_from(i).expect("fleet size fits u32"),
                node: format!("pve{}", 1 + i % nodes),
                state: state(i),
                running: i % 2 == 0,
            })
            .collect();
        let orphans = (0..if extras { n.div_ceil(50) } else { 0 })
            .map(|k| (5000 + k as u32, format!("retired{k:03}"), format!("pve{}", 1 + k % nodes)))
            .collect();
        let strangers = if extras { n / 20 } else { 0 };
        let fleet = Fleet { dir, hosts, orphans, strangers, nodes, declared_ids: true };
        fleet.write_flake(units, nixos);
        if !extras && !nixos {
            fleet.set_host_concurrency(None);
        }
        fleet
    }

    /// Rewrites `nixprox.yaml` of a [`Fleet::generate_new`] fleet: disks on `ceph-pool`, and
    /// `concurrency.hosts` when given (`Some(1)`: the sequential baseline; `None`: the default).
    pub fn set_host_concurrency(&self, hosts: Option<usize>) {
        let mut settings = SETTINGS.replace("storage: local-lvm", &format!("storage: {SLOW_STORAGE}"));
        if let Some(hosts) = hosts {
            let _ = write!(settings, "concurrency:\n  hosts: {hosts}\n");
        }
        std::fs::write(self.dir.path().join("nixprox.yaml"), settings).expect("write nixprox.yaml");
    }

    /// [`Fleet::scenario`] plus every node (new hosts' nodes hold no VM yet) and the RBD
    /// storage `ceph-pool`, whose operations take `ceph_slow` PVE seconds each.
    pub fn apply_scenario(&self, toplevels: &BTreeMap<String, String>, ceph_slow: f64) -> Scenario {
        let nodes: Vec<String> = (1..=self.nodes).map(|k| format!("pve{k}")).collect();
        self.scenario(toplevels)
            .set("nodes", json!(nodes))
            .set(
                "storages",
                json!({SLOW_STORAGE: {"type": "rbd", "pool": "rbd", "content": "images,rootdir", "shared": 1}}),
            )
            .set("ceph_slow", json!(ceph_slow))
    }

    /// `path:<dir>`.
    pub fn flake_ref(&self) -> String {
        format!("path:{}", self.dir.path().display())
    }

    /// Appends `text` to `nixprox.yaml` (e.g. an `eval:` section).
    pub fn append_settings(&self, text: &str) {
        let path = self.dir.path().join("nixprox.yaml");
        let mut settings = std::fs::read_to_string(&path).expect("read nixprox.yaml");
        settings.push_str(text);
        std::fs::write(path, settings).expect("write nixprox.yaml");
    }

    fn write_flake(&self, units: usize, nixos: bool) {
        let dir = self.dir.path();
        copy_dir(&repo().join("fixtures/lib"), &dir.join("lib"));
        let mut hosts = String::new();
        for (i, host) in self.hosts.iter().enumerate() {
            let cores = if host.state == State::FewerCores { 4 } else { 2 };
            let id = if self.declared_ids { format!("id = {}; ", host.vmid) } else { String::new() };
            let _ = writeln!(
                hosts,
                "        {attr} = host {{ name = \"{attr}\"; address = \"127.1.{}.{}\"; vm = {{ {id}node = \"{node}\"; cores = {cores}; }}; }};",
                i / 250,
                1 + i % 250,
                attr = host.attr,
                node = host.node,
            );
        }
        let heavy = if units == 0 {
            "[ ]".to_string()
        } else {
            format!("[ ./lib/heavy.nix {{ standin.units = {units}; }} ]")
        };
        let (with_nixos, modules) = if nixos { ("true", "[ ./nixos-host.nix ]") } else { ("false", "[ ]") };
        let flake = FLAKE
            .replace("@HOSTS@", hosts.trim_end())
            .replace("@NIXOS@", with_nixos)
            .replace("@MODULES@", modules)
            .replace("@HEAVY@", &heavy);
        std::fs::write(dir.join("flake.nix"), flake).expect("write flake.nix");
        std::fs::write(dir.join("nixprox.yaml"), SETTINGS).expect("write nixprox.yaml");
    }

    /// Every host's evaluated system out path, from ONE `nix eval` (the in-sync VMs record it).
    pub async fn toplevels(&self) -> BTreeMap<String, String> {
        const EXPR: &str = "cs: builtins.mapAttrs (_: c: c.config.system.build.toplevel.outPath) cs";
        nix()
            .eval(format!("{}#nixosConfigurations", self.flake_ref()))
            .override_inputs(&override_inputs())
            .apply(EXPR)
            .run_json()
            .await
            .unwrap_or_else(|err| panic!("evaluating the fleet's systems failed: {err}"))
    }

    /// The cluster for fakepve, given the evaluated systems (see [`Fleet::toplevels`]).
    pub fn scenario(&self, toplevels: &BTreeMap<String, String>) -> Scenario {
        let mut scenario = Scenario::new().guest(json!({
            "vmid": TEMPLATE_VMID, "name": "nixos-bootstrap", "node": "pve1", "status": "stopped",
            "template": true,
            "config": {"name": "nixos-bootstrap", "cores": 2, "memory": 2048, "agent": "1",
                       "scsi0": format!("local-lvm:base-{TEMPLATE_VMID}-disk-0,size=4G"),
                       "net0": "virtio=BC:24:11:00:90:00,bridge=vmbr0"}
        }));
        for host in &self.hosts {
            if host.state == State::Missing {
                continue;
            }
            let system = match host.state {
                State::OldSystem => {
                    format!("/nix/store/00000000000000000000000000000000-nixos-system-{}", host.attr)
                }
                _ => toplevels
                    .get(&host.attr)
                    .unwrap_or_else(|| panic!("no evaluated system for `{}`", host.attr))
                    .clone(),
            };
            let metadata = Metadata { host: host.attr.clone(), system: Some(system), ..Default::default() };
            let disk = if host.state == State::SmallDisk { "10G" } else { "20G" };
            scenario = scenario.guest(vm(
                host.vmid,
                &host.attr,
                &host.node,
                host.running,
                json!({
                    "tags": "nixprox",
                    "scsi0": format!("local-lvm:vm-{}-disk-0,size={disk}", host.vmid),
                    "description": Notes::render("", &metadata),
                }),
            ));
        }
        for (vmid, name, node) in &self.orphans {
            let metadata = Metadata { host: name.clone(), ..Default::default() };
            scenario = scenario.guest(vm(
                *vmid,
                name,
                node,
                false,
                json!({
                    "tags": "nixprox",
                    "scsi0": format!("local-lvm:vm-{vmid}-disk-0,size=20G"),
                    "description": Notes::render("", &metadata),
                }),
            ));
        }
        for k in 0..self.strangers {
            let vmid = 7000 + k as u32;
            scenario = scenario.guest(vm(
                vmid,
                &format!("other{k:03}"),
                &format!("pve{}", 1 + k % self.nodes),
                true,
                json!({"scsi0": format!("local-lvm:vm-{vmid}-disk-0,size=20G")}),
            ));
        }
        scenario
    }

    /// The action counts the fleet's plan must show.
    pub fn expected(&self) -> Expected {
        let count = |state: State| self.hosts.iter().filter(|h| h.state == state).count();
        Expected {
            noop: count(State::InSync),
            update_vm: count(State::FewerCores),
            switch: count(State::OldSystem),
            create_vm: count(State::Missing),
            install: count(State::Missing),
            resize_disk: count(State::SmallDisk),
            destroy_vm: self.orphans.len(),
        }
    }
}

impl Expected {
    /// The same counts read from a plan's JSON `summary` (runnable counts, and `blocked`).
    pub fn from_plan(plan: &Value) -> Expected {
        let counts = &plan["summary"];
        let n = |key: &str| counts[key].as_u64().unwrap_or(0) as usize;
        Expected {
            noop: n("noop"),
            update_vm: n("update_vm"),
            switch: n("switch"),
            create_vm: n("create_vm"),
            install: n("install"),
            resize_disk: n("resize_disk"),
            // Blocked actions are counted apart from their kind; orphans are the only ones here.
            destroy_vm: n("destroy_vm") + n("blocked"),
        }
    }
}

/// A VM as a PVE 9 node reports one nixprox created: the module's defaults plus `extra`.
fn vm(vmid: u32, name: &str, node: &str, running: bool, extra: Value) -> Value {
    let mut config = json!({
        "name": name, "cores": 2, "sockets": 1, "cpu": "x86-64-v2-AES", "memory": 2048, "agent": "1",
        "onboot": 1, "ostype": "l26", "scsihw": "virtio-scsi-single", "boot": "order=scsi0",
        "net0": format!("virtio=BC:24:11:{:02X}:{:02X}:{:02X},bridge=vmbr0", vmid >> 16 & 0xff, vmid >> 8 & 0xff, vmid & 0xff),
    });
    if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        config.extend(extra.clone());
    }
    json!({"vmid": vmid, "name": name, "node": node, "status": if running { "running" } else { "stopped" },
           "config": config})
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display())) {
        let entry = entry.expect("dir entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy fixture lib file");
    }
}

const SETTINGS: &str = "# Settings of the generated benchmark fleet (tests/support/fleet.rs).
defaults:
  node: pve1
  storage: local-lvm
  bridge: vmbr0
  template: nixos-bootstrap
";

const NIXOS_HOST: &str = r#"# Every host of a generated NixOS fleet (tests/support/fleet.rs): what changes with
# ./version.nix (1 at the base, 2 at the head) in the hosts named below ./changed.nix.
{ standin, hostAttrName, ... }:
let
  v = if builtins.lessThan hostAttrName (import ./changed.nix) then import ./version.nix else 1;
  s = toString v;
in
{
  boot.kernelPackages = standin.linuxPackages "6.6.3${s}";
  environment.systemPackages = [
    (standin.package "app" "1.${s}")
    (standin.package "htop" "3.3.0")
  ];
  systemd.services.app.script = "app --generation ${s}";
  systemd.services.sshd.script = "sshd -D";
  networking.firewall.allowedTCPPorts = [
    22
    (3000 + v)
  ];
  users.users."deploy${s}" = {
    isNormalUser = true;
    extraGroups = [ "wheel" ];
  };
  nixprox.summary.extra."app generation" = v;
}
"#;

const FLAKE: &str = r#"# A generated fleet (tests/support/fleet.rs): the style of fixtures/homelab at any size.
{
  description = "nixprox benchmark fleet";

  inputs.nixpkgs-lib.url = "github:nix-community/nixpkgs.lib/de42d44212d207476489bce163375d8306a26d59";
  inputs.nixprox.url = "github:nixprox/nixprox";
  inputs.nixprox.inputs.nixpkgs.follows = "nixpkgs-lib";

  outputs =
    { nixpkgs-lib, nixprox, ... }:
    let
      mkHost = import ./lib/mkHost.nix {
        inherit (nixpkgs-lib) lib;
        nixproxModule = nixprox.nixosModules.default;
      };
      host =
        { name, address, vm }:
        mkHost {
          inherit name;
          withNixos = @NIXOS@;
          modules = @MODULES@ ++ [
            {
              networking.hostName = name;
              nixprox.enable = true;
              nixprox.address = address;
              nixprox.vm = vm;
              nixprox.bootstrap.sshKeys = [ "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDnixproxExampleKeyOnlyForTheFixture ops@fleet" ];
            }
          ]
          ++ @HEAVY@;
        };
    in
    {
      nixosConfigurations = {
@HOSTS@
      };
    };
}
"#;
