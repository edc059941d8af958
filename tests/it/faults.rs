//! The fault suite: the real `nixprox apply` against fakepve with one fault injected at a time,
//! on a cluster where one apply does every kind of work at once (`fixtures/faults`: an update,
//! a grow on a second node, an adoption (skipped: it needs SSH), a clone, an ISO create, a destroy, a protected orphan,
//! a VM nixprox does not manage). Every case is the same five moves:
//!
//! 1. plan, and keep the plan as the reviewed one;
//! 2. inject the fault, apply the reviewed plan, check what nixprox did about it ([`Expect`]);
//! 3. clear the fault, and check the cluster through the API ([`assert_invariants`]): no host
//!    with two VMs, nothing destroyed that the reviewed plan did not name, the owners' notes
//!    kept byte for byte;
//! 4. apply the same reviewed plan again: it finishes;
//! 5. check the invariants again, now complete: exactly one VM per host, every value the
//!    reviewed plan declared in place (or pending), and a new plan with nothing left to
//!    provision.
//!
//! The table of faults, what nixprox does about each and the test that shows it is
//! docs/reliability.md; `every_fault_of_the_suite_is_in_the_reliability_table` keeps the two in
//! step. Below the suite: faults that need a cluster of their own (twenty new hosts at once, a
//! create that failed after its answer was lost).

use std::collections::{BTreeMap, BTreeSet};

use nixprox::metadata::Notes;
use serde_json::{Map, Value, json};

use crate::support::cli::{self, Run};
use crate::support::fakepve::{FakePve, Request, Scenario};
use crate::support::fleet::Fleet;
use crate::support::hosts::agent_with;
use crate::support::nix::{Fixture, repo};

/// One fault the suite injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// A task ends in an error: the start of `media` (`start failed`).
    TaskError,
    /// A backup holds `app` (`lock: backup`) while apply wants to write its config.
    BackupLock,
    /// `app`'s config lock is held by someone else, twice (`can't lock file … got timeout`).
    ConfigLockTimeout,
    /// 503s: the clone twice, the cluster listing once.
    Flapping5xx,
    /// A share of connections dropped before their request runs (fakepve's `flaky_network`).
    DroppedConnections,
    /// The clone runs, its answer is lost.
    LostCloneAnswer,
    /// The clone is accepted, but its task's status cannot be read.
    UnfollowedCloneTask,
    /// The ISO create runs, its answer is lost.
    LostCreateAnswer,
    /// Every task takes seconds (a clone copying its disk, a slow storage).
    SlowTasks,
    /// Another tool's creates take the VMID nixprox was given, twice.
    NextidRace,
    /// `fresh` has no static address and its guest agent never answers.
    AgentNotRunning,
    /// `fresh` has no static address and its guest agent is still starting: Proxmox answers
    /// 500 "QEMU guest agent is not running" twice before the agent reports the address.
    AgentStarting,
    /// The token lacks `VM.Clone` (403 on the clone; the preflight sees it first).
    Forbidden,
    /// The token's secret no longer matches (expired, deleted, rotated): 401 on everything.
    ExpiredToken,
    /// The cluster lost quorum (`cluster not ready - no quorum?` on every write).
    NoQuorum,
    /// The storage the new VMs go to is full.
    StorageFull,
    /// Someone else writes `app`'s config between nixprox's read and its write.
    DigestConflict,
    /// The node `store` lives on is offline (595 `No route to host`).
    NodeOffline,
}

/// What nixprox must do when the fault hits (the first apply).
#[derive(Debug, Default)]
struct Expect {
    /// The exit code.
    code: i32,
    /// `(host, status, step)` the report shows; a host not listed must not have failed.
    hosts: &'static [(&'static str, &'static str, Option<&'static str>)],
    /// Texts the run prints (stdout or stderr), in the user's words: the fault and the fix.
    says: &'static [&'static str],
    /// Whether the run may write to Proxmox at all (`false`: only `GET`s were sent).
    writes: bool,
    /// For a fault that is random: hosts may fail instead (exit code 3) when the fault outlasted
    /// every retry, with this text in their error.
    or_fails_with: Option<&'static str>,
}

impl Fault {
    /// The cluster the case starts from: the fixture's, with what the fault needs from the start.
    fn scenario(self, scenario: Scenario) -> Scenario {
        match self {
            // Locks and waits need PVE time to pass: 1 PVE second is 0.1 s here.
            Fault::BackupLock => scenario.set("time_scale", json!(0.1)),
            Fault::SlowTasks => scenario.set("time_scale", json!(1)),
            Fault::Forbidden => {
                // The apply role of docs/guide.md without `VM.Clone`, held by the token's user
                // (a token without grants of its own holds exactly its user's).
                let role: Vec<&str> = apply_role().into_iter().filter(|p| *p != "VM.Clone").collect();
                ["/vms", "/storage", "/sdn/zones/localnetwork"]
                    .into_iter()
                    .fold(scenario, |s, path| s.grant("nixprox@pve", path, &role))
            }
            _ => scenario,
        }
    }

    /// Changes to the fixture flake, before it is planned.
    fn case_json(self) -> Option<Value> {
        matches!(self, Fault::AgentNotRunning | Fault::AgentStarting).then(|| json!({"freshAddress": null}))
    }

