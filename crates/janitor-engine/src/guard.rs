//! The worker guard: before a task's body runs, is its owner row there, and is it revoked?
//!
//! A worker asks [`guard_target`] which owner row a task names — by the same `[[owners]]` rules
//! and the same id extraction the cleanup applies to a queued message (`classify.rs`) — and
//! then [`Janitor::guard_check`]: one Redis round trip for the durable revocations (see
//! `revoke.rs`), joined with the owner-row lookup. What the worker then did is recorded by
//! [`Janitor::guard_record`] (`../lua/guard_record.lua`): counted per node, kept in a capped
//! stream of last events, and for a task that will not run, its unfinished result key archived
//! and removed. [`Janitor::guard_stats`] reads both back.
//!
//! A task whose owner can't be determined is never skipped: it has no target and runs.

use std::collections::BTreeMap;

use janitor_config::Owners;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::classify::{message_owner_id, owning_rule};
use crate::error::{EngineError, Result};
use crate::janitor::{Janitor, OwnKey};

/// Approximate cap of the stream of last guard events.
const EVENTS_MAXLEN: u64 = 1000;
/// Approximate cap of the archive stream (as a cleanup's).
const ARCHIVE_MAXLEN: u64 = 100_000;
/// Events [`Janitor::guard_stats`] returns, newest first.
const RECENT_EVENTS: usize = 100;

/// The owner row a task names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuardTarget {
    pub table: String,
    pub owner_id: String,
    #[serde(skip)]
    pub(crate) rule: usize,
}

/// The owner row of a call of `task_name` with these arguments (JSON: an array and an object),
/// by the `[[owners]]` rules. `None` when no single rule owns the task, or the id can't be read
/// (missing argument, not a string or integer, arguments not JSON): such a task is not guarded.
pub fn guard_target(
    owners: &Owners,
    task_id: &str,
    task_name: &str,
    args_json: &str,
    kwargs_json: &str,
) -> Option<GuardTarget> {
    let rule = owning_rule(owners, task_name)?;
    let args: std::result::Result<Vec<Value>, _> = serde_json::from_str(args_json);
    let kwargs: std::result::Result<Map<String, Value>, _> = if kwargs_json.trim().is_empty() {
        Ok(Map::new())
    } else {
        serde_json::from_str(kwargs_json)
    };
    let call = match (&args, &kwargs) {
        (Ok(a), Ok(k)) => Ok((a.as_slice(), k)),
        _ => Err("arguments are not JSON".to_owned()),
    };
    let id = message_owner_id(&owners.rules()[rule], Some(task_id), call).ok()?;
    Some(GuardTarget {
        table: owners.rules()[rule].table.clone(),
        owner_id: id,
        rule,
    })
}

/// What revoked a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RevokedBy {
    /// `celery-janitor:revoked:<task id>`.
    Task,
    /// `celery-janitor:revoked-owner:<table>:<id>`.
    Owner,
}

/// The guard's answer for one task about to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "lowercase")]
pub enum GuardVerdict {
    /// Not revoked, and the owner row exists (or the task has no owner row to check).
    Run,
    /// The owner row is missing.
    Missing,
    /// A durable revocation names the task or its owner row.
    Revoked { by: RevokedBy },
}

/// The guard could not decide: the caller applies `[guard] on_error`.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("guard: Redis did not answer: {0}")]
    Redis(#[source] EngineError),
    #[error("guard: the owner database did not answer: {0}")]
    Database(#[source] EngineError),
}

/// What the worker did with a guarded task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardEventKind {
    /// Skipped: the owner row stayed missing.
    Skipped,
    /// Skipped: revoked.
    Revoked,
    /// Re-queued: first miss within the grace period, or `on_error = "retry"`.
    Requeued,
    /// The guard could not decide.
    Error,
    /// Run unchecked under `on_error = "run"`.
    RanUnchecked,
}

impl GuardEventKind {
    /// The per-node counter this kind adds to.
    pub fn counter(self) -> &'static str {
        match self {
            GuardEventKind::Skipped => "skipped",
            GuardEventKind::Revoked => "revoked",
            GuardEventKind::Requeued => "requeued",
            GuardEventKind::Error => "errors",
            GuardEventKind::RanUnchecked => "ran_unchecked",
        }
    }

    /// The task will not run here: its unfinished result is removed.
    fn drops_task(self) -> bool {
        matches!(self, GuardEventKind::Skipped | GuardEventKind::Revoked)
    }
}

/// One guard event, as a worker reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GuardEvent {
    pub kind: GuardEventKind,
    pub task_id: String,
    pub task_name: String,
    pub owner_table: Option<String>,
    pub owner_id: Option<String>,
    /// Why, for people ("owner row missing 10 s after the first miss", "revoked by owner").
    pub reason: String,
    /// The worker node (`celery@host`).
    pub node: String,
}

