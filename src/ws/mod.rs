//! GraphQL over WebSocket, owned rather than stock: graphql-transport-ws as graphql-ws's PROTOCOL.md
//! lays it down (close codes 4400, 4401, 4403, 4408, 4409, 4429; ping/pong), and the legacy
//! subscriptions-transport-ws (subprotocol `graphql-ws`) that older Apollo clients speak.
//!
//! One task per connection reads the socket and writes what its operations produce, polling them
//! itself. Identical subscriptions (same document, variables and audience) execute once in
//! [`shared`] and hand every subscriber the same serialized result; a subscriber whose socket is
//! slow falls behind on its own (it is told how much it missed) and never slows a recording, the
//! shared execution, or another subscriber. A subscription that replays from `since` runs alone,
//! polled by its connection.

use std::collections::HashMap;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::StreamExt;
use futures_util::stream::AbortHandle;
use serde_json::{Value, json};
use tokio::time::{Instant, sleep};

use crate::app::AppState;
use crate::auth;
use crate::domain::Viewer;
use crate::graphql::RequestCtx;

pub mod shared;

use shared::Item;

/// An operation's results, each shared with the other subscribers of the same execution.
type Items = std::pin::Pin<Box<dyn futures_util::Stream<Item = Arc<Item>> + Send>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// graphql-transport-ws (the `graphql-ws` npm package).
    TransportWs,
    /// subscriptions-transport-ws, whose subprotocol is named `graphql-ws`.
    Legacy,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::TransportWs => "graphql-transport-ws",
            Protocol::Legacy => "graphql-ws",
        }
    }

    /// The protocol for a `Sec-WebSocket-Protocol` offer: graphql-transport-ws when offered (or when
    /// nothing is offered), else the legacy one; None when only unknown subprotocols are offered.
    pub fn choose(offer: Option<&str>) -> Option<Protocol> {
        let Some(offer) = offer.filter(|o| !o.trim().is_empty()) else {
            return Some(Protocol::TransportWs);
        };
        let offered: Vec<&str> = offer.split(',').map(str::trim).collect();
        if offered.contains(&"graphql-transport-ws") {
            Some(Protocol::TransportWs)
        } else if offered.contains(&"graphql-ws") {
            Some(Protocol::Legacy)
        } else {
            None
        }
    }
}

/// Open connections, in total and per tenant (an organization, or a platform-team member).
pub struct Registry {
    total: AtomicUsize,
    tenants: Mutex<HashMap<String, usize>>,
    max_total: usize,
    max_per_tenant: usize,
}

/// One connection's place in the registry, given back on drop.
pub struct Slot {
    registry: Arc<Registry>,
    tenant: Option<String>,
}

impl Registry {
    pub fn new(max_total: usize, max_per_tenant: usize) -> Arc<Self> {
        Arc::new(Registry {
            total: AtomicUsize::new(0),
            tenants: Mutex::new(HashMap::new()),
            max_total,
            max_per_tenant,
        })
    }

    /// A place for one more connection, or None at the total limit.
    pub fn connect(self: &Arc<Self>) -> Option<Slot> {
        let taken = self
            .total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_total).then_some(n + 1)
            });
        taken.ok().map(|_| Slot {
            registry: self.clone(),
            tenant: None,
        })
    }

    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    fn claim(&self, slot: &mut Slot, tenant: String) -> bool {
        let Ok(mut tenants) = self.tenants.lock() else {
            return false;
        };
        let n = tenants.entry(tenant.clone()).or_insert(0);
        if *n >= self.max_per_tenant {
            return false;
        }
        *n += 1;
        slot.tenant = Some(tenant);
        true
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.registry.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(t) = self.tenant.take()
            && let Ok(mut tenants) = self.registry.tenants.lock()
            && let Some(n) = tenants.get_mut(&t)
        {
            *n -= 1;
            if *n == 0 {
                tenants.remove(&t);
            }
        }
    }
}

fn tenant_key(viewer: &Viewer) -> String {
    match (viewer.platform, viewer.org_id) {
        (false, Some(org)) => format!("org:{}", org.0),
        _ => format!("platform:{}", viewer.sub),
    }
}

