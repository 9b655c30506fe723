//! The baselines from outside: nginx as a round-robin reverse proxy to
//! three HTTP upstreams (what a user would otherwise put in front of
//! workers), wrk (the closed-loop tool the generator's own ceiling is
//! measured against) and pgbench (PostgreSQL's own update rate, the
//! baseline for transfers). Each is started on loopback ports by the
//! scenario and stopped after it.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use faultline_cluster::free_port;

use crate::report::ExternalFigures;

/// nginx, proxying round-robin to three upstreams that answer a small JSON
/// body like an echo call's.
#[derive(Debug)]
pub struct Nginx {
    child: Child,
    /// Where the proxy listens.
    pub addr: SocketAddr,
    _prefix: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx with two worker processes (one per core here). Every
    /// port is listened on with `reuseport`, so that the kernel spreads
    /// connections over both workers: without it, whichever worker wakes
    /// first accepts most of a generator's 64 connections (13 against 51
    /// was seen here), nginx runs on about one core, and its throughput
    /// swings by a quarter from one run to the next.
    pub fn start() -> anyhow::Result<Nginx> {
        let prefix = tempfile::tempdir().context("creating nginx's directory")?;
        let front = free_port();
        let upstreams: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let servers: String = upstreams
            .iter()
            .map(|p| format!("        server 127.0.0.1:{p};\n"))
            .collect();
        let listens: String = upstreams
            .iter()
            .map(|p| format!("        listen 127.0.0.1:{p} reuseport;\n"))
            .collect();
        let config = format!(
            r#"worker_processes 2;
daemon off;
error_log stderr warn;
pid nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path client_body;
    proxy_temp_path proxy;
    fastcgi_temp_path fastcgi;
    uwsgi_temp_path uwsgi;
    scgi_temp_path scgi;
    upstream workers {{
{servers}        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{front} reuseport;
        location / {{
            proxy_pass http://workers;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
    server {{
{listens}        location / {{
            default_type application/json;
            return 200 '{{"op":"echo","message":"hello"}}';
        }}
    }}
}}
"#
        );
        let path = prefix.path().join("nginx.conf");
        std::fs::write(&path, config)?;
        let child = Command::new("nginx")
            .arg("-p")
            .arg(prefix.path())
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx (apt-get install nginx-light)")?;
        let addr: SocketAddr = ([127, 0, 0, 1], front).into();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "nginx did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Nginx {
            child,
            addr,
            _prefix: prefix,
        })
    }
}

