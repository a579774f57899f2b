//! Values parsed once at the edge and trusted inside.

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::error::{AppError, AppResult};

/// Decimal places kept in storage (see `migration::DECIMAL_SCALE`).
pub const SCALE: u32 = migration::DECIMAL_SCALE;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrganizationId(pub Uuid);

impl OrganizationId {
    /// Parses a client-supplied id. A malformed id is reported as not found, exactly like a missing
    /// or foreign one, so ids reveal nothing.
    pub fn parse(s: &str) -> AppResult<Self> {
        Uuid::parse_str(s.trim())
            .map(Self)
            .map_err(|_| AppError::not_found("organization"))
    }
}

impl std::fmt::Display for OrganizationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The one rule for codes and slugs (metric codes, plan codes, organization slugs), as said to
/// clients.
pub const CODE_RULE: &str = "use 1 to 64 lowercase letters, digits, dashes and underscores, \
     starting and ending with a letter or digit";

/// Whether `s` follows `CODE_RULE`.
pub fn is_code(s: &str) -> bool {
    let edge = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = s.as_bytes();
    (1..=64).contains(&bytes.len())
        && bytes.iter().all(|&b| edge(b) || b == b'-' || b == b'_')
        && bytes.first().copied().is_some_and(edge)
        && bytes.last().copied().is_some_and(edge)
}

/// A metric code such as `bookings` or `staff-hours` (`CODE_RULE`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MetricCode(String);

