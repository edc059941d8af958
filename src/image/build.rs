//! Building a host's image package with the real `nix` and finding the image of each disk in it.
//!
//! The package is built from the flake attribute the plan evaluated
//! (`nixosConfigurations.<host>.config.nixprox.bootstrap.image.package`) and its out path is
//! checked against the planned one, so apply uploads exactly the image the plan named. The
//! command comes from the one nix command builder ([`crate::flake::NixCommand`]), with the
//! purity options of every other build.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::flake::{BuildError, Nix, NixCommand, OverrideInput, exit_reason};
use crate::spec::DiskSpec;

use super::probe::{ImageInfo, probe};
use super::{ImageError, ImageFormat, name};

/// Lines of nix's stderr a build error carries.
const TAIL_LINES: usize = 20;

/// `nix build --json --no-link <flake>#nixosConfigurations."<host>".config.nixprox.bootstrap.image.package`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageBuild {
    pub nix: Nix,
    pub flake: String,
    /// Attribute name under `nixosConfigurations`.
    pub host: String,
    /// `--override-input` pairs, as given to nixprox, so the build is the package it evaluated.
    pub override_inputs: Vec<OverrideInput>,
    /// `--option <name> <value>` pairs.
    pub options: Vec<(String, String)>,
    /// The package's attribute path under the host's `config`: an image host's
    /// `nixprox.bootstrap.image.package`, or a container's own template
    /// (`nixprox.container.tarball.package`, [`ImageBuild::for_template`]).
    pub attribute: &'static str,
}

/// Where an image host's package is, under `config`.
const IMAGE_PACKAGE: &str = "nixprox.bootstrap.image.package";

impl ImageBuild {
    pub fn new(nix: Nix, flake: impl Into<String>, host: impl Into<String>) -> ImageBuild {
        ImageBuild {
            nix,
            flake: flake.into(),
            host: host.into(),
            override_inputs: Vec::new(),
            options: Vec::new(),
            attribute: IMAGE_PACKAGE,
        }
    }

    /// The same build for a container host's own template (`nixprox.container.tarball.package`).
    pub fn for_template(&self, host: &str) -> ImageBuild {
        ImageBuild { host: host.to_string(), attribute: "nixprox.container.tarball.package", ..self.clone() }
    }

    /// The same build (flake, inputs, options) for another host: apply holds one template
    /// and builds each image host's package from it.
    pub fn for_host(&self, host: &str) -> ImageBuild {
        ImageBuild { host: host.to_string(), ..self.clone() }
    }

    pub fn installable(&self) -> String {
        format!("{}#nixosConfigurations.\"{}\".config.{}", self.flake, self.host, self.attribute)
    }

    /// The `nix build` through the one command builder, with the same purity options as every
    /// other build (no import-from-derivation, no lock file written).
    pub fn command(&self) -> NixCommand {
        let command = self.nix.build(self.installable()).override_inputs(&self.override_inputs);
        self.options.iter().fold(command, |command, (name, value)| command.option(name, value))
    }

    /// The whole command line, program first.
    pub fn argv(&self) -> Vec<String> {
        self.command().argv()
    }
}

/// Builds the package and checks it is the one the plan evaluated (`planned_out`); returns its
/// out path. nix is killed after `timeout`.
pub async fn build_image(
    build: &ImageBuild,
    planned_out: &str,
    timeout: Duration,
) -> Result<String, ImageError> {
    let command = build.command();
    tracing::info!(host = %build.host, "building the image: {}", command.argv().join(" "));
    let built = command.run_build(timeout).await.map_err(|err| {
        let message = match err {
            BuildError::TimedOut { timeout } => {
                format!("`nix build` did not finish within {}s", timeout.as_secs())
            }
            BuildError::Failed { code, stderr } => build_failure(&stderr, code),
            other => other.to_string(),
        };
        ImageError::Build { host: build.host.clone(), message }
    })?;
    if built != planned_out {
        return Err(ImageError::OutPathChanged {
            host: build.host.clone(),
            planned: planned_out.to_string(),
            built,
        });
    }
    Ok(built)
}

