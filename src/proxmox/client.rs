//! The Proxmox VE API client: HTTPS with a pinned CA, API-token auth, per-request timeouts and
//! bounded retries of transient failures. It speaks PVE's JSON envelope (`{"data": …}`) and
//! form-encoded request bodies, and returns `data` as a `serde_json::Value`; typed views of
//! the answers live in the callers (`read`, `tasks`, the executor).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::error::{ProxmoxError, TransportKind, hint_for};
use crate::config::ProxmoxSettings;
use crate::retry::{Resend, RetryPolicy};
use crate::secret::ApiToken;
use crate::text::{redact, truncate};

/// Bytes of an error body kept in [`ProxmoxError::Http::body`].
const BODY_KEEP: usize = 4096;
/// Characters of a non-JSON error body shown in the message.
const BODY_SHOW: usize = 300;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `https://pve.example:8006` (a trailing `/api2/json` is accepted too).
    pub url: String,
    pub token: ApiToken,
    /// PEM file of the CA to trust, and the only one. `None` uses the system's roots.
    pub ca_cert: Option<PathBuf>,
    /// Accept any certificate. Only when the user asked for it.
    pub insecure: bool,
    /// Per-request timeout.
    pub timeout: Duration,
    pub retry: RetryPolicy,
}

impl ClientOptions {
    /// Options from `nixprox.yaml`'s `proxmox` section; `url` and `token` come from the caller,
    /// which resolved `PROXMOX_URL` and `PROXMOX_API_TOKEN`.
    pub fn from_settings(settings: &ProxmoxSettings, url: String, token: ApiToken) -> ClientOptions {
        ClientOptions {
            url,
            token,
            ca_cert: settings.ca_cert.clone(),
            insecure: settings.insecure,
            timeout: Duration::from_secs(settings.timeout.max(1)),
            retry: RetryPolicy::new(settings.retries),
        }
    }
}

/// A connection to one Proxmox VE API. Cheap to clone (the HTTP pool is shared).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// `https://host:port`, for messages.
    base: String,
    /// `https://host:port/api2/json`.
    api: String,
    auth: HeaderValue,
    token: ApiToken,
    timeout: Duration,
    retry: RetryPolicy,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("url", &self.base).field("token", &self.token).finish_non_exhaustive()
    }
}

impl Client {
    /// Builds the client; reads the CA file. Makes no request.
    pub fn new(options: ClientOptions) -> Result<Client, ProxmoxError> {
        let base = normalize_url(&options.url)?;
        let mut builder = reqwest::Client::builder()
            .timeout(options.timeout)
            .connect_timeout(options.timeout.min(Duration::from_secs(15)))
            .user_agent(concat!("nixprox/", env!("CARGO_PKG_VERSION")));
        if options.insecure {
            builder = builder.tls_danger_accept_invalid_certs(true);
        } else if let Some(path) = &options.ca_cert {
            builder = builder.tls_certs_only(read_ca(path)?);
        }
        let http = builder.build().map_err(|err| ProxmoxError::Config {
            message: format!("failed to set up the HTTPS client: {err}"),
        })?;
        let mut auth = HeaderValue::from_str(&options.token.header_value()).map_err(|_| ProxmoxError::Config {
            message: format!(
                "the API token `{}` contains characters that cannot be sent in a header (check PROXMOX_API_TOKEN)",
                options.token.id
            ),
        })?;
        auth.set_sensitive(true);
        Ok(Client {
            http,
            api: format!("{base}/api2/json"),
            base,
            auth,
            token: options.token,
            timeout: options.timeout,
            retry: options.retry,
        })
    }

    /// `https://host:port` of the API.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// The token's public id (`user@realm!tokenid`).
    pub fn token_id(&self) -> &str {
        &self.token.id
    }

    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `GET path?query`; returns `data`.
    pub async fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, ProxmoxError> {
        self.call(Method::GET, path, query).await
    }

    /// `POST path` with a form body; returns `data` (a UPID for most actions).
    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> Result<Value, ProxmoxError> {
        self.call(Method::POST, path, form).await
    }

    /// `PUT path` with a form body; returns `data`.
    pub async fn put(&self, path: &str, form: &[(&str, &str)]) -> Result<Value, ProxmoxError> {
        self.call(Method::PUT, path, form).await
    }

