//! Taking over a VM that already runs NixOS, through the real binary: fakepve holds an
//! untagged VM named like the host, and the SSH test host stands in for it as a NixOS that
//! nixprox never installed (its own `/nix` with a system copied in by hand, its own host key).
//! The plan is made as a pull-request job makes it (no SSH key), apply with the key.
//!
//! Adopting in place writes nothing until the machine presents the pinned host key (declared
//! in `nixprox.ssh.hostKey`, or read through the guest agent) and is found running NixOS;
//! then it tags the VM, records the system, the key and that its disks are not nixprox's, and
//! switches it to the flake's system (or leaves it, when it already runs that).

use std::path::Path;
use std::process::Command;

use nixprox::metadata::{Metadata, Notes};
use nixprox::proxmox::guest::ED25519_HOST_KEY;
use serde_json::{Value, json};

use crate::support::cli::{self, Run};
use crate::support::fakepve::{FakePve, Scenario};
use crate::support::hosts::nixos_os;
use crate::support::nix::Fixture;
use crate::support::sshd::{TestHost, systems};

const VMID: u32 = 120;
/// The owner's notes, with the line ends and blank lines they typed.
const OWNER: &str = "Owner: alice.\r\nBackups nightly; do not delete.\n\n";

/// How the test declares the host key.
enum Key {
    /// `nixprox.ssh.hostKey` = this line.
    Declared(String),
    /// Nothing declared: the guest agent has the host's key file (or not).
    Agent,
}

struct Lab {
    host: TestHost,
    pve: FakePve,
    fixture: Fixture,
    work: tempfile::TempDir,
}

impl Lab {
    /// The test host, the flake (`fixtures/deploy`, no template anywhere: the VM exists), and
    /// an untagged VM `web` as the flake declares it, running, with the owner's notes. With
    /// `agent_file`, its guest agent answers the host's public key file.
    fn start(key: &Key, agent_enabled: bool, agent_file: bool) -> Lab {
        let host = TestHost::start();
        let mut agent = json!({"files": {}, "os": nixos_os()});
        if agent_file {
            agent["files"][ED25519_HOST_KEY] = json!(format!("{}\n", host.host_public()));
        }
        let vm = json!({
            "vmid": VMID, "name": "web", "node": "pve1", "status": "running", "agent": agent,
            "config": {
                "name": "web", "cores": 2, "sockets": 1, "cpu": "x86-64-v2-AES", "memory": "2048",
                "agent": if agent_enabled { "1" } else { "0" }, "onboot": 1, "ostype": "l26",
                "scsihw": "virtio-scsi-single", "scsi0": "local-lvm:vm-120-disk-0,size=20G",
                "net0": "virtio=BC:24:11:00:01:20,bridge=vmbr0", "boot": "order=scsi0",
                "tags": "web", "description": OWNER
            }
        });
        let pve = FakePve::start(Scenario::new().guest(vm));
        let fixture = Fixture::copy("deploy");
        let work = tempfile::Builder::new().prefix("nixprox-adopt-").tempdir().expect("tempdir");
        let lab = Lab { host, pve, fixture, work };
        lab.declare("1", key);
        lab.fixture.lock();
        lab
    }

    fn dir(&self) -> &Path {
        self.fixture.dir.path()
    }

    fn path(&self, name: &str) -> String {
        self.work.path().join(name).display().to_string()
    }

    /// `test-host.json` (what the fixture flake reads), `nixprox.yaml` (apply's, with the SSH
    /// key) and `pr.yaml` (a pull-request job's: the same without any SSH key).
    fn declare(&self, revision: &str, key: &Key) {
        let mut declared = json!({
            "system": systems::current_system(),
            "revision": revision,
            "address": self.host.address,
            "port": self.host.port,
            "clientKey": self.host.client_public,
            "memory": 2048,
            "description": "",
        });
        if let Key::Declared(line) = key {
            declared["hostKey"] = json!(line);
        }
        std::fs::write(self.dir().join("test-host.json"), declared.to_string())
            .expect("write test-host.json");
        let base =
            "defaults:\n  node: pve1\n  storage: local-lvm\n  bridge: vmbr0\napply:\n  address_timeout: 30\n";
        std::fs::write(self.path("pr.yaml"), base).expect("write pr.yaml");
        let ssh = format!("ssh:\n  key: {}\n  connect_timeout: 20\n", self.host.client_key.display());
        std::fs::write(self.dir().join("nixprox.yaml"), format!("{base}{ssh}")).expect("write nixprox.yaml");
    }

    fn nixprox(&self, args: &[&str]) -> Run {
        let mut command = cli::nixprox();
        command.args(args).args(["--flake", &self.fixture.flake_ref()]).envs(cli::pve_env(&self.pve));
        command.output().expect("run nixprox").into()
    }

