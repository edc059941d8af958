//! Whether a switched host needs a reboot, and whether a reboot took: what the running kernel
//! booted from (`/run/booted-system`) against what the switched system would boot. NixOS's
//! own `system.autoUpgrade.allowReboot` reboots when the kernel, the initrd or the kernel
//! modules differ; nixprox compares those links (`readlink -f`) and also the content of
//! `kernel-params` (a file in the toplevel, so its own path always differs), which the plan's
//! NixOS changes already call "reboot needed".

use std::sync::Arc;
use std::time::{Duration, Instant};

use russh::keys::PrivateKey;

use super::switch::shell_quote;
use crate::ssh::{ConnectOptions, HostKeyPolicy, Retry, Session, SshError, SshTarget};

/// Prints every boot file that differs between `/run/booted-system` and the system in `$1`,
/// one name a line, then `end`; only `unknown` when there is no `/run/booted-system` (not
/// NixOS, or a system that does not record what it booted). Reads only; needs no root.
const BOOT_DIFF_SCRIPT: &str = r#"sys=$1 booted=/run/booted-system
[ -e "$booted" ] || { echo unknown; exit 0; }
target() { if [ -e "$1" ]; then readlink -f "$1"; fi; }
for f in kernel initrd kernel-modules; do
  [ "$(target "$booted/$f")" = "$(target "$sys/$f")" ] || echo "$f"
done
[ "$(cat "$booted/kernel-params" 2>/dev/null)" = "$(cat "$sys/kernel-params" 2>/dev/null)" ] || echo kernel-params
echo end
"#;

/// The boot files that differ (`None`: unknown, no `/run/booted-system`), from the script's
/// output; `None` too for output the script cannot have printed (cut short).
fn parse_boot_diff(stdout: &str) -> Option<Vec<String>> {
    let lines: Vec<&str> = stdout.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    match lines.split_last() {
        Some((&"end", names)) => Some(names.iter().map(|n| n.to_string()).collect()),
        _ => None,
    }
}

/// The command that runs [`BOOT_DIFF_SCRIPT`] against `system`.
fn boot_diff_command(system: &str) -> String {
    format!("sh -c {} sh {}", shell_quote(BOOT_DIFF_SCRIPT), shell_quote(system))
}

/// What differs between the booted system and `system` on the host (`None`: unknown).
pub async fn boot_changes(
    target: &SshTarget,
    key: &Arc<PrivateKey>,
    policy: &HostKeyPolicy,
    options: &ConnectOptions,
    system: &str,
) -> Result<Option<Vec<String>>, SshError> {
    let session = Session::connect(target, key, policy, options).await?;
    let output = session.exec(&boot_diff_command(system), Duration::from_secs(30)).await;
    session.close().await;
    let output = output?;
    if !output.success() {
        return Err(SshError::Protocol {
            host: target.host.clone(),
            address: format!("{}:{}", target.address, target.port),
            reason: format!("the boot files check exited {:?}: {}", output.exit_status, output.stderr.trim()),
        });
    }
    Ok(parse_boot_diff(&output.stdout))
}

/// After a reboot: waits (up to `bound`) until the host answers with its pinned key, runs
/// `system` (`/run/current-system`) and booted it (no boot file differs). Polls, because the
/// reboot task may end before the old system has stopped answering.
pub async fn wait_rebooted(
    target: &SshTarget,
    key: &Arc<PrivateKey>,
    policy: &HostKeyPolicy,
    system: &str,
    bound: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let poll = ConnectOptions {
        attempt_timeout: Duration::from_secs(5),
        bound: Duration::from_secs(5),
        retry: Retry::Network,
    };
    let mut last = String::from("no answer yet");
    while started.elapsed() < bound {
        let running = crate::ssh::read_current_system(target, key, policy, &poll, Duration::from_secs(10));
        match running.await {
            Err(err @ SshError::HostKeyMismatch { .. }) => return Err(err.into()),
            Err(err) => last = err.to_string(),
            Ok(None) => last = "no `/run/current-system`".into(),
            Ok(Some(running)) if running != system => last = format!("runs `{running}`"),
            Ok(Some(_)) => match boot_changes(target, key, policy, &poll, system).await {
                Ok(Some(changes)) if changes.is_empty() => return Ok(()),
                Ok(Some(changes)) => last = format!("still booted from other {}", changes.join(", ")),
                Ok(None) => last = "no `/run/booted-system`".into(),
                Err(err) => last = err.to_string(),
            },
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    anyhow::bail!(
        "host `{}` did not come back from its reboot running and booted from `{system}` within {}s (last: {last}); check the VM's console in Proxmox, then run apply again",
        target.host,
        bound.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_diff_lines() {
        assert_eq!(parse_boot_diff("end\n"), Some(vec![]));
        assert_eq!(parse_boot_diff("kernel\ninitrd\nend\n"), Some(vec!["kernel".into(), "initrd".into()]));
        assert_eq!(parse_boot_diff("unknown\n"), None);
        assert_eq!(parse_boot_diff("kernel\n"), None, "cut short");
        assert_eq!(parse_boot_diff(""), None);
    }

    /// The script on this machine's `sh`, against two directories laid out like toplevels.
    #[test]
    fn script_finds_what_differs_between_two_systems() {
        let dir = tempfile::tempdir().expect("tempdir");
        let make = |name: &str, kernel: &str, params: &str| {
            let sys = dir.path().join(name);
            std::fs::create_dir_all(&sys).expect("mkdir");
            std::fs::write(dir.path().join(kernel), "").expect("kernel");
            std::os::unix::fs::symlink(dir.path().join(kernel), sys.join("kernel")).expect("link");
            std::fs::write(sys.join("kernel-params"), params).expect("params");
            sys.display().to_string()
        };
        let old = make("old", "linux-6.6.30", "console=ttyS0");
        let same = make("same", "linux-6.6.30", "console=ttyS0");
        let new = make("new", "linux-6.6.31", "console=ttyS0 quiet");
        let run = |booted: &str, system: &str| {
            // The script names /run/booted-system; here it is `booted`.
            let script = BOOT_DIFF_SCRIPT.replace("/run/booted-system", booted);
            let out =
                std::process::Command::new("sh").args(["-c", &script, "sh", system]).output().expect("sh");
            parse_boot_diff(&String::from_utf8_lossy(&out.stdout))
        };
        assert_eq!(run(&old, &same), Some(vec![]));
        assert_eq!(run(&old, &new), Some(vec!["kernel".into(), "kernel-params".into()]));
        assert_eq!(run(&dir.path().join("missing").display().to_string(), &new), None);
    }
}
