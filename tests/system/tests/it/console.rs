//! The live console in a real browser: headless Chromium loads the page
//! from the gateway's control listener of a real cluster (monitors,
//! coordinators, PostgreSQL and Redis included), the test breaks and
//! heals the cluster, and asserts on what the page shows, the way a
//! person watching it would see it. Every step saves a screenshot
//! ([`crate::browser`]).

use std::time::{Duration, Instant};

use faultline_cluster::{BankSpec, Cluster, ClusterSpec, eventually};
use faultline_protocol::membership::State;
use serde_json::Value;

use crate::browser::Browser;
use crate::health_monitor::Events;

/// The page's worker card for `id`: its state word and reason, flags, and
/// figures, as the reader sees them.
const WORKER: &str = r##"
    const card = document.querySelector(`[data-worker="${arguments[0]}"]`);
    if (!card) return null;
    const text = (sel) => card.querySelector(sel)?.textContent ?? null;
    const number = (sel) => {
        const v = card.querySelector(sel)?.dataset.ms ?? card.querySelector(sel)?.dataset.share;
        return v === undefined || v === "" ? null : Number(v);
    };
    return {
        state: card.querySelector(".badge")?.dataset.state ?? null,
        reason: text(".reason"),
        ramping: !!card.querySelector(".flag-ramping"),
        fault: !!card.querySelector(".flag-fault"),
        share: number(".share-value"),
        promised: card.querySelector(".share-promised") ? parseFloat(card.querySelector(".share-promised").style.left) / 100 : null,
        p99: number(".p99"),
    };
"##;

/// A script expression for worker `id`'s card ([`WORKER`]).
fn card(id: &str) -> String {
    format!("(function() {{ {WORKER} }}).apply(null, [{id:?}])")
}

/// Console messages a working page must never log: anything at SEVERE.
fn errors(log: &[Value]) -> Vec<&Value> {
    log.iter().filter(|e| e["level"] == "SEVERE").collect()
}

