//! DataLoaders, one set per request (they cache for the request and carry the caller's scope), so a
//! page of organizations with their plans and usage costs a constant number of statements.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::dataloader::Loader;
use chrono::NaiveDate;
use entity::organization;
use uuid::Uuid;

use crate::domain::usage::{Engine, UsageSummary};
use crate::domain::{OrganizationId, Period, Scope};
use crate::store;

pub struct Loaders {
    pub engine: Engine,
    pub scope: Scope,
}

pub use crate::domain::plans::PlanWithLimits;

fn gql(e: crate::error::AppError) -> async_graphql::Error {
    e.into()
}

impl Loader<Uuid> for Loaders {
    type Value = Arc<PlanWithLimits>;
    type Error = async_graphql::Error;

    /// Plans from the entitlement cache when it holds them (a plan changes only by upsertPlan,
    /// which empties it on every replica), the rest from the database.
    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, Self::Value>, Self::Error> {
        let cache = &self.engine.cache;
        let mut found = HashMap::with_capacity(keys.len());
        let mut missing = Vec::new();
        for &id in keys {
            match cache.plan(id) {
                Some(p) => {
                    found.insert(id, p);
                }
                None => missing.push(id),
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let ticket = cache.plans_ticket();
        let db = &self.engine.db;
        let plans = store::catalog::plans_by_ids(db, &missing)
            .await
            .map_err(|e| gql(e.into()))?;
        let limits = store::catalog::limits_for_plans(db, &missing)
            .await
            .map_err(|e| gql(e.into()))?;
        let read: Vec<Arc<PlanWithLimits>> = plans
            .into_iter()
            .map(|p| {
                let mine = limits
                    .iter()
                    .filter(|l| l.plan_id == p.id)
                    .cloned()
                    .collect();
                Arc::new(PlanWithLimits {
                    plan: p,
                    limits: mine,
                })
            })
            .collect();
        cache.put_plans(ticket, &read);
        found.extend(read.into_iter().map(|p| (p.plan.id, p)));
        Ok(found)
    }
}

impl Loader<OrganizationId> for Loaders {
    type Value = organization::Model;
    type Error = async_graphql::Error;

    async fn load(
        &self,
        keys: &[OrganizationId],
    ) -> Result<HashMap<OrganizationId, Self::Value>, Self::Error> {
        let rows = store::orgs::by_ids(&self.engine.db, self.scope, keys)
            .await
            .map_err(|e| gql(e.into()))?;
        Ok(rows
            .into_iter()
            .map(|o| (OrganizationId(o.id), o))
            .collect())
    }
}

/// An organization's usage in the period starting on the date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UsageKey(pub OrganizationId, pub NaiveDate);

impl Loader<UsageKey> for Loaders {
    type Value = Arc<UsageSummary>;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[UsageKey]) -> Result<HashMap<UsageKey, Self::Value>, Self::Error> {
        let current = Period::current().start;
        let mut out = HashMap::new();
        let mut by_period: HashMap<NaiveDate, Vec<OrganizationId>> = HashMap::new();
        let mut tickets = HashMap::new();
        for k in keys {
            // The current period comes from the entitlement cache when it holds the organization.
            if k.1 == current {
                if let Some(s) = self.engine.cached_summary(self.scope, k.0) {
                    out.insert(*k, s);
                    continue;
                }
                if let Some(t) = self.engine.cache.ticket(k.0) {
                    tickets.insert(k.0, t);
                }
            }
            by_period.entry(k.1).or_default().push(k.0);
        }
        for (start, orgs) in by_period {
            let db = &self.engine.db;
            let models = store::orgs::by_ids(db, self.scope, &orgs)
                .await
                .map_err(|e| gql(e.into()))?;
            let summaries = self
                .engine
                .summaries(db, self.scope, models, Period::containing(start))
                .await
                .map_err(gql)?;
            for s in summaries {
                let id = OrganizationId(s.org.id);
                let s = Arc::new(s);
                if start == current
                    && let Some(t) = tickets.get(&id)
                {
                    self.engine.cache.put(*t, s.clone());
                }
                out.insert(UsageKey(id, start), s);
            }
        }
        Ok(out)
    }
}

/// A membership plan by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MembershipPlanKey(pub Uuid);

impl Loader<MembershipPlanKey> for Loaders {
    type Value = entity::membership_plan::Model;
    type Error = async_graphql::Error;

