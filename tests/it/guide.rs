//! The guide and its example cannot drift from the code: every `nixprox …` command in the
//! docs' shell blocks and inline code parses with the real command line, the guide shows every
//! subcommand, the exit codes are documented alike, the example flake's nixprox part evaluates
//! and plans (and applies) through the binary against fakepve, its NixOS part derives address
//! and deploy user from it, the guide's two-pull-request race behaves as described, and every
//! pin names this release.

use std::path::Path;

use clap::Parser;
use serde_json::{Value, json};

use crate::support::cli::{self, Run};
use crate::support::fakepve::{FakePve, Scenario};
use crate::support::nix::{Fixture, repo};

/// The pages whose shell examples a user copies: every page of docs/, the README and the
/// example flake's README.
fn guides() -> Vec<String> {
    let mut pages: Vec<String> = std::fs::read_dir(repo().join("docs"))
        .expect("docs/")
        .map(|entry| entry.expect("docs entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .map(|path| format!("docs/{}", path.file_name().expect("name").to_string_lossy()))
        .collect();
    pages.sort();
    pages.extend(["README.md".to_string(), "examples/homelab-flake/README.md".to_string()]);
    pages
}

/// What the guide must show how to run: every subcommand (but `help`) and the flags of the
/// paths it describes.
const GUIDE_COVERS: &[&[&str]] = &[
    &["plan"],
    &["plan", "--format", "--out"],
    &["plan", "--shard"],
    &["plan", "--merge"],
    &["apply", "--reviewed-plan"],
    &["drift"],
    &["forget"],
    &["forget", "--vmid"],
    &["import"],
    &["gc-images"],
    &["gc-images", "--delete"],
];

/// Shell lines of the ```sh/bash/console/shell blocks, continuation lines joined.
fn shell_lines(markdown: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut in_shell = false;
    let mut pending = String::new();
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        if let Some(info) = trimmed.strip_prefix("```") {
            in_shell = !in_shell && matches!(info.trim(), "sh" | "bash" | "console" | "shell");
            continue;
        }
        if !in_shell {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(start) => pending.push_str(start),
            None => {
                pending.push_str(trimmed);
                lines.push(std::mem::take(&mut pending));
            }
        }
    }
    lines
}

/// The inline code spans of the prose (outside fenced blocks) that are a `nixprox …` command.
fn inline_commands(markdown: &str) -> Vec<String> {
    let mut spans = Vec::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Odd pieces between backticks are code spans.
        spans.extend(
            line.split('`')
                .skip(1)
                .step_by(2)
                .filter(|span| span.starts_with("nixprox "))
                .map(str::to_string),
        );
    }
    spans
}

/// Splits a shell line into words (single and double quotes, no expansion) up to a comment
/// or an operator that ends the command.
fn words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut started = false;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                started = true;
            }
            (None, c) if c.is_whitespace() => {
                if started {
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            (None, '#') if !started => break,
            (None, c) => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(word);
    }
    let end = words.iter().position(|w| matches!(w.as_str(), "|" | "||" | "&&" | ";" | ">" | "2>&1"));
    words.truncate(end.unwrap_or(words.len()));
    words
}

/// The nixprox argument list of a line: `nixprox …` (after `VAR=value` assignments and a
/// `$ ` prompt), or the arguments after `--` of `nix run github:nixprox/nixprox… -- …`.
fn nixprox_args(line: &str) -> Option<Vec<String>> {
    let line = line.strip_prefix("$ ").unwrap_or(line);
    let line = line.strip_prefix("exec ").unwrap_or(line);
    let words = words(line);
    let start = words.iter().position(|w| !w.contains('=') || w.starts_with('-'))?;
    let words = &words[start..];
    match words.first().map(String::as_str) {
        Some("nixprox") => Some(words.to_vec()),
        Some("nix") if words.iter().any(|w| w.starts_with("github:nixprox/nixprox")) => {
            let rest = words.iter().position(|w| w == "--")?;
            Some(std::iter::once("nixprox".to_string()).chain(words[rest + 1..].iter().cloned()).collect())
        }
        _ => None,
    }
}

