//! The evaluation scheduler: runs [`worker`](super::worker)s over the hosts within a CPU bound
//! (`jobs` processes) and a memory bound (`eval.max_memory` for all of them together), and
//! collects every host's result.
//!
//! How it adapts without tuning:
//! - **Start**: one worker takes every host (or the shard's), so no separate listing is paid
//!   for; each worker reserves `max_memory / jobs`.
//! - **Spreading**: while a slot and memory are free, the unstarted hosts of the busiest worker
//!   are split with new workers, when what it has left takes longer than twice a worker's
//!   start (measured). So a few cheap hosts stay in one process (one start, one flake fetch,
//!   one evaluation of the shared libraries), many cheap hosts end in a few big workers, and
//!   heavy hosts spread over every core after the first fraction of a second. When a worker
//!   finishes early, it is split again; the old worker is stopped when it reaches the part
//!   handed off.
//! - **Garbage collection** is deferred to the reservation: a worker's initial GC heap
//!   (`GC_INITIAL_HEAP_SIZE`) is its reservation, so it does not collect garbage before it
//!   would be replaced anyway (nix's own default is at most 384 MiB; with NixOS-sized hosts
//!   collection is a third to half of the CPU, docs/performance.md). A host that does not fit
//!   in `max_memory` this way is tried once more with nix's own collection before it fails.
//! - **Memory**: every worker's resident memory is sampled every [`SAMPLE_EVERY`]. A worker
//!   that would pass its reservation with its next host is replaced at that host boundary
//!   (nothing is lost: finished hosts were reported); one that passes it mid-host is killed
//!   and its hosts go back to the queue. When even a fresh worker cannot finish its first host
//!   within its reservation, reservations double (fewer workers at once, each with more room:
//!   heavy hosts end up one per worker), up to the whole `max_memory`; a host that does not
//!   fit in that alone is an error naming it and the setting.
//! - **Failures**: nix stops at the first host that fails, and the host being evaluated is the
//!   first one the worker had not reported, so no second evaluation is needed to blame it.
//!   The error reported is the first failing host in name order (lists are sorted, and hosts
//!   after a known failure are not started), so it does not depend on timing.
//!
//! - **Host failures** stop the evaluation ([`HostFailures::Fatal`]), unless the caller's
//!   `extra` may be to blame ([`HostFailures::RetryWithoutExtra`]: the host is evaluated once
//!   more alone without it, and only fails the evaluation if it fails again), or each host is
//!   a result of its own ([`HostFailures::Record`]). Either way the failed worker's remaining
//!   hosts go on in a new worker.
//!
//! The worker count, reservations, restarts and the peak of the summed memory are reported in
//! [`EvalStats`] for `--timings` and the benchmark.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::mpsc;

use super::command::{NixCommand, NixError, trim_stderr};
use super::worker::{self, Event, Handle};

/// How often every worker's resident memory is read.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// What a worker may start before the first one reported how long that takes.
const STARTUP_GUESS: Duration = Duration::from_millis(300);

/// What one worker evaluates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Of all attributes (sorted), every `count`-th from `index` on, applied in turn.
    Partition(Vec<[usize; 2]>),
    /// These attributes (sorted).
    Names(Vec<String>),
}

/// The bounds of one evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Workers at once (at least 1).
    pub jobs: usize,
    /// Resident memory of all workers together, in bytes.
    pub max_memory: u64,
    /// Most hosts one process evaluates before it is replaced; 0 = no limit.
    pub batch: usize,
}

/// How the evaluation went, for `--timings` and the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EvalStats {
    /// `nix eval` processes started.
    pub processes: usize,
    /// Workers replaced because of memory or `--eval-batch` (their hosts went on elsewhere).
    pub restarts: usize,
    /// Tails of a worker's list handed to a new worker.
    pub steals: usize,
    /// The largest sum of all workers' resident memory seen, in bytes.
    pub peak_memory: u64,
    /// The largest reservation a worker had at the end, in bytes.
    pub reservation: u64,
    /// Workers that ran at once at most.
    pub max_workers: usize,
}

