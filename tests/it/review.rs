//! The review boundary through the binary (issue 20): what the reviewer saw is what runs, and
//! nothing from a flake, a VM or a host can change what a reviewer sees. A detach takes only
//! the reviewed slots (a disk attached meanwhile stays, also after a digest conflict); a
//! hostile host attribute name is refused at evaluation; a VM's hostile name and notes render
//! inert (checked in the rendered CommonMark); `nix` evaluates with no secret in its
//! environment. The forge side (an edited comment, a swapped VM) is in `forge/reviewed.rs`.

use std::path::Path;

use serde_json::{Value, json};

use crate::support::cli::{self, Run, homelab_with, nixprox_in, pve_env, source_args};
use crate::support::nix::Fixture;
use nixprox::metadata::{Metadata, Notes};

/// Appends a policy to the fixture's nixprox.yaml.
fn allow(fixture: &Fixture, policy: &str) {
    let path = fixture.dir.path().join("nixprox.yaml");
    let text = std::fs::read_to_string(&path).expect("nixprox.yaml");
    std::fs::write(&path, text.replacen("policies:\n", &format!("policies:\n  {policy}: true\n"), 1))
        .expect("write nixprox.yaml");
}

fn unused_volumes(config: &Value) -> Vec<String> {
    let mut unused: Vec<String> = config
        .as_object()
        .expect("config")
        .iter()
        .filter(|(k, _)| k.starts_with("unused"))
        .filter_map(|(_, v)| v.as_str().map(str::to_string))
        .collect();
    unused.sort();
    unused
}

