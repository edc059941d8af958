//! Text fit for messages, logs and comments: secrets taken out ([`redact`]) and length
//! bounded ([`truncate`]). Every error text built from what a server answered goes through
//! these, so they live in one place; [`markdown`] is the one place text becomes Markdown.

pub mod markdown;

/// Replaces every occurrence of `secret` in `text` with `<redacted>`. A no-op for an empty
/// secret. Servers do not echo tokens today, but a proxy in front of them or an error page
/// might, and these texts end up in CI logs and pull request comments.
pub fn redact(text: &str, secret: &str) -> String {
    if secret.is_empty() { text.to_string() } else { text.replace(secret, "<redacted>") }
}

/// Cuts `text` to at most `max` characters (not bytes), ending with `…` when it was cut.
pub fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some(_) => {
            let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
            out.push('…');
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction() {
        assert_eq!(redact("token a=s3cret rejected", "s3cret"), "token a=<redacted> rejected");
        assert_eq!(redact("bad token ghp_x, again ghp_x", "ghp_x"), "bad token <redacted>, again <redacted>");
        assert_eq!(redact("x", ""), "x");
    }

    #[test]
    fn truncates_by_characters() {
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("äbcd", 3), "äb…");
        assert_eq!(truncate("", 0), "");
        assert_eq!(truncate("ab", 0), "…");
    }
}
