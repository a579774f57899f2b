//! Typed settings, read in one place: command-line flags with `TOLLGATE_*` environment fallbacks.
//! Secrets are `SecretString`s: they never print in logs, errors or `--help`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use rust_decimal::Decimal;
use secrecy::SecretString;

#[derive(Debug, Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Multi-tenant usage and subscription gateway"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve(ServeArgs),
    /// Apply pending migrations and the default data, then exit.
    Migrate,
    /// Manage the platform team (members see and manage every organization).
    #[command(subcommand)]
    PlatformTeam(PlatformTeamCommand),
    /// Mint a signed token with the configured secret, for trying things.
    Token(TokenArgs),
    /// Rebuild usage counters from the ledger, report every difference, and repair them.
    Recompute(RecomputeArgs),
}

#[derive(Debug, Args)]
pub struct RecomputeArgs {
    /// Only this organization (its id).
    #[arg(long)]
    pub org: Option<String>,
    /// Only this period, as YYYY-MM (a GAUGE still replays the readings before it).
    #[arg(long, value_parser = parse_period)]
    pub period: Option<crate::domain::Period>,
    /// Report differences without repairing them; exit non-zero if there is any.
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// Seed a demo organization or two with some usage, so the playground shows something at once.
    #[arg(long)]
    pub demo: bool,
}

