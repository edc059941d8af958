//! Uploading a disk image to a storage's `import` content, streamed from disk.
//!
//! How Proxmox takes uploads (pve-http-server `APIServer/AnyEvent.pm`, pve-storage
//! `API2/Storage/Status.pm`): `POST /nodes/{node}/storage/{storage}/upload`, a
//! `multipart/form-data` body with a Content-Length (a chunked body is answered with 501). The
//! server reads `content`, `checksum-algorithm` and `checksum` only in this order and only
//! before the file part, which must be named `filename`; it writes the file to a temporary
//! file, answers with the UPID of an `imgcopy` task, and that task verifies the checksum
//! (failing with `checksum mismatch: got '…' != expect '…'`), checks the image as untrusted and
//! copies it into place, overwriting a file of the same name. The token needs
//! `Datastore.AllocateTemplate` on `/storage/{storage}`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::multipart::{Form, Part};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::Client;
use super::error::{ProxmoxError, TransportKind};
use super::tasks::{Upid, wait_task};

/// The slowest link an upload's timeout allows for: the request may take the API timeout plus
/// one second per this many bytes before it is abandoned as stuck.
pub const MIN_RATE: u64 = 256 * 1024;
/// Bytes read from disk and handed to the connection at a time.
const CHUNK: usize = 256 * 1024;

/// One file to upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRequest {
    pub node: String,
    pub storage: String,
    /// Name on the storage (`nixprox-<hash>-<slot>.qcow2`); it must be one Proxmox keeps as it is.
    pub file_name: String,
    pub path: PathBuf,
    /// Lower-case hex SHA-256 of the file ([`sha256_file`]): Proxmox verifies it before it
    /// keeps the file, so a damaged upload never becomes a disk.
    pub sha256: String,
}

/// How far an upload is: bytes handed to the connection so far.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UploadProgress {
    pub sent: u64,
    pub total: u64,
    pub elapsed: Duration,
}

impl UploadProgress {
    /// Bytes per second since the start.
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 { self.sent as f64 / secs } else { 0.0 }
    }

    /// Whole percent sent (100 for an empty file).
    pub fn percent(&self) -> u8 {
        (self.sent.min(self.total) * 100).checked_div(self.total).map_or(100, |percent| percent as u8)
    }
}

/// Picks the progress reports worth a log line where there is no terminal (CI): one each time
/// the upload passes another 10 %.
#[derive(Debug, Clone, Copy, Default)]
pub struct TenPercentSteps {
    reported: Option<u8>,
}

impl TenPercentSteps {
    /// The step (10, 20, … 100) `progress` reached, if it is a new one.
    pub fn step(&mut self, progress: &UploadProgress) -> Option<u8> {
        let step = progress.percent() / 10 * 10;
        if step == 0 || self.reported.is_some_and(|done| done >= step) {
            return None;
        }
        self.reported = Some(step);
        Some(step)
    }
}

/// An upload that did not end with the file on the storage.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("failed to read `{}` to upload it: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "cannot upload `{file}` as an import: Proxmox would rename it (use only letters, digits, `_`, `.` and `-`, ending in `.qcow2`, `.raw`, `.vmdk` or `.ova`)"
    )]
    InvalidName { file: String },
    #[error("failed to upload `{file}` to storage `{storage}` on node `{node}`: {source}")]
    Api { file: String, storage: String, node: String, source: ProxmoxError },
    #[error(
        "upload of `{file}` to storage `{storage}` on node `{node}` did not finish within {}s (the limit allows for {} KiB/s; is the link to the node that slow, or did the node stop reading?)",
        waited.as_secs(),
        MIN_RATE / 1024
    )]
    Timeout { file: String, storage: String, node: String, waited: Duration },
    #[error(
        "upload of `{file}` to storage `{storage}` on node `{node}` arrived damaged: Proxmox computed sha256 `{got}` but nixprox sent `{expected}` (the file changed while it was sent, or the connection corrupted it; apply again uploads it anew)"
    )]
    ChecksumMismatch { file: String, storage: String, node: String, got: String, expected: String },
}

