//! The image bootstrap's parts against their real counterparts: the image fixture
//! (`fixtures/image`) evaluated and built by the real `nix`, its images made by Debian's
//! `qemu-img`, uploaded to and imported by fakepve (with the Proxmox behaviour the test driver
//! adds), and guest files read through fakepve's guest agent.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nixprox::config::Defaults;
use nixprox::flake::host::{Bootstrap, ImageEval};
use nixprox::flake::{EvaluatedHost, ResolveError, evaluate, resolve, resolve_all, resolve_image};
use nixprox::image::{BuiltImages, ImageBuild, ImageError, ImageFormat, build_image, find_images};
use nixprox::proxmox::guest::{ED25519_HOST_KEY, read_guest_file};
use nixprox::proxmox::import::{
    ImportError, ImportPresence, check_import_storage, check_import_version, find_import, format_import_disk,
    import_volid, list_import_files,
};
use nixprox::proxmox::upload::{
    TenPercentSteps, UploadError, UploadProgress, UploadRequest, sha256_file, upload_image,
};
use nixprox::proxmox::{Upid, wait_task};
use nixprox::spec::DiskSpec;
use serde_json::json;

use crate::support::fakepve::{FakePve, Scenario};
use crate::support::nix::{Fixture, nix};

const TASK_TIMEOUT: Duration = Duration::from_secs(30);
const BUILD_TIMEOUT: Duration = Duration::from_secs(300);

fn require_qemu_img() {
    assert!(
        Path::new("/usr/bin/qemu-img").is_file(),
        "the image fixture makes its images with /usr/bin/qemu-img: install Debian's qemu-utils (scripts/setup does)"
    );
}

fn defaults() -> Defaults {
    Defaults {
        node: Some("pve1".into()),
        storage: Some("local-lvm".into()),
        bridge: Some("vmbr0".into()),
        template: Some("nixos-bootstrap".into()),
        image_storage: Some("images".into()),
    }
}

async fn inventory(fixture: &Fixture) -> Vec<EvaluatedHost> {
    match evaluate(&fixture.request()).await {
        Ok(inventory) => inventory.hosts,
        Err(err) => panic!("evaluating the image fixture failed: {err}"),
    }
}

fn host<'a>(hosts: &'a [EvaluatedHost], attr: &str) -> &'a EvaluatedHost {
    hosts.iter().find(|h| h.attr == attr).unwrap_or_else(|| panic!("host `{attr}` in the inventory"))
}

/// The host's declared disks, resolved.
fn disks(host: &EvaluatedHost) -> BTreeMap<String, DiskSpec> {
    resolve(&host.attr, &host.decl, &host.system, &defaults()).expect("the host resolves").spec.disks
}

fn package(host: &EvaluatedHost) -> &ImageEval {
    host.system.image.as_ref().unwrap_or_else(|| panic!("host `{}` has an image package", host.attr))
}

/// Builds the host's image package from the fixture (sandbox off, as every fixture build) and
/// finds its images.
async fn build(fixture: &Fixture, host: &EvaluatedHost, format: ImageFormat) -> BuiltImages {
    let mut image_build = ImageBuild::new(nix(), fixture.flake_ref(), &host.attr);
    image_build.override_inputs = crate::support::nix::override_inputs();
    image_build.options.push(("sandbox".into(), "false".into()));
    let out = match build_image(&image_build, &package(host).out_path, BUILD_TIMEOUT).await {
        Ok(out) => out,
        Err(err) => panic!("building the image of `{}` failed: {err}", host.attr),
    };
    find_images(&host.attr, &out, &disks(host), format).expect("one image per disk")
}

