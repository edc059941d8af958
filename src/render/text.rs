//! The terminal rendering: a summary line, then one section per host with a diff of what
//! changes. Colour only when the caller says so (a TTY without `NO_COLOR`).

use std::fmt::Write;

use crate::plan::{Action, ActionKind, Plan};

use super::values::{change_lines, diff_lines};
use super::{guest_label, pending_keys_line, summary_line};

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
            if host.is_unchanged() {
                unchanged.push(host.host.as_str());
            }
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
                    // A host's own gate (`nixprox.allow.*`) is a module option, not a setting.
                    Some(setting) if setting.starts_with("nixprox.") => {
                        format!(" (set `{setting} = true` in the host's module to allow)")
                    }
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
    pending_section(&mut out, plan, &paint);
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

/// "Waiting for a reboot": hosts whose VM has changes Proxmox holds as pending, with what
/// the VM runs against what it will run, and how to make it take effect. A state, not an
/// action: apply does not write them again.
fn pending_section(out: &mut String, plan: &Plan, paint: &Paint) {
    let waiting: Vec<_> = plan.hosts.iter().filter(|h| h.pending_reboot.is_some()).collect();
    if waiting.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n{}",
        paint.bold("Waiting for a reboot (pending in Proxmox, not yet in the running VM):")
    );
    for host in waiting {
        let Some(pending) = &host.pending_reboot else { continue };
        let _ = writeln!(out, "  {} ({})", host.host, guest_label(host));
        if pending.changes.is_empty() {
            let _ = writeln!(out, "      {}", pending_keys_line(pending));
        }
        for (sign, line) in change_lines(&pending.changes) {
            let code = match sign {
                '-' => "31",
                '+' => "32",
                _ => "2",
            };
            let _ = writeln!(out, "{}", paint.wrap(code, &format!("      {sign} {line}")));
        }
        let _ = writeln!(out, "      {}", pending.how);
    }
}
