//! Revokes: removing a message does not stop a worker that already holds it (prefetched,
//! waiting for its ETA, just popped), so a run broadcasts a revoke for the tasks it removed or
//! found taken, and remembers them so `restore` can warn that workers will discard them.
//!
//! Durable revokes ([`Janitor::revoke`]): Celery forgets a revoke no live worker heard, so
//! celery-janitor also keeps one in Redis, where the worker guard (`guard.rs`) reads it before
//! each guarded task — including in workers started later.

use serde::{Deserialize, Serialize};

use crate::audit::AuditEvent;
use crate::context::RunCtx;
use crate::error::{EngineError, Result};
use crate::janitor::{Janitor, OwnKey};
use crate::plan::{PlanOptions, RevokedSelection};
use crate::reports::{CleanupReport, RevokeReport};

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

/// What to revoke durably (see [`Janitor::revoke`]).
#[derive(Debug, Clone, Default)]
pub struct RevokeOptions {
    /// Task ids.
    pub task_ids: Vec<String>,
    /// Owner rows, (table, id): every task of that row.
    pub owners: Vec<(String, String)>,
    /// Lift these revocations instead (delete the keys; nothing is broadcast or removed).
    pub undo: bool,
    /// Who asked: kept in the revocation and named by the audit lines of the revoke (default:
    /// the current operation's actor, see [`crate::with_actor`], else this janitor's, see
    /// [`Janitor::set_actor`]).
    pub actor: Option<String>,
    /// Take over a stale run lock (see `CleanupOptions::take_over_lock`).
    pub take_over_lock: bool,
}

/// One durable revocation, as stored in Redis (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// RFC 3339 time it was written.
    pub revoked_at: String,
    pub actor: Option<String>,
    /// Seconds until it expires (when read back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_s: Option<i64>,
}

/// An owner row named by a revoke.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OwnerRef {
    pub table: String,
    pub id: String,
}

/// What `revoke` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DurableRevokeReport {
    pub undo: bool,
    pub task_ids: Vec<String>,
    pub owners: Vec<OwnerRef>,
    /// How long the revocations are kept (`[revoke] ttl_days`); `None` with `undo`.
    pub ttl_days: Option<f64>,
    /// Revocation keys written (or, with `undo`, deleted).
    pub keys: u64,
    /// Celery's own revoke, broadcast to live workers for the task ids.
    pub broadcast: Option<RevokeReport>,
    /// Queued and `unacked` copies removed (archived and audited) under the run lock; `None`
    /// when skipped (see `removal_skipped`) or with `undo`.
    pub removal: Option<CleanupReport>,
    /// Why the removal was skipped (another run holds the lock) or failed (the database did
    /// not answer, …); the guard covers the rest.
    pub removal_skipped: Option<String>,
}

impl Janitor {
    fn check_revoke_targets(&self, o: &RevokeOptions) -> Result<()> {
        let bad = |message: String| {
            EngineError::InvalidOption(janitor_config::ConfigError::Invalid {
                key: "revoke".into(),
                message,
            })
        };
        if o.task_ids.is_empty() && o.owners.is_empty() {
            return Err(bad("name at least one task id or owner row".into()));
        }
        if let Some(id) = o.task_ids.iter().find(|t| t.trim().is_empty()) {
            return Err(bad(format!("empty task id {id:?}")));
        }
        for (table, id) in &o.owners {
            if !self
                .settings
                .owners
                .rules()
                .iter()
                .any(|r| &r.table == table)
            {
                return Err(bad(format!(
                    "table {table:?} is not an [[owners]] table (the guard checks only those)"
                )));
            }
            if id.is_empty() {
                return Err(bad(format!("empty owner id for table {table}")));
            }
        }
        Ok(())
    }

    /// Refuses an owner id its table's id column can never hold in the form the guard and the
    /// cleanup compare (`scan_tasks:042` for an integer key): that revocation would match no task
    /// and say nothing. When the database can't be asked, the ids are taken as given (a revoke
    /// must work while the database is down) and a warning says so.
    async fn check_owner_ids(&self, o: &RevokeOptions) -> Result<()> {
        let rules = self.settings.owners.rules();
        for (table, id) in &o.owners {
            let Some(idx) = rules.iter().position(|r| &r.table == table) else {
                continue;
            };
            match self.db.unmatchable_id(idx, id).await {
                Ok(None) => {}
                Ok(Some(why)) => {
                    return Err(EngineError::InvalidOption(
                        janitor_config::ConfigError::Invalid {
                            key: "revoke --owner".into(),
                            message: format!(
                                "{why}: {table}:{id} would match no task (write the id as the \
                                 column stores it)"
                            ),
                        },
                    ));
                }
                Err(e) => {
                    tracing::warn!(
                        "could not check owner id {table}:{id} against its column ({e}); \
                         revoking it as given"
                    );
                }
            }
        }
        Ok(())
    }

