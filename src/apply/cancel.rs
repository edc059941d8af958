//! Stopping a run on request. A cancelled CI job signals the process: GitHub's runner sends
//! SIGINT, then SIGTERM 7.5 s later, then kills it 2.5 s after that (docs.github.com, "Workflow
//! cancellation reference"); a terminal's Ctrl-C is a SIGINT. `run` turns each signal into
//! [`Cancel::request`], and the executor honours it at step boundaries:
//!
//! - after the first request no step starts; the steps not started are reported `cancelled`;
//! - a step that talks to Proxmox (clone, configure, start, …) is let finish, so the task it
//!   started ends and is recorded (a clone's VM carries the notes that name the host), for at
//!   most [`IN_FLIGHT_GRACE`];
//! - a step that only waits or runs nixprox's own processes (the address wait, nixos-anywhere,
//!   a switch) stops at once: dropping it kills its process group and removes its temporary
//!   key files;
//! - a second request stops everything at once.
//!
//! Nothing is lost by stopping: every step reads live state first, so the next run resumes.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// How long a step already talking to Proxmox may go on after the first request. Long enough
/// for most tasks (a clone of a small disk, a config write); GitHub's SIGTERM comes sooner.
pub const IN_FLIGHT_GRACE: Duration = Duration::from_secs(60);

/// The signal that asked the run to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT: Ctrl-C, or the first signal of a cancelled GitHub job.
    Interrupt,
    /// SIGTERM: the second signal of a cancelled GitHub job, `systemctl stop`, `docker stop`.
    Terminate,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct State {
    /// The first request and when it came.
    requested: Option<(Signal, Instant)>,
    /// A second request: steps in flight stop too.
    abort: bool,
}

/// Whether the run was asked to stop; cheap to clone and to share between hosts.
#[derive(Debug, Clone)]
pub struct Cancel {
    state: Arc<watch::Sender<State>>,
}

impl Default for Cancel {
    fn default() -> Self {
        Cancel::new()
    }
}

impl Cancel {
    /// Not requested (library callers that never stop a run keep it that way).
    pub fn new() -> Cancel {
        Cancel { state: Arc::new(watch::Sender::new(State::default())) }
    }

    /// Asks the run to stop: the first request stops new steps, any later one everything.
    /// Returns whether this was the first.
    pub fn request(&self, signal: Signal) -> bool {
        let mut first = false;
        self.state.send_modify(|state| match state.requested {
            None => {
                state.requested = Some((signal, Instant::now()));
                first = true;
            }
            Some(_) => state.abort = true,
        });
        first
    }

    /// The signal of the first request, if any.
    pub fn requested(&self) -> Option<Signal> {
        self.state.borrow().requested.map(|(signal, _)| signal)
    }

    /// Resolves at the first request.
    pub async fn wait_requested(&self) -> Signal {
        let mut receiver = self.state.subscribe();
        loop {
            if let Some((signal, _)) = receiver.borrow_and_update().requested {
                return signal;
            }
            // The sender lives as long as `self`: `changed` cannot fail while we wait.
            let _ = receiver.changed().await;
        }
    }

    /// Resolves when a step already talking to Proxmox must stop too: at a second request,
    /// or [`IN_FLIGHT_GRACE`] after the first.
    pub async fn wait_abort(&self) {
        self.wait_abort_after(IN_FLIGHT_GRACE).await;
    }

    async fn wait_abort_after(&self, grace: Duration) {
        let mut receiver = self.state.subscribe();
        loop {
            let state = *receiver.borrow_and_update();
            if state.abort {
                return;
            }
            match state.requested {
                Some((_, at)) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at + grace) => return,
                        _ = receiver.changed() => {}
                    }
                }
                None => {
                    let _ = receiver.changed().await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_request_stops_new_steps_the_second_everything() {
        let cancel = Cancel::new();
        assert_eq!(cancel.requested(), None);
        let waiting = tokio::spawn({
            let cancel = cancel.clone();
            async move { cancel.wait_requested().await }
        });
        assert!(cancel.request(Signal::Interrupt));
        assert_eq!(waiting.await.expect("join"), Signal::Interrupt);
        assert_eq!(cancel.requested(), Some(Signal::Interrupt));
        let abort = tokio::spawn({
            let cancel = cancel.clone();
            async move { cancel.wait_abort_after(Duration::from_secs(3600)).await }
        });
        tokio::task::yield_now().await;
        assert!(!abort.is_finished(), "in-flight steps go on after the first request");
        assert!(!cancel.request(Signal::Terminate));
        tokio::time::timeout(Duration::from_secs(5), abort).await.expect("aborted").expect("join");
        assert_eq!(cancel.requested(), Some(Signal::Interrupt), "the first signal is the one reported");
    }

    #[tokio::test]
    async fn steps_in_flight_get_a_bounded_grace() {
        let cancel = Cancel::new();
        cancel.request(Signal::Terminate);
        let started = Instant::now();
        cancel.wait_abort_after(Duration::from_millis(200)).await;
        assert!(started.elapsed() >= Duration::from_millis(200));
    }
}