#[test]
fn every_nixprox_command_in_the_guides_parses() {
    let mut checked = 0;
    let mut failures = Vec::new();
    let mut in_guide: Vec<Vec<String>> = Vec::new();
    for page in guides() {
        let text = std::fs::read_to_string(repo().join(&page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        let inline = inline_commands(&text);
        for line in shell_lines(&text).into_iter().chain(inline.iter().cloned()) {
            let Some(args) = nixprox_args(&line) else { continue };
            // Prose names a command by itself (`nixprox import`): it must exist, its
            // arguments are elsewhere.
            let named_only = args.len() == 2 && inline.contains(&line);
            checked += 1;
            if page == "docs/guide.md" {
                in_guide.push(args.clone());
            }
            match nixprox::cli::Cli::try_parse_from(&args) {
                Ok(_) => {}
                Err(err)
                    if matches!(
                        err.kind(),
                        clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
                    ) => {}
                Err(err) if named_only && err.kind() == clap::error::ErrorKind::MissingRequiredArgument => {}
                Err(err) => failures.push(format!("{page}: `{line}`: {}", err.kind())),
            }
        }
    }
    assert!(failures.is_empty(), "commands that do not parse:\n{}", failures.join("\n"));
    assert!(checked >= 30, "the guides show nixprox commands: only {checked} found");
    let missing: Vec<String> = GUIDE_COVERS
        .iter()
        .filter(|want| {
            !in_guide.iter().any(|args| {
                args.get(1).is_some_and(|sub| sub == want[0])
                    && want[1..]
                        .iter()
                        .all(|flag| args.iter().any(|a| a == flag || a.starts_with(&format!("{flag}="))))
            })
        })
        .map(|want| want.join(" "))
        .collect();
    assert!(missing.is_empty(), "docs/guide.md shows no `nixprox …` shell line for: {missing:?}");
}

/// The guide covers every subcommand the binary has.
#[test]
fn the_guide_covers_every_subcommand() {
    use clap::CommandFactory;
    let covered: Vec<&str> = GUIDE_COVERS.iter().map(|want| want[0]).collect();
    for sub in nixprox::cli::Cli::command().get_subcommands() {
        assert!(
            covered.contains(&sub.get_name()),
            "`nixprox {}` is missing from GUIDE_COVERS",
            sub.get_name()
        );
    }
}

#[test]
fn the_command_extraction_sees_what_a_shell_would() {
    assert_eq!(words("nixprox plan --hosts 'a b' # why"), ["nixprox", "plan", "--hosts", "a b"]);
    assert_eq!(
        nixprox_args("NIXPROX_LOG=debug nixprox plan | less"),
        Some(vec!["nixprox".into(), "plan".into()])
    );
    assert_eq!(
        nixprox_args("nix run github:nixprox/nixprox/v0.1.0 -- --version"),
        Some(vec!["nixprox".into(), "--version".into()])
    );
    assert_eq!(nixprox_args("pveum acl modify /vms"), None);
    assert_eq!(
        nixprox_args("exec nixprox apply --hosts \"$HOSTS\""),
        Some(vec!["nixprox".into(), "apply".into(), "--hosts".into(), "$HOSTS".into()])
    );
    assert_eq!(
        inline_commands("run `nixprox plan --hosts a` or `ls`\n```sh\necho `nixprox x`\n```\n"),
        ["nixprox plan --hosts a"]
    );
    let bad = nixprox_args("nixprox plan --no-such-flag").expect("a nixprox line");
    assert!(nixprox::cli::Cli::try_parse_from(bad).is_err(), "a wrong flag is caught");
}

#[test]
fn the_guide_is_linked_from_the_readmes_first_screen() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let first_screen: String = readme.lines().take(24).collect::<Vec<_>>().join("\n");
    assert!(first_screen.contains("(docs/guide.md)"), "{first_screen}");
}

#[test]
fn the_examples_and_the_guide_pin_this_release() {
    let tag = format!("v{}", env!("CARGO_PKG_VERSION"));
    let mut pins = Vec::new();
    for dir in ["examples/github", "examples/forgejo"] {
        for entry in std::fs::read_dir(repo().join(dir)).expect("examples") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("workflow");
            for line in text.lines().map(str::trim) {
                if let Some(version) = line.strip_prefix("version: ") {
                    pins.push((path.display().to_string(), version.trim().to_string()));
                }
                if line.contains("nixprox/nixprox@")
                    && let Some((_, comment)) = line.split_once("# ")
                {
                    pins.push((path.display().to_string(), comment.trim().to_string()));
                }
            }
        }
    }
    // Every page and flake a user copies the input from pins it (issue 22: README and
    // configuration.md used it unpinned).
    for name in [
        "examples/homelab-flake/flake.nix",
        "examples/homelab-flake/runner/flake.nix",
        "docs/guide.md",
        "docs/configuration.md",
        "docs/migrate.md",
        "docs/ci.md",
        "README.md",
    ] {
        let text = std::fs::read_to_string(repo().join(name)).expect(name);
        for (i, _) in text.match_indices("github:nixprox/nixprox") {
            let rest = &text[i + "github:nixprox/nixprox".len()..];
            let version: String = match rest.strip_prefix('/') {
                Some(rest) => rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '.').collect(),
                None => "(unpinned)".to_string(),
            };
            pins.push((name.to_string(), version));
        }
    }
    assert!(pins.len() >= 6, "pins found: {pins:?}");
    let wrong: Vec<_> = pins.iter().filter(|(_, version)| *version != tag).collect();
    assert!(wrong.is_empty(), "pins that are not {tag} (docs/releasing.md): {wrong:?}");
}

