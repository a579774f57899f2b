//! The entitlement cache: each organization's current-period summary (organization, plan rules,
//! counters, flags) kept in memory, so the hot reads (an organization's usage, checkEntitlement) cost
//! no statement. It is never consulted to enforce anything: recording and HARD limits read and write
//! in SQL under the period lock.
//!
//! Invalidation:
//! - every commit that changes an organization invalidates it on the replica that wrote it, right
//!   after the commit and before the answer leaves, so a client reads its own writes;
//! - other replicas invalidate when the commit's notification arrives (Postgres LISTEN), and drop
//!   everything when LISTEN reconnects (notifications may have been missed);
//! - a plan's limits changing (upsertPlan) drops everything, on every replica (it notifies too);
//! - entries also expire after a time to live (`--entitlement-cache-ttl`, one second unless set;
//!   zero turns the cache off), which bounds how stale a write made outside the server (a
//!   `tollgate recompute` from the command line, a manual SQL fix) can be seen.
//!
//! A reader takes a ticket before reading the database and stores its result only if nothing was
//! invalidated meanwhile, so a read that raced a commit can never park a stale value.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::usage::UsageSummary;
use super::{OrganizationId, Period};

/// How long an entry is trusted without an invalidation, unless configured.
pub const TTL: Duration = Duration::from_secs(1);

/// Entries beyond this are not added (memory stays bounded; misses just read the database).
const MAX_ENTRIES: usize = 100_000;

pub struct StateCache {
    inner: Mutex<Inner>,
    ttl: Duration,
}

impl Default for StateCache {
    fn default() -> Self {
        StateCache::new(TTL)
    }
}

#[derive(Default)]
struct Inner {
    /// Raised by `clear`: tickets from before it are void.
    epoch: u64,
    entries: HashMap<OrganizationId, Entry>,
}

#[derive(Default)]
struct Entry {
    /// Raised by every invalidation of this organization.
    generation: u64,
    value: Option<(Instant, Arc<UsageSummary>)>,
}

/// What a reader saw before reading the database.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    epoch: u64,
    generation: u64,
}

impl StateCache {
    /// A cache whose entries are trusted for `ttl` (zero: nothing is kept).
    pub fn new(ttl: Duration) -> Self {
        StateCache {
            inner: Mutex::default(),
            ttl,
        }
    }

    /// The organization's current-period summary, when cached and fresh.
    pub fn get(&self, org: OrganizationId) -> Option<Arc<UsageSummary>> {
        let inner = self.inner.lock().ok()?;
        let (at, summary) = inner.entries.get(&org)?.value.as_ref()?;
        (at.elapsed() < self.ttl && summary.period == Period::current()).then(|| summary.clone())
    }

    /// Taken before reading the database for `org`.
    pub fn ticket(&self, org: OrganizationId) -> Option<Ticket> {
        let inner = self.inner.lock().ok()?;
        Some(Ticket {
            epoch: inner.epoch,
            generation: inner.entries.get(&org).map_or(0, |e| e.generation),
        })
    }

    /// Stores what was read after `ticket`, unless the organization changed meanwhile.
    pub fn put(&self, ticket: Ticket, summary: Arc<UsageSummary>) {
        let org = OrganizationId(summary.org.id);
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if self.ttl.is_zero() || inner.epoch != ticket.epoch || summary.period != Period::current()
        {
            return;
        }
        if inner.entries.len() >= MAX_ENTRIES && !inner.entries.contains_key(&org) {
            return;
        }
        let entry = inner.entries.entry(org).or_default();
        if entry.generation == ticket.generation {
            entry.value = Some((Instant::now(), summary));
        }
    }

    pub fn invalidate(&self, org: OrganizationId) {
        if let Ok(mut inner) = self.inner.lock() {
            let entry = inner.entries.entry(org).or_default();
            entry.generation += 1;
            entry.value = None;
        }
    }

    pub fn clear(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.epoch += 1;
            inner.entries.clear();
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.entries.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use entity::organization;

    fn summary(org: uuid::Uuid) -> Arc<UsageSummary> {
        let now = chrono::Utc::now();
        Arc::new(UsageSummary {
            org: organization::Model {
                id: org,
                name: "x".into(),
                slug: "x".into(),
                status: entity::enums::OrganizationStatus::Active,
                plan_id: None,
                trial_ends_at: None,
                stripe_customer_id: None,
                stripe_subscription_id: None,
                created_at: now,
                updated_at: now,
            },
            period: Period::current(),
            metrics: vec![],
            updated_at: None,
        })
    }

    #[test]
    fn a_read_that_raced_a_write_is_not_kept() {
        let cache = StateCache::default();
        let id = uuid::Uuid::new_v4();
        let org = OrganizationId(id);
        let ticket = cache.ticket(org).unwrap();
        cache.invalidate(org); // a commit lands while the reader reads
        cache.put(ticket, summary(id));
        assert!(cache.get(org).is_none());
        let ticket = cache.ticket(org).unwrap();
        cache.put(ticket, summary(id));
        assert!(cache.get(org).is_some());
        let ticket = cache.ticket(org).unwrap();
        cache.clear();
        cache.put(ticket, summary(id));
        assert!(cache.get(org).is_none(), "a clear voids older tickets");
    }

    #[test]
    fn entries_live_for_the_configured_time() {
        let id = uuid::Uuid::new_v4();
        let org = OrganizationId(id);
        let off = StateCache::new(Duration::ZERO);
        off.put(off.ticket(org).unwrap(), summary(id));
        assert!(off.get(org).is_none());
        assert!(off.is_empty(), "a cache turned off keeps nothing");
        let short = StateCache::new(Duration::from_millis(30));
        short.put(short.ticket(org).unwrap(), summary(id));
        assert!(short.get(org).is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert!(short.get(org).is_none(), "expired");
    }
}
