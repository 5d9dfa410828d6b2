//! The audit log and the file archive.
//!
//! Every removal is archived twice: atomically with the removal, in a Redis stream
//! (`celery-janitor:archive`, written by the Lua scripts), and durably on disk, in
//! `<archive dir>/<run id>.jsonl`, fsync'd before the run reports success. Every change —
//! removal, restore, lost-row update — is also one JSON line in the audit log.
//!
//! Both hold task arguments, which may be secrets: the directories the tool creates are 0700 and
//! its files 0600 (less if the umask says so). Each line (or batch of lines) is one `write()` on
//! an `O_APPEND` file, so several processes appending to the same audit log never interleave.
//! A crash can still leave an archive file short or with a torn last line: readers skip
//! unreadable lines and duplicate archive ids, and `runs.rs` completes the file from the stream.

use std::collections::{BTreeMap, HashSet};
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
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
        .map_err(EngineError::from)
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

/// The field names of an archive-stream entry, as the removal scripts write them with XADD
/// (`../lua/remove_*.lua`) and `restore` reads them. `meta` is the JSON of [`stream_meta`].
/// A stream entry id (`<ms>-<seq>`) as numbers, which order entries by when they were added.
pub(crate) fn stream_id_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

pub(crate) mod stream_fields {
    pub(crate) const KIND: &str = "kind";
    pub(crate) const KEY: &str = "key";
    pub(crate) const VALUE: &str = "value";
    pub(crate) const FIELD: &str = "field";
    pub(crate) const INDEX_KEY: &str = "index_key";
    pub(crate) const SCORE: &str = "score";
    pub(crate) const PTTL: &str = "pttl";
    pub(crate) const META: &str = "meta";
}

/// One XRANGE entry: its id and field/value pairs.
pub(crate) type StreamEntry = (String, Vec<(String, Vec<u8>)>);

fn field<'a>(map: &'a BTreeMap<String, Vec<u8>>, k: &str) -> &'a [u8] {
    map.get(k).map(Vec::as_slice).unwrap_or_default()
}

/// Turns an archive-stream entry into the record the archive file would hold for it.
pub(crate) fn stream_record(id: String, fields: Vec<(String, Vec<u8>)>) -> Option<ArchiveRecord> {
    let map: BTreeMap<String, Vec<u8>> = fields.into_iter().collect();
    let meta: serde_json::Value =
        serde_json::from_slice(field(&map, stream_fields::META)).unwrap_or_default();
    let text = |k: &str| meta.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let location = match field(&map, stream_fields::KIND) {
        b"queue" => Location::Queue,
        b"unacked" => Location::Unacked,
        b"result" => Location::Result,
        _ => return None,
    };
    let unacked = location == Location::Unacked;
    let score = String::from_utf8_lossy(field(&map, stream_fields::SCORE)).into_owned();
    Some(ArchiveRecord {
        archive_id: id,
        run_id: text("run_id").unwrap_or_default(),
        // Results are removed from the backend, everything else from the broker.
        redis: if location == Location::Result {
            "backend"
        } else {
            "broker"
        }
        .to_owned(),
        location,
        key_b64: b64(field(&map, stream_fields::KEY)),
        value_b64: b64(field(&map, stream_fields::VALUE)),
        field_b64: unacked.then(|| b64(field(&map, stream_fields::FIELD))),
        index_key_b64: unacked.then(|| b64(field(&map, stream_fields::INDEX_KEY))),
        score: Some(score).filter(|s| !s.is_empty()),
        pttl: (location == Location::Result).then(|| {
            std::str::from_utf8(field(&map, stream_fields::PTTL))
                .ok()
                .and_then(|p| p.parse().ok())
                .unwrap_or(-1)
        }),
        task_id: text("task_id"),
        task_name: text("task_name"),
        owner_table: text("owner_table"),
        owner_id: text("owner_id"),
        reason: text("reason").unwrap_or_default(),
        removed_at: text("removed_at").unwrap_or_default(),
    })
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
pub(crate) struct AuditLog {
    audit_path: PathBuf,
    archive_dir: PathBuf,
    files: Mutex<Option<OpenFiles>>,
    /// Who the events are done for (`actor` on every line): the OS user unless a front end
    /// names someone else (`--actor`, a web app's user).
    actor: std::sync::RwLock<String>,
}

/// The user this process runs as: `$USER`, else `$LOGNAME`, else `uid <n>`.
fn os_user() -> String {
    ["USER", "LOGNAME"]
        .into_iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        // SAFETY: getuid has no preconditions and cannot fail.
        .unwrap_or_else(|| format!("uid {}", unsafe { libc::getuid() }))
}

/// Creates `dir` and its missing parents with mode 0700 (masked by the umask). Directories that
/// already exist keep their mode: the tool never changes a directory it did not create.
pub(crate) fn create_private_dir_all(dir: &Path) -> std::io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Opens `path` for appending (`O_APPEND`), creating it with mode 0600 (masked by the umask) and
/// its missing parent directories with 0700. An existing file keeps its mode.
pub fn open_private_append(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir_all(dir)?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Writes a whole file with mode 0600 (masked by the umask), creating missing parent
/// directories 0700. Without `replace` an existing file is an error (`AlreadyExists`). With it,
/// the contents are written to a temporary file next to `path` and renamed over it, so readers
/// see the old file or the whole new one, and the new one has the private mode.
pub fn write_private_file(path: &Path, contents: &[u8], replace: bool) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir_all(dir)?;
    }
    let write = |target: &Path| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(target)?;
        f.write_all(contents)?;
        f.sync_all()
    };
    if !replace {
        return write(path);
    }
    let name = path
        .file_name()
        .unwrap_or(path.as_os_str())
        .to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let done = write(&tmp).and_then(|()| std::fs::rename(&tmp, path));
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done
}