/// The example flake's nixprox part (`fixtures/example` wraps it with the stand-ins), with
/// the example's nixprox.yaml and a short address timeout.
fn example() -> (Fixture, String) {
    let fixture = Fixture::copy("example");
    copy_dir(&repo().join("examples/homelab-flake"), &fixture.dir.path().join("example"));
    let config = fixture.dir.path().join("nixprox.yaml");
    let settings =
        std::fs::read_to_string(repo().join("examples/homelab-flake/nixprox.yaml")).expect("settings");
    std::fs::write(&config, format!("{settings}apply:\n  address_timeout: 4\n")).expect("write settings");
    let config = config.display().to_string();
    (fixture, config)
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

/// Two nodes on local storage, each with its own copy of the bootstrap template.
fn two_nodes() -> FakePve {
    let template = |vmid: u32, node: &str| {
        json!({
            "vmid": vmid, "name": "nixos-bootstrap", "node": node, "status": "stopped", "template": true,
            "config": {
                "name": "nixos-bootstrap", "cores": 2, "memory": 2048, "agent": "1", "ostype": "l26",
                "scsihw": "virtio-scsi-single", "scsi0": format!("local-lvm:base-{vmid}-disk-0,size=4G"),
                "ide2": format!("local-lvm:vm-{vmid}-cloudinit,media=cdrom"),
                "net0": "virtio=BC:24:11:00:90:00,bridge=vmbr0", "boot": "order=scsi0"
            }
        })
    };
    FakePve::start(
        Scenario::new()
            .set("nodes", json!(["pve1", "pve2"]))
            .guest(template(9000, "pve1"))
            .guest(template(9001, "pve2"))
            // `media`, adopted in place (tests/it/example.rs).
            .guest(super::example::media_vm()),
    )
}

fn run(fixture: &Fixture, pve: &FakePve, config: &str, args: &[&str]) -> Run {
    let mut command = cli::nixprox();
    command.args(args).args(cli::source_args(fixture)).args(["--config", config]).envs(cli::pve_env(pve));
    command.output().expect("run nixprox").into()
}

fn vm_named(pve: &FakePve, name: &str) -> Value {
    let vms = pve.command(json!({"cmd": "vms"}));
    let vmid = vms.as_array().expect("vms").iter().find(|v| v["name"] == name).expect(name)["vmid"].as_u64();
    pve.vm(vmid.expect("vmid") as u32)
}

#[test]
fn the_example_flake_plans_and_applies_its_vms_with_serials_and_the_declared_address() {
    let (fixture, config) = example();
    let pve = two_nodes();
    let plan_file = plan_to(&fixture, &pve, &config, "plan.json");
    let plan: Value =
        serde_json::from_str(&std::fs::read_to_string(&plan_file).expect("plan")).expect("json");
    let hosts: Vec<(String, String, Vec<String>)> = plan["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .map(|h| {
            let kinds = h["actions"].as_array().expect("actions").iter();
            (
                h["host"].as_str().expect("host").to_string(),
                h["vm"]["node"].as_str().expect("node").to_string(),
                kinds.map(|a| a["kind"].as_str().expect("kind").to_string()).collect(),
            )
        })
        .collect();
    let create = vec!["create_vm".to_string(), "install".to_string()];
    assert_eq!(
        hosts,
        [
            ("db".into(), "pve2".into(), create.clone()),
            ("dns".into(), "pve1".into(), create.clone()),
            ("files".into(), "pve1".into(), create.clone()),
            ("media".into(), "pve1".into(), vec!["adopt".to_string(), "switch".to_string()]),
            ("web".into(), "pve1".into(), create)
        ]
    );

    // No SSH key: installs are skipped, nothing dials a VM. `dns` has no static address and
    // its clone runs no guest agent: nixprox says so and fails that host alone.
    pve.requests(true);
    let applied = run(&fixture, &pve, &config, &["apply", "--reviewed-plan", &plan_file]);
    assert_eq!(applied.code, 3, "one host failed:\n{}\n{}", applied.stdout, applied.stderr);
    assert!(applied.stderr.contains("install and switch steps will be skipped"), "{}", applied.stderr);
    let warning = applied.stderr.lines().find(|l| l.contains("the QEMU guest agent has not answered for"));
    assert!(
        warning.is_some_and(|l| l.contains("s; waiting up to 4s (`apply.address_timeout`)")),
        "the agent's silence is said while waiting:\n{}",
        applied.stderr
    );
    assert!(
        applied
            .stdout
            .contains("the QEMU guest agent never answered (is qemu-guest-agent installed and running"),
        "{}",
        applied.stdout
    );

    // Each clone came from the template on its own node (two clones racing for the same
    // free VMID may each take more than one attempt).
    let clones: Vec<String> =
        pve.requests(false).into_iter().filter(|(_, p)| p.ends_with("/clone")).map(|(_, p)| p).collect();
    assert!(clones.iter().all(|p| p.ends_with("/nodes/pve2/qemu/9001/clone") || p.ends_with("/nodes/pve1/qemu/9000/clone")));
    assert!(clones.iter().any(|p| p.ends_with("/nodes/pve2/qemu/9001/clone")), "{clones:?}");
    assert_eq!(vm_named(&pve, "web")["node"], "pve1");
    assert_eq!(vm_named(&pve, "dns")["node"], "pve1");

    let web = vm_named(&pve, "web");
    assert_eq!(web["config"]["ipconfig0"], "ip=10.0.20.10/24,gw=10.0.20.1", "{web:#}");
    assert!(web["config"]["scsi0"].as_str().expect("scsi0").contains("serial=root"), "{web:#}");
    let db = vm_named(&pve, "db");
    assert_eq!(db["node"], "pve2");
    assert_eq!(db["config"]["ipconfig0"], "ip=10.0.20.11/24,gw=10.0.20.1", "{db:#}");
    assert!(db["config"]["scsi1"].as_str().expect("scsi1").contains("serial=data"), "{db:#}");
    let dns = vm_named(&pve, "dns");
    assert_eq!(dns["config"]["ipconfig0"], "ip=dhcp", "{dns:#}");
    // The OVMF host: an EFI disk without pre-enrolled keys, the serial console.
    let files = vm_named(&pve, "files");
    assert_eq!(files["config"]["bios"], "ovmf", "{files:#}");
    assert!(
        files["config"]["efidisk0"].as_str().expect("efidisk0").contains("pre-enrolled-keys=0"),
        "{files:#}"
    );
    assert_eq!(files["config"]["serial0"], "socket", "{files:#}");
    let sshkeys = web["config"]["sshkeys"].as_str().expect("sshkeys");
    assert!(sshkeys.starts_with("ssh-ed25519%20AAAA"), "the example's bootstrap key: {sshkeys}");
}

