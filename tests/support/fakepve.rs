//! fakepve for integration tests: one fake Proxmox VE API per test, on its own loopback
//! address, started through `tests/support/fakepve_driver.py` and steered with its JSON-line
//! commands. The process is killed when the [`FakePve`] is dropped.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::Duration;

use nixprox::proxmox::{Client, ClientOptions, RetryPolicy};
use nixprox::secret::ApiToken;
use serde_json::{Value, json};

/// The default token every fake knows; its secret is random per fake.
pub const TOKEN_ID: &str = "nixprox@pve!test";
const DRIVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/fakepve_driver.py");
const INSTALL: &str = "install fakepve: python3 -m venv .venv && .venv/bin/pip install 'fakepve[crypto]' \
                       (or point NIXPROX_FAKEPVE_PYTHON at a python that has it)";
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// What the fake cluster holds when it starts (the driver's scenario file).
#[derive(Debug, Clone)]
pub struct Scenario {
    value: Value,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario::new()
    }
}

impl Scenario {
    /// No guests; `time_scale` 0 (tasks finish before their request returns).
    pub fn new() -> Scenario {
        Scenario { value: json!({"guests": [], "tokens": {}, "grants": [], "time_scale": 0}) }
    }

    /// A guest as fakepve's guests file describes it (`vmid`, `name`, `node`, `status`,
    /// `config`, `pending`, `template`, `lock`, `pool`, `type`: `qemu`/`lxc`, …).
    pub fn guest(mut self, guest: Value) -> Scenario {
        self.array("guests").push(guest);
        self
    }

    /// Another API token.
    pub fn token(mut self, id: &str, secret: &str) -> Scenario {
        self.value["tokens"][id] = json!(secret);
        self
    }

    /// Privileges for a user or token on a path. The first grant turns permission checks on.
    pub fn grant(mut self, user: &str, path: &str, privs: &[&str]) -> Scenario {
        self.array("grants").push(json!({"user": user, "path": path, "privs": privs}));
        self
    }

    /// A top-level knob: `time_scale`, `latency`, `lock_wait`, `ceph_slow`, `nodes`, `storages`,
    /// `files` (see tests/support/fakepve_driver.py).
    pub fn set(mut self, key: &str, value: Value) -> Scenario {
        self.value[key] = value;
        self
    }

    fn array(&mut self, key: &str) -> &mut Vec<Value> {
        self.value[key].as_array_mut().expect("scenario arrays are created in Scenario::new")
    }
}

/// One request fakepve received: `path` without its query (`/api2/json/nodes/pve1/qemu`),
/// `body` the form body as sent (secrets redacted by fakepve).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: String,
}

impl Request {
    /// Whether this is `method` on a path ending in `suffix`.
    pub fn is(&self, method: &str, suffix: &str) -> bool {
        self.method == method && self.path.ends_with(suffix)
    }
}

/// A running fake PVE.
#[derive(Debug)]
pub struct FakePve {
    child: Child,
    io: Mutex<(ChildStdin, BufReader<ChildStdout>)>,
    url: String,
    ca_cert: PathBuf,
    secret: String,
    dir: tempfile::TempDir,
}

