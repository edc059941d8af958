//! Is the plan comment's visible text what nixprox renders for the plan apply is about to run?
//!
//! The record at the end of the sticky comment binds each host's actions and VM; the text
//! above it is what the reviewer read. Anyone with write access to the repository can edit a
//! comment (and the workflow token's account, which every workflow run of the repository
//! shares, is its author), so an edited text with the record kept would have apply run what
//! the text no longer shows. Apply re-renders the plan it is about to run at the comment's
//! level of detail (read from its trimmed note) and compares:
//!
//! - when the plan is the reviewed one (same plan id), the whole text must be the rendering,
//!   except the parts that legitimately differ after the merge ([`normalize`]): the commit and
//!   time of the `<sub>` line, the link to the full plan, the hosts' NixOS changes (which need
//!   the pull request's base), the unreferenced-images line, `--probe`'s section, and the
//!   changes waiting for a reboot (live state outside the plan id: a VM rebooted between
//!   review and merge runs them by then) with their counts and the unchanged hosts' list;
//! - when it is not (a resumed run, one shard of a fan-out, hosts a previous run finished),
//!   each host that will run something must show in the text: a host whose actions are the
//!   reviewed ones with its whole block, verbatim; a resumed host with its block's heading;
//!   every destructive action with its banner line; and the text must hide nothing (no HTML
//!   comment, no unclosed code fence).
//!
//! A difference is refused with the first line that differs.

use crate::apply::{Reviewed, ShownCheck};
use crate::plan::{ActionKind, HostPlan, Plan};
use crate::render::markdown::{self, Detail, MarkdownContext};

/// The sticky comment apply found for the merged pull request.
#[derive(Debug, Clone)]
pub struct ShownComment {
    pub pr: u64,
    pub body: String,
    pub url: Option<String>,
}

impl ShownCheck for ShownComment {
    fn check(&self, plan: &Plan, reviewed: &Reviewed) -> Result<(), String> {
        let where_ = match &self.url {
            Some(url) => format!("the plan comment on #{} ({url})", self.pr),
            None => format!("the plan comment on #{}", self.pr),
        };
        check(&self.body, plan, reviewed).map_err(|difference| {
            format!(
                "{where_} does not show the plan this apply would run: {difference}; nothing was applied (was the comment edited after the plan? re-run the plan workflow of the pull request, review it again, and merge; or apply with --reviewed-plan FILE)"
            )
        })
    }
}

/// The comparison; `Err` names the difference.
pub fn check(body: &str, plan: &Plan, reviewed: &Reviewed) -> Result<(), String> {
    let visible = crate::forge::comment::visible_text(body)?;
    let level = markdown::level_of(visible)
        .ok_or_else(|| "its note on trimmed details names no level of detail nixprox writes".to_string())?;
    hygiene(visible)?;
    if plan.plan_id == reviewed.plan_id() {
        let expected = markdown::render_at(plan, &MarkdownContext::default(), level);
        return compare(&normalize(visible, plan), &normalize(&expected, plan));
    }
    for host in plan.hosts.iter().filter(|h| runs_something(h)) {
        shows_host(visible, plan, host, reviewed, level)?;
    }
    Ok(())
}

/// Whether a host has an action that runs (not `noop`, not blocked).
fn runs_something(host: &HostPlan) -> bool {
    host.actions.iter().any(|a| a.kind != ActionKind::Noop && a.blocked.is_none())
}

