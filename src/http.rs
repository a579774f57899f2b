//! The HTTP layer, owned rather than stock: GraphQL over HTTP (POST and GET, Accept negotiation,
//! status codes as the GraphQL-over-HTTP spec asks, a batch limit, mutations refused over GET), the
//! WebSocket upgrade, the offline playground, and health probes.

use std::sync::Arc;

use async_graphql::parser::types::OperationType;
use async_graphql::{BatchRequest, BatchResponse};
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Query, Request, State, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use futures_util::FutureExt as _;
use serde::Deserialize;
use tracing::Instrument;

use crate::app::AppState;
use crate::domain::Viewer;
use crate::error::AppError;
use crate::graphql::RequestCtx;
use crate::graphql::responses::Flight;
use crate::{auth, ws};

const GRAPHQL_RESPONSE: &str = "application/graphql-response+json";
const JSON: &str = "application/json";

/// The media type the client accepts, or None when it accepts neither JSON form.
fn negotiate(headers: &HeaderMap) -> Option<&'static str> {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Some(JSON);
    };
    let mut best: Option<(&'static str, f32)> = None;
    for part in accept.split(',') {
        let mut it = part.split(';');
        let media = it.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = it
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        if q <= 0.0 {
            continue;
        }
        let candidate = match media.as_str() {
            GRAPHQL_RESPONSE => Some(GRAPHQL_RESPONSE),
            JSON | "application/*" | "*/*" => Some(JSON),
            _ => None,
        };
        if let Some(c) = candidate
            && best.is_none_or(|(b, bq)| {
                q > bq || (q == bq && c == GRAPHQL_RESPONSE && b != GRAPHQL_RESPONSE)
            })
        {
            best = Some((c, q));
        }
    }
    best.map(|(c, _)| c)
}

fn error_body(message: &str, code: &str) -> serde_json::Value {
    serde_json::json!({ "errors": [{ "message": message, "extensions": { "code": code } }] })
}

fn json_response(
    status: StatusCode,
    media: &'static str,
    body: &impl serde::Serialize,
) -> Response {
    let bytes = serde_json::to_vec(body)
        .unwrap_or_else(|_| b"{\"errors\":[{\"message\":\"internal error\"}]}".to_vec());
    let mut resp = (status, bytes).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(media));
    resp
}

fn bytes_response(status: StatusCode, media: &'static str, body: Bytes) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(media));
    resp
}

/// The response cache's key for a request, when its answer may be kept (`graphql::responses`): a
/// signed-in caller's query that selects only usage reads.
fn response_key(
    state: &AppState,
    viewer: Option<&Viewer>,
    doc: Option<&async_graphql::parser::types::ExecutableDocument>,
    request: &async_graphql::Request,
) -> Option<crate::graphql::responses::Key> {
    if !state.responses.enabled() {
        return None;
    }
    let (viewer, doc, types) = (viewer?, doc?, state.output_types.get()?);
    crate::graphql::responses::cacheable(doc, request.operation_name.as_deref(), types)
        .then(|| crate::graphql::responses::Key::new(viewer, request))
        .flatten()
}

fn request_error(status: StatusCode, media: &'static str, message: &str, code: &str) -> Response {
    json_response(status, media, &error_body(message, code))
}

/// Resolves the caller from the Authorization header: None without one, an error for a bad one.
async fn viewer_from_headers(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<Viewer>, AppError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| AppError::Unauthenticated("malformed Authorization header".into()))?;
    let token = auth::bearer(value)?;
    let team = state.team.borrow().clone();
    auth::viewer_from_token(&state.keys, team, state.engine.db.pool(), token)
        .await
        .map(Some)
}

