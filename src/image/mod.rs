//! Disk images a host boots from (the image bootstrap): their format, their file names on a
//! Proxmox storage ([`name`]), building them with `nix` and finding one file per disk
//! ([`build`]), what their headers say ([`probe`]), and which files on the storages no host
//! refers to any more ([`gc`]).
//!
//! Nothing here talks to Proxmox: uploading and importing live in [`crate::proxmox::upload`]
//! and [`crate::proxmox::import`].

pub mod build;
pub mod gc;
pub mod name;
pub mod probe;

/// The format lives in `spec` (flake declarations and images both speak it).
pub use crate::spec::ImageFormat;
pub use build::{BuiltImages, ImageBuild, ImageFile, build_image, find_images};
pub use name::{ImportName, import_file_name, parse_import_file_name, store_hash, template_file_name};
pub use probe::{ImageInfo, probe};

/// Everything that can go wrong with a host's images before they reach Proxmox. Messages name
/// the host, the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("failed to build the image of host `{host}`: {message}")]
    Build { host: String, message: String },
    #[error(
        "the image of host `{host}` was built as `{built}`, but the plan evaluated `{planned}` (the flake changed since the plan: run `nixprox plan` again)"
    )]
    OutPathChanged { host: String, planned: String, built: String },
    #[error("failed to read image `{path}` of host `{host}`: {source}")]
    Read { host: String, path: String, source: std::io::Error },
    #[error(
        "no image for disk `{slot}` of host `{host}` in `{out}` (found: {}; name the image `{slot}.{format}`, e.g. with disko's `imageName = \"{slot}\"`)",
        list(found)
    )]
    MissingDisk { host: String, slot: String, format: ImageFormat, out: String, found: Vec<String> },
    #[error(
        "image `{file}` of host `{host}` belongs to no declared disk (declare it in `nixprox.vm.disks` or leave it out of `nixprox.bootstrap.image.package`)"
    )]
    UnmatchedImage { host: String, file: String },
    #[error(
        "image `{path}` of host `{host}` is not a {format} image: {reason} (check `nixprox.bootstrap.image.format`)"
    )]
    WrongFormat { host: String, path: String, format: ImageFormat, reason: String },
    #[error(
        "image `{path}` of host `{host}` has a backing file, which Proxmox refuses for uploads (build a self-contained image, e.g. `qemu-img convert -O qcow2`)"
    )]
    BackingFile { host: String, path: String },
    #[error(
        "image of disk `{slot}` of host `{host}` is {} but the disk is declared as {} (raise `nixprox.vm.disks.{slot}.size` or shrink the image)",
        crate::spec::format_size(*image_bytes),
        crate::spec::format_size(*disk_bytes)
    )]
    LargerThanDisk { host: String, slot: String, image_bytes: u64, disk_bytes: u64 },
}

fn list(found: &[String]) -> String {
    if found.is_empty() {
        "no image files".to_string()
    } else {
        found.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_round_trip_their_extension() {
        for format in [ImageFormat::Qcow2, ImageFormat::Raw] {
            assert_eq!(ImageFormat::from_extension(format.extension()), Some(format));
            assert_eq!(serde_json::to_value(format).expect("serialise"), format.extension());
        }
        assert_eq!(ImageFormat::from_extension("vmdk"), None);
        assert_eq!(ImageFormat::default(), ImageFormat::Qcow2);
    }

    #[test]
    fn messages_name_host_disk_and_fix() {
        let err = ImageError::MissingDisk {
            host: "web".into(),
            slot: "scsi1".into(),
            format: ImageFormat::Qcow2,
            out: "/nix/store/x-images".into(),
            found: vec!["scsi0.qcow2".into()],
        };
        assert_eq!(
            err.to_string(),
            "no image for disk `scsi1` of host `web` in `/nix/store/x-images` (found: `scsi0.qcow2`; name the image `scsi1.qcow2`, e.g. with disko's `imageName = \"scsi1\"`)"
        );
        let err = ImageError::LargerThanDisk {
            host: "web".into(),
            slot: "scsi0".into(),
            image_bytes: 32 << 30,
            disk_bytes: 20 << 30,
        };
        assert_eq!(
            err.to_string(),
            "image of disk `scsi0` of host `web` is 32G but the disk is declared as 20G (raise `nixprox.vm.disks.scsi0.size` or shrink the image)"
        );
    }
}
