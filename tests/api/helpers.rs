//! `spawn_app()`: each test gets its own database (a SQLite file, or a fresh database in a throwaway
//! Postgres cluster the harness starts itself) and a real server on a random port.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::{Value, json};
use tollgate::app::{AppState, Application};
use tollgate::auth::JwtKeys;
use tollgate::config::Settings;
use tollgate::domain::{Period, Role};

pub const SECRET: &str = "test-secret-0123456789abcdef0123456789abcdef";
pub const PLATFORM_SUB: &str = "platform-admin";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub client: reqwest::Client,
    pub state: Arc<AppState>,
    /// Keys that mint tokens this server accepts (with `--jwt-secret`; with a JWKS they are the
    /// server's own, which cannot mint: a test signs with the private keys it holds).
    pub keys: Arc<JwtKeys>,
    /// The database this server runs on, for the CLI (`tollgate recompute`) in tests.
    pub database_url: String,
    _dir: Option<tempfile::TempDir>,
}

/// Runs `$body` (an async fn taking a `TestApp`) once on SQLite and once on Postgres, with optional
/// extra server flags.
#[macro_export]
macro_rules! both_engines {
    ($name:ident, $body:path) => {
        $crate::both_engines!($name, $body, &[]);
    };
    ($name:ident, $body:path, $args:expr) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                if let Some(app) =
                    $crate::helpers::spawn_app($crate::helpers::Engine::Sqlite, $args).await
                {
                    $body(app).await;
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                if let Some(app) =
                    $crate::helpers::spawn_app($crate::helpers::Engine::Postgres, $args).await
                {
                    $body(app).await;
                }
            }
        }
    };
}

/// A fresh database: a SQLite file in a temp dir (kept alive by the returned guard), or a new
/// database in the shared Postgres cluster. None when Postgres is not installed (and not required).
pub fn database(engine: Engine) -> Option<(String, Option<tempfile::TempDir>)> {
    Some(match engine {
        Engine::Sqlite => {
            let dir = tempfile::tempdir().expect("temp dir");
            let url = format!("sqlite://{}?mode=rwc", dir.path().join("test.db").display());
            (url, Some(dir))
        }
        Engine::Postgres => (postgres_database()?, None),
    })
}

pub async fn spawn_app(engine: Engine, extra_args: &[&str]) -> Option<TestApp> {
    spawn_app_with_keys(engine, &["--jwt-secret", SECRET], extra_args).await
}

