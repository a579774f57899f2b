//! The seed's calculateSubscriptionPricing() and checkSubscriptionEligibility() for one service: how a
//! booking is covered by a membership, and what everyone pays and gets, exact to the currency's minor
//! unit (half-up). Pure: the caller reads the membership's state.

use rust_decimal::{Decimal, RoundingStrategy};

use crate::domain::money::Currency;
use crate::error::{AppError, AppResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    None,
    Included,
    Overage,
    Discounted,
}

impl Coverage {
    pub fn as_str(self) -> &'static str {
        match self {
            Coverage::None => "NONE",
            Coverage::Included => "INCLUDED",
            Coverage::Overage => "OVERAGE",
            Coverage::Discounted => "DISCOUNTED",
        }
    }

    pub fn parse(s: &str) -> Coverage {
        match s {
            "INCLUDED" => Coverage::Included,
            "OVERAGE" => Coverage::Overage,
            "DISCOUNTED" => Coverage::Discounted,
            _ => Coverage::None,
        }
    }

    /// A booking so covered holds one of the membership's services.
    pub fn holds(self) -> bool {
        matches!(self, Coverage::Included | Coverage::Overage)
    }
}

/// A membership's benefits and what is left of its cycle, when they apply.
#[derive(Debug, Clone)]
pub struct Benefits {
    /// Services left in the cycle (allowance - used - held, at least 0).
    pub remaining: Decimal,
    pub discount_pct: Decimal,
    pub allow_overage: bool,
    pub overage_rate: Option<Decimal>,
}

