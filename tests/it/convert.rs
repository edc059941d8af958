//! Converting VMs made outside nixprox that do not run NixOS, through the real binary:
//! fakepve holds untagged Debian VMs with their owners' notes, whose guest agents report
//! Debian (`get-osinfo`) and a host key (`file-read`); SSH test hosts stand in for the
//! machines (no `/run/current-system`: no NixOS), and the test nixos-anywhere installs the
//! flake's system on them. The plan is made as a pull-request job makes it (no SSH key).
//!
//! What must hold: the plan shows `adopt` + `reinstall`, never a switch; each host's
//! reinstall is opened by its own `nixprox.allow.reinstall` (or the global policy); the key
//! the machine presents now is pinned before anything runs, and a machine presenting another
//! key gets no login and no installer, and its host fails naming why.

use std::path::{Path, PathBuf};

use nixprox::metadata::{Metadata, Notes};
use nixprox::proxmox::guest::ED25519_HOST_KEY;
use serde_json::{Value, json};

use crate::support::cli::{self, Run};
use crate::support::fakepve::{FakePve, Scenario};
use crate::support::hosts::debian_os;
use crate::support::nix::Fixture;
use crate::support::sshd::{TestHost, systems, write_fake_nixos_anywhere};

/// The owners' notes, with the line ends and blank lines they typed.
const OWNER: &str = "Debian box of the lab.\r\nAsk Bob before rebooting.\n\n";

/// One converted host: its test host and VM.
struct Vm {
    name: &'static str,
    vmid: u32,
    host: TestHost,
}

struct Lab {
    vms: Vec<Vm>,
    pve: FakePve,
    fixture: Fixture,
    work: tempfile::TempDir,
    installer: PathBuf,
}

/// Guest-agent answers of a Debian VM whose key file holds `public`.
fn debian_agent(public: &str) -> Value {
    json!({"os": debian_os(), "files": {ED25519_HOST_KEY: format!("{public}\n")}})
}

fn vm_json(vmid: u32, name: &str, agent: Value) -> Value {
    json!({
        "vmid": vmid, "name": name, "node": "pve1", "status": "running", "agent": agent,
        "config": {
            "name": name, "cores": 2, "sockets": 1, "cpu": "x86-64-v2-AES", "memory": "2048",
            "agent": "1", "onboot": 1, "ostype": "l26", "scsihw": "virtio-scsi-single",
            "scsi0": format!("local-lvm:vm-{vmid}-disk-0,size=20G"),
            "net0": format!("virtio=BC:24:11:00:01:{:02X},bridge=vmbr0", vmid % 256),
            "boot": "order=scsi0", "tags": "lab", "description": OWNER
        }
    })
}

impl Lab {
    /// `alpha` (VM 131), whose agent reads the key its sshd presents, and `beta` (VM 132),
    /// whose agent reads another key (`beta`'s machine is not the one the API speaks for).
    fn start() -> Lab {
        let alpha = Vm { name: "alpha", vmid: 131, host: TestHost::start() };
        let beta = Vm { name: "beta", vmid: 132, host: TestHost::start() };
        let other = nixprox::ssh::generate_host_key("root@elsewhere").expect("key").public;
        let scenario = Scenario::new()
            .guest(vm_json(alpha.vmid, alpha.name, debian_agent(&alpha.host.host_public())))
            .guest(vm_json(beta.vmid, beta.name, debian_agent(&other)));
        let pve = FakePve::start(scenario);
        let fixture = Fixture::copy("convert");
        let work = tempfile::Builder::new().prefix("nixprox-convert-").tempdir().expect("tempdir");
        let installer = write_fake_nixos_anywhere(work.path());
        let lab = Lab { vms: vec![alpha, beta], pve, fixture, work, installer };
        lab.declare(&["alpha"], &json!({}));
        lab.fixture.lock();
        lab
    }

    fn dir(&self) -> &Path {
        self.fixture.dir.path()
    }

    fn path(&self, name: &str) -> String {
        self.work.path().join(name).display().to_string()
    }

    fn vm(&self, name: &str) -> &Vm {
        self.vms.iter().find(|v| v.name == name).expect("vm")
    }