    /// `DELETE path?query`; returns `data`.
    pub async fn delete(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, ProxmoxError> {
        self.call(Method::DELETE, path, query).await
    }

    /// One API call with retries ([`crate::retry`]'s rule: a POST that may have started a
    /// task, e.g. one that timed out, is not sent twice).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        params: &[(&str, &str)],
    ) -> Result<Value, ProxmoxError> {
        let what = format!("{method} {path}");
        self.retry.run(&what, Resend::for_method(&method), || self.once(&method, path, params)).await
    }

    async fn once(
        &self,
        method: &Method,
        path: &str,
        params: &[(&str, &str)],
    ) -> Result<Value, ProxmoxError> {
        let url = format!("{}{path}", self.api);
        let mut request = self.http.request(method.clone(), &url).header(AUTHORIZATION, self.auth.clone());
        if !params.is_empty() {
            request = match *method {
                Method::POST | Method::PUT => request.form(params),
                _ => request.query(params),
            };
        }
        tracing::debug!(%method, path, "proxmox request");
        self.answer(method, path, request).await
    }

    /// `POST path` with a `multipart/form-data` body (an upload), sent once: a streamed body
    /// cannot be replayed, and PVE does the work in a task whose UPID is the answer. `timeout`
    /// replaces the per-request timeout, which is sized for API calls, not for sending gigabytes.
    pub async fn post_multipart(
        &self,
        path: &str,
        form: reqwest::multipart::Form,
        timeout: Duration,
    ) -> Result<Value, ProxmoxError> {
        let url = format!("{}{path}", self.api);
        let request =
            self.http.post(&url).header(AUTHORIZATION, self.auth.clone()).multipart(form).timeout(timeout);
        tracing::debug!(method = %Method::POST, path, "proxmox upload");
        self.answer(&Method::POST, path, request).await
    }

    /// Sends `request` and unwraps PVE's `{"data": …}` envelope, or turns the answer into an error.
    async fn answer(
        &self,
        method: &Method,
        path: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<Value, ProxmoxError> {
        let response = request.send().await.map_err(|err| self.transport(method, path, &err))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|err| self.transport(method, path, &err))?;
        let text = redact(&String::from_utf8_lossy(&bytes), self.token.secret());
        tracing::debug!(%method, path, status = status.as_u16(), "proxmox answer");
        if !status.is_success() {
            return Err(self.http_error(method, path, status, &text));
        }
        let decode = |detail: String| ProxmoxError::Decode {
            method: method.clone(),
            path: path.to_string(),
            detail,
            body: truncate(&text, BODY_SHOW),
        };
        let mut envelope: Value =
            serde_json::from_str(&text).map_err(|err| decode(format!("invalid JSON: {err}")))?;
        match envelope.get_mut("data") {
            Some(data) => Ok(data.take()),
            None => Err(decode("no `data` in the answer".into())),
        }
    }

    fn http_error(&self, method: &Method, path: &str, status: StatusCode, text: &str) -> ProxmoxError {
        let json: Option<Value> = serde_json::from_str(text).ok();
        let message = match json.as_ref().and_then(|j| j.get("message")).and_then(Value::as_str) {
            Some(message) => {
                let mut message = message.trim().to_string();
                if let Some(Value::Object(fields)) = json.as_ref().and_then(|j| j.get("errors")) {
                    let details: Vec<String> = fields
                        .iter()
                        .map(|(key, value)| {
                            format!("{key}: {}", value.as_str().map(str::trim).unwrap_or(&value.to_string()))
                        })
                        .collect();
                    message = format!("{message} ({})", details.join("; "));
                }
                message
            }
            None => {
                let reason = status.canonical_reason().unwrap_or("error");
                let body = text.trim();
                if body.is_empty() {
                    reason.to_string()
                } else {
                    format!("{reason}: {}", truncate(body, BODY_SHOW))
                }
            }
        };
        let hint = hint_for(status.as_u16(), &message, &self.token.id);
        ProxmoxError::Http {
            method: method.clone(),
            path: path.to_string(),
            status: status.as_u16(),
            message,
            body: truncate(text, BODY_KEEP),
            hint,
        }
    }

    fn transport(&self, method: &Method, path: &str, err: &reqwest::Error) -> ProxmoxError {
        let (kind, detail) = classify(err);
        ProxmoxError::Transport {
            method: method.clone(),
            path: path.to_string(),
            url: self.base.clone(),
            kind,
            detail: redact(&detail, self.token.secret()),
            timeout: self.timeout,
        }
    }
}

