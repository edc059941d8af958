//! The one place text from outside nixprox becomes Markdown: a flake's host names and
//! declarations, a VM's name and notes, a host's answers (its running system, an error it
//! sent), reasons that quote any of these. Everything the plan comment, the job summary, the
//! apply report and the drift issue show of such text goes through [`escape`] (free text) or
//! [`code`] (a value shown as code), so no value can open Markdown or HTML structure: no
//! HTML comment that hides the rest of a comment, no line break that starts a heading or a
//! list, no link, no `@mention` that notifies someone.
//!
//! Escaped text renders the same on GitHub, Forgejo and any CommonMark renderer, in Markdown
//! paragraphs, table cells and HTML blocks (`<details><summary>`): the special characters
//! become numeric character references, which all three contexts decode, and nothing else
//! changes.

/// Whether a value shows in backticks as it is: nothing in it can end a code span or a table
/// cell, start HTML or a mention (a code span is safe from most of this, but the same text in
/// an HTML block or a table is not), or lose its edges (a code span strips one space).
fn plain_code(value: &str) -> bool {
    !value.is_empty()
        && !value.starts_with(' ')
        && !value.ends_with(' ')
        && value.chars().all(|c| !c.is_control() && !"`<>&@|\\\u{2028}\u{2029}".contains(c))
}

/// Free text, inert: `&`, `<`, `>` (HTML), backticks (code spans), `[`, `]`, `!` (links and
/// images), `*`, `_`, `~` (emphasis, strike-through), `\` (escapes), `|` (table cells) and
/// `#` become character references; `@` is followed by a word joiner (U+2060), so no forge
/// reads a mention (GitHub and Forgejo find mentions in the rendered text, where a character
/// reference would be `@` again); line breaks and other control characters become spaces, so
/// the text stays on its line.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '`' | '[' | ']' | '!' | '*' | '_' | '~' | '\\' | '|' | '#' => {
                out.push_str(&format!("&#{};", u32::from(c)));
            }
            '@' => out.push_str("@\u{2060}"),
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A value shown as code: in backticks when it holds only characters that mean nothing
/// there (host names, VMIDs, store paths, setting names), else as `<code>` with its text
/// escaped (a code span cannot escape a backtick, and its text is never decoded).
pub fn code(value: &str) -> String {
    if plain_code(value) { format!("`{value}`") } else { format!("<code>{}</code>", escape(value)) }
}

/// Text that quotes values in backticks, the way nixprox writes reasons and errors ("VM 101
/// has disks the flake does not declare (`scsi1`)"): the quoted parts become [`code`], the
/// rest [`escape`]d. With an odd number of backticks (a quoted value held one), everything is
/// escaped: the text shows its backticks, and still opens nothing.
pub fn quoted(text: &str) -> String {
    let parts: Vec<&str> = text.split('`').collect();
    if parts.len().is_multiple_of(2) {
        return escape(text);
    }
    parts.iter().enumerate().map(|(i, part)| if i % 2 == 1 { code(part) } else { escape(part) }).collect()
}

/// One line inside a fenced code block: the text stays on its line and no run of three
/// backticks or tildes can close the fence.
pub fn fence_line(line: &str) -> String {
    line.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .replace("```", "ˋˋˋ")
        .replace("~~~", "˜˜˜")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_characters_become_references() {
        assert_eq!(escape("a<b>&c"), "a&lt;b&gt;&amp;c");
        assert_eq!(escape("x`y\nz"), "x&#96;y z");
        assert_eq!(escape("[x](http://e) @bob"), "&#91;x&#93;(http://e) @\u{2060}bob");
        assert_eq!(escape("plain text, 2 → 4"), "plain text, 2 → 4");
    }

    #[test]
    fn code_keeps_backticks_for_plain_values_only() {
        assert_eq!(code("web-1.lab"), "`web-1.lab`");
        assert_eq!(code("/nix/store/abc-nixos-system"), "`/nix/store/abc-nixos-system`");
        assert_eq!(code("a`b"), "<code>a&#96;b</code>");
        assert_eq!(code("<!--"), "<code>&lt;&#33;--</code>");
        assert_eq!(code("scsi1 = { size = \"8G\"; };"), "`scsi1 = { size = \"8G\"; };`");
        assert_eq!(code("a|b"), "<code>a&#124;b</code>");
        assert_eq!(code(""), "<code></code>");
    }

    #[test]
    fn quoted_text_keeps_its_code_and_escapes_the_rest() {
        assert_eq!(quoted("VM 101 has `scsi1` <b>"), "VM 101 has `scsi1` &lt;b&gt;");
        assert_eq!(quoted("odd ` count"), "odd &#96; count");
        assert_eq!(quoted("`a@b`"), "<code>a@\u{2060}b</code>");
    }

    #[test]
    fn fences_cannot_be_closed() {
        assert_eq!(fence_line("- x ``` y ~~~\r"), "- x ˋˋˋ y ˜˜˜ ");
    }
}
