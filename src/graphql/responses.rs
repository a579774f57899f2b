//! The response cache: the serialized answers of the usage reads that dashboards ask again and
//! again (an organization's summary, the platform's utilization pages, checkEntitlement), kept for
//! the same caller and the same request, so answering one again costs a lookup, not an execution.
//!
//! A response is kept only when every field its operation selects is in `CACHEABLE`: fields whose
//! answers come from an organization's usage state (its row, its plan and the plan's limits, its
//! counters and flags, the metric catalogue), which is exactly what the entitlement cache
//! (`domain::cache`) covers. So a kept response is valid exactly while the entitlement cache says
//! nothing it depends on was invalidated:
//! - a tenant's response depends on its organization: any commit that changes the organization
//!   (on this replica before the answer leaves, on the others when its notification arrives)
//!   voids it, as does a plan's limits changing (which clears everything);
//! - a platform member's response depends on every organization: any invalidation voids it
//!   (creating an organization invalidates it too, on the replica that created it; the others
//!   see the new organization within the time to live);
//! - it expires after the entitlement cache's time to live (`--entitlement-cache-ttl`; zero turns
//!   both off), which bounds what a write made outside the servers can hide, and when the current
//!   period ends.
//!
//! The validity ticket is taken before the request executes and the answer is kept only if nothing
//! it depends on was invalidated meanwhile, so an answer that raced a commit is never kept. Only
//! answers without errors are kept; a CUSTOMER's requests are never kept (the customer wall judges
//! each field). The key is the caller (subject, organization, role, platform membership) and the
//! request (document text, operation name, variables): nothing is shared between callers. The cache
//! is bounded in bytes (`--response-cache-bytes`; zero turns it off) and evicts (quick_cache).
//!
//! Concurrent misses of one key share one execution: the first one leads (`Flight::Lead`), and
//! the others (`Flight::Follow`) wait until it has finished, then look the key up again. When the
//! leader's answer was kept they are answered with it; when it could not be kept (a commit it
//! depends on landed meanwhile, it had errors, the leader's client went away), each follower
//! executes on its own, without waiting for one another. So a kept page's expiry costs one
//! execution, not one for each client asking at that moment, and a follower never gets an answer
//! that the cache itself would not give it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_graphql::parser::types::{
    BaseType, ExecutableDocument, OperationType, Selection, SelectionSet,
};
use async_graphql::{Positioned, Variables};
use axum::body::Bytes;

use super::completion::OutputTypes;
use crate::domain::cache::{StateCache, Ticket};
use crate::domain::{OrganizationId, Period, Role, Viewer};

/// The fields whose answers derive only from what the entitlement cache's invalidations cover,
/// by parent type. `__typename` is allowed everywhere. Anything else (money, memberships, history,
/// events, Stripe state, the viewer) makes a request uncacheable.
const CACHEABLE: &[(&str, &[&str])] = &[
    (
        "Query",
        &["organization", "usageSummaries", "checkEntitlement"],
    ),
    ("Organization", &["id", "name", "slug", "plan", "usage"]),
    (
        "UsageSummary",
        &[
            "organization",
            "plan",
            "periodStart",
            "periodEnd",
            "metrics",
            "metric",
            "hasExceededLimits",
            "exceededLimitsDetails",
            "updatedAt",
        ],
    ),
    (
        "MetricUsage",
        &[
            "metric",
            "used",
            "included",
            "credits",
            "allowance",
            "remaining",
            "utilizationPct",
            "exceeded",
            "exceededBy",
            "enforcement",
            "overageQuantity",
            "overageAmount",
        ],
    ),
    ("Metric", &["code", "name", "kind", "unit"]),
    // Plans change only through upsertPlan, which clears the entitlement cache on every replica.
    (
        "Plan",
        &[
            "id",
            "code",
            "name",
            "rank",
            "priceMonthly",
            "currency",
            "trialDays",
            "applicationFeePct",
            "active",
            "stripePriceId",
            "limits",
        ],
    ),
    (
        "PlanLimit",
        &["metric", "included", "enforcement", "overageUnitPrice"],
    ),
    (
        "UsageSummaryConnection",
        &["nodes", "edges", "pageInfo", "totalCount"],
    ),
    ("UsageSummaryEdge", &["cursor", "node"]),
    (
        "PageInfo",
        &["hasNextPage", "hasPreviousPage", "startCursor", "endCursor"],
    ),
    (
        "EntitlementCheck",
        &[
            "metric",
            "used",
            "allowance",
            "remaining",
            "allowed",
            "wouldExceed",
            "overageQuantity",
            "overageAmount",
            "reason",
        ],
    ),
];

