//! The planner's rules for [`Hardware`]: which field changes, and when it takes effect, by
//! qemu-server's own rules (`PVE/QemuServer.pm`): `startup` is a `$fast_plug_option` (written at
//! once, also on a running VM); `vmconfig_hotplug_pending` has no hot-plug branch for `cpu`,
//! `numa`, `serialN` or `vga`, so on a running VM they wait in the pending config for the next
//! start. Field names are the module's (`cpuFlags`, `numa`, `serial`, `vga`, `startup`).

use serde_json::{Value, json};

use crate::spec::Hardware;
use crate::spec::hardware::format_flags;

use super::fields::SpecDiff;
use super::model::{Change, Effect};

/// The declared hardware as `(field, value)` for a create's changes (only what is declared).
pub fn fields(hardware: &Hardware) -> Vec<(String, Value)> {
    let mut fields = Vec::new();
    if !hardware.cpu_flags.is_empty() {
        fields.push(("cpuFlags".to_string(), json!(format_flags(&hardware.cpu_flags))));
    }
    if let Some(numa) = hardware.numa {
        fields.push(("numa".into(), json!(numa)));
    }
    if let Some(serial) = hardware.serial {
        fields.push(("serial".into(), json!(serial)));
    }
    if let Some(vga) = &hardware.vga {
        fields.push(("vga".into(), json!(vga)));
    }
    if let Some(startup) = &hardware.startup {
        fields.push(("startup".into(), json!(startup.format())));
    }
    fields
}

/// Compares the declared hardware with the live one; changes go to `out.updates`.
pub fn diff(desired: &Hardware, live: &Hardware, out: &mut SpecDiff) {
    let mut update = |field: &str, before: Value, after: Value, effect: Effect| {
        if before != after {
            out.updates.push(Change {
                field: field.to_string(),
                before: Some(before),
                after: Some(after),
                effect: Some(effect),
            });
        }
    };
    // The whole `cpu` line counts: flags are compared as a set (the type beside them is the
    // core spec's `cpuType`).
    update(
        "cpuFlags",
        json!(format_flags(&live.cpu_flags)),
        json!(format_flags(&desired.cpu_flags)),
        Effect::NeedsReboot,
    );
    if let Some(numa) = desired.numa {
        update("numa", json!(live.numa.unwrap_or(false)), json!(numa), Effect::NeedsReboot);
    }
    match (desired.serial, live.serial) {
        // A host device there (`serial0: /dev/ttyS0`) is root@pam's: nixprox neither removes
        // it nor counts it as a socket.
        (Some(false), Some(false)) | (None, _) => {}
        (Some(want), have) => {
            update("serial", json!(have == Some(true)), json!(want), Effect::NeedsReboot);
        }
    }
    if let Some(vga) = &desired.vga {
        update("vga", json!(live.vga), json!(vga), Effect::NeedsReboot);
    }
    if let Some(startup) = &desired.startup {
        let have = live.startup.clone().unwrap_or_default();
        update("startup", json!(have.format()), json!(startup.format()), Effect::Hotplug);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::spec::hardware::Startup;

    fn flags(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn changes(desired: &Hardware, live: &Hardware) -> Vec<(String, Value, Value, Effect)> {
        let mut out = SpecDiff::default();
        diff(desired, live, &mut out);
        out.updates
            .into_iter()
            .map(|c| {
                (
                    c.field,
                    c.before.unwrap_or_default(),
                    c.after.unwrap_or_default(),
                    c.effect.expect("effect"),
                )
            })
            .collect()
    }

    /// The rule table of docs/plan.md ("VM hardware"), row by row.
    #[test]
    fn each_key_changes_with_qemu_servers_effect() {
        let live = Hardware::default();
        let desired = Hardware {
            cpu_flags: flags(&["+aes"]),
            numa: Some(true),
            serial: Some(true),
            vga: Some("serial0".into()),
            startup: Some(Startup { order: Some(1), up: Some(30), down: None }),
        };
        assert_eq!(
            changes(&desired, &live),
            [
                ("cpuFlags".to_string(), json!(""), json!("+aes"), Effect::NeedsReboot),
                ("numa".into(), json!(false), json!(true), Effect::NeedsReboot),
                ("serial".into(), json!(false), json!(true), Effect::NeedsReboot),
                ("vga".into(), json!(null), json!("serial0"), Effect::NeedsReboot),
                ("startup".into(), json!(""), json!("order=1,up=30"), Effect::Hotplug),
            ]
        );
        assert!(changes(&desired, &desired).is_empty(), "the same hardware is in sync");
    }

    #[test]
    fn undeclared_keys_keep_what_proxmox_has() {
        let live = Hardware {
            numa: Some(true),
            serial: Some(true),
            vga: Some("qxl".into()),
            startup: Some(Startup::parse("order=3")),
            ..Hardware::default()
        };
        assert!(changes(&Hardware::default(), &live).is_empty());
    }

    #[test]
    fn flags_are_a_set_and_undeclared_flags_are_removed() {
        let live = Hardware { cpu_flags: flags(&["-pcid", "+aes"]), ..Hardware::default() };
        let same = Hardware { cpu_flags: flags(&["+aes", "-pcid"]), ..Hardware::default() };
        assert!(changes(&same, &live).is_empty());
        assert_eq!(
            changes(&Hardware::default(), &live),
            [("cpuFlags".to_string(), json!("+aes;-pcid"), json!(""), Effect::NeedsReboot)]
        );
    }

    #[test]
    fn a_serial_host_device_is_roots_and_left_alone() {
        let device = Hardware { serial: Some(false), ..Hardware::default() };
        let off = Hardware { serial: Some(false), ..Hardware::default() };
        assert!(changes(&off, &device).is_empty());
        let socket = Hardware { serial: Some(true), ..Hardware::default() };
        assert_eq!(
            changes(&off, &socket),
            [("serial".to_string(), json!(true), json!(false), Effect::NeedsReboot)]
        );
    }
}