fn unauthenticated(media: &'static str, err: AppError) -> Response {
    // The token could not be checked because the database did not answer: not the caller's fault.
    if matches!(err, AppError::Internal(_)) {
        let _: async_graphql::Error = err.into(); // logs the cause
        let mut resp = request_error(
            StatusCode::SERVICE_UNAVAILABLE,
            media,
            "authentication is unavailable (the database did not answer); try again",
            "INTERNAL",
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return resp;
    }
    let mut resp = request_error(
        StatusCode::UNAUTHORIZED,
        media,
        &err.client_message(),
        err.code(),
    );
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

/// The HTTP status of an executed GraphQL response: 200 under application/json; under
/// graphql-response+json, 4xx when the request failed before execution (no data, errors without path).
fn status_for(media: &'static str, resp: &BatchResponse) -> StatusCode {
    if media != GRAPHQL_RESPONSE {
        return StatusCode::OK;
    }
    let single = match resp {
        BatchResponse::Single(r) => r,
        BatchResponse::Batch(_) => return StatusCode::OK,
    };
    if !failed_before_execution(single) {
        return StatusCode::OK;
    }
    let code_of = |e: &async_graphql::ServerError| {
        e.extensions
            .as_ref()
            .and_then(|x| x.get("code"))
            .map(|v| v.to_string().trim_matches('"').to_owned())
    };
    let has = |code: &str| {
        single
            .errors
            .iter()
            .any(|e| code_of(e).as_deref() == Some(code))
    };
    if has("UNAUTHENTICATED") {
        StatusCode::UNAUTHORIZED
    } else if has("INTERNAL") {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::BAD_REQUEST
    }
}

/// A request error (it did not parse or validate, or named no operation): no data, and errors
/// without a path.
fn failed_before_execution(resp: &async_graphql::Response) -> bool {
    matches!(resp.data, async_graphql::Value::Null)
        && !resp.errors.is_empty()
        && resp.errors.iter().all(|e| e.path.is_empty())
}

/// A usage read answered from the response cache: `hit` (kept before it asked) or `shared` (kept
/// by the execution it waited for).
fn kept_answer(
    media: &'static str,
    body: Bytes,
    outcome: &'static str,
    operation: String,
    received: std::time::Instant,
) -> Response {
    metrics::counter!("tollgate_response_cache_total", "outcome" => outcome).increment(1);
    metrics::counter!("tollgate_graphql_requests_total", "operation" => operation.clone(), "outcome" => "ok")
        .increment(1);
    metrics::histogram!("tollgate_graphql_request_duration_seconds", "operation" => operation)
        .record(received.elapsed().as_secs_f64());
    bytes_response(StatusCode::OK, media, body)
}

async fn execute(
    state: &AppState,
    media: &'static str,
    viewer: Option<Viewer>,
    batch: BatchRequest,
) -> Response {
    let received = std::time::Instant::now();
    let n = match &batch {
        BatchRequest::Single(_) => 1,
        BatchRequest::Batch(v) => v.len(),
    };
    if n == 0 || n > state.settings.max_batch {
        let msg = format!("a batch holds 1 to {} operations", state.settings.max_batch);
        return request_error(StatusCode::BAD_REQUEST, media, &msg, "BAD_USER_INPUT");
    }
    let operation = crate::telemetry::operation_label(match &batch {
        BatchRequest::Single(r) => r
            .operation_name
            .as_deref()
            .or_else(|| crate::telemetry::first_operation_name(&r.query)),
        BatchRequest::Batch(_) => Some("batch"),
    });
    let single = matches!(batch, BatchRequest::Single(_));
    let requests = match batch {
        BatchRequest::Single(r) => vec![r],
        BatchRequest::Batch(rs) => rs,
    };
    // Each operation counts against its caller's rate limit (a batch counts each one); a refused
    // one answers RATE_LIMITED in its place and does not run.
    let mut refusals: Vec<Option<crate::ratelimit::Refused>> = Vec::with_capacity(n);
    let mut runnable = Vec::with_capacity(n);
    // Each request's database handle is released once it has answered.
    let mut handles = Vec::with_capacity(n);
    // A single usage read that may be kept in the response cache, once it has answered.
    let mut keep = None;
    for mut r in requests {
        let doc = state.documents.parsed(&r.query);
        let refused = match (&viewer, &doc) {
            (Some(v), Some(doc)) => {
                let costs =
                    crate::graphql::operation_costs(doc, r.operation_name.as_deref(), &r.variables);
                state.rate_limits.check(v, &costs).err()
            }
            _ => None,
        };
        refusals.push(refused);
        if refused.is_some() {
            continue;
        }
        if single && let Some(key) = response_key(state, viewer.as_ref(), doc.as_deref(), &r) {
            if let Some(body) = state.responses.get(&key, &state.engine.cache) {
                return kept_answer(media, body, "hit", operation, received);
            }
            keep = match state.responses.join(key, &state.engine.cache) {
                Flight::Lead(pending) => {
                    metrics::counter!("tollgate_response_cache_total", "outcome" => "miss")
                        .increment(1);
                    Some(pending)
                }
                Flight::Follow(follower) => {
                    // Another request with this key is executing: its answer, when kept, is ours.
                    let key = follower.wait().await;
                    if let Some(body) = state.responses.get(&key, &state.engine.cache) {
                        return kept_answer(media, body, "shared", operation, received);
                    }
                    metrics::counter!("tollgate_response_cache_total", "outcome" => "miss")
                        .increment(1);
                    state.responses.pending_alone(key, &state.engine.cache)
                }
                Flight::Off => None,
            };
        }
        if let Some(doc) = doc {
            r.set_parsed_query((*doc).clone());
        }
        let ctx = RequestCtx::new(state.engine.clone(), state.settings.clone(), viewer.clone());
        handles.push(ctx.engine.db.clone());
        runnable.push(r.data(ctx));
    }
    let retry_after = refusals
        .iter()
        .flatten()
        .map(|r| r.retry_after_secs().max(1))
        .max();
    // The whole request refused (one operation, or every one of a batch): 429.
    if refusals.iter().all(Option::is_some)
        && let Some(Some(refused)) = refusals.first()
    {
        if single {
            return rate_limited(media, refused);
        }
        let secs = retry_after.unwrap_or(1);
        let body: Vec<async_graphql::Response> = refusals
            .iter()
            .flatten()
            .map(rate_limited_response)
            .collect();
        let mut resp = json_response(StatusCode::TOO_MANY_REQUESTS, media, &body);
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return resp;
    }
    let n_run = runnable.len();
    // A single request that was not refused above is the one runnable request.
    let batch = match (single, runnable.pop()) {
        (true, Some(r)) => BatchRequest::Single(r),
        (_, last) => BatchRequest::Batch(runnable.into_iter().chain(last).collect()),
    };
    let started = std::time::Instant::now();
    let span = tracing::info_span!(
        "graphql",
        operation = %operation,
        batch = n,
        status = tracing::field::Empty
    );
    // A panic in a resolver answers INTERNAL (and is logged), never an empty reply.
    let mut resp = match std::panic::AssertUnwindSafe(state.schema.execute_batch(batch))
        .catch_unwind()
        .instrument(span.clone())
        .await
    {
        Ok(resp) => resp,
        Err(panic) => {
            crate::graphql::log_panic(&operation, panic.as_ref());
            let internal = crate::graphql::internal_response;
            if single {
                BatchResponse::Single(internal())
            } else {
                BatchResponse::Batch((0..n_run).map(|_| internal()).collect())
            }
        }
    };
    // The refused operations of a batch take their places again.
    if let BatchResponse::Batch(ran) = resp {
        let mut ran = ran.into_iter();
        resp = BatchResponse::Batch(
            refusals
                .iter()
                .map(|refused| match refused {
                    Some(r) => rate_limited_response(r),
                    None => ran.next().unwrap_or_else(crate::graphql::internal_response),
                })
                .collect(),
        );
    }
    match &mut resp {
        BatchResponse::Single(r) => crate::graphql::with_codes(r),
        BatchResponse::Batch(rs) => rs.iter_mut().for_each(crate::graphql::with_codes),
    }
    for db in handles {
        db.release().await;
    }
    let outcome = if resp.is_ok() { "ok" } else { "error" };
    span.record("status", outcome);
    metrics::counter!("tollgate_graphql_requests_total", "operation" => operation.clone(), "outcome" => outcome)
        .increment(1);
    metrics::histogram!("tollgate_graphql_request_duration_seconds", "operation" => operation)
        .record(started.elapsed().as_secs_f64());
    let status = status_for(media, &resp);
    let stripped = match &resp {
        BatchResponse::Single(r) => failed_before_execution(r),
        BatchResponse::Batch(rs) => rs.iter().any(failed_before_execution),
    };
    let with_retry = |mut response: Response| {
        if let Some(secs) = retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        response
    };
    if !stripped {
        if let (Some(pending), BatchResponse::Single(r)) = (keep, &resp)
            && r.errors.is_empty()
            && retry_after.is_none()
            && let Ok(bytes) = serde_json::to_vec(&resp)
        {
            let body = Bytes::from(bytes);
            state
                .responses
                .put(pending, body.clone(), &state.engine.cache);
            return bytes_response(status, media, body);
        }
        return with_retry(json_response(status, media, &resp));
    }
    // A request that failed before execution has no data entry at all (the GraphQL specification,
    // whichever the media type).
    let body_of = |r: &async_graphql::Response| {
        let mut v =
            serde_json::to_value(r).unwrap_or_else(|_| error_body("internal error", "INTERNAL"));
        if failed_before_execution(r)
            && let Some(obj) = v.as_object_mut()
        {
            obj.remove("data");
        }
        v
    };
    let body = match &resp {
        BatchResponse::Single(r) => body_of(r),
        BatchResponse::Batch(rs) => serde_json::Value::Array(rs.iter().map(body_of).collect()),
    };
    with_retry(json_response(status, media, &body))
}

/// An operation refused by its rate limit, in a batch's answer.
fn rate_limited_response(refused: &crate::ratelimit::Refused) -> async_graphql::Response {
    let mut err = async_graphql::ServerError::new(refused.message(), None);
    let ext = err.extensions.get_or_insert_with(Default::default);
    ext.set("code", "RATE_LIMITED");
    ext.set("retryAfter", refused.retry_after_secs().max(1));
    let mut resp = async_graphql::Response::from_errors(vec![err]);
    resp.data = async_graphql::Value::Null;
    resp
}

/// A request refused by its rate limit: 429 with `Retry-After`, RATE_LIMITED with `retryAfter`.
fn rate_limited(media: &'static str, refused: &crate::ratelimit::Refused) -> Response {
    let secs = refused.retry_after_secs().max(1);
    metrics::counter!("tollgate_rate_limited_total", "class" => refused.class.as_str())
        .increment(1);
    let body = serde_json::json!({ "errors": [{
        "message": refused.message(),
        "extensions": { "code": "RATE_LIMITED", "retryAfter": secs }
    }] });
    let mut resp = json_response(StatusCode::TOO_MANY_REQUESTS, media, &body);
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// A request (of a batch) without a query: a parameter problem, answered 400 before execution.
fn lacks_query(batch: &BatchRequest) -> bool {
    let empty = |r: &async_graphql::Request| r.query.trim().is_empty();
    match batch {
        BatchRequest::Single(r) => empty(r),
        BatchRequest::Batch(rs) => rs.iter().any(empty),
    }
}

/// POST /graphql
pub async fn graphql_post(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(media) = negotiate(&headers) else {
        return request_error(
            StatusCode::NOT_ACCEPTABLE,
            JSON,
            "accept application/graphql-response+json or application/json",
            "BAD_USER_INPUT",
        );
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence != JSON {
        return request_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            media,
            "send the request as Content-Type: application/json",
            "BAD_USER_INPUT",
        );
    }
    let batch: BatchRequest = match serde_json::from_slice(&body) {
        Ok(b) if lacks_query(&b) => {
            return request_error(
                StatusCode::BAD_REQUEST,
                media,
                "the query parameter is required",
                "BAD_USER_INPUT",
            );
        }
        Ok(b) => b,
        Err(_) => {
            return request_error(
                StatusCode::BAD_REQUEST,
                media,
                "the body is not a GraphQL request: expected {\"query\": \"...\", \"variables\": {...}}",
                "BAD_USER_INPUT",
            );
        }
    };
    let viewer = match viewer_from_headers(&state, &headers).await {
        Ok(v) => v,
        Err(e) => return unauthenticated(media, e),
    };
    execute(&state, media, viewer, batch).await
}

#[derive(Deserialize)]
pub struct GetParams {
    query: Option<String>,
    #[serde(rename = "operationName")]
    operation_name: Option<String>,
    variables: Option<String>,
    extensions: Option<String>,
}

/// GET /graphql: a query in the URL, or the WebSocket upgrade for subscriptions.
pub async fn graphql_get(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let is_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let (mut parts, _) = req.into_parts();
    if is_upgrade {
        return websocket(state, &mut parts).await;
    }
    let headers = parts.headers.clone();
    let Some(media) = negotiate(&headers) else {
        return request_error(
            StatusCode::NOT_ACCEPTABLE,
            JSON,
            "accept application/graphql-response+json or application/json",
            "BAD_USER_INPUT",
        );
    };
    let params = match Query::<GetParams>::from_request_parts(&mut parts, &state).await {
        Ok(Query(p)) => p,
        Err(_) => {
            return request_error(
                StatusCode::BAD_REQUEST,
                media,
                "invalid query string",
                "BAD_USER_INPUT",
            );
        }
    };
    let Some(query) = params.query.filter(|q| !q.trim().is_empty()) else {
        return request_error(
            StatusCode::BAD_REQUEST,
            media,
            "the query parameter is required",
            "BAD_USER_INPUT",
        );
    };
    let mut request = async_graphql::Request::new(query.clone());
    if let Some(name) = params.operation_name.clone().filter(|n| !n.is_empty()) {
        request = request.operation_name(name);
    }
    if let Some(vars) = params.variables.filter(|v| !v.is_empty()) {
        match serde_json::from_str::<serde_json::Value>(&vars) {
            Ok(v @ serde_json::Value::Object(_)) => {
                request = request.variables(async_graphql::Variables::from_json(v))
            }
            Ok(serde_json::Value::Null) => {}
            _ => {
                return request_error(
                    StatusCode::BAD_REQUEST,
                    media,
                    "variables must be a JSON object",
                    "BAD_USER_INPUT",
                );
            }
        }
    }
    if let Some(ext) = params.extensions.filter(|v| !v.is_empty())
        && serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&ext).is_err()
    {
        return request_error(
            StatusCode::BAD_REQUEST,
            media,
            "extensions must be a JSON object",
            "BAD_USER_INPUT",
        );
    }
    // Only queries travel over GET: a mutation changes state and must be a POST.
    if let Some(doc) = state.documents.parsed(&query) {
        let op_type = match params.operation_name.as_deref().filter(|n| !n.is_empty()) {
            Some(name) => doc
                .operations
                .iter()
                .find(|(n, _)| n.map(|n| n.as_str()) == Some(name))
                .map(|(_, op)| op.node.ty),
            None => doc.operations.iter().next().map(|(_, op)| op.node.ty),
        };
        if matches!(
            op_type,
            Some(OperationType::Mutation | OperationType::Subscription)
        ) {
            let mut resp = request_error(
                StatusCode::METHOD_NOT_ALLOWED,
                media,
                "only queries may be sent with GET; use POST",
                "BAD_USER_INPUT",
            );
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return resp;
        }
    }
    let viewer = match viewer_from_headers(&state, &headers).await {
        Ok(v) => v,
        Err(e) => return unauthenticated(media, e),
    };
    execute(&state, media, viewer, BatchRequest::Single(request)).await
}

/// The WebSocket upgrade: picks the subprotocol, takes a place under the connection limit, and hands
/// the socket to `ws::serve`. A token may also come in the upgrade's Authorization header (for clients
/// that can set one); the connection_init payload's token wins.
async fn websocket(state: Arc<AppState>, parts: &mut axum::http::request::Parts) -> Response {
    let offer = parts
        .headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok());
    // Browsers send their page's Origin on the upgrade; with allowed origins set, a page from
    // elsewhere is refused (clients that are not browsers send none). This server's own pages (the
    // dashboard) are always let in: their origin names the host the request is addressed to.
    let allowed = &state.settings.cors_origins;
    if !allowed.is_empty() && !allowed.iter().any(|o| o.trim() == "*") {
        let origin = parts
            .headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok());
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok());
        if let Some(origin) = origin
            && !same_origin(origin, host)
            && !allowed
                .iter()
                .any(|o| o.trim().eq_ignore_ascii_case(origin))
        {
            return request_error(
                StatusCode::FORBIDDEN,
                JSON,
                "this origin may not open a WebSocket here",
                "FORBIDDEN",
            );
        }
    }
    let Some(protocol) = ws::Protocol::choose(offer) else {
        return request_error(
            StatusCode::BAD_REQUEST,
            JSON,
            "unsupported WebSocket subprotocol: use graphql-transport-ws or graphql-ws",
            "BAD_USER_INPUT",
        );
    };
    let offered_any = offer.is_some_and(|o| !o.trim().is_empty());
    let header_token = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| auth::bearer(v).ok())
        .map(str::to_owned);
    let upgrade = match WebSocketUpgrade::from_request_parts(parts, &state).await {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    let Some(slot) = state.ws.connect() else {
        let mut resp = request_error(
            StatusCode::SERVICE_UNAVAILABLE,
            JSON,
            "too many WebSocket connections; try again later",
            "RATE_LIMITED",
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return resp;
    };
    let upgrade = if offered_any {
        upgrade.protocols([protocol.name()])
    } else {
        upgrade
    };
    upgrade
        // Small buffers: a subscriber mostly waits, and there may be tens of thousands.
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_message_size(state.settings.max_body_bytes)
        .on_upgrade(move |socket| ws::serve(socket, state, protocol, slot, header_token))
}

/// Whether a page's `Origin` is this server's own, as addressed by the request's `Host`. The scheme
/// is not compared: behind a TLS-terminating proxy the page is https and the request plain.
fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let authority = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    matches!((authority, host), (Some(a), Some(h)) if !h.is_empty() && a.eq_ignore_ascii_case(h))
}

