//! The example flake's adopted host, `media` (examples/homelab-flake/hosts/media): a VM made
//! before nixprox, with its own hardware configuration (no disko) and reached as root until a
//! later pull request moves nixprox to the deploy user its first switch created. Its nixprox
//! part is planned through the binary against a VM as Terraform left it; its shared NixOS
//! module (modules/common.nix) is evaluated with the stand-ins of NixOS's users and sshd and
//! their assertions (fixtures/lib/nixos-assertions.nix), as root and after the move.

use std::path::Path;

use serde_json::{Value, json};

use crate::support::cli::{self, Run};
use crate::support::fakepve::{FakePve, Scenario};
use crate::support::hosts::nixos_os;
use crate::support::nix::{Fixture, repo};

/// `media`'s VM as Terraform cloned it and `nixos-rebuild` configured it: VMID 130 on `pve1`,
/// a `virtio0` disk without a serial, untagged by nixprox, running NixOS with its agent.
pub fn media_vm() -> Value {
    json!({
        "vmid": 130, "name": "media", "node": "pve1", "status": "running",
        "agent": {"os": nixos_os()},
        "config": {
            "name": "media", "cores": 4, "sockets": 1, "cpu": "x86-64-v2-AES", "memory": "4096", "agent": "1",
            "onboot": 1, "ostype": "l26", "scsihw": "virtio-scsi-single", "boot": "order=virtio0",
            "virtio0": "local-lvm:vm-130-disk-0,discard=on,size=64G",
            "net0": "virtio=BC:24:11:00:01:30,bridge=vmbr0", "tags": "media",
            "description": "Jellyfin. Terraform: proxmox_virtual_environment_vm.media\n"
        }
    })
}

