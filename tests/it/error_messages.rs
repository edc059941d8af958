//! Error messages, asserted by their exact text: what a user reads when something is wrong
//! must name the object and the fix. Dynamic parts (temporary paths, ports) are replaced by
//! placeholders before comparing.

use crate::support::cli::{self, Run};
use crate::support::fakepve::{FakePve, Scenario};
use crate::support::fleet::Fleet;
use crate::support::nix::{Fixture, override_inputs};

/// stderr with the run's dynamic parts replaced, and the exit code checked.
fn failure(run: &Run, replacements: &[(&str, &str)]) -> String {
    assert_eq!(run.code, 1, "expected exit code 1; stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    assert_eq!(run.stdout, "", "nothing on stdout when planning fails");
    let mut text = run.stderr.lines().filter(|l| l.starts_with("error:")).collect::<Vec<_>>().join("\n");
    for (from, to) in replacements {
        text = text.replace(from, to);
    }
    text
}

fn empty_cluster() -> FakePve {
    FakePve::start(Scenario::new())
}

#[test]
fn nix_evaluation_error_names_the_host() {
    let fixture = Fixture::copy("eval-error");
    let pve = empty_cluster();
    let run = cli::plan(&fixture, &pve, &[]);
    let flake = fixture.flake_ref();
    insta::assert_snapshot!(failure(&run, &[(flake.as_str(), "<flake>")]));
}

#[test]
fn unknown_settings_key_names_line_and_column() {
    let fixture = Fixture::copy("homelab");
    let pve = empty_cluster();
    let config = fixture.dir.path().join("bad.yaml");
    std::fs::write(&config, "policies:\n  prune_orphans: true\n  alow_replace: true\n")
        .expect("write config");
    let run = cli::plan(&fixture, &pve, &["--config", config.to_str().expect("utf-8")]);
    let path = config.display().to_string();
    assert_eq!(
        failure(&run, &[(path.as_str(), "<dir>/bad.yaml")]),
        "error: invalid settings file `<dir>/bad.yaml` at line 3, column 3: policies: unknown field `alow_replace`, expected one of `prune_orphans`, `allow_reinstall`, `allow_replace`, `allow_detach_disks`"
    );
}

#[test]
fn wrong_token_is_a_401_with_the_fix() {
    let fixture = Fixture::copy("homelab");
    let pve = empty_cluster();
    let run: Run = cli::plan_command(&fixture, &pve, &[])
        .env("PROXMOX_API_TOKEN", "nixprox@pve!test=wrong-secret")
        .output()
        .expect("run")
        .into();
    assert_eq!(
        failure(&run, &[]),
        "error: failed to read the cluster: failed to read `/cluster/resources`: 401 authentication failure (check PROXMOX_API_TOKEN (`user@realm!tokenid=secret`): the token `nixprox@pve!test` was rejected; it must exist, be unexpired and have this secret)"
    );
}

#[test]
fn missing_token_says_how_to_make_one() {
    let fixture = Fixture::copy("homelab");
    let pve = empty_cluster();
    let run: Run =
        cli::plan_command(&fixture, &pve, &[]).env_remove("PROXMOX_API_TOKEN").output().expect("run").into();
    assert_eq!(
        failure(&run, &[]),
        "error: PROXMOX_API_TOKEN is not set: create an API token in Proxmox (Datacenter → Permissions → API Tokens) and export it as `user@realm!tokenid=secret`, or put it in a file and set PROXMOX_API_TOKEN_FILE (see docs/guide.md)"
    );
}

#[test]
fn unreachable_endpoint_names_the_url() {
    let fixture = Fixture::copy("homelab");
    let pve = empty_cluster();
    // Port 1 on loopback: nothing listens there.
    let run: Run = cli::plan_command(&fixture, &pve, &[])
        .env("PROXMOX_URL", "https://127.0.0.1:1")
        .output()
        .expect("run")
        .into();
    insta::assert_snapshot!(failure(&run, &[]));
}

#[test]
fn tls_failure_hints_at_ca_cert() {
    let fixture = Fixture::copy("homelab");
    let pve = empty_cluster();
    let other = empty_cluster();
    let run: Run = cli::plan_command(&fixture, &pve, &[])
        .env("PROXMOX_CA_CERT", other.ca_cert())
        .output()
        .expect("run")
        .into();
    let url = pve.url().to_string();
    insta::assert_snapshot!(failure(&run, &[(url.as_str(), "<url>")]));
}

#[test]
fn no_quorum_stops_apply_with_the_fix() {
    let fixture = Fixture::copy("homelab");
    let pve = FakePve::start(cli::cluster_scenario(
        &crate::support::nix::repo().join("fixtures/homelab/cluster.json"),
    ));
    let plan = fixture.dir.path().join("plan.json").display().to_string();
    let run = cli::nixprox_in(&fixture, &pve, &["plan", "--format", "json", "--out", &plan]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    pve.command(serde_json::json!({"cmd": "quorum", "quorate": false}));
    pve.requests(true);
    let run = cli::nixprox_in(&fixture, &pve, &["apply", "--reviewed-plan", &plan]);
    assert_eq!(
        failure(&run, &[]),
        "error: the Proxmox cluster `fakecluster` has no quorum, so its configuration (/etc/pve) is read-only: every write would fail, and a destroy could free disks yet keep the VM; nothing was applied (check `pvecm status` on a node, bring enough nodes back online, then run apply again)"
    );
    assert!(pve.requests(false).iter().all(|(method, _)| method == "GET"), "nothing was written");
}

#[test]
fn a_disko_image_larger_than_its_disk_names_both_sizes_and_the_fix() {
    // The example's image host, its disko image declared larger than its 32G disk.
    let fixture = Fixture::copy("homelab");
    let flake = fixture.dir.path().join("flake.nix");
    let text = std::fs::read_to_string(&flake).expect("flake.nix");
    assert!(text.contains("imageSize = \"8G\";"), "the example declares ci's image size");
    std::fs::write(&flake, text.replace("imageSize = \"8G\";", "imageSize = \"40G\";")).expect("write");
    let pve = empty_cluster();
    let run = cli::plan(&fixture, &pve, &[]);
    assert_eq!(
        failure(&run, &[]),
        "error: host `ci`: disko's image `scsi0` for disk `scsi0` is 40G (`disko.devices.disk.*.imageSize`) but `nixprox.vm.disks.scsi0.size` is 32G (raise the disk's size, or lower the image's: an imported disk can only grow)"
    );
}

/// plan, apply and drift read `--override-input` through one parser, before anything else
/// happens: a value one of them refuses, the others refuse with the same words (apply used to
/// drop an odd one silently). A usage error exits 1 like every error, never 2 ("changes").
#[test]
fn a_malformed_override_input_is_refused_alike_by_plan_apply_and_drift() {
    let fixture = Fixture::copy("homelab");
    let pve = empty_cluster();
    let cases: [(&[&str], &str); 3] = [
        (
            &["--override-input", "", "path:/x"],
            "error: `--override-input` has an empty input name (it takes two values: `--override-input NAME REF`, e.g. `--override-input nixpkgs github:NixOS/nixpkgs/nixos-24.11`)",
        ),
        (
            &["--override-input", "nixpkgs", " "],
            "error: `--override-input nixpkgs` has an empty flake reference (give a flake reference, e.g. `path:/src/nixpkgs`)",
        ),
        (
            &["--override-input", "nixpkgs"],
            "error: 2 values required for '--override-input <NAME> <REF>' but 1 was provided",
        ),
    ];
    for (args, expected) in cases {
        for command in ["plan", "apply", "drift"] {
            let run: Run = cli::nixprox()
                .arg(command)
                .args(["--flake", &fixture.flake_ref()])
                .args(args)
                .envs(cli::pve_env(&pve))
                .output()
                .expect("run")
                .into();
            assert_eq!(failure(&run, &[]), expected, "nixprox {command} {args:?}");
        }
    }
    assert!(pve.requests(false).is_empty(), "nothing is read before the arguments are checked");
}

/// A host that alone outgrows `eval.max_memory` fails the plan naming the host and the setting
/// (the stand-in host needs several hundred MiB; the bound is 96 MiB).
#[test]
fn a_host_too_big_for_eval_max_memory_names_the_host_and_the_setting() {
    let fleet = Fleet::generate_heavy(2, 4000);
    fleet.append_settings("eval:\n  max_memory: 96M\n");
    let pve = empty_cluster();
    let mut command = cli::nixprox();
    command.arg("plan").args(["--flake", &fleet.flake_ref()]);
    for input in override_inputs() {
        command.args(["--override-input", &input.name, &input.flake_ref]);
    }
    let run: Run = command.envs(cli::pve_env(&pve)).output().expect("run").into();
    let flake = fleet.flake_ref();
    assert_eq!(
        failure(&run, &[(flake.as_str(), "<flake>")]),
        "error: host `h0000` of flake `<flake>` alone needs more than `eval.max_memory` (96 MiB) to evaluate: a `nix eval` of only this host outgrew it (raise `eval.max_memory` in nixprox.yaml)"
    );
}