/// GET /: GraphiQL, its assets served by this server.
pub async fn playground() -> Html<&'static str> {
    Html(PLAYGROUND_HTML)
}

pub async fn asset(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    let (body, ty): (&'static [u8], &'static str) = match name.as_str() {
        "graphiql.min.js" => (
            include_bytes!("../assets/graphiql/graphiql.min.js"),
            "text/javascript",
        ),
        "graphiql.min.css" => (
            include_bytes!("../assets/graphiql/graphiql.min.css"),
            "text/css",
        ),
        "react.production.min.js" => (
            include_bytes!("../assets/graphiql/react.production.min.js"),
            "text/javascript",
        ),
        "react-dom.production.min.js" => (
            include_bytes!("../assets/graphiql/react-dom.production.min.js"),
            "text/javascript",
        ),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, ty),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        body,
    )
        .into_response()
}

const PLAYGROUND_HTML: &str = r#"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Tollgate GraphQL playground</title>
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <link rel="stylesheet" href="/assets/graphiql.min.css">
  <style>body { margin: 0; height: 100vh; } #graphiql { height: 100vh; }</style>
</head>
<body>
  <div id="graphiql">Loading the playground...</div>
  <script src="/assets/react.production.min.js"></script>
  <script src="/assets/react-dom.production.min.js"></script>
  <script src="/assets/graphiql.min.js"></script>
  <script>
    const wsUrl = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/graphql';
    const fetcher = GraphiQL.createFetcher({ url: '/graphql', subscriptionUrl: wsUrl });
    // `/?query=...` opens with that query; `/#token=...` opens with that token in the headers (the
    // fragment never reaches a server, and is removed from the address bar at once).
    const params = new URLSearchParams(location.search);
    const fragment = new URLSearchParams(location.hash.slice(1));
    const token = fragment.get('token');
    if (token) { history.replaceState(null, '', location.pathname + location.search); }
    const props = {
      fetcher,
      defaultEditorToolsVisibility: true,
      defaultHeaders: '{\n  "Authorization": "Bearer <token from: tollgate token --sub you --org ORG_ID --role ADMIN>"\n}',
      defaultQuery: '# Welcome to Tollgate. Mint a token with `tollgate token`, put it in the headers below,\n# then run:\n{\n  viewer { userId role isPlatformTeam }\n  organization { name plan { name } usage { metrics { metric { code } used allowance utilizationPct exceeded } } }\n}\n',
    };
    if (params.get('query')) { props.query = params.get('query'); }
    if (token) { props.headers = JSON.stringify({ Authorization: 'Bearer ' + token }, null, 2); }
    const root = ReactDOM.createRoot(document.getElementById('graphiql'));
    root.render(React.createElement(GraphiQL, props));
  </script>
