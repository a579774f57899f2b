//! The entitlement cache: each organization's current-period summary (organization, plan rules,
//! counters, flags) kept in memory, so the hot reads (an organization's usage, checkEntitlement) cost
//! no statement. It is never consulted to enforce anything: recording and HARD limits read and write
//! in SQL under the period lock.
//!
//! Invalidation:
//! - every commit that changes an organization invalidates it on the replica that wrote it, right
//!   after the commit and before the answer leaves, so a client reads its own writes;
//! - other replicas invalidate when the commit's notification arrives (Postgres LISTEN: the listener
//!   itself, before the event reaches the bus and wakes a subscriber), and drop everything when
//!   LISTEN reconnects (notifications may have been missed);
//! - a plan's limits changing (upsertPlan) drops everything, on every replica (it notifies too);
//! - entries also expire after a time to live (`--entitlement-cache-ttl`, one second unless set;
//!   zero turns the cache off), which bounds how stale a write made outside the server (a
//!   `tollgate recompute` from the command line, a manual SQL fix) can be seen.
//!
//! It also keeps the plans with their limits, by id (`plan`, `put_plans`): they are the same for
//! every caller, and change only by upsertPlan, which empties the cache on every replica as above;
//! the same time to live bounds an edit made outside the server.
//!
//! A reader takes a ticket before reading the database and stores its result only if nothing was
//! invalidated meanwhile, so a read that raced a commit can never park a stale value.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quick_cache::sync::Cache;

use uuid::Uuid;

use super::plans::PlanWithLimits;
use super::usage::UsageSummary;
use super::{OrganizationId, Period};

/// How long an entry is trusted without an invalidation, unless configured.
pub const TTL: Duration = Duration::from_secs(1);

/// Plans kept at most: a catalogue is a handful, so past this one nothing more is kept.
const PLANS: usize = 1024;

/// Organizations kept, unless configured: past it the least useful entries are evicted (a miss
/// just reads the database).
pub const CAPACITY: usize = 100_000;

pub struct StateCache {
    entries: Cache<
        OrganizationId,
        Entry,
        quick_cache::UnitWeighter,
        quick_cache::DefaultHashBuilder,
        Evictions,
    >,
    /// Serializes the check-then-write of `put` against `invalidate` and `clear`.
    writes: Mutex<()>,
    /// Raised by every invalidation: a ticket remembers the value it saw.
    seq: AtomicU64,
    /// Raised by `clear`: tickets from before it are void.
    epoch: AtomicU64,
    /// The newest invalidation among evicted entries: a reader whose organization is not in the
    /// cache cannot tell whether it was invalidated after its ticket, unless its ticket is newer.
    evicted: Arc<AtomicU64>,
    /// Plans with their limits, each with when it was read; emptied by `clear`.
    plans: Mutex<std::collections::HashMap<Uuid, (Instant, Arc<PlanWithLimits>)>>,
    ttl: Duration,
}

impl Default for StateCache {
    fn default() -> Self {
        StateCache::new(TTL)
    }
}

#[derive(Clone, Default)]
struct Entry {
    /// The `seq` of this organization's latest invalidation.
    invalidated: u64,
    value: Option<(Instant, Arc<UsageSummary>)>,
}

/// Remembers the newest invalidation that eviction forgets.
#[derive(Clone)]
struct Evictions(Arc<AtomicU64>);

impl quick_cache::Lifecycle<OrganizationId, Entry> for Evictions {
    type RequestState = ();

    fn begin_request(&self) -> Self::RequestState {}

    fn on_evict(&self, _: &mut (), _: OrganizationId, entry: Entry) {
        self.0.fetch_max(entry.invalidated, Ordering::AcqRel);
    }
}

/// What a reader saw before reading the database.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    epoch: u64,
    seq: u64,
}

impl StateCache {
    /// A cache whose entries are trusted for `ttl` (zero: nothing is kept).
    pub fn new(ttl: Duration) -> Self {
        Self::with_capacity(ttl, CAPACITY)
    }

