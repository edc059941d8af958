//! Running a long external command (nixos-anywhere, `nix copy`): its output is streamed into
//! the log line by line, prefixed with the host, and the last lines are kept for the error.
//! The command runs in its own process group, which is stopped as a whole when it times out
//! or when the caller stops waiting for it (apply was cancelled and dropped the step).

use std::collections::VecDeque;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

/// Lines of output an error carries.
pub const TAIL_LINES: usize = 30;

/// How long a stopped command's processes get after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// A command line plus the environment it needs, as built by the command builders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSpec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// Why a streamed command failed; every variant keeps the tail of its output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunFailure {
    Spawn(String),
    Exit { code: Option<i32>, tail: Vec<String> },
    Timeout { tail: Vec<String> },
}

impl RunFailure {
    /// A one-line reason plus the output tail, for error messages.
    pub fn describe(&self) -> String {
        let (reason, tail) = match self {
            RunFailure::Spawn(err) => return format!("could not start it: {err}"),
            RunFailure::Exit { code: Some(code), tail } => (format!("exit code {code}"), tail),
            RunFailure::Exit { code: None, tail } => ("killed by a signal".to_string(), tail),
            RunFailure::Timeout { tail } => ("timed out".to_string(), tail),
        };
        if tail.is_empty() {
            format!("{reason} (no output)")
        } else {
            format!("{reason}; last lines of its output:\n{}", tail.join("\n"))
        }
    }
}

/// Runs `spec`, logging each stdout/stderr line as `[host] line`, killing it (its whole
/// process group: nixos-anywhere runs ssh and nix below it) after `timeout`.
pub async fn run_streaming(
    spec: &CommandSpec,
    host: &str,
    timeout: Duration,
) -> Result<Vec<String>, RunFailure> {
    let Some((program, args)) = spec.argv.split_first() else {
        return Err(RunFailure::Spawn("empty command line".into()));
    };
    let mut command = Command::new(program);
    command
        .args(args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|err| RunFailure::Spawn(format!("`{program}`: {err}")))?;
    // Declared after `child`, so it is dropped first: the group is stopped before tokio's
    // `kill_on_drop` kills the (then usually gone) leader.
    let mut group = ProcessGroup { id: child.id() };
    let (sender, mut receiver) = mpsc::unbounded_channel();
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(forward(stdout, sender.clone()));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(forward(stderr, sender.clone()));
    }
    drop(sender);
    let mut tail = VecDeque::with_capacity(TAIL_LINES);
    let work = async {
        while let Some(line) = receiver.recv().await {
            tracing::info!(host = %host, "[{host}] {line}");
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        child.wait().await
    };
    let Ok(status) = tokio::time::timeout(timeout, work).await else {
        drop(group);
        let _ = child.kill().await;
        return Err(RunFailure::Timeout { tail: tail.into_iter().collect() });
    };
    group.id = None;
    match status {
        Ok(status) if status.success() => Ok(tail.into_iter().collect()),
        Ok(status) => Err(RunFailure::Exit { code: status.code(), tail: tail.into_iter().collect() }),
        Err(err) => Err(RunFailure::Spawn(format!("`{program}`: {err}"))),
    }
}

/// The process group of a command still running: stopped as a whole when dropped. SIGTERM
/// first, so that the command's own cleanup runs (nixos-anywhere removes, in a `trap … EXIT`,
/// the temporary directory that holds its copy of the SSH key), then SIGKILL for whatever is
/// left after [`STOP_GRACE`]. `kill` with a negative pid reaches the whole group and keeps
/// this free of unsafe code.
#[derive(Debug)]
struct ProcessGroup {
    /// `None` once the command ended by itself.
    id: Option<u32>,
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        signal_group("-TERM", id);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if !group_alive(id) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        signal_group("-KILL", id);
    }
}

fn signal_group(signal: &str, id: u32) {
    let _ = std::process::Command::new("kill")
        .args([signal, "--", &format!("-{id}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Whether a process of group `id` still runs, from `/proc/<pid>/stat` (`pid (comm) state ppid
/// pgrp …`; `comm` may hold spaces and parentheses). An exited process waiting to be reaped
/// (state `Z`) does not count. Without `/proc`, nothing counts: SIGTERM is all it gets.
fn group_alive(id: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else { return false };
    let id = id.to_string();
    entries.flatten().any(|entry| {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { return false };
        let mut fields = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default().split_whitespace();
        let (state, pgrp) = (fields.next(), fields.nth(1));
        state != Some("Z") && pgrp == Some(id.as_str())
    })
}

async fn forward(stream: impl AsyncRead + Unpin, sender: mpsc::UnboundedSender<String>) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if sender.send(line).is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> CommandSpec {
        CommandSpec {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            env: vec![("X".into(), "42".into())],
        }
    }

    #[tokio::test]
    async fn keeps_the_last_lines_and_the_exit_code() {
        let failure = run_streaming(
            &sh("i=0; while [ $i -lt 40 ]; do echo line$i; i=$((i+1)); done; echo err$X >&2; exit 3"),
            "web",
            Duration::from_secs(10),
        )
        .await
        .expect_err("exit 3");
        let RunFailure::Exit { code, tail } = &failure else { panic!("{failure:?}") };
        assert_eq!(*code, Some(3));
        assert_eq!(tail.len(), TAIL_LINES);
        assert!(tail.contains(&"err42".to_string()));
        assert!(!tail.contains(&"line0".to_string()));
        assert!(failure.describe().starts_with("exit code 3; last lines of its output:\n"));
    }

    #[tokio::test]
    async fn times_out_and_kills_the_group() {
        let started = std::time::Instant::now();
        let failure = run_streaming(&sh("echo started; sleep 30 & wait"), "web", Duration::from_millis(500))
            .await
            .expect_err("timeout");
        assert_eq!(failure, RunFailure::Timeout { tail: vec!["started".into()] });
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// Dropping the wait (apply cancelled) stops the whole group, and the command's exit trap
    /// runs (SIGTERM before SIGKILL).
    #[tokio::test]
    async fn a_dropped_wait_stops_the_group_and_lets_its_traps_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("trap-ran");
        let pids = dir.path().join("pids");
        let script = format!(
            "trap 'touch {}' EXIT; sleep 60 & echo $$ $! > {}; wait",
            marker.display(),
            pids.display()
        );
        // bash, like nixos-anywhere: it runs its EXIT trap when a signal ends it.
        let spec = CommandSpec { argv: vec!["bash".into(), "-c".into(), script], env: Vec::new() };
        let running = run_streaming(&spec, "web", Duration::from_secs(60));
        let waited = tokio::time::timeout(Duration::from_millis(800), running).await;
        assert!(waited.is_err(), "still running when dropped");
        let text = std::fs::read_to_string(&pids).expect("the script wrote its pids");
        for pid in text.split_whitespace() {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat.rsplit_once(')').map(|(_, r)| r.trim_start()).unwrap_or_default();
            assert!(stat.is_empty() || state.starts_with('Z'), "process {pid} still runs: {stat}");
        }
        assert!(marker.exists(), "the EXIT trap ran");
    }

    #[tokio::test]
    async fn success_returns_the_tail() {
        let tail =
            run_streaming(&sh("echo one; echo two"), "web", Duration::from_secs(10)).await.expect("ok");
        assert_eq!(tail, vec!["one", "two"]);
    }
}