    async fn load(
        &self,
        keys: &[MembershipPlanKey],
    ) -> Result<HashMap<MembershipPlanKey, Self::Value>, Self::Error> {
        let ids: Vec<Uuid> = keys.iter().map(|k| k.0).collect();
        let rows = store::memberships::plans_by_ids(&self.engine.db, self.scope, &ids)
            .await
            .map_err(|e| gql(e.into()))?;
        Ok(rows
            .into_iter()
            .map(|p| (MembershipPlanKey(p.id), p))
            .collect())
    }
}

/// A customer's memberships, newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CustomerMembershipsKey(pub Uuid);

impl Loader<CustomerMembershipsKey> for Loaders {
    type Value = Arc<Vec<entity::membership::Model>>;
    type Error = async_graphql::Error;

    async fn load(
        &self,
        keys: &[CustomerMembershipsKey],
    ) -> Result<HashMap<CustomerMembershipsKey, Self::Value>, Self::Error> {
        let ids: Vec<Uuid> = keys.iter().map(|k| k.0).collect();
        let rows = store::memberships::memberships_of_customers(&self.engine.db, self.scope, &ids)
            .await
            .map_err(|e| gql(e.into()))?;
        let mut out: HashMap<CustomerMembershipsKey, Vec<entity::membership::Model>> =
            keys.iter().map(|k| (*k, Vec::new())).collect();
        for m in rows {
            if let Some(list) = out.get_mut(&CustomerMembershipsKey(m.customer_id)) {
                list.push(m);
            }
        }
        Ok(out.into_iter().map(|(k, v)| (k, Arc::new(v))).collect())
    }
}

/// A membership's counters in one cycle (absent: never touched).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CycleUsageKey(pub Uuid, pub i32);

impl Loader<CycleUsageKey> for Loaders {
    type Value = entity::membership_usage::Model;
    type Error = async_graphql::Error;

    async fn load(
        &self,
        keys: &[CycleUsageKey],
    ) -> Result<HashMap<CycleUsageKey, Self::Value>, Self::Error> {
        let pairs: Vec<(Uuid, i32)> = keys.iter().map(|k| (k.0, k.1)).collect();
        let rows = store::memberships::usage_rows(&self.engine.db, self.scope, &pairs)
            .await
            .map_err(|e| gql(e.into()))?;
        Ok(rows
            .into_iter()
            .map(|r| (CycleUsageKey(r.membership_id, r.cycle), r))
            .collect())
    }
}

/// A membership by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MembershipKey(pub Uuid);

impl Loader<MembershipKey> for Loaders {
    type Value = entity::membership::Model;
    type Error = async_graphql::Error;

    async fn load(
        &self,
        keys: &[MembershipKey],
    ) -> Result<HashMap<MembershipKey, Self::Value>, Self::Error> {
        let ids: Vec<Uuid> = keys.iter().map(|k| k.0).collect();
        let rows = store::memberships::memberships_by_ids(&self.engine.db, self.scope, &ids)
            .await
            .map_err(|e| gql(e.into()))?;
        Ok(rows.into_iter().map(|m| (MembershipKey(m.id), m)).collect())
    }
}

/// A customer by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CustomerKey(pub Uuid);

impl Loader<CustomerKey> for Loaders {
    type Value = entity::customer::Model;
    type Error = async_graphql::Error;

    async fn load(
        &self,
        keys: &[CustomerKey],
    ) -> Result<HashMap<CustomerKey, Self::Value>, Self::Error> {
        let ids: Vec<Uuid> = keys.iter().map(|k| k.0).collect();
        let rows = store::memberships::customers_by_ids(&self.engine.db, self.scope, &ids)
            .await
            .map_err(|e| gql(e.into()))?;
        Ok(rows.into_iter().map(|c| (CustomerKey(c.id), c)).collect())
    }
}

/// A booking by its organization and reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BookingRefKey(pub Uuid, pub String);

impl Loader<BookingRefKey> for Loaders {
    type Value = entity::booking::Model;
    type Error = async_graphql::Error;

    async fn load(
        &self,
        keys: &[BookingRefKey],
    ) -> Result<HashMap<BookingRefKey, Self::Value>, Self::Error> {
        let mut by_org: HashMap<Uuid, Vec<String>> = HashMap::new();
        for k in keys {
            by_org.entry(k.0).or_default().push(k.1.clone());
        }
        let mut out = HashMap::new();
        for (org, references) in by_org {
            let rows = store::memberships::bookings_by_references(
                &self.engine.db,
                self.scope,
                OrganizationId(org),
                &references,
            )
            .await
            .map_err(|e| gql(e.into()))?;
            out.extend(
                rows.into_iter()
                    .map(|b| (BookingRefKey(b.organization_id, b.reference.clone()), b)),
            );
        }
        Ok(out)
    }
}
