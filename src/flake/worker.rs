//! One evaluation worker: a `nix eval` of [`eval.nix`](nix/eval.nix) over a list of hosts that
//! reports each host on stderr the moment it is evaluated, so the parent can keep what a
//! worker finished when it has to stop it (memory, stealing its tail) and can tell which host
//! was being evaluated when nix failed.
//!
//! A report is a line `<marker><json>` anywhere in a stderr line: `builtins.trace` prints
//! `trace: <string>` on Nix 2.4 to 2.2x, Lix and Determinate alike (a string is printed as is,
//! without quotes), and a prefix or colour from a newer logger does not matter because the
//! marker is searched for. The marker is random per run, so a flake's own traces can neither
//! be mistaken for reports nor forge one. Every other stderr line is kept (the last
//! [`KEPT_LINES`]) for the error message.

use std::collections::VecDeque;
use std::process::{ExitStatus, Stdio};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::{mpsc, oneshot};

use super::command::{NixCommand, NixError};

/// Lines of nix's own stderr kept for an error message (nix prints its error last).
pub const KEPT_LINES: usize = 400;

/// What a worker tells the scheduler, in the order it happened.
#[derive(Debug)]
pub enum Event {
    /// The worker's hosts (after its partition) and the requested names the flake lacks.
    Hello { worker: usize, hosts: Vec<String>, missing: Vec<String> },
    /// One host's result, as `eval.nix` printed it.
    Host { worker: usize, result: Value },
    /// The process ended; `stderr` is nix's own output (reports removed). Always the last
    /// event of a worker.
    Exit { worker: usize, status: std::io::Result<ExitStatus>, stderr: String },
}

/// A running worker, as the scheduler holds it.
#[derive(Debug)]
pub struct Handle {
    pub pid: Option<u32>,
    kill: Option<oneshot::Sender<()>>,
}

impl Handle {
    /// Kills the process (SIGKILL: nothing in an evaluation is worth saving). Its `Exit`
    /// event still arrives.
    pub fn kill(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
    }
}

/// Starts `command` (an eval of `eval.nix` in stream mode with `marker`) as worker `worker`.
pub fn spawn(
    worker: usize,
    command: &NixCommand,
    marker: String,
    events: mpsc::UnboundedSender<Event>,
) -> Result<Handle, NixError> {
    let mut process = command.command();
    process.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = process
        .spawn()
        .map_err(|source| NixError::Spawn { program: command.program().to_path_buf(), source })?;
    let pid = child.id();
    let (kill, killed) = oneshot::channel();
    tokio::spawn(drive(worker, child, marker, killed, events));
    Ok(Handle { pid, kill: Some(kill) })
}

/// Reads the worker's stderr line by line until it closes, kills the process when told to
/// (or when the scheduler is gone), and reports its exit.
async fn drive(
    worker: usize,
    mut child: tokio::process::Child,
    marker: String,
    mut kill: oneshot::Receiver<()>,
    events: mpsc::UnboundedSender<Event>,
) {
    // stdout is only the count of hosts: drain it so nix never blocks on a full pipe.
    let stdout = child.stdout.take();
    let drain = tokio::spawn(async move {
        if let Some(mut stdout) = stdout {
            let mut sink = Vec::new();
            let _ = stdout.read_to_end(&mut sink).await;
        }
    });
    let mut kept: VecDeque<String> = VecDeque::new();
    if let Some(stderr) = child.stderr.take() {
        let mut lines = BufReader::new(stderr).lines();
        let mut killing = false;
        loop {
            tokio::select! {
                line = lines.next_line() => match line {
                    Ok(Some(line)) => match report(&line, &marker) {
                        Some(value) => {
                            let _ = events.send(event(worker, value));
                        }
                        None => {
                            if kept.len() == KEPT_LINES {
                                kept.pop_front();
                            }
                            kept.push_back(line);
                        }
                    },
                    Ok(None) | Err(_) => break,
                },
                _ = &mut kill, if !killing => {
                    killing = true;
                    let _ = child.start_kill();
                }
            }
        }
    }
    let status = child.wait().await;
    let _ = drain.await;
    let stderr = kept.into_iter().collect::<Vec<_>>().join("\n");
    let _ = events.send(Event::Exit { worker, status, stderr });
}

/// The JSON after the marker, if the line is a report.
fn report(line: &str, marker: &str) -> Option<Value> {
    let start = line.find(marker)? + marker.len();
    serde_json::from_str(line[start..].trim_end()).ok()
}

fn event(worker: usize, value: Value) -> Event {
    match value.get("host") {
        Some(_) => Event::Host { worker, result: value },
        None => {
            let names = |key: &str| -> Vec<String> {
                value
                    .get(key)
                    .and_then(Value::as_array)
                    .map(|list| list.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                    .unwrap_or_default()
            };
            Event::Hello { worker, hosts: names("hosts"), missing: names("missing") }
        }
    }
}

/// Resident memory of a process in bytes (`VmRSS` of `/proc/<pid>/status`), or `None` once it
/// is gone or on systems without procfs.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_found_behind_any_prefix_and_others_are_not() {
        let marker = "nixprox-0123abcd:";
        let host = r#"{"host":"web","skipped":true}"#;
        for line in [
            format!("trace: {marker}{host}"),
            format!("\u{1b}[35;1mtrace:\u{1b}[0m {marker}{host}"),
            format!("{marker}{host}"),
        ] {
            let Some(Event::Host { worker: 3, result }) = report(&line, marker).map(|v| event(3, v)) else {
                panic!("not a host report: {line}");
            };
            assert_eq!(result["host"], "web");
        }
        assert!(report("trace: nixprox-other:{\"host\":\"x\"}", marker).is_none());
        assert!(report("trace: hello from the flake", marker).is_none());
        let hello =
            report(&format!("trace: {marker}{{\"hosts\":[\"a\",\"b\"],\"missing\":[\"c\"]}}"), marker)
                .map(|v| event(0, v));
        let Some(Event::Hello { hosts, missing, .. }) = hello else { panic!("no hello") };
        assert_eq!((hosts, missing), (vec!["a".to_string(), "b".to_string()], vec!["c".to_string()]));
    }

    #[test]
    fn rss_of_this_process_is_read_from_proc() {
        let rss = rss_bytes(std::process::id()).expect("procfs on Linux");
        assert!(rss > 1 << 20, "{rss}");
        assert_eq!(rss_bytes(u32::MAX), None);
    }
}
