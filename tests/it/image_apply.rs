//! The image bootstrap end to end through the real binary: `nixprox plan`, then `nixprox apply
//! --reviewed-plan` builds the image package of `fixtures/image-deploy` with the real `nix` (a
//! qcow2 made by Debian's qemu-img), uploads it to fakepve (import uploads as the test driver
//! models them from pve-storage), creates the VMs from it, grows their disks, starts them, reads
//! each VM's host key through the fake guest agent, and checks over real SSH what the VM runs:
//! an SSH test host stands in for each booted VM, its /nix, /run and /etc/ssh prepared as the
//! image boots (the image's system in its store and current, its host key generated). Also:
//! the checks that block a plan, and `gc-images`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nixprox::flake::parse_build_json;
use nixprox::install::{SwitchAction, SwitchRequest, switch_host};
use nixprox::metadata::{Metadata, Notes};
use nixprox::proxmox::guest::ED25519_HOST_KEY;
use nixprox::ssh::ClientKey;
use serde_json::{Value, json};

use crate::support::cli::{self, Run, kinds};
use crate::support::fakepve::{FakePve, Scenario};
use crate::support::hosts::agent_with;
use crate::support::nix::{Fixture, override_inputs};
use crate::support::sshd::{TestHost, systems};

fn require_qemu_img() {
    assert!(
        Path::new("/usr/bin/qemu-img").is_file(),
        "the image fixture makes its images with /usr/bin/qemu-img: install Debian's qemu-utils (scripts/setup does)"
    );
}

/// A cluster whose `images` storage takes imports (`content` as given).
fn cluster(content: &str) -> Scenario {
    Scenario::new()
        .set("storages", json!({"images": {"type": "dir", "path": "/mnt/images", "content": content}}))
}

/// The fixture flake, the fake cluster, the SSH test hosts standing in for the booted VMs
/// (`cache` only when asked for), and a work directory.
struct Lab {
    pve: FakePve,
    fixture: Fixture,
    work: tempfile::TempDir,
    web: Option<TestHost>,
    cache: Option<TestHost>,
}

impl Lab {
    /// `hosts`: which hosts get an SSH test host (none for plan-only tests).
    fn start(scenario: Scenario, hosts: &[&str]) -> Lab {
        let web = hosts.contains(&"web").then(TestHost::start);
        let cache = hosts.contains(&"cache").then(TestHost::start);
        let lab = Lab {
            pve: FakePve::start(scenario),
            fixture: Fixture::copy("image-deploy"),
            work: tempfile::Builder::new().prefix("nixprox-image-").tempdir().expect("tempdir"),
            web,
            cache,
        };
        // One client key for both: nixprox has one SSH key.
        if let (Some(web), Some(cache)) = (&lab.web, &lab.cache) {
            std::fs::write(cache.root().join("etc-ssh/authorized_keys"), format!("{}\n", web.client_public))
                .expect("authorize the key on cache");
        }
        let port = |host: &Option<TestHost>| host.as_ref().map_or(22, |h| h.port);
        // A fresh salt: no earlier run built (or uploaded) this image.
        let salt = format!("{}-{:?}", std::process::id(), std::time::SystemTime::now());
        let declared = json!({
            "system": systems::current_system(),
            "revision": "1",
            "salt": salt,
            "ports": {"web": port(&lab.web), "cache": port(&lab.cache)},
        });
        std::fs::write(lab.fixture.dir.path().join("test-image.json"), declared.to_string())
            .expect("write test-image.json");
        let key = lab
            .web
            .as_ref()
            .map(|w| format!("ssh:\n  key: {}\n  connect_timeout: 60\n", w.client_key.display()));
        lab.settings(&key.unwrap_or_default());
        lab
    }

    /// Writes nixprox.yaml with `extra` appended.
    fn settings(&self, extra: &str) {
        let settings = format!(
            "defaults:\n  node: pve1\n  storage: local-lvm\n  bridge: vmbr0\n  image_storage: images\n\
             install:\n  timeout: 300\n{extra}"
        );
        std::fs::write(self.fixture.dir.path().join("nixprox.yaml"), settings).expect("write nixprox.yaml");
    }

