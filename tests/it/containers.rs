//! Containers (Proxmox LXC) through the one planner: the declaration evaluated by real nix
//! (`fixtures/containers`), the cluster read from fakepve (which keeps containers the way
//! pve-container does), and the plan through the binary.

use std::collections::BTreeSet;

use nixprox::config::Settings;
use nixprox::flake::{evaluate, resolve_all};
use nixprox::proxmox::{ReadRequest, read_cluster};
use nixprox::spec::GuestKind;
use serde_json::{Value, json};

use crate::support::cli;
use crate::support::fakepve::FakePve;
use crate::support::nix::{Fixture, repo};

#[tokio::test]
async fn the_flake_declares_containers_beside_a_vm() {
    let fixture = Fixture::copy("containers");
    let inventory = evaluate(&fixture.request()).await.expect("evaluates");
    let decl = |attr: &str| &inventory.hosts.iter().find(|h| h.attr == attr).expect("host").decl;
    assert!(decl("app").container.is_none(), "a VM's declaration has no container part");
    let proxy = decl("proxy").container.as_ref().expect("proxy is a container");
    assert!(proxy.enable);
    assert_eq!(proxy.hostname, "proxy", "from networking.hostName, like vm.name");
    assert_eq!((proxy.id, proxy.memory, proxy.swap), (Some(201), 2048, 512));
    assert!(proxy.features.nesting && !proxy.features.keyctl && proxy.unprivileged, "the module's defaults");
    assert_eq!(proxy.networks["net0"].name, "eth0");
    assert_eq!(decl("dns").container.as_ref().expect("dns").mount_points["mp0"].path, "/var/lib/unbound");

    let settings = Settings::load(&repo().join("fixtures/containers/nixprox.yaml"), true).expect("settings");
    let desired = resolve_all(&inventory.hosts, &settings.defaults).expect("resolves");
    let kinds: Vec<(&str, GuestKind)> = desired.iter().map(|h| (h.host.as_str(), h.kind())).collect();
    assert_eq!(
        kinds,
        [
            ("app", GuestKind::Vm),
            ("chat", GuestKind::Container),
            ("dns", GuestKind::Container),
            ("legacy", GuestKind::Container),
            ("mail", GuestKind::Container),
            ("proxy", GuestKind::Container)
        ]
    );
    let proxy = desired.iter().find(|h| h.host == "proxy").and_then(|h| h.container.as_ref()).expect("proxy");
    assert_eq!(
        proxy.spec.networks["net0"].address.as_deref(),
        Some("ip=127.0.0.32/8"),
        "net0's address from nixprox.address and nixprox.network"
    );
    assert_eq!(proxy.spec.rootfs.size_bytes, 12 << 30);
}

fn containers() -> (Fixture, FakePve) {
    let fixture = Fixture::copy("containers");
    let pve = FakePve::start(cli::cluster_scenario(&repo().join("fixtures/containers/cluster.json")));
    (fixture, pve)
}

fn ok(run: &cli::Run) -> &str {
    assert_eq!(run.code, 0, "nixprox failed:\n{}", run.stderr);
    &run.stdout
}

fn host<'a>(plan: &'a Value, name: &str) -> &'a Value {
    plan["hosts"].as_array().expect("hosts").iter().find(|h| h["host"] == name).expect("host in plan")
}

fn change<'a>(action: &'a Value, field: &str) -> &'a Value {
    action["changes"].as_array().expect("changes").iter().find(|c| c["field"] == field).unwrap_or_else(|| {
        panic!("no change of `{field}` in {action}");
    })
}

#[tokio::test]
async fn the_read_path_lists_containers_and_reads_their_config() {
    let (_fixture, pve) = containers();
    let request = ReadRequest {
        host_names: BTreeSet::from(["proxy".to_string(), "media".to_string()]),
        concurrency: 2,
    };
    let live = read_cluster(&pve.client(), &request).await.expect("read");
    let kinds: Vec<(u32, GuestKind)> = live.iter().map(|g| (g.vmid, g.kind)).collect();
    assert_eq!(
        kinds,
        [
            (101, GuestKind::Vm),
            (201, GuestKind::Container),
            (202, GuestKind::Container),
            (203, GuestKind::Container),
            (210, GuestKind::Container)
        ]
    );
    let proxy = live.iter().find(|g| g.vmid == 201).expect("proxy");
    let config = proxy.config.as_ref().expect("a tagged container's config is read");
    assert_eq!(config.ostype.as_deref(), Some("nixos"));
    assert_eq!(
        config.metadata.as_ref().map(|m| m.host.as_str()),
        Some("proxy"),
        "the block in `description`"
    );
    let ct = config.container.as_ref().expect("container spec");
    assert_eq!((ct.memory_mib, ct.rootfs.size_bytes, ct.unprivileged), (512, 8 << 30, true));
    assert_eq!(ct.networks["net0"].address.as_deref(), Some("ip=127.0.0.32/8"));
    let media = live.iter().find(|g| g.vmid == 210).expect("media");
    assert!(media.config.is_some(), "an untagged container named like a host is read too");
    let requests = pve.requests(false);
    assert!(
        requests.iter().any(|(m, p)| m == "GET" && p.ends_with("/nodes/pve1/lxc/201/config")),
        "{requests:?}"
    );
    assert!(
        requests.iter().any(|(m, p)| m == "GET" && p.ends_with("/nodes/pve1/lxc/201/pending")),
        "running: pending read"
    );
}

#[test]
fn containers_are_planned_as_pve_container_applies_their_changes() {
    let (fixture, pve) = containers();
    let run = cli::plan(&fixture, &pve, &["--format", "json"]);
    let plan: Value = serde_json::from_str(ok(&run)).expect("json plan");

    let app = host(&plan, "app");
    assert!(app.get("kind").is_none(), "a VM's plan is as before: no kind");
    assert_eq!(cli::kinds(&plan, "app"), ["noop"]);

    let proxy = host(&plan, "proxy");
    assert_eq!(proxy["kind"], "container");
    assert_eq!(cli::kinds(&plan, "proxy"), ["update_vm", "resize_disk", "switch"]);
    let actions = cli::actions(&plan, "proxy");
    let update = &actions[0];
    assert_eq!(change(update, "memory")["effect"], "hotplug");
    assert_eq!(change(update, "tags")["effect"], "immediate");
    assert_eq!(change(update, "features.nesting")["effect"], "needs_reboot", "features wait for a restart");
    assert_eq!(change(&actions[1], "rootfs.size")["after"], "12G");

    assert_eq!(host(&plan, "dns")["kind"], "container");
    assert_eq!(cli::kinds(&plan, "dns"), ["create_vm", "switch"]);
    let create = &cli::actions(&plan, "dns")[0];
    assert_eq!(change(create, "template")["after"], "local:vztmpl/nixos-25.11-proxmox-lxc.tar.xz");
    assert_eq!(change(create, "features")["after"], "nesting=1");
    assert!(
        create["changes"].as_array().expect("changes").iter().all(|c| c["field"] != "sshKeys"),
        "ssh-public-keys is create-only and never shown as a compared field"
    );

    let legacy = cli::actions(&plan, "legacy");
    assert_eq!(legacy[0]["kind"], "replace_vm");
    assert_eq!(legacy[0]["blocked"]["setting"], "policies.allow_replace");
    assert_eq!(change(&legacy[0], "rootfs.storage")["after"], "fast-zfs");

    let orphan = host(&plan, "old-ct");
    assert_eq!((orphan["orphan"].as_bool(), orphan["kind"].as_str()), (Some(true), Some("container")));
    assert!(plan["hosts"].as_array().expect("hosts").iter().all(|h| h["host"] != "media"), "unmanaged");
}

