//! Transfers under load, and the bank's invariant checked after them.
//!
//! Each request is a new transfer between two accounts on different shards
//! (so every one is a real two-phase commit) with its own idempotency key.
//! The book remembers every answer. After the run, transfers without a
//! definite answer (a timeout, "outcome unknown", a takeover in progress)
//! are asked again with the same key, as a client must; then every
//! account's balance must be exactly its opening balance plus its committed
//! transfers, the total must not have moved, and no transfer may be left in
//! doubt. Load with a crash in the middle is where a lost acknowledged
//! transfer or a half-applied one would show.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use faultline_cluster::GatewayClient;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// What a transfer's answer says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Sent; no answer yet, or a timeout.
    Pending,
    /// 200: committed.
    Committed,
    /// 422: refused (for example insufficient funds); nothing applied.
    Refused,
    /// 503 `transfer_aborted`: aborted by the system; nothing applied.
    Aborted,
    /// Any other answer: not definite; ask again with the same key.
    Indefinite,
}

impl Answer {
    /// From an answer's status and JSON error code, if any.
    fn from_code(status: u16, error_code: Option<&str>) -> Answer {
        match (status, error_code) {
            (200, _) => Answer::Committed,
            (422, _) => Answer::Refused,
            (503, Some("transfer_aborted")) => Answer::Aborted,
            _ => Answer::Indefinite,
        }
    }

    /// From an answer's status and raw body, which only a 503 needs read.
    fn from_response(status: u16, body: &[u8]) -> Answer {
        let parsed = (status == 503)
            .then(|| serde_json::from_slice::<Value>(body).ok())
            .flatten();
        Answer::from_code(status, parsed.as_ref().and_then(error_code))
    }

    fn is_definite(self) -> bool {
        matches!(self, Answer::Committed | Answer::Refused | Answer::Aborted)
    }
}

/// The `code` of a JSON error answer.
fn error_code(body: &Value) -> Option<&str> {
    body["error"]["code"].as_str()
}

/// A cheap, well-mixed hash (SplitMix64), so that transfer `seq`'s pair and
/// amount can be computed again later without storing them.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The accounts of one run and the answer to every transfer sent.
#[derive(Debug)]
pub struct TransferBook {
    run: String,
    accounts: Vec<String>,
    opening_balance: i64,
    pairs: Vec<(usize, usize)>,
    max_amount: i64,
    answers: Mutex<BTreeMap<u64, Answer>>,
}

/// The invariant check after a run, as reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BankCheck {
    /// Transfers sent.
    pub sent: u64,
    /// Committed, in the end.
    pub committed: u64,
    /// Refused (nothing applied).
    pub refused: u64,
    /// Aborted by the system (nothing applied).
    pub aborted: u64,
    /// How many had no definite answer during the run and got one when
    /// asked again with the same key.
    pub settled_by_asking_again: u64,
    /// Still without a definite answer after asking again.
    pub indefinite: u64,
    /// Sum of the balances before the run.
    pub money_before: i64,
    /// Sum of the balances after it.
    pub money_after: i64,
    /// Accounts whose balance is not opening balance + committed transfers.
    pub accounts_wrong: Vec<String>,
    /// Transfers still in doubt on some shard at the end.
    pub in_doubt: usize,
}

impl BankCheck {
    /// Whether every promise held.
    pub fn holds(&self) -> bool {
        self.indefinite == 0
            && self.money_before == self.money_after
            && self.accounts_wrong.is_empty()
            && self.in_doubt == 0
    }
}

impl TransferBook {
    /// Opens `accounts` accounts named after `run` through `gateway`, and
    /// keeps the pairs that live on different shards (on one shard, for
    /// `same_shard`). Their balances are large enough that no transfer is
    /// refused for want of funds: a load run measures commits, not
    /// refusals.
    pub async fn open(
        gateway: &GatewayClient,
        run: &str,
        accounts: usize,
        max_amount: i64,
        same_shard: bool,
    ) -> anyhow::Result<TransferBook> {
        Self::open_with(
            gateway,
            run,
            accounts,
            1_000_000_000,
            max_amount,
            same_shard,
        )
        .await
    }

