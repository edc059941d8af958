//! Integration tests of the flake inventory against the real `nix` binary.
