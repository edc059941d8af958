//! Containers (Proxmox LXC) through the one planner: the declaration evaluated by real nix
//! (`fixtures/containers`), the cluster read from fakepve (which keeps containers the way
//! pve-container does), and the plan through the binary.

use nixprox::config::Settings;
use nixprox::flake::{evaluate, resolve_all};
use nixprox::spec::GuestKind;

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
