//! How field values and changes read in text and Markdown diffs.

use serde_json::Value;

use crate::plan::{Action, Change, Effect};

/// A value as a reviewer reads it: strings bare unless empty or multi-line, lists inline.
pub fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) if s.is_empty() || s.contains('\n') => Value::String(s.clone()).to_string(),
        Value::String(s) => s.clone(),
        Value::Array(items) => format!("[{}]", items.iter().map(value_text).collect::<Vec<_>>().join(", ")),
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

/// One change as `field: value` lines, before and after. An `after` line carries the change's
/// effect when it needs a reboot.
fn sides(change: &Change) -> (String, String) {
    let line = |value: &Option<Value>, note: &str| match value {
        Some(value) => format!("{}: {}{note}\n", change.field, value_text(value)),
        None => String::new(),
    };
    let note = if change.effect == Some(Effect::NeedsReboot) { "  # after reboot" } else { "" };
    (line(&change.before, ""), line(&change.after, note))
}

/// The action's changes as diff lines (`-`/`+`/` ` prefixed), field by field so each removed
/// line stands right above the line that replaces it.
pub fn diff_lines(action: &Action) -> Vec<(char, String)> {
    change_lines(&action.changes)
}

/// Changes as diff lines, as [`diff_lines`] shows an action's.
pub fn change_lines(changes: &[Change]) -> Vec<(char, String)> {
    let mut lines = Vec::new();
    for change in changes {
        let (before, after) = sides(change);
        let diff = similar::TextDiff::from_lines(&before, &after);
        lines.extend(diff.iter_all_changes().map(|line| {
            let sign = match line.tag() {
                similar::ChangeTag::Delete => '-',
                similar::ChangeTag::Insert => '+',
                similar::ChangeTag::Equal => ' ',
            };
            (sign, line.value().trim_end_matches('\n').to_string())
        }));
    }
    lines
}
