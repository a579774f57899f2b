//! The contract's scalars: Decimal (a JSON string, exact), Date (YYYY-MM-DD).

use async_graphql::{InputValueError, InputValueResult, Scalar, ScalarType, Value};
use chrono::NaiveDate;

use crate::domain::{MAX_DATE, MIN_DATE};
use rust_decimal::Decimal;
use std::str::FromStr;

/// An exact decimal carried as a JSON string ("4500.00"): an optional sign, digits, and optionally a
/// point followed by digits (no exponent, no separators). Input also accepts a JSON integer; a JSON
/// number with a fraction is refused, as it may already have passed through a float. Output never
/// uses floats.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dec(pub Decimal);

impl Dec {
    /// A quantity: as few places as the value needs ("120", "0.3").
    pub fn qty(d: Decimal) -> Self {
        Dec(d.normalize())
    }

    /// Money: at least two places ("299.00", "19.99", "0.0045").
    pub fn money(d: Decimal) -> Self {
        let mut n = d.normalize();
        if n.scale() < 2 {
            n.rescale(2);
        }
        Dec(n)
    }
}

#[Scalar(name = "Decimal")]
impl ScalarType for Dec {
    fn parse(value: Value) -> InputValueResult<Self> {
        let text = match &value {
            Value::String(s) => s.trim().to_owned(),
            Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
            _ => return Err(InputValueError::expected_type(value)),
        };
        let invalid = || {
            InputValueError::custom(format!(
                "invalid decimal {}: use a string such as \"12.50\"",
                crate::error::quote(&text)
            ))
        };
        if !plain_decimal(&text) {
            return Err(invalid());
        }
        Decimal::from_str(&text).map(Dec).map_err(|_| invalid())
    }

    /// Checked at validation (literals, and variables given as arguments): a bad value refuses the
    /// request before it runs.
    fn is_valid(value: &Value) -> bool {
        Self::parse(value.clone()).is_ok()
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.to_string())
    }
}

/// `[+-]digits[.digits]`, nothing else.
fn plain_decimal(text: &str) -> bool {
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (whole, fraction) = match unsigned.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (unsigned, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(whole) && fraction.is_none_or(digits)
}

/// A calendar date, YYYY-MM-DD.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Date(pub NaiveDate);

#[Scalar(name = "Date")]
impl ScalarType for Date {
    fn parse(value: Value) -> InputValueResult<Self> {
        match &value {
            Value::String(s) => NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
                .ok()
                .filter(|d| (MIN_DATE..=MAX_DATE).contains(d))
                .map(Date)
                .ok_or_else(|| {
                    InputValueError::custom(format!(
                        "invalid date {}: use YYYY-MM-DD between {MIN_DATE} and {MAX_DATE}",
                        crate::error::quote(s)
                    ))
                }),
            _ => Err(InputValueError::expected_type(value)),
        }
    }

    fn is_valid(value: &Value) -> bool {
        Self::parse(value.clone()).is_ok()
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.format("%Y-%m-%d").to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_plain() {
        let parse = |v: Value| <Dec as ScalarType>::parse(v).ok().map(|d| d.0.to_string());
        for (text, parsed) in [
            ("12.50", Some("12.50")),
            ("-3", Some("-3")),
            ("+1", Some("1")),
            (" 7 ", Some("7")),
            ("1_000", None),
            ("1e2", None),
            (".5", None),
            ("5.", None),
            ("", None),
            ("-", None),
            ("1.2.3", None),
            ("abc", None),
        ] {
            assert_eq!(
                parse(Value::String(text.into())).as_deref(),
                parsed,
                "{text:?}"
            );
        }
        assert_eq!(parse(Value::from(42)).as_deref(), Some("42"));
        assert_eq!(
            parse(Value::from(0.1)),
            None,
            "a JSON fraction went through a float"
        );
    }

    #[test]
    fn money_and_quantities_print_exactly() {
        let d = |s: &str| Decimal::from_str(s).unwrap();
        assert_eq!(
            Dec::money(d("299.0000")).to_value(),
            Value::String("299.00".into())
        );
        assert_eq!(
            Dec::money(d("19.9900")).to_value(),
            Value::String("19.99".into())
        );
        assert_eq!(
            Dec::qty(d("120.0000")).to_value(),
            Value::String("120".into())
        );
        assert_eq!(
            Dec::qty(d("0.3000")).to_value(),
            Value::String("0.3".into())
        );
        assert!(<Dec as ScalarType>::parse(Value::String("abc".into())).is_err());
    }
}
