//! Two-phase commit on real processes: a private NATS, PostgreSQL database
//! and Redis key prefix; three workers owning eight shards; a health
//! monitor; an active and a standby coordinator; a gateway.
//!
//! The bank test is in the manner of Jepsen's: clients move money among a
//! fixed set of accounts while a nemesis kills processes at every failpoint
//! in turn, then at random (the active coordinator, a worker, nats-server,
//! every database connection).
//! Once the faults stop and recovery has run, the audit checks everything
//! the design promises, against the database itself.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::{open_account, transfer};
use faultline_cluster::local::RedisServer;
use faultline_cluster::postgres::PrivatePostgres;
use faultline_cluster::{BankSpec, Cluster, ClusterSpec, Service, eventually};
use faultline_protocol::bank::{
    Account, Audit, Leg, ShardReply, ShardRequest, StatusAnswer, StatusQuery, TransferRecord,
    TransferRequest, TransferState,
};
use faultline_protocol::subjects;
use faultline_transactions::sharding::branches;
use futures::StreamExt as _;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::watch;

const SHARDS: u32 = 8;

async fn bank_cluster() -> Cluster {
    start_bank(BankSpec::default().coordinator_args).await
}

/// The bank cluster with one coordinator flag set (replacing the default
/// arguments' value if they have the flag).
async fn bank_cluster_with_coordinator_flag(flag: &str, value: &str) -> Cluster {
    let mut coordinator_args = BankSpec::default().coordinator_args;
    match coordinator_args.iter().position(|arg| arg == flag) {
        Some(at) => coordinator_args[at + 1] = value.into(),
        None => coordinator_args.extend([flag.into(), value.into()]),
    }
    start_bank(coordinator_args).await
}

async fn start_bank(coordinator_args: Vec<String>) -> Cluster {
    Cluster::start(ClusterSpec {
        worker_weights: vec![1, 1, 1],
        load_balancers: 0,
        monitors: 1,
        bank: Some(BankSpec {
            shards: SHARDS,
            coordinator_args,
            ..BankSpec::default()
        }),
        ..ClusterSpec::default()
    })
    .await
    .expect("the bank cluster starts")
}

/// Two accounts on different shards, opened with `balance` and 0.
async fn accounts_on_two_shards(cluster: &Cluster, prefix: &str, balance: i64) -> (String, String) {
    let shard = |id: &str| faultline_transactions::sharding::shard_of(id, SHARDS);
    let from = format!("{prefix}-from");
    let to = (0..)
        .map(|i| format!("{prefix}-to-{i}"))
        .find(|to| shard(to) != shard(&from))
        .expect("an account on another shard");
    open_account(cluster, &from, balance).await;
    open_account(cluster, &to, 0).await;
    (from, to)
}

/// Two accounts on one shard, opened with `balance` and 0.
async fn accounts_on_one_shard(cluster: &Cluster, prefix: &str, balance: i64) -> (String, String) {
    let shard = |id: &str| faultline_transactions::sharding::shard_of(id, SHARDS);
    let from = format!("{prefix}-from");
    let to = (0..)
        .map(|i| format!("{prefix}-to-{i}"))
        .find(|to| shard(to) == shard(&from))
        .expect("an account on the same shard");
    open_account(cluster, &from, balance).await;
    open_account(cluster, &to, 0).await;
    (from, to)
}

/// `GET /v1/transfers/{id}`.
async fn read_transfer(cluster: &Cluster, id: &str) -> (u16, Value) {
    cluster
        .gateway
        .get(&format!("/v1/transfers/{id}"))
        .await
        .expect("the gateway answers")
}

async fn balance(cluster: &Cluster, id: &str) -> (i64, i64) {
    let (status, body) = cluster
        .gateway
        .get(&format!("/v1/accounts/{id}"))
        .await
        .expect("the gateway answers");
    assert_eq!(status, 200, "{body}");
    let account: Account = typed(&body);
    (account.balance, account.held)
}

/// A JSON answer read as the protocol's type for it.
fn typed<T: serde::de::DeserializeOwned>(body: &Value) -> T {
    serde_json::from_value(body.clone())
        .unwrap_or_else(|error| panic!("{body} is not what the protocol says: {error}"))
}

/// Sends a transfer under `key` and asserts that it committed.
async fn committed(cluster: &Cluster, key: &str, request: &Value) -> TransferRecord {
    let (status, answer) = transfer(cluster, key, request).await;
    assert_eq!(status, 200, "{answer}");
    let record: TransferRecord = typed(&answer);
    assert_eq!(record.state, TransferState::Committed, "{answer}");
    record
}

/// `GET /v1/audit`.
async fn read_audit(cluster: &Cluster) -> Audit {
    let (status, audit) = cluster.gateway.get("/v1/audit").await.expect("answers");
    assert_eq!(status, 200, "{audit}");
    typed(&audit)
}

#[tokio::test]
async fn a_transfer_moves_money_once_however_often_it_is_sent() {
    let cluster = bank_cluster().await;
    // On two shards: two-phase commit (one shard is the one-phase test's).
    let (alice, bob) = accounts_on_two_shards(&cluster, "pay", 1000).await;

    let request = json!({"from": alice, "to": bob, "amount": 250});
    let first = committed(&cluster, "pay-bob-1", &request).await;
    // The same key again: the first result, not a second transfer.
    for _ in 0..3 {
        let (status, again) = transfer(&cluster, "pay-bob-1", &request).await;
        assert_eq!(status, 200, "{again}");
        assert_eq!(typed::<TransferRecord>(&again).id, first.id);
    }
    let id = first.id.to_string();
    let (status, read) = read_transfer(&cluster, &id).await;
    assert_eq!(
        (status, typed::<TransferRecord>(&read).state),
        (200, TransferState::Committed)
    );
    // The answer came once the decision was durable; phase two ends by
    // itself (every shard acknowledged) and nothing is in doubt.
    eventually(
        "the transfer to finish",
        Duration::from_secs(10),
        || async {
            let (_, read) = cluster
                .gateway
                .get(&format!("/v1/transfers/{id}"))
                .await
                .ok()?;
            let (_, in_doubt) = cluster.gateway.get("/v1/transfers/in-doubt").await.ok()?;
            let finished = serde_json::from_value::<TransferRecord>(read)
                .ok()?
                .finished;
            (finished && in_doubt == json!({"transfers": []})).then_some(())
        },
    )
    .await
    .expect("phase two completes");
    assert_eq!(balance(&cluster, &alice).await, (750, 0));
    assert_eq!(balance(&cluster, &bob).await, (250, 0));
    let (status, audit) = cluster.gateway.get("/v1/audit").await.expect("answers");
    assert_eq!(status, 200, "{audit}");
    assert_eq!(
        audit,
        json!({"total": 1000, "balances": 1000, "in_flight": 0, "held": 0, "opened": 1000, "accounts": 2,
               "transfers": {"preparing": 0, "committed": 1, "aborted": 0, "unfinished": 0}})
    );
}

