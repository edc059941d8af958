//! Runs the real `nixprox` binary the way a user does: against a fixture flake evaluated by
//! real nix and a fakepve cluster, with the environment a CI job would give it.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

use super::fakepve::{FakePve, Scenario};
use super::nix::{Fixture, override_inputs, repo};

/// A scenario holding the guests (and storages, when it has any) of a fakepve guests file
/// (`fixtures/<name>/cluster.json`).
pub fn cluster_scenario(path: &Path) -> Scenario {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let file: Value = serde_json::from_str(&text).expect("cluster file is JSON");
    let guests = file["guests"].as_array().expect("cluster file has guests").clone();
    with_storages(guests.into_iter().fold(Scenario::new(), Scenario::guest), &file)
}

fn with_storages(scenario: Scenario, file: &Value) -> Scenario {
    match file.get("storages") {
        Some(storages) => scenario.set("storages", storages.clone()),
        None => scenario,
    }
}

/// What one run printed and how it ended.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// Removes what the surrounding shell or CI would leak into a run (CI, forge, Proxmox and
/// nixprox variables) and sets what every run wants: no colour, nix without substituters.
pub fn clean_env(command: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("PROXMOX_")
            || key.starts_with("GITHUB_")
            || key.starts_with("NIXPROX_")
            || key == "CI"
        {
            command.env_remove(&key);
        }
    }
    command
        .env("NO_COLOR", "1")
        .env("NIX_CONFIG", "substituters =\nexperimental-features = nix-command flakes")
}

/// `nixprox` with a clean environment (see [`clean_env`]).
pub fn nixprox() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_nixprox"));
    clean_env(&mut command);
    command
}

/// `--flake …` and the test's `--override-input`s for a fixture flake.
pub fn source_args(fixture: &Fixture) -> Vec<String> {
    flake_args(&fixture.flake_ref())
}

/// `--flake <flake>` and the test's `--override-input`s.
pub fn flake_args(flake: &str) -> Vec<String> {
    let mut args = vec!["--flake".to_string(), flake.to_string()];
    for input in override_inputs() {
        args.extend(["--override-input".to_string(), input.name, input.flake_ref]);
    }
    args
}

/// Runs `nixprox <args…>` (the subcommand first) on `flake` against `pve`.
pub fn run_on(flake: &str, pve: &FakePve, args: &[&str]) -> Run {
    let mut command = nixprox();
    command.args(args).args(flake_args(flake)).envs(pve_env(pve));
    command.output().expect("run nixprox").into()
}

/// The environment that points nixprox at a fakepve: URL, pinned CA and token.
pub fn pve_env(pve: &FakePve) -> Vec<(&'static str, String)> {
    vec![
        ("PROXMOX_URL", pve.url().to_string()),
        ("PROXMOX_CA_CERT", pve.ca_cert().display().to_string()),
        ("PROXMOX_API_TOKEN", pve.token()),
    ]
}

/// The `nixprox plan` command for a fixture flake against a fakepve, with extra arguments.
pub fn plan_command(fixture: &Fixture, pve: &FakePve, args: &[&str]) -> Command {
    let mut command = nixprox();
    command.arg("plan").args(source_args(fixture)).args(args).envs(pve_env(pve));
    command
}

/// Runs [`plan_command`].
pub fn plan(fixture: &Fixture, pve: &FakePve, args: &[&str]) -> Run {
    plan_command(fixture, pve, args).output().expect("run nixprox").into()
}

/// The homelab fixture and its cluster, each guest passed through `edit` first.
pub fn homelab_with(edit: impl Fn(&mut Value)) -> (Fixture, FakePve) {
    let path = repo().join("fixtures/homelab/cluster.json");
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("cluster.json")).expect("json");
    let scenario =
        file["guests"].as_array().expect("guests").iter().cloned().fold(Scenario::new(), |s, mut g| {
            edit(&mut g);
            s.guest(g)
        });
    (Fixture::copy("homelab"), FakePve::start(with_storages(scenario, &file)))
}

/// `nixprox <args>` with the fixture flake, against the fakepve.
pub fn nixprox_in(fixture: &Fixture, pve: &FakePve, args: &[&str]) -> Run {
    let mut command = nixprox();
    command.args(args).args(source_args(fixture)).envs(pve_env(pve));
    command.output().expect("run nixprox").into()
}

/// `plan --format json` for `hosts`.
pub fn plan_hosts(fixture: &Fixture, pve: &FakePve, hosts: &str) -> Value {
    let run = nixprox_in(fixture, pve, &["plan", "--format", "json", "--hosts", hosts]);
    assert_eq!(run.code, 0, "plan failed:\n{}", run.stderr);
    serde_json::from_str(&run.stdout).expect("plan json")
}

/// `plan --out plan.json`, then `apply --reviewed-plan plan.json` for `hosts`; returns the
/// apply run.
pub fn plan_and_apply(fixture: &Fixture, pve: &FakePve, hosts: &str) -> Run {
    let plan_file = fixture.dir.path().join("plan.json").display().to_string();
    let run = nixprox_in(fixture, pve, &["plan", "--format", "json", "--hosts", hosts, "--out", &plan_file]);
    assert_eq!(run.code, 0, "plan failed:\n{}", run.stderr);
    nixprox_in(fixture, pve, &["apply", "--reviewed-plan", &plan_file, "--hosts", hosts])
}

/// The actions of `host` in a JSON plan.
pub fn actions(plan: &Value, host: &str) -> Vec<Value> {
    plan["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .filter(|h| h["host"] == host)
        .flat_map(|h| h["actions"].as_array().expect("actions").clone())
        .collect()
}

/// The action kinds of `host` in a JSON plan.
pub fn kinds(plan: &Value, host: &str) -> Vec<String> {
    actions(plan, host).iter().map(|a| a["kind"].as_str().expect("kind").to_string()).collect()
}
