//! Revokes: removing a message does not stop a worker that already holds it (prefetched,
//! waiting for its ETA, just popped), so a run broadcasts a revoke for the tasks it removed or
//! found taken, and remembers them so `restore` can warn that workers will discard them.

use crate::error::Result;
use crate::janitor::{Janitor, OwnKey};
use crate::reports::RevokeReport;

/// How long a run's revoked task ids are kept for `restore`'s warning: longer than Celery
/// remembers a revoke (3 hours), with room for workers that keep them in a state file.
const REVOKED_KEEP_SECONDS: u64 = 7 * 24 * 3600;

impl Janitor {
    /// The task ids a run revoked (see `remember_revoked`).
    pub(crate) fn revoked_key(&self, run_id: &str) -> Vec<u8> {
        self.own_key(OwnKey::Revoked(run_id))
    }

    /// Keeps the run's revoked task ids (as long as Celery remembers a revoke), so `restore`
    /// can warn that workers will discard those tasks.
    pub(crate) async fn remember_revoked(&self, run_id: &str, task_ids: &[String]) -> Result<()> {
        let key = self.revoked_key(run_id);
        let mut con = self.broker.con.clone();
        redis::pipe()
            .cmd("SADD")
            .arg(&key)
            .arg(task_ids)
            .ignore()
            .cmd("EXPIRE")
            .arg(&key)
            .arg(REVOKED_KEEP_SECONDS)
            .ignore()
            .query_async::<()>(&mut con)
            .await?;
        Ok(())
    }

    /// Tells live workers to discard these tasks: removing an `unacked` entry does not stop a
    /// worker that already holds the message (prefetched or waiting for its ETA).
    pub(crate) async fn broadcast_revoke(&self, task_ids: &[String]) -> Result<RevokeReport> {
        let delivery_tag = uuid::Uuid::new_v4().to_string();
        let envelope = janitor_wire::control::revoke(task_ids, &delivery_tag);
        let channel = self.broker_layout.pidbox_channel(self.broker.db);
        let heard_by = self.broker.publish(&channel, &envelope).await?;
        Ok(RevokeReport {
            task_ids: task_ids.len() as u64,
            heard_by,
        })
    }
}
