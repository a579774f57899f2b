//! Limit arithmetic: allowance, remaining, utilization, overage and the seed's exceeded JSON. Pure
//! functions over exact decimals, shared by reads, recordings and entitlement checks.

use entity::enums::{AlertKind, Enforcement};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

use super::types::Amount;

/// One metric's limit under a plan. A metric the plan does not mention is unlimited and SOFT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitRule {
    pub included: Option<Amount>,
    pub enforcement: Enforcement,
    pub overage_unit_price: Option<Amount>,
}

impl LimitRule {
    pub const UNLIMITED: LimitRule = LimitRule {
        included: None,
        enforcement: Enforcement::Soft,
        overage_unit_price: None,
    };
}

/// A metric's counter in one period, read against its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricState {
    pub used: Amount,
    pub credits: Amount,
    pub rule: LimitRule,
}

impl MetricState {
    pub fn allowance(&self) -> Option<Decimal> {
        self.rule
            .included
            .map(|i| i.to_decimal() + self.credits.to_decimal())
    }

    pub fn used(&self) -> Decimal {
        self.used.to_decimal()
    }

    pub fn remaining(&self) -> Option<Decimal> {
        self.allowance()
            .map(|a| (a - self.used()).max(Decimal::ZERO))
    }

    /// used / allowance * 100, to 2 places. An allowance of zero reads 0.00 when nothing was used and
    /// 100.00 otherwise (there is no finite ratio to show).
    pub fn utilization(&self) -> Option<Decimal> {
        let allowance = self.allowance()?;
        let used = self.used();
        if allowance <= Decimal::ZERO {
            return Some(if used > Decimal::ZERO {
                Decimal::ONE_HUNDRED
            } else {
                Decimal::ZERO
            });
        }
        Some((used * Decimal::ONE_HUNDRED / allowance).round_dp(2))
    }

    /// used / allowance * 100, unrounded, as the utilization index stores and filters it (None when
    /// unlimited). An allowance of zero or less reads 100 when something was used and 0 otherwise,
    /// as `utilization` shows. Computed from the scaled integers exactly as the store's computed
    /// pages do in SQL (`CAST(used AS DOUBLE PRECISION) * 100 / allowance`), so both agree to the bit.
    pub fn utilization_ratio(&self) -> Option<f64> {
        let included = self.rule.included?;
        let allowance = i128::from(included.scaled()) + i128::from(self.credits.scaled());
        let used = self.used.scaled();
        Some(if allowance <= 0 {
            if used > 0 { 100.0 } else { 0.0 }
        } else {
            used as f64 * 100.0 / allowance as f64
        })
    }

    pub fn utilization_pct(&self) -> Option<f64> {
        self.utilization().and_then(|u| u.to_f64())
    }

    pub fn exceeded(&self) -> bool {
        self.allowance().is_some_and(|a| self.used() > a)
    }

    pub fn exceeded_by(&self) -> Decimal {
        self.allowance()
            .map(|a| (self.used() - a).max(Decimal::ZERO))
            .unwrap_or(Decimal::ZERO)
    }

    /// Units billed past the allowance: only under OVERAGE enforcement.
    pub fn overage_quantity(&self) -> Decimal {
        if self.rule.enforcement == Enforcement::Overage {
            self.exceeded_by()
        } else {
            Decimal::ZERO
        }
    }

    pub fn overage_amount(&self) -> Decimal {
        let price = self
            .rule
            .overage_unit_price
            .map(Amount::to_decimal)
            .unwrap_or(Decimal::ZERO);
        (self.overage_quantity() * price).round_dp(4)
    }

    /// The alert kinds whose condition holds in this state. Storage keeps each at most once per
    /// period (and plan epoch), so "holds now" becomes "crossed" there.
    pub fn alert_conditions(&self, near_limit_pct: Decimal) -> Vec<AlertKind> {
        let mut kinds = Vec::new();
        if self.allowance().is_none() {
            return kinds;
        }
        if self.utilization().is_some_and(|u| u >= near_limit_pct) {
            kinds.push(AlertKind::NearLimit);
        }
        if self.exceeded() {
            kinds.push(AlertKind::LimitExceeded);
            if self.rule.enforcement == Enforcement::Overage {
                kinds.push(AlertKind::OverageStarted);
            }
        }
        kinds
    }

    /// Whether recording brings `used` to `new_used` is refused by a HARD limit.
    pub fn refuses(&self, new_used: Decimal) -> bool {
        self.rule.enforcement == Enforcement::Hard && self.allowance().is_some_and(|a| new_used > a)
    }
}

/// A decimal as a JSON number: integral values as integers (the seed shows `"limit": 100`).
pub fn json_number(d: Decimal) -> serde_json::Value {
    let d = d.normalize();
    if d.scale() == 0
        && let Some(i) = d.to_i64()
    {
        return serde_json::Value::from(i);
    }
    d.to_f64()
        .map(serde_json::Value::from)
        .unwrap_or(serde_json::Value::Null)
}

/// The seed's `exceeded_limits_details`: `{"bookings": {"limit": 100, "actual": 120, "exceeded_by": 20}}`.
pub fn exceeded_details<'a>(
    states: impl IntoIterator<Item = (&'a str, &'a MetricState)>,
) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for (code, s) in states {
        if let (true, Some(allowance)) = (s.exceeded(), s.allowance()) {
            map.insert(
                code.to_owned(),
                serde_json::json!({
                    "limit": json_number(allowance),
                    "actual": json_number(s.used()),
                    "exceeded_by": json_number(s.exceeded_by()),
                }),
            );
        }
    }
    serde_json::Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amt(n: i64) -> Amount {
        Amount::parse("x", Decimal::from(n)).unwrap()
    }

    fn state(used: i64, included: Option<i64>, e: Enforcement) -> MetricState {
        MetricState {
            used: amt(used),
            credits: Amount::ZERO,
            rule: LimitRule {
                included: included.map(amt),
                enforcement: e,
                overage_unit_price: Some(amt(2)),
            },
        }
    }

    #[test]
    fn seed_examples() {
        let bookings = state(120, Some(100), Enforcement::Soft);
        assert_eq!(
            exceeded_details([("bookings", &bookings)]),
            serde_json::json!({"bookings": {"limit": 100, "actual": 120, "exceeded_by": 20}})
        );
        let venues = state(1, Some(1), Enforcement::Hard);
        assert_eq!(venues.utilization(), Some(Decimal::ONE_HUNDRED));
        assert_eq!(venues.utilization_pct(), Some(100.0));
        assert!(!venues.exceeded());
        assert_eq!(
            exceeded_details([("venues", &venues)]),
            serde_json::json!({})
        );
    }

    #[test]
    fn overage_is_billed_only_under_overage() {
        let s = state(105, Some(100), Enforcement::Overage);
        assert_eq!(s.overage_quantity(), Decimal::from(5));
        assert_eq!(s.overage_amount(), Decimal::from(10));
        assert_eq!(
            state(105, Some(100), Enforcement::Soft).overage_quantity(),
            Decimal::ZERO
        );
        assert_eq!(
            s.alert_conditions(Decimal::from(80)),
            vec![
                AlertKind::NearLimit,
                AlertKind::LimitExceeded,
                AlertKind::OverageStarted
            ]
        );
    }

    #[test]
    fn unlimited_never_alerts() {
        let s = state(1_000_000, None, Enforcement::Hard);
        assert!(s.alert_conditions(Decimal::from(80)).is_empty());
        assert!(!s.refuses(Decimal::from(10_000_000)));
        assert_eq!(s.remaining(), None);
    }
}
