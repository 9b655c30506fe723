//! The README's quick start, as a newcomer runs it: `./faultline run` is
//! started, probed over HTTP until every service is ready, used, and
//! stopped with Ctrl-C (SIGINT to its process group, as a terminal sends
//! it), leaving no process behind. It starts a NATS server of its own,
//! which lets in only its instances, each with its own password, and
//! leaves a NATS server it did not start, at NATS's usual port, running. `./faultline demo` runs its scripted tour of faults
//! to the end and reports that every promise held.
//!
//! Each run gets its own port offset (FAULTLINE_PORT_OFFSET), so nothing
//! answers at its PostgreSQL and Redis ports and the command starts its own
//! from the installed binaries, as on a fresh machine; the binaries are the
//! ones the test suite built (FAULTLINE_BIN_DIR), since a second cargo
//! build inside a running test run would race the other tests for
//! `target/`.

use std::fs::File;
use std::net::TcpListener;
use std::ops::RangeInclusive;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use faultline_cluster::{
    ClusterSpec, FREE_PORTS, NatsServer, Ports, Server, binary, database::unique_name, eventually,
    workspace_root,
};
use faultline_protocol::cluster::Role;
use serde_json::{Value, json};

/// The ports of the run command's services before the offset, from the
/// topology it starts: the gateway's HTTP port, and the admin port
/// (`/ready`) of every other service.
fn service_ports() -> Vec<(Role, u16)> {
    let fixed = Ports::Fixed { offset: 0 };
    ClusterSpec::standard()
        .members()
        .into_iter()
        .map(|(role, _, n)| (role, fixed.service(role, n)))
        .collect()
}

/// NATS's usual port, where the test runs a developer's own server, which
/// the command must leave alone.
const DEVELOPERS_NATS_PORT: u16 = 4222;

/// Every port the run command uses, before the offset: its services'
/// (the gateway's control port too), those of NATS, PostgreSQL and
/// Redis, and the developer's NATS beside them.
fn all_ports() -> Vec<u16> {
    let fixed = Ports::Fixed { offset: 0 };
    ClusterSpec::standard()
        .listeners(fixed)
        .into_iter()
        .map(|(port, _)| port)
        .chain(
            [Server::Nats, Server::Postgres, Server::Redis]
                .into_iter()
                .filter_map(|server| fixed.server(server)),
        )
        .chain([DEVELOPERS_NATS_PORT])
        .collect()
}

/// Offsets for the run test (ports 10000..15842) and for the demo test
/// (ports 16022..21942).
const RUN_OFFSETS: RangeInclusive<u16> = 5_778..=6_700;
const DEMO_OFFSETS: RangeInclusive<u16> = 11_800..=12_800;

/// An offset from `offsets` that puts every port of the run command on a
/// free port. The two tests here take disjoint ranges, so that running side
/// by side they cannot pick overlapping blocks; both stay below
/// `free_port`'s range, so no other test draws one of their ports while
/// `./faultline` is still starting.
fn free_offset(offsets: RangeInclusive<u16>) -> u16 {
    use rand::Rng as _;
    let mut rng = rand::rng();
    let ports = all_ports();
    let last_port = ports.iter().max().expect("the command uses ports") + offsets.end();
    assert!(
        last_port < FREE_PORTS.start,
        "offsets reach into free_port's range"
    );
    (0..1000)
        .map(|_| rng.random_range(offsets.clone()))
        .find(|offset| {
            ports
                .iter()
                .all(|port| TcpListener::bind(("127.0.0.1", port + offset)).is_ok())
        })
        .expect("a free set of ports")
}

/// `./faultline <command>`, in its own process group, with its output in a
/// file and a marker in its environment that every process it starts
/// inherits.
struct FaultlineCommand {
    child: Child,
    marker: String,
    offset: u16,
    output: PathBuf,
    /// Every process seen running under it.
    seen: Vec<Process>,
    _dir: tempfile::TempDir,
}

