//! The utilization index (migration m20261130_000011): per organization, period and limited metric
//! its utilization and whether it is past its allowance (`usage_utilization`), per period row the
//! highest of them (`organization_usage.peak_utilization_pct`, next to `has_exceeded_limits`), and the
//! periods whose index is complete for every organization (`usage_index_periods`).
//!
//! `write_period_state` is the one writer of an organization's index in a period; the pages read it
//! with keyset scans (`page`, `count`). The same page queries run over the counters themselves
//! (`Source::Computed`) for periods whose index is not known complete: the same columns, computed.

use chrono::Utc;
use entity::organization;
use sea_orm::{ConnectionTrait, DbErr, FromQueryResult, Value};
use uuid::Uuid;

use super::{execute, query_all, query_one};
use crate::domain::{OrganizationId, Period, Scope};

/// One limited metric's entry in the index.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricIndex {
    pub metric: String,
    /// used * 100 / allowance, unrounded (`MetricState::utilization_ratio`).
    pub utilization_pct: f64,
    /// used > allowance.
    pub exceeded: bool,
}

/// What a period row and its index say about an organization's usage in the period.
#[derive(Debug, Clone, PartialEq)]
pub struct PeriodState {
    /// The seed's has_exceeded_limits: some limited metric is past its allowance.
    pub exceeded: bool,
    /// The seed's exceeded_limits_details JSON.
    pub details: serde_json::Value,
    /// The highest utilization of the limited metrics, None when the plan limits none.
    pub peak: Option<f64>,
    /// Every metric the plan limits (and only those).
    pub per_metric: Vec<MetricIndex>,
}

/// Writes an organization's state in a period: its limited metrics' index rows (rows of metrics the
/// plan no longer limits go), and the period row's flags and peak. The caller holds the period lock
/// (`ledger::lock_period`, which also creates the period row). Three statements, two when the plan
/// limits nothing.
pub async fn write_period_state<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
    period: Period,
    state: &PeriodState,
) -> Result<(), DbErr> {
    if !scope.allows(org) {
        return Ok(());
    }
    let mut values: Vec<Value> = vec![org.0.into(), period.start.into()];
    let keep = if state.per_metric.is_empty() {
        String::new()
    } else {
        values.extend(
            state
                .per_metric
                .iter()
                .map(|m| Value::from(m.metric.clone())),
        );
        format!(
            " AND metric_code NOT IN ({})",
            super::placeholders(3, state.per_metric.len())
        )
    };
    execute(
        db,
        &format!(
            "DELETE FROM usage_utilization WHERE organization_id = $1 AND period_start = $2{keep}"
        ),
        values,
    )
    .await?;
    if !state.per_metric.is_empty() {
        let mut values: Vec<Value> = vec![org.0.into(), period.start.into()];
        let mut rows = Vec::with_capacity(state.per_metric.len());
        for m in &state.per_metric {
            let i = values.len();
            rows.push(format!("($1, $2, ${}, ${}, ${})", i + 1, i + 2, i + 3));
            values.push(m.metric.clone().into());
            values.push(m.utilization_pct.into());
            values.push(m.exceeded.into());
        }
        execute(db, &upsert_index(false, &rows), values).await?;
    }
    execute(
        db,
        "UPDATE organization_usage SET has_exceeded_limits = $3, exceeded_limits_details = $4, \
           peak_utilization_pct = $5, updated_at = $6 \
         WHERE organization_id = $1 AND period_start = $2",
        vec![
            org.0.into(),
            period.start.into(),
            state.exceeded.into(),
            state.details.clone().into(),
            state.peak.into(),
            Utc::now().into(),
        ],
    )
    .await
    .map(|_| ())
}

