//! [`Janitor`]: the connected engine (broker, result backend, owner database) and the read-only
//! operations: `status` and streaming entries (pages of them are `list.rs`).

use std::collections::BTreeMap;

use janitor_config::Settings;
use janitor_wire::{BackendLayout, BrokerLayout};
use serde::Serialize;

use crate::archive::AuditLog;
use crate::audit::AuditSink;
use crate::cancel::Cancel;
use crate::classify::{Entry, Location, State};
use crate::context::RunCtx;
use crate::error::{EngineError, Result};
use crate::owners_db::OwnerDb;
use crate::progress::Progress;
use crate::redis_io::RedisHandle;
use crate::scan::{ScanCtx, WrongTypeKeys};
use crate::scripts::Scripts;
use crate::OWN_KEY_PREFIX;

/// celery-janitor's own Redis keys, each named here once (docs/cli.md, "What it writes").
#[derive(Debug, Clone, Copy)]
pub(crate) enum OwnKey<'a> {
    /// The run lock (see `lock.rs`).
    Lock,
    /// The archive stream the removal scripts write.
    Archive,
    /// The run record (see `runs.rs`).
    Runs,
    /// Archive ids restored by versions before per-run sets.
    RestoredBefore,
    /// Archive ids of a run already restored.
    Restored(&'a str),
    /// Task ids a run revoked.
    Revoked(&'a str),
    /// A durable revocation of one task id (see `revoke.rs`).
    RevokedTask(&'a str),
    /// A durable revocation of one owner row: table, id.
    RevokedOwner(&'a str, &'a str),
    /// The guard's per-node counters (hash; see `guard.rs`).
    GuardStats,
    /// The guard's last events (capped stream).
    GuardEvents,
    /// When the last cleanup run completed (see `runs.rs`).
    LastCleanup,
}

/// How long a guard check waits for Redis and the database by default.
const DEFAULT_GUARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The prefix of the value a list-removal script writes over a message before removing it.
pub(crate) const TOMBSTONE_PREFIX: &str = "celery-janitor:tombstone:";

/// Options of the read-only operations.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Overrides the settings' `grace_seconds`: orphans are confirmed this long after they
    /// were read.
    pub grace_seconds: Option<f64>,
}

/// The connected engine: broker, result backend, owner database, scripts and the audit sink.
/// `Send + Sync`: share it as an `Arc` between requests.
pub struct Janitor {
    pub(crate) settings: Settings,
    pub(crate) broker: RedisHandle,
    pub(crate) backend: RedisHandle,
    /// Broker and backend are the same server and database.
    pub(crate) shared_redis: bool,
    pub(crate) db: OwnerDb,
    pub(crate) broker_layout: BrokerLayout,
    pub(crate) backend_layout: BackendLayout,
    pub(crate) scripts: Scripts,
    pub(crate) audit: AuditSink,
    /// How long one guard check or record waits for Redis and the database.
    pub(crate) guard_timeout: std::time::Duration,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RedisInfo {
    pub connected: bool,
    pub used_memory_bytes: Option<u64>,
    pub connected_clients: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskCounts {
    pub in_redis: u64,
    pub orphaned: u64,
    pub in_database: u64,
    pub live: u64,
    pub unowned: u64,
    pub undecidable: u64,
    pub by_location: BTreeMap<&'static str, u64>,
    pub orphaned_by_location: BTreeMap<&'static str, u64>,
    pub undecidable_by_location: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResultCounts {
    /// Result keys with no task name (`result_extended` off).
    pub unnamed: u64,
    /// Saved group results (`celery-taskset-meta-<gid>`). Reported, never removed.
    pub groups: u64,
    /// Chords whose header is still being joined (`.j`/`.s`/`.d`/`.t` keys). Never removed:
    /// without them the chord body never fires.
    pub chords_in_progress: u64,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatusReport {
    pub redis: RedisInfo,
    pub tasks: TaskCounts,
    pub results: ResultCounts,
    /// Keys where Celery keeps another type (skipped, never removed).
    pub wrong_type_keys: WrongTypeKeys,
}

impl TaskCounts {
    pub(crate) fn zeroed() -> Self {
        let mut c = TaskCounts::default();
        for l in Location::ALL {
            c.by_location.insert(l.as_str(), 0);
            c.orphaned_by_location.insert(l.as_str(), 0);
            c.undecidable_by_location.insert(l.as_str(), 0);
        }
        c
    }

    pub(crate) fn add(&mut self, e: &Entry) {
        self.in_redis += 1;
        *self.by_location.entry(e.location.as_str()).or_default() += 1;
        match e.state {
            State::Live => self.live += 1,
            State::Orphaned => {
                self.orphaned += 1;
                *self
                    .orphaned_by_location
                    .entry(e.location.as_str())
                    .or_default() += 1;
            }
            State::Unowned => self.unowned += 1,
            State::Undecidable => {
                self.undecidable += 1;
                *self
                    .undecidable_by_location
                    .entry(e.location.as_str())
                    .or_default() += 1;
            }
        }
    }
}

impl Janitor {
    /// Connects to Redis (broker and backend) and the owner database, and checks the owner
    /// tables exist.
    pub async fn connect(settings: Settings) -> Result<Self> {
        // Redis first: an unreachable Redis is reported as such whatever the database says.
        let (broker, backend, shared_redis) = Self::connect_redis(&settings).await?;
        let db_url = settings
            .database_url
            .as_ref()
            .ok_or(EngineError::NoDatabase)?;
        let db = OwnerDb::connect(db_url, settings.owners.rules()).await?;
        Ok(Self::assemble(
            settings,
            (broker, backend, shared_redis),
            db,
            DEFAULT_GUARD_TIMEOUT,
        ))
    }

    /// Connects to Redis now and to the owner database on first use: for a long-lived worker
    /// process whose database may be down when it starts. Each owner lookup (and each guard
    /// check or record) waits at most `timeout`.
    pub async fn connect_lazy_db(settings: Settings, timeout: std::time::Duration) -> Result<Self> {
        let redis = Self::connect_redis(&settings).await?;
        let db_url = settings
            .database_url
            .as_ref()
            .ok_or(EngineError::NoDatabase)?;
        let db = OwnerDb::lazy(db_url, settings.owners.rules(), timeout)?;
        Ok(Self::assemble(settings, redis, db, timeout))
    }

    /// The broker, the backend (the same handle when they are the same Redis) and whether
    /// they are.
    async fn connect_redis(settings: &Settings) -> Result<(RedisHandle, RedisHandle, bool)> {
        let broker = RedisHandle::connect(&settings.broker_url).await?;
        let shared_redis =
            janitor_config::same_redis(settings.broker_url.expose(), settings.backend_url.expose());
        let backend = if shared_redis {
            broker.clone()
        } else {
            RedisHandle::connect(&settings.backend_url).await?
        };
        Ok((broker, backend, shared_redis))
    }

    fn assemble(
        settings: Settings,
        (broker, backend, shared_redis): (RedisHandle, RedisHandle, bool),
        db: OwnerDb,
        guard_timeout: std::time::Duration,
    ) -> Self {
        let mut broker_layout = BrokerLayout {
            prefix: settings.broker_prefix.clone(),
            priority_steps: settings.priority_steps.clone(),
            ..Default::default()
        };
        if let Some(sep) = &settings.priority_sep {
            broker_layout.sep.clone_from(sep);
        }
        let backend_layout = BackendLayout::with_prefix(&settings.backend_prefix);
        let audit = AuditSink::new(AuditLog::new(
            settings.audit_log.clone(),
            settings.archive_dir.clone(),
        ));
        Janitor {
            settings,
            broker,
            backend,
            shared_redis,
            db,
            broker_layout,
            backend_layout,
            scripts: Scripts::load(),
            audit,
            guard_timeout,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Names who this janitor's changes are done for: the `actor` of its audit events (the CLI's
    /// `--actor`, a web app's signed-in user). Default: the OS user the process runs as.
    pub fn set_actor(&self, actor: impl Into<String>) {
        self.audit.log().set_actor(actor.into());
    }

    /// A key of celery-janitor's own, in the broker's prefix.
    pub(crate) fn own_key(&self, key: OwnKey<'_>) -> Vec<u8> {
        let name = match key {
            OwnKey::Lock => "lock".to_owned(),
            OwnKey::Archive => "archive".to_owned(),
            OwnKey::Runs => "runs".to_owned(),
            OwnKey::RestoredBefore => "restored".to_owned(),
            OwnKey::Restored(run_id) => format!("restored:{run_id}"),
            OwnKey::Revoked(run_id) => format!("revoked:{run_id}"),
            OwnKey::RevokedTask(task_id) => format!("revoked:{task_id}"),
            OwnKey::RevokedOwner(table, id) => format!("revoked-owner:{table}:{id}"),
            OwnKey::GuardStats => "guard:stats".to_owned(),
            OwnKey::GuardEvents => "guard:events".to_owned(),
            OwnKey::LastCleanup => "last-cleanup".to_owned(),
        };
        [
            self.settings.broker_prefix.as_slice(),
            OWN_KEY_PREFIX.as_bytes(),
            name.as_bytes(),
        ]
        .concat()
    }

    pub async fn redis_info(&self) -> Result<RedisInfo> {
        let (used_memory_bytes, connected_clients) = self.broker.info_fields().await?;
        Ok(RedisInfo {
            connected: true,
            used_memory_bytes,
            connected_clients,
        })
    }

    /// Appends an `api_request` line to the audit log (the HTTP server calls it for every
    /// mutating request).
    pub async fn audit_request(&self, request: &crate::audit::RequestAudit) -> Result<()> {
        self.audit
            .record(&crate::audit::AuditEvent::ApiRequest(request))
            .await?;
        self.audit.sync().await
    }

    /// Whether Redis (broker and backend) and the owner database answer: a `PING` each and a
    /// `SELECT 1`. For health checks; says nothing about the data.
    pub async fn ping(&self) -> Result<()> {
        for handle in [&self.broker, &self.backend] {
            let mut con = handle.con.clone();
            redis::cmd("PING").query_async::<()>(&mut con).await?;
        }
        self.db.ping().await
    }

    /// Counts every entry by state and location, and the owner rows. Orphans are confirmed
    /// as in a cleanup: still missing `grace_seconds` after the scan read them.
    pub async fn status(&self, o: &ReadOptions, cx: &RunCtx<'_>) -> Result<StatusReport> {
        self.status_noting(o, cx, &mut |_| {}).await
    }

    /// [`Janitor::status`], also handing each classified entry to `note` as it is counted: the
    /// server's metrics count more per entry (queue lengths, keys without a TTL) from the same
    /// scan, so their figures and `status` agree.
    pub async fn status_noting(
        &self,
        o: &ReadOptions,
        cx: &RunCtx<'_>,
        note: &mut (dyn FnMut(&Entry) + Send),
    ) -> Result<StatusReport> {
        let grace_seconds = o.grace_seconds.unwrap_or(self.settings.grace_seconds);
        let redis = self.redis_info().await?;
        let mut tasks = TaskCounts::zeroed();
        let mut results = ResultCounts::default();
        let wrong_type_keys = self
            .entries_noting(grace_seconds, false, cx, &mut |e: Entry| {
                if e.location == Location::Result && e.task_name.is_none() {
                    results.unnamed += 1;
                }
                tasks.add(&e);
                note(&e);
            })
            .await?;
        for rule in self.settings.owners.rules() {
            tasks.in_database += self.db.count_rows(rule).await?;
        }
        self.count_group_keys(&mut results).await?;
        Ok(StatusReport {
            redis,
            tasks,
            results,
            wrong_type_keys,
        })
    }

    /// Counts saved groups and chords in progress, by one SCAN of `celery-taskset-meta-*`.
    async fn count_group_keys(&self, results: &mut ResultCounts) -> Result<()> {
        let pattern = self.backend_layout.taskset_scan_pattern();
        let mut chords = std::collections::BTreeSet::new();
        let mut cursor = 0;
        loop {
            let (next, keys) = self.backend.scan_page(cursor, &pattern, 1000).await?;
            for key in &keys {
                match self.backend_layout.classify(key) {
                    janitor_wire::BackendKey::GroupMeta { .. } => results.groups += 1,
                    janitor_wire::BackendKey::ChordPart { group_id, part } if part != b'c' => {
                        chords.insert(group_id.to_vec());
                    }
                    _ => {}
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        results.chords_in_progress = chords.len() as u64;
        Ok(())
    }

    /// Every classified entry, streamed to `sink`. Orphan candidates are held back until they
    /// are confirmed (see [`Janitor::status`]), then handed over last, as orphans or as live.
    /// Without `keep_raw` their bytes are dropped while they wait (listing and counting don't
    /// need them), so memory grows with the number of orphans by their metadata only.
    pub async fn entries(
        &self,
        grace_seconds: f64,
        keep_raw: bool,
        progress: &dyn Progress,
        sink: &mut (dyn FnMut(Entry) + Send),
    ) -> Result<()> {
        let cx = RunCtx::new(progress, Cancel::default());
        self.entries_noting(grace_seconds, keep_raw, &cx, sink)
            .await
            .map(drop)
    }

    /// [`Janitor::entries`], stopping when `cx` is cancelled, and also returning the
    /// wrong-typed keys the scan skipped.
    pub(crate) async fn entries_noting(
        &self,
        grace_seconds: f64,
        keep_raw: bool,
        cx: &RunCtx<'_>,
        sink: &mut (dyn FnMut(Entry) + Send),
    ) -> Result<WrongTypeKeys> {
        let grace_seconds = janitor_config::validate_grace_seconds(grace_seconds)?;
        let (progress, cancel) = (cx.progress, &cx.cancel);
        let mut ctx = ScanCtx::new(progress, cancel);
        let mut candidates = Vec::new();
        self.scan(&mut ctx, &mut |mut e: Entry| {
            if e.state == State::Orphaned {
                if !keep_raw {
                    e.raw = Vec::new();
                }
                candidates.push(e);
            } else {
                sink(e);
            }
        })
        .await?;
        self.confirm(&mut candidates, grace_seconds, None, cancel, progress)
            .await?;
        for e in candidates {
            sink(e);
        }
        progress.finish();
        Ok(ctx.wrong_types)
    }
}
