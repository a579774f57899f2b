//! The money side's API (contract/money.graphql): application-fee quotes, payments and revenue.
//! Thin: arguments parsed, `domain::money` called, answers shaped.

use async_graphql::connection::{Connection, EmptyFields};
use async_graphql::{Context, Enum, ID, InputObject, Object, Result};
use chrono::{DateTime, Utc};
use entity::payment;
use rust_decimal::Decimal;

use super::scalars::{Date, Dec};
use super::types::{Organization, load_org};
use super::{connection_args, cursor_decode, cursor_encode, page_of, request_ctx};
use crate::domain::connect;
use crate::domain::money::{self, Currency, FeeQuote};
use crate::domain::{Amount, OrganizationId, Period};
use crate::error::AppError;
use crate::store;

/// An amount in a currency's major unit, with exactly its minor unit's places ("4.20", "75").
fn money_in(currency: &str, scaled: i64) -> Dec {
    let d = Amount::from_scaled(scaled).to_decimal();
    match Currency::parse(currency) {
        Ok(c) => Dec(c.display(d)),
        Err(_) => Dec::money(d),
    }
}

pub struct ApplicationFeeQuote(FeeQuote);

/// The seed's calculate_application_fee(): what the platform keeps of a payment, by the organization's plan.
#[Object]
impl ApplicationFeeQuote {
    async fn amount(&self) -> Dec {
        Dec(self.0.currency.display(self.0.amount))
    }
    async fn currency(&self) -> &str {
        self.0.currency.as_str()
    }
    async fn application_fee_pct(&self) -> Dec {
        Dec::qty(self.0.application_fee_pct)
    }
    /// amount * applicationFeePct / 100, rounded half-up to the currency's minor unit.
    async fn application_fee(&self) -> Dec {
        Dec(self.0.currency.display(self.0.application_fee))
    }
    /// amount - applicationFee.
    async fn net_amount(&self) -> Dec {
        Dec(self.0.currency.display(self.0.net_amount))
    }
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "crate::domain::money::PaymentStatus")]
pub enum PaymentStatus {
    Succeeded,
    Refunded,
    PartiallyRefunded,
}

pub struct Payment(pub payment::Model);

#[Object]
impl Payment {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn organization(&self, ctx: &Context<'_>) -> Result<Organization> {
        load_org(ctx, self.0.organization_id).await
    }
    /// pi_... of the payment on the connected account; unique: a payment is recorded once.
    async fn stripe_payment_intent_id(&self) -> &str {
        &self.0.stripe_payment_intent_id
    }
    async fn amount(&self) -> Dec {
        money_in(&self.0.currency, self.0.amount)
    }
    async fn currency(&self) -> &str {
        &self.0.currency
    }
    async fn application_fee(&self) -> Dec {
        money_in(&self.0.currency, self.0.application_fee)
    }
    async fn net_amount(&self) -> Dec {
        money_in(&self.0.currency, self.0.net_amount)
    }
    async fn refunded_amount(&self) -> Dec {
        money_in(&self.0.currency, self.0.refunded_amount)
    }
    async fn status(&self) -> PaymentStatus {
        money::payment_status(&self.0).into()
    }
    /// The caller's own handle, e.g. booking:123.
    async fn reference(&self) -> Option<&str> {
        self.0.reference.as_deref()
    }
    async fn occurred_at(&self) -> DateTime<Utc> {
        self.0.occurred_at
    }
}

pub struct RevenueSummary(pub money::RevenueSummary);

/// The seed's organization_revenue_summary row; refunds are subtracted in the period of the refund.
#[Object]
impl RevenueSummary {
    async fn organization(&self, ctx: &Context<'_>) -> Result<Organization> {
        load_org(ctx, self.0.org.0).await
    }
    async fn period_start(&self) -> Date {
        Date(self.0.period.start)
    }
    async fn period_end(&self) -> Date {
        Date(self.0.period.end())
    }
    async fn currency(&self) -> &str {
        self.0.currency.as_str()
    }
    async fn payments_count(&self) -> i32 {
        i32::try_from(self.0.payments).unwrap_or(i32::MAX)
    }
    async fn gross_amount(&self) -> Dec {
        Dec(self.0.gross)
    }
    async fn refunded_amount(&self) -> Dec {
        Dec(self.0.refunded)
    }
    async fn application_fees(&self) -> Dec {
        Dec(self.0.fees)
    }
    /// grossAmount - refundedAmount - applicationFees.
    async fn net_amount(&self) -> Dec {
        Dec(self.0.net)
    }
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "crate::domain::connect::Status")]
pub enum ConnectAccountStatus {
    /// No connected account yet.
    None,
    /// Created; onboarding not finished (details not submitted or requirements due).
    Onboarding,
    /// Charges and payouts enabled.
    Active,
    /// Stripe disabled charges or payouts (requirements past due, rejected).
    Restricted,
}

