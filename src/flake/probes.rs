//! The NixOS probes (`nix/probes.nix`) as the evaluator's `extra` hook: at the head they ride
//! along with each host's own evaluation ([`EvalRequest::extra`], same process, same module
//! system); at the pull request's base only they are evaluated ([`evaluate_extra`]), with the
//! same workers and `eval.max_memory`, for the hosts whose system changes. Nothing is built.
//!
//! Nothing in here fails a plan: a base that cannot be fetched or evaluated, a host it lacks,
//! a probe that throws, all end up as a one-line reason per host.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::inventory::{EvalRequest, Hosts, evaluate_extra};

const PROBES_EXPR: &str = include_str!("nix/probes.nix");

/// The probes as an [`EvalRequest::extra`] function (`attr: host: { … }`).
pub fn probes_extra() -> String {
    format!("_attr: (\n{PROBES_EXPR}\n)")
}

/// One host's probes from the head evaluation (also in plan shard files).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Probed {
    /// probes.nix's output.
    Evaluated(Value),
    /// The probes failed in a way nix cannot catch (nix's message); the host's system was
    /// evaluated without them.
    Failed(String),
}

impl Probed {
    /// The head's probes of an evaluated host: its `extra`, or why it failed.
    pub fn of(extra: Option<&Value>, extra_error: Option<&str>) -> Option<Probed> {
        match (extra, extra_error) {
            (_, Some(message)) => Some(Probed::Failed(message.to_string())),
            (Some(value), None) => Some(Probed::Evaluated(value.clone())),
            (None, None) => None,
        }
    }
}

/// One host's probes at the base (also in plan shard files).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BaseProbed {
    Evaluated(Value),
    /// The base's `nixosConfigurations` has no attribute of this name.
    NotInBase,
    /// nix could not evaluate the host at the base (nix's message).
    Failed(String),
}

/// Evaluates the probes of `hosts` at the base `base` (a flake reference), with the head's
/// evaluation settings (`like`: nix, overrides, jobs, batch, memory). A host that fails at the
/// base costs only itself; a base that cannot be evaluated at all gives every host its message.
pub async fn evaluate_base(like: &EvalRequest, base: &str, hosts: &[String]) -> BTreeMap<String, BaseProbed> {
    if hosts.is_empty() {
        return BTreeMap::new();
    }
    let request = EvalRequest {
        flake: base.to_string(),
        hosts: Hosts::Only(hosts.to_vec()),
        extra: Some(probes_extra()),
        ..like.clone()
    };
    let extras = match evaluate_extra(&request).await {
        Ok(extras) => extras,
        Err(err) => {
            let message = err.nix_message().map_or_else(|| err.to_string(), str::to_string);
            return hosts.iter().map(|h| (h.clone(), BaseProbed::Failed(message.clone()))).collect();
        }
    };
    hosts
        .iter()
        .map(|host| {
            let probed = if let Some(value) = extras.values.get(host) {
                BaseProbed::Evaluated(value.clone())
            } else if let Some(message) = extras.failed.get(host) {
                BaseProbed::Failed(message.clone())
            } else if extras.missing.contains(host) {
                BaseProbed::NotInBase
            } else {
                BaseProbed::Failed("nix returned no probes for this host".into())
            };
            (host.clone(), probed)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probes_are_an_extra_function() {
        let extra = probes_extra();
        assert!(extra.starts_with("_attr: (\n"), "{extra}");
        assert!(extra.trim_end().ends_with(')'), "{extra}");
    }

    #[test]
    fn head_probes_prefer_the_failure() {
        let value = serde_json::json!({"kernel": null});
        assert_eq!(Probed::of(Some(&value), None), Some(Probed::Evaluated(value.clone())));
        assert_eq!(Probed::of(None, Some("boom")), Some(Probed::Failed("boom".into())));
        assert_eq!(Probed::of(None, None), None);
    }
}
