//! Closed sets stored as text.

use sea_orm::entity::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum MetricKind {
    #[sea_orm(string_value = "COUNTER")]
    Counter,
    #[sea_orm(string_value = "GAUGE")]
    Gauge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum Enforcement {
    #[sea_orm(string_value = "SOFT")]
    Soft,
    #[sea_orm(string_value = "HARD")]
    Hard,
    #[sea_orm(string_value = "OVERAGE")]
    Overage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum OrganizationStatus {
    #[sea_orm(string_value = "TRIALING")]
    Trialing,
    #[sea_orm(string_value = "ACTIVE")]
    Active,
    #[sea_orm(string_value = "PAST_DUE")]
    PastDue,
    #[sea_orm(string_value = "CANCELLED")]
    Cancelled,
    #[sea_orm(string_value = "SUSPENDED")]
    Suspended,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum ChangeType {
    #[sea_orm(string_value = "UPGRADE")]
    Upgrade,
    #[sea_orm(string_value = "DOWNGRADE")]
    Downgrade,
    #[sea_orm(string_value = "CANCELLED")]
    Cancelled,
    #[sea_orm(string_value = "REACTIVATED")]
    Reactivated,
    #[sea_orm(string_value = "TRIAL_STARTED")]
    TrialStarted,
    #[sea_orm(string_value = "TRIAL_ENDED")]
    TrialEnded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum AlertKind {
    #[sea_orm(string_value = "NEAR_LIMIT")]
    NearLimit,
    #[sea_orm(string_value = "LIMIT_EXCEEDED")]
    LimitExceeded,
    #[sea_orm(string_value = "OVERAGE_STARTED")]
    OverageStarted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum UsageEventKind {
    #[sea_orm(string_value = "USAGE")]
    Usage,
    #[sea_orm(string_value = "CREDIT")]
    Credit,
    #[sea_orm(string_value = "ADJUSTMENT")]
    Adjustment,
    #[sea_orm(string_value = "REVERSAL")]
    Reversal,
    #[sea_orm(string_value = "RESET")]
    Reset,
}
