//! Faultline's front door, behind the `./faultline` shim:
//!
//! - `run`: the deployed topology ([`ClusterSpec::standard`]) as local
//!   processes at the fixed ports, until Ctrl-C or SIGTERM;
//! - `demo`: the same, then the scripted tour of faults
//!   (`faultline_load::demo`), and stop;
//! - `test`: build every service and run the whole suite with nextest;
//! - `load`: release build, then the named load scenarios and the table of
//!   ratios;
//! - `crate-graph`: the picture of the crates and their dependencies;
//! - `nats-auth`, `compose-env` and `certs`: the deployments' NATS users,
//!   an `.env` of fresh secrets for docker-compose, and TLS certificates
//!   ([`deployment_secrets`]).
//!
//! Each first makes sure the machine has what it needs
//! ([`prerequisites`]), installing it when running as root. The cluster
//! itself is started by `faultline-cluster`, the same launcher the load
//! scenarios and the system tests use.
//!
//! Environment: `FAULTLINE_RELEASE=1` runs a release build;
//! `FAULTLINE_PORT_OFFSET=N` adds N to every port, to run a second copy
//! beside the first; `DATABASE_URL` overrides the database (default:
//! `faultline` on the PostgreSQL found or started); `FAULTLINE_BIN_DIR`
//! runs the binaries found there instead of building.

mod crate_graph;
mod deployment_secrets;
mod prerequisites;
mod suite;
mod system;

use clap::{Parser, Subcommand};
use faultline_cluster::ClusterSpec;

/// Faultline: fault recovery in distributed systems, as local processes.
#[derive(Debug, Parser)]
#[command(name = "faultline", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the whole system: three workers (weights 1, 2, 3), two
    /// load-balancers, two health-monitors, an active and a standby
    /// coordinator and a gateway on :8080, on a three-node NATS cluster;
    /// Ctrl-C stops them all.
    Run(Topology),
    /// The same, then a scripted tour: traffic, a worker killed and
    /// restarted, transfers while the active coordinator is killed;
    /// prints what happened, and stops.
    Demo(Topology),
    /// Build every service and run the whole test suite (arguments go to
    /// `cargo nextest run`).
    Test {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        nextest_args: Vec<String>,
    },
    /// Release build, then run load-tests/scenarios/NAME.toml for each
    /// name ("all": every one but smoke), writing the reports and the
    /// table of ratios to load-tests/results/.
    Load {
        #[arg(required = true)]
        scenarios: Vec<String>,
    },
    /// Draw crate-graph.svg, the workspace's crates and their
    /// dependencies, from cargo metadata.
    CrateGraph {
        /// Only check that the committed picture is current.
        #[arg(long)]
        check: bool,
    },
    /// Write the deployments' NATS users (infra/nats/auth.conf, one per
    /// instance, and Kubernetes' callout block) from the code.
    NatsAuth {
        /// Only check that the committed files are current.
        #[arg(long)]
        check: bool,
    },
    /// Print the commands that create the NATS auth callout's Secret for
    /// Kubernetes: a fresh issuer nkey and the callout's password.
    CalloutKeys,
    /// Print an .env file with fresh secrets for docker-compose:
    /// `./faultline compose-env > .env`.
    ComposeEnv,
    /// Write a CA of the deployment's own and the NATS nodes' certificate
    /// (infra/tls by default), for compose and Kubernetes.
    Certs {
        /// Where to write them.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
}

/// What `run` and `demo` may change in the deployed topology.
#[derive(Debug, clap::Args)]
struct Topology {
    /// NATS nodes: 3 (a JetStream cluster that survives the loss of any
    /// one node) or 1 (lighter, for small machines; NATS is then a single
    /// point of failure).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=5))]
    nats_nodes: u8,
}

impl Topology {
    fn spec(&self) -> ClusterSpec {
        ClusterSpec {
            nats_nodes: usize::from(self.nats_nodes),
            ..ClusterSpec::standard()
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(topology) => system::run(topology.spec(), system::Then::WaitForSignal),
        Command::Demo(topology) => system::run(topology.spec(), system::Then::Demo),
        Command::Test { nextest_args } => suite::test(&nextest_args),
        Command::Load { scenarios } => suite::load(&scenarios),
        Command::CrateGraph { check } => crate_graph::run(check),
        Command::NatsAuth { check } => deployment_secrets::nats_auth(check),
        Command::CalloutKeys => deployment_secrets::callout_keys(),
        Command::ComposeEnv => deployment_secrets::compose_env(),
        Command::Certs { out } => deployment_secrets::certs(out),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("faultline: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
