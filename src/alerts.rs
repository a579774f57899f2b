//! The alert bus: an in-process broadcast of committed changes to live subscribers. Publishers call it
//! only after commit. A slow subscriber lags and is told so; it never slows a publisher.

use std::sync::Arc;

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

#[derive(Clone)]
pub struct AlertBus {
    tx: broadcast::Sender<BusEvent>,
}

impl AlertBus {
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity);
        AlertBus { tx }
    }

    pub fn send(&self, event: BusEvent) {
        // No subscriber is not an error: alerts are stored and can be caught up with the query.
        let _ = self.tx.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<BusEvent> {
        self.tx.subscribe()
    }
}
