//! `nixosModules.runner` (nix/runner.nix), evaluated by the real nix with nixpkgs.lib's
//! `evalModules`. A full NixOS cannot be evaluated here: the options it sets on nixpkgs'
//! runner modules, systemd, nix and ssh are stand-ins with the same names and types
//! (`fixtures/runner/standin.nix`); what those modules do with the values is not evaluated.

use std::process::Command;

use serde_json::{Value, json};

use crate::support::nix::{nixpkgs_lib, override_inputs, repo};

/// Evaluates the runner module with these instances (a Nix expression).
fn evaluate(instances: &str) -> Result<Value, String> {
    evaluate_with(&format!("instances = {instances};"))
}

/// Evaluates the runner module with these arguments of `fixtures/runner/eval.nix` (`instances
/// = …;` and/or `modules = […];`).
fn evaluate_with(arguments: &str) -> Result<Value, String> {
    let expr = format!(
        "import {eval} {{ lib = import {lib}/lib; runner = {runner}; {arguments} }}",
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
    // curl: the action's install step downloads the release with it, and NixOS's GitHub runner
    // has none of its own.
    for wanted in ["nixos-anywhere", "curl"] {
        assert!(hub["extraPackages"].as_array().expect("packages").contains(&json!(wanted)), "{wanted}");
    }
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

/// The example's one runner machine (examples/homelab-flake/runner/configuration.nix, with
/// agenix's options as stand-ins), evaluated as its flake imports it, optionally with its
/// instances moved to another forge.
fn example_runner(forge: &str) -> Value {
    let config = repo().join("examples/homelab-flake/runner/configuration.nix");
    let module = if forge == "forgejo" {
        config.display().to_string()
    } else {
        format!(
            r#"{{ lib, ... }}: {{ imports = [ {} ]; services.nixprox-runner.instances = lib.genAttrs [ "plan" "apply" ] (_: {{
                 forge = lib.mkForce "github"; url = lib.mkForce "https://github.com/me/lab"; }}); }}"#,
            config.display()
        )
    };
    let agenix = repo().join("fixtures/runner/agenix-standin.nix");
    evaluate_with(&format!("modules = [ {} ({module}) ];", agenix.display()))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Every string in a JSON value.
fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items.iter().flat_map(strings).collect(),
        Value::Object(map) => {
            map.iter().flat_map(|(k, v)| std::iter::once(k.clone()).chain(strings(v))).collect()
        }
        _ => Vec::new(),
    }
}

