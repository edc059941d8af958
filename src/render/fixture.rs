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

/// `db`'s memory and cores wait for a reboot (applied with `deploy.allowReboot` off), next to
/// `web`'s update and the in-sync `cache`: a plan with a host waiting for a reboot.
pub fn waiting_for_a_reboot() -> Plan {
    let mut web = host("web");
    web.spec.cores = 4;
    let mut db = host("db");
    db.spec.memory_mib = 4096;
    db.spec.cores = 4;
    let mut db_vm = live("db", 102);
    let mut running = config(&mut db_vm).spec.clone();
    running.memory_mib = db.spec.memory_mib / 2;
    running.cores = 2;
    config(&mut db_vm).spec.memory_mib = 4096;
    config(&mut db_vm).spec.cores = 4;
    config(&mut db_vm).running = Some(running);
    config(&mut db_vm).pending = ["cores".to_string(), "memory".to_string()].into();
    plan(PlanInput {
        desired: &[web, db, host("cache")],
        live: &[live("web", 101), db_vm, live("cache", 103)],
        policies: Policies::default(),
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

/// [`every_kind`] with NixOS changes: `web` (switch) compared with every probe kind, `new` a
/// host the base lacks, `db` a base that could not be evaluated.
pub fn with_nixos_changes() -> Plan {
    use crate::nixos_changes::{FailedProbe, NixosChanges, ProbeChange, ProbeKind::*, Side};
    use serde_json::json;
    let change = |probe, name: &str, before: Option<serde_json::Value>, after: Option<serde_json::Value>| {
        ProbeChange { probe, name: name.into(), before, after }
    };
    let mut plan = every_kind();
    let set = |plan: &mut Plan, host: &str, changes: NixosChanges| {
        plan.hosts.iter_mut().find(|h| h.host == host).expect("host in fixture").nixos_changes =
            Some(changes);
    };
    let changes = vec![
        change(
            Release,
            "nixpkgs",
            Some(json!("0123456789abcdef0123456789abcdef01234567")),
            Some(json!("89abcdef0123456789abcdef0123456789abcdef")),
        ),
        change(
            Kernel,
            "build",
            Some(json!("/nix/store/a-linux-6.6.30")),
            Some(json!("/nix/store/b-linux-6.6.31")),
        ),
        change(Kernel, "version", Some(json!("6.6.30")), Some(json!("6.6.31"))),
        change(KernelParams, "console=ttyS0", None, Some(json!(true))),
        change(Packages, "htop", None, Some(json!(["3.3.0"]))),
        change(Packages, "openssl", Some(json!(["3.0.13"])), Some(json!(["3.0.14"]))),
        change(Services, "gitea", Some(json!("/nix/store/a-unit-gitea.service")), None),
        change(Services, "grafana", None, Some(json!("/nix/store/b-unit-grafana.service"))),
        change(
            Services,
            "nginx",
            Some(json!("/nix/store/a-unit-nginx.service")),
            Some(json!("/nix/store/b-unit-nginx.service")),
        ),
        change(Firewall, "3000/tcp", None, Some(json!(true))),
        change(Users, "deploy", None, Some(json!(["wheel"]))),
        change(FileSystems, "/data", None, Some(json!("label data (xfs)"))),
        change(Substituters, "https://cache.example", None, Some(json!(true))),
        change(Extra, "grafana port", Some(json!(3000)), Some(json!(3001))),
    ];
    let failed = vec![FailedProbe { probe: Extra, name: Some("motd".into()), side: Side::Head }];
    set(&mut plan, "web", NixosChanges::Compared { reboot_needed: true, changes, failed });
    set(&mut plan, "new", NixosChanges::NewHost);
    set(
        &mut plan,
        "db",
        NixosChanges::Unavailable {
            reason: "the base commit `0123456789ab` is not in this shallow clone (fetch it: `git fetch --depth=1 origin 0123456789ab`, or check out with `fetch-depth: 0`)".into(),
        },
    );
    plan
}