    /// Revokes tasks durably: writes `celery-janitor:revoked:<task id>` and
    /// `celery-janitor:revoked-owner:<table>:<id>` at once (kept `[revoke] ttl_days`), so every
    /// guarded worker skips them — also one started later; broadcasts Celery's own revoke for
    /// the task ids to live workers; then removes their queued and `unacked` copies (archived,
    /// audited) in a run of its own under the run lock — skipped, not failed, when another run
    /// holds it, or reported when it fails once the revocations are written (it is
    /// best-effort). With `undo`, deletes the revocation keys and does nothing else.
    pub async fn revoke(&self, o: &RevokeOptions, cx: &RunCtx<'_>) -> Result<DurableRevokeReport> {
        // Its audit lines (and the removal run's) name the revoke's actor, when it names one.
        crate::audit::as_actor(o.actor.clone(), self.revoke_as_actor(o, cx)).await
    }

    async fn revoke_as_actor(
        &self,
        o: &RevokeOptions,
        cx: &RunCtx<'_>,
    ) -> Result<DurableRevokeReport> {
        self.check_revoke_targets(o)?;
        if !o.undo {
            self.check_owner_ids(o).await?;
        }
        let mut keys: Vec<Vec<u8>> = o
            .task_ids
            .iter()
            .map(|t| self.own_key(OwnKey::RevokedTask(t)))
            .collect();
        keys.extend(
            o.owners
                .iter()
                .map(|(t, i)| self.own_key(OwnKey::RevokedOwner(t, i))),
        );
        let mut report = DurableRevokeReport {
            undo: o.undo,
            task_ids: o.task_ids.clone(),
            owners: o
                .owners
                .iter()
                .map(|(table, id)| OwnerRef {
                    table: table.clone(),
                    id: id.clone(),
                })
                .collect(),
            ..Default::default()
        };
        let mut con = self.broker.con.clone();
        self.check_revocation_keys(&keys, &mut con).await?;
        if o.undo {
            let mut pipe = redis::pipe();
            for k in &keys {
                pipe.cmd("DEL").arg(k);
            }
            let deleted: Vec<u64> = pipe.query_async(&mut con).await?;
            report.keys = deleted.iter().sum();
            self.audit
                .record(&AuditEvent::Revoke {
                    undo: true,
                    task_ids: &o.task_ids,
                    owners: &report.owners,
                    run_id: None,
                })
                .await?;
            self.audit.sync().await?;
            return Ok(report);
        }
        let ttl_days = self.settings.revoke_ttl_days;
        let ttl_ms = (ttl_days * 86_400_000.0).round().max(1.0) as u64;
        let value = serde_json::to_string(&Revocation {
            revoked_at: chrono::Utc::now().to_rfc3339(),
            actor: Some(crate::audit::current_actor(self.audit.log())),
            expires_in_s: None,
        })
        .expect("serializable");
        let mut pipe = redis::pipe();
        for k in &keys {
            pipe.cmd("SET")
                .arg(k)
                .arg(&value)
                .arg("PX")
                .arg(ttl_ms)
                .ignore();
        }
        pipe.query_async::<()>(&mut con).await?;
        report.ttl_days = Some(ttl_days);
        report.keys = keys.len() as u64;
        if !o.task_ids.is_empty() {
            report.broadcast = Some(self.broadcast_revoke(&o.task_ids).await?);
        }
        // The copies still queued or in `unacked`: removed like orphans, under the run lock.
        let plan = PlanOptions {
            revoked: Some(RevokedSelection {
                task_ids: o.task_ids.clone(),
                owners: o.owners.clone(),
            }),
            ..PlanOptions::default()
        };
        let run_id = match self.begin_run(&plan, o.take_over_lock).await {
            Ok(run) => {
                let run_id = run.id().to_owned();
                // Workers that heard the broadcast discard these ids for hours, also after
                // `revoke --undo`: a `restore` of this run must say so (`warn_of_revoked`).
                if report.broadcast.is_some() {
                    if let Err(e) = self.remember_revoked(&run_id, &o.task_ids).await {
                        tracing::warn!(error = %e, "revoke: cannot remember the broadcast ids");
                    }
                }
                let outcome = match run.plan(cx).await {
                    Ok(p) => run.apply(p, cx).await,
                    Err(e) => Err(run.fail(e, cx).await),
                };
                match outcome {
                    Ok(r) => report.removal = Some(r.orphans),
                    // The revocations are written and broadcast; the removal is best-effort.
                    Err(EngineError::Interrupted) => return Err(EngineError::Interrupted),
                    Err(e) => {
                        tracing::warn!(error = %e, "revoke: removal of queued copies failed");
                        report.removal_skipped = Some(format!("the removal failed: {e}"));
                    }
                }
                Some(run_id)
            }
            Err(EngineError::Busy { holder, .. }) => {
                let why = match holder {
                    Some(h) => format!(
                        "another run holds the lock (run {} on {}); the guard covers the rest",
                        h.run_id, h.host
                    ),
                    None => "another run holds the lock; the guard covers the rest".into(),
                };
                tracing::info!(reason = %why, "revoke: removal of queued copies skipped");
                report.removal_skipped = Some(why);
                None
            }
            Err(e) => return Err(e),
        };
        self.audit
            .record(&AuditEvent::Revoke {
                undo: false,
                task_ids: &o.task_ids,
                owners: &report.owners,
                run_id: run_id.as_deref(),
            })
            .await?;
        self.audit.sync().await?;
        Ok(report)
    }