#[test]
fn the_plan_text_and_comment_show_both_kinds() {
    let (fixture, pve) = containers();
    let text = cli::plan(&fixture, &pve, &[]);
    insta::assert_snapshot!("containers_text", ok(&text));
    let markdown = cli::plan(&fixture, &pve, &["--format", "markdown"]);
    insta::assert_snapshot!("containers_markdown", ok(&markdown));
}

#[test]
fn a_plan_twice_gives_the_same_id() {
    let (fixture, pve) = containers();
    let id = |run: cli::Run| -> String {
        let plan: Value = serde_json::from_str(ok(&run)).expect("json");
        plan["plan_id"].as_str().expect("id").to_string()
    };
    let first = id(cli::plan(&fixture, &pve, &["--format", "json"]));
    assert_eq!(first, id(cli::plan(&fixture, &pve, &["--format", "json"])));
}

/// The containers fixture on a two-node cluster, `proxy` (201) on `pve2` while the flake places
/// it on `pve1`, in `status`.
fn proxy_on_pve2(status: &str) -> (Fixture, FakePve) {
    let fixture = Fixture::copy("containers");
    let text = std::fs::read_to_string(repo().join("fixtures/containers/cluster.json")).expect("cluster");
    let mut file: Value = serde_json::from_str(&text).expect("json");
    for guest in file["guests"].as_array_mut().expect("guests") {
        if guest["vmid"] == 201 {
            guest["node"] = json!("pve2");
            guest["status"] = json!(status);
        }
    }
    let path = fixture.dir.path().join("cluster-pve2.json");
    std::fs::write(&path, file.to_string()).expect("write");
    let scenario = cli::cluster_scenario(&path).set("nodes", json!(["pve1", "pve2"]));
    (fixture, FakePve::start(scenario))
}

/// A container on another node than declared is moved as pve-container allows: a running one in
/// restart mode (it cannot migrate live), a stopped one offline; it keeps its VMID, its notes
/// (host, system, pinned key) and its settings, and the rest of its plan runs on the new node.
#[test]
fn a_container_moves_to_its_node_restarted_while_running_offline_when_stopped() {
    for (status, body) in [("running", "target=pve1&restart=1"), ("stopped", "target=pve1")] {
        let (fixture, pve) = proxy_on_pve2(status);
        let plan: Value =
            serde_json::from_str(ok(&cli::plan(&fixture, &pve, &["--format", "json", "--hosts", "proxy"])))
                .expect("json");
        assert_eq!(
            cli::kinds(&plan, "proxy"),
            ["migrate_vm", "update_vm", "resize_disk", "switch"],
            "{status}"
        );
        let migrate = &cli::actions(&plan, "proxy")[0];
        let reason = migrate["reason"].as_str().expect("reason");
        assert!(reason.contains("restarts it if it runs"), "{reason}");
        assert!(reason.contains("containers cannot migrate live"), "{reason}");
        let before = pve.try_command(json!({"cmd": "ct", "vmid": 201})).expect("ct 201");

        pve.requests(true);
        let run = cli::plan_and_apply(&fixture, &pve, "proxy");
        assert_eq!(run.code, 0, "{status}: {}\n{}", run.stdout, run.stderr);
        let writes: Vec<_> =
            pve.requests_with_bodies(false).into_iter().filter(|r| r.method != "GET").collect();
        let moves: Vec<_> = writes.iter().filter(|r| r.is("POST", "/lxc/201/migrate")).collect();
        assert_eq!(moves.len(), 1, "one move: {writes:#?}");
        assert!(moves[0].path.contains("/nodes/pve2/"), "{:?}", moves[0]);
        assert_eq!(moves[0].body, body, "{status}");
        assert!(
            !writes.iter().any(|r| r.method == "DELETE" || r.is("POST", "/lxc")),
            "no destroy, no create: {writes:#?}"
        );
        // The settings were written on the new node, after the move.
        let after_move = writes.iter().position(|r| r.is("POST", "/lxc/201/migrate")).expect("move");
        assert!(
            writes[after_move..]
                .iter()
                .any(|r| r.method == "PUT" && r.path.contains("/nodes/pve1/lxc/201/config")),
            "{writes:#?}"
        );

        let after = pve.try_command(json!({"cmd": "ct", "vmid": 201})).expect("ct 201");
        // Moved; a stopped one is started after the move, on pve1, for its switch.
        assert_eq!((after["node"].as_str(), after["status"].as_str()), (Some("pve1"), Some("running")));
        let notes = |ct: &Value| ct["config"]["description"].as_str().expect("notes").to_string();
        let block = |ct: &Value| -> Value {
            let notes = notes(ct);
            let json = notes.split("nixprox:v1 ").nth(1).and_then(|t| t.split(" -->").next()).expect("block");
            serde_json::from_str(json).expect("block json")
        };
        let (was, now) = (block(&before), block(&after));
        for key in ["host", "system", "host_key"] {
            assert_eq!(was[key], now[key], "{status}: `{key}` kept in the notes");
        }

        // Run again: nothing to move.
        let again: Value =
            serde_json::from_str(ok(&cli::plan(&fixture, &pve, &["--format", "json", "--hosts", "proxy"])))
                .expect("json");
        assert!(!cli::kinds(&again, "proxy").contains(&"migrate_vm".to_string()), "{again:#}");
    }
}

/// An orphan container is destroyed with `policies.prune_orphans`, as an orphan VM.
#[test]
fn an_orphan_container_is_destroyed_with_prune_orphans() {
    let (fixture, pve) = containers();
    let settings = fixture.dir.path().join("nixprox.yaml");
    let text = std::fs::read_to_string(&settings).expect("nixprox.yaml");
    std::fs::write(&settings, format!("{text}  prune_orphans: true\n")).expect("write");
    let run = cli::plan_and_apply(&fixture, &pve, "old-ct");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(pve.try_command(json!({"cmd": "ct", "vmid": 203})).is_err(), "container 203 is gone");
    let deletes: Vec<(String, String)> =
        pve.requests(false).into_iter().filter(|(m, _)| m == "DELETE").collect();
    assert_eq!(deletes.len(), 1, "{deletes:?}");
    assert!(deletes[0].1.starts_with("/api2/json/nodes/pve1/lxc/203"), "{deletes:?}");
}

#[test]
fn a_container_with_a_template_is_only_matched_by_its_kind() {
    // A VM named like a container host is never adopted as that container: the container is
    // created beside it.
    let fixture = Fixture::copy("containers");
    let pve = FakePve::start(cli::cluster_scenario(&repo().join("fixtures/containers/cluster.json")).guest(json!({
        "vmid": 150, "name": "dns", "node": "pve1", "status": "running",
        "config": {"name": "dns", "memory": 1024, "scsi0": "local-lvm:vm-150-disk-0,size=8G", "net0": "virtio=BC:24:11:00:01:50,bridge=vmbr0"}
    })));
    let run = cli::plan(&fixture, &pve, &["--format", "json", "--hosts", "dns"]);
    let plan: Value = serde_json::from_str(ok(&run)).expect("json");
    assert_eq!(cli::kinds(&plan, "dns"), ["create_vm", "switch"]);
}

/// The containers fixture with an untagged container named `dns` of this `ostype` beside it.
fn with_unmanaged_dns(ostype: &str) -> (Fixture, FakePve) {
    let fixture = Fixture::copy("containers");
    let scenario = cli::cluster_scenario(&repo().join("fixtures/containers/cluster.json")).guest(json!({
        "vmid": 220, "name": "dns", "node": "pve1", "status": "running", "type": "lxc",
        "config": {"hostname": "dns", "ostype": ostype, "onboot": 1, "memory": 512, "swap": 512, "cores": 1, "unprivileged": 1,
                   "features": "nesting=1", "rootfs": "local-lvm:vm-220-disk-0,size=8G",
                   "mp0": "local-lvm:vm-220-disk-1,mp=/var/lib/unbound,size=2G",
                   "net0": "name=eth0,bridge=vmbr0,hwaddr=BC:24:11:00:02:20,ip=dhcp,type=veth"}
    }));
    (fixture, FakePve::start(scenario))
}