/// A host of a plan that is not the reviewed one: its block verbatim when its actions are the
/// reviewed ones, else its heading; the banner line of each destructive action.
fn shows_host(
    visible: &str,
    plan: &Plan,
    host: &HostPlan,
    reviewed: &Reviewed,
    level: Detail,
) -> Result<(), String> {
    let name = &host.host;
    let block = markdown::host_block(host, level);
    let as_reviewed = crate::apply::approval::same_as_reviewed(reviewed, host);
    if as_reviewed
        && !block.is_empty()
        && !contains_lines(&normalize(visible, plan), &normalize(&block, plan))
    {
        let first = block.lines().next().unwrap_or_default();
        return Err(format!(
            "host `{name}` will run what was reviewed, but the text does not show it as nixprox renders it (its block starts `{first}`)"
        ));
    }
    if let Some(heading) = markdown::host_heading(name, level)
        && !visible.lines().any(|line| line.starts_with(&heading))
    {
        return Err(format!("host `{name}` will run, but the text does not show it"));
    }
    if level < Detail::ListOnly {
        for action in host.actions.iter().filter(|a| a.kind.is_destructive() && a.blocked.is_none()) {
            let line = markdown::banner_line(name, action.kind);
            if !visible.lines().any(|l| l == line) {
                return Err(format!(
                    "host `{name}` will run `{}`, but the text's list of destructive changes does not say so (`{line}`)",
                    action.kind.as_str()
                ));
            }
        }
    }
    Ok(())
}

/// Whether `needle`'s lines occur in `haystack`, together and in order.
fn contains_lines(haystack: &[String], needle: &[String]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|window| window == needle)
}

/// Nothing in the text hides what follows it: no HTML comment, no unclosed code fence.
fn hygiene(visible: &str) -> Result<(), String> {
    if visible.contains("<!--") {
        return Err("its text holds an HTML comment, which hides what follows it".into());
    }
    let fences = visible.lines().filter(|l| l.trim_start().starts_with("```")).count();
    if !fences.is_multiple_of(2) {
        return Err("its text leaves a code fence open".into());
    }
    Ok(())
}

/// The first line that differs, or `Ok`.
fn compare(visible: &[String], expected: &[String]) -> Result<(), String> {
    for (i, (shown, rendered)) in visible.iter().zip(expected).enumerate() {
        if shown != rendered {
            return Err(format!(
                "line {} of its text reads `{}` where nixprox renders `{}`",
                i + 1,
                crate::text::truncate(shown, 200),
                crate::text::truncate(rendered, 200)
            ));
        }
    }
    match visible.len().cmp(&expected.len()) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Greater => Err(format!(
            "its text has more lines than nixprox renders, from line {}: `{}`",
            expected.len() + 1,
            crate::text::truncate(&visible[expected.len()], 200)
        )),
        std::cmp::Ordering::Less => Err(format!(
            "its text ends where nixprox renders more, from line {}: `{}`",
            visible.len() + 1,
            crate::text::truncate(&expected[visible.len()], 200)
        )),
    }
}

/// The lines of a rendering with what legitimately differs between the plan and apply after
/// the merge replaced by a placeholder or left out, each only in the exact form nixprox
/// writes it (so no free text can pass as one):
///
/// - the `<sub>` line (commit, time; the plan id is compared);
/// - the link to the full plan at the end of the trimmed note;
/// - `- **NixOS**: …` lines (apply after the merge has no base to compare with);
/// - the unreferenced-images line (read after planning, outside the plan id);
/// - `--probe`'s section "Changed outside nixprox" (apply does not probe);
/// - the section "Waiting for a reboot", the counts of hosts waiting for one and of unchanged
///   hosts, and the list of unchanged hosts: which VMs hold pending changes is live state
///   outside the plan id (a reboot between review and merge takes a host off the list), and
///   none of it is anything apply runs.
pub fn normalize(text: &str, plan: &Plan) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut lines = text.lines().peekable();
    let mut in_fence = false;
    while let Some(line) = lines.next() {
        if line.starts_with("```") {
            in_fence = !in_fence;
        }
        if in_fence {
            out.push(line.to_string());
            continue;
        }
        if let Some(sub) = sub_line(line) {
            out.push(sub);
            continue;
        }
        if let Some(note) = trimmed_note(line) {
            out.push(note);
            continue;
        }
        let dropped = nixos_line(line) || images_line(line);
        if dropped {
            if lines.peek() == Some(&"") {
                lines.next();
            }
            continue;
        }
        if line == "#### Waiting for a reboot" {
            skip_pending_section(&mut lines, plan);
            continue;
        }
        if unchanged_line(line) {
            if lines.peek() == Some(&"") {
                lines.next();
            }
            continue;
        }
        if let Some(counts) = counts_line(line) {
            out.push(counts);
            continue;
        }
        if line == "#### Changed outside nixprox" {
            // The section: its heading, a blank line, the count, then tables and lists of
            // plain lines up to the next blank line after them.
            skip_probe_section(&mut lines);
            continue;
        }
        out.push(line.to_string());
    }
    out
}

