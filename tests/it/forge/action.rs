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

/// A clone of depth 1 of a two-commit repository: the work tree has the head, not the base.
fn shallow_clone(origin_url: Option<&str>) -> (tempfile::TempDir, PathBuf, String) {
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(root.path().join("origin")).expect("mkdir origin");
    let origin = crate::support::git::Git::init(&root.path().join("origin"));
    std::fs::write(origin.dir.join("state"), "base").expect("write");
    let base = origin.commit_all("base");
    std::fs::write(origin.dir.join("state"), "head").expect("write");
    origin.commit_all("head");
    let work = root.path().join("work");
    let url = format!("file://{}", origin.dir.display());
    origin.run(&["clone", "--quiet", "--depth=1", &url, &work.display().to_string()]);
    if let Some(url) = origin_url {
        crate::support::git::Git { dir: work.clone() }.run(&["remote", "set-url", "origin", url]);
    }
    (root, work, base)
}

#[test]
fn plan_compares_with_the_base_commit_and_fetches_it_into_a_shallow_checkout() {
    let (_root, work, base) = shallow_clone(None);
    let flake = work.display().to_string();
    let has_base = || {
        Command::new("git")
            .args(["-C", &flake, "cat-file", "-e", &format!("{base}^{{commit}}")])
            .status()
            .expect("git")
            .success()
    };
    assert!(!has_base(), "a clone of depth 1 lacks the base");
    let vars = [
        ("ACTION_COMMAND", "plan"),
        ("ACTION_COMMENT", "false"),
        ("ACTION_FLAKE", &flake),
        ("ACTION_BASE", &base),
    ];
    let (ok, argv, stderr) = run_script(&vars);
    assert!(ok, "{stderr}");
    assert_eq!(argv, ["plan", "--base", &base, "--flake", &flake]);
    assert!(has_base(), "the script fetched the base: {stderr}");

    // `none` turns the comparison off; `fetch-base: false` passes the base without fetching.
    let (_, argv, _) =
        run_script(&[("ACTION_COMMAND", "plan"), ("ACTION_COMMENT", "false"), ("ACTION_BASE", "none")]);
    assert_eq!(argv, ["plan", "--no-base"]);
    let (_root, work, base) = shallow_clone(None);
    let flake = work.display().to_string();
    let (_, argv, _) = run_script(&[
        ("ACTION_COMMAND", "plan"),
        ("ACTION_COMMENT", "false"),
        ("ACTION_FLAKE", &flake),
        ("ACTION_BASE", &base),
        ("ACTION_FETCH_BASE", "false"),
    ]);
    assert_eq!(argv, ["plan", "--base", &base, "--flake", &flake]);
    // apply and drift have no base.
    let (_, argv, _) =
        run_script(&[("ACTION_COMMAND", "apply"), ("ACTION_COMMENT", "false"), ("ACTION_BASE", &base)]);
    assert_eq!(argv, ["apply"]);
}

/// The fetch authenticates as `actions/checkout` does (checkout runs with
/// `persist-credentials: false`, so the clone kept no credentials), never with the token on a
/// command line; a failed fetch is a warning and the plan still runs. The "forge" is a loopback
/// listener that records git's first request and refuses it.
#[test]
fn the_base_is_fetched_with_the_token_header_and_a_failed_fetch_is_a_warning() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/lab.git", listener.local_addr().expect("addr"));
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("git connects");
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            request.extend_from_slice(&buf[..n]);
        }
        stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .expect("write");
        String::from_utf8_lossy(&request).to_string()
    });
    let (_root, work, base) = shallow_clone(Some(&url));
    let flake = work.display().to_string();
    let (ok, argv, stderr) = run_script(&[
        ("ACTION_COMMAND", "plan"),
        ("ACTION_COMMENT", "false"),
        ("ACTION_FLAKE", &flake),
        ("ACTION_BASE", &base),
        ("NIXPROX_ACTION_TOKEN", "canary-token-123"),
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(argv, ["plan", "--base", &base, "--flake", &flake, "--token-env", "NIXPROX_ACTION_TOKEN"]);
    let request = server.join().expect("server");
    // base64("x-access-token:canary-token-123")
    let basic = "eC1hY2Nlc3MtdG9rZW46Y2FuYXJ5LXRva2VuLTEyMw==";
    assert!(
        request.to_lowercase().contains(&format!("authorization: basic {basic}").to_lowercase()),
        "{request}"
    );
    assert!(stderr.contains(&format!("::warning::could not fetch the base commit `{base}`")), "{stderr}");
    assert!(!stderr.contains("canary-token-123"), "{stderr}");
}

/// Issue 22: a runner without curl (NixOS's GitHub runner has none of its own) fails the
/// install step with what is missing and where it comes from, before any download.
#[test]
fn the_install_step_says_when_curl_is_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).expect("bin");
    // What the script runs before the download, and nothing else (no curl).
    for tool in ["mkdir", "uname", "mktemp", "rm"] {
        let found = ["/usr/bin", "/bin"].iter().map(|d| Path::new(d).join(tool)).find(|p| p.exists());
        std::os::unix::fs::symlink(found.expect(tool), bin.join(tool)).expect("link");
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("action/install.sh");
    let out = Command::new("/bin/bash")
        .arg(&script)
        .env_clear()
        .env("PATH", &bin)
        .env("ACTION_VERSION", "v0.1.0")
        .env("RUNNER_TEMP", dir.path())
        .env("GITHUB_PATH", dir.path().join("github_path"))
        .output()
        .expect("bash runs");
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "::error::the install step needs curl on the runner's PATH to download the release (nixosModules.runner puts it there; on another runner, install curl)"
    );
}