/// Declares `dns`'s host key in the fixture copy (`nixprox.ssh.hostKey`).
fn declare_dns_key(fixture: &Fixture) {
    let path = fixture.dir.path().join("flake.nix");
    let text = std::fs::read_to_string(&path).expect("flake.nix");
    let text = text.replace(
        "                cores = 1;\n",
        "                cores = 1;\n              };\n              nixprox.ssh.hostKey = \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIdnsxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx root@dns\";\n              nixprox.container = {\n",
    );
    std::fs::write(&path, text).expect("write flake.nix");
}

#[test]
fn a_nixos_container_is_adopted_in_place_only_with_its_key_declared() {
    let (fixture, pve) = with_unmanaged_dns("nixos");
    let plan = cli::plan_hosts(&fixture, &pve, "dns");
    let adopt = &cli::actions(&plan, "dns")[0];
    assert_eq!(adopt["kind"], "adopt");
    assert_eq!(
        adopt["blocked"]["reason"],
        "before adopting container 220, nixprox cannot verify the SSH host key of container 220 (containers have no guest agent and no file API), and never trusts a key on first use: declare it in `nixprox.ssh.hostKey` (the line of /etc/ssh/ssh_host_ed25519_key.pub in the container)"
    );
    assert_eq!(
        cli::kinds(&plan, "dns"),
        ["adopt"],
        "nothing else changes on a container nixprox cannot adopt"
    );

    declare_dns_key(&fixture);
    let plan = cli::plan_hosts(&fixture, &pve, "dns");
    assert_eq!(cli::kinds(&plan, "dns"), ["adopt", "switch"], "adopted in place, in sync otherwise");
    assert!(cli::actions(&plan, "dns")[0]["blocked"].is_null());
}

#[test]
fn a_container_that_does_not_run_nixos_is_never_converted_in_place() {
    let (fixture, pve) = with_unmanaged_dns("debian");
    declare_dns_key(&fixture);
    let plan = cli::plan_hosts(&fixture, &pve, "dns");
    let adopt = &cli::actions(&plan, "dns")[0];
    assert_eq!(
        adopt["blocked"]["reason"],
        "before adopting container 220, container 220 runs `debian` (its `ostype`), not NixOS: nixprox adopts only NixOS containers in place; delete it, or rename it and let nixprox create the host's container"
    );
    assert_eq!(cli::kinds(&plan, "dns"), ["adopt"]);
}

/// A real template tarball (`tar`, xz) whose root holds what `paths` name (directories end in
/// `/`), as nixpkgs' `proxmox-lxc` image would with `/etc/ssh` added.
fn template_tarball(dir: &std::path::Path, name: &str, paths: &[&str]) -> std::path::PathBuf {
    let root = dir.join(format!("{name}.root"));
    for path in paths {
        let full = root.join(path.trim_end_matches('/'));
        if path.ends_with('/') {
            std::fs::create_dir_all(&full).expect("mkdir");
        } else {
            std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
            std::fs::write(&full, "#! /nix/store/abc-bash/bin/sh\n").expect("write");
        }
    }
    let out = dir.join(name);
    let status = std::process::Command::new("tar")
        .arg("-cJf")
        .arg(&out)
        .arg("-C")
        .arg(&root)
        .arg(".")
        .status()
        .expect("run tar");
    assert!(status.success(), "tar failed");
    out
}

fn new_container<'a>(
    shared: &'a nixprox::spec::VmSpec,
    spec: &'a nixprox::spec::container::ContainerSpec,
    template: &'a str,
    ssh_keys: &'a [String],
) -> nixprox::proxmox::container::NewContainer<'a> {
    nixprox::proxmox::container::NewContainer { vmid: 230, shared, spec, template, ssh_keys, description: "" }
}

fn container_spec() -> (nixprox::spec::VmSpec, nixprox::spec::container::ContainerSpec) {
    use nixprox::spec::container::{ContainerSpec, CtNetSpec, Features, VolumeSpec, shared_spec};
    let shared = shared_spec("dns.lab".into(), BTreeSet::new(), String::new(), true, false, None);
    let spec = ContainerSpec {
        cores: Some(1),
        memory_mib: 512,
        swap_mib: 512,
        rootfs: VolumeSpec { storage: "local-lvm".into(), size_bytes: 8 << 30 },
        mounts: Default::default(),
        networks: [(
            "net0".to_string(),
            CtNetSpec {
                name: "eth0".into(),
                bridge: "vmbr0".into(),
                mac: None,
                vlan: None,
                firewall: false,
                address: Some("ip=dhcp".into()),
            },
        )]
        .into(),
        features: Features { nesting: true, keyctl: false, fuse: false },
        unprivileged: true,
        startup: None,
    };
    (shared, spec)
}

/// The first boot's key, end to end without trusting the network: the template (a real
/// tarball, named without `nixos` in it) is uploaded as `vztmpl`, Proxmox detects NixOS from its
/// `/nix/store` and prints the fingerprints of the host keys it generated in the create task's
/// log; nixprox pins those and a loopback SSH host presenting that key is accepted (its whole key
/// read for the notes), one presenting another key is refused.
#[tokio::test]
async fn a_new_containers_host_key_is_pinned_from_the_create_task_log() {
    use nixprox::proxmox::container::{create, create_form, upload_template};
    use nixprox::ssh::{ClientKey, ConnectOptions, HostKeyPolicy, Session, SshError, SshTarget};
    use std::time::Duration;

    let dir = tempfile::tempdir().expect("tempdir");
    let tarball =
        template_tarball(dir.path(), "nixprox-0a1b2c.tar.xz", &["nix/store/", "etc/ssh/", "sbin/init"]);
    let pve = FakePve::start(crate::support::fakepve::Scenario::new());
    let client = pve.client();
    let timeout = Duration::from_secs(30);

    // pve-storage refuses a template without a template extension.
    let err = upload_template(&client, "pve1", "local", "nixprox-0a1b2c.tar", &tarball, timeout)
        .await
        .expect_err("nixprox checks the extension first");
    assert!(err.to_string().contains("must end in one of .tar.gz, .tar.xz, .tar.zst, .tar.bz2"), "{err}");
    let template = upload_template(&client, "pve1", "local", "nixprox-0a1b2c.tar.xz", &tarball, timeout)
        .await
        .expect("upload");
    assert_eq!(template, "local:vztmpl/nixprox-0a1b2c.tar.xz");

    // The key the test host presents is the one "Proxmox generates" for the container.
    let host = crate::support::sshd::TestHost::start();
    pve.command(json!({"cmd": "ct_host_keys", "hostname": "dns", "keys": [host.host_public()]}));
    let (shared, spec) = container_spec();
    let keys = vec![
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDnixproxExampleKeyOnlyForTheFixture ops@homelab".to_string(),
    ];
    let form = create_form(new_container(&shared, &spec, &template, &keys));
    let generated = create(&client, "pve1", &form, timeout).await.expect("create");
    assert_eq!(generated.len(), 1, "{generated:?}");
    assert_eq!(generated[0].file, "ssh_host_ed25519_key");

    let config = pve.command(json!({"cmd": "ct", "vmid": 230}))["config"].clone();
    assert_eq!(config["ostype"], "nixos", "detected from /nix/store, not from the name: {config}");
    assert_eq!(config["tags"], "nixprox");
    assert!(config.get("ssh-public-keys").is_none(), "create-only: not part of the config");

    let fingerprints: Vec<String> = generated.iter().map(|k| k.fingerprint.clone()).collect();
    let policy = HostKeyPolicy::fingerprints(&fingerprints).expect("fingerprints");
    let target =
        SshTarget { host: "dns".into(), address: host.address.clone(), port: host.port, user: "root".into() };
    let key = ClientKey::File(host.client_key.clone()).materialize().expect("key").load().expect("load");
    let session = Session::connect(&target, &key, &policy, &ConnectOptions::default())
        .await
        .expect("pinned by fingerprint");
    let pinned = HostKeyPolicy::pinned(&host.host_public()).expect("pin").lines()[0].clone();
    assert_eq!(session.server_key(), pinned, "the whole key, for the metadata block");
    session.close().await;

    let other =
        HostKeyPolicy::fingerprints(&["SHA256:8Bi2S5Y2X4uCwSAgOsYt2Yx0b1oe8qbb9dZBdvUBYYo".to_string()])
            .expect("fingerprint");
    let err = Session::connect(&target, &key, &other, &ConnectOptions::default()).await.expect_err("refused");
    assert!(matches!(err, SshError::HostKeyMismatch { .. }), "{err}");
}