/// Whether Proxmox stores an `import` upload under exactly this name: it takes names matching
/// `[A-Za-z0-9.+=_-]+\.(ova|qcow2|raw|vmdk)`, after replacing every character but
/// `[A-Za-z0-9_.-]` with `_` (pve-storage `API2/Storage/Status.pm` `upload`,
/// `PVE::Storage::normalize_content_filename`). A renamed file would never be found again.
pub fn is_kept_by_proxmox(name: &str) -> bool {
    let Some((stem, extension)) = name.rsplit_once('.') else { return false };
    matches!(extension, "ova" | "qcow2" | "raw" | "vmdk")
        && !stem.is_empty()
        && name.len() <= 255
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// SHA-256 of a file as lower-case hex, read in chunks on a blocking thread.
pub async fn sha256_file(path: &Path) -> Result<String, UploadError> {
    let owned = path.to_path_buf();
    let read_error = |source| UploadError::Read { path: path.to_path_buf(), source };
    let digest = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        use std::io::Read;
        let mut file = std::fs::File::open(&owned)?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let read = file.read(&mut buffer)?;
            if read == 0 {
                return Ok(hex::encode(hasher.finalize()));
            }
            hasher.update(&buffer[..read]);
        }
    })
    .await
    .map_err(|join| read_error(std::io::Error::other(join.to_string())))?;
    digest.map_err(read_error)
}

/// Sends the file and returns the UPID of the `imgcopy` task that puts it in place.
/// `progress` is called after every chunk handed to the connection. Sent once, never retried:
/// the caller decides whether to try again (a new upload overwrites a partial file).
pub async fn start_upload(
    client: &Client,
    request: &UploadRequest,
    progress: impl Fn(UploadProgress) + Send + Sync + 'static,
) -> Result<Upid, UploadError> {
    if !is_kept_by_proxmox(&request.file_name) {
        return Err(UploadError::InvalidName { file: request.file_name.clone() });
    }
    let read_error = |source| UploadError::Read { path: request.path.clone(), source };
    let file = tokio::fs::File::open(&request.path).await.map_err(read_error)?;
    let total = file.metadata().await.map_err(read_error)?.len();
    let body = reqwest::Body::wrap_stream(file_stream(file, total, Arc::new(progress)));
    let file_part = Part::stream_with_length(body, total)
        .file_name(request.file_name.clone())
        .mime_str("application/octet-stream")
        .map_err(|err| api_error(request, ProxmoxError::Config { message: err.to_string() }))?;
    // The order is the one PVE's server reads: content, checksum-algorithm, checksum, file.
    let form = Form::new()
        .text("content", "import")
        .text("checksum-algorithm", "sha256")
        .text("checksum", request.sha256.clone())
        .part("filename", file_part);
    let path = format!("/nodes/{}/storage/{}/upload", request.node, request.storage);
    let timeout = client.timeout() + Duration::from_secs(total / MIN_RATE);
    tracing::info!(node = %request.node, storage = %request.storage, "uploading `{}` ({total} bytes)", request.file_name);
    let data = match client.post_multipart(&path, form, timeout).await {
        Ok(data) => data,
        Err(ProxmoxError::Transport { kind: TransportKind::Timeout, .. }) => {
            return Err(UploadError::Timeout {
                file: request.file_name.clone(),
                storage: request.storage.clone(),
                node: request.node.clone(),
                waited: timeout,
            });
        }
        Err(err) => return Err(api_error(request, err)),
    };
    Upid::from_data(&data).map_err(|err| {
        api_error(
            request,
            ProxmoxError::Decode {
                method: reqwest::Method::POST,
                path,
                detail: err.to_string(),
                body: data.to_string(),
            },
        )
    })
}