impl FaultlineCommand {
    fn start(command: &str, offset: u16) -> FaultlineCommand {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let output = dir.path().join("output.log");
        let log = File::create(&output).expect("the output file");
        let marker = unique_name("faultline-run");
        let bin_dir = binary("gateway")
            .expect("the binaries are built")
            .parent()
            .expect("a directory")
            .to_owned();
        let child = Command::new("bash")
            .arg(workspace_root().join("faultline"))
            .arg(command)
            .env("FAULTLINE_PORT_OFFSET", offset.to_string())
            .env("FAULTLINE_BIN_DIR", bin_dir)
            .env("FAULTLINE_TEST_MARKER", &marker)
            .env_remove("DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the output file"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("./faultline starts");
        FaultlineCommand {
            child,
            marker,
            offset,
            output,
            seen: Vec::new(),
            _dir: dir,
        }
    }

    fn port(&self, port: u16) -> u16 {
        port + self.offset
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }

    /// Every live process this command started: those that inherited its
    /// marker, and their descendants (Redis and PostgreSQL's workers
    /// overwrite their environment with their process titles, but keep
    /// their parents).
    fn processes(&self) -> Vec<Process> {
        let needle = format!("FAULTLINE_TEST_MARKER={}", self.marker);
        let all: Vec<Process> = std::fs::read_dir("/proc")
            .expect("/proc")
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
            .filter_map(Process::read)
            .collect();
        let marked = |pid: u32| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
                environ
                    .split(|&byte| byte == 0)
                    .any(|variable| variable == needle.as_bytes())
            })
        };
        let parent: std::collections::HashMap<u32, u32> =
            all.iter().map(|p| (p.pid, p.parent)).collect();
        all.iter()
            .filter(|process| {
                // Walk up the ancestry until a marked process or the root.
                let mut pid = process.pid;
                for _ in 0..64 {
                    if marked(pid) {
                        return true;
                    }
                    match parent.get(&pid) {
                        Some(&up) if up > 1 => pid = up,
                        _ => return false,
                    }
                }
                false
            })
            .cloned()
            .collect()
    }

    /// Ctrl-C: SIGINT to the whole foreground process group.
    fn interrupt(&self) {
        let status = Command::new("kill")
            .args(["-INT", "--", &format!("-{}", self.child.id())])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -INT failed");
    }

    /// Waits for the command to exit, noting every process it runs
    /// meanwhile (a restarted worker or coordinator included).
    async fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + limit;
        loop {
            self.note_processes();
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "./faultline did not exit within {limit:?}\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn note_processes(&mut self) {
        for process in self.processes() {
            let known = self
                .seen
                .iter()
                .any(|p| p.pid == process.pid && p.started == process.started);
            if !known {
                self.seen.push(process);
            }
        }
    }

    /// The processes it ran that are still alive once it has exited.
    async fn left_behind(&self) -> Vec<Process> {
        let alive =
            || -> Vec<Process> { self.seen.iter().filter(|p| p.is_alive()).cloned().collect() };
        // Exiting children may take a moment to be reaped.
        let gone = eventually(
            "every process it started to exit",
            Duration::from_secs(15),
            || {
                let left = alive();
                async move { left.is_empty().then_some(()) }
            },
        )
        .await;
        if gone.is_ok() { Vec::new() } else { alive() }
    }
}

impl Drop for FaultlineCommand {
    fn drop(&mut self) {
        // A failed test still stops what the command started.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-TERM", "--", &format!("-{}", self.child.id())])
                .status();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("----- output of ./faultline -----\n{}", self.output());
        }
    }
}

/// One process as /proc shows it; the start time tells a pid reused later
/// from the same process.
#[derive(Debug, Clone)]
struct Process {
    pid: u32,
    parent: u32,
    started: u64,
    command: String,
}

