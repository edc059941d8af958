//! Integration tests of the apply executor against fakepve: creates, adoptions, updates with
//! compare-and-swap, grows, destroys, the approval of the reviewed plan, injected faults,
//! an interrupted create that a second run resumes, and ten hosts at once.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use nixprox::apply::{
    ApplyError, ApplyOptions, HostOutcome, Progress, ProgressMode, Reviewed, ReviewedPlan, RunOutcome,
    RunRequest, StepStatus,
};
use nixprox::config::{Policies, Settings};
use nixprox::flake::DesiredHost;
use nixprox::metadata::Notes;
use nixprox::plan::{ActionKind, Plan, PlanInput};
use nixprox::proxmox::{Client, LiveVm, ReadRequest, RetryPolicy, read_cluster};
use serde_json::{Value, json};

use crate::support::fakepve::{FakePve, Request, Scenario};
use crate::support::hosts::{self, SSH_KEY, agent_with, host, template};

/// A fake cluster with the template, and the settings tests apply with.
struct Lab {
    pve: FakePve,
    client: Client,
    settings: Settings,
    progress: Progress,
}

impl Lab {
    fn start(scenario: Scenario) -> Lab {
        let pve = FakePve::start(scenario.guest(template()));
        let client = pve.client();
        Lab { pve, client, settings: Settings::default(), progress: Progress::new(ProgressMode::Quiet) }
    }

    fn options(&self) -> ApplyOptions {
        ApplyOptions {
            address_timeout: Duration::from_secs(20),
            shutdown_timeout: Duration::from_secs(30),
            task_timeout: Duration::from_secs(60),
            step_retry: RetryPolicy {
                retries: 12,
                base_delay: Duration::from_millis(100),
                max_delay: Duration::from_millis(400),
            },
            poll_interval: Duration::from_millis(50),
            ..ApplyOptions::from_settings(&self.settings)
        }
    }

    async fn live(&self, desired: &[DesiredHost]) -> Vec<LiveVm> {
        let read =
            ReadRequest { host_names: desired.iter().map(|h| h.spec.name.clone()).collect(), concurrency: 4 };
        read_cluster(&self.client, &read).await.expect("read the fake cluster")
    }

    /// What `nixprox plan` would show now.
    async fn plan(&self, desired: &[DesiredHost]) -> Plan {
        let live = self.live(desired).await;
        nixprox::plan::plan(PlanInput {
            desired,
            live: &live,
            policies: self.settings.policies,
            only: None,
            probes: None,
        })
    }

    async fn run(
        &self,
        desired: &[DesiredHost],
        reviewed: &Reviewed,
        allow: bool,
    ) -> Result<RunOutcome, ApplyError> {
        nixprox::apply::run(RunRequest {
            client: &self.client,
            settings: &self.settings,
            desired,
            only: None,
            reviewed,
            allow_new_plan: allow,
            git_rev: Some("0123abc"),
            deployer: None,
            image_build: None,
            progress: &self.progress,
            options: self.options(),
            cancel: &nixprox::apply::Cancel::new(),
            shown: None,
        })
        .await
    }

    /// Plans, then applies that plan as the reviewed one.
    async fn plan_and_apply(&self, desired: &[DesiredHost]) -> RunOutcome {
        let plan = self.plan(desired).await;
        self.run(desired, &reviewed_body(&plan), false).await.expect("the reviewed plan is applied")
    }

    /// Every request with its body, oldest first; `clear` forgets them.
    fn requests(&self, clear: bool) -> Vec<Request> {
        self.pve.requests_with_bodies(clear)
    }

    fn vms(&self) -> Vec<Value> {
        self.pve.command(json!({"cmd": "vms"})).as_array().expect("a list").clone()
    }

    /// The VMs other than the template.
    fn guests(&self) -> Vec<Value> {
        self.vms().into_iter().filter(|vm| vm["vmid"] != json!(hosts::TEMPLATE_ID)).collect()
    }

