//! Switching an installed host to a new system with rollback, deploy-rs style.
//!
//! The activation runs detached on the target (`setsid nohup`), so a dropped connection cannot
//! leave it half done. It sets the system profile, runs `switch-to-configuration`, and then
//! waits for a confirmation file that nixprox creates over a *new* SSH connection; without
//! one within the confirm timeout the target rolls back to the previous generation by itself.
//! Every state is written to a status file that nixprox polls.

use std::time::{Duration, Instant};

use base64::Engine;

use crate::ssh::{ConnectOptions, ExecOutput, HostKeyPolicy, Retry, Session, SshError, SshTarget};

/// Where the target keeps one switch's script, log, status and confirmation.
pub const STATE_ROOT: &str = "/run/nixprox";

/// `switch-to-configuration` action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchAction {
    Switch,
    Boot,
}

impl SwitchAction {
    pub fn as_str(self) -> &'static str {
        match self {
            SwitchAction::Switch => "switch",
            SwitchAction::Boot => "boot",
        }
    }
}

/// The script run on the target. Arguments: state dir, new system, action, confirm timeout
/// in seconds, rollback (1 or 0).
pub const ACTIVATE_SCRIPT: &str = r#"set -u
dir=$1 new=$2 action=$3 wait=$4 rollback=$5
profile=/nix/var/nix/profiles/system
status() { printf '%s\n' "$*" > "$dir/status.tmp" && mv "$dir/status.tmp" "$dir/status"; }
roll_back() {
  echo "nixprox: rolling back: $1"
  if nix-env -p "$profile" --rollback; then
    "$(readlink -f "$profile")/bin/switch-to-configuration" "$action"; back=$?
    if [ "$back" -eq 0 ] || [ "$back" -eq 4 ]; then status "rolled-back $1"; return; fi
    status "rollback-failed $1; the previous system's switch-to-configuration exited $back"
  else
    status "rollback-failed $1; nix-env --rollback failed"
  fi
}
status "started"
if ! nix-env -p "$profile" --set "$new"; then status "failed nix-env --set $new failed"; exit 1; fi
"$new/bin/switch-to-configuration" "$action"; rc=$?
if [ "$rc" -ne 0 ] && [ "$rc" -ne 4 ]; then
  if [ "$rollback" = 1 ]; then roll_back "switch-to-configuration exited $rc"
  else status "failed switch-to-configuration exited $rc"; fi
  exit 1
fi
if [ "$rollback" != 1 ]; then status "done $rc"; exit 0; fi
status "activated $rc"
i=0
while [ "$i" -lt "$wait" ]; do
  if [ -e "$dir/confirm" ]; then status "confirmed $rc"; exit 0; fi
  sleep 1; i=$((i+1))
done
if [ -e "$dir/confirm" ]; then status "confirmed $rc"; exit 0; fi
roll_back "no confirmation from nixprox within ${wait}s"
"#;

/// One switch on one host. The closure must already be on the target.
#[derive(Debug, Clone)]
pub struct Activation {
    pub system: String,
    pub action: SwitchAction,
    pub rollback: bool,
    pub confirm_timeout: Duration,
    /// How long `switch-to-configuration` may take before nixprox gives up waiting.
    pub activation_timeout: Duration,
    /// A unique name for this switch's state directory.
    pub id: String,
    /// The login user is not root: every command on the target runs through `sudo -n` (the
    /// state directory, the system profile and `switch-to-configuration` need root).
    pub sudo: bool,
}

impl Activation {
    pub fn state_dir(&self) -> String {
        format!("{STATE_ROOT}/switch-{}", self.id)
    }

    /// The command that starts the script detached and returns at once.
    pub fn launch_command(&self) -> String {
        let dir = self.state_dir();
        let script = base64::engine::general_purpose::STANDARD.encode(ACTIVATE_SCRIPT);
        self.as_root(&format!(
            "mkdir -p {dir} && chmod 700 {dir} && printf %s {script} | base64 -d > {dir}/activate.sh && \
             {{ setsid nohup sh {dir}/activate.sh {dir} {system} {action} {wait} {rollback} > {dir}/log 2>&1 < /dev/null & }}",
            system = shell_quote(&self.system),
            action = self.action.as_str(),
            wait = self.confirm_timeout.as_secs().max(1),
            rollback = u8::from(self.rollback),
        ))
    }

