//! The Markdown rendering: the body of the sticky PR comment and of the job summary.
//!
//! A comment must stay within the forge's 65,536-character limit. Instead of cutting text
//! (which could break a code fence or a `<details>` block), the renderer produces the whole
//! body at decreasing levels of detail and keeps the first that fits: every level is complete,
//! well-formed Markdown on its own.

use std::fmt::Write;

use crate::plan::{ActionKind, HostPlan, Plan};

use super::values::{change_lines, diff_lines};
use super::{guest_label, pending_keys_line, summary_line};
use crate::text::markdown::{code, escape, fence_line, quoted};

/// GitHub's and Forgejo's comment body limit, in characters.
pub const COMMENT_LIMIT: usize = 65_536;
/// Room kept for the hidden marker the forge layer prepends.
const MARKER_RESERVE: usize = 512;

/// What the comment shows besides the plan.
#[derive(Debug, Clone, Default)]
pub struct MarkdownContext {
    /// Heading suffix when a repository has several flakes or settings files.
    pub title: Option<String>,
    /// The commit that was planned (head SHA of the PR).
    pub commit: Option<String>,
    /// When it was planned, already formatted (`2026-11-25 18:00 UTC`).
    pub planned_at: Option<String>,
    /// Where the full plan can be read when a rendering is trimmed, as Markdown: "the [job
    /// summary](…)" on GitHub, "the log of [the run](…)" on Forgejo (which shows job summaries
    /// only in the log).
    pub full_plan: Option<String>,
}

/// How much a rendering shows; each level drops more than the one before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Detail {
    /// Every changed host with its NixOS changes and diffs, and the names of unchanged hosts.
    Full,
    /// As `Full`, without the hosts' NixOS changes (the first detail to go: the job summary
    /// has them, and a nixpkgs bump makes them long).
    NoNixosChanges,
    /// As `Full`, without the list of unchanged hosts.
    NoUnchanged,
    /// Changed hosts with their actions and reasons, no diffs.
    NoDiffs,
    /// One line per changed host.
    ListOnly,
    /// The summary table only.
    CountsOnly,
}

impl Detail {
    /// What a rendering at this level leaves out, for the note that says so.
    pub fn left_out(self) -> &'static str {
        match self {
            Detail::Full => "nothing",
            Detail::NoNixosChanges => "the NixOS changes of each host",
            Detail::NoUnchanged => "the NixOS changes of each host and the list of unchanged hosts",
            Detail::NoDiffs => {
                "the NixOS changes and field-by-field diffs of each host, and the list of unchanged hosts"
            }
            Detail::ListOnly => {
                "the reasons, diffs, NixOS changes and probe details of each host, and the list of unchanged hosts"
            }
            Detail::CountsOnly => "every host (only the counts are shown)",
        }
    }
}

/// The note a trimmed rendering ends with, up to what it left out.
pub const TRIMMED_NOTE: &str = "_Details trimmed to fit the size limit (left out: ";

/// The level a rendering was made at, read from its trimmed note (none: [`Detail::Full`]);
/// `None` when the note names no level nixprox writes.
pub fn level_of(body: &str) -> Option<Detail> {
    let Some(start) = body.rfind(TRIMMED_NOTE) else { return Some(Detail::Full) };
    let rest = &body[start + TRIMMED_NOTE.len()..];
    LEVELS.into_iter().skip(1).find(|level| rest.starts_with(&format!("{})", level.left_out())))
}

/// Every level, richest first: the order [`render_within`] tries them in.
pub const LEVELS: [Detail; 6] = [
    Detail::Full,
    Detail::NoNixosChanges,
    Detail::NoUnchanged,
    Detail::NoDiffs,
    Detail::ListOnly,
    Detail::CountsOnly,
];

