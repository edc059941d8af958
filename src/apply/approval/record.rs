//! The reviewed-plan record: what the sticky pull-request comment remembers of the reviewed
//! plan, so that apply after the merge can compare host by host (resume a partial run, accept
//! one shard of a fan-out) knowing only the comment.
//!
//! It lists every host that had changes at review with the VM the reviewer saw (node and
//! VMID, `new` for one Proxmox had not allocated yet), a digest of that VM and the host's
//! normalized actions (kind, blocked or not, every before/after value: exactly what the
//! comment showed) and the destructive kinds it was allowed to run. A host not listed had
//! nothing to do. Version 2 added the VM: a version 1 record (written before) is ignored with
//! a warning, and apply compares plan ids, which cover the VMs too. 16 hex digits
//! (64 bits) of SHA-256 per host keep 500 changed hosts near 20,000 characters, inside the
//! comment's 65,536; a plan whose record would not fit [`MAX_RECORD_CHARS`] gets none, and apply
//! then compares plan ids only (the full per-host delta is always available with
//! `--reviewed-plan FILE`). Written as versioned JSON (`v`); a record of another version is
//! ignored with a warning, never guessed at.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::plan::Plan;

/// The version this nixprox writes and reads.
pub const RECORD_VERSION: u32 = 2;

/// The largest record the plan comment carries (the rest of the 65,536 characters is left to
/// the rendered plan, which degrades to fit).
pub const MAX_RECORD_CHARS: usize = 40_000;

/// Why a record is not written to the comment, or not read from it (apply then compares
/// plan ids only, with a warning).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("failed to serialise the reviewed-plan record: {0}")]
    Serialize(String),
    #[error(
        "the reviewed-plan record of {hosts} changed hosts takes {chars} characters, more than the {MAX_RECORD_CHARS} the plan comment keeps for it"
    )]
    TooLarge { hosts: usize, chars: usize },
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error(
        "it has version {0}, and this nixprox reads version {RECORD_VERSION} (use the nixprox release that planned)"
    )]
    Version(u64),
    #[error("it has no version")]
    NoVersion,
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("it is for plan `{found}`, not `{wanted}`")]
    OtherPlan { found: String, wanted: String },
}

/// The record, as JSON: `{"v":2,"plan_id":"…","hosts":{"web":"<digest> pve1/101","db":"<digest> pve1/102 reinstall"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub v: u32,
    pub plan_id: String,
    /// Hosts (attribute names) with changes: `<digest> <node>/<vmid or new>`, then the
    /// runnable destructive actions after a space, comma-separated, each `<kind>=<digest>`.
    #[serde(default)]
    pub hosts: BTreeMap<String, String>,
    /// Orphan VMs (by VM name) with changes, in the same form.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub orphans: BTreeMap<String, String>,
}

/// One host's entry, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub digest: String,
    /// The VM the reviewer saw: `pve1/101`, or `pve1/new`.
    pub vm: String,
    pub destructive: Vec<String>,
}

impl Entry {
    fn encode(&self) -> String {
        let mut text = format!("{} {}", self.digest, self.vm);
        if !self.destructive.is_empty() {
            text.push(' ');
            text.push_str(&self.destructive.join(","));
        }
        text
    }

    fn decode(text: &str) -> Entry {
        let mut parts = text.splitn(3, ' ');
        let digest = parts.next().unwrap_or_default().to_string();
        let vm = parts.next().unwrap_or_default().to_string();
        let kinds = parts.next().unwrap_or_default();
        Entry {
            digest,
            vm,
            destructive: kinds.split(',').filter(|k| !k.is_empty()).map(str::to_string).collect(),
        }
    }
}

impl Record {
    /// The record of `plan`: every host and orphan with changes.
    pub fn from_plan(plan: &Plan) -> Record {
        let mut record = Record {
            v: RECORD_VERSION,
            plan_id: plan.plan_id.clone(),
            hosts: BTreeMap::new(),
            orphans: BTreeMap::new(),
        };
        for host in plan.hosts.iter().filter(|h| h.has_changes()) {
            let actions: Vec<Value> = host.actions.iter().map(super::normalize).collect();
            let vm = super::vm_label(&host.vm.node, host.vm.vmid);
            let entry = Entry {
                digest: digest(&vm, &actions),
                vm,
                destructive: super::runnable_destructive(&actions),
            };
            let map = if host.orphan { &mut record.orphans } else { &mut record.hosts };
            map.insert(host.host.clone(), entry.encode());
        }
        record
    }