/// Issue 22 (one runner machine) and issue 20 (the plan role must not reach the apply
/// credential): plan and apply runners on one machine run as different users, each unit loads
/// only its own secrets, and nothing of the plan runner names an apply secret. systemd hands a
/// unit's credentials to that unit's user only (systemd.exec(5), "Credentials"), so the plan
/// user's jobs cannot open the apply token.
#[test]
fn on_one_machine_the_plan_runner_gets_no_apply_credential() {
    let apply_secrets = ["proxmox-apply-token", "nixprox-ssh-key", "host-key-web", "host-key-db"];
    for forge in ["forgejo", "github"] {
        let out = example_runner(forge);
        assert_eq!(out["failedAssertions"], json!([]), "{forge}");
        let (prefix, section) =
            if forge == "forgejo" { ("gitea-runner-", "forgejo") } else { ("github-runner-", "github") };
        let plan_unit = format!("{prefix}nixprox_plan");
        let apply_unit = format!("{prefix}nixprox_apply");
        assert_eq!(
            out["credentials"][&plan_unit],
            json!([
                "proxmox-api-token:/run/agenix/proxmox-plan-token",
                "ssh-key:/run/agenix/nixprox-probe-key"
            ]),
            "{forge}"
        );
        let apply_loaded = strings(&out["credentials"][&apply_unit]).join("\n");
        for secret in apply_secrets {
            assert!(apply_loaded.contains(&format!("/run/agenix/{secret}")), "{forge}: {apply_loaded}");
        }
        // Nothing the plan runner gets (its instance, its unit, its jobs' environment) names an
        // apply secret or the apply unit's credentials.
        let plan_side =
            [&out[section]["nixprox_plan"], &out["units"][&plan_unit], &out["credentials"][&plan_unit]];
        for value in plan_side {
            for text in strings(value) {
                for secret in apply_secrets {
                    assert!(!text.contains(secret), "{forge}: the plan runner reaches `{secret}`: {text}");
                }
                assert!(!text.contains(&apply_unit), "{forge}: the plan runner names {apply_unit}: {text}");
            }
        }
        // Two users: Forgejo's module would run both as `gitea-runner`; the runner module gives
        // each its own dynamic user. GitHub's module names each dynamic user after its unit.
        let user = |unit: &str| out["units"][unit]["serviceConfig"].get("User").cloned();
        if forge == "forgejo" {
            assert_eq!(user(&plan_unit), Some(json!("nixprox-runner-plan")));
            assert_eq!(user(&apply_unit), Some(json!("nixprox-runner-apply")));
            let state = |unit: &str| out["units"][unit]["serviceConfig"]["StateDirectory"].clone();
            assert_eq!(state(&plan_unit), "nixprox-runner/plan");
            assert_eq!(state(&apply_unit), "nixprox-runner/apply");
            assert_eq!(
                out["units"][&plan_unit]["environment"]["HOME"],
                "/var/lib/nixprox-runner/plan/nixprox_plan"
            );
        } else {
            assert_eq!(user(&plan_unit), None, "a dynamic user named `{plan_unit}`");
            assert_eq!(user(&apply_unit), None, "a dynamic user named `{apply_unit}`");
        }
        // The host keys the example's hosts name, at a path that does not depend on the forge.
        assert!(
            out["tmpfiles"].as_array().expect("tmpfiles").contains(&json!(format!(
                "L+ /run/nixprox-runner/apply - - - - /run/credentials/{apply_unit}.service"
            ))),
            "{forge}: {}",
            out["tmpfiles"]
        );
    }
    let web =
        std::fs::read_to_string(repo().join("examples/homelab-flake/hosts/web/nixprox.nix")).expect("web");
    assert!(web.contains("\"/run/nixprox-runner/apply/host-key-${config.networking.hostName}\""), "{web}");
}

/// Runs a GitHub runner's job-started hook the way actions/runner does (`bash -e FILE`, with
/// the job's variables), returning its exit code and output.
fn run_hook(hook: &str, event: &str, reference: &str, payload: Option<&Value>) -> (i32, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut command = Command::new("bash");
    command
        .arg("-e")
        .arg(hook)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("GITHUB_EVENT_NAME", event)
        .env("GITHUB_REF", reference)
        .env("GITHUB_REPOSITORY", "me/lab");
    if let Some(payload) = payload {
        let path = dir.path().join("event.json");
        std::fs::write(&path, payload.to_string()).expect("event");
        command.env("GITHUB_EVENT_PATH", path);
    }
    let output = command.output().expect("run bash");
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), text)
}

