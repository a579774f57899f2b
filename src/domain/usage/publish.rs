//! Commit, then live delivery: NOTIFY inside the transaction on Postgres, the bus after commit elsewhere.

use super::*;

impl Engine {
    /// Commits, and delivers the commit's alerts and usage change to live subscribers: on Postgres by
    /// NOTIFY inside the transaction, so every replica's listener receives it exactly when (and only
    /// if) it commits; elsewhere on this process's bus right after the commit.
    pub async fn commit_and_publish(
        &self,
        txn: crate::store::db::WriteTxn,
        org: OrganizationId,
        alerts: &[usage_alert::Model],
    ) -> AppResult<()> {
        self.commit_and_publish_all(txn, &[(org, alerts)], false)
            .await
    }

    /// Commits changes to several organizations (and, with `plans_changed`, to a plan's limits),
    /// then publishes them as `commit_and_publish` does for one.
    pub async fn commit_and_publish_all(
        &self,
        txn: crate::store::db::WriteTxn,
        changes: &[(OrganizationId, &[usage_alert::Model])],
        plans_changed: bool,
    ) -> AppResult<()> {
        for a in changes.iter().flat_map(|(_, alerts)| alerts.iter()) {
            metrics::counter!("tollgate_alerts_total", "kind" => a.kind.to_value()).increment(1);
        }
        let invalidate = || {
            if plans_changed {
                self.cache.clear();
            } else {
                for (org, _) in changes {
                    self.cache.invalidate(*org);
                }
            }
        };
        if self.db.is_postgres() {
            // The plans' change first: every replica empties its cache when it arrives
            // (`alerts::listen`), before the organizations' changes wake their subscribers' rounds.
            if plans_changed {
                let payload = crate::alerts::encode_plans_changed();
                store::notify(&txn, crate::alerts::CHANNEL, &payload).await?;
            }
            for (org, alerts) in changes {
                for payload in crate::alerts::encode(*org, alerts) {
                    store::notify(&txn, crate::alerts::CHANNEL, &payload).await?;
                }
            }
            txn.commit().await?;
            // Before the answer leaves: this replica's next read sees the write.
            invalidate();
        } else {
            txn.commit().await?;
            invalidate();
            for (org, alerts) in changes {
                self.publish(*org, alerts);
            }
        }
        Ok(())
    }

    /// Commits a group of recordings. On Postgres their statements already queued the NOTIFYs (the
    /// usage change with each recording, each new alert with its insert); elsewhere this process's
    /// bus hears of them after the commit.
    pub(super) async fn commit_recorded(
        &self,
        txn: crate::store::db::WriteTxn,
        changes: &[(OrganizationId, Vec<usage_alert::Model>)],
    ) -> AppResult<()> {
        for a in changes.iter().flat_map(|(_, alerts)| alerts.iter()) {
            metrics::counter!("tollgate_alerts_total", "kind" => a.kind.to_value()).increment(1);
        }
        txn.commit().await?;
        for (org, alerts) in changes {
            self.cache.invalidate(*org);
            if !self.db.is_postgres() {
                self.publish(*org, alerts);
            }
        }
        Ok(())
    }

    /// Publishes committed alerts and a usage change to this process's subscribers.
    fn publish(&self, org: OrganizationId, alerts: &[usage_alert::Model]) {
        for a in alerts {
            self.bus.send(BusEvent::Alert(Arc::new(a.clone())));
        }
        self.bus.send(BusEvent::UsageChanged(org));
    }
}
