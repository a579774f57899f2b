//! Fan-out at scale (issue 14 point 6): tenant WebSocket subscribers spread over many
//! organizations, half on `usageUpdated` and half on `usageAlerts`, while recordings run at a paced
//! rate across those organizations; the delivery latency of every result after the mutation that
//! caused it answered, and the server's memory per subscriber.
//!
//! Each organization gets its recordings evenly spaced (by default one a second), so a result maps
//! to exactly one recording: the counter's value it carries (`used`) equals what that recording's
//! answer carried, and the harness joins them on (organization, used) after the run. Latency =
//! arrival at the subscriber minus the moment the recording's answer arrived at the harness,
//! saturating at zero (a subscriber may hear of a commit before the mutation's answer is read).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::{Value, json};

use crate::{Http, Row, Server, cpu_seconds, percentile, wsraw};

/// The dashboard's subscriptions (dashboard/src/operations.graphql, fragments inlined): the frames
/// are the size a live dashboard receives.
const UPDATED: &str = "subscription { usageUpdated { periodStart periodEnd updatedAt hasExceededLimits \
    plan { code name currency } metrics { metric { code name unit kind } used allowance included credits \
    remaining utilizationPct exceeded exceededBy enforcement overageQuantity overageAmount } } }";
const ALERTS: &str = "subscription { usageAlerts { id kind createdAt periodStart used allowance utilizationPct \
    thresholdPct metric { code name unit } organization { id name } } }";

/// Sockets per loopback source address (the ephemeral range holds ~28K ports per address).
const PER_SOURCE: usize = 20_000;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kind {
    Updated,
    Alerts,
}

/// A result a subscriber received: its subscriber, organization, kind, the bookings counter it
/// carries (scaled by 10^4), and when it arrived.
struct Delivery {
    sub: u32,
    org: u32,
    kind: Kind,
    used: Option<i64>,
    at: Instant,
}

pub struct Setup<'a> {
    pub subscribers: usize,
    /// Per organization: its id, a SERVICE token (records) and a VIEWER token (subscribes).
    pub orgs: &'a [(String, String, String)],
    /// Recordings per second across the organizations.
    pub rate: f64,
    pub seconds: u64,
    /// Organizations (indexes into `orgs`) brought just under 80% before the run, so that their
    /// first recording raises a NEAR_LIMIT alert.
    pub crossings: Vec<usize>,
    pub run: String,
}

pub struct Outcome {
    pub rows: Vec<Row>,
    /// Server memory per connected subscriber, in bytes.
    pub per_sub: f64,
    pub updated_p99: Option<Duration>,
    pub alerts_p99: Option<Duration>,
}

/// "used" of the bookings metric in a usageUpdated frame, or of the alert in a usageAlerts frame,
/// scaled by 10^4.
fn used_in(text: &[u8], kind: Kind) -> Option<i64> {
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    let from = match kind {
        Kind::Updated => find(text, b"\"code\":\"bookings\"")?,
        Kind::Alerts => 0,
    };
    let rest = &text[from..];
    let at = find(rest, b"\"used\":")? + 7;
    let rest = &rest[at..];
    let rest = rest.strip_prefix(b"\"").unwrap_or(rest);
    let end = rest
        .iter()
        .position(|b| !(b.is_ascii_digit() || *b == b'.' || *b == b'-'))
        .unwrap_or(rest.len());
    scaled(std::str::from_utf8(&rest[..end]).ok()?)
}

fn scaled(decimal: &str) -> Option<i64> {
    let v: f64 = decimal.parse().ok()?;
    Some((v * 10_000.0).round() as i64)
}

fn has(text: &[u8], s: &[u8]) -> bool {
    text.windows(s.len()).any(|w| w == s)
}

