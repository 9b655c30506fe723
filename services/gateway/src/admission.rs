//! Load shedding at the door: what the gateway refuses at once rather than
//! queue until the caller's deadline.
//!
//! - **A concurrency limit** (`--max-concurrent-requests`): past it a
//!   request is answered 503 `overloaded` with `Retry-After`, without
//!   parsing its body or holding a slot. Requests waiting in the gateway
//!   cost memory and, worse, latency for everyone admitted; a fast refusal
//!   lets a client back off or go to another replica (as Envoy's overload
//!   manager and concurrency limits do). With `--adaptive-concurrency` the
//!   limit follows the latency the gateway measures
//!   ([`crate::concurrency_limit`]), up to that number.
//! - **A rate limit per client** (`--client-rate-limit`, `--client-burst`):
//!   a token bucket per client address, answered 429 `rate_limited` with
//!   `Retry-After` saying when the next token comes. IPv6 clients are
//!   grouped by /64, since one host owns a whole /64. The address is the
//!   connection's peer: a `X-Forwarded-For` is not trusted, so behind a
//!   proxy the limit is the proxy's.
//!
//! Probes and scrapes (`/live`, `/ready`, `/metrics`) are never shed: an
//! overloaded gateway must still say so. The buckets ([`ClientBuckets`])
//! are pure and unit-tested; the middleware ([`admit`]) is the edge.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{HttpResponse, web};
use faultline_protocol::ErrorBody;
use faultline_runtime::refuse::{Discard, refuse};
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Semaphore;

use crate::concurrency_limit::{GradientLimit, Tuning};

/// How many clients' buckets are kept at most; past it, full (idle)
/// buckets are forgotten, and if none is, new clients share one bucket.
const MAX_TRACKED_CLIENTS: usize = 65_536;

/// Admission settings, as the gateway's flags give them.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Requests served at once (with `adaptive`, at most).
    pub max_concurrent: usize,
    /// With a tuning, the limit adapts to latency, up to
    /// `max_concurrent`.
    pub adaptive: Option<Tuning>,
    /// Requests per second per client (0: no limit).
    pub client_rate: u32,
    /// Requests a client may send at once above its rate.
    pub client_burst: u32,
}

/// A token bucket: `rate` tokens a second, at most `burst` kept.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Every client's bucket (pure: the time is given).
#[derive(Debug)]
pub struct ClientBuckets {
    rate: f64,
    burst: f64,
    buckets: HashMap<IpAddr, Bucket>,
    /// The bucket new clients share when the table is full of active ones.
    overflow: Option<Bucket>,
}

impl ClientBuckets {
    /// `rate` requests a second per client, `burst` at once.
    pub fn new(rate: u32, burst: u32) -> ClientBuckets {
        ClientBuckets {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            buckets: HashMap::new(),
            overflow: None,
        }
    }