impl Process {
    /// Reads a live (not zombie) process.
    fn read(pid: u32) -> Option<Process> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // After the command name in parentheses: state, ppid, ... and the
        // start time as the 20th field.
        let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split(' ').collect();
        if fields.first() == Some(&"Z") {
            return None;
        }
        let command = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        Some(Process {
            pid,
            parent: fields.get(1)?.parse().ok()?,
            started: fields.get(19)?.parse().ok()?,
            command: String::from_utf8_lossy(&command).replace('\0', " "),
        })
    }

    /// Whether it runs `program` (its executable's name, not a word of
    /// its arguments: every service has a `--nats-servers` flag).
    fn runs(&self, program: &str) -> bool {
        self.command
            .split_whitespace()
            .next()
            .is_some_and(|executable| executable.rsplit('/').next() == Some(program))
    }

    fn is_alive(&self) -> bool {
        Process::read(self.pid).is_some_and(|now| now.started == self.started)
    }
}

async fn get(http: &reqwest::Client, url: &str) -> Option<(u16, Value)> {
    let response = http.get(url).send().await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.json().await.unwrap_or(Value::Null)))
}

async fn post(http: &reqwest::Client, url: &str, body: &Value, key: Option<&str>) -> (u16, Value) {
    let mut request = http.post(url).json(body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.expect("the gateway answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON answer"))
}