#[tokio::test]
async fn image_packages_are_evaluated_never_built() {
    let fixture = Fixture::copy("image");
    // A fresh salt gives every image a store path no earlier run can have built.
    let salt = format!("{}-{:?}", std::process::id(), std::time::SystemTime::now());
    std::fs::write(fixture.dir.path().join("test-image.json"), json!({"salt": salt}).to_string())
        .expect("write test-image.json");
    let hosts = inventory(&fixture).await;

    let web = host(&hosts, "web");
    assert!(web.decl.bootstrap.image.enable);
    assert_eq!(web.decl.bootstrap.image.format, ImageFormat::Qcow2);
    assert_eq!(web.decl.bootstrap.image.storage, None);
    assert_eq!(host(&hosts, "cache").decl.bootstrap.image.storage.as_deref(), Some("images"));
    assert_eq!(host(&hosts, "db").decl.bootstrap.image.format, ImageFormat::Raw);
    assert!(!host(&hosts, "plain").decl.bootstrap.image.enable);

    for attr in ["web", "cache", "db", "disko"] {
        let image = package(host(&hosts, attr));
        assert!(image.out_path.starts_with("/nix/store/"), "{attr}: {image:?}");
        let drv = image.drv_path.as_deref().expect("a derivation");
        assert!(drv.ends_with("-images.drv"), "{attr}: {drv}");
        assert!(!Path::new(&image.out_path).exists(), "{attr}: evaluating built `{}`", image.out_path);
    }
    assert_eq!(package(web), package(host(&hosts, "cache")), "one package, one image for both hosts");
    assert_ne!(package(web).out_path, package(host(&hosts, "db")).out_path);
    assert!(
        package(host(&hosts, "disko")).out_path.ends_with("-disko-disko-images"),
        "disko's images by default"
    );
    assert_eq!(host(&hosts, "plain").system.image, None);
    assert_eq!(host(&hosts, "nopackage").system.image, None);

    // Resolved: the storage from the host, else from the settings; the plan id sees the package.
    let cache = host(&hosts, "cache");
    let source =
        resolve_image(&cache.attr, &cache.decl, &cache.system, &defaults()).expect("valid").expect("image");
    assert_eq!((source.storage.as_str(), &source.package), ("images", package(cache)));
    let web_source =
        resolve_image(&web.attr, &web.decl, &web.system, &defaults()).expect("valid").expect("image");
    assert_eq!(web_source.storage, "images");
    let system_json = serde_json::to_value(&web.system).expect("serialise");
    assert_eq!(system_json["image"]["outPath"], json!(package(web).out_path));
    let plain_json = serde_json::to_value(&host(&hosts, "plain").system).expect("serialise");
    assert!(plain_json.get("image").is_none(), "other hosts' plan inputs are unchanged: {plain_json}");

    let nopackage = host(&hosts, "nopackage");
    assert!(matches!(
        resolve_image(&nopackage.attr, &nopackage.decl, &nopackage.system, &defaults()),
        Err(ResolveError::NoImagePackage { .. })
    ));
    // A host without a package stops the whole flake with the fix; the others resolve.
    let err = resolve_all(&hosts, &defaults()).expect_err("nopackage has none");
    assert!(matches!(err, ResolveError::NoImagePackage { ref host } if host == "nopackage"), "{err}");
    let others: Vec<EvaluatedHost> = hosts.iter().filter(|h| h.attr != "nopackage").cloned().collect();
    let resolved = resolve_all(&others, &defaults()).expect("image hosts resolve");
    let disko = resolved.iter().find(|h| h.host == "disko").expect("disko");
    assert!(
        matches!(&disko.bootstrap, Bootstrap::Image(source) if source.package.image_sizes["main"] == "32M")
    );
}