    /// `test-host.json` with `allowed` opting in to their reinstall (`more`: extra fields per
    /// host), `nixprox.yaml` (apply's, with the SSH key and the test installer) and `pr.yaml`
    /// (a pull-request job's: no SSH key).
    fn declare(&self, allowed: &[&str], more: &Value) {
        let client = &self.vms[0].host;
        let mut hosts = json!({});
        for vm in &self.vms {
            let mut host = json!({
                "vmid": vm.vmid, "address": vm.host.address, "port": vm.host.port, "disko": true,
                "allowReinstall": allowed.contains(&vm.name),
            });
            if let Some(extra) = more.get(vm.name).and_then(Value::as_object) {
                for (key, value) in extra {
                    host[key] = value.clone();
                }
            }
            hosts[vm.name] = host;
        }
        let declared = json!({
            "system": systems::current_system(), "revision": "1",
            // Every test host authorizes its own client key; one key for all: copy alpha's.
            "clientKey": client.client_public, "hosts": hosts,
        });
        std::fs::write(self.dir().join("test-hosts.json"), declared.to_string())
            .expect("write test-hosts.json");
        for vm in &self.vms[1..] {
            std::fs::copy(
                client.root().join("etc-ssh/authorized_keys"),
                vm.host.root().join("etc-ssh/authorized_keys"),
            )
            .expect("authorize the client key");
        }
        let base =
            "defaults:\n  node: pve1\n  storage: local-lvm\n  bridge: vmbr0\napply:\n  address_timeout: 30\n";
        std::fs::write(self.path("pr.yaml"), base).expect("write pr.yaml");
        let rest = format!(
            "ssh:\n  key: {}\n  connect_timeout: 20\ninstall:\n  command: [{}]\n  timeout: 300\n",
            client.client_key.display(),
            self.installer.display()
        );
        std::fs::write(self.dir().join("nixprox.yaml"), format!("{base}{rest}")).expect("write nixprox.yaml");
    }

    fn nixprox(&self, args: &[&str]) -> Run {
        self.nixprox_env(args, &[])
    }

    fn nixprox_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut command = cli::nixprox();
        command
            .args(args)
            .args(["--flake", &self.fixture.flake_ref()])
            .envs(cli::pve_env(&self.pve))
            .env("NIXPROX_TEST_INSTALL_LOG", self.path("installs.log"))
            .envs(env.iter().copied());
        command.output().expect("run nixprox").into()
    }

    /// `plan` as a pull-request job makes it (`config`: `pr.yaml` unless given), to `plan.json`.
    fn plan_with(&self, config: &str) -> Value {
        let out = self.path("plan.json");
        let run = self.nixprox(&["plan", "--config", config, "--format", "json", "--out", &out]);
        assert_eq!(run.code, 0, "plan failed:\n{}", run.stderr);
        serde_json::from_str(&std::fs::read_to_string(&out).expect("plan.json")).expect("plan json")
    }

    fn plan(&self) -> Value {
        self.plan_with(&self.path("pr.yaml"))
    }

    fn apply(&self) -> (Run, Value) {
        let report = self.path("report.json");
        let _ = std::fs::remove_file(&report);
        let run = self.nixprox(&["apply", "--reviewed-plan", &self.path("plan.json"), "--report", &report]);
        let text = std::fs::read_to_string(&report)
            .unwrap_or_else(|e| panic!("no report ({e}):\n{}\n{}", run.stdout, run.stderr));
        (run, serde_json::from_str(&text).expect("report json"))
    }

    /// The hosts the test installer ran for, one line per run.
    fn installs(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("installs.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.split(' ').next().unwrap_or_default().to_string())
            .collect()
    }

    fn notes(&self, name: &str) -> Notes {
        let vm = self.pve.vm(self.vm(name).vmid);
        Notes::parse(vm["config"]["description"].as_str().unwrap_or_default())
    }

    fn metadata(&self, name: &str) -> Metadata {
        self.notes(name).metadata().cloned().unwrap_or_else(|| panic!("no block: {:?}", self.notes(name)))
    }

    /// Lines of a host's sshd log that show a login.
    fn logins(&self, name: &str) -> usize {
        let log = std::fs::read_to_string(self.vm(name).host.root().join("sshd.log")).unwrap_or_default();
        log.lines().filter(|l| l.contains("Accepted publickey")).count()
    }
}

