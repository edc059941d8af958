//! `nixprox gc-images`: the `nixprox-*` image files on the image storages that no host of the
//! flake refers to any more, listed on stdout and removed only with `--delete`; and the same
//! removal as the optional last step of `apply` (`apply.gc_images`).

use std::time::Duration;

use anyhow::{Context, bail};

use crate::cli::GcImagesArgs;
use crate::config::Settings;
use crate::flake::DesiredHost;
use crate::image::gc::{Garbage, find_garbage, remove};
use crate::proxmox::Client;

use super::{Outcome, source};

/// How long one `imgdel` task may take.
const DELETE_TIMEOUT: Duration = Duration::from_secs(300);

pub async fn run(args: GcImagesArgs) -> anyhow::Result<Outcome> {
    let source = source::Source::from_args(&args.source)?;
    let settings = source::load_settings(&source)?;
    let client = source::proxmox_client(&settings)?;
    let evaluated = source::evaluate(&source, &settings).await?;
    let garbage = find(&client, &settings, &evaluated.desired).await?;
    if garbage.is_empty() {
        println!("No unreferenced nixprox image files.");
        return Ok(Outcome::Success);
    }
    let verb = if args.delete { "Removing" } else { "Would remove (pass --delete to remove)" };
    println!("{verb} {} image file(s) no host of the flake refers to:", garbage.len());
    for item in &garbage {
        println!("  {}", line(item));
    }
    if !args.delete {
        return Ok(if args.detailed_exitcode { Outcome::Changes } else { Outcome::Success });
    }
    let failed = delete_all(&client, &garbage).await;
    if failed > 0 {
        bail!("{failed} of {} image file(s) could not be removed (see above)", garbage.len());
    }
    println!("Removed {} image file(s).", garbage.len());
    Ok(Outcome::Success)
}

/// `apply.gc_images`: after apply, removes what `gc-images --delete` would; failures are
/// warnings (the images are only disk space, and the run's hosts are done).
pub async fn after_apply(client: &Client, settings: &Settings, desired: &[DesiredHost]) {
    let garbage = match find(client, settings, desired).await {
        Ok(garbage) => garbage,
        Err(err) => {
            tracing::warn!("could not look for unreferenced image files (apply.gc_images): {err:#}");
            return;
        }
    };
    for item in &garbage {
        tracing::info!("removing {} (apply.gc_images)", line(item));
    }
    let failed = delete_all(client, &garbage).await;
    if failed > 0 {
        tracing::warn!("{failed} unreferenced image file(s) could not be removed (apply.gc_images)");
    }
}

/// For the plan: the files `gc-images` would list, as its lines, when the flake has image hosts
/// or an image storage (an error is only logged: the plan does not depend on it).
pub(super) async fn unreferenced(
    client: &Client,
    settings: &Settings,
    desired: &[DesiredHost],
) -> Vec<String> {
    let images = desired.iter().any(|d| {
        matches!(d.bootstrap, crate::flake::host::Bootstrap::Image(_))
            || d.container.as_ref().is_some_and(|c| c.tarball.is_some())
    });
    if !images && settings.defaults.image_storage.is_none() {
        return Vec::new();
    }
    match find(client, settings, desired).await {
        Ok(garbage) => garbage.iter().map(line).collect(),
        Err(err) => {
            tracing::warn!("could not look for unreferenced image files: {err:#}");
            Vec::new()
        }
    }
}

async fn find(client: &Client, settings: &Settings, desired: &[DesiredHost]) -> anyhow::Result<Vec<Garbage>> {
    let defaults = &settings.defaults;
    let extra = defaults.node.clone().zip(defaults.image_storage.clone());
    find_garbage(client, desired, extra).await.context("failed to list the image storages")
}

/// Removes each file; returns how many failed (each one logged).
async fn delete_all(client: &Client, garbage: &[Garbage]) -> usize {
    let mut failed = 0;
    for item in garbage {
        if let Err(err) = remove(client, item, DELETE_TIMEOUT).await {
            tracing::error!("failed to remove `{}`: {err}", item.file.volid);
            failed += 1;
        }
    }
    failed
}

/// `images:import/nixprox-….qcow2 (node pve1, 1.2 MiB)`.
fn line(item: &Garbage) -> String {
    format!("{} (node {}, {})", item.file.volid, item.node, indicatif::HumanBytes(item.file.size))
}
