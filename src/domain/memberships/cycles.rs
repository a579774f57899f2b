//! A membership's cycles, computed from its anchor (when it started), its interval and its pauses;
//! nothing is stored per boundary, so the allowance renews by itself when a boundary passes.
//!
//! Cycle k (from 0) ends at `anchor + (k+1) intervals`, counted from the anchor (a membership started
//! on the 31st renews on the last day of shorter months and on the 31st again after), pushed by every
//! pause that began before that boundary: a pause stops the cycle it falls in and extends it by its
//! length. A pause still running counts up to `now`. A cancelled membership has no cycle after the
//! one it was cancelled in.

use chrono::{DateTime, Duration, Months, Utc};

use crate::error::{AppError, AppResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interval {
    Week,
    Month,
    Year,
}

impl Interval {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "WEEK" => Some(Interval::Week),
            "MONTH" => Some(Interval::Month),
            "YEAR" => Some(Interval::Year),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Interval::Week => "WEEK",
            Interval::Month => "MONTH",
            Interval::Year => "YEAR",
        }
    }

    /// `at` plus `n` intervals, or None past what a date can hold.
    fn add(self, at: DateTime<Utc>, n: u32) -> Option<DateTime<Utc>> {
        match self {
            Interval::Week => at.checked_add_signed(Duration::weeks(i64::from(n))),
            Interval::Month => at.checked_add_months(Months::new(n)),
            Interval::Year => at.checked_add_months(Months::new(n.checked_mul(12)?)),
        }
    }
}

/// One cycle: its number (from 0) and its bounds, [start, end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cycle {
    pub index: i32,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// What the cycles of a membership depend on.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub anchor: DateTime<Utc>,
    pub interval: Interval,
    /// Pauses in order, [start, end); a running pause ends at `now`.
    pub pauses: Vec<(DateTime<Utc>, DateTime<Utc>)>,
    /// When it was cancelled: no cycle begins after the one containing it.
    pub cancelled_at: Option<DateTime<Utc>>,
}

/// Most cycles a schedule is walked through: a weekly membership from 1970 to 9999 (the dates this
/// server handles) has about 420,000.
const MAX_CYCLES: i64 = 600_000;

impl Schedule {
    /// The boundary ending cycle `k - 1` and starting cycle `k` (boundary 0 is the anchor).
    pub fn boundary(&self, k: i64) -> Option<DateTime<Utc>> {
        if k <= 0 {
            return Some(self.anchor);
        }
        let base = self.interval.add(self.anchor, u32::try_from(k).ok()?)?;
        // A pause counts when it began before the boundary as pushed by the pauses before it.
        let mut shift = Duration::zero();
        for (start, end) in &self.pauses {
            if *start < base.checked_add_signed(shift)? {
                shift += *end - *start;
            } else {
                break;
            }
        }
        base.checked_add_signed(shift)
    }

    pub fn cycle(&self, k: i64) -> AppResult<Cycle> {
        let too_far = || AppError::bad_input("that cycle is past the dates this server handles");
        let end = self.boundary(k + 1).ok_or_else(too_far)?;
        // Its end must be a date this server handles (up to 9999-12-31), as every instant it answers.
        crate::domain::bounded_instant("cycleEnd", end).map_err(|_| too_far())?;
        Ok(Cycle {
            index: i32::try_from(k).map_err(|_| too_far())?,
            start: self.boundary(k).ok_or_else(too_far)?,
            end,
        })
    }

    /// The cycle containing `at` (the first one before the anchor; the last one after cancellation).
    pub fn cycle_at(&self, at: DateTime<Utc>) -> AppResult<Cycle> {
        let at = match self.cancelled_at {
            Some(c) if at > c => c,
            _ => at,
        };
        // The largest k whose boundary is at or before `at`: boundaries grow with k.
        let (mut lo, mut hi) = (0_i64, MAX_CYCLES);
        while lo < hi {
            let mid = (lo + hi + 1) / 2;
            match self.boundary(mid) {
                Some(b) if b <= at => lo = mid,
                _ => hi = mid - 1,
            }
        }
        self.cycle(lo)
    }

    /// Cycles overlapping [from, to], oldest first; more than `limit` is refused (narrow the range).
    pub fn cycles_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: usize,
    ) -> AppResult<Vec<Cycle>> {
        // Nothing before the start, nor after the cycle a cancellation ended.
        if to < self.anchor {
            return Ok(vec![]);
        }
        let last_cycle = self.cycle_at(to)?;
        if self.cancelled_at.is_some() && from >= last_cycle.end {
            return Ok(vec![]);
        }
        let first = i64::from(self.cycle_at(from.max(self.anchor))?.index);
        let last = i64::from(last_cycle.index);
        if last - first >= limit as i64 {
            return Err(AppError::bad_input(format!(
                "from..to spans {} cycles: at most {limit} at a time",
                last - first + 1
            )));
        }
        (first..=last).map(|k| self.cycle(k)).collect()
    }

    /// The `n` cycles up to the one containing `to`, oldest first (fewer near the start).
    pub fn last_cycles(&self, to: DateTime<Utc>, n: i64) -> AppResult<Vec<Cycle>> {
        let last = i64::from(self.cycle_at(to)?.index);
        ((last - n + 1).max(0)..=last)
            .map(|k| self.cycle(k))
            .collect()
    }
}