impl FakePve {
    /// Starts the fake with `scenario` plus the default token, on a fresh loopback address.
    pub fn start(scenario: Scenario) -> FakePve {
        let python = python();
        let dir = tempfile::tempdir().expect("temporary directory for fakepve");
        let secret = random_secret();
        let scenario = scenario.token(TOKEN_ID, &secret);
        let scenario_path = dir.path().join("scenario.json");
        std::fs::write(&scenario_path, scenario.value.to_string()).expect("write the scenario file");
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("create fakepve's stderr log");
        let host = next_address();
        let mut child = Command::new(python)
            .arg(DRIVER)
            .arg(&scenario_path)
            .args(["--host", &host, "--ca-dir"])
            .arg(dir.path().join("ca"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|err| panic!("failed to start `{}`: {err} ({INSTALL})", python.display()));
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut stdout = stdout;
            let mut line = String::new();
            let read = stdout.read_line(&mut line);
            // The receiver is gone only when the start timed out; nothing left to do then.
            let _ = tx.send((stdout, line, read));
        });
        let stdout = match rx.recv_timeout(START_TIMEOUT) {
            Ok((stdout, line, Ok(n))) if n > 0 => {
                let ready: Value = serde_json::from_str(&line).unwrap_or_else(|err| {
                    panic!("fakepve driver printed `{line}` instead of its ready line: {err}")
                });
                let url = ready["url"].as_str().expect("ready line has url").to_string();
                let ca_cert = PathBuf::from(ready["ca_cert"].as_str().expect("ready line has ca_cert"));
                return FakePve { child, io: Mutex::new((stdin, stdout)), url, ca_cert, secret, dir };
            }
            Ok((stdout, _, _)) => stdout,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("fakepve did not start within {START_TIMEOUT:?}: {}", read_log(&stderr_path));
            }
        };
        drop(stdout);
        let _ = child.kill();
        let _ = child.wait();
        panic!("fakepve exited before it was ready: {}", read_log(&stderr_path));
    }

    /// `https://127.x.y.z:port`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The PEM certificate the fake serves (its own CA).
    pub fn ca_cert(&self) -> &Path {
        &self.ca_cert
    }

    /// The default token, `nixprox@pve!test=<random secret>`.
    pub fn token(&self) -> String {
        format!("{TOKEN_ID}={}", self.secret)
    }

    /// The default token's secret alone (to check it never leaks).
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// Runs one driver command (`{"cmd": …}`); panics when it fails.
    pub fn command(&self, command: Value) -> Value {
        self.try_command(command.clone())
            .unwrap_or_else(|err| panic!("fakepve command {command} failed: {err}"))
    }

    /// Runs one driver command; `Err` carries the driver's error text.
    pub fn try_command(&self, command: Value) -> Result<Value, String> {
        let mut io = self.io.lock().expect("fakepve driver pipe lock");
        let (stdin, stdout) = &mut *io;
        writeln!(stdin, "{command}").and_then(|()| stdin.flush()).map_err(|err| {
            format!("fakepve driver is gone ({err}): {}", read_log(&self.dir.path().join("stderr.log")))
        })?;
        let mut line = String::new();
        stdout.read_line(&mut line).map_err(|err| format!("reading the driver's answer: {err}"))?;
        if line.is_empty() {
            return Err(format!("fakepve driver exited: {}", read_log(&self.dir.path().join("stderr.log"))));
        }
        let answer: Value =
            serde_json::from_str(&line).map_err(|err| format!("bad answer `{line}`: {err}"))?;
        if answer["ok"] == json!(true) {
            Ok(answer["result"].clone())
        } else {
            Err(answer["error"].as_str().unwrap_or("unknown error").to_string())
        }
    }

    /// Answer requests whose path ends with `path` with `status` and `message`, `times` times
    /// (every time when `None`).
    pub fn fail(&self, method: &str, path: &str, status: u16, message: &str, times: Option<u32>) {
        self.command(json!({"cmd": "fail", "method": method, "path": path, "status": status,
                            "message": message, "times": times}));
    }

    /// A VM's state: config, pending, status, lock, tags, pool, digest.
    pub fn vm(&self, vmid: u32) -> Value {
        self.command(json!({"cmd": "vm", "vmid": vmid}))
    }

    /// `(method, path)` of every request seen so far, oldest first; `clear` forgets them.
    pub fn requests(&self, clear: bool) -> Vec<(String, String)> {
        let seen = self.command(json!({"cmd": "requests", "clear": clear}));
        seen.as_array()
            .expect("requests is a list")
            .iter()
            .map(|r| {
                (r[0].as_str().unwrap_or_default().to_string(), r[1].as_str().unwrap_or_default().to_string())
            })
            .collect()
    }

    /// Every request seen so far with its (form) body, oldest first; `clear` forgets them.
    pub fn requests_with_bodies(&self, clear: bool) -> Vec<Request> {
        let seen = self.command(json!({"cmd": "requests", "clear": clear}));
        seen.as_array()
            .expect("requests is a list")
            .iter()
            .map(|r| {
                let text = |i: usize| r[i].as_str().unwrap_or_default().to_string();
                Request { method: text(0), path: text(1), body: text(2) }
            })
            .collect()
    }

    /// Client options for this fake: pinned CA, default token, 10 s timeout, fast retries.
    pub fn options(&self) -> ClientOptions {
        ClientOptions {
            url: self.url.clone(),
            token: ApiToken::parse(&self.token()).expect("the default token parses"),
            ca_cert: Some(self.ca_cert.clone()),
            insecure: false,
            timeout: Duration::from_secs(10),
            retry: fast_retries(3),
        }
    }

    /// A client with [`FakePve::options`].
    pub fn client(&self) -> Client {
        Client::new(self.options()).expect("client for fakepve")
    }
}

impl Drop for FakePve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Retries with millisecond waits, so retry tests stay fast.
pub fn fast_retries(retries: u32) -> RetryPolicy {
    RetryPolicy { retries, base_delay: Duration::from_millis(10), max_delay: Duration::from_millis(50) }
}

/// A loopback address in 127.0.0.2..=127.0.254.254 that no other fake of this process got,
/// and that other test processes are unlikely to pick (the pid seeds it).
fn next_address() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let slot = (std::process::id().wrapping_mul(97).wrapping_add(n)) % (255 * 253);
    format!("127.0.{}.{}", slot / 253, 2 + slot % 253)
}

/// A python with fakepve and cryptography, found once per process.
fn python() -> &'static Path {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = PYTHON.get_or_init(|| {
        let candidates: Vec<PathBuf> = std::env::var_os("NIXPROX_FAKEPVE_PYTHON")
            .map(PathBuf::from)
            .into_iter()
            .chain([Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python")])
            .collect();
        for python in &candidates {
            let ok = Command::new(python)
                .args(["-c", "import fakepve, cryptography"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(python.clone());
            }
        }
        let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        Err(format!("no python with fakepve found (tried {}); {INSTALL}", tried.join(", ")))
    });
    match found {
        Ok(path) => path,
        Err(message) => panic!("{message}"),
    }
}

fn random_secret() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    hasher.write_u128(nanos);
    format!("canary-{:016x}", hasher.finish())
}

fn read_log(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    if text.trim().is_empty() { "(no output on stderr)".into() } else { text }
}
