//! A plan with every action kind, shared by the rendering tests.

use crate::config::Policies;
use crate::plan::testkit::{config, host, live};
use crate::plan::{Plan, PlanInput, plan};

/// Hosts: `new` (create + install), `web` (update + resize + switch), `db` (blocked
/// reinstall), `cache` (in sync), and orphans `old` (destroy) and `vault` (protected).
pub fn every_kind() -> Plan {
    let mut web = host("web");
    web.spec.cores = 4;
    web.spec.disks.get_mut("scsi0").expect("scsi0").size_bytes = 40 << 30;
    let mut web_vm = live("web", 101);
    config(&mut web_vm).metadata.as_mut().expect("metadata").system = Some("/nix/store/old-web".into());
    let mut db_vm = live("db", 102);
    config(&mut db_vm).metadata.as_mut().expect("metadata").disk_layout = Some("sha256:old".into());
    let mut vault = live("vault", 121);
    config(&mut vault).spec.protection = true;
    let desired = [host("new"), web, host("db"), host("cache")];
    let live = [web_vm, db_vm, live("cache", 103), live("old", 120), vault];
    plan(PlanInput {
        desired: &desired,
        live: &live,
        policies: Policies { prune_orphans: true, ..Policies::default() },
        only: None,
        probes: None,
    })
}

/// `n` hosts to create: a large plan for the size budget.
pub fn many(n: usize) -> Plan {
    let desired: Vec<_> = (0..n).map(|i| host(&format!("host{i:03}"))).collect();
    plan(PlanInput { desired: &desired, live: &[], policies: Policies::default(), only: None, probes: None })
}

/// `web` changed by hand, `db` unreachable: a probed plan.
pub fn probed() -> Plan {
    use crate::plan::Probe;
    let probes = std::collections::BTreeMap::from([
        ("web".to_string(), Probe::Running { system: "/nix/store/hand-made-web".into() }),
        ("db".to_string(), Probe::Unreachable { reason: "connection refused".into() }),
    ]);
    plan(PlanInput {
        desired: &[host("web"), host("db")],
        live: &[live("web", 101), live("db", 102)],
        policies: Policies::default(),
        only: None,
        probes: Some(&probes),
    })
}
