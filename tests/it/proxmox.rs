//! Integration tests of the Proxmox client and read path against fakepve.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use nixprox::metadata::{Metadata, Notes};
use nixprox::proxmox::{
    Client, ClientOptions, LiveConfig, LiveVm, ProxmoxError, ReadRequest, RetryPolicy, TaskOutcome,
    TransportKind, Upid, find_template, list_vms, read_cluster, wait_task,
};
use nixprox::secret::ApiToken;
use nixprox::spec::{Bios, DiskSpec, NetSpec, VmSpec};
use serde_json::{Value, json};

use crate::support::fakepve::{FakePve, Scenario, TOKEN_ID, fast_retries};

const G: u64 = 1 << 30;

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn metadata() -> Metadata {
    Metadata {
        host: "web".into(),
        system: Some("/nix/store/abc-nixos-system-web".into()),
        ..Default::default()
    }
}

/// A cluster with every kind of guest the read path must tell apart.
fn mixed_cluster() -> Scenario {
    Scenario::new()
        .set("nodes", json!(["pve1", "pve2"]))
        .guest(json!({
            "vmid": 101, "name": "web", "status": "running", "pool": "lab",
            "config": {
                "cores": 2, "sockets": 1, "cpu": "host", "memory": 2048, "bios": "ovmf", "agent": "1",
                "onboot": 1, "tags": "nixprox;Web", "description": Notes::render("Reverse proxy.", &metadata()),
                "scsi0": "local-lvm:vm-101-disk-0,size=20G,discard=on,ssd=1,iothread=1,serial=root",
                "ide2": "none,media=cdrom", "ide0": "local-lvm:vm-101-cloudinit,media=cdrom",
                "net0": "virtio=BC:24:11:00:00:01,bridge=vmbr0,tag=20,firewall=1"
            },
            "pending": {"memory": "4096"}
        }))
        .guest(json!({"vmid": 102, "name": "db", "status": "stopped", "config": {"tags": "nixprox", "memory": "1024"}}))
        .guest(json!({"vmid": 103, "name": "legacy", "status": "running", "config": {"tags": "old"}}))
        .guest(json!({"vmid": 104, "name": "cache", "status": "stopped", "config": {"cores": 4}}))
        .guest(json!({"vmid": 105, "name": "mon", "node": "pve2", "status": "stopped", "lock": "backup",
                      "config": {"tags": "nixprox;monitoring"}}))
        .guest(json!({"vmid": 9000, "name": "nixos-base", "template": true, "config": {"tags": "nixprox"}}))
        .guest(json!({"vmid": 200, "type": "lxc", "name": "ct", "config": {"hostname": "ct", "tags": "nixprox"}}))
}

fn bare_spec(name: &str) -> VmSpec {
    VmSpec {
        name: name.into(),
        cores: 1,
        sockets: 1,
        cpu_type: "kvm64".into(),
        memory_mib: 512,
        balloon_mib: None,
        bios: Bios::Seabios,
        machine: None,
        agent: false,
        disks: Default::default(),
        networks: Default::default(),
        tags: BTreeSet::new(),
        description: String::new(),
        on_boot: false,
        protection: false,
        pool: None,
        // No `hotplug` key: Proxmox's default, `network,disk,usb`.
        hardware: nixprox::spec::Hardware { usb_hotplug_feature: true, ..Default::default() },
    }
}