#[derive(Debug, Clone)]
pub struct QuoteInput {
    pub service_price: Decimal,
    pub currency: Currency,
    pub guest: bool,
    /// The organization's plan applicationFeePct.
    pub platform_fee_pct: Decimal,
    pub guest_surcharge_pct: Decimal,
    /// None: no membership applies (none, not active, a guest, or benefits not asked for).
    pub benefits: Option<Benefits>,
    /// The services left when a membership exists but its benefits do not apply (remainingAfter).
    pub remaining_without_benefits: Option<Decimal>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Quote {
    pub coverage: Coverage,
    pub service_price: Decimal,
    pub membership_discount: Decimal,
    pub subtotal: Decimal,
    pub platform_fee_pct: Decimal,
    pub platform_fee: Decimal,
    pub guest_surcharge: Decimal,
    pub total: Decimal,
    pub provider_payout: Decimal,
    pub remaining_after: Option<Decimal>,
    pub currency: Currency,
}

/// `pct` percent of `amount`, half-up to the currency's minor unit.
fn percent_of(amount: Decimal, pct: Decimal, currency: &Currency) -> AppResult<Decimal> {
    amount
        .checked_mul(pct)
        .and_then(|x| x.checked_div(Decimal::ONE_HUNDRED))
        .map(|x| {
            x.round_dp_with_strategy(
                currency.minor_units(),
                RoundingStrategy::MidpointAwayFromZero,
            )
        })
        .ok_or_else(|| AppError::bad_input("servicePrice is too large"))
}

/// A price: not negative, in whole minor units of its currency.
pub fn check_price(field: &str, price: Decimal, currency: &Currency) -> AppResult<Decimal> {
    if price.is_sign_negative() && !price.is_zero() {
        return Err(AppError::bad_input(format!("{field} must not be negative")));
    }
    if price.normalize().scale() > currency.minor_units() {
        return Err(AppError::bad_input(format!(
            "{field} has more decimal places than {} allows ({})",
            currency.as_str(),
            currency.minor_units()
        )));
    }
    crate::domain::Amount::parse(field, price)?;
    Ok(price)
}

pub fn quote(input: QuoteInput) -> AppResult<Quote> {
    let c = &input.currency;
    let price = check_price("servicePrice", input.service_price, c)?;
    let (coverage, subtotal, remaining_after) = match &input.benefits {
        None => (Coverage::None, price, input.remaining_without_benefits),
        Some(b) if b.remaining >= Decimal::ONE => (
            Coverage::Included,
            Decimal::ZERO,
            Some(b.remaining - Decimal::ONE),
        ),
        Some(b) => {
            let discounted = price - percent_of(price, b.discount_pct, c)?;
            if b.allow_overage {
                // A member never pays more than the service's price.
                let rate = b.overage_rate.unwrap_or(discounted).min(price);
                (Coverage::Overage, rate, Some(Decimal::ZERO))
            } else {
                (Coverage::Discounted, discounted, Some(b.remaining))
            }
        }
    };
    let platform_fee = percent_of(subtotal, input.platform_fee_pct, c)?;
    let guest_surcharge = if input.guest {
        percent_of(subtotal, input.guest_surcharge_pct, c)?
    } else {
        Decimal::ZERO
    };
    let display = |d: Decimal| c.display(d);
    Ok(Quote {
        coverage,
        service_price: display(price),
        membership_discount: display(price - subtotal),
        subtotal: display(subtotal),
        platform_fee_pct: input.platform_fee_pct,
        platform_fee: display(platform_fee),
        guest_surcharge: display(guest_surcharge),
        total: display(subtotal + guest_surcharge),
        provider_payout: display(subtotal - platform_fee),
        remaining_after: remaining_after.map(|r| r.normalize()),
        currency: input.currency,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn q(price: &str, guest: bool, fee: &str, benefits: Option<Benefits>) -> Quote {
        quote(QuoteInput {
            service_price: d(price),
            currency: Currency::parse("usd").unwrap(),
            guest,
            platform_fee_pct: d(fee),
            guest_surcharge_pct: d("10"),
            benefits,
            remaining_without_benefits: None,
        })
        .unwrap()
    }

    fn member(remaining: &str, discount: &str, overage: Option<Option<&str>>) -> Option<Benefits> {
        Some(Benefits {
            remaining: d(remaining),
            discount_pct: d(discount),
            allow_overage: overage.is_some(),
            overage_rate: overage.flatten().map(d),
        })
    }

    #[test]
    fn the_seed_fee_structure() {
        // A guest: full price, 10% platform fee out of the payout, 10% surcharge on top.
        let g = q("100.00", true, "10", None);
        assert_eq!(g.coverage, Coverage::None);
        assert_eq!(
            (
                g.total,
                g.platform_fee,
                g.provider_payout,
                g.guest_surcharge
            ),
            (d("110.00"), d("10.00"), d("90.00"), d("10.00"))
        );
        // Included: nothing to pay, nothing to keep.
        let i = q("80.00", false, "10", member("2", "15", None));
        assert_eq!(i.coverage, Coverage::Included);
        assert_eq!((i.total, i.membership_discount), (d("0.00"), d("80.00")));
        assert_eq!(i.remaining_after, Some(d("1")));
        // Past the allowance with an overage rate: the rate, fee on it.
        let o = q("80.00", false, "10", member("0", "15", Some(Some("25"))));
        assert_eq!(o.coverage, Coverage::Overage);
        assert_eq!(
            (
                o.subtotal,
                o.platform_fee,
                o.provider_payout,
                o.membership_discount
            ),
            (d("25.00"), d("2.50"), d("22.50"), d("55.00"))
        );
        // A rate above the service's price: the price (a member never pays more than a guest's subtotal).
        let cheap = q("20.00", false, "10", member("0", "15", Some(Some("25"))));
        assert_eq!(
            (cheap.subtotal, cheap.membership_discount),
            (d("20.00"), d("0.00"))
        );
        // Overage without a rate: the discounted price.
        let od = q("80.00", false, "10", member("0", "15", Some(None)));
        assert_eq!(od.subtotal, d("68.00"));
        // No overage: the member discount, half-up to the cent.
        let m = q("33.33", false, "7.5", member("0.5", "15", None));
        assert_eq!(m.coverage, Coverage::Discounted);
        assert_eq!(m.membership_discount, d("5.00"));
        assert_eq!(m.subtotal, d("28.33"));
        assert_eq!(m.platform_fee, d("2.12"));
        assert_eq!(m.provider_payout, d("26.21"));
    }

    #[test]
    fn prices_are_checked() {
        let bad = |p: &str, c: &str| {
            quote(QuoteInput {
                service_price: d(p),
                currency: Currency::parse(c).unwrap(),
                guest: false,
                platform_fee_pct: d("10"),
                guest_surcharge_pct: d("10"),
                benefits: None,
                remaining_without_benefits: None,
            })
            .is_err()
        };
        assert!(bad("-1", "usd"));
        assert!(bad("1.005", "usd"));
        assert!(bad("10.5", "jpy"));
        assert!(!bad("0", "usd"));
        assert!(!bad("1000", "jpy"));
    }
}
