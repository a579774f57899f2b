//! Metrics in Prometheus format: one process-wide recorder, rendered at GET /metrics. Counters and
//! histograms are recorded where things happen (requests, recordings, alerts); gauges of state
//! (connections, the database pool, LISTEN) are read when scraped.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::app::AppState;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the recorder on first use (once per process) and answers its handle.
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("duration_seconds".into()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        10.0,
                    ],
                )
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            Some(handle)
        })
        .as_ref()
}

/// Distinct operation names kept as labels; past this, new names count as "other" (clients choose
/// the names, and a label per name must not grow without bound).
const MAX_OPERATION_NAMES: usize = 200;

/// The label for a client's operation name: the name when it is a plain GraphQL name among the
/// first `MAX_OPERATION_NAMES` seen, else "anonymous" or "other".
pub fn operation_label(name: Option<&str>) -> String {
    static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return "anonymous".into();
    };
    let plain = name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if !plain {
        return "other".into();
    }
    let Ok(mut seen) = SEEN.get_or_init(Default::default).lock() else {
        return "other".into();
    };
    if seen.contains(name) || seen.len() < MAX_OPERATION_NAMES {
        seen.insert(name.to_owned());
        name.to_owned()
    } else {
        "other".into()
    }
}

/// The name of a document's first operation, read from its text (`query Dashboard { ... }`), for a
/// request that did not send operationName.
pub fn first_operation_name(query: &str) -> Option<&str> {
    let mut rest = query.trim_start();
    while let Some(comment) = rest.strip_prefix('#') {
        rest = comment
            .split_once('\n')
            .map(|(_, r)| r)
            .unwrap_or("")
            .trim_start();
    }
    let after = ["query", "mutation", "subscription"]
        .iter()
        .find_map(|k| rest.strip_prefix(k))?;
    if !after.starts_with(char::is_whitespace) {
        return None;
    }
    let after = after.trim_start();
    let end = after
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(after.len());
    (end > 0).then(|| &after[..end])
}

/// The text at GET /metrics.
pub fn render(state: &AppState) -> String {
    metrics::gauge!("tollgate_websocket_connections").set(state.ws.open() as f64);
    metrics::gauge!("tollgate_websocket_shared_executions")
        .set(state.subscriptions.executions() as f64);
    metrics::gauge!("tollgate_bus_organization_channels").set(state.engine.bus.channels() as f64);
    metrics::gauge!("tollgate_bus_listeners").set(state.engine.bus.listeners() as f64);
    metrics::gauge!("tollgate_entitlement_cache_entries").set(state.engine.cache.len() as f64);
    if state.engine.db.is_postgres() {
        let listening = if *state.listening.borrow() { 1.0 } else { 0.0 };
        metrics::gauge!("tollgate_listen_connected").set(listening);
    }
    let pool = state.engine.db.pool();
    let (size, idle) = match pool.get_database_backend() {
        sea_orm::DbBackend::Postgres => {
            let p = pool.get_postgres_connection_pool();
            (p.size(), p.num_idle())
        }
        sea_orm::DbBackend::Sqlite => {
            let p = pool.get_sqlite_connection_pool();
            (p.size(), p.num_idle())
        }
        _ => (0, 0),
    };
    metrics::gauge!("tollgate_db_pool_connections", "state" => "idle").set(idle as f64);
    metrics::gauge!("tollgate_db_pool_connections", "state" => "in_use")
        .set(size.saturating_sub(idle as u32) as f64);
    metrics::gauge!("tollgate_db_pool_max_connections")
        .set(f64::from(state.settings.db_max_connections));
    match handle() {
        Some(h) => {
            h.run_upkeep();
            h.render()
        }
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_names_come_from_the_document() {
        assert_eq!(first_operation_name("query Dash { a }"), Some("Dash"));
        assert_eq!(
            first_operation_name("# hi\n mutation Rec($x: Int) { a }"),
            Some("Rec")
        );
        assert_eq!(first_operation_name("{ a }"), None);
        assert_eq!(first_operation_name("query { a }"), None);
        assert_eq!(first_operation_name("queryX { a }"), None);
        assert_eq!(operation_label(Some("bad name!")), "other");
        assert_eq!(operation_label(None), "anonymous");
    }
}