#[tokio::test]
async fn reads_managed_and_host_named_vms_and_flags_templates() {
    let pve = FakePve::start(mixed_cluster());
    let client = pve.client();
    let request = ReadRequest { host_names: set(&["web", "cache", "absent"]), concurrency: 4 };
    let mut vms = read_cluster(&client, &request).await.expect("read the cluster");
    // The tagged container is read as a container (tests/it/containers.rs has the details).
    let ct = vms.iter().position(|g| g.vmid == 200).expect("the container is listed");
    let ct = vms.remove(ct);
    assert_eq!(ct.kind, nixprox::spec::GuestKind::Container);
    assert_eq!(ct.config.as_ref().and_then(|c| c.container.as_ref()).map(|c| c.memory_mib), Some(512));

    let digest = |vmid: u32| pve.vm(vmid)["digest"].as_str().expect("digest").to_string();
    let vm =
        |vmid: u32, name: &str, node: &str, status: &str, tags: &[&str], config: Option<LiveConfig>| LiveVm {
            vmid,
            kind: Default::default(),
            node: node.into(),
            name: name.into(),
            status: status.into(),
            template: false,
            lock: None,
            tags: set(tags),
            config,
            ha_state: None,
        };
    // The pending memory counts: the spec is the VM as it will be after its next reboot.
    let web = VmSpec {
        cores: 2,
        cpu_type: "host".into(),
        memory_mib: 4096,
        bios: Bios::Ovmf,
        agent: true,
        on_boot: true,
        tags: set(&["web"]),
        description: "Reverse proxy.".into(),
        pool: Some("lab".into()),
        disks: [(
            "scsi0".to_string(),
            DiskSpec {
                storage: "local-lvm".into(),
                size_bytes: 20 * G,
                serial: Some("root".into()),
                discard: true,
                ssd: true,
                iothread: true,
            },
        )]
        .into(),
        networks: [(
            "net0".to_string(),
            NetSpec {
                model: "virtio".into(),
                mac: Some("BC:24:11:00:00:01".into()),
                bridge: "vmbr0".into(),
                vlan: Some(20),
                firewall: true,
            },
        )]
        .into(),
        ..bare_spec("web")
    };
    let live = |vmid: u32, spec: VmSpec, metadata: Option<Metadata>, pending: &[&str]| {
        // qemu-server's boot disk: the first disk, as neither config says otherwise.
        let boot_disks = spec.disks.keys().take(1).cloned().collect();
        Some(LiveConfig {
            digest: digest(vmid),
            spec,
            metadata,
            unreadable_block: None,
            pending: set(pending),
            running: None,
            boot_disks,
            guest_os: None,
            container: None,
            ostype: None,
        })
    };
    // What web runs now: its current memory, from `/pending` (`GET …/config` answers the
    // pending value, as Proxmox does).
    let running = VmSpec { memory_mib: 2048, ..web.clone() };
    let mut web_config = live(101, web, Some(metadata()), &["memory"]);
    if let Some(config) = web_config.as_mut() {
        config.running = Some(running);
    }
    let expected = vec![
        vm(101, "web", "pve1", "running", &["nixprox", "web"], web_config),
        vm(
            102,
            "db",
            "pve1",
            "stopped",
            &["nixprox"],
            live(102, VmSpec { memory_mib: 1024, ..bare_spec("db") }, None, &[]),
        ),
        vm(103, "legacy", "pve1", "running", &["old"], None),
        vm(
            104,
            "cache",
            "pve1",
            "stopped",
            &[],
            live(104, VmSpec { cores: 4, ..bare_spec("cache") }, None, &[]),
        ),
        LiveVm {
            lock: Some("backup".into()),
            ..vm(
                105,
                "mon",
                "pve2",
                "stopped",
                &["monitoring", "nixprox"],
                live(105, VmSpec { tags: set(&["monitoring"]), ..bare_spec("mon") }, None, &[]),
            )
        },
        LiveVm { template: true, ..vm(9000, "nixos-base", "pve1", "stopped", &["nixprox"], None) },
    ];
    assert_eq!(vms, expected);

    // One listing, then configs only for the VMs that matter, `/pending` only for running ones.
    let mut requests = pve.requests(false);
    requests.sort();
    let get = |path: &str| ("GET".to_string(), format!("/api2/json{path}"));
    assert_eq!(
        requests,
        vec![
            get("/cluster/resources"),
            get("/nodes/pve1/lxc/200/config"),
            get("/nodes/pve1/qemu/101/config"),
            get("/nodes/pve1/qemu/101/pending"),
            get("/nodes/pve1/qemu/102/config"),
            get("/nodes/pve1/qemu/104/config"),
            get("/nodes/pve2/qemu/105/config"),
        ]
    );

    let template = find_template(&vms, "nixos-base", None).expect("template by name");
    assert_eq!(template.vmid, 9000);
    assert_eq!(find_template(&vms, "9000", Some("pve1")).map(|vm| vm.vmid), Ok(9000));
}

