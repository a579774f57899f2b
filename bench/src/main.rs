//! tollgate-bench: starts a release `tollgate serve` process on a database, seeds it, drives it over
//! HTTP and WebSocket, and prints one results table with the ceilings and the target ratios.
//!
//! Usage (see bench/run.sh, which builds in release and provides a throwaway Postgres):
//!   tollgate-bench --server target/release/tollgate --database-url sqlite:///tmp/b.db?mode=rwc

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tollgate::auth::JwtKeys;
use tollgate::config::Settings;
use tollgate::domain::Role;

mod bulk;
mod fanout;
mod floor;
mod sqlfloor;
mod wsraw;

const SECRET: &str = "bench-secret-0123456789abcdef0123456789abcdef";
const PLATFORM: &str = "bench-platform";

static ONLY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

#[derive(Parser, Debug)]
struct Args {
    /// The server binary (a release build).
    #[arg(long)]
    server: String,
    /// The database to run on (a fresh one: the harness seeds it).
    #[arg(long)]
    database_url: String,
    /// A label for the table (sqlite, postgres).
    #[arg(long, default_value = "db")]
    engine: String,
    /// How long each measurement runs.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Organizations to seed.
    #[arg(long, default_value_t = 1000)]
    orgs: usize,
    /// Tenant WebSocket subscribers of the fan-out at scale (issue 14 point 6), spread over
    /// `--fanout-orgs` organizations, half on usageUpdated and half on usageAlerts (0 skips it).
    #[arg(long, default_value_t = 50_000)]
    subscribers: usize,
    /// Organizations the fan-out's subscribers and recordings are spread over (the first of the
    /// seeded ones).
    #[arg(long, default_value_t = 1000)]
    fanout_orgs: usize,
    /// Recordings per second across the fan-out's organizations (evenly paced per organization).
    #[arg(long, default_value_t = 1000.0)]
    fanout_rate: f64,
    /// How long the fan-out's recordings run.
    #[arg(long, default_value_t = 20)]
    fanout_seconds: u64,
    /// Platform-team subscribers to every organization's alerts, with the machine floor of the
    /// same frame over raw TCP (the fan-out of earlier runs; 0 skips it).
    #[arg(long, default_value_t = 0)]
    platform_subscribers: usize,
    /// Measure the platform page again after adding organizations in SQL up to this many (0
    /// skips it).
    #[arg(long, default_value_t = 0)]
    page_scale: usize,
    /// Ledger events of the big organization (the small one gets 1%).
    #[arg(long, default_value_t = 1_000_000)]
    big_ledger: usize,
    /// Only the measurements whose name contains this (the framework ceiling always runs), e.g. to
    /// profile one of them.
    #[arg(long)]
    only: Option<String>,
    /// Fan-out: connect and acknowledge the WebSockets without subscribing (to split the memory
    /// per subscriber between the connection and the subscription).
    #[arg(long)]
    connect_only: bool,
    /// Database connections of the server (and of the storage-ceiling loop).
    #[arg(long, default_value_t = 16)]
    pool: u32,
}

/// Whether a measurement runs under `--only`.
fn wanted(name: &str) -> bool {
    ONLY.get()
        .and_then(|o| o.as_deref())
        .is_none_or(|only| name.contains(only))
}

struct Server {
    child: Child,
    addr: SocketAddr,
}

/// The server's rate-limit flags for this run (see `Server::start`).
fn rate_limit_args() -> Vec<&'static str> {
    if std::env::var("BENCH_RATE_LIMITS").is_ok_and(|v| v == "on") {
        let mut args = vec!["--rate-limits", "on"];
        for flag in [
            "--rate-people-record",
            "--rate-people-query",
            "--rate-people-admin",
            "--rate-service-record",
            "--rate-service-query",
            "--rate-service-admin",
        ] {
            args.extend([flag, "1000000/s"]);
        }
        args
    } else {
        vec!["--rate-limits", "off"]
    }
}

impl Server {
    async fn start(args: &Args) -> Result<Server> {
        Server::start_with(args, &[]).await
    }

    /// A server with more flags (`extra`, before `serve`).
    async fn start_with(args: &Args, extra: &[&str]) -> Result<Server> {
        let ws_max = (args.subscribers.max(args.platform_subscribers) + 10_000)
            .max(60_000)
            .to_string();
        let mut child = Command::new(&args.server)
            .args(["--database-url", &args.database_url])
            .args(["--bind", "127.0.0.1:0", "--jwt-secret", SECRET])
            .args([
                "--ws-max-connections",
                &ws_max,
                "--ws-max-per-tenant",
                &ws_max,
            ])
            .args(["--db-max-connections", &args.pool.to_string()])
            .args(["--recompute-interval", "0", "--max-page-size", "100"])
            // The seed's per-person limits would throttle the load: off, unless BENCH_RATE_LIMITS=on,
            // which measures the limiter's cost with every class of the bench's tokens (viewers,
            // services) checked against a limit far above the load.
            .args(rate_limit_args())
            .args(extra)
            .arg("serve")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("start the server")?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let addr = loop {
            let Some(line) = lines.next_line().await? else {
                bail!("the server exited before listening");
            };
            if let Some(a) = line.strip_prefix("tollgate listening on http://") {
                break a.trim().parse()?;
            }
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Server { child, addr })
    }

    /// CPU time the server process has used (user + system), in seconds.
    fn cpu_seconds(&self) -> f64 {
        self.child.id().map_or(0.0, cpu_seconds)
    }

    fn rss_kib(&self) -> u64 {
        let Some(pid) = self.child.id() else { return 0 };
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    }
}