/// What [`Janitor::guard_record`] did.
#[derive(Debug, Clone, Serialize)]
pub struct GuardRecorded {
    /// `removed`, `kept:SUCCESS`/`kept:FAILURE`, `not-json`, `none` or `untouched`.
    pub result: String,
    /// The archive id of the removed result.
    pub archive_id: Option<String>,
    /// The id of the event in the stream of last events.
    pub event_id: String,
}

/// One event read back from the stream of last events.
#[derive(Debug, Clone, Serialize)]
pub struct RecentGuardEvent {
    /// Stream id (milliseconds-sequence).
    pub id: String,
    /// Every field as recorded: kind, task_id, task_name, owner_table, owner_id, reason,
    /// node, time, archive_id.
    #[serde(flatten)]
    pub fields: BTreeMap<String, String>,
}

/// The guard's counters and last events.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GuardStats {
    /// Counter → total over every node.
    pub totals: BTreeMap<String, u64>,
    /// Node → counter → count.
    pub nodes: BTreeMap<String, BTreeMap<String, u64>>,
    /// The newest events first (at most 100).
    pub recent: Vec<RecentGuardEvent>,
}

impl Janitor {
    /// [`guard_target`] with this janitor's `[[owners]]` rules.
    pub fn guard_target(
        &self,
        task_id: &str,
        task_name: &str,
        args_json: &str,
        kwargs_json: &str,
    ) -> Option<GuardTarget> {
        guard_target(
            &self.settings.owners,
            task_id,
            task_name,
            args_json,
            kwargs_json,
        )
    }

