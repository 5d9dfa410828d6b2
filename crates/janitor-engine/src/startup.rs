//! Start-up cleanup support: a worker node runs `cleanup-orphaned --startup` when it starts,
//! and a rolling restart of many nodes must not scan again and again. Every completed cleanup
//! run (not `revoke`, not `restore`) writes `celery-janitor:last-cleanup`; the start-up run
//! skips when start-up cleanup is off, when that record is younger than
//! `[cleanup] startup_min_interval`, or when another run holds the lock.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::archive::printable;
use crate::error::{EngineError, Result};
use crate::janitor::{Janitor, OwnKey};

/// The last completed cleanup run (`celery-janitor:last-cleanup`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastCleanup {
    pub run_id: String,
    pub command: String,
    pub completed_at: DateTime<Utc>,
}

impl Janitor {
    /// Records a completed cleanup run. A failure is logged: the run itself completed.
    pub(crate) async fn note_completed_cleanup(&self, run_id: &str, command: &str) {
        let value = serde_json::to_string(&LastCleanup {
            run_id: run_id.to_owned(),
            command: command.to_owned(),
            completed_at: Utc::now(),
        })
        .expect("serializable");
        let mut con = self.broker.con.clone();
        let written: redis::RedisResult<()> = redis::cmd("SET")
            .arg(self.own_key(OwnKey::LastCleanup))
            .arg(value)
            .query_async(&mut con)
            .await;
        if let Err(e) = written {
            tracing::warn!(error = %e, run_id, "cannot record the completed cleanup (last-cleanup)");
        }
    }

    /// The last completed cleanup run, if recorded (and readable).
    pub async fn last_cleanup(&self) -> Result<Option<LastCleanup>> {
        let mut con = self.broker.con.clone();
        let raw: Option<Vec<u8>> = redis::cmd("GET")
            .arg(self.own_key(OwnKey::LastCleanup))
            .query_async(&mut con)
            .await?;
        Ok(raw.and_then(|r| serde_json::from_slice(&r).ok()))
    }

    /// Why a worker's start-up cleanup should not run now, or `None` to run it.
    pub async fn startup_skip_reason(&self) -> Result<Option<String>> {
        if !self.settings.cleanup_on_startup {
            return Ok(Some("cleanup_on_startup is false".into()));
        }
        let last = match self.last_cleanup().await {
            // Not a string (written by something else): as unreadable as a value that is not
            // our JSON, which is ignored; this run's completion rewrites it.
            Err(EngineError::Redis(e)) if e.code() == Some("WRONGTYPE") => {
                tracing::warn!(
                    key = %printable(&self.own_key(OwnKey::LastCleanup)),
                    "the last-cleanup record is not a string: ignored (a completed cleanup rewrites it)"
                );
                None
            }
            other => other?,
        };
        if let Some(last) = last {
            let age = (Utc::now() - last.completed_at).num_milliseconds() as f64 / 1000.0;
            let min = self.settings.startup_min_interval;
            if age >= 0.0 && age < min {
                return Ok(Some(format!(
                    "a cleanup completed {age:.0} s ago (run {}), less than startup_min_interval ({min} s)",
                    last.run_id
                )));
            }
        }
        let mut con = self.broker.con.clone();
        let holder: Option<String> = match redis::cmd("GET")
            .arg(self.own_key(OwnKey::Lock))
            .query_async(&mut con)
            .await
        {
            // Not a lock celery-janitor wrote: the run refuses it and names the key.
            Err(e) if e.code() == Some("WRONGTYPE") => return Ok(None),
            other => other?,
        };
        if let Some(holder) = holder {
            let who = serde_json::from_str::<crate::lock::Holder>(&holder)
                .map(|h| format!(" (run {} on {})", h.run_id, h.host))
                .unwrap_or_default();
            return Ok(Some(format!("another cleanup is running{who}")));
        }
        Ok(None)
    }
}
