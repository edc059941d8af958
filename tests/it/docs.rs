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