/// A job asks for a label in its own workflow file, which a pull request may edit: only the
/// runner can refuse. On GitHub the module's job-started hook keeps every job but a push to
/// the default branch off the apply runner, and pull requests from forks off the plan runner.
#[test]
fn github_runners_refuse_pull_requests_on_apply_and_forks_on_plan() {
    let out = evaluate(
        r#"{ plan = { forge = "github"; url = "https://github.com/me/lab"; tokenFile = "/t"; role = "plan";
                     proxmox.apiTokenFile = "/p"; };
             apply = { forge = "github"; url = "https://github.com/me/lab"; tokenFile = "/t"; role = "apply";
                      proxmox.apiTokenFile = "/a"; sshKeyFile = "/k"; };
             forks = { forge = "github"; url = "https://github.com/me/lab"; tokenFile = "/t"; role = "plan";
                      proxmox.apiTokenFile = "/p"; forkPullRequests = true; }; }"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let hook = |name: &str| {
        out["github"][format!("nixprox_{name}")]["extraEnvironment"]["ACTIONS_RUNNER_HOOK_JOB_STARTED"]
            .as_str()
            .expect("a hook")
            .to_string()
    };
    let (apply, plan, forks) = (hook("apply"), hook("plan"), hook("forks"));
    assert!(apply.ends_with(".sh"), "actions/runner runs hooks by their extension: {apply}");

    let push = json!({"ref": "refs/heads/main"});
    assert_eq!(run_hook(&apply, "push", "refs/heads/main", Some(&push)).0, 0);
    assert_eq!(run_hook(&apply, "workflow_dispatch", "refs/heads/main", Some(&push)).0, 0);
    let own_pr = json!({"pull_request": {"head": {"repo": {"full_name": "me/lab"}}}});
    let (code, text) = run_hook(&apply, "pull_request", "refs/pull/7/merge", Some(&own_pr));
    assert_eq!(code, 1, "{text}");
    assert_eq!(
        text.trim(),
        "::error::this nixprox apply runner refuses a `pull_request` job on `refs/pull/7/merge`: it holds the apply token and runs only pushes to `main` (services.nixprox-runner.instances.apply.branch)"
    );
    assert_eq!(run_hook(&apply, "push", "refs/heads/feature", Some(&push)).0, 1, "a push to another branch");

    let fork_pr = json!({"pull_request": {"head": {"repo": {"full_name": "mallory/lab"}}}});
    assert_eq!(run_hook(&plan, "pull_request", "refs/pull/7/merge", Some(&own_pr)).0, 0);
    assert_eq!(run_hook(&plan, "schedule", "refs/heads/main", Some(&json!({"schedule": "17 4 * * *"}))).0, 0);
    let (code, text) = run_hook(&plan, "pull_request", "refs/pull/8/merge", Some(&fork_pr));
    assert_eq!(code, 1, "{text}");
    assert_eq!(
        text.trim(),
        "::error::this nixprox plan runner refuses a job of a pull request from the fork `mallory/lab`: it holds the plan token (set services.nixprox-runner.instances.plan.forkPullRequests to allow forks)"
    );
    let (code, text) = run_hook(&plan, "pull_request", "refs/pull/8/merge", None);
    assert_eq!(code, 1, "no event, no job: {text}");
    assert_eq!(run_hook(&forks, "pull_request", "refs/pull/8/merge", Some(&fork_pr)).0, 0, "allowed");
}

/// `allowedAddresses`: the runner's unit (and so its jobs) may connect only to loopback and the
/// listed networks; without it, nothing is limited.
#[test]
fn a_runner_can_be_limited_to_listed_networks() {
    let out = evaluate(
        r#"{ plan = { forge = "forgejo"; url = "https://git.lab"; tokenFile = "/t"; role = "plan";
                     proxmox.apiTokenFile = "/p"; allowedAddresses = [ "10.0.10.0/24" "192.0.2.7" ]; };
             apply = { forge = "forgejo"; url = "https://git.lab"; tokenFile = "/t"; role = "apply";
                      proxmox.apiTokenFile = "/a"; sshKeyFile = "/k"; }; }"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let plan = &out["units"]["gitea-runner-nixprox_plan"]["serviceConfig"];
    assert_eq!(plan["IPAddressDeny"], "any");
    assert_eq!(plan["IPAddressAllow"], json!(["localhost", "10.0.10.0/24", "192.0.2.7"]));
    let apply = &out["units"]["gitea-runner-nixprox_apply"]["serviceConfig"];
    assert!(apply.get("IPAddressDeny").is_none() && apply.get("IPAddressAllow").is_none(), "{apply}");
}

/// The environment variables the runner module gives every job (read from the module), and
/// the ones nixprox refuses beside them (`X` and `X_FILE` both set is an error).
fn module_provided_variables() -> Vec<String> {
    let out = evaluate(TWO_ROLES).unwrap_or_else(|e| panic!("{e}"));
    let mut names: Vec<String> =
        out["forgejo"]["nixprox_apply"]["envs"].as_object().expect("envs").keys().cloned().collect();
    let plain: Vec<String> = names.iter().filter_map(|n| n.strip_suffix("_FILE")).map(String::from).collect();
    names.extend(plain);
    names
}

