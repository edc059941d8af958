//! The [`Hardware`] part of a live config: the whole `cpu` line (type and flags), `numa`,
//! `serial0`, `vga` and `startup`, each reduced as the declared side is.

use serde_json::{Map, Value};

use crate::proxmox::property::{PropertyString, value_bool, value_text};
use crate::spec::Hardware;
use crate::spec::hardware::{Startup, parse_cpu};

/// The CPU type (qemu-server's default `kvm64` when `cpu` is absent) and the hardware.
pub fn hardware_of(config: &Map<String, Value>) -> (String, Hardware) {
    let text = |key: &str| config.get(key).and_then(value_text);
    let (cpu_type, cpu_flags) = parse_cpu(&text("cpu").unwrap_or_default());
    let hardware = Hardware {
        cpu_flags,
        numa: config.get("numa").and_then(value_bool),
        serial: text("serial0").map(|s| s == "socket"),
        // `vga: serial0` or `vga: type=std,memory=32`.
        vga: text("vga")
            .and_then(|v| PropertyString::parse(&v).value_or_positional("type").map(str::to_string)),
        startup: text("startup").map(|s| Startup::parse(&s)),
    };
    (cpu_type, hardware)
}