/// A template without `/etc/ssh` (nixpkgs' `proxmox-lxc` tarball as it is): Proxmox generates no
/// key, so the log names none and nothing could pin the container's key.
#[tokio::test]
async fn a_template_without_etc_ssh_gives_no_key_to_pin() {
    use nixprox::proxmox::container::{create, create_form, upload_template};
    use std::time::Duration;

    let dir = tempfile::tempdir().expect("tempdir");
    let tarball = template_tarball(dir.path(), "nixprox-plain.tar.xz", &["nix/store/", "sbin/init"]);
    let pve = FakePve::start(crate::support::fakepve::Scenario::new());
    let client = pve.client();
    let timeout = Duration::from_secs(30);
    let template = upload_template(&client, "pve1", "local", "nixprox-plain.tar.xz", &tarball, timeout)
        .await
        .expect("upload");
    let (shared, spec) = container_spec();
    let generated =
        create(&client, "pve1", &create_form(new_container(&shared, &spec, &template, &[])), timeout)
            .await
            .expect("create");
    assert!(generated.is_empty(), "{generated:?}");
    assert_eq!(pve.command(json!({"cmd": "ct", "vmid": 230}))["config"]["ostype"], "nixos");

    // `ssh-public-keys` is create-only: the config update's schema has no such property.
    let err = client
        .put("/nodes/pve1/lxc/230/config", &[("ssh-public-keys", "ssh-ed25519 AAAA x")])
        .await
        .expect_err("create-only");
    assert!(err.to_string().contains("ssh-public-keys"), "{err}");
}

/// Sharding treats containers as VMs: two shards merged give the unsharded plan (the same
/// JSON and plan id), containers and the VM alike.
#[test]
fn shards_with_containers_merge_into_the_unsharded_plan() {
    let (fixture, pve) = containers();
    let out = tempfile::tempdir().expect("tempdir");
    let part = |i: u32| out.path().join(format!("part-{i}.json")).display().to_string();
    let whole = cli::plan(&fixture, &pve, &["--format", "json"]);
    let whole = ok(&whole).to_string();
    for i in 1..=2 {
        let run =
            cli::plan(&fixture, &pve, &["--shard", &format!("{i}/2"), "--format", "json", "--out", &part(i)]);
        assert_eq!(run.code, 0, "{}", run.stderr);
    }
    let merged = cli::plan(&fixture, &pve, &["--merge", &part(2), &part(1), "--format", "json"]);
    assert_eq!(ok(&merged), whole);
}

#[test]
fn a_template_built_from_the_flake_is_planned_once_for_the_hosts_that_share_it() {
    let (fixture, pve) = containers();
    let plan: Value =
        serde_json::from_str(ok(&cli::plan(&fixture, &pve, &["--format", "json"]))).expect("json");
    let template = |host: &str| -> String {
        let upload = &cli::actions(&plan, host)[0];
        assert_eq!(upload["kind"], "upload_image", "{upload}");
        change(upload, "template")["after"].as_str().expect("volume").to_string()
    };
    assert_eq!(cli::kinds(&plan, "mail"), ["upload_image", "create_vm", "switch"]);
    assert_eq!(cli::kinds(&plan, "chat"), ["upload_image", "create_vm", "switch"]);
    let volume = template("mail");
    assert_eq!(volume, template("chat"), "one file for both");
    let file = volume.strip_prefix("local:vztmpl/nixprox-").expect("named after the store hash");
    assert!(file.len() == 32 + ".tar.xz".len() && file.ends_with(".tar.xz"), "{volume}");
    let reason = cli::actions(&plan, "mail")[0]["reason"].as_str().expect("reason").to_string();
    assert!(reason.ends_with("; shared with `chat`: uploaded once"), "{reason}");
    let create = &cli::actions(&plan, "mail")[1];
    assert_eq!(change(create, "template")["after"], volume.as_str());
    assert_eq!(plan["summary"]["upload_image"], 2, "one action per host, one file");
}

/// The fixture's template is a real tarball: built by nix from the flake, uploaded as `vztmpl`,
/// two containers created from the one file, each with its host keys' fingerprints in its
/// create task's log and NixOS detected from the tarball's `/nix/store`.
#[tokio::test]
async fn the_flakes_template_builds_uploads_and_makes_containers_with_keys_to_pin() {
    use nixprox::proxmox::container::{create, create_form, upload_template};
    use std::time::Duration;

    let fixture = Fixture::copy("containers");
    let mut command = std::process::Command::new("nix");
    command
        .env("NIX_CONFIG", "substituters =")
        .args(["--extra-experimental-features", "nix-command flakes", "build", "--no-link", "--json"])
        .args(["--option", "sandbox", "false"])
        .arg(format!(
            "{}#nixosConfigurations.mail.config.nixprox.container.tarball.package",
            fixture.flake_ref()
        ));
    for input in crate::support::nix::override_inputs() {
        command.args(["--override-input", &input.name, &input.flake_ref]);
    }
    let output = command.output().expect("run nix");
    assert!(output.status.success(), "nix build failed: {}", String::from_utf8_lossy(&output.stderr));
    let built: Value = serde_json::from_slice(&output.stdout).expect("nix build --json");
    let out = built[0]["outputs"]["out"].as_str().expect("out path").to_string();
    let tarball = std::path::Path::new(&out).join("tarball/lab-base.tar.xz");
    let name = nixprox::image::template_file_name(&out).expect("store path");

    let pve = FakePve::start(crate::support::fakepve::Scenario::new());
    let client = pve.client();
    let timeout = Duration::from_secs(30);
    let template = upload_template(&client, "pve1", "local", &name, &tarball, timeout).await.expect("upload");
    let (shared, spec) = container_spec();
    for (vmid, hostname) in [(240, "mail"), (241, "chat")] {
        let mut shared = shared.clone();
        shared.name = hostname.into();
        let mut new = new_container(&shared, &spec, &template, &[]);
        new.vmid = vmid;
        let keys = create(&client, "pve1", &create_form(new), timeout).await.expect("create");
        assert_eq!(keys.len(), 1, "the template has /etc/ssh: {keys:?}");
        assert!(keys[0].fingerprint.starts_with("SHA256:"));
        let config = pve.command(json!({"cmd": "ct", "vmid": vmid}))["config"].clone();
        assert_eq!(config["ostype"], "nixos", "{config}");
    }
    let uploads = pve
        .requests(false)
        .into_iter()
        .filter(|(m, p)| m == "POST" && p.ends_with("/storage/local/upload"))
        .count();
    assert_eq!(uploads, 1, "one file for both containers");
}

