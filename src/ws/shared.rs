//! Identical subscriptions execute once. A subscription's results depend on its document, its
//! variables and the caller's audience (platform team, organization, role), never on which
//! connection asked; so every subscription with the same key joins one running execution, and each
//! result is resolved and serialized once, then handed to every member as the same `Arc<Item>`.
//! A member costs a broadcast receiver; the execution (the parsed request, its context and loaders,
//! the executor's state and its bus receiver) is paid once per key.
//!
//! Joining is decided under the hub's lock, and an execution leaves the hub under the same lock
//! before it announces its end, so a member either joins a live execution or starts a new one.
//! Members of an execution that was refused at its start (a parse, validation or authorization
//! error) all receive the refusal, as each would have alone: they share the audience it was judged
//! for. A subscription whose results depend on when it started (`since` replays stored alerts)
//! never shares.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use async_graphql::parser::types::ExecutableDocument;
use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt};
use tokio::sync::{Notify, broadcast};

use crate::domain::{OrganizationId, Role, Viewer};
use crate::graphql::subscription::StreamNotes;

/// An operation's responses, as the executor produces them.
pub type Responses = Pin<Box<dyn Stream<Item = async_graphql::Response> + Send>>;

/// Results a member may fall behind by before it is told it missed some.
const BACKLOG: usize = 256;

/// One result of an operation, serialized once for every subscriber that receives it.
#[derive(Debug)]
pub enum Item {
    /// A result: the serialized response, and when the alert it carries was raised (if it does).
    Result {
        payload: String,
        alert_at: Option<DateTime<Utc>>,
    },
    /// Refused before it started (parse, validation, authorization): the errors as a list, and the
    /// first alone (the legacy protocol's shape). Nothing follows it.
    Refused { errors: String, first: String },
    /// The operation ended.
    End,
}

impl Item {
    /// A response as an item; `first` says whether it is the operation's first, which is a refusal
    /// when it carries errors and no data.
    pub fn from_response(
        resp: async_graphql::Response,
        first: bool,
        alert_at: Option<DateTime<Utc>>,
    ) -> Item {
        let json = |r: Result<String, serde_json::Error>, fallback: &str| {
            r.unwrap_or_else(|_| fallback.to_owned())
        };
        // A lag notice is a stream signal, even before the first alert: never a refusal. Nor is
        // the server's own failure (a round whose database read failed): the subscriber hears it
        // as a result, and the stream goes on.
        let signal = |e: &async_graphql::ServerError| {
            e.extensions
                .as_ref()
                .and_then(|x| x.get("code"))
                .is_some_and(|c| {
                    *c == async_graphql::Value::from("LAGGED")
                        || *c == async_graphql::Value::from("INTERNAL")
                })
        };
        if first
            && resp.data == async_graphql::Value::Null
            && resp.is_err()
            && !resp.errors.iter().any(signal)
        {
            Item::Refused {
                errors: json(serde_json::to_string(&resp.errors), "[]"),
                first: json(serde_json::to_string(&resp.errors.first()), "null"),
            }
        } else {
            Item::Result {
                payload: json(serde_json::to_string(&resp), "{\"data\":null}"),
                alert_at,
            }
        }
    }

    /// The notice for a member that fell behind its execution by `missed` results.
    pub fn lagged(missed: u64, since: Option<DateTime<Utc>>) -> Item {
        Item::from_response(lag_response(missed, since), false, None)
    }
}

/// The response that tells a subscriber it fell behind.
fn lag_response(missed: u64, since: Option<DateTime<Utc>>) -> async_graphql::Response {
    let e = crate::graphql::subscription::lagged(missed, since);
    let mut err = async_graphql::ServerError::new(e.message, None);
    err.extensions = e.extensions;
    async_graphql::Response::from_errors(vec![err])
}

/// What makes two subscriptions the same.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    query: String,
    operation: Option<String>,
    variables: String,
    platform: bool,
    org: Option<OrganizationId>,
    role: Option<Role>,
}