/// What a failing host means for the evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostFailures {
    /// The evaluation stops; the first failing host in name order is the error.
    Fatal,
    /// The caller's `extra` may be what failed (nix cannot catch every error in it): the host
    /// is evaluated once more alone without `extra`. When that succeeds, only its `extra`
    /// failed ([`Collected::failed`]); when it fails too, the evaluation stops as with `Fatal`.
    RetryWithoutExtra,
    /// A failing host is a result of its own ([`Collected::failed`]); the others go on.
    Record,
}

/// Every host's result as `eval.nix` reported it, and what went wrong.
#[derive(Debug, Default)]
pub struct Collected {
    pub results: BTreeMap<String, Value>,
    /// Hosts that failed without stopping the evaluation, with nix's trimmed message: their
    /// `extra` ([`HostFailures::RetryWithoutExtra`]) or the whole host ([`HostFailures::Record`]).
    pub failed: BTreeMap<String, String>,
    /// Requested names the flake does not have.
    pub missing: Vec<String>,
    pub stats: EvalStats,
}

/// Why an evaluation stopped.
#[derive(Debug)]
pub enum Failure {
    Nix(NixError),
    /// Outside any host (the flake, `nixosConfigurations`): nix's trimmed message.
    Flake(String),
    /// The first failing host in name order, with nix's trimmed message.
    Host {
        host: String,
        message: String,
    },
    /// A host that alone needs more than `max_memory` (`None`: before any host).
    Memory {
        host: Option<String>,
    },
}

/// Builds the command of a worker for a selection, the run's marker, the initial GC heap it
/// gets (`None`: nix's own default) and whether it evaluates the caller's `extra`.
pub type CommandFor<'a> = dyn Fn(&Selection, &str, Option<u64>, bool) -> NixCommand + Send + Sync + 'a;

#[derive(Debug)]
enum Stop {
    /// Replace it at a host boundary: its unreported hosts go back to the queue.
    Restart,
    /// Past its reservation mid-host.
    OverShare { rss: u64 },
    /// It reached the part of its list another worker took over.
    Finished,
    /// Only hosts after a known failure are left.
    Abandon,
}

#[derive(Debug)]
struct Queued {
    selection: Selection,
    reservation: u64,
    /// Garbage collection deferred to the reservation (the initial GC heap is the
    /// reservation); `false` for the last try of a host that did not fit that way.
    deferred_gc: bool,
    /// Whether the worker evaluates the caller's `extra` (not for a host retried without it).
    extra: bool,
}

impl Queued {
    fn new(selection: Selection, reservation: u64) -> Queued {
        Queued { selection, reservation, deferred_gc: true, extra: true }
    }

    /// More of `worker`'s hosts, evaluated as it evaluated them (with or without `extra`).
    fn like(worker: &Running, selection: Selection, reservation: u64) -> Queued {
        Queued { extra: worker.extra, ..Queued::new(selection, reservation) }
    }
}

#[derive(Debug)]
struct Running {
    handle: Handle,
    selection: Selection,
    reservation: u64,
    deferred_gc: bool,
    extra: bool,
    spawned: Instant,
    /// Known from the worker's first report.
    hosts: Option<Vec<String>>,
    /// The worker answers for `hosts[..end]`; the rest was handed off.
    end: usize,
    done: usize,
    /// When the worker listed its hosts, and its memory then.
    hello: Option<(Instant, u64)>,
    /// When its first host was reported.
    first_done: Option<Instant>,
    stop: Option<Stop>,
}

impl Running {
    fn next_host(&self) -> Option<&str> {
        let hosts = self.hosts.as_ref()?;
        (self.done < self.end).then(|| hosts[self.done].as_str())
    }

    fn rss(&self) -> u64 {
        self.handle.pid.and_then(worker::rss_bytes).unwrap_or(0)
    }