    /// `command` as root: as it is, or through `sudo -n sh -c` (never prompts; without
    /// passwordless sudo it fails with sudo's message).
    pub fn as_root(&self, command: &str) -> String {
        if self.sudo { format!("sudo -n sh -c {}", shell_quote(command)) } else { command.to_string() }
    }
}

/// How the target's script ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinalStatus {
    /// Confirmed (or, without rollback, done) with this `switch-to-configuration` exit code (0 or 4).
    Switched {
        exit_code: i32,
    },
    RolledBack {
        reason: String,
    },
    RollbackFailed {
        reason: String,
    },
    /// Activation failed and rollback was off.
    Failed {
        reason: String,
    },
}

/// What a status line means: `None` while the script is still working.
pub fn parse_status(line: &str) -> Option<FinalStatus> {
    let line = line.trim();
    let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
    let rest = rest.to_string();
    match word {
        "confirmed" | "done" => Some(FinalStatus::Switched { exit_code: rest.parse().unwrap_or(0) }),
        "rolled-back" => Some(FinalStatus::RolledBack { reason: rest }),
        "rollback-failed" => Some(FinalStatus::RollbackFailed { reason: rest }),
        "failed" => Some(FinalStatus::Failed { reason: rest }),
        _ => None,
    }
}

/// Starts the activation and follows it to its end: every poll and the confirmation use a new
/// connection, so confirming proves the switched host still accepts nixprox's SSH.
/// Returns the final status and the tail of the target's log.
pub async fn activate(
    target: &SshTarget,
    key: &std::sync::Arc<russh::keys::PrivateKey>,
    policy: &HostKeyPolicy,
    connect: &ConnectOptions,
    activation: &Activation,
) -> Result<(FinalStatus, String), ActivateError> {
    let session = Session::connect(target, key, policy, connect).await?;
    let launched = session.exec(&activation.launch_command(), Duration::from_secs(60)).await;
    session.close().await;
    let launched = launched?;
    if !launched.success() {
        return Err(ActivateError::Launch(format!(
            "exit status {:?}: {}",
            launched.exit_status,
            launched.stderr.trim()
        )));
    }
    let dir = activation.state_dir();
    let read_status = activation.as_root(&format!("cat {dir}/status 2>/dev/null; true"));
    let poll = ConnectOptions {
        attempt_timeout: connect.attempt_timeout.min(Duration::from_secs(5)),
        bound: Duration::from_secs(5),
        retry: Retry::Network,
    };
    let started = Instant::now();
    let deadline = activation.activation_timeout + activation.confirm_timeout + connect.bound;
    let mut confirmed = false;
    let mut last = String::from("no status read yet");
    while started.elapsed() < deadline {
        let status = poll_status(target, key, policy, &poll, &read_status, &mut last).await?;
        tracing::debug!(host = %target.host, "activation status: `{status}` (last: {last})");
        if let Some(status) = parse_status(&status) {
            let log = read_log(
                target,
                key,
                policy,
                &poll,
                &activation.as_root(&format!("tail -n 30 {dir}/log 2>/dev/null; true")),
            )
            .await;
            return Ok((status, log));
        }
        if !status.is_empty() {
            last = format!("status `{status}`");
        }
        if status.starts_with("activated") && !confirmed {
            let confirm = activation.as_root(&format!("touch {dir}/confirm"));
            confirmed = confirm_switch(target, key, policy, &poll, &confirm, &mut last).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(ActivateError::Unconfirmed { waited: started.elapsed(), last })
}

/// Runs `command` on a new connection, closed after it: the outer error is the connection's,
/// the inner one the command's.
async fn exec_fresh(
    target: &SshTarget,
    key: &std::sync::Arc<russh::keys::PrivateKey>,
    policy: &HostKeyPolicy,
    options: &ConnectOptions,
    command: &str,
) -> Result<Result<ExecOutput, SshError>, SshError> {
    let session = Session::connect(target, key, policy, options).await?;
    let out = session.exec(command, Duration::from_secs(10)).await;
    session.close().await;
    Ok(out)
}

/// One read of the status file (`command` prints it) on a new connection: its text, or empty
/// with `last` set to why it could not be read. A wrong host key ends the activation.
async fn poll_status(
    target: &SshTarget,
    key: &std::sync::Arc<russh::keys::PrivateKey>,
    policy: &HostKeyPolicy,
    options: &ConnectOptions,
    command: &str,
    last: &mut String,
) -> Result<String, ActivateError> {
    match exec_fresh(target, key, policy, options, command).await {
        Ok(Ok(out)) => Ok(out.stdout.trim().to_string()),
        // A wrong host key is never retried into acceptance: fail now.
        Err(err @ SshError::HostKeyMismatch { .. }) => Err(err.into()),
        Ok(Err(err)) | Err(err) => {
            *last = err.to_string();
            Ok(String::new())
        }
    }
}

/// Confirms the switch (`command` touches the confirm file) on a fresh connection, opened
/// after activation finished; whether it was confirmed.
async fn confirm_switch(
    target: &SshTarget,
    key: &std::sync::Arc<russh::keys::PrivateKey>,
    policy: &HostKeyPolicy,
    options: &ConnectOptions,
    command: &str,
    last: &mut String,
) -> bool {
    match exec_fresh(target, key, policy, options, command).await {
        Ok(out) => {
            let confirmed = matches!(out, Ok(ref o) if o.success());
            if !confirmed {
                tracing::warn!(host = %target.host, "could not confirm the switch: {out:?}");
            }
            confirmed
        }
        Err(err) => {
            tracing::warn!(host = %target.host, "switched host does not accept ssh: {err}");
            *last = format!("switched host does not accept ssh: {err}");
            false
        }
    }
}

/// The tail of the activation's log (`command` prints it).
async fn read_log(
    target: &SshTarget,
    key: &std::sync::Arc<russh::keys::PrivateKey>,
    policy: &HostKeyPolicy,
    options: &ConnectOptions,
    command: &str,
) -> String {
    match exec_fresh(target, key, policy, options, command).await {
        Ok(Ok(out)) => out.stdout.trim_end().to_string(),
        _ => String::new(),
    }
}

/// Why [`activate`] could not tell how the switch ended.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error("failed to start the activation: {0}")]
    Launch(String),
    #[error("no final status after {}s (last: {last})", .waited.as_secs())]
    Unconfirmed { waited: Duration, last: String },
}

/// Single-quotes a word for the remote shell.
pub fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status("started"), None);
        assert_eq!(parse_status("activated 0"), None);
        assert_eq!(parse_status("confirmed 4\n"), Some(FinalStatus::Switched { exit_code: 4 }));
        assert_eq!(parse_status("done 0"), Some(FinalStatus::Switched { exit_code: 0 }));
        assert_eq!(
            parse_status("rolled-back no confirmation from nixprox within 5s"),
            Some(FinalStatus::RolledBack { reason: "no confirmation from nixprox within 5s".into() })
        );
        assert!(matches!(parse_status("failed x"), Some(FinalStatus::Failed { .. })));
        assert!(matches!(parse_status("rollback-failed x"), Some(FinalStatus::RollbackFailed { .. })));
    }

    #[test]
    fn launch_is_detached_and_quoted() {
        let activation = Activation {
            system: "/nix/store/abc-nixos-system-web".into(),
            action: SwitchAction::Boot,
            rollback: true,
            confirm_timeout: Duration::from_secs(60),
            activation_timeout: Duration::from_secs(600),
            id: "42".into(),
            sudo: false,
        };
        let command = activation.launch_command();
        assert!(command.contains("{ setsid nohup sh /run/nixprox/switch-42/activate.sh /run/nixprox/switch-42 '/nix/store/abc-nixos-system-web' boot 60 1 > /run/nixprox/switch-42/log 2>&1 < /dev/null & }"), "{command}");
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
        let with_sudo = Activation { sudo: true, ..activation };
        let command = with_sudo.launch_command();
        assert!(command.starts_with("sudo -n sh -c 'mkdir -p /run/nixprox/switch-42 && "), "{command}");
        assert!(command.contains(r"'\''/nix/store/abc-nixos-system-web'\'' boot"), "{command}");
        assert_eq!(with_sudo.as_root("touch x"), "sudo -n sh -c 'touch x'");
    }

    #[test]
    fn script_is_valid_posix_sh() {
        let status =
            std::process::Command::new("sh").args(["-n", "-c", ACTIVATE_SCRIPT]).status().expect("sh");
        assert!(status.success());
    }
}