/// Deeper selections are not judged (they fail the depth limit anyway).
const MAX_DEPTH: usize = 32;

fn cacheable_field(parent: &str, name: &str) -> bool {
    CACHEABLE
        .iter()
        .any(|(t, fields)| *t == parent && fields.contains(&name))
}

/// Whether the operation `operation_name` of `doc` selects only cacheable fields (with no
/// directive but @include and @skip), and at least one besides `__typename` (an empty query is
/// answered faster than it is looked up).
pub fn cacheable(
    doc: &ExecutableDocument,
    operation_name: Option<&str>,
    types: &OutputTypes,
) -> bool {
    let Some(op) = super::operation(doc, operation_name) else {
        return false;
    };
    let op = &op.node;
    let mut reads = 0;
    op.ty == OperationType::Query
        && op.directives.is_empty()
        && selection_cacheable(doc, types, "Query", &op.selection_set, 0, &mut reads)
        && reads > 0
}

fn directives_allowed(directives: &[Positioned<async_graphql::parser::types::Directive>]) -> bool {
    directives
        .iter()
        .all(|d| matches!(d.node.name.node.as_str(), "include" | "skip"))
}

fn selection_cacheable(
    doc: &ExecutableDocument,
    types: &OutputTypes,
    parent: &str,
    set: &Positioned<SelectionSet>,
    depth: usize,
    reads: &mut usize,
) -> bool {
    if depth > MAX_DEPTH {
        return false;
    }
    set.node.items.iter().all(|item| match &item.node {
        Selection::Field(f) => {
            let f = &f.node;
            let name = f.name.node.as_str();
            if !directives_allowed(&f.directives) {
                return false;
            }
            if name == "__typename" {
                return true;
            }
            if !cacheable_field(parent, name) {
                return false;
            }
            *reads += 1;
            let Some(ty) = types.field_type(parent, name) else {
                return false;
            };
            let mut base = &ty.base;
            while let BaseType::List(inner) = base {
                base = &inner.base;
            }
            let BaseType::Named(named) = base else {
                return false;
            };
            if types.has_fields(named) {
                selection_cacheable(doc, types, named, &f.selection_set, depth + 1, reads)
            } else {
                f.selection_set.node.items.is_empty()
            }
        }
        Selection::FragmentSpread(s) => {
            let Some(frag) = doc.fragments.get(&s.node.fragment_name.node) else {
                return false;
            };
            directives_allowed(&s.node.directives)
                && directives_allowed(&frag.node.directives)
                && frag.node.type_condition.node.on.node.as_str() == parent
                && selection_cacheable(
                    doc,
                    types,
                    parent,
                    &frag.node.selection_set,
                    depth + 1,
                    reads,
                )
        }
        Selection::InlineFragment(i) => {
            directives_allowed(&i.node.directives)
                && i.node
                    .type_condition
                    .as_ref()
                    .is_none_or(|c| c.node.on.node.as_str() == parent)
                && selection_cacheable(doc, types, parent, &i.node.selection_set, depth + 1, reads)
        }
    })
}

/// Who asks and what: responses are never shared between two callers or two requests.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key {
    sub: String,
    org: Option<OrganizationId>,
    role: Option<Role>,
    platform: bool,
    query: String,
    operation_name: Option<String>,
    variables: String,
}

impl Key {
    /// The key of a request by `viewer`, or None when it cannot be kept (a customer's, one with
    /// extensions such as a persisted-query hash).
    pub fn new(viewer: &Viewer, request: &async_graphql::Request) -> Option<Key> {
        if viewer.is_customer() || !request.extensions.is_empty() {
            return None;
        }
        Some(Key {
            sub: viewer.sub.clone(),
            org: viewer.org_id,
            role: viewer.role,
            platform: viewer.platform,
            query: request.query.clone(),
            operation_name: request.operation_name.clone(),
            variables: variables_text(&request.variables)?,
        })
    }

    /// What the response depends on: the caller's organization, or every organization.
    fn depends(&self) -> Option<OrganizationId> {
        if self.platform { None } else { self.org }
    }

    fn weight(&self) -> u64 {
        (self.sub.len() + self.query.len() + self.variables.len() + 64) as u64
    }
}

fn variables_text(v: &Variables) -> Option<String> {
    serde_json::to_string(v).ok()
}

struct Kept {
    ticket: Ticket,
    at: Instant,
    period: Period,
    body: Bytes,
}