#[derive(Debug, Subcommand)]
pub enum PlatformTeamCommand {
    /// Add a user (the token's `sub`) to the platform team.
    Add { sub: String },
    /// Remove a user from the platform team.
    Remove { sub: String },
    /// List the platform team.
    List,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The user id (`sub` claim).
    #[arg(long)]
    pub sub: String,
    /// The organization id (`org_id` claim); optional for platform-team members.
    #[arg(long)]
    pub org: Option<String>,
    /// OWNER, ADMIN, MEMBER, VIEWER, SERVICE or CUSTOMER.
    #[arg(long)]
    pub role: Option<String>,
    /// Lifetime, such as 30m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Database URL: sqlite://FILE?mode=rwc (embedded default) or postgres://...
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_DATABASE_URL",
        default_value = "sqlite://tollgate.db?mode=rwc",
        hide_env_values = true
    )]
    pub database_url: SecretString,
    /// Address to listen on.
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_BIND",
        default_value = "127.0.0.1:8000"
    )]
    pub bind: SocketAddr,
    /// Shared secret for HS256 tokens.
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_JWT_SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<SecretString>,
    /// Public key (PEM text, or a path to a PEM file) for RS256 or ES256 tokens.
    #[arg(long, global = true, env = "TOLLGATE_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<String>,
    /// Required `iss` claim, when set.
    #[arg(long, global = true, env = "TOLLGATE_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim, when set.
    #[arg(long, global = true, env = "TOLLGATE_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Generate an ephemeral signing key when none is configured (development only).
    #[arg(long, global = true)]
    pub dev: bool,
    /// Utilization (percent) at which NEAR_LIMIT fires.
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_NEAR_LIMIT_PCT",
        default_value = "80"
    )]
    pub near_limit_pct: Decimal,
    /// Guest surcharge of booking quotes, in percent of the subtotal (seed 002: 10).
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_GUEST_SURCHARGE_PCT",
        default_value = "10"
    )]
    pub guest_surcharge_pct: Decimal,
    /// Largest accepted request body, in bytes.
    #[arg(long, global = true, env = "TOLLGATE_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Most operations in one batched request.
    #[arg(long, global = true, env = "TOLLGATE_MAX_BATCH", default_value_t = 10)]
    pub max_batch: usize,
    /// Deepest accepted query (GraphiQL's introspection query needs 13).
    #[arg(long, global = true, env = "TOLLGATE_MAX_DEPTH", default_value_t = 15)]
    pub max_depth: usize,
    /// Highest accepted query complexity.
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_MAX_COMPLEXITY",
        default_value_t = 2000
    )]
    pub max_complexity: usize,
    /// Largest page a connection answers (`first`).
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_MAX_PAGE_SIZE",
        default_value_t = 100
    )]
    pub max_page_size: usize,
    /// Most items in one recordUsageBatch.
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_MAX_RECORD_BATCH",
        default_value_t = 500
    )]
    pub max_record_batch: usize,
    /// How late (in days) an occurredAt may be and still be recorded.
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_LATENESS_DAYS",
        default_value_t = 35
    )]
    pub lateness_days: u32,
    /// Largest accepted clock skew for an occurredAt in the future.
    #[arg(long, global = true, env = "TOLLGATE_CLOCK_SKEW", default_value = "2m", value_parser = parse_duration)]
    pub clock_skew: Duration,
    /// Connections in the database pool.
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_DB_MAX_CONNECTIONS",
        default_value_t = 16
    )]
    pub db_max_connections: u32,
    /// Longest a database statement may run (Postgres statement_timeout; on SQLite, the longest wait
    /// for the write lock).
    #[arg(long, global = true, env = "TOLLGATE_DB_STATEMENT_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub db_statement_timeout: Duration,
    /// Whether introspection is answered (the playground needs it).
    #[arg(long, global = true, env = "TOLLGATE_INTROSPECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub introspection: bool,
    /// How often the server recomputes the counters of active organizations from the ledger
    /// (0 turns it off).
    #[arg(long, global = true, env = "TOLLGATE_RECOMPUTE_INTERVAL", default_value = "24h", value_parser = parse_duration)]
    pub recompute_interval: Duration,
    /// How long a WebSocket may wait before its connection_init (then it closes with 4408).
    #[arg(long, global = true, env = "TOLLGATE_WS_INIT_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub ws_init_timeout: Duration,
    /// How often the server pings an idle WebSocket (keep-alive).
    #[arg(long, global = true, env = "TOLLGATE_WS_KEEPALIVE", default_value = "15s", value_parser = parse_duration)]
    pub ws_keepalive: Duration,
    /// Most open WebSockets in total.
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_WS_MAX_CONNECTIONS",
        default_value_t = 20_000
    )]
    pub ws_max_connections: usize,
    /// Most open WebSockets of one organization (or one platform-team member).
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_WS_MAX_PER_TENANT",
        default_value_t = 1_000
    )]
    pub ws_max_per_tenant: usize,
    /// How long an organization's entitlement state is answered from memory without a change
    /// being heard (changes through any replica invalidate it at once; this bounds writes made
    /// outside the servers). `0s` turns the cache off.
    #[arg(long, global = true, env = "TOLLGATE_ENTITLEMENT_CACHE_TTL", default_value = "1s", value_parser = parse_duration)]
    pub entitlement_cache_ttl: Duration,
    /// Bytes of usage reads' answers kept for the caller who asked (`graphql::responses`; valid
    /// while the entitlement cache hears of no change they depend on, and for its time to live).
    /// `0` turns the response cache off.
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_RESPONSE_CACHE_BYTES",
        default_value_t = 64 << 20
    )]
    pub response_cache_bytes: u64,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "TOLLGATE_LOG_JSON")]
    pub log_json: bool,
    /// Largest GraphQL document, in bytes (its variables are bounded by the body size).
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_MAX_DOCUMENT_BYTES",
        default_value_t = 65536
    )]
    pub max_document_bytes: usize,
    /// Most lexical tokens in one GraphQL document (counted before parsing).
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_MAX_TOKENS",
        default_value_t = 2000
    )]
    pub max_tokens: usize,
    /// Most aliases in one document (each counted once, as written).
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_MAX_ALIASES",
        default_value_t = 30
    )]
    pub max_aliases: usize,
    /// Most directives in one document (each counted once, as written).
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_MAX_DIRECTIVES",
        default_value_t = 50
    )]
    pub max_directives: usize,
    /// Most fields one document selects once its fragments are expanded where they are spread.
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_MAX_SELECTIONS",
        default_value_t = 1000
    )]
    pub max_selections: usize,
    /// Most operations running at once on one WebSocket (past it, a subscribe answers an error).
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_WS_MAX_OPERATIONS",
        default_value_t = 100
    )]
    pub ws_max_operations: usize,
    /// How long a WebSocket's outgoing frame may wait on a client that does not read before the
    /// connection is dropped.
    #[arg(long, global = true, env = "TOLLGATE_WS_SEND_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub ws_send_timeout: Duration,
    /// Origins allowed to call /graphql from a browser (comma-separated, e.g.
    /// https://app.example.com; `*` for any, without credentials). None by default. The WebSocket
    /// upgrade checks `Origin` against the same list when it is set.
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,
    /// Methods allowed from those origins.
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_CORS_METHODS",
        value_delimiter = ',',
        default_value = "GET,POST"
    )]
    pub cors_methods: Vec<String>,
    /// Request headers allowed from those origins.
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_CORS_HEADERS",
        value_delimiter = ',',
        default_value = "authorization,content-type"
    )]
    pub cors_headers: Vec<String>,
    /// Whether browsers may send credentials (cookies) cross-origin (not with `*`).
    #[arg(long, global = true, env = "TOLLGATE_CORS_CREDENTIALS", default_value_t = false, action = clap::ArgAction::Set)]
    pub cors_credentials: bool,
    /// How long browsers may cache a preflight answer.
    #[arg(long, global = true, env = "TOLLGATE_CORS_MAX_AGE", default_value = "10m", value_parser = parse_duration)]
    pub cors_max_age: Duration,
    /// Rate limits per operation class, `on` or `off` (for benchmarks and bulk loads).
    #[arg(long, global = true, env = "TOLLGATE_RATE_LIMITS", default_value = "on", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub rate_limits: bool,
    /// People's tokens (OWNER, ADMIN, MEMBER, VIEWER, CUSTOMER): usage recordings, as `N/m`
    /// (per s, m or h), optionally `,burst=B`, or `unlimited`.
    #[arg(long, global = true, env = "TOLLGATE_RATE_PEOPLE_RECORD", default_value = "60/m", value_parser = parse_rate)]
    pub rate_people_record: Rate,
    /// People's tokens: queries and subscriptions.
    #[arg(long, global = true, env = "TOLLGATE_RATE_PEOPLE_QUERY", default_value = "100/m", value_parser = parse_rate)]
    pub rate_people_query: Rate,
    /// People's tokens: other mutations (plan changes, adjustments).
    #[arg(long, global = true, env = "TOLLGATE_RATE_PEOPLE_ADMIN", default_value = "30/m", value_parser = parse_rate)]
    pub rate_people_admin: Rate,
    /// SERVICE tokens: usage recordings.
    #[arg(long, global = true, env = "TOLLGATE_RATE_SERVICE_RECORD", default_value = "unlimited", value_parser = parse_rate)]
    pub rate_service_record: Rate,
    /// SERVICE tokens: queries and subscriptions.
    #[arg(long, global = true, env = "TOLLGATE_RATE_SERVICE_QUERY", default_value = "unlimited", value_parser = parse_rate)]
    pub rate_service_query: Rate,
    /// SERVICE tokens: other mutations.
    #[arg(long, global = true, env = "TOLLGATE_RATE_SERVICE_ADMIN", default_value = "unlimited", value_parser = parse_rate)]
    pub rate_service_admin: Rate,
    /// The platform team: usage recordings.
    #[arg(long, global = true, env = "TOLLGATE_RATE_PLATFORM_RECORD", default_value = "unlimited", value_parser = parse_rate)]
    pub rate_platform_record: Rate,
    /// The platform team: queries and subscriptions.
    #[arg(long, global = true, env = "TOLLGATE_RATE_PLATFORM_QUERY", default_value = "unlimited", value_parser = parse_rate)]
    pub rate_platform_query: Rate,
    /// The platform team: other mutations.
    #[arg(long, global = true, env = "TOLLGATE_RATE_PLATFORM_ADMIN", default_value = "unlimited", value_parser = parse_rate)]
    pub rate_platform_admin: Rate,
    /// URL of a JSON Web Key Set (an identity provider's public keys) for RS256 or ES256 tokens,
    /// fetched at boot and chosen by the token's `kid`.
    #[arg(long, global = true, env = "TOLLGATE_JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,
    /// How often the JWKS is fetched again (a token with an unknown `kid` also fetches it, at most
    /// once a minute).
    #[arg(long, global = true, env = "TOLLGATE_JWT_JWKS_REFRESH", default_value = "5m", value_parser = parse_duration)]
    pub jwt_jwks_refresh: Duration,
    /// Signing secret of the Stripe webhook endpoint (whsec_...), for POST /stripe/webhook;
    /// several, comma-separated, while one is rotated. Without it the endpoint answers 503.
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_STRIPE_WEBHOOK_SECRET",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub stripe_webhook_secret: Vec<SecretString>,
    /// Signing secret of a second webhook endpoint for Connect events (Stripe signs events of
    /// connected accounts with their own endpoint's secret), if one is set up.
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_STRIPE_CONNECT_WEBHOOK_SECRET",
        hide_env_values = true
    )]
    pub stripe_connect_webhook_secret: Option<SecretString>,
    /// Stripe secret key (sk_...), for the calls Tollgate makes to Stripe (Connect). Without it,
    /// those answer a coded error and nothing else changes.
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_STRIPE_SECRET_KEY",
        hide_env_values = true
    )]
    pub stripe_secret_key: Option<SecretString>,
    /// How often the outbox sends pending overage charges to Stripe (0 turns it off; it runs only
    /// with a secret key).
    #[arg(long, global = true, env = "TOLLGATE_STRIPE_OUTBOX_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub stripe_outbox_interval: Duration,
    /// Stripe's API base URL (tests point it at a local fake).
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_STRIPE_API_BASE",
        default_value = "https://api.stripe.com"
    )]
    pub stripe_api_base: String,
}