    fn inject(self, lab: &Lab) {
        let fail = |method: &str, path: &str, error: &str, times: u32| {
            lab.pve.command(
                json!({"cmd": "fail", "method": method, "path": path, "error": error, "times": times}),
            );
        };
        match self {
            Fault::TaskError => fail("POST", "/nodes/pve1/qemu/120/status/start", "start_failed", 1),
            Fault::BackupLock => {
                lab.pve.command(json!({"cmd": "backup", "vmid": 101, "secs": 80}));
            }
            Fault::ConfigLockTimeout => fail("POST", "/nodes/pve1/qemu/101/config", "config_lock_timeout", 2),
            Fault::Flapping5xx => {
                lab.pve.fail("POST", "/qemu/9000/clone", 503, "Service Unavailable", Some(2));
                lab.pve.fail("GET", "/cluster/resources", 503, "Service Unavailable", Some(1));
            }
            Fault::DroppedConnections => {
                lab.pve.command(json!({"cmd": "flaky_network", "drop_rate": 0.1, "seed": 9}));
            }
            Fault::LostCloneAnswer => lose_answer(lab, "POST", "/qemu/9000/clone$", 1),
            // The client's first read of the clone's task and its 4 retries.
            Fault::UnfollowedCloneTask => lose_answer(lab, "GET", "/tasks/[^/]*:qmclone:[^/]*/status$", 5),
            Fault::LostCreateAnswer => lose_answer(lab, "POST", "/nodes/pve1/qemu$", 1),
            Fault::SlowTasks => {
                let secs = json!({"qmclone": 3, "qmcreate": 2, "qmconfig": 1, "qmstart": 1, "resize": 1, "qmdestroy": 1});
                lab.pve.command(json!({"cmd": "set", "task_secs": secs}));
            }
            Fault::NextidRace => fail("POST", "/qemu/9000/clone", "unable_create_config_file_already", 2),
            Fault::AgentNotRunning | Fault::Forbidden => {}
            Fault::AgentStarting => {
                lab.pve.command(
                    json!({"cmd": "boot_agent", "name": "fresh", "agent": agent_with("127.0.0.44")}),
                );
                lab.pve.command(json!({"cmd": "agent_starting", "name": "fresh", "calls": 2}));
            }
            Fault::ExpiredToken => {
                lab.pve.command(json!({"cmd": "add_token", "id": TOKEN_ID, "secret": "expired"}));
            }
            Fault::NoQuorum => {
                lab.pve.command(json!({"cmd": "quorum", "quorate": false}));
            }
            Fault::StorageFull => {
                lab.pve.command(
                    json!({"cmd": "set_storage", "storage": "local-lvm", "options": {"avail": 2u64 << 30}}),
                );
            }
            Fault::DigestConflict => {
                fail("POST", "/nodes/pve1/qemu/101/config", "checksum_mismatch_file_change_other", 1);
            }
            Fault::NodeOffline => {
                lab.pve.command(json!({"cmd": "set_node", "node": "pve2", "online": false}));
            }
        }
    }

    /// What a careful operator wants nixprox to do about the fault.
    fn expect(self) -> Expect {
        let done = Expect { code: 0, writes: true, ..Expect::default() };
        match self {
            Fault::TaskError => Expect {
                code: 3,
                hosts: &[("media", "failed", Some("start"))],
                says: &["task qmstart of `120` on node `pve1` failed: start failed", "last lines of its log"],
                ..done
            },
            Fault::BackupLock => Expect { says: &["VM is locked (backup)"], ..done },
            Fault::ConfigLockTimeout => Expect { says: &["can't lock file", "got timeout"], ..done },
            Fault::Flapping5xx => Expect { says: &["503 Service Unavailable"], ..done },
            Fault::NextidRace => Expect { says: &["was taken before the VM of `fresh` was created"], ..done },
            Fault::DigestConflict => Expect { says: &["after 1 digest conflict(s)"], ..done },
            Fault::LostCloneAnswer | Fault::UnfollowedCloneTask | Fault::LostCreateAnswer => {
                Expect { says: &["looking for VM", "answer was lost; the VM is there"], ..done }
            }
            // One in ten connections dropped: retried (the log says so); a host fails only when
            // one request's every retry was dropped too, with what happened.
            Fault::DroppedConnections => {
                Expect { says: &["retrying in"], or_fails_with: Some("broke"), ..done }
            }
            Fault::SlowTasks => done,
            Fault::AgentNotRunning => Expect {
                code: 3,
                hosts: &[("fresh", "failed", Some("address"))],
                says: &["the QEMU guest agent never answered", "set `nixprox.address`"],
                ..done
            },
            // Within `apply.address_timeout` (4 s, polled every 2 s) the agent comes up.
            Fault::AgentStarting => done,
            Fault::Forbidden => Expect {
                code: 1,
                says: &[
                    "VM.Clone on /vms/9000 (`fresh`: clone the template)",
                    "pveum acl modify",
                    "nothing was changed",
                ],
                ..Expect::default()
            },
            Fault::ExpiredToken => Expect {
                code: 1,
                says: &["401 authentication failure", "check PROXMOX_API_TOKEN", "be unexpired"],
                ..Expect::default()
            },
            Fault::NoQuorum => Expect {
                code: 1,
                says: &["has no quorum", "nothing was applied", "pvecm status"],
                ..Expect::default()
            },
            Fault::StorageFull => Expect {
                code: 3,
                hosts: &[("fresh", "failed", Some("clone")), ("media", "failed", Some("create"))],
                says: &["unable to write to storage 'local-lvm': No space left on device"],
                ..done
            },
            Fault::NodeOffline => Expect {
                code: 1,
                says: &["failed to read the cluster before applying", "/nodes/pve2/", "595", "offline"],
                ..Expect::default()
            },
        }
    }

