//! The alert bus: an in-process broadcast of committed changes to live subscribers. Publishers call it
//! only after commit. Each organization has its own bounded channel (created when someone listens,
//! dropped when nobody does), so a subscriber wakes only for its own organization; the platform team's
//! "every organization" subscription listens on one firehose channel. A slow subscriber lags and is
//! told so; it never slows a publisher.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use entity::enums::AlertKind;
use entity::usage_alert;
use sea_orm::ActiveEnum;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::domain::OrganizationId;

/// The Postgres channel that carries committed alerts and usage changes between replicas.
pub const CHANNEL: &str = "tollgate_events";

/// Largest NOTIFY payload we send (Postgres refuses 8000 bytes and more).
const MAX_PAYLOAD: usize = 7000;

#[derive(Debug, Clone)]
pub enum BusEvent {
    Alert(Arc<usage_alert::Model>),
    UsageChanged(OrganizationId),
    /// A plan's limits changed (upsertPlan): every organization on it may have other allowances.
    PlansChanged,
    /// A membership's usage or status changed (its organization, the membership).
    MembershipChanged(OrganizationId, uuid::Uuid),
    /// The platform team changed (`tollgate platform-team`): every replica reads it again.
    TeamChanged,
}

impl BusEvent {
    /// The organization the event is about; None for an event about every organization.
    pub fn organization(&self) -> Option<OrganizationId> {
        match self {
            BusEvent::Alert(a) => Some(OrganizationId(a.organization_id)),
            BusEvent::UsageChanged(o) => Some(*o),
            BusEvent::PlansChanged | BusEvent::TeamChanged => None,
            BusEvent::MembershipChanged(o, _) => Some(*o),
        }
    }
}

/// Events one organization's channel holds for a subscriber that has not read them yet.
const PER_ORGANIZATION: usize = 256;

#[derive(Clone)]
pub struct AlertBus {
    inner: Arc<Inner>,
}

struct Inner {
    orgs: RwLock<HashMap<OrganizationId, broadcast::Sender<BusEvent>>>,
    all: broadcast::Sender<BusEvent>,
    /// Told of `TeamChanged`, which goes to no subscriber: the server reads the team again.
    team: tokio::sync::Notify,
}

impl AlertBus {
    /// `capacity`: what the firehose holds for a platform subscriber that has not read it yet.
    pub fn new(capacity: usize) -> Self {
        let (all, _) = broadcast::channel(capacity.max(1));
        AlertBus {
            inner: Arc::new(Inner {
                orgs: RwLock::new(HashMap::new()),
                all,
                team: tokio::sync::Notify::new(),
            }),
        }
    }

    pub fn send(&self, event: BusEvent) {
        if matches!(event, BusEvent::TeamChanged) {
            self.inner.team.notify_one();
            return;
        }
        // An event about every organization goes to the firehose only.
        let Some(org) = event.organization() else {
            let _ = self.inner.all.send(event);
            return;
        };
        // No subscriber is not an error: alerts are stored and can be caught up with the query.
        let orphaned = match self.inner.orgs.read() {
            Ok(orgs) => orgs
                .get(&org)
                .is_some_and(|tx| tx.send(event.clone()).is_err()),
            Err(_) => false,
        };
        if orphaned && let Ok(mut orgs) = self.inner.orgs.write() {
            // Re-checked under the write lock: someone may have subscribed meanwhile.
            if orgs.get(&org).is_some_and(|tx| tx.receiver_count() == 0) {
                orgs.remove(&org);
            }
        }
        if self.inner.all.receiver_count() > 0 {
            let _ = self.inner.all.send(event);
        }
    }

    /// Resolves at the next change of the platform team (or at once, if one came since the last
    /// wait).
    pub async fn team_changed(&self) {
        self.inner.team.notified().await
    }

    /// Events of one organization, or (None) of every organization.
    pub fn subscribe(&self, org: Option<OrganizationId>) -> broadcast::Receiver<BusEvent> {
        let Some(org) = org else {
            return self.inner.all.subscribe();
        };
        if let Ok(orgs) = self.inner.orgs.read()
            && let Some(tx) = orgs.get(&org)
        {
            return tx.subscribe();
        }
        match self.inner.orgs.write() {
            Ok(mut orgs) => orgs
                .entry(org)
                .or_insert_with(|| broadcast::channel(PER_ORGANIZATION).0)
                .subscribe(),
            // A poisoned lock only follows a panic elsewhere; the firehose still delivers.
            Err(_) => self.inner.all.subscribe(),
        }
    }

    /// Organizations with a channel (someone listens, or did until the last event).
    pub fn channels(&self) -> usize {
        self.inner.orgs.read().map(|o| o.len()).unwrap_or(0)
    }

