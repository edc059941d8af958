//! Image hosts in apply (`nixprox.bootstrap.image`): building the image package on the runner,
//! uploading its files, and, once the VM created from them has booted, pinning its host key
//! read through the guest agent and having the deployer check (or switch) what it runs.
//!
//! Hosts run concurrently, and several may share one package or one upload: [`ImageWork`]
//! makes each build (per package), checksum (per file) and upload (per file and node, or per
//! file for a shared storage) happen once per run, whichever host asks first; the others wait
//! for it and report it as done for them. Uploads are bounded (`concurrency.uploads`).
//!
//! Every step reads live state first: a file of the right name and size on the storage is not
//! sent again; one of another size (an interrupted copy) is sent again and Proxmox overwrites
//! it; a pinned host key is kept.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OnceCell, Semaphore};

use super::executor::HostRun;
use super::params;
use super::step::{Done, StepError};
use crate::flake::DesiredHost;
use crate::flake::host::ImageSource;
use crate::image::{BuiltImages, ImageFile, build_image, find_images};
use crate::proxmox::agent::{AgentBound, AgentWaitError, Asked, wait_for_agent};
use crate::proxmox::guest::{ED25519_HOST_KEY, read_guest_file};
use crate::proxmox::import::{
    ImportPresence, check_import_storage, find_import, import_volid, list_import_files,
};
use crate::proxmox::qemu::{config_text, read_raw};
use crate::proxmox::upload::{UploadRequest, sha256_file, upload_image};

/// Work keyed by a string that runs once per apply, whoever asks first; later askers wait for
/// it and get its result.
pub(super) struct OnceMap<V> {
    cells: Mutex<BTreeMap<String, Arc<OnceCell<V>>>>,
}

impl<V: Clone> OnceMap<V> {
    fn new() -> OnceMap<V> {
        OnceMap { cells: Mutex::new(BTreeMap::new()) }
    }

    /// The work's result, and whether this caller ran it.
    pub(super) async fn run<F, Fut>(&self, key: &str, work: F) -> (V, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let cell = {
            let mut cells = self.cells.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(cells.entry(key.to_string()).or_default())
        };
        let mut ran = false;
        let value = cell
            .get_or_init(|| {
                ran = true;
                work()
            })
            .await
            .clone();
        (value, ran)
    }
}

/// How one import file came to be on its storage.
#[derive(Debug, Clone, PartialEq)]
enum Upload {
    /// A complete file of that name was there: it holds these bytes.
    Present,
    /// Sent: its bytes, how long it took, and the size of the incomplete file it replaced.
    Sent { bytes: u64, took: Duration, replaced: Option<u64> },
}

/// The image work shared by the hosts of one run.
pub(super) struct ImageWork {
    pub(super) builds: OnceMap<Result<String, String>>,
    /// Container templates built from the flake, by storage volume: uploaded once per run.
    pub(super) templates: OnceMap<Result<bool, String>>,
    hashes: OnceMap<Result<String, String>>,
    uploads: OnceMap<Result<Upload, String>>,
    slots: Semaphore,
}

impl ImageWork {
    /// `uploads`: how many uploads may run at once.
    pub(super) fn new(uploads: usize) -> ImageWork {
        ImageWork {
            builds: OnceMap::new(),
            templates: OnceMap::new(),
            hashes: OnceMap::new(),
            uploads: OnceMap::new(),
            slots: Semaphore::new(uploads.max(1)),
        }
    }
}

/// The import volume of each disk, for the create.
pub(super) type Imports = BTreeMap<String, String>;