    /// `plan` as a pull-request job makes it (no SSH key), to `plan.json`.
    fn plan(&self) -> Value {
        let out = self.path("plan.json");
        let run =
            self.nixprox(&["plan", "--config", &self.path("pr.yaml"), "--format", "json", "--out", &out]);
        assert_eq!(run.code, 0, "plan failed:\n{}", run.stderr);
        serde_json::from_str(&std::fs::read_to_string(&out).expect("plan.json")).expect("plan json")
    }

    /// `apply --reviewed-plan plan.json` with the SSH key; the run and the report.
    fn apply(&self) -> (Run, Value) {
        let report = self.path("report.json");
        let _ = std::fs::remove_file(&report);
        let run = self.nixprox(&["apply", "--reviewed-plan", &self.path("plan.json"), "--report", &report]);
        let text = std::fs::read_to_string(&report)
            .unwrap_or_else(|e| panic!("no report ({e}):\n{}\n{}", run.stdout, run.stderr));
        (run, serde_json::from_str(&text).expect("report json"))
    }

    /// The system the flake declares now, built on this machine.
    fn build(&self) -> String {
        systems::build_flake(&self.fixture.flake_ref(), "web")
    }

    /// What the owner did before nixprox: `system` copied into the host's own store, its
    /// profile and `/run/current-system` pointing at it.
    fn run_by_hand(&self, system: &str) {
        let ssh_opts = format!(
            "-i {} -p {} -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no -o IdentitiesOnly=yes -o BatchMode=yes -o LogLevel=ERROR",
            self.host.client_key.display(),
            self.host.port
        );
        let output = Command::new("nix")
            .env("NIX_CONFIG", "substituters =")
            .env("NIX_SSHOPTS", ssh_opts)
            .args(["--extra-experimental-features", "nix-command flakes", "copy", "--no-check-sigs", "--to"])
            .arg(format!("ssh-ng://root@{}", self.host.address))
            .arg(system)
            .output()
            .expect("run nix copy");
        assert!(output.status.success(), "nix copy failed: {}", String::from_utf8_lossy(&output.stderr));
        let profiles = self.host.root().join("nix/var/nix/profiles");
        std::fs::create_dir_all(&profiles).expect("profiles dir");
        std::os::unix::fs::symlink(system, profiles.join("system-1-link")).expect("generation link");
        std::os::unix::fs::symlink("system-1-link", profiles.join("system")).expect("profile link");
        std::os::unix::fs::symlink(system, self.host.root().join("run/current-system"))
            .expect("current-system");
        assert!(self.host.has_store_path(system), "the system is in the host's own store");
    }

    fn vm(&self) -> Value {
        self.pve.vm(VMID)
    }

    fn notes(&self) -> Notes {
        Notes::parse(self.vm()["config"]["description"].as_str().unwrap_or_default())
    }

    fn metadata(&self) -> Metadata {
        self.notes().metadata().cloned().unwrap_or_else(|| panic!("no metadata block: {:?}", self.notes()))
    }

    /// Lines of the host's sshd log that show a login.
    fn logins(&self) -> usize {
        let log = std::fs::read_to_string(self.host.root().join("sshd.log")).unwrap_or_default();
        log.lines().filter(|l| l.contains("Accepted publickey")).count()
    }

    fn switch_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.host.root().join("run/nixprox-switch.log"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    /// The writes (not GETs) fakepve saw since the log was cleared.
    fn writes(&self) -> Vec<(String, String)> {
        self.pve.requests(false).into_iter().filter(|(method, _)| method != "GET").collect()
    }
}

fn kinds(plan: &Value) -> Vec<String> {
    cli::kinds(plan, "web")
}

fn web_report(report: &Value) -> Value {
    report["hosts"].as_array().expect("hosts").iter().find(|h| h["host"] == "web").expect("web").clone()
}

fn steps(report: &Value) -> Vec<(String, String)> {
    web_report(report)["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            (s["step"].as_str().unwrap_or_default().into(), s["status"].as_str().unwrap_or_default().into())
        })
        .collect()
}

/// A host nixprox adopted and switched: the flake's system runs, the block records it with
/// the key and the `adopted` marker, the owner's notes are as they were, byte for byte.
fn assert_adopted(lab: &Lab, toplevel: &str, host_key: &str) {
    assert_eq!(lab.host.current_system().as_deref(), Some(toplevel), "the host runs the flake's system");
    let metadata = lab.metadata();
    assert_eq!(metadata.host, "web");
    assert_eq!(metadata.system.as_deref(), Some(toplevel));
    assert_eq!(metadata.host_key.as_deref(), Some(host_key.trim()));
    assert_eq!(metadata.adopted.as_ref().map(|a| a.vmid), Some(VMID), "{metadata:?}");
    // `fixtures/deploy` declares no `disko.devices`: the layout is recorded as not managed.
    assert_eq!(metadata.disk_layout.as_deref(), Some(nixprox::metadata::LAYOUT_NOT_MANAGED), "{metadata:?}");
    assert_eq!((metadata.created, metadata.applying), (None, None));
    assert_eq!(lab.notes().user_text, OWNER, "the owner's notes, byte for byte");
    let tags = lab.vm()["config"]["tags"].as_str().expect("tags").to_string();
    assert_eq!(tags, "nixprox;web");
}