    /// What the fault's own checks add, beyond [`Expect`].
    fn check(self, lab: &Lab, first: &Applied) {
        let sent = |method: &str, suffix: &str| lab.sent.iter().filter(|r| r.is(method, suffix)).count();
        match self {
            Fault::LostCloneAnswer | Fault::UnfollowedCloneTask => {
                assert_eq!(sent("POST", "/qemu/9000/clone"), 1, "the clone was sent once");
                assert!(
                    first.step("fresh", "clone")["detail"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("answer was lost")
                );
            }
            Fault::LostCreateAnswer => {
                assert_eq!(sent("POST", "/nodes/pve1/qemu"), 1, "the create was sent once");
                assert_eq!(first.host("media")["vmid"], 120, "under the declared VMID");
            }
            Fault::AgentNotRunning => {
                // The exact text: the VM, its node, the bound and its setting, why, the fixes.
                let vmid = Cluster::read(&lab.pve).named("fresh")[0].vmid;
                assert_eq!(
                    first.host("fresh")["error"],
                    format!(
                        "no address for VM {vmid} on node `pve1` within 4s: the QEMU guest agent never answered (is qemu-guest-agent installed and running in the VM's image?); set `nixprox.address` for a static address, or raise `apply.address_timeout` (docs/troubleshooting.md#the-guest-agent-does-not-answer)"
                    )
                );
            }
            Fault::AgentStarting => {
                let asked = sent("GET", "/agent/network-get-interfaces");
                assert!(asked >= 3, "two 500s, then the address: asked {asked} times");
                let address = first.step("fresh", "address");
                assert_eq!(address["detail"], "127.0.0.44, from the guest agent", "{address:#}");
            }
            Fault::SlowTasks => {
                let clone = first.step("fresh", "clone")["duration_ms"].as_u64().unwrap_or_default();
                assert!(clone >= 3000, "the clone step waited for its task ({clone} ms)");
            }
            Fault::StorageFull => {
                // Proxmox removed what it could not finish: nothing half-created is left.
                let cluster = Cluster::read(&lab.pve);
                assert!(
                    cluster.named("fresh").is_empty() && cluster.named("media").is_empty(),
                    "{cluster:#?}"
                );
            }
            _ => {}
        }
    }

    /// Takes the fault away, as fixing its cause would.
    fn clear(self, lab: &Lab) {
        match self {
            Fault::AgentNotRunning => {
                let vmid = Cluster::read(&lab.pve).named("fresh")[0].vmid;
                lab.pve.command(json!({"cmd": "set_agent", "vmid": vmid, "agent": agent_with("127.0.0.44")}));
            }
            Fault::Forbidden => {
                lab.pve.command(
                    json!({"cmd": "grant", "user": "nixprox@pve", "path": "/vms", "privs": ["VM.Clone"]}),
                );
            }
            Fault::ExpiredToken => {
                lab.pve.command(json!({"cmd": "add_token", "id": TOKEN_ID, "secret": lab.pve.secret()}));
            }
            Fault::NoQuorum => {
                lab.pve.command(json!({"cmd": "quorum", "quorate": true}));
            }
            Fault::StorageFull => {
                lab.pve.command(
                    json!({"cmd": "set_storage", "storage": "local-lvm", "options": {"avail": 1u64 << 40}}),
                );
            }
            Fault::NodeOffline => {
                lab.pve.command(json!({"cmd": "set_node", "node": "pve2", "online": true}));
            }
            Fault::DroppedConnections => {
                lab.pve.command(json!({"cmd": "flaky_network", "drop_rate": 0}));
            }
            Fault::SlowTasks => {
                lab.pve.command(json!({"cmd": "set", "task_secs": {}}));
            }
            _ => {
                lab.pve.command(json!({"cmd": "clear_failures"}));
                lab.pve.command(json!({"cmd": "clear_answer_loss"}));
            }
        }
    }
}

const TOKEN_ID: &str = crate::support::fakepve::TOKEN_ID;

fn lose_answer(lab: &Lab, method: &str, path: &str, times: u32) {
    lab.pve.command(json!({"cmd": "lose_answer", "method": method, "path": path, "times": times}));
}

/// The privileges of the `NixproxApply` role, as docs/guide.md creates it.
fn apply_role() -> Vec<&'static str> {
    let guide = include_str!("../../docs/guide.md");
    let line =
        guide.lines().find(|l| l.starts_with("pveum role add NixproxApply")).expect("the role in guide.md");
    let privs = line.split("--privs '").nth(1).and_then(|rest| rest.split('\'').next()).expect("--privs '…'");
    privs.split(',').collect()
}

/// The suite's cluster and flake for one case.
struct Lab {
    fixture: Fixture,
    pve: FakePve,
    /// The reviewed plan (`plan --format json`) and its file.
    reviewed: Value,
    plan_file: String,
    /// The requests of the first (faulty) apply.
    sent: Vec<Request>,
}

/// One apply run and its report (none when it stopped before any host).
struct Applied {
    run: Run,
    report: Option<Value>,
}

impl Applied {
    fn host(&self, host: &str) -> &Value {
        let hosts = self.report.as_ref().and_then(|r| r["hosts"].as_array()).expect("a report with hosts");
        hosts.iter().find(|h| h["host"] == host).unwrap_or_else(|| panic!("no `{host}` in the report"))
    }

    fn step(&self, host: &str, step: &str) -> &Value {
        let steps = self.host(host)["steps"].as_array().expect("steps");
        steps
            .iter()
            .find(|s| s["step"] == step)
            .unwrap_or_else(|| panic!("no step `{step}` of `{host}`: {steps:#?}"))
    }

    fn output(&self) -> String {
        format!("stdout:\n{}\nstderr:\n{}", self.run.stdout, self.run.stderr)
    }
}

impl Lab {
    /// The fixture's cluster (cluster.json: nodes, files, guests) with the fault's changes.
    fn start(fault: Fault) -> Lab {
        Lab::with(|scenario| fault.scenario(scenario), fault.case_json())
    }

