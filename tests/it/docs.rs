//! The docs cannot drift from the code: every module option (read from `nix/module.nix` and
//! `nix/runner.nix` by the real nix) and every settings key has its entry in
//! `docs/configuration.md`.

use std::process::Command;

use crate::support::nix::{nixpkgs_lib, repo};

fn configuration_md() -> String {
    std::fs::read_to_string(repo().join("docs/configuration.md")).expect("docs/configuration.md")
}

/// The names of the options `module` (a Nix expression) declares under `prefix`, read by the
/// real nix; submodule internals (`_module.*`) are left out.
fn option_names(module: &str, prefix: &str) -> Vec<String> {
    let expr = format!(
        "let lib = import {lib}/lib; \
         eval = lib.evalModules {{ modules = [ {module} {{ _module.check = false; _module.args.pkgs = {{}}; }} ]; }}; \
         in map (o: o.name) (lib.optionAttrSetToDocList eval.options)",
        lib = nixpkgs_lib().display(),
    );
    let output = Command::new("nix")
        .args(["--extra-experimental-features", "nix-command flakes", "eval", "--json", "--impure", "--expr"])
        .arg(&expr)
        .env("NIX_CONFIG", "substituters =")
        .output()
        .expect("run nix (install Debian's nix-bin)");
    assert!(output.status.success(), "nix eval failed: {}", String::from_utf8_lossy(&output.stderr));
    let names: Vec<String> = serde_json::from_slice(&output.stdout).expect("option names");
    names.into_iter().filter(|n| n.starts_with(prefix) && !n.contains("._module.")).collect()
}

#[test]
fn every_module_option_is_documented() {
    let options = option_names(&repo().join("nix/module.nix").display().to_string(), "nixprox.");
    assert!(options.len() > 40, "the module declares its options: {options:?}");
    let docs = configuration_md();
    // The docs call `<name>` a slot.
    let missing: Vec<&String> = options
        .iter()
        .filter(|name| !docs.contains(&format!("`{}`", name.replace("<name>", "<slot>"))))
        .collect();
    assert!(missing.is_empty(), "options missing from docs/configuration.md: {missing:?}");
}

#[test]
fn every_runner_option_is_documented() {
    let runner = format!("(import {} {{ self = {{}}; }})", repo().join("nix/runner.nix").display());
    let options = option_names(&runner, "services.nixprox-runner.");
    assert!(options.len() >= 15, "the runner module declares its options: {options:?}");
    let docs = configuration_md();
    let missing: Vec<&String> = options.iter().filter(|name| !docs.contains(&format!("`{name}`"))).collect();
    assert!(missing.is_empty(), "runner options missing from docs/configuration.md: {missing:?}");
}

#[test]
fn every_settings_key_is_documented() {
    let settings = serde_json::to_value(nixprox::config::Settings::default()).expect("settings serialise");
    let docs = configuration_md();
    let mut missing = Vec::new();
    for (section, keys) in settings.as_object().expect("sections") {
        assert!(docs.contains(&format!("### `{section}`")), "section `{section}` is not documented");
        for key in keys.as_object().expect("keys").keys() {
            if !docs.contains(&format!("| `{key}` |")) {
                missing.push(format!("{section}.{key}"));
            }
        }
    }
    assert!(missing.is_empty(), "settings keys missing from docs/configuration.md: {missing:?}");
}

/// The privileges a Proxmox VE version knows (`fixtures/pve-privileges/pve<major>.txt`, taken
/// from pve-access-control's `PVE/AccessControl.pm` of that version; the header cites it).
fn known_privileges(major: u32) -> Vec<String> {
    let text = std::fs::read_to_string(repo().join(format!("fixtures/pve-privileges/pve{major}.txt")))
        .expect("privilege list");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.trim().to_string())
        .collect()
}

