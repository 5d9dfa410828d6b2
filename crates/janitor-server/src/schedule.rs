//! Scheduled cleanup (`serve --cleanup-every`, `watch --every`): `full-cleanup` once per slot,
//! across every instance. Slots are multiples of the interval since the Unix epoch; an instance
//! runs a slot only after claiming it with `SET NX` on `celery-janitor:slot:<slot start>` (Unix
//! seconds; the key expires after two intervals and a minute), so each slot runs once however
//! many instances watch. At start-up the current slot runs at once unless a cleanup completed
//! since it began (the `last-cleanup` record) or another instance claimed it: a slot missed
//! while no instance was up is not lost. A slot whose run finds the lock busy (a CLI run, an API
//! request) is retried shortly by its claimer until the slot ends.

use std::sync::Arc;
use std::time::Duration;

use janitor_engine::{
    Cancel, CleanupOptions, EngineError, Janitor, NoProgress, PlanOptions, RunCtx,
};

/// The slot keys' prefix, after `celery-janitor:`.
pub const SLOT_KEY_PREFIX: &str = "slot:";

/// When scheduled cleanups run: every `every` seconds, on multiples of it since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    every: u64,
}

impl Schedule {
    /// Every `text` (`"24h"`, `"30m"`, `"2s"`, a number of seconds): whole seconds, at least 1.
    pub fn parse_every(text: &str) -> Result<Self, String> {
        let seconds = janitor_config::parse_duration(text)?;
        if !(seconds.is_finite() && seconds >= 1.0 && seconds.fract() == 0.0) {
            return Err(format!(
                "{text:?}: the interval must be a whole number of seconds, at least 1"
            ));
        }
        if seconds > 366.0 * 86_400.0 {
            return Err(format!("{text:?}: the interval must be at most 366 days"));
        }
        Ok(Schedule {
            every: seconds as u64,
        })
    }

    /// The interval in seconds.
    pub fn every_seconds(&self) -> u64 {
        self.every
    }

    /// The start (Unix seconds) of the slot holding `unix_seconds`.
    pub fn slot_start(&self, unix_seconds: u64) -> u64 {
        unix_seconds - unix_seconds % self.every
    }

    /// How long a slot key lives: past the end of its slot, so a late start-up still sees it.
    fn slot_ttl(&self) -> Duration {
        Duration::from_secs(self.every * 2 + 60)
    }

    /// How long to wait before trying a slot again after a busy lock.
    fn retry_wait(&self) -> Duration {
        Duration::from_secs_f64((self.every as f64 / 4.0).clamp(0.5, 30.0))
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `text` with the configured URLs' passwords hidden.
fn scrub(janitor: &Janitor, text: &str) -> String {
    let s = janitor.settings();
    [&s.broker_url, &s.backend_url]
        .into_iter()
        .chain(s.database_url.as_ref())
        .fold(text.to_owned(), |text, url| url.scrub(&text))
}

/// Runs the schedule until `cancel` fires (a run in progress then stops after its current
/// batch, as a Ctrl-C of the CLI).
pub async fn run(janitor: Arc<Janitor>, schedule: Schedule, cancel: Cancel) {
    let me = format!(
        "{}:{}:{}",
        janitor_engine::hostname(),
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    let every = schedule.every;
    tracing::info!(
        every_seconds = every,
        "scheduled cleanup: full-cleanup every slot"
    );
    // Start-up: the current slot, unless a cleanup completed in it.
    let current = schedule.slot_start(unix_now() as u64);
    let last = match janitor.last_cleanup().await {
        Ok(last) => last.map(|l| l.completed_at.timestamp() as u64),
        Err(e) => {
            let message = scrub(&janitor, &e.to_string());
            tracing::warn!(error = %message, "cannot read the last cleanup; running the current slot");
            None
        }
    };
    if last.is_none_or(|t| t < current) {
        run_slot(&janitor, schedule, current, &me, &cancel).await;
    } else {
        tracing::info!(
            slot = current,
            "the current slot's cleanup already completed"
        );
    }
    loop {
        let now = unix_now();
        let next = schedule.slot_start(now as u64) + every;
        let wait = Duration::from_secs_f64((next as f64 - now).max(0.0));
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        run_slot(&janitor, schedule, next, &me, &cancel).await;
        if cancel.is_cancelled() {
            return;
        }
    }
}

/// Claims `slot` and runs its cleanup, retrying while the lock is busy and the slot lasts.
async fn run_slot(janitor: &Janitor, schedule: Schedule, slot: u64, me: &str, cancel: &Cancel) {
    let name = format!("{SLOT_KEY_PREFIX}{slot}");
    match janitor.claim(&name, me, schedule.slot_ttl()).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::info!(slot, "slot claimed by another instance");
            return;
        }
        Err(e) => {
            let message = scrub(janitor, &e.to_string());
            tracing::warn!(slot, error = %message, "cannot claim the slot; skipping it");
            return;
        }
    }
    let end = (slot + schedule.every) as f64;
    loop {
        let options = CleanupOptions {
            plan: PlanOptions::full(),
            dry_run: false,
            take_over_lock: false,
        };
        let cx = RunCtx::new(&NoProgress, cancel.clone());
        match janitor.cleanup(&options, &cx).await {
            Ok(report) => {
                tracing::info!(
                    slot,
                    run_id = %report.run_id,
                    changed = report.changed(),
                    "scheduled cleanup completed"
                );
                eprintln!(
                    "celery-janitor: scheduled cleanup {} completed ({} changed)",
                    report.run_id,
                    report.changed()
                );
                return;
            }
            Err(e) if matches!(e.root(), EngineError::Busy { .. }) => {
                let wait = schedule.retry_wait();
                if unix_now() + wait.as_secs_f64() >= end {
                    let message = scrub(janitor, &e.to_string());
                    tracing::warn!(slot, error = %message, "the lock stayed busy for the whole slot; it is skipped");
                    return;
                }
                tracing::info!(slot, "the run lock is busy; trying the slot again shortly");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            Err(e) => {
                let message = scrub(janitor, &e.to_string());
                tracing::error!(slot, error = %message, "scheduled cleanup failed");
                eprintln!("celery-janitor: scheduled cleanup failed: {message}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_are_whole_seconds_and_slots_multiples_of_them() {
        let s = Schedule::parse_every("2s").unwrap();
        assert_eq!(s.every_seconds(), 2);
        assert_eq!(s.slot_start(1_000_001), 1_000_000);
        assert_eq!(
            Schedule::parse_every("24h").unwrap().every_seconds(),
            86_400
        );
        assert_eq!(
            Schedule::parse_every("24h")
                .unwrap()
                .slot_start(86_400 * 3 + 5),
            86_400 * 3
        );
        for bad in ["0", "0.5s", "1.5s", "-3s", "x", "400d"] {
            assert!(Schedule::parse_every(bad).is_err(), "{bad}");
        }
    }
}
