//! Is the plan apply recomputed the one that was reviewed? Pure.
//!
//! With only the reviewed plan's id, the ids must be equal. With the reviewed plan's body
//! (`nixprox plan --format json` output, `--reviewed-plan FILE`) or the sticky comment's
//! [`record`] (a digest of each changed host's actions), hosts are compared one by one:
//!
//! - a host whose actions on the VM the reviewer saw (node and VMID) are what was reviewed
//!   is accepted, so one shard of a fan-out
//!   (`apply --hosts …`) is accepted against the reviewed plan of the whole pull request;
//! - a host with nothing to do is accepted (a previous run finished it, or it is gone because
//!   the reviewed plan destroyed it), and so is one left with blocked actions only (they never
//!   run: an adopted VM whose gated reinstall stays blocked);
//! - a host whose actions changed is accepted only as apply's own unfinished work: its VM
//!   carries `applying == <reviewed id>` in the metadata block (a resumed run), it gains no
//!   destructive action the review did not show, and a destructive action stays on the VMID
//!   reviewed (a VM recreated under the reviewed name is another VM);
//! - anything else is refused, naming the host and what it would do now.
//!
//! `--allow-new-plan` accepts anything (blocked actions still never run).

pub mod record;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::plan::{Action, ActionKind, HostPlan, Plan};
use crate::proxmox::LiveVm;

/// What the reviewer saw.
#[derive(Debug, Clone, PartialEq)]
pub enum Reviewed {
    /// Only the id (`--plan-id`, or a sticky comment without a record).
    Id(String),
    /// The whole JSON rendering (`--reviewed-plan FILE`).
    Plan(ReviewedPlan),
    /// The sticky comment's record: per-host digests.
    Record(record::Record),
}

impl Reviewed {
    pub fn plan_id(&self) -> &str {
        match self {
            Reviewed::Id(id) => id,
            Reviewed::Plan(plan) => &plan.plan_id,
            Reviewed::Record(record) => &record.plan_id,
        }
    }

    /// What was reviewed of one host; `None` when it had no entry (not in the plan, or in the
    /// record: nothing to do).
    fn host(&self, host: &str, orphan: bool) -> Option<HostReview> {
        match self {
            Reviewed::Id(_) => None,
            Reviewed::Plan(body) => {
                body.hosts.iter().find(|h| h.host == host && h.orphan == orphan).map(|h| {
                    let actions: Vec<Value> = h.actions.iter().map(strip).collect();
                    let vm = h.vm.as_ref().map_or_else(String::new, |v| vm_label(&v.node, v.vmid));
                    HostReview {
                        digest: record::digest(&vm, &actions),
                        vm,
                        destructive: runnable_destructive(&actions),
                        actions: Some(actions),
                    }
                })
            }
            Reviewed::Record(record) => record.entry(host, orphan).map(|entry| HostReview {
                digest: entry.digest,
                vm: entry.vm,
                destructive: entry.destructive,
                actions: None,
            }),
        }
    }

    /// How a host without an entry was reviewed, in words.
    fn absent(&self) -> &'static str {
        match self {
            Reviewed::Record(_) => "nothing",
            _ => "not in the plan",
        }
    }
}

/// One host as reviewed: the digest of its normalized actions, the destructive kinds it was
/// allowed to run, and (from a plan file) the actions themselves.
#[derive(Debug, Clone, PartialEq)]
struct HostReview {
    digest: String,
    /// The VM the reviewer saw (`pve1/101`, `pve1/new`); empty when the plan file has none.
    vm: String,
    destructive: Vec<String>,
    actions: Option<Vec<Value>>,
}

/// The parts of the JSON plan (schema version 1) the comparison needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ReviewedPlan {
    pub version: u32,
    pub plan_id: String,
    pub hosts: Vec<ReviewedHost>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ReviewedHost {
    pub host: String,
    #[serde(default)]
    pub orphan: bool,
    /// The VM the host acted on.
    #[serde(default)]
    pub vm: Option<ReviewedVm>,
    pub actions: Vec<Value>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ReviewedVm {
    pub node: String,
    pub vmid: Option<u32>,
}

/// `pve1/101`, or `pve1/new` for a VM Proxmox has not allocated yet: how the record and the
/// refusals name a VM.
pub fn vm_label(node: &str, vmid: Option<u32>) -> String {
    match vmid {
        Some(vmid) => format!("{node}/{vmid}"),
        None => format!("{node}/new"),
    }
}

/// Why a reviewed plan file cannot be compared with.
#[derive(Debug, thiserror::Error)]
pub enum ReviewedPlanError {
    /// Not JSON, or not the shape `nixprox plan --format json` writes.
    #[error("not a nixprox plan: {0}")]
    NotAPlan(serde_json::Error),
    /// Written by a nixprox with another plan schema.
    #[error(
        "plan schema version {found} is not the version {expected} this nixprox writes (re-run `nixprox plan` with this release)"
    )]
    Version { found: u32, expected: u32 },
}

