//! The metadata block nixprox keeps in a VM's notes: the cluster is the state.
//!
//! The block is one HTML comment on its own line, appended to the notes, so the Proxmox UI
//! (which renders notes as Markdown) shows only the user's text:
//!
//! ```text
//! Reverse proxy for the lab.
//!
//! <!-- nixprox:v1 {"host":"web","system":"/nix/store/…","disk_layout":"sha256:…",…} -->
//! ```
//!
//! The user's text is everything else, byte for byte: [`Notes::parse`] removes only the block
//! line and the line breaks that separate it, and [`Notes::render`] adds exactly those back, so
//! `parse(render(text)).user_text == text` for every text (trailing newlines, CRLF, blank
//! lines, text someone wrote after the block). The version in the marker lets later releases
//! change the payload; a block with an unknown version or a damaged payload is kept as it is
//! and reported, never read as "nothing recorded".

use serde::{Deserialize, Serialize};

const PREFIX: &str = "<!-- nixprox:v";
const SUFFIX: &str = " -->";
/// Between the user's text and the block: a blank line, so the block is a paragraph of its own
/// in every Markdown renderer.
const SEPARATOR: &str = "\n\n";
/// `disk_layout` of a VM whose disks nixprox does not lay out: adopted for a host that declares
/// no `disko.devices` (its own hardware configuration mounts them). A later declared layout
/// plans a gated `reinstall`; until then the disks are never repartitioned.
pub const LAYOUT_NOT_MANAGED: &str = "none";
/// The payload version this release writes and reads.
pub const VERSION: u32 = 1;

/// What apply records about a VM it manages.
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
    /// Written with the very first write of a VM nixprox creates (the clone's or create's
    /// notes) and dropped once NixOS is installed: the only VMs without a recorded `system`
    /// that get an install without a gate. Any other such VM may hold someone's data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<Created>,
    /// Written when nixprox adopts a VM that already runs NixOS, in place: its disks were laid
    /// out by someone else. `disk_layout` then holds the flake's layout at adoption (not what
    /// the disks hold), so a later change of `disko.devices` plans a gated `reinstall`, never a
    /// silent one. Dropped when nixprox installs the VM itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopted: Option<Adopted>,
}

/// The record that nixprox created a VM and has not installed it yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    /// The VMID the VM was created with. A copy of the notes on another VM (a clone made in
    /// the Proxmox UI, a restore to another id) does not match, so it gets no ungated install.
    pub vmid: u32,
    /// The reviewed plan whose apply created it (for the reader; not interpreted).
    pub plan: String,
    /// The image package its disks were imported from, when nixprox created it from an image
    /// (`nixprox.bootstrap.image`). Such a VM boots its system and is finished by a check (and
    /// a switch), never by nixos-anywhere; a VM cloned from a template is finished by an
    /// install. Recorded here because the host's bootstrap option may change before the
    /// interrupted run is resumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// The record that nixprox adopted a running NixOS VM in place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adopted {
    /// The VMID the VM had when it was adopted.
    pub vmid: u32,
    /// The reviewed plan whose apply adopted it (for the reader; not interpreted).
    pub plan: String,
}

impl Metadata {
    /// Whether nixprox created VM `vmid` and has not installed NixOS on it yet.
    pub fn created_uninstalled(&self, vmid: u32) -> bool {
        self.system.is_none() && self.created.as_ref().is_some_and(|c| c.vmid == vmid)
    }

    /// Whether nixprox created VM `vmid` from an image and has not checked what it runs yet.
    pub fn created_from_image_unchecked(&self, vmid: u32) -> bool {
        self.created_uninstalled(vmid) && self.created.as_ref().is_some_and(|c| c.image.is_some())
    }
}

/// Notes split into the user's text and nixprox's block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notes {
    /// Everything but the block line and the line breaks separating it, byte for byte.
    pub user_text: String,
    pub block: Block,
}

/// The state of the metadata block in a VM's notes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Block {
    Absent,
    /// Boxed: a block is read once per VM, and the payload is much larger than the other variants.
    Current(Box<Metadata>),
    /// A block this release cannot read (newer version, or damaged): kept verbatim, and the
    /// VM left alone. `reason` says what is wrong and how to fix it.
    Unreadable {
        line: String,
        reason: String,
    },
}

