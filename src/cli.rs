//! Command-line types (clap). They carry no logic: each command converts into a request.