/// Issue 22: `pveum` rejects a privilege the running version does not know, so every role line
/// in the docs holds only privileges of the version it is for: a line with `VM.Monitor` is for
/// PVE 8 and must say so just above it, one with `VM.GuestAgent.*` for PVE 9 likewise, and a
/// line with neither must work on both. The guide gives a ready `NixproxApply` line for each.
#[test]
fn every_role_line_holds_only_privileges_its_version_knows() {
    let (eight, nine) = (known_privileges(8), known_privileges(9));
    assert!(eight.contains(&"VM.Monitor".to_string()) && !nine.contains(&"VM.Monitor".to_string()));
    assert!(
        nine.contains(&"VM.GuestAgent.FileRead".to_string())
            && !eight.iter().any(|p| p.contains("GuestAgent"))
    );
    let mut checked = 0;
    let mut ready = (false, false);
    let mut pages: Vec<String> = std::fs::read_dir(repo().join("docs"))
        .expect("docs")
        .map(|e| e.expect("entry").path().display().to_string())
        .filter(|p| p.ends_with(".md"))
        .collect();
    pages.push(repo().join("README.md").display().to_string());
    for page in pages {
        let text = std::fs::read_to_string(&page).expect("page");
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let Some(rest) = line.find("pveum role ").map(|at| &line[at..]) else { continue };
            let Some(privs) = rest.split("--privs '").nth(1).and_then(|r| r.split('\'').next()) else {
                continue;
            };
            if privs.contains('<') {
                continue; // a placeholder the preflight prints, not a line to run
            }
            let privs: Vec<&str> = privs.split(',').collect();
            let context = lines[i.saturating_sub(4)..i].join("\n");
            let for_eight = privs.contains(&"VM.Monitor");
            let for_nine = privs.iter().any(|p| p.starts_with("VM.GuestAgent."));
            assert!(!(for_eight && for_nine), "{page}: `{line}` mixes PVE 8 and PVE 9 names");
            let versions: Vec<(u32, &Vec<String>)> = match (for_eight, for_nine) {
                (true, _) => vec![(8, &eight)],
                (_, true) => vec![(9, &nine)],
                _ => vec![(8, &eight), (9, &nine)],
            };
            for (major, known) in versions {
                let unknown: Vec<&&str> = privs.iter().filter(|p| !known.iter().any(|k| k == **p)).collect();
                assert!(unknown.is_empty(), "{page}: `{line}`: PVE {major} rejects {unknown:?}");
                if for_eight || for_nine {
                    assert!(
                        context.contains(&format!("Proxmox VE {major}")),
                        "{page}: the line for PVE {major} does not say so just above it:\n{context}\n{line}"
                    );
                }
            }
            if rest.starts_with("pveum role add NixproxApply") {
                ready = (ready.0 || for_eight, ready.1 || for_nine);
            }
            checked += 1;
        }
    }
    assert!(checked >= 3, "{checked} role lines");
    assert_eq!(ready, (true, true), "the guide gives a NixproxApply line for PVE 8 and for PVE 9");
}

/// Every Nix block of the docs that is a whole flake (it has `inputs` and `outputs`) parses and
/// has only a flake's top-level attributes (issue 22: the guide's runner snippet was not a
/// valid flake).
#[test]
fn every_flake_in_the_docs_is_a_valid_flake() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut checked = 0;
    for page in ["docs/guide.md", "docs/configuration.md", "docs/migrate.md", "docs/ci.md", "README.md"] {
        let text = std::fs::read_to_string(repo().join(page)).expect(page);
        let mut block: Option<String> = None;
        for line in text.lines() {
            match (&mut block, line.trim_start()) {
                (None, l) if l.starts_with("```nix") => block = Some(String::new()),
                (Some(b), l) if l.starts_with("```") => {
                    let nix = std::mem::take(b);
                    block = None;
                    if !(nix.contains("inputs") && nix.contains("outputs")) {
                        continue;
                    }
                    let file = dir.path().join(format!("flake-{checked}.nix"));
                    std::fs::write(&file, &nix).expect("write");
                    let output = Command::new("nix")
                        .args([
                            "--extra-experimental-features",
                            "nix-command flakes",
                            "eval",
                            "--json",
                            "--impure",
                            "--expr",
                        ])
                        .arg(format!("builtins.attrNames (import {})", file.display()))
                        .env("NIX_CONFIG", "substituters =")
                        .output()
                        .expect("run nix");
                    assert!(
                        output.status.success(),
                        "{page}: not a flake:\n{nix}\n{}",
                        String::from_utf8_lossy(&output.stderr)
                    );
                    let names: Vec<String> = serde_json::from_slice(&output.stdout).expect("names");
                    let odd: Vec<&String> = names
                        .iter()
                        .filter(|n| !["description", "inputs", "outputs", "nixConfig"].contains(&n.as_str()))
                        .collect();
                    assert!(odd.is_empty(), "{page}: a flake has no top-level {odd:?}:\n{nix}");
                    checked += 1;
                }
                (Some(b), _) => {
                    b.push_str(line.strip_prefix("   ").unwrap_or(line));
                    b.push('\n');
                }
                _ => {}
            }
        }
    }
    assert!(checked >= 3, "{checked} flakes found in the docs");
}
