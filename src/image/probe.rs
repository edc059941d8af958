//! What an image file says about itself: its virtual size (the disk the VM gets; Proxmox sizes
//! an imported disk by it) and whether Proxmox would refuse it.
//!
//! Proxmox checks uploaded images as untrusted (pve-storage `PVE::Storage::Plugin::file_size_info`
//! with `$untrusted`): a qcow2 with a backing file or an external data file is refused after
//! the whole upload. Reading the header first turns that into an error before any byte is sent.
//! The qcow2 header layout is QEMU's `docs/interop/qcow2.txt`.

use std::io::Read;
use std::path::Path;

use super::{ImageError, ImageFormat};

const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";
/// Bytes of the version 3 header up to and including `incompatible_features`.
const QCOW2_V3_HEADER: usize = 80;
/// `incompatible_features` bit 2: the guest data lives in an external file.
const QCOW2_EXTERNAL_DATA_FILE: u64 = 1 << 2;

/// One image file, measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInfo {
    /// Bytes on disk: what an upload sends and what the storage lists.
    pub file_size: u64,
    /// Bytes of the disk the image holds: the size of the VM disk imported from it.
    pub virtual_size: u64,
}

/// Reads the header of `path` as `format`. `host` names the owner in errors.
pub fn probe(host: &str, path: &Path, format: ImageFormat) -> Result<ImageInfo, ImageError> {
    let read_error =
        |source| ImageError::Read { host: host.to_string(), path: path.display().to_string(), source };
    let mut file = std::fs::File::open(path).map_err(read_error)?;
    let file_size = file.metadata().map_err(read_error)?.len();
    if format == ImageFormat::Raw {
        return Ok(ImageInfo { file_size, virtual_size: file_size });
    }
    let mut header = Vec::with_capacity(QCOW2_V3_HEADER);
    file.by_ref().take(QCOW2_V3_HEADER as u64).read_to_end(&mut header).map_err(read_error)?;
    let qcow2 = parse_qcow2_header(&header).map_err(|reason| ImageError::WrongFormat {
        host: host.to_string(),
        path: path.display().to_string(),
        format,
        reason,
    })?;
    if qcow2.backing_file || qcow2.external_data_file {
        return Err(ImageError::BackingFile { host: host.to_string(), path: path.display().to_string() });
    }
    Ok(ImageInfo { file_size, virtual_size: qcow2.virtual_size })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Qcow2Header {
    virtual_size: u64,
    backing_file: bool,
    external_data_file: bool,
}

fn parse_qcow2_header(header: &[u8]) -> Result<Qcow2Header, String> {
    let be64 = |at: usize| header.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
    let be32 = |at: usize| header.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes);
    if header.get(..4) != Some(&QCOW2_MAGIC[..]) {
        return Err("it does not start with the qcow2 magic `QFI\\xfb`".into());
    }
    let version = be32(4).ok_or("its header is truncated")?;
    let external_data_file = match version {
        2 => false,
        3 => be64(72).ok_or("its version 3 header is truncated")? & QCOW2_EXTERNAL_DATA_FILE != 0,
        other => return Err(format!("qcow2 version {other} is unknown")),
    };
    Ok(Qcow2Header {
        virtual_size: be64(24).ok_or("its header is truncated")?,
        backing_file: be64(8).ok_or("its header is truncated")? != 0,
        external_data_file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A qcow2 header laid out as QEMU's `docs/interop/qcow2.txt` describes it (the real file
    /// `qemu-img` writes is read in `tests/it/image.rs`).
    fn header(version: u32, backing: u64, size: u64, incompatible: u64) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&QCOW2_MAGIC);
        bytes.extend_from_slice(&version.to_be_bytes());
        bytes.extend_from_slice(&backing.to_be_bytes());
        bytes.extend_from_slice(&0u32.to_be_bytes());
        bytes.extend_from_slice(&16u32.to_be_bytes());
        bytes.extend_from_slice(&size.to_be_bytes());
        bytes.resize(72, 0);
        bytes.extend_from_slice(&incompatible.to_be_bytes());
        bytes
    }

    #[test]
    fn reads_size_and_refusals_from_the_header() {
        let plain = parse_qcow2_header(&header(3, 0, 1 << 30, 0)).expect("valid");
        assert_eq!(
            plain,
            Qcow2Header { virtual_size: 1 << 30, backing_file: false, external_data_file: false }
        );
        assert!(parse_qcow2_header(&header(3, 4096, 1 << 30, 0)).expect("valid").backing_file);
        assert!(
            parse_qcow2_header(&header(3, 0, 1, QCOW2_EXTERNAL_DATA_FILE)).expect("valid").external_data_file
        );
        // Version 2 has no feature fields: bytes past its header are not read as such.
        assert!(
            !parse_qcow2_header(&header(2, 0, 1, QCOW2_EXTERNAL_DATA_FILE))
                .expect("valid")
                .external_data_file
        );
    }

    #[test]
    fn what_is_not_qcow2() {
        assert_eq!(
            parse_qcow2_header(b"\0\0\0\0raw bytes"),
            Err("it does not start with the qcow2 magic `QFI\\xfb`".to_string())
        );
        assert_eq!(parse_qcow2_header(&header(4, 0, 1, 0)), Err("qcow2 version 4 is unknown".to_string()));
        assert_eq!(
            parse_qcow2_header(&header(3, 0, 1, 0)[..40]),
            Err("its version 3 header is truncated".into())
        );
        assert_eq!(parse_qcow2_header(&QCOW2_MAGIC), Err("its header is truncated".to_string()));
    }

    #[test]
    fn raw_images_are_their_own_size_and_files_are_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let raw = dir.path().join("scsi0.raw");
        std::fs::write(&raw, vec![0u8; 4096]).expect("write raw");
        assert_eq!(
            probe("web", &raw, ImageFormat::Raw).expect("raw"),
            ImageInfo { file_size: 4096, virtual_size: 4096 }
        );
        let err = probe("web", &raw, ImageFormat::Qcow2).expect_err("raw is not qcow2");
        assert_eq!(
            err.to_string(),
            format!(
                "image `{}` of host `web` is not a qcow2 image: it does not start with the qcow2 magic `QFI\\xfb` (check `nixprox.bootstrap.image.format`)",
                raw.display()
            )
        );
        let backed = dir.path().join("backed.qcow2");
        std::fs::write(&backed, header(3, 512, 1 << 20, 0)).expect("write qcow2");
        assert!(matches!(probe("web", &backed, ImageFormat::Qcow2), Err(ImageError::BackingFile { .. })));
        let missing =
            probe("web", &dir.path().join("absent.qcow2"), ImageFormat::Qcow2).expect_err("missing");
        assert!(matches!(missing, ImageError::Read { .. }), "{missing}");
    }
}
