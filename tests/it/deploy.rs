//! Merge-to-deploy end to end through the real binary: `nixprox plan --out plan.json`, then
//! `nixprox apply --reviewed-plan plan.json` creates the VM in fakepve from the bootstrap
//! template, installs it with the test nixos-anywhere over real SSH on the sshd test host
//! (which comes back with the generated, pinned host key), records the metadata block, and
//! later switches it with the real `nix copy` and the system's own `switch-to-configuration`.
//!
//! The fixture flake (`fixtures/deploy/`) is locked with `nix flake lock --override-input …`
//! first: nixos-anywhere cannot take `--override-input`, so the lock file pins the offline
//! inputs and every `nix` here (nixprox's and the installer's) evaluates the same flake.

use std::path::{Path, PathBuf};
use std::process::Command;

use nixprox::metadata::{Metadata, Notes};
use serde_json::{Value, json};

use crate::support::cli::{self, Run};
use crate::support::fakepve::{FakePve, Scenario};
use crate::support::hosts::template;
use crate::support::nix::Fixture;
use crate::support::sshd::{TestHost, systems, write_fake_nixos_anywhere};

/// How nixprox gets the SSH key.
#[derive(Clone, Copy)]
enum Key {
    /// `ssh.key: <file>` in nixprox.yaml.
    File,
    /// The key's text in `NIXPROX_SSH_KEY`, nothing in the settings.
    Env,
}

/// A test host, a fake cluster with the bootstrap template, the locked fixture flake (a git
/// checkout, so apply records its revision), and a work directory for plans and reports.
struct Lab {
    host: TestHost,
    pve: FakePve,
    fixture: Fixture,
    work: tempfile::TempDir,
    installer: PathBuf,
    key: Key,
}

impl Lab {
    fn start(memory: u64, key: Key) -> Lab {
        let _ = which_git();
        let host = TestHost::start();
        let pve = FakePve::start(Scenario::new().guest(template()));
        let fixture = Fixture::copy("deploy");
        let work = tempfile::Builder::new().prefix("nixprox-deploy-").tempdir().expect("tempdir");
        let installer = write_fake_nixos_anywhere(work.path());
        let lab = Lab { host, pve, fixture, work, installer, key };
        lab.declare("1", memory, false);
        lab.fixture.lock();
        git(lab.dir(), &["init", "-q"]);
        lab.commit("web");
        lab
    }

    fn dir(&self) -> &Path {
        self.fixture.dir.path()
    }

    /// Writes `test-host.json` (what the fixture flake reads) and `nixprox.yaml`.
    fn declare(&self, revision: &str, memory: u64, allow_reboot: bool) {
        let declared = json!({
            "system": systems::current_system(),
            "revision": revision,
            "address": self.host.address,
            "port": self.host.port,
            "clientKey": self.host.client_public,
            "memory": memory,
            "allowReboot": allow_reboot,
        });
        std::fs::write(self.dir().join("test-host.json"), declared.to_string())
            .expect("write test-host.json");
        let key = match self.key {
            Key::File => format!("ssh:\n  key: {}\n  connect_timeout: 60\n", self.host.client_key.display()),
            Key::Env => "ssh:\n  connect_timeout: 60\n".to_string(),
        };
        let settings = format!(
            "defaults:\n  node: pve1\n  storage: local-lvm\n  bridge: vmbr0\n  template: nixos-bootstrap\n\
             {key}install:\n  command: [{}]\n  timeout: 300\napply:\n  address_timeout: 30\n",
            self.installer.display()
        );
        std::fs::write(self.dir().join("nixprox.yaml"), settings).expect("write nixprox.yaml");
    }

    /// Declares `nixprox.vm.description` (`""`: none, the notes are the owner's).
    fn declare_description(&self, description: &str) {
        self.declare_more("description", json!(description));
    }