</body>
</html>
"#;

/// Largest total size of a request's headers; past it the answer is 431 (JSON, with a code).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Refuses requests whose headers are too large with a JSON 431 (hyper's own limits, far above
/// this one, answer without a body).
pub async fn header_limit(req: Request, next: axum::middleware::Next) -> Response {
    let size: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if size > MAX_HEADER_BYTES {
        return request_error(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            JSON,
            &format!("the request's headers are larger than {MAX_HEADER_BYTES} bytes"),
            "BAD_USER_INPUT",
        );
    }
    next.run(req).await
}

/// Gives the body-limit layers' bare 413 (and any other bare 413 or 431) a JSON body with a code.
pub async fn coded_limits(resp: Response) -> Response {
    let status = resp.status();
    let bare = !resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(JSON) || v.starts_with(GRAPHQL_RESPONSE));
    if bare && status == StatusCode::PAYLOAD_TOO_LARGE {
        return request_error(
            status,
            JSON,
            "the request body is larger than the server accepts (TOLLGATE_MAX_BODY_BYTES)",
            "BAD_USER_INPUT",
        );
    }
    if bare && status == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE {
        return request_error(
            status,
            JSON,
            "the request's headers are too large",
            "BAD_USER_INPUT",
        );
    }
    resp
}

