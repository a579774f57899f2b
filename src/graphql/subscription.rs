//! Subscription root: live alerts and usage updates from the bus, filtered to what the caller may see.
//!
//! A subscriber listens on its organization's bounded channel. One that falls behind is not waited
//! for: it receives, in its stream, an error with `extensions.code = "LAGGED"`, how many events it
//! missed, and the `since` to pass to the `usageAlerts` query (or to this subscription) to catch up.

use std::sync::Arc;
use std::time::Duration;

use async_graphql::{Context, ErrorExtensions, ID, Result, Subscription as GqlSubscription};
use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt};
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::request_ctx;
use super::types::{AlertKind, UsageAlert, UsageSummary};
use crate::alerts::BusEvent;
use crate::domain::access::{self, Action};
use crate::domain::{OrganizationId, Scope};

pub struct Subscription;

/// Most stored alerts replayed by `since` before the live ones.
const REPLAY_LIMIT: usize = 1000;

/// The least time between two results of usageUpdated (and membershipUpdated): a change after a
/// quiet moment is read at once; the changes of a burst within this time are read once, at its end.
const COALESCE: Duration = Duration::from_millis(250);

/// Waits, if needed, so that a result comes at least `COALESCE` after the previous one (a throttle
/// with its first change delivered at once, rather than a delay on every change).
async fn throttle(last: Option<tokio::time::Instant>) {
    if let Some(last) = last {
        tokio::time::sleep_until(last + COALESCE).await;
    }
}

/// What a running subscription tells whoever drives it, besides its results: put in the request's
/// data by the WebSocket layer, which shares one execution among identical subscriptions and so
/// needs to tell its subscribers what a falling-behind means for them.
#[derive(Default)]
pub struct StreamNotes {
    /// When the alert in the latest result was raised (`usageAlerts`), for a subscriber's `since`.
    last_alert_at: std::sync::Mutex<Option<DateTime<Utc>>>,
    /// Each result supersedes the previous ones (`usageUpdated`): a subscriber that falls behind
    /// only needs the latest, and is not told it missed anything.
    latest_wins: std::sync::atomic::AtomicBool,
}

impl StreamNotes {
    fn alert(&self, at: DateTime<Utc>) {
        if let Ok(mut last) = self.last_alert_at.lock() {
            *last = Some(at);
        }
    }

    /// The raising time of the alert in the result just produced (taken, so that it is read once).
    pub fn take_alert_at(&self) -> Option<DateTime<Utc>> {
        self.last_alert_at.lock().ok().and_then(|mut l| l.take())
    }