impl Notes {
    /// Splits Proxmox's `description` into user text and metadata block. The block is the last
    /// line that starts (after blanks) with `<!-- nixprox:v`.
    pub fn parse(description: &str) -> Notes {
        let Some((start, end)) = block_line(description) else {
            return Notes { user_text: description.to_string(), block: Block::Absent };
        };
        let block = parse_block(description[start..end].trim());
        // The block line goes with its own line break, or, when it is the last line, with the
        // separator before it: the blank line `render` puts there, or a single line break (a
        // block someone moved up to the text by hand).
        let (cut_start, cut_end) = if end < description.len() {
            (start, end + 1)
        } else if description[..start].ends_with(SEPARATOR) {
            (start - SEPARATOR.len(), end)
        } else {
            (start.saturating_sub(1), end)
        };
        let user_text = format!("{}{}", &description[..cut_start], &description[cut_end..]);
        Notes { user_text, block }
    }

    /// The metadata, when the block is current.
    pub fn metadata(&self) -> Option<&Metadata> {
        match &self.block {
            Block::Current(metadata) => Some(metadata.as_ref()),
            _ => None,
        }
    }

    /// Why the block cannot be read, when it cannot.
    pub fn unreadable(&self) -> Option<&str> {
        match &self.block {
            Block::Unreadable { reason, .. } => Some(reason),
            _ => None,
        }
    }

    /// The notes Proxmox should store: `user_text` exactly, a blank line, then the block
    /// (the inverse of [`Notes::parse`]).
    pub fn render(user_text: &str, metadata: &Metadata) -> String {
        let line = render_block(metadata);
        if user_text.is_empty() { line } else { format!("{user_text}{SEPARATOR}{line}") }
    }

    /// Whether two user texts say the same: equal but for trailing white space, which Proxmox
    /// itself drops from the end of the notes and a Nix `''…''` string adds.
    pub fn same_text(a: &str, b: &str) -> bool {
        a.trim_end() == b.trim_end()
    }
}

/// Byte range of the block line (without its line break), if any.
fn block_line(description: &str) -> Option<(usize, usize)> {
    let mut found = None;
    let mut start = 0;
    for line in description.split('\n') {
        if line.trim_start().starts_with(PREFIX) {
            found = Some((start, start + line.len()));
        }
        start += line.len() + 1;
    }
    found
}