fn report_of(report: &Value, host: &str) -> Value {
    report["hosts"].as_array().expect("hosts").iter().find(|h| h["host"] == host).expect("host").clone()
}

#[test]
fn debian_vms_are_converted_one_host_gate_at_a_time_and_a_wrong_key_gets_nothing() {
    let lab = Lab::start();
    let alpha_old_key = lab.vm("alpha").host.host_public();

    // 1. The pull request opens alpha's reinstall only: alpha's conversion runs, beta's waits.
    let plan = lab.plan();
    assert_eq!(cli::kinds(&plan, "alpha"), ["adopt", "reinstall"], "{plan:#}");
    assert_eq!(cli::kinds(&plan, "beta"), ["adopt", "reinstall"], "{plan:#}");
    assert_eq!(plan["summary"]["switch"], 0, "never a switch: {plan:#}");
    let alpha = cli::actions(&plan, "alpha");
    assert_eq!(alpha[0]["changes"][1], json!({"field": "os", "before": "debian", "after": "nixos"}));
    assert!(alpha.iter().all(|a| a["blocked"].is_null()), "{alpha:#?}");
    let reason = alpha[1]["reason"].as_str().expect("reason");
    assert!(reason.contains("runs `debian`, not NixOS") && reason.contains("wipes its disks"), "{reason}");
    assert!(
        reason.ends_with("(allowed for this host alone by `nixprox.allow.reinstall = true`)"),
        "{reason}"
    );
    for action in cli::actions(&plan, "beta") {
        assert_eq!(action["blocked"]["setting"], "nixprox.allow.reinstall", "{action:#}");
    }
    // The Markdown plan carries the destructive banner.
    let markdown = lab.nixprox(&["plan", "--config", &lab.path("pr.yaml"), "--format", "markdown"]);
    assert!(
        markdown.stdout.contains("**Destructive changes:** 1 will run on merge, 1 blocked"),
        "{}",
        markdown.stdout
    );
    assert!(
        markdown.stdout.contains("Set `nixprox.allow.reinstall = true` in the host's module to allow."),
        "{}",
        markdown.stdout
    );
    let text = lab.nixprox(&["plan", "--config", &lab.path("pr.yaml")]);
    assert!(
        text.stdout.contains("(set `nixprox.allow.reinstall = true` in the host's module to allow)"),
        "{}",
        text.stdout
    );

    // The global policy keeps working: it opens both, with no per-host note.
    let global = lab.path("global.yaml");
    std::fs::write(
        &global,
        format!(
            "{}policies:\n  allow_reinstall: true\n",
            std::fs::read_to_string(lab.path("pr.yaml")).expect("pr.yaml")
        ),
    )
    .expect("write global.yaml");
    let opened = lab.plan_with(&global);
    for host in ["alpha", "beta"] {
        let actions = cli::actions(&opened, host);
        assert!(actions.iter().all(|a| a["blocked"].is_null()), "{actions:#?}");
        assert!(
            !actions[1]["reason"].as_str().unwrap_or_default().contains("for this host alone"),
            "{actions:#?}"
        );
    }
    let plan = lab.plan();

    let (run, report) = lab.apply();
    assert_eq!(run.code, 0, "apply failed:\n{}\n{}", run.stdout, run.stderr);
    let alpha_report = report_of(&report, "alpha");
    assert_eq!(alpha_report["status"], "ok", "{report:#}");
    let steps: Vec<&str> =
        alpha_report["steps"].as_array().expect("steps").iter().filter_map(|s| s["step"].as_str()).collect();
    assert_eq!(steps, ["adopt", "configure", "reinstall", "finish"], "{report:#}");
    assert_eq!(lab.installs(), ["alpha"], "the installer ran once, for alpha");
    // nixos-anywhere's own (unchecked) connections went through the tunnel that verifies the
    // pinned key (`pin_proxy`).
    let log = std::fs::read_to_string(lab.path("installs.log")).expect("installs.log");
    assert!(log.contains("-o ProxyCommand=/"), "{log}");
    // alpha runs the flake's system, presents its new key, and the block records both.
    let toplevel =
        cli::actions(&plan, "alpha")[1]["changes"][0]["after"].as_str().expect("system").to_string();
    let alpha_host = &lab.vm("alpha").host;
    assert_eq!(alpha_host.current_system().as_deref(), Some(toplevel.as_str()));
    let metadata = lab.metadata("alpha");
    let new_key = alpha_host.host_public();
    assert_ne!(new_key.trim(), alpha_old_key.trim(), "the install gave alpha a new key");
    assert_eq!(metadata.host_key.as_deref(), Some(new_key.trim()));
    assert_eq!(metadata.system.as_deref(), Some(toplevel.as_str()));
    assert!(metadata.disk_layout.as_deref().is_some_and(|d| d.starts_with("sha256:")), "{metadata:?}");
    assert_eq!((metadata.adopted, metadata.applying, metadata.created), (None, None, None));
    assert_eq!(lab.notes("alpha").user_text, OWNER, "alpha's owner's notes, byte for byte");
    // beta was blocked: untouched, never logged in to.
    assert_eq!(report_of(&report, "beta")["status"], "skipped", "{report:#}");
    assert_eq!(lab.notes("beta").metadata(), None);
    assert_eq!(lab.pve.vm(132)["config"]["tags"], "lab");
    assert_eq!(lab.logins("beta"), 0);

    // 2. The next pull request opens beta, whose agent reads another key than its sshd's.
    lab.declare(&["beta"], &json!({}));
    let plan = lab.plan();
    assert_eq!(cli::kinds(&plan, "alpha"), ["noop"], "{plan:#}");
    assert_eq!(cli::kinds(&plan, "beta"), ["adopt", "reinstall"], "{plan:#}");
    let before = lab.pve.vm(132);
    let (run, report) = lab.apply();
    assert_eq!(run.code, 3, "beta fails:\n{}\n{}", run.stdout, run.stderr);
    let beta = report_of(&report, "beta");
    assert_eq!(beta["step"], "adopt", "{report:#}");
    let error = beta["error"].as_str().expect("error");
    assert!(error.starts_with("refusing to convert `beta` (VM 132): host key of `beta`"), "{error}");
    assert!(error.contains("does not match the pinned key"), "{error}");
    assert!(error.ends_with("nixprox did not log in, ran no installer and changed nothing"), "{error}");
    assert_eq!(lab.logins("beta"), 0, "no SSH login at all on beta");
    assert_eq!(lab.installs(), ["alpha"], "the installer never ran for beta");
    assert_eq!(lab.pve.vm(132)["config"], before["config"], "beta untouched");
    assert_eq!(lab.notes("beta").user_text, OWNER);
}

