//! The russh client: connect (bounded, retried with backoff), authenticate with a key, check
//! the server against the pinned keys, run one command with a timeout and bounded capture.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use russh::ChannelMsg;
use russh::client::{self, AuthResult, Handle};
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};

use super::keys::public_line;
use super::{HostKeyPolicy, SshError};

/// Bytes kept of each of stdout and stderr; the rest is dropped (and flagged).
const CAPTURE_LIMIT: usize = 1 << 20;

/// Where to connect. `host` is the name used in messages and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    pub host: String,
    pub address: String,
    pub port: u16,
    pub user: String,
}

/// Which failures a connection keeps retrying until the bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Only network failures (refused, reset, no answer): the usual "wait for the port".
    Network,
    /// Also a wrong host key or refused authentication: while a host reboots or rolls back,
    /// the old system may still answer for a while.
    Anything,
}

/// Bounds for [`Session::connect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectOptions {
    /// One TCP connect + handshake + authentication.
    pub attempt_timeout: Duration,
    /// All attempts together.
    pub bound: Duration,
    pub retry: Retry,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            attempt_timeout: Duration::from_secs(10),
            bound: Duration::from_secs(60),
            retry: Retry::Network,
        }
    }
}

/// What a command printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// `None` when the server sent no exit status (the command was killed by a signal).
    pub exit_status: Option<u32>,
    pub stdout: String,
    pub stderr: String,
    /// Whether output beyond the capture limit was dropped.
    pub truncated: bool,
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.exit_status == Some(0)
    }
}

/// Checks the server key against the policy and remembers what the server presented, so a
/// rejection can say which key it got.
struct Checker {
    policy: HostKeyPolicy,
    seen: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Checker {
    type Error = russh::Error;

    async fn check_server_key(&mut self, server_key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let key = match server_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            // A certificate is judged by the key it certifies: pinning is per key.
            PublicKeyOrCertificate::Certificate(cert) => {
                russh::keys::PublicKey::new(cert.public_key().clone(), "")
            }
        };
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(public_line(&key));
        }
        Ok(self.policy.accepts(&key))
    }
}

/// One failed attempt, classified for the retry decision.
enum Attempt {
    Mismatch(String),
    Auth,
    Network(String),
}

/// An authenticated SSH connection to a host whose key matched the pin.
pub struct Session {
    handle: Handle<Checker>,
    target: SshTarget,
    /// The key the server presented (`ssh-ed25519 AAAA…`, no comment): one the policy
    /// accepted, so the whole key of a host pinned by fingerprint can be recorded.
    server_key: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("target", &self.target).finish()
    }
}

/// The first wait between attempts to reach a host that is coming up (a booting VM).
const FIRST_WAIT: Duration = Duration::from_millis(250);

/// The wait after `delay`: doubling up to 5 s. The caller's deadline bounds the waiting, not
/// a number of attempts, so this is a poll rather than [`crate::retry`]'s retry of a failed
/// request; one runner waits for one host, so there is no jitter.
fn next_wait(delay: Duration) -> Duration {
    (delay * 2).min(Duration::from_secs(5))
}