#[tokio::test]
async fn config_reads_run_concurrently_within_the_bound() {
    let mut scenario = Scenario::new();
    for vmid in 101..=108 {
        scenario =
            scenario.guest(json!({"vmid": vmid, "name": format!("vm{vmid}"), "config": {"tags": "nixprox"}}));
    }
    // Every answer takes 0.25 s: time_scale 1 makes fakepve's latency real.
    let pve = FakePve::start(scenario.set("time_scale", json!(1)).set("latency", json!(0.25)));
    let client = pve.client();
    let started = Instant::now();
    let vms = read_cluster(&client, &ReadRequest { host_names: BTreeSet::new(), concurrency: 4 })
        .await
        .expect("read the cluster");
    let elapsed = started.elapsed();
    assert_eq!(vms.iter().filter(|vm| vm.config.is_some()).count(), 8);
    assert_eq!(vms.iter().map(|vm| vm.vmid).collect::<Vec<_>>(), (101..=108).collect::<Vec<_>>());
    // The listing, then 8 configs 4 at a time: at least 3 latencies. One at a time would be 9.
    assert!(elapsed >= Duration::from_millis(740), "bound not respected: {elapsed:?}");
    assert!(elapsed < Duration::from_millis(2000), "reads did not overlap: {elapsed:?}");
}

fn options_with_token(pve: &FakePve, token: &str) -> ClientOptions {
    ClientOptions {
        token: ApiToken::parse(token).expect("token"),
        retry: RetryPolicy::none(),
        ..pve.options()
    }
}

#[tokio::test]
async fn wrong_token_is_a_401_pointing_at_the_token() {
    let pve = FakePve::start(Scenario::new());
    let wrong = format!("{TOKEN_ID}=canary-wrong-secret");
    let client = Client::new(options_with_token(&pve, &wrong)).expect("client");
    let err = list_vms(&client).await.expect_err("wrong secret");
    assert_eq!(
        err.to_string(),
        "failed to read `/cluster/resources`: 401 authentication failure (check PROXMOX_API_TOKEN (`user@realm!tokenid=secret`): the token `nixprox@pve!test` was rejected; it must exist, be unexpired and have this secret)"
    );
    assert!(!err.is_transient());
    assert!(!format!("{err} {err:?}").contains("canary-wrong-secret"));
}

#[tokio::test]
async fn missing_privilege_is_a_403_naming_privilege_and_path() {
    let pve = FakePve::start(
        Scenario::new().guest(json!({"vmid": 101, "name": "web", "config": {"tags": "nixprox"}})).grant(
            "nixprox@pve",
            "/vms/101",
            &["VM.PowerMgmt"],
        ),
    );
    let client = pve.client();
    let err = client.get("/nodes/pve1/qemu/101/config", &[]).await.expect_err("no VM.Audit");
    assert_eq!(
        err.to_string(),
        "failed to read `/nodes/pve1/qemu/101/config`: 403 Permission check failed (/vms/101, VM.Audit) (give the token `VM.Audit` on `/vms/101`)"
    );
    let err =
        client.put("/nodes/pve1/qemu/101/config", &[("cores", "2")]).await.expect_err("no VM.Config.CPU");
    assert_eq!(
        err.to_string(),
        "failed to update `/nodes/pve1/qemu/101/config`: 403 Permission check failed (/vms/101, VM.Config.CPU) (give the token `VM.Config.CPU` on `/vms/101`)"
    );
    assert_eq!(err.status(), Some(403));
    assert!(!err.is_transient());
    // Only one attempt each: a 403 is not retried.
    assert_eq!(pve.requests(false).len(), 2);
}