impl ReviewedPlan {
    /// Parses `nixprox plan --format json` output.
    pub fn parse(text: &str) -> Result<ReviewedPlan, ReviewedPlanError> {
        let plan: ReviewedPlan = serde_json::from_str(text).map_err(ReviewedPlanError::NotAPlan)?;
        let expected = crate::plan::model::SCHEMA_VERSION;
        if plan.version != expected {
            return Err(ReviewedPlanError::Version { found: plan.version, expected });
        }
        Ok(plan)
    }
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// The id apply records in `applying` while it works.
    pub reviewed_id: String,
    /// Hosts accepted as resumed work, and hosts accepted by `--allow-new-plan`.
    pub notes: Vec<String>,
}

/// The plan changed since review, and not only by apply's own unfinished work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the plan changed since it was reviewed (reviewed `{reviewed}`, now `{current}`):\n{}\n(review the new plan in a pull request, or pass --allow-new-plan to apply it anyway)",
    lines.join("\n")
)]
pub struct StalePlan {
    pub reviewed: String,
    pub current: String,
    /// Per-host delta lines, or the recomputed plan's lines when only the id is known.
    pub lines: Vec<String>,
}

/// Checks `plan` against what was reviewed. `live` is the cluster the plan was computed from.
pub fn check(
    reviewed: &Reviewed,
    plan: &Plan,
    live: &[LiveVm],
    allow_new_plan: bool,
) -> Result<Approval, StalePlan> {
    let reviewed_id = reviewed.plan_id().to_string();
    if reviewed_id == plan.plan_id {
        return Ok(Approval { reviewed_id, notes: Vec::new() });
    }
    let stale = |lines: Vec<String>| StalePlan {
        reviewed: reviewed_id.clone(),
        current: plan.plan_id.clone(),
        lines,
    };
    let (problems, resumed) = match reviewed {
        Reviewed::Id(_) => {
            let mut lines = vec!["the reviewed plan's body is not available (pass --reviewed-plan FILE to compare host by host); the plan now is:".to_string()];
            lines.extend(plan.hosts.iter().filter(|h| h.has_changes()).map(|h| {
                format!(
                    "  host `{}`: {}",
                    h.host,
                    describe_actions(&h.actions.iter().map(normalize).collect::<Vec<_>>())
                )
            }));
            (lines, Vec::new())
        }
        Reviewed::Plan(_) | Reviewed::Record(_) => compare(reviewed, plan, live),
    };
    if problems.is_empty() {
        let notes = resumed
            .iter()
            .map(|host| format!("host `{host}`: resuming unfinished work of plan `{reviewed_id}`"))
            .collect();
        return Ok(Approval { reviewed_id, notes });
    }
    if allow_new_plan {
        let mut notes = vec![format!(
            "plan `{}` differs from the reviewed `{reviewed_id}`; applied because of --allow-new-plan",
            plan.plan_id
        )];
        notes.extend(problems);
        return Ok(Approval { reviewed_id, notes });
    }
    Err(stale(problems))
}

/// One action reduced to what it means: kind, blocked or not, and the changes.
fn normalize(action: &Action) -> Value {
    strip(&serde_json::to_value(action).unwrap_or(Value::Null))
}

fn strip(action: &Value) -> Value {
    json!({
        "kind": action.get("kind").cloned().unwrap_or(Value::Null),
        "blocked": action.get("blocked").is_some_and(|b| !b.is_null()),
        "changes": action.get("changes").cloned().unwrap_or(json!([])),
    })
}

fn kind_of(action: &Value) -> &str {
    action.get("kind").and_then(Value::as_str).unwrap_or("?")
}