/// Renders the richest body that fits `limit` characters (use [`COMMENT_LIMIT`] for comments,
/// `usize::MAX` for the job summary). Returns the body and the level used.
pub fn render_within(plan: &Plan, context: &MarkdownContext, limit: usize) -> (String, Detail) {
    let budget = limit.saturating_sub(MARKER_RESERVE);
    render_fitting(plan, context, |body| body.chars().count() <= budget)
}

/// Renders the richest body of at most `max_bytes` bytes (the job summary's limit is in bytes:
/// GitHub drops a step's summary over 1 MiB).
pub fn render_within_bytes(plan: &Plan, context: &MarkdownContext, max_bytes: usize) -> (String, Detail) {
    render_fitting(plan, context, |body| body.len() <= max_bytes)
}

fn render_fitting(plan: &Plan, context: &MarkdownContext, fits: impl Fn(&str) -> bool) -> (String, Detail) {
    let mut last = (String::new(), Detail::CountsOnly);
    for level in LEVELS {
        let body = render_at(plan, context, level);
        if fits(&body) {
            return (body, level);
        }
        last = (body, level);
    }
    // Counts only is a few hundred characters; it cannot exceed any sane budget.
    last
}

/// Renders the full body (for the job summary, which has no practical limit).
pub fn render(plan: &Plan, context: &MarkdownContext) -> String {
    render_at(plan, context, Detail::Full)
}

/// Renders at one level of detail.
pub fn render_at(plan: &Plan, context: &MarkdownContext, level: Detail) -> String {
    let mut out = String::new();
    let title = context.title.as_deref().map(|t| format!(" — {}", code(t))).unwrap_or_default();
    let _ = writeln!(out, "### nixprox plan{title}\n");
    banner(&mut out, plan, level);
    let mut about = format!("**{}**", summary_line(plan));
    let mut origin = Vec::new();
    if let Some(commit) = &context.commit {
        origin.push(format!("planned at commit {}", code(short(commit))));
    }
    if let Some(at) = &context.planned_at {
        origin.push(format!("on {at}"));
    }
    origin.push(format!("plan id {}", code(&plan.plan_id)));
    about.push_str(&format!("\n\n<sub>{}</sub>\n", origin.join(" · ")));
    let _ = writeln!(out, "{about}");
    counts_table(&mut out, plan);
    let changed: Vec<&HostPlan> = plan.hosts.iter().filter(|h| h.has_changes()).collect();
    for host in &changed {
        out.push_str(&host_block(host, level));
    }
    if level == Detail::ListOnly {
        out.push('\n');
    }
    pending_section(&mut out, plan, level);
    probe_section(&mut out, plan, level);
    if !plan.unreferenced_images.is_empty() {
        let _ = writeln!(
            out,
            "{} image file(s) on the image storages no host refers to any more: `nixprox gc-images --delete` removes them.\n",
            plan.unreferenced_images.len()
        );
    }
    let unchanged: Vec<&str> =
        plan.hosts.iter().filter(|h| h.is_unchanged()).map(|h| h.host.as_str()).collect();
    if level <= Detail::NoNixosChanges && !unchanged.is_empty() {
        let names: Vec<String> = unchanged.iter().map(|n| code(n)).collect();
        let _ = writeln!(out, "Unchanged: {}\n", names.join(", "));
    }
    if level > Detail::Full {
        let _ = write!(out, "{TRIMMED_NOTE}{})", level.left_out());
        match &context.full_plan {
            Some(full_plan) => {
                let _ = writeln!(out, "; the full plan is in {full_plan}._");
            }
            None => {
                let _ = writeln!(out, "; run `nixprox plan` for the full plan._");
            }
        }
    }
    out
}

/// What the comment shows of one changed host at `level`: its `<details>` block (down to
/// [`Detail::NoDiffs`]), its list line ([`Detail::ListOnly`]), or nothing. Apply looks for it,
/// verbatim, in the reviewed comment.
pub fn host_block(host: &HostPlan, level: Detail) -> String {
    let mut out = String::new();
    match level {
        Detail::Full | Detail::NoNixosChanges | Detail::NoUnchanged | Detail::NoDiffs => {
            host_details(&mut out, host, level == Detail::Full, level != Detail::NoDiffs);
        }
        Detail::ListOnly => {
            let kinds: Vec<String> = host.actions.iter().map(action_label).collect();
            let _ = writeln!(
                out,
                "- {} ({}): {}",
                code(&host.host),
                escape(&guest_label(host)),
                kinds.join(", ")
            );
        }
        Detail::CountsOnly => {}
    }
    out
}