/// nix's exit and the end of its log, with the fix when the builder lacks KVM: disko's image
/// builder boots a VM, and nix refuses the build on a machine without the `kvm` feature
/// ("a 'x86_64-linux' with features {kvm} is required to build …").
fn build_failure(stderr: &str, code: Option<i32>) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
    let code = exit_reason(code);
    let needs_kvm = stderr.contains("is required to build") && stderr.contains("kvm");
    let hint = if needs_kvm {
        " (building the image needs KVM: run apply on a machine with /dev/kvm and `system-features = kvm` in nix.conf, or give nix a remote builder that has them)"
    } else {
        ""
    };
    format!("`nix build` failed with {code}{hint}; last lines of its output:\n{tail}")
}

/// The images of one built package, by disk slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImages {
    /// The package's out path.
    pub out: String,
    pub images: BTreeMap<String, ImageFile>,
}

/// The image of one disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFile {
    pub path: PathBuf,
    /// Its name on the Proxmox storage ([`name::import_file_name`]).
    pub import_name: String,
    pub info: ImageInfo,
}

/// Finds the image of every declared disk in `out`: `<slot>.<format>`, or the only image when
/// exactly one disk is declared and the package holds exactly one image (disko names it after
/// its disk, e.g. `main.qcow2`). Every image must belong to a disk and fit into it.
pub fn find_images(
    host: &str,
    out: &str,
    disks: &BTreeMap<String, DiskSpec>,
    format: ImageFormat,
) -> Result<BuiltImages, ImageError> {
    let found = image_files(host, Path::new(out), format)?;
    let mut by_slot = BTreeMap::new();
    if let ([(slot, _)], [single]) = (disks.iter().collect::<Vec<_>>().as_slice(), found.as_slice()) {
        by_slot.insert(slot.to_string(), single.clone());
    } else {
        for slot in disks.keys() {
            let file = format!("{slot}.{format}");
            if !found.contains(&file) {
                return Err(ImageError::MissingDisk {
                    host: host.to_string(),
                    slot: slot.clone(),
                    format,
                    out: out.to_string(),
                    found,
                });
            }
            by_slot.insert(slot.clone(), file);
        }
        if let Some(extra) = found.iter().find(|f| !by_slot.values().any(|used| used == *f)) {
            return Err(ImageError::UnmatchedImage { host: host.to_string(), file: extra.clone() });
        }
    }
    let not_a_store_path = |err: name::NotAStorePath| ImageError::Build {
        host: host.to_string(),
        message: format!("{err} (nix returned it as the image package)"),
    };
    let mut images = BTreeMap::new();
    for (slot, file) in by_slot {
        let path = Path::new(out).join(&file);
        let info = probe(host, &path, format)?;
        let disk_bytes = disks[&slot].size_bytes;
        if info.virtual_size > disk_bytes {
            return Err(ImageError::LargerThanDisk {
                host: host.to_string(),
                slot,
                image_bytes: info.virtual_size,
                disk_bytes,
            });
        }
        let import_name = name::import_file_name(out, &slot, format).map_err(not_a_store_path)?;
        images.insert(slot, ImageFile { path, import_name, info });
    }
    Ok(BuiltImages { out: out.to_string(), images })
}

