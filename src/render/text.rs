//! The terminal rendering: a summary line, then one section per host with a diff of what
//! changes. Colour only when the caller says so (a TTY without `NO_COLOR`).

use std::fmt::Write;

use crate::plan::{Action, ActionKind, Plan};

use super::values::diff_lines;
use super::{guest_label, summary_line};

/// Rendering options.
#[derive(Debug, Clone, Copy, Default)]
pub struct TextOptions {
    pub color: bool,
}

struct Paint {
    on: bool,
}

impl Paint {
    fn wrap(&self, code: &str, text: &str) -> String {
        if self.on { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_string() }
    }
    fn bold(&self, text: &str) -> String {
        self.wrap("1", text)
    }
    fn kind(&self, action: &Action) -> String {
        let code = match action.kind {
            _ if action.blocked.is_some() => "2",
            ActionKind::UploadImage | ActionKind::CreateVm | ActionKind::Install | ActionKind::Adopt => "32",
            ActionKind::DestroyVm
            | ActionKind::ReplaceVm
            | ActionKind::Reinstall
            | ActionKind::DetachDisk => "31",
            _ => "33",
        };
        self.wrap(code, action.kind.as_str())
    }
}

fn sign(action: &Action) -> char {
    match action.kind {
        _ if action.blocked.is_some() => '!',
        ActionKind::UploadImage | ActionKind::CreateVm | ActionKind::Install | ActionKind::Adopt => '+',
        ActionKind::DestroyVm => '-',
        ActionKind::ReplaceVm | ActionKind::Reinstall | ActionKind::DetachDisk => '±',
        _ => '~',
    }
}

/// Renders the plan for a terminal.
pub fn render(plan: &Plan, options: TextOptions) -> String {
    let paint = Paint { on: options.color };
    let mut out = String::new();
    let _ = writeln!(out, "{} {}", paint.bold(&format!("Plan {}:", plan.plan_id)), summary_line(plan));
    let mut unchanged = Vec::new();
    for host in &plan.hosts {
        if !host.has_changes() {
            unchanged.push(host.host.as_str());
            continue;
        }
        let orphan = if host.orphan { " (orphan)" } else { "" };
        let _ = writeln!(out, "\n{} ({}){orphan}", paint.bold(&host.host), guest_label(host));
        if let Some(changes) = &host.nixos_changes {
            let _ = writeln!(out, "  NixOS: {}", super::nixos::summary_line(changes));
        }
        for action in &host.actions {
            let _ = writeln!(out, "  {} {}: {}", sign(action), paint.kind(action), action.reason);
            if let Some(blocked) = &action.blocked {
                let allow = match &blocked.setting {
                    Some(setting) => format!(" (set `{setting}: true` in nixprox.yaml to allow)"),
                    None => String::new(),
                };
                let _ = writeln!(
                    out,
                    "      {}",
                    paint.wrap("2", &format!("blocked: {}{allow}", blocked.reason))
                );
            }
            for (sign, line) in diff_lines(action) {
                let text = format!("      {sign} {line}");
                let code = match sign {
                    '-' => "31",
                    '+' => "32",
                    _ => "2",
                };
                let _ = writeln!(out, "{}", paint.wrap(code, &text));
            }
        }
    }
    if !unchanged.is_empty() {
        let _ = writeln!(out, "\nUnchanged: {}", unchanged.join(", "));
    }
    if !plan.unreferenced_images.is_empty() {
        let _ = writeln!(out, "\nImage files no host refers to (`nixprox gc-images --delete` removes them):");
        for file in &plan.unreferenced_images {
            let _ = writeln!(out, "  {file}");
        }
    }
    if let Some(probe) = &plan.probe {
        let _ = writeln!(out, "\n{}", paint.bold(&format!("Probe: {} hosts asked over SSH", probe.probed)));
        for host in plan.hosts.iter().filter(|h| h.drift.is_some()) {
            if let Some(drift) = &host.drift {
                let _ = writeln!(out, "  changed outside nixprox: {}", host.host);
                let _ =
                    writeln!(out, "      recorded: {}\n      running:  {}", drift.recorded, drift.running);
            }
        }
        for unreachable in &probe.unreachable {
            let _ = writeln!(out, "  unreachable: {}: {}", unreachable.host, unreachable.reason);
        }
        if probe.changed.is_empty() && probe.unreachable.is_empty() {
            let _ = writeln!(out, "  every probed host runs its recorded system");
        }
    }
    out
}
