//! The config keys of [`crate::spec::Hardware`] and the whole `cpu` line: what to set and delete
//! so the raw config matches the declaration. Keys the declaration leaves `None` are not
//! touched; a `cpu` line keeps the properties nixprox does not manage (`hidden`,
//! `hv-vendor-id`, `phys-bits`, …).

use serde_json::{Map, Value};

use crate::flake::host::DesiredHost;
use crate::proxmox::property::{PropertyString, value_bool, value_text};
use crate::spec::hardware::{PciDevice, Startup, UsbDevice, VirtiofsShare, format_flags, parse_cpu};

use super::ConfigWrite;

/// Adds the hardware keys that differ to `out`.
pub fn write(host: &DesiredHost, raw: &Map<String, Value>, out: &mut ConfigWrite) {
    let text = |key: &str| raw.get(key).and_then(value_text);
    let spec = &host.spec;
    let hardware = &spec.hardware;
    let live_cpu = text("cpu");
    let (live_type, live_flags) = parse_cpu(live_cpu.as_deref().unwrap_or_default());
    if live_type != spec.cpu_type || live_flags != hardware.cpu_flags {
        out.put("cpu", cpu_line(live_cpu.as_deref(), &spec.cpu_type, &format_flags(&hardware.cpu_flags)));
    }
    if let Some(numa) = hardware.numa
        && raw.get("numa").and_then(value_bool).unwrap_or(false) != numa
    {
        out.put("numa", if numa { "1" } else { "0" });
    }
    let serial = text("serial0");
    match hardware.serial {
        Some(true) if serial.is_none() => out.put("serial0", "socket"),
        // Only a socket is nixprox's to remove; a host device is root@pam's.
        Some(false) if serial.as_deref() == Some("socket") => out.delete.push("serial0".into()),
        _ => {}
    }
    if let Some(vga) = &hardware.vga {
        let live = text("vga");
        let live_type = live
            .as_deref()
            .and_then(|v| PropertyString::parse(v).value_or_positional("type").map(str::to_string));
        if live_type.as_deref() != Some(vga.as_str()) {
            out.put("vga", replace_type(live.as_deref(), "type", vga));
        }
    }
    if let Some(tpm) = &hardware.tpm
        && !raw.contains_key("tpmstate0")
    {
        out.put("tpmstate0", tpm.create_value());
    }
    for (key, value) in &hardware.extra {
        if text(key).as_deref() != Some(value.as_str()) {
            out.put(key, value.clone());
        }
    }
    devices(raw, "hostpci", &hardware.pci, PciDevice::parse, PciDevice::format, out);
    devices(raw, "usb", &hardware.usb, UsbDevice::parse, UsbDevice::format, out);
    devices(raw, "virtiofs", &hardware.virtiofs, VirtiofsShare::parse, VirtiofsShare::format, out);
    if let Some(startup) = &hardware.startup {
        let live = text("startup").map(|s| Startup::parse(&s)).unwrap_or_default();
        if live != *startup {
            let value = startup.format();
            if value.is_empty() {
                out.delete.push("startup".into());
            } else {
                out.put("startup", value);
            }
        }
    }
}

/// Mapped devices: each declared slot set unless it holds that device already; mapped devices
/// the flake does not declare are deleted. Raw (`host=`) and SPICE devices are root@pam's and
/// never touched, also in a declared slot (Proxmox would refuse the token).
fn devices<T: PartialEq>(
    raw: &Map<String, Value>,
    prefix: &str,
    declared: &std::collections::BTreeMap<String, T>,
    parse: impl Fn(&str) -> Option<T>,
    format: impl Fn(&T) -> String,
    out: &mut ConfigWrite,
) {
    for (slot, device) in declared {
        match raw.get(slot).and_then(value_text) {
            None => out.put(slot, format(device)),
            Some(live) => match parse(&live) {
                Some(have) if have == *device => {}
                Some(_) => out.put(slot, format(device)),
                None => {}
            },
        }
    }
    for (key, value) in raw {
        let numbered =
            key.strip_prefix(prefix).is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if numbered && !declared.contains_key(key) && value_text(value).and_then(|v| parse(&v)).is_some() {
            out.delete.push(key.clone());
        }
    }
}

/// The `cpu` line with this type and flags, keeping the live line's other properties.
fn cpu_line(live: Option<&str>, cpu_type: &str, flags: &str) -> String {
    let mut parts = vec![cpu_type.to_string()];
    if !flags.is_empty() {
        parts.push(format!("flags={flags}"));
    }
    parts.extend(others(live, &["cputype", "flags"]));
    parts.join(",")
}

/// A property string with its positional or `key=` type replaced, the rest kept.
fn replace_type(live: Option<&str>, key: &str, value: &str) -> String {
    let mut parts = vec![value.to_string()];
    parts.extend(others(live, &[key]));
    parts.join(",")
}

/// The `key=value` parts of `live` whose key is not in `skip` (the positional part dropped).
fn others(live: Option<&str>, skip: &[&str]) -> Vec<String> {
    live.unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|part| part.split_once('=').is_some_and(|(k, _)| !skip.contains(&k.trim())))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lines_keep_what_nixprox_does_not_manage() {
        assert_eq!(cpu_line(Some("kvm64,hidden=1,flags=+pcid"), "host", "+aes"), "host,flags=+aes,hidden=1");
        assert_eq!(cpu_line(Some("cputype=host,flags=+aes"), "host", ""), "host");
        assert_eq!(cpu_line(None, "x86-64-v2-AES", ""), "x86-64-v2-AES");
        assert_eq!(replace_type(Some("type=std,memory=32"), "type", "serial0"), "serial0,memory=32");
        assert_eq!(replace_type(Some("qxl"), "type", "serial0"), "serial0");
    }
}
