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
            ("dns", GuestKind::Container),
            ("legacy", GuestKind::Container),
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

#[test]
fn apply_refuses_containers_before_any_change() {
    let (fixture, pve) = containers();
    pve.requests(true);
    let run = cli::plan_and_apply(&fixture, &pve, "proxy,app");
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("the container host with changes is `proxy`: this nixprox plans containers but does not apply them yet, so nothing was applied (apply the other hosts with `--hosts`, or leave the containers' changes out of this pull request)"),
        "{}",
        run.stderr
    );
    let writes: Vec<(String, String)> = pve.requests(false).into_iter().filter(|(m, _)| m != "GET").collect();
    assert!(writes.is_empty(), "nothing written: {writes:?}");
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
