//! Garbage on the image storages: `nixprox-*` import files that no image host of the flake
//! refers to any more (an older image of a host, a removed host), and `nixprox-<hash>.tar.xz`
//! container templates (`vztmpl`) no container host's own template is any more. Once a VM or
//! container exists its disks are copies, so nothing needs the file it was created from.
//!
//! Only names nixprox makes are ever considered ([`super::parse_import_file_name`]): the
//! user's own imports are never touched. The storages looked at are those of the flake's image
//! hosts, plus `defaults.image_storage` on `defaults.node` (where files of removed hosts are
//! most likely); a shared storage is listed once.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::flake::DesiredHost;
use crate::flake::host::Bootstrap;
use crate::proxmox::import::{
    ImportError, ImportFile, delete_import_file, list_content_files, list_import_files, storage_status,
};
use crate::proxmox::{Client, ProxmoxError};

use super::name::{parse_import_file_name, parse_template_file_name, store_hash};

/// One file nothing refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Garbage {
    /// The node it was listed (and is deleted) through.
    pub node: String,
    pub storage: String,
    pub file: ImportFile,
}

/// The `(node, storage)` pairs to look at: every image host's, and `extra` (the settings'
/// default image storage on the default node).
pub fn storages(desired: &[DesiredHost], extra: Option<(String, String)>) -> BTreeSet<(String, String)> {
    desired
        .iter()
        .filter_map(|host| match &host.bootstrap {
            Bootstrap::Image(source) => Some((host.node.clone(), source.storage.clone())),
            _ => None,
        })
        .chain(desired.iter().filter_map(|host| {
            let build = host.container.as_ref()?.tarball.as_ref()?;
            Some((host.node.clone(), build.storage.clone()))
        }))
        .chain(extra)
        .collect()
}

/// The store hashes of every image package the flake's hosts refer to.
pub fn referenced(desired: &[DesiredHost]) -> BTreeSet<String> {
    desired
        .iter()
        .flat_map(|host| host.system.image.iter().chain(host.system.tarball.iter()))
        .filter_map(|image| store_hash(&image.out_path).ok().map(str::to_string))
        .collect()
}

/// Lists the storages and returns the `nixprox-*` files no host refers to, sorted by storage
/// and name. A storage that cannot hold images (no `import` content, disabled, absent) holds
/// none of nixprox's and is skipped; a failed request is an error.
pub async fn find_garbage(
    client: &Client,
    desired: &[DesiredHost],
    extra: Option<(String, String)>,
) -> Result<Vec<Garbage>, ProxmoxError> {
    let referenced = referenced(desired);
    let mut shared_seen = BTreeSet::new();
    let mut garbage = Vec::new();
    for (node, storage) in storages(desired, extra) {
        // A storage shared between nodes (NFS, CephFS) holds one set of files whatever node
        // lists it: listed once, so `--delete` removes each file once.
        let status = match storage_status(client, &node, &storage).await {
            Ok(status) => status,
            Err(ImportError::Api(err)) => return Err(*err),
            Err(other) => {
                tracing::info!("not looking for old images on storage `{storage}` (node `{node}`): {other}");
                continue;
            }
        };
        if status.shared && !shared_seen.insert(storage.clone()) {
            continue;
        }
        // Container templates (`vztmpl`), whatever else the storage holds; a storage that
        // cannot be listed for them holds none of nixprox's.
        match list_content_files(client, &node, &storage, "vztmpl").await {
            Ok(files) => garbage.extend(
                files
                    .into_iter()
                    .filter(|f| parse_template_file_name(&f.name).is_some_and(|h| !referenced.contains(h)))
                    .map(|file| Garbage { node: node.clone(), storage: storage.clone(), file }),
            ),
            Err(err) if err.is_missing() => {}
            Err(err) => {
                tracing::info!(
                    "not looking for old container templates on storage `{storage}` (node `{node}`): {err}"
                );
            }
        }
        if let Err(other) = status.check_import() {
            tracing::info!("not looking for old images on storage `{storage}` (node `{node}`): {other}");
            continue;
        }
        for file in list_import_files(client, &node, &storage).await? {
            let unreferenced =
                parse_import_file_name(&file.name).is_some_and(|n| !referenced.contains(&n.hash));
            if unreferenced {
                garbage.push(Garbage { node: node.clone(), storage: storage.clone(), file });
            }
        }
    }
    garbage.sort_by(|a, b| (&a.storage, &a.file.name, &a.node).cmp(&(&b.storage, &b.file.name, &b.node)));
    Ok(garbage)
}

/// Deletes one file and waits for Proxmox's `imgdel` task (`Datastore.Allocate` on the storage).
pub async fn remove(client: &Client, garbage: &Garbage, timeout: Duration) -> Result<(), ProxmoxError> {
    delete_import_file(client, &garbage.node, &garbage.file.volid, timeout).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flake::host::{ImageEval, ImageSource};
    use crate::spec::ImageFormat;

    #[test]
    fn storages_and_references_come_from_image_hosts() {
        let base = crate::plan::testkit::host("web");
        let mut web = base.clone();
        let package = "/nix/store/0c8yzlgy9xbfn6sjcx6rh6fzqfvc3ai2-web-images";
        let image = ImageEval { out_path: package.into(), drv_path: None, image_sizes: Default::default() };
        web.system.image = Some(image.clone());
        web.bootstrap = Bootstrap::Image(ImageSource {
            package: image,
            format: ImageFormat::Qcow2,
            storage: "images".into(),
        });
        let plain = crate::plan::testkit::host("plain");
        let desired = [web, plain];
        assert_eq!(
            storages(&desired, Some(("pve2".into(), "nas".into()))),
            BTreeSet::from([("pve1".into(), "images".into()), ("pve2".into(), "nas".into())])
        );
        assert_eq!(referenced(&desired), BTreeSet::from(["0c8yzlgy9xbfn6sjcx6rh6fzqfvc3ai2".to_string()]));
    }
}