/// Counts a running operation in `tollgate_websocket_operations` for as long as it lives.
struct ActiveOperation;

impl ActiveOperation {
    fn start() -> Self {
        metrics::gauge!("tollgate_websocket_operations").increment(1.0);
        ActiveOperation
    }
}

impl Drop for ActiveOperation {
    fn drop(&mut self) {
        metrics::gauge!("tollgate_websocket_operations").decrement(1.0);
    }
}

/// What an operation's stream yields to its connection.
enum Out {
    /// A result (`next`/`data`) or a request error (`error`), as the frame's text.
    Message(String),
    /// The operation ended; `complete` says whether the client is told with a `complete` message.
    Ended { complete: bool },
}

/// An operation's output, tagged with its id and generation (an id may be reused after a stop).
struct Tagged {
    id: Arc<str>,
    generation: u64,
    out: Out,
}

/// Where an operation's stream is: producing results, owing its connection an `Ended`, or over.
#[derive(Debug, Clone, Copy)]
enum Phase {
    Running,
    Ending { complete: bool },
    Done,
}

type Operation = std::pin::Pin<Box<dyn futures_util::Stream<Item = Tagged> + Send>>;

/// Why the server closes a connection.
struct Close(u16, String);

impl Close {
    fn new(code: u16, reason: impl Into<String>) -> Self {
        Close(code, reason.into())
    }
}

struct Connection {
    state: Arc<AppState>,
    protocol: Protocol,
    slot: Slot,
    header_token: Option<String>,
    /// The caller, once connection_init was acknowledged.
    viewer: Option<Viewer>,
    init_seen: bool,
    operations: HashMap<String, (u64, AbortHandle)>,
    /// The running operations, polled by the connection itself: a slow socket stops them from
    /// reading the bus (they lag and are told so) and never slows anyone else.
    streams: futures_util::stream::SelectAll<Operation>,
    next_gen: u64,
    /// One query or mutation executes at a time on a connection (`detached`).
    turn: Arc<tokio::sync::Semaphore>,
}

