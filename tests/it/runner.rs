//! `nixosModules.runner` (nix/runner.nix), evaluated by the real nix with nixpkgs.lib's
//! `evalModules`. A full NixOS cannot be evaluated here: the options it sets on nixpkgs'
//! runner modules, systemd, nix and ssh are stand-ins with the same names and types
//! (`fixtures/runner/standin.nix`); what those modules do with the values is not evaluated.

use std::process::Command;

use serde_json::{Value, json};

use crate::support::nix::{nixpkgs_lib, override_inputs, repo};

/// Evaluates the runner module with these instances (a Nix expression).
fn evaluate(instances: &str) -> Result<Value, String> {
    let expr = format!(
        "import {eval} {{ lib = import {lib}/lib; runner = {runner}; instances = {instances}; }}",
        eval = repo().join("fixtures/runner/eval.nix").display(),
        lib = nixpkgs_lib().display(),
        runner = repo().join("nix/runner.nix").display(),
    );
    let output = nix().args(["eval", "--json", "--impure", "--expr", &expr]).output().expect("run nix");
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&output.stdout).expect("json"))
}

fn nix() -> Command {
    let mut command = Command::new("nix");
    command.args(["--extra-experimental-features", "nix-command flakes"]).env("NIX_CONFIG", "substituters =");
    command
}

const TWO_ROLES: &str = r#"{
  plan = { forge = "forgejo"; url = "https://git.lab"; tokenFile = "/run/agenix/runner"; role = "plan";
           proxmox.apiTokenFile = "/run/agenix/plan-token"; };
  apply = { forge = "forgejo"; url = "https://git.lab"; tokenFile = "/run/agenix/runner"; role = "apply";
            proxmox.apiTokenFile = "/run/agenix/apply-token"; sshKeyFile = "/run/agenix/ssh";
            proxmox.url = "https://pve1.lab:8006"; proxmox.caCertFile = "/etc/nixprox/pve-root-ca.pem";
            credentials.host-key-db = "/run/agenix/host-key-db"; };
}"#;

#[test]
fn forgejo_runners_get_a_host_label_per_role_and_their_secrets_as_files() {
    let out = evaluate(TWO_ROLES).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out["forgejoPackage"], "forgejo-runner");
    let apply = &out["forgejo"]["nixprox_apply"];
    assert_eq!(apply["labels"], json!(["nixprox-apply:host"]));
    assert_eq!(out["forgejo"]["nixprox_plan"]["labels"], json!(["nixprox-plan:host"]));
    assert_eq!(apply["name"], "runner1-nixprox-apply");
    // The secrets reach the job as paths to the unit's credentials, never as values.
    let credentials = "/run/credentials/gitea-runner-nixprox_apply.service";
    assert_eq!(
        apply["envs"],
        json!({
            "PROXMOX_API_TOKEN_FILE": format!("{credentials}/proxmox-api-token"),
            "NIXPROX_SSH_KEY_FILE": format!("{credentials}/ssh-key"),
            "PROXMOX_URL": "https://pve1.lab:8006",
            "PROXMOX_CA_CERT": "/etc/nixprox/pve-root-ca.pem",
        })
    );
    assert_eq!(
        out["credentials"]["gitea-runner-nixprox_apply"],
        json!([
            "proxmox-api-token:/run/agenix/apply-token",
            "ssh-key:/run/agenix/ssh",
            "host-key-db:/run/agenix/host-key-db"
        ])
    );
    // The plan runner holds only its read-only token.
    assert_eq!(
        out["credentials"]["gitea-runner-nixprox_plan"],
        json!(["proxmox-api-token:/run/agenix/plan-token"])
    );
    assert!(out["forgejo"]["nixprox_plan"]["envs"].get("NIXPROX_SSH_KEY_FILE").is_none());
    // nixprox, the pinned nixos-anywhere, nix and ssh on the jobs' PATH, next to what actions need.
    let packages = apply["hostPackages"].as_array().expect("packages");
    for wanted in ["nixprox", "nixos-anywhere", "nix", "openssh", "gitMinimal", "nodejs", "bash"] {
        assert!(packages.contains(&json!(wanted)), "{wanted} missing from {packages:?}");
    }
    assert_eq!(out["experimentalFeatures"], json!(["nix-command", "flakes"]));
    assert!(out["sshConfig"].as_str().expect("ssh config").contains("ServerAliveInterval"));
    assert_eq!(out["warnings"], json!([]));
    assert_eq!(out["failedAssertions"], json!([]));
}