#[test]
fn a_declared_current_key_converts_without_the_agents_file_and_a_wrong_one_is_refused() {
    let lab = Lab::start();
    // Neither VM's agent has the key file: the operator declares the key each presents now.
    for vm in &lab.vms {
        lab.pve.command(json!({"cmd": "set_agent", "vmid": vm.vmid, "agent": {"os": debian_os()}}));
    }
    let wrong = nixprox::ssh::generate_host_key("root@elsewhere").expect("key").public;
    let more = json!({
        "alpha": {"convertHostKey": lab.vm("alpha").host.host_public().trim()},
        "beta": {"convertHostKey": wrong.trim()},
    });
    lab.declare(&["alpha", "beta"], &more);
    let plan = lab.plan();
    let reason = cli::actions(&plan, "alpha")[0]["reason"].as_str().expect("reason").to_string();
    assert!(reason.contains("the declared `nixprox.convert.hostKey`"), "{reason}");
    let (run, report) = lab.apply();
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(report_of(&report, "alpha")["status"], "ok", "{report:#}");
    let beta = report_of(&report, "beta");
    assert!(beta["error"].as_str().expect("error").contains("does not match the pinned key"), "{report:#}");
    assert_eq!(lab.installs(), ["alpha"]);
    assert_eq!(lab.logins("beta"), 0);
}

