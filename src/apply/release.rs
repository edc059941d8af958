//! Letting go of a VM: its `nixprox` tag and its metadata block come off, everything else
//! stays as it is (the VM, its disks, its other tags, and the owner's notes byte for byte).
//! The `release` step of a host with `nixprox.vm.keep`, and `nixprox forget`, which an
//! operator runs directly.

use std::time::Duration;

use super::step::StepError;
use super::steps::cas_write;
use crate::metadata::Block;
use crate::proxmox::Client;
use crate::proxmox::property::format_tags;
use crate::proxmox::qemu::{Form, RawConfig, config_text, notes_of, tags_of};
use crate::retry::RetryPolicy;
use crate::spec::GuestKind;
use crate::spec::MANAGED_TAG;

/// Letting go of a VM failed; nothing, or only the whole write, was done.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ReleaseError(String);

/// The VM's notes hold a nixprox block this version cannot read: it is never rewritten.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the nixprox block in its notes cannot be read ({reason}), and nixprox does not rewrite a block it cannot read"
)]
pub struct UnreadableBlock {
    pub reason: String,
}

/// What letting go of a VM did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Released {
    /// The tag and the block were removed; the task's warnings.
    Done { warnings: Vec<String> },
    /// Nothing marked the VM as nixprox's.
    AlreadyUnmanaged,
}

/// The write that lets go of a VM: the tags without `nixprox`, the notes without the block
/// (`delete` for what becomes empty, as PVE wants). `Ok(None)`: nothing to remove. An
/// unreadable block is never rewritten: the caller says how to repair it.
pub fn release_form(raw: &RawConfig) -> Result<Option<Form>, UnreadableBlock> {
    let notes = notes_of(raw);
    if let Some(reason) = notes.unreadable() {
        return Err(UnreadableBlock { reason: reason.to_string() });
    }
    let mut form = Form::new();
    let mut delete = Vec::new();
    let mut tags = tags_of(raw);
    if tags.remove(MANAGED_TAG) {
        if tags.is_empty() {
            delete.push("tags");
        } else {
            form.push(("tags".into(), format_tags(&tags)));
        }
    }
    if notes.block != Block::Absent {
        // Parsing took out exactly the block line and the breaks around it: the rest is the
        // owner's text, byte for byte.
        if notes.user_text.is_empty() {
            delete.push("description");
        } else {
            form.push(("description".into(), notes.user_text));
        }
    }
    if !delete.is_empty() {
        form.push(("delete".into(), delete.join(",")));
    }
    Ok((!form.is_empty()).then_some(form))
}

/// Lets go of guest `vmid` (a VM or a container) on `node` with a compare-and-swap write of [`release_form`].
pub async fn release_vm(
    client: &Client,
    retry: RetryPolicy,
    timeout: Duration,
    kind: GuestKind,
    node: &str,
    vmid: u32,
) -> Result<Released, ReleaseError> {
    let written = cas_write(client, retry, timeout, kind, node, vmid, "let go of it", |raw| {
        release_form(raw).map_err(|why| StepError::other(format!("refusing to let go of VM {vmid}: {why}")))
    })
    .await
    .map_err(|err| ReleaseError(err.to_string()))?;
    Ok(match written {
        Some(written) => Released::Done { warnings: written.warnings },
        None => Released::AlreadyUnmanaged,
    })
}

/// The name of the VM in `raw`, for messages.
pub fn name_of(raw: &RawConfig) -> String {
    // A container's name is its `hostname`.
    config_text(raw, "name").or_else(|| config_text(raw, "hostname")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn raw(value: Value) -> RawConfig {
        value.as_object().expect("object").clone()
    }

    fn form(raw_config: Value) -> Vec<(String, String)> {
        release_form(&raw(raw_config)).expect("readable").unwrap_or_default()
    }

    #[test]
    fn the_tag_and_the_block_go_the_owners_text_stays_byte_for_byte() {
        let owner = "Owner: alice.\r\nBackups nightly; do not delete.\n\n";
        let notes = crate::metadata::Notes::render(
            owner,
            &crate::metadata::Metadata { host: "web".into(), ..Default::default() },
        );
        let released = form(json!({"tags": "lab;nixprox", "description": notes}));
        assert_eq!(
            released,
            [("tags".to_string(), "lab".to_string()), ("description".to_string(), owner.to_string())]
        );
        // Only nixprox's tag and block: both keys are deleted.
        let block = r#"<!-- nixprox:v1 {"host":"web"} -->"#;
        assert_eq!(
            form(json!({"tags": "nixprox", "description": block})),
            [("delete".to_string(), "tags,description".to_string())]
        );
        // A tag without a block (tagged by hand), a block without a tag (an interrupted create).
        assert_eq!(
            form(json!({"tags": "nixprox", "description": "mine"})),
            [("delete".to_string(), "tags".to_string())]
        );
        assert_eq!(
            form(json!({"description": format!("mine\n\n{block}")})),
            [("description".to_string(), "mine".to_string())]
        );
        assert_eq!(release_form(&raw(json!({"tags": "lab", "description": "mine"}))), Ok(None));
    }

    #[test]
    fn an_unreadable_block_is_not_rewritten() {
        let err = release_form(&raw(json!({"tags": "nixprox", "description": "<!-- nixprox:v9 {} -->"})))
            .expect_err("unreadable")
            .to_string();
        assert!(err.contains("version 9"), "{err}");
    }
}
