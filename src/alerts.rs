//! The alert bus: an in-process broadcast of committed changes to live subscribers. Publishers call it
//! only after commit. Each organization has its own bounded channel (created when someone listens,
//! dropped when nobody does), so a subscriber wakes only for its own organization; the platform team's
//! "every organization" subscription listens on one firehose channel. A slow subscriber lags and is
//! told so; it never slows a publisher.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use entity::usage_alert;
use tokio::sync::broadcast;

use crate::domain::OrganizationId;

#[derive(Debug, Clone)]
pub enum BusEvent {
    Alert(Arc<usage_alert::Model>),
    UsageChanged(OrganizationId),
}

impl BusEvent {
    pub fn organization(&self) -> OrganizationId {
        match self {
            BusEvent::Alert(a) => OrganizationId(a.organization_id),
            BusEvent::UsageChanged(o) => *o,
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
}

impl AlertBus {
    /// `capacity`: what the firehose holds for a platform subscriber that has not read it yet.
    pub fn new(capacity: usize) -> Self {
        let (all, _) = broadcast::channel(capacity.max(1));
        AlertBus {
            inner: Arc::new(Inner {
                orgs: RwLock::new(HashMap::new()),
                all,
            }),
        }
    }

    pub fn send(&self, event: BusEvent) {
        let org = event.organization();
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
        assert_eq!(ra.recv().await.unwrap().organization(), a);
        assert!(ra.try_recv().is_err());
        assert_eq!(all.recv().await.unwrap().organization(), b);
        assert_eq!(all.recv().await.unwrap().organization(), a);
        drop(ra);
        bus.send(BusEvent::UsageChanged(a));
        assert_eq!(
            bus.channels(),
            0,
            "an organization nobody listens to loses its channel"
        );
    }
}