fn open_append(path: &Path) -> Result<File> {
    open_private_append(path)
        .map_err(|e| EngineError::io(format!("cannot open {}", path.display()), e))
}

/// Writes `buf` with exactly one `write()` call. On an `O_APPEND` file the kernel places the
/// whole buffer at the end of the file at once, so lines written by other processes never land
/// inside it (`write_all` could split it over several calls). A short write is an error.
pub(crate) fn write_once(file: &mut File, buf: &[u8], what: &Path) -> Result<()> {
    let context = || format!("cannot write {}", what.display());
    let written = file.write(buf).map_err(|e| EngineError::io(context(), e))?;
    if written != buf.len() {
        return Err(EngineError::io(
            context(),
            std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!("short write: {written} of {} bytes", buf.len()),
            ),
        ));
    }
    Ok(())
}

/// An archive file as read back: its records (one per archive id, first copy kept) and a
/// warning per line that could not be read (a line torn by a crash mid-write).
#[derive(Debug, Default)]
pub(crate) struct ArchiveFile {
    pub records: Vec<ArchiveRecord>,
    pub warnings: Vec<String>,
    /// Lines repeating an archive id already read (a completed file may repeat a batch).
    pub duplicates: u64,
    /// The file does not end with a newline (its last write was torn).
    pub torn_end: bool,
}

impl ArchiveFile {
    /// Reads an archive file. Unreadable lines are skipped with a warning, duplicate archive
    /// ids are read once; only a file that can't be read at all is an error.
    pub(crate) fn read(path: &Path) -> Result<ArchiveFile> {
        let bytes = std::fs::read(path)
            .map_err(|e| EngineError::io(format!("cannot read {}", path.display()), e))?;
        Ok(Self::parse(&bytes, path))
    }

    fn parse(bytes: &[u8], path: &Path) -> ArchiveFile {
        let mut out = ArchiveFile {
            torn_end: !bytes.is_empty() && !bytes.ends_with(b"\n"),
            ..Default::default()
        };
        let mut seen = HashSet::new();
        for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<ArchiveRecord>(line) {
                Ok(r) => {
                    if seen.insert(r.archive_id.clone()) {
                        out.records.push(r);
                    } else {
                        out.duplicates += 1;
                    }
                }
                Err(e) => {
                    let warning = format!(
                        "{} line {}: skipped an unreadable line ({} bytes; a write torn by a crash?): {e}",
                        path.display(),
                        i + 1,
                        line.len()
                    );
                    tracing::warn!("{warning}");
                    out.warnings.push(warning);
                }
            }
        }
        out
    }
}