/// Runs a measurement and adds to its note the server's and the harness's CPU time per operation
/// (warm-up included, so slightly high): both share the machine's vCPUs, and a read with a larger
/// answer costs the harness more too.
async fn with_cpu(server: &Server, secs: u64, row: impl std::future::Future<Output = Row>) -> Row {
    let (server0, own0) = (server.cpu_seconds(), cpu_seconds(std::process::id()));
    let mut row = row.await;
    let (server1, own1) = (server.cpu_seconds(), cpu_seconds(std::process::id()));
    let n = row.ops * secs as f64;
    if n > 0.0 {
        let cpu = format!(
            "{:.0} µs server CPU an operation ({:.0} µs the harness's)",
            (server1 - server0) / n * 1e6,
            (own1 - own0) / n * 1e6
        );
        row.add_note(cpu);
    }
    row
}

/// CPU time a process has used (user + system), in seconds, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // After the command name (in parentheses), utime and stime are the 12th and 13th fields.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks / hz
}

fn keys() -> JwtKeys {
    let settings = Settings::parse_from_env_and(&["--jwt-secret", SECRET]).expect("settings");
    JwtKeys::from_settings(&settings).expect("keys")
}

fn mint(sub: &str, org: Option<&str>, role: Option<Role>) -> String {
    keys()
        .mint(sub, org, role, Duration::from_secs(6 * 3600))
        .expect("mint")
}

#[derive(Clone)]
struct Http {
    client: reqwest::Client,
    url: String,
}

impl Http {
    /// Posts `body` as `token`: the answer's status and bytes.
    async fn send(&self, token: &str, body: &Value) -> Result<(reqwest::StatusCode, Vec<u8>)> {
        let resp = self
            .client
            .post(&self.url)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await?;
        let status = resp.status();
        Ok((status, resp.bytes().await?.into()))
    }

    async fn post(&self, token: &str, body: &Value) -> Result<Value> {
        let (status, bytes) = self.send(token, body).await?;
        let v: Value = serde_json::from_slice(&bytes)?;
        if !status.is_success() || v.get("errors").is_some() {
            bail!("{status}: {v}");
        }
        Ok(v)
    }
}

/// What the harness reads of a platform page.
struct PageRead {
    nodes: usize,
    total_count: u64,
}

impl Http {
    /// Posts a platform page and checks its answer without building it: a 40 KB page parsed into
    /// values cost the load generator (on the same two vCPUs) more than answering it costs the
    /// server. The server writes its JSON with serde_json, so it is well formed; what is checked is
    /// that it is a page and not an error: 200, the `data.usageSummaries.nodes` prefix, no `errors`
    /// key, and its nodes counted by the first field each one has (`organization`, the selection's
    /// first, which the server keeps first).
    async fn post_page(&self, token: &str, body: &Value) -> Result<PageRead> {
        let (status, bytes) = self.send(token, body).await?;
        let text = std::str::from_utf8(&bytes)?;
        if !status.is_success()
            || !text.starts_with("{\"data\":{\"usageSummaries\":{")
            || text.contains("\"errors\":")
        {
            bail!("{status}: {text}");
        }
        let total_count = text
            .find("\"totalCount\":")
            .map(|i| &text[i + "\"totalCount\":".len()..])
            .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
            .unwrap_or(0);
        Ok(PageRead {
            nodes: text.matches("{\"organization\":").count(),
            total_count,
        })
    }
}

/// One measured scenario.
struct Row {
    name: String,
    concurrency: usize,
    ops: f64,
    p50: Duration,
    p99: Duration,
    note: String,
}

impl Row {
    /// Adds to the row's note, after what it already says.
    fn add_note(&mut self, note: String) {
        self.note = if self.note.is_empty() {
            note
        } else {
            format!("{}; {note}", self.note)
        };
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs `op` from `concurrency` tasks for `seconds` (after a short warm-up); `op(task, n)` does one
/// operation and answers how many units it did (1, or the items of a batch).
async fn drive<F, Fut>(name: &str, concurrency: usize, seconds: u64, op: F) -> Row
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<u64>> + Send,
{
    if let Some(only) = ONLY.get().and_then(|o| o.as_deref())
        && !name.contains(only)
        && !name.starts_with("framework")
    {
        return Row {
            name: name.to_owned(),
            concurrency,
            ops: 0.0,
            p50: Duration::ZERO,
            p99: Duration::ZERO,
            note: "skipped".into(),
        };
    }
    let op = Arc::new(op);
    let warmup = Duration::from_millis(700);
    let measure = Duration::from_secs(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut units = 0u64;
            let mut errors = 0u64;
            let mut abandoned = 0u64;
            let mut n = 0u64;
            loop {
                let began = Instant::now();
                if began - start > warmup + measure {
                    break;
                }
                // An operation still running 2 s after the window is abandoned, not counted: a
                // slow page (seconds a request) would otherwise hold the run for minutes.
                let limit = (start + warmup + measure + Duration::from_secs(2))
                    .saturating_duration_since(began)
                    .max(Duration::from_secs(2));
                let r = tokio::time::timeout(limit, op(t, n)).await;
                n += 1;
                // Abandoned ones are told even when they began in the warm-up (a page slower than
                // the whole window).
                let Ok(r) = r else {
                    abandoned += 1;
                    continue;
                };
                if began - start < warmup {
                    continue;
                }
                match r {
                    Ok(u) => {
                        units += u;
                        lat.push(began.elapsed());
                    }
                    Err(e) => {
                        errors += 1;
                        if errors <= 3 {
                            eprintln!("{t}: {e:#}");
                        }
                    }
                }
            }
            (lat, units, errors, abandoned)
        }));
    }
    let mut lat = Vec::new();
    let (mut units, mut errors, mut abandoned) = (0u64, 0u64, 0u64);
    for t in tasks {
        let (l, u, e, a) = t.await.expect("task");
        lat.extend(l);
        units += u;
        errors += e;
        abandoned += a;
    }
    lat.sort();
    let row = Row {
        name: name.to_owned(),
        concurrency,
        ops: units as f64 / measure.as_secs_f64(),
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        note: [
            lat.is_empty()
                .then(|| "no operation completed in the window".to_owned()),
            (errors > 0).then(|| format!("{errors} errors")),
            (abandoned > 0).then(|| {
                format!("{abandoned} unfinished 2 s after the window (abandoned, not counted)")
            }),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("; "),
    };
    eprintln!(
        "  {:<44} c={:<3} {:>10.0}/s  p50 {:>9.3?}  p99 {:>9.3?} {}",
        row.name, row.concurrency, row.ops, row.p50, row.p99, row.note
    );
    row
}

