//! The probe key of docs/ci.md: a host that allows the drift job's key only to run a forced
//! `readlink /run/current-system` (`command="…",restrict` in `authorized_keys`) still answers
//! `nixprox plan --probe`, through the binary, against a real sshd. The forced command is
//! read from the NixOS snippet in the docs, so the docs and this test cannot disagree.

use serde_json::Value;

use crate::probe_cli::{lab, probe};
use crate::support::nix::repo;
use crate::support::sshd::TestHost;

/// The `command="…",restrict` options of the probe key in docs/ci.md's snippet, with
/// `${pkgs.coreutils}/bin/` dropped (the test host finds `readlink` on its `PATH`).
fn documented_options() -> String {
    let docs = std::fs::read_to_string(repo().join("docs/ci.md")).expect("docs/ci.md");
    let start = docs.find("<!-- probe-key-snippet -->").expect("the snippet marker in docs/ci.md");
    let end = docs.find("<!-- /probe-key-snippet -->").expect("the snippet's end marker");
    let line = docs[start..end]
        .lines()
        .find(|l| l.contains("command=\""))
        .expect("the snippet has a forced-command key");
    let options = line.trim().trim_start_matches("''");
    let options = &options[..options.find(" ssh-ed25519").expect("options, then the key")];
    options.replace("${pkgs.coreutils}/bin/", "")
}

#[test]
fn the_documented_probe_key_reads_the_running_system_and_only_that() {
    let options = documented_options();
    assert_eq!(options, r#"command="readlink /run/current-system",restrict"#);
    let host = TestHost::start();
    let (fixture, pve) = lab(&host);
    std::fs::write(
        host.root().join("etc-ssh/authorized_keys"),
        format!("{options} {}\n", host.client_public),
    )
    .expect("restrict the key");
    let by_hand = "/nix/store/0000000000000000000000000000000b-nixos-system-web-by-hand";
    std::os::unix::fs::symlink(by_hand, host.root().join("run/current-system")).expect("link");

    let run = probe(&fixture, &pve, &host);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let plan: Value = serde_json::from_str(&run.stdout).expect("json");
    assert_eq!(plan["probe"]["unreachable"], serde_json::json!([]), "{plan:#}");
    assert_eq!(plan["hosts"][0]["drift"]["running"], by_hand, "{plan:#}");

    // Whatever else the key asks for, the host runs the forced command.
    let out = std::process::Command::new("ssh")
        .args(["-i", &host.client_key.display().to_string(), "-p", &host.port.to_string()])
        .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
        .arg(format!("root@{}", host.address))
        .arg("touch /run/pwned; echo done")
        .output()
        .expect("ssh (Debian's openssh-client) runs");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        by_hand,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!host.root().join("run/pwned").exists(), "the probe key ran another command");
}
