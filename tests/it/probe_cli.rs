//! `nixprox plan --probe` through the binary: the example flake's `web` host points at a real
//! sshd (the test host) whose `/run/current-system` was changed by hand; its VM in fakepve
//! records the flake's system and the test host's key.

use serde_json::Value;

use crate::support::cli::{self, Run};
use crate::support::fakepve::{FakePve, Scenario};
use crate::support::nix::{Fixture, repo};
use crate::support::sshd::TestHost;

/// The homelab with `web` reachable at the test host, and a cluster recording the test host's key.
pub(crate) fn lab(host: &TestHost) -> (Fixture, FakePve) {
    let fixture = Fixture::copy("homelab");
    let flake = fixture.dir.path().join("flake.nix");
    let text = std::fs::read_to_string(&flake).expect("flake.nix");
    let text = text.replace("address = \"127.0.0.11\";", &format!("address = \"{}\";", host.address)).replace(
        "              nixprox.vm = {\n                id = 101;",
        &format!("              nixprox.ssh.port = {};\n              nixprox.vm = {{\n                id = 101;", host.port),
    );
    assert!(
        text.contains(&format!("nixprox.ssh.port = {};", host.port)),
        "the fixture's web host changed shape"
    );
    std::fs::write(&flake, text).expect("write flake.nix");

    let cluster =
        std::fs::read_to_string(repo().join("fixtures/homelab/cluster.json")).expect("cluster.json");
    let mut cluster: Value = serde_json::from_str(&cluster).expect("json");
    let web =
        cluster["guests"].as_array_mut().expect("guests").iter_mut().find(|g| g["vmid"] == 101).expect("web");
    let notes = web["config"]["description"].as_str().expect("notes").to_string();
    let start = notes.find("ssh-ed25519 ").expect("recorded key");
    let end = start + notes[start..].find('"').expect("end of key");
    web["config"]["description"] =
        Value::String(format!("{}{}{}", &notes[..start], host.host_public(), &notes[end..]));
    let scenario =
        cluster["guests"].as_array().expect("guests").iter().cloned().fold(Scenario::new(), Scenario::guest);
    (fixture, FakePve::start(scenario))
}

pub(crate) fn probe(fixture: &Fixture, pve: &FakePve, host: &TestHost) -> Run {
    let key = std::fs::read_to_string(&host.client_key).expect("client key");
    let run: Run = cli::plan_command(fixture, pve, &["--probe", "--hosts", "web", "--format", "json"])
        .env("NIXPROX_SSH_KEY", &key)
        .output()
        .expect("run nixprox")
        .into();
    assert!(!run.stdout.contains(key.trim()) && !run.stderr.contains(key.trim()), "the SSH key leaked");
    run
}

#[test]
fn probe_reports_a_system_changed_by_hand_and_plans_a_switch_back() {
    let host = TestHost::start();
    let (fixture, pve) = lab(&host);
    let by_hand = "/nix/store/0000000000000000000000000000000a-nixos-system-web-by-hand";
    std::os::unix::fs::symlink(by_hand, host.root().join("run/current-system")).expect("link");

    let run = probe(&fixture, &pve, &host);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let plan: Value = serde_json::from_str(&run.stdout).expect("json");
    assert_eq!(plan["probe"]["probed"], 1, "{plan:#}");
    assert_eq!(plan["probe"]["changed"], serde_json::json!(["web"]));
    let web = &plan["hosts"][0];
    assert_eq!(web["drift"]["running"], by_hand);
    let kinds: Vec<&str> =
        web["actions"].as_array().expect("actions").iter().filter_map(|a| a["kind"].as_str()).collect();
    assert!(kinds.contains(&"switch"), "{kinds:?}");
    let text: Run = cli::plan_command(&fixture, &pve, &["--probe", "--hosts", "web"])
        .env("NIXPROX_SSH_KEY", std::fs::read_to_string(&host.client_key).expect("key"))
        .output()
        .expect("run")
        .into();
    assert!(text.stdout.contains("changed outside nixprox: web"), "{}", text.stdout);
}

