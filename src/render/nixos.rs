//! A host's NixOS changes as one compact line, the same in text and Markdown:
//! `kernel 6.6.30 → 6.6.31 (reboot needed) · packages +htop 3.3.0, openssl 3.0.13 → 3.0.14 ·
//! services +grafana, ~nginx (unit changed), −gitea · firewall +3000/tcp · users +deploy (wheel)`.
//!
//! Every kind lists at most [`MAX_PER_KIND`] entries and counts the rest (a nixpkgs bump changes
//! hundreds of versions); the JSON plan has them all.

use serde_json::Value;

use crate::nixos_changes::{FailedProbe, NixosChanges, ProbeChange, ProbeKind, Side};

use super::values::value_text;

/// Entries shown per kind before "… N more".
pub const MAX_PER_KIND: usize = 10;

/// The line for one host.
pub fn summary_line(changes: &NixosChanges) -> String {
    match changes {
        NixosChanges::NewHost => "new host: the base has no configuration of this name".into(),
        NixosChanges::Unavailable { reason } => format!("not compared: {reason}"),
        NixosChanges::Compared { changes, failed, .. } => {
            let mut segments: Vec<String> = Vec::new();
            let of = |kind: ProbeKind| changes.iter().filter(move |c| c.probe == kind);
            segments.extend(release(of(ProbeKind::Release)));
            segments.extend(kernel(changes));
            for (kind, label) in [
                (ProbeKind::Packages, "packages"),
                (ProbeKind::Services, "services"),
                (ProbeKind::Firewall, "firewall"),
                (ProbeKind::Users, "users"),
                (ProbeKind::FileSystems, "file systems"),
                (ProbeKind::Substituters, "substituters"),
            ] {
                // Added first, then changed, then removed; by name within each.
                let mut entries: Vec<&ProbeChange> = of(kind).collect();
                entries
                    .sort_by_key(|c| (u8::from(c.before.is_some()) + u8::from(c.after.is_none()), &c.name));
                let items = listed(entries.into_iter().filter_map(|c| item(kind, c)).collect());
                if !items.is_empty() {
                    segments.push(format!("{label} {items}"));
                }
            }
            let extra = listed(of(ProbeKind::Extra).map(extra_item).collect());
            if !extra.is_empty() {
                segments.push(extra);
            }
            if !failed.is_empty() {
                let names: Vec<String> = failed.iter().map(failed_name).collect();
                segments.push(format!("could not evaluate {}", listed(names)));
            }
            if segments.is_empty() { "no probed option changed".into() } else { segments.join(" · ") }
        }
    }
}

/// `a, b, c`, or the first [`MAX_PER_KIND`] and `… N more`.
fn listed(items: Vec<String>) -> String {
    if items.len() <= MAX_PER_KIND {
        return items.join(", ");
    }
    let more = items.len() - MAX_PER_KIND;
    format!("{}, … {more} more", items[..MAX_PER_KIND].join(", "))
}

/// A value for reading: strings bare, version lists joined with `/`, absent as `none`.
fn text(value: Option<&Value>) -> String {
    match value {
        None => "none".into(),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
            items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("/")
        }
        Some(value) => value_text(value),
    }
}

fn arrow(change: &ProbeChange) -> String {
    format!("{} → {}", text(change.before.as_ref()), text(change.after.as_ref()))
}

/// A nixpkgs revision is a 40-digit hash: seven say which.
fn revision(value: Option<&Value>) -> String {
    match value.and_then(Value::as_str) {
        Some(rev) if rev.len() > 12 && rev.chars().all(|c| c.is_ascii_hexdigit()) => rev[..7].to_string(),
        _ => text(value),
    }
}

fn release<'a>(changes: impl Iterator<Item = &'a ProbeChange>) -> Vec<String> {
    changes
        .map(|c| match c.name.as_str() {
            "nixos" => format!("NixOS {}", arrow(c)),
            "nixpkgs" => format!("nixpkgs {} → {}", revision(c.before.as_ref()), revision(c.after.as_ref())),
            other => format!("{other} {}", arrow(c)),
        })
        .collect()
}

