//! The seam between the apply executor and whatever puts NixOS on a VM: the executor finds the
//! VM, its address and its recorded metadata through Proxmox, and hands all of it to a
//! [`NixosDeployer`] (in nixprox, `install::SshDeployer`), which needs no Proxmox client.
//! Both sides depend on this module, neither on the other.

use std::fmt;

use futures::future::BoxFuture;

use crate::flake::DesiredHost;
use crate::metadata::Metadata;

/// The VM a deploy step acts on, and what the cluster says about it.
#[derive(Debug, Clone, Copy)]
pub struct DeployTarget<'a> {
    pub host: &'a DesiredHost,
    pub node: &'a str,
    pub vmid: u32,
    /// Where SSH reaches the host (static, or from the guest agent).
    pub address: &'a str,
    /// The reviewed plan id (the deployer may record it; apply clears `applying` afterwards).
    pub plan_id: &'a str,
    /// The metadata block of the VM's notes, read just before this step (`None`: no readable
    /// block). Its `host_key` is the key a switch must find the host presenting.
    pub recorded: Option<&'a Metadata>,
}

/// What an install or switch leaves to record in the metadata block. The executor merges
/// the fields that are set into the block (with the git revision) and clears `applying`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deployed {
    /// Store path of the system now active.
    pub system: Option<String>,
    /// Disk layout hash the disks were partitioned with (install only).
    pub disk_layout: Option<String>,
    /// The host key now pinned (install only).
    pub host_key: Option<String>,
    /// RFC 3339 time of the install or switch.
    pub time: Option<String>,
    /// What differs between the system the host booted (`/run/booted-system`) and the one a
    /// switch made active (`kernel`, `initrd`, `kernel-modules`, `kernel-params`): only a
    /// reboot brings it into effect. Empty when nothing differs or it cannot be told.
    pub reboot_needed: Vec<String>,
}

/// Installing and switching NixOS: the SSH / nixos-anywhere side.
/// `reinstall` actions call [`NixosDeployer::install`] (nixos-anywhere wipes the disks).
pub trait NixosDeployer: Send + Sync + fmt::Debug {
    fn install<'a>(&'a self, target: DeployTarget<'a>) -> BoxFuture<'a, anyhow::Result<Deployed>>;
    fn switch<'a>(&'a self, target: DeployTarget<'a>) -> BoxFuture<'a, anyhow::Result<Deployed>>;
    /// The store path of the system a VM to adopt runs (`/run/current-system`), read from the
    /// machine at `target.address` only once it presents `host_key`. Fails, having sent
    /// nothing, when it presents another key; fails when it does not run NixOS.
    fn read_system<'a>(
        &'a self,
        target: DeployTarget<'a>,
        host_key: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<String>>;

    /// Checks that the machine at `target.address` presents `host_key`, without logging in
    /// (a VM to convert: nothing is offered to a machine that is not the pinned one). Fails
    /// naming the key it presented instead.
    fn verify_host_key<'a>(
        &'a self,
        target: DeployTarget<'a>,
        host_key: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<()>>;

    /// A VM that booted from the host's image (nothing installed it): connect with the host
    /// key pinned in `target.recorded` (read through the guest agent, never from the network),
    /// check that it runs the host's toplevel, and switch to it when the image held another
    /// system (a generic image several hosts share). Reports what to record as an install does.
    fn verify_image_boot<'a>(&'a self, target: DeployTarget<'a>) -> BoxFuture<'a, anyhow::Result<Deployed>>;

    /// After the executor rebooted the VM for [`Deployed::reboot_needed`]: waits until the host
    /// answers with its pinned key, runs `system` and booted it; fails when it does not within
    /// the SSH connect timeout.
    fn check_rebooted<'a>(
        &'a self,
        target: DeployTarget<'a>,
        system: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<()>>;

    /// A new container's first connection: connects to `target.address` only when it presents
    /// a key with one of `fingerprints` (what Proxmox printed in the create task's log), and
    /// returns that whole key (`ssh-ed25519 AAAA…`) for the metadata block.
    fn pin_fingerprints<'a>(
        &'a self,
        target: DeployTarget<'a>,
        fingerprints: &'a [String],
    ) -> BoxFuture<'a, anyhow::Result<String>> {
        let _ = fingerprints;
        Box::pin(async move {
            anyhow::bail!("this deployer cannot pin the host key of `{}` by fingerprint", target.host.host)
        })
    }
}
