//! Secrets as types: their `Debug` and `Display` never show the value.

use std::fmt;

pub use secrecy::{ExposeSecret, SecretString};

/// A Proxmox API token `user@realm!tokenid=secret`, split so that the public id can be
/// printed in errors while the secret never is.
#[derive(Clone)]
pub struct ApiToken {
    /// `user@realm!tokenid`: safe to show.
    pub id: String,
    secret: SecretString,
}

/// Why a text is not an API token. The texts never contain the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("expected `user@realm!tokenid=secret` (no `=` found)")]
    NoSecret,
    #[error("expected `user@realm!tokenid=secret` (the id before `=` needs `@realm` and `!tokenid`)")]
    BadId,
    #[error("the token secret after `=` is empty")]
    EmptySecret,
}

impl ApiToken {
    /// Parses `user@realm!tokenid=secret` (the form Proxmox shows when a token is created).
    pub fn parse(text: &str) -> Result<ApiToken, TokenError> {
        let text = text.trim();
        let (id, secret) = text.split_once('=').ok_or(TokenError::NoSecret)?;
        if !id.contains('@') || !id.contains('!') {
            return Err(TokenError::BadId);
        }
        if secret.is_empty() {
            return Err(TokenError::EmptySecret);
        }
        Ok(ApiToken { id: id.to_string(), secret: SecretString::from(secret.to_string()) })
    }

    /// The `Authorization` header value. Callers must mark the header sensitive.
    pub fn header_value(&self) -> String {
        format!("PVEAPIToken={}={}", self.id, self.secret.expose_secret())
    }

    /// The secret part, for redacting it from any text that might echo it.
    pub fn secret(&self) -> &str {
        self.secret.expose_secret()
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiToken({}=<redacted>)", self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_never_shows_the_secret() {
        let token = ApiToken::parse("ci@pve!plan=0f3c-canary").expect("valid token");
        assert_eq!(token.id, "ci@pve!plan");
        assert_eq!(token.header_value(), "PVEAPIToken=ci@pve!plan=0f3c-canary");
        assert!(!format!("{token:?}").contains("canary"));
    }

    #[test]
    fn rejects_malformed_tokens() {
        assert_eq!(ApiToken::parse("secret-only").err(), Some(TokenError::NoSecret));
        assert_eq!(ApiToken::parse("root@pam=abc").err(), Some(TokenError::BadId));
        assert_eq!(ApiToken::parse("root@pam!t=").err(), Some(TokenError::EmptySecret));
    }
}
