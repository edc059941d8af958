use super::*;

#[test]
fn eval_argv_is_pure_json_and_never_writes_the_lock_file() {
    let command = Nix { program: "/usr/bin/nix".into(), env: vec![] }
        .eval("path:/src#nixosConfigurations")
        .apply("c: builtins.attrNames c")
        .override_inputs(&[
            OverrideInput::new("nixpkgs-lib", "path:/shared/nixpkgs-lib"),
            OverrideInput::new("nixprox", "path:/tmp/nixprox"),
        ]);
    assert_eq!(
        command.argv(),
        [
            "/usr/bin/nix",
            "--extra-experimental-features",
            "nix-command flakes",
            "--option",
            "allow-import-from-derivation",
            "false",
            "eval",
            "--json",
            "path:/src#nixosConfigurations",
            "--apply",
            "c: builtins.attrNames c",
            "--override-input",
            "nixpkgs-lib",
            "path:/shared/nixpkgs-lib",
            "--override-input",
            "nixprox",
            "path:/tmp/nixprox",
            "--no-write-lock-file",
        ]
    );
    assert!(!command.argv().iter().any(|a| a == "--impure"));
    assert_eq!(command.describe(), "nix eval path:/src#nixosConfigurations");
}

#[test]
fn extra_options_come_before_the_subcommand() {
    let argv = Nix::default().eval(".#x").option("substituters", "").argv();
    assert_eq!(
        argv,
        [
            "nix",
            "--extra-experimental-features",
            "nix-command flakes",
            "--option",
            "allow-import-from-derivation",
            "false",
            "--option",
            "substituters",
            "",
            "eval",
            "--json",
            ".#x",
            "--no-write-lock-file"
        ]
    );
}

#[test]
fn build_argv_is_pure_json_with_the_same_overrides_as_eval() {
    let command = Nix::default()
        .build("path:/src/lab#nixosConfigurations.\"web\".config.system.build.toplevel")
        .option("sandbox", "false")
        .override_inputs(&[OverrideInput::new("nixpkgs", "path:/n")]);
    assert_eq!(
        command.argv().join(" "),
        "nix --extra-experimental-features nix-command flakes --option allow-import-from-derivation false --option sandbox false build --json --no-link path:/src/lab#nixosConfigurations.\"web\".config.system.build.toplevel --override-input nixpkgs path:/n --no-write-lock-file"
    );
    assert_eq!(
        command.describe(),
        "nix build path:/src/lab#nixosConfigurations.\"web\".config.system.build.toplevel"
    );
    let json = r#"[{"drvPath":"/nix/store/a.drv","outputs":{"out":"/nix/store/b-nixos-system-web"}}]"#;
    assert_eq!(parse_build_json(json).as_deref(), Ok("/nix/store/b-nixos-system-web"));
    assert_eq!(
        parse_build_json("[]").map_err(|e| e.to_string()),
        Err("`nix build --json` printed no `outputs.out`: []".to_string())
    );
    assert!(parse_build_json("warning: x").is_err());
}

#[test]
fn copy_argv_has_no_flake_options_and_its_own_env() {
    let command = Nix::default()
        .with_env("NIX_CONFIG", "substituters =")
        .copy_to("ssh-ng://root@127.0.0.5", vec!["/nix/store/b-sys".into()])
        .override_inputs(&[OverrideInput::new("ignored", "path:/x")])
        .env_var("NIX_SSHOPTS", "-p 2222");
    assert_eq!(
        command.argv().join(" "),
        "nix --extra-experimental-features nix-command flakes copy --to ssh-ng://root@127.0.0.5 --no-check-sigs /nix/store/b-sys"
    );
    assert_eq!(
        command.env(),
        [("NIX_CONFIG".into(), "substituters =".into()), ("NIX_SSHOPTS".into(), "-p 2222".into())]
    );
    assert!(!command.clone().check_sigs(true).argv().contains(&"--no-check-sigs".to_string()));
    assert_eq!(command.describe(), "nix copy --to ssh-ng://root@127.0.0.5");
}

#[test]
fn flake_metadata_argv() {
    let argv = Nix::default()
        .flake_metadata("path:/src/lab")
        .override_inputs(&[OverrideInput::new("nixpkgs-lib", "path:/l")])
        .argv();
    assert_eq!(
        argv.join(" "),
        "nix --extra-experimental-features nix-command flakes --option allow-import-from-derivation false flake metadata --json path:/src/lab --override-input nixpkgs-lib path:/l --no-write-lock-file"
    );
}

#[test]
fn override_inputs_are_parsed_once_and_checked() {
    let pairs = |values: &[&str]| {
        OverrideInput::parse_pairs(&values.iter().map(|v| v.to_string()).collect::<Vec<_>>())
    };
    assert_eq!(
        pairs(&["nixpkgs", "path:/n", "lib", "path:/l"]),
        Ok(vec![OverrideInput::new("nixpkgs", "path:/n"), OverrideInput::new("lib", "path:/l")])
    );
    assert_eq!(pairs(&[]), Ok(vec![]));
    assert_eq!(pairs(&["nixpkgs"]), Err(OverrideInputError::MissingRef("nixpkgs".into())));
    assert_eq!(pairs(&["", "path:/n"]), Err(OverrideInputError::EmptyName));
    assert_eq!(pairs(&["nixpkgs", " "]), Err(OverrideInputError::EmptyRef("nixpkgs".into())));
}

#[test]
fn versions_of_nix_lix_and_determinate() {
    let v = NixVersion::parse("nix (Nix) 2.8.0\n").expect("nix");
    assert_eq!((v.major, v.minor, v.patch), (2, 8, 0));
    assert_eq!(v.raw, "nix (Nix) 2.8.0");
    assert_eq!(v.to_string(), "2.8.0");
    let v = NixVersion::parse("nix (Lix, like Nix) 2.91.1").expect("lix");
    assert_eq!((v.major, v.minor, v.patch), (2, 91, 1));
    let v = NixVersion::parse("nix (Determinate Nix 3.6.2) 2.29.0").expect("determinate");
    assert_eq!((v.major, v.minor, v.patch), (2, 29, 0));
    let v = NixVersion::parse("nix (Nix) 2.25pre20241101_dirty").expect("pre");
    assert_eq!((v.major, v.minor), (2, 25));
    assert!(v.is_supported());
    assert!(!NixVersion::parse("nix (Nix) 2.3.16").expect("old").is_supported());
    assert_eq!(NixVersion::parse("no version here"), None);
}

#[test]
fn stderr_keeps_the_error_and_drops_the_noise() {
    let stderr = "warning: Git tree '/src' is dirty\nwarning: not writing modified lock file of flake 'path:/x':\n• Added input 'nixprox':\n    'path:/tmp/p' (2026-11-25)\n\u{1b}[31;1merror:\u{1b}[0m The option `nixprox.vm.corse' does not exist. Definition values:\n       - In `/nix/store/abc-source/flake.nix': 4\n\n(use '--show-trace' to show detailed location information)\n";
    assert_eq!(
        trim_stderr(stderr),
        "error: The option `nixprox.vm.corse' does not exist. Definition values:\n       - In `/nix/store/abc-source/flake.nix': 4"
    );
    assert_eq!(trim_stderr("warning: dirty\nsomething odd\n"), "something odd");
}

#[test]
fn nix_strings_are_escaped() {
    assert_eq!(nix_string("web"), "\"web\"");
    assert_eq!(nix_string("a\"b\\c${x}"), "\"a\\\"b\\\\c\\${x}\"");
}
