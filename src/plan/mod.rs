//! The planner: desired hosts against live VMs, as a pure function.

pub mod model;

pub use model::{Action, ActionKind, Blocked, Change, Effect, HostPlan, Plan, Summary, VmRef};