    fn web(&self) -> &TestHost {
        self.web.as_ref().expect("web has a test host")
    }

    fn nixprox(&self, args: &[&str]) -> Run {
        let mut command = cli::nixprox();
        command.args(args).args(cli::source_args(&self.fixture)).envs(cli::pve_env(&self.pve));
        command.output().expect("run nixprox").into()
    }

    fn path(&self, name: &str) -> String {
        self.work.path().join(name).display().to_string()
    }

    /// `plan --format json --out plan.json [args]`; returns the plan.
    fn plan(&self, args: &[&str]) -> Value {
        let out = self.path("plan.json");
        let run = self.nixprox(&[&["plan", "--format", "json", "--out", &out], args].concat());
        assert_eq!(run.code, 0, "plan failed:\n{}", run.stderr);
        serde_json::from_str(&std::fs::read_to_string(&out).expect("plan.json")).expect("plan json")
    }

    /// `apply --reviewed-plan plan.json --report report.json [args]`.
    fn apply(&self, args: &[&str]) -> (Run, Value) {
        let report = self.path("report.json");
        let _ = std::fs::remove_file(&report);
        let plan = self.path("plan.json");
        let run = self.nixprox(&[&["apply", "--reviewed-plan", &plan, "--report", &report], args].concat());
        let text = std::fs::read_to_string(&report)
            .unwrap_or_else(|e| panic!("no report ({e}):\n{}\n{}", run.stdout, run.stderr));
        (run, serde_json::from_str(&text).expect("report json"))
    }

    /// Builds a host's toplevel as nixprox evaluates it (the fixture's inputs overridden).
    fn toplevel(&self, host: &str) -> String {
        let mut command = Command::new("nix");
        command.env("NIX_CONFIG", "substituters =").args([
            "--extra-experimental-features",
            "nix-command flakes",
            "build",
            "--json",
            "--no-link",
        ]);
        for input in override_inputs() {
            command.args(["--override-input", &input.name, &input.flake_ref]);
        }
        command.arg(format!(
            "{}#nixosConfigurations.\"{host}\".config.system.build.toplevel",
            self.fixture.flake_ref()
        ));
        let output = command.output().expect("run nix (install Debian's nix-bin)");
        assert!(output.status.success(), "nix build failed: {}", String::from_utf8_lossy(&output.stderr));
        parse_build_json(&String::from_utf8_lossy(&output.stdout)).expect("nix build json")
    }

    /// Prepares `host` as the VM booted from the image whose system is `system`: the system
    /// copied into its store with the real `nix copy` and made current (nixprox's own switch,
    /// trusting the host's key as the image generated it), and the fake guest agent of the VM
    /// named `name` answering with the test host's address and that host key.
    async fn boot(&self, name: &str, host: &TestHost, system: &str) {
        let request = SwitchRequest {
            host: name.into(),
            address: host.address.clone(),
            port: host.port,
            user: "root".into(),
            key: ClientKey::File(self.web().client_key.clone()),
            host_key: host.host_public(),
            toplevel: system.to_string(),
            action: SwitchAction::Switch,
            rollback: false,
            confirm_timeout: Duration::from_secs(30),
            allow_failed_units: false,
            check_sigs: false,
            connect_timeout: Duration::from_secs(10),
            copy_timeout: Duration::from_secs(120),
            activation_timeout: Duration::from_secs(60),
        };
        let outcome = switch_host(&request).await.expect("the image's system onto the test host");
        assert!(!outcome.is_failure(), "{}", outcome.log);
        assert_eq!(host.current_system().as_deref(), Some(system));
        self.pve.command(json!({"cmd": "boot_agent", "name": name, "agent": booted_agent(name, host)}));
    }

    /// Changes keys of ./test-image.json: what the flake declares from now on.
    fn declare(&self, changes: Value) {
        let path = self.fixture.dir.path().join("test-image.json");
        let text = std::fs::read_to_string(&path).expect("read test-image.json");
        let mut declared: Value = serde_json::from_str(&text).expect("test-image.json");
        for (key, value) in changes.as_object().expect("an object of changes") {
            declared[key] = value.clone();
        }
        std::fs::write(path, declared.to_string()).expect("write test-image.json");
    }