/// Uploads the file and waits (up to `task_timeout`) until Proxmox has verified and stored it.
pub async fn upload_image(
    client: &Client,
    request: &UploadRequest,
    progress: impl Fn(UploadProgress) + Send + Sync + 'static,
    task_timeout: Duration,
) -> Result<(), UploadError> {
    let upid = start_upload(client, request, progress).await?;
    match wait_task(client, &upid, task_timeout).await {
        Ok(_) => Ok(()),
        Err(ProxmoxError::TaskFailed(failure)) if checksum_mismatch(&failure.exitstatus).is_some() => {
            let (got, expected) = checksum_mismatch(&failure.exitstatus).unwrap_or_default();
            Err(UploadError::ChecksumMismatch {
                file: request.file_name.clone(),
                storage: request.storage.clone(),
                node: request.node.clone(),
                got,
                expected,
            })
        }
        Err(err) => Err(api_error(request, err)),
    }
}

/// `checksum mismatch: got '<hex>' != expect '<hex>'` (Status.pm's text) → `(got, expected)`.
fn checksum_mismatch(exitstatus: &str) -> Option<(String, String)> {
    let rest = exitstatus.strip_prefix("checksum mismatch: got '")?;
    let (got, rest) = rest.split_once("' != expect '")?;
    let expected = rest.strip_suffix('\'')?;
    Some((got.to_string(), expected.to_string()))
}

fn api_error(request: &UploadRequest, source: ProxmoxError) -> UploadError {
    UploadError::Api {
        file: request.file_name.clone(),
        storage: request.storage.clone(),
        node: request.node.clone(),
        source,
    }
}

/// The file as a stream of chunks, reporting progress after each one.
pub(super) fn file_stream(
    file: tokio::fs::File,
    total: u64,
    progress: Arc<dyn Fn(UploadProgress) + Send + Sync>,
) -> impl futures::Stream<Item = std::io::Result<Vec<u8>>> + Send + 'static {
    let started = Instant::now();
    futures::stream::try_unfold((file, 0u64), move |(mut file, sent)| {
        let progress = Arc::clone(&progress);
        async move {
            let mut chunk = vec![0u8; CHUNK];
            let read = file.read(&mut chunk).await?;
            if read == 0 {
                return Ok(None);
            }
            chunk.truncate(read);
            let sent = sent + read as u64;
            progress(UploadProgress { sent, total, elapsed: started.elapsed() });
            Ok(Some((chunk, (file, sent))))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_mismatch_is_read_from_the_task_status() {
        assert_eq!(
            checksum_mismatch("checksum mismatch: got 'ab12' != expect 'cd34'"),
            Some(("ab12".into(), "cd34".into()))
        );
        assert_eq!(checksum_mismatch("import failed: No space left on device"), None);
    }

    #[test]
    fn proxmox_keeps_only_safe_names() {
        assert!(is_kept_by_proxmox("a.raw") && is_kept_by_proxmox("A-b_c.1.vmdk"));
        for name in ["a b.qcow2", "a+b.qcow2", "a=b.raw", "image.img", ".qcow2", "qcow2", "ä.raw"] {
            assert!(!is_kept_by_proxmox(name), "{name}");
        }
        assert!(!is_kept_by_proxmox(&format!("{}.raw", "a".repeat(252))));
    }

    #[test]
    fn ten_percent_steps_report_each_step_once() {
        let at = |sent| UploadProgress { sent, total: 1000, elapsed: Duration::from_secs(2) };
        let mut steps = TenPercentSteps::default();
        let reported: Vec<Option<u8>> =
            [5, 99, 100, 150, 420, 430, 1000, 1000].into_iter().map(|sent| steps.step(&at(sent))).collect();
        assert_eq!(reported, [None, None, Some(10), None, Some(40), None, Some(100), None]);
        assert_eq!(at(500).rate(), 250.0);
        assert_eq!(UploadProgress { sent: 0, total: 0, elapsed: Duration::ZERO }.percent(), 100);
        assert_eq!(UploadProgress { sent: 0, total: 0, elapsed: Duration::ZERO }.rate(), 0.0);
    }

    #[tokio::test]
    async fn sha256_of_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.raw");
        std::fs::write(&path, b"abc").expect("write");
        assert_eq!(
            sha256_file(&path).await.expect("hash"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let missing = sha256_file(&dir.path().join("absent")).await.expect_err("missing");
        assert!(missing.to_string().starts_with("failed to read `"), "{missing}");
    }
}
