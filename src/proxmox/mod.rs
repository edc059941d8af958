//! The Proxmox VE side: API client, DTOs, property strings, tasks and VM operations.
//!
//! [`Client`] talks HTTPS to the API; [`read::read_cluster`] turns the cluster into
//! [`LiveVm`]s for the planner; [`tasks::wait_task`] follows the workers writes start;
//! [`qemu`] holds the operations on one VM (raw config, power state, guest-agent address,
//! the clone and create forms), [`agent`] waits for a guest's agent (the one "not yet"), [`migrate`] moves one to another node, and [`vmid`] holds the
//! ids of new VMs; [`property`] parses and formats PVE's property strings.

pub mod agent;
pub mod client;
pub mod cluster;
pub mod container;
pub mod error;
pub mod guest;
pub mod import;
pub mod mapping;
pub mod migrate;
pub mod permissions;
pub mod property;
pub mod qemu;
pub mod read;
pub mod tasks;
pub mod upload;
pub mod vm;
pub mod vmid;

pub use crate::retry::RetryPolicy;
pub use client::{Client, ClientOptions};
pub use error::{ProxmoxError, TaskFailure, TransportKind, UnexpectedAnswer};
pub use read::{
    Prefetched, ReadRequest, TemplateError, find_template, finish_read, list_cluster, list_guests, list_vms,
    prefetch_cluster, read_cluster, read_managed,
};
pub use tasks::{TaskOutcome, Upid, post_and_wait, wait_answer, wait_task};
pub use vm::{LiveConfig, LiveVm};
