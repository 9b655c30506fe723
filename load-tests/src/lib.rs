//! Faultline's load tool: an open-model load generator, the scenarios that
//! measure Faultline against its baselines, and the reports they write.
//!
//! | module | what |
//! |---|---|
//! | [`schedule`] | when each request is due (constant or stepped rate) |
//! | [`recorder`] | HDR latency histograms, errors by class, the timeline |
//! | [`engine`] | open-model and closed-loop drivers over N connections |
//! | [`http1`] | a minimal HTTP/1.1 client: request written once, head parsed in place |
//! | [`target`] | HTTP and NATS request/reply targets |
//! | [`transfers`] | transfer requests and the bank invariant check |
//! | [`demo`] | the scripted tour of faults `./faultline demo` runs |
//! | [`exposition`] | Prometheus text, read sample by sample |
//! | [`phases`] | where a transfer's time goes: the coordinator's phase histograms |
//! | [`scenario`] | scenario files: system, faults, baselines, runs |
//! | [`report`] | JSON and Markdown reports, read-offs (shares, failover) |
//! | [`redundancy`] | random kill/restart schedules, and measured availability against `1 − (1 − p)^k` |
//! | [`plot`] | the SVG picture of a run |
//! | [`summary`] | the table of ratios across scenarios |
//!
//! `schedule`, `recorder`, `phases`, `redundancy` and the read-offs in `report` are pure arithmetic
//! with unit tests, as is `http1`'s parsing; I/O lives in `engine`,
//! `http1`'s connection, `target` and `scenario`.

use std::sync::{Mutex, MutexGuard};

/// Locks a mutex, even one a panicking task left poisoned: the data here
/// (samples, answers, events heard) stays meaningful.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A run's name as a file-name part: `Full path, open` -> `full-path--open`.
pub fn slug(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

pub mod cpu;
pub mod demo;
pub mod engine;
pub mod exposition;
pub mod http1;
pub mod phases;
pub mod plot;
pub mod recorder;
pub mod redundancy;
pub mod report;
pub mod scenario;
pub mod schedule;
pub mod summary;
pub mod target;
pub mod transfers;
