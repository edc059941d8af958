//! The NixOS probes (`nix/probes.nix`): at the head they ride along with each host's system
//! evaluation (the hook in `inventory.rs`); at the pull request's base they are evaluated here,
//! only for the hosts whose system changes, in batches like the systems. Nothing is built.
//!
//! Nothing in here fails a plan: a base that cannot be fetched or evaluated, a host it lacks,
//! a probe that throws, all end up as a one-line reason per host.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::command::{Nix, OverrideInput, nix_string};
use super::inventory::bounded;

const PROBES_EXPR: &str = include_str!("nix/probes.nix");

/// The probes function, parenthesised to be embedded in another `--apply` expression.
pub fn probes_function() -> String {
    format!("(\n{PROBES_EXPR}\n)")
}

/// One host's probes from the head evaluation.
#[derive(Debug, Clone, PartialEq)]
pub enum Probed {
    /// probes.nix's output.
    Evaluated(Value),
    /// The probes broke the host's batch (nix's message); its system was evaluated without them.
    Failed(String),
}

/// One host's probes at the base.
#[derive(Debug, Clone, PartialEq)]
pub enum BaseProbed {
    Evaluated(Value),
    /// The base's `nixosConfigurations` has no attribute of this name.
    NotInBase,
    /// nix could not evaluate the host at the base (nix's message).
    Failed(String),
}

/// What to evaluate at the base.
#[derive(Debug, Clone)]
pub struct BaseRequest {
    pub nix: Nix,
    /// The base as a flake reference (`git+file:///src?rev=…`, `github:o/r/<rev>`, …).
    pub flake: String,
    pub override_inputs: Vec<OverrideInput>,
    /// Concurrent `nix eval` processes (at least 1).
    pub jobs: usize,
    /// Hosts per process (at least 1), as the head's systems are batched
    /// (`EvalRequest::batch_size`).
    pub batch: usize,
}

/// The `--apply` expression for the hosts `attrs` at the base: each host's probes, or `null`
/// when the base does not have it.
pub fn base_expr(attrs: &[String]) -> String {
    let list = attrs.iter().map(|n| nix_string(n)).collect::<Vec<_>>().join(" ");
    format!(
        "configs: let probes = {}; in builtins.listToAttrs (map (name: {{ inherit name; value = \
         if configs ? ${{name}} then probes configs.${{name}} else null; }}) [ {list} ])",
        probes_function()
    )
}

/// Evaluates the probes of `hosts` at the base, in batches spread over the jobs. After a failed
/// batch, one evaluation of the base's host names tells a base that cannot be used at all (every
/// host gets its message, nothing more is evaluated) from hosts that fail at the base: those are
/// evaluated one by one, so one host that does not evaluate costs only itself.
pub async fn evaluate_base(req: &BaseRequest, hosts: &[String]) -> BTreeMap<String, BaseProbed> {
    let batches: Vec<Vec<String>> = hosts.chunks(req.batch.max(1)).map(<[String]>::to_vec).collect();
    let results = bounded(req.jobs, batches, |batch| async move {
        let result = eval_batch(req, &batch).await;
        (batch, result)
    })
    .await;
    let mut out = BTreeMap::new();
    let mut retry = Vec::new();
    for (batch, result) in results {
        match result {
            Ok(mut raw) => {
                for host in batch {
                    out.insert(host.clone(), take(&mut raw, &host));
                }
            }
            Err(message) if batch.len() == 1 => {
                out.extend(batch.into_iter().map(|host| (host, BaseProbed::Failed(message.clone()))));
            }
            Err(_) => retry.extend(batch),
        }
    }
    if !retry.is_empty()
        && let Err(message) = eval_base::<Vec<String>>(req, "builtins.attrNames".into()).await
    {
        out.extend(retry.into_iter().map(|host| (host, BaseProbed::Failed(message.clone()))));
        return out;
    }
    let alone = bounded(req.jobs, retry, |host| async move {
        let result = eval_batch(req, std::slice::from_ref(&host)).await;
        (host, result)
    })
    .await;
    for (host, result) in alone {
        let probed = match result {
            Ok(mut raw) => take(&mut raw, &host),
            Err(message) => BaseProbed::Failed(message),
        };
        out.insert(host, probed);
    }
    out
}

fn take(raw: &mut BTreeMap<String, Value>, host: &str) -> BaseProbed {
    match raw.remove(host) {
        Some(Value::Null) => BaseProbed::NotInBase,
        Some(value) => BaseProbed::Evaluated(value),
        None => BaseProbed::Failed("nix returned no probes for this host".into()),
    }
}

/// One `nix eval` of a batch at the base.
async fn eval_batch(req: &BaseRequest, batch: &[String]) -> Result<BTreeMap<String, Value>, String> {
    eval_base(req, base_expr(batch)).await
}

/// `nix eval <base>#nixosConfigurations --apply EXPR`; the error is the message to show.
async fn eval_base<T: DeserializeOwned>(req: &BaseRequest, apply: String) -> Result<T, String> {
    let command = req
        .nix
        .eval(format!("{}#nixosConfigurations", req.flake))
        .override_inputs(&req.override_inputs)
        .apply(apply);
    command.run_json().await.map_err(|err| err.nix_message().map_or_else(|| err.to_string(), str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_expression_names_the_hosts_and_embeds_the_probes() {
        let expr = base_expr(&["web".into(), "db\"x".into()]);
        assert!(expr.starts_with("configs: let probes = (\n"), "{expr}");
        assert!(expr.ends_with("[ \"web\" \"db\\\"x\" ])"), "{expr}");
        assert!(expr.contains("if configs ? ${name} then probes configs.${name} else null;"), "{expr}");
    }
}