/// A rate limit: `per_minute`-style quota with a burst, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    Unlimited,
    /// `count` operations per `period`, at most `burst` at once.
    Limited {
        count: u32,
        period: Duration,
        burst: u32,
    },
}

/// Parses `60/m`, `10/s,burst=20`, `1000/h` or `unlimited`.
pub fn parse_rate(s: &str) -> Result<Rate, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("unlimited") || s.eq_ignore_ascii_case("off") {
        return Ok(Rate::Unlimited);
    }
    let bad = || format!("invalid rate {s:?}: use e.g. 60/m, 10/s,burst=20, or unlimited");
    let (rate, burst) = match s.split_once(',') {
        Some((r, b)) => (r.trim(), Some(b.trim())),
        None => (s, None),
    };
    let (count, unit) = rate.split_once('/').ok_or_else(bad)?;
    let count: u32 = count.trim().parse().map_err(|_| bad())?;
    let period = match unit.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        _ => return Err(bad()),
    };
    let burst = match burst {
        Some(b) => b
            .strip_prefix("burst=")
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(bad)?,
        None => count,
    };
    if count == 0 || burst == 0 {
        return Err(format!(
            "{}: the count and the burst must be at least 1",
            bad()
        ));
    }
    Ok(Rate::Limited {
        count,
        period,
        burst,
    })
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "1" => Ok(true),
        "off" | "false" | "0" => Ok(false),
        _ => Err(format!("{s:?}: use on or off")),
    }
}

