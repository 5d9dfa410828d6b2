//! The run lock: one cleanup at a time, on the broker (and on the backend when it is another
//! Redis).
//!
//! The lock's value says who holds it (host, pid, run id, since), so a second run can tell the
//! user who is busy and whether the holder is still alive. A heartbeat refreshes it every few
//! seconds for the whole run — scan, grace wait, lost-row query, removals — with a short TTL, so
//! a crashed holder's lock clears within [`LOCK_TTL_MS`]. Every removal script also checks the
//! lock, so a run that lost it changes nothing more.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use serde::{Deserialize, Serialize};

use crate::archive::printable;
use crate::error::{EngineError, Result};
use crate::host;
use crate::redis_io::RedisHandle;

/// The lock expires this long after its last refresh.
pub(crate) const LOCK_TTL_MS: u64 = 30_000;
/// The heartbeat refreshes it this often.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// Who holds the run lock: the lock key's value, as JSON.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Holder {
    pub host: String,
    pub pid: u32,
    pub run_id: String,
    /// RFC 3339 time the lock was taken.
    pub since: String,
    /// Makes each holder's value unique, so compare-and-set can't confuse two holders.
    pub token: String,
}

struct Held {
    handle: RedisHandle,
    key: Vec<u8>,
    /// The exact value written: compare-and-set compares against it.
    value: String,
}

impl Held {
    /// Sets the lock's TTL back to `LOCK_TTL_MS`; false if it is no longer ours.
    async fn refresh(&self, script: &Script) -> Result<bool> {
        self.handle
            .lock_cas(script, &self.key, &self.value, Some(LOCK_TTL_MS))
            .await
    }
}

/// A held run lock; release it with [`RunLock::release`] (it expires by itself otherwise).
pub(crate) struct RunLock {
    held: Arc<Vec<Held>>,
    lost: Arc<AtomicBool>,
    heartbeat: tokio::task::JoinHandle<()>,
    /// `lock.lua`, which refreshes and releases by compare-and-set.
    script: Script,
}

impl RunLock {
    /// Takes the lock on every handle, or none. `take_over` replaces a lock whose holder ran on
    /// this host and is no longer running.
    pub(crate) async fn take(
        script: &Script,
        handles: Vec<RedisHandle>,
        key: &[u8],
        run_id: &str,
        take_over: bool,
    ) -> Result<RunLock> {
        let holder = Holder {
            host: host::hostname(),
            pid: host::pid(),
            run_id: run_id.to_owned(),
            since: chrono::Utc::now().to_rfc3339(),
            token: uuid::Uuid::new_v4().simple().to_string(),
        };
        let value = serde_json::to_string(&holder).expect("serializable");
        let mut held = Vec::new();
        for handle in handles {
            let mut outcome = handle.lock_with(key, &value, LOCK_TTL_MS).await;
            if let Ok(false) = outcome {
                let busy = busy_error(&handle, key).await;
                match (&busy, take_over) {
                    (Ok((EngineError::Busy { stale: true, .. }, current)), true) => {
                        tracing::warn!(lock = %printable(key), holder = %current, "taking over a lock left by a process that is gone");
                        handle.lock_cas(script, key, current, None).await.ok();
                        outcome = handle.lock_with(key, &value, LOCK_TTL_MS).await;
                    }
                    _ => outcome = Err(busy.map(|(e, _)| e).unwrap_or_else(|e| e)),
                }
            }
            match outcome {
                Ok(true) => held.push(Held {
                    handle,
                    key: key.to_vec(),
                    value: value.clone(),
                }),
                Ok(false) => {
                    release_all(script, &held).await;
                    let err = busy_error(&handle, key).await.map(|(e, _)| e);
                    return Err(err.unwrap_or_else(|e| e));
                }
                Err(e) => {
                    release_all(script, &held).await;
                    return Err(e);
                }
            }
        }
        let held = Arc::new(held);
        let lost = Arc::new(AtomicBool::new(false));
        let heartbeat = tokio::spawn(heartbeat(script.clone(), held.clone(), lost.clone()));
        Ok(RunLock {
            held,
            lost,
            heartbeat,
            script: script.clone(),
        })
    }

    /// The value the removal scripts compare with the lock key: the same on every server.
    pub(crate) fn token(&self) -> &str {
        &self.held[0].value
    }

    /// Fails once the heartbeat found the lock taken or deleted by someone else.
    pub(crate) fn ensure_held(&self) -> Result<()> {
        if self.lost.load(Ordering::SeqCst) {
            Err(EngineError::LockLost)
        } else {
            Ok(())
        }
    }

    /// Refreshes the lock now and fails if it is no longer this run's: for a step that no Lua
    /// script guards (the lost-row UPDATE), where the heartbeat's last word may be seconds old.
    pub(crate) async fn confirm_held(&self) -> Result<()> {
        self.ensure_held()?;
        for h in self.held.iter() {
            if !h.refresh(&self.script).await? {
                self.lost.store(true, Ordering::SeqCst);
                return Err(EngineError::LockLost);
            }
        }
        Ok(())
    }

    pub(crate) async fn release(self) {
        self.heartbeat.abort();
        release_all(&self.script, &self.held).await;
    }
}

/// A lock dropped without [`RunLock::release`] (a front end that let a `Run` go on an error)
/// stops being refreshed, so it expires within [`LOCK_TTL_MS`] instead of being kept alive by
/// a detached heartbeat for as long as the process runs.
impl Drop for RunLock {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

/// Describes the current holder; also returns its exact value (for a take-over).
async fn busy_error(handle: &RedisHandle, key: &[u8]) -> Result<(EngineError, String)> {
    let mut con = handle.con.clone();
    let (ty, pttl): (String, i64) = redis::pipe()
        .cmd("TYPE")
        .arg(key)
        .cmd("PTTL")
        .arg(key)
        .query_async(&mut con)
        .await?;
    let value: Option<Vec<u8>> = if ty == "string" {
        redis::cmd("GET").arg(key).query_async(&mut con).await?
    } else {
        None
    };
    let text = value
        .as_deref()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default();
    let holder: Option<Box<Holder>> = serde_json::from_str(&text).ok();
    // Our locks always expire; one that never does was left by something else (or by hand).
    let stale = ty == "string" && pttl == -1
        || holder
            .as_ref()
            .is_some_and(|h| h.host == host::hostname() && !host::pid_alive(h.pid));
    Ok((
        EngineError::Busy {
            key: printable(key),
            holder,
            expires_in_ms: Some(pttl),
            stale,
        },
        text,
    ))
}

async fn release_all(script: &Script, held: &[Held]) {
    for h in held {
        if let Err(e) = h.handle.lock_cas(script, &h.key, &h.value, None).await {
            tracing::warn!(error = %e, "could not release the janitor lock; it expires by itself");
        }
    }
}

/// Refreshes every held lock until aborted. A refresh that finds the lock gone or someone
/// else's marks it lost; a Redis error is retried at the next beat (the TTL leaves room for
/// several).
async fn heartbeat(script: Script, held: Arc<Vec<Held>>, lost: Arc<AtomicBool>) {
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        for h in held.iter() {
            match h.refresh(&script).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::error!(lock = %printable(&h.key), "the janitor lock was taken or deleted by someone else");
                    lost.store(true, Ordering::SeqCst);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not refresh the janitor lock; retrying")
                }
            }
        }
    }
}
