//! Decoding what `probes.nix` printed for one system into a [`ProbeSet`].
//!
//! The shape is `{ <kind>: null | {"failed": true} | {"ok": {<entry>: {"ok": v} | {"failed": true}}} }`.
//! Anything else (a kind this binary does not know, a malformed value) is read as "not probed",
//! so a newer or older probes file never breaks a plan.

use std::collections::BTreeMap;

use serde_json::Value;

use super::ProbeKind;

/// One entry of a probe.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    Value(Value),
    Failed,
}

/// One probe of one system.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// The probe threw as a whole.
    Failed,
    Entries(BTreeMap<String, Entry>),
}

/// Every probe of one system; a kind that is absent was not probed (its option does not exist).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProbeSet {
    pub probes: BTreeMap<ProbeKind, Probe>,
}

impl ProbeSet {
    /// Reads probes.nix's output.
    pub fn from_json(value: &Value) -> ProbeSet {
        let mut probes = BTreeMap::new();
        for kind in ProbeKind::ALL {
            if let Some(probe) = value.get(kind.as_str()).and_then(probe) {
                probes.insert(kind, probe);
            }
        }
        ProbeSet { probes }
    }

    pub fn get(&self, kind: ProbeKind) -> Option<&Probe> {
        self.probes.get(&kind)
    }
}

fn failed(value: &Value) -> bool {
    value.get("failed").and_then(Value::as_bool) == Some(true)
}

fn probe(value: &Value) -> Option<Probe> {
    if failed(value) {
        return Some(Probe::Failed);
    }
    let entries = value.get("ok")?.as_object()?;
    let entries = entries
        .iter()
        .filter_map(|(name, entry)| {
            let entry = if failed(entry) { Entry::Failed } else { Entry::Value(entry.get("ok")?.clone()) };
            Some((name.clone(), entry))
        })
        .collect();
    Some(Probe::Entries(entries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_values_failures_and_missing_probes() {
        let set = ProbeSet::from_json(&json!({
            "kernel": {"ok": {"version": {"ok": "6.6.30"}}},
            "services": {"ok": {"nginx": {"ok": "/nix/store/a-unit"}, "bad": {"failed": true}}},
            "users": {"failed": true},
            "packages": null,
            "firewall": "something a newer probes.nix might print",
            "future_kind": {"ok": {}}
        }));
        assert_eq!(
            set.get(ProbeKind::Kernel),
            Some(&Probe::Entries(BTreeMap::from([("version".into(), Entry::Value(json!("6.6.30")))])))
        );
        assert_eq!(
            set.get(ProbeKind::Services),
            Some(&Probe::Entries(BTreeMap::from([
                ("bad".into(), Entry::Failed),
                ("nginx".into(), Entry::Value(json!("/nix/store/a-unit")))
            ])))
        );
        assert_eq!(set.get(ProbeKind::Users), Some(&Probe::Failed));
        assert_eq!(set.get(ProbeKind::Packages), None);
        assert_eq!(set.get(ProbeKind::Firewall), None);
        assert_eq!(set.probes.len(), 3);
        assert_eq!(ProbeSet::from_json(&json!(null)), ProbeSet::default());
    }
}