/// Names of the files in `dir` with the format's extension, sorted (symlinks followed).
fn image_files(host: &str, dir: &Path, format: ImageFormat) -> Result<Vec<String>, ImageError> {
    let read_error =
        |source| ImageError::Read { host: host.to_string(), path: dir.display().to_string(), source };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_error)? {
        let entry = entry.map_err(read_error)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_file = std::fs::metadata(entry.path()).map(|m| m.is_file()).unwrap_or(false);
        if is_file && name.rsplit_once('.').is_some_and(|(_, ext)| ext == format.extension()) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(size_bytes: u64) -> DiskSpec {
        DiskSpec {
            storage: "local-lvm".into(),
            size_bytes,
            serial: None,
            discard: false,
            ssd: false,
            iothread: false,
        }
    }

    #[test]
    fn argv_builds_the_planned_attribute() {
        let mut build = ImageBuild::new(Nix::default(), "path:/src/lab", "web");
        build.options.push(("sandbox".into(), "false".into()));
        build.override_inputs.push(OverrideInput::new("nixpkgs-lib", "path:/lib"));
        assert_eq!(
            build.argv().join(" "),
            "nix --extra-experimental-features nix-command flakes --option allow-import-from-derivation false --option sandbox false build --json --no-link path:/src/lab#nixosConfigurations.\"web\".config.nixprox.bootstrap.image.package --override-input nixpkgs-lib path:/lib --no-write-lock-file"
        );
    }

    #[test]
    fn a_missing_kvm_feature_says_how_to_get_one() {
        let stderr = "error: a 'x86_64-linux' with features {kvm} is required to build '/nix/store/x-web-disko-images.drv', but I am a 'x86_64-linux' with features {benchmark, big-parallel}\n";
        let message = build_failure(stderr, Some(1));
        assert!(
            message.starts_with("`nix build` failed with exit code 1 (building the image needs KVM:"),
            "{message}"
        );
        assert!(message.ends_with("with features {benchmark, big-parallel}"), "{message}");
        assert!(!build_failure("error: attribute 'package' missing\n", Some(1)).contains("KVM"));
    }

    /// A package directory with raw images of the given names and sizes, under a fake store path.
    fn package(files: &[(&str, usize)]) -> (tempfile::TempDir, String) {
        let root = tempfile::tempdir().expect("tempdir");
        let out = root.path().join("0c8yzlgy9xbfn6sjcx6rh6fzqfvc3ai2-web-images");
        std::fs::create_dir(&out).expect("mkdir");
        for (name, size) in files {
            std::fs::write(out.join(name), vec![0u8; *size]).expect("write image");
        }
        let out = out.display().to_string();
        (root, out)
    }

    #[test]
    fn images_are_found_by_slot() {
        let (_root, out) = package(&[("scsi0.raw", 4096), ("scsi1.raw", 8192), ("notes.txt", 3)]);
        let disks =
            BTreeMap::from([("scsi0".to_string(), disk(1 << 20)), ("scsi1".to_string(), disk(1 << 20))]);
        let built = find_images("web", &out, &disks, ImageFormat::Raw).expect("both found");
        assert_eq!(built.images["scsi1"].info.virtual_size, 8192);
        assert_eq!(built.images["scsi0"].import_name, "nixprox-0c8yzlgy9xbfn6sjcx6rh6fzqfvc3ai2-scsi0.raw");
        assert!(built.images["scsi0"].path.ends_with("scsi0.raw"));

        let three: BTreeMap<String, DiskSpec> =
            disks.clone().into_iter().chain([("scsi2".to_string(), disk(1 << 20))]).collect();
        assert!(matches!(
            find_images("web", &out, &three, ImageFormat::Raw),
            Err(ImageError::MissingDisk { slot, found, .. }) if slot == "scsi2" && found == ["scsi0.raw", "scsi1.raw"]
        ));
        let one = BTreeMap::from([("scsi0".to_string(), disk(1 << 20))]);
        assert!(matches!(
            find_images("web", &out, &one, ImageFormat::Raw),
            Err(ImageError::UnmatchedImage { file, .. }) if file == "scsi1.raw"
        ));
    }

    #[test]
    fn a_single_image_serves_a_single_disk_whatever_its_name() {
        let (_root, out) = package(&[("main.raw", 4096)]);
        let disks = BTreeMap::from([("virtio0".to_string(), disk(1 << 20))]);
        let built = find_images("web", &out, &disks, ImageFormat::Raw).expect("single image");
        assert!(built.images["virtio0"].path.ends_with("main.raw"));
        assert_eq!(
            built.images["virtio0"].import_name,
            "nixprox-0c8yzlgy9xbfn6sjcx6rh6fzqfvc3ai2-virtio0.raw"
        );
        assert!(matches!(
            find_images("web", &out, &disks, ImageFormat::Qcow2),
            Err(ImageError::MissingDisk { found, .. }) if found.is_empty()
        ));
    }

    #[test]
    fn an_image_larger_than_its_disk_is_refused() {
        let (_root, out) = package(&[("scsi0.raw", 8192)]);
        let disks = BTreeMap::from([("scsi0".to_string(), disk(4096))]);
        assert!(matches!(
            find_images("web", &out, &disks, ImageFormat::Raw),
            Err(ImageError::LargerThanDisk { image_bytes: 8192, disk_bytes: 4096, .. })
        ));
    }
}
