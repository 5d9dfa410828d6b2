//! `GET /metrics`: Prometheus text exposition of cached figures. A scrape never scans the
//! keyspace: the figures come from one `status` scan (the same count as `status --json`) and the
//! run record, computed every `[api] refresh_seconds` by one instance across all of them (a
//! lease taken with `SET NX PX`) and stored in Redis, so every instance serves the same numbers
//! and a scrape costs one `GET`. Counters are accumulated from the run records (each finished
//! run counted once, by id), so they are node-independent and never go down when old records
//! are trimmed. Labels are bounded: queue names, locations, states, guard nodes and kinds —
//! never task ids.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use janitor_engine::{
    Cancel, EngineError, Janitor, Location, NoProgress, ReadOptions, RunCtx, RunOutcome, State,
    RUNS_KEPT,
};
use serde::{Deserialize, Serialize};

/// The shared key holding the figures (`celery-janitor:metrics:figures`).
pub const FIGURES_KEY: &str = "metrics:figures";
/// The refresher's lease (`celery-janitor:metrics:lease`).
pub const LEASE_KEY: &str = "metrics:lease";

/// Upper bounds (seconds) of the cleanup duration histogram's buckets.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// The commands whose runs are cleanups (duration histogram, last success).
const CLEANUP_COMMANDS: [&str; 2] = ["cleanup-orphaned", "full-cleanup"];

/// A histogram, cumulative per bucket as Prometheus exposes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    /// Observations at most `DURATION_BUCKETS[i]`.
    pub buckets: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    fn observe(&mut self, value: f64) {
        self.buckets.resize(DURATION_BUCKETS.len(), 0);
        for (bound, n) in DURATION_BUCKETS.iter().zip(self.buckets.iter_mut()) {
            if value <= *bound {
                *n += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }
}

/// What `/metrics` serves, as stored in Redis (JSON).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// When they were computed (Unix seconds).
    pub computed_at: f64,
    /// Queue → messages in its lists (every priority sub-list).
    pub queues: BTreeMap<String, u64>,
    pub unacked: u64,
    pub result_keys: u64,
    pub result_keys_without_ttl: u64,
    /// State → location → entries.
    pub entries: BTreeMap<String, BTreeMap<String, u64>>,
    /// Location → entries removed by finished runs.
    pub removed_total: BTreeMap<String, u64>,
    pub restored_total: u64,
    pub lost_rows_marked_total: u64,
    pub cleanup_duration_seconds: Histogram,
    /// When the last cleanup completed (Unix seconds).
    pub last_cleanup_success: Option<f64>,
    /// Node → guard counter → count (the guard's own totals).
    pub guard: BTreeMap<String, BTreeMap<String, u64>>,
    /// Finished runs already added to the counters (those still in the run record).
    pub counted_runs: BTreeSet<String>,
    /// Run → restored entries already added to `restored_total`.
    pub restored_seen: BTreeMap<String, u64>,
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Reads the stored figures (`None`: not computed yet, or unreadable).
pub async fn stored(janitor: &Janitor) -> Result<Option<Figures>, EngineError> {
    Ok(janitor
        .get_shared(FIGURES_KEY)
        .await?
        .and_then(|raw| serde_json::from_slice(&raw).ok()))
}

/// Computes fresh figures: one `status` scan, the run record (counters added on top of
/// `previous`'s), the guard's totals.
pub async fn compute(
    janitor: &Janitor,
    previous: Option<Figures>,
    cancel: Cancel,
) -> Result<Figures, EngineError> {
    let mut f = previous.unwrap_or_default();
    let mut queues: BTreeMap<String, u64> = BTreeMap::new();
    let mut entries: BTreeMap<String, BTreeMap<String, u64>> = State::ALL
        .iter()
        .map(|s| {
            let per_location = Location::ALL
                .iter()
                .map(|l| (l.as_str().to_owned(), 0))
                .collect();
            (state_name(*s).to_owned(), per_location)
        })
        .collect();
    let mut without_ttl = 0;
    let cx = RunCtx::new(&NoProgress, cancel);
    let status = janitor
        .status_noting(&ReadOptions::default(), &cx, &mut |e| {
            if let Some(n) = entries
                .get_mut(state_name(e.state))
                .and_then(|m| m.get_mut(e.location.as_str()))
            {
                *n += 1;
            }
            match e.location {
                Location::Queue => {
                    *queues
                        .entry(e.queue.clone().unwrap_or_default())
                        .or_default() += 1
                }
                Location::Result if e.pttl == Some(-1) => without_ttl += 1,
                _ => {}
            }
        })
        .await?;
    let by_location = |l: Location| {
        status
            .tasks
            .by_location
            .get(l.as_str())
            .copied()
            .unwrap_or(0)
    };
    f.queues = queues;
    f.unacked = by_location(Location::Unacked);
    f.result_keys = by_location(Location::Result);
    f.result_keys_without_ttl = without_ttl;
    f.entries = entries;

    let runs = janitor.runs(RUNS_KEPT).await?;
    let mut counted = BTreeSet::new();
    let mut restored_seen = BTreeMap::new();
    for run in &runs {
        if run.outcome != RunOutcome::Running {
            counted.insert(run.run_id.clone());
            if !f.counted_runs.contains(&run.run_id) {
                let r = &run.removed;
                for (location, n) in [
                    ("queue", r.queue),
                    ("unacked", r.unacked),
                    ("result", r.result),
                ] {
                    *f.removed_total.entry(location.to_owned()).or_default() += n;
                }
                f.lost_rows_marked_total += run.lost_rows_marked;
                if CLEANUP_COMMANDS.contains(&run.command.as_str()) {
                    if let Some(end) = run.ended_at {
                        let seconds =
                            (end - run.started_at).num_milliseconds().max(0) as f64 / 1000.0;
                        f.cleanup_duration_seconds.observe(seconds);
                    }
                }
            }
        }
        if run.outcome == RunOutcome::Completed && CLEANUP_COMMANDS.contains(&run.command.as_str())
        {
            if let Some(end) = run.ended_at {
                let t = end.timestamp_millis() as f64 / 1000.0;
                f.last_cleanup_success = Some(f.last_cleanup_success.map_or(t, |l| l.max(t)));
            }
        }
        if run.archived > 0 {
            let now = janitor.restored_count(&run.run_id).await?;
            let before = f.restored_seen.get(&run.run_id).copied().unwrap_or(0);
            f.restored_total += now.saturating_sub(before);
            restored_seen.insert(run.run_id.clone(), now.max(before));
        }
    }
    if let Some(last) = janitor.last_cleanup().await? {
        let t = last.completed_at.timestamp_millis() as f64 / 1000.0;
        f.last_cleanup_success = Some(f.last_cleanup_success.map_or(t, |l| l.max(t)));
    }
    f.counted_runs = counted;
    f.restored_seen = restored_seen;
    f.guard = janitor.guard_stats().await?.nodes;
    f.computed_at = unix_now();
    Ok(f)
}

/// A state's label value.
fn state_name(s: State) -> &'static str {
    match s {
        State::Live => "live",
        State::Orphaned => "orphaned",
        State::Unowned => "unowned",
        State::Undecidable => "undecidable",
    }
}