#[tokio::test]
async fn image_packages_build_into_one_image_per_disk() {
    require_qemu_img();
    let fixture = Fixture::copy("image");
    let hosts = inventory(&fixture).await;

    let web = build(&fixture, host(&hosts, "web"), ImageFormat::Qcow2).await;
    let image = &web.images["scsi0"];
    assert_eq!(image.info.virtual_size, 64 << 20, "qemu-img's qcow2 header, read by nixprox");
    assert!(image.info.file_size < 1 << 20, "a qcow2 holds only the written blocks: {:?}", image.info);
    let hash = &package(host(&hosts, "web")).out_path["/nix/store/".len()..][..32];
    assert_eq!(image.import_name, format!("nixprox-{hash}-scsi0.qcow2"));

    let db = build(&fixture, host(&hosts, "db"), ImageFormat::Raw).await;
    assert_eq!(db.images.keys().collect::<Vec<_>>(), ["scsi0", "scsi1"]);
    assert_eq!(
        (db.images["scsi0"].info.virtual_size, db.images["scsi1"].info.file_size),
        (16 << 20, 8 << 20)
    );

    // disko names the image after its disk (`main`); it serves the single declared disk.
    let disko = build(&fixture, host(&hosts, "disko"), ImageFormat::Qcow2).await;
    assert!(disko.images["scsi0"].path.ends_with("main.qcow2"), "{:?}", disko.images);
    assert_eq!(disko.images["scsi0"].info.virtual_size, 32 << 20);

    // A qcow2 package read as raw, or a build that is not what the plan evaluated: refused.
    assert!(matches!(
        find_images("web", &web.out, &disks(host(&hosts, "web")), ImageFormat::Raw),
        Err(ImageError::MissingDisk { .. })
    ));
    let mut image_build = ImageBuild::new(nix(), fixture.flake_ref(), "web");
    image_build.override_inputs = crate::support::nix::override_inputs();
    image_build.options.push(("sandbox".into(), "false".into()));
    let planned = package(host(&hosts, "db")).out_path.clone();
    let err = build_image(&image_build, &planned, BUILD_TIMEOUT).await.expect_err("not the planned package");
    assert_eq!(
        err.to_string(),
        format!(
            "the image of host `web` was built as `{}`, but the plan evaluated `{planned}` (the flake changed since the plan: run `nixprox plan` again)",
            web.out
        )
    );
}

/// A cluster with a file-based storage that takes imports (`images`) beside fakepve's default
/// `local` (dir, no `import`, as on a fresh node) and `local-lvm` (LVM-thin).
fn image_cluster() -> Scenario {
    Scenario::new().set(
        "storages",
        json!({"images": {"type": "dir", "path": "/mnt/images", "content": "iso,import"},
               "elsewhere": {"type": "dir", "path": "/mnt/elsewhere", "content": "import", "nodes": "pve2"}}),
    )
}

async fn built_web() -> BuiltImages {
    require_qemu_img();
    let fixture = Fixture::copy("image");
    let hosts = inventory(&fixture).await;
    build(&fixture, host(&hosts, "web"), ImageFormat::Qcow2).await
}

#[tokio::test]
async fn a_built_image_uploads_verifies_and_becomes_a_disk() {
    let built = built_web().await;
    let image = &built.images["scsi0"];
    let pve = FakePve::start(image_cluster());
    let client = pve.client();

    let version = check_import_version(&client).await.expect("PVE 9 imports images");
    assert_eq!((version.major, version.minor), (9, 0));
    let status = check_import_storage(&client, "pve1", "images").await.expect("images takes imports");
    assert!(!status.shared);
    assert!(list_import_files(&client, "pve1", "images").await.expect("list").is_empty());

    let request = UploadRequest {
        node: "pve1".into(),
        storage: "images".into(),
        file_name: image.import_name.clone(),
        path: image.path.clone(),
        sha256: sha256_file(&image.path).await.expect("hash"),
    };
    let seen: Arc<Mutex<Vec<UploadProgress>>> = Arc::default();
    let record = Arc::clone(&seen);
    upload_image(&client, &request, move |p| record.lock().expect("progress lock").push(p), TASK_TIMEOUT)
        .await
        .expect("uploaded");

    let seen = seen.lock().expect("progress lock").clone();
    assert!(!seen.is_empty());
    assert!(seen.windows(2).all(|w| w[0].sent < w[1].sent), "progress only grows");
    assert_eq!(seen.last().map(|p| (p.sent, p.total)), Some((image.info.file_size, image.info.file_size)));
    let mut steps = TenPercentSteps::default();
    let lines: Vec<u8> = seen.iter().filter_map(|p| steps.step(p)).collect();
    assert_eq!(lines.last(), Some(&100), "{lines:?}");

    let files = list_import_files(&client, "pve1", "images").await.expect("list");
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].volid, import_volid("images", &image.import_name));
    assert_eq!((files[0].size, files[0].format.as_str()), (image.info.file_size, "qcow2"));
    assert_eq!(find_import(&files, &image.import_name, image.info.file_size), ImportPresence::Complete);
    let uploads: Vec<(String, String)> =
        pve.requests(false).into_iter().filter(|(_, path)| path.ends_with("/upload")).collect();
    assert_eq!(uploads, [("POST".to_string(), "/api2/json/nodes/pve1/storage/images/upload".to_string())]);

    // A VM disk imported from it has the image's size until apply grows it.
    let disk = DiskSpec {
        storage: "local-lvm".into(),
        size_bytes: 1 << 30,
        serial: Some("root".into()),
        discard: true,
        ssd: true,
        iothread: false,
    };
    let scsi0 = format_import_disk(&disk, &files[0].volid);
    let data = client
        .post("/nodes/pve1/qemu", &[("vmid", "200"), ("name", "web"), ("scsi0", scsi0.as_str())])
        .await
        .expect("create from the import");
    let upid = Upid::from_data(&data).expect("a task");
    wait_task(&client, &upid, TASK_TIMEOUT).await.expect("created");
    let config = &pve.vm(200)["config"];
    assert_eq!(config["scsi0"], json!("local-lvm:vm-200-disk-0,discard=on,serial=root,size=64M,ssd=1"));

    // Uploading again (an interrupted run, re-run) overwrites: still one complete file.
    upload_image(&client, &request, |_| {}, TASK_TIMEOUT).await.expect("uploaded again");
    let files = list_import_files(&client, "pve1", "images").await.expect("list");
    assert_eq!(files.len(), 1);
    assert_eq!(find_import(&files, &image.import_name, image.info.file_size), ImportPresence::Complete);
}

