//! PVE tasks: UPIDs and waiting for a task to finish.
//!
//! Most writes (create, clone, start, resize on some storages) answer with a UPID at once and
//! do the work in a worker; success is only known once `/nodes/{node}/tasks/{upid}/status`
//! says `stopped` with `exitstatus` `OK` (or `WARNINGS: n`, a success with warnings).

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use serde_json::Value;

use super::client::Client;
use super::error::{ProxmoxError, TaskFailure};

/// Lines of the task log carried by [`ProxmoxError::TaskFailed`].
pub const LOG_TAIL_LINES: usize = 20;
/// Log lines fetched per request while looking for the end of the log.
const LOG_PAGE: usize = 500;
/// Never read more than this many pages of one log (an install log can be long).
const LOG_MAX_PAGES: usize = 40;

/// A task id: `UPID:pve1:000A1B2C:0153B1A2:6745F0C1:qmstart:101:root@pam!ci:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upid {
    pub node: String,
    pub pid: u32,
    pub pstart: u64,
    /// Unix time the task started.
    pub starttime: i64,
    /// `qmstart`, `qmclone`, `qmcreate`, `vzdump`, …
    pub task_type: String,
    /// The object: a VMID for VM tasks, sometimes empty.
    pub id: String,
    /// `user@realm` or `user@realm!tokenid`.
    pub user: String,
    raw: String,
}

/// A string that is not a UPID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid task id `{text}`: {reason}")]
pub struct UpidError {
    pub text: String,
    pub reason: &'static str,
}

