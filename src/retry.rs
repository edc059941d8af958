//! Retrying, in one place: how often and how patiently ([`RetryPolicy`]), and which failed
//! operations may be sent again at all ([`may_retry`]).
//!
//! Every retry loop of nixprox is [`RetryPolicy::run`]: the Proxmox client's per-request
//! retries, apply's retries of a whole request-and-task step, and the forge's retries of
//! find-then-write operations. (Waiting for a booting host's SSH is a poll bounded by a
//! deadline, not a retry of a failed request: it lives in `ssh`.) The rule that keeps retries from doing harm lives in
//! [`may_retry`] and nowhere else: a failure is retried only when it is transient, and an
//! operation that acts again when sent twice (a POST that clones, creates or reboots) only
//! when the failure shows the first attempt cannot have been executed. A failure that leaves
//! this open goes back to the caller, which looks for what it asked for before anything else.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

/// How often and how patiently transient failures are retried: exponential backoff with
/// jitter, capped per wait, so a flapping counterpart costs at most `retries × max_delay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub retries: u32,
    /// The first wait; each further wait doubles, up to `max_delay`.
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// `retries` retries starting at 500 ms, capped at 8 s per wait.
    pub fn new(retries: u32) -> RetryPolicy {
        RetryPolicy { retries, base_delay: Duration::from_millis(500), max_delay: Duration::from_secs(8) }
    }

    /// No retries at all.
    pub fn none() -> RetryPolicy {
        RetryPolicy { retries: 0, ..RetryPolicy::new(0) }
    }

    /// The wait before retry number `attempt` (0-based): the backoff step with ±25 % jitter,
    /// so many clients retrying the same server do not hit it in lockstep.
    pub fn delay(&self, attempt: u32) -> Duration {
        let step = self.base_delay.saturating_mul(1u32 << attempt.min(16)).min(self.max_delay);
        step.mul_f64(0.75 + 0.5 * random_unit()).min(self.max_delay)
    }

    /// Runs `operation` until it succeeds, fails in a way [`may_retry`] does not retry, or the
    /// retries are spent. Each retry is logged as `what: attempt n/m failed, retrying in …`.
    pub async fn run<T, E, F, Fut>(&self, what: &str, resend: Resend, mut operation: F) -> Result<T, E>
    where
        E: Retryable,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut attempt = 0;
        loop {
            match operation().await {
                Ok(value) => return Ok(value),
                Err(err) if attempt < self.retries && may_retry(resend, &err) => {
                    let wait = self.delay(attempt);
                    tracing::warn!(
                        "{what}: attempt {}/{} failed, retrying in {:.1}s: {err}",
                        attempt + 1,
                        self.retries + 1,
                        wait.as_secs_f64()
                    );
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }
}

/// What sending an operation a second time would do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resend {
    /// The same as sending it once: reads, `PUT`s and `DELETE`s, compare-and-swap config
    /// writes (the second copy's digest no longer matches), absolute resizes, a start (PVE
    /// refuses a second one), operations that look before they write.
    Idempotent,
    /// It acts again: a `POST` that clones, creates or reboots. Sent again only when the
    /// failure shows that the first copy cannot have been executed.
    OnlyIfNotExecuted,
}

impl Resend {
    /// The HTTP rule: `POST` is not idempotent, the other methods nixprox uses are.
    pub fn for_method(method: &reqwest::Method) -> Resend {
        if *method == reqwest::Method::POST { Resend::OnlyIfNotExecuted } else { Resend::Idempotent }
    }
}

/// What the retry rule needs to know about a failure.
pub trait Retryable: Display {
    /// Whether the same operation may succeed if tried again shortly (a busy server, a held
    /// lock, a dropped connection).
    fn is_transient(&self) -> bool;
    /// Whether the operation certainly had no effect: refused before it acted, or never
    /// reached the server. A timeout or a connection lost after sending is not such a proof.
    fn not_executed(&self) -> bool;
}

/// The rule: transient, and either harmless to repeat or certainly not executed.
pub fn may_retry(resend: Resend, err: &impl Retryable) -> bool {
    err.is_transient() && (resend == Resend::Idempotent || err.not_executed())
}

/// A number in `[0, 1)`, random enough for jitter without pulling in a RNG crate.
pub fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos(),
    );
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A failure with the two properties set by hand.
    #[derive(Debug)]
    struct Failure {
        transient: bool,
        not_executed: bool,
    }

    impl Display for Failure {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "failure")
        }
    }

    impl Retryable for Failure {
        fn is_transient(&self) -> bool {
            self.transient
        }
        fn not_executed(&self) -> bool {
            self.not_executed
        }
    }

    const LOST: Failure = Failure { transient: true, not_executed: false };
    const REFUSED: Failure = Failure { transient: true, not_executed: true };
    const PERMANENT: Failure = Failure { transient: false, not_executed: true };

    fn fast(retries: u32) -> RetryPolicy {
        RetryPolicy { retries, base_delay: Duration::from_millis(1), max_delay: Duration::from_millis(2) }
    }

    #[test]
    fn a_post_is_resent_only_when_it_cannot_have_run() {
        assert!(may_retry(Resend::Idempotent, &LOST));
        assert!(may_retry(Resend::OnlyIfNotExecuted, &REFUSED));
        assert!(!may_retry(Resend::OnlyIfNotExecuted, &LOST));
        assert!(!may_retry(Resend::Idempotent, &PERMANENT));
        assert_eq!(Resend::for_method(&reqwest::Method::POST), Resend::OnlyIfNotExecuted);
        for method in [reqwest::Method::GET, reqwest::Method::PUT, reqwest::Method::DELETE] {
            assert_eq!(Resend::for_method(&method), Resend::Idempotent, "{method}");
        }
    }

    #[tokio::test]
    async fn transient_failures_are_retried_within_the_bound() {
        let calls = AtomicU32::new(0);
        let result = fast(3)
            .run("configure", Resend::Idempotent, || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 { Err(LOST) } else { Ok(7) }
            })
            .await;
        assert_eq!(result.ok(), Some(7));
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        let calls = AtomicU32::new(0);
        let result: Result<(), _> = fast(2)
            .run("configure", Resend::Idempotent, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(LOST)
            })
            .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 3, "the first attempt and two retries");
    }

    #[tokio::test]
    async fn a_lost_answer_to_a_post_comes_back_at_once() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = fast(5)
            .run("clone", Resend::OnlyIfNotExecuted, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(LOST)
            })
            .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn backoff_grows_with_jitter_and_stays_bounded() {
        let policy = RetryPolicy {
            retries: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        for attempt in 0..10 {
            let delay = policy.delay(attempt);
            let step = Duration::from_millis(100 * (1 << attempt)).min(Duration::from_secs(1));
            assert!(delay >= step.mul_f64(0.75) && delay <= Duration::from_secs(1), "{attempt}: {delay:?}");
        }
        assert_eq!(RetryPolicy::none().retries, 0);
    }
}