/// The example's nixprox part (`fixtures/example` wraps it) and its nixprox.yaml.
fn example() -> (Fixture, String) {
    let fixture = Fixture::copy("example");
    copy_dir(&repo().join("examples/homelab-flake"), &fixture.dir.path().join("example"));
    let config = fixture.dir.path().join("nixprox.yaml");
    let settings =
        std::fs::read_to_string(repo().join("examples/homelab-flake/nixprox.yaml")).expect("settings");
    std::fs::write(&config, settings).expect("write settings");
    (fixture, config.display().to_string())
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

fn edit(fixture: &Fixture, file: &str, from: &str, to: &str) {
    let path = fixture.dir.path().join("example").join(file);
    let text = std::fs::read_to_string(&path).expect("example file");
    assert!(text.contains(from), "`{from}` in {file}");
    std::fs::write(&path, text.replacen(from, to, 1)).expect("write example file");
}

/// `nix eval --json <fixture>#<attr>` with the test inputs: the value, or nix's error.
fn eval(fixture: &Fixture, attr: &str) -> Result<Value, String> {
    let mut command = std::process::Command::new(crate::support::nix::nix().program);
    command
        .args(["--extra-experimental-features", "nix-command flakes", "eval", "--json"])
        .arg(format!("{}#{attr}", fixture.flake_ref()))
        .env("NIX_CONFIG", "substituters =");
    for input in crate::support::nix::override_inputs() {
        command.args(["--override-input", &input.name, &input.flake_ref]);
    }
    let output = command.output().expect("run nix");
    if output.status.success() {
        Ok(serde_json::from_slice(&output.stdout).expect("json"))
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

fn plan(fixture: &Fixture, pve: &FakePve, config: &str) -> Value {
    let mut command = cli::nixprox();
    command
        .args(["plan", "--format", "json", "--hosts", "media"])
        .args(cli::source_args(fixture))
        .args(["--config", config])
        .envs(cli::pve_env(pve));
    let run: Run = command.output().expect("run nixprox").into();
    assert_eq!(run.code, 0, "plan failed:\n{}", run.stderr);
    serde_json::from_str(&run.stdout).expect("plan json")
}

#[test]
fn the_examples_adopted_host_plans_adopt_and_switch_without_disko_or_serials() {
    let (fixture, config) = example();
    let pve = FakePve::start(Scenario::new().set("nodes", json!(["pve1", "pve2"])).guest(media_vm()));
    let plan = plan(&fixture, &pve, &config);
    assert_eq!(cli::kinds(&plan, "media"), ["adopt", "switch"], "{plan:#}");
    assert_eq!(plan["summary"]["update_vm"], 0, "the VM as it is, no serial forced on its disk: {plan:#}");
    assert_eq!(plan["summary"]["reinstall"], 0, "{plan:#}");
    // No disk layout of its own: no reinstall, the disk keeps its slot and has no serial.
    let adopt = &cli::actions(&plan, "media")[0];
    assert!(adopt["reason"].as_str().unwrap_or_default().contains("without a reinstall"), "{adopt:#}");
}

#[test]
fn the_examples_common_module_works_as_root_and_after_the_move_to_the_deploy_user() {
    let (fixture, _config) = example();
    let key = std::fs::read_to_string(repo().join("examples/homelab-flake/secrets/nixprox-ssh-key.pub"))
        .expect("key");
    let key = key.trim_end();
    let probe = std::fs::read_to_string(repo().join("examples/homelab-flake/secrets/nixprox-probe-key.pub"))
        .expect("probe key");
    // The probe key of `drift --probe` only ever prints the running system (docs/ci.md).
    let probe = format!(
        "command=\"/run/current-system/sw/bin/readlink /run/current-system\",restrict {}",
        probe.trim_end()
    );
    let keys = json!([key, probe]);
    let sudo = json!([{"users": ["deploy"], "commands": [{"command": "ALL", "options": ["NOPASSWD"]}]}]);

    // Adopted, reached as root: root logs in with the runner's key only, and the first switch
    // creates the deploy user with its key and sudo rule. NixOS's assertions hold.
    let root = eval(&fixture, "exampleCommon.media").expect("media evaluates as root");
    assert_eq!(root["system"]["build"]["assertionsChecked"], true);
    assert_eq!(root["services"]["openssh"]["settings"]["PermitRootLogin"], "prohibit-password", "{root:#}");
    assert_eq!(root["users"]["users"]["root"]["openssh"]["authorizedKeys"]["keys"], keys);
    assert_eq!(root["users"]["users"]["root"]["isNormalUser"], false);
    let deploy = &root["users"]["users"]["deploy"];
    assert_eq!((deploy["isNormalUser"].clone(), deploy["uid"].clone()), (json!(true), Value::Null));
    assert_eq!(deploy["openssh"]["authorizedKeys"]["keys"], keys);
    assert_eq!(root["security"]["sudo"]["extraRules"], sudo);
    // The created hosts log in as `deploy` from the start; root logs in nowhere.
    let web = eval(&fixture, "exampleCommon.web").expect("web");
    assert_eq!(web["services"]["openssh"]["settings"]["PermitRootLogin"], "no");
    assert_eq!(web["users"]["users"]["root"]["openssh"]["authorizedKeys"]["keys"], json!([]));

    // A later pull request moves media to the deploy user: the line goes, root is locked out.
    edit(&fixture, "hosts/media/nixprox.nix", "nixprox.ssh.user = \"root\";", "");
    let user = eval(&fixture, "nixosConfigurations.media.config.nixprox.ssh.user").expect("eval");
    assert_eq!(user, "deploy");
    let moved = eval(&fixture, "exampleCommon.media").expect("media evaluates with the deploy user");
    assert_eq!(moved["services"]["openssh"]["settings"]["PermitRootLogin"], "no");
    assert_eq!(moved["users"]["users"]["root"]["openssh"]["authorizedKeys"]["keys"], json!([]));
    assert_eq!(moved["users"]["users"]["deploy"], root["users"]["users"]["deploy"], "the same user");
    assert_eq!(moved["security"]["sudo"]["extraRules"], sudo);

    // What the example did before (the SSH user itself a normal user) fails for root, with
    // NixOS's own assertion.
    edit(
        &fixture,
        "hosts/media/nixprox.nix",
        "nixprox.address",
        "nixprox.ssh.user = \"root\";\n  nixprox.address",
    );
    edit(
        &fixture,
        "modules/common.nix",
        "users.users.root.openssh.authorizedKeys.keys = lib.mkIf asRoot sshKeys;",
        "",
    );
    edit(&fixture, "modules/common.nix", "users.users.${deployUser} = {", "users.users.${cfg.ssh.user} = {");
    let error = eval(&fixture, "exampleCommon.media").expect_err("root as a normal user");
    assert!(error.contains("Failed assertions:"), "{error}");
    assert!(
        error.contains(
            "A user cannot have a users.users.root.uid set below 1000 and set users.users.root.isNormalUser."
        ),
        "{error}"
    );
}