#[tokio::test]
async fn unreachable_endpoint_names_the_url() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        listener.local_addr().expect("address").port()
    };
    let pve = FakePve::start(Scenario::new());
    let url = format!("https://127.0.0.1:{port}");
    let client = Client::new(ClientOptions { url: url.clone(), retry: RetryPolicy::none(), ..pve.options() })
        .expect("client");
    let err = list_vms(&client).await.expect_err("nobody listens");
    assert_eq!(
        err.to_string(),
        format!(
            "failed to read `/cluster/resources`: cannot connect to `{url}`: connection refused (is the Proxmox API reachable from here? check `proxmox.url` or PROXMOX_URL)"
        )
    );
    assert!(matches!(err, ProxmoxError::Transport { kind: TransportKind::Connect, .. }));
    assert!(err.is_transient() && err.not_executed());
}

#[tokio::test]
async fn certificate_from_another_ca_fails_with_a_ca_cert_hint_and_insecure_works() {
    let pve = FakePve::start(Scenario::new().guest(json!({"vmid": 101, "name": "web"})));
    let other = FakePve::start(Scenario::new());
    let pinned_elsewhere = ClientOptions { ca_cert: Some(other.ca_cert().to_path_buf()), ..pve.options() };
    let err =
        list_vms(&Client::new(pinned_elsewhere).expect("client")).await.expect_err("untrusted certificate");
    assert_eq!(
        err.to_string(),
        format!(
            "failed to read `/cluster/resources`: TLS handshake with `{}` failed: invalid peer certificate: BadSignature (set `proxmox.ca_cert` to the PEM file of the CA that signed the API's certificate, e.g. a copy of /etc/pve/pve-root-ca.pem, or set `proxmox.insecure: true` for a throwaway lab)",
            pve.url()
        )
    );
    assert!(!err.is_transient());
    // Nothing was retried: a TLS failure does not heal by itself.
    assert!(pve.requests(false).is_empty());

    let insecure = ClientOptions { ca_cert: None, insecure: true, ..pve.options() };
    let vms =
        list_vms(&Client::new(insecure).expect("client")).await.expect("insecure accepts any certificate");
    assert_eq!(vms.iter().map(|vm| vm.vmid).collect::<Vec<_>>(), [101]);
}

#[tokio::test]
async fn transient_5xx_is_retried_and_permanent_answers_are_not() {
    let pve = FakePve::start(Scenario::new().guest(json!({"vmid": 101, "name": "web"})));
    let client = pve.client();
    pve.fail("GET", "/cluster/resources", 503, "proxy loop detected", Some(2));
    let vms = list_vms(&client).await.expect("the flap clears within the retries");
    assert_eq!(vms.len(), 1);
    assert_eq!(pve.requests(true).len(), 3);

    pve.fail(
        "GET",
        "/nodes/pve1/qemu/101/config",
        500,
        "Configuration file 'nodes/pve1/qemu-server/101.conf' does not exist",
        None,
    );
    let err = client.get("/nodes/pve1/qemu/101/config", &[]).await.expect_err("permanent");
    assert_eq!(
        err.to_string(),
        "failed to read `/nodes/pve1/qemu/101/config`: 500 Configuration file 'nodes/pve1/qemu-server/101.conf' does not exist"
    );
    assert_eq!(pve.requests(true).len(), 1);

    // A flap that outlasts the retries: the last error is returned, after retries + 1 attempts.
    pve.fail("GET", "/cluster/resources", 502, "Bad Gateway", None);
    let err = list_vms(&client).await.expect_err("still failing");
    assert_eq!(err.to_string(), "failed to read `/cluster/resources`: 502 Bad Gateway");
    assert_eq!(pve.requests(true).len(), 4);
}