/// POST /stripe/webhook: Stripe's events, their signature checked over the raw body with
/// async-stripe's webhook module (HMAC-SHA256 over `t.payload`, any of several `v1` signatures, a
/// 5-minute tolerance, a constant-time comparison) against each configured secret, then applied
/// once (`domain::stripe`). 400 for a missing, forged, stale or malformed signature; 200 for what
/// was applied, replayed, stale or ignored; 500 when applying failed (Stripe retries).
pub async fn stripe_webhook(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    use secrecy::ExposeSecret;
    let s = &state.settings;
    let secrets: Vec<&secrecy::SecretString> = s
        .stripe_webhook_secret
        .iter()
        .chain(s.stripe_connect_webhook_secret.as_ref())
        .collect();
    if secrets.is_empty() {
        return request_error(
            StatusCode::SERVICE_UNAVAILABLE,
            JSON,
            "Stripe webhooks are not configured: set TOLLGATE_STRIPE_WEBHOOK_SECRET",
            "INTERNAL",
        );
    }
    let refuse = |msg: &str| request_error(StatusCode::BAD_REQUEST, JSON, msg, "BAD_USER_INPUT");
    let Some(signature) = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
    else {
        return refuse("the Stripe-Signature header is missing");
    };
    let Ok(payload) = std::str::from_utf8(&body) else {
        return refuse("the body is not UTF-8");
    };
    if !secrets
        .iter()
        .any(|secret| signed_by(payload, signature, secret.expose_secret()))
    {
        metrics::counter!("tollgate_stripe_webhooks_total", "outcome" => "refused").increment(1);
        return refuse("the Stripe-Signature does not verify (forged, stale or malformed)");
    }
    let Some(event) = serde_json::from_str::<serde_json::Value>(payload)
        .ok()
        .as_ref()
        .and_then(crate::domain::stripe::Event::parse)
    else {
        return refuse("the body is not a Stripe event");
    };
    let (id, kind) = (event.id.clone(), event.kind.clone());
    match crate::domain::stripe::apply(&state.engine, event).await {
        Ok(outcome) => {
            tracing::info!(event = %id, kind = %kind, outcome = outcome.as_str(), "stripe webhook");
            metrics::counter!("tollgate_stripe_webhooks_total", "outcome" => outcome.as_str())
                .increment(1);
            json_response(
                StatusCode::OK,
                JSON,
                &serde_json::json!({ "received": true, "outcome": outcome.as_str() }),
            )
        }
        Err(AppError::BadInput(m)) => refuse(&m),
        Err(e) => {
            let code = e.code();
            let _: async_graphql::Error = e.into(); // logs the cause
            request_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                JSON,
                "the event could not be applied; Stripe will send it again",
                code,
            )
        }
    }
}

