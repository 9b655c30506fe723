//! How sure a measured success rate is: a 95 % confidence interval
//! around `successes / trials`.
//!
//! - [`wilson`]: the Wilson score interval, right for *independent*
//!   trials (coin flips, or calls to a system whose failures are
//!   independent of each other). Unlike the textbook `p̂ ± z·√(p̂(1−p̂)/n)`
//!   it stays inside `[0, 1]` and does not shrink to nothing when every
//!   trial succeeded.
//! - [`batch_means`]: for calls to a system whose failures come in bursts.
//!   A dead worker fails every call sent to it until it is detected, so
//!   thousands of calls carry the information of a few outages, and Wilson
//!   over the calls is far too narrow. Cut the run into batches of a few
//!   seconds (longer than an outage's effect lasts), take each batch's
//!   success rate, and treat those as the independent samples: their mean
//!   ± `t·s/√n` with Student's t for `n − 1` degrees of freedom.
//!
//! What it costs: nothing to compute; the price of batch means is width,
//! since a one-minute run in 5 s batches has only 12 samples.

/// A closed interval `[low, high]`, within `[0, 1]` for proportions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    /// The lower bound.
    pub low: f64,
    /// The upper bound.
    pub high: f64,
}

impl Interval {
    /// Whether `value` lies inside (bounds included).
    pub fn contains(&self, value: f64) -> bool {
        (self.low..=self.high).contains(&value)
    }

    /// `high − low`.
    pub fn width(&self) -> f64 {
        self.high - self.low
    }
}

/// Wilson score interval for a proportion (z = 1.96 for 95 %); None when trials == 0.
///
/// Also `None` when `successes > trials`, which is no proportion. A
/// negative `z` counts as its magnitude.
pub fn wilson(successes: u64, trials: u64, z: f64) -> Option<Interval> {
    if trials == 0 || successes > trials {
        return None;
    }
    let n = trials as f64;
    let p = successes as f64 / n;
    let z = z.abs();
    let z2 = z * z;
    let denominator = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denominator;
    let half = z / denominator * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    Some(Interval {
        // The bounds touch 0 (or 1) exactly when p̂ does; clamping removes
        // the rounding that would put them a hair outside.
        low: (centre - half).clamp(0.0, p),
        high: (centre + half).clamp(p, 1.0),
    })
}

/// Batch-means interval: the mean of per-batch proportions ± t·s/√n (Student t, 95 %), clamped to [0,1]; None with < 2 batches.
/// Calls fail in bursts (a dead worker fails many calls at once), so calls are not independent trials and Wilson is too narrow; batches of a few seconds are nearly independent.
///
/// Also `None` if a fraction is not finite.
pub fn batch_means(batch_fractions: &[f64]) -> Option<Interval> {
    let n = batch_fractions.len();
    if n < 2 || batch_fractions.iter().any(|f| !f.is_finite()) {
        return None;
    }
    let count = n as f64;
    let mean = batch_fractions.iter().sum::<f64>() / count;
    let variance = batch_fractions
        .iter()
        .map(|f| (f - mean) * (f - mean))
        .sum::<f64>()
        / (count - 1.0);
    let half = student_t_95(n as u64 - 1) * (variance / count).sqrt();
    Some(Interval {
        low: (mean - half).clamp(0.0, 1.0),
        high: (mean + half).clamp(0.0, 1.0),
    })
}

