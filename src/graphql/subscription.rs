//! Subscription root: live alerts and usage updates from the bus, filtered to what the caller may see.

use std::sync::Arc;
use std::time::Duration;

use async_graphql::{Context, ID, Result, Subscription as GqlSubscription};
use futures_util::Stream;
use tokio::sync::broadcast::error::RecvError;

use super::request_ctx;
use super::types::{AlertKind, UsageAlert, UsageSummary};
use crate::alerts::BusEvent;
use crate::domain::access::{self, Action};
use crate::domain::{OrganizationId, Period};

pub struct Subscription;

#[GqlSubscription]
impl Subscription {
    /// Alerts as they are raised, for one organization (default: the caller's own). The platform team may leave organizationId out to receive every organization's. Authenticated in connection_init.
    async fn usage_alerts(
        &self,
        ctx: &Context<'_>,
        organization_id: Option<ID>,
        kinds: Option<Vec<AlertKind>>,
    ) -> Result<impl Stream<Item = UsageAlert>> {
        let rc = request_ctx(ctx)?;
        let viewer = rc.viewer()?;
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
        let rx = rc.engine.bus.subscribe();
        Ok(futures_util::stream::unfold(
            (rx, kinds),
            move |(mut rx, kinds)| async move {
                loop {
                    match rx.recv().await {
                        Ok(BusEvent::Alert(a)) => {
                            let org_ok = only.is_none_or(|o| o.0 == a.organization_id);
                            let kind_ok = kinds.as_ref().is_none_or(|k| k.contains(&a.kind));
                            if org_ok && kind_ok {
                                return Some((UsageAlert(a), (rx, kinds)));
                            }
                        }
                        Ok(_) | Err(RecvError::Lagged(_)) => continue,
                        Err(RecvError::Closed) => return None,
                    }
                }
            },
        ))
    }

    /// A fresh summary whenever the organization's usage changes, for live dashboards (at most a few a second per organization).
    async fn usage_updated(
        &self,
        ctx: &Context<'_>,
        organization_id: Option<ID>,
    ) -> Result<impl Stream<Item = UsageSummary>> {
        let rc = request_ctx(ctx)?;
        let viewer = rc.viewer()?.clone();
        let id = access::target_org(&viewer, organization_id.as_ref().map(|i| i.as_str()))?;
        let org = OrganizationId(
            access::authorize(&rc.engine.db, &viewer, id, Action::Read)
                .await?
                .id,
        );
        let engine = rc.engine.clone();
        let rx = engine.bus.subscribe();
        let state = (rx, engine, viewer);
        Ok(futures_util::stream::unfold(
            state,
            move |(mut rx, engine, viewer)| async move {
                loop {
                    match rx.recv().await {
                        Ok(ev)
                            if ev.organization() == org
                                && matches!(ev, BusEvent::UsageChanged(_)) =>
                        {
                            // Coalesce a burst: wait a moment and drain what queued meanwhile, then read
                            // the latest state once.
                            tokio::time::sleep(Duration::from_millis(250)).await;
                            while let Ok(_ev) = rx.try_recv() {}
                            let orgs =
                                crate::store::orgs::by_ids(&engine.db, viewer.scope(), &[org])
                                    .await
                                    .ok()?;
                            let summary = engine
                                .summaries(&engine.db, viewer.scope(), orgs, Period::current())
                                .await
                                .ok()?;
                            let s = summary.into_iter().next()?;
                            return Some((UsageSummary(Arc::new(s)), (rx, engine, viewer)));
                        }
                        Ok(_) | Err(RecvError::Lagged(_)) => continue,
                        Err(RecvError::Closed) => return None,
                    }
                }
            },
        ))
    }
}