#[tokio::test]
async fn a_damaged_upload_is_refused_with_what_proxmox_computed() {
    let built = built_web().await;
    let image = &built.images["scsi0"];
    let pve = FakePve::start(image_cluster());
    let client = pve.client();
    let sha256 = sha256_file(&image.path).await.expect("hash");
    let request = UploadRequest {
        node: "pve1".into(),
        storage: "images".into(),
        file_name: image.import_name.clone(),
        path: image.path.clone(),
        sha256: "0".repeat(64),
    };
    let err = upload_image(&client, &request, |_| {}, TASK_TIMEOUT).await.expect_err("checksum mismatch");
    assert!(matches!(&err, UploadError::ChecksumMismatch { got, .. } if *got == sha256), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "upload of `{}` to storage `images` on node `pve1` arrived damaged: Proxmox computed sha256 `{sha256}` but nixprox sent `{}` (the file changed while it was sent, or the connection corrupted it; apply again uploads it anew)",
            image.import_name,
            "0".repeat(64)
        )
    );
    assert!(list_import_files(&client, "pve1", "images").await.expect("list").is_empty(), "nothing kept");
}

/// A 4 KiB raw file in `dir`, to upload as `nixprox-x.raw` to `storage` on `pve1`.
async fn small_upload(dir: &Path, storage: &str) -> UploadRequest {
    let path = dir.join("x.raw");
    std::fs::write(&path, vec![0u8; 4096]).expect("write");
    UploadRequest {
        node: "pve1".into(),
        storage: storage.into(),
        file_name: "nixprox-x.raw".into(),
        sha256: sha256_file(&path).await.expect("hash"),
        path,
    }
}