/// Both accounts on one shard: one durable write on the shard, recorded
/// there under the key; the same idempotency as two-phase transfers, the
/// key unique across both paths.
#[tokio::test]
async fn a_transfer_within_one_shard_commits_in_one_phase() {
    let cluster = bank_cluster().await;
    let (from, to) = accounts_on_one_shard(&cluster, "local", 100).await;
    let request = json!({"from": from, "to": to, "amount": 30});
    let (status, first) = transfer(&cluster, "local-1", &request).await;
    assert_eq!(status, 200, "{first}");
    let record: TransferRecord = typed(&first);
    assert_eq!(
        (record.state, record.finished),
        (TransferState::Committed, true)
    );
    let (status, again) = transfer(&cluster, "local-1", &request).await;
    assert_eq!(
        (status, &again),
        (200, &first),
        "a retry replays the record"
    );
    let (status, read) = read_transfer(&cluster, &record.id.to_string()).await;
    assert_eq!((status, &read), (200, &first));
    // Applied at once: nothing held, nothing in doubt, nothing in the log.
    assert_eq!(balance(&cluster, &from).await, (70, 0));
    assert_eq!(balance(&cluster, &to).await, (30, 0));
    let pool = cluster.pool().await.expect("pool");
    let (in_log, branches): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM transfers), (SELECT count(*) FROM branches)")
            .fetch_one(&pool)
            .await
            .expect("query");
    assert_eq!(
        (in_log, branches),
        (0, 0),
        "one phase writes no log record or branch"
    );

    // A refusal is recorded too: the retry hears the same refusal.
    let too_much = json!({"from": from, "to": to, "amount": 1000});
    let (status, refused) = transfer(&cluster, "local-2", &too_much).await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["error"]["code"], "insufficient_funds");
    let (_, refused_again) = transfer(&cluster, "local-2", &too_much).await;
    assert_eq!(refused_again, refused);

    // A key names one transfer whichever path it took first.
    let (other_from, other_to) = accounts_on_two_shards(&cluster, "global", 100).await;
    let cross = json!({"from": other_from, "to": other_to, "amount": 5});
    let (status, reused) = transfer(&cluster, "local-1", &cross).await;
    assert_eq!(status, 422, "{reused}");
    assert_eq!(reused["error"]["code"], "idempotency_key_reused");
    let (status, crossed) = transfer(&cluster, "global-1", &cross).await;
    assert_eq!(status, 200, "{crossed}");
    let (status, reused) = transfer(&cluster, "global-1", &request).await;
    assert_eq!(status, 422, "{reused}");
    assert_eq!(reused["error"]["code"], "idempotency_key_reused");
    assert_eq!(
        balance(&cluster, &from).await,
        (70, 0),
        "no second transfer"
    );

    let audit = read_audit(&cluster).await;
    assert_eq!(audit.total, 200);
    // (The two-phase transfer's phase two may still be running.)
    assert_eq!(
        (audit.transfers.committed, audit.transfers.aborted),
        (2, 1),
        "{audit:?}"
    );
}

/// The state between a committed transfer's two shard commits, written as
/// phase two leaves it: the log says committed, the debit's shard has
/// applied it, the credit's branch is still prepared. The audit counts the
/// credit in flight, so its total does not move; then recovery applies it.
#[tokio::test]
async fn the_audit_counts_money_between_a_transfers_two_commits() {
    let cluster = bank_cluster().await;
    let (from, to) = accounts_on_two_shards(&cluster, "audit", 1000).await;
    let pool = cluster.pool().await.expect("pool");
    let xid = uuid::Uuid::now_v7();
    let leg = |account: &str, delta: i64| json!([{"account": account, "delta": delta}]).to_string();
    let mut mid_transfer = pool.begin().await.expect("a transaction");
    sqlx::query(
        "INSERT INTO transfers (id, idempotency_key, from_account, to_account, amount, state, \
         begun_by_token, decided_by_token) VALUES ($1, 'mid-phase-two', $2, $3, 40, 'committed', 1, 1)",
    )
    .bind(xid)
    .bind(&from)
    .bind(&to)
    .execute(&mut *mid_transfer)
    .await
    .expect("the decision is written");
    for (account, state, delta) in [(&from, "committed", -40), (&to, "prepared", 40)] {
        sqlx::query(
            "INSERT INTO branches (xid, shard, state, legs) \
             SELECT $1, shard, $2, $3::jsonb FROM accounts WHERE id = $4",
        )
        .bind(xid)
        .bind(state)
        .bind(leg(account, delta))
        .bind(account)
        .execute(&mut *mid_transfer)
        .await
        .expect("a branch is written");
    }
    sqlx::query("UPDATE accounts SET balance = balance - 40 WHERE id = $1")
        .bind(&from)
        .execute(&mut *mid_transfer)
        .await
        .expect("the debit is applied");
    mid_transfer.commit().await.expect("the state is written");

    let audit = read_audit(&cluster).await;
    assert_eq!(audit.total, 1000, "{audit:?}");
    // Recovery may already have applied the credit: either way it adds up.
    let split = (audit.balances, audit.in_flight);
    assert!(split == (960, 40) || split == (1000, 0), "{audit:?}");
    // The credit's shard asks the coordinator, or recovery resends the
    // commit: either way it is applied.
    eventually(
        "the credit to be applied",
        Duration::from_secs(15),
        || async { (balance(&cluster, &to).await == (40, 0)).then_some(()) },
    )
    .await
    .expect("the prepared branch commits on the log's word");
    let audit = read_audit(&cluster).await;
    assert_eq!((audit.total, audit.in_flight), (1000, 0), "{audit:?}");
}

/// A decision a shard refuses (here: a commit logged for branches no
/// shard ever prepared) is quarantined: recovery stops sending it, the
/// in-doubt list says why, and an operator, with the token, lists it and
/// resolves it (retry: recovery tries again; close: finished).
#[tokio::test]
async fn a_refused_decision_is_quarantined_until_an_operator_resolves_it() {
    let token_file = tempfile::NamedTempFile::new().expect("a token file");
    let token = format!("operator-{:032x}", rand::random::<u128>());
    std::fs::write(token_file.path(), &token).expect("the token is written");
    let cluster = start_bank(vec![
        "--recovery-interval-ms".into(),
        "50".into(),
        "--operator-token-file".into(),
        token_file.path().display().to_string(),
    ])
    .await;
    let (from, to) = accounts_on_two_shards(&cluster, "refused", 100).await;
    let pool = cluster.pool().await.expect("pool");
    let decide_without_branches = |key: &'static str| {
        let (pool, from, to) = (pool.clone(), from.clone(), to.clone());
        async move {
            let xid = uuid::Uuid::now_v7();
            sqlx::query(
                "INSERT INTO transfers (id, idempotency_key, from_account, to_account, amount, \
                 state, begun_by_token, decided_by_token) \
                 VALUES ($1, $2, $3, $4, 10, 'committed', 1, 1)",
            )
            .bind(xid)
            .bind(key)
            .bind(&from)
            .bind(&to)
            .execute(&pool)
            .await
            .expect("the decision is written");
            xid.to_string()
        }
    };
    let quarantined = |id: String| {
        let cluster = &cluster;
        async move {
            eventually(
                "the refused transfer to be quarantined",
                Duration::from_secs(15),
                || async {
                    let (_, in_doubt) = cluster.gateway.get("/v1/transfers/in-doubt").await.ok()?;
                    in_doubt["transfers"]
                        .as_array()?
                        .iter()
                        .find(|t| t["id"] == id.as_str() && t["quarantine"].is_object())
                        .cloned()
                },
            )
            .await
            .expect("quarantined")
        }
    };
    let refused_commits = |scraped: &_| {
        crate::observability::total(
            scraped,
            "faultline_worker_shard_requests",
            &[("request", "commit"), ("reply", "refused")],
        )
    };
    let sweeps = |scraped: &_| {
        crate::observability::total(scraped, "faultline_coordinator_recovery_sweeps", &[])
    };

    let first = decide_without_branches("refused-1").await;
    let record = quarantined(first.clone()).await;
    assert_eq!(
        record["quarantine"]["reason"]["code"], "protocol_violation",
        "{record}"
    );
    // Recovery sends it no more: two further sweeps add no refusal.
    let at_quarantine = crate::observability::scrape_all(&cluster).await;
    let refused = refused_commits(&at_quarantine);
    assert!(refused >= 1.0, "a shard refused the commit");
    let sweeps_then = sweeps(&at_quarantine);
    let later = eventually("two more sweeps", Duration::from_secs(10), || async {
        let scraped = crate::observability::scrape_all(&cluster).await;
        (sweeps(&scraped) >= sweeps_then + 2.0).then_some(scraped)
    })
    .await
    .expect("recovery sweeps on");
    assert_eq!(
        refused_commits(&later),
        refused,
        "a quarantined decision was sent again"
    );
    assert_eq!(
        crate::observability::total(&later, "faultline_coordinator_quarantined_transfers", &[]),
        1.0
    );

    // The operator's routes: the token, exactly.
    let http = reqwest::Client::new();
    let admin = cluster.coordinator_admin[0].clone();
    let list = |bearer: Option<String>| {
        let mut request = http.get(format!("{admin}/v1/quarantine"));
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        async move {
            let response = request.send().await.expect("the admin server answers");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("JSON"))
        }
    };
    assert_eq!(list(None).await.0, 401);
    assert_eq!(list(Some(format!("{token}x"))).await.0, 401);
    let (status, listed) = list(Some(token.clone())).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["transfers"][0]["id"], first.as_str(), "{listed}");
    let resolve = |id: String, body: Value| {
        let request = http
            .post(format!("{admin}/v1/quarantine/{id}"))
            .bearer_auth(&token)
            .json(&body);
        async move {
            let response = request.send().await.expect("the admin server answers");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("JSON"))
        }
    };
    let (status, error) = resolve(first.clone(), json!({"action": "close", "note": " "})).await;
    assert_eq!(
        (status, &error["error"]["field"]),
        (400, &json!("note")),
        "{error}"
    );
    let (status, error) = resolve(first.clone(), json!({"action": "undo", "note": "x"})).await;
    assert_eq!(status, 400, "{error}");

    // Retry: recovery sends the decision again, and it is quarantined again.
    let (status, retried) = resolve(
        first.clone(),
        json!({"action": "retry", "note": "checked the shards; try once more"}),
    )
    .await;
    assert_eq!(status, 200, "{retried}");
    assert!(retried.get("quarantine").is_none(), "{retried}");
    quarantined(first.clone()).await;
    let again = crate::observability::scrape_all(&cluster).await;
    assert!(
        refused_commits(&again) > refused,
        "the retry sent the decision again"
    );

    // Close: finished, gone from the in-doubt list; a second close is 404.
    let (status, closed) = resolve(
        first.clone(),
        json!({"action": "close", "note": "no shard holds this transfer; closed by hand"}),
    )
    .await;
    assert_eq!(
        (status, &closed["finished"]),
        (200, &json!(true)),
        "{closed}"
    );
    let (_, in_doubt) = cluster
        .gateway
        .get("/v1/transfers/in-doubt")
        .await
        .expect("answers");
    assert_eq!(in_doubt, json!({"transfers": []}));
    let (status, _) = resolve(first, json!({"action": "close", "note": "again"})).await;
    assert_eq!(status, 404);
    let (_, listed) = list(Some(token)).await;
    assert_eq!(listed, json!({"transfers": []}));
}

