//! The privilege preflight through the binary: plan and apply ask `/access/permissions` first
//! and stop, naming the privilege, the path and the `pveum` fix, before anything happens. The
//! token is privilege-separated the way the guide sets it up (the driver models Proxmox's
//! intersection of a token's and its user's privileges), and the role is read from the guide
//! itself, so the documented commands are the ones tested.

use serde_json::{Value, json};

use crate::support::cli::{self, Run};
use crate::support::fakepve::{FakePve, TOKEN_ID};
use crate::support::nix::{Fixture, repo};

const USER: &str = "nixprox@pve";

/// The privileges of the `NixproxApply` role, as `docs/guide.md` creates it (PVE 9).
fn apply_role() -> Vec<String> {
    let guide = std::fs::read_to_string(repo().join("docs/guide.md")).expect("docs/guide.md");
    let line = guide
        .lines()
        .find(|l| l.starts_with("pveum role add NixproxApply --privs '"))
        .expect("the guide creates the NixproxApply role");
    let privs = line.split('\'').nth(1).expect("quoted privileges");
    privs.split(',').map(str::to_string).collect()
}

/// The homelab cluster, with grants on `/` for the user and for the token.
fn homelab(user: &[String], token: &[String]) -> (Fixture, FakePve) {
    fn as_str(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let scenario = cli::cluster_scenario(&repo().join("fixtures/homelab/cluster.json"))
        .grant(USER, "/", &as_str(user))
        .grant(TOKEN_ID, "/", &as_str(token));
    (Fixture::copy("homelab"), FakePve::start(scenario))
}

fn nixprox(fixture: &Fixture, pve: &FakePve, args: &[&str]) -> Run {
    let mut command = cli::nixprox();
    command.args(args).args(cli::source_args(fixture)).envs(cli::pve_env(pve));
    command.output().expect("run nixprox").into()
}

fn without(privileges: &[String], dropped: &str) -> Vec<String> {
    privileges.iter().filter(|p| p.as_str() != dropped).cloned().collect()
}

fn error_text(run: &Run) -> String {
    run.stderr.lines().skip_while(|l| !l.starts_with("error:")).collect::<Vec<_>>().join("\n")
}

fn names(pve: &FakePve) -> Vec<String> {
    let vms = pve.command(json!({"cmd": "vms"}));
    vms.as_array().expect("vms").iter().filter_map(|v| v["name"].as_str().map(str::to_string)).collect()
}

#[test]
fn plan_with_a_token_that_cannot_see_every_vm_fails_with_the_fix() {
    let fixture = Fixture::copy("homelab");
    // Only one VM is visible: planning would create the others a second time. Nor can it read
    // the image storage `ci` uploads to.
    let scenario = cli::cluster_scenario(&repo().join("fixtures/homelab/cluster.json"))
        .grant(USER, "/vms/101", &["VM.Audit"])
        .grant(TOKEN_ID, "/vms/101", &["VM.Audit"]);
    let pve = FakePve::start(scenario);
    let run = cli::plan(&fixture, &pve, &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(run.stdout, "", "no plan is printed");
    assert_eq!(
        error_text(&run),
        "error: the Proxmox token `nixprox@pve!test` lacks privileges this run needs; nothing was changed:
  Datastore.Audit or Datastore.AllocateSpace on /storage/images (`ci`: its image storage's files)
  VM.Audit on /vms (propagated) (reading the cluster's VMs)
grant the role `PVEAuditor` (docs/guide.md#proxmox-tokens) on these paths to the token and its user (a privilege-separated token holds only what both hold):
  pveum acl modify /storage/images --users 'nixprox@pve' --tokens 'nixprox@pve!test' --roles PVEAuditor
  pveum acl modify /vms --users 'nixprox@pve' --tokens 'nixprox@pve!test' --roles PVEAuditor
or add them to the role you use: pveum role modify <role> --append 1 --privs 'Datastore.Audit,VM.Audit'"
    );
    assert!(!run.stderr.contains(pve.secret()));
}

#[test]
fn the_plan_token_of_the_guide_plans_and_warns_in_ci_only_when_it_could_write() {
    // The guide: the user holds the apply role, the plan token PVEAuditor (read only).
    let auditor: Vec<String> =
        ["VM.Audit", "VM.GuestAgent.Audit", "Datastore.Audit", "Sys.Audit", "Pool.Audit", "SDN.Audit"]
            .map(String::from)
            .to_vec();
    let (fixture, pve) = homelab(&apply_role(), &auditor);
    let ci = ["plan", "--forge", "github", "--repo", "me/lab", "--api-url", "http://127.0.0.1:9"];
    let run = nixprox(&fixture, &pve, &ci);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!run.stderr.contains("can change the cluster"), "{}", run.stderr);

    // The same token given write access in a CI job: planned, with a warning.
    pve.command(json!({"cmd": "grant", "user": TOKEN_ID, "path": "/vms", "privs": ["VM.PowerMgmt"]}));
    let run = nixprox(&fixture, &pve, &ci);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("the Proxmox token `nixprox@pve!test` can change the cluster (VM.PowerMgmt on /"),
        "{}",
        run.stderr
    );
}

#[test]
fn apply_stops_before_anything_when_the_token_lacks_a_privilege_and_runs_once_granted() {
    let role = apply_role();
    // The token was given everything but SDN.Use: the clone of `matrix` would fail half way.
    let (fixture, pve) = homelab(&role, &without(&role, "SDN.Use"));
    let plan_file = fixture.dir.path().join("plan.json").display().to_string();
    let run =
        nixprox(&fixture, &pve, &["plan", "--format", "json", "--out", &plan_file, "--hosts", "matrix"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    pve.requests(true);

    let apply = ["apply", "--reviewed-plan", plan_file.as_str(), "--hosts", "matrix"];
    let run = nixprox(&fixture, &pve, &apply);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let error = error_text(&run);
    assert!(error.contains("\n  SDN.Use on /sdn/zones/localnetwork/vmbr0 (`matrix`: network)\n"), "{error}");
    assert!(
        error.contains(
            "\n  pveum acl modify /sdn/zones/localnetwork --users 'nixprox@pve' --tokens 'nixprox@pve!test' --roles NixproxApply"
        ),
        "{error}"
    );
    assert!(!names(&pve).contains(&"matrix".to_string()), "nothing was created");
    let writes: Vec<(String, String)> = pve.requests(false).into_iter().filter(|(m, _)| m != "GET").collect();
    assert!(writes.is_empty(), "nothing was sent: {writes:?}");

    // Granted as the fix says: the same apply runs.
    pve.command(
        json!({"cmd": "grant", "user": TOKEN_ID, "path": "/sdn/zones/localnetwork", "privs": ["SDN.Use"]}),
    );
    let run = nixprox(&fixture, &pve, &apply);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(names(&pve).contains(&"matrix".to_string()));
}

#[test]
fn a_privilege_separated_token_holds_only_what_its_user_holds_too() {
    let role = apply_role();
    // The token has the whole role, its user lacks VM.Clone: the token cannot clone.
    let (fixture, pve) = homelab(&without(&role, "VM.Clone"), &role);
    let run = nixprox(&fixture, &pve, &["plan", "--format", "json", "--hosts", "matrix"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let plan: Value = serde_json::from_str(&run.stdout).expect("plan json");
    let id = plan["plan_id"].as_str().expect("plan id");
    let run = nixprox(&fixture, &pve, &["apply", "--plan-id", id, "--hosts", "matrix"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        error_text(&run).contains("\n  VM.Clone on /vms/9000 (`matrix`: clone the template)\n"),
        "{}",
        run.stderr
    );
    assert!(!names(&pve).contains(&"matrix".to_string()), "nothing was created");
}

/// The `NixproxApply` role line the guide gives for Proxmox VE `major`.
fn apply_role_for(major: u32) -> Vec<String> {
    let guide = std::fs::read_to_string(repo().join("docs/guide.md")).expect("docs/guide.md");
    let wanted = if major == 8 { "VM.Monitor" } else { "VM.GuestAgent.FileRead" };
    let line = guide
        .lines()
        .filter(|l| l.starts_with("pveum role add NixproxApply --privs '"))
        .find(|l| l.contains(wanted))
        .unwrap_or_else(|| panic!("the guide has a role line for PVE {major}"));
    line.split('\'').nth(1).expect("quoted privileges").split(',').map(str::to_string).collect()
}

/// Issue 22: the preflight names the guest agent's privilege as the cluster's version knows
/// it, read from `GET /version`: `VM.Monitor` on PVE 8 (where `VM.GuestAgent.*` is an invalid
/// privilege), `VM.GuestAgent.FileRead` on PVE 9 (where `VM.Monitor` is gone), and the
/// `pveum role modify` line it prints runs on that version.
#[test]
fn the_preflight_names_the_agent_privilege_of_the_clusters_version() {
    for (major, version, agent) in [(8, "8.4.1", "VM.Monitor"), (9, "9.0.10", "VM.GuestAgent.FileRead")] {
        let mut role = apply_role_for(major);
        role.push("Datastore.AllocateTemplate".into());
        let as_str = |v: &[String]| v.iter().map(String::clone).collect::<Vec<_>>();
        let token = without(&role, agent);
        let scenario = cli::cluster_scenario(&repo().join("fixtures/homelab/cluster.json"))
            .set("version", json!(version))
            .grant(USER, "/", &as_str(&role).iter().map(String::as_str).collect::<Vec<_>>())
            .grant(TOKEN_ID, "/", &token.iter().map(String::as_str).collect::<Vec<_>>());
        let (fixture, pve) = (Fixture::copy("homelab"), FakePve::start(scenario));
        let plan_file = fixture.dir.path().join("plan.json").display().to_string();
        let run =
            nixprox(&fixture, &pve, &["plan", "--format", "json", "--out", &plan_file, "--hosts", "ci"]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let run = nixprox(&fixture, &pve, &["apply", "--reviewed-plan", &plan_file, "--hosts", "ci"]);
        assert_eq!(run.code, 1, "PVE {major}: {}", run.stderr);
        let error = error_text(&run);
        assert!(
            error.contains(&format!(
                "\n  {agent} (Proxmox VE {major}) on /vms (propagated) (`ci`: its host key (guest agent))\n"
            )),
            "PVE {major}: {error}"
        );
        let fix = error.lines().last().expect("the role line");
        assert_eq!(
            fix,
            format!("or add them to the role you use: pveum role modify <role> --append 1 --privs '{agent}'")
        );
        let other = if major == 8 { "GuestAgent" } else { "VM.Monitor" };
        assert!(!error.contains(other), "PVE {major} does not know `{other}`: {error}");
    }
}