    /// A cache of at most `capacity` organizations.
    pub fn with_capacity(ttl: Duration, capacity: usize) -> Self {
        let evicted = Arc::new(AtomicU64::new(0));
        let capacity = capacity.max(1);
        StateCache {
            entries: Cache::with(
                capacity,
                capacity as u64,
                quick_cache::UnitWeighter,
                quick_cache::DefaultHashBuilder::default(),
                Evictions(evicted.clone()),
            ),
            writes: Mutex::new(()),
            seq: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            evicted,
            plans: Mutex::default(),
            ttl,
        }
    }

    /// The organization's current-period summary, when cached and fresh.
    pub fn get(&self, org: OrganizationId) -> Option<Arc<UsageSummary>> {
        let (at, summary) = self.entries.get(&org)?.value?;
        (at.elapsed() < self.ttl && summary.period == Period::current()).then_some(summary)
    }

    /// Taken before reading the database for `org`.
    pub fn ticket(&self, _org: OrganizationId) -> Option<Ticket> {
        let _writes = self.writes.lock().ok()?;
        Some(Ticket {
            epoch: self.epoch.load(Ordering::Acquire),
            seq: self.seq.load(Ordering::Acquire),
        })
    }

    /// Stores what was read after `ticket`, unless the organization changed meanwhile (or may
    /// have: its invalidation was evicted after the ticket).
    pub fn put(&self, ticket: Ticket, summary: Arc<UsageSummary>) {
        let org = OrganizationId(summary.org.id);
        let Ok(_writes) = self.writes.lock() else {
            return;
        };
        if self.ttl.is_zero()
            || self.epoch.load(Ordering::Acquire) != ticket.epoch
            || summary.period != Period::current()
        {
            return;
        }
        let invalidated = match self.entries.get(&org) {
            Some(e) => e.invalidated,
            None => self.evicted.load(Ordering::Acquire),
        };
        if invalidated > ticket.seq {
            return;
        }
        self.entries.insert(
            org,
            Entry {
                invalidated,
                value: Some((Instant::now(), summary)),
            },
        );
    }

    /// Whether nothing `depends` on was invalidated after `ticket` (nor the whole cache cleared):
    /// an organization's own invalidations, or with `None` any organization's. What the response
    /// cache (`graphql::responses`) keeps is valid exactly as long as this holds.
    pub fn unchanged_since(&self, ticket: Ticket, depends: Option<OrganizationId>) -> bool {
        let Ok(_writes) = self.writes.lock() else {
            return false;
        };
        if self.epoch.load(Ordering::Acquire) != ticket.epoch {
            return false;
        }
        match depends {
            None => self.seq.load(Ordering::Acquire) == ticket.seq,
            Some(org) => {
                let invalidated = match self.entries.peek(&org) {
                    Some(e) => e.invalidated,
                    None => self.evicted.load(Ordering::Acquire),
                };
                invalidated <= ticket.seq
            }
        }
    }

    pub fn invalidate(&self, org: OrganizationId) {
        let Ok(_writes) = self.writes.lock() else {
            return;
        };
        let seq = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
        self.entries.insert(
            org,
            Entry {
                invalidated: seq,
                value: None,
            },
        );
    }

    pub fn clear(&self) {
        if let Ok(_writes) = self.writes.lock() {
            self.epoch.fetch_add(1, Ordering::AcqRel);
            self.entries.clear();
            if let Ok(mut plans) = self.plans.lock() {
                plans.clear();
            }
        }
    }

    /// A plan with its limits, when kept and fresh.
    pub fn plan(&self, id: Uuid) -> Option<Arc<PlanWithLimits>> {
        let plans = self.plans.lock().ok()?;
        let (at, plan) = plans.get(&id)?;
        (at.elapsed() < self.ttl).then(|| plan.clone())
    }

