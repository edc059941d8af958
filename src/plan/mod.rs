//! The planner: desired hosts against live VMs, as a pure function, and the plan's data.

mod adopt;
mod container;
mod detach;
pub mod engine;
pub mod fields;
mod gates;
pub mod hardware;
pub mod id;
pub mod image;
pub mod model;
mod pending;
pub mod privileges;
mod system;
#[cfg(test)]
pub(crate) mod testkit;
#[cfg(test)]
mod tests;

pub use engine::{PlanInput, plan, plan_with_images};
pub use image::image_stores_to_read;
pub use model::{
    Action, ActionKind, Blocked, Change, Drift, Effect, HostPlan, PendingReboot, Plan, PoolMove, Probe,
    ProbeReport, Summary, Unreachable, VmRef,
};