/// An organization's stored state in a period, as `write_period_state` would have written it (for
/// recompute to compare). None without a period row.
pub async fn stored_period_state<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
    period: Period,
) -> Result<Option<PeriodState>, DbErr> {
    if !scope.allows(org) {
        return Ok(None);
    }
    let Some(row) = query_one(
        db,
        "SELECT has_exceeded_limits, exceeded_limits_details, peak_utilization_pct FROM organization_usage \
         WHERE organization_id = $1 AND period_start = $2",
        vec![org.0.into(), period.start.into()],
    )
    .await?
    else {
        return Ok(None);
    };
    let rows = query_all(
        db,
        "SELECT metric_code, utilization_pct, exceeded FROM usage_utilization \
         WHERE organization_id = $1 AND period_start = $2",
        vec![org.0.into(), period.start.into()],
    )
    .await?;
    let mut per_metric = rows
        .iter()
        .map(|r| {
            Ok(MetricIndex {
                metric: r.try_get("", "metric_code")?,
                utilization_pct: r.try_get("", "utilization_pct")?,
                exceeded: r.try_get("", "exceeded")?,
            })
        })
        .collect::<Result<Vec<_>, DbErr>>()?;
    // In code order as Rust compares (a collation may order them otherwise).
    per_metric.sort_by(|a, b| a.metric.cmp(&b.metric));
    Ok(Some(PeriodState {
        exceeded: row.try_get("", "has_exceeded_limits")?,
        details: row.try_get("", "exceeded_limits_details")?,
        peak: row.try_get("", "peak_utilization_pct")?,
        per_metric,
    }))
}

/// Whether the index of `period` is complete for every organization.
pub async fn period_indexed<C: ConnectionTrait>(db: &C, period: Period) -> Result<bool, DbErr> {
    Ok(query_one(
        db,
        "SELECT 1 AS one FROM usage_index_periods WHERE period_start = $1",
        vec![period.start.into()],
    )
    .await?
    .is_some())
}

/// Records that the index of `period` is complete for every organization.
pub async fn mark_indexed<C: ConnectionTrait>(db: &C, period: Period) -> Result<(), DbErr> {
    execute(
        db,
        "INSERT INTO usage_index_periods (period_start, completed_at) VALUES ($1, $2) \
         ON CONFLICT (period_start) DO NOTHING",
        vec![period.start.into(), Utc::now().into()],
    )
    .await
    .map(|_| ())
}

/// Every organization's id, in id order (platform only).
pub async fn all_org_ids<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
) -> Result<Vec<OrganizationId>, DbErr> {
    if scope != Scope::Platform {
        return Ok(vec![]);
    }
    let rows = query_all(db, "SELECT id FROM organizations ORDER BY id", vec![]).await?;
    rows.iter()
        .map(|r| r.try_get::<Uuid>("", "id").map(OrganizationId))
        .collect()
}

/// Organizations without a period row in `period`, in id order (platform only): what a
/// materialization still has to visit.
pub async fn orgs_without_period_row<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    period: Period,
) -> Result<Vec<OrganizationId>, DbErr> {
    if scope != Scope::Platform {
        return Ok(vec![]);
    }
    let rows = query_all(
        db,
        "SELECT o.id FROM organizations o WHERE NOT EXISTS \
           (SELECT 1 FROM organization_usage u WHERE u.organization_id = o.id AND u.period_start = $1) \
         ORDER BY o.id",
        vec![period.start.into()],
    )
    .await?;
    rows.iter()
        .map(|r| r.try_get::<Uuid>("", "id").map(OrganizationId))
        .collect()
}

/// Where a page reads utilization from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The index (a period marked complete).
    Index,
    /// The counters and plan limits, computed per request (any period).
    Computed,
}

/// Whose utilization a page filters and orders on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject<'a> {
    /// The organization's highest over its limited metrics.
    Peak,
    /// One metric's.
    Metric(&'a str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// By slug.
    Name,
    /// By utilization, highest first, ties by organization id; organizations without one last, by id.
    UtilizationDesc,
}

/// Where the previous page ended.
#[derive(Debug, Clone, PartialEq)]
pub enum After {
    Slug(String),
    /// The last row's utilization (None: it was past the organizations with one) and id.
    Utilization(Option<f64>, Uuid),
}