    /// Refuses, before any write, names whose key holds something other than a revocation (a
    /// string): `revoked:<run id>` is also the set of the task ids a run revoked, which `restore`
    /// reads for its warning — a run id given as a task id would overwrite or delete it.
    async fn check_revocation_keys(
        &self,
        keys: &[Vec<u8>],
        con: &mut redis::aio::MultiplexedConnection,
    ) -> Result<()> {
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.cmd("TYPE").arg(k);
        }
        let types: Vec<String> = pipe.query_async(con).await?;
        match keys
            .iter()
            .zip(&types)
            .find(|(_, ty)| ty.as_str() != "string" && ty.as_str() != "none")
        {
            Some((key, ty)) => Err(EngineError::InvalidOption(
                janitor_config::ConfigError::Invalid {
                    key: "revoke".into(),
                    message: format!(
                        "{} is a {ty}, not a revocation (a run's revoked task ids are kept in \
                         `revoked:<run id>`: was a run id given as a task id?); nothing was changed",
                        crate::archive::printable(key)
                    ),
                },
            )),
            None => Ok(()),
        }
    }

    /// The durable revocation of a task id, if any.
    pub async fn revocation(&self, task_id: &str) -> Result<Option<Revocation>> {
        self.read_revocation(self.own_key(OwnKey::RevokedTask(task_id)))
            .await
    }

    /// The durable revocation of an owner row, if any.
    pub async fn owner_revocation(&self, table: &str, id: &str) -> Result<Option<Revocation>> {
        self.read_revocation(self.own_key(OwnKey::RevokedOwner(table, id)))
            .await
    }

    async fn read_revocation(&self, key: Vec<u8>) -> Result<Option<Revocation>> {
        let mut con = self.broker.con.clone();
        let (value, pttl): (Option<Vec<u8>>, i64) = redis::pipe()
            .cmd("GET")
            .arg(&key)
            .cmd("PTTL")
            .arg(&key)
            .query_async(&mut con)
            .await?;
        Ok(value.map(|v| {
            let mut r = serde_json::from_slice(&v).unwrap_or(Revocation {
                revoked_at: String::new(),
                actor: None,
                expires_in_s: None,
            });
            r.expires_in_s = (pttl >= 0).then(|| (pttl + 999) / 1000);
            r
        }))
    }

    /// Restoring a task that is durably revoked (by id or owner row) puts it back only for
    /// the guard to skip it: say so.
    pub(crate) async fn warn_of_durable_revocations(
        &self,
        restored: &[crate::restore::RestoredTask],
        report: &mut crate::restore::RestoreReport,
    ) {
        if restored.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for (_, task, owner) in restored {
            pipe.cmd("EXISTS")
                .arg(self.own_key(OwnKey::RevokedTask(task)));
            match owner {
                Some((table, id)) => pipe
                    .cmd("EXISTS")
                    .arg(self.own_key(OwnKey::RevokedOwner(table, id))),
                None => pipe.cmd("ECHO").arg(0),
            };
        }
        let mut con = self.broker.con.clone();
        let flags: Vec<i64> = match pipe.query_async(&mut con).await {
            Ok(flags) => flags,
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell which restored tasks are revoked");
                return;
            }
        };
        let revoked: Vec<&str> = restored
            .iter()
            .zip(flags.chunks(2))
            .filter(|(_, f)| f.iter().any(|v| *v > 0))
            .map(|((_, task, _), _)| task.as_str())
            .collect();
        if !revoked.is_empty() {
            let shown: Vec<&str> = revoked.iter().take(10).copied().collect();
            report.warnings.push(format!(
                "{} restored task(s) are revoked (celery-janitor revoke): guarded workers will \
                 skip them; lift the revocation with `celery-janitor revoke --undo` first if they \
                 should run: {}{}",
                revoked.len(),
                shown.join(", "),
                if revoked.len() > shown.len() {
                    ", …"
                } else {
                    ""
                }
            ));
        }
    }
}
