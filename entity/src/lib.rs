//! SeaORM entities: the tables as the store sees them. They are not the API: the GraphQL layer has its
//! own types. Decimal columns are `i64` scaled by 10^4 (`migration::DECIMAL_SCALE`); the store converts.

pub mod booking;
pub mod connect_account;
pub mod customer;
pub mod enums;
pub mod membership;
pub mod membership_change;
pub mod membership_plan;
pub mod membership_plan_history;
pub mod membership_usage;
pub mod metric;
pub mod organization;
pub mod organization_usage;
pub mod overage_charge;
pub mod payment;
pub mod payment_refund;
pub mod plan;
pub mod plan_history;
pub mod plan_limit;
pub mod platform_team;
pub mod subscription_history;
pub mod usage_alert;
pub mod usage_counter;
pub mod usage_event;
pub mod usage_index_period;
pub mod usage_utilization;