#[test]
fn a_running_nixos_vm_is_adopted_in_place_with_the_declared_host_key_and_switched() {
    let host_key_of = |lab: &Lab| lab.host.host_public();
    let lab = Lab::start(&Key::Agent, true, false);
    let declared = Key::Declared(host_key_of(&lab));
    // The owner's NixOS, revision 0 of the flake, installed by other means.
    lab.declare("0", &declared);
    let running = lab.build();
    lab.run_by_hand(&running);
    lab.declare("1", &declared);
    let toplevel = lab.build();
    assert_ne!(running, toplevel);

    let plan = lab.plan();
    assert_eq!(kinds(&plan), ["adopt", "switch"], "{plan:#}");
    assert_eq!(plan["summary"]["reinstall"], 0, "never a reinstall: {plan:#}");
    assert_eq!(plan["summary"]["blocked"], 0, "{plan:#}");
    let (run, report) = lab.apply();
    assert_eq!(run.code, 0, "apply failed:\n{}\n{}", run.stdout, run.stderr);
    // Apply (with an SSH key) computed the very plan the key-less plan job reviewed.
    assert_eq!(report["plan_id"], plan["plan_id"], "{report:#}");
    assert!(report.get("reviewed_plan_id").is_none_or(Value::is_null), "{report:#}");
    let names: Vec<String> = steps(&report).into_iter().map(|(name, _)| name).collect();
    assert_eq!(names, ["adopt", "configure", "switch", "finish"], "{report:#}");
    assert_eq!(lab.switch_log(), [format!("switch {toplevel}")]);
    assert_adopted(&lab, &toplevel, &host_key_of(&lab));
    assert_eq!(kinds(&lab.plan()), ["noop"]);
}

#[test]
fn with_the_key_from_the_guest_agent_a_vm_already_running_the_flakes_system_is_only_adopted() {
    let lab = Lab::start(&Key::Agent, true, true);
    let toplevel = lab.build();
    lab.run_by_hand(&toplevel);
    let plan = lab.plan();
    // The plan cannot know what runs there: it shows the switch apply may skip.
    assert_eq!(kinds(&plan), ["adopt", "switch"], "{plan:#}");
    let (run, report) = lab.apply();
    assert_eq!(run.code, 0, "apply failed:\n{}\n{}", run.stdout, run.stderr);
    let steps = steps(&report);
    assert!(steps.contains(&("adopt".into(), "ok".into())), "{steps:?}");
    assert!(steps.contains(&("switch".into(), "already_done".into())), "{steps:?}");
    assert!(lab.switch_log().is_empty(), "nothing was activated: {:?}", lab.switch_log());
    assert_adopted(&lab, &toplevel, &lab.host.host_public());
    assert_eq!(kinds(&lab.plan()), ["noop"]);
}

#[test]
fn a_wrong_declared_host_key_is_refused_before_anything_is_sent() {
    let impostor = nixprox::ssh::generate_host_key("elsewhere").expect("key").public;
    let lab = Lab::start(&Key::Declared(impostor.clone()), true, true);
    let running = lab.build();
    lab.run_by_hand(&running);
    lab.declare("2", &Key::Declared(impostor.clone()));
    assert_eq!(kinds(&lab.plan()), ["adopt", "switch"]);
    let before = lab.vm();
    let logins = lab.logins();
    lab.pve.requests(true);
    let (run, report) = lab.apply();
    assert_eq!(run.code, 3, "the host fails:\n{}\n{}", run.stdout, run.stderr);
    let web = web_report(&report);
    assert_eq!(web["step"], "adopt", "{report:#}");
    let error = web["error"].as_str().expect("error");
    assert!(error.starts_with("refusing to adopt `web` (VM 120)"), "{error}");
    assert!(error.contains("does not match the pinned key"), "{error}");
    assert!(error.contains("nothing was sent to it or changed"), "{error}");
    // Nothing was sent: no login on the machine, no write to the VM.
    assert_eq!(lab.logins(), logins, "no login happened");
    assert_eq!(lab.writes(), Vec::<(String, String)>::new());
    assert_eq!(lab.vm()["config"], before["config"]);
    assert_eq!(lab.host.current_system().as_deref(), Some(running.as_str()));
}

