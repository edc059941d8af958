//! The job summary (`$GITHUB_STEP_SUMMARY`, appended) and the step outputs (`$GITHUB_OUTPUT`:
//! `plan-id`, `has-changes`, `counts` as JSON, `summary`). Multi-line values use the
//! `name<<DELIMITER` form with a delimiter that provably does not occur in the value, so no
//! plan text can inject another output.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The most a step's job summary may hold: GitHub drops a larger one ("upload aborted").
pub const STEP_SUMMARY_LIMIT: usize = 1024 * 1024;

/// The files the runner reads back after the step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CiFiles {
    pub step_summary: Option<PathBuf>,
    pub output: Option<PathBuf>,
}

impl CiFiles {
    /// Reads `GITHUB_STEP_SUMMARY` and `GITHUB_OUTPUT` (Forgejo runners set the same names).
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> CiFiles {
        let path = |name: &str| env(name).filter(|v| !v.trim().is_empty()).map(PathBuf::from);
        CiFiles { step_summary: path("GITHUB_STEP_SUMMARY"), output: path("GITHUB_OUTPUT") }
    }
}

/// What a plan hands to the next steps of the workflow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanOutputs {
    pub plan_id: String,
    pub has_changes: bool,
    /// Per action kind (`create`, `update`, `destroy`, …): how many.
    pub counts: BTreeMap<String, usize>,
    /// One line, e.g. `2 to create, 1 to update`.
    pub summary: String,
}

/// Appends `markdown` to the job summary file.
pub fn append_step_summary(path: &Path, markdown: &str) -> std::io::Result<()> {
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    file.write_all(markdown.as_bytes())?;
    if !markdown.ends_with('\n') {
        file.write_all(b"\n")?;
    }
    Ok(())
}

/// Appends the plan's outputs to the `$GITHUB_OUTPUT` file.
pub fn write_outputs(path: &Path, outputs: &PlanOutputs) -> std::io::Result<()> {
    let counts = serde_json::to_string(&outputs.counts).map_err(std::io::Error::other)?;
    let text = format_outputs(&[
        ("plan-id", outputs.plan_id.as_str()),
        ("has-changes", if outputs.has_changes { "true" } else { "false" }),
        ("counts", counts.as_str()),
        ("summary", outputs.summary.as_str()),
    ]);
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    file.write_all(text.as_bytes())
}

/// Formats `name<<DELIM\nvalue\nDELIM\n` for every pair.
pub fn format_outputs(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (name, value) in pairs {
        let delimiter = delimiter_for(value);
        out.push_str(&format!("{name}<<{delimiter}\n{value}\n{delimiter}\n"));
    }
    out
}

/// A delimiter derived from the value's hash, so the value cannot contain it; a counter makes
/// sure even if it somehow does.
fn delimiter_for(value: &str) -> String {
    let digest = hex::encode(Sha256::digest(value.as_bytes()));
    let mut n = 0u32;
    loop {
        let candidate = format!("NIXPROX_EOF_{}_{n}", &digest[..16]);
        if !value.lines().any(|l| l.trim_end_matches('\r') == candidate) {
            return candidate;
        }
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Vec<(String, String)> {
        // The runner's reading of the file: a `name<<D` line, lines up to a line equal to `D`.
        let mut out = Vec::new();
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            let (name, delim) = line.split_once("<<").expect("heredoc form");
            let mut value = Vec::new();
            for l in lines.by_ref() {
                if l == delim {
                    break;
                }
                value.push(l);
            }
            out.push((name.to_string(), value.join("\n")));
        }
        out
    }

    #[test]
    fn outputs_survive_hostile_values() {
        let hostile = "line\nhas-changes<<EOF\nfalse\nEOF\nNIXPROX_EOF_x_0";
        let text = format_outputs(&[("summary", hostile), ("plan-id", "p1")]);
        assert_eq!(
            parse(&text),
            vec![("summary".to_string(), hostile.to_string()), ("plan-id".to_string(), "p1".to_string())]
        );
    }

    #[test]
    fn writes_all_outputs_and_appends_the_summary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("output");
        let counts = BTreeMap::from([("create".to_string(), 2), ("destroy".to_string(), 0)]);
        let outputs =
            PlanOutputs { plan_id: "p-abc".into(), has_changes: true, counts, summary: "2 to create".into() };
        write_outputs(&out, &outputs).expect("write");
        let parsed = parse(&std::fs::read_to_string(&out).expect("read"));
        let names: Vec<_> = parsed.iter().map(|(n, v)| format!("{n}={v}")).collect();
        assert_eq!(
            names,
            [
                "plan-id=p-abc",
                "has-changes=true",
                r#"counts={"create":2,"destroy":0}"#,
                "summary=2 to create"
            ]
        );

        let summary = dir.path().join("summary");
        append_step_summary(&summary, "# one").expect("append");
        append_step_summary(&summary, "# two\n").expect("append");
        assert_eq!(std::fs::read_to_string(&summary).expect("read"), "# one\n# two\n");
        let files = CiFiles::from_env(&|k| (k == "GITHUB_OUTPUT").then(|| "/tmp/o".to_string()));
        assert_eq!(files, CiFiles { step_summary: None, output: Some("/tmp/o".into()) });
    }
}