/// Recovery acts only where the driver is gone. With a sweep every 10 ms,
/// many sweeps run while transfers are in phase two; none of them may send
/// a decision again, so phase two runs once per transfer and every shard
/// acknowledges each decision exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_leaves_transfers_alone_while_their_driver_runs() {
    let cluster = bank_cluster_with_coordinator_flag("--recovery-interval-ms", "10").await;
    let (from, to) = accounts_on_two_shards(&cluster, "sweep", 1000).await;
    let (from, to) = (from.as_str(), to.as_str());
    let before = crate::observability::scrape_all(&cluster).await;

    const TRANSFERS: usize = 40;
    let answers: Vec<(u16, Value)> = futures::stream::iter(0..TRANSFERS)
        .map(|i| {
            let cluster = &cluster;
            async move {
                transfer(
                    cluster,
                    &format!("sweep-{i}"),
                    &json!({"from": from, "to": to, "amount": 1}),
                )
                .await
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(
            typed::<TransferRecord>(body).state,
            TransferState::Committed,
            "{body}"
        );
    }
    let transfers = TRANSFERS as f64;
    // Phase two runs on after each answer, under the sweeps: read the
    // counters once every one has been timed (which is after its
    // "finished" mark).
    let phase_twos = |scraped: &_| {
        crate::observability::total(
            scraped,
            "faultline_coordinator_phase_duration_seconds",
            &[("phase", "phase_two")],
        )
    };
    let after = eventually(
        "every phase two to end",
        Duration::from_secs(10),
        || async {
            let after = crate::observability::scrape_all(&cluster).await;
            (phase_twos(&after) - phase_twos(&before) >= transfers).then_some(after)
        },
    )
    .await
    .expect("phase two completes");
    let moved = |family: &str, labels: &[(&str, &str)]| {
        crate::observability::total(&after, family, labels)
            - crate::observability::total(&before, family, labels)
    };
    assert_eq!(
        moved(
            "faultline_coordinator_phase_duration_seconds",
            &[("phase", "phase_two")]
        ),
        transfers
    );
    assert_eq!(moved("faultline_coordinator_transfers_recovered", &[]), 0.0);
    assert_eq!(
        moved(
            "faultline_worker_shard_requests",
            &[("request", "commit"), ("reply", "acknowledged")]
        ),
        2.0 * transfers,
        "each of the two shards acknowledged each decision once"
    );
    assert_eq!(balance(&cluster, to).await, (TRANSFERS as i64, 0));
}

/// `--phase-two-wait-ms`: the answer waits for phase two, so the money
/// can be read where it went as soon as the answer comes.
#[tokio::test]
async fn with_a_phase_two_wait_the_answer_comes_after_phase_two() {
    let cluster = bank_cluster_with_coordinator_flag("--phase-two-wait-ms", "5000").await;
    let (from, to) = accounts_on_two_shards(&cluster, "wait", 100).await;
    let (status, answer) = transfer(
        &cluster,
        "wait-1",
        &json!({"from": from, "to": to, "amount": 40}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let record: TransferRecord = typed(&answer);
    assert_eq!(
        (record.state, record.finished),
        (TransferState::Committed, true),
        "{answer}"
    );
    assert_eq!(balance(&cluster, &from).await, (60, 0));
    assert_eq!(balance(&cluster, &to).await, (40, 0));
}

#[tokio::test]
async fn bad_transfers_are_refused_and_change_nothing() {
    let cluster = bank_cluster().await;
    open_account(&cluster, "carol", 100).await;
    open_account(&cluster, "dave", 100).await;
    let gateway = &cluster.gateway;

    // Amounts that are not whole cents between 1 and 10^15.
    let mut cases: Vec<(String, &str, u16, &str, Option<&str>)> =
        ["0", "-5", "1.5", "1e30", "9223372036854775808", "\"5\""]
            .into_iter()
            .map(|amount| {
                let body = format!(r#"{{"from":"carol","to":"dave","amount":{amount}}}"#);
                (body, "k-amount", 400, "invalid_field", Some("amount"))
            })
            .collect();
    // (body, key, status, code, field)
    #[rustfmt::skip]
    let others = [
        (r#"{"from":"carol","to":"carol","amount":5}"#, "k1", 400, "invalid_field", Some("to")),
        (r#"{"from":"carol","to":"nobody","amount":5}"#, "k2", 422, "unknown_account", Some("to")),
        (r#"{"from":"nobody","to":"carol","amount":5}"#, "k3", 422, "unknown_account", Some("from")),
        (r#"{"from":"carol","to":"dave","amount":101}"#, "k4", 422, "insufficient_funds", Some("amount")),
        (r#"{"from":"carol","to":"dave""#, "k5", 400, "invalid_body", None),
        (r#"{"from":"carol","to":"dave","amount":5,"memo":"x"}"#, "k6", 400, "invalid_field", Some("memo")),
        (r#"{"from":"carol","to":"dave","amount":5}"#, "bad key", 400, "invalid_field", Some("Idempotency-Key")),
    ];
    for (body, key, status, code, field) in others {
        cases.push((body.to_owned(), key, status, code, field));
    }
    for (body, key, status, code, field) in &cases {
        let (got, answer) = gateway
            .send_with(
                reqwest::Method::POST,
                "/v1/transfers",
                Some(body.clone()),
                &[("Idempotency-Key", key)],
            )
            .await
            .expect("the gateway answers");
        assert_eq!(got, *status, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], *code, "{body}: {answer}");
        assert_eq!(
            answer["error"]["field"].as_str(),
            *field,
            "{body}: {answer}"
        );
    }

    // No key at all; a key reused for a different transfer.
    let (status, answer) = gateway
        .post(
            "/v1/transfers",
            &json!({"from":"carol","to":"dave","amount":5}),
            &[],
        )
        .await
        .expect("the gateway answers");
    assert_eq!(
        (status, &answer["error"]["field"]),
        (400, &json!("Idempotency-Key"))
    );
    let (status, _) = transfer(
        &cluster,
        "once",
        &json!({"from":"carol","to":"dave","amount":5}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, answer) = transfer(
        &cluster,
        "once",
        &json!({"from":"carol","to":"dave","amount":6}),
    )
    .await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (422, &json!("idempotency_key_reused"))
    );

    // Accounts: bad ids, bad balances, duplicates, unknown reads, bad ids.
    for (body, status, code) in [
        (json!({"id": "carol", "balance": 5}), 409, "account_exists"),
        (json!({"id": "a b", "balance": 5}), 400, "invalid_field"),
        (json!({"id": "erin", "balance": -1}), 400, "invalid_field"),
        (json!({"id": "erin", "balance": 0.5}), 400, "invalid_field"),
    ] {
        let (got, answer) = gateway
            .post("/v1/accounts", &body, &[])
            .await
            .expect("answer");
        assert_eq!(
            (got, &answer["error"]["code"]),
            (status, &json!(code)),
            "{body}"
        );
    }
    for (path, status) in [
        ("/v1/accounts/nobody", 404),
        ("/v1/accounts/a%20b", 400),
        ("/v1/transfers/not-a-uuid", 400),
        ("/v1/transfers/00000000-0000-0000-0000-000000000000", 404),
    ] {
        let (got, answer) = gateway.get(path).await.expect("answer");
        assert_eq!(got, status, "{path}: {answer}");
        assert!(answer["error"]["code"].is_string(), "{path}: {answer}");
    }

    let pool = cluster.pool().await.expect("pool");
    // Phase two (the good transfer's commit, the refused ones' abort) may
    // still be on its way.
    eventually("no prepared branch", Duration::from_secs(10), || async {
        let prepared: i64 =
            sqlx::query_scalar("SELECT count(*) FROM branches WHERE state = 'prepared'")
                .fetch_one(&pool)
                .await
                .ok()?;
        (prepared == 0).then_some(())
    })
    .await
    .expect("every refused transfer is released");
    // Nothing but the one good transfer was applied.
    assert_eq!(balance(&cluster, "carol").await, (95, 0));
    assert_eq!(balance(&cluster, "dave").await, (105, 0));
}

#[tokio::test]
async fn a_prepared_branch_waits_for_the_coordinators_answer() {
    // One worker, one shard, no coordinator: the test plays the coordinator
    // over NATS, and in the log (the fence, the intent, the decision), as
    // the shard checks what it is sent against the log.
    let cluster = Cluster::start(ClusterSpec {
        worker_weights: vec![1],
        load_balancers: 0,
        monitors: 1,
        bank: Some(BankSpec {
            shards: 1,
            coordinators: 0,
            ..BankSpec::default()
        }),
        ..ClusterSpec::default()
    })
    .await
    .expect("the cluster starts");
    open_account(&cluster, "x", 100).await;
    open_account(&cluster, "y", 100).await;
    let nats = async_nats::connect(cluster.nats.urls())
        .await
        .expect("NATS");
    let mut questions = nats
        .subscribe(subjects::COORDINATOR_STATUS)
        .await
        .expect("subscribe");

    let xid = uuid::Uuid::now_v7();
    let legs = vec![
        Leg {
            account: "x".into(),
            delta: -30,
        },
        Leg {
            account: "y".into(),
            delta: 30,
        },
    ];
    let pool = cluster.pool().await.expect("pool");
    sqlx::query("UPDATE coordinator_fence SET token = 1")
        .execute(&pool)
        .await
        .expect("the fence is raised");
    sqlx::query("INSERT INTO transfer_intents (xid, token, legs) VALUES ($1, 1, $2::jsonb)")
        .bind(xid)
        .bind(serde_json::to_string(&legs).expect("json"))
        .execute(&pool)
        .await
        .expect("the intent is written");
    let prepare = ShardRequest::Prepare {
        xid,
        token: 1,
        legs,
    };
    let vote = nats
        .request(
            subjects::shard(0),
            serde_json::to_vec(&prepare).expect("json").into(),
        )
        .await
        .expect("the owner votes");
    assert_eq!(
        serde_json::from_slice::<ShardReply>(&vote.payload).expect("a reply"),
        ShardReply::Prepared
    );

    // The test answers every question with whatever `answer` holds, and
    // counts them.
    let (answer, answering) = watch::channel(StatusAnswer::Pending);
    let asked = Arc::new(AtomicUsize::new(0));
    let answerer = tokio::spawn({
        let nats = nats.clone();
        let asked = asked.clone();
        async move {
            while let Some(question) = questions.next().await {
                let query: StatusQuery =
                    serde_json::from_slice(&question.payload).expect("a query");
                assert_eq!(query.xid, xid);
                asked.fetch_add(1, Ordering::Relaxed);
                let status = *answering.borrow();
                let reply = question.reply.expect("a request");
                let body = serde_json::to_vec(&status).expect("json");
                nats.publish(reply, body.into()).await.expect("answer");
            }
        }
    });

    // The decision never comes. The worker asks, and while the answer is
    // "pending" it keeps the branch prepared, however often it asks.
    eventually(
        "the worker to ask three times",
        Duration::from_secs(20),
        || {
            let asked = asked.load(Ordering::Relaxed);
            async move { (asked >= 3).then_some(()) }
        },
    )
    .await
    .expect("the worker asks the coordinator");
    assert_eq!(
        balance(&cluster, "x").await,
        (100, 30),
        "the branch was given up"
    );

    sqlx::query(
        "INSERT INTO transfers (id, idempotency_key, from_account, to_account, amount, state, \
         begun_by_token, decided_by_token) VALUES ($1, 'waits', 'x', 'y', 30, 'committed', 1, 1)",
    )
    .bind(xid)
    .execute(&pool)
    .await
    .expect("the decision is written");
    answer.send_replace(StatusAnswer::Commit { token: 1 });
    eventually("the branch to commit", Duration::from_secs(10), || async {
        (balance(&cluster, "x").await == (70, 0)).then_some(())
    })
    .await
    .expect("the worker commits on the coordinator's word");
    answerer.abort();
    assert_eq!(balance(&cluster, "y").await, (130, 0));
}

/// Anyone who can publish on a shard's subject (this test's NATS has no
/// authentication, so: anyone) tries to mint money, to overturn a
/// committed transfer, and to make the coordinator's token stale. Each
/// shard checks the message against the decision log and refuses it, and
/// nothing changes: balances, the audit, the coordinator's next transfer.
#[tokio::test]
async fn forged_shard_messages_on_the_bus_change_nothing() {
    let cluster = bank_cluster().await;
    let (from, to) = accounts_on_two_shards(&cluster, "forged", 100).await;
    let request = json!({"from": from, "to": to, "amount": 10});
    let paid = committed(&cluster, "forged-real-1", &request).await;
    eventually(
        "the real transfer to finish",
        Duration::from_secs(10),
        || async {
            let (_, read) = read_transfer(&cluster, &paid.id.to_string()).await;
            typed::<TransferRecord>(&read).finished.then_some(())
        },
    )
    .await
    .expect("phase two completes");
    let pool = cluster.pool().await.expect("pool");
    let token: i64 = sqlx::query_scalar("SELECT token FROM coordinator_fence")
        .fetch_one(&pool)
        .await
        .expect("the fence");
    let token = u64::try_from(token).expect("a token");
    let before = read_audit(&cluster).await;

    let nats = async_nats::connect(cluster.nats.urls())
        .await
        .expect("NATS");
    let to_shard = faultline_transactions::sharding::shard_of(&to, SHARDS);
    let send = |request: ShardRequest| {
        let nats = nats.clone();
        async move {
            let body = serde_json::to_vec(&request).expect("json");
            let reply = nats
                .request(subjects::shard(to_shard), body.into())
                .await
                .expect("the shard's owner answers");
            match serde_json::from_slice::<ShardReply>(&reply.payload).expect("a reply") {
                ShardReply::Refused(reason) => reason.code,
                other => format!("not refused: {other:?}"),
            }
        }
    };
    let forged = uuid::Uuid::now_v7();
    let mint = vec![Leg {
        account: to.clone(),
        delta: 1_000_000_000_000_000,
    }];
    assert_eq!(
        send(ShardRequest::Prepare {
            xid: forged,
            token,
            legs: mint.clone(),
        })
        .await,
        "not_in_the_log"
    );
    assert_eq!(
        send(ShardRequest::Commit { xid: forged, token }).await,
        "not_in_the_log"
    );
    assert_eq!(
        send(ShardRequest::Prepare {
            xid: forged,
            token: u64::try_from(i64::MAX).expect("fits"),
            legs: mint,
        })
        .await,
        "token_above_fence"
    );
    assert_eq!(
        send(ShardRequest::Abort {
            xid: paid.id,
            token
        })
        .await,
        "contradicts_the_log"
    );

    assert_eq!(
        read_audit(&cluster).await,
        before,
        "the forgeries changed the bank"
    );
    assert_eq!(balance(&cluster, &to).await, (10, 0));
    // The coordinator's token is not stale anywhere: its next transfer
    // commits.
    committed(&cluster, "forged-real-2", &request).await;
}

/// How a client's transfer ended, as the client was told.
#[derive(Debug, Clone)]
struct Acknowledged {
    key: String,
    id: String,
    committed: bool,
}

const ACCOUNTS: usize = 10;
const OPENING: i64 = 1_000;

/// One client: transfers until told to stop; every transfer is retried
/// with its key until it has a final answer. It talks to the gateway on
/// its own connection, so the nemesis keeps the cluster to itself.
async fn client(
    gateway: String,
    number: usize,
    mut stop: watch::Receiver<bool>,
    progress: Arc<AtomicUsize>,
) -> Vec<Acknowledged> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("an HTTP client");
    let post = |key: String, body: Value| {
        let request = http
            .post(format!("{gateway}/v1/transfers"))
            .header("Idempotency-Key", key)
            .json(&body);
        async move {
            let response = request.send().await?;
            let status = response.status().as_u16();
            let body: Value = response.json().await?;
            Ok::<_, reqwest::Error>((status, body))
        }
    };
    let mut rng = rand::rngs::SmallRng::seed_from_u64(number as u64);
    let mut acknowledged = Vec::new();
    for n in 0.. {
        if *stop.borrow_and_update() {
            break;
        }
        let from = rng.random_range(0..ACCOUNTS);
        let to = (from + rng.random_range(1..ACCOUNTS)) % ACCOUNTS;
        // One in ten asks for more than any account holds: an abort.
        let amount: i64 = if rng.random_bool(0.1) {
            OPENING * ACCOUNTS as i64
        } else {
            rng.random_range(1..=50)
        };
        let key = format!("client-{number}-{n}");
        let body =
            json!({"from": format!("acct-{from}"), "to": format!("acct-{to}"), "amount": amount});
        let started = Instant::now();
        loop {
            let answer = post(key.clone(), body.clone()).await;
            let final_answer = match &answer {
                Ok((200, record)) => {
                    assert_eq!(record["state"], "committed", "a 200 for {key}: {record}");
                    Some((record.clone(), true))
                }
                Ok((422 | 503, reply))
                    if matches!(
                        reply["error"]["code"].as_str(),
                        Some("insufficient_funds" | "transfer_aborted")
                    ) =>
                {
                    Some((reply["transfer"].clone(), false))
                }
                // Unknown outcome or nobody to ask yet: the same key again.
                Ok((409 | 503 | 504, _)) | Err(_) => None,
                Ok((status, reply)) => panic!("unexpected answer {status} to {body}: {reply}"),
            };
            if let Some((record, committed)) = final_answer {
                acknowledged.push(Acknowledged {
                    key: key.clone(),
                    id: record["id"].as_str().expect("an id").to_owned(),
                    committed,
                });
                progress.fetch_add(1, Ordering::Relaxed);
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "transfer {key} never reached a final state: {answer:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    acknowledged
}

/// Kills the active coordinator while the standby is armed with
/// `failpoint`; the standby takes over, crashes there; both restart clean.
async fn crash_coordinator_at(cluster: &mut Cluster, failpoint: &str) {
    let active = active_coordinator(cluster).await;
    let standby = 1 - active;
    arm(&mut cluster.coordinators[standby], failpoint);
    cluster.coordinators[active].kill();
    let crashed = Instant::now();
    crash_and_disarm(&mut cluster.coordinators[standby], failpoint).await;
    eprintln!(
        "{failpoint}: the armed standby took over and crashed after {:?}",
        crashed.elapsed()
    );
    for coordinator in &mut cluster.coordinators {
        coordinator.restart().expect("restart a coordinator");
    }
}

/// Checks that a process ended at the failpoint, not for some other reason.
fn assert_crashed_at(service: &Service, failpoint: &str) {
    let log = service.log();
    let last = log
        .lines()
        .rev()
        .find(|line| line.contains("Crashing at a failpoint"))
        .unwrap_or_default();
    assert!(
        last.contains(failpoint),
        "{} exited, but not at {failpoint}:\n{log}",
        service.name()
    );
}

async fn active_coordinator(cluster: &Cluster) -> usize {
    eventually(
        "an active coordinator",
        Duration::from_secs(30),
        move || cluster.active_coordinator(),
    )
    .await
    .expect("a coordinator is active")
}

/// Restarts a worker armed with `failpoint`, waits for it to crash there,
/// and restarts it clean.
async fn crash_worker_at(cluster: &mut Cluster, worker: usize, failpoint: &str) {
    let armed = &mut cluster.workers[worker];
    arm(armed, failpoint);
    let started = Instant::now();
    crash_and_disarm(armed, failpoint).await;
    eprintln!(
        "{failpoint}: worker-{} crashed after {:?}",
        worker + 1,
        started.elapsed()
    );
    armed.restart().expect("restart the worker");
}

/// Restarts `service` with `failpoint` switched on.
fn arm(service: &mut Service, failpoint: &str) {
    service.set_env("FAILPOINTS", Some(&format!("{failpoint}=return")));
    service.restart().expect("restart the process, armed");
}

/// Waits for `service` to crash at `failpoint` (and nowhere else), then
/// switches the failpoint off for its next start.
async fn crash_and_disarm(service: &mut Service, failpoint: &str) {
    eventually(
        &format!("{} to crash at {failpoint}", service.name()),
        Duration::from_secs(40),
        || {
            let exited = service.has_exited();
            async move { exited.then_some(()) }
        },
    )
    .await
    .expect("the failpoint is reached");
    assert_crashed_at(service, failpoint);
    service.set_env("FAILPOINTS", None);
}

#[tokio::test]
async fn the_bank_stays_right_through_crashes_at_every_step() {
    let mut cluster = bank_cluster().await;
    let clients = Clients::start(&cluster, 6).await;
    let pool = cluster.pool().await.expect("pool");
    let auditor = tokio::spawn(auditor(cluster.gateway.url.clone(), clients.stopped()));

    let faults = nemesis(&mut cluster, &clients.progress).await;

    let faults_stopped = Instant::now();
    let acknowledged = clients.stop().await;
    let clients_done = faults_stopped.elapsed();
    let audits = auditor.await.expect("the auditor task");
    let settled = settle(&cluster, &pool).await;
    eprintln!(
        "bank: {faults} faults; {} transfers acknowledged; the clients had their last answers \
         {clients_done:?} after the faults stopped, and every transfer was final {:?} later; \
         {} audit reads during the run",
        acknowledged.len(),
        settled,
        audits.exact,
    );
    assert!(
        audits.wrong.is_empty(),
        "audit reads off the total while the faults ran: {:#?}",
        audits.wrong
    );
    // Each fault round waits for 30 more transfers, so the run is long
    // enough for many reads; the coordinator's takeovers only pause them.
    assert!(audits.exact >= 20, "too few audit reads: {}", audits.exact);
    audit(&pool, &acknowledged).await;
}

/// PostgreSQL itself crashes (an immediate shutdown, on a server of the
/// test's own) while clients move money, and starts again: every service
/// drops the connections the crash left dead by itself (no ping before
/// each use), transfers resume, and once settled every promise holds.
#[tokio::test]
async fn transfers_resume_after_postgresql_crashes_and_restarts() {
    let mut postgres = PrivatePostgres::start()
        .await
        .expect("a PostgreSQL server of the test's own");
    let (cluster, clients) = bank_at_work(BankSpec {
        server: Some(postgres.admin_url()),
        ..BankSpec::default()
    })
    .await;

    postgres.crash().expect("PostgreSQL crashes");
    tokio::time::sleep(Duration::from_millis(500)).await;
    postgres
        .start_again()
        .await
        .unwrap_or_else(|error| panic!("PostgreSQL starts again: {error}\n{}", postgres.log()));
    let restarted = Instant::now();
    recovered(&clients.progress).await;
    eprintln!(
        "PostgreSQL crashed and restarted: 30 more transfers answered {:?} after it answered again",
        restarted.elapsed()
    );

    let acknowledged = clients.stop().await;
    let pool = cluster.pool().await.expect("pool");
    settle(&cluster, &pool).await;
    audit(&pool, &acknowledged).await;
}

/// Redis restarted empty under load: the coordinators' lease and its token
/// counter are gone. "Active" means holding the lease by one's own clock:
/// a coordinator acts (decides, sends phase two) only while less than a
/// TTL has passed since it sent the request that last took or renewed the
/// lease, and its `faultline_coordinator_active` gauge says so.
///
/// After the restart the active coordinator's renewal finds no key and it
/// steps down; the next to take the lease gets a token raised above the
/// decision log's fence (the newest token a decision was accepted under),
/// so above every older term's. The log refuses a decision under a token
/// older than the newest it has seen, so no decision of an older term is
/// accepted after a newer term's first: checked here on the log itself.
#[tokio::test]
async fn transfers_resume_after_redis_restarts_empty_and_no_older_term_decides_after_a_newer() {
    let mut redis = RedisServer::start().expect("a Redis of the test's own");
    let (cluster, clients) = bank_at_work(BankSpec {
        redis: Some(redis.url()),
        ..BankSpec::default()
    })
    .await;
    let pool = cluster.pool().await.expect("pool");
    let fence_before: i64 = sqlx::query_scalar("SELECT token FROM coordinator_fence")
        .fetch_one(&pool)
        .await
        .expect("the fence");

    let (stop_watching, watching) = watch::channel(false);
    let fault = async {
        redis.crash();
        redis.start_again().expect("Redis starts again, empty");
        let restarted = Instant::now();
        // The term in office ends when its renewal finds no lease; the
        // next one's token is raised above the fence, and the log's fence
        // follows it.
        let token_after = eventually(
            "a new term, above the fence",
            Duration::from_secs(30),
            || async {
                let fence: i64 = sqlx::query_scalar("SELECT token FROM coordinator_fence")
                    .fetch_one(&pool)
                    .await
                    .ok()?;
                (fence > fence_before).then_some(fence)
            },
        )
        .await
        .expect("the lease comes back with a higher token");
        let new_term = restarted.elapsed();
        recovered(&clients.progress).await;
        let resumed = restarted.elapsed();
        stop_watching.send_replace(true);
        (token_after, new_term, resumed)
    };
    let ((token_after, new_term, resumed), overlap) =
        tokio::join!(fault, both_active(&cluster, watching));
    eprintln!(
        "Redis restarted empty: token {token_after} (was {fence_before}) in office {new_term:?} after, \
         30 more transfers answered {resumed:?} after; both coordinators reported active together \
         for {overlap:?} in all (sampled every 20 ms)"
    );

    let acknowledged = clients.stop().await;
    settle(&cluster, &pool).await;
    audit(&pool, &acknowledged).await;
    let decisions: Vec<(i64, f64)> = sqlx::query_as(
        "SELECT decided_by_token, extract(epoch FROM decided_at)::float8 FROM transfers \
         WHERE decided_at IS NOT NULL ORDER BY decided_at",
    )
    .fetch_all(&pool)
    .await
    .expect("the decisions");
    let newest = decisions
        .iter()
        .map(|(token, _)| *token)
        .max()
        .unwrap_or_default();
    assert!(
        newest > fence_before,
        "a term after the restart decided, under a token above {fence_before}: newest {newest}"
    );
    let mut first_of_term: BTreeMap<i64, f64> = BTreeMap::new();
    for (token, at) in &decisions {
        first_of_term.entry(*token).or_insert(*at);
    }
    for (token, at) in &decisions {
        let newer_began_before = first_of_term
            .range(token + 1..)
            .find(|(_, first)| **first < *at);
        assert_eq!(
            newer_began_before, None,
            "a decision under token {token} was accepted after a newer term's first"
        );
    }
    eprintln!(
        "decision log: {} decisions under tokens {:?}; none of an older term after a newer term's first",
        decisions.len(),
        first_of_term.keys().collect::<Vec<_>>()
    );
}

/// How long both coordinators reported active at once, sampled every
/// 20 ms until `stop`.
async fn both_active(cluster: &Cluster, mut stop: watch::Receiver<bool>) -> Duration {
    let mut overlap = Duration::ZERO;
    let every = Duration::from_millis(20);
    while !*stop.borrow() {
        let mut active = 0;
        for admin in &cluster.coordinator_admin {
            active += usize::from(cluster.gateway.coordinator_is_active(admin).await);
        }
        if active > 1 {
            overlap += every;
        }
        tokio::select! {
            _ = stop.changed() => {}
            () = tokio::time::sleep(every) => {}
        }
    }
    overlap
}

/// A bank of three workers, one monitor and `bank`'s stores, with four
/// clients at work on it and 30 of their transfers answered.
async fn bank_at_work(bank: BankSpec) -> (Cluster, Clients) {
    let cluster = Cluster::start(ClusterSpec {
        worker_weights: vec![1, 1, 1],
        load_balancers: 0,
        monitors: 1,
        bank: Some(BankSpec {
            shards: SHARDS,
            ..bank
        }),
        ..ClusterSpec::default()
    })
    .await
    .expect("the bank cluster starts");
    let clients = Clients::start(&cluster, 4).await;
    recovered(&clients.progress).await;
    (cluster, clients)
}

/// The bank's clients at work on its accounts, until stopped.
struct Clients {
    stop: watch::Sender<bool>,
    /// Transfers answered so far, by every client.
    progress: Arc<AtomicUsize>,
    running: Vec<tokio::task::JoinHandle<Vec<Acknowledged>>>,
}

impl Clients {
    /// Opens the [`ACCOUNTS`] accounts with [`OPENING`] each and starts
    /// `count` clients moving money among them.
    async fn start(cluster: &Cluster, count: usize) -> Clients {
        for i in 0..ACCOUNTS {
            open_account(cluster, &format!("acct-{i}"), OPENING).await;
        }
        let (stop, stopped) = watch::channel(false);
        let progress = Arc::new(AtomicUsize::new(0));
        let running = (0..count)
            .map(|n| {
                let gateway = cluster.gateway.url.clone();
                tokio::spawn(client(gateway, n, stopped.clone(), progress.clone()))
            })
            .collect();
        Clients {
            stop,
            progress,
            running,
        }
    }

    /// Turns `true` when the clients are told to stop.
    fn stopped(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Stops the clients and returns what each was told, once every
    /// transfer it had sent has a final answer.
    async fn stop(self) -> Vec<Acknowledged> {
        self.stop.send_replace(true);
        let mut acknowledged = Vec::new();
        for client in self.running {
            acknowledged.extend(client.await.expect("a client task"));
        }
        acknowledged
    }
}

/// What the auditor read while the faults ran.
#[derive(Debug, Default)]
struct AuditReads {
    /// Reads that showed the exact total.
    exact: usize,
    /// Reads that did not, as answered.
    wrong: Vec<Value>,
}

/// Reads `GET /v1/audit` until told to stop, as Jepsen's bank test reads
/// totals during the run: every answer must show all the money ever
/// opened, mid-transfer and mid-fault. A read that gets no answer (no
/// coordinator active, the database's connections just ended) is no
/// read.
async fn auditor(gateway: String, mut stop: watch::Receiver<bool>) -> AuditReads {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client");
    let mut reads = AuditReads::default();
    while !*stop.borrow() {
        let answer = async {
            let response = http.get(format!("{gateway}/v1/audit")).send().await.ok()?;
            (response.status() == 200).then_some(())?;
            response.json::<Value>().await.ok()
        };
        if let Some(audit) = answer.await {
            // An answer that is no audit counts as wrong too.
            let total = serde_json::from_value::<Audit>(audit.clone()).map(|a| a.total);
            if total.ok() == Some(ACCOUNTS as i64 * OPENING) {
                reads.exact += 1;
            } else {
                reads.wrong.push(audit);
            }
        }
        tokio::select! {
            _ = stop.changed() => {}
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    reads
}

/// The coordinator's failpoints, in protocol order.
const COORDINATOR_FAILPOINTS: [&str; 4] = [
    coordinator::driver::AFTER_VOTES,
    coordinator::driver::AFTER_DECISION,
    coordinator::driver::BEFORE_PHASE_TWO,
    coordinator::driver::MID_PHASE_TWO,
];

/// The workers' two-phase failpoints.
const WORKER_FAILPOINTS: [&str; 3] = [
    worker::participant::AFTER_PREPARE,
    worker::participant::AFTER_COMMIT,
    worker::participant::AFTER_ABORT,
];

/// The workers' one-phase failpoint: a transfer between two accounts of
/// one shard is recorded, and its owner dies before it answers.
const ONE_PHASE_FAILPOINT: &str = worker::participant::AFTER_ONE_PHASE;

/// The worker that owns a shard holding two of the clients' accounts, so
/// that it runs one-phase transfers.
fn one_phase_worker(cluster: &Cluster) -> usize {
    let shard = |i: usize| faultline_transactions::sharding::shard_of(&format!("acct-{i}"), SHARDS);
    let shared = (0..ACCOUNTS)
        .flat_map(|a| (a + 1..ACCOUNTS).map(move |b| (a, b)))
        .find(|&(a, b)| shard(a) == shard(b))
        .map(|(a, _)| shard(a))
        .expect("two accounts on one shard");
    let ids: Vec<&str> = cluster.workers.iter().map(Service::name).collect();
    let owner =
        faultline_transactions::sharding::owner_of(shared, ids.iter().copied()).expect("a worker");
    ids.iter().position(|id| *id == owner).expect("the owner")
}

/// Waits until the clients have had 30 more transfers answered: after each
/// fault the system must work again by itself, not merely settle.
async fn recovered(progress: &AtomicUsize) {
    let before = progress.load(Ordering::Relaxed);
    eventually(
        "transfers to go through again",
        Duration::from_secs(30),
        || {
            let done = progress.load(Ordering::Relaxed);
            async move { (done >= before + 30).then_some(()) }
        },
    )
    .await
    .expect("the cluster recovers by itself");
    eprintln!(
        "  recovered: {} transfers answered so far",
        progress.load(Ordering::Relaxed)
    );
}

/// The faults, in order: a crash at each failpoint, then random kills of
/// the active coordinator, a worker and nats-server, and every database
/// connection ended. Returns how many.
async fn nemesis(cluster: &mut Cluster, progress: &AtomicUsize) -> usize {
    let mut faults = 0;
    for failpoint in COORDINATOR_FAILPOINTS {
        crash_coordinator_at(cluster, failpoint).await;
        faults += 1;
        recovered(progress).await;
    }
    for (i, failpoint) in WORKER_FAILPOINTS.into_iter().enumerate() {
        crash_worker_at(cluster, i % cluster.workers.len(), failpoint).await;
        faults += 1;
        recovered(progress).await;
    }
    crash_worker_at(cluster, one_phase_worker(cluster), ONE_PHASE_FAILPOINT).await;
    faults += 1;
    recovered(progress).await;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    for round in 0..8 {
        match round % 4 {
            0 => {
                let active = active_coordinator(cluster).await;
                eprintln!("random: kill -9 the active coordinator-{}", active + 1);
                cluster.coordinators[active].restart().expect("restart");
            }
            1 => {
                let worker = rng.random_range(0..cluster.workers.len());
                eprintln!("random: kill -9 worker-{}", worker + 1);
                cluster.workers[worker].kill();
                tokio::time::sleep(Duration::from_millis(rng.random_range(200..1500))).await;
                cluster.workers[worker].restart().expect("restart");
            }
            2 => {
                eprintln!("random: kill -9 nats-server");
                cluster.nats.kill();
                tokio::time::sleep(Duration::from_millis(rng.random_range(100..1000))).await;
                cluster.nats.restart().expect("restart nats-server");
            }
            _ => {
                let ended = end_every_database_connection(cluster).await;
                eprintln!("random: PostgreSQL ended all {ended} of the services' connections");
            }
        }
        faults += 1;
        recovered(progress).await;
    }
    faults
}

/// What a PostgreSQL restart does to its clients: the server ends every
/// connection to the test's database (but this one), idle or busy. No
/// service pings a connection before using it, so each must drop its dead
/// ones by itself for transfers to go through again. (The server itself
/// stays up: the other tests share it.) Returns how many were ended.
async fn end_every_database_connection(cluster: &Cluster) -> i64 {
    let pool = cluster.pool().await.expect("pool");
    let ended: i64 = sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_one(&pool)
    .await
    .expect("ending the connections");
    pool.close().await;
    assert!(ended > 0, "the services hold connections to end");
    ended
}

/// The bound on how long after the last fault every transfer is final:
/// the gateway's 5 s answer timeout (a client learns its outcome was
/// unknown), the 1 s lease TTL, the 2 s prepare window, the 1 s in-doubt
/// wait and the 0.5 s recovery interval add up to 9.5 s.
const SETTLE_BOUND: Duration = Duration::from_secs(15);

/// Waits until no transfer is unfinished and no branch is prepared;
/// returns how long that took.
async fn settle(cluster: &Cluster, pool: &PgPool) -> Duration {
    let started = Instant::now();
    let settled = eventually(
        "every transfer finished and no branch prepared",
        SETTLE_BOUND,
        || async {
            let unfinished: i64 =
                sqlx::query_scalar("SELECT count(*) FROM transfers WHERE finished_at IS NULL")
                    .fetch_one(pool)
                    .await
                    .ok()?;
            let prepared: i64 =
                sqlx::query_scalar("SELECT count(*) FROM branches WHERE state = 'prepared'")
                    .fetch_one(pool)
                    .await
                    .ok()?;
            (unfinished == 0 && prepared == 0).then_some(())
        },
    )
    .await;
    if let Err(error) = settled {
        panic!(
            "recovery settles every transfer: {error}\n{}",
            what_is_left(cluster, pool).await
        );
    }
    started.elapsed()
}

/// What a settle that timed out left: the unfinished transfers, the
/// prepared branches, the shards, and the end of each service's log.
async fn what_is_left(cluster: &Cluster, pool: &PgPool) -> String {
    let rows = |sql: &'static str| async move {
        sqlx::query_scalar::<_, String>(sql)
            .fetch_all(pool)
            .await
            .unwrap_or_else(|error| vec![error.to_string()])
    };
    let mut report = String::new();
    for (what, sql) in [
        (
            "unfinished transfers",
            "SELECT concat_ws(' ', id, state, begun_by_token, decided_by_token, created_at) \
             FROM transfers WHERE finished_at IS NULL",
        ),
        (
            "prepared branches",
            "SELECT concat_ws(' ', xid, shard, recorded_at, legs) FROM branches \
             WHERE state = 'prepared'",
        ),
        (
            "shards",
            "SELECT concat_ws(' ', shard, owner, epoch, coordinator_token) FROM shards",
        ),
        ("fence", "SELECT token::text FROM coordinator_fence"),
    ] {
        report.push_str(&format!("{what}:\n  {}\n", rows(sql).await.join("\n  ")));
    }
    for service in cluster.coordinators.iter().chain(&cluster.workers) {
        let log = service.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = &lines[lines.len().saturating_sub(25)..];
        report.push_str(&format!(
            "{} log:\n  {}\n",
            service.name(),
            tail.join("\n  ")
        ));
    }
    report
}

/// Transfers as `query` reads them (id, from, to, amount, state), by id.
async fn recorded(
    pool: &PgPool,
    query: &'static str,
) -> BTreeMap<String, (TransferRequest, String)> {
    let rows: Vec<(String, String, String, i64, String)> =
        sqlx::query_as(query).fetch_all(pool).await.expect("query");
    rows.into_iter()
        .map(|(id, from, to, amount, state)| (id, (TransferRequest { from, to, amount }, state)))
        .collect()
}

/// Every invariant, checked against the database.
async fn audit(pool: &PgPool, acknowledged: &[Acknowledged]) {
    // Money is conserved; no balance is negative; nothing is held.
    let (total, lowest, held): (i64, i64, i64) =
        sqlx::query_as("SELECT sum(balance)::bigint, min(balance), max(held) FROM accounts")
            .fetch_one(pool)
            .await
            .expect("query");
    assert_eq!(
        total,
        OPENING * ACCOUNTS as i64,
        "money was created or lost"
    );
    assert!(lowest >= 0, "a balance went negative: {lowest}");
    assert_eq!(held, 0, "a reservation was left behind");

    // The log: every transfer decided, and what it says about each (abort
    // barriers, the presumed aborts of transactions the log never heard
    // of, are no transfer's).
    // One-phase transfers (both accounts on one shard) are recorded by
    // the shard, with no branches.
    let decisions = recorded(
        pool,
        "SELECT id::text, from_account, to_account, amount, state FROM transfers \
         WHERE idempotency_key IS NOT NULL",
    )
    .await;
    let local = recorded(
        pool,
        "SELECT id::text, from_account, to_account, amount, state FROM local_transfers",
    )
    .await;
    assert!(
        local
            .values()
            .all(|(request, _)| branches(request, SHARDS).len() == 1),
        "a transfer between two shards was committed in one phase"
    );
    assert!(
        decisions.values().all(|(_, state)| state != "preparing"),
        "a transfer was left undecided"
    );

    // Every branch agrees with its transaction's decision; a committed
    // transfer has a committed branch on each of its shards.
    let branch_rows: Vec<(String, i32, String)> =
        sqlx::query_as("SELECT xid::text, shard, state FROM branches")
            .fetch_all(pool)
            .await
            .expect("query");
    let mut committed_branches: BTreeMap<&str, BTreeSet<u32>> = BTreeMap::new();
    for (xid, shard, state) in &branch_rows {
        let decision = decisions.get(xid).map(|(_, d)| d.as_str());
        match state.as_str() {
            "committed" => {
                assert_eq!(
                    decision,
                    Some("committed"),
                    "branch {xid}/{shard} committed against {decision:?}"
                );
                committed_branches
                    .entry(xid)
                    .or_default()
                    .insert(u32::try_from(*shard).expect("shard"));
            }
            "aborted" => assert_ne!(
                decision,
                Some("committed"),
                "branch {xid}/{shard} aborted against commit"
            ),
            other => panic!("branch {xid}/{shard} left {other}"),
        }
    }
    let mut expected: BTreeMap<String, i64> = (0..ACCOUNTS)
        .map(|i| (format!("acct-{i}"), OPENING))
        .collect();
    let mut committed = 0;
    for (id, (request, state)) in &decisions {
        if state != "committed" {
            continue;
        }
        committed += 1;
        let shards: BTreeSet<u32> = branches(request, SHARDS).into_keys().collect();
        assert_eq!(
            committed_branches.get(id.as_str()),
            Some(&shards),
            "committed transfer {id} is not applied on every shard"
        );
        *expected.get_mut(&request.from).expect("account") -= request.amount;
        *expected.get_mut(&request.to).expect("account") += request.amount;
    }
    let mut committed_locally = 0;
    for (request, _) in local.values().filter(|(_, state)| state == "committed") {
        committed_locally += 1;
        *expected.get_mut(&request.from).expect("account") -= request.amount;
        *expected.get_mut(&request.to).expect("account") += request.amount;
    }

    // Exactly once: each balance is its opening plus its committed moves.
    let balances: Vec<(String, i64)> =
        sqlx::query_as("SELECT id, balance FROM accounts ORDER BY id")
            .fetch_all(pool)
            .await
            .expect("query");
    assert_eq!(balances.into_iter().collect::<BTreeMap<_, _>>(), expected);

    // What clients were told matches the log.
    for ack in acknowledged {
        let state = decisions
            .get(&ack.id)
            .or_else(|| local.get(&ack.id))
            .map(|(_, s)| s.as_str());
        let told = if ack.committed {
            "committed"
        } else {
            "aborted"
        };
        assert_eq!(state, Some(told), "{} was acknowledged {told}", ack.key);
    }
    let acknowledged_commits = acknowledged.iter().filter(|a| a.committed).count();
    eprintln!(
        "audit: {} transfers in the log, {committed} committed; {} in one phase, \
         {committed_locally} committed ({acknowledged_commits} acknowledged to clients), \
         {} branches",
        decisions.len(),
        local.len(),
        branch_rows.len()
    );
    assert!(
        committed_locally > 0,
        "no transfer between two accounts of one shard went through"
    );
    assert!(
        acknowledged_commits >= 50,
        "too few transfers went through to mean anything"
    );
}