    /// Receivers on every channel: each running subscription execution (a shared one counts once
    /// for all its members), and on Postgres the cache's invalidation. From the moment a
    /// subscription is counted here it receives every later event.
    pub fn listeners(&self) -> usize {
        let orgs = self
            .inner
            .orgs
            .read()
            .map(|o| o.values().map(broadcast::Sender::receiver_count).sum())
            .unwrap_or(0);
        orgs + self.inner.all.receiver_count()
    }
}

fn alert_json(a: &usage_alert::Model) -> Value {
    json!({
        "id": a.id,
        "m": a.metric_code,
        "k": a.kind.to_value(),
        "p": a.period_start,
        "e": a.alert_epoch,
        "t": a.threshold_pct,
        "u": a.used,
        "al": a.allowance,
        "up": a.utilization_pct,
        "c": a.created_at,
    })
}

fn alert_from_json(org: uuid::Uuid, v: &Value) -> Option<usage_alert::Model> {
    Some(usage_alert::Model {
        organization_id: org,
        id: serde_json::from_value(v.get("id")?.clone()).ok()?,
        metric_code: v.get("m")?.as_str()?.to_owned(),
        kind: AlertKind::try_from_value(&v.get("k")?.as_str()?.to_owned()).ok()?,
        period_start: serde_json::from_value(v.get("p")?.clone()).ok()?,
        alert_epoch: i32::try_from(v.get("e")?.as_i64()?).ok()?,
        threshold_pct: v.get("t")?.as_i64()?,
        used: v.get("u")?.as_i64()?,
        allowance: v.get("al")?.as_i64()?,
        utilization_pct: v.get("up")?.as_i64()?,
        created_at: serde_json::from_value(v.get("c")?.clone()).ok()?,
    })
}

/// The NOTIFY payloads of one commit: its alerts and the usage change of `org`, in as few payloads
/// as fit (usually one).
pub fn encode(org: OrganizationId, alerts: &[usage_alert::Model]) -> Vec<String> {
    let mut payloads = Vec::new();
    let mut batch: Vec<Value> = Vec::new();
    for a in alerts {
        batch.push(alert_json(a));
        let text = json!({ "o": org.0, "a": batch }).to_string();
        if text.len() > MAX_PAYLOAD && batch.len() > 1 {
            let last = batch.pop();
            payloads.push(json!({ "o": org.0, "a": batch, "x": true }).to_string());
            batch = last.into_iter().collect();
        }
    }
    payloads.push(json!({ "o": org.0, "a": batch }).to_string());
    payloads
}

/// The NOTIFY payload that says an organization's usage changed (a recording's, sent with it).
pub fn encode_usage(org: OrganizationId) -> String {
    json!({ "o": org.0, "a": [] }).to_string()
}

/// The NOTIFY payload of one alert alone (its recording's payload says the usage changed).
pub fn encode_alert(org: OrganizationId, alert: &usage_alert::Model) -> String {
    json!({ "o": org.0, "a": [alert_json(alert)], "x": true }).to_string()
}

/// The NOTIFY payload of a change of the platform team.
pub fn encode_team_changed() -> String {
    json!({ "team": true }).to_string()
}

/// The NOTIFY payload of an upsertPlan.
pub fn encode_plans_changed() -> String {
    json!({ "plans": true }).to_string()
}

/// The NOTIFY payload of a membership's change.
pub fn encode_membership_changed(org: OrganizationId, membership: uuid::Uuid) -> String {
    json!({ "o": org.0, "m": membership }).to_string()
}

/// The bus events of one NOTIFY payload. A payload marked `x` carries alerts only; the last payload
/// of a commit also says the organization's usage changed.
pub fn decode(payload: &str) -> Option<Vec<BusEvent>> {
    let v: Value = serde_json::from_str(payload).ok()?;
    if v.get("plans").is_some() {
        return Some(vec![BusEvent::PlansChanged]);
    }
    if v.get("team").is_some() {
        return Some(vec![BusEvent::TeamChanged]);
    }
    let org: uuid::Uuid = serde_json::from_value(v.get("o")?.clone()).ok()?;
    if let Some(m) = v.get("m") {
        let membership: uuid::Uuid = serde_json::from_value(m.clone()).ok()?;
        return Some(vec![BusEvent::MembershipChanged(
            OrganizationId(org),
            membership,
        )]);
    }
    let mut events: Vec<BusEvent> = v
        .get("a")?
        .as_array()?
        .iter()
        .filter_map(|a| alert_from_json(org, a))
        .map(|a| BusEvent::Alert(Arc::new(a)))
        .collect();
    if v.get("x").is_none() {
        events.push(BusEvent::UsageChanged(OrganizationId(org)));
    }
    Some(events)
}