#[test]
fn without_a_way_to_pin_the_key_or_without_nixos_nothing_is_touched() {
    // No declared key, the guest agent off: the plan blocks the adoption, naming both ways.
    let lab = Lab::start(&Key::Agent, false, true);
    let plan = lab.plan();
    assert_eq!(kinds(&plan), ["adopt"], "{plan:#}");
    let adopt = &cli::actions(&plan, "web")[0];
    assert_eq!(adopt["blocked"]["setting"], Value::Null, "{adopt:#}");
    let reason = adopt["blocked"]["reason"].as_str().expect("reason");
    for says in ["`nixprox.ssh.hostKey`", "QEMU guest agent", "never trusts a key on first use"] {
        assert!(reason.contains(says), "`{says}` in {reason}");
    }
    let before = lab.vm();
    let (run, _) = lab.apply();
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(lab.vm()["config"], before["config"]);

    // The agent enabled but without the key file: apply fails naming both, changes nothing.
    lab.pve.command(json!({"cmd": "set_config", "vmid": VMID, "config": {"agent": "1"}}));
    lab.pve.command(json!({"cmd": "set_agent", "vmid": VMID, "agent": {"files": {}, "os": nixos_os()}}));
    assert_eq!(kinds(&lab.plan()), ["adopt", "switch"]);
    let before = lab.vm();
    let (run, report) = lab.apply();
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    let error = web_report(&report)["error"].as_str().expect("error").to_string();
    assert!(
        error.contains("through the QEMU guest agent") && error.contains("`nixprox.ssh.hostKey`"),
        "{error}"
    );
    assert!(error.ends_with("nothing was changed"), "{error}");
    assert_eq!(lab.vm()["config"], before["config"]);

    // The key answers and the agent says NixOS, but the machine runs none: refused, untouched,
    // the way to a gated reinstall named.
    let public = lab.host.host_public();
    lab.pve.command(json!({"cmd": "set_agent", "vmid": VMID, "agent": {"files": {ED25519_HOST_KEY: public}, "os": nixos_os()}}));
    let (run, report) = lab.apply();
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    let error = web_report(&report)["error"].as_str().expect("error").to_string();
    assert!(error.contains("does not run NixOS"), "{error}");
    assert!(error.contains("gated `reinstall`"), "{error}");
    assert_eq!(lab.vm()["config"], before["config"]);
    assert_eq!(lab.notes().user_text, OWNER);
}

/// An adopted NixOS host keeps its own hardware configuration: no `disko.devices`. It is
/// adopted and switched, its layout recorded as not managed, and no plan reinstalls it; only
/// once the flake declares a layout does a reinstall appear, gated.
#[test]
fn an_adopted_host_without_disko_is_switched_and_reinstalled_only_once_a_layout_is_declared() {
    let lab = Lab::start(&Key::Agent, true, true);
    lab.declare("0", &Key::Agent);
    let running = lab.build();
    lab.run_by_hand(&running);
    lab.declare("1", &Key::Agent);
    let plan = lab.plan();
    assert_eq!(kinds(&plan), ["adopt", "switch"], "{plan:#}");
    let (run, _) = lab.apply();
    assert_eq!(run.code, 0, "apply failed:\n{}\n{}", run.stdout, run.stderr);
    assert_eq!(lab.metadata().disk_layout.as_deref(), Some(nixprox::metadata::LAYOUT_NOT_MANAGED));
    // The serials nixprox never forced on its disks: the VM's config has none.
    assert!(!lab.vm()["config"]["scsi0"].as_str().unwrap_or_default().contains("serial="), "{:#}", lab.vm());
    assert_eq!(kinds(&lab.plan()), ["noop"]);
    // A later change of the system is a switch, never a reinstall.
    lab.declare("2", &Key::Agent);
    assert_eq!(kinds(&lab.plan()), ["switch"]);
    lab.apply();
    assert_eq!(kinds(&lab.plan()), ["noop"]);

    // The flake declares a layout now: a gated reinstall that says why.
    let path = lab.dir().join("test-host.json");
    let mut declared: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("json")).expect("json");
    declared["disko"] = json!({"disk": {"main": {"type": "disk", "device": "/dev/sda"}}});
    std::fs::write(&path, declared.to_string()).expect("write");
    let plan = lab.plan();
    assert_eq!(kinds(&plan), ["reinstall"], "{plan:#}");
    let reinstall = &cli::actions(&plan, "web")[0];
    assert_eq!(reinstall["blocked"]["setting"], "policies.allow_reinstall", "{reinstall:#}");
    assert!(reinstall["reason"].as_str().unwrap_or_default().contains("layout not managed"), "{reinstall:#}");
    assert_eq!(reinstall["changes"][0]["before"], "none", "{reinstall:#}");
}