impl Key {
    /// The key of a request that may share its execution, or None when it must run alone: only a
    /// subscription shares (a query or mutation sent over the socket runs for its caller alone,
    /// and may depend on who the caller is), and not one that replays stored alerts (its results
    /// depend on when it started) or carries protocol extensions. A document that does not parse,
    /// or whose operation cannot be chosen, runs alone and the executor reports why. `doc` is the
    /// request's parsed document (None when it does not parse).
    pub fn of(
        doc: Option<&ExecutableDocument>,
        request: &async_graphql::Request,
        viewer: &Viewer,
    ) -> Option<Key> {
        use async_graphql::parser::types::OperationType;

        if !request.extensions.is_empty() {
            return None;
        }
        let doc = doc?;
        let op = crate::graphql::operation(doc, request.operation_name.as_deref())?;
        if op.node.ty != OperationType::Subscription || replays(doc, request) {
            return None;
        }
        // A customer's results depend on who it is (only its own memberships): it runs alone.
        if viewer.is_customer() {
            return None;
        }
        Some(Key {
            query: request.query.clone(),
            operation: request.operation_name.clone(),
            variables: serde_json::to_string(&request.variables).ok()?,
            platform: viewer.platform,
            org: viewer.org_id,
            role: viewer.role,
        })
    }
}

/// Whether a request gives a `since` argument anywhere (a literal, or a variable that is set or has
/// a default), so that it replays what was stored before it started.
fn replays(doc: &ExecutableDocument, request: &async_graphql::Request) -> bool {
    use async_graphql::parser::types::{Selection, SelectionSet};
    use async_graphql_value::{ConstValue, Value};

    // No argument can be named `since` in a text without the word.
    if !request.query.contains("since") {
        return false;
    }
    let defaulted = |name: &str| {
        doc.operations.iter().any(|(_, op)| {
            op.node.variable_definitions.iter().any(|d| {
                d.node.name.node.as_str() == name
                    && d.node
                        .default_value
                        .as_ref()
                        .is_some_and(|v| v.node != ConstValue::Null)
            })
        })
    };
    let given = |v: &Value| match v {
        Value::Null => false,
        Value::Variable(name) => match request.variables.get(name) {
            Some(value) => *value != ConstValue::Null,
            None => defaulted(name.as_str()),
        },
        _ => true,
    };
    fn any_since(set: &SelectionSet, given: &dyn Fn(&Value) -> bool) -> bool {
        set.items.iter().any(|s| match &s.node {
            Selection::Field(f) => {
                f.node
                    .arguments
                    .iter()
                    .any(|(name, value)| name.node.as_str() == "since" && given(&value.node))
                    || any_since(&f.node.selection_set.node, given)
            }
            Selection::InlineFragment(i) => any_since(&i.node.selection_set.node, given),
            // Fragment definitions are searched on their own below.
            Selection::FragmentSpread(_) => false,
        })
    }
    doc.operations
        .iter()
        .any(|(_, op)| any_since(&op.node.selection_set.node, &given))
        || doc
            .fragments
            .values()
            .any(|f| any_since(&f.node.selection_set.node, &given))
}

/// The running shared executions.
#[derive(Default)]
pub struct Hub {
    groups: Mutex<HashMap<Key, Arc<Group>>>,
}

struct Group {
    tx: broadcast::Sender<Arc<Item>>,
    members: AtomicUsize,
    /// Woken when the last member leaves.
    left: Notify,
    latest_wins: AtomicBool,
}

/// A subscriber's place in a shared execution; leaving is dropping it.
pub struct Member {
    rx: broadcast::Receiver<Arc<Item>>,
    group: Arc<Group>,
    last_alert_at: Option<DateTime<Utc>>,
}

impl Drop for Member {
    fn drop(&mut self) {
        if self.group.members.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.group.left.notify_one();
        }
    }
}

impl Member {
    /// The member's results, ending after `End` or a refusal. One that fell behind is told how
    /// much it missed (`LAGGED`, with the `since` to catch up from), unless each result supersedes
    /// the ones before it.
    pub fn items(self) -> impl Stream<Item = Arc<Item>> + Send {
        futures_util::stream::unfold(Some(self), |member| async move {
            let mut member = member?;
            loop {
                match member.rx.recv().await {
                    Ok(item) => {
                        let last = match &*item {
                            Item::Result { alert_at, .. } => {
                                if alert_at.is_some() {
                                    member.last_alert_at = *alert_at;
                                }
                                false
                            }
                            Item::Refused { .. } | Item::End => true,
                        };
                        return Some((item, (!last).then_some(member)));
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        if member.group.latest_wins.load(Ordering::Acquire) {
                            continue;
                        }
                        let notice = Arc::new(Item::lagged(missed, member.last_alert_at));
                        return Some((notice, Some(member)));
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        return Some((Arc::new(Item::End), None));
                    }
                }
            }
        })
    }
}