pub struct PageQuery<'a> {
    pub period: Period,
    pub subject: Subject<'a>,
    /// Percent, e.g. 80.
    pub min_utilization_pct: Option<f64>,
    pub exceeded_only: bool,
    pub order: Order,
    pub source: Source,
}

impl PageQuery<'_> {
    /// Whether the page holds only organizations with a utilization (one of the filters is set).
    fn filtered(&self) -> bool {
        self.min_utilization_pct.is_some() || self.exceeded_only
    }
}

/// A row of a page: the organization and the utilization it was ordered on.
#[derive(Debug, Clone)]
pub struct PageRow {
    pub org: organization::Model,
    pub utilization_pct: Option<f64>,
}

/// The FROM clause of a source, its utilization and "exceeded" expressions and its own conditions.
struct From {
    from: String,
    utilization: &'static str,
    exceeded: &'static str,
    base: String,
}

/// The computed rows, with `used` and `allowance` spelled out once per row (both engines: no
/// LATERAL on SQLite, so a derived table computes them first).
fn computed(metric_param: Option<usize>) -> String {
    let only = metric_param
        .map(|p| format!(" AND l.metric_code = ${p}"))
        .unwrap_or_default();
    let inner = format!(
        "SELECT o.id AS organization_id, l.metric_code AS metric_code, \
           COALESCE(c.used, 0) AS used, \
           l.included + CASE WHEN c.period_start = $1 THEN c.credits ELSE 0 END AS allowance \
         FROM organizations o \
         JOIN plan_limits l ON l.plan_id = o.plan_id AND l.included IS NOT NULL{only} \
         JOIN metrics m ON m.code = l.metric_code \
         LEFT JOIN usage_counters c ON c.organization_id = o.id AND c.metric_code = l.metric_code \
           AND (c.period_start = $1 OR (m.kind = 'GAUGE' AND c.period_start = \
             (SELECT MAX(c2.period_start) FROM usage_counters c2 \
              WHERE c2.organization_id = o.id AND c2.metric_code = l.metric_code AND c2.period_start <= $1)))"
    );
    format!(
        "SELECT a.organization_id, a.metric_code, \
           CASE WHEN a.allowance > 0 THEN CAST(a.used AS DOUBLE PRECISION) * 100 / a.allowance \
                WHEN a.used > 0 THEN 100.0 ELSE 0.0 END AS utilization_pct, \
           CASE WHEN a.used > a.allowance THEN 1 ELSE 0 END AS exceeded \
         FROM ({inner}) a"
    )
}

fn source(q: &PageQuery<'_>, values: &mut Vec<Value>) -> From {
    match (q.source, q.subject) {
        (Source::Index, Subject::Metric(m)) => {
            values.push(m.into());
            From {
                from: "usage_utilization s".into(),
                utilization: "s.utilization_pct",
                exceeded: "s.exceeded",
                base: format!("s.period_start = $1 AND s.metric_code = ${}", values.len()),
            }
        }
        (Source::Index, Subject::Peak) => From {
            from: "organization_usage s".into(),
            utilization: "s.peak_utilization_pct",
            exceeded: "s.has_exceeded_limits",
            base: "s.period_start = $1 AND s.peak_utilization_pct IS NOT NULL".into(),
        },
        (Source::Computed, Subject::Metric(m)) => {
            values.push(m.into());
            From {
                from: format!("({}) s", computed(Some(values.len()))),
                utilization: "s.utilization_pct",
                exceeded: "s.exceeded = 1",
                base: "1 = 1".into(),
            }
        }
        (Source::Computed, Subject::Peak) => From {
            from: format!(
                "(SELECT x.organization_id, MAX(x.utilization_pct) AS utilization_pct, \
                   MAX(x.exceeded) AS exceeded FROM ({}) x GROUP BY x.organization_id) s",
                computed(None)
            ),
            utilization: "s.utilization_pct",
            exceeded: "s.exceeded = 1",
            base: "1 = 1".into(),
        },
    }
}