/// Real `ssh` with nixos-anywhere's options (checking off) and nixprox's `ProxyCommand`: it
/// reaches the machine only when the machine presents the pinned key; another key gets no
/// login on it at all.
#[test]
fn the_installers_tunnel_reaches_only_the_machine_with_the_pinned_key() {
    let host = TestHost::start();
    let ssh = |pinned: &str| {
        let request = nixprox::install::PinProxyRequest {
            address: &host.address,
            port: host.port,
            user: "root",
            identity: &host.client_key,
            pinned,
        };
        let proxy = nixprox::install::pin_proxy(&request).expect("proxy");
        std::process::Command::new("ssh")
            .args(["-o", "IdentitiesOnly=yes", "-i"])
            .arg(&host.client_key)
            .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no"])
            .args(["-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-p", &host.port.to_string()])
            .args(["-o", &proxy.ssh_option()])
            .arg(format!("root@{}", host.address))
            .arg("echo through")
            .output()
            .expect("run ssh")
    };
    let logins = || {
        let log = std::fs::read_to_string(host.root().join("sshd.log")).unwrap_or_default();
        log.lines().filter(|l| l.contains("Accepted publickey")).count()
    };
    let other = nixprox::ssh::generate_host_key("root@elsewhere").expect("key").public;
    let refused = ssh(&other);
    assert!(!refused.status.success(), "an unpinned machine must not be reached");
    assert_eq!(logins(), 0, "no login on the machine presenting another key");
    let reached = ssh(&host.host_public());
    assert!(reached.status.success(), "{}", String::from_utf8_lossy(&reached.stderr));
    assert_eq!(String::from_utf8_lossy(&reached.stdout).trim(), "through");
    // The tunnel's login, then nixos-anywhere's own inside it.
    assert_eq!(logins(), 2);
}