/// `spawn_app` with other key settings in place of `--jwt-secret`, such as `--jwt-jwks-url URL`
/// (the server's keys are then built as `tollgate serve` builds them, the JWKS fetched at boot).
pub async fn spawn_app_with_keys(
    engine: Engine,
    key_args: &[&str],
    extra_args: &[&str],
) -> Option<TestApp> {
    // Logs only when asked: TEST_LOG=tollgate::sql=trace shows every statement.
    if let Ok(filter) = std::env::var("TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
    let (url, dir) = database(engine)?;
    let mut args = vec!["--database-url", url.as_str(), "--bind", "127.0.0.1:0"];
    args.extend_from_slice(key_args);
    // The seed's rate limits would throttle the tests' bursts of ADMIN requests: off unless a test
    // turns them on.
    if !extra_args.contains(&"--rate-limits") {
        args.extend_from_slice(&["--rate-limits", "off"]);
    }
    args.extend_from_slice(extra_args);
    let settings = Settings::parse_from_env_and(&args).expect("settings");
    let server_keys = JwtKeys::from_settings_async(&settings).await.expect("keys");
    // A JWKS is fetched once, by the server; a test signs its own tokens with the private keys.
    let keys = if settings.jwt_jwks_url.is_some() {
        None
    } else {
        Some(Arc::new(JwtKeys::from_settings(&settings).expect("keys")))
    };
    let state = AppState::new(settings.clone(), server_keys)
        .await
        .expect("state");
    let keys = keys.unwrap_or_else(|| state.keys.clone());
    tollgate::store::team::add(&state.engine.db, PLATFORM_SUB, Some("test"))
        .await
        .expect("platform team");
    let app = Application::build(state).await.expect("bind");
    let addr = app.local_addr().expect("addr");
    let state = app.state();
    tokio::spawn(app.run_until(std::future::pending()));
    until_index_materialized(&state).await;
    Some(TestApp {
        addr,
        client: reqwest::Client::new(),
        state,
        keys,
        database_url: url,
        _dir: dir,
    })
}

/// Waits until the server's first materialization of the current period's utilization index (a
/// background task at start, once the period is a minute old) is done, so that a test editing index
/// rows is never raced by it. In a period's first minute the server does not materialize at start
/// (its next look is a minute later), and a test then runs without waiting.
async fn until_index_materialized(state: &AppState) {
    let period = Period::current();
    let age = chrono::Utc::now().naive_utc() - period.start.and_hms_opt(0, 0, 0).unwrap();
    if age < tollgate::domain::usage::index::MATERIALIZE_GRACE {
        return;
    }
    tokio::time::timeout(Duration::from_secs(60), async {
        while !state.engine.index_complete(period).await.unwrap_or(false) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the server materializes the period's utilization index at start");
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Waits until the server has read the platform team once (it does at start).
    pub async fn until_team_read(&self) {
        let mut team = self.state.team.subscribe();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            team.wait_for(|t| t.is_some()),
        )
        .await
        .expect("the platform team is read")
        .expect("the team's watch");
    }

    /// Waits until `n` subscriptions listen for events, so that what a test does next is heard
    /// (a fixed pause is a guess that a loaded machine can lose).
    pub async fn until_listening(&self, n: usize) {
        let bus = &self.state.engine.bus;
        tokio::time::timeout(Duration::from_secs(20), async {
            while bus.listeners() < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{} of {n} subscriptions listen", bus.listeners()));
    }

    pub fn token(&self, sub: &str, org: Option<&str>, role: Option<Role>) -> String {
        self.keys
            .mint(sub, org, role, Duration::from_secs(3600))
            .expect("mint")
    }

    pub fn platform_token(&self) -> String {
        self.token(PLATFORM_SUB, None, None)
    }

    pub fn tenant_token(&self, org: &str, role: Role) -> String {
        self.token(
            &format!("user-{}-{}", role.as_str().to_lowercase(), &org[..8]),
            Some(org),
            Some(role),
        )
    }

    /// POSTs a GraphQL request and answers (HTTP status, JSON body).
    pub async fn post(&self, token: Option<&str>, query: &str, variables: Value) -> (u16, Value) {
        post_graphql(&self.client, &self.url("/graphql"), token, query, variables)
            .await
            .expect("request")
    }

    /// The JSON body of a GraphQL request.
    pub async fn gql(&self, token: &str, query: &str, variables: Value) -> Value {
        self.post(Some(token), query, variables).await.1
    }

    /// `data` of a request that must succeed.
    pub async fn ok(&self, token: &str, query: &str, variables: Value) -> Value {
        let body = self.gql(token, query, variables).await;
        assert!(body.get("errors").is_none(), "unexpected errors: {body}");
        body["data"].clone()
    }

    pub async fn create_org(&self, slug: &str, plan: &str) -> String {
        let data = self
            .ok(
                &self.platform_token(),
                "mutation($i: CreateOrganizationInput!) { createOrganization(input: $i) { id } }",
                json!({ "i": { "name": slug.to_uppercase(), "slug": slug, "planCode": plan } }),
            )
            .await;
        data["createOrganization"]["id"]
            .as_str()
            .expect("id")
            .to_owned()
    }

    /// Creates or updates a plan as the platform team, with one bookings limit: `bookings` is the
    /// rest of the limit input after `metric`, e.g. `included: "100", enforcement: HARD`.
    pub async fn upsert_plan(
        &self,
        code: &str,
        name: &str,
        rank: i32,
        price: &str,
        bookings: &str,
    ) {
        let query = format!(
            "mutation {{ upsertPlan(input: {{code: {code:?}, name: {name:?}, rank: {rank}, priceMonthly: {price:?}, \
             limits: [{{metric: \"bookings\", {bookings}}}]}}) {{ code }} }}"
        );
        let data = self.ok(&self.platform_token(), &query, json!({})).await;
        assert_eq!(data["upsertPlan"]["code"], code);
    }

    /// Runs SQL behind the server's back (to make a counter drift).
    pub async fn sql(&self, sql: &str) {
        tollgate::store::execute(&self.state.engine.db, sql, vec![])
            .await
            .expect("sql");
    }

    pub async fn record(&self, token: &str, metric: &str, quantity: &str) -> Value {
        self.gql(
            token,
            "mutation($i: RecordUsageInput!) { recordUsage(input: $i) { accepted duplicate rejectionReason usage { used allowance exceeded } alerts { kind } } }",
            json!({ "i": { "metric": metric, "quantity": quantity } }),
        )
        .await
    }
}

/// Runs a command of the `tollgate` binary against database `db`; answers (success, output).
pub async fn tollgate_cli(db: &str, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["--database-url", db])
        .args(args)
        .env_remove("TOLLGATE_DATABASE_URL")
        .output()
        .await
        .expect("run tollgate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs `$body` (an async fn taking an `Engine`) once per engine, for tests that start their own
/// server processes.
#[macro_export]
macro_rules! per_engine {
    ($name:ident, $body:path) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                $body($crate::helpers::Engine::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                $body($crate::helpers::Engine::Postgres).await;
            }
        }
    };
}

/// POSTs a GraphQL request to `url`; answers (HTTP status, JSON body), or the transport error.
pub async fn post_graphql(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    query: &str,
    variables: Value,
) -> Result<(u16, Value), reqwest::Error> {
    let mut req = client
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/graphql-response+json")
        .json(&json!({ "query": query, "variables": variables }));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await?))
}

/// The string at `path` in every item of a JSON list, e.g. `pluck(&nodes, &["metric", "code"])`.
pub fn pluck<'a>(list: &'a Value, path: &[&str]) -> Vec<&'a str> {
    list.as_array()
        .map(|items| {
            items
                .iter()
                .map(|item| {
                    path.iter()
                        .fold(item, |v, key| &v[*key])
                        .as_str()
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The first error code of a response.
pub fn code(body: &Value) -> Option<&str> {
    body["errors"][0]["extensions"]["code"].as_str()
}

// ---- a throwaway Postgres cluster, shared by the tests of this process ----

struct Cluster {
    port: u16,
}

static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();

fn pg_bin_dir() -> Option<PathBuf> {
    if let Ok(out) = Command::new("sh")
        .arg("-c")
        .arg("command -v initdb")
        .output()
        && out.status.success()
    {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let resolved = std::fs::canonicalize(&p).unwrap_or(p);
        return resolved.parent().map(Path::to_path_buf);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn run_pg(bin: &Path, tool: &str, args: &[&str]) -> bool {
    let exe = bin.join(tool);
    let status = if is_root() {
        Command::new("runuser")
            .arg("-u")
            .arg("postgres")
            .arg("--")
            .arg(&exe)
            .args(args)
            .status()
    } else {
        Command::new(&exe).args(args).status()
    };
    status.map(|s| s.success()).unwrap_or(false)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(55432)
}

fn start_cluster() -> Option<Cluster> {
    let require = std::env::var("TOLLGATE_TEST_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
    let Some(bin) = pg_bin_dir() else {
        assert!(
            !require,
            "TOLLGATE_TEST_REQUIRE_POSTGRES=1 but PostgreSQL's initdb was not found"
        );
        eprintln!("PostgreSQL binaries not found: skipping the Postgres variant");
        return None;
    };
    let dir = std::env::temp_dir().join(format!(
        "tollgate-pg-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).expect("pg dir");
    if is_root() {
        let ok = Command::new("chown")
            .arg("-R")
            .arg("postgres:postgres")
            .arg(&dir)
            .status()
            .map(|s| s.success());
        assert!(
            matches!(ok, Ok(true)),
            "cannot chown the Postgres temp dir to the postgres user"
        );
    }
    let data = dir.join("data");
    let data_s = data.to_string_lossy().to_string();
    assert!(
        run_pg(
            &bin,
            "initdb",
            &[
                "-D",
                &data_s,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync"
            ]
        ),
        "initdb failed"
    );
    let port = free_port();
    let opts = format!(
        "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off -c max_connections=400 -c shared_buffers=64MB",
        dir.display()
    );
    let log = dir.join("pg.log").to_string_lossy().to_string();
    assert!(
        run_pg(
            &bin,
            "pg_ctl",
            &[
                "-D", &data_s, "-o", &opts, "-l", &log, "-w", "-t", "60", "start"
            ]
        ),
        "pg_ctl start failed"
    );
    // Stop the cluster when this test process exits, whichever way it exits.
    let me = std::process::id();
    let stop = format!(
        "while kill -0 {me} 2>/dev/null; do sleep 1; done; {} {}/pg_ctl -D {data_s} -m immediate stop >/dev/null 2>&1; rm -rf {}",
        if is_root() {
            "runuser -u postgres --"
        } else {
            ""
        },
        bin.display(),
        dir.display()
    );
    let _ = Command::new("sh")
        .arg("-c")
        .arg(stop)
        .stdin(std::process::Stdio::null())
        .spawn();
    // The server connects as an ordinary role: row-level security does not apply to superusers.
    assert!(
        psql(
            &bin,
            port,
            "CREATE ROLE tollgate LOGIN NOSUPERUSER NOBYPASSRLS"
        ),
        "CREATE ROLE failed"
    );
    Some(Cluster { port })
}

fn psql(bin: &Path, port: u16, sql: &str) -> bool {
    Command::new(bin.join("psql"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-q",
            "-c",
            sql,
        ])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A fresh database in the shared cluster, or None when Postgres is not installed (and not required).
fn postgres_database() -> Option<String> {
    let cluster = CLUSTER.get_or_init(start_cluster).as_ref()?;
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let bin = pg_bin_dir()?;
    assert!(
        psql(
            &bin,
            cluster.port,
            &format!("CREATE DATABASE {name} OWNER tollgate")
        ),
        "CREATE DATABASE failed"
    );
    Some(format!(
        "postgres://tollgate@127.0.0.1:{}/{name}",
        cluster.port
    ))
}
