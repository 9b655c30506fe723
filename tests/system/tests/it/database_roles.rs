//! Least privilege in the database: the real migrate step applies the
//! schema as its owner, and the services' roles (migration 0008) may do
//! their own service's writes and nothing else. Every attack here must be
//! refused by PostgreSQL with "permission denied" (SQLSTATE 42501) and
//! change nothing. That the services do all their work under these roles
//! is shown by every bank test: the harness starts them as these roles.
//! Last, the whole bank over TLS to PostgreSQL, verified against the
//! deployment's CA.

use faultline_cluster::database::{TestDatabase, run_migrate_step};
use faultline_cluster::postgres::PrivatePostgres;
use faultline_cluster::{BankSpec, Cluster, ClusterSpec, binary};
use faultline_storage::{COORDINATOR_ROLE, StorageError, WORKER_ROLE};
use serde_json::json;
use sqlx::{Connection as _, PgConnection};

use crate::{open_account, transfer};

/// PostgreSQL's "insufficient privilege".
const PERMISSION_DENIED: &str = "42501";

async fn connect_as(database: &TestDatabase, role: &str) -> PgConnection {
    PgConnection::connect(&database.url_as(role))
        .await
        .unwrap_or_else(|error| panic!("{role} logs in: {error}"))
}

/// Runs `statement` as `connection`'s role and expects PostgreSQL to refuse
/// it for want of a privilege.
async fn refused(connection: &mut PgConnection, role: &str, statement: &'static str) {
    let error = sqlx::query(statement)
        .execute(&mut *connection)
        .await
        .err()
        .unwrap_or_else(|| panic!("{role} must not be allowed: {statement}"));
    let code = error
        .as_database_error()
        .and_then(|error| error.code().map(|code| code.into_owned()));
    assert_eq!(
        code.as_deref(),
        Some(PERMISSION_DENIED),
        "{role}: {statement}: {error}"
    );
}

async fn allowed(connection: &mut PgConnection, role: &str, statement: &'static str) {
    sqlx::query(statement)
        .execute(&mut *connection)
        .await
        .unwrap_or_else(|error| panic!("{role} may run {statement}: {error}"));
}

#[tokio::test]
async fn each_service_role_may_write_only_its_own_data() {
    let database = TestDatabase::create().await.expect("a test database");
    // A service started before the migrate step waits: the schema is
    // not there yet.
    let pool = sqlx::PgPool::connect(&database.url).await.expect("a pool");
    assert!(
        matches!(
            faultline_storage::schema_is_current(&pool).await,
            Err(StorageError::SchemaBehind { applied: None, .. })
        ),
        "an empty database is not a current schema"
    );
    let program = binary("migrate").expect("the migrate step is built");
    run_migrate_step(program.clone(), &database.url)
        .await
        .expect("the migrate step applies the schema");
    // Running it again (every deployment's start) changes nothing.
    run_migrate_step(program, &database.url)
        .await
        .expect("the migrate step runs twice");
    faultline_storage::schema_is_current(&pool)
        .await
        .expect("the schema is current");
    sqlx::raw_sql(
        "INSERT INTO shards (shard) VALUES (0); \
         INSERT INTO accounts (id, shard, balance) VALUES ('alice', 0, 100); \
         INSERT INTO transfers (id, state, begun_by_token) \
             VALUES ('00000000-0000-0000-0000-000000000001', 'aborted', 1)",
    )
    .execute(&pool)
    .await
    .expect("the owner writes the fixtures");

    let mut worker = connect_as(&database, WORKER_ROLE).await;
    // A worker cannot rewrite the decision log, its fence or its intents.
    for statement in [
        "UPDATE transfers SET state = 'committed'",
        "INSERT INTO transfers (id, state, begun_by_token) \
             VALUES ('00000000-0000-0000-0000-000000000002', 'committed', 1)",
        "UPDATE coordinator_fence SET token = 9223372036854775807",
        "INSERT INTO transfer_intents (xid, token, legs) \
             VALUES ('00000000-0000-0000-0000-000000000003', 1, '[]')",
        "DELETE FROM transfer_intents",
        // Nor change the schema, or act as another role.
        "CREATE TABLE mine (x int)",
        "ALTER TABLE accounts DROP CONSTRAINT accounts_balance_at_most_the_ceiling",
        "SET ROLE faultline_coordinator",
    ] {
        refused(&mut worker, WORKER_ROLE, statement).await;
    }
    // Its own work: balances, shard ownership, reading the log.
    for statement in [
        "UPDATE accounts SET balance = balance, held = held",
        "UPDATE shards SET owner = 'worker-1', epoch = epoch + 1",
        "SELECT token FROM coordinator_fence",
        "SELECT count(*) FROM transfers",
    ] {
        allowed(&mut worker, WORKER_ROLE, statement).await;
    }

    let mut coordinator = connect_as(&database, COORDINATOR_ROLE).await;
    // A coordinator cannot move money, prepare a branch, record a one-phase
    // transfer, or take a shard.
    for statement in [
        "UPDATE accounts SET balance = 1000000",
        "INSERT INTO accounts (id, shard, balance) VALUES ('mallory', 0, 1000000)",
        "INSERT INTO branches (xid, shard, state, legs) \
             VALUES ('00000000-0000-0000-0000-000000000004', 0, 'committed', '[]')",
        "INSERT INTO local_transfers (id, shard, idempotency_key, from_account, to_account, \
             amount, state, token) \
             VALUES ('00000000-0000-0000-0000-000000000005', 0, 'k', 'a', 'b', 1, 'committed', 1)",
        "UPDATE shards SET owner = 'mallory'",
        "DROP TABLE accounts",
    ] {
        refused(&mut coordinator, COORDINATOR_ROLE, statement).await;
    }
    for statement in [
        "UPDATE coordinator_fence SET token = token",
        "UPDATE shards SET coordinator_token = coordinator_token",
        "UPDATE transfers SET state = state",
        "SELECT sum(balance) FROM accounts",
    ] {
        allowed(&mut coordinator, COORDINATOR_ROLE, statement).await;
    }

    // Nothing the refusals tried changed anything.
    let (balance, state, fence): (i64, String, i64) = sqlx::query_as(
        "SELECT (SELECT balance FROM accounts WHERE id = 'alice'), \
                (SELECT state FROM transfers), \
                (SELECT token FROM coordinator_fence)",
    )
    .fetch_one(&pool)
    .await
    .expect("reads back");
    assert_eq!((balance, state.as_str(), fence), (100, "aborted", 0));
}