/// Drives one read query, each task as the viewer of its own organization.
async fn viewer_query(
    name: &str,
    concurrency: usize,
    seconds: u64,
    http: &Http,
    tokens: &Arc<Vec<(String, String)>>,
    body: Value,
) -> Row {
    let (h, t, body) = (http.clone(), tokens.clone(), Arc::new(body));
    drive(name, concurrency, seconds, move |task, _| {
        let (h, t, body) = (h.clone(), t.clone(), body.clone());
        async move {
            h.post(&t[task % t.len()].1, &body).await?;
            Ok(1)
        }
    })
    .await
}

/// Raises this process's open-file limit (soft and hard: the bench runs as root, which may raise
/// the hard one) before the server is spawned, so that the server inherits it: the fan-out holds
/// 50,000 sockets on each side. Falls back to the hard limit when raising it is refused.
fn raise_fd_limit() {
    const WANTED: libc::rlim_t = 1 << 20;
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        let raised = libc::rlimit {
            rlim_cur: WANTED.max(lim.rlim_cur),
            rlim_max: WANTED.max(lim.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            eprintln!("open files: {} (hard {})", lim.rlim_cur, lim.rlim_max);
        }
    }
}

/// This process's open-file limit (soft).
fn open_files_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed to it.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur
    } else {
        1024
    }
}

struct Seeded {
    orgs: Vec<String>,
    small: String,
    big: String,
}

/// Organizations on Growth, a few bookings each (so utilization spreads from 0% to 99%), and two
/// organizations whose ledgers hold 1% and 100% of `big_ledger` events, inserted in bulk in SQL
/// with their counters set to match.
async fn seed(args: &Args, http: &Http, platform: &str) -> Result<Seeded> {
    let mut orgs = Vec::with_capacity(args.orgs);
    for i in 0..args.orgs + 2 {
        let v = http
            .post(
                platform,
                &json!({ "query": "mutation($i: CreateOrganizationInput!) { createOrganization(input: $i) { id } }",
                         "variables": { "i": { "name": format!("Org {i}"), "slug": format!("org-{i:05}"), "planCode": "growth" } } }),
            )
            .await?;
        orgs.push(
            v["data"]["createOrganization"]["id"]
                .as_str()
                .context("id")?
                .to_owned(),
        );
    }
    let big = orgs.pop().context("big")?;
    let small = orgs.pop().context("small")?;
    // Spread utilization: org i gets (i % 100) * 10 bookings of Growth's 1000, in batches of 100.
    let mut items: Vec<Value> = Vec::new();
    for (i, org) in orgs.iter().enumerate() {
        let q = (i % 100) * 10;
        if q > 0 {
            items.push(
                json!({ "organizationId": org, "metric": "bookings", "quantity": q.to_string() }),
            );
        }
        if items.len() == 100 || i + 1 == orgs.len() {
            http.post(
                platform,
                &json!({ "query": "mutation($i: [RecordUsageInput!]!) { recordUsageBatch(inputs: $i) { accepted } }",
                         "variables": { "i": items } }),
            )
            .await?;
            items.clear();
        }
    }
    let (pool, _) =
        tollgate::store::connect(&args.database_url, 2, Duration::from_secs(600)).await?;
    let db = tollgate::store::db::Db::new(pool, std::time::Duration::from_secs(30));
    for (org, n) in [(&small, args.big_ledger / 100), (&big, args.big_ledger)] {
        bulk::bulk_ledger(&db, org, n).await?;
    }
    Ok(Seeded { orgs, small, big })
}