    /// The VM named `name`, as fakepve holds it.
    fn vm(&self, name: &str) -> Value {
        let vms = self.pve.command(json!({"cmd": "vms"}));
        let found: Vec<&Value> = vms.as_array().expect("vms").iter().filter(|v| v["name"] == name).collect();
        assert_eq!(found.len(), 1, "exactly one VM `{name}`: {vms:#}");
        self.pve.vm(u32::try_from(found[0]["vmid"].as_u64().expect("vmid")).expect("vmid fits"))
    }

    fn metadata(&self, name: &str) -> Metadata {
        let notes = self.vm(name)["config"]["description"].as_str().expect("notes").to_string();
        Notes::parse(&notes).metadata().cloned().unwrap_or_else(|| panic!("no metadata block in {notes}"))
    }

    /// Import files on the `images` storage: name → size.
    fn imports(&self) -> Vec<(String, u64)> {
        let volumes = self.pve.command(json!({"cmd": "volumes", "storage": "images"}));
        let mut files: Vec<(String, u64)> = volumes
            .as_object()
            .expect("volumes")
            .iter()
            .filter_map(|(name, size)| Some((name.strip_prefix("import/")?.to_string(), size.as_u64()?)))
            .collect();
        files.sort();
        files
    }

    /// `POST …/upload` requests since the log was last cleared.
    fn uploads(&self) -> usize {
        self.pve.requests(false).iter().filter(|(m, p)| m == "POST" && p.ends_with("/upload")).count()
    }
}

/// The guest agent of a VM booted from the image, with the test host's address and the public
/// host key its sshd generated on first boot.
fn booted_agent(name: &str, host: &TestHost) -> Value {
    let mut agent = agent_with(&host.address);
    agent["files"] = json!({ ED25519_HOST_KEY: format!("{} root@{name}\n", host.host_public().trim()) });
    agent
}

/// The import file of the fixture's shared image, from a plan's `upload_image` change.
fn image_file(plan: &Value, host: &str) -> String {
    let upload =
        cli::actions(plan, host).into_iter().find(|a| a["kind"] == "upload_image").expect("upload_image");
    let volid = upload["changes"][0]["after"].as_str().expect("a volume").to_string();
    volid.strip_prefix("images:import/").expect("on images").to_string()
}

fn host_report(report: &Value, host: &str) -> Value {
    report["hosts"].as_array().expect("hosts").iter().find(|h| h["host"] == host).expect("host").clone()
}

/// `[(step, status)]` of a host's report.
fn steps(report: &Value, host: &str) -> Vec<(String, String)> {
    host_report(report, host)["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            (s["step"].as_str().unwrap_or_default().into(), s["status"].as_str().unwrap_or_default().into())
        })
        .collect()
}

