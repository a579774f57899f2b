//! The application: shared state, the router, and a server you can start in a test
//! (`Application::build` binds, port 0 picks a free one).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use sea_orm::DatabaseConnection;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::TraceLayer;

use crate::auth::JwtKeys;
use crate::config::Settings;
use crate::domain::usage::Engine;
use crate::graphql::{TollgateSchema, build_schema_with};
use crate::{http, store};

/// Everything handlers share; cheap to clone behind an Arc.
pub struct AppState {
    pub engine: Engine,
    pub settings: Arc<Settings>,
    pub keys: Arc<JwtKeys>,
    pub schema: TollgateSchema,
    pub statements: Arc<store::StatementCounter>,
    /// Open WebSockets, in total and per tenant.
    pub ws: Arc<crate::ws::Registry>,
    /// Subscriptions that execute once for every subscriber with the same document and audience.
    pub subscriptions: Arc<crate::ws::shared::Hub>,
    /// Parsed documents by their text.
    pub documents: Arc<crate::graphql::documents::Documents>,
    /// The output fields' types, for completing responses (`graphql::completion`).
    pub output_types: Arc<std::sync::OnceLock<crate::graphql::completion::OutputTypes>>,
    /// The platform team's members as last read (None before the first read): open WebSockets of
    /// platform members watch it and close when their member leaves (`watch_platform_team`).
    pub team: tokio::sync::watch::Sender<Option<Arc<std::collections::HashSet<String>>>>,
    /// The usage reads' answers, kept per caller and request (`graphql::responses`).
    pub responses: Arc<crate::graphql::responses::ResponseCache>,
    /// Rate limits per caller and operation class.
    pub rate_limits: Arc<crate::ratelimit::RateLimits>,
    /// Turns true when the server starts shutting down (WebSockets close with 1001).
    pub shutdown: tokio::sync::watch::Sender<bool>,
    /// On Postgres: whether LISTEN for other replicas' alerts is in place (part of readiness).
    pub listening: tokio::sync::watch::Sender<bool>,
    /// SQLite: checkpoints the WAL for the writer, whose commits do not (`store::connect_writer`);
    /// it ends with the state.
    _checkpointer: Option<store::Checkpointer>,
}

impl AppState {
    /// Connects, migrates and builds the schema.
    pub async fn new(settings: Settings, keys: JwtKeys) -> anyhow::Result<Self> {
        let (db, statements) = store::connect(
            settings.database_url.expose_secret(),
            settings.db_max_connections,
            settings.db_statement_timeout,
        )
        .await?;
        store::migrate(&db).await?;
        if store::bypasses_rls(&db).await? {
            tracing::warn!(
                "the database role is a superuser or has BYPASSRLS: row-level security does not apply \
                 to it; connect as an ordinary role that owns the schema"
            );
        }
        let mut state = Self::with_db(settings, keys, db, statements);
        let writer = store::connect_writer(
            state.settings.database_url.expose_secret(),
            state.settings.db_statement_timeout,
            state.statements.clone(),
            state.engine.db.writers_turn(),
        )
        .await?;
        if let Some(writer) = writer {
            state.engine.db = state.engine.db.clone().with_writer(writer.db);
            state._checkpointer = Some(writer.checkpointer);
        }
        // The metric catalogue is read once per process: before the first request, so that a burst
        // of requests (each holding its read transaction's connection) never waits for a second
        // connection to read it.
        state
            .engine
            .catalog()
            .await
            .map_err(|e| anyhow::anyhow!("reading the metric catalogue: {e:?}"))?;
        Ok(state)
    }

    pub fn with_db(
        settings: Settings,
        keys: JwtKeys,
        db: DatabaseConnection,
        statements: Arc<store::StatementCounter>,
    ) -> Self {
        crate::telemetry::handle();
        let engine = Engine::new(db, &settings);
        let documents = Arc::new(crate::graphql::documents::Documents::new(
            crate::graphql::limits::DocumentLimits::from_settings(&settings),
        ));
        let output_types: Arc<std::sync::OnceLock<crate::graphql::completion::OutputTypes>> =
            Arc::default();
        let schema = build_schema_with(&settings, documents.clone(), output_types.clone());
        AppState {
            ws: crate::ws::Registry::new(settings.ws_max_connections, settings.ws_max_per_tenant),
            subscriptions: Arc::default(),
            documents,
            output_types,
            team: tokio::sync::watch::Sender::new(None),
            rate_limits: Arc::new(crate::ratelimit::RateLimits::from_settings(&settings)),
            responses: Arc::new(crate::graphql::responses::ResponseCache::new(
                settings.response_cache_bytes,
                settings.entitlement_cache_ttl,
            )),
            shutdown: tokio::sync::watch::Sender::new(false),
            listening: tokio::sync::watch::Sender::new(false),
            _checkpointer: None,
            engine,
            settings: Arc::new(settings),
            keys: Arc::new(keys),
            schema,
            statements,
        }
    }
}