/// `nix eval --json` of an output of the example fixture (with the test inputs).
fn eval_example(fixture: &Fixture, attr: &str) -> Value {
    let mut command = std::process::Command::new(crate::support::nix::nix().program);
    command
        .args(["--extra-experimental-features", "nix-command flakes", "eval", "--json"])
        .arg(format!("{}#{attr}", fixture.flake_ref()))
        .env("NIX_CONFIG", "substituters =");
    for input in crate::support::nix::override_inputs() {
        command.args(["--override-input", &input.name, &input.flake_ref]);
    }
    let output = command.output().expect("run nix");
    assert!(output.status.success(), "nix eval {attr}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("json")
}

/// The guide's "The flake": the installed NixOS takes its address from the nixprox options
/// declared once, runs the guest agent and sshd, lets nixprox in as the non-root deploy user
/// with passwordless sudo (and nobody as root), and decrypts agenix secrets with the host key
/// nixprox installs.
#[test]
fn the_example_nixos_takes_address_and_deploy_user_from_the_nixprox_options() {
    let (fixture, _config) = example();
    let common = eval_example(&fixture, "exampleCommon");
    let key = std::fs::read_to_string(repo().join("examples/homelab-flake/secrets/nixprox-ssh-key.pub"))
        .expect("key");
    let probe = std::fs::read_to_string(repo().join("examples/homelab-flake/secrets/nixprox-probe-key.pub"))
        .expect("probe key");
    let probe = format!(
        "command=\"/run/current-system/sw/bin/readlink /run/current-system\",restrict {}",
        probe.trim_end()
    );
    for (host, address) in [("web", Some("10.0.20.10/24")), ("db", Some("10.0.20.11/24")), ("dns", None)] {
        let nixos = &common[host];
        let lan = &nixos["systemd"]["network"]["networks"]["10-lan"];
        match address {
            Some(address) => {
                assert_eq!(lan["address"], json!([address]), "{host}: {lan:#}");
                assert_eq!(lan["gateway"], json!(["10.0.20.1"]), "{host}: {lan:#}");
                assert_eq!(lan["networkConfig"]["DHCP"], "no", "{host}: {lan:#}");
            }
            None => {
                assert_eq!(lan["address"], json!([]), "{host}: {lan:#}");
                assert_eq!(lan["networkConfig"]["DHCP"], "ipv4", "{host}: {lan:#}");
                assert_eq!(lan["dhcpV4Config"]["ClientIdentifier"], "mac", "{host}: {lan:#}");
            }
        }
        assert_eq!(nixos["services"]["qemuGuest"]["enable"], true, "{host}");
        assert_eq!(nixos["services"]["openssh"]["enable"], true, "{host}");
        assert_eq!(nixos["services"]["openssh"]["settings"]["PermitRootLogin"], "no", "{host}");
        let deploy = &nixos["users"]["users"]["deploy"];
        assert_eq!(
            deploy["openssh"]["authorizedKeys"]["keys"],
            json!([key.trim_end(), probe]),
            "{host}: {deploy:#}"
        );
        assert_eq!(
            nixos["security"]["sudo"]["extraRules"],
            json!([{"users": ["deploy"], "commands": [{"command": "ALL", "options": ["NOPASSWD"]}]}]),
            "{host}"
        );
        assert_eq!(nixos["age"]["identityPaths"], json!(["/etc/ssh/ssh_host_ed25519_key"]), "{host}");
    }
}

/// Replaces `from` with `to` in a file of the example copy.
fn edit_example(fixture: &Fixture, file: &str, from: &str, to: &str) {
    let path = fixture.dir.path().join("example").join(file);
    let text = std::fs::read_to_string(&path).expect("example file");
    assert!(text.contains(from), "{file} has `{from}`");
    std::fs::write(&path, text.replacen(from, to, 1)).expect("write example file");
}

fn plan_to(fixture: &Fixture, pve: &FakePve, config: &str, name: &str) -> String {
    let file = fixture.dir.path().join(name).display().to_string();
    let planned = run(fixture, pve, config, &["plan", "--format", "json", "--out", &file]);
    assert_eq!(planned.code, 0, "{}", planned.stderr);
    file
}

/// The cores of `web` and `db` (pending ones first: a running VM gets them at its reboot).
fn cores(pve: &FakePve) -> (String, String) {
    let of = |name: &str| {
        let vm = vm_named(pve, name);
        let value =
            if vm["pending"]["cores"].is_null() { &vm["config"]["cores"] } else { &vm["pending"]["cores"] };
        value.to_string().trim_matches('"').to_string()
    };
    (of("web"), of("db"))
}

/// `nixprox apply --reviewed-plan <reviewed> [--hosts <hosts>]`, expecting `code`.
fn apply_reviewed(
    fixture: &Fixture,
    pve: &FakePve,
    config: &str,
    reviewed: &str,
    hosts: &[&str],
    code: i32,
) -> Run {
    let mut args = vec!["apply", "--reviewed-plan", reviewed];
    if !hosts.is_empty() {
        args.extend(["--hosts"].iter().chain(hosts));
    }
    let applied = run(fixture, pve, config, &args);
    assert_eq!(applied.code, code, "{args:?}:\n{}\n{}", applied.stdout, applied.stderr);
    applied
}

/// The guide's "Two pull requests merged in quick succession", through the binary: the second
/// pull request's apply is compared host by host with what its review showed. Refused as a
/// whole (exit 4, nothing changed) while the first one's change of another host is still
/// pending; its own hosts alone (a fan-out shard) proceed; and once the first is applied, the
/// second applies as reviewed.
#[test]
fn a_second_pull_request_is_refused_while_the_first_is_pending_and_applies_after_it() {
    let (fixture, config) = example();
    std::fs::remove_dir_all(fixture.dir.path().join("example/hosts/dns")).expect("drop dns (DHCP)");
    let pve = two_nodes();
    // The default branch, applied: web and db exist (no SSH key: their installs stay pending).
    let main = plan_to(&fixture, &pve, &config, "main.json");
    apply_reviewed(&fixture, &pve, &config, &main, &[], 0);
    assert_eq!(cores(&pve), ("2".into(), "4".into()));

    // Both pull requests branch from it and are reviewed: the first changes web, the second db.
    edit_example(&fixture, "hosts/web/nixprox.nix", "cores = 2;", "cores = 3;");
    let first = plan_to(&fixture, &pve, &config, "first.json");
    edit_example(&fixture, "hosts/web/nixprox.nix", "cores = 3;", "cores = 2;");
    edit_example(&fixture, "hosts/db/nixprox.nix", "cores = 4;", "cores = 6;");
    let second = plan_to(&fixture, &pve, &config, "second.json");

    // Both merged; the second's merge commit holds both changes, and its apply runs before
    // the first one's finished: web would do what its review did not show.
    edit_example(&fixture, "hosts/web/nixprox.nix", "cores = 2;", "cores = 3;");
    let refused = apply_reviewed(&fixture, &pve, &config, &second, &[], 4);
    assert!(refused.stderr.contains("the plan changed since it was reviewed"), "{}", refused.stderr);
    let web_line = refused.stderr.lines().find(|l| l.starts_with("  host `web`: reviewed "));
    assert!(
        web_line.is_some_and(|l| l.contains("; now update_vm(cores 2→3)")),
        "the refused host with its delta:\n{}",
        refused.stderr
    );
    assert!(!refused.stderr.contains("host `db`"), "db is as reviewed:\n{}", refused.stderr);
    assert_eq!(cores(&pve), ("2".into(), "4".into()), "nothing applied");

    // The first one's apply, on its own merge commit (web changed, db not), then the second's
    // re-run: the first's change is done, the second's is what was reviewed.
    edit_example(&fixture, "hosts/db/nixprox.nix", "cores = 6;", "cores = 4;");
    apply_reviewed(&fixture, &pve, &config, &first, &[], 0);
    assert_eq!(cores(&pve), ("3".into(), "4".into()));
    edit_example(&fixture, "hosts/db/nixprox.nix", "cores = 4;", "cores = 6;");
    let rerun = apply_reviewed(&fixture, &pve, &config, &second, &[], 0);
    assert!(!rerun.stderr.contains("--allow-new-plan"), "{}", rerun.stderr);
    assert_eq!(cores(&pve), ("3".into(), "6".into()));

    // A fan-out shard is decided on its own hosts: the same race again, and the second's shard
    // of db proceeds while web's change is pending.
    edit_example(&fixture, "hosts/db/nixprox.nix", "cores = 6;", "cores = 8;");
    let fourth = plan_to(&fixture, &pve, &config, "fourth.json");
    edit_example(&fixture, "hosts/web/nixprox.nix", "cores = 3;", "cores = 5;");
    apply_reviewed(&fixture, &pve, &config, &fourth, &[], 4);
    apply_reviewed(&fixture, &pve, &config, &fourth, &["db"], 0);
    assert_eq!(cores(&pve), ("3".into(), "8".into()));
}

/// Every exit code of `nixprox::run::exit` is documented alike in the README, the
/// configuration reference, plan.md's and troubleshooting.md's tables, and nowhere a code the
/// binary does not have.
#[test]
fn the_exit_codes_are_documented_alike_everywhere() {
    use nixprox::run::exit;
    let codes: Vec<u8> = vec![
        exit::SUCCESS,
        exit::ERROR,
        exit::CHANGES,
        exit::HOSTS_FAILED,
        exit::REFUSED,
        exit::INTERRUPTED,
        exit::TERMINATED,
    ];
    let numbers = |text: &str| -> Vec<u8> {
        let mut found: Vec<u8> = text
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .filter(|n| codes.contains(n) || *n > 4)
            .collect();
        found.sort_unstable();
        found.dedup();
        found
    };
    let read = |page: &str| std::fs::read_to_string(repo().join(page)).expect(page);
    // A table: the first cell of each row under the `## Exit codes` heading.
    let table = |page: &str| -> Vec<u8> {
        let text = read(page);
        let section = text.split("## Exit codes").nth(1).unwrap_or_else(|| panic!("{page}: no exit codes"));
        let rows: Vec<&str> = section
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .skip(2)
            .map(|row| row.split('|').nth(1).expect("first cell"))
            .collect();
        numbers(&rows.join(" "))
    };
    // A list: the paragraph starting with `Exit codes:`.
    let list = |page: &str| -> Vec<u8> {
        let text = read(page);
        let start = text.find("Exit codes: ").unwrap_or_else(|| panic!("{page}: no `Exit codes:` list"));
        numbers(text[start..].split("\n\n").next().expect("paragraph"))
    };
    let mut expected = codes.clone();
    expected.sort_unstable();
    for (page, found) in [
        ("docs/plan.md", table("docs/plan.md")),
        ("docs/troubleshooting.md", table("docs/troubleshooting.md")),
        ("docs/configuration.md", list("docs/configuration.md")),
        ("README.md", list("README.md")),
    ] {
        assert_eq!(found, expected, "{page} documents other exit codes than the binary has");
    }
}