/// Sorts a reqwest error into what the user can act on, with the innermost useful text
/// (reqwest's own Display is "error sending request for url (…)", which says nothing).
fn classify(err: &reqwest::Error) -> (TransportKind, String) {
    use std::error::Error as _;
    if err.is_timeout() {
        return (TransportKind::Timeout, "timed out".into());
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = err.source();
    let mut io_detail = None;
    while let Some(inner) = source {
        if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
            return (TransportKind::Tls, tls.to_string());
        }
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            // hyper wraps rustls's error in an io::Error, sometimes twice, and io::Error's
            // `source()` skips the payload: unwrap the payloads by hand.
            let mut payload: &(dyn std::error::Error + Send + Sync + 'static) = io;
            loop {
                if let Some(tls) = payload.downcast_ref::<rustls::Error>() {
                    return (TransportKind::Tls, tls.to_string());
                }
                match payload.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref) {
                    Some(inner) => payload = inner,
                    None => break,
                }
            }
            io_detail.get_or_insert_with(|| io_text(io));
        }
        source = inner.source();
    }
    let detail = io_detail.unwrap_or_else(|| innermost(err));
    if err.is_connect() { (TransportKind::Connect, detail) } else { (TransportKind::Broken, detail) }
}

fn io_text(io: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match io.kind() {
        ConnectionRefused => "connection refused".into(),
        ConnectionReset => "connection reset by peer".into(),
        ConnectionAborted => "connection aborted".into(),
        UnexpectedEof => "connection closed before the answer was complete".into(),
        _ => io.to_string(),
    }
}

fn innermost(err: &(dyn std::error::Error + 'static)) -> String {
    let mut last = err;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

fn normalize_url(url: &str) -> Result<String, ProxmoxError> {
    let trimmed = url.trim().trim_end_matches('/');
    let trimmed = trimmed.strip_suffix("/api2/json").unwrap_or(trimmed);
    let parsed = url::Url::parse(trimmed).map_err(|err| ProxmoxError::Config {
        message: format!("invalid Proxmox URL `{trimmed}`: {err} (expected e.g. `https://pve.example:8006`)"),
    })?;
    if parsed.scheme() != "https" || parsed.host_str().is_none() {
        return Err(ProxmoxError::Config {
            message: format!(
                "invalid Proxmox URL `{trimmed}`: expected `https://host:port` (the API only speaks HTTPS)"
            ),
        });
    }
    Ok(trimmed.to_string())
}

fn read_ca(path: &Path) -> Result<Vec<reqwest::Certificate>, ProxmoxError> {
    let pem = std::fs::read(path).map_err(|err| ProxmoxError::Config {
        message: format!(
            "failed to read CA certificate `{}`: {err} (set `proxmox.ca_cert` to a PEM file, e.g. a copy of the node's /etc/pve/pve-root-ca.pem)",
            path.display()
        ),
    })?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|err| ProxmoxError::Config {
        message: format!("invalid CA certificate `{}`: {err} (expected PEM)", path.display()),
    })?;
    if certs.is_empty() {
        return Err(ProxmoxError::Config {
            message: format!(
                "no certificate in `{}` (expected a PEM `BEGIN CERTIFICATE` block)",
                path.display()
            ),
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_normalized() {
        for url in [
            "https://pve:8006",
            "https://pve:8006/",
            "https://pve:8006/api2/json",
            " https://pve:8006/api2/json/ ",
        ] {
            assert_eq!(normalize_url(url).expect("valid"), "https://pve:8006", "{url}");
        }
        assert_eq!(
            normalize_url("http://pve:8006").expect_err("http").to_string(),
            "invalid Proxmox URL `http://pve:8006`: expected `https://host:port` (the API only speaks HTTPS)"
        );
        assert!(normalize_url("pve:8006").is_err());
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let token = ApiToken::parse("ci@pve!plan=canary-123").expect("token");
        let client = Client::new(ClientOptions {
            url: "https://127.0.0.1:8006".into(),
            token,
            ca_cert: None,
            insecure: true,
            timeout: Duration::from_secs(1),
            retry: RetryPolicy::none(),
        })
        .expect("client");
        let text = format!("{client:?}");
        assert!(!text.contains("canary"), "{text}");
        assert!(text.contains("ci@pve!plan"), "{text}");
    }

    #[test]
    fn missing_ca_file_names_the_setting() {
        let err = read_ca(Path::new("/nonexistent/ca.pem")).expect_err("missing");
        assert_eq!(
            err.to_string(),
            "failed to read CA certificate `/nonexistent/ca.pem`: No such file or directory (os error 2) (set `proxmox.ca_cert` to a PEM file, e.g. a copy of the node's /etc/pve/pve-root-ca.pem)"
        );
    }
}