impl Settings {
    /// Defaults for a given database, as in tests and tools; everything else as without flags.
    pub fn parse_from_env_and(args: &[&str]) -> Result<Self, clap::Error> {
        let mut argv = vec!["tollgate"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map(|cli| cli.settings)
    }

    pub fn is_sqlite(&self) -> bool {
        use secrecy::ExposeSecret;
        self.database_url.expose_secret().starts_with("sqlite:")
    }

    /// The database URL with any password replaced, for logs.
    pub fn database_url_redacted(&self) -> String {
        use secrecy::ExposeSecret;
        redact_url(self.database_url.expose_secret())
    }

    /// Every `TOLLGATE_*` variable a setting reads, from the clap definitions themselves (flags of
    /// every subcommand included), so the accepted set cannot drift from the settings.
    pub fn known_variables() -> Vec<String> {
        use clap::CommandFactory;
        fn walk(cmd: &clap::Command, out: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                if let Some(env) = arg.get_env().and_then(|e| e.to_str()) {
                    out.push(env.to_owned());
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, out);
            }
        }
        let mut out = Vec::new();
        walk(&Cli::command(), &mut out);
        out.sort();
        out.dedup();
        out
    }

    /// Rejects `TOLLGATE_*` variables that no setting reads: a typo must not silently fall back to a
    /// default.
    pub fn check_environment() -> Result<(), String> {
        let known = Self::known_variables();
        let unknown: Vec<String> = std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .filter(|k| k.starts_with("TOLLGATE_") && !k.starts_with("TOLLGATE_TEST_"))
            .filter(|k| !known.contains(k))
            .collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "unknown setting(s) in the environment: {}",
                unknown.join(", ")
            ))
        }
    }

    /// Checks that need more than one field, at boot.
    pub fn validate(&self) -> Result<(), String> {
        if self.near_limit_pct <= Decimal::ZERO || self.near_limit_pct > Decimal::ONE_HUNDRED {
            return Err("near-limit-pct must be in (0, 100]".into());
        }
        if self.guest_surcharge_pct < Decimal::ZERO
            || self.guest_surcharge_pct > Decimal::ONE_HUNDRED
            || self.guest_surcharge_pct.scale() > 4
        {
            return Err("guest-surcharge-pct must be in [0, 100], with at most 4 places".into());
        }
        if self.max_batch == 0 || self.max_page_size == 0 || self.max_record_batch == 0 {
            return Err("max-batch, max-page-size and max-record-batch must be at least 1".into());
        }
        if self.ws_init_timeout.is_zero() || self.ws_keepalive.is_zero() {
            return Err("ws-init-timeout and ws-keepalive must be at least 1s".into());
        }
        if self.max_tokens == 0
            || self.max_document_bytes == 0
            || self.max_selections == 0
            || self.ws_max_operations == 0
            || self.ws_send_timeout.is_zero()
        {
            return Err(
                "max-tokens, max-selections, ws-max-operations and ws-send-timeout must be at least 1"
                    .into(),
            );
        }
        let wildcard = self.cors_origins.iter().any(|o| o.trim() == "*");
        if wildcard && self.cors_origins.len() > 1 {
            return Err("TOLLGATE_CORS_ORIGINS: `*` stands alone".into());
        }
        if wildcard && self.cors_credentials {
            return Err(
                "TOLLGATE_CORS_ORIGINS=* is not allowed with TOLLGATE_CORS_CREDENTIALS=true".into(),
            );
        }
        let star = |list: &[String]| list.iter().any(|x| x.trim() == "*");
        if self.cors_credentials && (star(&self.cors_methods) || star(&self.cors_headers)) {
            return Err(
                "TOLLGATE_CORS_METHODS and TOLLGATE_CORS_HEADERS may not be * with TOLLGATE_CORS_CREDENTIALS=true: list them"
                    .into(),
            );
        }
        for origin in self.cors_origins.iter().filter(|o| o.trim() != "*") {
            let o = origin.trim();
            // An origin is scheme://host[:port]: no path, query or fragment (a browser sends
            // nothing else, so anything more could never match).
            let rest = o
                .strip_prefix("https://")
                .or_else(|| o.strip_prefix("http://"));
            let ok = rest.is_some_and(|r| !r.is_empty() && !r.contains(['/', '?', '#', '@', ' ']))
                && axum::http::HeaderValue::from_str(o).is_ok();
            if !ok {
                return Err(format!(
                    "TOLLGATE_CORS_ORIGINS: {o:?} is not an origin such as https://app.example.com"
                ));
            }
        }
        for m in &self.cors_methods {
            if axum::http::Method::from_bytes(m.trim().as_bytes()).is_err() {
                return Err(format!("TOLLGATE_CORS_METHODS: {m:?} is not a method"));
            }
        }
        for h in &self.cors_headers {
            if axum::http::HeaderName::from_bytes(h.trim().as_bytes()).is_err() {
                return Err(format!("TOLLGATE_CORS_HEADERS: {h:?} is not a header name"));
            }
        }
        let key_sources = [
            self.jwt_secret.is_some(),
            self.jwt_public_key.is_some(),
            self.jwt_jwks_url.is_some(),
        ];
        if key_sources.iter().filter(|set| **set).count() > 1 {
            return Err(
                "set only one of TOLLGATE_JWT_SECRET, TOLLGATE_JWT_PUBLIC_KEY and TOLLGATE_JWT_JWKS_URL"
                    .into(),
            );
        }
        if self.jwt_jwks_refresh.is_zero() {
            return Err("jwt-jwks-refresh must be at least 1s".into());
        }
        Ok(())
    }
}

fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..scheme_end + 3], user, &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Parses a period written `YYYY-MM`.
pub fn parse_period(s: &str) -> Result<crate::domain::Period, String> {
    chrono::NaiveDate::parse_from_str(&format!("{}-01", s.trim()), "%Y-%m-%d")
        .ok()
        .filter(|d| crate::domain::bounded_date("period", *d).is_ok())
        .map(crate::domain::Period::containing)
        .ok_or_else(|| {
            format!(
                "invalid period {s:?}: use YYYY-MM between {} and {}, e.g. 2026-11",
                crate::domain::MIN_DATE.format("%Y-%m"),
                crate::domain::MAX_DATE.format("%Y-%m")
            )
        })
}

/// Parses `90s`, `30m`, `1h`, `7d` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: use e.g. 90s, 30m, 1h, 7d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("invalid duration unit in {s:?}: use s, m, h or d")),
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604800)));
        assert!(parse_duration("1y").is_err());
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn periods_parse() {
        let p = parse_period("2026-02").unwrap();
        assert_eq!(p.start.to_string(), "2026-02-01");
        assert!(parse_period("2026-13").is_err());
        assert!(parse_period("Feb").is_err());
        assert!(parse_period("+262142-12").is_err());
        assert!(parse_period("1969-12").is_err());
    }

    #[test]
    fn cors_settings_are_checked_at_boot() {
        let check = |args: &[&str]| Settings::parse_from_env_and(args).unwrap().validate();
        assert!(
            check(&[
                "--cors-origins",
                "https://app.example.com,http://localhost:5173"
            ])
            .is_ok()
        );
        for bad in [
            &["--cors-origins", "https://a.com/path"][..],
            &["--cors-origins", "https://a.com/"],
            &["--cors-origins", "null"],
            &["--cors-origins", "*,https://a.com"],
            &["--cors-origins", "*", "--cors-credentials", "true"],
            &[
                "--cors-origins",
                "https://a.com",
                "--cors-headers",
                "*",
                "--cors-credentials",
                "true",
            ],
            &[
                "--cors-origins",
                "https://a.com",
                "--cors-methods",
                "*",
                "--cors-credentials",
                "true",
            ],
        ] {
            assert!(check(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rates_parse() {
        assert_eq!(
            parse_rate("60/m"),
            Ok(Rate::Limited {
                count: 60,
                period: Duration::from_secs(60),
                burst: 60
            })
        );
        assert_eq!(
            parse_rate("10/s,burst=20"),
            Ok(Rate::Limited {
                count: 10,
                period: Duration::from_secs(1),
                burst: 20
            })
        );
        assert_eq!(parse_rate("unlimited"), Ok(Rate::Unlimited));
        for bad in ["0/m", "60", "60/d", "60/m,burst=0", "60/m,b=3", "x/m"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_setting_has_its_variable_known() {
        let known = Settings::known_variables();
        for v in [
            "TOLLGATE_ENTITLEMENT_CACHE_TTL",
            "TOLLGATE_DATABASE_URL",
            "TOLLGATE_RATE_PEOPLE_RECORD",
            "TOLLGATE_CORS_ORIGINS",
        ] {
            assert!(known.iter().any(|k| k == v), "{v}");
        }
    }

    #[test]
    fn one_token_key_source_at_most() {
        let url = "https://idp.example/.well-known/jwks.json";
        let secret = "0123456789abcdef0123456789abcdef";
        let ok = Settings::parse_from_env_and(&["--jwt-jwks-url", url]).unwrap();
        assert!(ok.validate().is_ok());
        assert_eq!(ok.jwt_jwks_refresh, Duration::from_secs(300));
        for both in [
            vec!["--jwt-jwks-url", url, "--jwt-secret", secret],
            vec!["--jwt-jwks-url", url, "--jwt-public-key", "key.pem"],
            vec!["--jwt-secret", secret, "--jwt-public-key", "key.pem"],
        ] {
            let s = Settings::parse_from_env_and(&both).unwrap();
            assert!(
                s.validate().unwrap_err().contains("only one of"),
                "{both:?}"
            );
        }
        let zero = Settings::parse_from_env_and(&["--jwt-jwks-refresh", "0s"]).unwrap();
        assert!(zero.validate().is_err());
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(
            redact_url("sqlite://x.db?mode=rwc"),
            "sqlite://x.db?mode=rwc"
        );
    }
}
