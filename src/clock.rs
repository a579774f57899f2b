//! The time memberships run on. In production it is the system clock; a test (in the same process as
//! the server) moves it to drive cycles across their boundaries without sleeping, as Stripe's test
//! clocks do. Shared by every clone of the engine.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Duration, Utc};

#[derive(Clone, Debug, Default)]
pub struct Clock {
    /// Milliseconds added to the system clock.
    offset_ms: Arc<AtomicI64>,
}

impl Clock {
    pub fn now(&self) -> DateTime<Utc> {
        let offset = self.offset_ms.load(Ordering::Relaxed);
        let now = Utc::now();
        if offset == 0 {
            return now;
        }
        now.checked_add_signed(Duration::milliseconds(offset))
            .unwrap_or(now)
    }

    /// From now on, `now()` answers `at` plus the time that passes.
    pub fn set(&self, at: DateTime<Utc>) {
        let offset = (at - Utc::now()).num_milliseconds();
        self.offset_ms.store(offset, Ordering::Relaxed);
    }

    pub fn advance(&self, by: Duration) {
        self.offset_ms
            .fetch_add(by.num_milliseconds(), Ordering::Relaxed);
    }
}