/// CORS for /graphql when origins are configured (tower-http answers preflights and adds the
/// headers); None otherwise, so browsers on other origins are refused by default.
fn cors(s: &Settings) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{HeaderName, HeaderValue, Method, header};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if s.cors_origins.is_empty() {
        return None;
    }
    let origin = if s.cors_origins.iter().any(|o| o.trim() == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            s.cors_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o.trim()).ok()),
        )
    };
    let methods: Vec<Method> = s
        .cors_methods
        .iter()
        .filter_map(|m| Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes()).ok())
        .collect();
    let headers: Vec<HeaderName> = s
        .cors_headers
        .iter()
        .filter_map(|h| HeaderName::from_bytes(h.trim().to_ascii_lowercase().as_bytes()).ok())
        .collect();
    Some(
        CorsLayer::new()
            .allow_origin(origin)
            .allow_methods(methods)
            .allow_headers(headers)
            .allow_credentials(s.cors_credentials)
            .expose_headers([header::RETRY_AFTER])
            .max_age(s.cors_max_age),
    )
}

pub fn router(state: Arc<AppState>) -> Router {
    let max_body = state.settings.max_body_bytes;
    // The limits sit inside CORS on /graphql, so a browser can read their JSON answers too.
    let graphql = get(http::graphql_get)
        .post(http::graphql_post)
        .fallback(http::method_not_allowed)
        .layer::<_, std::convert::Infallible>(DefaultBodyLimit::max(max_body))
        .layer::<_, std::convert::Infallible>(RequestBodyLimitLayer::new(max_body))
        .layer::<_, std::convert::Infallible>(axum::middleware::map_response(http::coded_limits))
        .layer::<_, std::convert::Infallible>(axum::middleware::from_fn(http::header_limit));
    let graphql = match cors(&state.settings) {
        Some(layer) => graphql.layer(layer),
        None => graphql,
    };
    Router::new()
        .route("/", get(http::playground))
        .route("/assets/{name}", get(http::asset))
        .route("/dashboard", get(crate::dashboard::page))
        .route("/dashboard/", get(crate::dashboard::page))
        .route("/dashboard/{name}", get(crate::dashboard::asset))
        .route("/healthz", get(http::healthz))
        .route("/readyz", get(http::readyz))
        .route("/metrics", get(http::metrics))
        .route("/stripe/webhook", axum::routing::post(http::stripe_webhook))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(RequestBodyLimitLayer::new(max_body))
        .layer(axum::middleware::map_response(http::coded_limits))
        .layer(axum::middleware::from_fn(http::header_limit))
        // Added after the layers above: /graphql has its own, inside its CORS.
        .route("/graphql", graphql)
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

pub struct Application {
    listener: TcpListener,
    state: Arc<AppState>,
    /// Background tasks that live as long as the server: LISTEN (which also keeps the cache in step).
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Application {
    /// Binds the configured address (port 0: a free port).
    /// On Postgres, also starts LISTEN for the alerts of every replica, and waits until it is in place
    /// so that nothing committed after this returns is missed.
    pub async fn build(state: AppState) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(state.settings.bind).await?;
        let state = Arc::new(state);
        let notifications = if state.engine.db.is_postgres() {
            let url = state.settings.database_url.expose_secret().to_owned();
            // Commits of other replicas reach this one's cache through LISTEN (this replica's own
            // commits invalidate directly, before they answer).
            let task = tokio::spawn(crate::alerts::listen(
                url,
                state.engine.bus.clone(),
                state.listening.clone(),
                state.engine.cache.clone(),
            ));
            let mut ready = state.listening.subscribe();
            tokio::time::timeout(std::time::Duration::from_secs(30), ready.wait_for(|l| *l))
                .await
                .map_err(|_| anyhow::anyhow!("LISTEN did not start within 30s"))?
                .map_err(|_| anyhow::anyhow!("the LISTEN task ended"))?;
            Some(task)
        } else {
            None
        };
        Ok(Application {
            listener,
            state,
            tasks: notifications.into_iter().collect(),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serves until `shutdown` completes, then finishes the requests in flight.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let recompute = spawn_daily_recompute(&self.state);
        // Background work: its statements are counted apart from requests' (`store::background`).
        let index = tokio::spawn(crate::store::background(materialize_periods(
            self.state.engine.clone(),
        )));
        let outbox = spawn_stripe_outbox(&self.state);
        let team = tokio::spawn(crate::store::background(watch_platform_team(
            self.state.clone(),
        )));
        let limits = self.state.rate_limits.clone();
        let forget = tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tick.tick().await;
                limits.retain_recent();
            }
        });
        let token_keys = self.state.keys.refresher().map(tokio::spawn);
        let state = self.state.clone();
        let shutdown = async move {
            shutdown.await;
            state.shutdown.send_replace(true);
        };
        // No Nagle delay: small WebSocket frames and responses go out at once.
        let listener = axum::serve::ListenerExt::tap_io(self.listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let served = axum::serve(listener, router(self.state))
            .with_graceful_shutdown(shutdown)
            .await;
        for task in recompute
            .into_iter()
            .chain(outbox)
            .chain(token_keys)
            .chain(self.tasks)
            .chain([team, forget, index])
        {
            task.abort();
        }
        served
    }
}

/// How often, at most, the platform team is read again for open WebSockets.
pub const TEAM_REFRESH: std::time::Duration = std::time::Duration::from_secs(5);

/// Keeps the platform team's snapshot, which every token check reads (no statement on a request's
/// way to its resolvers): read at start, again when a change is announced (NOTIFY from any replica or
/// the CLI, on Postgres), and every `TEAM_REFRESH` (or keep-alive, if shorter) in any case, which is
/// how a change made by another process reaches a SQLite server. Published when it changed; a
/// platform member's WebSocket sees every organization, so it closes once its member is gone.
async fn watch_platform_team(state: Arc<AppState>) {
    let every = state.settings.ws_keepalive.min(TEAM_REFRESH);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = state.engine.bus.team_changed() => {}
        }
        let Ok(members) = crate::store::team::list(state.engine.db.pool()).await else {
            continue; // the database is away: try again at the next tick
        };
        let members: std::collections::HashSet<String> =
            members.into_iter().map(|m| m.sub).collect();
        state.team.send_if_modified(|current| {
            let changed = current.as_deref() != Some(&members);
            if changed {
                *current = Some(Arc::new(members));
            }
            changed
        });
    }
}