/// The runnable destructive actions, each as `<kind>=<digest>` (8 hex digits over the one
/// normalized action): a resumed run may finish a destructive action only exactly as it was
/// reviewed (a `detach_disk` of the same slots, a `destroy_vm` of the same disks).
fn runnable_destructive(actions: &[Value]) -> Vec<String> {
    actions
        .iter()
        .filter(|a| a.get("blocked") == Some(&json!(false)))
        .filter(|a| ActionKind::ALL.iter().any(|d| d.is_destructive() && d.as_str() == kind_of(a)))
        .map(|a| {
            let digest = record::digest("", std::slice::from_ref(a));
            format!("{}={}", kind_of(a), &digest[..8])
        })
        .collect()
}

/// `destroy_vm=1a2b3c4d` → `destroy_vm`.
fn kind_name(tagged: &str) -> &str {
    tagged.split_once('=').map_or(tagged, |(kind, _)| kind)
}

/// Whether `host`'s actions now, on its VM now, are exactly what was reviewed of it.
pub fn same_as_reviewed(reviewed: &Reviewed, host: &HostPlan) -> bool {
    let now: Vec<Value> = host.actions.iter().map(normalize).collect();
    let vm_now = vm_label(&host.vm.node, host.vm.vmid);
    reviewed.host(&host.host, host.orphan).is_some_and(|b| b.digest == record::digest(&vm_now, &now))
}

/// Compares host by host: the problem lines, and the hosts accepted as resumed work.
fn compare(reviewed: &Reviewed, plan: &Plan, live: &[LiveVm]) -> (Vec<String>, Vec<String>) {
    let mut lines = Vec::new();
    let mut resumed = Vec::new();
    for host in &plan.hosts {
        // Doing nothing is always safe: a host a previous run finished shows no changes now,
        // and blocked actions never run.
        if !host.actions.iter().any(|a| a.kind != ActionKind::Noop && a.blocked.is_none()) {
            continue;
        }
        let now: Vec<Value> = host.actions.iter().map(normalize).collect();
        let vm_now = vm_label(&host.vm.node, host.vm.vmid);
        let before = reviewed.host(&host.host, host.orphan);
        if before.as_ref().is_some_and(|b| b.digest == record::digest(&vm_now, &now)) {
            continue;
        }
        let allowed = before.as_ref().map(|b| b.destructive.as_slice()).unwrap_or_default();
        let vm_before = before.as_ref().map(|b| b.vm.as_str()).unwrap_or_default();
        let problem = other_vm_problem(vm_before, host, &now)
            .or_else(|| resume_problem(host, allowed, &now, reviewed.plan_id(), live));
        match problem {
            None => resumed.push(host.host.clone()),
            Some(problem) => {
                let reviewed_text = match &before {
                    Some(HostReview { actions: Some(actions), .. }) => describe_actions(actions),
                    Some(HostReview { digest, .. }) => {
                        format!("other actions (digest `{digest}`; pass --reviewed-plan FILE to see them)")
                    }
                    None => reviewed.absent().to_string(),
                };
                let (on_before, on_now) = if !vm_before.is_empty() && vm_before != vm_now {
                    (format!(" on VM `{vm_before}`"), format!(" on VM `{vm_now}`"))
                } else {
                    (String::new(), String::new())
                };
                lines.push(format!(
                    "  host `{}`: reviewed {reviewed_text}{on_before}; now {}{on_now}{problem}",
                    host.host,
                    describe_actions(&now)
                ));
            }
        }
    }
    (lines, resumed)
}

/// A destructive action (destroy, replace, reinstall, detach) on another VM than the one the
/// reviewer saw: never apply's own unfinished work, whatever the VM's notes say (a VM restored
/// from a backup carries the notes of the one it was). A VM reviewed as `new` (a create) has no
/// VMID to keep; a VM that moved to another node keeps its VMID.
fn other_vm_problem(vm_before: &str, host: &HostPlan, now: &[Value]) -> Option<String> {
    let reviewed_vmid = vm_before.rsplit_once('/').map(|(_, id)| id)?;
    if reviewed_vmid == "new" || host.vm.vmid.map(|v| v.to_string()).as_deref() == Some(reviewed_vmid) {
        return None;
    }
    let destructive = runnable_destructive(now);
    (!destructive.is_empty()).then(|| {
        format!(
            " ({} of VM {} was never reviewed: the reviewer saw VM {reviewed_vmid})",
            destructive.iter().map(|k| kind_name(k)).collect::<Vec<_>>().join(", "),
            host.vm.vmid.map_or_else(|| "new".to_string(), |v| v.to_string())
        )
    })
}