/// The reviewed `detach_disk` names `scsi1`. Someone attaches `scsi2` while apply runs: right
/// after apply read the config it plans from, or right before its config write (which then
/// meets a digest conflict and reads the config again). Either way only `scsi1` goes.
#[test]
fn a_disk_attached_after_the_plan_read_is_never_detached() {
    for when in ["after the plan read", "before the write (digest conflict)"] {
        let (fixture, pve) = homelab_with(|g| {
            if g["vmid"] == 101 {
                g["config"]["scsi1"] = json!("local-lvm:vm-101-disk-1,size=8G");
                // Stopped, so Proxmox detaches at once (a running VM takes it as pending).
                g["status"] = json!("stopped");
            }
        });
        allow(&fixture, "allow_detach_disks");
        let plan_file = fixture.dir.path().join("plan.json").display().to_string();
        let run =
            nixprox_in(&fixture, &pve, &["plan", "--format", "json", "--hosts", "web", "--out", &plan_file]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let plan: Value =
            serde_json::from_str(&std::fs::read_to_string(&plan_file).expect("plan")).expect("json");
        assert_eq!(cli::kinds(&plan, "web"), ["detach_disk"], "{plan:#}");
        let late = json!({"scsi2": "local-lvm:vm-101-disk-2,size=4G"});
        let rule = if when.starts_with("after") {
            json!({"cmd": "edit_on_request", "method": "GET", "path": "/qemu/101/config$", "skip": 0,
                   "when": "after", "vmid": 101, "config": late})
        } else {
            json!({"cmd": "edit_on_request", "method": "POST", "path": "/qemu/101/config$", "skip": 0,
                   "when": "before", "vmid": 101, "config": late})
        };
        pve.command(rule);
        let run = nixprox_in(&fixture, &pve, &["apply", "--reviewed-plan", &plan_file, "--hosts", "web"]);
        assert_eq!(run.code, 0, "{when}:\n{}\n{}", run.stdout, run.stderr);
        if when.starts_with("before") {
            assert!(
                run.stdout.contains("digest conflict"),
                "{when}: the write met the edit:\n{}",
                run.stdout
            );
        }
        let config = pve.vm(101)["config"].clone();
        assert!(config.get("scsi1").is_none(), "{when}: the reviewed disk is detached: {config:#}");
        assert_eq!(config["scsi2"], "local-lvm:vm-101-disk-2,size=4G", "{when}: the late disk stays");
        assert_eq!(unused_volumes(&config), ["local-lvm:vm-101-disk-1"], "{when}: {config:#}");
    }
}

/// A host attribute name that would close its backticks and fake the plan's counts.
const HOSTILE_NAME: &str =
    "0`: `replace_vm` — blocked\\n\\n**0 to create, 1 to update, 0 to switch, 0 to destroy**\\n\\n<!--";

#[test]
fn a_host_name_that_cannot_be_rendered_safely_is_refused_at_evaluation() {
    let (fixture, pve) = homelab_with(|_| {});
    let flake = fixture.dir.path().join("flake.nix");
    let text = std::fs::read_to_string(&flake).expect("flake");
    let hostile = format!(
        "nixosConfigurations = {{\n        \"{HOSTILE_NAME}\" = host {{ name = \"evil\"; address = \"127.0.0.99\"; }};\n"
    );
    let changed = text.replacen("nixosConfigurations = {\n", &hostile, 1);
    assert_ne!(changed, text, "the fixture has its hosts where this test expects");
    std::fs::write(&flake, changed).expect("write flake");
    let run = nixprox_in(&fixture, &pve, &["plan", "--format", "markdown"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.is_empty(), "nothing rendered: {}", run.stdout);
    assert!(
        run.stderr.contains(
            "error: host attribute name \"0`: `replace_vm` — blocked\\n\\n**0 to create, 1 to update, 0 to switch, 0 to destroy**\\n\\n<!--\" of flake `"
        ),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(
            "cannot be shown safely in a plan: it contains '`'; nixprox accepts ASCII letters, digits, `.`, `_`, `+` and `-` (rename `nixosConfigurations."
        ),
        "{}",
        run.stderr
    );
}

/// Markdown rendered as CommonMark (what the forge shows), as HTML.
fn commonmark(markdown: &str) -> String {
    let mut options = pulldown_cmark::Options::empty();
    options.insert(pulldown_cmark::Options::ENABLE_TABLES);
    options.insert(pulldown_cmark::Options::ENABLE_STRIKETHROUGH);
    let mut html = String::new();
    pulldown_cmark::html::push_html(&mut html, pulldown_cmark::Parser::new_ext(markdown, options));
    html
}

/// The orphan `old-wiki` (VM 150) renamed to something hostile, with notes whose block names a
/// host with a link and a mention: the plan comment shows them, inert, and hides nothing.
#[test]
fn a_vm_name_and_notes_from_the_cluster_render_inert() {
    let hostile_vm = "old`<!--\n**0 to destroy**";
    let hostile_host = "[click here](https://evil.example/) @admin <img src=x>";
    let (fixture, pve) = homelab_with(|g| {
        if g["vmid"] == 150 {
            g["name"] = json!(hostile_vm);
            g["config"]["name"] = json!(hostile_vm);
            let notes = Notes::parse(g["config"]["description"].as_str().unwrap_or_default());
            let metadata =
                Metadata { host: hostile_host.into(), ..notes.metadata().cloned().unwrap_or_default() };
            g["config"]["description"] = json!(Notes::render("", &metadata));
        }
    });
    let run = nixprox_in(&fixture, &pve, &["plan", "--format", "markdown"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let html = commonmark(&run.stdout);
    assert!(!html.contains("<!--"), "no HTML comment opens:\n{html}");
    assert!(!html.contains("<a "), "no link:\n{html}");
    assert!(!html.contains("<img"), "no image:\n{html}");
    assert!(!html.contains("@admin"), "no mention:\n{html}");
    assert!(!html.contains("<strong>0 to destroy</strong>"), "no fake counts:\n{html}");
    // The real plan is all there, after the hostile parts: the destroy of the orphan and the
    // hosts that come after it in the comment.
    assert!(html.contains("destroy_vm"), "{html}");
    assert!(html.contains("<p>Unchanged: "), "the end of the comment is shown:\n{html}");
    assert!(html.contains("<code>web</code>"), "{html}");
    // The hostile text itself is shown, as text.
    assert!(html.contains("click here"), "{html}");
    assert!(html.contains("&lt;img src=x&gt;"), "{html}");
}

/// Writes a `nix` on PATH that records its environment, then runs the real one.
fn recording_nix(dir: &Path) -> std::path::PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    let log = dir.join("env");
    std::fs::create_dir_all(&log).expect("env dir");
    let script = format!("#!/bin/sh\nenv > \"{}/$$.env\"\nexec /usr/bin/nix \"$@\"\n", log.display());
    let nix = bin.join("nix");
    std::fs::write(&nix, script).expect("write nix");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&nix, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    bin
}

/// Every `nix` a plan runs sees none of the secrets nixprox holds: the Proxmox token, a forge
/// token, an SSH key in the environment.
#[test]
fn nix_evaluates_the_flake_with_no_secret_in_its_environment() {
    let (fixture, pve) = homelab_with(|_| {});
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = recording_nix(dir.path());
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    const CANARY: &str = "canary-7f3e9b2c-secret";
    let mut command = cli::nixprox();
    command
        .arg("plan")
        .args(source_args(&fixture))
        .args(["--format", "json"])
        .envs(pve_env(&pve))
        .env("PATH", &path)
        .env("GITHUB_TOKEN", CANARY)
        .env("FORGEJO_TOKEN", CANARY)
        .env("GITEA_TOKEN", CANARY)
        .env("NIXPROX_SSH_KEY", CANARY)
        .env("MY_WORKFLOW_SECRET", CANARY);
    let run: Run = command.output().expect("run nixprox").into();
    assert_eq!(run.code, 0, "{}", run.stderr);
    let logs: Vec<String> = std::fs::read_dir(dir.path().join("env"))
        .expect("env logs")
        .map(|e| std::fs::read_to_string(e.expect("entry").path()).expect("read"))
        .collect();
    assert!(!logs.is_empty(), "the plan ran nix through the wrapper");
    for env in &logs {
        assert!(!env.contains(CANARY), "a secret reached nix:\n{env}");
        assert!(!env.contains(pve.secret()), "the Proxmox token reached nix:\n{env}");
        assert!(!env.contains("PROXMOX_"), "{env}");
        assert!(env.lines().any(|l| l.starts_with("PATH=")), "nix still finds its tools:\n{env}");
        assert!(env.lines().any(|l| l.starts_with("NIX_CONFIG=")), "nix's settings pass:\n{env}");
    }
}
