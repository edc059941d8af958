//! The Proxmox VE side: API client, DTOs, property strings and tasks.
//!
//! [`Client`] talks HTTPS to the API; [`read::read_cluster`] turns the cluster into
//! [`LiveVm`]s for the planner; [`tasks::wait_task`] follows the workers writes start;
//! [`property`] parses and formats PVE's property strings.

pub mod client;
pub mod error;
pub mod permissions;
pub mod property;
pub mod read;
pub mod tasks;
pub mod vm;

pub use client::{Client, ClientOptions, RetryPolicy};
pub use error::{ProxmoxError, TaskFailure, TransportKind};
pub use read::{
    Prefetched, ReadRequest, TemplateError, find_template, finish_read, list_cluster, list_vms,
    prefetch_cluster, read_cluster, read_managed,
};
pub use tasks::{TaskOutcome, Upid, wait_task};
pub use vm::{LiveConfig, LiveVm};