/// Kernel, its parameters and the initrd in one segment, ending in `(reboot needed)`.
fn kernel(changes: &[ProbeChange]) -> Option<String> {
    let entry = |name: &str| changes.iter().find(|c| c.probe == ProbeKind::Kernel && c.name == name);
    let mut parts = Vec::new();
    if let Some(version) = entry("version") {
        parts.push(format!("kernel {}", arrow(version)));
    } else if let Some(build) = entry("build") {
        // Same version, another build (patches, configuration).
        parts.push(match (&build.before, &build.after) {
            (Some(_), Some(_)) => "kernel rebuilt".to_string(),
            (None, _) => "kernel added".to_string(),
            (_, None) => "kernel removed".to_string(),
        });
    }
    let params: Vec<String> = changes
        .iter()
        .filter(|c| c.probe == ProbeKind::KernelParams)
        .map(|c| if c.after.is_some() { format!("+{}", c.name) } else { format!("−{}", c.name) })
        .collect();
    if !params.is_empty() {
        let label = if parts.is_empty() { "kernel params" } else { "params" };
        parts.push(format!("{label} {}", params.join(" ")));
    }
    if let Some(initrd) = entry("initrd") {
        parts.push(match (&initrd.before, &initrd.after) {
            (Some(_), Some(_)) => "initrd changed".to_string(),
            (None, _) => "initrd added".to_string(),
            (_, None) => "initrd removed".to_string(),
        });
    }
    (!parts.is_empty()).then(|| format!("{} (reboot needed)", parts.join(", ")))
}

/// One entry of a listed kind: `+added`, `changed`, `−removed`.
fn item(kind: ProbeKind, change: &ProbeChange) -> Option<String> {
    let name = &change.name;
    let added = change.before.is_none();
    let removed = change.after.is_none();
    Some(match kind {
        ProbeKind::Packages => {
            let versions = |v: Option<&Value>| {
                let t = text(v);
                if t.is_empty() { String::new() } else { format!(" {t}") }
            };
            if added {
                format!("+{name}{}", versions(change.after.as_ref()))
            } else if removed {
                format!("−{name}")
            } else {
                format!("{name} {}", arrow(change))
            }
        }
        ProbeKind::Services if !added && !removed => format!("~{name} (unit changed)"),
        ProbeKind::Firewall if name == "enabled" => match (&change.before, &change.after) {
            // Without a firewall option on one side there is nothing to switch on or off.
            (Some(_), Some(Value::Bool(true))) => "turned on".into(),
            (Some(_), Some(_)) => "turned off".into(),
            _ => return None,
        },
        ProbeKind::Users => {
            let groups = |v: Option<&Value>| {
                let names: Vec<&str> =
                    v.and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
                if names.is_empty() { "no admin group".to_string() } else { names.join(", ") }
            };
            let has_groups = change.after.as_ref().and_then(Value::as_array).is_some_and(|g| !g.is_empty());
            if added && has_groups {
                format!("+{name} ({})", groups(change.after.as_ref()))
            } else if added {
                format!("+{name}")
            } else if removed {
                format!("−{name}")
            } else {
                format!("~{name} ({} → {})", groups(change.before.as_ref()), groups(change.after.as_ref()))
            }
        }
        ProbeKind::FileSystems if !added && !removed => format!("~{name} ({})", arrow(change)),
        _ if added => format!("+{name}"),
        _ if removed => format!("−{name}"),
        _ => format!("~{name}"),
    })
}

/// A user probe: `grafana port 3000 → 3001`.
fn extra_item(change: &ProbeChange) -> String {
    format!("{} {}", change.name, arrow(change))
}

