//! How field values and changes read in text and Markdown diffs.

use serde_json::Value;

use crate::plan::{Action, Effect};

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

/// The before and after sides of an action's changes as `field: value` lines, ready for a
/// line diff. An `after` line carries the change's effect when it needs a reboot.
pub fn sides(action: &Action) -> (String, String) {
    let mut before = String::new();
    let mut after = String::new();
    for change in &action.changes {
        if let Some(value) = &change.before {
            before.push_str(&format!("{}: {}\n", change.field, value_text(value)));
        }
        if let Some(value) = &change.after {
            let note = if change.effect == Some(Effect::NeedsReboot) { "  # after reboot" } else { "" };
            after.push_str(&format!("{}: {}{note}\n", change.field, value_text(value)));
        }
    }
    (before, after)
}

/// The action's changes as diff lines (`-`/`+`/` ` prefixed), computed with `similar`.
pub fn diff_lines(action: &Action) -> Vec<(char, String)> {
    let (before, after) = sides(action);
    let diff = similar::TextDiff::from_lines(&before, &after);
    diff.iter_all_changes()
        .map(|change| {
            let sign = match change.tag() {
                similar::ChangeTag::Delete => '-',
                similar::ChangeTag::Insert => '+',
                similar::ChangeTag::Equal => ' ',
            };
            (sign, change.value().trim_end_matches('\n').to_string())
        })
        .collect()
}
