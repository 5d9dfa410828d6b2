//! The audit log and the file archive.
//!
//! Every removal is archived twice: atomically with the removal, in a Redis stream
//! (`celery-janitor:archive`, written by the Lua scripts), and durably on disk, in
//! `<archive dir>/<run id>.jsonl`, fsync'd before the run reports success. Every change —
//! removal, restore, lost-row update — is also one JSON line in the audit log.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::classify::{Entry, Location};
use crate::error::{EngineError, Result};

/// Shows binary key names readably: printable ASCII as is, other bytes as `\xNN`.
pub fn printable(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if (0x20..0x7f).contains(&b) && b != b'\\' {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

pub(crate) fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub(crate) fn unb64(text: &str) -> Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| EngineError::Other(format!("archive record is not valid base64: {e}")))
}

/// One removed entry, as kept in the archive file. Bytes are base64.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArchiveRecord {
    pub archive_id: String,
    pub run_id: String,
    /// `broker` or `backend`: which Redis it was removed from.
    pub redis: String,
    pub location: Location,
    pub key_b64: String,
    pub value_b64: String,
    /// `unacked` only: delivery tag and `unacked_index` key and score.
    pub field_b64: Option<String>,
    pub index_key_b64: Option<String>,
    pub score: Option<String>,
    /// Results only: remaining TTL in ms when removed (-1: none).
    pub pttl: Option<i64>,
    pub task_id: Option<String>,
    pub task_name: Option<String>,
    pub owner_table: Option<String>,
    pub owner_id: Option<String>,
    pub reason: String,
    pub removed_at: String,
}

/// The metadata stored with each archived entry in the Redis stream.
pub(crate) fn stream_meta(run_id: &str, e: &Entry, reason: &str) -> String {
    serde_json::json!({
        "run_id": run_id,
        "task_id": e.task_id,
        "task_name": e.task_name,
        "owner_table": e.owner_table,
        "owner_id": e.owner_id,
        "queue": e.queue,
        "reason": reason,
        "removed_at": chrono::Utc::now().to_rfc3339(),
    })
    .to_string()
}

/// The open audit log, and the archive file of the current run (with its run id).
type OpenFiles = (File, Option<(String, File)>);

/// Appends JSON lines to the audit log and the run's archive file.
pub struct AuditLog {
    audit_path: PathBuf,
    archive_dir: PathBuf,
    files: Mutex<Option<OpenFiles>>,
}

fn open_append(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| EngineError::io(format!("cannot create {}", dir.display()), e))?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| EngineError::io(format!("cannot open {}", path.display()), e))
}

impl AuditLog {
    pub fn new(audit_path: PathBuf, archive_dir: PathBuf) -> Self {
        AuditLog {
            audit_path,
            archive_dir,
            files: Mutex::new(None),
        }
    }

    /// Writes one audit event (a JSON object; `ts` is added).
    pub fn event(&self, mut event: Value) -> Result<()> {
        if let Value::Object(map) = &mut event {
            map.insert("ts".into(), Value::String(chrono::Utc::now().to_rfc3339()));
        }
        let mut guard = self.files.lock().expect("audit lock");
        if guard.is_none() {
            *guard = Some((open_append(&self.audit_path)?, None));
        }
        let (audit, _) = guard.as_mut().expect("opened above");
        writeln!(audit, "{event}")
            .map_err(|e| EngineError::io(format!("cannot write {}", self.audit_path.display()), e))
    }

    /// Appends archive records for a run.
    pub fn archive(&self, run_id: &str, records: &[ArchiveRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut guard = self.files.lock().expect("audit lock");
        if guard.is_none() {
            *guard = Some((open_append(&self.audit_path)?, None));
        }
        let (_, archive) = guard.as_mut().expect("opened above");
        if archive.as_ref().map(|(r, _)| r.as_str()) != Some(run_id) {
            let path = self.archive_dir.join(format!("{run_id}.jsonl"));
            *archive = Some((run_id.to_owned(), open_append(&path)?));
        }
        let (_, file) = archive.as_mut().expect("opened above");
        let mut buf = Vec::new();
        for r in records {
            serde_json::to_writer(&mut buf, r).expect("serializable");
            buf.push(b'\n');
        }
        file.write_all(&buf)
            .map_err(|e| EngineError::io("cannot write the archive file", e))
    }

    /// Flushes both files to disk.
    pub fn sync(&self) -> Result<()> {
        let guard = self.files.lock().expect("audit lock");
        if let Some((audit, archive)) = guard.as_ref() {
            audit
                .sync_data()
                .map_err(|e| EngineError::io("cannot sync the audit log", e))?;
            if let Some((_, f)) = archive {
                f.sync_data()
                    .map_err(|e| EngineError::io("cannot sync the archive file", e))?;
            }
        }
        Ok(())
    }

    /// Reads an archive file.
    pub fn read_archive(path: &Path) -> Result<Vec<ArchiveRecord>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| EngineError::io(format!("cannot read {}", path.display()), e))?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|e| {
                    EngineError::Other(format!("{} line {}: {e}", path.display(), i + 1))
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_binary() {
        assert_eq!(printable(b"celery\x06\x163"), "celery\\x06\\x163");
        assert_eq!(printable(b"a\\b"), "a\\x5cb");
    }
}