    /// What one more host costs this worker, as far as it can tell: the hosts after its first
    /// (the first also pays for what all hosts share: the module system, nixpkgs). Before its
    /// first host is done, only a first host that already took longer than two worker starts
    /// counts (heavy hosts), with the time so far as a lower bound.
    fn per_host(&self, now: Instant, startup: Duration) -> Option<Duration> {
        let count = |n: usize| u32::try_from(n.max(1)).unwrap_or(u32::MAX);
        match (self.hello, self.first_done) {
            (_, Some(first)) => Some(now.duration_since(first) / count(self.done - 1)),
            (Some((since, _)), None) => {
                let spent = now.duration_since(since);
                (spent > startup * 2).then_some(spent)
            }
            (None, None) => None,
        }
    }
}

struct Scheduler<'a> {
    command_for: &'a CommandFor<'a>,
    limits: Limits,
    host_failures: HostFailures,
    marker: String,
    events: mpsc::UnboundedSender<Event>,
    next_id: usize,
    running: BTreeMap<usize, Running>,
    queue: VecDeque<Queued>,
    /// The reservation new workers get: starts at `max_memory / jobs`, doubles when a fresh
    /// worker cannot finish its first host within it.
    current: u64,
    reserved: u64,
    startup: Option<Duration>,
    collected: Collected,
    /// Failed hosts: nix's message, or `None` when the host alone outgrew `max_memory`.
    failures: BTreeMap<String, Option<String>>,
    fatal: Option<Failure>,
}

/// Evaluates `initial` (each selection one worker to start with) within `limits`.
pub async fn run(
    initial: Vec<Selection>,
    limits: Limits,
    host_failures: HostFailures,
    command_for: &CommandFor<'_>,
    marker: String,
) -> Result<Collected, Failure> {
    let limits = Limits { jobs: limits.jobs.max(1), max_memory: limits.max_memory.max(1), ..limits };
    let (events, mut receiver) = mpsc::unbounded_channel();
    // Every worker that may run at once must fit: `jobs` shares from the start, even when
    // one worker starts alone and the others join by splitting its list.
    let current = limits.max_memory / limits.jobs as u64;
    let mut scheduler = Scheduler {
        command_for,
        limits,
        host_failures,
        marker,
        events,
        next_id: 0,
        running: BTreeMap::new(),
        queue: initial.into_iter().map(|selection| Queued::new(selection, current)).collect(),
        current,
        reserved: 0,
        startup: None,
        collected: Collected::default(),
        failures: BTreeMap::new(),
        fatal: None,
    };
    scheduler.fill()?;
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while !scheduler.running.is_empty() {
        tokio::select! {
            event = receiver.recv() => {
                if let Some(event) = event {
                    scheduler.on_event(event);
                    if scheduler.fatal.is_some() {
                        break;
                    }
                    scheduler.fill()?;
                }
            }
            _ = tick.tick() => {
                scheduler.sample();
                // A worker's first host may take long: spread its list before it is done.
                scheduler.fill()?;
            }
        }
    }
    // Dropping the handles kills whatever still runs (after a fatal error).
    scheduler.finish()
}

