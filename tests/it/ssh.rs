//! The russh client against a real OpenSSH sshd on loopback: pinned keys, timeouts, probe.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nixprox::ssh::{
    ClientKey, ConnectOptions, HostKeyPolicy, Retry, Session, SshError, SshTarget, generate_host_key,
    probe_system, probe_systems,
};

use crate::support::sshd::{TestHost, systems};

fn target(host: &TestHost) -> SshTarget {
    SshTarget { host: "web".into(), address: host.address.clone(), port: host.port, user: "root".into() }
}

fn key(host: &TestHost) -> Arc<russh::keys::PrivateKey> {
    ClientKey::File(host.client_key.clone()).materialize().expect("key").load().expect("load")
}

#[tokio::test]
async fn pinned_key_connects_and_runs_a_command() {
    let host = TestHost::start();
    let policy = HostKeyPolicy::pinned(&host.host_public()).expect("pin");
    let session = Session::connect(&target(&host), &key(&host), &policy, &ConnectOptions::default())
        .await
        .expect("connect");
    let out = session.exec("echo hello; echo oops >&2; exit 3", Duration::from_secs(10)).await.expect("exec");
    assert_eq!((out.exit_status, out.stdout.as_str(), out.stderr.as_str()), (Some(3), "hello\n", "oops\n"));
    session.close().await;
}

#[tokio::test]
async fn wrong_host_key_is_refused() {
    let host = TestHost::start();
    let other = generate_host_key("attacker").expect("key");
    let policy = HostKeyPolicy::pinned(&other.public).expect("pin");
    let err = Session::connect(&target(&host), &key(&host), &policy, &ConnectOptions::default())
        .await
        .expect_err("must refuse");
    let SshError::HostKeyMismatch { expected, got, .. } = &err else { panic!("{err}") };
    assert_eq!(expected, &HostKeyPolicy::pinned(&other.public).expect("pin").lines()[0]);
    assert_eq!(got, &HostKeyPolicy::pinned(&host.host_public()).expect("pin").lines()[0]);
    assert!(err.to_string().contains("possible man-in-the-middle"), "{err}");
}

#[tokio::test]
async fn ssh_that_never_comes_up_times_out_clearly() {
    let host = TestHost::start();
    host.stop_sshd();
    let policy = HostKeyPolicy::pinned(&host.host_public()).expect("pin");
    let options = ConnectOptions {
        attempt_timeout: Duration::from_secs(1),
        bound: Duration::from_secs(2),
        retry: Retry::Network,
    };
    let started = Instant::now();
    let err = Session::connect(&target(&host), &key(&host), &policy, &options).await.expect_err("down");
    assert!(started.elapsed() < Duration::from_secs(6), "{:?}", started.elapsed());
    assert!(matches!(err, SshError::Timeout { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("ssh to `web` ({}:{}) did not answer within", host.address, host.port)),
        "{text}"
    );
    assert!(text.contains("(is the VM running"), "{text}");
}

#[tokio::test]
async fn wrong_client_key_is_an_auth_error() {
    let host = TestHost::start();
    let stranger = generate_host_key("stranger").expect("key");
    let file = nixprox::ssh::KeyFile::from_text(&stranger.private_openssh).expect("file");
    let policy = HostKeyPolicy::pinned(&host.host_public()).expect("pin");
    let err =
        Session::connect(&target(&host), &file.load().expect("load"), &policy, &ConnectOptions::default())
            .await
            .expect_err("refused");
    assert!(matches!(err, SshError::Auth { .. }), "{err}");
}

#[tokio::test]
async fn probe_finds_a_system_changed_by_hand() {
    let host = TestHost::start();
    let recorded = systems::build("nixos-system-probe-a", &host.client_public, 0);
    let by_hand = systems::build("nixos-system-probe-b", &host.client_public, 0);
    let policy = HostKeyPolicy::pinned(&host.host_public()).expect("pin");
    // The recorded system is running; then someone switches by hand on the host.
    std::os::unix::fs::symlink(&recorded, host.root().join("run/current-system")).expect("link");
    let k = key(&host);
    let seen = probe_system(&target(&host), &k, &policy, Duration::from_secs(10)).await.expect("probe");
    assert_eq!(seen, recorded);
    std::fs::remove_file(host.root().join("run/current-system")).expect("unlink");
    std::os::unix::fs::symlink(&by_hand, host.root().join("run/current-system")).expect("link");
    let unreachable =
        SshTarget { host: "gone".into(), address: host.address.clone(), port: 1, user: "root".into() };
    let results = probe_systems(
        vec![(target(&host), policy.clone()), (unreachable, policy)],
        &k,
        Duration::from_secs(2),
        4,
    )
    .await;
    assert_eq!(results[0].host, "web");
    assert_eq!(results[0].system.as_deref().expect("reachable"), by_hand.as_str());
    assert_ne!(by_hand, recorded);
    assert!(matches!(results[1].system, Err(SshError::Timeout { .. })), "{:?}", results[1]);
}