    /// [`TransferBook::open`], each account opening with `opening_balance`.
    pub async fn open_with(
        gateway: &GatewayClient,
        run: &str,
        accounts: usize,
        opening_balance: i64,
        max_amount: i64,
        same_shard: bool,
    ) -> anyhow::Result<TransferBook> {
        let mut ids = Vec::new();
        let mut shards = Vec::new();
        for i in 0..accounts {
            let id = format!("{run}-{i}");
            let (status, account) = gateway
                .post(
                    "/v1/accounts",
                    &json!({"id": id, "balance": opening_balance}),
                    &[],
                )
                .await
                .context("opening an account")?;
            anyhow::ensure!(status == 201, "opening {id}: {status} {account}");
            shards.push(account["shard"].as_u64().context("the account's shard")?);
            ids.push(id);
        }
        let pairs: Vec<_> = (0..accounts)
            .flat_map(|a| (0..accounts).map(move |b| (a, b)))
            .filter(|&(a, b)| a != b && (shards[a] == shards[b]) == same_shard)
            .collect();
        anyhow::ensure!(
            !pairs.is_empty(),
            "no pair of accounts fits (same shard: {same_shard})"
        );
        Ok(TransferBook {
            run: run.to_owned(),
            accounts: ids,
            opening_balance,
            pairs,
            max_amount: max_amount.max(1),
            answers: Mutex::new(BTreeMap::new()),
        })
    }

    fn transfer(&self, seq: u64) -> (String, &str, &str, i64) {
        let hash = mix(seq);
        let (from, to) = self.pairs[(hash % self.pairs.len() as u64) as usize];
        let amount = 1 + ((hash >> 32) % self.max_amount as u64) as i64;
        (
            format!("{}-t{seq}", self.run),
            &self.accounts[from],
            &self.accounts[to],
            amount,
        )
    }

    /// Transfer `seq`: its idempotency key and JSON body. Marks it sent.
    pub fn request(&self, seq: u64) -> (String, Bytes) {
        let (key, from, to, amount) = self.transfer(seq);
        self.lock().entry(seq).or_insert(Answer::Pending);
        let body = json!({"from": from, "to": to, "amount": amount}).to_string();
        (key, Bytes::from(body))
    }

    /// Files the answer to transfer `seq`.
    pub fn answered(&self, seq: u64, status: u16, body: &[u8]) {
        self.lock().insert(seq, Answer::from_response(status, body));
    }

    /// Sends transfer `seq` with its key until its answer is definite, at
    /// most `tries` times, `pause` apart, as a client should: a 503 during
    /// a takeover, a 504 (outcome unknown) or a 409 (still in progress) is
    /// not an answer yet. Returns how many tries it took.
    pub async fn send_until_definite(
        &self,
        gateway: &GatewayClient,
        seq: u64,
        tries: u32,
        pause: Duration,
    ) -> u32 {
        self.lock().entry(seq).or_insert(Answer::Pending);
        for attempt in 1..=tries {
            let answer = self.ask_again(gateway, seq).await;
            self.lock().insert(seq, answer);
            if answer.is_definite() {
                return attempt;
            }
            tokio::time::sleep(pause).await;
        }
        tries
    }