/// The plan reads the guest's OS with its own token: without `VM.GuestAgent.Audit` (fakepve
/// checks it as qemu-server 9 does for `agent/get-osinfo`) it cannot, says so on stderr, and
/// plans the in-place adoption that apply checks; with it, the conversion.
#[test]
fn a_plan_token_that_may_not_ask_the_agent_plans_the_adoption_apply_checks() {
    use crate::support::fakepve::TOKEN_ID;
    let fixture = Fixture::copy("convert");
    let hosts = json!({
        "system": systems::current_system(), "revision": "1", "clientKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAItest",
        "hosts": {"alpha": {"vmid": 131, "address": "127.0.0.31", "port": 22, "disko": true, "allowReinstall": true}}
    });
    std::fs::write(fixture.dir.path().join("test-hosts.json"), hosts.to_string()).expect("write");
    let settings = fixture.dir.path().join("nixprox.yaml");
    std::fs::write(&settings, "defaults:\n  node: pve1\n  storage: local-lvm\n  bridge: vmbr0\n")
        .expect("write");
    let audit = ["VM.Audit", "Datastore.Audit", "Sys.Audit", "Pool.Audit", "SDN.Audit"];
    let plan = |privs: &[&str]| {
        let scenario = Scenario::new()
            .guest(vm_json(131, "alpha", debian_agent("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIalpha")))
            .grant("nixprox@pve", "/", privs)
            .grant(TOKEN_ID, "/", privs);
        let pve = FakePve::start(scenario);
        let run = cli::plan(&fixture, &pve, &["--format", "json"]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let plan: Value = serde_json::from_str(&run.stdout).expect("json");
        (plan, run.stderr)
    };
    let (without, stderr) = plan(&audit);
    assert_eq!(cli::kinds(&without, "alpha"), ["adopt", "switch"], "{without:#}");
    let reason = cli::actions(&without, "alpha")[0]["reason"].as_str().expect("reason").to_string();
    assert!(reason.contains("apply first checks over SSH that it runs NixOS"), "{reason}");
    assert!(stderr.contains("could not read what VM 131 `alpha` runs"), "{stderr}");
    assert!(stderr.contains("`VM.GuestAgent.Audit`"), "{stderr}");
    let with: Vec<&str> = audit.iter().copied().chain(["VM.GuestAgent.Audit"]).collect();
    let (with, _) = plan(&with);
    assert_eq!(cli::kinds(&with, "alpha"), ["adopt", "reinstall"], "{with:#}");
}

/// The OS apply reads is not the one the plan read (the agent stopped answering): apply's plan
/// differs from the reviewed one, and apply refuses it, naming the host and both plans,
/// before anything runs anywhere.
#[test]
fn an_os_read_differently_at_apply_time_is_refused_naming_the_host() {
    let lab = Lab::start();
    let plan = lab.plan();
    assert_eq!(cli::kinds(&plan, "alpha"), ["adopt", "reinstall"]);
    lab.pve.command(json!({"cmd": "set_agent", "vmid": 131, "agent": null}));
    let before = lab.pve.vm(131);
    let report = lab.path("report.json");
    let run = lab.nixprox(&["apply", "--reviewed-plan", &lab.path("plan.json"), "--report", &report]);
    assert_eq!(run.code, 4, "refused:\n{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("the plan changed since it was reviewed"), "{}", run.stderr);
    assert!(run.stderr.contains("host `alpha`: reviewed adopt"), "{}", run.stderr);
    assert!(run.stderr.contains("os debian→nixos); reinstall("), "{}", run.stderr);
    assert!(run.stderr.contains("now adopt(managed false→true); switch("), "{}", run.stderr);
    assert_eq!(lab.pve.vm(131)["config"], before["config"]);
    assert_eq!(lab.logins("alpha"), 0);
    assert!(lab.installs().is_empty());
}

/// The installer fails after the adoption's write: the VM is tagged, its block holds the key
/// its old system presents and no system. The re-run of the reviewed plan resumes it (the
/// same key verified again, the installer run once more) and converts it; nothing is left half
/// done that a re-run cannot finish.
#[test]
fn a_conversion_whose_install_failed_is_resumed_with_the_pinned_old_key() {
    let lab = Lab::start();
    let old_key = lab.vm("alpha").host.host_public();
    let plan = lab.plan();
    assert_eq!(cli::kinds(&plan, "alpha"), ["adopt", "reinstall"]);
    let report = lab.path("report.json");
    let apply = |env: &[(&str, &str)]| {
        let run =
            lab.nixprox_env(&["apply", "--reviewed-plan", &lab.path("plan.json"), "--report", &report], env);
        let text =
            std::fs::read_to_string(&report).unwrap_or_else(|e| panic!("no report ({e}): {}", run.stderr));
        (run, serde_json::from_str::<Value>(&text).expect("report"))
    };
    let (run, first) = apply(&[("NIXPROX_TEST_INSTALL_FAIL", "disko: /dev/sda is busy")]);
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    let alpha = report_of(&first, "alpha");
    assert_eq!(alpha["step"], "reinstall", "{first:#}");
    assert!(alpha["error"].as_str().unwrap_or_default().contains("disko: /dev/sda is busy"), "{first:#}");
    let metadata = lab.metadata("alpha");
    assert_eq!(metadata.host_key.as_deref(), Some(old_key.trim()), "the key of the old system, pinned");
    assert_eq!(metadata.system, None);
    assert!(metadata.adopted.is_some() && metadata.applying.is_some(), "{metadata:?}");
    assert_eq!(lab.notes("alpha").user_text, OWNER);
    // The next plan shows what is left: the conversion's reinstall, still behind its gate.
    let next = lab.plan_with(&lab.path("pr.yaml"));
    assert_eq!(cli::kinds(&next, "alpha"), ["reinstall"], "{next:#}");
    let reason = cli::actions(&next, "alpha")[0]["reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("nixprox adopted VM 131 to convert it to NixOS"), "{reason}");
    // Re-running the reviewed plan resumes it.
    std::fs::write(lab.path("plan.json"), serde_json::to_string(&plan).expect("json")).expect("write");
    let (run, second) = apply(&[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(report_of(&second, "alpha")["status"], "ok", "{second:#}");
    assert_eq!(lab.installs(), ["alpha", "alpha"]);
    let metadata = lab.metadata("alpha");
    assert!(metadata.system.is_some() && metadata.adopted.is_none(), "{metadata:?}");
    assert_ne!(metadata.host_key.as_deref(), Some(old_key.trim()), "the new key");
    assert_eq!(cli::kinds(&lab.plan(), "alpha"), ["noop"]);
}