impl Hub {
    /// How many shared executions are running.
    pub fn executions(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<Group>>> {
        self.groups.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Joins the running execution with this key, or starts one: `start` gets the notes to put in
    /// the request's data and returns the execution's responses.
    pub fn join(
        self: &Arc<Self>,
        key: Key,
        start: impl FnOnce(Arc<StreamNotes>) -> Responses,
    ) -> Member {
        let mut groups = self.lock();
        if let Some(group) = groups.get(&key) {
            group.members.fetch_add(1, Ordering::AcqRel);
            return Member {
                rx: group.tx.subscribe(),
                group: group.clone(),
                last_alert_at: None,
            };
        }
        let (tx, rx) = broadcast::channel(BACKLOG);
        let group = Arc::new(Group {
            tx,
            members: AtomicUsize::new(1),
            left: Notify::new(),
            latest_wins: AtomicBool::new(false),
        });
        groups.insert(key.clone(), group.clone());
        drop(groups);
        let notes = Arc::new(StreamNotes::default());
        let responses = start(notes.clone());
        tokio::spawn(self.clone().run(key, group.clone(), responses, notes));
        Member {
            rx,
            group,
            last_alert_at: None,
        }
    }

    /// Drives one execution until it ends or its last member leaves.
    async fn run(
        self: Arc<Self>,
        key: Key,
        group: Arc<Group>,
        mut responses: Responses,
        notes: Arc<StreamNotes>,
    ) {
        // If the execution panics (or the runtime drops it), it still leaves the hub and its members
        // are told it ended, instead of later subscribers joining a dead execution.
        let mut guard = Ended {
            hub: &self,
            key: &key,
            group: &group,
            armed: true,
        };
        let mut first = true;
        loop {
            tokio::select! {
                resp = responses.next() => {
                    let Some(resp) = resp else {
                        // The guard retires the execution and tells its members it ended.
                        return;
                    };
                    group.latest_wins.store(notes.latest_wins(), Ordering::Release);
                    let item = Item::from_response(resp, first, notes.take_alert_at());
                    first = false;
                    let refused = matches!(item, Item::Refused { .. });
                    if refused {
                        self.retire(&key, &group, false);
                    }
                    let _ = group.tx.send(Arc::new(item));
                    if refused {
                        guard.armed = false;
                        return;
                    }
                }
                _ = group.left.notified() => {
                    if self.retire(&key, &group, true) {
                        // Nobody is left to tell.
                        guard.armed = false;
                        return;
                    }
                }
            }
        }
    }

    /// Takes the execution out of the hub (when `only_if_empty`, only if nobody is in it); whether
    /// it did. No member can join it afterwards.
    fn retire(&self, key: &Key, group: &Arc<Group>, only_if_empty: bool) -> bool {
        let mut groups = self.lock();
        if only_if_empty && group.members.load(Ordering::Acquire) > 0 {
            return false;
        }
        if groups.get(key).is_some_and(|g| Arc::ptr_eq(g, group)) {
            groups.remove(key);
        }
        true
    }
}

/// Ends an execution when `run` stops for any reason but a refusal or an empty group: out of the
/// hub, and `End` to its members.
struct Ended<'a> {
    hub: &'a Hub,
    key: &'a Key,
    group: &'a Arc<Group>,
    armed: bool,
}

impl Drop for Ended<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.hub.retire(self.key, self.group, false);
            let _ = self.group.tx.send(Arc::new(Item::End));
        }
    }
}

/// A stream polled inside a tracing span (each result of an operation is produced in its span).
pub struct InSpan {
    pub inner: Responses,
    pub span: tracing::Span,
}