/// 10K (or `--platform-subscribers`) platform WebSocket subscribers to every organization's alerts; each
/// round raises one alert and times its arrival at every subscriber after the mutation answered.
async fn fan_out(
    args: &Args,
    server: &Server,
    http: &Http,
    platform: &str,
) -> Result<(Row, f64, usize, usize)> {
    let before = server.rss_kib();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    // The length of a delivered frame's text, for the machine floor.
    let frame_len = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut ready = 0usize;
    let mut conns = Vec::new();
    let init = json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {platform}") } });
    let sub = json!({ "type": "subscribe", "id": "a", "payload": { "query": "subscription { usageAlerts { id } }" } });
    for chunk in 0..args.platform_subscribers.div_ceil(500) {
        let mut batch = Vec::new();
        for _ in 0..500.min(args.platform_subscribers - chunk * 500) {
            let addr = server.addr;
            let (init, sub, tx) = (init.clone(), sub.clone(), tx.clone());
            let connect_only = args.connect_only;
            let frame_len = frame_len.clone();
            batch.push(tokio::spawn(async move {
                let mut ws =
                    wsraw::Subscriber::connect(addr, "/graphql", "graphql-transport-ws").await?;
                ws.send_text(&init.to_string()).await?;
                match ws.next().await? {
                    Some((wsraw::TEXT, ack)) if ack.windows(14).any(|w| w == b"connection_ack") => {
                    }
                    other => bail!("expected connection_ack, got {other:?}"),
                }
                if !connect_only {
                    ws.send_text(&sub.to_string()).await?;
                }
                let task = tokio::spawn(async move {
                    while let Ok(Some((opcode, text))) = ws.next().await {
                        if opcode != wsraw::TEXT {
                            continue;
                        }
                        let has = |s: &[u8]| text.windows(s.len()).any(|w| w == s);
                        if has(b"\"next\"") && has(b"usageAlerts") {
                            let _ = tx.send(Instant::now());
                            frame_len.store(text.len(), std::sync::atomic::Ordering::Relaxed);
                        } else if has(b"\"ping\"") {
                            let _ = ws.send_text("{\"type\":\"pong\"}").await;
                        }
                    }
                });
                anyhow::Ok(task)
            }));
        }
        for b in batch {
            match b.await? {
                Ok(task) => {
                    ready += 1;
                    conns.push(task);
                }
                Err(e) => eprintln!("subscriber failed: {e:#}"),
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = server.rss_kib();
    let per_sub = (after.saturating_sub(before)) as f64 * 1024.0 / ready.max(1) as f64;
    eprintln!("  {ready} subscribers; server RSS {before} KiB -> {after} KiB");

    let mut lat = Vec::new();
    let cpu_before = server.cpu_seconds();
    let own_before = cpu_seconds(std::process::id());
    for round in 0..5 {
        let v = http
            .post(
                platform,
                &json!({ "query": "mutation($i: CreateOrganizationInput!) { createOrganization(input: $i) { id } }",
                         "variables": { "i": { "name": format!("Fan {round}"), "slug": format!("fan-{round}"), "planCode": "basic" } } }),
            )
            .await?;
        let org = v["data"]["createOrganization"]["id"]
            .as_str()
            .context("id")?
            .to_owned();
        let service = mint("svc", Some(&org), Some(Role::Service));
        // 85 of Basic's 100 bookings: one NEAR_LIMIT alert.
        http.post(
            &service,
            &json!({ "query": "mutation { recordUsage(input: {metric: \"bookings\", quantity: \"85\"}) { accepted } }" }),
        )
        .await?;
        let answered = Instant::now();
        let mut got = 0;
        while got < ready {
            match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                Ok(Some(at)) => {
                    lat.push(at.saturating_duration_since(answered));
                    got += 1;
                }
                _ => break,
            }
        }
        if got < ready {
            eprintln!("  round {round}: {got} of {ready} subscribers got the alert");
        }
        let mut this_round = lat[lat.len() - got..].to_vec();
        this_round.sort();
        eprintln!(
            "  round {round}: p50 {:?}, p99 {:?}, last {:?}",
            percentile(&this_round, 0.5),
            percentile(&this_round, 0.99),
            this_round.last().copied().unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Server CPU over the rounds (the ten mutations included), per delivery.
    let cpu_us = (server.cpu_seconds() - cpu_before) * 1e6 / lat.len().max(1) as f64;
    let own_us = (cpu_seconds(std::process::id()) - own_before) * 1e6 / lat.len().max(1) as f64;
    lat.sort();
    for c in conns {
        c.abort();
    }
    let row = Row {
        name: "alert fan-out (delivery after the mutation answered)".into(),
        concurrency: ready,
        ops: lat.len() as f64,
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        note: format!(
            "{:.1} KiB server memory per subscriber; {cpu_us:.1} µs server CPU per delivery \
             ({own_us:.1} µs the load generator's)",
            per_sub / 1024.0
        ),
    };
    let frame_len = frame_len.load(std::sync::atomic::Ordering::Relaxed);
    Ok((row, per_sub, ready, frame_len))
}

#[tokio::main]
async fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("floor-writer") {
        return floor::writer(&argv[2..]);
    }
    let args = Args::parse();
    let _ = ONLY.set(args.only.clone());
    raise_fd_limit();
    let (ok, out) = {
        let o = std::process::Command::new(&args.server)
            .args(["--database-url", &args.database_url])
            .args(["platform-team", "add", PLATFORM])
            .output()?;
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    if !ok {
        bail!("platform-team add failed: {out}");
    }
    let server = Server::start(&args).await?;
    let http = Http {
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()?,
        url: format!("http://{}/graphql", server.addr),
    };
    let platform = mint(PLATFORM, None, None);
    eprintln!(
        "seeding {} organizations and {} + {} ledger events ({})",
        args.orgs,
        args.big_ledger / 100,
        args.big_ledger,
        args.engine
    );
    let seeded = Arc::new(seed(&args, &http, &platform).await?);
    let tokens: Arc<Vec<(String, String)>> = Arc::new(
        seeded
            .orgs
            .iter()
            .map(|o| {
                (
                    mint("bench-service", Some(o), Some(Role::Service)),
                    mint("bench-viewer", Some(o), Some(Role::Viewer)),
                )
            })
            .collect(),
    );
    let secs = args.seconds;
    let mut rows: Vec<Row> = Vec::new();
    eprintln!("measuring, {secs}s each");

    // Framework ceiling: the cheapest authenticated request through the same server.
    for c in [1, 64] {
        let body = json!({ "query": "{ __typename }" });
        rows.push(
            with_cpu(
                &server,
                secs,
                viewer_query(
                    "framework ceiling: { __typename }",
                    c,
                    secs,
                    &http,
                    &tokens,
                    body,
                ),
            )
            .await,
        );
    }

    // recordUsage at 1, 16, 64.
    let run = uuid::Uuid::new_v4().simple().to_string();
    for c in [1, 16, 64] {
        let (h, t, run) = (http.clone(), tokens.clone(), run.clone());
        rows.push(
            with_cpu(
                &server,
                secs,
                drive("recordUsage", c, secs, move |task, n| {
                    let (h, t, run) = (h.clone(), t.clone(), run.clone());
                    async move {
                        let body = json!({ "query": "mutation($k: String!) { recordUsage(input: {metric: \"bookings\", quantity: \"1\", idempotencyKey: $k}) { accepted usage { used } } }",
                                           "variables": { "k": format!("{run}-{c}-{task}-{n}") } });
                        h.post(&t[task % t.len()].0, &body).await?;
                        Ok(1)
                    }
                }),
            )
            .await,
        );
    }

    // The bare-SQL floor of the minimal recording, on the same database, same organizations.
    if wanted("SQL floor") {
        let period = tollgate::domain::Period::current().start;
        let orgs: Arc<Vec<uuid::Uuid>> = Arc::new(
            seeded
                .orgs
                .iter()
                .take(64)
                .map(|o| uuid::Uuid::parse_str(o))
                .collect::<Result<_, _>>()?,
        );
        let floor = Arc::new(sqlfloor::Floor::open(&args.database_url, 64).await?);
        floor.prepare(&orgs, period).await?;
        let durability = floor.durability().await?;
        let postgres = matches!(*floor, sqlfloor::Floor::Postgres(_));
        let (shape, conns) = if postgres {
            (
                "one statement (a data-modifying CTE), autocommit",
                "a connection per task",
            )
        } else {
            (
                "two statements in one transaction (BEGIN IMMEDIATE)",
                "one connection shared by every task",
            )
        };
        for (c, per_txn) in [(1, 1), (64, 1), (64, 10)] {
            let name = if per_txn == 1 {
                format!("SQL floor: minimal recording, {shape}")
            } else {
                format!("SQL floor: {per_txn} recordings per transaction (recordings/s)")
            };
            let (f, o) = (floor.clone(), orgs.clone());
            let mut row = drive(&name, c, secs, move |task, _| {
                let (f, o) = (f.clone(), o.clone());
                async move {
                    f.record(o[task % o.len()], period, per_txn).await?;
                    Ok(per_txn as u64)
                }
            })
            .await;
            let note = format!(
                "counter update with its cap check + ledger insert, no HTTP/GraphQL; {conns}; {durability}"
            );
            row.add_note(note);
            rows.push(row);
        }
    }

    // Storage ceiling: the same transaction as recordUsage (Engine::record) in a bare loop against
    // the same database, no HTTP or GraphQL.
    {
        // Built as the server builds it (its pools, SQLite's writer connection and checkpointer).
        let settings = Settings::parse_from_env_and(&[
            "--database-url",
            &args.database_url,
            "--db-max-connections",
            &args.pool.to_string(),
        ])?;
        let state = tollgate::app::AppState::new(settings, keys()).await?;
        let engine = Arc::new(state.engine.clone());
        let viewers: Arc<Vec<tollgate::domain::Viewer>> = Arc::new(
            seeded
                .orgs
                .iter()
                .map(|o| tollgate::domain::Viewer {
                    sub: "bench-service".into(),
                    org_id: Some(tollgate::domain::OrganizationId(
                        uuid::Uuid::parse_str(o).unwrap_or_default(),
                    )),
                    role: Some(Role::Service),
                    platform: false,
                })
                .collect(),
        );
        let run = run.clone();
        rows.push(
            drive(
                "storage ceiling: recordUsage's transaction, bare loop",
                64,
                secs,
                move |task, n| {
                    let (engine, viewers, run) = (engine.clone(), viewers.clone(), run.clone());
                    async move {
                        let v = &viewers[task % viewers.len()];
                        let e = engine.scoped(v.scope());
                        e.record(
                            v,
                            tollgate::domain::usage::RecordInput {
                                organization_id: None,
                                metric: "bookings".into(),
                                quantity: rust_decimal::Decimal::ONE,
                                idempotency_key: Some(format!("{run}-bare-{task}-{n}")),
                                reference: None,
                                occurred_at: None,
                            },
                        )
                        .await
                        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
                        e.db.release().await;
                        Ok(1)
                    }
                },
            )
            .await,
        );
    }

    // recordUsageBatch, 100 items a request (throughput in items/s).
    {
        let (h, t, run) = (http.clone(), tokens.clone(), run.clone());
        rows.push(
            drive("recordUsageBatch (items/s, 100 a request)", 16, secs, move |task, n| {
                let (h, t, run) = (h.clone(), t.clone(), run.clone());
                async move {
                    let items: Vec<Value> = (0..100)
                        .map(|i| json!({ "metric": "bookings", "quantity": "1", "idempotencyKey": format!("{run}-b-{task}-{n}-{i}") }))
                        .collect();
                    let body = json!({ "query": "mutation($i: [RecordUsageInput!]!) { recordUsageBatch(inputs: $i) { accepted } }", "variables": { "i": items } });
                    h.post(&t[task % t.len()].0, &body).await?;
                    Ok(100)
                }
            })
            .await,
        );
    }

    let summary = Arc::new(
        json!({ "query": "query Summary { organization { usage { hasExceededLimits exceededLimitsDetails metrics { metric { code } used allowance remaining utilizationPct exceeded overageAmount } } } }" }),
    );
    rows.push(
        with_cpu(
            &server,
            secs,
            viewer_query(
                "usage summary of one organization",
                64,
                secs,
                &http,
                &tokens,
                (*summary).clone(),
            ),
        )
        .await,
    );
    // The platform page, with the arguments issue 14 adds when the server has them.
    let page = platform_page(&http, &platform).await;
    let page_1000 = rows.len();
    rows.push(
        with_cpu(
            &server,
            secs,
            page_row(
                &format!("platform page at {} organizations", args.orgs),
                secs,
                &http,
                &platform,
                &page,
            ),
        )
        .await,
    );
    let check = json!({ "query": "query Check { checkEntitlement(metric: \"bookings\", quantity: \"1\") { allowed remaining wouldExceed } }" });
    rows.push(viewer_query("checkEntitlement", 64, secs, &http, &tokens, check).await);
    // The ceiling again, next to the reads it is compared with (the machine drifts during a run).
    let body = json!({ "query": "{ __typename }" });
    rows.push(
        with_cpu(
            &server,
            secs,
            viewer_query("framework ceiling, again", 64, secs, &http, &tokens, body),
        )
        .await,
    );
    // The same two reads executed every time: a second server on the same database with the
    // response cache off (what a read costs when it is not kept: the first time, or after a write).
    if wanted("executed") || wanted("platform page") || wanted("summary") {
        let executed = Server::start_with(&args, &["--response-cache-bytes", "0"]).await?;
        let http_executed = Http {
            client: http.client.clone(),
            url: format!("http://{}/graphql", executed.addr),
        };
        rows.push(
            viewer_query(
                "usage summary of one organization, executed (response cache off)",
                64,
                secs,
                &http_executed,
                &tokens,
                (*summary).clone(),
            )
            .await,
        );
        rows.push(
            page_row(
                &format!(
                    "platform page at {} organizations, executed (response cache off)",
                    args.orgs
                ),
                secs,
                &http_executed,
                &platform,
                &page,
            )
            .await,
        );
    }

    // Cost as the ledger grows: the same summary for an organization with 1% and 100% of the events,
    // measured in alternating rounds so drift affects both alike; each row keeps the median of its
    // rounds' p50.
    let mut ledger_rows = HashMap::new();
    let mut rounds: HashMap<&str, Vec<Row>> = HashMap::new();
    for _ in 0..3 {
        for (label, org) in [("small", seeded.small.clone()), ("big", seeded.big.clone())] {
            let token = Arc::new(mint("bench-viewer", Some(&org), Some(Role::Viewer)));
            let (h, body) = (http.clone(), summary.clone());
            let events = if label == "small" {
                args.big_ledger / 100
            } else {
                args.big_ledger
            };
            let name = format!("summary, ledger of {events} events");
            let row = drive(&name, 16, secs.div_ceil(2), move |_, _| {
                let (h, body, token) = (h.clone(), body.clone(), token.clone());
                async move {
                    h.post(&token, &body).await?;
                    Ok(1)
                }
            })
            .await;
            rounds.entry(label).or_default().push(row);
        }
    }
    for label in ["small", "big"] {
        let mut rs = rounds.remove(label).unwrap_or_default();
        rs.sort_by_key(|r| r.p50);
        if !rs.is_empty() {
            let mut median = rs.swap_remove(rs.len() / 2);
            median.note = "median of 3 alternating rounds".into();
            ledger_rows.insert(label, rows.len());
            rows.push(median);
        }
    }

    if args.platform_subscribers > 0 && wanted("alert fan-out") {
        eprintln!(
            "platform fan-out: connecting {} WebSocket subscribers",
            args.platform_subscribers
        );
        let (mut row, _per_sub, ready, frame_len) =
            fan_out(&args, &server, &http, &platform).await?;
        // Let the subscribers' sockets close before the floor opens as many.
        tokio::time::sleep(Duration::from_secs(1)).await;
        eprintln!("machine floor: the same frame over raw TCP to {ready} sockets");
        let (lat, floor_cpu_us, readers_us) = floor::measure(ready, frame_len.max(1), 5).await?;
        let floor_p99 = percentile(&lat, 0.99);
        row.note = format!(
            "{}; p99 {:.1}x the machine floor's",
            row.note,
            row.p99.as_secs_f64() / floor_p99.as_secs_f64().max(1e-9)
        );
        rows.push(row);
        rows.push(Row {
            name: format!(
                "machine floor: the same {frame_len}-byte frame over raw loopback TCP, no server"
            ),
            concurrency: ready,
            ops: lat.len() as f64,
            p50: percentile(&lat, 0.5),
            p99: floor_p99,
            note: format!(
                "a writer thread per vCPU, a blocking write per socket, read by a task per socket; \
                 {floor_cpu_us:.1} µs writer CPU per message ({readers_us:.1} µs the readers')"
            ),
        });
    }

    // Fan-out at scale: tenant subscribers over many organizations under paced recordings.
    let scale = if args.subscribers > 0 && wanted("fan-out") {
        // Each side holds a socket per subscriber: the harness and the server (which inherited
        // this process's limit) can hold what the open-file limit leaves, less a reserve for the
        // database, HTTP and the listener, and the harness's connections for the paced recordings
        // (up to twice the rate in workers).
        let limit = open_files_limit();
        let room = limit.saturating_sub(1_500 + 2 * args.fanout_rate.ceil() as u64) as usize;
        let subscribers = args.subscribers.min(room);
        let clamped = (subscribers < args.subscribers).then(|| {
            format!(
                "asked {} subscribers; the open-file limit is {limit} per process (hard; raising it was refused), \
                 so {subscribers} were connected",
                args.subscribers
            )
        });
        if let Some(c) = &clamped {
            eprintln!("fan-out: {c}");
        }
        let f = args.fanout_orgs.min(seeded.orgs.len());
        if f < args.fanout_orgs {
            eprintln!(
                "fan-out: only {f} organizations are seeded (--orgs), not {}",
                args.fanout_orgs
            );
        }
        eprintln!(
            "fan-out: {subscribers} tenant subscribers over {f} organizations, {}/s recordings for {} s",
            args.fanout_rate, args.fanout_seconds
        );
        let orgs: Vec<(String, String, String)> = seeded
            .orgs
            .iter()
            .zip(tokens.iter())
            .take(f)
            .map(|(o, (service, viewer))| (o.clone(), service.clone(), viewer.clone()))
            .collect();
        // The first 64 organizations took the earlier measurements' recordings: the crossings are
        // chosen among the others.
        let outcome = fanout::run(
            &server,
            &http,
            fanout::Setup {
                subscribers,
                orgs: &orgs,
                rate: args.fanout_rate,
                seconds: args.fanout_seconds,
                crossings: fanout::crossing_orgs(f, 64, 10),
                run: run.clone(),
            },
        )
        .await?;
        let mut fan_rows = outcome.rows;
        if let Some(c) = clamped {
            for r in fan_rows.iter_mut().skip(1) {
                r.note = format!("**{c}**; {}", r.note);
            }
        }
        rows.extend(fan_rows);
        // Let the subscribers' sockets close before what follows.
        tokio::time::sleep(Duration::from_secs(2)).await;
        Some((
            outcome.per_sub,
            outcome.updated_p99,
            outcome.alerts_p99,
            subscribers,
        ))
    } else {
        None
    };

    // The platform page again, with organizations added in SQL up to --page-scale.
    let page_scaled = if args.page_scale > 0 && wanted("platform page") {
        let (pool, _) =
            tollgate::store::connect(&args.database_url, 2, Duration::from_secs(600)).await?;
        let db = tollgate::store::db::Db::new(pool, Duration::from_secs(30));
        // The page at the run's own scale again, right before organizations are added: the two
        // scales are compared between neighbouring measurements, not across the whole run (the
        // fan-out and the host's drift come between the first page and this point).
        let again = page_row(
            &format!(
                "platform page at {} organizations, again before adding",
                args.orgs
            ),
            secs,
            &http,
            &platform,
            &page,
        )
        .await;
        rows.push(again);
        let again = rows.len() - 1;
        let began = Instant::now();
        let added = bulk::bulk_orgs(&db, args.page_scale).await?;
        eprintln!(
            "added {} organizations in SQL ({} in all) in {:.1?}; index filled: {}",
            added.added,
            added.total,
            began.elapsed(),
            if added.filled.is_empty() {
                "none (the schema has no index columns)".to_owned()
            } else {
                added.filled.join(", ")
            }
        );
        // The entitlement cache's time to live: nothing cached before the insert is served after.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // One page alone first, timed: what a page costs when too few complete in the window.
        let probe_began = Instant::now();
        let probe =
            tokio::time::timeout(Duration::from_secs(120), http.post(&platform, &page.body)).await;
        let probe = match probe {
            Ok(Ok(_)) => format!("one page alone took {:.2?}", probe_began.elapsed()),
            Ok(Err(e)) => format!("one page alone failed: {e:#}"),
            Err(_) => "one page alone took over 120 s".into(),
        };
        eprintln!("  {probe}");
        let mut row = page_row(
            &format!("platform page at {} organizations", added.total),
            secs,
            &http,
            &platform,
            &page,
        )
        .await;
        row.note = format!(
            "{}; {probe}; {} organizations added in SQL (bench/src/bulk.rs bulk_orgs), index filled: {}",
            row.note,
            added.added,
            if added.filled.is_empty() {
                "none in the schema".to_owned()
            } else {
                added.filled.join(", ")
            }
        );
        rows.push(row);
        Some((again, rows.len() - 1))
    } else {
        None
    };

    // The table.
    println!("\n### {} ({} organizations)\n", args.engine, args.orgs);
    println!("| measure | concurrency | throughput/s | p50 | p99 | note |");
    println!("|---|---:|---:|---:|---:|---|");
    for r in &rows {
        println!(
            "| {} | {} | {:.0} | {:.2} ms | {:.2} ms | {} |",
            r.name,
            r.concurrency,
            r.ops,
            r.p50.as_secs_f64() * 1000.0,
            r.p99.as_secs_f64() * 1000.0,
            r.note
        );
    }
    let find = |name: &str, c: usize| {
        rows.iter()
            .find(|r| r.name.starts_with(name) && r.concurrency == c)
            .map(|r| r.ops)
            .filter(|ops| *ops > 0.0)
    };
    // The mean of the two ceiling measurements around the reads.
    let ceilings: Vec<f64> = rows
        .iter()
        .filter(|r| r.name.starts_with("framework ceiling") && r.concurrency == 64)
        .map(|r| r.ops)
        .filter(|ops| *ops > 0.0)
        .collect();
    let ceiling =
        (!ceilings.is_empty()).then(|| ceilings.iter().sum::<f64>() / ceilings.len() as f64);
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let postgres = !args.database_url.starts_with("sqlite:");
    println!("\n| target | measured | goal | met |");
    println!("|---|---:|---:|---|");
    // A target's row; `measured` None when the run could not measure it (then it is not met).
    let target = |name: &str,
                  measured: Option<f64>,
                  digits: usize,
                  goal: &str,
                  met: &dyn Fn(f64) -> bool| {
        match measured {
            Some(m) => println!(
                "| {name} | {m:.digits$} | {goal} | {} |",
                if met(m) { "yes" } else { "**no**" }
            ),
            None => println!("| {name} | not measured | {goal} | **no** |"),
        }
    };
    // A ratio shown for reading, with no goal.
    let reference = |name: &str, measured: Option<f64>| match measured {
        Some(r) => println!("| {name} | {r:.2} | (reference) | — |"),
        None => println!("| {name} | not measured | (reference) | — |"),
    };
    let rec64 = find("recordUsage", 64);
    let floor64 = find("SQL floor: minimal recording", 64);
    if postgres {
        target("recordUsage c=64 (/s)", rec64, 0, ">= 5,000", &|m| {
            m >= 5000.0
        });
        target(
            "recordUsage c=64 / SQL floor (one statement) c=64",
            ratio(rec64, floor64),
            2,
            ">= 0.80",
            &|m| m >= 0.8,
        );
    } else {
        target("recordUsage c=64 (/s)", rec64, 0, ">= 20,000", &|m| {
            m >= 20_000.0
        });
        match ratio(rec64, floor64) {
            Some(r) => println!(
                "| recordUsage c=64 / SQL floor (two statements in a transaction) c=64 | {r:.2} | (reference) | — |"
            ),
            None => println!(
                "| recordUsage c=64 / SQL floor (two statements in a transaction) c=64 | not measured | (reference) | — |"
            ),
        }
    }
    let batch = find("recordUsageBatch", 16);
    if postgres {
        target("recordUsageBatch (items/s)", batch, 0, ">= 20,000", &|m| {
            m >= 20_000.0
        });
    } else {
        target("recordUsageBatch (items/s)", batch, 0, ">= 50,000", &|m| {
            m >= 50_000.0
        });
    }
    let page_ops = rows.get(page_1000).map(|r| r.ops).filter(|o| *o > 0.0);
    target(
        "platform page / framework ceiling",
        ratio(page_ops, ceiling),
        2,
        ">= 0.50",
        &|m| m >= 0.5,
    );
    let ops_of = |i: Option<usize>| {
        i.and_then(|i| rows.get(i))
            .map(|r| r.ops)
            .filter(|o| *o > 0.0)
    };
    let scaled_ops = ops_of(page_scaled.map(|(_, i)| i));
    let scaled_to = page_scaled
        .map(|_| args.page_scale.to_string())
        .unwrap_or_else(|| "the scaled count".into());
    target(
        &format!(
            "platform page throughput, {} (measured right before adding) / {scaled_to} organizations",
            args.orgs,
        ),
        ratio(ops_of(page_scaled.map(|(again, _)| again)), scaled_ops),
        2,
        "<= 1.20",
        &|m| m <= 1.2,
    );
    reference(
        &format!(
            "platform page throughput, {} (the run's first page) / {scaled_to} organizations",
            args.orgs,
        ),
        ratio(page_ops, scaled_ops),
    );
    target(
        "summary / framework ceiling",
        ratio(find("usage summary", 64), ceiling),
        2,
        ">= 0.80",
        &|m| m >= 0.8,
    );
    // What the two reads cost executed (the response cache off): a reference, not a target.
    for (name, row) in [
        (
            "summary executed / framework ceiling",
            "usage summary of one organization, executed",
        ),
        (
            "platform page executed / framework ceiling",
            "platform page at",
        ),
    ] {
        let executed = rows
            .iter()
            .find(|r| r.name.starts_with(row) && r.name.contains("executed"))
            .map(|r| r.ops)
            .filter(|ops| *ops > 0.0);
        reference(name, ratio(executed, ceiling));
    }
    let p50 = |label: &str| {
        ledger_rows
            .get(label)
            .and_then(|&i| rows.get(i))
            .map(|r| r.p50.as_secs_f64())
            .filter(|p| *p > 0.0)
    };
    target(
        "summary p50, big ledger / small ledger",
        ratio(p50("big"), p50("small")),
        2,
        "<= 1.20",
        &|m| m <= 1.2,
    );
    let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
    match scale {
        Some((per_sub, updated, alerts, subscribers)) => {
            let at = if subscribers < 50_000 {
                format!(", at {subscribers} subscribers (the target's is 50,000)")
            } else {
                format!(", at {subscribers} subscribers")
            };
            target(
                &format!("fan-out p99, usageUpdated (ms){at}"),
                ms(updated),
                1,
                "< 100",
                &|m| m < 100.0,
            );
            target(
                &format!("fan-out p99, usageAlerts (ms){at}"),
                ms(alerts),
                1,
                "< 100",
                &|m| m < 100.0,
            );
            target(
                &format!("fan-out server memory per subscriber (KiB){at}"),
                Some(per_sub / 1024.0),
                2,
                "<= 8",
                &|m| m <= 8.0,
            );
        }
        None => target(
            "fan-out at scale",
            None,
            0,
            "p99 < 100 ms, <= 8 KiB",
            &|_| false,
        ),
    }
    drop(server);
    Ok(())
}

/// The platform page's request and what to say of it: issue 14's arguments when the server's
/// schema has them (introspection, once), today's otherwise.
struct Page {
    body: Arc<Value>,
    note: String,
}

async fn platform_page(http: &Http, platform: &str) -> Page {
    // The platform view's columns (dashboard/src/operations.graphql, PlatformView).
    // Without totalCount, which counts the whole matching range (O(matching), read only when asked).
    let selection = "nodes { organization { id name } plan { name } metrics { metric { code name } \
                     used allowance utilizationPct exceeded enforcement overageQuantity } }";
    let probe = http
        .post(
            platform,
            &json!({ "query": "{ __type(name: \"Query\") { fields { name args { name } } } }" }),
        )
        .await;
    let args: Option<Vec<String>> = probe.as_ref().ok().and_then(|v| {
        v["data"]["__type"]["fields"]
            .as_array()?
            .iter()
            .find(|f| f["name"] == "usageSummaries")
            .and_then(|f| f["args"].as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x["name"].as_str().map(str::to_owned))
                    .collect()
            })
    });
    let has = |name: &str| args.as_ref().is_some_and(|a| a.iter().any(|x| x == name));
    if has("metric") && has("orderBy") {
        Page {
            body: Arc::new(json!({ "query": format!(
                "query Page {{ usageSummaries(metric: \"bookings\", minUtilizationPct: 80, orderBy: UTILIZATION_DESC, first: 50) {{ {selection} }} }}"
            ) })),
            note: "usageSummaries(metric: \"bookings\", minUtilizationPct: 80, orderBy: UTILIZATION_DESC, first: 50)".into(),
        }
    } else {
        let why = match &probe {
            Err(e) => format!("introspection failed ({e:#})"),
            Ok(_) => "the server's usageSummaries has no metric/orderBy arguments yet".into(),
        };
        Page {
            body: Arc::new(json!({ "query": format!(
                "query Page {{ usageSummaries(first: 50, minUtilizationPct: 80) {{ {selection} }} }}"
            ) })),
            note: format!("usageSummaries(first: 50, minUtilizationPct: 80): {why}"),
        }
    }
}

/// Drives the platform page at concurrency 16 (as earlier runs did); every answer must be a full
/// page.
async fn page_row(name: &str, secs: u64, http: &Http, platform: &str, page: &Page) -> Row {
    let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (h, p, body, t) = (
        http.clone(),
        platform.to_owned(),
        page.body.clone(),
        total.clone(),
    );
    let mut row = drive(name, 16, secs, move |_, _| {
        let (h, p, body, t) = (h.clone(), p.clone(), body.clone(), t.clone());
        async move {
            let page = h.post_page(&p, &body).await?;
            if page.nodes != 50 {
                bail!("page of {}", page.nodes);
            }
            t.store(page.total_count, std::sync::atomic::Ordering::Relaxed);
            Ok(1)
        }
    })
    .await;
    let total = total.load(std::sync::atomic::Ordering::Relaxed);
    row.note = [
        row.note.clone(),
        page.note.clone(),
        // totalCount is not asked (it counts the whole matching range); the page alone is.
        if total == 0 {
            "the selection has no totalCount".to_owned()
        } else {
            format!("totalCount {total}")
        },
    ]
    .into_iter()
    .filter(|s| !s.is_empty())
    .collect::<Vec<_>>()
    .join("; ");
    row
}