fn parse_block(line: &str) -> Block {
    let unreadable = |reason: String| Block::Unreadable { line: line.to_string(), reason };
    const REPAIR: &str = "repair or remove the block in the VM's notes by hand";
    let Some(rest) = line.strip_prefix(PREFIX).and_then(|r| r.strip_suffix(SUFFIX)) else {
        return unreadable(format!("the block does not end with ` -->` ({REPAIR})"));
    };
    let Some((version, json)) = rest.split_once(' ') else {
        return unreadable(format!("the block has no payload ({REPAIR})"));
    };
    match version.parse::<u32>() {
        Ok(VERSION) => match serde_json::from_str::<Metadata>(json) {
            Ok(metadata) => Block::Current(Box::new(metadata)),
            Err(err) => unreadable(format!("invalid payload: {err} ({REPAIR})")),
        },
        Ok(other) if other > VERSION => unreadable(format!(
            "the block is version {other}, newer than this nixprox reads (v{VERSION}): upgrade nixprox to one that reads v{other}, or remove the block by hand"
        )),
        // No release ever wrote one below v1: someone edited it.
        Ok(other) => unreadable(format!("unknown version `{other}` ({REPAIR})")),
        Err(_) => unreadable(format!("invalid version `{version}` ({REPAIR})")),
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
            created: None,
            adopted: None,
        }
    }

    #[test]
    fn round_trips_and_keeps_user_text() {
        let notes = Notes::render("Reverse proxy.\n\nOwned by Ana.\n", &sample());
        assert_eq!(
            notes,
            "Reverse proxy.\n\nOwned by Ana.\n\n\n<!-- nixprox:v1 {\"host\":\"web\",\"system\":\"/nix/store/abc-nixos-system-web\",\"disk_layout\":\"sha256:00ff\",\"host_key\":\"ssh-ed25519 AAAAC3Nza test\",\"git_rev\":\"0123abc\",\"time\":\"2026-11-25T18:00:00Z\"} -->"
        );
        let parsed = Notes::parse(&notes);
        assert_eq!(parsed.user_text, "Reverse proxy.\n\nOwned by Ana.\n");
        assert_eq!(parsed.metadata(), Some(&sample()));
    }

    /// parse ∘ render is the identity on the user's bytes, whatever they are.
    #[test]
    fn the_users_bytes_survive_exactly() {
        let pieces = ["", "\n", "\r\n", " ", "Owner: alice.", "\n\n", "<!-- note -->", "x\r", "\t"];
        let mut texts = vec![String::new()];
        for a in pieces {
            for b in pieces {
                for c in pieces {
                    texts.push(format!("{a}{b}{c}"));
                }
            }
        }
        texts.push("Owner: alice. Backups nightly; do not delete.\n".into());
        texts.push("Owner: alice.\r\nBackups nightly.\r\n\r\n\r\n".into());
        for text in &texts {
            let notes = Notes::render(text, &sample());
            let parsed = Notes::parse(&notes);
            assert_eq!(&parsed.user_text, text, "notes {notes:?}");
            assert_eq!(parsed.metadata(), Some(&sample()));
            // Rendering again gives the same notes: no churn on every write.
            assert_eq!(Notes::render(&parsed.user_text, &sample()), notes);
        }
    }

    #[test]
    fn text_after_a_moved_block_is_kept() {
        let block = Notes::render("", &sample());
        let notes = format!("Owner: alice.\n{block}\r\nWritten below the block.\n");
        let parsed = Notes::parse(&notes);
        assert_eq!(parsed.user_text, "Owner: alice.\nWritten below the block.\n");
        assert_eq!(parsed.metadata(), Some(&sample()));
        // A block line with blanks around it (edited by hand) is still the block.
        let parsed = Notes::parse(&format!("Owner\n  {block} \r"));
        assert_eq!(parsed.user_text, "Owner");
        let parsed = Notes::parse(&format!("Owner\n\n\n{block}"));
        assert_eq!(parsed.user_text, "Owner\n");
        assert_eq!(parsed.metadata(), Some(&sample()));
    }

    #[test]
    fn notes_without_block() {
        let parsed = Notes::parse("just notes\n");
        assert_eq!(parsed.user_text, "just notes\n");
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
    fn newer_or_damaged_blocks_are_kept_unread_with_the_fix() {
        let parsed = Notes::parse("x\n<!-- nixprox:v2 {} -->");
        assert_eq!(
            parsed.unreadable(),
            Some(
                "the block is version 2, newer than this nixprox reads (v1): upgrade nixprox to one that reads v2, or remove the block by hand"
            )
        );
        assert_eq!(parsed.user_text, "x");
        assert_eq!(
            Notes::parse("<!-- nixprox:v0 {} -->").unreadable(),
            Some("unknown version `0` (repair or remove the block in the VM's notes by hand)")
        );
        let parsed = Notes::parse("<!-- nixprox:v1 {not json} -->");
        let reason = parsed.unreadable().expect("unreadable");
        assert!(reason.starts_with("invalid payload"), "{reason}");
        assert!(reason.ends_with("(repair or remove the block in the VM's notes by hand)"), "{reason}");
        let parsed = Notes::parse("<!-- nixprox:v1 -->");
        assert!(parsed.unreadable().is_some_and(|r| r.starts_with("the block has no payload")));
        assert_eq!(parsed.metadata(), None);
    }

    #[test]
    fn only_a_matching_created_marker_counts() {
        let mut metadata = Metadata {
            host: "web".into(),
            created: Some(Created { vmid: 120, plan: "p".into(), image: None }),
            ..sample()
        };
        metadata.system = None;
        assert!(metadata.created_uninstalled(120));
        assert!(!metadata.created_uninstalled(121), "a copy on another VMID");
        metadata.system = Some("/nix/store/x".into());
        assert!(!metadata.created_uninstalled(120), "installed");
        let notes = Notes::render("", &metadata);
        assert!(notes.contains(r#""created":{"vmid":120,"plan":"p"}"#), "{notes}");

        metadata.system = None;
        assert!(!metadata.created_from_image_unchecked(120), "cloned from a template");
        let package = "/nix/store/0c8yzlgy9xbfn6sjcx6rh6fzqfvc3ai2-web-images";
        metadata.created = Some(Created { vmid: 120, plan: "p".into(), image: Some(package.into()) });
        assert!(metadata.created_from_image_unchecked(120));
        assert!(!metadata.created_from_image_unchecked(121));
        let notes = Notes::render("", &metadata);
        assert!(
            notes.contains(&format!(r#""created":{{"vmid":120,"plan":"p","image":"{package}"}}"#)),
            "{notes}"
        );
        assert_eq!(Notes::parse(&notes).metadata(), Some(&metadata));
    }

    #[test]
    fn same_text_ignores_only_trailing_white_space() {
        assert!(Notes::same_text("Reverse proxy.\n", "Reverse proxy."));
        assert!(!Notes::same_text("Reverse proxy.", "reverse proxy."));
        assert!(!Notes::same_text("a\r\nb", "a\nb"));
    }
}