#[tokio::test]
async fn the_console_shows_the_cluster_fail_and_heal_and_its_controls_work() {
    let mut cluster = Cluster::start(ClusterSpec {
        worker_weights: vec![1, 2, 3],
        monitors: 2,
        // Long enough to see a returning worker ramp on the page.
        monitor_args: ["--slow-start-ms", "6000"].map(String::from).to_vec(),
        bank: Some(BankSpec::default()),
        ..ClusterSpec::default()
    })
    .await
    .expect("cluster starts");
    let events = Events::follow(&cluster).await;
    let mut browser = Browser::start("the_console_shows_the_cluster_fail_and_heal", 1600, 2400)
        .await
        .expect("chromium starts (Debian packages chromium and chromium-driver)");
    let (worker_1, worker_2, worker_3) = (card("worker-1"), card("worker-2"), card("worker-3"));
    let control = cluster.gateway.control.url.clone();
    browser
        .goto(&format!(
            "{control}/console#token={}",
            cluster.operator_token
        ))
        .await
        .expect("the page loads");

    // 1. Every member shown up, the token gone from the address bar.
    browser
        .wait_for(
            "every member up",
            Duration::from_secs(20),
            r##"const states = [...document.querySelectorAll("#topology .badge")].map(b => b.dataset.state);
               const roles = new Set([...document.querySelectorAll("#topology .member")].map(m => m.dataset.role));
               return document.getElementById("conn-status").textContent === "live"
                   && document.querySelectorAll("[data-worker]").length === 3
                   && ["gateway", "load-balancer", "health-monitor", "coordinator", "worker", "store"].every(r => roles.has(r))
                   && states.every(s => s === "up")
                   // Slow start over: the weights in force are the workers' own.
                   && !document.querySelector(".flag-ramping");"##,
        )
        .await
        .expect("the page shows the whole cluster up");
    let address = browser
        .run("return location.href;", vec![])
        .await
        .expect("address");
    assert!(
        !address.as_str().unwrap_or_default().contains("token"),
        "the token left the address bar: {address}"
    );
    let leases = browser
        .run(
            r##"return [...document.querySelectorAll('#topology .member[data-role="health-monitor"] .lease, #topology .member[data-role="coordinator"] .lease')].map(l => l.textContent);"##,
            vec![],
        )
        .await
        .expect("leases");
    for (role, holder) in [("monitor", "leader"), ("coordinator", "active")] {
        assert!(
            leases.as_array().is_some_and(|all| all.iter().any(|l| l
                .as_str()
                .unwrap_or("")
                .starts_with(&format!("{holder} · token ")))),
            "a {role} shown as {holder} with its token: {leases}"
        );
    }
    browser.screenshot("all-up").await.expect("screenshot");

    // 2. Load from the page's own generator, with controls typed and clicked.
    browser.type_into("#load-rate", "300").await.expect("rate");
    browser
        .type_into("#load-seconds", "300")
        .await
        .expect("seconds");
    let will = browser
        .run(
            "return document.getElementById('load-will').textContent;",
            vec![],
        )
        .await
        .expect("load description");
    assert!(
        will.as_str()
            .unwrap_or_default()
            .contains(r##"{"rate":300,"seconds":300}"##),
        "the page says what Start load will send: {will}"
    );
    browser.click("#load-start").await.expect("start load");
    browser
        .wait_for(
            "traffic on every worker",
            Duration::from_secs(10),
            r##"return [...document.querySelectorAll("[data-worker] .rate")].every(r => parseFloat(r.textContent) > 0);"##,
        )
        .await
        .expect("the generator's calls show as rates");

    // 3. The strategy switched from the page: the API follows, and the
    // share bars follow the new promise (weights 1:2:3).
    browser
        .click("#strategy-select option[value='weighted']")
        .await
        .expect("choose weighted");
    browser.click("#strategy-apply").await.expect("apply");
    eventually(
        "the API to report weighted",
        Duration::from_secs(5),
        || async {
            let view = cluster.gateway.control.cluster_view().await.ok()?;
            (view.strategy.as_str() == "weighted").then_some(())
        },
    )
    .await
    .expect("PUT /v1/strategy from the page changed the strategy");
    let check = format!(
        r##"const ws = ["worker-1", "worker-2", "worker-3"].map(id => (function() {{ {WORKER} }}).apply(null, [id]));
           return document.getElementById("current-strategy").textContent === "weighted"
               && ws.every(w => w && w.share !== null && w.promised !== null && Math.abs(w.share - w.promised) < 0.03)
               && ws;"##
    );
    let (shares, _) = browser
        .wait_for("shares near 1/6, 2/6, 3/6", Duration::from_secs(15), &check)
        .await
        .expect("the share bars follow the weighted promise");
    browser.screenshot("weighted").await.expect("screenshot");
    eprintln!("shares under weighted: {shares}");

    // 4. A latency fault set from the page raises that worker's p99 there.
    browser
        .click("#worker-select option[value='worker-2']")
        .await
        .expect("choose worker-2");
    browser
        .type_into("#latency-input", "150")
        .await
        .expect("latency");
    browser
        .type_into("#error-rate-input", "0")
        .await
        .expect("rate");
    browser.click("#faults-apply").await.expect("inject");
    let (slow, _) = browser
        .wait_for(
            "worker-2's p99 past 150 ms",
            Duration::from_secs(10),
            &format!("const w = {worker_2}; return w && w.fault && w.p99 >= 150 && w;"),
        )
        .await
        .expect("the page shows the injected latency in p99");
    browser
        .wait_for(
            "worker-1's p99 well under the fault's",
            Duration::from_secs(5),
            &format!("const w = {worker_1}; return w && w.p99 !== null && w.p99 < 100 && w;"),
        )
        .await
        .expect("the other workers stay fast");
    browser
        .screenshot("latency-fault")
        .await
        .expect("screenshot");
    eprintln!("worker-2 with +150 ms: {slow}");
    browser.click("#heal-all").await.expect("heal all");
    browser
        .wait_for(
            "the fault flag gone",
            Duration::from_secs(5),
            &format!("const w = {worker_2}; return w && !w.fault;"),
        )
        .await
        .expect("heal all cleared the fault");

    // Transfers: the page counts them, and the audit it shows finds the
    // money opened, all of it.
    crate::open_account(&cluster, "alice", 1000).await;
    crate::open_account(&cluster, "bob", 0).await;
    for i in 0..5 {
        let (status, body) = crate::transfer(
            &cluster,
            &format!("console-{i}"),
            &serde_json::json!({"from": "alice", "to": "bob", "amount": 10}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    browser
        .wait_for(
            "five transfers, and the audited total equal to the money opened",
            Duration::from_secs(10),
            r##"return document.getElementById("transfers").textContent.includes("committed 5")
                && document.getElementById("audit-opened").textContent.startsWith("1000: ✓");"##,
        )
        .await
        .expect("the transfers panel follows the bank");
    browser.screenshot("transfers").await.expect("screenshot");

    // 5. A worker killed: shown down, with the monitor's reason, within a
    // second of the monitor's event.
    let killed_at = Instant::now();
    cluster.workers[2].kill();
    let (event_at, event) = events.wait("worker-3", State::Down, killed_at).await;
    let reason = event.reason.clone();
    let (_, seen_at) = browser
        .wait_for(
            "worker-3 down with the monitor's reason",
            Duration::from_secs(5),
            &format!(
                "const w = {worker_3}; return w && w.state === 'down' && w.reason === {reason:?};"
            ),
        )
        .await
        .expect("the page shows the worker down");
    let lag = seen_at.saturating_duration_since(event_at);
    eprintln!("monitor's event to the page: {lag:?} ({reason})");
    assert!(
        lag < Duration::from_secs(1),
        "shown {lag:?} after the event"
    );
    let logged = browser
        .run(
            r##"return [...document.querySelectorAll('#log li[data-member="worker-3"]')].map(li => li.textContent);"##,
            vec![],
        )
        .await
        .expect("log");
    assert!(
        logged.as_array().is_some_and(|lines| lines
            .iter()
            .any(|l| l.as_str().unwrap_or("").contains("→ down"))),
        "the event log has it: {logged}"
    );
    browser
        .screenshot("worker-killed")
        .await
        .expect("screenshot");

    // 6. Restarted: ramping (slow start), then up.
    cluster.workers[2].restart().expect("worker-3 restarts");
    browser
        .wait_for(
            "worker-3 ramping",
            Duration::from_secs(15),
            &format!("const w = {worker_3}; return w && w.state === 'up' && w.ramping;"),
        )
        .await
        .expect("the page shows the worker ramping back");
    browser
        .screenshot("worker-ramping")
        .await
        .expect("screenshot");
    browser
        .wait_for(
            "worker-3 fully up",
            Duration::from_secs(15),
            &format!("const w = {worker_3}; return w && w.state === 'up' && !w.ramping;"),
        )
        .await
        .expect("the page shows the worker up at full weight");
    let availability = browser
        .run(
            "return [document.getElementById('availability-measured')?.textContent, document.getElementById('availability-formula')?.textContent];",
            vec![],
        )
        .await
        .expect("availability");
    // One worker of three was down a few seconds: the formula, from the
    // measured up-fractions, is near 1, and retries kept calls succeeding.
    let percent = |text: &Value| {
        text.as_str()
            .and_then(|t| t.split(' ').next())
            .and_then(|n| n.parse::<f64>().ok())
    };
    assert!(
        percent(&availability[0]).is_some_and(|measured| measured >= 95.0)
            && percent(&availability[1]).is_some_and(|formula| formula >= 95.0),
        "the page measures availability beside the formula: {availability}"
    );
    browser.screenshot("worker-back").await.expect("screenshot");

    // 7. Nothing went to the browser's console.
    let log = browser.console_log().await.expect("console log");
    assert!(errors(&log).is_empty(), "console errors: {log:?}");

    // 8. The gateway restarted: the page says so and reconnects by itself.
    let before = browser
        .run(
            "return [document.getElementById('current-gateway').textContent, Number(document.body.dataset.snapshotAt)];",
            vec![],
        )
        .await
        .expect("gateway");
    cluster
        .gateway
        .service
        .restart()
        .expect("the gateway restarts");
    browser
        .wait_for(
            "the page to notice",
            Duration::from_secs(10),
            r##"return document.getElementById("conn-status").textContent === "reconnecting";"##,
        )
        .await
        .expect("the page shows it lost the gateway");
    browser
        .screenshot("gateway-restarting")
        .await
        .expect("screenshot");
    let restarted = Instant::now();
    let (_, back_at) = browser
        .wait_for(
            "the page live again",
            Duration::from_secs(30),
            &format!(
                r##"return document.getElementById("conn-status").textContent === "live"
                    && Number(document.body.dataset.snapshotAt) > {};"##,
                before[1]
            ),
        )
        .await
        .expect("the page reconnects by itself");
    eprintln!(
        "reconnected {:?} after the restart",
        back_at.saturating_duration_since(restarted)
    );
    assert_eq!(
        browser
            .run(
                "return document.getElementById('current-gateway').textContent;",
                vec![]
            )
            .await
            .expect("gateway"),
        before[0],
        "the same gateway, drawn again from a snapshot it sent after its restart"
    );
    browser.screenshot("reconnected").await.expect("screenshot");
    // The browser reports the gateway's death itself, as network errors of
    // the stream: the one that was cut (SIGKILL ends it mid-chunk) and the
    // page's retries that found nobody listening. Nothing else.
    let log = browser.console_log().await.expect("console log");
    let unexpected: Vec<&Value> = errors(&log)
        .into_iter()
        .filter(|e| {
            !(e["source"] == "network"
                && e["message"].as_str().is_some_and(|m| {
                    m.contains("/v1/console/stream")
                        && (m.contains("ERR_CONNECTION_REFUSED")
                            || m.contains("ERR_INCOMPLETE_CHUNKED_ENCODING"))
                }))
        })
        .collect();
    assert!(unexpected.is_empty(), "console errors: {log:?}");

    // The console's routes hold to the control API's rules: bounded input
    // refused with the field named, and nothing without the token.
    let control = &cluster.gateway.control;
    let (status, body) = control
        .put(
            "/v1/load",
            &serde_json::json!({"rate": 5000, "seconds": 10}),
        )
        .await
        .expect("answers");
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("rate")),
        "{body}"
    );
    let anonymous = faultline_cluster::GatewayClient::new(&control.url).expect("client");
    for path in ["/v1/console/stream", "/v1/load"] {
        let (status, body) = anonymous.get(path).await.expect("answers");
        assert_eq!(status, 401, "{path} without the token: {body}");
    }
    let page = reqwest::get(format!("{}/console", control.url))
        .await
        .expect("answers");
    assert_eq!(page.status(), 200, "the page itself holds nothing secret");
    assert!(
        page.headers()
            .get("content-security-policy")
            .is_some_and(|csp| csp.to_str().unwrap_or("").contains("script-src 'self'")),
        "only its own script runs"
    );
}