/// Stripe Connect: the organization's connected account, through which its customers pay it.
pub struct ConnectAccount(pub Option<entity::connect_account::Model>);

#[Object]
impl ConnectAccount {
    async fn status(&self) -> ConnectAccountStatus {
        connect::status(self.0.as_ref()).into()
    }
    /// acct_... once created.
    async fn stripe_account_id(&self) -> Option<&str> {
        self.0.as_ref().map(|a| a.stripe_account_id.as_str())
    }
    async fn charges_enabled(&self) -> bool {
        self.0.as_ref().is_some_and(|a| a.charges_enabled)
    }
    async fn payouts_enabled(&self) -> bool {
        self.0.as_ref().is_some_and(|a| a.payouts_enabled)
    }
    async fn details_submitted(&self) -> bool {
        self.0.as_ref().is_some_and(|a| a.details_submitted)
    }
    /// Stripe's requirements.currently_due: what onboarding still needs.
    async fn requirements_due(&self) -> Vec<String> {
        self.0
            .as_ref()
            .map(connect::requirements_due)
            .unwrap_or_default()
    }
    /// When Tollgate last heard from Stripe about this account (API answer or account.updated webhook).
    async fn updated_at(&self) -> Option<DateTime<Utc>> {
        self.0.as_ref().map(|a| a.updated_at)
    }
}

pub struct ConnectAccountLink(connect::Link);

#[Object]
impl ConnectAccountLink {
    /// Stripe's hosted onboarding page for the organization's account.
    async fn url(&self) -> &str {
        &self.0.url
    }
    async fn expires_at(&self) -> DateTime<Utc> {
        self.0.expires_at
    }
}

pub async fn connect_account(ctx: &Context<'_>, org: OrganizationId) -> Result<ConnectAccount> {
    let rc = request_ctx(ctx)?;
    Ok(ConnectAccount(
        connect::account(&rc.engine, rc.scope(), org).await?,
    ))
}

#[derive(InputObject)]
pub struct CreateConnectAccountInput {
    pub organization_id: Option<ID>,
    pub email: Option<String>,
    pub country: Option<String>,
}