/// The first line of a host's block at `level` (its `<summary>` or its list line), or `None`
/// at [`Detail::CountsOnly`]; a host apply resumes must show up under it.
pub fn host_heading(host: &str, level: Detail) -> Option<String> {
    match level {
        Detail::Full | Detail::NoNixosChanges | Detail::NoUnchanged | Detail::NoDiffs => {
            Some(format!("<details><summary><b>{}</b> (", escape(host)))
        }
        Detail::ListOnly => Some(format!("- {} (", code(host))),
        Detail::CountsOnly => None,
    }
}

/// The banner's line for one runnable destructive action (shown down to [`Detail::NoDiffs`]).
pub fn banner_line(host: &str, kind: ActionKind) -> String {
    format!("> - {}: `{}` — **will run**", code(host), kind.as_str())
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

fn action_label(action: &crate::plan::Action) -> String {
    if action.blocked.is_some() {
        format!("{} (blocked)", action.kind.as_str())
    } else {
        action.kind.as_str().to_string()
    }
}

fn banner(out: &mut String, plan: &Plan, level: Detail) {
    if !plan.has_destructive() {
        return;
    }
    let destructive: Vec<(&HostPlan, &crate::plan::Action)> = plan
        .hosts
        .iter()
        .flat_map(|h| h.actions.iter().map(move |a| (h, a)))
        .filter(|(_, a)| a.kind.is_destructive())
        .collect();
    let runnable = destructive.iter().filter(|(_, a)| a.blocked.is_none()).count();
    let blocked = destructive.len() - runnable;
    let _ = writeln!(
        out,
        "> [!CAUTION]\n> 🛑 **Destructive changes:** {runnable} will run on merge, {blocked} blocked by policy or protection."
    );
    if level < Detail::ListOnly {
        for (host, action) in destructive {
            let state = match &action.blocked {
                None => "**will run**".to_string(),
                Some(b) => match &b.setting {
                    Some(setting) => format!("blocked (needs `{setting}`)"),
                    None => "blocked".to_string(),
                },
            };
            let _ = writeln!(out, "> - {}: `{}` — {state}", code(&host.host), action.kind.as_str());
        }
    }
    out.push('\n');
}

/// The paragraph under "Waiting for a reboot" (apply's comment check knows it by this text).
pub const PENDING_NOTE: &str = "Proxmox holds these changes as pending: the VM still runs the old values. Apply does not write them again.";

/// "Waiting for a reboot": changes Proxmox holds as pending for a running VM (a state, not an
/// action), each host with its diff and how to make it take effect; one line per host when the
/// comment is trimmed to a list.
fn pending_section(out: &mut String, plan: &Plan, level: Detail) {
    let waiting: Vec<&HostPlan> = plan.hosts.iter().filter(|h| h.pending_reboot.is_some()).collect();
    if waiting.is_empty() || level == Detail::CountsOnly {
        return;
    }
    let _ = writeln!(out, "#### Waiting for a reboot\n\n{PENDING_NOTE}\n");
    for host in waiting {
        let Some(pending) = &host.pending_reboot else { continue };
        if level >= Detail::ListOnly {
            let _ = writeln!(
                out,
                "- {} ({}): {}",
                code(&host.host),
                escape(&guest_label(host)),
                escape(&pending.keys.join(", "))
            );
            continue;
        }
        let _ = writeln!(
            out,
            "- {} ({}): {}",
            code(&host.host),
            escape(&guest_label(host)),
            quoted(&pending.how)
        );
        if pending.changes.is_empty() {
            let _ = writeln!(out, "  - {}", quoted(&pending_keys_line(pending)));
        } else if level != Detail::NoDiffs {
            out.push_str("\n  ```diff\n");
            for (sign, line) in change_lines(&pending.changes) {
                let _ = writeln!(out, "  {sign} {}", fence_line(&line));
            }
            out.push_str("  ```\n");
        }
    }
    out.push('\n');
}

/// "Changed outside nixprox": what `--probe` found, in a section of its own.
fn probe_section(out: &mut String, plan: &Plan, level: Detail) {
    let Some(probe) = &plan.probe else { return };
    let _ = writeln!(
        out,
        "#### Changed outside nixprox\n\n{} hosts probed over SSH: {} changed, {} unreachable.\n",
        probe.probed,
        probe.changed.len(),
        probe.unreachable.len()
    );
    if level >= Detail::ListOnly {
        return;
    }
    let drifted: Vec<&HostPlan> = plan.hosts.iter().filter(|h| h.drift.is_some()).collect();
    if !drifted.is_empty() {
        let _ = writeln!(out, "| host | recorded | running |\n| --- | --- | --- |");
        for host in drifted {
            if let Some(drift) = &host.drift {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} |",
                    code(&host.host),
                    code(&drift.recorded),
                    code(&drift.running)
                );
            }
        }
        out.push('\n');
    }
    for unreachable in &probe.unreachable {
        let _ =
            writeln!(out, "- {} did not answer: {}", code(&unreachable.host), quoted(&unreachable.reason));
    }
    if !probe.unreachable.is_empty() {
        out.push('\n');
    }
}

