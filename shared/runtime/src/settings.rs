//! Parsing a service's settings, and checking a deployment's settings
//! without starting the service.
//!
//! Every service takes flags and environment variables of the same names
//! (clap). A deployment file (docker-compose.yml, a Kubernetes manifest)
//! can drift from the code: a renamed variable is silently ignored, a
//! value out of range fails only when the container starts. With
//! `--check-settings`, a binary parses its flags and environment as it
//! would to start, refuses any environment variable that is none of its
//! settings, prints what it parsed and exits, so a test can run each
//! service's exact command and environment from the deployment file
//! through it.

use std::fmt::Debug;

use clap::{Arg, ArgAction, Parser};

const CHECK: &str = "check-settings";

/// Variables any process may carry that are not settings.
const NOT_SETTINGS: &[&str] = &[
    "PATH",
    "HOME",
    "HOSTNAME",
    "USER",
    "LANG",
    "TERM",
    "TZ",
    "PWD",
    "SHLVL",
    "_",
    "RUST_BACKTRACE",
    "FAILPOINTS",
];

/// Parses `S` from the command line and the environment; with
/// `--check-settings`, checks them instead, prints them and exits (0 if
/// they are sound, 2 if not).
pub fn parse<S: Parser + Debug>() -> S {
    let matches = S::command()
        .arg(Arg::new(CHECK).long(CHECK).action(ArgAction::SetTrue).help(
            "Check the flags and environment, print the settings and exit \
                     (refuses environment variables that are not settings)",
        ))
        .get_matches();
    let settings = S::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    if matches.get_flag(CHECK) {
        let unknown = unknown_variables::<S>(std::env::vars().map(|(name, _)| name));
        if !unknown.is_empty() {
            eprintln!(
                "error: these environment variables are not settings of this service: {}",
                unknown.join(", ")
            );
            std::process::exit(2);
        }
        println!("{settings:#?}");
        std::process::exit(0);
    }
    settings
}

/// The names in `present` that are neither settings of `S` nor variables
/// every process may carry.
fn unknown_variables<S: Parser>(present: impl Iterator<Item = String>) -> Vec<String> {
    let command = S::command();
    let known: Vec<String> = command
        .get_arguments()
        .filter_map(Arg::get_env)
        .map(|name| name.to_string_lossy().into_owned())
        .collect();
    let mut unknown: Vec<String> = present
        .filter(|name| !known.contains(name) && !NOT_SETTINGS.contains(&name.as_str()))
        .filter(|name| !name.starts_with("LC_"))
        .collect();
    unknown.sort();
    unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Sample {
        #[arg(long, env = "SAMPLE_PORT", default_value_t = 1)]
        port: u16,
    }

    #[test]
    fn only_settings_and_common_variables_pass() {
        let present = ["SAMPLE_PORT", "PATH", "LC_ALL", "SAMPLE_PROT"].map(String::from);
        assert_eq!(
            unknown_variables::<Sample>(present.into_iter()),
            vec!["SAMPLE_PROT".to_owned()]
        );
    }
}