    /// The fixture's cluster, changed by `edit`, and the flake with `case.json` when given;
    /// planned.
    fn with(edit: impl FnOnce(Scenario) -> Scenario, case_json: Option<Value>) -> Lab {
        let path = repo().join("fixtures/faults/cluster.json");
        let file: Value =
            serde_json::from_str(&std::fs::read_to_string(path).expect("cluster.json")).expect("json");
        let guests = file["guests"].as_array().expect("guests").iter().cloned();
        let scenario = guests
            .fold(Scenario::new(), Scenario::guest)
            .set("nodes", file["nodes"].clone())
            .set("files", file["files"].clone());
        let fixture = Fixture::copy("faults");
        if let Some(case) = case_json {
            std::fs::write(fixture.dir.path().join("case.json"), case.to_string()).expect("write case.json");
        }
        let pve = FakePve::start(edit(scenario));
        let plan_file = fixture.dir.path().join("plan.json").display().to_string();
        let run = cli::nixprox_in(&fixture, &pve, &["plan", "--format", "json", "--out", &plan_file]);
        assert_eq!(run.code, 0, "plan failed:\n{}", run.stderr);
        let reviewed = serde_json::from_str(&std::fs::read_to_string(&plan_file).expect("plan.json"))
            .expect("plan json");
        Lab { fixture, pve, reviewed, plan_file, sent: Vec::new() }
    }

    /// `apply --reviewed-plan plan.json --report report.json`.
    fn apply(&self) -> Applied {
        let report = self.fixture.dir.path().join("report.json");
        let _ = std::fs::remove_file(&report);
        let args = ["apply", "--reviewed-plan", &self.plan_file, "--report", &report.display().to_string()];
        let run = cli::nixprox_in(&self.fixture, &self.pve, &args);
        let report = std::fs::read_to_string(&report)
            .ok()
            .map(|text| serde_json::from_str(&text).expect("report json"));
        Applied { run, report }
    }

    /// `plan --format json` now.
    fn replan(&self) -> Value {
        let run = cli::nixprox_in(&self.fixture, &self.pve, &["plan", "--format", "json"]);
        assert_eq!(run.code, 0, "plan failed:\n{}", run.stderr);
        serde_json::from_str(&run.stdout).expect("plan json")
    }
}

/// Runs one case of the suite (see the module header).
fn case(fault: Fault) {
    let mut lab = Lab::start(fault);
    let before = Cluster::read(&lab.pve);
    fault.inject(&lab);
    lab.pve.requests(true);
    let first = lab.apply();
    lab.sent = lab.pve.requests_with_bodies(true);
    assert_expected(fault, &lab, &first);
    fault.check(&lab, &first);
    fault.clear(&lab);
    let cluster = Cluster::read(&lab.pve);
    assert_invariants(&cluster, &before, &lab.reviewed, Completeness::Partial);

    let second = lab.apply();
    assert_eq!(second.run.code, 0, "{fault:?}: the re-run did not finish:\n{}", second.output());
    let cluster = Cluster::read(&lab.pve);
    assert_invariants(&cluster, &before, &lab.reviewed, Completeness::Complete);
    assert_nothing_left_to_provision(&lab.replan());
}

/// The first run did what [`Fault::expect`] says.
fn assert_expected(fault: Fault, lab: &Lab, first: &Applied) {
    let expect = fault.expect();
    let output = first.output();
    assert!(!output.contains(lab.pve.secret()), "{fault:?}: the token's secret was printed");
    if let (3, Some(text)) = (first.run.code, expect.or_fails_with) {
        let report = first.report.as_ref().expect("a report");
        let failed = report["hosts"].as_array().expect("hosts").iter().filter(|h| h["status"] == "failed");
        for host in failed {
            assert!(host["error"].as_str().unwrap_or_default().contains(text), "{fault:?}: {host:#}");
        }
        return;
    }
    assert_eq!(first.run.code, expect.code, "{fault:?}: exit code\n{output}");
    for text in expect.says {
        assert!(output.contains(text), "{fault:?}: the run does not say `{text}`:\n{output}");
    }
    if !expect.writes {
        let writes: Vec<&Request> = lab.sent.iter().filter(|r| r.method != "GET").collect();
        assert!(writes.is_empty(), "{fault:?}: nothing may be written, but: {writes:#?}");
        assert!(first.report.is_none(), "{fault:?}: no host may start");
        return;
    }
    let report = first.report.as_ref().unwrap_or_else(|| panic!("{fault:?}: no report\n{output}"));
    for host in report["hosts"].as_array().expect("hosts") {
        let name = host["host"].as_str().unwrap_or_default();
        match expect.hosts.iter().find(|(h, _, _)| *h == name) {
            Some((_, status, step)) => {
                assert_eq!(host["status"], *status, "{fault:?}: `{name}`\n{output}");
                if let Some(step) = step {
                    assert_eq!(host["step"], *step, "{fault:?}: `{name}` failed at another step\n{output}");
                }
            }
            None => assert_ne!(host["status"], "failed", "{fault:?}: `{name}` failed\n{output}"),
        }
    }
}

/// One VM as the Proxmox API shows it.
#[derive(Debug, Clone)]
struct Vm {
    vmid: u32,
    name: String,
    node: String,
    template: bool,
    config: Map<String, Value>,
    /// `key → pending value` (`…/pending`; running VMs only).
    pending: Map<String, Value>,
}

impl Vm {
    /// A config value as text; the pending one when there is one (it is what the VM gets).
    fn text(&self, key: &str) -> Option<String> {
        let value = self.pending.get(key).or_else(|| self.config.get(key))?;
        Some(match value {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        })
    }

    fn tags(&self) -> BTreeSet<String> {
        let tags = self.config.get("tags").and_then(Value::as_str).unwrap_or_default();
        tags.split([';', ',', ' ']).filter(|t| !t.is_empty()).map(str::to_lowercase).collect()
    }

    /// The owner's part of the notes (everything but nixprox's block), exactly.
    fn owner_notes(&self) -> String {
        Notes::parse(self.config.get("description").and_then(Value::as_str).unwrap_or_default()).user_text
    }

