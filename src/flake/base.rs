//! Where the pull request's base comes from: `--base REF` or the event's `pull_request.base.sha`,
//! turned into a flake reference nix can evaluate.
//!
//! A reference with a scheme (`github:…`, `git+file:…`, `path:…`) or a path is a flake
//! reference as it is. Anything else is a git revision (a commit, `main`, `HEAD~1`) of the
//! repository holding the local flake: it becomes `git+file://<top>?rev=<sha>` (plus `dir=` for
//! a flake below the repository's top, and `shallow=1` in a shallow clone, which newer Nix
//! requires). A revision that cannot be resolved is a one-line reason, never an error: the
//! plan goes on without the NixOS changes.

use std::path::{Path, PathBuf};

use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use tokio::process::Command;

/// `--base` as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseSpec {
    FlakeRef(String),
    Revision(String),
}

impl BaseSpec {
    pub fn parse(text: &str) -> BaseSpec {
        let text = text.trim();
        if text.contains(':') || text.starts_with('/') || text.starts_with('.') {
            BaseSpec::FlakeRef(text.to_string())
        } else {
            BaseSpec::Revision(text.to_string())
        }
    }
}

/// A base nix can evaluate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    pub flake_ref: String,
    /// How summaries name it: the commit's first 12 digits, or the reference.
    pub label: String,
}

/// Characters escaped in the path of a `git+file://` URL.
const PATH: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'#').add(b'%').add(b'?').add(b'<').add(b'>');

/// Resolves `spec`; `local` is the directory of the head flake when it is a local path.
pub async fn resolve(spec: &BaseSpec, local: Option<&Path>) -> Result<Base, String> {
    let revision = match spec {
        BaseSpec::FlakeRef(flake_ref) => {
            return Ok(Base { flake_ref: flake_ref.clone(), label: flake_ref.clone() });
        }
        BaseSpec::Revision(revision) => revision,
    };
    let Some(dir) = local else {
        return Err(format!(
            "the base `{revision}` is a git revision, but the flake is not a local checkout (pass `--base` a flake reference)"
        ));
    };
    let top = git(dir, &["rev-parse", "--show-toplevel"]).await.map_err(|err| {
        format!(
            "the base `{revision}` is a git revision, but `{}` is not in a git repository: {err}",
            dir.display()
        )
    })?;
    let shallow = git(dir, &["rev-parse", "--is-shallow-repository"]).await.is_ok_and(|s| s == "true");
    let sha = match git(dir, &["rev-parse", "--verify", "--quiet", &format!("{revision}^{{commit}}")]).await {
        Ok(sha) => sha,
        Err(_) if shallow => {
            return Err(format!(
                "the base commit `{revision}` is not in this shallow clone (fetch it: `git fetch --depth=1 origin {revision}`, or check out with `fetch-depth: 0`)"
            ));
        }
        Err(_) => return Err(format!("the base `{revision}` is not a commit of the repository at `{top}`")),
    };
    let prefix = git(dir, &["rev-parse", "--show-prefix"]).await.unwrap_or_default();
    Ok(Base {
        flake_ref: git_flake_ref(Path::new(&top), &sha, &prefix, shallow),
        label: sha[..sha.len().min(12)].into(),
    })
}

/// `git+file://<top>?rev=<sha>[&shallow=1][&dir=<prefix>]`.
pub fn git_flake_ref(top: &Path, sha: &str, prefix: &str, shallow: bool) -> String {
    let path = utf8_percent_encode(&top.to_string_lossy(), PATH).to_string();
    let mut flake_ref = format!("git+file://{path}?rev={sha}");
    if shallow {
        flake_ref.push_str("&shallow=1");
    }
    let dir = prefix.trim_end_matches('/');
    if !dir.is_empty() {
        flake_ref.push_str("&dir=");
        flake_ref.push_str(&utf8_percent_encode(dir, PATH).to_string().replace('&', "%26"));
    }
    flake_ref
}

/// `git -C dir ARGS`: trimmed stdout, or a one-line reason.
async fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|err| format!("failed to run `git`: {err} (install git)"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(stderr.lines().next().unwrap_or("git failed").trim().to_string());
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// The directory of the head flake, when it is a local path (`.`, `./x`, `path:/x`,
/// `git+file:///x`).
pub fn local_flake_dir(flake: &str) -> Option<PathBuf> {
    let without_attr = flake.split('#').next().unwrap_or(flake);
    let without_query = without_attr.split('?').next().unwrap_or(without_attr);
    let path = if let Some(rest) = without_query.strip_prefix("path:") {
        rest
    } else if let Some(rest) = without_query.strip_prefix("git+file://") {
        rest
    } else if without_query.contains(':') {
        return None;
    } else {
        without_query
    };
    Some(PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_and_revisions() {
        assert_eq!(BaseSpec::parse("github:me/lab/abc"), BaseSpec::FlakeRef("github:me/lab/abc".into()));
        assert_eq!(
            BaseSpec::parse("git+file:///src?rev=abc"),
            BaseSpec::FlakeRef("git+file:///src?rev=abc".into())
        );
        assert_eq!(BaseSpec::parse("/src/lab"), BaseSpec::FlakeRef("/src/lab".into()));
        assert_eq!(BaseSpec::parse("./old"), BaseSpec::FlakeRef("./old".into()));
        assert_eq!(BaseSpec::parse(" main "), BaseSpec::Revision("main".into()));
        assert_eq!(BaseSpec::parse("origin/main"), BaseSpec::Revision("origin/main".into()));
        assert_eq!(BaseSpec::parse("HEAD~1"), BaseSpec::Revision("HEAD~1".into()));
    }

    #[test]
    fn git_flake_refs() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            git_flake_ref(Path::new("/src/lab"), sha, "", false),
            format!("git+file:///src/lab?rev={sha}")
        );
        assert_eq!(
            git_flake_ref(Path::new("/home/me/my lab"), sha, "infra/hosts/", true),
            format!("git+file:///home/me/my%20lab?rev={sha}&shallow=1&dir=infra/hosts")
        );
    }

    #[test]
    fn local_flake_dirs() {
        assert_eq!(local_flake_dir("."), Some(PathBuf::from(".")));
        assert_eq!(local_flake_dir("path:/src/lab#x"), Some(PathBuf::from("/src/lab")));
        assert_eq!(local_flake_dir("git+file:///src/lab?ref=main"), Some(PathBuf::from("/src/lab")));
        assert_eq!(local_flake_dir("github:me/lab"), None);
    }

    #[tokio::test]
    async fn a_flake_ref_needs_no_git_and_a_revision_needs_a_local_flake() {
        let base = resolve(&BaseSpec::FlakeRef("github:me/lab/abc".into()), None).await.expect("as given");
        assert_eq!(base, Base { flake_ref: "github:me/lab/abc".into(), label: "github:me/lab/abc".into() });
        assert_eq!(
            resolve(&BaseSpec::Revision("main".into()), None).await.expect_err("no local flake"),
            "the base `main` is a git revision, but the flake is not a local checkout (pass `--base` a flake reference)"
        );
    }
}