    /// The JSON for the comment, or why it is left out (it would not fit).
    pub fn to_json(&self) -> Result<String, RecordError> {
        let json = serde_json::to_string(self).map_err(|e| RecordError::Serialize(e.to_string()))?;
        let chars = json.chars().count();
        if chars > MAX_RECORD_CHARS {
            return Err(RecordError::TooLarge { hosts: self.hosts.len() + self.orphans.len(), chars });
        }
        Ok(json)
    }

    /// Reads a record from the comment; `plan_id` is the comment marker's, which it must repeat.
    pub fn parse(json: &str, plan_id: &str) -> Result<Record, RecordError> {
        let version: Value = serde_json::from_str(json).map_err(|e| RecordError::NotJson(e.to_string()))?;
        match version.get("v").and_then(Value::as_u64) {
            Some(v) if v == u64::from(RECORD_VERSION) => {}
            Some(v) => return Err(RecordError::Version(v)),
            None => return Err(RecordError::NoVersion),
        }
        let record: Record =
            serde_json::from_value(version).map_err(|e| RecordError::Malformed(e.to_string()))?;
        if record.plan_id != plan_id {
            return Err(RecordError::OtherPlan { found: record.plan_id, wanted: plan_id.to_string() });
        }
        Ok(record)
    }

    /// The entry of a host (`orphan`: an orphan VM by name).
    pub fn entry(&self, host: &str, orphan: bool) -> Option<Entry> {
        let map = if orphan { &self.orphans } else { &self.hosts };
        map.get(host).map(|text| Entry::decode(text))
    }
}

/// 16 hex digits of SHA-256 over the canonical JSON of the VM a host acts on (`pve1/101`) and
/// its normalized actions: equal digests mean the same actions on the same VM.
pub fn digest(vm: &str, actions: &[Value]) -> String {
    // Serialising plain JSON values cannot fail.
    let bytes = serde_json::to_vec(&serde_json::json!({"vm": vm, "actions": actions})).unwrap_or_default();
    hex::encode(&Sha256::digest(&bytes)[..8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Policies;
    use crate::plan::{PlanInput, plan, testkit};

    #[test]
    fn lists_changed_hosts_with_their_digest_and_destructive_kinds() {
        let desired = vec![testkit::host("web"), testkit::host("db")];
        let mut live = vec![testkit::live("db", 102), testkit::live("old", 150)];
        live[1].name = "old".into();
        let policies = Policies { prune_orphans: true, ..Policies::default() };
        let plan = plan(PlanInput { desired: &desired, live: &live, policies, only: None, probes: None });
        let record = Record::from_plan(&plan);
        assert_eq!(record.plan_id, plan.plan_id);
        assert!(record.hosts.contains_key("web"), "{record:?}");
        let old = record.entry("old", true).expect("orphan listed");
        assert_eq!(old.destructive.len(), 1);
        assert!(old.destructive[0].starts_with("destroy_vm="), "{old:?}");
        assert_eq!(old.digest.len(), 16);
        assert_eq!(record.entry("old", false), None, "orphans and hosts are apart");

        let json = record.to_json().expect("fits");
        assert_eq!(Record::parse(&json, &plan.plan_id).expect("parses"), record);
        assert!(Record::parse(&json, "other").expect_err("wrong id").to_string().contains("not `other`"));
        assert_eq!(old.vm, "pve1/150");
        assert!(json.contains("pve1/150 destroy_vm="), "{json}");
        let older = json.replacen("\"v\":2", "\"v\":1", 1);
        assert!(Record::parse(&older, &plan.plan_id).expect_err("older").to_string().contains("version 1"));
        assert!(Record::parse("{", &plan.plan_id).is_err());
    }

    #[test]
    fn a_record_too_large_for_the_comment_is_refused() {
        let hosts = (0..2000).map(|i| (format!("host-with-a-long-name-{i:04}"), "0".repeat(16))).collect();
        let record = Record { v: 1, plan_id: "p".into(), hosts, orphans: BTreeMap::new() };
        assert!(record.to_json().expect_err("too big").to_string().contains("2000 changed hosts"));
    }
}