    /// Waits (bounded) until `check` holds for the fake's VM list.
    async fn wait_until(&self, what: &str, check: impl Fn(&[Value]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if check(&self.vms()) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting until {what}: {:?}", self.vms());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

fn reviewed_body(plan: &Plan) -> Reviewed {
    Reviewed::Plan(
        ReviewedPlan::parse(&nixprox::render::json::render(plan)).expect("a plan renders and parses"),
    )
}

fn config_text(vm: &Value, key: &str) -> String {
    match &vm["config"][key] {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn kinds(plan: &Plan, host: &str) -> Vec<ActionKind> {
    plan.hosts
        .iter()
        .find(|h| h.host == host)
        .map(|h| h.actions.iter().map(|a| a.kind).collect())
        .unwrap_or_default()
}

fn step<'a>(outcome: &'a RunOutcome, host: &str, name: &str) -> &'a nixprox::apply::StepReport {
    let report = outcome.report.hosts.iter().find(|h| h.host == host).expect("host in the report");
    report
        .steps
        .iter()
        .find(|s| s.step == name)
        .unwrap_or_else(|| panic!("no step {name}: {:?}", report.steps))
}

fn outcome_of<'a>(outcome: &'a RunOutcome, host: &str) -> &'a HostOutcome {
    &outcome.report.hosts.iter().find(|h| h.host == host).expect("host in the report").outcome
}

/// A managed, installed VM as fakepve guest, in sync with `host(name)` except what `config` overrides.
fn installed_vm(vmid: u32, name: &str, status: &str, config: Value) -> Value {
    let metadata = nixprox::metadata::Metadata {
        host: name.into(),
        system: Some(host(name).system.toplevel),
        disk_layout: Some("sha256:1111".into()),
        ..Default::default()
    };
    let mut base = json!({
        "name": name, "cores": 2, "sockets": 1, "cpu": "x86-64-v2-AES", "memory": "2048", "agent": "1",
        "scsi0": format!("local-lvm:vm-{vmid}-disk-0,discard=on,size=20G"),
        "net0": "virtio=BC:24:11:00:00:01,bridge=vmbr0", "tags": "lab;nixprox", "onboot": 1,
        "description": Notes::render(&format!("{name}, managed by nixprox tests"), &metadata)
    });
    for (key, value) in config.as_object().expect("object") {
        base[key] = value.clone();
    }
    json!({"vmid": vmid, "name": name, "node": "pve1", "status": status, "config": base})
}

/// Until the VM named `name` runs, then answers for its guest agent with `address`.
async fn turn_on_agent_when_running(lab: &Lab, name: &str, address: &str) {
    lab.wait_until(&format!("`{name}` runs"), |vms| {
        vms.iter().any(|vm| vm["name"] == json!(name) && vm["status"] == json!("running"))
    })
    .await;
    // Let apply see "QEMU guest agent is not running" for a while first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let vmid =
        lab.vms().iter().find(|vm| vm["name"] == json!(name)).map(|vm| vm["vmid"].clone()).expect("vm");
    lab.pve.command(json!({"cmd": "set_agent", "vmid": vmid, "agent": agent_with(address)}));
}

#[tokio::test]
async fn full_create_clones_configures_resizes_starts_and_finds_the_address() {
    let lab = Lab::start(Scenario::new());
    let mut web = host("web");
    web.spec.disks.get_mut("scsi0").expect("scsi0").size_bytes = 32 << 30;
    let desired = vec![web.clone()];
    let plan = lab.plan(&desired).await;
    assert_eq!(kinds(&plan, "web"), [ActionKind::CreateVm, ActionKind::Install]);
    lab.requests(true);

    let reviewed = reviewed_body(&plan);
    let (outcome, ()) = tokio::join!(
        lab.run(&desired, &reviewed, false),
        turn_on_agent_when_running(&lab, "web", "127.0.0.31")
    );
    let outcome = outcome.expect("apply runs");
    let report = &outcome.report.hosts[0];
    assert!(is_done(&report.outcome), "{}", outcome.report.render_text());
    assert_eq!(report.address.as_deref(), Some("127.0.0.31"));
    let names: Vec<&str> = report.steps.iter().map(|s| s.step.as_str()).collect();
    assert_eq!(names, ["clone", "configure", "resize", "start", "address", "install"]);
    assert_eq!(step(&outcome, "web", "install").status, StepStatus::Skipped);
    assert_eq!(step(&outcome, "web", "install").detail.as_deref(), Some("no deployer configured"));
    assert_eq!(step(&outcome, "web", "resize").detail.as_deref(), Some("scsi0 20G→32G"));

    // Read the VM back through the API: every key as the flake declared it. (fakepve does
    // not model qemu's `/resize`, so `scsi0` keeps the template's 20G; the request is below.)
    let vmid = report.vmid.expect("a vmid");
    let config = lab.client.get(&format!("/nodes/pve1/qemu/{vmid}/config"), &[]).await.expect("config");
    insta::assert_json_snapshot!("created_vm_config", stable_config(&config, &plan.plan_id));
    let vm = json!({"config": config});
    assert_eq!(
        percent_encoding::percent_decode_str(&config_text(&vm, "sshkeys")).decode_utf8_lossy(),
        SSH_KEY
    );
    let notes = Notes::parse(&config_text(&vm, "description"));
    assert_eq!(notes.user_text, "web, managed by nixprox tests");
    let metadata = notes.metadata().expect("metadata block");
    assert_eq!(metadata.host, "web");
    // NixOS is not installed yet (no deployer): `applying` stays so the next run resumes.
    assert_eq!(metadata.applying.as_deref(), Some(plan.plan_id.as_str()));
    assert_eq!(lab.pve.vm(vmid)["status"], json!("running"));

    // The clone carried the notes (the journal entry) and the resize used an absolute size.
    let requests = lab.requests(false);
    let clone = requests.iter().find(|r| r.is("POST", "/qemu/9000/clone")).expect("clone");
    assert!(clone.body.contains("nixprox%3Av1") && clone.body.contains("full=1"), "{}", clone.body);
    let resize = requests.iter().find(|r| r.is("PUT", "/resize")).expect("resize");
    assert_eq!(resize.body, "disk=scsi0&size=32G");
    let configure = requests.iter().find(|r| r.is("POST", "/config")).expect("config write");
    assert!(configure.body.contains("digest="), "{}", configure.body);
    assert!(
        requests.iter().filter(|r| r.path.ends_with("/agent/network-get-interfaces")).count() > 1,
        "the agent was polled until it ran"
    );
}

/// A VM config with its keys sorted and what changes from run to run replaced: the digest,
/// the MAC addresses and UUIDs Proxmox generates, the creation time, the plan id.
fn stable_config(config: &Value, plan_id: &str) -> std::collections::BTreeMap<String, Value> {
    let object = config.as_object().expect("a config object");
    object
        .iter()
        .map(|(key, value)| {
            let value = match key.as_str() {
                "digest" | "smbios1" | "vmgenid" | "meta" => json!(format!("<{key}>")),
                _ if key.starts_with("net") => {
                    let text = value.as_str().unwrap_or_default();
                    let (model, rest) = text.split_once(',').unwrap_or((text, ""));
                    let model = model.split('=').next().unwrap_or_default();
                    json!(format!("{model}=<mac>,{rest}"))
                }
                _ => match value {
                    Value::String(text) => json!(text.replace(plan_id, "<plan id>")),
                    other => other.clone(),
                },
            };
            (key.clone(), value)
        })
        .collect()
}

#[tokio::test]
async fn a_second_run_of_a_finished_create_repeats_nothing() {
    let lab = Lab::start(Scenario::new());
    let mut web = host("web");
    web.address = Some("127.0.0.32".into());
    let desired = vec![web];
    let first = lab.plan_and_apply(&desired).await;
    assert!(is_done(&first.report.hosts[0].outcome), "{}", first.report.render_text());
    assert_eq!(first.report.hosts[0].address.as_deref(), Some("127.0.0.32"));
    let again = lab.plan(&desired).await;
    assert_eq!(kinds(&again, "web"), [ActionKind::Install], "only NixOS is left to do");
    lab.requests(true);
    let second = lab.run(&desired, &reviewed_body(&first.plan), false).await.expect("resumes");
    // The VM still says `applying` (NixOS is owed), so the create's steps check again, and
    // find everything done.
    let names: Vec<(&str, &StepStatus)> =
        second.report.hosts[0].steps.iter().map(|s| (s.step.as_str(), &s.status)).collect();
    assert_eq!(
        names,
        [
            ("configure", &StepStatus::AlreadyDone),
            ("resize", &StepStatus::AlreadyDone),
            ("start", &StepStatus::AlreadyDone),
            ("address", &StepStatus::Ok),
            ("install", &StepStatus::Skipped)
        ]
    );
    let writes: Vec<Request> = lab.requests(false).into_iter().filter(|r| r.method != "GET").collect();
    assert_eq!(writes, Vec::<Request>::new(), "nothing is written twice");
    assert_eq!(lab.guests().len(), 1);
}

#[tokio::test]
async fn an_adoption_without_an_ssh_key_changes_nothing() {
    let scenario = Scenario::new().guest(json!({
        "vmid": 130, "name": "db", "node": "pve1", "status": "running",
        "config": {"cores": 2, "memory": "2048", "cpu": "x86-64-v2-AES", "agent": "1", "onboot": 1,
                   "scsi0": "local-lvm:vm-130-disk-0,discard=on,size=20G", "net0": "virtio=BC:24:11:00:01:30,bridge=vmbr0",
                   "description": "hand-made", "tags": "lab"}
    }));
    let lab = Lab::start(scenario);
    let desired = vec![host("db")];
    let plan = lab.plan(&desired).await;
    // Adopted in place (never reinstalled): the guest agent gives the host key.
    assert_eq!(kinds(&plan, "db"), [ActionKind::Adopt, ActionKind::UpdateVm, ActionKind::Switch]);
    let before = lab.pve.vm(130);
    lab.requests(true);
    let outcome = lab.run(&desired, &reviewed_body(&plan), false).await.expect("apply");
    // Adopting starts by reading what the VM runs over SSH: without a key, the host is
    // skipped and nothing is written, not even the tag.
    assert!(
        matches!(outcome_of(&outcome, "db"), HostOutcome::Skipped { reason } if reason.contains("no SSH key configured")),
        "{}",
        outcome.report.render_text()
    );
    assert_eq!(step(&outcome, "db", "adopt").status, StepStatus::Skipped);
    let writes: Vec<Request> = lab.requests(false).into_iter().filter(|r| r.method != "GET").collect();
    assert_eq!(writes, Vec::<Request>::new(), "nothing is written");
    assert_eq!(lab.pve.vm(130)["config"], before["config"]);
    // The next plan is the same adoption, never an install.
    assert_eq!(lab.plan(&desired).await.plan_id, plan.plan_id);
}

#[tokio::test]
async fn updates_use_the_digest_and_recover_from_a_conflict() {
    let lab = Lab::start(Scenario::new().guest(installed_vm(140, "app", "stopped", json!({"cores": 1}))));
    let mut app = host("app");
    app.spec.on_boot = false;
    let desired = vec![app];
    let plan = lab.plan(&desired).await;
    assert_eq!(kinds(&plan, "app"), [ActionKind::UpdateVm]);
    // Someone else's write lands between nixprox's read and its write: PVE's CAS refuses it.
    lab.pve.command(json!({"cmd": "fail", "method": "POST", "path": "/nodes/pve1/qemu/140/config",
                           "error": "checksum_mismatch_file_change_other", "times": 1}));
    lab.requests(true);
    let outcome = lab.run(&desired, &reviewed_body(&plan), false).await.expect("apply");
    assert!(is_done(outcome_of(&outcome, "app")), "{}", outcome.report.render_text());
    let detail = step(&outcome, "app", "configure").detail.clone().unwrap_or_default();
    assert!(detail.contains("after 1 digest conflict(s)"), "{detail}");
    let writes: Vec<String> =
        lab.requests(false).into_iter().filter(|r| r.is("POST", "/config")).map(|r| r.body).collect();
    assert!(writes.len() >= 2 && writes.iter().all(|body| body.contains("digest=")), "{writes:?}");
    let vm = lab.pve.vm(140);
    assert_eq!((config_text(&vm, "cores"), config_text(&vm, "onboot")), ("2".into(), "0".into()));
    assert_eq!(lab.plan(&desired).await.hosts[0].actions[0].kind, ActionKind::Noop);
}

#[tokio::test]
async fn a_running_vm_reports_the_pending_reboot_or_reboots_when_allowed() {
    let lab = Lab::start(
        Scenario::new()
            .guest(installed_vm(150, "cache", "running", json!({"memory": "1024"})))
            .guest(installed_vm(151, "proxy", "running", json!({"memory": "1024"}))),
    );
    let mut proxy = host("proxy");
    proxy.deploy.allow_reboot = true;
    let desired = vec![host("cache"), proxy];
    let outcome = lab.plan_and_apply(&desired).await;
    assert_eq!(outcome_of(&outcome, "cache"), &HostOutcome::PendingReboot { keys: vec!["memory".into()] });
    assert!(is_done(outcome_of(&outcome, "proxy")), "{}", outcome.report.render_text());
    assert_eq!(step(&outcome, "proxy", "reboot").status, StepStatus::Ok);
    assert_eq!(config_text(&lab.pve.vm(151), "memory"), "2048");
    assert_eq!(lab.pve.vm(150)["pending"]["memory"], json!("2048"));
}

#[tokio::test]
async fn pool_membership_is_moved_and_left() {
    let mut moving = installed_vm(170, "web", "stopped", json!({}));
    moving["pool"] = json!("old");
    let mut leaving = installed_vm(171, "db", "stopped", json!({}));
    leaving["pool"] = json!("old");
    let mut prod = installed_vm(172, "other", "stopped", json!({}));
    prod["pool"] = json!("prod");
    let lab = Lab::start(Scenario::new().guest(moving).guest(leaving).guest(prod));
    let mut web = host("web");
    web.spec.pool = Some("prod".into());
    let desired = vec![web, host("db"), host("other")];
    let plan = lab.plan(&desired).await;
    assert_eq!(kinds(&plan, "web"), [ActionKind::UpdateVm]);
    assert_eq!(kinds(&plan, "db"), [ActionKind::UpdateVm]);
    let outcome = lab.run(&desired, &reviewed_body(&plan), false).await.expect("apply");
    assert_eq!(step(&outcome, "web", "pool").detail.as_deref(), Some("into pool prod"));
    assert_eq!(step(&outcome, "db", "pool").detail.as_deref(), Some("out of pool old"));
    // Membership is what Proxmox now reports: the next plan has nothing left to do.
    let again = lab.plan(&desired).await;
    for host in ["web", "db"] {
        assert_eq!(kinds(&again, host), [ActionKind::Noop], "{host}");
    }
}

#[tokio::test]
async fn a_disk_grows_with_resize() {
    let lab = Lab::start(Scenario::new().guest(installed_vm(
        160,
        "files",
        "running",
        json!({"scsi0": "local-lvm:vm-160-disk-0,discard=on,size=10G"}),
    )));
    let desired = vec![host("files")];
    let plan = lab.plan(&desired).await;
    assert_eq!(kinds(&plan, "files"), [ActionKind::ResizeDisk]);
    lab.requests(true);
    let outcome = lab.run(&desired, &reviewed_body(&plan), false).await.expect("apply");
    assert!(is_done(outcome_of(&outcome, "files")), "{}", outcome.report.render_text());
    assert_eq!(step(&outcome, "files", "resize").detail.as_deref(), Some("scsi0 10G→20G"));
    let resizes: Vec<Request> = lab.requests(false).into_iter().filter(|r| r.method == "PUT").collect();
    assert_eq!(
        resizes,
        [Request {
            method: "PUT".into(),
            path: "/api2/json/nodes/pve1/qemu/160/resize".into(),
            body: "disk=scsi0&size=20G".into()
        }]
    );
}

#[tokio::test]
async fn orphans_are_destroyed_only_when_unprotected() {
    let orphan = |vmid: u32, name: &str, protection: u8| {
        let mut vm = installed_vm(vmid, name, "running", json!({"protection": protection}));
        vm["shutdown_secs"] = json!(0);
        vm
    };
    let mut lab = Lab::start(Scenario::new().guest(orphan(170, "old", 0)).guest(orphan(171, "keep", 1)));
    lab.settings.policies = Policies { prune_orphans: true, ..Policies::default() };
    let desired: Vec<DesiredHost> = Vec::new();
    lab.requests(true);
    let outcome = lab.plan_and_apply(&desired).await;
    assert!(is_done(outcome_of(&outcome, "old")), "{}", outcome.report.render_text());
    assert!(
        matches!(outcome_of(&outcome, "keep"), HostOutcome::Skipped { reason } if reason.contains("protected"))
    );
    let ids: Vec<Value> = lab.guests().iter().map(|vm| vm["vmid"].clone()).collect();
    assert_eq!(ids, [json!(171)]);
    let requests = lab.requests(false);
    let order: Vec<&str> = requests
        .iter()
        .filter(|r| r.method != "GET" && r.path.contains("/qemu/170"))
        .map(|r| if r.method == "DELETE" { "delete" } else { r.path.rsplit('/').next().unwrap_or_default() })
        .collect();
    assert_eq!(order, ["shutdown", "delete"]);
    // fakepve records paths without their query, so `purge=1&destroy-unreferenced-disks=1` is
    // not visible here; the destroy itself is (the VM is gone, after a clean shutdown).
}

#[tokio::test]
async fn the_executor_rechecks_protection_before_destroying() {
    let mut lab = Lab::start(Scenario::new().guest(installed_vm(172, "old", "stopped", json!({}))));
    lab.settings.policies = Policies { prune_orphans: true, ..Policies::default() };
    let plan = lab.plan(&[]).await;
    assert_eq!(kinds(&plan, "old"), [ActionKind::DestroyVm]);
    let live = lab.live(&[]).await;
    // Protected after the plan was computed (and reviewed).
    lab.client.put("/nodes/pve1/qemu/172/config", &[("protection", "1")]).await.expect("protect");
    let report = nixprox::apply::apply(nixprox::apply::ApplyRequest {
        plan: &plan,
        desired: &[],
        live: &live,
        client: &lab.client,
        options: lab.options(),
        reviewed_plan_id: &plan.plan_id,
        git_rev: None,
        deployer: None,
        image_build: None,
        progress: &lab.progress,
        cancel: &nixprox::apply::Cancel::new(),
    })
    .await
    .expect("apply");
    assert_eq!(
        report.hosts[0].outcome,
        HostOutcome::Failed {
            step: "destroy".into(),
            error: "refusing to destroy VM 172 (`old`) on node `pve1`: it is protected (turn off its protection in Proxmox first)".into()
        }
    );
    assert_eq!(lab.guests().len(), 1);
}

#[tokio::test]
async fn a_stale_plan_is_refused_then_accepted_with_allow_new_plan() {
    let lab = Lab::start(Scenario::new().guest(installed_vm(180, "web", "stopped", json!({"cores": 1}))));
    let reviewed_plan = lab.plan(&[host("web")]).await;
    let mut web = host("web");
    web.spec.cores = 8;
    let desired = vec![web];
    let err = lab.run(&desired, &reviewed_body(&reviewed_plan), false).await.expect_err("stale");
    let text = err.to_string();
    assert!(text.contains("  host `web`: reviewed update_vm(cores 1→2); now update_vm(cores 1→8)"), "{text}");
    assert_eq!(config_text(&lab.pve.vm(180), "cores"), "1", "nothing was applied");
    let err =
        lab.run(&desired, &Reviewed::Id(reviewed_plan.plan_id.clone()), false).await.expect_err("stale");
    assert!(err.to_string().contains("pass --reviewed-plan FILE"), "{err}");
    let outcome = lab.run(&desired, &reviewed_body(&reviewed_plan), true).await.expect("allowed");
    assert_eq!(outcome.report.reviewed_plan_id.as_deref(), Some(reviewed_plan.plan_id.as_str()));
    assert_eq!(config_text(&lab.pve.vm(180), "cores"), "8");
}

#[tokio::test]
async fn a_failed_start_task_is_reported_with_its_log_and_a_rerun_converges() {
    let lab = Lab::start(Scenario::new());
    let mut web = host("web");
    web.vmid = Some(190);
    web.address = Some("127.0.0.33".into());
    let desired = vec![web];
    lab.pve.command(json!({"cmd": "fail", "method": "POST", "path": "/nodes/pve1/qemu/190/status/start",
                           "error": "start_failed", "times": 1}));
    let plan = lab.plan(&desired).await;
    let first = lab.run(&desired, &reviewed_body(&plan), false).await.expect("apply runs");
    assert!(first.report.has_failures());
    let HostOutcome::Failed { step, error } = outcome_of(&first, "web") else { panic!("{first:?}") };
    assert_eq!(step, "start", "{error}");
    assert!(
        error.starts_with("task qmstart of `190` on node `pve1` failed: start failed: unexpected error"),
        "{error}"
    );
    assert!(error.contains("last lines of its log:\n  "), "{error}");
    // The reviewed plan is resumed: its VM says `applying` = the reviewed id.
    let second = lab.run(&desired, &reviewed_body(&plan), false).await.expect("resumed");
    assert!(is_done(outcome_of(&second, "web")), "{}", second.report.render_text());
    assert_eq!(step_status(&second, "web", "configure"), StepStatus::AlreadyDone);
    assert_eq!(lab.pve.vm(190)["status"], json!("running"));
    assert_eq!(lab.guests().len(), 1);
}

fn step_status(outcome: &RunOutcome, host: &str, name: &str) -> StepStatus {
    step(outcome, host, name).status.clone()
}

#[tokio::test]
async fn locks_backups_and_5xx_flaps_are_waited_out() {
    let lab = Lab::start(
        Scenario::new()
            .set("time_scale", json!(0.05))
            .guest(installed_vm(200, "backedup", "stopped", json!({"cores": 1})))
            .guest(installed_vm(201, "locked", "stopped", json!({"cores": 1}))),
    );
    let mut flaky = host("flaky");
    flaky.address = Some("127.0.0.34".into());
    let desired = vec![host("backedup"), host("locked"), flaky];
    // A backup holds VM 200 for 20 PVE seconds (1 s); VM 201's config lock times out twice;
    // the clone of the new host gets two 503s first.
    lab.pve.command(json!({"cmd": "backup", "vmid": 200, "secs": 20}));
    lab.pve.command(json!({"cmd": "fail", "method": "POST", "path": "/nodes/pve1/qemu/201/config",
                           "error": "config_lock_timeout", "times": 2}));
    lab.pve.fail("POST", "/qemu/9000/clone", 503, "Service Unavailable", Some(2));
    let outcome = lab.plan_and_apply(&desired).await;
    for name in ["backedup", "locked", "flaky"] {
        assert!(is_done(outcome_of(&outcome, name)), "{}", outcome.report.render_text());
    }
    assert_eq!(config_text(&lab.pve.vm(200), "cores"), "2");
    assert_eq!(config_text(&lab.pve.vm(201), "cores"), "2");
    assert_eq!(lab.guests().len(), 3);
}

#[tokio::test]
async fn the_nextid_race_takes_the_next_free_id() {
    let lab = Lab::start(Scenario::new());
    let mut desired: Vec<DesiredHost> = ["a", "b", "c"].iter().map(|n| host(n)).collect();
    for (i, h) in desired.iter_mut().enumerate() {
        h.address = Some(format!("127.0.0.{}", 50 + i));
    }
    // Another tool's create takes the id nextid handed out, once.
    lab.pve.command(json!({"cmd": "fail", "method": "POST", "path": "/qemu/9000/clone",
                           "error": "unable_create_config_file_already", "times": 1}));
    let outcome = lab.plan_and_apply(&desired).await;
    for name in ["a", "b", "c"] {
        assert!(is_done(outcome_of(&outcome, name)), "{}", outcome.report.render_text());
    }
    let ids: BTreeSet<u32> = outcome.report.hosts.iter().filter_map(|h| h.vmid).collect();
    assert_eq!(ids.len(), 3, "three distinct VMIDs: {ids:?}");
    assert_eq!(lab.guests().len(), 3);
}

/// The clone's answer is lost while its task is still copying the disk: nixprox finds the VM
/// locked by the clone, waits for the lock to go, sees its own notes and carries on. Nothing
/// is sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_clone_answer_waits_for_the_running_clone_and_resumes_it() {
    let lab = Lab::start(
        Scenario::new()
            .set("time_scale", json!(1))
            .set(
                "storages",
                json!({"ceph-pool": {"type": "rbd", "pool": "rbd", "content": "images", "shared": 1}}),
            )
            .set("ceph_slow", json!(1.5)),
    );
    let mut web = host("web");
    web.address = Some("127.0.0.37".into());
    web.spec.disks.get_mut("scsi0").expect("scsi0").storage = "ceph-pool".into();
    let desired = vec![web];
    lab.pve.command(json!({"cmd": "lose_answer", "method": "POST", "path": "/qemu/9000/clone$", "times": 1}));
    let plan = lab.plan(&desired).await;
    lab.requests(true);
    let outcome = lab.run(&desired, &reviewed_body(&plan), false).await.expect("apply runs");
    assert!(is_done(outcome_of(&outcome, "web")), "{}", outcome.report.render_text());
    let detail = step(&outcome, "web", "clone").detail.clone().unwrap_or_default();
    assert!(detail.contains("answer was lost; the VM is there"), "{detail}");
    let requests = lab.requests(false);
    assert_eq!(requests.iter().filter(|r| r.is("POST", "/qemu/9000/clone")).count(), 1);
    let vmid = outcome.report.hosts[0].vmid.expect("vmid");
    // Before its first config write, configure reads the config once; the rest are looks.
    let first_write = requests.iter().position(|r| r.is("POST", "/config")).expect("configure wrote");
    let reads =
        requests[..first_write].iter().filter(|r| r.is("GET", &format!("/qemu/{vmid}/config"))).count();
    assert!(reads > 2, "the locked VM was looked at until the clone ended ({reads} reads)");
    assert_eq!(lab.guests().len(), 1);
}