/// Escapes a label value for the text format.
fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The Prometheus text exposition (version 0.0.4) of `f`, as of `now` (Unix seconds).
pub fn render(f: Option<&Figures>, now: f64) -> String {
    let mut out = String::new();
    let Some(f) = f else {
        out.push_str("# celery-janitor: the figures are not computed yet\n");
        return out;
    };
    header(
        &mut out,
        "celery_janitor_queue_length",
        "gauge",
        "Messages in the queue's lists (every priority sub-list).",
    );
    for (queue, n) in &f.queues {
        let _ = writeln!(
            out,
            "celery_janitor_queue_length{{queue=\"{}\"}} {n}",
            label(queue)
        );
    }
    for (name, help, value) in [
        (
            "celery_janitor_unacked",
            "Messages delivered to a worker and not acknowledged (entries of unacked).",
            f.unacked,
        ),
        (
            "celery_janitor_result_keys",
            "Task result keys in the result backend.",
            f.result_keys,
        ),
        (
            "celery_janitor_result_keys_without_ttl",
            "Task result keys without an expiry.",
            f.result_keys_without_ttl,
        ),
    ] {
        header(&mut out, name, "gauge", help);
        let _ = writeln!(out, "{name} {value}");
    }
    header(
        &mut out,
        "celery_janitor_entries",
        "gauge",
        "Entries (queued messages, unacked deliveries, results) by state and location.",
    );
    for (state, locations) in &f.entries {
        for (location, n) in locations {
            let _ = writeln!(
                out,
                "celery_janitor_entries{{state=\"{}\",location=\"{}\"}} {n}",
                label(state),
                label(location)
            );
        }
    }
    header(
        &mut out,
        "celery_janitor_removed_total",
        "counter",
        "Entries removed (and archived) by cleanup and purge runs, by location.",
    );
    for l in Location::ALL {
        let n = f.removed_total.get(l.as_str()).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "celery_janitor_removed_total{{location=\"{}\"}} {n}",
            l.as_str()
        );
    }
    header(
        &mut out,
        "celery_janitor_restored_total",
        "counter",
        "Archived entries restored.",
    );
    let _ = writeln!(out, "celery_janitor_restored_total {}", f.restored_total);
    header(
        &mut out,
        "celery_janitor_lost_rows_marked_total",
        "counter",
        "Owner rows marked lost by full cleanups.",
    );
    let _ = writeln!(
        out,
        "celery_janitor_lost_rows_marked_total {}",
        f.lost_rows_marked_total
    );
    header(
        &mut out,
        "celery_janitor_cleanup_duration_seconds",
        "histogram",
        "How long cleanup runs took, from the run record.",
    );
    let h = &f.cleanup_duration_seconds;
    for (i, bound) in DURATION_BUCKETS.iter().enumerate() {
        let n = h.buckets.get(i).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "celery_janitor_cleanup_duration_seconds_bucket{{le=\"{bound}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "celery_janitor_cleanup_duration_seconds_bucket{{le=\"+Inf\"}} {}",
        h.count
    );
    let _ = writeln!(out, "celery_janitor_cleanup_duration_seconds_sum {}", h.sum);
    let _ = writeln!(
        out,
        "celery_janitor_cleanup_duration_seconds_count {}",
        h.count
    );
    if let Some(t) = f.last_cleanup_success {
        header(
            &mut out,
            "celery_janitor_last_cleanup_success_timestamp_seconds",
            "gauge",
            "When the last cleanup run completed (Unix time).",
        );
        let _ = writeln!(
            out,
            "celery_janitor_last_cleanup_success_timestamp_seconds {t}"
        );
    }
    header(
        &mut out,
        "celery_janitor_guard_events_total",
        "counter",
        "What the worker guard did, per worker node and kind.",
    );
    for (node, kinds) in &f.guard {
        for (kind, n) in kinds {
            let _ = writeln!(
                out,
                "celery_janitor_guard_events_total{{node=\"{}\",kind=\"{}\"}} {n}",
                label(node),
                label(kind)
            );
        }
    }
    header(
        &mut out,
        "celery_janitor_figures_age_seconds",
        "gauge",
        "Seconds since these figures were computed.",
    );
    let _ = writeln!(
        out,
        "celery_janitor_figures_age_seconds {}",
        (now - f.computed_at).max(0.0)
    );
    out
}

/// Keeps the shared figures fresh: every instance runs one; whichever takes the lease when the
/// figures are `refresh` old computes and stores them. Stops when `cancel` fires.
pub async fn refresher(janitor: Arc<Janitor>, refresh: Duration, cancel: Cancel) {
    let me = format!(
        "{}:{}:{}",
        janitor_engine::hostname(),
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    // The lease outlives a slow scan (the grace wait included); it is released when done.
    let lease = refresh.max(Duration::from_secs(60))
        + Duration::from_secs_f64(janitor.settings().grace_seconds + 60.0);
    loop {
        let wait = match refresh_once(&janitor, refresh, lease, &me, &cancel).await {
            Ok(wait) => wait,
            Err(e) => {
                tracing::warn!(error = %e, "cannot refresh the metrics figures");
                refresh.min(Duration::from_secs(30))
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One turn of the refresher: computes the figures if they are due and the lease is free.
/// Returns how long to wait before the next turn.
async fn refresh_once(
    janitor: &Janitor,
    refresh: Duration,
    lease: Duration,
    me: &str,
    cancel: &Cancel,
) -> Result<Duration, EngineError> {
    let previous = stored(janitor).await?;
    let age = previous
        .as_ref()
        .map_or(f64::INFINITY, |f| unix_now() - f.computed_at);
    if age < refresh.as_secs_f64() {
        return Ok(
            Duration::from_secs_f64(refresh.as_secs_f64() - age).max(Duration::from_millis(200))
        );
    }
    if !janitor.claim(LEASE_KEY, me, lease).await? {
        // Another instance is computing: look again soon.
        return Ok(refresh.min(Duration::from_secs(5)));
    }
    // Read again under the lease: the holder before may have just stored them.
    let previous = stored(janitor).await?;
    let result = async {
        let figures = compute(janitor, previous, cancel.clone()).await?;
        let raw = serde_json::to_vec(&figures).expect("serializable");
        janitor.put_shared(FIGURES_KEY, &raw).await
    }
    .await;
    janitor.release_claim(LEASE_KEY, me).await?;
    result?;
    tracing::debug!("metrics figures refreshed");
    Ok(refresh)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_has_help_and_type_and_escapes_labels() {
        let mut f = Figures {
            computed_at: 100.0,
            ..Default::default()
        };
        f.queues.insert("we\"ird\\q".into(), 3);
        f.cleanup_duration_seconds.observe(2.0);
        let text = render(Some(&f), 130.0);
        assert!(text.contains("# TYPE celery_janitor_queue_length gauge\n"));
        assert!(text.contains("celery_janitor_queue_length{queue=\"we\\\"ird\\\\q\"} 3\n"));
        assert!(text.contains("celery_janitor_cleanup_duration_seconds_bucket{le=\"1\"} 0\n"));
        assert!(text.contains("celery_janitor_cleanup_duration_seconds_bucket{le=\"5\"} 1\n"));
        assert!(text.contains("celery_janitor_cleanup_duration_seconds_bucket{le=\"+Inf\"} 1\n"));
        assert!(text.contains("celery_janitor_figures_age_seconds 30\n"));
        assert!(text.contains("celery_janitor_removed_total{location=\"unacked\"} 0\n"));
        assert_eq!(state_name(State::Unowned), "unowned");
    }
}