/// PostgreSQL over TLS, as compose and Kubernetes run it: the server takes
/// TCP connections over TLS only, and every service (and the migrate
/// step) connects with `sslmode=verify-full` against the deployment's CA.
/// A transfer goes through; a plaintext connection and one that does not
/// trust the CA are refused.
#[tokio::test]
async fn the_bank_runs_on_postgres_over_verified_tls_only() {
    let postgres = PrivatePostgres::start_with_tls()
        .await
        .expect("a PostgreSQL server of the test's own, with TLS");
    let admin = postgres.admin_url();
    assert!(admin.contains("sslmode=verify-full"), "{admin}");
    let cluster = Cluster::start(ClusterSpec {
        monitors: 1,
        bank: Some(BankSpec {
            server: Some(admin.clone()),
            ..BankSpec::default()
        }),
        ..ClusterSpec::default()
    })
    .await
    .expect("the bank starts over TLS");
    open_account(&cluster, "tls-alice", 100).await;
    open_account(&cluster, "tls-bob", 0).await;
    let (status, body) = transfer(
        &cluster,
        "tls-1",
        &json!({ "from": "tls-alice", "to": "tls-bob", "amount": 30 }),
    )
    .await;
    assert_eq!(
        (status, body["state"].as_str()),
        (200, Some("committed")),
        "{body}"
    );

    let address = admin.split_once('?').expect("parameters").0;
    let plaintext = PgConnection::connect(&format!("{address}?sslmode=disable"))
        .await
        .expect_err("a plaintext connection must be refused");
    // 28000: no pg_hba.conf line admits it (only `hostssl` lines do).
    assert_eq!(
        plaintext
            .as_database_error()
            .and_then(|error| error.code().map(|code| code.into_owned()))
            .as_deref(),
        Some("28000"),
        "{plaintext}"
    );
    // A CA the server's certificate does not come from.
    let elsewhere = tempfile::tempdir().expect("a directory");
    faultline_cluster::tls::generate(elsewhere.path()).expect("another CA");
    let impostor_ca = elsewhere.path().join(faultline_cluster::tls::CA_FILE);
    let untrusting = PgConnection::connect(&format!(
        "{address}?sslmode=verify-full&sslrootcert={}",
        impostor_ca.display()
    ))
    .await
    .expect_err("verify-full must refuse an unknown CA");
    // rustls's refusal, as sqlx passes it on.
    assert!(
        untrusting.to_string().contains("invalid peer certificate"),
        "the TLS handshake refuses it: {untrusting}"
    );
}