#[tokio::test]
async fn storages_and_versions_that_cannot_take_images_name_the_fix() {
    let pve = FakePve::start(image_cluster());
    let client = pve.client();
    let check = |storage: &'static str, node: &'static str| {
        let client = client.clone();
        async move { check_import_storage(&client, node, storage).await.expect_err("refused").to_string() }
    };
    assert_eq!(
        check("local", "pve1").await,
        "storage `local` on node `pve1` does not allow `import` content (allow it with `pvesm set local --content backup,iso,vztmpl,import`, or in the UI: Datacenter → Storage → `local` → Content → Import)"
    );
    assert_eq!(
        check("local-lvm", "pve1").await,
        "storage `local-lvm` on node `pve1` is of type `lvmthin`, which cannot hold image files (use a file-based storage, e.g. `dir`, `nfs`, `cifs` or `cephfs`, with the `import` content type)"
    );
    assert_eq!(
        check("nowhere", "pve1").await,
        "storage `nowhere` does not exist on node `pve1` (check `nixprox.bootstrap.image.storage` or `defaults.image_storage`)"
    );
    assert!(
        check("elsewhere", "pve1")
            .await
            .starts_with("storage `elsewhere` is disabled or not available on node `pve1`")
    );

    // An upload there anyway: Proxmox's own refusal, with the file and the storage.
    let dir = tempfile::tempdir().expect("tempdir");
    let request = small_upload(dir.path(), "local").await;
    let err = upload_image(&client, &request, |_| {}, TASK_TIMEOUT).await.expect_err("no import content");
    assert_eq!(
        err.to_string(),
        "failed to upload `nixprox-x.raw` to storage `local` on node `pve1`: failed to post to `/nodes/pve1/storage/local/upload`: 500 storage 'local' does not support 'import' content"
    );

    pve.command(json!({"cmd": "set", "version": "8.3.5"}));
    let err = check_import_version(&client).await.expect_err("too old");
    assert!(matches!(&err, ImportError::TooOld { version, .. } if version == "8.3.5"), "{err}");
    assert!(err.to_string().ends_with("needs Proxmox VE 8.4 or later: upgrade the cluster, or bootstrap these hosts with `nixprox.bootstrap.template` or `nixprox.bootstrap.iso`)"), "{err}");
    let request = UploadRequest { storage: "images".into(), ..request };
    let err =
        upload_image(&client, &request, |_| {}, TASK_TIMEOUT).await.expect_err("8.3 has no import uploads");
    assert!(err.to_string().contains("400 Parameter verification failed. (content: value 'import' does not have a value in the enumeration 'iso, vztmpl')"), "{err}");
}

#[tokio::test]
async fn uploads_need_allocate_template_on_the_storage() {
    let pve = FakePve::start(image_cluster().grant("nixprox@pve", "/storage/images", &["Datastore.Audit"]));
    let client = pve.client();
    check_import_storage(&client, "pve1", "images").await.expect("Datastore.Audit reads the status");
    assert!(list_import_files(&client, "pve1", "images").await.expect("and lists imports").is_empty());
    let dir = tempfile::tempdir().expect("tempdir");
    let request = small_upload(dir.path(), "images").await;
    let renamed = UploadRequest { file_name: "nixprox x.raw".into(), ..request.clone() };
    let err =
        upload_image(&client, &renamed, |_| {}, TASK_TIMEOUT).await.expect_err("Proxmox would rename it");
    assert!(matches!(err, UploadError::InvalidName { .. }), "{err}");
    assert!(pve.requests(false).iter().all(|(_, path)| !path.ends_with("/upload")), "refused before sending");
    let err = upload_image(&client, &request, |_| {}, TASK_TIMEOUT).await.expect_err("403");
    assert_eq!(
        err.to_string(),
        "failed to upload `nixprox-x.raw` to storage `images` on node `pve1`: failed to post to `/nodes/pve1/storage/images/upload`: 403 Permission check failed (/storage/images, Datastore.AllocateTemplate) (give the token `Datastore.AllocateTemplate` on `/storage/images`)"
    );
}

#[tokio::test]
async fn guest_files_are_read_through_the_agent() {
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeHostKeyForTheImageTest root@web\n";
    let pve = FakePve::start(
        Scenario::new()
            .guest(json!({"vmid": 101, "name": "web", "status": "running", "config": {"agent": "1"},
                          "agent": {"files": {ED25519_HOST_KEY: key}}}))
            .guest(json!({"vmid": 102, "name": "db", "status": "stopped", "config": {"agent": "1"}, "agent": {}})),
    );
    let client = pve.client();
    let file = read_guest_file(&client, "pve1", 101, ED25519_HOST_KEY).await.expect("read");
    assert_eq!((file.content.as_str(), file.truncated), (key, false));
    let err = read_guest_file(&client, "pve1", 101, "/etc/ssh/absent.pub").await.expect_err("missing");
    assert_eq!(
        err.to_string(),
        "failed to read `/nodes/pve1/qemu/101/agent/file-read`: 500 Agent error: failed to open file '/etc/ssh/absent.pub' (mode: 'r'): No such file or directory"
    );
    let err = read_guest_file(&client, "pve1", 102, ED25519_HOST_KEY).await.expect_err("stopped");
    assert!(err.to_string().ends_with("500 QEMU guest agent is not running"), "{err}");
}