#[tokio::test]
async fn held_config_lock_is_retried_then_reported_with_a_hint() {
    let pve =
        FakePve::start(Scenario::new().guest(json!({"vmid": 101, "name": "web", "config": {"cores": 1}})));
    let client = Client::new(ClientOptions { retry: fast_retries(2), ..pve.options() }).expect("client");
    pve.command(json!({"cmd": "hold_config_lock", "vmid": 101, "secs": null}));
    let err = client.put("/nodes/pve1/qemu/101/config", &[("cores", "2")]).await.expect_err("locked");
    assert_eq!(
        err.to_string(),
        "failed to update `/nodes/pve1/qemu/101/config`: 500 can't lock file '/var/lock/qemu-server/lock-101.conf' - got timeout (another task holds the VM's config lock; wait for it or check the node's task list)"
    );
    assert_eq!(pve.requests(true).len(), 3);
    pve.command(json!({"cmd": "release_config_lock", "vmid": 101}));
    client.put("/nodes/pve1/qemu/101/config", &[("cores", "2")]).await.expect("unlocked");
    assert_eq!(pve.vm(101)["config"]["cores"], json!("2"));
}

#[tokio::test]
async fn dropped_connections_are_retried() {
    let pve = FakePve::start(Scenario::new().guest(json!({"vmid": 101, "name": "web"})));
    pve.command(json!({"cmd": "flaky_network", "drop_rate": 0.5, "seed": 7}));
    // Without retries some requests fail, as a broken connection (fakepve drops before it
    // records a request, so the failures are counted here).
    let once = Client::new(ClientOptions { retry: RetryPolicy::none(), ..pve.options() }).expect("client");
    let mut broken = 0;
    for _ in 0..12 {
        if let Err(err) = list_vms(&once).await {
            assert_eq!(
                err.to_string(),
                format!(
                    "failed to read `/cluster/resources`: the connection to `{}` broke: connection closed before message completed",
                    pve.url()
                )
            );
            assert!(err.is_transient() && !err.not_executed());
            broken += 1;
        }
    }
    assert!(broken > 0, "no connection was dropped");
    let retrying = Client::new(ClientOptions { retry: fast_retries(10), ..pve.options() }).expect("client");
    for _ in 0..6 {
        let vms = list_vms(&retrying).await.expect("retries ride out dropped connections");
        assert_eq!(vms.len(), 1);
    }
}

#[tokio::test]
async fn a_hung_request_times_out_naming_the_url() {
    let pve = FakePve::start(Scenario::new());
    pve.command(json!({"cmd": "flaky_network", "hang_rate": 1.0, "hang_secs": 5}));
    let options =
        ClientOptions { timeout: Duration::from_millis(300), retry: RetryPolicy::none(), ..pve.options() };
    let err = list_vms(&Client::new(options).expect("client")).await.expect_err("no answer");
    assert_eq!(
        err.to_string(),
        format!(
            "failed to read `/cluster/resources`: no answer from `{}` within 0.3s (is the node overloaded? raise `proxmox.timeout`)",
            pve.url()
        )
    );
    assert!(err.is_transient() && !err.not_executed());
}

fn upid(value: Value) -> Upid {
    Upid::from_data(&value).expect("a UPID")
}