    /// `(storage, size in bytes)` of a disk slot.
    fn disk(&self, slot: &str) -> Option<(String, u64)> {
        let text = self.text(slot)?;
        let storage = text.split(':').next()?.to_string();
        let size = text.split(',').find_map(|p| p.strip_prefix("size="))?;
        Some((storage, nixprox::spec::parse_size(size, 1)?))
    }
}

/// Every VM of the cluster, read through the Proxmox API with the fake's token.
#[derive(Debug)]
struct Cluster {
    vms: Vec<Vm>,
}

impl Cluster {
    fn read(pve: &FakePve) -> Cluster {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let client = pve.client();
        runtime.block_on(async {
            let listed =
                client.get("/cluster/resources", &[("type", "vm")]).await.expect("/cluster/resources");
            let mut vms = Vec::new();
            for item in listed.as_array().expect("a list").iter().filter(|i| i["type"] == "qemu") {
                let (vmid, node) =
                    (item["vmid"].as_u64().expect("vmid") as u32, item["node"].as_str().expect("node"));
                let path = format!("/nodes/{node}/qemu/{vmid}");
                let config = client.get(&format!("{path}/config"), &[]).await.expect("config");
                let pending = client.get(&format!("{path}/pending"), &[]).await.expect("pending");
                let pending = pending
                    .as_array()
                    .expect("pending list")
                    .iter()
                    .filter_map(|p| Some((p["key"].as_str()?.to_string(), p.get("pending")?.clone())));
                vms.push(Vm {
                    vmid,
                    name: item["name"].as_str().unwrap_or_default().to_string(),
                    node: node.to_string(),
                    template: item["template"] == 1,
                    config: config.as_object().cloned().unwrap_or_default(),
                    pending: pending.collect(),
                });
            }
            Cluster { vms }
        })
    }

    fn named(&self, name: &str) -> Vec<&Vm> {
        self.vms.iter().filter(|vm| vm.name == name && !vm.template).collect()
    }

    fn vm(&self, vmid: u32) -> Option<&Vm> {
        self.vms.iter().find(|vm| vm.vmid == vmid)
    }
}

/// After a faulty run, or after the run that finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Completeness {
    /// Some hosts may not be done: at most one VM per host.
    Partial,
    /// Every host is done: exactly one VM per host, every declared value in place.
    Complete,
}

/// The reviewed plan's hosts (not orphans) and their runnable (not blocked) actions.
fn runnable(reviewed: &Value) -> Vec<(&Value, Vec<&Value>)> {
    reviewed["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .map(|host| {
            let actions = host["actions"].as_array().expect("actions");
            (host, actions.iter().filter(|a| a["blocked"].is_null()).collect())
        })
        .collect()
}

/// What must hold whatever went wrong: checked on the cluster as the API shows it, against the
/// cluster `before` the first run and the reviewed plan.
fn assert_invariants(cluster: &Cluster, before: &Cluster, reviewed: &Value, completeness: Completeness) {
    // Nothing destroyed that the reviewed plan did not name (with a runnable action).
    let named: BTreeSet<u64> = runnable(reviewed)
        .iter()
        .filter(|(_, actions)| actions.iter().any(|a| a["kind"] == "destroy_vm" || a["kind"] == "replace_vm"))
        .filter_map(|(host, _)| host["vm"]["vmid"].as_u64())
        .collect();
    for vm in &before.vms {
        if cluster.vm(vm.vmid).is_none() {
            assert!(
                named.contains(&u64::from(vm.vmid)),
                "VM {} `{}` was destroyed, and the reviewed plan did not name it",
                vm.vmid,
                vm.name
            );
        }
    }
    // The owners' notes, byte for byte (the suite's hosts declare no description).
    for vm in before.vms.iter().filter(|vm| !vm.owner_notes().is_empty()) {
        if let Some(now) = cluster.vm(vm.vmid) {
            assert_eq!(
                now.owner_notes(),
                vm.owner_notes(),
                "the owner's notes of VM {} `{}`",
                vm.vmid,
                vm.name
            );
        }
    }
    for (host, actions) in runnable(reviewed) {
        if host["orphan"] == true {
            continue;
        }
        let name = vm_name(host, before);
        let vms = cluster.named(&name);
        match completeness {
            Completeness::Partial => assert!(vms.len() <= 1, "two VMs for `{name}`: {vms:#?}"),
            Completeness::Complete => {
                assert_eq!(vms.len(), 1, "exactly one VM for `{name}`: {:#?}", cluster.vms);
                for action in
                    actions.iter().filter(|a| !NEEDS_SSH.contains(&a["kind"].as_str().unwrap_or_default()))
                {
                    for change in action["changes"].as_array().into_iter().flatten() {
                        assert_declared(vms[0], change);
                    }
                }
            }
        }
    }
    if completeness == Completeness::Complete {
        for vmid in &named {
            assert!(cluster.vm(*vmid as u32).is_none(), "VM {vmid} was to be destroyed");
        }
    }
}

/// The VM name of a host of the reviewed plan: the one its create names, else its VM's.
fn vm_name(host: &Value, before: &Cluster) -> String {
    let mut created = host["actions"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|a| a["changes"].as_array().into_iter().flatten());
    let declared = created.find(|c| c["field"] == "name").and_then(|c| c["after"].as_str());
    let existing =
        host["vm"]["vmid"].as_u64().and_then(|vmid| before.vm(vmid as u32)).map(|vm| vm.name.as_str());
    declared.or(existing).unwrap_or_else(|| host["host"].as_str().expect("host")).to_string()
}