#[test]
fn github_runners_get_the_labels_packages_and_environment() {
    let out = evaluate(
        r#"{ hub = { forge = "github"; url = "https://github.com/me/lab"; tokenFile = "/run/agenix/pat";
                    role = "apply"; proxmox.apiTokenFile = "/run/agenix/apply-token"; }; }"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let hub = &out["github"]["nixprox_hub"];
    assert_eq!(hub["extraLabels"], json!(["nixprox-apply"]));
    assert_eq!(
        hub["extraEnvironment"]["PROXMOX_API_TOKEN_FILE"],
        "/run/credentials/github-runner-nixprox_hub.service/proxmox-api-token"
    );
    assert!(hub["extraPackages"].as_array().expect("packages").contains(&json!("nixos-anywhere")));
    assert_eq!(out["forgejo"], json!({}));
    // An apply runner without an SSH key cannot install: said at evaluation.
    assert_eq!(
        out["warnings"],
        json!([
            "services.nixprox-runner.instances.hub: an apply runner without `sshKeyFile` cannot install or switch hosts (nixprox skips those steps)"
        ])
    );
}

#[test]
fn bad_instances_fail_at_evaluation() {
    let out = evaluate(
        r#"{ "plan-1" = { forge = "forgejo"; url = "u"; tokenFile = "t"; role = "plan"; proxmox.apiTokenFile = "p"; }; }"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        out["failedAssertions"],
        json!([
            "services.nixprox-runner.instances.plan-1: instance names may hold only letters, digits and `_`"
        ])
    );
    let err = evaluate(r#"{ x = { forge = "gitlab"; url = "u"; tokenFile = "t"; role = "plan"; proxmox.apiTokenFile = "p"; }; }"#)
        .expect_err("gitlab is no choice");
    assert!(err.contains("forge"), "{err}");
    let err = evaluate(r#"{ x = { forge = "github"; url = "u"; tokenFile = "t"; role = "plan"; }; }"#)
        .expect_err("the API token file is required");
    assert!(err.contains("apiTokenFile"), "{err}");
}

#[test]
fn the_flake_exports_the_runner_module() {
    let inputs = override_inputs();
    let nixprox = inputs.iter().find(|i| i.name == "nixprox").expect("nixprox input");
    let output = nix()
        .args(["eval", "--json", &format!("{}#nixosModules", nixprox.flake_ref), "--apply"])
        .arg("m: { names = builtins.attrNames m; runner = builtins.isFunction m.runner; }")
        .args(["--no-write-lock-file", "--override-input", "nixpkgs"])
        .arg(format!("path:{}", nixpkgs_lib().display()))
        .output()
        .expect("run nix");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let out: Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(out, json!({"names": ["default", "nixprox", "runner"], "runner": true}));
}

/// The labels a runner of `role` registers for `forge`, as the forge matches them: Forgejo
/// takes the name before `:host` and adds nothing; a GitHub runner also has the default labels
/// `self-hosted`, `Linux` and `X64` (actions/runner, `--no-default-labels` unset).
fn runner_labels(forge: &str, role: &str) -> Vec<String> {
    let instance = format!(
        r#"{{ r = {{ forge = "{forge}"; url = "https://git.lab"; tokenFile = "/run/agenix/runner"; role = "{role}";
                   proxmox.apiTokenFile = "/run/agenix/token"; }}; }}"#
    );
    let out = evaluate(&instance).unwrap_or_else(|e| panic!("{e}"));
    let strings = |v: &Value| -> Vec<String> {
        v.as_array().expect("labels").iter().map(|l| l.as_str().expect("label").to_string()).collect()
    };
    match forge {
        "forgejo" => strings(&out["forgejo"]["nixprox_r"]["labels"])
            .into_iter()
            .map(|l| l.split(':').next().expect("name").to_string())
            .collect(),
        _ => {
            let mut labels = strings(&out["github"]["nixprox_r"]["extraLabels"]);
            labels.extend(["self-hosted", "Linux", "X64"].map(String::from));
            labels
        }
    }
}

/// Every job of the example workflows can start on a runner the module sets up: its `runs-on`
/// labels are all among the labels of the runner of its role (apply jobs on the apply runner,
/// everything else on the plan runner). A label no runner has leaves the job queued forever.
#[test]
fn the_example_workflows_run_on_the_module_runners_labels() {
    for forge in ["forgejo", "github"] {
        let plan = runner_labels(forge, "plan");
        let apply = runner_labels(forge, "apply");
        let dir = repo().join("examples").join(forge);
        let mut jobs = 0;
        for entry in std::fs::read_dir(&dir).expect("examples") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("workflow");
            let yaml: Value = yaml_serde::from_str(&text).expect("yaml");
            let is_apply = path.file_stem().is_some_and(|s| s == "apply");
            for (name, job) in yaml["jobs"].as_object().expect("jobs") {
                let wanted: Vec<&str> = job["runs-on"]
                    .as_array()
                    .expect("runs-on list")
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                let has = if is_apply { &apply } else { &plan };
                let missing: Vec<&&str> = wanted.iter().filter(|l| !has.iter().any(|h| h == **l)).collect();
                assert!(
                    missing.is_empty(),
                    "{}: job `{name}` asks for {missing:?}, which the {} runner ({has:?}) does not have",
                    path.display(),
                    if is_apply { "apply" } else { "plan" }
                );
                jobs += 1;
            }
        }
        assert!(jobs >= 5, "{forge}: {jobs} jobs");
    }
}
