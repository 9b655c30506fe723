//! The share of time a member was up, from its state changes.
//!
//! The redundancy formula needs each replica's up-fraction `p`. Planned
//! fault schedules only promise it in the long run; what a run actually
//! did is measured here, by adding up the stretches between state changes
//! as they happen. Times are milliseconds on any clock that never goes
//! back (a time earlier than the last one counts as the last one), so the
//! same code serves a load run's offsets and a console's wall clock.

/// Time a member spent up, from its state changes (milliseconds on any monotone clock).
#[derive(Debug, Clone)]
pub struct UpTime {
    /// When accounting started.
    since_ms: u64,
    /// The last state change (or the start).
    changed_ms: u64,
    /// The state since `changed_ms`.
    up: bool,
    /// Up time before `changed_ms`.
    up_before_ms: u64,
}

impl UpTime {
    /// Starts accounting at `now_ms`, with the member `up` or not.
    pub fn new(now_ms: u64, up: bool) -> Self {
        UpTime {
            since_ms: now_ms,
            changed_ms: now_ms,
            up,
            up_before_ms: 0,
        }
    }

    /// The member is `up` (or not) from `now_ms` on. Setting the state it
    /// already has changes nothing.
    pub fn set(&mut self, now_ms: u64, up: bool) {
        let now_ms = now_ms.max(self.changed_ms);
        if self.up {
            self.up_before_ms += now_ms - self.changed_ms;
        }
        self.changed_ms = now_ms;
        self.up = up;
    }

    /// Whether the member is up now.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Milliseconds up from the start until `now_ms`.
    pub fn up_ms(&self, now_ms: u64) -> u64 {
        let now_ms = now_ms.max(self.changed_ms);
        self.up_before_ms + if self.up { now_ms - self.changed_ms } else { 0 }
    }

    /// Milliseconds from the start until `now_ms`.
    pub fn elapsed_ms(&self, now_ms: u64) -> u64 {
        now_ms.max(self.changed_ms) - self.since_ms
    }

    /// The share of the time since the start that the member was up, 0 to
    /// 1; `None` while no time has passed.
    pub fn fraction(&self, now_ms: u64) -> Option<f64> {
        let elapsed = self.elapsed_ms(now_ms);
        (elapsed > 0).then(|| self.up_ms(now_ms) as f64 / elapsed as f64)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn up_and_down_stretches_add_up() {
        let mut member = UpTime::new(1_000, true);
        assert_eq!(member.fraction(1_000), None);
        member.set(4_000, false); // up 3 s
        member.set(5_000, false); // still down: nothing changes
        member.set(6_000, true); // down 2 s
        assert_eq!(member.up_ms(8_000), 5_000); // up 2 s more
        assert_eq!(member.fraction(8_000), Some(5.0 / 7.0));
        assert!(member.is_up());
        // A clock read late, behind the last change, counts as that change.
        member.set(5_500, false);
        assert_eq!(member.up_ms(9_000), 3_000);
        assert_eq!(member.elapsed_ms(2_000), 5_000);
    }

    #[test]
    fn starting_down() {
        let mut member = UpTime::new(0, false);
        member.set(750, true);
        assert_eq!(member.fraction(1_000), Some(0.25));
    }

    proptest! {
        /// Up time and down time, each summed by hand from the changes,
        /// add up to the time elapsed, and the fraction is their ratio.
        #[test]
        fn up_time_sums_the_up_stretches(
            start in 0u64..1_000_000,
            first in any::<bool>(),
            changes in prop::collection::vec((0u64..10_000, any::<bool>()), 0..50),
            tail in 0u64..10_000,
        ) {
            let mut member = UpTime::new(start, first);
            let (mut now, mut up, mut up_ms, mut down_ms) = (start, first, 0, 0);
            for (gap, next) in changes {
                if up { up_ms += gap } else { down_ms += gap }
                now += gap;
                member.set(now, next);
                up = next;
            }
            if up { up_ms += tail } else { down_ms += tail }
            now += tail;
            prop_assert_eq!(member.up_ms(now), up_ms);
            prop_assert_eq!(member.elapsed_ms(now), up_ms + down_ms);
            match member.fraction(now) {
                None => prop_assert_eq!(up_ms + down_ms, 0),
                Some(f) => {
                    prop_assert!((0.0..=1.0).contains(&f));
                    prop_assert!((f - up_ms as f64 / (up_ms + down_ms) as f64).abs() < 1e-12);
                }
            }
        }
    }
}