impl Session {
    /// Connects and authenticates, retrying with backoff (250 ms doubling to 5 s) until
    /// `options.bound` passes. A wrong host key is never accepted; with [`Retry::Network`] it
    /// fails at once.
    pub async fn connect(
        target: &SshTarget,
        key: &Arc<PrivateKey>,
        policy: &HostKeyPolicy,
        options: &ConnectOptions,
    ) -> Result<Session, SshError> {
        let started = Instant::now();
        let deadline = started + options.bound;
        let mut delay = FIRST_WAIT;
        let mut last;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let attempt_timeout = options.attempt_timeout.min(remaining.max(Duration::from_millis(100)));
            match tokio::time::timeout(attempt_timeout, attempt(target, key, policy)).await {
                Ok(Ok((handle, server_key))) => {
                    return Ok(Session { handle, target: target.clone(), server_key });
                }
                Ok(Err(failure)) => last = failure,
                Err(_) => {
                    last = Attempt::Network(format!("no answer within {}s", attempt_timeout.as_secs_f32()))
                }
            }
            if options.retry == Retry::Network {
                match last {
                    Attempt::Mismatch(got) => return Err(mismatch(target, policy, got)),
                    Attempt::Auth => return Err(auth(target)),
                    Attempt::Network(_) => {}
                }
            }
            if Instant::now() + delay >= deadline {
                break;
            }
            tracing::debug!(host = %target.host, "ssh not ready yet, retrying in {}ms", delay.as_millis());
            tokio::time::sleep(delay).await;
            delay = next_wait(delay);
        }
        Err(match last {
            Attempt::Mismatch(got) => mismatch(target, policy, got),
            Attempt::Auth => auth(target),
            Attempt::Network(last) => SshError::Timeout {
                host: target.host.clone(),
                address: format!("{}:{}", target.address, target.port),
                waited: started.elapsed(),
                last,
            },
        })
    }

    pub fn target(&self) -> &SshTarget {
        &self.target
    }

    /// The host key the server presented, as an OpenSSH line without comment.
    pub fn server_key(&self) -> &str {
        &self.server_key
    }

    /// Runs `command` (through the login shell of the user) and waits for it to end, at most
    /// `timeout`. Output is captured up to 1 MiB per stream.
    pub async fn exec(&self, command: &str, timeout: Duration) -> Result<ExecOutput, SshError> {
        let run = async {
            let mut channel = self.handle.channel_open_session().await?;
            channel.exec(true, command).await?;
            let (mut stdout, mut stderr, mut exit_status, mut truncated) =
                (Vec::new(), Vec::new(), None, false);
            while let Some(message) = channel.wait().await {
                match message {
                    ChannelMsg::Data { data } => truncated |= append(&mut stdout, &data),
                    ChannelMsg::ExtendedData { data, ext: 1 } => truncated |= append(&mut stderr, &data),
                    ChannelMsg::ExitStatus { exit_status: status } => exit_status = Some(status),
                    _ => {}
                }
            }
            Ok::<_, russh::Error>(ExecOutput {
                exit_status,
                stdout: String::from_utf8_lossy(&stdout).into_owned(),
                stderr: String::from_utf8_lossy(&stderr).into_owned(),
                truncated,
            })
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(err)) => Err(self.protocol(format!("running `{command}`: {err}"))),
            Err(_) => Err(SshError::CommandTimeout {
                host: self.target.host.clone(),
                command: command.to_string(),
                waited: timeout,
            }),
        }
    }

    /// Ends the connection politely; errors are irrelevant at this point.
    pub async fn close(self) {
        let _ = self.handle.disconnect(russh::Disconnect::ByApplication, "", "en").await;
    }

    fn protocol(&self, reason: String) -> SshError {
        SshError::Protocol {
            host: self.target.host.clone(),
            address: format!("{}:{}", self.target.address, self.target.port),
            reason,
        }
    }
}

fn append(buffer: &mut Vec<u8>, data: &[u8]) -> bool {
    let room = CAPTURE_LIMIT.saturating_sub(buffer.len());
    buffer.extend_from_slice(&data[..data.len().min(room)]);
    data.len() > room
}

async fn attempt(
    target: &SshTarget,
    key: &Arc<PrivateKey>,
    policy: &HostKeyPolicy,
) -> Result<(Handle<Checker>, String), Attempt> {
    let seen = Arc::new(Mutex::new(None));
    let checker = Checker { policy: policy.clone(), seen: seen.clone() };
    let config = Arc::new(client::Config { nodelay: true, ..client::Config::default() });
    let address = (target.address.as_str(), target.port);
    let mut handle = match client::connect(config, address, checker).await {
        Ok(handle) => handle,
        Err(russh::Error::UnknownKey) => {
            let got = seen.lock().ok().and_then(|s| s.clone()).unwrap_or_else(|| "<none>".into());
            return Err(Attempt::Mismatch(got));
        }
        Err(err) => return Err(Attempt::Network(err.to_string())),
    };
    // Only RSA keys need the server's preferred hash; asking costs up to a second.
    let hash = if key.algorithm().is_rsa() {
        handle.best_supported_rsa_hash().await.ok().flatten().flatten()
    } else {
        None
    };
    let auth =
        handle.authenticate_publickey(&target.user, PrivateKeyWithHashAlg::new(key.clone(), hash)).await;
    let server_key = seen.lock().ok().and_then(|s| s.clone()).unwrap_or_default();
    match auth {
        Ok(AuthResult::Success) => Ok((handle, server_key)),
        Ok(AuthResult::Failure { .. }) => Err(Attempt::Auth),
        Err(err) => Err(Attempt::Network(err.to_string())),
    }
}