/// Serves one upgraded connection until either side closes it.
pub async fn serve(
    mut socket: WebSocket,
    state: Arc<AppState>,
    protocol: Protocol,
    slot: Slot,
    header_token: Option<String>,
) {
    let settings = state.settings.clone();
    let send_timeout = settings.ws_send_timeout;
    let mut shutdown = state.shutdown.subscribe();
    let mut conn = Connection {
        state,
        protocol,
        slot,
        header_token,
        viewer: None,
        init_seen: false,
        operations: HashMap::new(),
        streams: futures_util::stream::SelectAll::new(),
        next_gen: 0,
        turn: Arc::new(tokio::sync::Semaphore::new(1)),
    };
    let mut init_deadline = pin!(sleep(settings.ws_init_timeout));
    // Replaced by the token's expiry once the connection is acknowledged.
    let mut expiry = pin!(sleep(Duration::from_secs(365 * 86400)));
    let mut keepalive = tokio::time::interval_at(
        Instant::now() + settings.ws_keepalive,
        settings.ws_keepalive,
    );
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A platform-team member's connection sees every organization: it closes once its member
    // leaves the team. The server reads the team for every connection (`app::watch_platform_team`);
    // the connection looks at that snapshot on a timer of its own, which costs nothing between
    // ticks (a watch on the snapshot would take a lock shared by every connection on each turn).
    let recheck_every = settings.ws_keepalive.min(crate::app::TEAM_REFRESH);
    let mut recheck = tokio::time::interval_at(Instant::now() + recheck_every, recheck_every);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    // Made once and kept: a fresh `changed()` each turn would register with the shutdown signal,
    // shared by every connection, on each delivery.
    let mut shutdown = pin!(async move {
        let _ = shutdown.changed().await;
    });

    let close: Option<Close> = loop {
        // In order: shutdown and the token's expiry (a steady flow of results must never hold
        // them back), the client's messages (its `complete` stops a flow), then results, the init
        // deadline and the keep-alive (needed only when nothing else is sent).
        tokio::select! {
            biased;
            () = &mut shutdown => {
                break Some(Close::new(1001, "the server is shutting down"));
            }
            _ = &mut expiry, if conn.viewer.is_some() => {
                break Some(Close::new(4403, "Forbidden: the token expired"));
            }
            incoming = socket.recv() => {
                let text = match incoming {
                    None | Some(Err(_)) => break None,
                    Some(Ok(Message::Close(_))) => {
                        // The client closed: answer its close frame (the WebSocket library has
                        // queued the echo of its code; closing the sink sends it).
                        let _ = futures_util::SinkExt::close(&mut socket).await;
                        break None;
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Binary(_))) => {
                        break Some(Close::new(4400, "Binary messages are not supported"));
                    }
                    Some(Ok(Message::Text(t))) => t,
                };
                match conn.handle(text.as_str()).await {
                    Ok(replies) => {
                        let mut failed = false;
                        for reply in replies {
                            if let Some(exp) = reply.expires {
                                expiry.as_mut().reset(exp);
                            }
                            if let Some(m) = reply.message
                                && !send(&mut socket, text_message(&m), send_timeout).await
                            {
                                failed = true;
                                break;
                            }
                        }
                        if failed {
                            break None;
                        }
                    }
                    Err(close) => break Some(close),
                }
            }
            Some(out) = conn.streams.next(), if !conn.streams.is_empty() => {
                if let Some(text) = conn.deliver(out)
                    && !send(&mut socket, Message::Text(text.into()), send_timeout).await
                {
                    break None;
                }
            }
            _ = &mut init_deadline, if !conn.init_seen => {
                break Some(Close::new(4408, "Connection initialisation timeout"));
            }
            _ = recheck.tick(), if conn.viewer.as_ref().is_some_and(|v| v.platform) => {
                let gone = conn.viewer.as_ref().is_some_and(|v| {
                    conn.state
                        .team
                        .borrow()
                        .as_ref()
                        .is_some_and(|members| !members.contains(&v.sub))
                });
                if gone {
                    break Some(Close::new(
                        4403,
                        "Forbidden: no longer a member of the platform team",
                    ));
                }
            }
            _ = keepalive.tick(), if conn.viewer.is_some() => {
                let ping = match conn.protocol {
                    Protocol::TransportWs => json!({ "type": "ping" }),
                    Protocol::Legacy => json!({ "type": "ka" }),
                };
                if !send(&mut socket, text_message(&ping), send_timeout).await {
                    break None;
                }
            }
        }
    };
    // The connection's place is given back before the close frame goes out: a client that has
    // seen its close may connect again at once and must find the place free.
    let protocol = conn.protocol;
    drop(conn);
    if let Some(Close(code, reason)) = close {
        if protocol == Protocol::Legacy && code == 4403 {
            let _ = socket
                .send(text_message(
                    &json!({ "type": "connection_error", "payload": { "message": reason } }),
                ))
                .await;
        }
        let _ = socket
            .send(Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })))
            .await;
    }
}

/// Sends one frame, unless the client stops reading: a send that cannot finish within `limit`
/// (the connection's outgoing buffer stayed full) gives up, and the connection is dropped. Its
/// operations run apart from it, so they finish their transactions whatever it does.
async fn send(socket: &mut WebSocket, message: Message, limit: Duration) -> bool {
    match tokio::time::timeout(limit, socket.send(message)).await {
        Ok(sent) => sent.is_ok(),
        Err(_) => {
            metrics::counter!("tollgate_websocket_send_timeouts_total").increment(1);
            tracing::info!("closing a WebSocket whose client stopped reading");
            false
        }
    }
}