    /// How many transfers have a definite answer so far.
    pub fn definite_answers(&self) -> usize {
        self.lock().values().filter(|a| a.is_definite()).count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Answer>> {
        crate::lock(&self.answers)
    }

    /// Sends transfer `seq` again with its key: a client's way to learn the
    /// outcome of a transfer whose answer it missed.
    async fn ask_again(&self, gateway: &GatewayClient, seq: u64) -> Answer {
        let (key, from, to, amount) = self.transfer(seq);
        let body = json!({"from": from, "to": to, "amount": amount});
        match gateway
            .post("/v1/transfers", &body, &[("idempotency-key", &key)])
            .await
        {
            Ok((status, answer)) => Answer::from_code(status, error_code(&answer)),
            Err(_) => Answer::Indefinite,
        }
    }

    /// Asks again, with the same key, about every transfer without a
    /// definite answer; then checks the balances and the in-doubt list.
    pub async fn check(&self, gateway: &GatewayClient) -> anyhow::Result<BankCheck> {
        let mut unsettled: Vec<u64> = self
            .lock()
            .iter()
            .filter(|(_, answer)| !answer.is_definite())
            .map(|(&seq, _)| seq)
            .collect();
        let mut settled_by_asking_again = 0;
        // Rounds over all the unsettled, a few at a time, under one
        // deadline: a system that never decides must not stall the check.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !unsettled.is_empty() && tokio::time::Instant::now() < deadline {
            let answers = futures::stream::iter(unsettled.iter().copied())
                .map(|seq| async move { (seq, self.ask_again(gateway, seq).await) })
                .buffer_unordered(8)
                .collect::<Vec<_>>()
                .await;
            for (seq, answer) in answers {
                if answer.is_definite() {
                    settled_by_asking_again += 1;
                    self.lock().insert(seq, answer);
                }
            }
            unsettled.retain(|seq| self.lock().get(seq).is_some_and(|a| !a.is_definite()));
            if !unsettled.is_empty() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }

        let in_doubt = wait_until_nothing_in_doubt(gateway).await;
        let answers = self.lock().clone();
        let count = |wanted: Answer| answers.values().filter(|&&a| a == wanted).count() as u64;
        let mut expected: BTreeMap<&str, i64> = self
            .accounts
            .iter()
            .map(|id| (id.as_str(), self.opening_balance))
            .collect();
        for (&seq, _) in answers.iter().filter(|(_, a)| **a == Answer::Committed) {
            let (_, from, to, amount) = self.transfer(seq);
            *expected.get_mut(from).expect("an account of this run") -= amount;
            *expected.get_mut(to).expect("an account of this run") += amount;
        }
        let mut money_after = 0;
        let mut accounts_wrong = Vec::new();
        for (id, want) in &expected {
            let (_, account) = gateway
                .get(&format!("/v1/accounts/{id}"))
                .await
                .context("reading an account")?;
            let balance = account["balance"]
                .as_i64()
                .context("the account's balance")?;
            money_after += balance;
            if balance != *want {
                accounts_wrong.push(format!(
                    "{id}: holds {balance}, committed transfers make it {want}"
                ));
            }
        }
        Ok(BankCheck {
            sent: answers.len() as u64,
            committed: count(Answer::Committed),
            refused: count(Answer::Refused),
            aborted: count(Answer::Aborted),
            settled_by_asking_again,
            indefinite: answers.values().filter(|a| !a.is_definite()).count() as u64,
            money_before: self.opening_balance * self.accounts.len() as i64,
            money_after,
            accounts_wrong,
            in_doubt,
        })
    }
}

/// Waits (up to 60 s) for the in-doubt list to empty; returns what is left
/// (`usize::MAX` if the list could not be read at all).
async fn wait_until_nothing_in_doubt(gateway: &GatewayClient) -> usize {
    let mut left = usize::MAX;
    for _ in 0..300 {
        if let Ok((200, list)) = gateway.get("/v1/transfers/in-doubt").await {
            left = list["transfers"].as_array().map_or(usize::MAX, Vec::len);
            if left == 0 {
                return 0;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_as_a_client_must_read_them() {
        assert_eq!(Answer::from_response(200, b"{}"), Answer::Committed);
        assert_eq!(Answer::from_response(422, b"{}"), Answer::Refused);
        let aborted = br#"{"error":{"code":"transfer_aborted","message":"..."}}"#;
        assert_eq!(Answer::from_response(503, aborted), Answer::Aborted);
        let no_coordinator = br#"{"error":{"code":"no_coordinator","message":"..."}}"#;
        assert_eq!(
            Answer::from_response(503, no_coordinator),
            Answer::Indefinite
        );
        assert_eq!(Answer::from_response(504, b"{}"), Answer::Indefinite);
        assert_eq!(Answer::from_response(409, b"{}"), Answer::Indefinite);
    }

    #[test]
    fn a_transfer_is_the_same_when_computed_again() {
        let book = TransferBook {
            run: "r".into(),
            accounts: vec!["a".into(), "b".into(), "c".into()],
            opening_balance: 100,
            pairs: vec![(0, 1), (1, 2), (2, 0)],
            max_amount: 50,
            answers: Mutex::new(BTreeMap::new()),
        };
        for seq in 0..1000 {
            let first = book.transfer(seq);
            assert_eq!(first, book.transfer(seq));
            assert!((1..=50).contains(&first.3));
            assert_ne!(first.1, first.2);
        }
        let (key, body) = book.request(7);
        assert_eq!(key, "r-t7");
        let body: Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(body["amount"].as_i64(), Some(book.transfer(7).3));
        assert_eq!(book.lock().get(&7), Some(&Answer::Pending));
    }
}