impl AuditLog {
    pub(crate) fn new(audit_path: PathBuf, archive_dir: PathBuf) -> Self {
        AuditLog {
            audit_path,
            archive_dir,
            files: Mutex::new(None),
            actor: std::sync::RwLock::new(os_user()),
        }
    }

    /// Names who later events are done for.
    pub(crate) fn set_actor(&self, actor: String) {
        *self.actor.write().unwrap_or_else(|e| e.into_inner()) = actor;
    }

    /// Who later events are done for.
    pub(crate) fn actor(&self) -> String {
        self.actor.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Writes one audit event (a JSON object; `ts` is added).
    pub(crate) fn event(&self, mut event: Value) -> Result<()> {
        if let Value::Object(map) = &mut event {
            map.insert("ts".into(), Value::String(chrono::Utc::now().to_rfc3339()));
            // An operation that names its own actor has set it already (`audit::as_actor`).
            if !map.contains_key("actor") {
                let actor = self.actor.read().unwrap_or_else(|e| e.into_inner()).clone();
                map.insert("actor".into(), Value::String(actor));
            }
        }
        let mut guard = self.files.lock().expect("audit lock");
        if guard.is_none() {
            *guard = Some((open_append(&self.audit_path)?, None));
        }
        let (audit, _) = guard.as_mut().expect("opened above");
        let mut line = serde_json::to_vec(&event).expect("serializable");
        line.push(b'\n');
        write_once(audit, &line, &self.audit_path)
    }

    /// Where the archive file of `run_id` is (absolute when the current directory is known).
    pub(crate) fn archive_path(&self, run_id: &str) -> PathBuf {
        let path = self.archive_dir.join(format!("{run_id}.jsonl"));
        std::path::absolute(&path).unwrap_or(path)
    }

    /// Appends archive records for a run.
    pub(crate) fn archive(&self, run_id: &str, records: &[ArchiveRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut guard = self.files.lock().expect("audit lock");
        if guard.is_none() {
            *guard = Some((open_append(&self.audit_path)?, None));
        }
        let (_, archive) = guard.as_mut().expect("opened above");
        let path = self.archive_dir.join(format!("{run_id}.jsonl"));
        if archive.as_ref().map(|(r, _)| r.as_str()) != Some(run_id) {
            *archive = Some((run_id.to_owned(), open_append(&path)?));
        }
        let (_, file) = archive.as_mut().expect("opened above");
        write_once(file, &archive_lines(records.iter()), &path)
    }

    /// Appends to the archive file at `path` the records whose archive id it lacks, in one
    /// write, and fsyncs it. A torn last line is closed with a newline first, so it stays one
    /// unreadable line. Returns how many records were appended.
    pub(crate) fn append_missing(path: &Path, records: &[ArchiveRecord]) -> Result<u64> {
        let existing = match std::fs::read(path) {
            Ok(bytes) => ArchiveFile::parse(&bytes, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ArchiveFile::default(),
            Err(e) => {
                return Err(EngineError::io(
                    format!("cannot read {}", path.display()),
                    e,
                ))
            }
        };
        let mut have: HashSet<&str> = existing
            .records
            .iter()
            .map(|r| r.archive_id.as_str())
            .collect();
        let missing: Vec<&ArchiveRecord> = records
            .iter()
            .filter(|r| have.insert(r.archive_id.as_str()))
            .collect();
        if missing.is_empty() {
            return Ok(0);
        }
        let mut buf = Vec::new();
        if existing.torn_end {
            buf.push(b'\n');
        }
        buf.extend(archive_lines(missing.iter().copied()));
        let mut file = open_append(path)?;
        write_once(&mut file, &buf, path)?;
        file.sync_data()
            .map_err(|e| EngineError::io(format!("cannot sync {}", path.display()), e))?;
        Ok(missing.len() as u64)
    }

    /// Flushes both files to disk.
    pub(crate) fn sync(&self) -> Result<()> {
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
}

/// Archive records as JSON lines.
fn archive_lines<'a>(records: impl Iterator<Item = &'a ArchiveRecord>) -> Vec<u8> {
    let mut buf = Vec::new();
    for r in records {
        serde_json::to_writer(&mut buf, r).expect("serializable");
        buf.push(b'\n');
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_binary() {
        assert_eq!(printable(b"celery\x06\x163"), "celery\\x06\\x163");
        assert_eq!(printable(b"a\\b"), "a\\x5cb");
    }

    fn record(id: &str) -> ArchiveRecord {
        ArchiveRecord {
            archive_id: id.into(),
            run_id: "20260101T000000Z-0000abcd".into(),
            redis: "broker".into(),
            location: Location::Queue,
            key_b64: b64(b"celery"),
            value_b64: b64(b"{}"),
            field_b64: None,
            index_key_b64: None,
            score: None,
            pttl: None,
            task_id: Some(format!("task-{id}")),
            task_name: None,
            owner_table: None,
            owner_id: None,
            reason: "orphaned".into(),
            removed_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    fn ids(f: &ArchiveFile) -> Vec<&str> {
        f.records.iter().map(|r| r.archive_id.as_str()).collect()
    }

    #[test]
    fn a_torn_last_line_and_repeated_ids_are_skipped() {
        let mut bytes = archive_lines([record("1-0"), record("2-0"), record("1-0")].iter());
        let torn = archive_lines([record("3-0")].iter());
        bytes.extend_from_slice(&torn[..torn.len() / 2]);
        let f = ArchiveFile::parse(&bytes, Path::new("x.jsonl"));
        assert_eq!(ids(&f), ["1-0", "2-0"]);
        assert_eq!(f.duplicates, 1);
        assert_eq!(f.warnings.len(), 1, "{:?}", f.warnings);
        assert!(f.warnings[0].contains("line 4"), "{:?}", f.warnings);
        assert!(f.torn_end);
    }

    #[test]
    fn completing_a_torn_file_appends_only_what_it_lacks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new/archive/run.jsonl");
        assert_eq!(
            AuditLog::append_missing(&path, &[record("1-0")]).unwrap(),
            1
        );
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(br#"{"archive_id":"2-0","ru"#);
        std::fs::write(&path, &bytes).unwrap();

        let all = [record("1-0"), record("2-0"), record("3-0")];
        assert_eq!(AuditLog::append_missing(&path, &all).unwrap(), 2);
        assert_eq!(AuditLog::append_missing(&path, &all).unwrap(), 0);
        let f = ArchiveFile::read(&path).unwrap();
        assert_eq!(ids(&f), ["1-0", "2-0", "3-0"]);
        assert_eq!(
            f.warnings.len(),
            1,
            "the torn fragment stays one line of its own"
        );
        assert!(!f.torn_end);
    }

    #[test]
    fn audit_lines_of_several_writers_never_interleave() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        // One AuditLog (one open file) per thread, as several processes would have.
        std::thread::scope(|scope| {
            for w in 0..4 {
                let path = path.clone();
                scope.spawn(move || {
                    let log = AuditLog::new(path, PathBuf::from("unused"));
                    let filler = "x".repeat(20_000 + w * 1000);
                    for i in 0..200 {
                        log.event(serde_json::json!({"w": w, "i": i, "filler": filler}))
                            .unwrap();
                    }
                });
            }
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 800);
        for line in lines {
            let v: Value = serde_json::from_str(line).expect("every line is one whole event");
            assert!(v["ts"].is_string());
        }
    }

    #[test]
    fn files_are_private_and_existing_directories_keep_their_mode() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let log = AuditLog::new(dir.path().join("logs/audit.jsonl"), dir.path().join("a/b"));
        log.event(serde_json::json!({"action": "run"})).unwrap();
        log.archive("run", &[record("1-0")]).unwrap();
        assert_eq!(mode(dir.path()), 0o755);
        for d in ["logs", "a", "a/b"] {
            assert_eq!(mode(&dir.path().join(d)), 0o700, "{d}");
        }
        for f in ["logs/audit.jsonl", "a/b/run.jsonl"] {
            assert_eq!(mode(&dir.path().join(f)), 0o600, "{f}");
        }
        let config = dir.path().join("etc/cj.toml");
        write_private_file(&config, b"a", false).unwrap();
        assert!(write_private_file(&config, b"b", false).is_err());
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private_file(&config, b"c", true).unwrap();
        assert_eq!(std::fs::read(&config).unwrap(), b"c");
        assert_eq!(mode(&config), 0o600);
        assert_eq!(mode(&dir.path().join("etc")), 0o700);
    }
}
