//! SIGINT and SIGTERM while `apply` runs: each becomes a [`Cancel::request`], so a cancelled CI
//! job (or Ctrl-C) stops the run at a step boundary and still reports, instead of killing the
//! process half way through a step. Only `apply` listens: `plan` and `drift` change nothing and
//! keep the default (they die at once).

use tokio::signal::unix::{SignalKind, signal};

use crate::apply::cancel::{Cancel, IN_FLIGHT_GRACE, Signal};

/// Starts forwarding the process's SIGINT and SIGTERM to `cancel`, for the rest of the process.
pub fn forward(cancel: &Cancel) -> std::io::Result<()> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let cancel = cancel.clone();
    tokio::spawn(async move {
        loop {
            let signal = tokio::select! {
                Some(()) = interrupt.recv() => Signal::Interrupt,
                Some(()) = terminate.recv() => Signal::Terminate,
                else => return,
            };
            if cancel.request(signal) {
                tracing::warn!(
                    "{}: stopping: no new step starts; a step talking to Proxmox gets up to {}s to finish and be recorded, installs and waits stop now (send the signal again to stop at once)",
                    signal.name(),
                    IN_FLIGHT_GRACE.as_secs()
                );
            } else {
                tracing::warn!("{}: stopping at once", signal.name());
            }
        }
    });
    Ok(())
}