#[tokio::test]
async fn tasks_succeed_fail_with_log_tail_or_end_with_warnings() {
    let pve = FakePve::start(
        Scenario::new()
            .guest(json!({"vmid": 101, "name": "web"}))
            .guest(json!({"vmid": 102, "name": "broken", "start_error": "unable to find configuration file for VM 102 disk"})),
    );
    let client = pve.client();
    let timeout = Duration::from_secs(10);

    let started = upid(client.post("/nodes/pve1/qemu/101/status/start", &[]).await.expect("start"));
    assert_eq!(
        (started.node.as_str(), started.task_type.as_str(), started.id.as_str()),
        ("pve1", "qmstart", "101")
    );
    assert_eq!(started.user, TOKEN_ID);
    assert_eq!(wait_task(&client, &started, timeout).await.expect("started"), TaskOutcome::Ok);
    assert_eq!(pve.vm(101)["status"], json!("running"));

    let failed = upid(client.post("/nodes/pve1/qemu/102/status/start", &[]).await.expect("start task"));
    let err = wait_task(&client, &failed, timeout).await.expect_err("start fails");
    assert_eq!(
        err.to_string(),
        format!(
            "task qmstart of `102` on node `pve1` failed: unable to find configuration file for VM 102 disk (task `{failed}`); last lines of its log:\n  unable to find configuration file for VM 102 disk\n  TASK ERROR: unable to find configuration file for VM 102 disk"
        )
    );
    assert!(!err.is_transient());

    // A long log: only its last 20 lines come with the error.
    let log: Vec<String> = (1..=30).map(|n| format!("step {n}")).collect();
    let long = upid(pve.command(json!({"cmd": "task", "type": "qmcreate", "id": "103", "log": log,
                                       "exitstatus": "disk allocation failed"})));
    let ProxmoxError::TaskFailed(failure) = wait_task(&client, &long, timeout).await.expect_err("fails")
    else {
        panic!("expected a task failure");
    };
    let mut tail: Vec<String> = (12..=30).map(|n| format!("step {n}")).collect();
    tail.push("disk allocation failed".into());
    tail.push("TASK ERROR: disk allocation failed".into());
    assert_eq!(failure.log_tail, tail[1..].to_vec());
    assert_eq!(failure.exitstatus, "disk allocation failed");

    let warned = upid(pve.command(json!({"cmd": "task", "type": "qmclone", "id": "9000",
        "log": ["create full clone of drive scsi0", "WARN: storage local-lvm is 91% full", "WARN: no efidisk configured"],
        "exitstatus": "WARNINGS: 2"})));
    assert_eq!(
        wait_task(&client, &warned, timeout).await.expect("warnings are a success"),
        TaskOutcome::Warnings(vec![
            "WARN: storage local-lvm is 91% full".into(),
            "WARN: no efidisk configured".into()
        ])
    );
}

#[tokio::test]
async fn a_task_that_outlasts_the_wait_is_a_timeout() {
    let pve = FakePve::start(Scenario::new().set("time_scale", json!(1)));
    let client = pve.client();
    let slow = upid(pve.command(json!({"cmd": "task", "type": "qmclone", "id": "9000", "secs": 5})));
    let err = wait_task(&client, &slow, Duration::from_millis(300)).await.expect_err("still running");
    assert_eq!(
        err.to_string(),
        format!(
            "task qmclone of `9000` on node `pve1` did not finish within 0.3s (task `{slow}`; it may still be running: see the node's task list)"
        )
    );
}

/// The token secret is a canary: no error text or debug output may ever contain it, even
/// when the server echoes it back.
#[tokio::test]
async fn the_token_secret_never_appears_in_errors() {
    let pve = FakePve::start(
        Scenario::new().guest(json!({"vmid": 101, "name": "web"})).set("time_scale", json!(0)),
    );
    let secret = pve.secret().to_string();
    let client = Client::new(ClientOptions { retry: RetryPolicy::none(), ..pve.options() }).expect("client");
    let mut errors: Vec<ProxmoxError> = Vec::new();

    pve.fail(
        "GET",
        "/cluster/resources",
        500,
        &format!("bad header PVEAPIToken={TOKEN_ID}={secret}"),
        Some(1),
    );
    errors.push(list_vms(&client).await.expect_err("echoed secret"));
    pve.command(json!({"cmd": "fail", "method": "GET", "path": "/nodes", "status": 502, "html": true,
                       "message": format!("<html>proxy saw {secret}</html>"), "times": 1}));
    errors.push(client.get("/nodes", &[]).await.expect_err("html echo"));
    errors.push(client.get("/nodes/pve1/qemu/999/config", &[]).await.expect_err("missing VM"));
    errors.push(
        Client::new(ClientOptions { url: "https://127.0.0.1:1".into(), ..client_options(&pve) })
            .expect("client")
            .get("/version", &[])
            .await
            .expect_err("refused"),
    );
    let bad = upid(pve.command(json!({"cmd": "task", "log": [format!("token {secret}")], "exitstatus": format!("failed with {secret}")})));
    errors.push(wait_task(&client, &bad, Duration::from_secs(5)).await.expect_err("task failure"));

    assert!(errors[0].to_string().contains("<redacted>"), "{}", errors[0]);
    for err in &errors {
        let text = format!("{err}\n{err:?}");
        assert!(!text.contains(&secret), "secret leaked: {text}");
    }
}