/// Whether `signature` (a Stripe-Signature header) signs `payload` with `secret`, made within the
/// tolerance. async-stripe checks the signature and the time first, then parses the event into
/// its typed objects: a parse error (an API version other than the crate's) still means verified;
/// the event is read leniently afterwards.
fn signed_by(payload: &str, signature: &str, secret: &str) -> bool {
    use stripe_webhook::{Webhook, WebhookError};
    matches!(
        Webhook::construct_event(payload, signature, secret),
        Ok(_) | Err(WebhookError::BadParse(_))
    )
}

/// GET /healthz: the process is up.
pub async fn healthz() -> &'static str {
    "ok"
}

/// GET /readyz: the database answers.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let postgres = state.engine.db.is_postgres();
    if postgres && !*state.listening.borrow() {
        return (StatusCode::SERVICE_UNAVAILABLE, "not listening for alerts").into_response();
    }
    match crate::store::ping(state.engine.db.pool()).await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable").into_response()
        }
    }
}

/// GET /metrics: Prometheus text format.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::telemetry::render(&state),
    )
        .into_response()
}

/// Any other method on /graphql.
pub async fn method_not_allowed(method: Method) -> Response {
    let mut resp = request_error(
        StatusCode::METHOD_NOT_ALLOWED,
        JSON,
        &format!("{method} is not supported on /graphql: use POST, or GET for queries"),
        "BAD_USER_INPUT",
    );
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(accept: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::ACCEPT, HeaderValue::from_str(accept).unwrap());
        m
    }

    #[test]
    fn stripe_signatures_verify_as_stripe_specifies() {
        use stripe_webhook::Webhook;
        let payload = r#"{"id":"evt_1","type":"x.y","created":1,"data":{"object":{}}}"#;
        let now = chrono::Utc::now().timestamp();
        let good = Webhook::generate_test_header(payload, "whsec_a", Some(now));
        assert!(signed_by(payload, &good, "whsec_a"));
        assert!(!signed_by(payload, &good, "whsec_b"), "another secret");
        assert!(
            !signed_by(&payload.replace("x.y", "x.z"), &good, "whsec_a"),
            "another body"
        );
        let stale = Webhook::generate_test_header(payload, "whsec_a", Some(now - 301));
        assert!(
            !signed_by(payload, &stale, "whsec_a"),
            "older than 5 minutes"
        );
        // During a rotation Stripe signs with both secrets: either verifies.
        let other = Webhook::generate_test_header(payload, "whsec_b", Some(now));
        let v1 = other.split(",v1=").nth(1).unwrap();
        let both = format!("{good},v1={v1}");
        assert!(signed_by(payload, &both, "whsec_a") && signed_by(payload, &both, "whsec_b"));
        for malformed in ["", "t=abc,v1=00", "v1=00", "t=1", "garbage"] {
            assert!(!signed_by(payload, malformed, "whsec_a"), "{malformed}");
        }
    }

    #[test]
    fn own_pages_are_same_origin() {
        assert!(same_origin("http://127.0.0.1:8000", Some("127.0.0.1:8000")));
        assert!(same_origin(
            "https://Usage.Example.com",
            Some("usage.example.com")
        ));
        assert!(!same_origin(
            "https://evil.example",
            Some("usage.example.com")
        ));
        assert!(!same_origin(
            "http://127.0.0.1:8001",
            Some("127.0.0.1:8000")
        ));
        assert!(!same_origin("null", Some("null")));
        assert!(!same_origin("http://a", None));
    }

    #[test]
    fn accept_negotiation() {
        assert_eq!(negotiate(&HeaderMap::new()), Some(JSON));
        assert_eq!(negotiate(&h("application/json")), Some(JSON));
        assert_eq!(
            negotiate(&h(
                "application/graphql-response+json, application/json;q=0.9"
            )),
            Some(GRAPHQL_RESPONSE)
        );
        assert_eq!(negotiate(&h("*/*")), Some(JSON));
        assert_eq!(negotiate(&h("text/html")), None);
    }
}