/// `nixprox forget` lets go of a container as of a VM: through pve-container's `PUT …/config`,
/// the tag and the block go, the rest of the notes stays.
#[test]
fn forget_lets_go_of_a_container() {
    let (fixture, pve) = containers();
    let mut command = cli::nixprox();
    command.args(["forget", "proxy", "--flake", &fixture.flake_ref()]).envs(cli::pve_env(&pve));
    let run: cli::Run = command.output().expect("run nixprox").into();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.starts_with("nixprox no longer manages container 201 `proxy` on node `pve1`"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("set `nixprox.container.keep = true`"), "{}", run.stdout);
    let config = pve.command(json!({"cmd": "ct", "vmid": 201}))["config"].clone();
    assert!(
        config.get("tags").is_none_or(|t| !t.as_str().unwrap_or_default().contains("nixprox")),
        "{config}"
    );
    assert!(
        config.get("description").is_none_or(|d| !d.as_str().unwrap_or_default().contains("nixprox:v1")),
        "{config}"
    );
    let writes: Vec<(String, String)> = pve.requests(false).into_iter().filter(|(m, _)| m != "GET").collect();
    assert_eq!(writes, [("PUT".to_string(), "/api2/json/nodes/pve1/lxc/201/config".to_string())]);
}

/// `nixprox.container.keep`: the reviewed plan's `release` of a container is applied (the one
/// container action apply carries out so far), the container left as it is.
#[test]
fn a_kept_container_is_released_by_apply() {
    let (fixture, pve) = containers();
    let path = fixture.dir.path().join("flake.nix");
    let text = std::fs::read_to_string(&path).expect("flake.nix");
    std::fs::write(
        &path,
        text.replace(
            "                id = 201;\n",
            "                id = 201;\n                keep = true;\n",
        ),
    )
    .expect("write");
    let run = cli::plan_and_apply(&fixture, &pve, "proxy");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let config = pve.command(json!({"cmd": "ct", "vmid": 201}))["config"].clone();
    assert!(
        config.get("tags").is_none_or(|t| !t.as_str().unwrap_or_default().contains("nixprox")),
        "{config}"
    );
    assert_eq!(config["memory"], 512, "nothing else changes: {config}");
    let plan = cli::plan_hosts(&fixture, &pve, "proxy");
    assert_eq!(cli::kinds(&plan, "proxy"), ["noop"], "kept and let go");
}

