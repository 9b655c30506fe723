//! Where a transfer's time goes: the coordinator's
//! `faultline_coordinator_phase_duration_seconds` histogram, read before
//! and after a run, as count, mean, p50 and p99 per phase of two-phase
//! commit.
//!
//! Pure arithmetic over Prometheus text expositions; the scenario does the
//! scraping. Quantiles are estimated from the cumulative buckets as
//! Prometheus's `histogram_quantile` does: linearly within the bucket the
//! rank falls in, so they are as coarse as the buckets (powers of two from
//! 0.1 ms).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

const FAMILY: &str = "faultline_coordinator_phase_duration_seconds";

/// One process's phase histograms, by phase.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PhaseHistograms {
    by_phase: BTreeMap<String, Histogram>,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Histogram {
    /// (upper bound in seconds, cumulative count), `+Inf` last.
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

/// One phase over a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseTiming {
    /// `prepare`, `decide`, `phase_two`, `finish` or `one_phase` (`begin`
    /// too, in versions that wrote a record before the prepares).
    pub phase: String,
    /// Steps timed during the run.
    pub count: u64,
    /// Mean, ms.
    pub mean_ms: f64,
    /// Median, ms (bucket-interpolated).
    pub p50_ms: f64,
    /// 99th percentile, ms (bucket-interpolated).
    pub p99_ms: f64,
}

impl PhaseHistograms {
    /// Reads the phase histograms out of one `/metrics` page.
    pub fn parse(exposition: &str) -> Self {
        let mut by_phase: BTreeMap<String, Histogram> = BTreeMap::new();
        for sample in crate::exposition::samples(exposition) {
            let Some(kind) = sample.name.strip_prefix(FAMILY) else {
                continue;
            };
            let Some(phase) = sample.label("phase") else {
                continue;
            };
            let value = sample.value;
            let histogram = by_phase.entry(phase).or_default();
            match kind {
                "_sum" => histogram.sum = value,
                "_count" => histogram.count = value,
                "_bucket" => {
                    let le = sample.label("le").and_then(|le| match le.as_str() {
                        "+Inf" => Some(f64::INFINITY),
                        other => other.parse().ok(),
                    });
                    if let Some(le) = le {
                        histogram.buckets.push((le, value));
                    }
                }
                _ => {}
            }
        }
        for histogram in by_phase.values_mut() {
            histogram.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        PhaseHistograms { by_phase }
    }

    /// Adds what one process counted between `before` and `after`. A
    /// process whose counts went back restarted in between: all it counted
    /// is in `after`.
    pub fn add_growth(&mut self, before: &PhaseHistograms, after: &PhaseHistograms) {
        for (phase, late) in &after.by_phase {
            let early = before
                .by_phase
                .get(phase)
                .filter(|early| early.count <= late.count);
            let total = self.by_phase.entry(phase.clone()).or_default();
            total.sum += late.sum - early.map_or(0.0, |e| e.sum);
            total.count += late.count - early.map_or(0.0, |e| e.count);
            for &(le, cumulative) in &late.buckets {
                let earlier = early
                    .and_then(|e| e.buckets.iter().find(|(l, _)| *l == le))
                    .map_or(0.0, |(_, c)| *c);
                match total.buckets.iter_mut().find(|(l, _)| *l == le) {
                    Some((_, c)) => *c += cumulative - earlier,
                    None => total.buckets.push((le, cumulative - earlier)),
                }
            }
            total.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
    }

    /// Each phase that ran, in protocol order.
    pub fn timings(&self) -> Vec<PhaseTiming> {
        const ORDER: [&str; 6] = [
            "begin",
            "prepare",
            "decide",
            "phase_two",
            "finish",
            "one_phase",
        ];
        // `begin` is kept so that reports of versions that wrote a begin
        // record still read in order.
        let rank = |phase: &str| {
            ORDER
                .iter()
                .position(|p| *p == phase)
                .unwrap_or(ORDER.len())
        };
        let mut timings: Vec<PhaseTiming> = self
            .by_phase
            .iter()
            .filter(|(_, h)| h.count > 0.0)
            .map(|(phase, h)| PhaseTiming {
                phase: phase.clone(),
                count: h.count as u64,
                mean_ms: h.sum / h.count * 1000.0,
                p50_ms: h.quantile(0.5) * 1000.0,
                p99_ms: h.quantile(0.99) * 1000.0,
            })
            .collect();
        timings.sort_by_key(|t| rank(&t.phase));
        timings
    }
}

impl Histogram {
    /// The `q` quantile, interpolated within its bucket; the last finite
    /// bound if it falls in `+Inf`.
    fn quantile(&self, q: f64) -> f64 {
        let rank = q * self.count;
        let mut lower = (0.0, 0.0);
        for &(le, cumulative) in &self.buckets {
            if cumulative >= rank {
                if le.is_infinite() {
                    return lower.0;
                }
                let within = cumulative - lower.1;
                let fraction = if within > 0.0 {
                    (rank - lower.1) / within
                } else {
                    1.0
                };
                return lower.0 + (le - lower.0) * fraction;
            }
            lower = (le, cumulative);
        }
        lower.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(count_fast: u32, count_slow: u32) -> String {
        let total = count_fast + count_slow;
        format!(
            "# TYPE {FAMILY} histogram\n\
             {FAMILY}_sum{{phase=\"prepare\"}} {}\n\
             {FAMILY}_count{{phase=\"prepare\"}} {total}\n\
             {FAMILY}_bucket{{le=\"0.001\",phase=\"prepare\"}} 0\n\
             {FAMILY}_bucket{{le=\"0.002\",phase=\"prepare\"}} {count_fast}\n\
             {FAMILY}_bucket{{le=\"0.004\",phase=\"prepare\"}} {total}\n\
             {FAMILY}_bucket{{le=\"+Inf\",phase=\"prepare\"}} {total}\n",
            f64::from(count_fast) * 0.0015 + f64::from(count_slow) * 0.003
        )
    }

    #[test]
    fn a_run_counts_only_what_grew_during_it() {
        let before = PhaseHistograms::parse(&page(10, 0));
        let after = PhaseHistograms::parse(&page(110, 100));
        let mut run = PhaseHistograms::default();
        run.add_growth(&before, &after);
        let timings = run.timings();
        assert_eq!(timings.len(), 1);
        let prepare = &timings[0];
        assert_eq!((prepare.phase.as_str(), prepare.count), ("prepare", 200));
        assert!((prepare.mean_ms - 2.25).abs() < 1e-9, "{prepare:?}");
        // Half the run's steps are at or under 2 ms: the median is 2 ms.
        assert!((prepare.p50_ms - 2.0).abs() < 1e-9, "{prepare:?}");
        // The 99th percentile falls in the 2-4 ms bucket: 98 % of the way.
        assert!((prepare.p99_ms - 3.96).abs() < 1e-9, "{prepare:?}");
    }

    #[test]
    fn a_restarted_process_counts_from_zero() {
        let before = PhaseHistograms::parse(&page(500, 0));
        let after = PhaseHistograms::parse(&page(4, 0));
        let mut run = PhaseHistograms::default();
        run.add_growth(&before, &after);
        assert_eq!(run.timings()[0].count, 4);
    }
}