#[derive(Clone)]
struct Weight;

impl quick_cache::Weighter<Key, Arc<Kept>> for Weight {
    fn weight(&self, key: &Key, val: &Arc<Kept>) -> u64 {
        key.weight() + val.body.len() as u64
    }
}

/// The executions under way whose answers may be kept, by key: each wakes its followers when
/// it ends (its sender is dropped), whether or not its answer was kept.
type Flights = Arc<Mutex<HashMap<Key, tokio::sync::watch::Receiver<()>>>>;

pub struct ResponseCache {
    entries: Option<quick_cache::sync::Cache<Key, Arc<Kept>, Weight>>,
    flights: Flights,
    ttl: Duration,
    /// Answers served from the cache by this instance (the process-wide metric counts every
    /// instance's, which tests running several servers in one process cannot tell apart).
    hits: std::sync::atomic::AtomicU64,
}

/// A request that may be kept: its key, and what the entitlement cache said before it executed.
/// A leader's also holds its flight, which ends (waking the followers) when the answer has been
/// kept or refused, or when the request is dropped unanswered.
pub struct Pending {
    key: Key,
    ticket: Ticket,
    period: Period,
    _lead: Option<Lead>,
}

/// A leader's flight: dropping it removes it, then wakes the followers.
struct Lead {
    flights: Flights,
    key: Key,
    _done: tokio::sync::watch::Sender<()>,
}

