//! Running a long external command (nixos-anywhere, `nix copy`): its output is streamed into
//! the log line by line, prefixed with the host, and the last lines are kept for the error.

use std::collections::VecDeque;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

/// Lines of output an error carries.
pub const TAIL_LINES: usize = 30;

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
    let status = tokio::time::timeout(timeout, work).await;
    match status {
        Ok(Ok(status)) if status.success() => Ok(tail.into_iter().collect()),
        Ok(Ok(status)) => Err(RunFailure::Exit { code: status.code(), tail: tail.into_iter().collect() }),
        Ok(Err(err)) => Err(RunFailure::Spawn(format!("`{program}`: {err}"))),
        Err(_) => {
            if let Some(pid) = child.id() {
                // Negative pid: the whole group; `kill` keeps this free of unsafe code.
                let _ = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status();
            }
            let _ = child.kill().await;
            Err(RunFailure::Timeout { tail: tail.into_iter().collect() })
        }
    }
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

    #[tokio::test]
    async fn success_returns_the_tail() {
        let tail =
            run_streaming(&sh("echo one; echo two"), "web", Duration::from_secs(10)).await.expect("ok");
        assert_eq!(tail, vec!["one", "two"]);
    }
}
