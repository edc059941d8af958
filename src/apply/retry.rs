//! Step-level retries. The client already retries one request; a step retries the whole
//! request-and-task sequence when the failure is transient at the task level: a config lock
//! that timed out, a VM locked by a backup that is still running, `got no worker upid`. The
//! backoff reuses the client's [`RetryPolicy`], so the bound is `retries × max_delay`.

use std::future::Future;

use crate::proxmox::{ProxmoxError, RetryPolicy};

/// Runs `operation` until it succeeds, fails permanently, or `policy.retries` retries are spent.
/// `what` names the step in the log line of each retry.
pub async fn with_retries<T, F, Fut>(
    policy: RetryPolicy,
    what: &str,
    mut operation: F,
) -> Result<T, ProxmoxError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ProxmoxError>>,
{
    let mut attempt = 0;
    loop {
        match operation().await {
            Ok(value) => return Ok(value),
            Err(err) if attempt < policy.retries && retryable(&err) => {
                let wait = policy.delay(attempt);
                tracing::warn!(
                    "{what}: {err}; retrying in {:.1}s ({}/{})",
                    wait.as_secs_f64(),
                    attempt + 1,
                    policy.retries
                );
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            Err(err) => return Err(err),
        }
    }
}

/// Transient failures worth a new attempt of the whole step. A task timeout is not one: the
/// task may still be running, and starting it again would race it.
pub fn retryable(err: &ProxmoxError) -> bool {
    err.is_transient()
}

/// PVE's answer when a config write lost a compare-and-swap.
pub fn is_digest_conflict(err: &ProxmoxError) -> bool {
    let text = match err {
        ProxmoxError::Http { message, .. } => message.as_str(),
        ProxmoxError::TaskFailed(failure) => failure.exitstatus.as_str(),
        _ => return false,
    };
    text.contains("checksum mismatch")
}

/// PVE's answer when a VMID is taken (the nextid race).
pub fn is_vmid_taken(err: &ProxmoxError) -> bool {
    let text = match err {
        ProxmoxError::Http { message, .. } => message.as_str(),
        ProxmoxError::TaskFailed(failure) => failure.exitstatus.as_str(),
        _ => return false,
    };
    text.contains("already exists")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    fn http(message: &str) -> ProxmoxError {
        ProxmoxError::Http {
            method: reqwest::Method::POST,
            path: "/nodes/pve1/qemu/101/config".into(),
            status: 500,
            message: message.into(),
            body: String::new(),
            hint: None,
        }
    }

    fn fast(retries: u32) -> RetryPolicy {
        RetryPolicy { retries, base_delay: Duration::from_millis(1), max_delay: Duration::from_millis(2) }
    }

    #[tokio::test]
    async fn transient_failures_are_retried_within_the_bound() {
        let calls = AtomicU32::new(0);
        let result = with_retries(fast(3), "configure", || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 { Err(http("VM is locked (backup)")) } else { Ok(7) }
        })
        .await;
        assert_eq!(result.ok(), Some(7));
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        let calls = AtomicU32::new(0);
        let result: Result<(), _> = with_retries(fast(2), "configure", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(http("can't lock file '/var/lock/qemu-server/lock-101.conf' - got timeout"))
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn permanent_failures_are_not() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = with_retries(fast(5), "configure", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(http("checksum mismatch (file change by other user?)"))
        })
        .await;
        assert!(result.as_ref().is_err_and(is_digest_conflict));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(is_vmid_taken(&http("unable to create VM 101: config file already exists")));
    }
}
