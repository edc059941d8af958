//! Secrets from files, for runners that keep them on disk: `PROXMOX_API_TOKEN_FILE` and
//! `NIXPROX_SSH_KEY_FILE`, through the binary. The token's secret is a canary that must never
//! show in any output.

use crate::support::cli::{self, Run};
use crate::support::fakepve::{FakePve, Scenario};
use crate::support::nix::{Fixture, repo};

fn lab() -> (Fixture, FakePve) {
    let pve = FakePve::start(cli::cluster_scenario(&repo().join("fixtures/homelab/cluster.json")));
    (Fixture::copy("homelab"), pve)
}

fn plan(fixture: &Fixture, pve: &FakePve, env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut command = cli::plan_command(fixture, pve, args);
    command.env_remove("PROXMOX_API_TOKEN").envs(env.iter().copied());
    command.output().expect("run nixprox").into()
}

fn error_line(run: &Run) -> String {
    run.stderr.lines().filter(|l| l.starts_with("error:")).collect::<Vec<_>>().join("\n")
}

#[test]
fn the_api_token_is_read_from_its_file_and_never_shown() {
    let (fixture, pve) = lab();
    let file = fixture.dir.path().join("token");
    // The first line is the token; a trailing newline and what follows are not part of it.
    std::fs::write(&file, format!("{}\n# the plan token\n", pve.token())).expect("write token");
    let path = file.display().to_string();
    let run = plan(&fixture, &pve, &[("PROXMOX_API_TOKEN_FILE", &path)], &["--format", "json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("\"plan_id\""));
    assert!(!run.stdout.contains(pve.secret()) && !run.stderr.contains(pve.secret()), "the token leaked");
}

#[test]
fn a_token_in_both_places_or_an_unreadable_file_is_an_error_naming_it() {
    let (fixture, pve) = lab();
    let token = pve.token();
    let run = plan(&fixture, &pve, &[("PROXMOX_API_TOKEN", &token), ("PROXMOX_API_TOKEN_FILE", "/x")], &[]);
    assert_eq!(run.code, 1);
    assert_eq!(
        error_line(&run),
        "error: both PROXMOX_API_TOKEN and PROXMOX_API_TOKEN_FILE are set: unset one of them, so it is clear which token nixprox uses"
    );
    let missing = fixture.dir.path().join("no-such-token").display().to_string();
    let run = plan(&fixture, &pve, &[("PROXMOX_API_TOKEN_FILE", &missing)], &[]);
    assert_eq!(run.code, 1);
    assert!(
        error_line(&run).starts_with(&format!(
            "error: failed to read the API token from PROXMOX_API_TOKEN_FILE `{missing}` (it must be readable by the user nixprox runs as): "
        )),
        "{}",
        run.stderr
    );
    let bad = fixture.dir.path().join("bad-token");
    std::fs::write(&bad, "canary-not-a-token\n").expect("write");
    let bad = bad.display().to_string();
    let run = plan(&fixture, &pve, &[("PROXMOX_API_TOKEN_FILE", &bad)], &[]);
    assert_eq!(run.code, 1);
    assert_eq!(
        error_line(&run),
        format!(
            "error: invalid PROXMOX_API_TOKEN_FILE `{bad}`: expected `user@realm!tokenid=secret` (no `=` found)"
        )
    );
    assert!(!run.stderr.contains("canary-not-a-token"));
}

#[test]
fn the_ssh_key_file_is_the_key_nixprox_uses() {
    let pve = FakePve::start(Scenario::new());
    let fixture = Fixture::copy("homelab");
    let key = fixture.dir.path().join("no-such-key").display().to_string();
    let token = pve.token();
    let env = [("PROXMOX_API_TOKEN", token.as_str()), ("NIXPROX_SSH_KEY_FILE", key.as_str())];
    let run = plan(&fixture, &pve, &env, &["--probe"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(error_line(&run).contains(&format!("failed to read ssh key `{key}`")), "{}", run.stderr);
}