#[test]
fn an_unreachable_host_is_reported_not_fatal() {
    let host = TestHost::start();
    let (fixture, pve) = lab(&host);
    host.stop_sshd();
    let run = probe(&fixture, &pve, &host);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let plan: Value = serde_json::from_str(&run.stdout).expect("json");
    assert_eq!(plan["probe"]["unreachable"][0]["host"], "web", "{plan:#}");
    assert!(plan["hosts"][0]["drift"].is_null());
}

#[test]
fn a_host_presenting_another_key_is_refused_and_reported() {
    let host = TestHost::start();
    let (fixture, pve) = lab(&host);
    let other = nixprox::ssh::generate_host_key("root@impostor").expect("key");
    host.restart_with_host_key(&other);
    let run = probe(&fixture, &pve, &host);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let plan: Value = serde_json::from_str(&run.stdout).expect("json");
    let reason = plan["probe"]["unreachable"][0]["reason"].as_str().expect("reason");
    assert!(reason.contains("host key"), "{reason}");
}

/// A container host probed over SSH like a VM: created by apply (its key pinned from the create
/// task's log and recorded), its `/run/current-system` then changed by hand on the machine.
fn probed_container(lab: &crate::containers::CtLab) -> Value {
    let run = lab.run(&["plan", "--probe", "--hosts", "ct", "--format", "json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let key = std::fs::read_to_string(&lab.host.client_key).expect("client key");
    assert!(!run.stdout.contains(key.trim()) && !run.stderr.contains(key.trim()), "the SSH key leaked");
    serde_json::from_str(&run.stdout).expect("json")
}

fn created_container() -> crate::containers::CtLab {
    let lab = crate::containers::CtLab::start();
    lab.plan();
    let (run, report) = lab.apply();
    assert_eq!(run.code, 0, "apply failed:\n{}\n{}\n{report:#}", run.stdout, run.stderr);
    lab
}

#[test]
fn probe_reports_a_containers_system_changed_by_hand_and_plans_a_switch_back() {
    let lab = created_container();
    let plan = probed_container(&lab);
    assert_eq!(
        (plan["probe"]["probed"].as_u64(), plan["probe"]["changed"].clone()),
        (Some(1), serde_json::json!([])),
        "{plan:#}"
    );

    let by_hand = "/nix/store/0000000000000000000000000000000c-nixos-system-ct-by-hand";
    let link = lab.host.root().join("run/current-system");
    std::fs::remove_file(&link).expect("unlink");
    std::os::unix::fs::symlink(by_hand, &link).expect("link");
    let plan = probed_container(&lab);
    assert_eq!(plan["probe"]["changed"], serde_json::json!(["ct"]), "{plan:#}");
    let ct = &plan["hosts"][0];
    assert_eq!(
        (ct["kind"].as_str(), ct["drift"]["running"].as_str()),
        (Some("container"), Some(by_hand)),
        "{plan:#}"
    );
    assert_eq!(cli::kinds(&plan, "ct"), ["switch"], "{plan:#}");
}

#[test]
fn a_container_presenting_another_key_than_the_pinned_one_is_refused() {
    let lab = created_container();
    let other = nixprox::ssh::generate_host_key("root@impostor").expect("key");
    lab.host.restart_with_host_key(&other);
    let plan = probed_container(&lab);
    let reason = plan["probe"]["unreachable"][0]["reason"].as_str().expect("reason");
    assert!(reason.contains("host key"), "{reason}");
    assert!(plan["hosts"][0]["drift"].is_null(), "{plan:#}");
}

#[test]
fn an_unreachable_container_is_reported_not_fatal() {
    let lab = created_container();
    lab.host.stop_sshd();
    let plan = probed_container(&lab);
    assert_eq!(plan["probe"]["unreachable"][0]["host"], "ct", "{plan:#}");
    assert!(plan["hosts"][0]["drift"].is_null(), "{plan:#}");
    assert_eq!(cli::kinds(&plan, "ct"), ["noop"], "nothing planned from what could not be read: {plan:#}");
}
