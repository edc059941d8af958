//! The `--extra-files` directory: the user's files (if any) plus the pinned host key at
//! `etc/ssh/ssh_host_ed25519_key`, so the installed host answers with the key nixprox
//! recorded from its first boot on.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use secrecy::ExposeSecret;

use crate::ssh::GeneratedHostKey;

/// Where the host key goes, relative to the new system's root.
pub const HOST_KEY_PATH: &str = "etc/ssh/ssh_host_ed25519_key";

/// The `--extra-files` directory, inside a private directory; both removed on drop.
#[derive(Debug)]
pub struct ExtraFiles {
    _private: tempfile::TempDir,
    root: PathBuf,
}

impl ExtraFiles {
    /// The directory to pass as `--extra-files`.
    pub fn path(&self) -> &Path {
        &self.root
    }
}

/// Builds the directory `root` inside a new private (0700) directory (see
/// [`crate::ssh::private_dir`]: under `$RUNNER_TEMP` when set), so no other user of the runner
/// can reach the host key in it. `root` itself is 0755, the mode the installed system's `/`
/// gets when the installer unpacks it there. The user's `etc/ssh/ssh_host_ed25519_key`, if
/// any, is replaced by `host_key`. Build it right before the installer runs: it holds the
/// host's private key.
pub fn prepare_extra_files(host_key: &GeneratedHostKey, user_dir: Option<&Path>) -> io::Result<ExtraFiles> {
    let private = crate::ssh::private_dir("nixprox-extra-files-")?;
    let root = private.path().join("root");
    fs::create_dir(&root)?;
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755))?;
    let dir = ExtraFiles { _private: private, root };
    if let Some(user_dir) = user_dir {
        copy_tree(user_dir, dir.path())
            .map_err(|err| io::Error::new(err.kind(), format!("copying `{}`: {err}", user_dir.display())))?;
    }
    let key_path = dir.path().join(HOST_KEY_PATH);
    let ssh_dir = key_path.parent().unwrap_or(dir.path());
    fs::create_dir_all(ssh_dir)?;
    fs::set_permissions(ssh_dir, fs::Permissions::from_mode(0o755))?;
    let _ = fs::remove_file(&key_path);
    let mut private = host_key.private_openssh.expose_secret().trim_end().to_string();
    private.push('\n');
    // Created 0600 from the start: the secret is never readable by others, not even briefly.
    let mut options = fs::OpenOptions::new();
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    io::Write::write_all(&mut options.write(true).create_new(true).open(&key_path)?, private.as_bytes())?;
    let public_path = key_path.with_extension("pub");
    fs::write(&public_path, format!("{}\n", host_key.public.trim()))?;
    fs::set_permissions(&public_path, fs::Permissions::from_mode(0o644))?;
    Ok(dir)
}

fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            fs::create_dir_all(&target)?;
            copy_tree(&entry.path(), &target)?;
            fs::set_permissions(&target, entry.metadata()?.permissions())?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(entry.path())?, &target)?;
        } else {
            fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ssh::generate_host_key;

    #[test]
    fn host_key_is_placed_private_and_user_files_kept() {
        let user = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(user.path().join("var/lib/secrets")).expect("mkdir");
        fs::write(user.path().join("var/lib/secrets/token"), "t").expect("write");
        fs::set_permissions(user.path().join("var/lib/secrets/token"), fs::Permissions::from_mode(0o400))
            .expect("chmod");
        fs::create_dir_all(user.path().join("etc/ssh")).expect("mkdir");
        fs::write(user.path().join(HOST_KEY_PATH), "old").expect("write");
        let key = generate_host_key("web").expect("key");
        let dir = prepare_extra_files(&key, Some(user.path())).expect("prepare");
        let key_path = dir.path().join(HOST_KEY_PATH);
        assert_eq!(fs::metadata(&key_path).expect("stat").permissions().mode() & 0o777, 0o600);
        assert_eq!(
            fs::read_to_string(&key_path).expect("read").trim(),
            key.private_openssh.expose_secret().trim()
        );
        assert_eq!(
            fs::read_to_string(key_path.with_extension("pub")).expect("read"),
            format!("{}\n", key.public)
        );
        let parent = dir.path().parent().expect("parent");
        assert_eq!(fs::metadata(parent).expect("stat").permissions().mode() & 0o777, 0o700);
        assert_eq!(fs::metadata(dir.path()).expect("stat").permissions().mode() & 0o777, 0o755);
        let kept = parent.to_path_buf();
        let token = dir.path().join("var/lib/secrets/token");
        assert_eq!(fs::read_to_string(&token).expect("read"), "t");
        assert_eq!(fs::metadata(&token).expect("stat").permissions().mode() & 0o777, 0o400);
        drop(dir);
        assert!(!kept.exists(), "removed on drop");
    }
}