fn skip_probe_section<'a>(lines: &mut std::iter::Peekable<impl Iterator<Item = &'a str>>) {
    // A blank line, the count line, a blank line.
    for _ in 0..3 {
        if lines.peek().is_some_and(|l| l.is_empty() || probe_count_line(l)) {
            lines.next();
        }
    }
    // Paragraphs of table rows and list items nixprox writes there, each followed by a blank.
    loop {
        let mut took = false;
        while lines.peek().is_some_and(|l| probe_row(l)) {
            lines.next();
            took = true;
        }
        if !took {
            return;
        }
        if lines.peek() == Some(&"") {
            lines.next();
        }
    }
}

/// The section of changes waiting for a reboot, in the form the renderer writes it: the fixed
/// paragraph, one list item per host of the plan (its name, its VM, then how to make the
/// changes take effect in nixprox's words, or the pending keys), and under each either the
/// line of keys or a diff of fields fenced in the item. Anything else ends the section, so it
/// is compared like the rest of the text.
fn skip_pending_section<'a>(lines: &mut std::iter::Peekable<impl Iterator<Item = &'a str>>, plan: &Plan) {
    let mut in_fence = false;
    while let Some(&line) = lines.peek() {
        let ok = if in_fence {
            line == "  ```" || diff_line(line)
        } else {
            line.is_empty()
                || line == markdown::PENDING_NOTE
                || line == "  ```diff"
                || pending_item(line, plan)
                || line.strip_prefix("  - pending in Proxmox: ").is_some_and(proxmox_keys)
        };
        if !ok {
            return;
        }
        if line == "  ```diff" || (in_fence && line == "  ```") {
            in_fence = !in_fence;
        }
        lines.next();
    }
}

/// `- `web` (pve1/101): the VM still runs the old values: …` for a host of the plan; at the
/// list level, `- `web` (pve1/101): memory, cores`.
fn pending_item(line: &str, plan: &Plan) -> bool {
    const HOW: [&str; 2] =
        ["the VM still runs the old values: reboot VM ", "the apply of this plan reboots VM "];
    plan.hosts.iter().any(|host| {
        line.strip_prefix(&format!("- {} (", crate::text::markdown::code(&host.host)))
            .and_then(|rest| rest.split_once("): "))
            .is_some_and(|(_, what)| {
                (HOW.iter().any(|how| what.starts_with(how)) && inert(what)) || proxmox_keys(what)
            })
    })
}