    /// Taken before reading plans from the database.
    pub fn plans_ticket(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Keeps plans read after `ticket`, unless the cache was emptied meanwhile (a plan changed).
    pub fn put_plans(&self, ticket: u64, read: &[Arc<PlanWithLimits>]) {
        let Ok(_writes) = self.writes.lock() else {
            return;
        };
        if self.ttl.is_zero() || self.epoch.load(Ordering::Acquire) != ticket {
            return;
        }
        let Ok(mut plans) = self.plans.lock() else {
            return;
        };
        let now = Instant::now();
        if plans.len() >= PLANS {
            let ttl = self.ttl;
            plans.retain(|_, (at, _)| at.elapsed() < ttl);
        }
        for p in read {
            if plans.len() < PLANS || plans.contains_key(&p.plan.id) {
                plans.insert(p.plan.id, (now, p.clone()));
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
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

    fn plan(name: &str) -> Arc<PlanWithLimits> {
        let now = chrono::Utc::now();
        Arc::new(PlanWithLimits {
            plan: entity::plan::Model {
                id: uuid::Uuid::new_v4(),
                code: name.into(),
                name: name.into(),
                rank: 0,
                price_monthly: 0,
                currency: "usd".into(),
                trial_days: 0,
                application_fee_pct: 0,
                active: true,
                stripe_price_id: None,
                created_at: now,
                updated_at: now,
            },
            limits: vec![],
        })
    }

    #[test]
    fn plans_are_kept_until_a_plan_changes() {
        let cache = StateCache::default();
        let basic = plan("basic");
        let id = basic.plan.id;
        assert!(cache.plan(id).is_none());
        cache.put_plans(cache.plans_ticket(), std::slice::from_ref(&basic));
        assert_eq!(cache.plan(id).unwrap().plan.name, "basic");
        // A plan changes (upsertPlan, or its notification from another replica): all are dropped.
        cache.clear();
        assert!(cache.plan(id).is_none());
        // A read that began before the change is not kept.
        let ticket = cache.plans_ticket();
        cache.clear();
        cache.put_plans(ticket, std::slice::from_ref(&basic));
        assert!(
            cache.plan(id).is_none(),
            "a read that raced a plan's change"
        );
        // An organization's change leaves the plans kept.
        cache.put_plans(cache.plans_ticket(), std::slice::from_ref(&basic));
        cache.invalidate(OrganizationId(uuid::Uuid::new_v4()));
        assert!(cache.plan(id).is_some());
        // Turned off, nothing is kept; otherwise each lives for the time to live.
        let off = StateCache::new(Duration::ZERO);
        off.put_plans(off.plans_ticket(), std::slice::from_ref(&basic));
        assert!(off.plan(id).is_none());
        let short = StateCache::new(Duration::from_millis(30));
        short.put_plans(short.plans_ticket(), std::slice::from_ref(&basic));
        assert!(short.plan(id).is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert!(short.plan(id).is_none(), "expired");
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

    #[test]
    fn the_cache_is_bounded_and_keeps_caching_past_its_bound() {
        let cache = StateCache::with_capacity(Duration::from_secs(60), 100);
        // Ten times more organizations than the bound, each invalidated (as commits do) and read.
        let ids: Vec<uuid::Uuid> = (0..1000).map(|_| uuid::Uuid::new_v4()).collect();
        for id in &ids {
            cache.invalidate(OrganizationId(*id));
            let ticket = cache.ticket(OrganizationId(*id)).unwrap();
            cache.put(ticket, summary(*id));
        }
        assert!(cache.len() <= 100, "{} entries", cache.len());
        // New organizations are still cached once the cache is full.
        let late = uuid::Uuid::new_v4();
        let ticket = cache.ticket(OrganizationId(late)).unwrap();
        cache.put(ticket, summary(late));
        assert!(cache.get(OrganizationId(late)).is_some());
    }

    #[test]
    fn an_evicted_invalidation_still_voids_older_tickets() {
        let cache = StateCache::with_capacity(Duration::from_secs(60), 2);
        let id = uuid::Uuid::new_v4();
        let org = OrganizationId(id);
        let ticket = cache.ticket(org).unwrap();
        cache.invalidate(org);
        // Enough other organizations to evict the invalidation's entry.
        for _ in 0..10 {
            cache.invalidate(OrganizationId(uuid::Uuid::new_v4()));
        }
        cache.put(ticket, summary(id));
        assert!(
            cache.get(org).is_none(),
            "a read that raced a forgotten write is not kept"
        );
    }
}