/// The conditions of the filters (and the tenant's scope) on a source.
fn filters(scope: Scope, q: &PageQuery<'_>, src: &From, values: &mut Vec<Value>) -> Vec<String> {
    let mut clauses = vec![src.base.clone()];
    if let Scope::Tenant(org) = scope {
        values.push(org.0.into());
        clauses.push(format!("s.organization_id = ${}", values.len()));
    }
    if let Some(pct) = q.min_utilization_pct {
        values.push(pct.into());
        clauses.push(format!("{} >= ${}", src.utilization, values.len()));
    }
    if q.exceeded_only {
        clauses.push(src.exceeded.to_owned());
    }
    clauses
}

fn rows(results: Vec<sea_orm::QueryResult>, with_utilization: bool) -> Result<Vec<PageRow>, DbErr> {
    results
        .iter()
        .map(|r| {
            Ok(PageRow {
                org: organization::Model::from_query_result(r, "")?,
                utilization_pct: if with_utilization {
                    r.try_get("", "page_utilization")?
                } else {
                    None
                },
            })
        })
        .collect()
}

/// Every visible organization by slug (no filter): organizations' own slug index.
async fn all_by_slug<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    after: Option<&str>,
    limit: u64,
) -> Result<Vec<PageRow>, DbErr> {
    let mut values: Vec<Value> = Vec::new();
    let mut clauses = vec!["1 = 1".to_owned()];
    if let Scope::Tenant(org) = scope {
        values.push(org.0.into());
        clauses.push(format!("o.id = ${}", values.len()));
    }
    if let Some(a) = after {
        values.push(a.into());
        clauses.push(format!("o.slug > ${}", values.len()));
    }
    values.push((limit as i64).into());
    let sql = format!(
        "SELECT o.* FROM organizations o WHERE {} ORDER BY o.slug LIMIT ${}",
        clauses.join(" AND "),
        values.len()
    );
    rows(query_all(db, &sql, values).await?, false)
}

/// The page's organizations that have a utilization: a walk down the index (or the computed rows).
fn ranked_sql(
    scope: Scope,
    q: &PageQuery<'_>,
    after: Option<&After>,
    limit: u64,
) -> (String, Vec<Value>) {
    let mut values: Vec<Value> = vec![q.period.start.into()];
    let src = source(q, &mut values);
    let mut clauses = filters(scope, q, &src, &mut values);
    let order = match (q.order, after) {
        (Order::Name, after) => {
            if let Some(After::Slug(a)) = after {
                values.push(a.as_str().into());
                clauses.push(format!("o.slug > ${}", values.len()));
            }
            "o.slug".to_owned()
        }
        (Order::UtilizationDesc, after) => {
            if let Some(After::Utilization(Some(u), id)) = after {
                values.push((*u).into());
                let pu = values.len();
                values.push((*id).into());
                let pid = values.len();
                // `<=` first: a range the index can seek to; ties are then cut by id.
                clauses.push(format!(
                    "{u_col} <= ${pu} AND ({u_col} < ${pu} OR s.organization_id > ${pid})",
                    u_col = src.utilization
                ));
            }
            format!("{} DESC, s.organization_id", src.utilization)
        }
    };
    values.push((limit as i64).into());
    let sql = format!(
        "SELECT o.*, {} AS page_utilization FROM {} JOIN organizations o ON o.id = s.organization_id \
         WHERE {} ORDER BY {order} LIMIT ${}",
        src.utilization,
        src.from,
        clauses.join(" AND "),
        values.len()
    );
    (sql, values)
}

/// Postgres's plan for the first page of `q` (platform scope), to show which index it walks.
pub async fn explain_page<C: ConnectionTrait>(
    db: &C,
    q: &PageQuery<'_>,
    limit: u64,
) -> Result<String, DbErr> {
    let (sql, values) = ranked_sql(Scope::Platform, q, None, limit);
    let rows = query_all(db, &format!("EXPLAIN {sql}"), values).await?;
    Ok(rows
        .iter()
        .filter_map(|r| r.try_get_by_index::<String>(0).ok())
        .collect::<Vec<_>>()
        .join("\n"))
}

