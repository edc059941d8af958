//! The JSON rendering: the plan as documented in `docs/json-schema.md` (schema version 1).

use crate::plan::Plan;

/// Pretty-printed JSON with a trailing newline.
pub fn render(plan: &Plan) -> String {
    // Plain data with string keys always serialises.
    let mut text = serde_json::to_string_pretty(plan).unwrap_or_default();
    text.push('\n');
    text
}
