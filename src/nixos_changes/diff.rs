//! The comparison: one host's probes at the base against the head, entry by entry.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::probes::{Entry, Probe, ProbeSet};
use super::{FailedProbe, NixosChanges, ProbeChange, ProbeKind, Side};

/// What the head evaluation said about one host's probes.
#[derive(Debug, Clone, Copy)]
pub enum HeadProbes<'a> {
    /// probes.nix's output.
    Evaluated(&'a Value),
    /// The probes made the host's evaluation fail (nix's message); the system was evaluated
    /// without them.
    Failed(&'a str),
}

/// What the base evaluation said about one host.
#[derive(Debug, Clone, Copy)]
pub enum BaseProbes<'a> {
    Evaluated(&'a Value),
    /// The base's `nixosConfigurations` has no such attribute.
    NotInBase,
    /// The base could not be used for this host; the reason is shown as it is.
    Unavailable(&'a str),
}

/// Longest reason kept: the summary says what went wrong in one line.
const REASON_CHARS: usize = 240;

/// A host's NixOS changes from what each side's evaluation gave.
pub fn changes_for(head: HeadProbes<'_>, base: BaseProbes<'_>) -> NixosChanges {
    match (head, base) {
        (HeadProbes::Failed(message), _) => NixosChanges::Unavailable {
            reason: one_line(&format!("the probes failed to evaluate at the head: {message}")),
        },
        (_, BaseProbes::Unavailable(reason)) => NixosChanges::Unavailable { reason: one_line(reason) },
        (HeadProbes::Evaluated(_), BaseProbes::NotInBase) => NixosChanges::NewHost,
        (HeadProbes::Evaluated(head), BaseProbes::Evaluated(base)) => {
            compare(&ProbeSet::from_json(base), &ProbeSet::from_json(head))
        }
    }
}

/// The first line of `text`, at most [`REASON_CHARS`] characters.
fn one_line(text: &str) -> String {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("no reason given");
    if line.chars().count() <= REASON_CHARS {
        return line.to_string();
    }
    let cut: String = line.chars().take(REASON_CHARS - 1).collect();
    format!("{cut}…")
}

/// Every entry that differs, kind by kind in [`ProbeKind::ALL`] order and by name within a
/// kind. A probe missing on one side (its option does not exist there) counts as empty; a probe
/// or entry that threw on either side is listed in `failed` instead of compared.
pub fn compare(base: &ProbeSet, head: &ProbeSet) -> NixosChanges {
    let mut changes = Vec::new();
    let mut failed = Vec::new();
    let empty = BTreeMap::new();
    for kind in ProbeKind::ALL {
        let (before, after) = match (base.get(kind), head.get(kind)) {
            (None, None) => continue,
            (b, h) if b == Some(&Probe::Failed) || h == Some(&Probe::Failed) => {
                for (probe, side) in [(b, Side::Base), (h, Side::Head)] {
                    if probe == Some(&Probe::Failed) {
                        failed.push(FailedProbe { probe: kind, name: None, side });
                    }
                }
                continue;
            }
            (b, h) => (entries(b).unwrap_or(&empty), entries(h).unwrap_or(&empty)),
        };
        let names: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
        for name in names {
            let (b, a) = (before.get(name), after.get(name));
            if b == Some(&Entry::Failed) || a == Some(&Entry::Failed) {
                for (entry, side) in [(b, Side::Base), (a, Side::Head)] {
                    if entry == Some(&Entry::Failed) {
                        failed.push(FailedProbe { probe: kind, name: Some(name.clone()), side });
                    }
                }
                continue;
            }
            let value = |e: Option<&Entry>| match e {
                Some(Entry::Value(v)) if !v.is_null() => Some(v.clone()),
                _ => None,
            };
            let (before, after) = (value(b), value(a));
            if before != after {
                changes.push(ProbeChange { probe: kind, name: name.clone(), before, after });
            }
        }
    }
    let reboot_needed = changes.iter().any(|c| c.probe.needs_reboot());
    NixosChanges::Compared { reboot_needed, changes, failed }
}

fn entries(probe: Option<&Probe>) -> Option<&BTreeMap<String, Entry>> {
    match probe? {
        Probe::Entries(entries) => Some(entries),
        Probe::Failed => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// probes.nix's shape from `{kind: {entry: value}}`; `"!"` stands for a failed entry and a
    /// kind given as `"!"` for a failed probe.
    fn set(kinds: Value) -> Value {
        let wrap = |v: &Value| if v == "!" { json!({"failed": true}) } else { json!({"ok": v}) };
        let mut out = serde_json::Map::new();
        for (kind, entries) in kinds.as_object().expect("object") {
            let probe = match entries {
                Value::Object(entries) => {
                    json!({"ok": entries.iter().map(|(k, v)| (k.clone(), wrap(v))).collect::<serde_json::Map<_, _>>()})
                }
                other => wrap(other),
            };
            out.insert(kind.clone(), probe);
        }
        Value::Object(out)
    }

    fn diff(base: Value, head: Value) -> NixosChanges {
        changes_for(HeadProbes::Evaluated(&set(head)), BaseProbes::Evaluated(&set(base)))
    }

    fn change(probe: ProbeKind, name: &str, before: Option<Value>, after: Option<Value>) -> ProbeChange {
        ProbeChange { probe, name: name.into(), before, after }
    }

    #[test]
    fn kernel_changes_need_a_reboot() {
        let base = json!({"kernel": {"version": "6.6.30", "build": "/nix/store/a-linux", "initrd": "/nix/store/a-initrd"}, "kernel_params": {"quiet": true}});
        let head = json!({"kernel": {"version": "6.6.31", "build": "/nix/store/b-linux", "initrd": "/nix/store/a-initrd"}, "kernel_params": {"quiet": true, "console=ttyS0": true}});
        let NixosChanges::Compared { reboot_needed, changes, failed } = diff(base, head) else {
            panic!("compared")
        };
        assert!(reboot_needed);
        assert!(failed.is_empty());
        assert_eq!(
            changes,
            [
                change(
                    ProbeKind::Kernel,
                    "build",
                    Some(json!("/nix/store/a-linux")),
                    Some(json!("/nix/store/b-linux"))
                ),
                change(ProbeKind::Kernel, "version", Some(json!("6.6.30")), Some(json!("6.6.31"))),
                change(ProbeKind::KernelParams, "console=ttyS0", None, Some(json!(true))),
            ]
        );
    }

    #[test]
    fn release_packages_services_and_users_are_compared_by_entry() {
        let base = json!({
            "release": {"nixos": "24.05", "nixpkgs": "aaaa"},
            "packages": {"openssl": ["3.0.13"], "vim": ["9.1"], "git": ["2.44"]},
            "services": {"nginx": "/nix/store/a-unit-nginx", "gitea": "/nix/store/a-unit-gitea", "sshd": "/nix/store/a-unit-sshd"},
            "users": {"alice": ["wheel"], "bob": []}
        });
        let head = json!({
            "release": {"nixos": "24.05", "nixpkgs": "bbbb"},
            "packages": {"openssl": ["3.0.14"], "htop": ["3.3.0"], "git": ["2.44"]},
            "services": {"nginx": "/nix/store/b-unit-nginx", "grafana": "/nix/store/b-unit-grafana", "sshd": "/nix/store/a-unit-sshd"},
            "users": {"alice": ["docker", "wheel"], "deploy": ["wheel"]}
        });
        let NixosChanges::Compared { reboot_needed, changes, .. } = diff(base, head) else {
            panic!("compared")
        };
        assert!(!reboot_needed, "nothing here needs a reboot");
        let names: Vec<String> = changes.iter().map(|c| format!("{}:{}", c.probe.as_str(), c.name)).collect();
        assert_eq!(
            names,
            [
                "release:nixpkgs",
                "packages:htop",
                "packages:openssl",
                "packages:vim",
                "services:gitea",
                "services:grafana",
                "services:nginx",
                "users:alice",
                "users:bob",
                "users:deploy"
            ]
        );
        assert_eq!(changes[3], change(ProbeKind::Packages, "vim", Some(json!(["9.1"])), None));
    }

    #[test]
    fn firewall_file_systems_substituters_and_extra() {
        let base = json!({
            "firewall": {"enabled": true, "22/tcp": true, "8080/tcp": true},
            "file_systems": {"/": "/dev/sda1 (ext4)", "/mnt/old": "/dev/sdc1 (xfs)"},
            "substituters": {"https://cache.nixos.org": true},
            "extra": {"grafana port": 3000, "same": {"a": [1]}}
        });
        let head = json!({
            "firewall": {"enabled": true, "22/tcp": true, "3000/tcp": true, "60000-61000/udp": true},
            "file_systems": {"/": "/dev/sda1 (btrfs)", "/data": "label data (xfs)"},
            "substituters": {"https://cache.nixos.org": true, "https://cache.example": true},
            "extra": {"grafana port": 3001, "same": {"a": [1]}}
        });
        let NixosChanges::Compared { changes, .. } = diff(base, head) else { panic!("compared") };
        let names: Vec<String> = changes.iter().map(|c| format!("{}:{}", c.probe.as_str(), c.name)).collect();
        assert_eq!(
            names,
            [
                "firewall:3000/tcp",
                "firewall:60000-61000/udp",
                "firewall:8080/tcp",
                "file_systems:/",
                "file_systems:/data",
                "file_systems:/mnt/old",
                "substituters:https://cache.example",
                "extra:grafana port"
            ]
        );
        assert_eq!(
            changes[7],
            change(ProbeKind::Extra, "grafana port", Some(json!(3000)), Some(json!(3001)))
        );
    }

    #[test]
    fn identical_systems_have_no_changes() {
        let both = json!({"kernel": {"version": "6.6.30"}, "packages": {"htop": ["3.3.0"]}});
        assert_eq!(
            diff(both.clone(), both),
            NixosChanges::Compared { reboot_needed: false, changes: vec![], failed: vec![] }
        );
    }

    #[test]
    fn a_probe_missing_on_one_side_counts_as_empty() {
        // The base's nixprox module predates `summary.extra`: the head's entries are new.
        let NixosChanges::Compared { changes, .. } = diff(json!({}), json!({"extra": {"port": 1}})) else {
            panic!("compared")
        };
        assert_eq!(changes, [change(ProbeKind::Extra, "port", None, Some(json!(1)))]);
    }

    #[test]
    fn failed_probes_and_entries_are_named_with_their_side_and_left_out() {
        let base = json!({"kernel": "!", "extra": {"port": 1, "broken": 2}, "users": {"a": []}});
        let head =
            json!({"kernel": {"version": "6.6.31"}, "extra": {"port": 2, "broken": "!"}, "users": "!"});
        let NixosChanges::Compared { changes, failed, reboot_needed } = diff(base, head) else {
            panic!("compared")
        };
        assert!(!reboot_needed, "a kernel that cannot be compared is not called a change");
        assert_eq!(changes, [change(ProbeKind::Extra, "port", Some(json!(1)), Some(json!(2)))]);
        assert_eq!(
            failed,
            [
                FailedProbe { probe: ProbeKind::Kernel, name: None, side: Side::Base },
                FailedProbe { probe: ProbeKind::Users, name: None, side: Side::Head },
                FailedProbe { probe: ProbeKind::Extra, name: Some("broken".into()), side: Side::Head },
            ]
        );
    }

    #[test]
    fn new_hosts_and_unavailable_bases_say_so_in_one_line() {
        let head = set(json!({"kernel": {"version": "1"}}));
        assert_eq!(changes_for(HeadProbes::Evaluated(&head), BaseProbes::NotInBase), NixosChanges::NewHost);
        let reason = "error: syntax error, unexpected '}'\n       at /nix/store/x-source/flake.nix:3:1";
        assert_eq!(
            changes_for(HeadProbes::Evaluated(&head), BaseProbes::Unavailable(reason)),
            NixosChanges::Unavailable { reason: "error: syntax error, unexpected '}'".into() }
        );
        let NixosChanges::Unavailable { reason } =
            changes_for(HeadProbes::Failed(&"x".repeat(1000)), BaseProbes::Evaluated(&head))
        else {
            panic!("unavailable")
        };
        assert!(reason.starts_with("the probes failed to evaluate at the head: xxx"), "{reason}");
        assert_eq!(reason.chars().count(), REASON_CHARS);
    }

    #[test]
    fn json_shape() {
        let NixosChanges::Compared { .. } = diff(json!({}), json!({})) else { panic!("compared") };
        assert_eq!(
            serde_json::to_value(diff(
                json!({"kernel": {"version": "1"}}),
                json!({"kernel": {"version": "2"}})
            ))
            .expect("serialise"),
            json!({"state": "compared", "reboot_needed": true, "changes": [
                {"probe": "kernel", "name": "version", "before": "1", "after": "2"}
            ]})
        );
        assert_eq!(
            serde_json::to_value(NixosChanges::NewHost).expect("serialise"),
            json!({"state": "new_host"})
        );
    }
}