#[derive(InputObject)]
pub struct CreateConnectAccountLinkInput {
    pub organization_id: Option<ID>,
    pub refresh_url: String,
    pub return_url: String,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
pub enum OverageChargeStatus {
    /// Computed, not yet accepted by Stripe.
    Pending,
    /// Stripe accepted it (an invoice item exists); never sent twice.
    Sent,
    /// Stripe refused it for a reason that retrying cannot fix; needs a person.
    Failed,
    /// Nothing to bill (a correction brought the overage to zero before it was sent).
    Void,
}

impl OverageChargeStatus {
    fn of(s: &str) -> Self {
        match s {
            "SENT" => Self::Sent,
            "FAILED" => Self::Failed,
            "VOID" => Self::Void,
            _ => Self::Pending,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Sent => "SENT",
            Self::Failed => "FAILED",
            Self::Void => "VOID",
        }
    }
}

pub struct OverageCharge(pub entity::overage_charge::Model);

#[Object]
impl OverageCharge {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn organization(&self, ctx: &Context<'_>) -> Result<Organization> {
        load_org(ctx, self.0.organization_id).await
    }
    async fn metric(&self, ctx: &Context<'_>) -> Result<super::types::Metric> {
        super::types::load_metric(ctx, &self.0.metric_code).await
    }
    async fn period_start(&self) -> Date {
        Date(self.0.period_start)
    }
    /// Units past the allowance in the period.
    async fn quantity(&self) -> Dec {
        Dec::qty(Amount::from_scaled(self.0.quantity).to_decimal())
    }
    async fn unit_price(&self) -> Dec {
        Dec::money(Amount::from_scaled(self.0.unit_price).to_decimal())
    }
    async fn amount(&self) -> Dec {
        money_in(&self.0.currency, self.0.amount)
    }
    async fn currency(&self) -> &str {
        &self.0.currency
    }
    async fn status(&self) -> OverageChargeStatus {
        OverageChargeStatus::of(&self.0.status)
    }
    /// The id Stripe gave it (an invoice item ii_...), once SENT.
    async fn stripe_id(&self) -> Option<&str> {
        self.0.stripe_id.as_deref()
    }
    async fn attempts(&self) -> i32 {
        self.0.attempts
    }
    async fn last_error(&self) -> Option<&str> {
        self.0.last_error.as_deref()
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    async fn sent_at(&self) -> Option<DateTime<Utc>> {
        self.0.sent_at
    }
    /// What happened to the charge, oldest first: billed, corrected before it was sent, or corrected after it was sent and left alone.
    async fn history(&self) -> Vec<String> {
        serde_json::from_str(&self.0.history).unwrap_or_default()
    }
}

pub struct PlatformRevenueSummary(crate::domain::overage::PlatformRevenue);

/// The seed's platform_revenue_summary row: what the platform earned in a period, over every organization.
#[Object]
impl PlatformRevenueSummary {
    async fn period_start(&self) -> Date {
        Date(self.0.period.start)
    }
    async fn period_end(&self) -> Date {
        Date(self.0.period.end())
    }
    async fn currency(&self) -> &str {
        self.0.currency.as_str()
    }
    async fn payments_count(&self) -> i32 {
        i32::try_from(self.0.payments).unwrap_or(i32::MAX)
    }
    async fn organizations_count(&self) -> i32 {
        i32::try_from(self.0.organizations).unwrap_or(i32::MAX)
    }
    async fn gross_amount(&self) -> Dec {
        Dec(self.0.gross)
    }
    async fn application_fees(&self) -> Dec {
        Dec(self.0.fees)
    }
    /// Overage charges accepted by Stripe in the period (status SENT).
    async fn overage_billed(&self) -> Dec {
        Dec(self.0.overage_billed)
    }
}

pub async fn overage_charges(
    ctx: &Context<'_>,
    org: OrganizationId,
    first: Option<i32>,
    after: Option<String>,
    status: Option<OverageChargeStatus>,
) -> Result<Connection<String, OverageCharge, EmptyFields, EmptyFields>> {
    let rc = request_ctx(ctx)?;
    let limit = connection_args(rc, first)?;
    let after_key = after
        .as_deref()
        .map(cursor_decode::<(chrono::NaiveDate, uuid::Uuid)>)
        .transpose()?;
    let rows = store::overage::page(
        &rc.engine.db,
        rc.scope(),
        org,
        status.map(OverageChargeStatus::as_str),
        after_key,
        limit as u64 + 1,
    )
    .await
    .map_err(AppError::from)?;
    Ok(page_of(
        rows,
        limit,
        after.is_some(),
        EmptyFields,
        |c| cursor_encode(&(c.period_start, c.id)),
        OverageCharge,
    ))
}

/// Organization's money fields (called from its object in `types`).
pub async fn payments(
    ctx: &Context<'_>,
    org: OrganizationId,
    first: Option<i32>,
    after: Option<String>,
) -> Result<Connection<String, Payment, EmptyFields, EmptyFields>> {
    let rc = request_ctx(ctx)?;
    let limit = connection_args(rc, first)?;
    let after_key = after
        .as_deref()
        .map(cursor_decode::<(DateTime<Utc>, uuid::Uuid)>)
        .transpose()?;
    let rows = store::payments::page(&rc.engine.db, rc.scope(), org, after_key, limit as u64 + 1)
        .await
        .map_err(AppError::from)?;
    Ok(page_of(
        rows,
        limit,
        after.is_some(),
        EmptyFields,
        |p| cursor_encode(&(p.occurred_at, p.id)),
        Payment,
    ))
}

pub async fn revenue(
    ctx: &Context<'_>,
    org: &entity::organization::Model,
    from: Option<Date>,
    to: Option<Date>,
) -> Result<Vec<RevenueSummary>> {
    let rc = request_ctx(ctx)?;
    let rows = money::revenue(
        &rc.engine,
        rc.viewer()?,
        org,
        from.map(|d| d.0),
        to.map(|d| d.0),
    )
    .await?;
    rc.engine.db.release().await;
    Ok(rows.into_iter().map(RevenueSummary).collect())
}

#[derive(Default)]
pub struct MoneyQuery;

#[Object]
impl MoneyQuery {
    /// Platform team only (invisible to tenants): the seed's platform_revenue_summary, one row per period and currency, oldest first.
    #[graphql(
        visible = "super::platform_only",
        complexity = "super::history_complexity(from, to, child_complexity)"
    )]
    async fn platform_revenue(
        &self,
        ctx: &Context<'_>,
        from: Option<Date>,
        to: Option<Date>,
    ) -> Result<Vec<PlatformRevenueSummary>> {
        let rc = request_ctx(ctx)?;
        let rows = crate::domain::overage::platform_revenue(
            &rc.engine,
            rc.viewer()?,
            from.map(|d| d.0),
            to.map(|d| d.0),
        )
        .await?;
        Ok(rows.into_iter().map(PlatformRevenueSummary).collect())
    }