pub async fn run(server: &Server, http: &Http, s: Setup<'_>) -> Result<Outcome> {
    let f = s.orgs.len();
    if f == 0 || s.subscribers == 0 {
        bail!("no organizations or no subscribers");
    }
    // Bring the crossing organizations to 799 of 1000 (one under 80%) before anyone listens.
    let mut crossings = 0;
    for &k in &s.crossings {
        let (_, service, viewer) = &s.orgs[k];
        let v = http
            .post(
                viewer,
                &json!({ "query": "{ organization { usage { metric(code: \"bookings\") { used allowance } } } }" }),
            )
            .await?;
        let m = &v["data"]["organization"]["usage"]["metric"];
        let num = |x: &Value| x.as_str().and_then(|s| s.parse::<f64>().ok());
        let (Some(used), Some(allowance)) = (num(&m["used"]), num(&m["allowance"])) else {
            continue;
        };
        let below = (allowance * 0.8).ceil() - 1.0;
        if used > below || used.fract() != 0.0 {
            continue;
        }
        if used < below {
            http.post(
                service,
                &json!({ "query": "mutation($q: Decimal!) { recordUsage(input: {metric: \"bookings\", quantity: $q}) { accepted } }",
                         "variables": { "q": format!("{}", below - used) } }),
            )
            .await?;
        }
        crossings += 1;
    }

    let before = server.rss_kib();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Delivery>();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<Result<()>>();
    let gate = Arc::new(tokio::sync::Semaphore::new(256));
    let closed = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let frame_len: Arc<[AtomicUsize; 2]> = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let sources = s.subscribers.div_ceil(PER_SOURCE);
    let started = Instant::now();
    let mut conns = Vec::with_capacity(s.subscribers);
    let mut kinds = Vec::with_capacity(s.subscribers);
    for j in 0..s.subscribers {
        let org = j % f;
        // Each organization gets as many of each kind (alternating by round over the organizations).
        let kind = if (j / f).is_multiple_of(2) {
            Kind::Updated
        } else {
            Kind::Alerts
        };
        kinds.push((org, kind));
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (j % sources) as u8));
        let addr: SocketAddr = server.addr;
        let init = json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {}", s.orgs[org].2) } })
            .to_string();
        let sub = json!({ "type": "subscribe", "id": "s", "payload": { "query": match kind { Kind::Updated => UPDATED, Kind::Alerts => ALERTS } } })
            .to_string();
        let (tx, ready_tx, gate) = (tx.clone(), ready_tx.clone(), gate.clone());
        let (closed, errors, first_error, frame_len) = (
            closed.clone(),
            errors.clone(),
            first_error.clone(),
            frame_len.clone(),
        );
        conns.push(tokio::spawn(async move {
            let handshake = async {
                let _permit = gate.acquire().await?;
                let mut ws = wsraw::Subscriber::connect_from(
                    source,
                    addr,
                    "/graphql",
                    "graphql-transport-ws",
                )
                .await?;
                ws.send_text(&init).await?;
                match ws.next().await? {
                    Some((wsraw::TEXT, ack)) if has(&ack, b"connection_ack") => {}
                    other => bail!("expected connection_ack, got {other:?}"),
                }
                ws.send_text(&sub).await?;
                anyhow::Ok(ws)
            };
            let mut ws = match handshake.await {
                Ok(ws) => {
                    let _ = ready_tx.send(Ok(()));
                    ws
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            drop(ready_tx);
            loop {
                match ws.next().await {
                    Ok(Some((wsraw::TEXT, text))) => {
                        if has(&text, b"\"next\"") {
                            if has(&text, b"\"errors\"") {
                                errors.fetch_add(1, Ordering::Relaxed);
                                let mut first =
                                    first_error.lock().unwrap_or_else(|p| p.into_inner());
                                first.get_or_insert_with(|| {
                                    String::from_utf8_lossy(&text).into_owned()
                                });
                            }
                            let at = Instant::now();
                            frame_len[kind as usize].store(text.len(), Ordering::Relaxed);
                            let _ = tx.send(Delivery {
                                sub: j as u32,
                                org: org as u32,
                                kind,
                                used: used_in(&text, kind),
                                at,
                            });
                        } else if has(&text, b"\"ping\"") {
                            let _ = ws.send_text("{\"type\":\"pong\"}").await;
                        } else if has(&text, b"\"error\"") || has(&text, b"\"complete\"") {
                            errors.fetch_add(1, Ordering::Relaxed);
                            let mut first = first_error.lock().unwrap_or_else(|p| p.into_inner());
                            first
                                .get_or_insert_with(|| String::from_utf8_lossy(&text).into_owned());
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => {
                        closed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        }));
    }
    drop(ready_tx);
    let (mut ready, mut failed) = (0usize, 0usize);
    let mut failure = None;
    while let Some(r) = ready_rx.recv().await {
        match r {
            Ok(()) => ready += 1,
            Err(e) => {
                failed += 1;
                failure.get_or_insert_with(|| format!("{e:#}"));
            }
        }
        if (ready + failed) % 10_000 == 0 {
            eprintln!(
                "  {} of {} handshakes ({:.0?})",
                ready + failed,
                s.subscribers,
                started.elapsed()
            );
        }
    }
    let connect_time = started.elapsed();
    if let Some(e) = &failure {
        eprintln!("  {failed} subscribers failed; the first: {e}");
    }
    // The subscriptions start on the server after the handshake: let it settle (its memory stops
    // growing) before reading the memory and starting the load.
    let mut after = server.rss_kib();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = server.rss_kib();
        let settled = now.abs_diff(after) * 200 < after.max(1);
        after = now;
        if settled {
            break;
        }
    }
    let per_sub = after.saturating_sub(before) as f64 * 1024.0 / ready.max(1) as f64;
    eprintln!(
        "  {ready} subscribers in {connect_time:.1?} over {sources} source addresses; server RSS {before} KiB -> {after} KiB; \
         {crossings} organizations set to cross 80%"
    );
    // Results already queued (the crossing set-up's updates) are not the run's.
    tokio::time::sleep(Duration::from_millis(600)).await;
    while rx.try_recv().is_ok() {}

    // The paced recordings: recording i at t0 + i / rate, for organization i % f.
    let total = (s.rate * s.seconds as f64).round() as u64;
    let t0 = tokio::time::Instant::now() + Duration::from_millis(200);
    let t0_std = t0.into_std();
    let next = Arc::new(AtomicU64::new(0));
    let late = Arc::new(AtomicU64::new(0));
    let orgs: Arc<Vec<(String, String, String)>> = Arc::new(s.orgs.to_vec());
    let cpu_before = server.cpu_seconds();
    let own_before = cpu_seconds(std::process::id());
    // Enough workers that the harness never caps the rate: at 1,000/s and answers of half a
    // second, 500 are in flight.
    let mut workers = Vec::new();
    let count = ((s.rate * 2.0) as usize).clamp(256, 4096);
    for _ in 0..count {
        let (next, late, orgs, http, run) = (
            next.clone(),
            late.clone(),
            orgs.clone(),
            http.clone(),
            s.run.clone(),
        );
        let rate = s.rate;
        workers.push(tokio::spawn(async move {
            let mut done: Vec<(u32, i64, Instant, Duration)> = Vec::new();
            let mut failures = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let due = t0 + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due).await;
                let began = Instant::now();
                if began.saturating_duration_since(due.into_std()) > Duration::from_millis(50) {
                    late.fetch_add(1, Ordering::Relaxed);
                }
                let k = (i % orgs.len() as u64) as usize;
                let body = json!({ "query": "mutation($k: String!) { recordUsage(input: {metric: \"bookings\", quantity: \"1\", idempotencyKey: $k}) { accepted usage { used } } }",
                                   "variables": { "k": format!("{run}-fan-{i}") } });
                match http.post(&orgs[k].1, &body).await {
                    Ok(v) => {
                        let answered = Instant::now();
                        match v["data"]["recordUsage"]["usage"]["used"]
                            .as_str()
                            .and_then(scaled)
                        {
                            Some(used) => {
                                done.push((k as u32, used, answered, answered - began))
                            }
                            None => failures += 1,
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        if failures <= 2 {
                            eprintln!("  recording failed: {e:#}");
                        }
                    }
                }
            }
            (done, failures)
        }));
    }
    let mut recorded: HashMap<(u32, i64), Instant> = HashMap::new();
    let mut mutation_lat = Vec::new();
    let mut rec_failures = 0;
    let mut last_answer = t0_std;
    for w in workers {
        let (done, failures) = w.await?;
        rec_failures += failures;
        for (k, used, answered, took) in done {
            recorded.insert((k, used), answered);
            mutation_lat.push(took);
            last_answer = last_answer.max(answered);
        }
    }
    let recordings_time = last_answer.saturating_duration_since(t0_std);
    // The last results: the coalescing window and the delivery after the last answer.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cpu_s = server.cpu_seconds() - cpu_before;
    let own_s = cpu_seconds(std::process::id()) - own_before;
    let wall = t0_std.elapsed().as_secs_f64();
    let rss_end = server.rss_kib();

    let mut lat: HashMap<Kind, Vec<Duration>> = HashMap::new();
    let mut unmatched: HashMap<Kind, usize> = HashMap::new();
    let mut heard: HashSet<u32> = HashSet::new();
    let mut delivered: HashMap<Kind, usize> = HashMap::new();
    while let Ok(d) = rx.try_recv() {
        if d.at < t0_std {
            continue;
        }
        *delivered.entry(d.kind).or_default() += 1;
        heard.insert(d.sub);
        match d.used.and_then(|u| recorded.get(&(d.org, u))) {
            Some(answered) => lat
                .entry(d.kind)
                .or_default()
                .push(d.at.saturating_duration_since(*answered)),
            None => *unmatched.entry(d.kind).or_default() += 1,
        }
    }
    for c in conns {
        c.abort();
    }
    let still_closed = closed.load(Ordering::Relaxed);
    let errors = errors.load(Ordering::Relaxed);
    // Expected usageUpdated results: each recording of an organization reaches its usageUpdated
    // subscribers once (one a second per organization is well apart from the coalescing window).
    let mut subs_of: HashMap<(u32, Kind), usize> = HashMap::new();
    for (j, (org, kind)) in kinds.iter().enumerate() {
        if j < s.subscribers {
            *subs_of.entry((*org as u32, *kind)).or_default() += 1;
        }
    }
    let expected_updated: usize = recorded
        .keys()
        .map(|(k, _)| subs_of.get(&(*k, Kind::Updated)).copied().unwrap_or(0))
        .sum();
    let silent_updated = kinds
        .iter()
        .enumerate()
        .filter(|(j, (_, k))| *k == Kind::Updated && !heard.contains(&(*j as u32)))
        .count();
    mutation_lat.sort();
    let achieved = recorded.len() as f64 / recordings_time.as_secs_f64().max(1e-9);
    let late = late.load(Ordering::Relaxed);

    let mut rows = Vec::new();
    rows.push(Row {
        name: "fan-out load: recordUsage, paced".into(),
        concurrency: f,
        ops: achieved,
        p50: percentile(&mutation_lat, 0.5),
        p99: percentile(&mutation_lat, 0.99),
        note: format!(
            "{} recordings over {} organizations in {:.1} s (asked {:.0}/s; {late} started >50 ms late; {rec_failures} failed); \
             server CPU {:.2} cores during the run, the harness's {:.2}",
            recorded.len(),
            f,
            recordings_time.as_secs_f64(),
            s.rate,
            cpu_s / wall,
            own_s / wall
        ),
    });
    let common = format!(
        "{ready} subscribers connected ({failed} failed, {still_closed} closed by the end), {f} organizations, half each kind; \
         {:.2} KiB server memory per subscriber (RSS {before} -> {after} KiB connected, {rss_end} KiB at the end); \
         {errors} error frames",
        per_sub / 1024.0
    );
    let mut updated_p99 = None;
    let mut alerts_p99 = None;
    for kind in [Kind::Updated, Kind::Alerts] {
        let mut l = lat.remove(&kind).unwrap_or_default();
        l.sort();
        let n = delivered.get(&kind).copied().unwrap_or(0);
        let un = unmatched.get(&kind).copied().unwrap_or(0);
        let frame = frame_len[kind as usize].load(Ordering::Relaxed);
        let (name, detail) = match kind {
            Kind::Updated => (
                "fan-out: usageUpdated delivery after the mutation answered",
                format!(
                    "{n} results of {expected_updated} expected ({un} not matched to a recording), \
                     {silent_updated} usageUpdated subscribers heard nothing; {frame}-byte frames; \
                     a change after a quiet moment is read at once, one within 250 ms of the previous result \
                     waits for the burst's end (src/graphql/subscription.rs COALESCE); {common}"
                ),
            ),
            Kind::Alerts => (
                "fan-out: usageAlerts delivery after the mutation answered",
                if n == 0 {
                    format!(
                        "no alert delivered ({crossings} organizations set to cross 80%): not measured"
                    )
                } else {
                    format!(
                        "{n} alerts delivered ({un} not matched to a recording) from {crossings} organizations crossing 80%; \
                         {frame}-byte frames"
                    )
                },
            ),
        };
        if !l.is_empty() {
            match kind {
                Kind::Updated => updated_p99 = Some(percentile(&l, 0.99)),
                Kind::Alerts => alerts_p99 = Some(percentile(&l, 0.99)),
            }
        }
        rows.push(Row {
            name: name.into(),
            concurrency: subs_of
                .iter()
                .filter(|((_, k), _)| *k == kind)
                .map(|(_, n)| n)
                .sum(),
            ops: l.len() as f64 / wall,
            p50: percentile(&l, 0.5),
            p99: percentile(&l, 0.99),
            note: detail,
        });
    }
    if let Some(e) = first_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
        eprintln!("  first error frame: {e}");
    }
    Ok(Outcome {
        rows,
        per_sub,
        updated_p99,
        alerts_p99,
    })
}

/// Organizations (indexes) to bring just under 80%: up to `n`, spread over those the earlier
/// measurements did not record into (the first `skip`).
pub fn crossing_orgs(orgs: usize, skip: usize, n: usize) -> Vec<usize> {
    if orgs <= skip || n == 0 {
        return vec![];
    }
    let span = orgs - skip;
    let n = n.min(span);
    (0..n).map(|i| skip + i * span / n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_is_read_from_either_frame() {
        let updated = br#"{"type":"next","id":"s","payload":{"data":{"usageUpdated":{"metrics":[{"metric":{"code":"venues"},"used":"2"},{"metric":{"code":"bookings","name":"Bookings"},"used":"801","allowance":"1000"}]}}}}"#;
        assert_eq!(used_in(updated, Kind::Updated), Some(8_010_000));
        let alert = br#"{"type":"next","id":"s","payload":{"data":{"usageAlerts":{"id":"x","used":"800.5","allowance":"1000"}}}}"#;
        assert_eq!(used_in(alert, Kind::Alerts), Some(8_005_000));
        assert_eq!(crossing_orgs(1000, 64, 4), vec![64, 298, 532, 766]);
    }
}