    /// Marks each result as superseding the ones before it.
    pub fn set_latest_wins(&self) {
        self.latest_wins
            .store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn latest_wins(&self) -> bool {
        self.latest_wins.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// The notice a subscriber gets in its stream when it fell behind and missed `missed` events.
pub fn lagged(missed: u64, since: Option<DateTime<Utc>>) -> async_graphql::Error {
    async_graphql::Error::new(format!(
        "this subscriber fell behind and missed {missed} events; read them with the usageAlerts query"
    ))
    .extend_with(|_, e| {
        e.set("code", "LAGGED");
        e.set("missed", missed);
        if let Some(s) = since {
            e.set("since", s.to_rfc3339());
        }
    })
}

/// Stored alerts since `since`, oldest first (the catch-up before the live stream).
async fn replay(
    db: &crate::store::db::Db,
    scope: Scope,
    org: Option<OrganizationId>,
    since: DateTime<Utc>,
) -> Result<Vec<entity::usage_alert::Model>> {
    let mut out = Vec::new();
    let mut after: Option<Uuid> = None;
    while out.len() < REPLAY_LIMIT {
        let page =
            crate::store::ledger::alerts_page(db, scope, org, Some(since), after, 200).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        let short = page.len() < 200;
        out.extend(page);
        if short {
            break;
        }
    }
    out.truncate(REPLAY_LIMIT);
    out.reverse();
    Ok(out)
}

#[GqlSubscription]
impl Subscription {
    /// Alerts as they are raised, for one organization (default: the caller's own). The platform team may leave organizationId out to receive every organization's. Authenticated in connection_init.
    async fn usage_alerts(
        &self,
        ctx: &Context<'_>,
        organization_id: Option<ID>,
        kinds: Option<Vec<AlertKind>>,
        #[graphql(
            desc = "Replay the stored alerts raised at or after this instant (at most 1000, oldest first) before the live ones, with none missed or repeated in between: what a reconnecting client passes. Inclusive, so an alert raised at that very instant is never lost: a client passing the last alert it saw receives it again, with the same id."
        )]
        since: Option<DateTime<Utc>>,
    ) -> Result<impl Stream<Item = Result<UsageAlert>>> {
        let rc = request_ctx(ctx)?;
        let viewer = rc.viewer()?;
        let since = since
            .map(|s| crate::domain::bounded_instant("since", s))
            .transpose()?;
        let notes = ctx.data_opt::<Arc<StreamNotes>>().cloned();
        let only: Option<OrganizationId> = match (&organization_id, viewer.platform) {
            (None, true) => None,
            _ => {
                let id = access::target_org(viewer, organization_id.as_ref().map(|i| i.as_str()))?;
                Some(OrganizationId(
                    access::authorize(&rc.engine.db, viewer, id, Action::Read)
                        .await?
                        .id,
                ))
            }
        };
        let kinds: Option<Vec<entity::enums::AlertKind>> =
            kinds.map(|k| k.into_iter().map(Into::into).collect());
        let wanted = Arc::new(move |a: &entity::usage_alert::Model| {
            only.is_none_or(|o| o.0 == a.organization_id)
                && kinds.as_ref().is_none_or(|k| k.contains(&a.kind))
        });
        // Listen first, then read the store: an alert committed in between is in one or the other,
        // and the ids (time-ordered) tell which were already sent.
        let rx = rc.engine.bus.subscribe(only);
        let stored = match since {
            Some(s) => replay(&rc.engine.db, viewer.scope(), only, s).await?,
            None => vec![],
        };
        // A subscription lives long: it must not keep the request's read transaction open.
        rc.engine.db.release().await;
        let stored: Vec<_> = stored.into_iter().filter(|a| wanted(a)).collect();
        let last_sent = stored.last().map(|a| (a.id, a.created_at));
        let replay_notes = notes.clone();
        let replayed = futures_util::stream::iter(stored).map(move |a| {
            if let Some(n) = &replay_notes {
                n.alert(a.created_at);
            }
            Ok(UsageAlert(Arc::new(a)))
        });
        let live = futures_util::stream::unfold(
            (rx, last_sent.or(since.map(|s| (Uuid::nil(), s)))),
            move |(mut rx, mut last)| {
                let wanted = wanted.clone();
                let notes = notes.clone();
                async move {
                    loop {
                        match rx.recv().await {
                            Ok(BusEvent::Alert(a)) => {
                                if !wanted(&a) || last.is_some_and(|(id, _)| a.id <= id) {
                                    continue;
                                }
                                last = Some((a.id, a.created_at));
                                if let Some(n) = &notes {
                                    n.alert(a.created_at);
                                }
                                return Some((Ok(UsageAlert(a)), (rx, last)));
                            }
                            Ok(
                                BusEvent::UsageChanged(_)
                                | BusEvent::PlansChanged
                                | BusEvent::TeamChanged
                                | BusEvent::MembershipChanged(..),
                            ) => continue,
                            Err(RecvError::Lagged(missed)) => {
                                return Some((
                                    Err(lagged(missed, last.map(|(_, at)| at))),
                                    (rx, last),
                                ));
                            }
                            Err(RecvError::Closed) => return None,
                        }
                    }
                }
            },
        );
        Ok(replayed.chain(live))
    }

    /// A fresh summary whenever the organization's usage changes, for live dashboards (at most a few a second per organization).
    async fn usage_updated(
        &self,
        ctx: &Context<'_>,
        organization_id: Option<ID>,
    ) -> Result<impl Stream<Item = Result<UsageSummary>>> {
        let rc = request_ctx(ctx)?;
        let viewer = rc.viewer()?.clone();
        let id = access::target_org(&viewer, organization_id.as_ref().map(|i| i.as_str()))?;
        let org = OrganizationId(
            access::authorize(&rc.engine.db, &viewer, id, Action::Read)
                .await?
                .id,
        );
        if let Some(n) = ctx.data_opt::<Arc<StreamNotes>>() {
            n.set_latest_wins();
        }
        let engine = rc.engine.clone();
        engine.db.release().await;
        let rx = engine.bus.subscribe(Some(org));
        let state = (rx, engine, viewer, None);
        Ok(futures_util::stream::unfold(
            state,
            move |(mut rx, engine, viewer, last)| async move {
                loop {
                    match rx.recv().await {
                        // A lag only means more changes happened: the state read below covers them.
                        Ok(BusEvent::UsageChanged(_)) | Err(RecvError::Lagged(_)) => {
                            // A change after a quiet moment is read at once; within `COALESCE` of
                            // the previous result, a burst is gathered and read once. What queued
                            // meanwhile is drained; a change after the drain wakes the next round,
                            // so the stream always ends on the latest state.
                            throttle(last).await;
                            while rx.try_recv().is_ok() {}
                            // Read with the other rounds queued meanwhile, in one statement (on
                            // Postgres, with the one that sets their scope).
                            let read = engine.round_summary(viewer.scope(), org).await;
                            let item = match read {
                                Ok(summary) => Ok(UsageSummary(summary?)),
                                // The database failed this round: the subscriber hears it, and the
                                // next change tries again (the stream goes on).
                                Err(e) => Err(async_graphql::Error::from(e)),
                            };
                            let now = Some(tokio::time::Instant::now());
                            return Some((item, (rx, engine, viewer, now)));
                        }
                        Ok(
                            BusEvent::Alert(_)
                            | BusEvent::PlansChanged
                            | BusEvent::TeamChanged
                            | BusEvent::MembershipChanged(..),
                        ) => continue,
                        Err(RecvError::Closed) => return None,
                    }
                }
            },
        ))
    }

    /// The membership afresh whenever its usage or status changes (bookings held, completed or cancelled, corrections, pause, resume, cancel). A CUSTOMER may follow its own memberships.
    async fn membership_updated(
        &self,
        ctx: &Context<'_>,
        membership_id: ID,
    ) -> Result<impl Stream<Item = Result<super::memberships::Membership>>> {
        let rc = request_ctx(ctx)?;
        let (m, viewer) = super::memberships::watched_membership(ctx, &membership_id).await?;
        if let Some(n) = ctx.data_opt::<Arc<StreamNotes>>() {
            n.set_latest_wins();
        }
        let engine = rc.engine.clone();
        engine.db.release().await;
        let (org, id) = (OrganizationId(m.organization_id), m.id);
        let rx = engine.bus.subscribe(Some(org));
        Ok(futures_util::stream::unfold(
            (rx, engine, viewer, None),
            move |(mut rx, engine, viewer, last)| async move {
                loop {
                    match rx.recv().await {
                        Ok(BusEvent::MembershipChanged(_, changed)) if changed == id => {}
                        Err(RecvError::Lagged(_)) => {}
                        Ok(_) => continue,
                        Err(RecvError::Closed) => return None,
                    }
                    // At once after a quiet moment; a burst is read once (see `throttle`).
                    throttle(last).await;
                    while rx.try_recv().is_ok() {}
                    let db = engine.db.scoped(viewer.scope());
                    let read = super::memberships::reload_membership(&db, viewer.scope(), id).await;
                    db.release().await;
                    let item = match read {
                        Ok(Some(m)) => Ok(m),
                        Ok(None) => Err(crate::error::AppError::not_found("membership").into()),
                        Err(e) => Err(e),
                    };
                    let now = Some(tokio::time::Instant::now());
                    return Some((item, (rx, engine, viewer, now)));
                }
            },
        ))
    }
}
