//! `restore`: puts archived entries back, byte for byte, where they were — queue messages at the
//! consume end of their list (as kombu's own restore does), `unacked` entries with their index
//! score, results with their remaining TTL. Each archive id is restored at most once.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::archive::{printable, unb64, AuditLog};
use crate::classify::Location;
use crate::error::{EngineError, Result};
use crate::janitor::Janitor;
use crate::progress::Progress;
use crate::redis_io::RedisHandle;

/// How long the set of restored archive ids is kept.
const RESTORED_KEEP_SECONDS: u64 = 30 * 24 * 3600;

#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Restore this run's entries (default: the most recent run).
    pub run_id: Option<String>,
    /// Restore every archived entry.
    pub all: bool,
    /// Only entries of these task ids.
    pub task_ids: Vec<String>,
    /// Read the entries from an archive file instead of the Redis archive stream.
    pub from_file: Option<PathBuf>,
    pub dry_run: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreReport {
    pub run_id: Option<String>,
    pub dry_run: bool,
    pub restored: BTreeMap<&'static str, u64>,
    /// Already restored, or the target was occupied (a result key or unacked field exists).
    pub skipped: u64,
}

/// One archived entry, from the stream or a file.
struct Archived {
    id: String,
    backend: bool,
    location: Location,
    key: Vec<u8>,
    value: Vec<u8>,
    field: Vec<u8>,
    index_key: Vec<u8>,
    score: String,
    pttl: i64,
    run_id: Option<String>,
    task_id: Option<String>,
}

/// One XRANGE entry: its id and field/value pairs.
type StreamEntry = (String, Vec<(String, Vec<u8>)>);

fn field<'a>(map: &'a BTreeMap<String, Vec<u8>>, k: &str) -> &'a [u8] {
    map.get(k).map(Vec::as_slice).unwrap_or_default()
}

impl Janitor {
    pub async fn restore(
        &self,
        opts: &RestoreOptions,
        progress: &dyn Progress,
    ) -> Result<RestoreReport> {
        let mut entries = match &opts.from_file {
            Some(path) => self.archived_from_file(path)?,
            None => self.archived_from_streams().await?,
        };
        let run_id = if opts.all {
            None
        } else {
            opts.run_id
                .clone()
                .or_else(|| entries.iter().filter_map(|e| e.run_id.clone()).max())
        };
        entries.retain(|e| {
            run_id.as_ref().is_none_or(|r| e.run_id.as_ref() == Some(r))
                && (opts.task_ids.is_empty()
                    || e.task_id
                        .as_ref()
                        .is_some_and(|t| opts.task_ids.contains(t)))
        });
        let mut report = RestoreReport {
            run_id: run_id.clone(),
            dry_run: opts.dry_run,
            ..Default::default()
        };
        for l in Location::ALL {
            report.restored.insert(l.as_str(), 0);
        }
        progress.phase("restoring", Some(entries.len() as u64));
        let archive = self.own_key("archive");
        let restored_set = self.own_key("restored");
        for e in entries {
            if opts.dry_run {
                *report.restored.entry(e.location.as_str()).or_default() += 1;
                continue;
            }
            let handle: &RedisHandle = if e.backend {
                &self.backend
            } else {
                &self.broker
            };
            let mut inv = self.scripts.restore.key(&archive);
            inv.key(&restored_set)
                .key(&e.key)
                .key(if e.index_key.is_empty() {
                    &e.key
                } else {
                    &e.index_key
                });
            inv.arg(&e.id)
                .arg(e.location.as_str())
                .arg(&e.value)
                .arg(&e.field)
                .arg(&e.score)
                .arg(e.pttl)
                .arg(RESTORED_KEEP_SECONDS);
            let mut con = handle.con.clone();
            let outcome: i64 = inv.invoke_async(&mut con).await?;
            if outcome == 1 {
                *report.restored.entry(e.location.as_str()).or_default() += 1;
                self.audit.event(serde_json::json!({
                    "action": "restore",
                    "run_id": e.run_id,
                    "archive_id": e.id,
                    "location": e.location,
                    "key": printable(&e.key),
                    "task_id": e.task_id,
                }))?;
            } else {
                report.skipped += 1;
            }
            progress.advance(1);
        }
        self.audit.sync()?;
        progress.finish();
        Ok(report)
    }

    async fn archived_from_streams(&self) -> Result<Vec<Archived>> {
        let mut out = Vec::new();
        let mut handles = vec![(self.broker.clone(), false)];
        if !self.shared_redis {
            handles.push((self.backend.clone(), true));
        }
        let key = self.own_key("archive");
        for (h, backend) in handles {
            let mut con = h.con.clone();
            let mut start = "-".to_string();
            loop {
                let page: Vec<StreamEntry> = redis::cmd("XRANGE")
                    .arg(&key)
                    .arg(&start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(500)
                    .query_async(&mut con)
                    .await
                    .map_err(|e| {
                        EngineError::Other(format!("cannot read the archive stream: {e}"))
                    })?;
                let n = page.len();
                for (id, fields) in page {
                    start = format!("({id}");
                    let map: BTreeMap<String, Vec<u8>> = fields.into_iter().collect();
                    let meta: serde_json::Value =
                        serde_json::from_slice(field(&map, "meta")).unwrap_or_default();
                    let location = match field(&map, "kind") {
                        b"queue" => Location::Queue,
                        b"unacked" => Location::Unacked,
                        b"result" => Location::Result,
                        _ => continue,
                    };
                    out.push(Archived {
                        id,
                        backend,
                        location,
                        key: field(&map, "key").to_vec(),
                        value: field(&map, "value").to_vec(),
                        field: field(&map, "field").to_vec(),
                        index_key: field(&map, "index_key").to_vec(),
                        score: String::from_utf8_lossy(field(&map, "score")).into_owned(),
                        pttl: std::str::from_utf8(field(&map, "pttl"))
                            .ok()
                            .and_then(|p| p.parse().ok())
                            .unwrap_or(-1),
                        run_id: meta
                            .get("run_id")
                            .and_then(|v| v.as_str())
                            .map(str::to_owned),
                        task_id: meta
                            .get("task_id")
                            .and_then(|v| v.as_str())
                            .map(str::to_owned),
                    });
                }
                if n < 500 {
                    break;
                }
            }
        }
        Ok(out)
    }

    fn archived_from_file(&self, path: &std::path::Path) -> Result<Vec<Archived>> {
        AuditLog::read_archive(path)?
            .into_iter()
            .map(|r| {
                Ok(Archived {
                    id: r.archive_id,
                    backend: r.redis == "backend",
                    location: r.location,
                    key: unb64(&r.key_b64)?,
                    value: unb64(&r.value_b64)?,
                    field: r
                        .field_b64
                        .as_deref()
                        .map(unb64)
                        .transpose()?
                        .unwrap_or_default(),
                    index_key: r
                        .index_key_b64
                        .as_deref()
                        .map(unb64)
                        .transpose()?
                        .unwrap_or_default(),
                    score: r.score.unwrap_or_default(),
                    pttl: r.pttl.unwrap_or(-1),
                    run_id: Some(r.run_id),
                    task_id: r.task_id,
                })
            })
            .collect()
    }
}
