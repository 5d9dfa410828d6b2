//! Purging a queue ([`Janitor::purge_queue`]): every message queued in one queue (its bare list
//! and all its priority sub-lists) when the purge starts is removed, whoever owns it — a
//! cleanup run like the others, planned by a selection of the plan ([`PlanOptions::purge_queue`])
//! and applied by the same compare-and-set scripts under the run lock, so each message is
//! archived (`restore --run` puts them back), audited and recorded. Messages pushed after the
//! scan read the lists stay; `unacked` and results are not read. A purge larger than
//! [`PurgeOptions::max`] is refused unless forced, before anything changes.

use crate::context::RunCtx;
use crate::error::{EngineError, Result};
use crate::janitor::Janitor;
use crate::plan::{CleanupPlan, PlanOptions};
use crate::reports::CleanupReport;

/// What `[api] purge_max` is when the config does not say: a purge of more messages than this
/// needs `force`.
pub const DEFAULT_PURGE_MAX: u64 = 100_000;

/// A queue purge (see [`Janitor::purge_queue`]).
#[derive(Debug, Clone)]
pub struct PurgeOptions {
    /// The queue's name, as Celery names it (`celery`); its priority sub-lists are included.
    pub queue: String,
    /// Plan and report only: no lock, no changes (the audit log gets the preview).
    pub dry_run: bool,
    /// Purge even when the queue holds more than `max` messages.
    pub force: bool,
    /// Refuse (with [`EngineError::PurgeTooLarge`], nothing changed) a purge of more messages
    /// than this unless `force`: the caller fills it from `[api] purge_max`
    /// ([`DEFAULT_PURGE_MAX`] when unset).
    pub max: u64,
    /// Who asked: the `actor` of every audit line of this purge (`None`: the janitor's own, see
    /// [`Janitor::set_actor`]).
    pub actor: Option<String>,
    /// Take over a stale run lock (see `CleanupOptions::take_over_lock`).
    pub take_over_lock: bool,
}

impl PurgeOptions {
    /// A purge of `queue` with the defaults: not a dry run, not forced, [`DEFAULT_PURGE_MAX`].
    pub fn new(queue: impl Into<String>) -> Self {
        PurgeOptions {
            queue: queue.into(),
            dry_run: false,
            force: false,
            max: DEFAULT_PURGE_MAX,
            actor: None,
            take_over_lock: false,
        }
    }

    fn plan(&self) -> PlanOptions {
        PlanOptions {
            purge_queue: Some(self.queue.clone()),
            ..PlanOptions::default()
        }
    }

    /// The refusal of `messages` messages, if they are too many.
    fn check(&self, messages: u64) -> Result<()> {
        if messages > self.max && !self.force {
            return Err(EngineError::PurgeTooLarge {
                queue: self.queue.clone(),
                messages,
                max: self.max,
            });
        }
        Ok(())
    }
}

impl Janitor {
    /// Purges one queue: removes the messages queued in it (every priority sub-list) when the
    /// purge starts — archived, audited, under the run lock, restorable with `restore --run
    /// RUN_ID` — and reports like a cleanup (`cleanup-orphaned --json`): `found` and `removed`
    /// count queue messages; `skipped.changed` those a worker took before their removal (not
    /// revoked: they run); `undecidable` list elements that are not Celery messages (left
    /// alone). `unacked` is untouched, and messages pushed after the scan stay.
    ///
    /// More than `max` messages without `force` is refused with
    /// [`EngineError::PurgeTooLarge`] and nothing changed, on a dry run too (it previews what
    /// the purge would do). Errors: [`EngineError::Busy`] when another run holds the lock, and
    /// those of a cleanup.
    pub async fn purge_queue(&self, o: &PurgeOptions, cx: &RunCtx<'_>) -> Result<CleanupReport> {
        if o.queue.is_empty() {
            return Err(EngineError::InvalidOption(
                janitor_config::ConfigError::Invalid {
                    key: "queue".into(),
                    message: "the queue name is empty".into(),
                },
            ));
        }
        crate::audit::as_actor(o.actor.clone(), self.purge_as_actor(o, cx)).await
    }

    async fn purge_as_actor(&self, o: &PurgeOptions, cx: &RunCtx<'_>) -> Result<CleanupReport> {
        // A cheap count first, so a purge far too large is refused without a scan or a run.
        o.check(self.queue_length(&o.queue).await?)?;
        let options = o.plan();
        if o.dry_run {
            let plan = self.plan(&options, cx).await?;
            o.check(planned(&plan))?;
            return Ok(self.preview_audited(&plan, cx).await?.orphans);
        }
        let run = self.begin_run(&options, o.take_over_lock).await?;
        if let Err(e) = self.note_run_queue(run.id(), &o.queue).await {
            return Err(run.fail(e, cx).await);
        }
        let plan = match run.plan(cx).await {
            Ok(plan) => plan,
            Err(e) => return Err(run.fail(e, cx).await),
        };
        // Messages pushed between the count and the scan count too.
        if let Err(e) = o.check(planned(&plan)) {
            return Err(run.fail(e, cx).await);
        }
        Ok(run.apply(plan, cx).await?.orphans)
    }
}

/// The messages a purge plan removes.
fn planned(plan: &CleanupPlan) -> u64 {
    plan.purged.len() as u64
}