fn failed_name(failed: &FailedProbe) -> String {
    let side = match failed.side {
        Side::Base => "base",
        Side::Head => "head",
    };
    match &failed.name {
        Some(name) => format!("{} `{name}` ({side})", failed.probe.as_str()),
        None => format!("{} ({side})", failed.probe.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn change(probe: ProbeKind, name: &str, before: Option<Value>, after: Option<Value>) -> ProbeChange {
        ProbeChange { probe, name: name.into(), before, after }
    }

    fn line(changes: Vec<ProbeChange>, failed: Vec<FailedProbe>) -> String {
        let reboot_needed = changes.iter().any(|c| c.probe.needs_reboot());
        summary_line(&NixosChanges::Compared { reboot_needed, changes, failed })
    }

    #[test]
    fn the_issue_example() {
        use ProbeKind::*;
        let text = line(
            vec![
                change(Kernel, "build", Some(json!("/nix/store/a")), Some(json!("/nix/store/b"))),
                change(Kernel, "version", Some(json!("6.6.30")), Some(json!("6.6.31"))),
                change(Packages, "htop", None, Some(json!(["3.3.0"]))),
                change(Packages, "openssl", Some(json!(["3.0.13"])), Some(json!(["3.0.14"]))),
                change(Services, "gitea", Some(json!("/nix/store/u1")), None),
                change(Services, "grafana", None, Some(json!("/nix/store/u2"))),
                change(Services, "nginx", Some(json!("/nix/store/u3")), Some(json!("/nix/store/u4"))),
                change(Firewall, "3000/tcp", None, Some(json!(true))),
                change(Users, "deploy", None, Some(json!(["wheel"]))),
            ],
            vec![],
        );
        assert_eq!(
            text,
            "kernel 6.6.30 → 6.6.31 (reboot needed) · packages +htop 3.3.0, openssl 3.0.13 → 3.0.14 · \
             services +grafana, ~nginx (unit changed), −gitea · firewall +3000/tcp · users +deploy (wheel)"
        );
    }

    #[test]
    fn release_and_revision() {
        let text = line(
            vec![
                change(ProbeKind::Release, "nixos", Some(json!("24.05")), Some(json!("24.11"))),
                change(
                    ProbeKind::Release,
                    "nixpkgs",
                    Some(json!("0123456789abcdef0123456789abcdef01234567")),
                    Some(json!("fedcba9876543210fedcba9876543210fedcba98")),
                ),
            ],
            vec![],
        );
        assert_eq!(text, "NixOS 24.05 → 24.11 · nixpkgs 0123456 → fedcba9");
    }

    #[test]
    fn kernel_params_rebuilds_and_initrd() {
        use ProbeKind::*;
        let params = line(
            vec![
                change(KernelParams, "console=ttyS0", None, Some(json!(true))),
                change(KernelParams, "splash", Some(json!(true)), None),
            ],
            vec![],
        );
        assert_eq!(params, "kernel params +console=ttyS0 −splash (reboot needed)");
        let rebuilt = line(
            vec![
                change(Kernel, "build", Some(json!("/nix/store/a")), Some(json!("/nix/store/b"))),
                change(Kernel, "initrd", Some(json!("/nix/store/c")), Some(json!("/nix/store/d"))),
            ],
            vec![],
        );
        assert_eq!(rebuilt, "kernel rebuilt, initrd changed (reboot needed)");
        let initrd = line(
            vec![change(Kernel, "initrd", Some(json!("/nix/store/c")), Some(json!("/nix/store/d")))],
            vec![],
        );
        assert_eq!(initrd, "initrd changed (reboot needed)");
    }

    #[test]
    fn firewall_users_file_systems_substituters_and_extra() {
        use ProbeKind::*;
        let text = line(
            vec![
                change(Firewall, "22/tcp", Some(json!(true)), None),
                change(Firewall, "60000-61000/udp", None, Some(json!(true))),
                change(Firewall, "enabled", Some(json!(true)), Some(json!(false))),
                change(Firewall, "trusted wg0", None, Some(json!(true))),
                change(Users, "alice", Some(json!(["wheel"])), Some(json!(["docker", "wheel"]))),
                change(Users, "bob", Some(json!([])), None),
                change(Users, "carol", None, Some(json!([]))),
                change(Users, "dave", Some(json!(["wheel"])), Some(json!([]))),
                change(FileSystems, "/", Some(json!("/dev/sda1 (ext4)")), Some(json!("/dev/sda1 (btrfs)"))),
                change(FileSystems, "/data", None, Some(json!("label data (xfs)"))),
                change(Substituters, "https://cache.example", None, Some(json!(true))),
                change(Extra, "grafana port", Some(json!(3000)), Some(json!(3001))),
                change(Extra, "motd", None, Some(json!("hello"))),
            ],
            vec![],
        );
        assert_eq!(
            text,
            "firewall +60000-61000/udp, +trusted wg0, turned off, −22/tcp · \
             users +carol, ~alice (wheel → docker, wheel), ~dave (wheel → no admin group), −bob · \
             file systems +/data, ~/ (/dev/sda1 (ext4) → /dev/sda1 (btrfs)) · \
             substituters +https://cache.example · grafana port 3000 → 3001, motd none → hello"
        );
    }

    #[test]
    fn long_lists_are_cut_and_counted() {
        let changes = (0..25)
            .map(|i| change(ProbeKind::Packages, &format!("p{i:02}"), Some(json!(["1"])), Some(json!(["2"]))))
            .collect();
        let text = line(changes, vec![]);
        assert!(text.starts_with("packages p00 1 → 2, p01 1 → 2,"), "{text}");
        assert!(text.ends_with("p09 1 → 2, … 15 more"), "{text}");
    }

    #[test]
    fn nothing_changed_new_host_unavailable_and_failures() {
        assert_eq!(line(vec![], vec![]), "no probed option changed");
        assert_eq!(
            summary_line(&NixosChanges::NewHost),
            "new host: the base has no configuration of this name"
        );
        assert_eq!(
            summary_line(&NixosChanges::Unavailable { reason: "base commit `abc` is missing".into() }),
            "not compared: base commit `abc` is missing"
        );
        let failed = vec![
            FailedProbe { probe: ProbeKind::Kernel, name: None, side: Side::Base },
            FailedProbe { probe: ProbeKind::Extra, name: Some("grafana port".into()), side: Side::Head },
        ];
        assert_eq!(line(vec![], failed), "could not evaluate kernel (base), extra `grafana port` (head)");
    }
}