/// Pauses as stored (`[[start, end], ..]` in Unix seconds).
pub fn parse_pauses(text: &str) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let pairs: Vec<(i64, i64)> = serde_json::from_str(text).unwrap_or_default();
    pairs
        .into_iter()
        .filter_map(|(a, b)| {
            Some((
                DateTime::from_timestamp(a, 0)?,
                DateTime::from_timestamp(b, 0)?,
            ))
        })
        .collect()
}

pub fn write_pauses(pauses: &[(DateTime<Utc>, DateTime<Utc>)]) -> String {
    let pairs: Vec<(i64, i64)> = pauses
        .iter()
        .map(|(a, b)| (a.timestamp(), b.timestamp()))
        .collect();
    serde_json::to_string(&pairs).unwrap_or_else(|_| "[]".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn monthly(anchor: &str) -> Schedule {
        Schedule {
            anchor: t(anchor),
            interval: Interval::Month,
            pauses: vec![],
            cancelled_at: None,
        }
    }

    #[test]
    fn the_31st_renews_on_the_last_day_of_shorter_months() {
        let s = monthly("2027-01-31T10:00:00Z");
        assert_eq!(s.boundary(1), Some(t("2027-02-28T10:00:00Z")));
        assert_eq!(s.boundary(2), Some(t("2027-03-31T10:00:00Z")));
        assert_eq!(s.boundary(3), Some(t("2027-04-30T10:00:00Z")));
        let leap = monthly("2028-01-31T00:00:00Z");
        assert_eq!(leap.boundary(1), Some(t("2028-02-29T00:00:00Z")));
        let c = s.cycle_at(t("2027-03-01T00:00:00Z")).unwrap();
        assert_eq!(
            (c.index, c.start, c.end),
            (1, t("2027-02-28T10:00:00Z"), t("2027-03-31T10:00:00Z"))
        );
        // A boundary belongs to the cycle it starts.
        assert_eq!(s.cycle_at(t("2027-02-28T10:00:00Z")).unwrap().index, 1);
        assert_eq!(s.cycle_at(t("2026-01-01T00:00:00Z")).unwrap().index, 0);
    }

    #[test]
    fn a_pause_extends_its_cycle_and_pushes_the_later_ones() {
        let mut s = monthly("2027-01-10T00:00:00Z");
        s.pauses = vec![(t("2027-02-20T00:00:00Z"), t("2027-02-25T00:00:00Z"))];
        // Cycle 0 ended before the pause: unchanged.
        assert_eq!(s.boundary(1), Some(t("2027-02-10T00:00:00Z")));
        // Cycle 1 held the pause: five days longer, and so is everything after.
        assert_eq!(s.boundary(2), Some(t("2027-03-15T00:00:00Z")));
        assert_eq!(s.boundary(3), Some(t("2027-04-15T00:00:00Z")));
    }

    #[test]
    fn weeks_years_and_cancellation() {
        let w = Schedule {
            anchor: t("2027-01-01T00:00:00Z"),
            interval: Interval::Week,
            pauses: vec![],
            cancelled_at: Some(t("2027-01-20T00:00:00Z")),
        };
        assert_eq!(w.cycle_at(t("2027-01-09T00:00:00Z")).unwrap().index, 1);
        // Nothing begins after the cancellation's cycle.
        assert_eq!(w.cycle_at(t("2030-01-01T00:00:00Z")).unwrap().index, 2);
        let y = Schedule {
            interval: Interval::Year,
            cancelled_at: None,
            ..monthly("2028-02-29T00:00:00Z")
        };
        assert_eq!(y.boundary(1), Some(t("2029-02-28T00:00:00Z")));
        assert_eq!(y.boundary(4), Some(t("2032-02-29T00:00:00Z")));
        let h = y
            .cycles_between(t("2020-01-01T00:00:00Z"), t("2031-01-01T00:00:00Z"), 120)
            .unwrap();
        assert_eq!(h.len(), 3);
        assert_eq!(h[2].index, 2);
        assert!(
            y.cycles_between(t("2020-01-01T00:00:00Z"), t("2031-01-01T00:00:00Z"), 2)
                .is_err()
        );
        // Weekly from 1970, read at the far end of the dates handled: exact, not capped.
        let far = Schedule {
            interval: Interval::Week,
            ..monthly("1970-01-01T00:00:00Z")
        };
        let c = far.cycle_at(t("9999-12-20T00:00:00Z")).unwrap();
        assert!(
            c.start <= t("9999-12-20T00:00:00Z") && t("9999-12-20T00:00:00Z") < c.end,
            "{c:?}"
        );
        // A cycle ending past 9999 is not answered.
        assert!(far.cycle_at(t("9999-12-31T23:59:59Z")).is_err());
        // A range before the start has no cycle.
        assert!(
            far.cycles_between(t("1960-01-01T00:00:00Z"), t("1965-01-01T00:00:00Z"), 120)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            far.last_cycles(t("1970-01-20T00:00:00Z"), 12)
                .unwrap()
                .len(),
            3
        );
    }
}