/// Checks that the machine at `target` presents a key `policy` accepts, **without logging in**:
/// the key exchange proves the server holds the key's private half, then the connection is
/// closed before any authentication, so nothing (not even the client key's public half) is
/// offered to a machine that is not the pinned one, and its sshd logs no login. Retries network
/// failures until `options.bound`; a wrong key fails at once.
pub async fn verify_host_key(
    target: &SshTarget,
    policy: &HostKeyPolicy,
    options: &ConnectOptions,
) -> Result<(), SshError> {
    let started = Instant::now();
    let deadline = started + options.bound;
    let mut delay = FIRST_WAIT;
    loop {
        let seen = Arc::new(Mutex::new(None));
        let checker = Checker { policy: policy.clone(), seen: seen.clone() };
        let config = Arc::new(client::Config { nodelay: true, ..client::Config::default() });
        let address = (target.address.as_str(), target.port);
        let remaining = deadline.saturating_duration_since(Instant::now());
        let attempt_timeout = options.attempt_timeout.min(remaining.max(Duration::from_millis(100)));
        let last =
            match tokio::time::timeout(attempt_timeout, client::connect(config, address, checker)).await {
                Ok(Ok(handle)) => {
                    let _ = handle.disconnect(russh::Disconnect::ByApplication, "", "en").await;
                    return Ok(());
                }
                Ok(Err(russh::Error::UnknownKey)) => {
                    let got = seen.lock().ok().and_then(|s| s.clone()).unwrap_or_else(|| "<none>".into());
                    return Err(mismatch(target, policy, got));
                }
                Ok(Err(err)) => err.to_string(),
                Err(_) => format!("no answer within {}s", attempt_timeout.as_secs_f32()),
            };
        if Instant::now() + delay >= deadline {
            return Err(SshError::Timeout {
                host: target.host.clone(),
                address: format!("{}:{}", target.address, target.port),
                waited: started.elapsed(),
                last,
            });
        }
        tokio::time::sleep(delay).await;
        delay = next_wait(delay);
    }
}

fn mismatch(target: &SshTarget, policy: &HostKeyPolicy, got: String) -> SshError {
    SshError::HostKeyMismatch {
        host: target.host.clone(),
        address: format!("{}:{}", target.address, target.port),
        expected: policy.lines().join("` or `"),
        got,
    }
}

fn auth(target: &SshTarget) -> SshError {
    SshError::Auth {
        host: target.host.clone(),
        address: format!("{}:{}", target.address, target.port),
        user: target.user.clone(),
    }
}

/// Waits until a TCP connection to `address:port` succeeds (no SSH, no key check): used
/// before handing a fresh VM to nixos-anywhere.
pub async fn wait_for_port(host: &str, address: &str, port: u16, bound: Duration) -> Result<(), SshError> {
    let started = Instant::now();
    let mut delay = FIRST_WAIT;
    loop {
        let attempt =
            tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect((address, port)))
                .await;
        let last = match attempt {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(err)) => err.to_string(),
            Err(_) => "no answer within 5s".to_string(),
        };
        if started.elapsed() + delay >= bound {
            return Err(SshError::Timeout {
                host: host.to_string(),
                address: format!("{address}:{port}"),
                waited: started.elapsed(),
                last,
            });
        }
        tokio::time::sleep(delay).await;
        delay = next_wait(delay);
    }
}