/// Runs an operation's items in a task of its own, handing them over a small channel: whatever the
/// connection does (a client that stops reading blocks its writes), the operation is polled to its
/// end, so a mutation finishes its transaction and a query releases its connection. It stops when
/// the connection drops the receiver.
///
/// A query or mutation (`turn`) first waits for the connection's execution turn and holds it until
/// its result is produced: one socket executes one such operation at a time, as one HTTP/1.1
/// connection does, so a burst on one socket cannot take the database pool or every worker.
fn detached(mut items: Items, turn: Option<Arc<tokio::sync::Semaphore>>) -> Items {
    let (tx, rx) = tokio::sync::mpsc::channel::<Arc<Item>>(4);
    tokio::spawn(async move {
        match turn {
            // A query or mutation: once it has its turn it runs to its end whatever the
            // connection does (a mutation commits and publishes, or rolls back, never stops
            // half-way); its result is handed over while anyone still listens.
            Some(turn) => {
                let mut permit = tokio::select! {
                    () = tx.closed() => return,
                    permit = turn.acquire_owned() => permit.ok(),
                };
                while let Some(item) = items.next().await {
                    permit.take();
                    if !tx.is_closed() {
                        let _ = tx.send(item).await;
                    }
                }
            }
            // A subscription: it stops with its connection.
            None => loop {
                tokio::select! {
                    biased;
                    () = tx.closed() => break,
                    item = items.next() => match item {
                        Some(item) => {
                            if tx.send(item).await.is_err() {
                                break;
                            }
                        }
                        None => break,
                    },
                }
            },
        }
    });
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

fn text_message(v: &Value) -> Message {
    Message::Text(v.to_string().into())
}

/// A message to send back, and possibly the new expiry of the connection.
struct Reply {
    message: Option<Value>,
    expires: Option<Instant>,
}

impl Reply {
    fn send(message: Value) -> Self {
        Reply {
            message: Some(message),
            expires: None,
        }
    }
}

fn invalid(what: &str) -> Close {
    Close::new(4400, format!("Invalid message received: {what}"))
}

impl Connection {
    /// Handles one client message: replies to send, or a reason to close.
    async fn handle(&mut self, text: &str) -> Result<Vec<Reply>, Close> {
        let msg: Value = serde_json::from_str(text).map_err(|_| invalid("not JSON"))?;
        let kind = msg
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("no type"))?;
        match (self.protocol, kind) {
            (_, "connection_init") => self.init(msg.get("payload")).await,
            (Protocol::TransportWs, "ping") => {
                let mut pong = json!({ "type": "pong" });
                if let Some(p) = msg.get("payload").filter(|p| !p.is_null()) {
                    pong["payload"] = p.clone();
                }
                Ok(vec![Reply::send(pong)])
            }
            (Protocol::TransportWs, "pong") => Ok(vec![]),
            (Protocol::TransportWs, "subscribe") | (Protocol::Legacy, "start") => {
                let id = operation_id(&msg)?;
                self.subscribe(id, msg.get("payload"))
            }
            (Protocol::TransportWs, "complete") | (Protocol::Legacy, "stop") => {
                let id = operation_id(&msg)?;
                let stopped = self.operations.remove(&id);
                if let Some((_, handle)) = &stopped {
                    handle.abort();
                }
                // The legacy protocol confirms a stop; graphql-transport-ws does not.
                Ok(match (self.protocol, stopped) {
                    (Protocol::Legacy, Some(_)) => {
                        vec![Reply::send(json!({ "type": "complete", "id": id }))]
                    }
                    _ => vec![],
                })
            }
            (Protocol::Legacy, "connection_terminate") => {
                Err(Close::new(1000, "connection terminated"))
            }
            (_, other) => Err(invalid(&format!("unknown type {other:?}"))),
        }
    }

    async fn init(&mut self, payload: Option<&Value>) -> Result<Vec<Reply>, Close> {
        if self.init_seen {
            return Err(Close::new(4429, "Too many initialisation requests"));
        }
        self.init_seen = true;
        let payload = payload.cloned().unwrap_or(Value::Null);
        if !(payload.is_null() || payload.is_object()) {
            return Err(invalid("the connection_init payload must be an object"));
        }
        let token = init_token(&payload)
            .or_else(|| self.header_token.clone())
            .ok_or_else(|| Close::new(4403, "Forbidden: a token is required"))?;
        let team = self.state.team.borrow().clone();
        let (viewer, exp) =
            auth::session_from_token(&self.state.keys, team, self.state.engine.db.pool(), &token)
                .await
                .map_err(|e| match e {
                    // The database did not answer: try again later, the token may be fine.
                    crate::error::AppError::Internal(_) => {
                        let _: async_graphql::Error = e.into(); // logs the cause
                        Close::new(1013, "authentication is unavailable; try again later")
                    }
                    e => Close::new(4403, format!("Forbidden: {}", e.client_message())),
                })?;
        if !self
            .slot
            .registry
            .clone()
            .claim(&mut self.slot, tenant_key(&viewer))
        {
            return Err(Close::new(
                1013,
                "Too many connections for this organization; try again later",
            ));
        }
        let left = exp - chrono::Utc::now().timestamp();
        let expires = Instant::now() + Duration::from_secs(left.max(0) as u64);
        self.viewer = Some(viewer);
        let mut replies = vec![Reply {
            message: Some(json!({ "type": "connection_ack" })),
            expires: Some(expires),
        }];
        if self.protocol == Protocol::Legacy {
            replies.push(Reply::send(json!({ "type": "ka" })));
        }
        Ok(replies)
    }

    fn subscribe(&mut self, id: String, payload: Option<&Value>) -> Result<Vec<Reply>, Close> {
        let Some(viewer) = &self.viewer else {
            return Err(Close::new(4401, "Unauthorized"));
        };
        let payload = payload
            .filter(|p| p.get("query").is_some_and(Value::is_string))
            .ok_or_else(|| invalid("subscribe needs a payload with a query"))?;
        let mut request: async_graphql::Request = serde_json::from_value(payload.clone())
            .map_err(|_| invalid("the subscribe payload is not a GraphQL request"))?;
        if let Some((_, previous)) = self.operations.get(&id) {
            match self.protocol {
                Protocol::TransportWs => {
                    return Err(Close::new(
                        4409,
                        format!("Subscriber for {id} already exists"),
                    ));
                }
                // The legacy protocol replaces an operation started again under the same id.
                Protocol::Legacy => previous.abort(),
            }
        }
        // Refused like any other operation (an `error` message); the connection stays.
        let refuse = |error: Value| {
            let payload = match self.protocol {
                Protocol::TransportWs => json!([error]),
                Protocol::Legacy => error,
            };
            Ok(vec![Reply::send(
                json!({ "type": "error", "id": id, "payload": payload }),
            )])
        };
        let max = self.state.settings.ws_max_operations;
        if !self.operations.contains_key(&id) && self.operations.len() >= max {
            return refuse(json!({
                "message": format!("at most {max} operations may run at once on one connection"),
                "extensions": { "code": "RATE_LIMITED" }
            }));
        }
        // Parsed once (and kept, like HTTP's): for the rate limit, the sharing decision and the
        // executor.
        let doc = self.state.documents.parsed(&request.query);
        if let Some(doc) = &doc {
            let costs = crate::graphql::operation_costs(
                doc,
                request.operation_name.as_deref(),
                &request.variables,
            );
            if let Err(refused) = self.state.rate_limits.check(viewer, &costs) {
                return refuse(json!({
                    "message": refused.message(),
                    "extensions": {
                        "code": "RATE_LIMITED",
                        "retryAfter": refused.retry_after_secs().max(1)
                    }
                }));
            }
        }
        self.next_gen += 1;
        let generation = self.next_gen;
        let key = shared::Key::of(doc.as_deref(), &request, viewer);
        if let Some(doc) = &doc {
            request.set_parsed_query((**doc).clone());
        }
        // A subscription's events skip the executor's `execute` hook, which completes every other
        // response: `execute` completes them (`graphql::completion`) with this document.
        let events = doc.filter(|d| {
            crate::graphql::operation(d, request.operation_name.as_deref()).is_some_and(|op| {
                op.node.ty == async_graphql::parser::types::OperationType::Subscription
            })
        });
        // A tracing span per execution, entered while it produces each result.
        let span = tracing::info_span!(
            "graphql",
            transport = "websocket",
            operation = %crate::telemetry::operation_label(
                request
                    .operation_name
                    .as_deref()
                    .or_else(|| crate::telemetry::first_operation_name(&request.query))
            ),
            shared = key.is_some(),
        );
        let items: Items = match key {
            Some(key) => {
                let (state, viewer) = (self.state.clone(), viewer.clone());
                let member = self.state.subscriptions.join(key, move |notes| {
                    execute(&state, viewer, request.data(notes), events, span)
                });
                Box::pin(member.items())
            }
            None => {
                // A subscription (replaying from `since`) waits for events; everything else
                // executes once, in the connection's turn.
                let turn = events.is_none().then(|| self.turn.clone());
                let responses = execute(&self.state, viewer.clone(), request, events, span);
                detached(
                    Box::pin(
                        responses
                            .enumerate()
                            .map(|(i, resp)| Arc::new(Item::from_response(resp, i == 0, None)))
                            .chain(futures_util::stream::once(async { Arc::new(Item::End) })),
                    ),
                    turn,
                )
            }
        };
        let (items, handle) = futures_util::stream::abortable(items);
        let (protocol, op): (Protocol, Arc<str>) = (self.protocol, Arc::from(id.as_str()));
        let state = (items, Phase::Running, ActiveOperation::start());
        let operation = futures_util::stream::unfold(state, move |(mut items, phase, active)| {
            let op = op.clone();
            async move {
                let tag = |out| Tagged {
                    id: op.clone(),
                    generation,
                    out,
                };
                match phase {
                    Phase::Done => return None,
                    Phase::Ending { complete } => {
                        let out = tag(Out::Ended { complete });
                        return Some((out, (items, Phase::Done, active)));
                    }
                    Phase::Running => {}
                }
                // Every stream of items ends with `End` or a refusal: None means it was stopped.
                let item = items.next().await?;
                let (out, next) = match &*item {
                    Item::Result { payload, .. } => {
                        let kind = match protocol {
                            Protocol::TransportWs => "next",
                            Protocol::Legacy => "data",
                        };
                        (Out::Message(frame(kind, &op, payload)), Phase::Running)
                    }
                    // A refused operation gets an `error` message, and no `complete` after it.
                    Item::Refused { errors, first } => {
                        let payload = match protocol {
                            Protocol::TransportWs => errors,
                            Protocol::Legacy => first,
                        };
                        let out = Out::Message(frame("error", &op, payload));
                        (out, Phase::Ending { complete: false })
                    }
                    Item::End => (Out::Ended { complete: true }, Phase::Done),
                };
                Some((tag(out), (items, next, active)))
            }
        });
        self.streams.push(Box::pin(operation));
        self.operations.insert(id, (generation, handle));
        Ok(vec![])
    }

    /// What to send for an operation's output, unless the operation was stopped meanwhile.
    fn deliver(&mut self, tagged: Tagged) -> Option<String> {
        let current = self.operations.get(&*tagged.id).map(|(g, _)| *g) == Some(tagged.generation);
        if !current {
            return None;
        }
        match tagged.out {
            Out::Message(text) => Some(text),
            Out::Ended { complete } => {
                self.operations.remove(&*tagged.id);
                complete.then(|| json!({ "type": "complete", "id": &*tagged.id }).to_string())
            }
        }
    }
}

