//! The work itself: echo, CPU work, simulated latency.
//!
//! Work stops at the caller's deadline: sleeping is cancelled by the
//! timeout around it, and CPU work (which runs on a blocking thread that no
//! timeout can cancel) checks the deadline itself every 64k rounds.

use std::time::{Duration, Instant};

use faultline_protocol::Operation;
use faultline_protocol::call::CallResult;

/// CPU calls above this many iterations run on the blocking pool, so a
/// long one cannot stall the small calls sharing its runtime thread.
const INLINE_CPU_ITERATIONS: u64 = 50_000;

/// Rounds of CPU work between two looks at the deadline.
const DEADLINE_CHECK_EVERY: u64 = 1 << 16;

/// The blocking thread running CPU work died (it panicked).
#[derive(Debug, thiserror::Error)]
#[error("the CPU work stopped before finishing: {0}")]
pub struct WorkFailed(#[from] tokio::task::JoinError);

/// Runs one operation. `Ok(None)` if the deadline passed first.
pub async fn execute(
    operation: Operation,
    deadline: Option<Instant>,
) -> Result<Option<CallResult>, WorkFailed> {
    let cpu = |iterations, checksum: Option<u64>| {
        checksum.map(|checksum| CallResult::Cpu {
            iterations,
            checksum,
        })
    };
    Ok(match operation {
        Operation::Echo { message } => Some(CallResult::Echo { message }),
        Operation::Cpu { iterations } if iterations <= INLINE_CPU_ITERATIONS => {
            cpu(iterations, hash_chain(iterations, None))
        }
        Operation::Cpu { iterations } => {
            let checksum =
                tokio::task::spawn_blocking(move || hash_chain(iterations, deadline)).await?;
            cpu(iterations, checksum)
        }
        Operation::Sleep { millis } => {
            tokio::time::sleep(Duration::from_millis(millis)).await;
            Some(CallResult::Sleep { millis })
        }
    })
}

/// `iterations` rounds of xorshift64*, a deterministic busy loop whose
/// result depends on every round, so the compiler cannot skip it. `None`
/// if `deadline` passes first.
pub fn hash_chain(iterations: u64, deadline: Option<Instant>) -> Option<u64> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..iterations {
        if round % DEADLINE_CHECK_EVERY == 0 && deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
    }
    Some(std::hint::black_box(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_chain_is_deterministic_and_depends_on_its_length() {
        assert_eq!(hash_chain(1000, None), hash_chain(1000, None));
        assert_ne!(hash_chain(1000, None), hash_chain(1001, None));
    }

    #[test]
    fn cpu_work_stops_at_a_passed_deadline() {
        assert_eq!(hash_chain(u64::MAX, Some(Instant::now())), None);
    }

    #[tokio::test]
    async fn echo_returns_the_message() {
        let result = execute(
            Operation::Echo {
                message: "hi".into(),
            },
            None,
        )
        .await;
        let expected = CallResult::Echo {
            message: "hi".into(),
        };
        assert_eq!(result.ok().flatten(), Some(expected));
    }

    #[tokio::test]
    async fn long_cpu_work_gives_up_at_its_deadline() {
        let deadline = Some(Instant::now() + Duration::from_millis(5));
        let result = execute(
            Operation::Cpu {
                iterations: u64::MAX,
            },
            deadline,
        )
        .await;
        assert!(matches!(result, Ok(None)));
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_waits_the_asked_time() {
        let start = tokio::time::Instant::now();
        let result = execute(Operation::Sleep { millis: 40 }, None).await;
        assert!(matches!(result, Ok(Some(CallResult::Sleep { millis: 40 }))));
        assert_eq!(start.elapsed(), Duration::from_millis(40));
    }
}
