//! Rules of the product: limits, enforcement, alerts, plan changes, access. No SQL here: services
//! own transactions and call the store.

pub mod access;
pub mod cache;
pub mod connect;
pub mod limits;
pub mod memberships;
pub mod money;
pub mod orgs;
pub mod overage;
pub mod plans;
pub mod recompute;
pub mod stripe;
pub mod types;
pub mod usage;

pub use types::*;