fn operation_id(msg: &Value) -> Result<String, Close> {
    msg.get("id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| invalid("an operation id is required"))
}

/// Runs one operation: its responses, each produced inside the operation's span. Between results
/// it holds no database connection, and forgets what it loaded: the next result reads fresh data.
/// `events`: a subscription's parsed document, to complete its events with.
fn execute(
    state: &Arc<AppState>,
    viewer: Viewer,
    request: async_graphql::Request,
    events: Option<Arc<async_graphql::parser::types::ExecutableDocument>>,
    span: tracing::Span,
) -> shared::Responses {
    let ctx = RequestCtx::new(state.engine.clone(), state.settings.clone(), Some(viewer));
    let db = ctx.engine.db.clone();
    let loaders = ctx.loaders.clone();
    let completion = events.map(|doc| {
        (
            doc,
            request.operation_name.clone(),
            request.variables.clone(),
            state.output_types.clone(),
        )
    });
    let responses = state
        .schema
        .execute_stream(request.data(ctx))
        .then(move |mut resp| {
            let (db, loaders) = (db.clone(), loaders.clone());
            if let Some((doc, operation, variables, types)) = &completion
                && let Some(types) = types.get()
            {
                crate::graphql::completion::complete(
                    types,
                    doc,
                    operation.as_deref(),
                    variables,
                    &mut resp,
                );
            }
            crate::graphql::with_codes(&mut resp);
            async move {
                db.release().await;
                RequestCtx::forget(&loaders);
                resp
            }
        });
    // A panic while producing a result answers INTERNAL and ends the operation, never the socket.
    let responses = crate::graphql::catch_panics(responses);
    Box::pin(shared::InSpan {
        inner: Box::pin(responses),
        span,
    })
}

/// A protocol frame around a payload that is already JSON (serialized once, however many
/// subscribers receive it).
fn frame(kind: &str, id: &str, payload: &str) -> String {
    let id = serde_json::to_string(id).unwrap_or_else(|_| "\"\"".into());
    format!("{{\"type\":\"{kind}\",\"id\":{id},\"payload\":{payload}}}")
}

/// The token of a connection_init payload: `{"Authorization": "Bearer ..."}`, the same under
/// `headers`, or `{"token": "..."}`.
pub fn init_token(payload: &Value) -> Option<String> {
    let obj = payload.as_object()?;
    let header = |o: &serde_json::Map<String, Value>| {
        o.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            .and_then(|(_, v)| v.as_str())
            .map(|v| auth::bearer(v).map(str::to_owned).unwrap_or_default())
    };
    if let Some(t) = header(obj) {
        return Some(t);
    }
    if let Some(t) = obj
        .get("headers")
        .and_then(Value::as_object)
        .and_then(header)
    {
        return Some(t);
    }
    obj.get("token")
        .and_then(Value::as_str)
        .map(|t| t.strip_prefix("Bearer ").unwrap_or(t).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_are_chosen_from_the_offer() {
        assert_eq!(Protocol::choose(None), Some(Protocol::TransportWs));
        assert_eq!(
            Protocol::choose(Some("graphql-ws, graphql-transport-ws")),
            Some(Protocol::TransportWs)
        );
        assert_eq!(Protocol::choose(Some("graphql-ws")), Some(Protocol::Legacy));
        assert_eq!(Protocol::choose(Some("mqtt")), None);
    }

    #[test]
    fn tokens_come_from_the_init_payload() {
        assert_eq!(
            init_token(&json!({ "Authorization": "Bearer abc" })),
            Some("abc".into())
        );
        assert_eq!(
            init_token(&json!({ "headers": { "authorization": "Bearer abc" } })),
            Some("abc".into())
        );
        assert_eq!(init_token(&json!({ "token": "abc" })), Some("abc".into()));
        assert_eq!(init_token(&json!({})), None);
        // A malformed header is a wrong token, not a missing one.
        assert_eq!(
            init_token(&json!({ "Authorization": "Basic abc" })),
            Some(String::new())
        );
    }

    #[test]
    fn the_registry_enforces_both_limits() {
        let reg = Registry::new(3, 1);
        let mut a = reg.connect().unwrap();
        let mut b = reg.connect().unwrap();
        assert!(reg.claim(&mut a, "org:1".into()));
        assert!(!reg.claim(&mut b, "org:1".into()), "one per tenant");
        assert!(reg.claim(&mut b, "org:2".into()));
        let _c = reg.connect().unwrap();
        assert!(reg.connect().is_none(), "three in total");
        drop(a);
        let mut d = reg.connect().unwrap();
        assert!(
            reg.claim(&mut d, "org:1".into()),
            "a closed connection frees its place"
        );
        assert_eq!(reg.open(), 3);
    }
}