/// `gc-images` lists (and with `--delete` removes) the container templates nixprox uploaded
/// that no host's own template is any more, never the one in use nor the user's own.
#[test]
fn gc_images_lists_container_templates_no_host_uses() {
    let (fixture, pve) = containers();
    let plan: Value =
        serde_json::from_str(ok(&cli::plan(&fixture, &pve, &["--format", "json"]))).expect("json");
    let in_use =
        change(&cli::actions(&plan, "mail")[0], "template")["after"].as_str().expect("volume").to_string();
    let in_use = in_use.strip_prefix("local:vztmpl/").expect("file").to_string();
    let stale = "nixprox-0c8yzlgy9xbfn6sjcx6rh6fzqfvc3ai2.tar.xz";
    for name in [in_use.as_str(), stale, "nixos-25.11-proxmox-lxc.tar.xz"] {
        pve.command(
            json!({"cmd": "store_file", "storage": "local", "name": name, "size": 4096, "content": "vztmpl"}),
        );
    }
    let run = cli::nixprox_in(&fixture, &pve, &["gc-images"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        format!(
            "Would remove (pass --delete to remove) 1 image file(s) no host of the flake refers to:\n  local:vztmpl/{stale} (node pve1, 4.00 KiB)\n"
        )
    );
    let run = cli::nixprox_in(&fixture, &pve, &["gc-images", "--delete"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let left = pve.command(json!({"cmd": "volumes", "storage": "local"}));
    let left: Vec<&String> = left.as_object().expect("volumes").keys().collect();
    assert_eq!(
        left,
        [&format!("vztmpl/{in_use}"), &"vztmpl/nixos-25.11-proxmox-lxc.tar.xz".to_string()],
        "the template in use and the user's stay"
    );
}

/// A template storage shared between nodes (NFS, CephFS: `shared` in its status) holds one set
/// of files whatever node lists it: `gc-images` lists a stale template on it once, not once per
/// node of the hosts using it, and `--delete` removes it once.
#[test]
fn gc_images_lists_a_template_on_a_shared_storage_once() {
    let fixture = Fixture::copy("containers");
    let settings = fixture.dir.path().join("nixprox.yaml");
    let text = std::fs::read_to_string(&settings).expect("nixprox.yaml");
    std::fs::write(&settings, text.replace("image_storage: local", "image_storage: nas")).expect("write");
    // chat (its own template, as mail) lives on pve2: the templates' storage is looked at
    // through pve1 and pve2.
    let flake = fixture.dir.path().join("flake.nix");
    let text = std::fs::read_to_string(&flake).expect("flake.nix");
    let chat = "          name = \"chat\";\n          address = \"127.0.0.36\";\n          modules = [ ownTemplate ];";
    assert!(text.contains(chat), "the fixture's chat host");
    let moved = chat.replace("[ ownTemplate ]", "[ ownTemplate { nixprox.container.node = \"pve2\"; } ]");
    std::fs::write(&flake, text.replace(chat, &moved)).expect("write");
    let nas = json!({"nas": {"type": "dir", "path": "/mnt/pve/nas", "content": "vztmpl,iso", "shared": 1}});
    let scenario = cli::cluster_scenario(&repo().join("fixtures/containers/cluster.json"))
        .set("nodes", json!(["pve1", "pve2"]))
        .set("storages", nas);
    let pve = FakePve::start(scenario);
    let stale = "nixprox-0c8yzlgy9xbfn6sjcx6rh6fzqfvc3ai2.tar.xz";
    pve.command(
        json!({"cmd": "store_file", "storage": "nas", "name": stale, "size": 4096, "content": "vztmpl"}),
    );

    let run = cli::nixprox_in(&fixture, &pve, &["gc-images"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        format!(
            "Would remove (pass --delete to remove) 1 image file(s) no host of the flake refers to:\n  nas:vztmpl/{stale} (node pve1, 4.00 KiB)\n"
        )
    );
    pve.requests(true);
    let run = cli::nixprox_in(&fixture, &pve, &["gc-images", "--delete"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let deletes: Vec<(String, String)> =
        pve.requests(false).into_iter().filter(|(m, _)| m == "DELETE").collect();
    assert_eq!(deletes.len(), 1, "deleted once: {deletes:?}");
    let left = pve.command(json!({"cmd": "volumes", "storage": "nas"}));
    assert!(left.as_object().expect("volumes").is_empty(), "{left}");
}

/// The move ran but its answer was lost: the move is never sent again blind; the run fails
/// naming it, and the next plan finds the container on its new node (no move), its notes intact.
#[test]
fn a_container_move_whose_answer_is_lost_is_not_sent_twice() {
    let (fixture, pve) = proxy_on_pve2("running");
    pve.command(json!({"cmd": "lose_answer", "method": "POST", "path": "/lxc/201/migrate$", "times": 1}));
    pve.requests(true);
    let run = cli::plan_and_apply(&fixture, &pve, "proxy");
    let moves = pve
        .requests(false)
        .into_iter()
        .filter(|(m, p)| m == "POST" && p.ends_with("/lxc/201/migrate"))
        .count();
    assert_eq!(moves, 1, "sent once: {}\n{}", run.stdout, run.stderr);
    assert_eq!(run.code, 3, "the host fails: {}", run.stdout);
    assert!(
        run.stdout.contains("error at migrate: failed to post to `/nodes/pve2/lxc/201/migrate`"),
        "{}",
        run.stdout
    );
    let after = pve.try_command(json!({"cmd": "ct", "vmid": 201})).expect("ct 201");
    assert_eq!(after["node"], "pve1", "the move ran");
    assert!(after["config"]["description"].as_str().expect("notes").contains("\"host\":\"proxy\""));
    let plan: Value =
        serde_json::from_str(ok(&cli::plan(&fixture, &pve, &["--format", "json", "--hosts", "proxy"])))
            .expect("json");
    assert_eq!(cli::kinds(&plan, "proxy"), ["update_vm", "resize_disk", "switch"], "{plan:#}");
    let run = cli::plan_and_apply(&fixture, &pve, "proxy");
    assert_eq!(run.code, 0, "the re-run finishes on pve1: {}\n{}", run.stdout, run.stderr);
}

/// The new node lacks a storage a volume is on: pve-container's `prepare` refuses before it
/// shuts the container down; the host fails naming the storage, the container stays on its
/// node, running.
#[test]
fn a_container_move_to_a_node_without_its_storage_fails_and_leaves_it_running() {
    let (fixture, pve) = proxy_on_pve2("running");
    pve.command(json!({"cmd": "set_storage", "storage": "local-lvm", "options": {"nodes": "pve2"}}));
    let run = cli::plan_and_apply(&fixture, &pve, "proxy");
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("storage 'local-lvm' is not available on node 'pve1'"), "{}", run.stdout);
    let after = pve.try_command(json!({"cmd": "ct", "vmid": 201})).expect("ct 201");
    assert_eq!((after["node"].as_str(), after["status"].as_str()), (Some("pve2"), Some("running")));
}

/// `nixprox import` of a container writes a host module with the `nixprox.container` block,
/// its address from net0 and the key nixprox recorded: imported as it is (the `import`
/// fixture's host), it evaluates and plans nothing but the system, and `noop` once the notes
/// record that system.
#[test]
fn nixprox_import_of_a_container_writes_a_module_that_plans_noop() {
    use nixprox::metadata::{Metadata, Notes};
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIImportedContainerKeyxxxxxxxxxxxxxxx root@web";
    let guest = |system: &str| {
        let block = Metadata {
            host: "web".into(),
            system: Some(system.into()),
            host_key: Some(key.into()),
            ..Metadata::default()
        };
        json!({
            "vmid": 210, "name": "web", "node": "pve1", "status": "running", "type": "lxc",
            "config": {
                "hostname": "web", "ostype": "nixos", "arch": "amd64", "unprivileged": 1,
                "cores": 2, "memory": 1024, "swap": 256, "onboot": 1, "protection": 1, "startup": "order=2",
                "features": "nesting=1,keyctl=1",
                "rootfs": "local-lvm:vm-210-disk-0,size=10G",
                "mp0": "local-lvm:vm-210-disk-1,mp=/var/lib/data,backup=1,size=4G",
                "net0": "name=eth0,bridge=vmbr0,hwaddr=BC:24:11:00:02:10,ip=127.0.0.40/8,gw=127.0.0.1,tag=20,firewall=1,type=veth",
                "tags": "nixprox;web", "description": Notes::render("Owner: alice.\n\n", &block)
            }
        })
    };
    let pve = FakePve::start(crate::support::fakepve::Scenario::new().guest(guest("/nix/store/old")));
    let fixture = Fixture::copy("import");
    let out = fixture.dir.path().join("imported.nix");
    let mut command = cli::nixprox();
    command
        .args(["import", "210", "--out", &out.display().to_string(), "--flake", &fixture.flake_ref()])
        .envs(cli::pve_env(&pve));
    let run: cli::Run = command.output().expect("run nixprox").into();
    assert_eq!(run.code, 0, "{}", run.stderr);
    let module = std::fs::read_to_string(&out).expect("imported.nix");
    for line in [
        "  nixprox.container = {\n",
        "    enable = true;\n",
        "    rootfs = { storage = \"local-lvm\"; size = \"10G\"; };\n",
        "    features = { nesting = true; keyctl = true; fuse = false; };\n",
        "      mp0 = { storage = \"local-lvm\"; size = \"4G\"; path = \"/var/lib/data\"; backup = true; };\n",
        "      net0 = { name = \"eth0\"; bridge = \"vmbr0\"; macAddress = \"BC:24:11:00:02:10\"; vlan = 20; firewall = true; };\n",
        "  nixprox.address = \"127.0.0.40\";\n",
        "  nixprox.network.prefixLength = 8;\n",
        "  nixprox.network.gateway = \"127.0.0.1\";\n",
    ] {
        assert!(module.contains(line), "`{line}` in\n{module}");
    }
    assert!(module.contains(&format!("  nixprox.ssh.hostKey = \"{key}\";\n")), "{module}");

    // Nothing but the system differs from the container it came from.
    let plan = cli::plan_hosts(&fixture, &pve, "web");
    assert_eq!(host(&plan, "web")["kind"], "container", "{plan:#}");
    assert_eq!(cli::kinds(&plan, "web"), ["switch"], "{plan:#}");
    let toplevel =
        cli::actions(&plan, "web")[0]["changes"][0]["after"].as_str().expect("toplevel").to_string();
    drop(pve);
    let pve = FakePve::start(crate::support::fakepve::Scenario::new().guest(guest(&toplevel)));
    let plan = cli::plan_hosts(&fixture, &pve, "web");
    assert_eq!(cli::kinds(&plan, "web"), ["noop"], "{plan:#}");
}

/// A container end to end through the binary: fakepve with a template whose root has
/// `/etc/ssh` and `/nix/store`, the SSH test host answering as the container with the key
/// "Proxmox generated" for it, and the locked `fixtures/ct-deploy` flake.
pub(crate) struct CtLab {
    pub(crate) host: crate::support::sshd::TestHost,
    pub(crate) pve: FakePve,
    pub(crate) fixture: Fixture,
    pub(crate) work: tempfile::TempDir,
}

impl CtLab {
    pub(crate) fn start() -> CtLab {
        let host = crate::support::sshd::TestHost::start();
        let pve = FakePve::start(crate::support::fakepve::Scenario::new());
        pve.command(json!({"cmd": "ct_template", "storage": "local", "name": "nixos-lab.tar.xz",
                           "paths": ["nix/store", "etc/ssh", "sbin/init"]}));
        pve.command(json!({"cmd": "ct_host_keys", "hostname": "ct", "keys": [host.host_public()]}));
        let fixture = Fixture::copy("ct-deploy");
        let work = tempfile::Builder::new().prefix("nixprox-ct-").tempdir().expect("tempdir");
        let lab = CtLab { host, pve, fixture, work };
        lab.declare("1", 512, "8G");
        lab.fixture.lock();
        lab
    }

    pub(crate) fn declare(&self, revision: &str, memory: u64, rootfs: &str) {
        let declared = json!({
            "system": crate::support::sshd::systems::current_system(),
            "revision": revision,
            "address": self.host.address,
            "port": self.host.port,
            "clientKey": self.host.client_public,
            "template": "local:vztmpl/nixos-lab.tar.xz",
            "memory": memory,
            "rootfs": rootfs,
        });
        let dir = self.fixture.dir.path();
        std::fs::write(dir.join("test-host.json"), declared.to_string()).expect("write test-host.json");
        let settings = format!(
            "defaults:\n  node: pve1\n  storage: local-lvm\n  bridge: vmbr0\nssh:\n  key: {}\n  connect_timeout: 60\n",
            self.host.client_key.display()
        );
        std::fs::write(dir.join("nixprox.yaml"), settings).expect("write nixprox.yaml");
    }

    /// Sets one more field of `test-host.json`.
    pub(crate) fn declare_more(&self, key: &str, value: Value) {
        let path = self.fixture.dir.path().join("test-host.json");
        let mut declared: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("test-host.json")).expect("json");
        declared[key] = value;
        std::fs::write(&path, declared.to_string()).expect("write test-host.json");
    }

    pub(crate) fn run(&self, args: &[&str]) -> cli::Run {
        let mut command = cli::nixprox();
        command.args(args).args(["--flake", &self.fixture.flake_ref()]).envs(cli::pve_env(&self.pve));
        command.output().expect("run nixprox").into()
    }

    pub(crate) fn plan(&self) -> Value {
        let out = self.work.path().join("plan.json").display().to_string();
        let run = self.run(&["plan", "--format", "json", "--out", &out]);
        assert_eq!(run.code, 0, "plan failed:\n{}", run.stderr);
        serde_json::from_str(&std::fs::read_to_string(&out).expect("plan.json")).expect("json")
    }

    pub(crate) fn apply(&self) -> (cli::Run, Value) {
        let plan = self.work.path().join("plan.json").display().to_string();
        let report = self.work.path().join("report.json").display().to_string();
        let _ = std::fs::remove_file(&report);
        let run = self.run(&["apply", "--reviewed-plan", &plan, "--report", &report]);
        let text = std::fs::read_to_string(&report)
            .unwrap_or_else(|e| panic!("no report ({e}):\n{}\n{}", run.stdout, run.stderr));
        (run, serde_json::from_str(&text).expect("report json"))
    }

    pub(crate) fn config(&self) -> Value {
        self.pve.command(json!({"cmd": "ct", "vmid": 250}))["config"].clone()
    }

    pub(crate) fn metadata(&self) -> nixprox::metadata::Metadata {
        let notes = self.config()["description"].as_str().expect("notes").to_string();
        nixprox::metadata::Notes::parse(&notes)
            .metadata()
            .cloned()
            .unwrap_or_else(|| panic!("no block: {notes}"))
    }

    pub(crate) fn steps(report: &Value) -> Vec<String> {
        report["hosts"][0]["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .map(|s| s["step"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

#[test]
fn a_container_is_created_its_key_pinned_from_the_task_log_switched_updated_and_resized() {
    let lab = CtLab::start();
    let plan = lab.plan();
    assert_eq!(cli::kinds(&plan, "ct"), ["create_vm", "switch"], "{plan:#}");
    let (run, report) = lab.apply();
    assert_eq!(run.code, 0, "apply failed:\n{}\n{}\n{report:#}", run.stdout, run.stderr);
    assert_eq!(CtLab::steps(&report), ["create", "start", "host key", "switch", "finish"], "{report:#}");
    let config = lab.config();
    assert_eq!(config["ostype"], "nixos", "{config}");
    assert!(config["tags"].as_str().unwrap_or_default().split(';').any(|t| t == "nixprox"), "{config}");
    let metadata = lab.metadata();
    let toplevel = metadata.system.clone().expect("system recorded");
    assert_eq!(lab.host.current_system().as_deref(), Some(toplevel.as_str()), "switched over SSH");
    let pinned =
        nixprox::ssh::HostKeyPolicy::pinned(&lab.host.host_public()).expect("pin").lines()[0].clone();
    assert_eq!(
        metadata.host_key.as_deref(),
        Some(pinned.as_str()),
        "the whole key, pinned by its fingerprint"
    );
    assert_eq!((metadata.applying.as_deref(), metadata.created.is_none()), (None, true));
    assert_eq!(cli::kinds(&lab.plan(), "ct"), ["noop"], "in sync after one apply");

    // More memory (on the running container) and a larger root file system (a resize task).
    lab.declare("1", 1024, "10G");
    let plan = lab.plan();
    assert_eq!(cli::kinds(&plan, "ct"), ["update_vm", "resize_disk"], "{plan:#}");
    let (run, report) = lab.apply();
    assert_eq!(run.code, 0, "apply failed:\n{}\n{}\n{report:#}", run.stdout, run.stderr);
    assert_eq!(CtLab::steps(&report), ["configure", "pending", "resize", "finish"], "{report:#}");
    let config = lab.config();
    assert_eq!(config["memory"], 1024, "on the running container at once: {config}");
    assert!(config["rootfs"].as_str().unwrap_or_default().ends_with("size=10G"), "{config}");
    assert_eq!(cli::kinds(&lab.plan(), "ct"), ["noop"]);

    // A feature waits for the container's next start: planned as such, reported as such.
    lab.declare_more("nesting", json!(false));
    let plan = lab.plan();
    let update = &cli::actions(&plan, "ct")[0];
    assert_eq!(change(update, "features.nesting")["effect"], "needs_reboot", "{plan:#}");
    let (run, report) = lab.apply();
    assert_eq!(run.code, 0, "apply failed:\n{}\n{}\n{report:#}", run.stdout, run.stderr);
    assert_eq!(report["hosts"][0]["status"], "pending_reboot", "{report:#}");
    assert_eq!(report["hosts"][0]["keys"], json!(["features"]), "{report:#}");
    let plan = lab.plan();
    assert_eq!(cli::kinds(&plan, "ct"), ["noop"], "already made, waiting for the start: {plan:#}");
    assert!(
        cli::actions(&plan, "ct")[0]["reason"].as_str().unwrap_or_default().contains("pending: features"),
        "{plan:#}"
    );
}

/// The create's answer is lost (the container was made, nixprox never heard) and the run stops
/// before the key is pinned (the start fails): the run found the container by its notes, and
/// the next one starts it, pins its key from the create task's log (still there) and switches
/// it; nothing is created twice, nothing trusted.
#[test]
fn a_lost_create_answer_is_resumed_with_the_key_from_the_create_task_log() {
    let lab = CtLab::start();
    lab.plan();
    lab.pve.command(json!({"cmd": "lose_answer", "method": "POST", "path": "/nodes/pve1/lxc$", "times": 1}));
    lab.pve.command(json!({"cmd": "fail", "method": "POST", "path": "/lxc/250/status/start",
                           "error": "mtu_size_bigger_than_bridge", "times": 1}));
    let (run, report) = lab.apply();
    assert_eq!(run.code, 3, "the start failed: {report:#}");
    assert_eq!(
        report["hosts"][0]["steps"][0]["detail"], "vmid 250 (the create's answer was lost; the VM is there)",
        "found in the same run: {report:#}"
    );
    assert!(
        lab.config()["description"].as_str().unwrap_or_default().contains("nixprox:v1"),
        "created, with its notes"
    );

    let plan = lab.plan();
    assert_eq!(cli::kinds(&plan, "ct"), ["switch"], "{plan:#}");
    let (run, report) = lab.apply();
    assert_eq!(run.code, 0, "apply failed:\n{}\n{}\n{report:#}", run.stdout, run.stderr);
    assert_eq!(CtLab::steps(&report), ["start", "host key", "switch", "finish"], "{report:#}");
    let pinned =
        nixprox::ssh::HostKeyPolicy::pinned(&lab.host.host_public()).expect("pin").lines()[0].clone();
    assert_eq!(lab.metadata().host_key.as_deref(), Some(pinned.as_str()));
    let creates = lab
        .pve
        .requests(false)
        .into_iter()
        .filter(|(m, p)| m == "POST" && p.ends_with("/nodes/pve1/lxc"))
        .count();
    assert_eq!(creates, 1, "never sent twice");
    assert_eq!(cli::kinds(&lab.plan(), "ct"), ["noop"]);
}

/// A switch whose activation cuts nixprox off (it drops the client key) is not confirmed and
/// rolled back, as for a VM: the container runs its previous system and the notes keep it.
#[test]
fn a_containers_failing_activation_is_rolled_back() {
    let lab = CtLab::start();
    lab.plan();
    let (run, report) = lab.apply();
    assert_eq!(run.code, 0, "apply failed:\n{}\n{}\n{report:#}", run.stdout, run.stderr);
    let first = lab.host.current_system().expect("switched");

    lab.declare("2", 512, "8G");
    lab.declare_more("authorizedKeys", json!(""));
    lab.declare_more("confirmTimeout", json!(3));
    let plan = lab.plan();
    assert_eq!(cli::kinds(&plan, "ct"), ["switch"], "{plan:#}");
    let (run, report) = lab.apply();
    assert_ne!(run.code, 0, "a rolled-back switch fails the host: {report:#}");
    assert_eq!(
        report["hosts"][0]["error"], "rolled back: no confirmation from nixprox within 3s",
        "{report:#}"
    );
    assert_eq!(lab.host.current_system().as_deref(), Some(first.as_str()), "back on the previous system");
    assert_eq!(lab.metadata().system.as_deref(), Some(first.as_str()), "the notes keep the running system");
}

/// An unmanaged NixOS container named like the host, running a system its owner put there, is
/// adopted in place with the declared key and switched to the flake's system: the same adopt
/// step as a VM's, through pve-container's config.
#[test]
fn an_existing_nixos_container_is_adopted_in_place_and_switched() {
    let lab = CtLab::start();
    // What the owner did before nixprox: a NixOS system running in the container.
    let old = crate::support::sshd::systems::build("nixos-system-ct-old", &lab.host.client_public, 0);
    let ssh_opts = format!(
        "-i {} -p {} -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no -o IdentitiesOnly=yes -o BatchMode=yes -o LogLevel=ERROR",
        lab.host.client_key.display(),
        lab.host.port
    );
    let output = std::process::Command::new("nix")
        .env("NIX_CONFIG", "substituters =")
        .env("NIX_SSHOPTS", ssh_opts)
        .args(["--extra-experimental-features", "nix-command flakes", "copy", "--no-check-sigs", "--to"])
        .arg(format!("ssh-ng://root@{}", lab.host.address))
        .arg(&old)
        .output()
        .expect("run nix copy");
    assert!(output.status.success(), "nix copy failed: {}", String::from_utf8_lossy(&output.stderr));
    std::os::unix::fs::symlink(&old, lab.host.root().join("run/current-system")).expect("current-system");
    lab.pve.command(json!({"cmd": "add_vm", "guest": {
        "vmid": 250, "name": "ct", "node": "pve1", "status": "running", "type": "lxc",
        "config": {"hostname": "ct", "ostype": "nixos", "memory": 512, "swap": 512, "onboot": 1, "unprivileged": 1,
                   "features": "nesting=1", "rootfs": "local-lvm:vm-250-disk-0,size=8G", "tags": "ct",
                   "net0": "name=eth0,bridge=vmbr0,hwaddr=BC:24:11:00:02:50,ip=127.0.0.1/8,type=veth",
                   "description": "End-to-end test container."}
    }}));
    lab.declare_more("hostKey", json!(lab.host.host_public()));
    let path = lab.fixture.dir.path().join("flake.nix");
    let text = std::fs::read_to_string(&path).expect("flake.nix");
    std::fs::write(
        &path,
        text.replace(
            "nixprox.ssh.port = test.port;",
            "nixprox.ssh.port = test.port;\n            nixprox.ssh.hostKey = test.hostKey;",
        ),
    )
    .expect("write flake.nix");

    let plan = lab.plan();
    assert_eq!(cli::kinds(&plan, "ct"), ["adopt", "update_vm", "switch"], "{plan:#}");
    let (run, report) = lab.apply();
    assert_eq!(run.code, 0, "apply failed:\n{}\n{}\n{report:#}", run.stdout, run.stderr);
    assert_eq!(
        CtLab::steps(&report),
        ["adopt", "configure", "pending", "start", "switch", "finish"],
        "{report:#}"
    );
    let metadata = lab.metadata();
    let toplevel = metadata.system.clone().expect("system");
    assert_ne!(toplevel, old);
    assert_eq!(lab.host.current_system().as_deref(), Some(toplevel.as_str()));
    assert!(metadata.adopted.is_some(), "{metadata:?}");
    assert_eq!(lab.config()["memory"], 512);
    assert_eq!(cli::kinds(&lab.plan(), "ct"), ["noop"]);
}

/// The host's own template, built from the flake on the runner: uploaded as `vztmpl` under its
/// store hash, the container created from it with its key pinned from the task log and checked.
#[test]
fn a_container_from_its_own_template_built_from_the_flake() {
    let lab = CtLab::start();
    lab.declare_more("template", Value::Null);
    lab.declare_more("tarball", json!(true));
    let plan = lab.plan();
    assert_eq!(cli::kinds(&plan, "ct"), ["upload_image", "create_vm", "switch"], "{plan:#}");
    let volume =
        change(&cli::actions(&plan, "ct")[0], "template")["after"].as_str().expect("volume").to_string();
    let (run, report) = lab.apply();
    assert_eq!(run.code, 0, "apply failed:\n{}\n{}\n{report:#}", run.stdout, run.stderr);
    assert_eq!(
        CtLab::steps(&report),
        ["template", "create", "start", "host key", "switch", "finish"],
        "{report:#}"
    );
    assert_eq!(lab.config()["ostype"], "nixos", "detected from the uploaded tarball");
    let uploads = |lab: &CtLab| {
        lab.pve
            .requests(false)
            .into_iter()
            .filter(|(m, p)| m == "POST" && p.ends_with("/storage/local/upload"))
            .count()
    };
    assert_eq!(uploads(&lab), 1);
    let file = volume.strip_prefix("local:vztmpl/").expect("volume");
    let listed = lab.pve.command(json!({"cmd": "volumes", "storage": "local"}));
    assert!(listed.get(format!("vztmpl/{file}")).is_some(), "{listed}");
    assert!(lab.metadata().host_key.is_some());
}

/// A template of that store hash already on the storage (an earlier run, another host) is
/// reused: nothing is uploaded.
#[test]
fn a_containers_own_template_on_the_storage_is_reused() {
    let lab = CtLab::start();
    lab.declare_more("template", Value::Null);
    lab.declare_more("tarball", json!(true));
    let plan = lab.plan();
    let volume =
        change(&cli::actions(&plan, "ct")[0], "template")["after"].as_str().expect("volume").to_string();
    let file = volume.strip_prefix("local:vztmpl/").expect("volume");
    lab.pve.command(json!({"cmd": "ct_template", "storage": "local", "name": file,
                           "paths": ["nix/store", "etc/ssh", "sbin/init"]}));
    let (run, report) = lab.apply();
    assert_eq!(run.code, 0, "apply failed:\n{}\n{}\n{report:#}", run.stdout, run.stderr);
    let template = &report["hosts"][0]["steps"][0];
    assert_eq!(
        (template["step"].as_str(), template["status"].as_str()),
        (Some("template"), Some("already_done")),
        "{report:#}"
    );
    let uploads = lab
        .pve
        .requests(false)
        .into_iter()
        .filter(|(m, p)| m == "POST" && p.ends_with("/storage/local/upload"))
        .count();
    assert_eq!(uploads, 0);
}

/// What cannot change in place (`unprivileged` is read-only in Proxmox) replaces the container
/// with `policies.allow_replace`: destroyed, created anew from its template, its new key pinned
/// from the new create task's log, switched.
#[test]
fn a_container_is_replaced_when_unprivileged_changes() {
    let lab = CtLab::start();
    lab.plan();
    let (run, report) = lab.apply();
    assert_eq!(run.code, 0, "apply failed:\n{}\n{}\n{report:#}", run.stdout, run.stderr);
    lab.declare_more("privileged", json!(true));
    let settings = lab.fixture.dir.path().join("nixprox.yaml");
    let text = std::fs::read_to_string(&settings).expect("nixprox.yaml");
    std::fs::write(&settings, format!("{text}policies:\n  allow_replace: true\n")).expect("write");
    let plan = lab.plan();
    assert_eq!(cli::kinds(&plan, "ct"), ["replace_vm", "switch"], "{plan:#}");
    let (run, report) = lab.apply();
    assert_eq!(run.code, 0, "apply failed:\n{}\n{}\n{report:#}", run.stdout, run.stderr);
    assert_eq!(
        CtLab::steps(&report),
        ["destroy", "create", "start", "host key", "switch", "finish"],
        "{report:#}"
    );
    let config = lab.config();
    assert!(config.get("unprivileged").is_none_or(|u| u == 0), "{config}");
    assert!(lab.metadata().host_key.is_some());
    assert_eq!(cli::kinds(&lab.plan(), "ct"), ["noop"]);
}