impl Drop for Lead {
    fn drop(&mut self) {
        // Removed before `_done` is dropped (fields drop after this), so a request that finds no
        // flight finds the kept answer, or leads a new flight.
        self.flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

/// How a request that missed the cache executes.
pub enum Flight {
    /// No other request with its key is executing: it executes, and others wait for it.
    Lead(Pending),
    /// Another request with its key is executing: wait for it (`Follower::wait`).
    Follow(Follower),
    /// The cache is off.
    Off,
}

/// A request waiting for the execution of another with the same key.
pub struct Follower {
    key: Key,
    done: tokio::sync::watch::Receiver<()>,
}

impl Follower {
    /// Waits until the leader's execution has ended (kept, refused or dropped); then the key is
    /// looked up again (`ResponseCache::get`), and on a miss the request executes on its own
    /// (`ResponseCache::pending_alone`).
    pub async fn wait(mut self) -> Key {
        // The leader never sends: its sender is dropped when its flight ends, which ends this.
        while self.done.changed().await.is_ok() {}
        self.key
    }
}

impl ResponseCache {
    /// At most `bytes` of keys and answers, each trusted for `ttl` (zero for either: nothing kept).
    pub fn new(bytes: u64, ttl: Duration) -> Self {
        let entries = (bytes > 0 && !ttl.is_zero()).then(|| {
            // About 4 KiB an answer, for quick_cache's sizing of its shards.
            let items = (bytes / 4096).clamp(16, 1 << 20) as usize;
            quick_cache::sync::Cache::with_weighter(items, bytes, Weight)
        });
        ResponseCache {
            entries,
            flights: Flights::default(),
            ttl,
            hits: Default::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.entries.is_some()
    }

    /// How many answers this cache has served.
    pub fn hits(&self) -> u64 {
        self.hits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The kept answer to `key`, if nothing it depends on changed since it was computed.
    pub fn get(&self, key: &Key, state: &StateCache) -> Option<Bytes> {
        let entries = self.entries.as_ref()?;
        let kept = entries.get(key)?;
        if kept.at.elapsed() < self.ttl
            && kept.period == Period::current()
            && state.unchanged_since(kept.ticket, key.depends())
        {
            self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Some(kept.body.clone())
        } else {
            entries.remove(key);
            None
        }
    }

    /// Called on a miss, before executing a request that may be kept: it leads the execution of
    /// its key, or follows the one already under way.
    pub fn join(&self, key: Key, state: &StateCache) -> Flight {
        if self.entries.is_none() {
            return Flight::Off;
        }
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(done) = flights.get(&key) {
            return Flight::Follow(Follower {
                done: done.clone(),
                key,
            });
        }
        // The ticket is taken with the flight registered, so every follower arrived after it.
        let Some(mut pending) = self.pending_alone(key, state) else {
            return Flight::Off;
        };
        let (done, waiting) = tokio::sync::watch::channel(());
        flights.insert(pending.key.clone(), waiting);
        pending._lead = Some(Lead {
            flights: self.flights.clone(),
            key: pending.key.clone(),
            _done: done,
        });
        Flight::Lead(pending)
    }

    /// Taken before executing a request that may be kept, without leading a flight (a follower
    /// whose leader's answer was not kept).
    pub fn pending_alone(&self, key: Key, state: &StateCache) -> Option<Pending> {
        self.entries.as_ref()?;
        let ticket = state.ticket(key.depends().unwrap_or(OrganizationId(uuid::Uuid::nil())))?;
        Some(Pending {
            key,
            ticket,
            period: Period::current(),
            _lead: None,
        })
    }

    /// Keeps an answer computed after `pending`, unless something it depends on changed meanwhile.
    pub fn put(&self, pending: Pending, body: Bytes, state: &StateCache) {
        let Some(entries) = self.entries.as_ref() else {
            return;
        };
        if pending.period != Period::current()
            || !state.unchanged_since(pending.ticket, pending.key.depends())
        {
            return;
        }
        entries.insert(
            pending.key,
            Arc::new(Kept {
                ticket: pending.ticket,
                at: Instant::now(),
                period: pending.period,
                body,
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types() -> OutputTypes {
        OutputTypes::from_sdl(include_str!("../../schema.graphql")).expect("schema.graphql parses")
    }

    fn judge(query: &str, operation: Option<&str>) -> bool {
        let doc = async_graphql::parser::parse_query(query).expect("parses");
        cacheable(&doc, operation, &types())
    }

    #[test]
    fn only_usage_reads_are_kept() {
        for q in [
            "{ organization { usage { metrics { metric { code } used } } } }",
            "query P { usageSummaries(first: 50, metric: \"bookings\") { totalCount nodes { organization { id name } plan { name limits { included } } metrics { utilizationPct } } pageInfo { endCursor } } }",
            "{ checkEntitlement(metric: \"bookings\") { allowed remaining } __typename }",
            "query($s: Boolean!) { organization { name @skip(if: $s) ...U } } fragment U on Organization { usage { hasExceededLimits } }",
            "{ organization { ... on Organization { slug } ... { id } } }",
        ] {
            assert!(judge(q, None), "{q}");
        }
        for q in [
            "{ __typename }",
            "mutation { recordUsage(input: {metric: \"bookings\"}) { accepted } }",
            "subscription { usageUpdated { updatedAt } }",
            "{ viewer { sub } }",
            "{ organization { status } }",
            "{ organization { usageEvents(first: 1) { nodes { quantity } } } }",
            "{ organization { usage { metrics { used } } } revenue: platformRevenue { total } }",
            "{ organization { ...F } } fragment F on Organization { payments { totalCount } }",
            "{ organization { name @deprecated } }",
            "{ __schema { types { name } } }",
            "{ organization { ...Missing } }",
        ] {
            assert!(!judge(q, None), "{q}");
        }
        // The operation the request names is the one judged.
        let two = "query A { organization { name } } query B { viewer { sub } }";
        assert!(judge(two, Some("A")));
        assert!(!judge(two, Some("B")));
        assert!(!judge(two, None), "no operation to run");
    }

    fn viewer(org: Option<OrganizationId>, platform: bool) -> Viewer {
        Viewer {
            sub: "someone".into(),
            org_id: org,
            role: Some(Role::Viewer),
            platform,
        }
    }

    fn key(v: &Viewer, query: &str) -> Key {
        Key::new(v, &async_graphql::Request::new(query)).expect("a key")
    }

    #[test]
    fn kept_answers_last_until_what_they_depend_on_changes() {
        let state = StateCache::default();
        let cache = ResponseCache::new(1 << 20, Duration::from_secs(60));
        let (a, b) = (
            OrganizationId(uuid::Uuid::new_v4()),
            OrganizationId(uuid::Uuid::new_v4()),
        );
        let tenant = key(&viewer(Some(a), false), "{ organization { name } }");
        let platform = key(&viewer(None, true), "{ organization { name } }");
        let keep = |k: &Key| {
            let p = cache.pending_alone(k.clone(), &state).unwrap();
            cache.put(p, Bytes::from_static(b"{}"), &state);
        };
        keep(&tenant);
        keep(&platform);
        assert!(cache.get(&tenant, &state).is_some());
        assert!(cache.get(&platform, &state).is_some());
        // Another organization changes: the tenant's answer stands, the platform's does not.
        state.invalidate(b);
        assert!(cache.get(&tenant, &state).is_some());
        assert!(cache.get(&platform, &state).is_none());
        // Its own organization changes.
        state.invalidate(a);
        assert!(cache.get(&tenant, &state).is_none());
        // A plan changes (everything is cleared).
        keep(&tenant);
        state.clear();
        assert!(cache.get(&tenant, &state).is_none());
        // An answer computed while its organization changed is not kept.
        let p = cache.pending_alone(tenant.clone(), &state).unwrap();
        state.invalidate(a);
        cache.put(p, Bytes::from_static(b"{}"), &state);
        assert!(cache.get(&tenant, &state).is_none());
        // Another caller (another subject, role or organization) never gets it.
        keep(&tenant);
        let mut other = viewer(Some(a), false);
        other.sub = "someone else".into();
        assert!(
            cache
                .get(&key(&other, "{ organization { name } }"), &state)
                .is_none()
        );
        other = viewer(Some(a), false);
        other.role = Some(Role::Service);
        assert!(
            cache
                .get(&key(&other, "{ organization { name } }"), &state)
                .is_none()
        );
        // A customer's requests have no key.
        other.role = Some(Role::Customer);
        assert!(
            Key::new(
                &other,
                &async_graphql::Request::new("{ organization { name } }")
            )
            .is_none()
        );
    }

    fn lead(cache: &ResponseCache, k: &Key, state: &StateCache) -> Pending {
        match cache.join(k.clone(), state) {
            Flight::Lead(p) => p,
            _ => panic!("expected to lead"),
        }
    }

    fn follow(cache: &ResponseCache, k: &Key, state: &StateCache) -> Follower {
        match cache.join(k.clone(), state) {
            Flight::Follow(f) => f,
            _ => panic!("expected to follow"),
        }
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_execution_only_when_its_answer_is_kept() {
        let state = StateCache::default();
        let cache = ResponseCache::new(1 << 20, Duration::from_secs(60));
        let a = OrganizationId(uuid::Uuid::new_v4());
        let k = key(&viewer(Some(a), false), "{ organization { name } }");
        let other = key(&viewer(Some(a), false), "{ organization { slug } }");

        // Kept: the followers, woken, find the leader's answer.
        let leader = lead(&cache, &k, &state);
        let followers = [follow(&cache, &k, &state), follow(&cache, &k, &state)];
        let _another_key_leads = lead(&cache, &other, &state);
        cache.put(leader, Bytes::from_static(b"kept"), &state);
        for f in followers {
            let k = f.wait().await;
            assert_eq!(cache.get(&k, &state).as_deref(), Some(&b"kept"[..]));
        }

        // Refused (its organization changed while it executed): each follower is woken, misses,
        // and executes on its own; the next miss leads again.
        state.invalidate(a);
        assert!(cache.get(&k, &state).is_none());
        let leader = lead(&cache, &k, &state);
        let follower = follow(&cache, &k, &state);
        state.invalidate(a);
        cache.put(leader, Bytes::from_static(b"stale"), &state);
        let k2 = follower.wait().await;
        assert!(
            cache.get(&k2, &state).is_none(),
            "a refused answer is not shared"
        );
        let alone = cache
            .pending_alone(k2, &state)
            .expect("executes on its own");
        cache.put(alone, Bytes::from_static(b"fresh"), &state);
        assert_eq!(cache.get(&k, &state).as_deref(), Some(&b"fresh"[..]));

        // A leader dropped unanswered (its client went away) wakes its followers too.
        state.invalidate(a);
        let leader = lead(&cache, &k, &state);
        let follower = follow(&cache, &k, &state);
        drop(leader);
        let k3 = tokio::time::timeout(Duration::from_secs(5), follower.wait())
            .await
            .expect("woken");
        assert!(cache.get(&k3, &state).is_none());
        drop(lead(&cache, &k3, &state));

        // With the cache off, nobody waits.
        let off = ResponseCache::new(0, Duration::from_secs(1));
        assert!(matches!(off.join(k3, &state), Flight::Off));
    }

    #[test]
    fn kept_answers_expire_and_a_zero_setting_turns_the_cache_off() {
        let state = StateCache::default();
        let k = key(&viewer(None, true), "{ organization { name } }");
        let short = ResponseCache::new(1 << 20, Duration::from_millis(30));
        let p = short.pending_alone(k.clone(), &state).unwrap();
        short.put(p, Bytes::from_static(b"{}"), &state);
        assert!(short.get(&k, &state).is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert!(short.get(&k, &state).is_none(), "expired");
        for off in [
            ResponseCache::new(0, Duration::from_secs(1)),
            ResponseCache::new(1 << 20, Duration::ZERO),
        ] {
            assert!(!off.enabled());
            assert!(off.pending_alone(k.clone(), &state).is_none());
        }
    }
}