/// The Stripe outbox: every `stripe_outbox_interval`, sends the overage charges that are due (each
/// claimed by one sender at a time, so replicas share the work without billing twice). Once a
/// period has closed, it first bills it (`billOverage`, idempotent: every replica may try).
fn spawn_stripe_outbox(state: &Arc<AppState>) -> Option<tokio::task::JoinHandle<()>> {
    let every = state.settings.stripe_outbox_interval;
    if every.is_zero() || state.settings.stripe_secret_key.is_none() {
        return None;
    }
    let engine = state.engine.clone();
    let sender = uuid::Uuid::new_v4();
    let platform = crate::domain::Viewer {
        sub: "tollgate-outbox".to_owned(),
        org_id: None,
        role: None,
        platform: true,
    };
    Some(tokio::spawn(crate::store::background(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut billed: Option<crate::domain::Period> = None;
        loop {
            tick.tick().await;
            let current = crate::domain::Period::current();
            if billed != Some(current) {
                match crate::domain::overage::bill(&engine, &platform, None).await {
                    Ok(charges) => {
                        tracing::info!(charges = charges.len(), "the last closed period is billed");
                        billed = Some(current);
                    }
                    Err(e) => tracing::error!(error = ?e, "billing the last closed period failed"),
                }
            }
            // Drain what is due, then wait for the next tick.
            loop {
                match crate::domain::overage::send_pending(&engine, sender).await {
                    Ok(0) => break,
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::error!(error = ?e, "the Stripe outbox failed a round");
                        break;
                    }
                }
            }
        }
    })))
}

/// How often the server looks whether the current period's utilization index is complete.
const INDEX_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Keeps the current period's utilization index complete: at start, and after each period begins
/// (once `MATERIALIZE_GRACE` has passed), every organization's state is written and the period
/// marked complete; until then `usageSummaries` computes its pages from the counters. Every replica
/// may do it at once (each organization is written under its period lock; the mark is idempotent).
async fn materialize_periods(engine: Engine) {
    let mut tick = tokio::time::interval(INDEX_CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let period = crate::domain::Period::current();
        let since_start =
            chrono::Utc::now().naive_utc() - period.start.and_hms_opt(0, 0, 0).unwrap_or_default();
        if since_start < crate::domain::usage::index::MATERIALIZE_GRACE {
            continue;
        }
        match engine.index_complete(period).await {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = ?e, "utilization index: reading its state failed");
                continue;
            }
        }
        match engine.materialize_period(period).await {
            Ok(n) => tracing::info!(
                organizations = n,
                period = %period.start,
                "utilization index materialized"
            ),
            Err(e) => tracing::error!(error = ?e, "utilization index: materializing failed"),
        }
    }
}

/// The seed's daily cron: every `recompute_interval`, rebuild the counters of active organizations
/// from the ledger and repair what differs (logged as a warning: a difference is a bug to chase).
fn spawn_daily_recompute(state: &Arc<AppState>) -> Option<tokio::task::JoinHandle<()>> {
    let every = state.settings.recompute_interval;
    if every.is_zero() {
        return None;
    }
    let engine = state.engine.clone();
    Some(tokio::spawn(crate::store::background(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            recompute_pass(&engine).await;
        }
    })))
}

async fn recompute_pass(engine: &Engine) {
    let orgs = match engine.recompute_targets().await {
        Ok(orgs) => orgs,
        Err(e) => {
            tracing::error!(error = ?e, "recompute: listing organizations failed");
            return;
        }
    };
    let mut differences = 0usize;
    for org in &orgs {
        match engine.recompute_org(*org, None, true).await {
            Ok(report) => {
                for d in &report.differences {
                    tracing::warn!(difference = %d, "recompute repaired a counter");
                }
                differences += report.differences.len();
            }
            Err(e) => tracing::error!(organization = %org.0, error = ?e, "recompute failed"),
        }
    }
    tracing::info!(
        organizations = orgs.len(),
        differences,
        "recompute pass done"
    );
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