/// Forwards the channel's notifications to this replica's bus, for as long as the process runs. It
/// reconnects after its connection drops; what was committed meanwhile is read with the catch-up
/// query (`usageAlerts(since:)`). `ready` turns true each time LISTEN is in place.
///
/// It also keeps this replica's entitlement `cache` in step with every replica's commits, before
/// their events reach the bus: an organization's change invalidates it, a plan's change empties the
/// cache, and so does each connect (notifications may have been missed). So no subscriber woken by
/// an event can read what the event's commit replaced (upsertPlan notifies the plans' change first,
/// then its organizations').
pub async fn listen(
    url: String,
    bus: AlertBus,
    ready: tokio::sync::watch::Sender<bool>,
    cache: std::sync::Arc<crate::domain::cache::StateCache>,
) {
    use sea_orm::sqlx::postgres::PgListener;
    loop {
        let listener = match PgListener::connect(&url).await {
            Ok(mut l) => match l.listen(CHANNEL).await {
                Ok(()) => Some(l),
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN failed; retrying");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot connect for LISTEN; retrying");
                None
            }
        };
        if let Some(mut listener) = listener {
            // Notifications may have been missed while disconnected.
            cache.clear();
            ready.send_replace(true);
            tracing::info!(channel = CHANNEL, "listening for alerts from every replica");
            loop {
                match listener.try_recv().await {
                    Ok(Some(n)) => match decode(n.payload()) {
                        Some(events) => {
                            for e in &events {
                                match e {
                                    BusEvent::UsageChanged(org) => cache.invalidate(*org),
                                    BusEvent::PlansChanged => cache.clear(),
                                    BusEvent::Alert(_)
                                    | BusEvent::MembershipChanged(..)
                                    | BusEvent::TeamChanged => {}
                                }
                            }
                            events.into_iter().for_each(|e| bus.send(e));
                        }
                        None => tracing::warn!("an unreadable notification was ignored"),
                    },
                    Ok(None) => {
                        tracing::warn!("the LISTEN connection dropped; reconnecting");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "LISTEN failed; reconnecting");
                        break;
                    }
                }
            }
        }
        ready.send_replace(false);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_get_only_their_organization() {
        let bus = AlertBus::new(16);
        let (a, b) = (
            OrganizationId(uuid::Uuid::new_v4()),
            OrganizationId(uuid::Uuid::new_v4()),
        );
        let mut ra = bus.subscribe(Some(a));
        let mut all = bus.subscribe(None);
        bus.send(BusEvent::UsageChanged(b));
        bus.send(BusEvent::UsageChanged(a));
        assert_eq!(ra.recv().await.unwrap().organization(), Some(a));
        assert!(ra.try_recv().is_err());
        assert_eq!(all.recv().await.unwrap().organization(), Some(b));
        assert_eq!(all.recv().await.unwrap().organization(), Some(a));
        drop(ra);
        bus.send(BusEvent::UsageChanged(a));
        assert_eq!(
            bus.channels(),
            0,
            "an organization nobody listens to loses its channel"
        );
    }

    fn alert(org: uuid::Uuid) -> usage_alert::Model {
        usage_alert::Model {
            organization_id: org,
            id: uuid::Uuid::now_v7(),
            metric_code: "bookings".into(),
            kind: AlertKind::LimitExceeded,
            period_start: chrono::NaiveDate::from_ymd_opt(2026, 11, 1).unwrap(),
            alert_epoch: 2,
            threshold_pct: 1_000_000,
            used: 1_200_000,
            allowance: 1_000_000,
            utilization_pct: 1_200_000,
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn notifications_round_trip_and_split_when_large() {
        let org = uuid::Uuid::new_v4();
        let one = alert(org);
        let payloads = encode(OrganizationId(org), std::slice::from_ref(&one));
        assert_eq!(payloads.len(), 1);
        let events = decode(&payloads[0]).unwrap();
        assert!(matches!(&events[0], BusEvent::Alert(a) if **a == one));
        assert!(matches!(events[1], BusEvent::UsageChanged(o) if o.0 == org));

        let many: Vec<_> = (0..60).map(|_| alert(org)).collect();
        let payloads = encode(OrganizationId(org), &many);
        assert!(payloads.len() > 1 && payloads.iter().all(|p| p.len() <= MAX_PAYLOAD));
        let events: Vec<BusEvent> = payloads.iter().flat_map(|p| decode(p).unwrap()).collect();
        let alerts = events
            .iter()
            .filter(|e| matches!(e, BusEvent::Alert(_)))
            .count();
        assert_eq!((alerts, events.len() - alerts), (60, 1));
        assert!(matches!(
            decode(&encode_plans_changed()).as_deref(),
            Some([BusEvent::PlansChanged])
        ));
        assert!(matches!(
            decode(&encode_team_changed()).as_deref(),
            Some([BusEvent::TeamChanged])
        ));
    }
}