impl Scheduler<'_> {
    fn finish(mut self) -> Result<Collected, Failure> {
        if let Some(fatal) = self.fatal.take() {
            return Err(fatal);
        }
        match self.failures.pop_first() {
            Some((host, Some(message))) => return Err(Failure::Host { host, message }),
            Some((host, None)) => return Err(Failure::Memory { host: Some(host) }),
            None => {}
        }
        self.collected.stats.reservation = self.current;
        self.collected.missing.sort();
        self.collected.missing.dedup();
        Ok(self.collected)
    }

    /// The first failing host so far: later hosts need not be evaluated.
    fn first_failure(&self) -> Option<&str> {
        self.failures.keys().next().map(String::as_str)
    }

    /// Starts queued work, then steals, while slots and memory allow.
    fn fill(&mut self) -> Result<(), Failure> {
        while self.running.len() < self.limits.jobs {
            if let Some(queued) = self.queue.front_mut() {
                if let (Selection::Names(names), Some(first)) =
                    (&mut queued.selection, self.failures.keys().next())
                {
                    names.retain(|n| n < first);
                }
                if matches!(&queued.selection, Selection::Names(names) if names.is_empty()) {
                    self.queue.pop_front();
                    continue;
                }
                if self.reserved + queued.reservation > self.limits.max_memory && !self.running.is_empty() {
                    break;
                }
                if let Some(queued) = self.queue.pop_front() {
                    self.spawn(queued)?;
                }
                continue;
            }
            if self.reserved + self.current > self.limits.max_memory || !self.steal()? {
                break;
            }
        }
        Ok(())
    }

    fn spawn(&mut self, queued: Queued) -> Result<(), Failure> {
        let id = self.next_id;
        self.next_id += 1;
        let heap = queued.deferred_gc.then_some(queued.reservation);
        let command = (self.command_for)(&queued.selection, &self.marker, heap, queued.extra);
        let handle =
            worker::spawn(id, &command, self.marker.clone(), self.events.clone()).map_err(Failure::Nix)?;
        tracing::debug!(
            worker = id,
            reservation_mib = queued.reservation >> 20,
            selection = ?short(&queued.selection),
            "starting an evaluation worker"
        );
        self.reserved += queued.reservation;
        self.running.insert(
            id,
            Running {
                handle,
                selection: queued.selection,
                reservation: queued.reservation,
                deferred_gc: queued.deferred_gc,
                extra: queued.extra,
                spawned: Instant::now(),
                hosts: None,
                end: 0,
                done: 0,
                hello: None,
                first_done: None,
                stop: None,
            },
        );
        self.collected.stats.processes += 1;
        self.collected.stats.max_workers = self.collected.stats.max_workers.max(self.running.len());
        Ok(())
    }

    /// Splits the busiest worker's unstarted hosts with as many new workers as slots and memory
    /// allow, when what is left there takes longer than twice a worker's start: the worker
    /// keeps the first part, each new worker takes one of the others.
    fn steal(&mut self) -> Result<bool, Failure> {
        let free_memory = (self.limits.max_memory - self.reserved) / self.current.max(1);
        let slots =
            (self.limits.jobs - self.running.len()).min(usize::try_from(free_memory).unwrap_or(usize::MAX));
        if slots == 0 {
            return Ok(false);
        }
        let startup = self.startup.unwrap_or(STARTUP_GUESS);
        let now = Instant::now();
        let victim = self
            .running
            .iter()
            .filter(|(_, w)| w.stop.is_none())
            .filter_map(|(&id, w)| {
                let left = w.end.checked_sub(w.done + 1)?;
                let per_host = w.per_host(now, startup)?;
                (left >= 2 && per_host * u32::try_from(left).unwrap_or(u32::MAX) > startup * 2)
                    .then_some((left, id))
            })
            .max();
        let Some((left, id)) = victim else { return Ok(false) };
        let Some(worker) = self.running.get_mut(&id) else { return Ok(false) };
        let extra = worker.extra;
        let Some(hosts) = &worker.hosts else { return Ok(false) };
        let parts = (slots + 1).min(left);
        let first = worker.done + 1;
        let bounds: Vec<usize> = (0..=parts).map(|k| first + left * k / parts).collect();
        let tails: Vec<Vec<String>> = bounds.windows(2).skip(1).map(|b| hosts[b[0]..b[1]].to_vec()).collect();
        worker.end = bounds[1];
        tracing::debug!(
            from = id,
            workers = tails.len(),
            left,
            "splitting a worker's hosts with new workers"
        );
        for tail in tails {
            self.collected.stats.steals += 1;
            self.spawn(Queued { extra, ..Queued::new(Selection::Names(tail), self.current) })?;
        }
        Ok(true)
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Hello { worker, hosts, missing } => {
                self.collected.missing.extend(missing);
                let Some(w) = self.running.get_mut(&worker) else { return };
                let rss = w.rss();
                let now = Instant::now();
                let took = now.duration_since(w.spawned);
                self.startup = Some(self.startup.map_or(took, |s| s.max(took)));
                w.end = hosts.len();
                w.hosts = Some(hosts);
                w.hello = Some((now, rss));
                self.abandon_after_failure(worker);
            }
            Event::Host { worker, result } => self.on_host(worker, result),
            Event::Exit { worker, status, stderr } => self.on_exit(worker, status, &stderr),
        }
    }

    fn on_host(&mut self, worker: usize, result: Value) {
        let Some(w) = self.running.get_mut(&worker) else { return };
        let Some(host) = result.get("host").and_then(Value::as_str).map(str::to_string) else { return };
        if w.next_host() == Some(host.as_str()) {
            w.done += 1;
            w.first_done.get_or_insert_with(Instant::now);
        }
        self.collected.results.entry(host).or_insert(result);
        if w.stop.is_some() {
            return;
        }
        let Some(hosts) = &w.hosts else { return };
        if w.done >= w.end {
            if w.end < hosts.len() {
                w.stop = Some(Stop::Finished);
                w.handle.kill();
            }
            return;
        }
        let rss = w.rss();
        let base = w.hello.map_or(0, |(_, rss)| rss);
        let per_host = rss.saturating_sub(base) / w.done.max(1) as u64;
        let batch_full = self.limits.batch > 0 && w.done >= self.limits.batch;
        if batch_full || rss + per_host > w.reservation {
            tracing::debug!(
                worker,
                rss_mib = rss >> 20,
                reservation_mib = w.reservation >> 20,
                done = w.done,
                "replacing an evaluation worker at a host boundary"
            );
            w.stop = Some(Stop::Restart);
            w.handle.kill();
            self.collected.stats.restarts += 1;
            return;
        }
        self.abandon_after_failure(worker);
    }

    /// Stops a worker whose remaining hosts all come after a known failure.
    fn abandon_after_failure(&mut self, worker: usize) {
        let Some(first) = self.first_failure().map(str::to_string) else { return };
        let Some(w) = self.running.get_mut(&worker) else { return };
        if w.stop.is_none() && w.next_host().is_some_and(|next| next > first.as_str()) {
            w.stop = Some(Stop::Abandon);
            w.handle.kill();
        }
    }

    fn on_exit(&mut self, worker: usize, status: std::io::Result<std::process::ExitStatus>, stderr: &str) {
        let Some(w) = self.running.remove(&worker) else { return };
        self.reserved -= w.reservation;
        let rest = |w: &Running| -> Option<Vec<String>> {
            let hosts = w.hosts.as_ref()?;
            (w.done < w.end).then(|| hosts[w.done..w.end].to_vec())
        };
        match w.stop {
            Some(Stop::Finished | Stop::Abandon) => {}
            Some(Stop::Restart) => {
                if let Some(rest) = rest(&w) {
                    self.queue.push_front(Queued::like(&w, Selection::Names(rest), self.current));
                }
            }
            Some(Stop::OverShare { rss }) => self.over_share(&w, rss, rest(&w)),
            None => self.ended(&w, status, stderr),
        }
    }

    /// A worker passed its reservation mid-host.
    fn over_share(&mut self, w: &Running, rss: u64, rest: Option<Vec<String>>) {
        self.collected.stats.restarts += 1;
        if w.done > 0 {
            // Its first hosts fit: the rest may too, in a fresh worker.
            if let Some(rest) = rest {
                self.queue.push_front(Queued::like(w, Selection::Names(rest), self.current));
            }
            return;
        }
        let host = w.next_host().map(str::to_string);
        let selection = match rest {
            Some(rest) => Selection::Names(rest),
            None => w.selection.clone(),
        };
        if w.reservation >= self.limits.max_memory && w.deferred_gc {
            // Without collecting garbage it did not fit: once more, collecting as nix does.
            let queued = Queued { deferred_gc: false, ..Queued::like(w, selection, w.reservation) };
            self.queue.push_front(queued);
            return;
        }
        if w.reservation >= self.limits.max_memory {
            tracing::debug!(
                host = host.as_deref().unwrap_or("(listing)"),
                rss_mib = rss >> 20,
                "alone over max_memory"
            );
            match host {
                Some(host) => self.fail(host, None),
                None => self.fatal = Some(Failure::Memory { host: None }),
            }
            return;
        }
        let reservation = (w.reservation.saturating_mul(2)).min(self.limits.max_memory);
        tracing::info!(
            host = host.as_deref().unwrap_or("(listing)"),
            "a host needs more than {} MiB to evaluate: giving each evaluation worker {} MiB (fewer at once)",
            w.reservation >> 20,
            reservation >> 20
        );
        self.current = self.current.max(reservation);
        self.queue.push_front(Queued::like(w, selection, reservation));
    }

    /// A worker ended on its own.
    fn ended(&mut self, w: &Running, status: std::io::Result<std::process::ExitStatus>, stderr: &str) {
        let status = match status {
            Ok(status) => status,
            Err(err) => {
                self.fatal = Some(Failure::Flake(format!("could not wait for nix: {err}")));
                return;
            }
        };
        let message = match status.code() {
            Some(0) => match w.next_host() {
                None if w.hosts.is_some() => return,
                None => "nix finished without listing the hosts it evaluated".to_string(),
                Some(_) => "nix finished without reporting this host".to_string(),
            },
            Some(_) => trim_stderr(stderr),
            None => format!(
                "nix was killed by a signal (out of memory? `eval.max_memory` in nixprox.yaml bounds nixprox's own evaluations){}",
                tail_note(stderr)
            ),
        };
        match w.next_host() {
            Some(host) => self.host_failed(w, host.to_string(), message),
            // Failed before listing its hosts: the flake itself (or a host reported beyond
            // the part this worker answered for, which its new owner reports again).
            None if w.hosts.is_none() => self.fatal = Some(Failure::Flake(message)),
            None => {}
        }
    }

    /// A worker failed on `host`: the evaluation stops, or (see [`HostFailures`]) the host's
    /// failure is recorded, it may be retried without `extra`, and the worker's remaining hosts
    /// go on in a new worker.
    fn host_failed(&mut self, w: &Running, host: String, message: String) {
        let retry = match (self.host_failures, w.extra) {
            (HostFailures::RetryWithoutExtra, true) => true,
            (HostFailures::Record, _) => false,
            _ => {
                self.fail(host, Some(message));
                return;
            }
        };
        tracing::debug!(host, retry, "a host failed: {message}");
        if let Some(hosts) = &w.hosts
            && w.done + 1 < w.end
        {
            let rest = hosts[w.done + 1..w.end].to_vec();
            self.queue.push_back(Queued::like(w, Selection::Names(rest), self.current));
        }
        if retry {
            let alone =
                Queued { extra: false, ..Queued::new(Selection::Names(vec![host.clone()]), self.current) };
            self.queue.push_back(alone);
        }
        self.collected.failed.insert(host, message);
    }

    /// Records a failed host and stops the workers that only have later hosts left.
    fn fail(&mut self, host: String, message: Option<String>) {
        self.failures.insert(host, message);
        let ids: Vec<usize> = self.running.keys().copied().collect();
        for id in ids {
            self.abandon_after_failure(id);
        }
    }

    /// Reads every worker's memory; kills those past their reservation.
    fn sample(&mut self) {
        let mut total = 0;
        for w in self.running.values_mut() {
            let rss = w.rss();
            total += rss;
            if rss > w.reservation && w.stop.is_none() {
                tracing::debug!(
                    rss_mib = rss >> 20,
                    reservation_mib = w.reservation >> 20,
                    "evaluation worker over its memory"
                );
                w.stop = Some(Stop::OverShare { rss });
                w.handle.kill();
            }
        }
        self.collected.stats.peak_memory = self.collected.stats.peak_memory.max(total);
    }
}

fn tail_note(stderr: &str) -> String {
    let trimmed = trim_stderr(stderr);
    if trimmed.is_empty() { String::new() } else { format!(": {trimmed}") }
}

/// A selection for the log: the partition, or the first names and how many.
fn short(selection: &Selection) -> String {
    match selection {
        Selection::Partition(parts) => format!("partition {parts:?}"),
        Selection::Names(names) => match names.as_slice() {
            [] => "no hosts".into(),
            [one] => one.clone(),
            [first, .., last] => format!("{first}…{last} ({})", names.len()),
        },
    }
}