/// Proxmox config keys, comma-separated (`memory, net1`).
fn proxmox_keys(text: &str) -> bool {
    text.split(", ").all(|key| !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
}

/// `  - memory: 2048` / `  + memory: 4096`: a field named like a module option and its value.
fn diff_line(line: &str) -> bool {
    let Some(rest) = line.strip_prefix("  - ").or_else(|| line.strip_prefix("  + ")) else { return false };
    rest.split_once(": ").is_some_and(|(field, _)| {
        !field.is_empty() && field.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    }) && !line.contains("```")
}

/// `Unchanged: `a`, `b``, as the renderer writes it.
fn unchanged_line(line: &str) -> bool {
    line.strip_prefix("Unchanged: ").is_some_and(|names| {
        names.split(", ").all(|name| {
            name.strip_prefix('`').and_then(|n| n.strip_suffix('`')).is_some_and(|n| !n.contains('`'))
                || name.strip_prefix("<code>").and_then(|n| n.strip_suffix("</code>")).is_some_and(inert)
        })
    })
}

/// The bold counts line without its `N unchanged` and `N waiting for a reboot` parts.
fn counts_line(line: &str) -> Option<String> {
    let inner = line.strip_prefix("**")?.strip_suffix("**")?;
    let parts: Vec<&str> = inner.split(", ").collect();
    let numbered = |part: &&str| {
        part.split_once(' ').is_some_and(|(n, rest)| {
            !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()) && !rest.is_empty()
        })
    };
    if parts.len() < 2 || !parts.iter().all(numbered) {
        return None;
    }
    let volatile = |part: &&str| part.ends_with(" unchanged") || part.ends_with(" waiting for a reboot");
    let kept: Vec<&str> = parts.into_iter().filter(|p| !volatile(p)).collect();
    Some(format!("**{}**", kept.join(", ")))
}

/// `12 hosts probed over SSH: 1 changed, 0 unreachable.`
fn probe_count_line(line: &str) -> bool {
    let words: Vec<&str> = line.split(' ').collect();
    matches!(
        words.as_slice(),
        [n, "hosts", "probed", "over", "SSH:", c, "changed,", u, "unreachable."]
            if [n, c, u].iter().all(|w| !w.is_empty() && w.chars().all(|ch| ch.is_ascii_digit()))
    )
}

/// A row of the drift table or an unreachable host's line, with nothing in it that opens
/// structure (escaped text, code spans and `<code>`).
fn probe_row(line: &str) -> bool {
    let table = line.starts_with("| ") && line.ends_with(" |");
    let list = line.starts_with("- ") && line.contains(" did not answer: ");
    (table || list) && inert(line)
}

/// Text nixprox escaped: balanced backticks, and outside code spans no raw HTML but `<code>`
/// and no link brackets.
fn inert(text: &str) -> bool {
    let stripped = text.replace("<code>", "").replace("</code>", "");
    let parts: Vec<&str> = stripped.split('`').collect();
    parts.len() % 2 == 1 && parts.iter().step_by(2).all(|outside| !outside.contains(['<', '>', '[', ']']))
}

/// `- **NixOS**: …` as the renderer writes it.
fn nixos_line(line: &str) -> bool {
    line.strip_prefix("- **NixOS**: ").is_some_and(inert)
}

/// `3 image file(s) on the image storages no host refers to any more: …`.
fn images_line(line: &str) -> bool {
    line.split_once(' ').is_some_and(|(count, rest)| {
        !count.is_empty()
            && count.chars().all(|c| c.is_ascii_digit())
            && rest == "image file(s) on the image storages no host refers to any more: `nixprox gc-images --delete` removes them."
    })
}

/// `<sub>planned at commit `abc` · on 2026-11-25 18:00 UTC · plan id `…`</sub>` → the line
/// without commit and time, when those are what nixprox writes there.
fn sub_line(line: &str) -> Option<String> {
    let inner = line.strip_prefix("<sub>")?.strip_suffix("</sub>")?;
    let mut parts: Vec<&str> = inner.split(" · ").collect();
    let id = parts.pop()?;
    if !id.starts_with("plan id ") {
        return None;
    }
    for part in parts {
        let ok = if let Some(commit) = part.strip_prefix("planned at commit `") {
            commit
                .strip_suffix('`')
                .is_some_and(|c| !c.is_empty() && c.chars().all(|ch| ch.is_ascii_hexdigit()))
        } else if let Some(at) = part.strip_prefix("on ") {
            at.strip_suffix(" UTC").is_some_and(|t| {
                !t.is_empty() && t.chars().all(|ch| ch.is_ascii_digit() || "-: ".contains(ch))
            })
        } else {
            false
        };
        if !ok {
            return None;
        }
    }
    Some(format!("<sub>{id}</sub>"))
}