fn counts_table(out: &mut String, plan: &Plan) {
    let _ = writeln!(out, "| action | hosts |\n| --- | ---: |");
    for kind in ActionKind::ALL {
        let count = plan.summary.count(kind);
        if count > 0 {
            let _ = writeln!(out, "| `{}` | {count} |", kind.as_str());
        }
    }
    if plan.summary.blocked > 0 {
        let _ = writeln!(out, "| blocked | {} |", plan.summary.blocked);
    }
    if plan.summary.orphans > 0 {
        let _ = writeln!(out, "| orphan VMs | {} |", plan.summary.orphans);
    }
    out.push('\n');
}

fn host_details(out: &mut String, host: &HostPlan, nixos: bool, diffs: bool) {
    let kinds: Vec<String> = host.actions.iter().map(action_label).collect();
    let orphan = if host.orphan { ", orphan" } else { "" };
    let _ = writeln!(
        out,
        "<details><summary><b>{}</b> ({}{orphan}): {}</summary>\n",
        escape(&host.host),
        escape(&guest_label(host)),
        kinds.join(", ")
    );
    if let (true, Some(changes)) = (nixos, &host.nixos_changes) {
        let _ = writeln!(out, "- **NixOS**: {}", quoted(&super::nixos::summary_line(changes)));
    }
    for action in &host.actions {
        let _ = writeln!(out, "- **`{}`** {}", action.kind.as_str(), quoted(&action.reason));
        if let Some(blocked) = &action.blocked {
            let allow = match &blocked.setting {
                // A host's own gate (`nixprox.allow.*`) is a module option, not a setting.
                Some(s) if s.starts_with("nixprox.") => {
                    format!(" Set `{s} = true` in the host's module to allow.")
                }
                Some(s) => format!(" Set `{s}: true` to allow."),
                None => String::new(),
            };
            let _ = writeln!(out, "  - ⛔ blocked: {}.{allow}", quoted(&blocked.reason));
        }
        if diffs && !action.changes.is_empty() {
            out.push_str("\n```diff\n");
            for (sign, line) in diff_lines(action) {
                // A line of backticks inside the fence cannot close it: fences need them at line start.
                let _ = writeln!(out, "{sign} {}", fence_line(&line));
            }
            out.push_str("```\n");
        }
    }
    out.push_str("\n</details>\n\n");
}