#[tokio::test]
async fn run_starts_everything_serves_and_ctrl_c_stops_exactly_what_it_started() {
    // A developer's NATS server already runs at NATS's usual port;
    // PostgreSQL and Redis do not run at theirs.
    let offset = free_offset(RUN_OFFSETS);
    let mut existing =
        NatsServer::start_on(DEVELOPERS_NATS_PORT + offset).expect("nats-server starts");
    let mut run = FaultlineCommand::start("run", offset);

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client");
    let gateway = format!("http://127.0.0.1:{}", run.port(8080));

    // Ready: every service says so, and a call goes all the way through.
    eventually(
        "every service to be ready",
        Duration::from_secs(180),
        || {
            let http = &http;
            let gateway = &gateway;
            let urls: Vec<String> = std::iter::once(format!("{gateway}/ready"))
                .chain(
                    service_ports()
                        .into_iter()
                        .filter(|(role, _)| *role != Role::Gateway)
                        .map(|(_, port)| format!("http://127.0.0.1:{}/ready", run.port(port))),
                )
                .collect();
            async move {
                for url in &urls {
                    if get(http, url).await?.0 != 200 {
                        return None;
                    }
                }
                let (status, _) = post(
                    http,
                    &format!("{gateway}/v1/call"),
                    &json!({"op": "echo", "message": "hi"}),
                    None,
                )
                .await;
                (status == 200).then_some(())
            }
        },
    )
    .await
    .unwrap_or_else(|error| panic!("{error}\n{}", run.output()));
    // The command's own readiness check may finish a moment after ours.
    eventually(
        "the command to say it is up",
        Duration::from_secs(30),
        || {
            let up = run.output().contains("Faultline is up");
            async move { up.then_some(()) }
        },
    )
    .await
    .unwrap_or_else(|error| panic!("{error}\n{}", run.output()));
    let output = run.output();
    assert!(
        output.contains("[worker-1] "),
        "log lines are prefixed: {output}"
    );
    assert!(output.contains("with a user per instance"), "{output}");

    // Exercise it as the printed examples do.
    let (status, body) = post(
        &http,
        &format!("{gateway}/v1/call"),
        &json!({"op": "echo", "message": "hello"}),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["message"], "hello", "{body}");
    for (id, balance) in [("newcomer-alice", 1000), ("newcomer-bob", 0)] {
        let (status, body) = post(
            &http,
            &format!("{gateway}/v1/accounts"),
            &json!({"id": id, "balance": balance}),
            None,
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = post(
        &http,
        &format!("{gateway}/v1/transfers"),
        &json!({"from": "newcomer-alice", "to": "newcomer-bob", "amount": 250}),
        Some("newcomer-1"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Phase two runs on after the answer: the money arrives moments later.
    eventually("the money to arrive", Duration::from_secs(10), || async {
        let (_, bob) = get(&http, &format!("{gateway}/v1/accounts/newcomer-bob")).await?;
        (bob["balance"] == 250).then_some(())
    })
    .await
    .expect("newcomer-bob holds the 250 moved to it");

    // Changes go to the control listener, with the token the command
    // printed; without it they are refused.
    let token = output
        .lines()
        .find_map(|line| line.trim().strip_prefix("export FAULTLINE_TOKEN="))
        .unwrap_or_else(|| panic!("the command prints the operator token: {output}"))
        .to_owned();
    let strategy = format!(
        "http://127.0.0.1:{}/v1/strategy",
        run.port(Ports::Fixed { offset: 0 }.gateway_control(1))
    );
    let change = |bearer: Option<&str>| {
        let mut request = http.put(&strategy).json(&json!({"strategy": "weighted"}));
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        async move {
            let response = request.send().await.expect("the control listener answers");
            response.status().as_u16()
        }
    };
    assert_eq!(change(None).await, 401);
    assert_eq!(change(Some(&token)).await, 200);

    // It started its own PostgreSQL, Redis and NATS, and its NATS lets
    // nobody in without an instance's password.
    run.note_processes();
    let runs = |program: &str| run.seen.iter().any(|p| p.runs(program));
    assert!(
        runs("postgres") && runs("redis-server") && runs("nats-server"),
        "{:#?}",
        run.seen
    );
    let nats_port = run.port(
        Ports::Fixed { offset: 0 }
            .server(Server::Nats)
            .expect("a fixed port"),
    );
    let refused = async_nats::connect(format!("nats://127.0.0.1:{nats_port}"))
        .await
        .expect_err("the run's NATS must refuse a client without credentials");
    assert_eq!(
        refused.kind(),
        async_nats::ConnectErrorKind::AuthorizationViolation,
        "{refused}"
    );

    // A second copy at the same ports fails at once, naming a port and
    // the process that holds it, and leaves the first one serving.
    let mut second = FaultlineCommand::start("run", offset);
    let status = second.wait(Duration::from_secs(60)).await;
    let output = second.output();
    assert!(!status.success(), "a second copy must fail:\n{output}");
    let gateway_port = run.port(8080);
    assert!(
        output.contains(&format!(
            "port {gateway_port} (for gateway-1's HTTP endpoint) is held by pid"
        )),
        "{output}"
    );
    assert!(!output.contains("Faultline is up"), "{output}");
    let left = second.left_behind().await;
    assert!(left.is_empty(), "the second copy left behind: {left:#?}");
    let (status, body) = post(
        &http,
        &format!("{gateway}/v1/call"),
        &json!({"op": "echo", "message": "still here"}),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");

    run.interrupt();
    run.wait(Duration::from_secs(60)).await;
    let left = run.left_behind().await;
    assert!(left.is_empty(), "left behind: {left:#?}");
    assert!(
        existing.is_running(),
        "the NATS server it did not start must still run"
    );
}

#[tokio::test]
async fn the_demo_runs_its_faults_and_reports_that_every_promise_held() {
    let mut demo = FaultlineCommand::start("demo", free_offset(DEMO_OFFSETS));
    let status = demo.wait(Duration::from_secs(420)).await;
    let output = demo.output();
    assert!(status.success(), "the demo failed:\n{output}");
    for line in [
        "=== What happened ===",
        "worker-2 was killed",
        "took over after",
        "Every promise held.",
    ] {
        assert!(output.contains(line), "missing {line:?}:\n{output}");
    }
    assert!(output.contains(", 0 without a definite answer"), "{output}");
    assert!(
        demo.seen.iter().any(|p| p.runs("nats-server")),
        "with nothing at its ports, it starts its own NATS too: {:#?}",
        demo.seen
    );
    let left = demo.left_behind().await;
    assert!(left.is_empty(), "left behind: {left:#?}");
}