impl HostRun<'_> {
    /// Builds the host's image package (once per package and run) and finds the image of each
    /// disk in it, checked against this host's disks.
    pub(super) async fn build(
        &self,
        host: &DesiredHost,
        source: &ImageSource,
    ) -> Result<Done<BuiltImages>, StepError> {
        let Some(template) = self.req.image_build else {
            return Err(StepError::other(format!(
                "host `{}` boots from an image, but this apply was started without an image builder (`ApplyRequest::image_build`)",
                host.host
            )));
        };
        let planned = &source.package.out_path;
        let timeout = self.req.options.build_timeout;
        let (built, ran) = self
            .images
            .builds
            .run(planned, || async {
                let build = template.for_host(&host.host);
                build_image(&build, planned, timeout).await.map_err(|err| err.to_string())
            })
            .await;
        let out = built.map_err(StepError::other)?;
        let images = find_images(&host.host, &out, &host.spec.disks, source.format)
            .map_err(|e| StepError::other(e.to_string()))?;
        let files = images.images.len();
        let detail = format!("`{out}`, {files} image{}", if files == 1 { "" } else { "s" });
        Ok(if ran { Done::ok(images).detail(detail) } else { Done::already(images).detail(detail) })
    }

    /// Puts every image file on the host's image storage (once per run and node, or once for
    /// a shared storage), unless a complete file of its name is there; returns the import
    /// volume of each disk.
    pub(super) async fn upload(
        &self,
        host: &DesiredHost,
        source: &ImageSource,
        built: &BuiltImages,
    ) -> Result<Done<Imports>, StepError> {
        let client = self.req.client;
        let (node, storage) = (host.node.as_str(), source.storage.as_str());
        let status =
            check_import_storage(client, node, storage).await.map_err(|e| StepError::other(e.to_string()))?;
        let mut imports = Imports::new();
        let mut details = Vec::new();
        let mut sent = false;
        for (slot, image) in &built.images {
            let name = &image.import_name;
            let key =
                if status.shared { format!("{storage}:{name}") } else { format!("{node}/{storage}:{name}") };
            let (outcome, ran) =
                self.images.uploads.run(&key, || self.upload_file(host, storage, image)).await;
            let what = match outcome.map_err(StepError::other)? {
                Upload::Present => "on the storage already".to_string(),
                Upload::Sent { .. } if !ran => "uploaded for another host in this run".to_string(),
                Upload::Sent { bytes, took, replaced } => {
                    sent = true;
                    let rate = bytes as f64 / took.as_secs_f64().max(0.001);
                    let replaced = replaced
                        .map(|size| format!(", replacing an incomplete copy of {size} bytes"))
                        .unwrap_or_default();
                    format!(
                        "uploaded {} in {:.1}s ({}/s){replaced}",
                        indicatif::HumanBytes(bytes),
                        took.as_secs_f64(),
                        indicatif::HumanBytes(rate as u64)
                    )
                }
            };
            details.push(format!("{name}: {what}"));
            imports.insert(slot.clone(), import_volid(storage, name));
        }
        let detail = details.join("; ");
        Ok(if sent { Done::ok(imports).detail(detail) } else { Done::already(imports).detail(detail) })
    }

    /// One file: sent unless the storage lists a file of its name and size (an incomplete
    /// one is sent again: Proxmox overwrites it), waiting for a free upload slot.
    async fn upload_file(
        &self,
        host: &DesiredHost,
        storage: &str,
        image: &ImageFile,
    ) -> Result<Upload, String> {
        let client = self.req.client;
        let node = host.node.as_str();
        let size = image.info.file_size;
        let files = list_import_files(client, node, storage).await.map_err(|e| e.to_string())?;
        let replaced = match find_import(&files, &image.import_name, size) {
            ImportPresence::Complete => return Ok(Upload::Present),
            ImportPresence::Partial { size } => Some(size),
            ImportPresence::Absent => None,
        };
        let path = image.path.display().to_string();
        let (sha256, _) = self
            .images
            .hashes
            .run(&path, || async { sha256_file(&image.path).await.map_err(|e| e.to_string()) })
            .await;
        let request = UploadRequest {
            node: node.to_string(),
            storage: storage.to_string(),
            file_name: image.import_name.clone(),
            path: image.path.clone(),
            sha256: sha256?,
        };
        let _slot = self.images.slots.acquire().await.map_err(|e| e.to_string())?;
        let started = Instant::now();
        let progress = self.req.progress.upload_reporter(&host.host, &image.import_name, size);
        upload_image(client, &request, progress, self.req.options.task_timeout)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Upload::Sent { bytes: size, took: started.elapsed(), replaced })
    }

    /// Pins the VM's SSH host key as the VM itself reports it through the guest agent, over
    /// the TLS-pinned API (never trusted on first use over the network): waits until the agent
    /// answers and sshd has generated the key, then records it in the metadata block. A key
    /// pinned by an earlier run is kept.
    pub(super) async fn pin_host_key(
        &self,
        host: &DesiredHost,
        node: &str,
        vmid: u32,
    ) -> Result<Done<String>, StepError> {
        let client = self.req.client;
        let raw = read_raw(client, node, vmid)
            .await?
            .ok_or_else(|| StepError::other(format!("VM {vmid} on node `{node}` is gone")))?;
        if let Some(key) = self.metadata_for(host, vmid, &raw, true)?.host_key {
            return Ok(Done::already(key).detail("pinned by an earlier run"));
        }
        let key = self.read_host_key(host, node, vmid).await?;
        let written = self
            .cas_write(node, vmid, "pinned its host key", |raw| {
                let mut metadata = self.metadata_for(host, vmid, raw, true)?;
                metadata.host_key = Some(key.clone());
                let current = config_text(raw, "description").unwrap_or_default();
                Ok(Some(vec![("description".into(), params::notes(host, &current, &metadata))]))
            })
            .await?;
        let warnings = written.map(|w| w.warnings).unwrap_or_default();
        let shown: String = key.chars().take(32).collect();
        Ok(Done::ok(key).detail(format!("{shown}…, read through the guest agent")).warnings(warnings))
    }

    /// Polls `agent/file-read` of the public ed25519 host key until it answers with one, through
    /// the one agent wait (an agent still starting, or a key sshd has not written yet, is "not
    /// yet"; `apply.address_timeout` bounds it).
    async fn read_host_key(&self, host: &DesiredHost, node: &str, vmid: u32) -> Result<String, StepError> {
        let options = self.req.options;
        let bound = AgentBound { timeout: options.address_timeout, interval: options.poll_interval };
        let client = self.req.client;
        let found = wait_for_agent(node, vmid, "SSH host key", bound, || async {
            match read_guest_file(client, node, vmid, ED25519_HOST_KEY).await {
                Ok(file) => Ok(match parse_host_key(&file.content) {
                    Some(key) => Asked::Ready(key),
                    None => Asked::NotYet(format!("`{ED25519_HOST_KEY}` holds no ed25519 public key")),
                }),
                // sshd writes its key on first boot, after the agent may already answer.
                Err(err) if err.to_string().contains("No such file") => {
                    Ok(Asked::NotYet(format!("`{ED25519_HOST_KEY}` is not there yet ({err})")))
                }
                Err(err) => Err(err),
            }
        })
        .await;
        match found {
            Ok(key) => Ok(key),
            Err(AgentWaitError::TimedOut(timed_out)) => Err(StepError::other(format!(
                "no SSH host key for host `{}` through the guest agent of VM {vmid} on node `{node}` {}: {}; the image's system must run qemu-guest-agent and sshd, which writes `{ED25519_HOST_KEY}` on first boot; raise `apply.address_timeout` if it boots slowly",
                host.host,
                timed_out.bound(),
                timed_out.why()
            ))),
            Err(AgentWaitError::Proxmox(err)) => Err(err.into()),
        }
    }
}

