//! The metadata block nixprox keeps in a VM's notes: the cluster is the state.
//!
//! The block is one HTML comment on its own line at the end of the notes, so the Proxmox UI
//! (which renders notes as Markdown) shows only the user's text:
//!
//! ```text
//! Reverse proxy for the lab.
//!
//! <!-- nixprox:v1 {"host":"web","system":"/nix/store/…","disk_layout":"sha256:…",…} -->
//! ```
//!
//! The version in the marker lets later releases change the payload; a block with an unknown
//! version is kept but not interpreted.

use serde::{Deserialize, Serialize};

const PREFIX: &str = "<!-- nixprox:v";
const SUFFIX: &str = " -->";
/// The payload version this release writes and reads.
pub const VERSION: u32 = 1;

/// What apply records about an installed host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Metadata {
    /// Attribute name under `nixosConfigurations`.
    pub host: String,
    /// Store path of the deployed `system.build.toplevel`; `None` before NixOS is installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Hash of the `disko.devices` the disks were partitioned with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_layout: Option<String>,
    /// The host's pinned SSH public key (`ssh-ed25519 AAAA…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key: Option<String>,
    /// Git revision of the flake that was deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_rev: Option<String>,
    /// RFC 3339 time of the last install or switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// The id of the reviewed plan an unfinished apply was carrying out. A re-run of apply
    /// recognises its own half-done work by it and resumes instead of refusing a changed plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applying: Option<String>,
}

/// Notes split into the user's text and nixprox's block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notes {
    /// Everything the user wrote, without trailing blank lines.
    pub user_text: String,
    pub block: Block,
}

/// The state of the metadata block in a VM's notes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Block {
    Absent,
    Current(Metadata),
    /// A block this release cannot read (newer version, or damaged JSON): kept verbatim.
    Unreadable {
        line: String,
        reason: String,
    },
}

impl Notes {
    /// Splits Proxmox's `description` into user text and metadata block.
    pub fn parse(description: &str) -> Notes {
        let mut lines: Vec<&str> = description.lines().collect();
        let position = lines.iter().rposition(|line| line.trim_start().starts_with(PREFIX));
        let block = match position {
            None => Block::Absent,
            Some(index) => {
                let line = lines.remove(index).trim().to_string();
                parse_block(&line)
            }
        };
        let user_text = lines.join("\n").trim_end().to_string();
        Notes { user_text, block }
    }

    /// The metadata, when the block is current.
    pub fn metadata(&self) -> Option<&Metadata> {
        match &self.block {
            Block::Current(metadata) => Some(metadata),
            _ => None,
        }
    }

    /// The notes Proxmox should store for this user text and metadata.
    pub fn render(user_text: &str, metadata: &Metadata) -> String {
        let user_text = user_text.trim_end();
        let line = render_block(metadata);
        if user_text.is_empty() { line } else { format!("{user_text}\n\n{line}") }
    }
}

fn parse_block(line: &str) -> Block {
    let unreadable = |reason: String| Block::Unreadable { line: line.to_string(), reason };
    let Some(rest) = line.strip_prefix(PREFIX).and_then(|r| r.strip_suffix(SUFFIX)) else {
        return unreadable("the block does not end with ` -->`".into());
    };
    let Some((version, json)) = rest.split_once(' ') else {
        return unreadable("the block has no payload".into());
    };
    match version.parse::<u32>() {
        Ok(VERSION) => match serde_json::from_str::<Metadata>(json) {
            Ok(metadata) => Block::Current(metadata),
            Err(err) => unreadable(format!("invalid payload: {err}")),
        },
        Ok(other) => unreadable(format!("version {other} is newer than this nixprox understands")),
        Err(_) => unreadable(format!("invalid version `{version}`")),
    }
}

fn render_block(metadata: &Metadata) -> String {
    // Serialising a struct of strings cannot fail; fall back to an empty object regardless.
    let json = serde_json::to_string(metadata).unwrap_or_else(|_| "{}".into());
    // `>` never appears raw, so the payload cannot close the comment early.
    let json = json.replace('>', "\\u003e");
    format!("{PREFIX}{VERSION} {json}{SUFFIX}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Metadata {
        Metadata {
            host: "web".into(),
            system: Some("/nix/store/abc-nixos-system-web".into()),
            disk_layout: Some("sha256:00ff".into()),
            host_key: Some("ssh-ed25519 AAAAC3Nza test".into()),
            git_rev: Some("0123abc".into()),
            time: Some("2026-11-25T18:00:00Z".into()),
            applying: None,
        }
    }

    #[test]
    fn round_trips_and_keeps_user_text() {
        let notes = Notes::render("Reverse proxy.\n\nOwned by Ana.\n", &sample());
        assert_eq!(
            notes,
            "Reverse proxy.\n\nOwned by Ana.\n\n<!-- nixprox:v1 {\"host\":\"web\",\"system\":\"/nix/store/abc-nixos-system-web\",\"disk_layout\":\"sha256:00ff\",\"host_key\":\"ssh-ed25519 AAAAC3Nza test\",\"git_rev\":\"0123abc\",\"time\":\"2026-11-25T18:00:00Z\"} -->"
        );
        let parsed = Notes::parse(&notes);
        assert_eq!(parsed.user_text, "Reverse proxy.\n\nOwned by Ana.");
        assert_eq!(parsed.metadata(), Some(&sample()));
    }

    #[test]
    fn notes_without_block() {
        let parsed = Notes::parse("just notes\n");
        assert_eq!(parsed.user_text, "just notes");
        assert_eq!(parsed.block, Block::Absent);
    }

    #[test]
    fn payload_cannot_close_the_comment() {
        let mut metadata = sample();
        metadata.host = "a-->b".into();
        let notes = Notes::render("", &metadata);
        assert_eq!(notes.matches("-->").count(), 1);
        assert_eq!(Notes::parse(&notes).metadata(), Some(&metadata));
    }

    #[test]
    fn newer_or_damaged_blocks_are_kept_unread() {
        let parsed = Notes::parse("x\n<!-- nixprox:v9 {} -->");
        assert!(matches!(parsed.block, Block::Unreadable { ref reason, .. } if reason.contains("version 9")));
        let parsed = Notes::parse("<!-- nixprox:v1 {not json} -->");
        assert!(
            matches!(parsed.block, Block::Unreadable { ref reason, .. } if reason.starts_with("invalid payload"))
        );
    }
}