/// Every `env:` key anywhere in a workflow (or a fragment of one).
fn env_keys(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                if key == "env"
                    && let Some(env) = inner.as_object()
                {
                    found.extend(env.keys().cloned());
                }
                env_keys(inner, found);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| env_keys(v, found)),
        _ => {}
    }
}

/// Issue 22: the token is set once. The runner module gives jobs the Proxmox token and the SSH
/// key as files; a workflow that also sets them (from a secret) makes nixprox refuse to start.
/// No example workflow and no workflow snippet of the docs sets what the module provides.
#[test]
fn workflows_never_set_a_token_the_runner_module_provides() {
    let provided = module_provided_variables();
    for wanted in ["PROXMOX_API_TOKEN", "PROXMOX_API_TOKEN_FILE", "NIXPROX_SSH_KEY", "NIXPROX_SSH_KEY_FILE"] {
        assert!(provided.contains(&wanted.to_string()), "{wanted} in {provided:?}");
    }
    let mut sources: Vec<(String, String)> = Vec::new();
    for forge in ["github", "forgejo"] {
        for entry in std::fs::read_dir(repo().join("examples").join(forge)).expect("examples") {
            let path = entry.expect("entry").path();
            sources.push((path.display().to_string(), std::fs::read_to_string(&path).expect("workflow")));
        }
    }
    for page in ["docs/ci.md", "docs/guide.md", "docs/migrate.md", "README.md"] {
        let text = std::fs::read_to_string(repo().join(page)).expect(page);
        let mut block: Option<String> = None;
        for line in text.lines() {
            match (&mut block, line.trim_start()) {
                (None, l) if l.starts_with("```yaml") => block = Some(String::new()),
                (Some(b), l) if l.starts_with("```") => {
                    sources.push((format!("{page} (yaml block)"), std::mem::take(b)));
                    block = None;
                }
                (Some(b), _) => {
                    b.push_str(line);
                    b.push('\n');
                }
                _ => {}
            }
        }
    }
    assert!(sources.len() >= 10, "{}", sources.len());
    let mut wrong = Vec::new();
    for (name, text) in &sources {
        let Ok(yaml) = yaml_serde::from_str::<Value>(text) else { continue };
        let mut keys = Vec::new();
        env_keys(&yaml, &mut keys);
        wrong.extend(keys.into_iter().filter(|k| provided.contains(k)).map(|k| format!("{name}: {k}")));
    }
    assert!(wrong.is_empty(), "set by workflows although the runner module provides them: {wrong:?}");
}

/// Forgejo resolves a short `uses: owner/repo@ref` against the instance's default actions
/// host, which need not hold the pinned commit: every Forgejo example names its actions by
/// full URL (or a local path).
#[test]
fn every_forgejo_action_is_named_by_its_full_url() {
    let mut seen = 0;
    for entry in std::fs::read_dir(repo().join("examples/forgejo")).expect("examples") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("workflow");
        for line in text.lines() {
            let Some(action) = line.trim_start().trim_start_matches("- ").strip_prefix("uses: ") else {
                continue;
            };
            seen += 1;
            assert!(
                action.starts_with("https://") || action.starts_with("./"),
                "{}: `{action}` resolves against the instance's default actions host",
                path.display()
            );
        }
    }
    assert!(seen >= 8, "{seen} actions");
}