/// The two-sided 95 % quantile of Student's t (its 97.5th percentile) for
/// `degrees_of_freedom`; infinite for none.
///
/// From a table: exact to three decimals up to 30 degrees of freedom, and
/// between the tabled 40, 60 and 120 the value for the next lower one
/// (a little wider than exact, never narrower).
pub fn student_t_95(degrees_of_freedom: u64) -> f64 {
    /// t(0.975) for 1 to 30 degrees of freedom.
    const SMALL: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match degrees_of_freedom {
        0 => f64::INFINITY,
        df @ 1..=30 => SMALL[df as usize - 1],
        31..40 => SMALL[29],
        40..60 => 2.021,
        60..120 => 2.000,
        120..1000 => 1.980,
        _ => 1.962,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn close(a: f64, b: f64, tolerance: f64) -> bool {
        (a - b).abs() < tolerance
    }

    #[test]
    fn wilson_matches_published_values() {
        // 8 of 10, 95 %: Wilson gives [0.490, 0.943].
        let i = wilson(8, 10, 1.96).expect("trials");
        assert!(
            close(i.low, 0.490, 1e-3) && close(i.high, 0.943, 1e-3),
            "{i:?}"
        );
        // None failed of 100: the upper bound is 1, the lower near 1 − 3.8/n.
        let i = wilson(100, 100, 1.96).expect("trials");
        assert_eq!(i.high, 1.0);
        assert!(close(i.low, 0.963, 1e-3), "{i:?}");
        let i = wilson(0, 100, 1.96).expect("trials");
        assert_eq!(i.low, 0.0);
        assert_eq!(wilson(0, 0, 1.96), None);
        assert_eq!(wilson(3, 2, 1.96), None);
    }

    #[test]
    fn batch_means_uses_students_t() {
        // Mean 0.9, s = 0.1, n = 4: half width 3.182 · 0.1 / 2.
        let i = batch_means(&[0.8, 0.9, 1.0, 0.9]).expect("batches");
        let s = (0.02f64 / 3.0).sqrt();
        let half = 3.182 * s / 2.0;
        assert!(
            close(i.low, 0.9 - half, 1e-12) && close(i.high, 1.0, 1e-12),
            "{i:?}"
        );
        // Identical batches: no spread, a point.
        let i = batch_means(&[0.95; 5]).expect("batches");
        assert!(close(i.low, 0.95, 1e-12) && close(i.high, 0.95, 1e-12));
        assert_eq!(batch_means(&[0.5]), None);
        assert_eq!(batch_means(&[]), None);
        assert_eq!(batch_means(&[0.5, f64::NAN]), None);
    }

    #[test]
    fn the_t_table_falls_towards_the_normal_quantile() {
        assert_eq!(student_t_95(0), f64::INFINITY);
        assert_eq!(student_t_95(1), 12.706);
        assert_eq!(student_t_95(11), 2.201);
        assert_eq!(student_t_95(35), 2.042);
        let mut last = f64::INFINITY;
        for df in 0..2000 {
            let t = student_t_95(df);
            assert!(t <= last && t > 1.959, "df {df}: {t}");
            last = t;
        }
    }

    /// Calls that fail in bursts: each second either all succeed or, now
    /// and then, all fail. Wilson over the calls is much narrower than the
    /// batch-means interval, which is what the bursts warrant.
    #[test]
    fn bursts_widen_batch_means_but_not_wilson() {
        let seconds: Vec<f64> = (0..60)
            .map(|s| if s % 10 == 3 { 0.0 } else { 1.0 })
            .collect();
        let calls_per_second = 500u64;
        let ok = seconds.iter().sum::<f64>() as u64 * calls_per_second;
        let narrow = wilson(ok, 60 * calls_per_second, 1.96).expect("calls");
        let batches: Vec<f64> = seconds
            .chunks(5)
            .map(|c| c.iter().sum::<f64>() / c.len() as f64)
            .collect();
        let wide = batch_means(&batches).expect("batches");
        assert!(
            wide.width() > 5.0 * narrow.width(),
            "{wide:?} against {narrow:?}"
        );
    }

    proptest! {
        #[test]
        fn wilson_contains_the_point_estimate(trials in 1u64..1_000_000, share in 0.0f64..=1.0, z in 0.0f64..4.0) {
            let successes = (trials as f64 * share).round() as u64;
            let i = wilson(successes, trials, z).expect("trials");
            let p = successes as f64 / trials as f64;
            prop_assert!(0.0 <= i.low && i.low <= p && p <= i.high && i.high <= 1.0, "{i:?} {p}");
        }

        #[test]
        fn wilson_narrows_with_more_trials(successes in 0u64..1000, extra in 0u64..1000) {
            let trials = successes + extra + 1;
            let small = wilson(successes, trials, 1.96).expect("trials");
            let large = wilson(successes * 100, trials * 100, 1.96).expect("trials");
            prop_assert!(large.width() <= small.width() + 1e-12);
        }

        #[test]
        fn batch_means_holds_the_mean_inside_zero_and_one(
            batches in prop::collection::vec(0.0f64..=1.0, 2..40)
        ) {
            let i = batch_means(&batches).expect("two batches or more");
            let mean = batches.iter().sum::<f64>() / batches.len() as f64;
            prop_assert!(0.0 <= i.low && i.high <= 1.0);
            prop_assert!(i.low <= mean + 1e-12 && mean - 1e-12 <= i.high, "{i:?} {mean}");
        }
    }
}