fn client_options(pve: &FakePve) -> ClientOptions {
    ClientOptions { retry: RetryPolicy::none(), ..pve.options() }
}

/// The driver's scenario commands reach the fake: a backup locks the VM (a transient refusal
/// for writes), agent answers and new VMs show through the API, grants turn on permission checks.
#[tokio::test]
async fn driver_commands_steer_the_fake() {
    let pve = FakePve::start(
        Scenario::new()
            .set("time_scale", json!(1))
            .guest(json!({"vmid": 101, "name": "web", "status": "running", "config": {"tags": "nixprox"}})),
    );
    let client = Client::new(ClientOptions { retry: RetryPolicy::none(), ..pve.options() }).expect("client");

    let backup = upid(pve.command(json!({"cmd": "backup", "vmid": 101, "secs": 30})));
    assert_eq!(backup.task_type, "vzdump");
    let vms = list_vms(&client).await.expect("list");
    assert_eq!(vms[0].lock.as_deref(), Some("backup"));
    let err =
        client.put("/nodes/pve1/qemu/101/config", &[("cores", "2")]).await.expect_err("locked by backup");
    assert_eq!(err.to_string(), "failed to update `/nodes/pve1/qemu/101/config`: 500 VM is locked (backup)");
    assert!(err.is_transient());

    let interfaces = json!([{"name": "eth0", "hardware-address": "bc:24:11:00:00:01",
        "ip-addresses": [{"ip-address": "127.0.0.42", "ip-address-type": "ipv4", "prefix": 8}]}]);
    pve.command(json!({"cmd": "set_agent", "vmid": 101, "agent": {"interfaces": interfaces}}));
    let answer =
        client.get("/nodes/pve1/qemu/101/agent/network-get-interfaces", &[]).await.expect("agent answers");
    assert_eq!(answer["result"], interfaces);

    pve.command(
        json!({"cmd": "add_vm", "guest": {"vmid": 102, "name": "db", "config": {"tags": "nixprox"}}}),
    );
    assert_eq!(
        list_vms(&client).await.expect("list").iter().map(|vm| vm.vmid).collect::<Vec<_>>(),
        [101, 102]
    );

    pve.command(json!({"cmd": "grant", "user": "nixprox@pve", "path": "/vms/102", "privs": ["VM.Audit"]}));
    assert_eq!(list_vms(&client).await.expect("list").iter().map(|vm| vm.vmid).collect::<Vec<_>>(), [102]);
    assert_eq!(
        pve.try_command(json!({"cmd": "vm", "vmid": 999})),
        Err("no VM 999".to_string()),
        "driver errors come back as text"
    );
}

/// The stand-in answers `GET …/config` as qemu-server's `vm_config` does: pending values
/// applied unless `current=1`; `/pending` has both sides (`vm_pending`).
#[tokio::test]
async fn config_answers_pending_values_unless_current_is_asked() {
    let pve = FakePve::start(mixed_cluster());
    let client = pve.client();
    let path = "/nodes/pve1/qemu/101/config";
    let next_start = client.get(path, &[]).await.expect("config");
    assert_eq!(next_start["memory"], "4096");
    let current = client.get(path, &[("current", "1")]).await.expect("current config");
    assert_eq!(current["memory"], "2048");
    assert_eq!(next_start["digest"], current["digest"], "one config file, one digest");
    let pending = client.get("/nodes/pve1/qemu/101/pending", &[]).await.expect("pending");
    let memory = pending.as_array().expect("entries").iter().find(|e| e["key"] == "memory").expect("memory");
    assert_eq!((memory["value"].clone(), memory["pending"].clone()), (json!(2048), json!("4096")));
}
