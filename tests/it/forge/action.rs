//! The composite action's run script: inputs become exactly the expected nixprox arguments, and
//! hostile input stays one literal argument. `nixprox` on `PATH` is a recorder script here,
//! because what is under test is the argument list the script builds (like an `argv()` test).

use std::path::{Path, PathBuf};
use std::process::Command;

fn run_script(vars: &[(&str, &str)]) -> (bool, Vec<String>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let record = dir.path().join("argv");
    let bin = dir.path().join("nixprox");
    std::fs::write(
        &bin,
        format!("#!/bin/sh\nfor a in \"$@\"; do printf '%s\\0' \"$a\"; done > '{}'\n", record.display()),
    )
    .expect("write recorder");
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("action/run.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(&script).env_clear().env("PATH", format!("{}:/usr/bin:/bin", dir.path().display()));
    cmd.current_dir(dir.path());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("bash runs");
    let argv = std::fs::read(&record).unwrap_or_default();
    let argv = argv
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into())
        .collect();
    assert!(!Path::new(&dir.path().join("pwned")).exists(), "input was executed");
    (out.status.success(), argv, String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn plan_with_comment_and_flags() {
    let (ok, argv, _) = run_script(&[
        ("ACTION_COMMAND", "plan"),
        ("ACTION_FLAKE", "."),
        ("ACTION_CONFIG", "infra/nixprox.yaml"),
        ("ACTION_COMMENT", "true"),
        ("ACTION_COMMENT_REQUIRED", "true"),
        ("ACTION_ARGS", "--detailed-exitcode  --verbose"),
    ]);
    assert!(ok);
    assert_eq!(
        argv,
        [
            "plan",
            "--comment",
            "--comment-required",
            "--flake",
            ".",
            "--config",
            "infra/nixprox.yaml",
            "--detailed-exitcode",
            "--verbose"
        ]
    );
}

#[test]
fn apply_and_drift() {
    let (_, argv, _) = run_script(&[("ACTION_COMMAND", "apply"), ("ACTION_FLAKE", ".")]);
    assert_eq!(argv, ["apply", "--comment", "--flake", "."]);
    let (_, argv, _) = run_script(&[("ACTION_COMMAND", "drift"), ("ACTION_COMMENT", "true")]);
    assert_eq!(argv, ["drift", "--issue"]);
}

#[test]
fn the_token_input_is_named_explicitly_and_the_bot_login_passed() {
    let (ok, argv, _) = run_script(&[
        ("ACTION_COMMAND", "plan"),
        ("ACTION_COMMENT", "true"),
        ("NIXPROX_ACTION_TOKEN", "tok"),
        ("ACTION_BOT_LOGIN", "nixprox-lab[bot]"),
    ]);
    assert!(ok);
    assert_eq!(
        argv,
        ["plan", "--comment", "--token-env", "NIXPROX_ACTION_TOKEN", "--bot-login", "nixprox-lab[bot]"]
    );
    // The user's own `--token-env` in `args` is not doubled (clap would refuse it).
    let (_, argv, _) = run_script(&[
        ("ACTION_COMMAND", "drift"),
        ("NIXPROX_ACTION_TOKEN", "tok"),
        ("ACTION_ARGS", "--token-env MY_PAT"),
    ]);
    assert_eq!(argv, ["drift", "--issue", "--token-env", "MY_PAT"]);
}

#[test]
fn hostile_input_is_one_literal_argument() {
    let (ok, argv, _) = run_script(&[
        ("ACTION_COMMAND", "plan"),
        ("ACTION_COMMENT", "false"),
        ("ACTION_FLAKE", "$(touch pwned); `touch pwned`"),
    ]);
    assert!(ok);
    assert_eq!(argv, ["plan", "--flake", "$(touch pwned); `touch pwned`"]);
}

#[test]
fn unknown_command_is_refused() {
    let (ok, argv, stderr) = run_script(&[("ACTION_COMMAND", "destroy-everything")]);
    assert!(!ok);
    assert!(argv.is_empty());
    assert!(
        stderr.contains("unknown command input `destroy-everything` (expected plan, apply or drift)"),
        "{stderr}"
    );
}