/// `None` when the host's changed actions are apply's own unfinished work; else why not.
fn resume_problem(
    host: &HostPlan,
    allowed: &[String],
    now: &[Value],
    reviewed_id: &str,
    live: &[LiveVm],
) -> Option<String> {
    let vm = host.vm.vmid.and_then(|vmid| live.iter().find(|vm| vm.vmid == vmid));
    let applying = vm
        .and_then(|vm| vm.config.as_ref())
        .and_then(|c| c.metadata.as_ref())
        .and_then(|m| m.applying.as_deref());
    if applying != Some(reviewed_id) {
        return Some(String::new());
    }
    let new_destructive: Vec<String> =
        runnable_destructive(now).into_iter().filter(|k| !allowed.contains(k)).collect();
    if new_destructive.is_empty() {
        None
    } else {
        Some(format!(
            " (an unfinished apply of the reviewed plan left this VM, but {} as planned now was not reviewed)",
            new_destructive.iter().map(|k| kind_name(k)).collect::<Vec<_>>().join(", ")
        ))
    }
}

/// `update_vm(cores 2→4, memory 2048→4096); install(system …)`.
pub fn describe_actions(actions: &[Value]) -> String {
    if actions.is_empty() {
        return "nothing".into();
    }
    actions
        .iter()
        .map(|action| {
            let changes = action.get("changes").and_then(Value::as_array).cloned().unwrap_or_default();
            let mut parts: Vec<String> = changes.iter().take(4).map(describe_change).collect();
            if changes.len() > 4 {
                parts.push(format!("… {} more", changes.len() - 4));
            }
            let blocked = if action.get("blocked") == Some(&json!(true)) { " [blocked]" } else { "" };
            format!("{}({}){blocked}", kind_of(action), parts.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn describe_change(change: &Value) -> String {
    let field = change.get("field").and_then(Value::as_str).unwrap_or("?");
    let show = |v: Option<&Value>| match v {
        None | Some(Value::Null) => "∅".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    format!("{field} {}→{}", show(change.get("before")), show(change.get("after")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Policies;
    use crate::plan::{PlanInput, plan, testkit};

    fn plan_of(desired: &[crate::flake::DesiredHost], live: &[LiveVm], policies: Policies) -> Plan {
        plan(PlanInput { desired, live, policies, only: None, probes: None })
    }

    fn body(plan: &Plan) -> Reviewed {
        Reviewed::Plan(ReviewedPlan::parse(&crate::render::json::render(plan)).expect("parses"))
    }

    #[test]
    fn a_file_that_is_no_plan_or_another_version_says_so() {
        let err = ReviewedPlan::parse("{}").expect_err("not a plan");
        assert!(matches!(err, ReviewedPlanError::NotAPlan(_)), "{err}");
        assert!(err.to_string().starts_with("not a nixprox plan: missing field"), "{err}");
        let newer = r#"{"version": 99, "plan_id": "x", "hosts": []}"#;
        let err = ReviewedPlan::parse(newer).expect_err("newer");
        assert_eq!(
            err.to_string(),
            "plan schema version 99 is not the version 1 this nixprox writes (re-run `nixprox plan` with this release)"
        );
    }

    #[test]
    fn equal_ids_are_accepted() {
        let desired = vec![testkit::host("web")];
        let reviewed = plan_of(&desired, &[], Policies::default());
        let again = plan_of(&desired, &[], Policies::default());
        let approval = check(&Reviewed::Id(reviewed.plan_id.clone()), &again, &[], false).expect("same plan");
        assert_eq!(approval.reviewed_id, reviewed.plan_id);
        assert!(approval.notes.is_empty());
    }

    #[test]
    fn a_changed_plan_is_refused_with_the_per_host_delta() {
        let desired = vec![testkit::host("web")];
        let mut live = vec![testkit::live("web", 101)];
        testkit::config(&mut live[0]).spec.cores = 1;
        let reviewed = plan_of(&desired, &live, Policies::default());
        let mut desired_now = desired.clone();
        desired_now[0].spec.cores = 8;
        let now = plan_of(&desired_now, &live, Policies::default());
        let err = check(&body(&reviewed), &now, &live, false).expect_err("stale");
        assert_eq!(
            err.lines,
            vec!["  host `web`: reviewed update_vm(cores 1→2); now update_vm(cores 1→8)".to_string()]
        );
        assert!(err.to_string().starts_with(&format!(
            "the plan changed since it was reviewed (reviewed `{}`, now `{}`):\n  host `web`",
            reviewed.plan_id, now.plan_id
        )));
        let err = check(&Reviewed::Id(reviewed.plan_id.clone()), &now, &live, false).expect_err("stale");
        assert!(err.lines[1].starts_with("  host `web`: update_vm(cores 1→8)"), "{:?}", err.lines);
        let approval = check(&body(&reviewed), &now, &live, true).expect("allowed");
        assert_eq!(approval.notes.len(), 2);
    }

    #[test]
    fn an_interrupted_create_is_resumed() {
        let desired = vec![testkit::host("web")];
        let reviewed = plan_of(&desired, &[], Policies::default());
        // The clone happened, with the notes; the tag was never written.
        let mut vm = testkit::live("web", 120);
        vm.tags.clear();
        let config = testkit::config(&mut vm);
        config.spec.memory_mib = 1024;
        config.metadata = Some(crate::metadata::Metadata {
            host: "web".into(),
            applying: Some(reviewed.plan_id.clone()),
            ..Default::default()
        });
        let live = vec![vm];
        let now = plan_of(&desired, &live, Policies::default());
        assert_ne!(now.plan_id, reviewed.plan_id);
        let approval = check(&body(&reviewed), &now, &live, false).expect("resume");
        assert_eq!(
            approval.notes,
            vec![format!("host `web`: resuming unfinished work of plan `{}`", reviewed.plan_id)]
        );
        // Another plan's leftovers are not this review's work.
        let mut other = live.clone();
        testkit::config(&mut other[0]).metadata.as_mut().expect("metadata").applying =
            Some("feedfeed".into());
        let now = plan_of(&desired, &other, Policies::default());
        assert!(check(&body(&reviewed), &now, &other, false).is_err());
    }

    #[test]
    fn a_host_left_with_blocked_actions_only_is_accepted() {
        let desired = vec![testkit::host("web")];
        let mut live = vec![testkit::live("web", 101)];
        let config = testkit::config(&mut live[0]);
        config.spec.cores = 1;
        let metadata = config.metadata.as_mut().expect("metadata");
        metadata.disk_layout = Some("sha256:old".into());
        metadata.system = Some("/nix/store/old".into());
        let reviewed = plan_of(&desired, &live, Policies::default());
        let kinds = |plan: &Plan| -> Vec<(ActionKind, bool)> {
            plan.hosts[0].actions.iter().map(|a| (a.kind, a.blocked.is_some())).collect()
        };
        assert_eq!(kinds(&reviewed), [(ActionKind::UpdateVm, false), (ActionKind::Reinstall, true)]);
        // A run applied the update; the reinstall stays blocked, and is not new.
        testkit::config(&mut live[0]).spec.cores = 2;
        let now = plan_of(&desired, &live, Policies::default());
        assert_eq!(kinds(&now), [(ActionKind::Reinstall, true)]);
        check(&body(&reviewed), &now, &live, false).expect("blocked actions never run");
    }

    #[test]
    fn an_interrupted_adoption_resumes_as_its_switch() {
        let desired = vec![testkit::host("web")];
        let mut vm = testkit::live("web", 150);
        vm.tags.clear();
        testkit::config(&mut vm).metadata = None;
        let reviewed = plan_of(&desired, &[vm.clone()], Policies::default());
        assert_eq!(
            reviewed.hosts[0].actions.iter().map(|a| a.kind).collect::<Vec<_>>(),
            [ActionKind::Adopt, ActionKind::Switch]
        );
        // The adopt step's one write: tagged, the running system, the key, `applying`.
        vm.tags.insert("nixprox".into());
        testkit::config(&mut vm).metadata = Some(crate::metadata::Metadata {
            host: "web".into(),
            system: Some("/nix/store/running-web".into()),
            host_key: Some("ssh-ed25519 AAAA".into()),
            disk_layout: Some(testkit::LAYOUT.into()),
            applying: Some(reviewed.plan_id.clone()),
            adopted: Some(crate::metadata::Adopted { vmid: 150, plan: reviewed.plan_id.clone() }),
            ..Default::default()
        });
        let live = vec![vm];
        let now = plan_of(&desired, &live, Policies::default());
        assert_eq!(now.hosts[0].actions.iter().map(|a| a.kind).collect::<Vec<_>>(), [ActionKind::Switch]);
        let approval = check(&body(&reviewed), &now, &live, false).expect("resumed");
        assert_eq!(approval.notes.len(), 1, "{:?}", approval.notes);
    }

    #[test]
    fn a_destroy_of_another_vm_than_reviewed_is_refused_even_with_our_notes() {
        let mut orphan = testkit::live("old", 205);
        orphan.name = "old".into();
        let policies = Policies { prune_orphans: true, ..Policies::default() };
        let reviewed = plan_of(&[], &[orphan.clone()], policies);
        // 205 is gone; a VM restored from its backup is 209, same name, same tag and notes.
        let mut swapped = orphan.clone();
        swapped.vmid = 209;
        testkit::config(&mut swapped).metadata.as_mut().expect("metadata").applying =
            Some(reviewed.plan_id.clone());
        let live = vec![swapped];
        let now = plan_of(&[], &live, policies);
        let record = Reviewed::Record(record::Record::from_plan(&reviewed));
        for reviewed_as in [body(&reviewed), record] {
            let err = check(&reviewed_as, &now, &live, false).expect_err("another VM");
            assert_eq!(err.lines.len(), 1, "{:?}", err.lines);
            assert!(err.lines[0].contains(" on VM `pve1/205`; now destroy_vm("), "{:?}", err.lines);
            assert!(
                err.lines[0].ends_with(
                    " on VM `pve1/209` (destroy_vm of VM 209 was never reviewed: the reviewer saw VM 205)"
                ),
                "{:?}",
                err.lines
            );
        }
    }

    #[test]
    fn a_resumed_detach_takes_only_the_reviewed_slots() {
        let desired = vec![testkit::host("web")];
        let policies = Policies { allow_detach_disks: true, ..Policies::default() };
        let disk =
            |size| crate::spec::DiskSpec { size_bytes: size, ..testkit::spec("web").disks["scsi0"].clone() };
        let mut live = vec![testkit::live("web", 101)];
        testkit::config(&mut live[0]).spec.disks.insert("scsi1".into(), disk(8 << 30));
        let reviewed = plan_of(&desired, &live, policies);
        assert_eq!(reviewed.hosts[0].actions[0].kind, ActionKind::DetachDisk);
        // An interrupted run left `applying`; a disk attached since shows in the new plan.
        let config = testkit::config(&mut live[0]);
        config.spec.disks.insert("scsi2".into(), disk(4 << 30));
        config.metadata.as_mut().expect("metadata").applying = Some(reviewed.plan_id.clone());
        let now = plan_of(&desired, &live, policies);
        for reviewed_as in [body(&reviewed), Reviewed::Record(record::Record::from_plan(&reviewed))] {
            let err = check(&reviewed_as, &now, &live, false).expect_err("scsi2 was never reviewed");
            assert!(
                err.lines[0].ends_with("but detach_disk as planned now was not reviewed)"),
                "{:?}",
                err.lines
            );
        }
    }

    #[test]
    fn a_destroyed_orphan_may_disappear_but_nothing_destructive_appears() {
        let mut orphan = testkit::live("old", 150);
        orphan.name = "old".into();
        let policies = Policies { prune_orphans: true, ..Policies::default() };
        let reviewed = plan_of(&[], &[orphan.clone()], policies);
        assert_eq!(reviewed.hosts[0].actions[0].kind, ActionKind::DestroyVm);
        let now = plan_of(&[], &[], policies);
        check(&body(&reviewed), &now, &[], false).expect("the orphan is gone: that was the plan");
        // The other way round: a destroy the review did not show is refused.
        let reviewed = plan_of(&[], &[], policies);
        let now = plan_of(&[], &[orphan.clone()], policies);
        let err = check(&body(&reviewed), &now, &[orphan], false).expect_err("new destroy");
        assert!(
            err.lines[0].starts_with("  host `old`: reviewed not in the plan; now destroy_vm(vm old→∅"),
            "{:?}",
            err.lines
        );
    }
}
