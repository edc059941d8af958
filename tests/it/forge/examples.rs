//! The example workflows keep secrets where they belong (docs/ci.md, "Security model"): no job
//! that runs pull-request code (plan on `pull_request`, drift on the same runner) can read the
//! apply token or the deploy key, and apply runs on a runner of its own. actionlint and zizmor
//! check the rest (`scripts/lint-workflows`).

use serde_json::Value;

use crate::support::nix::repo;

fn workflow(path: &str) -> (String, Value) {
    let text = std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let yaml: Value = yaml_serde::from_str(&text).unwrap_or_else(|e| panic!("parse {path}: {e}"));
    (text, yaml)
}

fn labels(job: &Value) -> Vec<String> {
    job["runs-on"]
        .as_array()
        .expect("runs-on is a list")
        .iter()
        .filter_map(|l| l.as_str().map(String::from))
        .collect()
}

#[test]
fn pull_request_jobs_never_see_the_apply_secrets() {
    for forge in ["github", "forgejo"] {
        let mut apply_labels = Vec::new();
        for name in ["plan", "drift", "apply"] {
            let path = format!("examples/{forge}/{name}.yml");
            let (text, yaml) = workflow(&path);
            let jobs = yaml["jobs"].as_object().expect("jobs");
            for (job_name, job) in jobs {
                let labels = labels(job);
                if name == "apply" {
                    assert!(
                        labels.contains(&"nixprox-apply".to_string()),
                        "{path}: {job_name} runs on {labels:?}"
                    );
                    apply_labels.extend(labels);
                } else {
                    assert!(
                        labels.contains(&"nixprox-plan".to_string()),
                        "{path}: {job_name} runs on {labels:?}"
                    );
                    assert!(
                        !labels.contains(&"nixprox-apply".to_string()),
                        "{path}: {job_name} on the apply runner"
                    );
                }
            }
            if name != "apply" {
                for secret in ["PROXMOX_APPLY_TOKEN", "secrets.NIXPROX_SSH_KEY"] {
                    assert!(!text.contains(secret), "{path} reads `{secret}`");
                }
            }
        }
        assert!(!apply_labels.is_empty());
    }
    // On Forgejo, same-repository pull requests receive repository secrets: the write token and
    // the deploy key come from the apply runner itself, never from `secrets.`.
    let (text, _) = workflow("examples/forgejo/apply.yml");
    assert!(!text.contains("secrets.PROXMOX") && !text.contains("secrets.NIXPROX_SSH_KEY"), "{text}");
    // Drift probes with the plan runner's probe key (nixosModules.runner's `sshKeyFile` of the
    // plan role), never with a key from the forge's secrets, nor the deploy key.
    for forge in ["github", "forgejo"] {
        let (text, _) = workflow(&format!("examples/{forge}/drift.yml"));
        assert!(text.contains("args: --probe") && !text.contains("secrets.NIXPROX"), "{forge} drift");
    }
}