impl Nginx {
    /// nginx's processes: the master and its workers.
    pub fn processes(&self) -> Vec<crate::cpu::Process> {
        let master = self.child.id();
        std::iter::once(master)
            .chain(crate::cpu::children(master))
            .map(|pid| crate::cpu::Process {
                name: "nginx".to_owned(),
                pid,
            })
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM lets the master stop its workers.
        let _ = Command::new("kill")
            .args(["-s", "TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn run(command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    anyhow::ensure!(output.status.success(), "{command:?} failed:\n{text}");
    Ok(text)
}

fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A wrk latency figure such as `1.23ms`, `850.00us` or `1.01s`, in ms.
fn wrk_ms(text: &str) -> Option<f64> {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * factor)
}

/// Reads wrk's `--latency` output. wrk's Requests/sec counts error answers
/// too; the throughput here is of the 2xx/3xx answers, and the non-2xx/3xx
/// answers and socket errors are counted as errors.
pub fn parse_wrk(output: &str, command: String) -> anyhow::Result<ExternalFigures> {
    let mut figures = ExternalFigures::new(command);
    let mut requests_per_s = 0.0;
    let mut total: Option<(f64, f64)> = None;
    let mut non_2xx = 0u64;
    for line in output.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", rate, ..] => requests_per_s = rate.parse()?,
            ["50%", value, ..] => figures.p50_ms = wrk_ms(value),
            ["99%", value, ..] => figures.p99_ms = wrk_ms(value),
            ["Latency", mean, ..] if wrk_ms(mean).is_some() => figures.mean_ms = wrk_ms(mean),
            [count, "requests", "in", elapsed, ..] => {
                let seconds = wrk_ms(elapsed.trim_end_matches(',')).map(|ms| ms / 1000.0);
                total = count.parse::<f64>().ok().zip(seconds);
            }
            ["Non-2xx", "or", "3xx", "responses:", count] => non_2xx = count.parse()?,
            ["Socket", "errors:", counts @ ..] => {
                // "connect 0, read 3, write 0, timeout 5"
                figures.errors += counts
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    figures.errors += non_2xx;
    figures.throughput = match total {
        Some((count, seconds)) if seconds > 0.0 => (count - non_2xx as f64) / seconds,
        _ => requests_per_s,
    };
    anyhow::ensure!(
        requests_per_s > 0.0,
        "no Requests/sec in wrk's output:\n{output}"
    );
    Ok(figures)
}

/// Runs wrk (two threads, as many connections as asked) against `url`,
/// with an optional Lua script.
pub fn wrk(
    url: &str,
    connections: usize,
    seconds: u64,
    script: Option<&str>,
) -> anyhow::Result<ExternalFigures> {
    let mut command = Command::new("wrk");
    command.args([
        "-t2",
        &format!("-c{connections}"),
        &format!("-d{seconds}s"),
        "--latency",
    ]);
    if let Some(script) = script {
        command.args(["-s", script]);
    }
    command.arg(url);
    let described = describe(&command);
    let output = run(&mut command).context("running wrk (apt-get install wrk)")?;
    parse_wrk(&output, described)
}

/// Runs `pgbench -N` (the simple-update transaction, fsync on) against a
/// scratch database `faultline_pgbench` on the PostgreSQL at `admin_url`.
pub fn pgbench(admin_url: &str, clients: usize, seconds: u64) -> anyhow::Result<ExternalFigures> {
    let url = url_with_database(admin_url, "faultline_pgbench");
    let _ = run(Command::new("psql").args([admin_url, "-qc", "CREATE DATABASE faultline_pgbench"]));
    run(Command::new("pgbench").args(["-i", "-q", "-s", "10", &url]))
        .context("initialising pgbench's tables (apt-get install postgresql-contrib)")?;
    let mut command = Command::new("pgbench");
    command.args([
        "-N",
        &format!("-c{clients}"),
        // pgbench refuses more threads than clients.
        &format!("-j{}", clients.clamp(1, 2)),
        &format!("-T{seconds}"),
        &url,
    ]);
    let described = describe(&command);
    let output = run(&mut command)?;
    let mut figures = ExternalFigures::new(described);
    for line in output.lines() {
        if let Some(rest) = line.strip_prefix("tps = ") {
            figures.throughput = rest.split_whitespace().next().unwrap_or("0").parse()?;
        } else if let Some(rest) = line.strip_prefix("latency average = ") {
            figures.mean_ms = rest.split_whitespace().next().and_then(|v| v.parse().ok());
        }
    }
    anyhow::ensure!(
        figures.throughput > 0.0,
        "no tps in pgbench's output:\n{output}"
    );
    Ok(figures)
}

/// `postgres://host:port/db?x` with the database replaced by `database`.
fn url_with_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_is_read() {
        let output = "Running 10s test @ http://127.0.0.1:18090/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.52ms  420.11us  12.03ms   80.00%
    Req/Sec    21.10k     1.20k   24.00k    70.00%
  Latency Distribution
     50%    1.45ms
     75%    1.70ms
     90%    2.01ms
     99%  850.00us
  420000 requests in 10.00s, 70.00MB read
  Socket errors: connect 0, read 3, write 0, timeout 5
  Non-2xx or 3xx responses: 1000
Requests/sec:  41995.12
Transfer/sec:      7.00MB
";
        let figures = parse_wrk(output, "wrk".into()).expect("parsed");
        // 419,000 successes in 10 s; 1000 error answers and 8 socket errors.
        assert_eq!(figures.throughput, 41900.0);
        assert_eq!(figures.errors, 1008);
        assert_eq!(figures.p50_ms, Some(1.45));
        assert!((figures.p99_ms.expect("p99") - 0.85).abs() < 1e-9);
        assert_eq!(figures.mean_ms, Some(1.52));
        assert!(parse_wrk("nothing", "wrk".into()).is_err());
        assert_eq!(wrk_ms("1.01s"), Some(1010.0));
    }

    #[test]
    fn the_database_is_swapped_in_a_url() {
        assert_eq!(
            url_with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            url_with_database("postgres://127.0.0.1:5432?sslmode=disable", "x"),
            "postgres://127.0.0.1:5432/x?sslmode=disable"
        );
    }
}