impl Upid {
    /// Parses `UPID:node:pid:pstart:starttime:type:id:user:` (the three numbers in hex).
    /// The id may itself contain `:` (storage volumes), so the user is taken from the end.
    pub fn parse(text: &str) -> Result<Upid, UpidError> {
        let text = text.trim();
        let bad = |reason| UpidError { text: text.to_string(), reason };
        let rest = text.strip_prefix("UPID:").ok_or_else(|| bad("it does not start with `UPID:`"))?;
        let rest = rest.strip_suffix(':').ok_or_else(|| bad("it does not end with `:`"))?;
        let fields: Vec<&str> = rest.split(':').collect();
        if fields.len() < 7 {
            return Err(bad("it has fewer than 8 fields"));
        }
        let hex = |field: &str| {
            u64::from_str_radix(field, 16).map_err(|_| bad("pid, pstart or starttime is not hex"))
        };
        let node = fields[0];
        if node.is_empty() {
            return Err(bad("the node is empty"));
        }
        let user = fields[fields.len() - 1];
        Ok(Upid {
            node: node.to_string(),
            pid: u32::try_from(hex(fields[1])?).map_err(|_| bad("the pid is too large"))?,
            pstart: hex(fields[2])?,
            starttime: i64::try_from(hex(fields[3])?).map_err(|_| bad("the start time is too large"))?,
            task_type: fields[4].to_string(),
            id: fields[5..fields.len() - 1].join(":"),
            user: user.to_string(),
            raw: text.to_string(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// `/nodes/{node}/tasks/{upid}`: the UPID escaped as one path segment.
    pub fn api_path(&self) -> String {
        /// Keep `:`, `@` and `!` (valid in a path segment, and what PVE's own clients send).
        const SEGMENT: &AsciiSet = &CONTROLS
            .add(b' ')
            .add(b'"')
            .add(b'#')
            .add(b'%')
            .add(b'/')
            .add(b'?')
            .add(b'<')
            .add(b'>')
            .add(b'`');
        format!(
            "/nodes/{}/tasks/{}",
            utf8_percent_encode(&self.node, SEGMENT),
            utf8_percent_encode(&self.raw, SEGMENT)
        )
    }

    /// The UPID a write answered with (`data` is the UPID string).
    pub fn from_data(data: &Value) -> Result<Upid, UpidError> {
        match data.as_str() {
            Some(text) => Upid::parse(text),
            None => Err(UpidError { text: data.to_string(), reason: "the answer is not a string" }),
        }
    }
}

impl FromStr for Upid {
    type Err = UpidError;
    fn from_str(text: &str) -> Result<Upid, UpidError> {
        Upid::parse(text)
    }
}

impl fmt::Display for Upid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// How a task that succeeded ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskOutcome {
    Ok,
    /// `WARNINGS: n`: done, but PVE logged warnings (the `WARN:` lines of the log, or the
    /// exit status when none can be found).
    Warnings(Vec<String>),
}

/// Waits until the task stops, polling its status with a growing interval (100 ms to 2 s).
/// A task that ends in anything but `OK` or `WARNINGS` becomes [`ProxmoxError::TaskFailed`]
/// with the last [`LOG_TAIL_LINES`] lines of its log.
pub async fn wait_task(client: &Client, upid: &Upid, timeout: Duration) -> Result<TaskOutcome, ProxmoxError> {
    let started = Instant::now();
    let status_path = format!("{}/status", upid.api_path());
    let mut interval = Duration::from_millis(100);
    loop {
        let status = client.get(&status_path, &[]).await?;
        if status.get("status").and_then(Value::as_str) == Some("stopped") {
            let exitstatus =
                status.get("exitstatus").and_then(Value::as_str).unwrap_or("unknown").to_string();
            return finish(client, upid, exitstatus).await;
        }
        let elapsed = started.elapsed();
        if elapsed >= timeout {
            return Err(ProxmoxError::TaskTimeout {
                upid: upid.to_string(),
                node: upid.node.clone(),
                task_type: upid.task_type.clone(),
                id: upid.id.clone(),
                waited: timeout,
            });
        }
        tokio::time::sleep(interval.min(timeout - elapsed)).await;
        interval = (interval * 3 / 2).min(Duration::from_secs(2));
    }
}

/// Waits for the task a write answered with and returns the warnings of a `WARNINGS: n`
/// ending; `null` (a synchronous answer) is done at once. A failed task is
/// [`ProxmoxError::TaskFailed`]; any other failure while following the task is wrapped in
/// [`ProxmoxError::Unconfirmed`]: the write was accepted, so it must not count as not executed.
pub async fn wait_answer(
    client: &Client,
    data: &Value,
    timeout: Duration,
) -> Result<Vec<String>, ProxmoxError> {
    if data.is_null() {
        return Ok(Vec::new());
    }
    let upid = Upid::from_data(data).map_err(|err| {
        ProxmoxError::Unconfirmed(Box::new(ProxmoxError::Decode {
            method: reqwest::Method::POST,
            path: "(task id)".into(),
            detail: err.to_string(),
            body: data.to_string(),
        }))
    })?;
    match wait_task(client, &upid, timeout).await {
        Ok(TaskOutcome::Ok) => Ok(Vec::new()),
        Ok(TaskOutcome::Warnings(warnings)) => Ok(warnings),
        Err(err @ ProxmoxError::TaskFailed(_)) => Err(err),
        Err(err) => Err(ProxmoxError::Unconfirmed(Box::new(err))),
    }
}

/// `POST path` with owned form pairs, then [`wait_answer`].
pub async fn post_and_wait(
    client: &Client,
    path: &str,
    form: &[(String, String)],
    timeout: Duration,
) -> Result<Vec<String>, ProxmoxError> {
    let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let data = client.post(path, &pairs).await?;
    wait_answer(client, &data, timeout).await
}

async fn finish(client: &Client, upid: &Upid, exitstatus: String) -> Result<TaskOutcome, ProxmoxError> {
    if exitstatus == "OK" {
        return Ok(TaskOutcome::Ok);
    }
    if exitstatus.starts_with("WARNINGS") {
        let log = read_log(client, upid).await?;
        let mut warnings: Vec<String> = log.into_iter().filter(|line| line.starts_with("WARN:")).collect();
        if warnings.is_empty() {
            warnings.push(exitstatus);
        }
        return Ok(TaskOutcome::Warnings(warnings));
    }
    let log_tail = match read_log(client, upid).await {
        Ok(log) => tail(log, LOG_TAIL_LINES),
        Err(err) => vec![format!("(the task log could not be read: {err})")],
    };
    Err(ProxmoxError::TaskFailed(Box::new(TaskFailure {
        upid: upid.to_string(),
        node: upid.node.clone(),
        task_type: upid.task_type.clone(),
        id: upid.id.clone(),
        exitstatus,
        log_tail,
    })))
}

/// The task's whole log (up to `LOG_MAX_PAGES` pages), as lines.
pub async fn read_log(client: &Client, upid: &Upid) -> Result<Vec<String>, ProxmoxError> {
    let path = format!("{}/log", upid.api_path());
    let mut lines = Vec::new();
    for page in 0..LOG_MAX_PAGES {
        let start = (page * LOG_PAGE).to_string();
        let limit = LOG_PAGE.to_string();
        let data = client.get(&path, &[("start", &start), ("limit", &limit)]).await?;
        let entries = data.as_array().map(Vec::as_slice).unwrap_or_default();
        lines.extend(entries.iter().filter_map(|e| e.get("t").and_then(Value::as_str)).map(str::to_string));
        if entries.len() < LOG_PAGE {
            break;
        }
    }
    Ok(lines)
}

fn tail(mut lines: Vec<String>, count: usize) -> Vec<String> {
    let skip = lines.len().saturating_sub(count);
    lines.drain(..skip);
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_real_upids() {
        let upid =
            Upid::parse("UPID:pve1:000A1B2C:0153B1A2:6745F0C1:qmstart:101:root@pam!ci:").expect("valid");
        assert_eq!(upid.node, "pve1");
        assert_eq!(upid.pid, 0x000A_1B2C);
        assert_eq!(upid.pstart, 0x0153_B1A2);
        assert_eq!(upid.starttime, 0x6745_F0C1);
        assert_eq!(upid.task_type, "qmstart");
        assert_eq!(upid.id, "101");
        assert_eq!(upid.user, "root@pam!ci");
        assert_eq!(upid.to_string(), "UPID:pve1:000A1B2C:0153B1A2:6745F0C1:qmstart:101:root@pam!ci:");

        let empty_id =
            Upid::parse("UPID:node-2:000003E8:00001B58:6B0724BD:aptupdate::root@pam:").expect("valid");
        assert_eq!((empty_id.task_type.as_str(), empty_id.id.as_str()), ("aptupdate", ""));

        let volume =
            Upid::parse("UPID:pve1:00001234:00005678:6745F0C1:download:local:iso/nixos.iso:root@pam:")
                .expect("valid");
        assert_eq!(volume.id, "local:iso/nixos.iso");
        assert_eq!(volume.user, "root@pam");
    }

    #[test]
    fn rejects_what_is_not_a_upid() {
        for (text, reason) in [
            ("101", "it does not start with `UPID:`"),
            ("UPID:pve1:1:2:3:qmstart:101:root@pam", "it does not end with `:`"),
            ("UPID:pve1:1:2:qmstart:root@pam:", "it has fewer than 8 fields"),
            ("UPID:pve1:zz:2:3:qmstart:101:root@pam:", "pid, pstart or starttime is not hex"),
        ] {
            assert_eq!(Upid::parse(text).expect_err(text).reason, reason, "{text}");
        }
    }

    #[test]
    fn api_path_escapes_only_what_must_be() {
        let upid =
            Upid::parse("UPID:pve1:00001234:00005678:6745F0C1:download:local:iso/a b.iso:root@pam!ci:")
                .expect("valid");
        assert_eq!(
            upid.api_path(),
            "/nodes/pve1/tasks/UPID:pve1:00001234:00005678:6745F0C1:download:local:iso%2Fa%20b.iso:root@pam!ci:"
        );
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let lines: Vec<String> = (1..=30).map(|n| n.to_string()).collect();
        assert_eq!(tail(lines.clone(), 3), vec!["28", "29", "30"]);
        assert_eq!(tail(lines[..2].to_vec(), 3), vec!["1", "2"]);
    }
}