/// A page of organizations for `q`, after `after`, at most `limit` rows: one statement, or two
/// when an unfiltered page by utilization runs past the organizations that have one.
pub async fn page<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    q: &PageQuery<'_>,
    after: Option<&After>,
    limit: u64,
) -> Result<Vec<PageRow>, DbErr> {
    let after_slug = match after {
        Some(After::Slug(s)) => Some(s.as_str()),
        _ => None,
    };
    if !q.filtered() && q.order == Order::Name {
        return all_by_slug(db, scope, after_slug, limit).await;
    }
    let mut out = Vec::new();
    // The organizations with a utilization (all of them, when filtered).
    if !matches!(after, Some(After::Utilization(None, _))) {
        let (sql, values) = ranked_sql(scope, q, after, limit);
        out = rows(query_all(db, &sql, values).await?, true)?;
    }
    // Unfiltered, by utilization: then the organizations without one, by id.
    if !q.filtered() && q.order == Order::UtilizationDesc && (out.len() as u64) < limit {
        let mut values: Vec<Value> = vec![q.period.start.into()];
        let src = source(q, &mut values);
        let mut clauses = vec![format!(
            "NOT EXISTS (SELECT 1 FROM {} WHERE {} AND s.organization_id = o.id)",
            src.from, src.base
        )];
        if let Scope::Tenant(org) = scope {
            values.push(org.0.into());
            clauses.push(format!("o.id = ${}", values.len()));
        }
        if let Some(After::Utilization(None, id)) = after {
            values.push((*id).into());
            clauses.push(format!("o.id > ${}", values.len()));
        }
        values.push(((limit - out.len() as u64) as i64).into());
        let sql = format!(
            "SELECT o.* FROM organizations o WHERE {} ORDER BY o.id LIMIT ${}",
            clauses.join(" AND "),
            values.len()
        );
        out.extend(rows(query_all(db, &sql, values).await?, false)?);
    }
    Ok(out)
}

/// How many organizations the page's filters hold (every visible one without a filter).
pub async fn count<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    q: &PageQuery<'_>,
) -> Result<u64, DbErr> {
    let (sql, values) = if q.filtered() {
        let mut values: Vec<Value> = vec![q.period.start.into()];
        let src = source(q, &mut values);
        let clauses = filters(scope, q, &src, &mut values);
        (
            format!(
                "SELECT COUNT(*) AS n FROM {} WHERE {}",
                src.from,
                clauses.join(" AND ")
            ),
            values,
        )
    } else {
        match scope {
            Scope::Tenant(org) => (
                "SELECT COUNT(*) AS n FROM organizations o WHERE o.id = $1".to_owned(),
                vec![org.0.into()],
            ),
            Scope::Platform => (
                "SELECT COUNT(*) AS n FROM organizations o".to_owned(),
                vec![],
            ),
        }
    };
    let row = query_one(db, &sql, values).await?;
    Ok(row
        .map(|r| r.try_get::<i64>("", "n"))
        .transpose()?
        .unwrap_or(0)
        .max(0) as u64)
}

/// The upsert of rows of the utilization index, `(organization_id, period_start, metric_code,
/// utilization_pct, exceeded)` each.
pub(super) fn upsert_index(padded: bool, rows: &[String]) -> String {
    upsert_index_from(&super::insert_source(padded, rows))
}

/// The same upsert of the rows `source` yields (a `VALUES` list, or a query).
pub(super) fn upsert_index_from(source: &str) -> String {
    format!(
        "INSERT INTO usage_utilization (organization_id, period_start, metric_code, utilization_pct, exceeded) \
         {source} ON CONFLICT (organization_id, period_start, metric_code) \
         DO UPDATE SET utilization_pct = excluded.utilization_pct, exceeded = excluded.exceeded"
    )
}