    /// The seed's calculate_application_fee(): the fee the platform takes from `amount` paid to the organization (default currency: usd).
    async fn quote_application_fee(
        &self,
        ctx: &Context<'_>,
        organization_id: Option<ID>,
        amount: Dec,
        currency: Option<String>,
    ) -> Result<ApplicationFeeQuote> {
        let rc = request_ctx(ctx)?;
        let quote = money::quote(
            &rc.engine,
            rc.viewer()?,
            organization_id.as_ref().map(|i| i.as_str()),
            amount.0,
            currency.as_deref(),
        )
        .await?;
        Ok(ApplicationFeeQuote(quote))
    }
}

#[derive(InputObject)]
pub struct RecordPaymentInput {
    pub organization_id: Option<ID>,
    pub stripe_payment_intent_id: String,
    pub amount: Dec,
    pub currency: String,
    pub reference: Option<String>,
    /// Default: now. Decides the period.
    pub occurred_at: Option<DateTime<Utc>>,
}

#[derive(Default)]
pub struct MoneyMutation;

#[Object]
impl MoneyMutation {
    /// Platform team only (invisible to tenants): compute the period's overage charges for every organization (default: the last closed period) and queue them for Stripe. Idempotent: a charge is created once per organization, period and metric.
    #[graphql(visible = "super::platform_only")]
    async fn bill_overage(
        &self,
        ctx: &Context<'_>,
        period: Option<Date>,
    ) -> Result<Vec<OverageCharge>> {
        let rc = request_ctx(ctx)?;
        let charges =
            crate::domain::overage::bill(&rc.engine, rc.viewer()?, period.map(|d| d.0)).await?;
        Ok(charges.into_iter().map(OverageCharge).collect())
    }

    /// OWNER/ADMIN or the platform team: create the organization's Stripe Connect (Express) account; returns the existing one if there is one.
    async fn create_connect_account(
        &self,
        ctx: &Context<'_>,
        input: CreateConnectAccountInput,
    ) -> Result<ConnectAccount> {
        let rc = request_ctx(ctx)?;
        let account = connect::create(
            &rc.engine,
            rc.viewer()?,
            input.organization_id.as_ref().map(|i| i.as_str()),
            input.email.as_deref(),
            input.country.as_deref(),
        )
        .await?;
        Ok(ConnectAccount(Some(account)))
    }

    /// OWNER/ADMIN or the platform team: a fresh onboarding link for the organization's connected account.
    async fn create_connect_account_link(
        &self,
        ctx: &Context<'_>,
        input: CreateConnectAccountLinkInput,
    ) -> Result<ConnectAccountLink> {
        let rc = request_ctx(ctx)?;
        let link = connect::link(
            &rc.engine,
            rc.viewer()?,
            input.organization_id.as_ref().map(|i| i.as_str()),
            &input.refresh_url,
            &input.return_url,
        )
        .await?;
        Ok(ConnectAccountLink(link))
    }

    /// Read the account's state from Stripe now (the seed's account-status function); webhooks keep it fresh otherwise.
    async fn refresh_connect_account(
        &self,
        ctx: &Context<'_>,
        organization_id: Option<ID>,
    ) -> Result<ConnectAccount> {
        let rc = request_ctx(ctx)?;
        let account = connect::refresh(
            &rc.engine,
            rc.viewer()?,
            organization_id.as_ref().map(|i| i.as_str()),
        )
        .await?;
        Ok(ConnectAccount(account))
    }

    /// SERVICE, OWNER/ADMIN or the platform team: a payment the organization received. Idempotent by stripePaymentIntentId (the same PaymentIntent with another organization, amount or currency is a CONFLICT). Computes the application fee from the organization's plan, and records the revenue metric in the same transaction.
    async fn record_payment(
        &self,
        ctx: &Context<'_>,
        input: RecordPaymentInput,
    ) -> Result<Payment> {
        let rc = request_ctx(ctx)?;
        let stored = money::record_payment(
            &rc.engine,
            rc.viewer()?,
            money::PaymentInput {
                organization_id: input.organization_id.map(|i| i.0),
                stripe_payment_intent_id: input.stripe_payment_intent_id,
                amount: input.amount.0,
                currency: input.currency,
                reference: input.reference,
                occurred_at: input.occurred_at,
            },
        )
        .await?;
        Ok(Payment(stored))
    }
}

/// Keeps `Decimal` and `Period` in use where the quote's types need them.
#[allow(dead_code)]
fn _types(_: Decimal, _: Period) {}