#[tokio::test]
async fn a_token_without_the_privilege_names_it_and_the_path() {
    let privs = [
        "VM.Audit",
        "VM.Allocate",
        "VM.Config.Disk",
        "VM.Config.CPU",
        "VM.Config.Memory",
        "VM.Config.Network",
        "VM.Config.Options",
        "VM.Config.Cloudinit",
        "VM.Config.HWType",
        "VM.PowerMgmt",
        "Datastore.AllocateSpace",
        "Datastore.Audit",
        "Sys.Audit",
    ];
    let lab = Lab::start(Scenario::new().grant("nixprox@pve", "/", &privs));
    let mut web = host("web");
    web.address = Some("127.0.0.35".into());
    let desired = vec![web];
    let plan = lab.plan(&desired).await;
    // The preflight (`/access/permissions`) stops the run before the clone is sent.
    let err = lab.run(&desired, &reviewed_body(&plan), false).await.expect_err("VM.Clone is missing");
    let error = err.to_string();
    assert!(matches!(err, ApplyError::Privileges(_)), "{error}");
    assert!(error.contains("\n  VM.Clone on /vms/9000 (`web`: clone the template)"), "{error}");
    assert!(
        error.contains("pveum acl modify /vms --users 'nixprox@pve' --tokens 'nixprox@pve!test'"),
        "{error}"
    );
    assert!(!error.contains(lab.pve.secret()));
    assert!(lab.guests().is_empty(), "nothing was created");
    assert!(lab.requests(false).iter().all(|request| request.method == "GET"), "nothing was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_create_is_resumed_and_ends_exactly_as_planned() {
    let lab = Lab::start(Scenario::new().set("time_scale", json!(1)).set("latency", json!(0.15)));
    let mut web = host("web");
    web.address = Some("127.0.0.36".into());
    let desired = vec![web];
    let plan = lab.plan(&desired).await;
    let reviewed = reviewed_body(&plan);
    // Cancel apply the moment the clone's VM exists (its task and the rest still to come).
    tokio::select! {
        result = lab.run(&desired, &reviewed, false) => panic!("apply finished before it was interrupted: {result:?}"),
        () = lab.wait_until("the clone exists", |vms| vms.iter().any(|vm| vm["name"] == json!("web"))) => {}
    }
    let half = lab.guests();
    assert_eq!(half.len(), 1);
    assert!(!config_text(&half[0], "tags").contains("nixprox"), "interrupted before the tag: {half:?}");
    lab.wait_until("the clone's lock is released", |vms| {
        vms.iter().all(|vm| vm["vmid"] == json!(9000) || vm["status"] == json!("stopped"))
    })
    .await;

    let replanned = lab.plan(&desired).await;
    assert!(!kinds(&replanned, "web").contains(&ActionKind::CreateVm), "{:?}", kinds(&replanned, "web"));
    let outcome = lab.run(&desired, &reviewed, false).await.expect("the interrupted run is resumed");
    assert!(is_done(outcome_of(&outcome, "web")), "{}", outcome.report.render_text());
    assert!(!outcome.report.hosts[0].steps.iter().any(|s| s.step == "clone"), "no second clone");
    let guests = lab.guests();
    assert_eq!(guests.len(), 1, "no duplicate VM: {guests:?}");
    let vm = lab.pve.vm(guests[0]["vmid"].as_u64().expect("vmid") as u32);
    assert_eq!(config_text(&vm, "tags"), "lab;nixprox");
    assert_eq!(config_text(&vm, "ciuser"), "root");
    assert_eq!(config_text(&vm, "memory"), "2048");
    assert_eq!(vm["status"], json!("running"));
    assert_eq!(kinds(&lab.plan(&desired).await, "web"), [ActionKind::Install], "only NixOS is left");
}

/// Ten hosts at once (the concurrency bounds at 10) each get their own VM, running, under
/// their declared id. How long that takes against one host is the apply benchmark's
/// business (`cargo bench --bench apply`, docs/performance.md), not a test's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_hosts_at_once_each_get_their_own_vm() {
    let mut lab = Lab::start(Scenario::new().set("time_scale", json!(1)).set("latency", json!(0.05)));
    lab.settings.concurrency.hosts = 10;
    lab.settings.concurrency.per_node = 10;
    let desired: Vec<DesiredHost> = (0..10)
        .map(|i| {
            let mut h = host(&format!("node{i:02}"));
            h.vmid = Some(300 + i);
            h.address = Some(format!("127.0.1.{}", 10 + i));
            h
        })
        .collect();
    let outcome = lab.plan_and_apply(&desired).await;
    assert!(!outcome.report.has_failures(), "{}", outcome.report.render_text());
    for (i, host) in desired.iter().enumerate() {
        let report = outcome.report.hosts.iter().find(|h| h.host == host.host).expect("reported");
        assert_eq!(report.vmid, Some(300 + i as u32), "{}", host.host);
        let vm = lab.pve.vm(300 + i as u32);
        assert_eq!((vm["name"].clone(), vm["status"].clone()), (json!(host.host), json!("running")));
        assert_eq!(config_text(&vm, "tags"), "lab;nixprox");
    }
    assert_eq!(lab.guests().len(), 10);
}

/// Done as far as Proxmox goes: ok, or skipped only because no deployer is configured (these
/// tests exercise the Proxmox side; installs are tested with a real sshd elsewhere).
fn is_done(outcome: &HostOutcome) -> bool {
    match outcome {
        HostOutcome::Ok => true,
        HostOutcome::Skipped { reason } => reason == "no deployer configured",
        _ => false,
    }
}