    /// Sets one more field of `test-host.json` (`description`, `diskKeys`).
    fn declare_more(&self, key: &str, value: Value) {
        let path = self.dir().join("test-host.json");
        let mut declared: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("test-host.json")).expect("json");
        declared[key] = value;
        std::fs::write(&path, declared.to_string()).expect("write test-host.json");
    }

    /// Sets `ssh.user` in nixprox.yaml: every host is reached as `user`.
    fn ssh_user(&self, user: &str) {
        let path = self.dir().join("nixprox.yaml");
        let settings = std::fs::read_to_string(&path).expect("nixprox.yaml");
        std::fs::write(&path, settings.replacen("ssh:\n", &format!("ssh:\n  user: {user}\n"), 1))
            .expect("write nixprox.yaml");
    }

    /// Appends `policies.allow_reinstall: true` to nixprox.yaml.
    fn allow_reinstall(&self) {
        let path = self.dir().join("nixprox.yaml");
        let mut settings = std::fs::read_to_string(&path).expect("nixprox.yaml");
        settings.push_str("policies:\n  allow_reinstall: true\n");
        std::fs::write(&path, settings).expect("write nixprox.yaml");
    }

    /// Rewrites web's metadata block in its notes with `edit`, as someone could in the UI.
    fn edit_metadata(&self, edit: impl FnOnce(&mut Metadata)) {
        let vm = self.web();
        let mut metadata = self.metadata();
        edit(&mut metadata);
        let notes = Notes::parse(vm["config"]["description"].as_str().expect("notes"));
        let description = Notes::render(&notes.user_text, &metadata);
        self.pve.command(
            json!({"cmd": "set_config", "vmid": vm["vmid"], "config": {"description": description}}),
        );
    }

    /// Commits the flake as it is now; returns the commit.
    fn commit(&self, message: &str) -> String {
        git(self.dir(), &["add", "-A"]);
        git(
            self.dir(),
            &["-c", "user.name=test", "-c", "user.email=test@example.invalid", "commit", "-qm", message],
        );
        git(self.dir(), &["rev-parse", "HEAD"]).trim().to_string()
    }

    /// `nixprox <args> --flake path:<fixture>` against the fake cluster, no input overrides.
    fn nixprox(&self, args: &[&str], env: &[(&str, String)]) -> Run {
        self.command(args, env).output().expect("run nixprox").into()
    }

    /// The command [`Lab::nixprox`] runs.
    fn command(&self, args: &[&str], env: &[(&str, String)]) -> Command {
        let mut command = cli::nixprox();
        command
            .args(args)
            .args(["--flake", &self.fixture.flake_ref()])
            .envs(cli::pve_env(&self.pve))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        if let Key::Env = self.key {
            let text = std::fs::read_to_string(&self.host.client_key).expect("read the client key");
            command.env("NIXPROX_SSH_KEY", text);
        }
        command
    }

    fn path(&self, name: &str) -> String {
        self.work.path().join(name).display().to_string()
    }

    /// `plan --format json --out plan.json`; returns the plan.
    fn plan(&self) -> Value {
        let out = self.path("plan.json");
        let run = self.nixprox(&["plan", "--format", "json", "--out", &out], &[]);
        assert_eq!(run.code, 0, "plan failed:\n{}", run.stderr);
        serde_json::from_str(&std::fs::read_to_string(&out).expect("plan.json")).expect("plan json")
    }

    /// `apply --reviewed-plan plan.json --report report.json`; returns the run and the report.
    fn apply(&self, env: &[(&str, String)]) -> (Run, Value) {
        let report = self.path("report.json");
        let _ = std::fs::remove_file(&report);
        let run =
            self.nixprox(&["apply", "--reviewed-plan", &self.path("plan.json"), "--report", &report], env);
        let text = std::fs::read_to_string(&report)
            .unwrap_or_else(|e| panic!("no report ({e}):\n{}\n{}", run.stdout, run.stderr));
        (run, serde_json::from_str(&text).expect("report json"))
    }

    /// The flake's toplevel as nix evaluates it.
    fn toplevel(&self) -> String {
        let output = Command::new("nix")
            .env("NIX_CONFIG", "substituters =")
            .args(["--extra-experimental-features", "nix-command flakes", "eval", "--raw"])
            .arg(format!(
                "{}#nixosConfigurations.web.config.system.build.toplevel.outPath",
                self.fixture.flake_ref()
            ))
            .output()
            .expect("run nix");
        assert!(output.status.success(), "nix eval failed: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The VMs other than the template.
    fn guests(&self) -> Vec<Value> {
        let vms = self.pve.command(json!({"cmd": "vms"}));
        vms.as_array()
            .expect("vms")
            .iter()
            .filter(|v| v["template"] != json!(true) && v["vmid"] != json!(9000))
            .cloned()
            .collect()
    }

    /// The one VM named `web`, as fakepve holds it.
    fn web(&self) -> Value {
        let guests = self.guests();
        let web: Vec<&Value> = guests.iter().filter(|v| v["name"] == "web").collect();
        assert_eq!(web.len(), 1, "exactly one VM `web`: {guests:#?}");
        let vmid = web[0]["vmid"].as_u64().expect("vmid");
        self.pve.vm(u32::try_from(vmid).expect("vmid fits"))
    }

    fn metadata(&self) -> Metadata {
        let vm = self.web();
        let notes = vm["config"]["description"].as_str().expect("notes").to_string();
        Notes::parse(&notes).metadata().cloned().unwrap_or_else(|| panic!("no metadata block in {notes}"))
    }

    /// `switch-to-configuration` calls the fixture systems recorded on the host.
    fn switch_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.host.root().join("run/nixprox-switch.log"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }
}

fn which_git() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("git"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`git` is not on PATH: install it (apt-get install git)"))
}

fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new(which_git()).arg("-C").arg(dir).args(args).output().expect("run git");
    assert!(output.status.success(), "git {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `[kind, …]` of the plan's actions for `web`.
fn kinds(plan: &Value) -> Vec<String> {
    web_actions(plan).iter().map(|a| a["kind"].as_str().unwrap_or_default().to_string()).collect()
}

fn web_actions(plan: &Value) -> Vec<Value> {
    plan["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .filter(|h| h["host"] == "web")
        .flat_map(|h| h["actions"].as_array().expect("actions").clone())
        .collect()
}

fn web_report(report: &Value) -> Value {
    report["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .find(|h| h["host"] == "web")
        .expect("web in the report")
        .clone()
}

/// `[(step, status)]` of web's report.
fn steps(report: &Value) -> Vec<(String, String)> {
    web_report(report)["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            (
                s["step"].as_str().unwrap_or_default().to_string(),
                s["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn step_names(report: &Value) -> Vec<String> {
    steps(report).into_iter().map(|(name, _)| name).collect()
}

/// The `memory` values of the config writes fakepve saw since its request log was cleared.
fn memory_writes(lab: &Lab) -> Vec<String> {
    lab.pve
        .command(json!({"cmd": "requests", "clear": false}))
        .as_array()
        .expect("requests")
        .iter()
        .filter(|r| r[0] == "POST" && r[1].as_str().is_some_and(|p| p.ends_with("/config")))
        .filter_map(|r| {
            let body = r[2].as_str().unwrap_or_default();
            body.split('&').find_map(|kv| kv.strip_prefix("memory=")).map(String::from)
        })
        .collect()
}

/// Installs `web` through plan + apply and checks the whole result; returns the toplevel.
fn install(lab: &Lab) -> String {
    let bootstrap = lab.host.host_public();
    let plan = lab.plan();
    assert_eq!(kinds(&plan), ["create_vm", "install"], "{plan:#}");
    let (run, report) = lab.apply(&[]);
    assert_eq!(run.code, 0, "apply failed:\n{}\n{}", run.stdout, run.stderr);
    assert_eq!(web_report(&report)["status"], "ok", "{report:#}");
    assert_eq!(
        step_names(&report),
        ["clone", "configure", "resize", "start", "address", "install", "finish"],
        "{report:#}"
    );
    let toplevel = lab.toplevel();
    // The host runs the evaluated system and answers with a new key, not the bootstrap one.
    assert_eq!(lab.host.current_system().as_deref(), Some(toplevel.as_str()));
    assert!(lab.host.has_store_path(&toplevel), "closure copied by the installer");
    assert_eq!(lab.switch_log(), [format!("boot {toplevel}")]);
    let served = lab.host.host_public();
    assert_ne!(served, bootstrap);
    let metadata = lab.metadata();
    assert_eq!(metadata.host, "web");
    assert_eq!(metadata.system.as_deref(), Some(toplevel.as_str()));
    assert_eq!(metadata.host_key.as_deref(), Some(served.trim()));
    assert!(metadata.disk_layout.as_deref().is_some_and(|d| d.starts_with("sha256:")), "{metadata:?}");
    assert_eq!(metadata.git_rev.as_deref(), Some(git(lab.dir(), &["rev-parse", "HEAD"]).trim()));
    assert_eq!(metadata.applying, None);
    toplevel
}

#[test]
fn apply_creates_installs_and_pins_the_host_key_then_plans_noop() {
    let lab = Lab::start(2048, Key::File);
    install(&lab);
    let vm = lab.web();
    let tags = vm["config"]["tags"].as_str().expect("tags");
    assert!(tags.split(';').any(|t| t == "nixprox"), "{tags}");
    assert_eq!(vm["status"], "running", "{vm:#}");
    // Nothing is left: the next plan is a noop for web.
    let plan = lab.plan();
    assert_eq!(kinds(&plan), ["noop"], "{plan:#}");
    assert_eq!(lab.guests().len(), 1);
}

#[test]
fn a_changed_flake_is_switched_with_nix_copy_and_recorded() {
    let lab = Lab::start(2048, Key::File);
    let first = install(&lab);
    lab.declare("2", 2048, false);
    let rev = lab.commit("web: revision 2");
    let second = lab.toplevel();
    assert_ne!(first, second);
    let plan = lab.plan();
    assert_eq!(kinds(&plan), ["switch"], "{plan:#}");
    assert!(!lab.host.has_store_path(&second));
    let (run, report) = lab.apply(&[]);
    assert_eq!(run.code, 0, "apply failed:\n{}\n{}", run.stdout, run.stderr);
    assert_eq!(step_names(&report), ["address", "switch", "finish"], "{report:#}");
    assert!(lab.host.has_store_path(&second), "closure copied with nix copy");
    assert_eq!(lab.host.current_system().as_deref(), Some(second.as_str()));
    assert_eq!(lab.switch_log(), [format!("boot {first}"), format!("switch {second}")]);
    let metadata = lab.metadata();
    assert_eq!(metadata.system.as_deref(), Some(second.as_str()));
    assert_eq!(metadata.git_rev.as_deref(), Some(rev.as_str()));
    assert_eq!(metadata.host_key.as_deref(), Some(lab.host.host_public().trim()));
    assert_eq!(metadata.applying, None);
    assert_eq!(kinds(&lab.plan()), ["noop"]);
}

#[test]
fn a_failed_install_keeps_the_vm_and_the_next_apply_resumes_it() {
    let lab = Lab::start(2048, Key::File);
    let plan = lab.plan();
    assert_eq!(kinds(&plan), ["create_vm", "install"], "{plan:#}");
    let fail = [("NIXPROX_TEST_INSTALL_FAIL", "disko: /dev/sda is busy".to_string())];
    let (run, report) = lab.apply(&fail);
    assert_eq!(run.code, 3, "a host failed: {}\n{}", run.stdout, run.stderr);
    let web = web_report(&report);
    assert_eq!(web["status"], "failed", "{report:#}");
    assert_eq!(web["step"], "install", "{report:#}");
    let error = web["error"].as_str().expect("error");
    assert!(error.starts_with("nixos-anywhere failed for `web`: exit code 1"), "{error}");
    assert!(error.contains("disko: /dev/sda is busy"), "the installer's output: {error}");
    assert!(run.stdout.contains("disko: /dev/sda is busy"), "{}", run.stdout);
    // The VM stays, tagged, with `applying` and no system: the journal the next run resumes.
    let vm = lab.web();
    assert!(vm["config"]["tags"].as_str().expect("tags").split(';').any(|t| t == "nixprox"));
    let metadata = lab.metadata();
    assert!(metadata.applying.is_some(), "{metadata:?}");
    assert_eq!(metadata.system, None);
    assert_eq!(lab.host.current_system(), None);

    // Fixed: the same reviewed plan is applied again and finishes the host.
    let (run, report) = lab.apply(&[]);
    assert_eq!(run.code, 0, "resumed apply failed:\n{}\n{}", run.stdout, run.stderr);
    assert_eq!(web_report(&report)["status"], "ok", "{report:#}");
    let steps = steps(&report);
    assert!(!steps.iter().any(|(name, _)| name == "clone"), "no second clone: {steps:?}");
    assert!(steps.contains(&("install".to_string(), "ok".to_string())), "{steps:?}");
    assert_eq!(lab.guests().len(), 1, "no second VM");
    let toplevel = lab.toplevel();
    assert_eq!(lab.host.current_system().as_deref(), Some(toplevel.as_str()));
    let metadata = lab.metadata();
    assert_eq!(metadata.system.as_deref(), Some(toplevel.as_str()));
    assert_eq!(metadata.applying, None);
    assert_eq!(kinds(&lab.plan()), ["noop"]);
}

#[test]
fn the_owners_notes_survive_install_and_switch_byte_for_byte() {
    const OWNER: &str = "Owner: alice.\r\nBackups nightly; do not delete.\n\n";
    let lab = Lab::start(2048, Key::File);
    lab.declare_description("");
    lab.commit("web: no description");
    let plan = lab.plan();
    assert_eq!(kinds(&plan), ["create_vm", "install"], "{plan:#}");
    let fail = [("NIXPROX_TEST_INSTALL_FAIL", "disko: /dev/sda is busy".to_string())];
    let (run, _) = lab.apply(&fail);
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    // Between the runs the owner writes notes above nixprox's block in the Proxmox UI.
    let vmid = lab.web()["vmid"].as_u64().expect("vmid");
    let notes = Notes::render(OWNER, &lab.metadata());
    lab.pve.command(json!({"cmd": "set_config", "vmid": vmid, "config": {"description": notes}}));
    let owner_text = || Notes::parse(lab.web()["config"]["description"].as_str().expect("notes")).user_text;

    let (run, report) = lab.apply(&[]);
    assert_eq!(run.code, 0, "install failed:\n{}\n{}", run.stdout, run.stderr);
    assert_eq!(web_report(&report)["status"], "ok", "{report:#}");
    assert_eq!(lab.metadata().system.as_deref(), Some(lab.toplevel().as_str()));
    assert_eq!(owner_text(), OWNER, "after install");

    lab.declare("2", 2048, false);
    lab.declare_description("");
    lab.commit("web: revision 2");
    assert_eq!(kinds(&lab.plan()), ["switch"]);
    let (run, _) = lab.apply(&[]);
    assert_eq!(run.code, 0, "switch failed:\n{}\n{}", run.stdout, run.stderr);
    assert_eq!(lab.metadata().system.as_deref(), Some(lab.toplevel().as_str()));
    assert_eq!(owner_text(), OWNER, "after switch");
}

/// A lab whose host takes a disk-encryption key from `DISK_KEY_FOR_TEST`, planned.
fn lab_with_a_disk_key() -> Lab {
    let lab = Lab::start(2048, Key::File);
    lab.declare_more("diskKeys", json!({"/run/nixprox-disk.key": "env:DISK_KEY_FOR_TEST"}));
    lab.commit("web: a disk key");
    assert_eq!(kinds(&lab.plan()), ["create_vm", "install"]);
    lab
}

#[test]
fn disk_keys_from_the_environment_reach_the_host_byte_for_byte() {
    // Trailing blanks and newlines are part of the key: a trimmed key opens nothing.
    const KEY: &str = "canary-disk-key-5e1f \t\n\n";
    let lab = lab_with_a_disk_key();
    let (run, report) = lab.apply(&[("DISK_KEY_FOR_TEST", KEY.to_string())]);
    assert_eq!(run.code, 0, "apply failed:\n{}\n{}", run.stdout, run.stderr);
    let placed = std::fs::read(lab.host.root().join("run/nixprox-disk.key")).expect("the key on the host");
    assert_eq!(placed, KEY.as_bytes(), "the key arrives byte for byte");
    let report = report.to_string();
    for output in [&run.stdout, &run.stderr, &report] {
        assert!(!output.contains("canary-disk-key"), "the disk key leaked:\n{output}");
    }
}

#[test]
fn a_reinstall_hands_secrets_only_to_the_machine_with_the_pinned_key() {
    let lab = Lab::start(2048, Key::File);
    let first = install(&lab);
    let installed_key = lab.host.host_public();
    lab.allow_reinstall();
    lab.commit("allow reinstall");
    // The block now says NixOS is gone (so a reinstall is planned), and pins another machine's
    // key: the machine answering at the address is not the one nixprox installed.
    let impostor = nixprox::ssh::generate_host_key("elsewhere").expect("key").public;
    lab.edit_metadata(|m| {
        m.system = None;
        m.host_key = Some(impostor.clone());
    });
    assert_eq!(kinds(&lab.plan()), ["reinstall"]);
    let (run, report) = lab.apply(&[]);
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    let error = web_report(&report)["error"].as_str().expect("error").to_string();
    assert!(error.starts_with("refusing to install `web`"), "{error}");
    assert!(error.contains("nothing was sent to it"), "{error}");
    assert_eq!(lab.host.host_public(), installed_key, "no new host key reached the machine");
    assert_eq!(lab.host.current_system().as_deref(), Some(first.as_str()));

    // Pinned to the machine's real key, the same reinstall goes ahead and pins a new key.
    lab.edit_metadata(|m| m.host_key = Some(installed_key.trim().to_string()));
    assert_eq!(kinds(&lab.plan()), ["reinstall"]);
    let (run, report) = lab.apply(&[]);
    assert_eq!(run.code, 0, "reinstall failed:\n{}\n{}", run.stdout, run.stderr);
    assert_eq!(web_report(&report)["status"], "ok", "{report:#}");
    assert_ne!(lab.host.host_public(), installed_key);
    assert_eq!(lab.metadata().host_key.as_deref(), Some(lab.host.host_public().trim()));
    assert_eq!(lab.metadata().system.as_deref(), Some(first.as_str()));
}

#[test]
fn a_user_with_passwordless_sudo_switches_probes_and_reinstalls() {
    let lab = Lab::start(2048, Key::File);
    let user = lab.host.sudo_user();
    let first = install(&lab);
    lab.declare("2", 2048, false);
    lab.ssh_user(user);
    lab.commit("web: revision 2, deployed as the sudo user");
    let second = lab.toplevel();
    assert_eq!(kinds(&lab.plan()), ["switch"]);
    let (run, report) = lab.apply(&[]);
    assert_eq!(run.code, 0, "switch failed:\n{}\n{}", run.stdout, run.stderr);
    assert_eq!(web_report(&report)["status"], "ok", "{report:#}");
    assert_eq!(lab.host.current_system().as_deref(), Some(second.as_str()));
    assert_eq!(lab.switch_log(), [format!("boot {first}"), format!("switch {second}")]);
    assert_eq!(lab.metadata().system.as_deref(), Some(second.as_str()));
    let sshd_log = std::fs::read_to_string(lab.host.root().join("sshd.log")).expect("sshd log");
    assert!(sshd_log.contains(&format!("Accepted publickey for {user}")), "{sshd_log}");

    // `plan --probe` as the same user: the host runs what the block records.
    let run = lab.nixprox(&["plan", "--probe", "--format", "json"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let plan: Value = serde_json::from_str(&run.stdout).expect("plan json");
    assert_eq!(plan["probe"]["probed"], 1, "{plan:#}");
    assert_eq!(plan["probe"]["unreachable"], json!([]), "{plan:#}");
    assert_eq!(kinds(&plan), ["noop"]);

    // A reinstall logs in as the same user too; nixos-anywhere escalates with sudo.
    lab.allow_reinstall();
    lab.commit("allow reinstall");
    lab.edit_metadata(|m| m.system = None);
    assert_eq!(kinds(&lab.plan()), ["reinstall"]);
    let (run, report) = lab.apply(&[]);
    assert_eq!(run.code, 0, "reinstall failed:\n{}\n{}", run.stdout, run.stderr);
    assert_eq!(web_report(&report)["status"], "ok", "{report:#}");
    assert_eq!(lab.metadata().system.as_deref(), Some(second.as_str()));
    assert_eq!(lab.metadata().host_key.as_deref(), Some(lab.host.host_public().trim()));
}

#[test]
fn the_ssh_key_from_nixprox_ssh_key_installs_and_never_shows() {
    let lab = Lab::start(2048, Key::Env);
    let plan = lab.plan();
    assert_eq!(kinds(&plan), ["create_vm", "install"], "{plan:#}");
    let (run, report) = lab.apply(&[]);
    assert_eq!(run.code, 0, "apply failed:\n{}\n{}", run.stdout, run.stderr);
    assert_eq!(web_report(&report)["status"], "ok", "{report:#}");
    assert_eq!(lab.metadata().system.as_deref(), Some(lab.toplevel().as_str()));
    // Canary: no line of the private key's body, nor the API token's secret, in any output.
    let key = std::fs::read_to_string(&lab.host.client_key).expect("key");
    let body: Vec<&str> = key.lines().filter(|l| !l.starts_with("-----") && l.len() > 16).collect();
    assert!(!body.is_empty());
    let report_text = report.to_string();
    for output in [&run.stdout, &run.stderr, &report_text] {
        for line in &body {
            assert!(!output.contains(line), "the private key leaked:\n{output}");
        }
        assert!(!output.contains(lab.pve.secret()), "the API token leaked");
    }
}

#[test]
fn kexec_gets_enough_memory_for_the_install_and_the_declared_memory_comes_back() {
    let lab = Lab::start(1024, Key::File);
    let plan = lab.plan();
    let install = web_actions(&plan).into_iter().find(|a| a["kind"] == "install").expect("install action");
    assert_eq!(
        install["reason"],
        "new VM: install NixOS with nixos-anywhere (memory raised to 1536 MiB for kexec, restored after)"
    );
    lab.pve.requests(true);
    let (run, report) = lab.apply(&[]);
    assert_eq!(run.code, 0, "apply failed:\n{}\n{}", run.stdout, run.stderr);
    assert_eq!(
        step_names(&report),
        [
            "clone",
            "raise memory for kexec",
            "configure",
            "resize",
            "start",
            "address",
            "install",
            "restore memory",
            "finish"
        ],
        "{report:#}"
    );
    // The VM runs with 1536 MiB; 1024 waits for its next restart (deploy.allowReboot is off).
    let web = web_report(&report);
    assert_eq!(web["status"], "pending_reboot", "{report:#}");
    assert_eq!(web["keys"], json!(["memory"]), "{report:#}");
    let vm = lab.web();
    assert_eq!(vm["config"]["memory"].to_string().trim_matches('"'), "1536", "{vm:#}");
    assert_eq!(vm["pending"]["memory"].to_string().trim_matches('"'), "1024", "{vm:#}");
    // The config writes of `memory`, in order: raised before configure and the start (so
    // configure never lowers it), restored after the install.
    assert_eq!(memory_writes(&lab), ["1536", "1024"]);
    let metadata = lab.metadata();
    assert_eq!(metadata.system.as_deref(), Some(lab.toplevel().as_str()));
    assert_eq!(metadata.applying, None);
    // After the restart the VM is in sync; until then the plan says what waits for it.
    let plan = lab.plan();
    assert_eq!(kinds(&plan), ["noop"], "{plan:#}");
}

#[test]
fn with_allow_reboot_the_declared_memory_is_restored_by_a_reboot() {
    let lab = Lab::start(1024, Key::File);
    lab.declare("1", 1024, true);
    lab.commit("web: deploy.allowReboot");
    lab.plan();
    let (run, report) = lab.apply(&[]);
    assert_eq!(run.code, 0, "apply failed:\n{}\n{}", run.stdout, run.stderr);
    assert_eq!(web_report(&report)["status"], "ok", "{report:#}");
    let steps = step_names(&report);
    let restore = steps.iter().position(|s| s == "restore memory").expect("restore step");
    assert_eq!(steps[restore + 1..], ["reboot", "finish"], "{report:#}");
    let vm = lab.web();
    assert_eq!(vm["config"]["memory"].to_string().trim_matches('"'), "1024", "{vm:#}");
    assert!(vm["pending"].get("memory").is_none(), "{vm:#}");
    assert_eq!(kinds(&lab.plan()), ["noop"]);
}

#[test]
fn a_small_vm_whose_install_failed_is_resumed_with_the_raised_memory() {
    let lab = Lab::start(1024, Key::File);
    lab.plan();
    let fail = [("NIXPROX_TEST_INSTALL_FAIL", "kexec: out of memory".to_string())];
    let (run, report) = lab.apply(&fail);
    assert_eq!(run.code, 3, "a host failed: {}\n{}", run.stdout, run.stderr);
    assert_eq!(web_report(&report)["step"], "install", "{report:#}");
    // The raised memory stays for the next attempt.
    assert_eq!(lab.web()["config"]["memory"].to_string().trim_matches('"'), "1536");
    // The same reviewed plan, applied again once the cause is fixed.
    lab.pve.requests(true);
    let (run, report) = lab.apply(&[]);
    assert_eq!(run.code, 0, "resumed apply failed:\n{}\n{}", run.stdout, run.stderr);
    assert_eq!(web_report(&report)["status"], "pending_reboot", "{report:#}");
    let steps = steps(&report);
    assert!(steps.contains(&("raise memory for kexec".into(), "already_done".into())), "{steps:?}");
    assert!(steps.contains(&("restore memory".into(), "ok".into())), "{steps:?}");
    // Memory was never lowered before the install: the only write of it is the restore.
    assert_eq!(memory_writes(&lab), ["1024"]);
    assert_eq!(lab.guests().len(), 1, "no second VM");
    let vm = lab.web();
    assert_eq!(vm["pending"]["memory"].to_string().trim_matches('"'), "1024", "{vm:#}");
    assert_eq!(lab.metadata().system.as_deref(), Some(lab.toplevel().as_str()));
}

#[test]
fn sigterm_during_an_install_stops_the_installer_leaves_no_secret_behind_and_a_rerun_installs() {
    const KEY: &str = "canary-disk-key-7d2a\n";
    let lab = lab_with_a_disk_key();
    // nixprox's temporary files (the `--extra-files` directory with the new host key, the disk
    // key) and the installer's (its copy of the SSH key) all land in this TMPDIR.
    let tmp = tempfile::Builder::new().prefix("nixprox-deploy-tmp-").tempdir().expect("tempdir");
    let pids = lab.work.path().join("installer.pids");
    let report = lab.path("report.json");
    let env = [
        ("DISK_KEY_FOR_TEST", KEY.to_string()),
        ("NIXPROX_TEST_INSTALL_HANG", pids.display().to_string()),
        ("TMPDIR", tmp.path().display().to_string()),
    ];
    let args = ["apply", "--reviewed-plan", &lab.path("plan.json"), "--report", &report];
    let output = lab.work.path().join("apply.log");
    let mut child = lab
        .command(&args, &env)
        .stdout(std::fs::File::create(lab.work.path().join("apply.out")).expect("stdout file"))
        .stderr(std::fs::File::create(&output).expect("stderr file"))
        .spawn()
        .expect("start nixprox");
    let log = || std::fs::read_to_string(&output).unwrap_or_default();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    while !pids.exists() {
        assert!(std::time::Instant::now() < deadline, "the install never started:\n{}", log());
        assert!(child.try_wait().expect("wait").is_none(), "apply ended early:\n{}", log());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let installer: Vec<String> =
        std::fs::read_to_string(&pids).expect("pids").split_whitespace().map(String::from).collect();
    assert!(
        std::fs::read_dir(tmp.path()).expect("tmp").count() > 0,
        "the install's temporary files exist while it runs"
    );
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "apply did not stop:\n{}", log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(143), "{}", log());
    // The installer and its children are gone, and so is every temporary file with a secret.
    for pid in &installer {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start()).unwrap_or_default();
        assert!(stat.is_empty() || state.starts_with('Z'), "installer process {pid} still runs: {stat}");
    }
    let left: Vec<_> = std::fs::read_dir(tmp.path()).expect("tmp").flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "temporary files left behind: {left:?}");
    // The report says where the host stopped; the VM keeps `applying` for the next run.
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("report json");
    let web = web_report(&report);
    assert_eq!(
        (web["status"].as_str(), web["step"].as_str()),
        (Some("cancelled"), Some("install")),
        "{report:#}"
    );
    assert!(steps(&report).contains(&("install".into(), "cancelled".into())), "{report:#}");
    assert!(!step_names(&report).contains(&"finish".to_string()), "{report:#}");
    assert_eq!(report["cancelled_by"], "SIGTERM");
    assert!(!log().contains("canary-disk-key"), "the disk key leaked");
    let metadata = lab.metadata();
    assert!(metadata.applying.is_some() && metadata.system.is_none(), "{metadata:?}");

    // The next run installs, once.
    let (run, report) = lab.apply(&[("DISK_KEY_FOR_TEST", KEY.to_string())]);
    assert_eq!(run.code, 0, "resumed apply failed:\n{}\n{}", run.stdout, run.stderr);
    assert_eq!(web_report(&report)["status"], "ok", "{report:#}");
    assert_eq!(lab.guests().len(), 1, "no second VM");
    assert_eq!(lab.metadata().system.as_deref(), Some(lab.toplevel().as_str()));
}

/// A lab whose `web` declares the stand-in kernel 6.6.30, installed (so `/run/booted-system`
/// is its system), and whose VM's reboots in fakepve reboot the SSH host; then the flake
/// declares revision 2 with `kernel`, `memory` and `deploy.allowReboot` as given. Returns the
/// lab (planned), the installed system and the new one.
fn switch_with_kernel(kernel: &str, memory: u64, allow_reboot: bool) -> (Lab, String, String) {
    let lab = Lab::start(2048, Key::File);
    lab.declare_more("kernel", json!("6.6.30"));
    lab.commit("web: kernel 6.6.30");
    let first = install(&lab);
    assert_eq!(lab.host.booted_system().as_deref(), Some(first.as_str()));
    let touch = lab.host.reboot_file().display().to_string();
    lab.pve.command(json!({"cmd": "on_reboot", "name": "web", "touch": touch}));
    lab.declare("2", memory, allow_reboot);
    lab.declare_more("kernel", json!(kernel));
    lab.commit(&format!("web: revision 2, kernel {kernel}"));
    let second = lab.toplevel();
    assert_ne!(first, second);
    let switch = if memory == 2048 { vec!["switch"] } else { vec!["update_vm", "switch"] };
    assert_eq!(kinds(&lab.plan()), switch);
    lab.pve.requests(true);
    (lab, first, second)
}

/// The reboot requests fakepve saw since its request log was cleared.
fn reboot_requests(lab: &Lab) -> usize {
    lab.pve
        .requests(false)
        .iter()
        .filter(|(method, path)| method == "POST" && path.ends_with("/status/reboot"))
        .count()
}

#[test]
fn with_allow_reboot_a_new_kernel_is_booted_by_one_reboot() {
    let (lab, _, second) = switch_with_kernel("6.6.31", 2048, true);
    let (run, report) = lab.apply(&[]);
    assert_eq!(run.code, 0, "apply failed:\n{}\n{}", run.stdout, run.stderr);
    assert_eq!(web_report(&report)["status"], "ok", "{report:#}");
    assert_eq!(step_names(&report), ["address", "switch", "reboot", "rebooted", "finish"], "{report:#}");
    let reboot = &web_report(&report)["steps"][2];
    assert!(reboot["detail"].as_str().is_some_and(|d| d.contains("kernel")), "{report:#}");
    assert_eq!(reboot_requests(&lab), 1);
    assert_eq!(lab.host.current_system().as_deref(), Some(second.as_str()));
    assert_eq!(lab.host.booted_system().as_deref(), Some(second.as_str()));
    assert_eq!(lab.metadata().system.as_deref(), Some(second.as_str()));
    assert_eq!(kinds(&lab.plan()), ["noop"]);
}

/// An HA resource is rebooted as any VM: qemu-server's `vm_reboot` restarts it itself (only
/// start, stop and shutdown are handed to the HA manager), so HA's requested state stays
/// `started`. nixprox reboots it once and never stops or starts it, which would change what
/// HA was asked for.
#[test]
fn an_ha_managed_vm_is_rebooted_once_without_touching_has_requested_state() {
    let (lab, _, second) = switch_with_kernel("6.6.31", 3072, true);
    let vmid = lab.web()["vmid"].clone();
    lab.pve.command(json!({"cmd": "set_vm", "vmid": vmid, "ha_state": "started"}));
    let (run, report) = lab.apply(&[]);
    assert_eq!(run.code, 0, "apply failed:\n{}\n{}", run.stdout, run.stderr);
    assert_eq!(web_report(&report)["status"], "ok", "{report:#}");
    assert_eq!(reboot_requests(&lab), 1);
    let requests = lab.pve.requests(false);
    let power = ["/status/stop", "/status/shutdown", "/status/start"];
    assert!(
        !requests.iter().any(|(m, p)| m == "POST" && power.iter().any(|w| p.ends_with(w))),
        "{requests:?}"
    );
    let vm = lab.web();
    assert_eq!(vm["status"], "running", "{vm:#}");
    assert_eq!(vm["ha_state"], "started", "{vm:#}");
    assert!(vm["pending"].get("memory").is_none(), "{vm:#}");
    assert_eq!(lab.host.booted_system().as_deref(), Some(second.as_str()));
    assert_eq!(kinds(&lab.plan()), ["noop"]);
}

#[test]
fn without_allow_reboot_a_new_kernel_is_reported_as_a_pending_reboot() {
    let (lab, first, second) = switch_with_kernel("6.6.31", 2048, false);
    let (run, report) = lab.apply(&[]);
    assert_eq!(run.code, 0, "apply failed:\n{}\n{}", run.stdout, run.stderr);
    let web = web_report(&report);
    assert_eq!(web["status"], "pending_reboot", "{report:#}");
    assert_eq!(web["keys"], json!(["kernel"]), "{report:#}");
    assert_eq!(step_names(&report), ["address", "switch", "finish"], "{report:#}");
    assert_eq!(reboot_requests(&lab), 0, "no reboot without deploy.allowReboot");
    assert_eq!(lab.host.current_system().as_deref(), Some(second.as_str()));
    assert_eq!(lab.host.booted_system().as_deref(), Some(first.as_str()), "still the old kernel");
    assert_eq!(lab.metadata().system.as_deref(), Some(second.as_str()));
    assert_eq!(kinds(&lab.plan()), ["noop"]);
}

#[test]
fn a_switch_that_changes_nothing_boot_related_does_not_reboot() {
    let (lab, first, second) = switch_with_kernel("6.6.30", 2048, true);
    let (run, report) = lab.apply(&[]);
    assert_eq!(run.code, 0, "apply failed:\n{}\n{}", run.stdout, run.stderr);
    assert_eq!(web_report(&report)["status"], "ok", "{report:#}");
    assert_eq!(step_names(&report), ["address", "switch", "finish"], "{report:#}");
    assert_eq!(reboot_requests(&lab), 0);
    assert_eq!(lab.host.current_system().as_deref(), Some(second.as_str()));
    assert_eq!(lab.host.booted_system().as_deref(), Some(first.as_str()));
}

#[test]
fn pending_changes_and_a_new_kernel_share_one_reboot_after_the_switch() {
    let (lab, _, second) = switch_with_kernel("6.6.31", 3072, true);
    let (run, report) = lab.apply(&[]);
    assert_eq!(run.code, 0, "apply failed:\n{}\n{}", run.stdout, run.stderr);
    assert_eq!(web_report(&report)["status"], "ok", "{report:#}");
    assert_eq!(
        step_names(&report),
        ["configure", "pending", "address", "switch", "reboot", "rebooted", "finish"],
        "{report:#}"
    );
    let reboot = &web_report(&report)["steps"][4];
    assert_eq!(reboot["detail"], "rebooted for memory, kernel (deploy.allowReboot)", "{report:#}");
    assert_eq!(reboot_requests(&lab), 1, "one reboot for both");
    let vm = lab.web();
    assert_eq!(vm["config"]["memory"].to_string().trim_matches('"'), "3072", "{vm:#}");
    assert!(vm["pending"].get("memory").is_none(), "{vm:#}");
    assert_eq!(lab.host.booted_system().as_deref(), Some(second.as_str()));
    assert_eq!(kinds(&lab.plan()), ["noop"]);
}

/// While an install runs, nixprox's secrets (the deploy key from `NIXPROX_SSH_KEY`, the disk
/// key, the `--extra-files` directory with the new host key) are each in a private (0700)
/// directory under `RUNNER_TEMP`, nothing of nixprox's is in `TMPDIR`, and a SIGTERM removes
/// them all.
#[test]
fn install_secrets_live_in_private_dirs_under_runner_temp_and_go_with_sigterm() {
    use std::os::unix::fs::PermissionsExt;
    const KEY: &str = "canary-disk-key-91c4\n";
    let lab = Lab::start(2048, Key::Env);
    lab.declare_more("diskKeys", json!({"/run/nixprox-disk.key": "env:DISK_KEY_FOR_TEST"}));
    lab.commit("web: a disk key");
    assert_eq!(kinds(&lab.plan()), ["create_vm", "install"]);
    let runner_temp = tempfile::Builder::new().prefix("nixprox-runner-temp-").tempdir().expect("tempdir");
    let tmp = tempfile::Builder::new().prefix("nixprox-deploy-tmp-").tempdir().expect("tempdir");
    let pids = lab.work.path().join("installer.pids");
    let env = [
        ("DISK_KEY_FOR_TEST", KEY.to_string()),
        ("NIXPROX_TEST_INSTALL_HANG", pids.display().to_string()),
        ("TMPDIR", tmp.path().display().to_string()),
        ("RUNNER_TEMP", runner_temp.path().display().to_string()),
    ];
    let output = lab.work.path().join("apply.log");
    let mut child = lab
        .command(&["apply", "--reviewed-plan", &lab.path("plan.json")], &env)
        .stdout(std::fs::File::create(lab.work.path().join("apply.out")).expect("stdout file"))
        .stderr(std::fs::File::create(&output).expect("stderr file"))
        .spawn()
        .expect("start nixprox");
    let log = || std::fs::read_to_string(&output).unwrap_or_default();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    while !pids.exists() {
        assert!(std::time::Instant::now() < deadline, "the install never started:\n{}", log());
        assert!(child.try_wait().expect("wait").is_none(), "apply ended early:\n{}", log());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let mut dirs: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(runner_temp.path()).expect("runner temp").flatten() {
        let meta = entry.metadata().expect("stat");
        assert!(meta.is_dir(), "only private directories: {:?}", entry.file_name());
        assert_eq!(meta.permissions().mode() & 0o777, 0o700, "{:?} is private", entry.file_name());
        dirs.push(entry.file_name().to_string_lossy().into_owned());
    }
    dirs.sort();
    let kinds: Vec<&str> = dirs.iter().map(|d| d.rsplit_once('-').map_or(d.as_str(), |(k, _)| k)).collect();
    assert_eq!(kinds, ["nixprox-extra-files", "nixprox-key", "nixprox-secret"], "{dirs:?}");
    let ours: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("tmp")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("nixprox"))
        .map(|e| e.file_name())
        .collect();
    assert!(ours.is_empty(), "nothing of nixprox's in TMPDIR: {ours:?}");
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "apply did not stop:\n{}", log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(143), "{}", log());
    let left: Vec<_> = std::fs::read_dir(runner_temp.path())
        .expect("runner temp")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "secrets left behind: {left:?}");
    assert!(!log().contains("canary-disk-key"), "the disk key leaked");
}
