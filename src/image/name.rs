//! The file name of an image on a Proxmox storage: `nixprox-<store hash>-<slot>.<format>`.
//!
//! The name comes from the hash of the image package's store path, so it is known when
//! planning (nothing built), identical for every host that shares the package, and a file of
//! that name can only hold these bytes: a present, complete file is reused instead of uploaded
//! again. The `nixprox-` prefix marks the files nixprox may garbage-collect.
//!
//! The names use only characters Proxmox keeps in an upload's file name
//! ([`crate::proxmox::upload::is_kept_by_proxmox`]).

use super::ImageFormat;

/// The prefix of every import file nixprox uploads.
pub const PREFIX: &str = "nixprox-";

/// Characters of Nix's base-32 (no `e`, `o`, `t`, `u`).
const NIX_BASE32: &str = "0123456789abcdfghijklmnpqrsvwxyz";
/// Length of the hash part of a store path.
const HASH_LEN: usize = 32;

/// A store path that has no Nix hash (`/nix/store/<32 base-32 chars>-<name>`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{path}` is not a Nix store path (expected `/nix/store/<hash>-<name>`)")]
pub struct NotAStorePath {
    pub path: String,
}

/// The hash part of a store path (any store directory): `/nix/store/abc…-images` → `abc…`.
pub fn store_hash(path: &str) -> Result<&str, NotAStorePath> {
    let base = path.trim_end_matches('/').rsplit('/').next().unwrap_or_default();
    let hash = base.get(..HASH_LEN).filter(|_| base.as_bytes().get(HASH_LEN) == Some(&b'-'));
    match hash {
        Some(hash) if hash.chars().all(|c| NIX_BASE32.contains(c)) && path.starts_with('/') => Ok(hash),
        _ => Err(NotAStorePath { path: path.to_string() }),
    }
}

/// `nixprox-<hash>-<slot>.<format>` for the image of disk `slot` in package `out_path`.
pub fn import_file_name(out_path: &str, slot: &str, format: ImageFormat) -> Result<String, NotAStorePath> {
    Ok(format!("{PREFIX}{}-{slot}.{}", store_hash(out_path)?, format.extension()))
}

/// `nixprox-<hash>.tar.xz`: the name of a container template built from package `out_path`
/// on a storage (`vztmpl` content; pve-storage takes `.tar.xz`), so hosts that share the
/// package share the file.
pub fn template_file_name(out_path: &str) -> Result<String, NotAStorePath> {
    Ok(format!("{PREFIX}{}.tar.xz", store_hash(out_path)?))
}

/// The store hash of a name [`template_file_name`] made; `None` for every other file.
pub fn parse_template_file_name(name: &str) -> Option<&str> {
    let hash = name.strip_prefix(PREFIX)?.strip_suffix(".tar.xz")?;
    (hash.len() == HASH_LEN && hash.chars().all(|c| NIX_BASE32.contains(c))).then_some(hash)
}

/// What a nixprox import file name says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportName {
    pub hash: String,
    pub slot: String,
    pub format: ImageFormat,
}

/// Parses a name [`import_file_name`] made; `None` for every other file (the user's own
/// imports are never nixprox's to delete).
pub fn parse_import_file_name(name: &str) -> Option<ImportName> {
    let rest = name.strip_prefix(PREFIX)?;
    let (stem, extension) = rest.rsplit_once('.')?;
    let format = ImageFormat::from_extension(extension)?;
    let (hash, slot) = stem.split_at_checked(HASH_LEN)?;
    let slot = slot.strip_prefix('-')?;
    let valid_slot = !slot.is_empty() && slot.chars().all(|c| c.is_ascii_alphanumeric());
    (hash.chars().all(|c| NIX_BASE32.contains(c)) && valid_slot).then(|| ImportName {
        hash: hash.to_string(),
        slot: slot.to_string(),
        format,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "/nix/store/0c8yzlgy9xbfn6sjcx6rh6fzqfvc3ai2-web-disko-images";

    #[test]
    fn names_come_from_the_store_hash_and_the_slot() {
        assert_eq!(store_hash(OUT), Ok("0c8yzlgy9xbfn6sjcx6rh6fzqfvc3ai2"));
        assert_eq!(store_hash(&format!("{OUT}/")), Ok("0c8yzlgy9xbfn6sjcx6rh6fzqfvc3ai2"));
        let name = import_file_name(OUT, "scsi0", ImageFormat::Qcow2).expect("store path");
        assert_eq!(name, "nixprox-0c8yzlgy9xbfn6sjcx6rh6fzqfvc3ai2-scsi0.qcow2");
        assert!(crate::proxmox::upload::is_kept_by_proxmox(&name));
        assert_eq!(
            parse_import_file_name(&name),
            Some(ImportName {
                hash: "0c8yzlgy9xbfn6sjcx6rh6fzqfvc3ai2".into(),
                slot: "scsi0".into(),
                format: ImageFormat::Qcow2
            })
        );
        let raw = import_file_name(OUT, "virtio12", ImageFormat::Raw).expect("store path");
        assert_eq!(parse_import_file_name(&raw).map(|n| n.slot), Some("virtio12".into()));
    }

    #[test]
    fn what_is_not_a_store_path() {
        for path in [
            "",
            "web-disko-images",
            "/nix/store/short-x",
            // `e` is not in Nix's base-32.
            "/nix/store/0c8yzlgy9xbfn6sjcx6rh6fzqfvc3ae2-x",
            "/nix/store/0c8yzlgy9xbfn6sjcx6rh6fzqfvc3ai2x",
        ] {
            assert_eq!(store_hash(path), Err(NotAStorePath { path: path.into() }), "{path}");
        }
        assert_eq!(
            import_file_name("./result", "scsi0", ImageFormat::Raw).expect_err("relative").to_string(),
            "`./result` is not a Nix store path (expected `/nix/store/<hash>-<name>`)"
        );
    }

    #[test]
    fn only_nixprox_names_parse() {
        for name in [
            "debian-12-genericcloud-amd64.qcow2",
            "nixprox-0c8yzlgy9xbfn6sjcx6rh6fzqfvc3ai2-scsi0.vmdk",
            "nixprox-0c8yzlgy9xbfn6sjcx6rh6fzqfvc3ai2.qcow2",
            "nixprox-0c8yzlgy9xbfn6sjcx6rh6fzqfvc3ai2-.qcow2",
            "nixprox-0c8yzlgy9xbfn6sjcx6rh6fzqfvc3ai2-scsi_0.qcow2",
            "nixprox-short-scsi0.qcow2",
            "nixprox-",
        ] {
            assert_eq!(parse_import_file_name(name), None, "{name}");
        }
    }
}