    /// Takes a token for `client` at `now`: `Err` with the wait until the
    /// next one if there is none.
    pub fn take(&mut self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let (rate, burst) = (self.rate, self.burst);
        let fresh = Bucket {
            tokens: burst,
            updated: now,
        };
        if !self.buckets.contains_key(&client) && self.buckets.len() >= MAX_TRACKED_CLIENTS {
            self.buckets
                .retain(|_, bucket| refill(*bucket, rate, burst, now).tokens < burst);
        }
        let bucket = if self.buckets.len() < MAX_TRACKED_CLIENTS {
            self.buckets.entry(client).or_insert(fresh)
        } else if let Some(bucket) = self.buckets.get_mut(&client) {
            bucket
        } else {
            self.overflow.get_or_insert(fresh)
        };
        *bucket = refill(*bucket, rate, burst, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }

    /// How many clients are tracked.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

fn refill(bucket: Bucket, rate: f64, burst: f64, now: Instant) -> Bucket {
    let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
    Bucket {
        tokens: (bucket.tokens + elapsed * rate).min(burst),
        updated: now.max(bucket.updated),
    }
}

/// The key of a client: its IPv4 address, or its IPv6 /64.
pub fn client_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

/// The gateway's admission state, as app data (`web::Data<Admission>`).
#[derive(Debug)]
pub struct Admission {
    concurrency: Concurrency,
    clients: Option<Mutex<ClientBuckets>>,
}

/// The concurrency limit, fixed or adaptive.
#[derive(Debug)]
enum Concurrency {
    Fixed(Arc<Semaphore>),
    Adaptive(Arc<Adaptive>),
}

/// An adaptive limit shared by every HTTP worker thread: the count and the
/// limit are atomics on the admission path; the rule behind a lock, taken
/// once per finished request.
#[derive(Debug)]
struct Adaptive {
    in_flight: AtomicUsize,
    limit: AtomicUsize,
    rule: Mutex<GradientLimit>,
}

/// One request admitted under an adaptive limit: when it ends (dropped,
/// however it ends), its latency is measured and it leaves the count.
struct AdaptiveSlot {
    adaptive: Arc<Adaptive>,
    admitted: Instant,
    in_flight: usize,
}

impl Drop for AdaptiveSlot {
    fn drop(&mut self) {
        let adaptive = &self.adaptive;
        adaptive.in_flight.fetch_sub(1, Ordering::AcqRel);
        let now = Instant::now();
        let limit = adaptive
            .rule
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .sample(now - self.admitted, self.in_flight, now);
        adaptive.limit.store(limit, Ordering::Release);
    }
}

/// A concurrency slot, held while a request runs; dropping it frees the
/// slot (and, adaptive, measures the request).
enum Slot {
    Fixed(#[expect(dead_code, reason = "held for its drop")] tokio::sync::OwnedSemaphorePermit),
    Adaptive(#[expect(dead_code, reason = "held for its drop")] AdaptiveSlot),
}

impl Admission {
    /// Admission within `limits`.
    pub fn new(limits: Limits) -> Admission {
        let concurrency = if let Some(tuning) = limits.adaptive {
            let now = Instant::now();
            // Start low and grow: a new gateway has measured nothing.
            let rule = GradientLimit::new(tuning, 32, now);
            Concurrency::Adaptive(Arc::new(Adaptive {
                in_flight: AtomicUsize::new(0),
                limit: AtomicUsize::new(rule.limit()),
                rule: Mutex::new(rule),
            }))
        } else {
            Concurrency::Fixed(Arc::new(Semaphore::new(limits.max_concurrent)))
        };
        Admission {
            concurrency,
            clients: (limits.client_rate > 0)
                .then(|| Mutex::new(ClientBuckets::new(limits.client_rate, limits.client_burst))),
        }
    }

    /// A slot for one more request, if the limit allows it.
    fn slot(&self) -> Option<Slot> {
        match &self.concurrency {
            Concurrency::Fixed(slots) => slots.clone().try_acquire_owned().ok().map(Slot::Fixed),
            Concurrency::Adaptive(adaptive) => {
                let in_flight = adaptive.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
                if in_flight > adaptive.limit.load(Ordering::Acquire) {
                    adaptive.in_flight.fetch_sub(1, Ordering::AcqRel);
                    return None;
                }
                Some(Slot::Adaptive(AdaptiveSlot {
                    adaptive: adaptive.clone(),
                    admitted: Instant::now(),
                    in_flight,
                }))
            }
        }
    }
}

/// `--adaptive-tolerance`: a factor from 1 to 4.
pub fn parse_tolerance(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(tolerance) if (1.0..=4.0).contains(&tolerance) => Ok(tolerance),
        _ => Err(format!("{text:?} is not a factor from 1 to 4")),
    }
}

/// Why a request was shed: the `reason` label of the metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// The client is over its rate (429).
    RateLimited,
    /// The gateway is at its concurrency limit (503).
    Overloaded,
}

impl Shed {
    /// The label value, and the error code.
    pub fn as_str(self) -> &'static str {
        match self {
            Shed::RateLimited => "rate_limited",
            Shed::Overloaded => "overloaded",
        }
    }

    fn response(self, retry_after: Duration) -> HttpResponse {
        // Whole seconds, rounded up: `Retry-After` has no finer unit.
        let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        let (mut builder, message) = match self {
            Shed::RateLimited => (
                HttpResponse::TooManyRequests(),
                "this client is over its request rate; retry after the time in Retry-After",
            ),
            Shed::Overloaded => (
                HttpResponse::ServiceUnavailable(),
                "the gateway is at its concurrency limit; retry after the time in Retry-After, or on another gateway",
            ),
        };
        builder
            .insert_header((header::RETRY_AFTER, seconds.max(1).to_string()))
            .json(ErrorBody::new(self.as_str(), message))
    }
}

/// Middleware (`from_fn(admit)`): sheds what is over the limits before
/// the body is read, and holds a concurrency slot while the request runs.
pub async fn admit(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let exempt = matches!(request.path(), "/live" | "/ready" | "/metrics");
    let admission = request.app_data::<web::Data<Admission>>().cloned();
    let (Some(admission), false) = (admission, exempt) else {
        return Ok(next.call(request).await?.map_into_left_body());
    };
    if let (Some(clients), Some(peer)) = (&admission.clients, request.peer_addr()) {
        let taken = clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take(client_key(peer.ip()), Instant::now());
        if let Err(wait) = taken {
            return Ok(shed(request, Shed::RateLimited, wait).await);
        }
    }
    let Some(_slot) = admission.slot() else {
        return Ok(shed(request, Shed::Overloaded, Duration::from_secs(1)).await);
    };
    Ok(next.call(request).await?.map_into_left_body())
}

/// Counts and refuses `request` (see [`faultline_runtime::refuse`]: its
/// body is read and dropped first, within the gateway's own limits for a
/// body). No slot is held meanwhile.
async fn shed<B>(
    request: ServiceRequest,
    why: Shed,
    wait: Duration,
) -> ServiceResponse<EitherBody<B>> {
    let discard = match request.app_data::<web::Data<crate::AppState>>() {
        Some(state) => {
            state.metrics.shed(why.as_str());
            Discard {
                max_bytes: state.max_body_bytes,
                timeout: state.body_timeout,
            }
        }
        None => Discard {
            max_bytes: 0,
            timeout: Duration::ZERO,
        },
    };
    refuse(request, why.response(wait), discard).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALICE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const BOB: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn a_client_gets_its_burst_then_its_rate_and_others_are_untouched() {
        let start = Instant::now();
        let mut buckets = ClientBuckets::new(10, 3);
        for _ in 0..3 {
            assert_eq!(buckets.take(ALICE, start), Ok(()));
        }
        let wait = buckets.take(ALICE, start).expect_err("over the burst");
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100));
        assert_eq!(buckets.take(BOB, start), Ok(()));
        // One token a tenth of a second later.
        let later = start + Duration::from_millis(100);
        assert_eq!(buckets.take(ALICE, later), Ok(()));
        assert!(buckets.take(ALICE, later).is_err());
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("address");
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().expect("address");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("address");
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().expect("address");
        assert_eq!(client_key(mapped), ALICE);
    }

    #[test]
    fn the_table_forgets_idle_clients_and_stays_bounded() {
        let start = Instant::now();
        let mut buckets = ClientBuckets::new(1, 1);
        for n in 0..MAX_TRACKED_CLIENTS as u32 {
            let client = IpAddr::V4(n.into());
            assert_eq!(buckets.take(client, start), Ok(()));
        }
        // All active: a new client shares the overflow bucket.
        let newcomer = IpAddr::V4(u32::MAX.into());
        assert_eq!(buckets.take(newcomer, start), Ok(()));
        assert_eq!(buckets.tracked(), MAX_TRACKED_CLIENTS);
        // A second later every bucket is full again: they are forgotten.
        let later = start + Duration::from_secs(1);
        assert_eq!(buckets.take(newcomer, later), Ok(()));
        assert_eq!(buckets.tracked(), 1);
    }

    proptest! {
        /// Over any stretch of time, a client is admitted at most its
        /// burst plus its rate times the stretch.
        #[test]
        fn admitted_never_exceed_burst_plus_rate_times_time(
            rate in 1u32..1000,
            burst in 1u32..100,
            gaps_us in proptest::collection::vec(0u64..20_000, 1..400),
        ) {
            let start = Instant::now();
            let mut buckets = ClientBuckets::new(rate, burst);
            let mut now = start;
            let mut admitted = 0u64;
            for gap in gaps_us {
                now += Duration::from_micros(gap);
                if buckets.take(ALICE, now).is_ok() {
                    admitted += 1;
                }
            }
            let allowed = f64::from(burst) + f64::from(rate) * (now - start).as_secs_f64();
            prop_assert!(admitted as f64 <= allowed + 1e-9, "{admitted} > {allowed}");
        }
    }
}