/// One change of the reviewed plan holds on the VM: checked from the config as Proxmox shows
/// it, not through nixprox's own diff (the final plan checks the rest).
fn assert_declared(vm: &Vm, change: &Value) {
    let field = change["field"].as_str().expect("field");
    let after = &change["after"];
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let what = format!("`{field}` of VM {} `{}` is not {after}: {:#?}", vm.vmid, vm.name, vm.config);
    match field {
        // qemu-server's defaults for an absent key: 1 core, 1 socket.
        "cores" | "sockets" => assert_eq!(vm.text(field).unwrap_or("1".into()), text(after), "{what}"),
        "memory" => assert_eq!(vm.text(field), Some(text(after)), "{what}"),
        "cpuType" => assert_eq!(
            vm.text("cpu").as_deref().map(|c| c.split(',').next().unwrap_or(c).to_string()),
            Some(text(after)),
            "{what}"
        ),
        "name" => assert_eq!(vm.name, text(after), "{what}"),
        "node" => assert_eq!(vm.node, text(after), "{what}"),
        "id" => assert_eq!(u64::from(vm.vmid), after.as_u64().expect("id"), "{what}"),
        "managed" => assert!(vm.tags().contains("nixprox"), "{what}"),
        "tags" => {
            let tags = vm.tags();
            let declared = after.as_array().expect("tags");
            assert!(tags.contains("nixprox") && declared.iter().all(|t| tags.contains(&text(t))), "{what}");
        }
        _ if field.starts_with("disks.") => {
            let (slot, size_only) = match field["disks.".len()..].split_once('.') {
                Some((slot, "size")) => (slot, true),
                _ => (&field["disks.".len()..], false),
            };
            let (storage, size) = vm.disk(slot).unwrap_or_else(|| panic!("{what}"));
            let declared = text(after);
            let declared_size = if size_only {
                declared.as_str()
            } else {
                declared.split(',').find_map(|p| p.strip_prefix("size=")).expect("size=")
            };
            let declared_size = nixprox::spec::parse_size(declared_size, 1).expect("a size");
            assert!(size >= declared_size, "{what}");
            if !size_only {
                assert_eq!(Some(storage.as_str()), declared.split(',').next(), "{what}");
            }
        }
        _ if field.starts_with("networks.") => {
            let slot = &field["networks.".len()..];
            let live = vm.text(slot).unwrap_or_else(|| panic!("{what}"));
            let declared = text(after);
            let mut parts = declared.split(',');
            let model = parts.next().expect("model");
            assert!(live.starts_with(&format!("{model}=")) || live.starts_with(model), "{what}");
            for part in parts {
                assert!(live.split(',').any(|p| p == part), "{what}");
            }
        }
        // Absent means the default; written ones are checked by the final plan.
        _ => {}
    }
}

/// Actions that talk to the VM over SSH: the suite configures no SSH key, so apply skips them
/// (an adoption in place reads the running system over SSH before it tags the VM).
const NEEDS_SSH: [&str; 4] = ["adopt", "install", "reinstall", "switch"];

/// A new plan has nothing left to provision: no create, update, grow or destroy runnable
/// (installs and adoptions wait for a deployer the suite does not configure).
fn assert_nothing_left_to_provision(plan: &Value) {
    const PROVISION: [&str; 5] = ["create_vm", "update_vm", "resize_disk", "destroy_vm", "replace_vm"];
    for (host, actions) in runnable(plan) {
        for action in actions {
            let kind = action["kind"].as_str().unwrap_or_default();
            assert!(!PROVISION.contains(&kind), "`{}` still has `{kind}` to do: {action:#}", host["host"]);
        }
    }
}

/// The suite: one test per fault, named for what nixprox does about it.
macro_rules! fault_suite {
    ($($name:ident => $fault:ident,)*) => {
        $(#[test] fn $name() { case(Fault::$fault) })*
        /// Every test of the suite, with its fault.
        const SUITE: &[(&str, Fault)] = &[$((stringify!($name), Fault::$fault),)*];
    };
}

fault_suite! {
    a_failed_task_fails_its_host_with_the_task_log => TaskError,
    a_backup_lock_is_waited_out => BackupLock,
    a_config_lock_timeout_is_retried => ConfigLockTimeout,
    flapping_5xx_answers_are_retried => Flapping5xx,
    dropped_connections_are_retried_without_duplicates => DroppedConnections,
    a_clone_whose_answer_was_lost_after_it_ran_is_found_not_sent_again => LostCloneAnswer,
    a_clone_whose_task_could_not_be_followed_is_found_not_sent_again => UnfollowedCloneTask,
    an_iso_create_whose_answer_was_lost_after_it_ran_is_found_not_sent_again => LostCreateAnswer,
    slow_tasks_are_waited_for => SlowTasks,
    the_nextid_race_takes_another_vmid => NextidRace,
    a_guest_agent_that_never_answers_fails_the_host_with_the_fix => AgentNotRunning,
    a_guest_agent_still_starting_is_waited_for => AgentStarting,
    a_missing_privilege_stops_before_any_write_naming_it => Forbidden,
    an_expired_token_stops_before_any_write => ExpiredToken,
    no_quorum_stops_before_any_write => NoQuorum,
    a_full_storage_fails_the_new_hosts_and_leaves_nothing_half_created => StorageFull,
    a_digest_conflict_is_read_again_and_written => DigestConflict,
    an_offline_node_stops_before_any_write => NodeOffline,
}

#[test]
fn every_fault_of_the_suite_is_in_the_reliability_table() {
    let table = std::fs::read_to_string(repo().join("docs/reliability.md")).expect("docs/reliability.md");
    let faults: BTreeMap<String, Fault> =
        SUITE.iter().map(|(name, fault)| (format!("faults::{name}"), *fault)).collect();
    for name in faults.keys() {
        assert!(table.contains(&format!("`{name}`")), "docs/reliability.md does not name `{name}`");
    }
    let distinct: BTreeSet<String> = faults.values().map(|f| format!("{f:?}")).collect();
    assert_eq!(distinct.len(), SUITE.len(), "one test per fault");
}

#[test]
fn twenty_new_hosts_on_one_node_get_twenty_distinct_vmids() {
    // No host declares `vm.id`, so every one asks `/cluster/nextid`, which reserves nothing;
    // with the default concurrency eight creates run at once on the one node, over a network
    // with some latency so their requests interleave. Another tool's creates take the id
    // nixprox was about to use, twice.
    let fleet = Fleet::generate_new_unnumbered(20);
    let pve = FakePve::start(fleet.apply_scenario(&Default::default(), 0.0).set("latency", json!(0.02)));
    let plan = fleet.dir.path().join("plan.json").display().to_string();
    let run = cli::run_on(&fleet.flake_ref(), &pve, &["plan", "--format", "json", "--out", &plan]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    pve.command(json!({"cmd": "fail", "method": "POST", "path": "/qemu/9000/clone",
                       "error": "unable_create_config_file_already", "times": 2}));
    let report_file = fleet.dir.path().join("report.json").display().to_string();
    let args = ["apply", "--reviewed-plan", &plan, "--report", &report_file];
    let run = cli::run_on(&fleet.flake_ref(), &pve, &args);
    assert_eq!(run.code, 0, "apply failed:\n{}\n{}", run.stdout, run.stderr);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&report_file).expect("report")).expect("json");
    let hosts = report["hosts"].as_array().expect("hosts");
    assert_eq!(hosts.len(), 20, "{report:#}");
    let ids: BTreeSet<u64> = hosts.iter().filter_map(|h| h["vmid"].as_u64()).collect();
    assert_eq!(ids.len(), 20, "twenty distinct VMIDs: {ids:?}");
    let cluster = Cluster::read(&pve);
    for host in &fleet.hosts {
        let vms = cluster.named(&host.attr);
        assert_eq!(vms.len(), 1, "exactly one VM for `{}`: {vms:?}", host.attr);
        assert_eq!(vms[0].node, "pve1");
    }
    assert_eq!(cluster.vms.len(), 21, "twenty VMs and the template");
}