impl Stream for InSpan {
    type Item = async_graphql::Response;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let _entered = this.span.enter();
        this.inner.poll_next_unpin(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use serde_json::Value;
    use tokio::sync::mpsc;

    use super::*;

    fn key(query: &str) -> Key {
        Key {
            query: query.into(),
            operation: None,
            variables: "{}".into(),
            platform: true,
            org: None,
            role: None,
        }
    }

    fn result(n: i32) -> async_graphql::Response {
        async_graphql::Response::new(async_graphql::Value::from(n))
    }

    fn payload(item: &Item) -> Value {
        match item {
            Item::Result { payload, .. } => serde_json::from_str(payload).unwrap(),
            other => panic!("expected a result, got {other:?}"),
        }
    }

    /// A hub with one execution fed by hand; the number of times it was started.
    fn started(
        hub: &Arc<Hub>,
        latest_wins: bool,
        starts: &Arc<AtomicUsize>,
    ) -> (Member, mpsc::UnboundedSender<async_graphql::Response>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let starts = starts.clone();
        let member = hub.join(key("subscription { s }"), move |notes| {
            starts.fetch_add(1, Ordering::SeqCst);
            if latest_wins {
                notes.set_latest_wins();
            }
            Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|r| (r, rx))
            }))
        });
        (member, tx)
    }

    async fn until(what: impl Fn() -> bool) {
        for _ in 0..200 {
            if what() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!("timed out");
    }

    #[tokio::test]
    async fn members_share_one_execution_and_a_slow_one_is_told_what_it_missed() {
        for latest_wins in [false, true] {
            let hub = Arc::new(Hub::default());
            let starts = Arc::new(AtomicUsize::new(0));
            let (fast, tx) = started(&hub, latest_wins, &starts);
            let slow = hub.join(key("subscription { s }"), |_| unreachable!("it is running"));
            assert_eq!(hub.executions(), 1);
            let mut fast = Box::pin(fast.items());
            let mut slow = Box::pin(slow.items());
            // The fast member reads each result as it comes; the slow one reads nothing meanwhile.
            for n in 0..300 {
                tx.send(result(n)).unwrap();
                assert_eq!(payload(&fast.next().await.unwrap())["data"], n);
            }
            let first = slow.next().await.unwrap();
            if latest_wins {
                // Later results supersede the missed ones: it just goes on with what is left.
                assert_eq!(payload(&first)["data"], 300 - BACKLOG as i32);
            } else {
                let p = payload(&first);
                assert_eq!(p["errors"][0]["extensions"]["code"], "LAGGED", "{p}");
                assert_eq!(p["errors"][0]["extensions"]["missed"], 300 - BACKLOG);
                assert_eq!(
                    payload(&slow.next().await.unwrap())["data"],
                    300 - BACKLOG as i32
                );
            }
            assert_eq!(starts.load(Ordering::SeqCst), 1);
        }
    }

    #[tokio::test]
    async fn the_last_member_leaving_ends_the_execution() {
        let hub = Arc::new(Hub::default());
        let starts = Arc::new(AtomicUsize::new(0));
        let (a, tx) = started(&hub, false, &starts);
        let b = hub.join(key("subscription { s }"), |_| unreachable!("it is running"));
        let other = hub.join(key("subscription { t }"), |_| {
            Box::pin(futures_util::stream::pending())
        });
        assert_eq!(hub.executions(), 2);
        drop(a);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!tx.is_closed(), "one member is left");
        drop(b);
        until(|| tx.is_closed()).await;
        assert_eq!(hub.executions(), 1, "the other execution runs on");
        // The next subscriber with that key starts afresh.
        let (_c, _tx) = started(&hub, false, &starts);
        assert_eq!(starts.load(Ordering::SeqCst), 2);
        drop(other);
    }

    #[tokio::test]
    async fn every_member_gets_the_refusal_and_the_end() {
        let hub = Arc::new(Hub::default());
        let starts = Arc::new(AtomicUsize::new(0));
        let (a, tx) = started(&hub, false, &starts);
        let b = hub.join(key("subscription { s }"), |_| unreachable!("it is running"));
        let refusal = async_graphql::Response::from_errors(vec![async_graphql::ServerError::new(
            "no such organization",
            None,
        )]);
        tx.send(refusal).unwrap();
        for member in [a, b] {
            let items: Vec<_> = member.items().collect().await;
            assert_eq!(items.len(), 1);
            assert!(
                matches!(&*items[0], Item::Refused { errors, .. } if errors.contains("no such"))
            );
        }
        until(|| hub.executions() == 0).await;

        // An execution that ends tells every member, and leaves the hub first.
        let (a, tx) = started(&hub, false, &starts);
        tx.send(result(1)).unwrap();
        drop(tx);
        let items: Vec<_> = a.items().collect().await;
        assert_eq!(items.len(), 2);
        assert!(matches!(*items[1], Item::End));
        assert_eq!(hub.executions(), 0);
    }

    #[tokio::test]
    async fn a_panicking_execution_still_ends_for_its_members() {
        let hub = Arc::new(Hub::default());
        let member = hub.join(key("subscription { s }"), |_| {
            Box::pin(futures_util::stream::poll_fn(
                |_| -> Poll<Option<async_graphql::Response>> { panic!("a resolver panicked") },
            ))
        });
        let items: Vec<_> = member.items().collect().await;
        assert!(matches!(items.as_slice(), [end] if matches!(**end, Item::End)));
        until(|| hub.executions() == 0).await;
    }

    #[test]
    fn a_lag_notice_first_is_not_a_refusal() {
        let notice = Item::lagged(3, None);
        assert!(matches!(notice, Item::Result { .. }));
        let first = Item::from_response(lag_response(3, None), true, None);
        assert!(matches!(first, Item::Result { .. }), "{first:?}");
    }

    #[test]
    fn only_subscriptions_share() {
        let viewer = Viewer {
            sub: "u".into(),
            org_id: None,
            role: None,
            platform: true,
        };
        let key = |query: &str, name: Option<&str>| {
            let mut request = async_graphql::Request::new(query);
            request.operation_name = name.map(str::to_owned);
            let doc = async_graphql::parser::parse_query(query).ok();
            Key::of(doc.as_ref(), &request, &viewer)
        };
        assert!(key("subscription { usageAlerts { id } }", None).is_some());
        assert!(key("subscription S { usageAlerts { id } }", None).is_some());
        // Queries and mutations over the socket run for their caller alone.
        assert!(key("{ viewer { userId } }", None).is_none());
        assert!(
            key(
                "mutation { recordUsage(input: {metric: \"b\", quantity: \"1\"}) { accepted } }",
                None
            )
            .is_none()
        );
        let two = "query Q { viewer { userId } } subscription S { usageAlerts { id } }";
        assert!(key(two, Some("S")).is_some());
        assert!(key(two, Some("Q")).is_none());
        assert!(key(two, None).is_none(), "no operation chosen");
        assert!(
            key(
                "subscription { usageAlerts(since: \"2026-01-01T00:00:00Z\") { id } }",
                None
            )
            .is_none()
        );
        assert!(key("subscription {", None).is_none());
    }

    #[test]
    fn only_subscriptions_that_replay_run_alone() {
        let replay = |query: &str, variables: Value| {
            let request = async_graphql::Request::new(query)
                .variables(async_graphql::Variables::from_json(variables));
            match async_graphql::parser::parse_query(query) {
                Ok(doc) => replays(&doc, &request),
                Err(_) => true,
            }
        };
        let none = Value::Object(Default::default());
        assert!(!replay("subscription { usageAlerts { id } }", none.clone()));
        assert!(!replay(
            "subscription { usageAlerts(since: null) { id } }",
            none.clone()
        ));
        assert!(replay(
            "subscription { usageAlerts(since: \"2026-01-01T00:00:00Z\") { id } }",
            none.clone()
        ));
        let declared = "subscription($s: DateTime) { usageAlerts(since: $s) { id } }";
        assert!(!replay(declared, none.clone()));
        assert!(!replay(declared, serde_json::json!({ "s": null })));
        assert!(replay(
            declared,
            serde_json::json!({ "s": "2026-01-01T00:00:00Z" })
        ));
        assert!(replay(
            "subscription($s: DateTime = \"2026-01-01T00:00:00Z\") { usageAlerts(since: $s) { id } }",
            none.clone()
        ));
        assert!(replay(
            "subscription { ...F } fragment F on Subscription { usageAlerts(since: \"2026-01-01T00:00:00Z\") { id } }",
            none.clone()
        ));
        assert!(replay(
            "subscription { ... on Subscription { usageAlerts(since: \"x\") { id } } }",
            none.clone()
        ));
        assert!(replay("subscription { since(", none));
    }
}