impl MetricCode {
    pub fn parse(s: &str) -> AppResult<Self> {
        if is_code(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(AppError::bad_input(format!(
                "invalid metric code {}: {CODE_RULE}",
                crate::error::quote(s)
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An organization's slug (`CODE_RULE`, the same rule as codes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slug(String);

impl Slug {
    pub fn parse(s: &str) -> AppResult<Self> {
        if is_code(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(AppError::bad_input(format!(
                "invalid slug {}: {CODE_RULE}",
                crate::error::quote(s)
            )))
        }
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// A non-empty trimmed text of bounded length (names, reasons).
pub fn required_text(field: &str, s: &str, max: usize) -> AppResult<String> {
    let t = s.trim();
    if t.is_empty() {
        return Err(AppError::bad_input(format!("{field} must not be empty")));
    }
    if t.chars().count() > max {
        return Err(AppError::bad_input(format!(
            "{field} is longer than {max} characters"
        )));
    }
    Ok(t.to_owned())
}

pub fn optional_text(field: &str, s: Option<&str>, max: usize) -> AppResult<Option<String>> {
    match s.map(str::trim) {
        None | Some("") => Ok(None),
        Some(t) => required_text(field, t, max).map(Some),
    }
}

/// An exact decimal with at most `SCALE` places that fits the storage column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Amount(i64);

impl Amount {
    pub const ZERO: Amount = Amount(0);

    pub fn parse(field: &str, d: Decimal) -> AppResult<Self> {
        let scaled = d
            .checked_mul(Decimal::from(10_i64.pow(SCALE)))
            .ok_or_else(|| AppError::bad_input(format!("{field} is too large")))?;
        if !scaled.fract().is_zero() {
            return Err(AppError::bad_input(format!(
                "{field} has more than {SCALE} decimal places"
            )));
        }
        use rust_decimal::prelude::ToPrimitive;
        scaled
            .to_i64()
            .filter(|v| v.unsigned_abs() <= MAX_SCALED)
            .map(Amount)
            .ok_or_else(|| AppError::bad_input(format!("{field} is too large")))
    }

    pub fn from_scaled(v: i64) -> Self {
        Amount(v)
    }

    pub fn scaled(self) -> i64 {
        self.0
    }

    pub fn to_decimal(self) -> Decimal {
        Decimal::new(self.0, SCALE)
    }

    pub fn is_negative(self) -> bool {
        self.0 < 0
    }

    pub fn is_positive(self) -> bool {
        self.0 > 0
    }
}

/// Largest magnitude accepted from clients: leaves headroom so sums of many values stay in i64.
const MAX_SCALED: u64 = 1_000_000_000_000_000; // 10^11 units at 4 places

/// A billing period: a calendar month in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Period {
    pub start: NaiveDate,
}

/// The earliest date any input may name (periods, dates, corrections).
pub const MIN_DATE: NaiveDate = match NaiveDate::from_ymd_opt(1970, 1, 1) {
    Some(d) => d,
    None => NaiveDate::MIN,
};
/// The latest date any input may name: far from chrono's limits, so that a period's end, the
/// next period and a history's range are always representable.
pub const MAX_DATE: NaiveDate = match NaiveDate::from_ymd_opt(9999, 12, 31) {
    Some(d) => d,
    None => NaiveDate::MAX,
};

/// A date within `MIN_DATE..=MAX_DATE`, or BAD_USER_INPUT naming the field.
pub fn bounded_date(field: &str, d: NaiveDate) -> AppResult<NaiveDate> {
    if (MIN_DATE..=MAX_DATE).contains(&d) {
        Ok(d)
    } else {
        Err(AppError::bad_input(format!(
            "{field} must be between {MIN_DATE} and {MAX_DATE}"
        )))
    }
}

/// An instant whose date is within `MIN_DATE..=MAX_DATE`, or BAD_USER_INPUT naming the field.
pub fn bounded_instant(field: &str, at: DateTime<Utc>) -> AppResult<DateTime<Utc>> {
    bounded_date(field, at.date_naive()).map(|_| at)
}

/// Periods a history (usageHistory, revenue, platformRevenue) covers at most.
pub const MAX_HISTORY: usize = 120;

impl Period {
    /// The period before this one.
    pub fn previous(self) -> Self {
        Self::containing(self.start.pred_opt().unwrap_or(self.start))
    }

    /// The periods from `from` to `to`, oldest first (default: the last 12 up to `to`, itself the
    /// current period by default); BAD_USER_INPUT naming `field` when `from` is after `to` or the
    /// range holds more than `MAX_HISTORY`.
    pub fn history(
        field: &str,
        from: Option<NaiveDate>,
        to: Option<NaiveDate>,
    ) -> AppResult<Vec<Period>> {
        let to = to.map(Self::containing).unwrap_or_else(Self::current);
        let from = from
            .map(Self::containing)
            .unwrap_or_else(|| (0..11).fold(to, |p, _| p.previous()));
        if from > to {
            return Err(AppError::bad_input("from is after to"));
        }
        let mut periods = vec![from];
        while let Some(last) = periods.last().copied()
            && last < to
        {
            if periods.len() >= MAX_HISTORY {
                return Err(AppError::bad_input(format!(
                    "{field} covers at most {MAX_HISTORY} periods"
                )));
            }
            periods.push(last.next());
        }
        Ok(periods)
    }

    pub fn containing(date: NaiveDate) -> Self {
        Period {
            start: date.with_day(1).unwrap_or(date),
        }
    }

    pub fn of_instant(at: DateTime<Utc>) -> Self {
        Self::containing(at.date_naive())
    }

    pub fn current() -> Self {
        Self::of_instant(Utc::now())
    }

    /// The last day of the month.
    pub fn end(self) -> NaiveDate {
        self.next().start.pred_opt().unwrap_or(self.start)
    }

    pub fn next(self) -> Self {
        let (y, m) = if self.start.month() == 12 {
            (self.start.year() + 1, 1)
        } else {
            (self.start.year(), self.start.month() + 1)
        };
        Period {
            start: NaiveDate::from_ymd_opt(y, m, 1).unwrap_or(self.start),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Owner,
    Admin,
    Member,
    Viewer,
    Service,
    /// One of the organization's own customers (memberships): its Customer's externalId is `sub`.
    Customer,
}

impl Role {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "OWNER" => Some(Role::Owner),
            "ADMIN" => Some(Role::Admin),
            "MEMBER" => Some(Role::Member),
            "VIEWER" => Some(Role::Viewer),
            "SERVICE" => Some(Role::Service),
            "CUSTOMER" => Some(Role::Customer),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "OWNER",
            Role::Admin => "ADMIN",
            Role::Member => "MEMBER",
            Role::Viewer => "VIEWER",
            Role::Service => "SERVICE",
            Role::Customer => "CUSTOMER",
        }
    }
}

/// Who is calling, from a verified token.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub sub: String,
    pub org_id: Option<OrganizationId>,
    pub role: Option<Role>,
    pub platform: bool,
}

impl Viewer {
    /// A CUSTOMER token: it reads only its own customer's data (memberships, bookings).
    pub fn is_customer(&self) -> bool {
        !self.platform && self.role == Some(Role::Customer)
    }

    /// The data this caller may see. Every store function over tenant data takes it.
    pub fn scope(&self) -> Scope {
        if self.platform {
            Scope::Platform
        } else {
            match self.org_id {
                Some(org) => Scope::Tenant(org),
                // A tenant token always carries org_id (auth checks it); this arm sees nothing.
                None => Scope::Tenant(OrganizationId(Uuid::nil())),
            }
        }
    }
}

/// The rows a caller may touch: one organization's, or everyone's for the platform team.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Platform,
    Tenant(OrganizationId),
}

impl Scope {
    pub fn allows(self, org: OrganizationId) -> bool {
        match self {
            Scope::Platform => true,
            Scope::Tenant(own) => own == org,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn amounts_are_exact() {
        let a = Amount::parse("q", Decimal::from_str("19.9900").unwrap()).unwrap();
        assert_eq!(a.to_decimal().to_string(), "19.9900");
        assert!(Amount::parse("q", Decimal::from_str("0.00001").unwrap()).is_err());
        assert!(Amount::parse("q", Decimal::from_str("1e20").unwrap_or(Decimal::MAX)).is_err());
    }

    #[test]
    fn periods_are_months() {
        let p = Period::containing(NaiveDate::from_ymd_opt(2024, 2, 17).unwrap());
        assert_eq!(p.start, NaiveDate::from_ymd_opt(2024, 2, 1).unwrap());
        assert_eq!(p.end(), NaiveDate::from_ymd_opt(2024, 2, 29).unwrap());
        let d = Period::containing(NaiveDate::from_ymd_opt(2025, 12, 31).unwrap());
        assert_eq!(d.next().start, NaiveDate::from_ymd_opt(2026, 1, 1).unwrap());
        assert_eq!(d.end(), NaiveDate::from_ymd_opt(2025, 12, 31).unwrap());
    }

    #[test]
    fn codes_and_slugs() {
        assert!(MetricCode::parse("bookings").is_ok());
        assert!(MetricCode::parse("Bookings").is_err());
        assert!(Slug::parse("acme-games").is_ok());
        assert!(Slug::parse("-x").is_err());
        // One rule for all three: dashes and underscores inside, letters or digits at the ends.
        for good in ["pro-annual", "staff_hours", "a", "x9"] {
            assert!(MetricCode::parse(good).is_ok(), "{good}");
            assert!(Slug::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "_a", "A", "a b", "é"] {
            assert!(MetricCode::parse(bad).is_err(), "{bad}");
            assert!(Slug::parse(bad).is_err(), "{bad}");
        }
        assert!(MetricCode::parse(&"a".repeat(65)).is_err());
    }
}