    /// Whether a task may run: its durable revocations (one MGET) and its owner row (one
    /// lookup), asked concurrently. A revocation wins over a database that does not answer.
    pub async fn guard_check(
        &self,
        task_id: &str,
        target: Option<&GuardTarget>,
    ) -> std::result::Result<GuardVerdict, GuardError> {
        let mut keys = vec![self.own_key(OwnKey::RevokedTask(task_id))];
        if let Some(t) = target {
            keys.push(self.own_key(OwnKey::RevokedOwner(&t.table, &t.owner_id)));
        }
        let timeout = self.guard_timeout;
        let revoked = async {
            let mut con = self.broker.con.clone();
            let mut cmd = redis::cmd("MGET");
            for k in &keys {
                cmd.arg(k);
            }
            match tokio::time::timeout(timeout, cmd.query_async::<Vec<Option<Vec<u8>>>>(&mut con))
                .await
            {
                Ok(Ok(values)) => Ok(values),
                Ok(Err(e)) => Err(EngineError::Redis(e)),
                Err(_) => Err(EngineError::Redis(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "timed out",
                )))),
            }
        };
        let exists = async {
            let Some(t) = target else {
                return Ok(true);
            };
            let rule = &self.settings.owners.rules()[t.rule];
            match tokio::time::timeout(timeout, self.db.lookup_one(t.rule, rule, &t.owner_id)).await
            {
                // An id that can't be a value of the id column is undecidable, as in a
                // cleanup: never treated as missing.
                Ok(Ok(lookup)) => Ok(lookup.existing.contains(&t.owner_id)
                    || lookup.invalid.contains_key(&t.owner_id)),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(EngineError::DatabaseLost {
                    table: t.table.clone(),
                    message: format!("no answer within {} s", timeout.as_secs_f64()),
                }),
            }
        };
        let (revoked, exists) = tokio::join!(revoked, exists);
        let revoked = revoked.map_err(GuardError::Redis)?;
        if revoked.first().is_some_and(Option::is_some) {
            return Ok(GuardVerdict::Revoked {
                by: RevokedBy::Task,
            });
        }
        if revoked.get(1).is_some_and(Option::is_some) {
            return Ok(GuardVerdict::Revoked {
                by: RevokedBy::Owner,
            });
        }
        match exists.map_err(GuardError::Database)? {
            true => Ok(GuardVerdict::Run),
            false => Ok(GuardVerdict::Missing),
        }
    }

    /// Records what a worker did with a guarded task, atomically (`guard_record.lua`): the
    /// node's counter, the stream of last events, and — for a skipped or revoked task — its
    /// result key archived and removed unless it is SUCCESS or FAILURE. The removal is in the
    /// archive stream like every other (run id `guard-<task id>`), so `restore --run` or
    /// `restore --all --task-id` puts it back.
    pub async fn guard_record(&self, event: &GuardEvent) -> Result<GuardRecorded> {
        let stats = self.own_key(OwnKey::GuardStats);
        let events = self.own_key(OwnKey::GuardEvents);
        let archive = self.own_key(OwnKey::Archive);
        let result_key = self.backend_layout.task_meta_key(&event.task_id);
        let run_id = format!("guard-{}", event.task_id);
        let reason = format!("guard-{}", event.kind.counter());
        let meta = serde_json::json!({
            "run_id": run_id,
            "task_id": event.task_id,
            "task_name": event.task_name,
            "owner_table": event.owner_table,
            "owner_id": event.owner_id,
            "queue": null,
            "reason": reason,
            "removed_at": chrono::Utc::now().to_rfc3339(),
        })
        .to_string();
        let mut fields: Vec<(&str, String)> = vec![
            ("kind", event.kind.counter().to_owned()),
            ("task_id", event.task_id.clone()),
            ("task_name", event.task_name.clone()),
            ("owner_table", event.owner_table.clone().unwrap_or_default()),
            ("owner_id", event.owner_id.clone().unwrap_or_default()),
            ("reason", event.reason.clone()),
            ("node", event.node.clone()),
            ("time", chrono::Utc::now().to_rfc3339()),
        ];
        let stats_field = format!("{}|{}", event.node, event.kind.counter());
        let drop_result = if event.kind.drops_task() { "1" } else { "0" };
        let call = |mode: &'static str, fields: &[(&str, String)]| {
            let mut inv = self.scripts.guard_record.key(&stats);
            inv.key(&events).key(&archive).key(&result_key);
            inv.arg(mode)
                .arg(&stats_field)
                .arg(EVENTS_MAXLEN)
                .arg(ARCHIVE_MAXLEN)
                .arg(&meta)
                .arg(drop_result);
            for (name, value) in fields {
                inv.arg(*name).arg(value);
            }
            inv
        };
        let keys: [&[u8]; 4] = [&stats, &events, &archive, &result_key];
        let reply =
            |values: Vec<redis::Value>| -> Result<(String, Option<String>, Option<String>)> {
                let text = |v: Option<&redis::Value>| {
                    v.and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
                };
                if values.len() != 3 {
                    return Err(EngineError::ScriptReply {
                        script: "guard_record.lua",
                        got: values.len(),
                        expected: 6,
                    });
                }
                Ok((
                    text(values.first()).unwrap_or_default(),
                    text(values.get(1)),
                    text(values.get(2)),
                ))
            };
        let timeout = self.guard_timeout;
        let (result, archive_id, event_id) = if self.shared_redis {
            let mut inv = call("all", &fields);
            let mut con = self.broker.con.clone();
            let values = with_timeout(
                timeout,
                crate::scripts::invoke(&mut inv, &mut con, &keys, &archive),
            )
            .await?;
            reply(values)?
        } else {
            let mut inv = call("result", &[]);
            let mut con = self.backend.con.clone();
            let values = with_timeout(
                timeout,
                crate::scripts::invoke(&mut inv, &mut con, &keys, &archive),
            )
            .await?;
            let (result, archive_id, _) = reply(values)?;
            if let Some(id) = &archive_id {
                fields.push(("archive_id", id.clone()));
            }
            let mut inv = call("stats", &fields);
            let mut con = self.broker.con.clone();
            let values = with_timeout(
                timeout,
                crate::scripts::invoke(&mut inv, &mut con, &keys, &archive),
            )
            .await?;
            let (_, _, event_id) = reply(values)?;
            (result, archive_id, event_id)
        };
        Ok(GuardRecorded {
            result,
            archive_id,
            event_id: event_id.unwrap_or_default(),
        })
    }

    /// The broker's clock (`TIME`), in seconds since the epoch: the one clock every worker
    /// shares, for the time of a task's first miss (the grace period).
    pub async fn broker_time(&self) -> Result<f64> {
        let mut con = self.broker.con.clone();
        let (secs, micros): (u64, u64) = with_timeout(self.guard_timeout, async {
            Ok(redis::cmd("TIME").query_async(&mut con).await?)
        })
        .await?;
        Ok(secs as f64 + micros as f64 / 1e6)
    }

    /// The guard's counters (per node and in total) and its last events, newest first.
    pub async fn guard_stats(&self) -> Result<GuardStats> {
        let mut con = self.broker.con.clone();
        let counters: BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(self.own_key(OwnKey::GuardStats))
            .query_async(&mut con)
            .await?;
        let mut stats = GuardStats::default();
        for (field, count) in counters {
            let Some((node, counter)) = field.rsplit_once('|') else {
                continue;
            };
            let count: u64 = count.parse().unwrap_or(0);
            *stats.totals.entry(counter.to_owned()).or_default() += count;
            *stats
                .nodes
                .entry(node.to_owned())
                .or_default()
                .entry(counter.to_owned())
                .or_default() += count;
        }
        let reply: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(self.own_key(OwnKey::GuardEvents))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(RECENT_EVENTS)
            .query_async(&mut con)
            .await?;
        for entry in reply.ids {
            let fields = entry
                .map
                .iter()
                .filter_map(|(k, v)| {
                    redis::from_redis_value_ref::<String>(v)
                        .ok()
                        .map(|v| (k.clone(), v))
                })
                .collect();
            stats.recent.push(RecentGuardEvent {
                id: entry.id,
                fields,
            });
        }
        Ok(stats)
    }
}

/// A script call bounded by the guard's timeout.
async fn with_timeout<T>(
    timeout: std::time::Duration,
    call: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result,
        Err(_) => Err(EngineError::Redis(redis::RedisError::from((
            redis::ErrorKind::Io,
            "timed out",
        )))),
    }
}