/// `ssh-ed25519 <base64>` from a public key file (its comment dropped), if it holds one.
fn parse_host_key(content: &str) -> Option<String> {
    let mut fields = content.lines().next()?.split_whitespace();
    let (kind, key) = (fields.next()?, fields.next()?);
    let base64 = |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=');
    (kind == "ssh-ed25519" && key.starts_with("AAAA") && key.chars().all(base64))
        .then(|| format!("{kind} {key}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_keys_from_the_public_key_file() {
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake+Key/0= root@web";
        assert_eq!(
            parse_host_key(&format!("{key}\n")).as_deref(),
            Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake+Key/0=")
        );
        for bad in [
            "",
            "\n",
            "ssh-rsa AAAAB3Nza root@web",
            "ssh-ed25519",
            "ssh-ed25519 not;base64",
            "ssh-ed25519 BBBB",
        ] {
            assert_eq!(parse_host_key(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn work_runs_once_whoever_asks() {
        let map: OnceMap<u32> = OnceMap::new();
        let calls = std::sync::atomic::AtomicU32::new(0);
        let work = || async {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            7
        };
        let (a, b, c) = tokio::join!(map.run("x", work), map.run("x", work), map.run("y", work));
        assert_eq!((a.0, b.0, c.0), (7, 7, 7));
        assert_eq!([a.1, b.1].iter().filter(|ran| **ran).count(), 1, "one of the two ran it");
        assert!(c.1);
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
