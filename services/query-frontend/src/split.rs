//! Step alignment and splitting of a range query's time range.
//!
//! A range query is evaluated independently at each step `start + k·step`: a point's value
//! depends only on its timestamp (lookback, range windows and subquery steps are all anchored
//! to absolute time). So a range can be cut into legs that keep the query's step grid, each
//! evaluated on its own, and the legs' points concatenated give the same answer as the whole.
//! Legs are cut where time crosses a multiple of the split interval (UTC midnight for 24h, as
//! Mimir does): every leg then lies inside one interval, so a day's leg of a dashboard query
//! is the same leg on the next refresh and its cached result is found again. Each leg ends on
//! the last grid point before the boundary and the next starts one step later, so no point is
//! evaluated twice and none is lost.

/// A time range on the query's step grid, both ends included, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leg {
    pub start: i64,
    pub end: i64,
}

/// `start` and `end` moved down onto multiples of `step`
/// (`--query-frontend.align-queries-with-step`): the same dashboard query then asks for the
/// same points whenever it is refreshed, which is what makes its results cacheable.
pub fn align(start: i64, end: i64, step: i64) -> (i64, i64) {
    debug_assert!(step > 0);
    (start - start.rem_euclid(step), end - end.rem_euclid(step))
}

/// Splits `[start, end]` (grid `start + k·step`) at multiples of `interval`; `interval <= 0`
/// is one leg. Every leg starts and ends on the grid. `step > 0`, `start <= end`.
pub fn split_by_interval(start: i64, end: i64, step: i64, interval: i64) -> Vec<Leg> {
    debug_assert!(step > 0 && start <= end);
    // The last point of the grid: legs end on the grid, as do the extents cached from them.
    let end = start + (end - start) / step * step;
    if interval <= 0 {
        return vec![Leg { start, end }];
    }
    let mut legs = Vec::new();
    let mut s = start;
    loop {
        // The first boundary after `s`, and the last grid point before it.
        let boundary = s
            .div_euclid(interval)
            .saturating_add(1)
            .saturating_mul(interval);
        let last = s.saturating_add((boundary.saturating_sub(1).saturating_sub(s)) / step * step);
        let e = last.min(end);
        legs.push(Leg { start: s, end: e });
        match e.checked_add(step) {
            Some(next) if next <= end => s = next,
            _ => return legs,
        }
    }
}

/// The last grid point (`start + k·step`) at or before `t`, if there is one at or after
/// `start`.
pub fn last_point_at_or_before(start: i64, step: i64, t: i64) -> Option<i64> {
    (t >= start).then(|| start + (t - start) / step * step)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const H: i64 = 3_600_000;

    #[test]
    fn splits_at_interval_boundaries_on_the_grid() {
        // 22:00 to 02:00 the next day, 1h step, split by day: 22:00-23:00 and 00:00-02:00.
        let day = 24 * H;
        let legs = split_by_interval(day - 2 * H, day + 2 * H, H, day);
        assert_eq!(
            legs,
            [
                Leg {
                    start: day - 2 * H,
                    end: day - H
                },
                Leg {
                    start: day,
                    end: day + 2 * H
                },
            ]
        );
        // A grid offset from the boundary: 23:50 + k·30m, split by hour.
        let legs = split_by_interval(23 * H + 50 * 60_000, 26 * H, 30 * 60_000, H);
        assert_eq!(
            legs[0],
            Leg {
                start: 23 * H + 50 * 60_000,
                end: 23 * H + 50 * 60_000
            }
        );
        assert_eq!(legs[1].start, 24 * H + 20 * 60_000);
        assert_eq!(legs[1].end, 24 * H + 50 * 60_000);
        // Off: one leg. A step longer than the interval: one point per leg.
        assert_eq!(
            split_by_interval(0, 10 * H, H, 0),
            [Leg {
                start: 0,
                end: 10 * H
            }]
        );
        assert_eq!(split_by_interval(0, 4 * H, 2 * H, H).len(), 3);
        // Negative times split on the same boundaries.
        assert_eq!(
            split_by_interval(-H - 1, H, H, H),
            [
                Leg {
                    start: -H - 1,
                    end: -H - 1
                },
                Leg { start: -1, end: -1 },
                Leg {
                    start: H - 1,
                    end: H - 1
                },
            ]
        );
    }

    #[test]
    fn aligns_down_to_the_step() {
        assert_eq!(align(1_001, 59_999, 1_000), (1_000, 59_000));
        assert_eq!(align(-1, 0, 1_000), (-1_000, 0));
    }

    proptest! {
        /// The legs are the grid's points exactly: in order, none twice, none lost, each leg
        /// inside one interval.
        #[test]
        fn legs_cover_the_grid_exactly(
            start in -1_000_000i64..1_000_000,
            len in 0i64..500_000,
            step in 1i64..50_000,
            interval in prop_oneof![Just(0i64), 1i64..200_000],
        ) {
            let end = start + len;
            let legs = split_by_interval(start, end, step, interval);
            let got: Vec<i64> = legs
                .iter()
                .flat_map(|l| (0..).map(move |k| l.start + k * step).take_while(move |t| *t <= l.end))
                .collect();
            let want: Vec<i64> = (0..).map(|k| start + k * step).take_while(|t| *t <= end).collect();
            prop_assert_eq!(got, want);
            for l in &legs {
                prop_assert!((l.start - start) % step == 0 && (l.end - start) % step == 0);
                if interval > 0 {
                    prop_assert_eq!(l.start.div_euclid(interval), l.end.div_euclid(interval));
                }
            }
        }
    }
}