fn step(report: &Value, host: &str, name: &str) -> Value {
    host_report(report, host)["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("no step {name} for {host}: {report:#}"))
        .clone()
}

/// The key part (`ssh-ed25519 AAAA…`) of a public key line.
fn key_of(line: &str) -> String {
    line.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hosts_share_one_upload_boot_from_it_and_the_next_plan_is_empty() {
    require_qemu_img();
    let lab = Lab::start(cluster("iso,import"), &["web", "cache"]);
    let web_system = lab.toplevel("web");
    let cache_system = lab.toplevel("cache");
    // One image holds one system: web's. Web boots into its own system; cache into web's, and
    // gets switched to its own.
    lab.boot("web", lab.web(), &web_system).await;
    lab.boot("cache", lab.cache.as_ref().expect("cache"), &web_system).await;
    // A file of an image no host refers to any more, removed at the end (apply.gc_images).
    let stale = "nixprox-0c8yzlgy9xbfn6sjcx6rh6fzqfvc3ai2-scsi0.qcow2";
    lab.pve.command(
        json!({"cmd": "store_file", "storage": "images", "name": stale, "size": 4096, "content": "import"}),
    );
    let key = format!("ssh:\n  key: {}\n  connect_timeout: 60\n", lab.web().client_key.display());
    lab.settings(&format!("{key}apply:\n  address_timeout: 60\n  gc_images: true\n"));

    let plan = lab.plan(&[]);
    for host in ["web", "cache"] {
        assert_eq!(kinds(&plan, host), ["upload_image", "create_vm"], "{plan:#}");
        let reason = cli::actions(&plan, host)[0]["reason"].as_str().expect("reason").to_string();
        assert!(reason.starts_with("build the image `/nix/store/"), "{reason}");
        assert!(
            reason.ends_with("to storage `images` on node `pve1`; one upload for hosts `cache`, `web`"),
            "{reason}"
        );
    }
    assert_eq!(plan["summary"]["upload_image"], 2);
    assert_eq!(plan["summary"]["install"], 0);
    let file = image_file(&plan, "web");
    assert_eq!(file, image_file(&plan, "cache"), "one package, one file");

    // Since the review, an upload was cut short: the file is there, incomplete. The plan's
    // actions are still the reviewed ones (only a reason changed), and apply replaces it.
    lab.pve.command(
        json!({"cmd": "store_file", "storage": "images", "name": file, "size": 1000, "content": "import"}),
    );
    lab.pve.requests(true);
    let (run, report) = lab.apply(&[]);
    assert_eq!(run.code, 0, "apply failed:\n{}\n{}", run.stdout, run.stderr);
    assert_eq!(lab.uploads(), 1, "one upload for both hosts");
    assert_eq!(
        steps(&report, "web").iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(),
        [
            "build",
            "upload",
            "create",
            "configure",
            "resize",
            "start",
            "address",
            "host key",
            "verify",
            "finish"
        ],
        "{report:#}"
    );
    let mut uploads: Vec<(String, String)> = ["web", "cache"]
        .iter()
        .map(|host| {
            let upload = step(&report, host, "upload");
            (
                upload["status"].as_str().expect("status").into(),
                upload["detail"].as_str().expect("detail").into(),
            )
        })
        .collect();
    uploads.sort();
    assert_eq!(uploads[0].0, "already_done", "{uploads:?}");
    assert_eq!(uploads[0].1, format!("{file}: uploaded for another host in this run"));
    assert_eq!(uploads[1].0, "ok", "{uploads:?}");
    assert!(uploads[1].1.starts_with(&format!("{file}: uploaded ")), "{uploads:?}");
    assert!(uploads[1].1.ends_with(", replacing an incomplete copy of 1000 bytes"), "{uploads:?}");
    for host in ["web", "cache"] {
        assert_eq!(host_report(&report, host)["status"], "ok", "{report:#}");
        let build = step(&report, host, "build");
        assert!(build["detail"].as_str().expect("detail").ends_with("-shared-images`, 1 image"), "{build}");
    }

    // The VM: disks imported from the image and grown to the declared size, EFI disk, booted.
    let web = lab.vm("web");
    let config = &web["config"];
    let vmid = web["vmid"].as_u64().expect("vmid");
    let scsi0 = config["scsi0"].as_str().expect("scsi0");
    let volume =
        scsi0.strip_suffix(",serial=root,size=1G").unwrap_or_else(|| panic!("grown to 1G: {config:#}"));
    assert!(volume.starts_with(&format!("local-lvm:vm-{vmid}-disk-")), "a new volume: {scsi0}");
    assert_eq!(config["bios"], "ovmf");
    let efi = config["efidisk0"].as_str().expect("an EFI disk");
    assert!(efi.contains("efitype=4m") && efi.contains("pre-enrolled-keys=0"), "{efi}");
    assert_eq!(config["boot"], "order=scsi0");
    assert_eq!(web["status"], "running");
    let creates: Vec<String> = lab
        .pve
        .requests_with_bodies(false)
        .into_iter()
        .filter(|r| r.is("POST", "/nodes/pve1/qemu"))
        .map(|r| r.body)
        .collect();
    assert!(
        creates
            .iter()
            .any(|b| b.contains(&format!("scsi0=local-lvm%3A0%2Cimport-from%3Dimages%3Aimport%2F{file}"))),
        "{creates:#?}"
    );
    assert_eq!(lab.vm("cache")["config"]["scsi0"].as_str().map(|d| d.ends_with(",size=2G")), Some(true));

    // Recorded as an install: the system verified over SSH, the key read through the agent.
    let metadata = lab.metadata("web");
    assert_eq!(metadata.system.as_deref(), Some(web_system.as_str()));
    assert_eq!(metadata.host_key.as_deref(), Some(key_of(&lab.web().host_public()).as_str()));
    assert!(metadata.disk_layout.is_some());
    assert_eq!((metadata.created, metadata.applying), (None, None));
    let cache = lab.cache.as_ref().expect("cache");
    assert_eq!(lab.metadata("cache").system.as_deref(), Some(cache_system.as_str()));
    assert_eq!(cache.current_system().as_deref(), Some(cache_system.as_str()), "switched to its own system");
    assert_eq!(lab.web().current_system().as_deref(), Some(web_system.as_str()));

    // apply.gc_images removed only the file nothing refers to.
    let files: Vec<String> = lab.imports().into_iter().map(|(name, _)| name).collect();
    assert_eq!(files, [file]);

    let plan = lab.plan(&[]);
    assert_eq!(kinds(&plan, "web"), ["noop"], "{plan:#}");
    assert_eq!(kinds(&plan, "cache"), ["noop"], "{plan:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_or_interrupted_upload_is_sent_again_and_a_complete_file_is_not() {
    require_qemu_img();
    let lab = Lab::start(cluster("iso,import"), &["web"]);
    let web_system = lab.toplevel("web");
    lab.boot("web", lab.web(), &web_system).await;
    lab.settings(&format!(
        "ssh:\n  key: {}\n  connect_timeout: 60\napply:\n  address_timeout: 60\n",
        lab.web().client_key.display()
    ));
    let plan = lab.plan(&["--hosts", "web"]);
    let file = image_file(&plan, "web");
    // An earlier upload cut short: a file of the right name, too small.
    lab.pve.command(
        json!({"cmd": "store_file", "storage": "images", "name": file, "size": 1000, "content": "import"}),
    );
    let plan = lab.plan(&["--hosts", "web"]);
    let reason = cli::actions(&plan, "web")[0]["reason"].as_str().expect("reason").to_string();
    assert!(reason.contains("is on storage `images` on node `pve1` already"), "{reason}");

    lab.pve.command(json!({"cmd": "corrupt_upload", "times": 1}));
    let (run, report) = lab.apply(&["--hosts", "web"]);
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    let web = host_report(&report, "web");
    assert_eq!(web["step"], "upload", "{report:#}");
    let error = web["error"].as_str().expect("error");
    assert!(
        error.starts_with(&format!(
            "upload of `{file}` to storage `images` on node `pve1` arrived damaged: Proxmox computed sha256 `"
        )),
        "{error}"
    );
    assert!(error.ends_with("(the file changed while it was sent, or the connection corrupted it; apply again uploads it anew)"), "{error}");
    assert_eq!(lab.imports(), [(file.clone(), 1000)], "Proxmox kept nothing of the damaged upload");
    assert!(
        !lab.pve.command(json!({"cmd": "vms"})).as_array().expect("vms").iter().any(|v| v["name"] == "web")
    );

    // The answer to the next upload is lost after Proxmox stored the file (it replaced the
    // incomplete one): the host fails at the upload, and the re-run sends nothing again.
    lab.pve.command(json!({"cmd": "lose_answer", "method": "POST", "path": "/upload$", "times": 1}));
    let (run, report) = lab.apply(&["--hosts", "web"]);
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(host_report(&report, "web")["step"], "upload", "{report:#}");
    assert!(lab.imports()[0].1 > 1000, "the complete file: {:?}", lab.imports());
    // Without a terminal (CI), a line per 10 % with bytes and rate.
    let line = format!("web: upload {file} 100% (");
    assert!(run.stderr.lines().any(|l| l.starts_with(&line) && l.ends_with("/s)")), "{}", run.stderr);

    lab.pve.requests(true);
    let (run, report) = lab.apply(&["--hosts", "web"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(lab.uploads(), 0, "a complete file is not sent again");
    let upload = step(&report, "web", "upload");
    assert_eq!(upload["status"], "already_done");
    assert_eq!(upload["detail"], format!("{file}: on the storage already"));
    assert_eq!(lab.metadata("web").system.as_deref(), Some(web_system.as_str()));

    // The same reviewed plan applied once more (a re-run CI job): nothing is sent or created.
    lab.pve.requests(true);
    let (run, report) = lab.apply(&["--hosts", "web"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(host_report(&report, "web")["status"], "ok", "{report:#}");
    assert_eq!(steps(&report, "web"), [], "nothing left to do: {report:#}");
    assert_eq!(lab.uploads(), 0);
    assert!(!lab.pve.requests(false).iter().any(|(m, _)| m == "POST"), "nothing written");
    assert_eq!(kinds(&lab.plan(&["--hosts", "web"]), "web"), ["noop"]);
}

#[test]
fn storages_and_clusters_that_cannot_take_images_block_the_host_with_the_fix() {
    let lab = Lab::start(cluster("iso"), &[]);
    let plan = lab.plan(&[]);
    let actions = cli::actions(&plan, "web");
    assert_eq!(kinds(&plan, "web"), ["upload_image", "create_vm"]);
    assert_eq!(
        actions[0]["blocked"]["reason"],
        "storage `images` on node `pve1` does not allow `import` content (allow it with `pvesm set images --content iso,import`, or in the UI: Datacenter → Storage → `images` → Content → Import)"
    );
    assert_eq!(actions[1]["blocked"]["reason"], "its image cannot be uploaded (see `upload_image`)");
    assert_eq!(plan["summary"]["blocked"], 4);
    let text = lab.nixprox(&["plan"]);
    assert!(text.stdout.contains("pvesm set images --content iso,import"), "{}", text.stdout);

    // Applying it creates nothing and uploads nothing.
    lab.pve.requests(true);
    let (run, report) = lab.apply(&[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(host_report(&report, "web")["status"], "skipped", "{report:#}");
    assert_eq!(lab.uploads(), 0);
    assert!(lab.pve.command(json!({"cmd": "vms"})).as_array().expect("vms").is_empty());

    lab.pve.command(json!({"cmd": "set", "version": "8.3.5"}));
    let plan = lab.plan(&[]);
    let reason = cli::actions(&plan, "cache")[0]["blocked"]["reason"].as_str().expect("blocked").to_string();
    assert!(reason.starts_with("cannot upload disk images to Proxmox VE 8.3.5 at `https://"), "{reason}");
    assert!(reason.ends_with("needs Proxmox VE 8.4 or later: upgrade the cluster, or bootstrap these hosts with `nixprox.bootstrap.template` or `nixprox.bootstrap.iso`)"), "{reason}");
}

#[test]
fn gc_images_lists_and_removes_only_files_no_host_refers_to() {
    let lab = Lab::start(cluster("iso,import"), &[]);
    let current = image_file(&lab.plan(&[]), "web");
    let stale = "nixprox-0c8yzlgy9xbfn6sjcx6rh6fzqfvc3ai2-scsi0.qcow2";
    for name in [current.as_str(), stale, "debian-13-genericcloud-amd64.qcow2", "nixprox-mine.raw"] {
        lab.pve.command(json!({"cmd": "store_file", "storage": "images", "name": name, "size": 2048, "content": "import"}));
    }
    let all: Vec<(String, u64)> = lab.imports();

    // The plan lists them too (outside the plan id), and deletes nothing.
    let listed = format!("images:import/{stale} (node pve1, 2.00 KiB)");
    assert_eq!(lab.plan(&[])["unreferenced_images"], json!([listed]));
    let run = lab.nixprox(&["plan"]);
    assert!(
        run.stdout.contains(&format!(
            "\nImage files no host refers to (`nixprox gc-images --delete` removes them):\n  {listed}\n"
        )),
        "{}",
        run.stdout
    );

    let run = lab.nixprox(&["gc-images"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        format!(
            "Would remove (pass --delete to remove) 1 image file(s) no host of the flake refers to:\n  images:import/{stale} (node pve1, 2.00 KiB)\n"
        )
    );
    assert_eq!(lab.nixprox(&["gc-images", "--detailed-exitcode"]).code, 2);
    assert_eq!(lab.imports(), all, "nothing deleted unless asked");

    let run = lab.nixprox(&["gc-images", "--delete"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.ends_with("Removed 1 image file(s).\n"), "{}", run.stdout);
    let left: Vec<String> = lab.imports().into_iter().map(|(name, _)| name).collect();
    let mut kept = vec!["debian-13-genericcloud-amd64.qcow2".to_string(), current, "nixprox-mine.raw".into()];
    kept.sort();
    assert_eq!(left, kept);
    let run = lab.nixprox(&["gc-images", "--detailed-exitcode"]);
    assert_eq!((run.code, run.stdout.as_str()), (0, "No unreferenced nixprox image files.\n"));
    assert!(lab.plan(&[]).get("unreferenced_images").is_none(), "an empty list is left out");
}

/// A VM created from its image whose first apply stopped before the check (its sshd had not
/// written a host key in time) is finished by the next plan's `switch`, even after the host
/// moved to a template bootstrap; from then on a config change, even one that changes the
/// image, is a switch over SSH (no upload, no new VM); the old image is garbage; and the
/// host's bootstrap may change to a template and back without touching the VM.
#[tokio::test(flavor = "multi_thread")]
async fn an_image_vm_is_finished_after_an_interruption_and_changed_by_switches_never_rebuilt() {
    require_qemu_img();
    let lab = Lab::start(cluster("iso,import"), &["web"]);
    let web_system = lab.toplevel("web");
    lab.boot("web", lab.web(), &web_system).await;
    // Booted, but its host key is not there yet: the agent answers, the file is missing.
    lab.pve.command(json!({"cmd": "boot_agent", "name": "web", "agent": agent_with(&lab.web().address)}));
    lab.settings(&format!(
        "ssh:\n  key: {}\n  connect_timeout: 60\napply:\n  address_timeout: 3\n",
        lab.web().client_key.display()
    ));
    let plan = lab.plan(&["--hosts", "web"]);
    let first_file = image_file(&plan, "web");
    let (run, report) = lab.apply(&["--hosts", "web"]);
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    let web = host_report(&report, "web");
    assert_eq!(web["step"], "host key", "{report:#}");
    let error = web["error"].as_str().expect("error");
    assert!(error.starts_with("no SSH host key for host `web` through the guest agent of VM "), "{error}");
    let metadata = lab.metadata("web");
    assert_eq!(metadata.system, None);
    let created = metadata.created.expect("created by nixprox");
    assert!(created.image.as_deref().is_some_and(|p| p.ends_with("-shared-images")), "{created:?}");

    // The same reviewed plan re-run while the key is still missing: the run resumes its own
    // VM (no second upload, no second VM) and stops at the same step.
    lab.pve.requests(true);
    let (run, report) = lab.apply(&["--hosts", "web"]);
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(host_report(&report, "web")["step"], "host key", "{report:#}");
    assert_eq!(lab.uploads(), 0);
    assert!(!lab.pve.requests(false).iter().any(|(m, p)| m == "POST" && p == "/nodes/pve1/qemu"));

    // sshd wrote its key meanwhile, and the host was switched to a template bootstrap: the VM
    // its notes say was created from an image is checked (a switch), never installed over.
    let vmid = lab.vm("web")["vmid"].clone();
    lab.pve.command(json!({"cmd": "set_agent", "vmid": vmid, "agent": booted_agent("web", lab.web())}));
    lab.declare(json!({"bootstrap": "template"}));
    let plan = lab.plan(&["--hosts", "web"]);
    assert_eq!(kinds(&plan, "web"), ["switch"], "{plan:#}");
    let reason = cli::actions(&plan, "web")[0]["reason"].as_str().expect("reason").to_string();
    assert!(
        reason.starts_with("nixprox created this VM from its image and has not checked it yet"),
        "{reason}"
    );
    lab.pve.requests(true);
    let (run, report) = lab.apply(&["--hosts", "web"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let names: Vec<String> = steps(&report, "web").into_iter().map(|(s, _)| s).collect();
    // The create's remaining steps (its notes still name the interrupted apply), then the check.
    assert_eq!(
        names,
        ["configure", "resize", "start", "address", "host key", "verify", "finish"],
        "{report:#}"
    );
    assert_eq!(lab.uploads(), 0);
    let metadata = lab.metadata("web");
    assert_eq!(metadata.system.as_deref(), Some(web_system.as_str()));
    assert_eq!(metadata.host_key.as_deref(), Some(key_of(&lab.web().host_public()).as_str()));
    assert_eq!(metadata.created, None);
    let config = &lab.vm("web")["config"];
    assert!(config.get("ciuser").is_none() && config.get("ide0").is_none(), "no cloud-init: {config:#}");

    // Back to the image bootstrap; the configuration changes, and with it the image (a new
    // store path): a switch of the running VM, never an upload or a new VM.
    lab.declare(
        json!({"bootstrap": "image", "revision": "2", "salt": format!("{}-changed", std::process::id())}),
    );
    let changed_system = lab.toplevel("web");
    assert_ne!(changed_system, web_system);
    let plan = lab.plan(&["--hosts", "web"]);
    assert_eq!(kinds(&plan, "web"), ["switch"], "{plan:#}");
    assert_eq!(plan["summary"]["upload_image"], 0);
    lab.pve.requests(true);
    let (run, report) = lab.apply(&["--hosts", "web"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(lab.uploads(), 0, "no image is built or uploaded for an existing VM");
    assert!(steps(&report, "web").iter().all(|(s, _)| s != "build" && s != "create"), "{report:#}");
    assert_eq!(lab.web().current_system().as_deref(), Some(changed_system.as_str()));
    assert_eq!(lab.metadata("web").system.as_deref(), Some(changed_system.as_str()));
    assert_eq!(lab.vm("web")["vmid"], vmid, "the same VM");

    // The first image is referred to by no host any more.
    let run = lab.nixprox(&["gc-images"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains(&format!("  images:import/{first_file} (node pve1,")), "{}", run.stdout);

    // The host's bootstrap changes to a template and back: the installed VM is left as it is.
    lab.declare(json!({"bootstrap": "template"}));
    assert_eq!(kinds(&lab.plan(&["--hosts", "web"]), "web"), ["noop"]);
    lab.declare(json!({"bootstrap": "image", "salt": format!("{}-again", std::process::id())}));
    assert_eq!(kinds(&lab.plan(&["--hosts", "web"]), "web"), ["noop"]);
}

/// A package planning cannot size (not disko's) whose image is larger than the declared disk:
/// the plan shows the upload (it cannot know), apply builds the image, reads its header and
/// stops the host before anything is sent or created, naming both sizes and the fix.
#[test]
fn an_image_larger_than_its_disk_stops_the_host_before_the_upload() {
    require_qemu_img();
    let lab = Lab::start(cluster("iso,import"), &[]);
    lab.declare(json!({"webDisk": "32M"}));
    let plan = lab.plan(&["--hosts", "web"]);
    assert_eq!(kinds(&plan, "web"), ["upload_image", "create_vm"], "{plan:#}");
    lab.pve.requests(true);
    let (run, report) = lab.apply(&["--hosts", "web"]);
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    let web = host_report(&report, "web");
    assert_eq!(web["step"], "build", "{report:#}");
    assert_eq!(
        web["error"],
        "image of disk `scsi0` of host `web` is 64M but the disk is declared as 32M (raise `nixprox.vm.disks.scsi0.size` or shrink the image)"
    );
    assert_eq!(lab.uploads(), 0);
    assert!(lab.imports().is_empty());
    assert!(lab.pve.command(json!({"cmd": "vms"})).as_array().expect("vms").is_empty());
}
