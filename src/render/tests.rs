//! Snapshot tests of the three renderings, and the comment size budget.

use super::fixture::{every_kind, many, probed, waiting_for_a_reboot, with_nixos_changes};
use super::markdown::{COMMENT_LIMIT, Detail, MarkdownContext, render_within};
use super::{json, markdown, summary_line, text};

fn context() -> MarkdownContext {
    MarkdownContext {
        title: None,
        commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
        planned_at: Some("2026-11-25 18:00 UTC".into()),
        full_plan: Some("the [job summary](https://ci.example/run/1)".into()),
    }
}

#[test]
fn summary_line_shows_the_zeros_that_matter() {
    assert_eq!(
        summary_line(&every_kind()),
        "1 to create, 1 to update, 1 to resize, 1 to install, 1 to switch, 1 to destroy, 2 blocked, 1 unchanged"
    );
}

#[test]
fn text_snapshot() {
    insta::assert_snapshot!(text::render(&every_kind(), text::TextOptions { color: false }));
}

#[test]
fn text_colour_only_when_asked() {
    assert!(!text::render(&every_kind(), text::TextOptions { color: false }).contains('\x1b'));
    assert!(text::render(&every_kind(), text::TextOptions { color: true }).contains("\x1b[31m"));
}

#[test]
fn markdown_snapshot() {
    insta::assert_snapshot!(markdown::render(&every_kind(), &context()));
}

#[test]
fn json_snapshot() {
    insta::assert_snapshot!(json::render(&every_kind()));
}

/// Every `<details>` closes and every fence pairs up: the body is well-formed at any level.
fn assert_well_formed(body: &str) {
    assert_eq!(body.matches("<details>").count(), body.matches("</details>").count());
    let fences = body.lines().filter(|l| l.starts_with("```")).count();
    assert_eq!(fences % 2, 0, "unbalanced code fences");
}

#[test]
fn a_500_host_plan_fits_the_comment_limit_and_stays_well_formed() {
    let plan = many(500);
    let (body, level) = render_within(&plan, &context(), COMMENT_LIMIT);
    assert!(body.chars().count() <= COMMENT_LIMIT, "{} chars", body.chars().count());
    assert!(level > Detail::Full);
    assert!(body.contains("[job summary](https://ci.example/run/1)"));
    assert_well_formed(&body);
    for level in super::markdown::LEVELS {
        assert_well_formed(&markdown::render_at(&plan, &context(), level));
    }
}

#[test]
fn a_small_plan_is_rendered_in_full() {
    let (body, level) = render_within(&every_kind(), &context(), COMMENT_LIMIT);
    assert_eq!(level, Detail::Full);
    assert_eq!(body, markdown::render(&every_kind(), &context()));
}

#[test]
fn probe_section_in_every_format() {
    insta::assert_snapshot!("probe_text", text::render(&probed(), text::TextOptions { color: false }));
    insta::assert_snapshot!("probe_markdown", markdown::render(&probed(), &context()));
    insta::assert_snapshot!("probe_json", json::render(&probed()));
}

#[test]
fn nixos_changes_in_every_format() {
    let plan = with_nixos_changes();
    insta::assert_snapshot!("nixos_changes_text", text::render(&plan, text::TextOptions { color: false }));
    insta::assert_snapshot!("nixos_changes_markdown", markdown::render(&plan, &context()));
    insta::assert_snapshot!("nixos_changes_json", json::render(&plan));
}

#[test]
fn nixos_changes_are_the_first_detail_the_comment_drops() {
    let plan = with_nixos_changes();
    let full = markdown::render(&plan, &context());
    assert!(full.contains("- **NixOS**: nixpkgs 0123456 → 89abcde · kernel"), "{full}");
    // One character short of the full body (plus the marker's reserve): only the NixOS lines go.
    let (body, level) = render_within(&plan, &context(), full.chars().count() + 511);
    assert_eq!(level, Detail::NoNixosChanges);
    assert!(!body.contains("**NixOS**"), "{body}");
    assert!(body.contains("```diff"), "the diffs stay: {body}");
    assert!(body.contains("Unchanged: `cache`"), "{body}");
    assert_well_formed(&body);
}

#[test]
fn changes_waiting_for_a_reboot_in_every_format() {
    let plan = waiting_for_a_reboot();
    assert_eq!(
        summary_line(&plan),
        "0 to create, 1 to update, 0 to switch, 0 to destroy, 2 unchanged, 1 waiting for a reboot"
    );
    insta::assert_snapshot!("pending_text", text::render(&plan, text::TextOptions { color: false }));
    insta::assert_snapshot!("pending_markdown", markdown::render(&plan, &context()));
    insta::assert_snapshot!("pending_json", json::render(&plan));
    for level in super::markdown::LEVELS {
        let body = markdown::render_at(&plan, &context(), level);
        assert_well_formed(&body);
        if level < Detail::CountsOnly {
            assert!(body.contains("`db` (pve1/102)"), "{level:?}: {body}");
        }
    }
}

/// What a host answers (its running system over SSH, the reason it could not be asked) reaches
/// the drift table and the probe section: hostile answers render inert in CommonMark.
#[test]
fn hostile_host_answers_render_inert() {
    use crate::plan::Probe;
    use crate::plan::testkit::{host, live};
    let probes = std::collections::BTreeMap::from([
        (
            "web".to_string(),
            Probe::Running { system: "/nix/store/x` | <!-- [a](https://evil.example) @admin\n# hi".into() },
        ),
        ("db".to_string(), Probe::Unreachable { reason: "no\n\n<!--\n**0 to destroy** [x](y) @root".into() }),
    ]);
    let plan = crate::plan::plan(crate::plan::PlanInput {
        desired: &[host("web"), host("db")],
        live: &[live("web", 101), live("db", 102)],
        policies: crate::config::Policies::default(),
        only: None,
        probes: Some(&probes),
    });
    let markdown = markdown::render(&plan, &context());
    let mut html = String::new();
    let mut options = pulldown_cmark::Options::empty();
    options.insert(pulldown_cmark::Options::ENABLE_TABLES);
    pulldown_cmark::html::push_html(&mut html, pulldown_cmark::Parser::new_ext(&markdown, options));
    assert!(!html.contains("<!--"), "{html}");
    assert!(!html.contains("<a "), "{html}");
    // Mentions count outside code only (forges never read one inside `<code>`/`<pre>`).
    let mut outside_code = String::new();
    for (i, part) in html.split("<code").enumerate() {
        let part = if i == 0 { part } else { part.split_once("</code>").map_or("", |(_, rest)| rest) };
        outside_code.push_str(part);
    }
    assert!(!outside_code.contains("@admin") && !outside_code.contains("@root"), "{outside_code}");
    assert!(!html.contains("<h1>"), "{html}");
    assert!(!html.contains("<strong>0 to destroy</strong>"), "{html}");
    // The drift table keeps its three columns: the answer's `|` split no cell.
    let row = html.lines().find(|l| l.starts_with("<tr>") && l.contains("evil.example")).expect("drift row");
    assert_eq!(row.matches("<td>").count(), 3, "{row}");
    assert!(html.contains("did not answer: no"), "{html}");
}