/// Evaluates a flake.nix's `outputs` with stand-in inputs: nixpkgs' `lib` is nixpkgs.lib's,
/// with `nixosSystem` returning its arguments (no NixOS is evaluated).
fn outputs_of(flake: &str) -> Value {
    let expr = format!(
        r#"let
             lib = import {lib}/lib;
             flake = import {flake};
             nixpkgs = {{ lib = lib // {{ nixosSystem = args: {{ modules = map (m: if builtins.isAttrs m then "<inline>" else toString m) args.modules; }}; }}; }};
             module = {{ nixosModules = {{ default = "nixprox.default"; runner = "nixprox.runner"; disko = "disko"; }}; }};
             inputs = {{ self = outputs; inherit nixpkgs; nixprox = module; disko = module // {{ nixosModules.disko = "disko"; }};
                        agenix = {{ nixosModules.default = "agenix"; }}; }};
             outputs = flake.outputs inputs;
           in {{ inputs = builtins.attrNames flake.inputs; configurations = builtins.mapAttrs (_: c: c.modules) outputs.nixosConfigurations; }}"#,
        lib = nixpkgs_lib().display(),
        flake = repo().join(flake).display(),
    );
    let output = nix().args(["eval", "--json", "--impure", "--expr", &expr]).output().expect("run nix");
    assert!(output.status.success(), "{flake}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("json")
}

/// nixprox evaluates every `nixosConfigurations` entry of the flake it plans: the example's
/// holds only the VMs, and the runner machine is a flake of its own (which imports the runner
/// module and the example's runner configuration).
#[test]
fn the_example_keeps_its_runner_out_of_the_planned_flake() {
    let homelab = outputs_of("examples/homelab-flake/flake.nix");
    let hosts: Vec<&String> = homelab["configurations"].as_object().expect("configurations").keys().collect();
    assert_eq!(hosts, ["db", "dns", "files", "media", "web"]);
    let runner = outputs_of("examples/homelab-flake/runner/flake.nix");
    let modules = strings(&runner["configurations"]["runner"]);
    assert_eq!(runner["configurations"].as_object().expect("configurations").len(), 1);
    assert!(modules.iter().any(|m| m == "nixprox.runner"), "{modules:?}");
    assert!(modules.iter().any(|m| m.ends_with("/runner/configuration.nix")), "{modules:?}");
    assert!(modules.iter().any(|m| m.ends_with("/runner/hardware-configuration.nix")), "{modules:?}");
}

/// The example workflows fit the runners' guards: every job that runs pull-request code is a
/// `pull_request` job (never `pull_request_target`, which would run it with the base's
/// secrets and a write token) on the plan runner, and apply triggers only on pushes to the
/// branch the apply runner's job-started hook accepts (the module's default `branch`).
#[test]
fn the_example_triggers_match_what_the_runners_accept() {
    let out = evaluate(
        r#"{ apply = { forge = "github"; url = "https://github.com/me/lab"; tokenFile = "/t"; role = "apply";
                      proxmox.apiTokenFile = "/a"; }; }"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let hook = out["github"]["nixprox_apply"]["extraEnvironment"]["ACTIONS_RUNNER_HOOK_JOB_STARTED"]
        .as_str()
        .expect("hook")
        .to_string();
    for forge in ["github", "forgejo"] {
        for entry in std::fs::read_dir(repo().join("examples").join(forge)).expect("examples") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("workflow");
            let yaml: Value = yaml_serde::from_str(&text).expect("yaml");
            let on = &yaml["on"];
            assert!(on.get("pull_request_target").is_none(), "{}", path.display());
            if path.file_stem().is_some_and(|s| s == "apply") {
                let branches = on["push"]["branches"].as_array().expect("push branches");
                assert_eq!(branches.len(), 1, "{}", path.display());
                let branch = branches[0].as_str().expect("branch");
                let push = json!({"ref": format!("refs/heads/{branch}")});
                let (code, text) = run_hook(&hook, "push", &format!("refs/heads/{branch}"), Some(&push));
                assert_eq!(code, 0, "{}: the apply runner refuses its pushes: {text}", path.display());
            } else if on.get("pull_request").is_some() {
                for (name, job) in yaml["jobs"].as_object().expect("jobs") {
                    let labels = job["runs-on"].as_array().expect("runs-on");
                    assert!(labels.contains(&json!("nixprox-plan")), "{}: {name}", path.display());
                }
            }
        }
    }
}