#[test]
fn a_create_that_failed_after_its_answer_was_lost_is_sent_once_more_with_the_same_vmid() {
    // Without the installer ISO on `local`, the create's task fails (and removes the VM);
    // its answer is lost, so nixprox does not know that yet.
    let fixture = Fixture::copy("homelab");
    let pve = FakePve::start(cli::cluster_scenario(&repo().join("fixtures/homelab/cluster.json")));
    let plan = fixture.dir.path().join("plan.json").display().to_string();
    let run =
        cli::nixprox_in(&fixture, &pve, &["plan", "--format", "json", "--out", &plan, "--hosts", "media"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    pve.command(json!({"cmd": "lose_answer", "method": "POST", "path": "/nodes/pve1/qemu$", "times": 1}));
    pve.requests(true);
    let run = cli::nixprox_in(&fixture, &pve, &["apply", "--reviewed-plan", &plan, "--hosts", "media"]);
    assert_eq!(run.code, 3, "the host fails:\n{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("looking for VM 120 before anything is sent again"), "{}", run.stderr);
    assert!(run.stdout.contains("volume local:iso/nixos-minimal.iso does not exist"), "{}", run.stdout);
    // Nothing was there, so the same request went out once more, with the same VMID.
    let creates: Vec<Request> =
        pve.requests_with_bodies(false).into_iter().filter(|r| r.is("POST", "/nodes/pve1/qemu")).collect();
    assert_eq!(creates.len(), 2, "{creates:?}");
    assert!(creates.iter().all(|r| r.body.starts_with("vmid=120&")), "{creates:?}");
    assert!(Cluster::read(&pve).named("media").is_empty());
}

/// A cancelled CI job: `nixprox apply` runs in the background while the test signals it.
struct Background {
    child: std::process::Child,
    /// `TMPDIR` of the run: whatever nixprox writes to temporary files lands here.
    tmp: tempfile::TempDir,
    stdout: std::path::PathBuf,
    stderr: std::path::PathBuf,
    report: std::path::PathBuf,
}

impl Lab {
    /// Starts `apply --reviewed-plan plan.json --report report.json` without waiting for it.
    fn spawn_apply(&self) -> Background {
        let tmp = tempfile::Builder::new().prefix("nixprox-cancel-tmp-").tempdir().expect("tempdir");
        let dir = self.fixture.dir.path();
        let (stdout, stderr, report) = (dir.join("stdout"), dir.join("stderr"), dir.join("report.json"));
        let _ = std::fs::remove_file(&report);
        let mut command = cli::nixprox();
        command
            .args(["apply", "--reviewed-plan", &self.plan_file, "--report", &report.display().to_string()])
            .args(cli::source_args(&self.fixture))
            .envs(cli::pve_env(&self.pve))
            .env("TMPDIR", tmp.path())
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"));
        Background { child: command.spawn().expect("start nixprox"), tmp, stdout, stderr, report }
    }

    /// Waits (bounded) until the VM named `name` exists and holds `lock` (`null`: none).
    fn wait_for_lock(&self, name: &str, lock: Value) -> u32 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let vms = self.pve.command(json!({"cmd": "vms"}));
            let found = vms
                .as_array()
                .expect("vms")
                .iter()
                .find(|vm| vm["name"] == name)
                .map(|vm| vm["vmid"].clone());
            if let Some(vmid) = found
                && self.pve.command(json!({"cmd": "vm", "vmid": vmid}))["lock"] == lock
            {
                return vmid.as_u64().expect("vmid") as u32;
            }
            assert!(std::time::Instant::now() < deadline, "`{name}` never held lock `{lock}`: {vms:#}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Background {
    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill").args([signal, &self.child.id().to_string()]).status();
        assert!(status.is_ok_and(|s| s.success()), "kill {signal}");
    }

    /// Waits (bounded) for the run to end: its exit code, output and report.
    fn finish(mut self, within: std::time::Duration) -> (Applied, tempfile::TempDir) {
        let deadline = std::time::Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "apply did not stop within {within:?}: {}",
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let run = Run {
            code: status.code().unwrap_or(-1),
            stdout: std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            stderr: std::fs::read_to_string(&self.stderr).unwrap_or_default(),
        };
        let report = std::fs::read_to_string(&self.report)
            .ok()
            .map(|t| serde_json::from_str(&t).expect("report json"));
        (Applied { run, report }, self.tmp)
    }
}

/// The steps of `host` in a report: `(step, status, detail)`.
fn steps_of(applied: &Applied, host: &str) -> Vec<(String, String, String)> {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let steps = applied.host(host)["steps"].as_array().expect("steps").clone();
    steps.iter().map(|s| (text(&s["step"]), text(&s["status"]), text(&s["detail"]))).collect()
}

/// After a cancelled run: its temporary directory is empty, no host failed, no VM is still
/// locked by nixprox's requests, and the invariants hold; a re-run of the same reviewed plan
/// finishes everything.
fn assert_cancelled_run_resumes(lab: &Lab, before: &Cluster, cancelled: &Applied, tmp: &tempfile::TempDir) {
    let left: Vec<_> = std::fs::read_dir(tmp.path()).expect("tmp").flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "temporary files left behind: {left:?}");
    let report = cancelled.report.as_ref().expect("a report");
    for host in report["hosts"].as_array().expect("hosts") {
        assert_ne!(host["status"], "failed", "{host:#}");
    }
    assert_invariants(&Cluster::read(&lab.pve), before, &lab.reviewed, Completeness::Partial);
    let again = lab.apply();
    assert_eq!(again.run.code, 0, "the re-run did not finish:\n{}", again.output());
    assert_invariants(&Cluster::read(&lab.pve), before, &lab.reviewed, Completeness::Complete);
    assert_nothing_left_to_provision(&lab.replan());
}

#[test]
fn sigint_during_a_clone_waits_for_it_reports_what_was_left_and_a_rerun_finishes() {
    // A clone takes 4 s (copying the template's disk); everything else is quick.
    let lab = Lab::with(|s| s.set("time_scale", json!(1)).set("task_secs", json!({"qmclone": 4})), None);
    let before = Cluster::read(&lab.pve);
    let run = lab.spawn_apply();
    lab.wait_for_lock("fresh", json!("clone"));
    run.signal("-INT");
    let (cancelled, tmp) = run.finish(std::time::Duration::from_secs(60));
    let output = cancelled.output();
    assert_eq!(cancelled.run.code, 130, "{output}");
    assert!(output.contains("SIGINT: stopping: no new step starts"), "{output}");
    let report = cancelled.report.as_ref().expect("report");
    assert_eq!(report["cancelled_by"], "SIGINT", "{report:#}");
    // The clone already sent was waited for: its VM carries the notes that name the host.
    let fresh = steps_of(&cancelled, "fresh");
    assert_eq!((fresh[0].0.as_str(), fresh[0].1.as_str()), ("clone", "ok"), "{fresh:?}");
    assert_eq!(
        fresh[1],
        ("configure".into(), "cancelled".into(), "not started: apply was cancelled (SIGINT)".into())
    );
    assert_eq!(
        fresh.last().map(|s| (s.0.as_str(), s.1.as_str())),
        Some(("install", "cancelled")),
        "{fresh:?}"
    );
    assert_eq!(cancelled.host("fresh")["status"], "cancelled");
    assert_eq!(cancelled.host("fresh")["step"], "configure");
    assert!(cancelled.run.stdout.contains("(cancelled by SIGINT)"), "{}", cancelled.run.stdout);
    assert!(cancelled.run.stdout.contains("cancelled at configure: not started"), "{}", cancelled.run.stdout);
    let vm = &Cluster::read(&lab.pve).named("fresh")[0].clone();
    let notes = vm.config.get("description").and_then(Value::as_str).unwrap_or_default();
    assert!(notes.contains("\"host\":\"fresh\""), "{notes}");
    assert!(!vm.config.contains_key("lock"), "{vm:#?}");
    assert_cancelled_run_resumes(&lab, &before, &cancelled, &tmp);
}

#[test]
fn sigint_then_sigterm_as_github_sends_them_stops_at_once_and_a_rerun_finishes() {
    // GitHub's runner: SIGINT, then SIGTERM 7.5 s later (here 0.3 s), then kill. The second
    // signal stops the clone step still waiting for its task; Proxmox finishes the clone anyway.
    let lab = Lab::with(|s| s.set("time_scale", json!(1)).set("task_secs", json!({"qmclone": 6})), None);
    let before = Cluster::read(&lab.pve);
    let run = lab.spawn_apply();
    let vmid = lab.wait_for_lock("fresh", json!("clone"));
    let started = std::time::Instant::now();
    run.signal("-INT");
    std::thread::sleep(std::time::Duration::from_millis(300));
    run.signal("-TERM");
    let (cancelled, tmp) = run.finish(std::time::Duration::from_secs(30));
    let output = cancelled.output();
    assert_eq!(cancelled.run.code, 130, "the first signal is the one reported:\n{output}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "stopped at once, not after the clone: {output}"
    );
    assert!(
        lab.pve.command(json!({"cmd": "vm", "vmid": vmid}))["lock"] == "clone",
        "the clone was still running"
    );
    let fresh = steps_of(&cancelled, "fresh");
    assert_eq!(
        fresh[0],
        ("clone".into(), "cancelled".into(), "stopped while running: apply was cancelled (SIGINT)".into())
    );
    assert_eq!(cancelled.host("fresh")["step"], "clone");
    // The next run finds the VM by its notes once the clone is done, and creates nothing twice.
    lab.wait_for_lock("fresh", Value::Null);
    assert_cancelled_run_resumes(&lab, &before, &cancelled, &tmp);
}