/// The trimmed note with its pointer to the full plan (a link to the run, which apply does
/// not know) replaced by the one apply renders.
fn trimmed_note(line: &str) -> Option<String> {
    let rest = line.strip_prefix(markdown::TRIMMED_NOTE)?;
    let (left_out, pointer) = rest.split_once("); ")?;
    let url_ok =
        |url: &str| !url.is_empty() && url.chars().all(|c| !c.is_whitespace() && !"()<>[]`\"'".contains(c));
    let known = ["the full plan is in the [job summary](", "the full plan is in the log of [the run]("]
        .iter()
        .any(|prefix| pointer.strip_prefix(prefix).and_then(|p| p.strip_suffix(")._")).is_some_and(url_ok))
        || pointer == "run `nixprox plan` for the full plan._";
    known.then(|| format!("{}{left_out}); run `nixprox plan` for the full plan._", markdown::TRIMMED_NOTE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::approval::record::Record;
    use crate::config::Policies;
    use crate::plan::{PlanInput, testkit};

    fn plans() -> (Plan, Plan) {
        let desired = vec![testkit::host("web"), testkit::host("db")];
        let mut live = vec![testkit::live("web", 101), testkit::live("db", 102), testkit::live("old", 150)];
        live[2].name = "old".into();
        for vm in &mut live[..2] {
            testkit::config(vm).spec.cores = 1;
        }
        let policies = Policies { prune_orphans: true, ..Policies::default() };
        let reviewed = crate::plan::plan(PlanInput {
            desired: &desired,
            live: &live,
            policies,
            only: None,
            probes: None,
        });
        let only = std::collections::BTreeSet::from(["web".to_string()]);
        let shard = crate::plan::plan(PlanInput {
            desired: &desired,
            live: &live,
            policies,
            only: Some(&only),
            probes: None,
        });
        (reviewed, shard)
    }

    fn comment(plan: &Plan, text: &str) -> String {
        let record = Record::from_plan(plan).to_json().expect("record");
        format!(
            "{}\n{text}{}",
            crate::forge::comment::plan_marker("k", &plan.plan_id),
            crate::forge::comment::record_block(&record)
        )
    }

    fn ci_context() -> MarkdownContext {
        MarkdownContext {
            title: None,
            commit: Some("0123456789abcdef0123".into()),
            planned_at: Some("2026-11-25 18:00 UTC".into()),
            full_plan: Some("the [job summary](https://forge.example/o/r/actions/runs/7)".into()),
        }
    }

    #[test]
    fn the_comment_as_posted_is_accepted_at_every_level() {
        let (plan, shard) = plans();
        let reviewed = Reviewed::Record(Record::from_plan(&plan));
        for level in markdown::LEVELS {
            let body = comment(&plan, &markdown::render_at(&plan, &ci_context(), level));
            check(&body, &plan, &reviewed).unwrap_or_else(|e| panic!("{level:?}: {e}"));
            check(&body, &shard, &reviewed).unwrap_or_else(|e| panic!("shard, {level:?}: {e}"));
        }
    }

    #[test]
    fn an_edited_text_is_refused_with_the_line_that_differs() {
        let (plan, shard) = plans();
        let reviewed = Reviewed::Record(Record::from_plan(&plan));
        let text = markdown::render_at(&plan, &ci_context(), Detail::Full);
        let edited = text.replace("1 to destroy", "0 to destroy");
        assert_ne!(edited, text);
        let err = check(&comment(&plan, &edited), &plan, &reviewed).expect_err("edited");
        assert!(err.starts_with("line 7 of its text reads `**0 to create, 2 to update"), "{err}");
        assert!(err.contains("0 to destroy"), "{err}");
        // Dropping the orphan's block and banner line: refused for the shard too, as soon as a
        // host it runs is not shown.
        let start = text.find("<details><summary><b>web</b>").expect("web's block");
        let end = start + text[start..].find("</details>").expect("end") + "</details>\n\n".len();
        let without_web = format!("{}{}", &text[..start], &text[end..]);
        let err = check(&comment(&plan, &without_web), &shard, &reviewed).expect_err("web hidden");
        assert!(
            err.starts_with("host `web` will run what was reviewed, but the text does not show it"),
            "{err}"
        );
        let hidden = text.replace("<details><summary><b>web</b>", "<!--\n<details><summary><b>web</b>");
        let err = check(&comment(&plan, &hidden), &shard, &reviewed).expect_err("comment");
        assert_eq!(err, "its text holds an HTML comment, which hides what follows it");
        let moved = format!("hello\n{}", comment(&plan, &text));
        assert!(check(&moved, &plan, &reviewed).is_err());
    }

    /// The reviewed comment showed a host's changes waiting for a reboot; the VM was rebooted
    /// before the merge, so apply's plan (same id) has none: accepted at every level. A
    /// paragraph slipped into that section is not.
    #[test]
    fn changes_waiting_for_a_reboot_at_review_and_gone_at_merge_are_accepted() {
        let (plan, _) = plans();
        let mut at_review = plan.clone();
        let db = at_review.hosts.iter_mut().find(|h| h.host == "db").expect("db");
        db.pending_reboot = Some(crate::plan::PendingReboot {
            keys: vec!["memory".into()],
            changes: vec![crate::plan::Change {
                field: "memory".into(),
                before: Some(2048.into()),
                after: Some(4096.into()),
                effect: None,
            }],
            how: "the VM still runs the old values: reboot VM 102 to make them take effect (`qm reboot 102` on node `pve1`)".into(),
        });
        let reviewed = Reviewed::Record(Record::from_plan(&plan));
        for level in markdown::LEVELS {
            let text = markdown::render_at(&at_review, &ci_context(), level);
            if level < Detail::CountsOnly {
                assert!(text.contains("#### Waiting for a reboot"), "{level:?}: {text}");
            }
            check(&comment(&plan, &text), &plan, &reviewed).unwrap_or_else(|e| panic!("{level:?}: {e}"));
        }
        let text = markdown::render_at(&at_review, &ci_context(), Detail::Full)
            .replace(markdown::PENDING_NOTE, &format!("{}\n\nNothing is destroyed.", markdown::PENDING_NOTE));
        assert!(check(&comment(&plan, &text), &plan, &reviewed).is_err(), "{text}");
        // A list item of its own making, or one naming a host the plan does not have: refused.
        let full = markdown::render_at(&at_review, &ci_context(), Detail::Full);
        for forged in ["- `db` (pve1/102): nothing is destroyed", "- `golf` (pve1/9): memory"] {
            let text =
                full.replace(markdown::PENDING_NOTE, &format!("{}\n\n{forged}", markdown::PENDING_NOTE));
            assert!(check(&comment(&plan, &text), &plan, &reviewed).is_err(), "{forged}");
        }
    }

    #[test]
    fn volatile_parts_are_only_accepted_in_the_form_nixprox_writes() {
        assert_eq!(
            sub_line("<sub>planned at commit `0123abc` · on 2026-11-25 18:00 UTC · plan id `ab`</sub>")
                .as_deref(),
            Some("<sub>plan id `ab`</sub>")
        );
        assert_eq!(sub_line("<sub>planned at commit `nope!` · plan id `ab`</sub>"), None);
        assert!(nixos_line("- **NixOS**: packages +htop 3.3.0"));
        assert!(!nixos_line("- **NixOS**: [click](https://evil)"));
        assert!(nixos_line("- **NixOS**: extra `a[1] <b>` · <code>x&#96;</code>"));
        assert!(!nixos_line("- **NixOS**: odd ` backtick"));
        assert!(trimmed_note("_Details trimmed to fit the size limit (left out: x); the full plan is in the [job summary](https://f/r/1)._").is_some());
        assert!(trimmed_note("_Details trimmed to fit the size limit (left out: x); the full plan is in the [job summary](javascript:alert\")._").is_none());
    }
}
