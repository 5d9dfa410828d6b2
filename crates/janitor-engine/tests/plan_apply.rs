//! The plan/apply contract, against captured Celery 5.7 state in a real Redis and the owner
//! table in SQLite: a plan names entries by spec and never holds their bytes; planning changes
//! nothing; its preview is the dry run; a plan applied by a run that did not make it is checked
//! again (owners asked again, lost rows planned again) before anything is removed.

use janitor_engine::{CleanupOptions, Janitor, Location, PlanOptions, RunCtx, State, ValueSpec};
use janitor_testkit::fixtures::{self as support, Capture, Dump};
use janitor_testkit::redis_server::{Snapshot, TestRedis};
use janitor_testkit::sqlite_owners;

struct World {
    redis: TestRedis,
    db_url: String,
    janitor: Janitor,
    _dir: tempfile::TempDir,
}

async fn world(scenario: &str) -> World {
    let (_, path) = support::scenario(scenario)
        .into_iter()
        .find(|(c, _)| *c == Capture::Celery57Same)
        .expect("capture has the scenario");
    let redis = TestRedis::start().await;
    redis.load(&Dump::load(&path)).await;
    let dir = tempfile::tempdir().unwrap();
    let db_url = sqlite_owners::create(dir.path()).await;
    let section = format!("url = \"{}\"", redis.url());
    let settings = sqlite_owners::settings(&section, &db_url, dir.path());
    let janitor = Janitor::connect(settings).await.unwrap();
    World {
        redis,
        db_url,
        janitor,
        _dir: dir,
    }
}

/// Every orphan the engine sees now, with its bytes.
async fn orphans(j: &Janitor) -> Vec<janitor_engine::Entry> {
    let mut out = Vec::new();
    j.entries(0.0, true, &janitor_engine::NoProgress, &mut |e| {
        if e.state == State::Orphaned {
            out.push(e)
        }
    })
    .await
    .unwrap();
    out
}

#[tokio::test]
async fn a_plan_names_specs_never_bytes_changes_nothing_and_previews_the_dry_run() {
    let w = world("A").await;
    let seen = orphans(&w.janitor).await;
    assert!(!seen.is_empty());
    let before = Snapshot::take(&w.redis).await;

    let plan = w
        .janitor
        .plan(&PlanOptions::orphans(), &RunCtx::quiet())
        .await
        .unwrap();
    assert_eq!(plan.orphans.len(), seen.len());
    for e in &plan.orphans {
        assert!(
            e.raw.is_empty(),
            "a plan entry holds bytes: {:?}",
            e.task_id
        );
        let same = seen
            .iter()
            .find(|s| s.task_id == e.task_id && s.key == e.key)
            .expect("planned entry was seen");
        assert_eq!(
            e.value_spec(),
            ValueSpec::of(&same.raw, same.task_id.as_deref())
        );
    }
    let json = serde_json::to_value(&plan).unwrap();
    for (planned, e) in json["orphans"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&plan.orphans)
    {
        let value = planned["value"].as_str().unwrap();
        assert_eq!(value, serde_json::to_value(e.value_spec()).unwrap());
        assert_eq!(value.split(':').next().unwrap().len(), 40);
    }
    Snapshot::take(&w.redis)
        .await
        .assert_same_content(&before, "a plan changed Redis");

    let dry = w
        .janitor
        .cleanup(
            &CleanupOptions {
                dry_run: true,
                ..Default::default()
            },
            &RunCtx::quiet(),
        )
        .await
        .unwrap();
    let preview = plan.preview();
    assert_eq!(dry.orphans.removed, preview.orphans.removed);
    assert_eq!(dry.orphans.found, preview.orphans.found);
    assert_eq!(preview.orphans.removed.total(), seen.len() as u64);
    Snapshot::take(&w.redis)
        .await
        .assert_same_content(&before, "a dry run changed Redis");
}

#[tokio::test]
async fn a_plan_made_without_the_lock_is_checked_again_before_it_is_applied() {
    let w = world("A").await;
    let plan = w
        .janitor
        .plan(&PlanOptions::orphans(), &RunCtx::quiet())
        .await
        .unwrap();
    let queued = plan
        .orphans
        .iter()
        .filter(|e| e.location == Location::Queue)
        .count();
    assert!(queued > 0);
    // Every owner row comes back after the plan was made (a late commit).
    let before = Snapshot::take(&w.redis).await;
    for e in &plan.orphans {
        let id: i64 = e.owner_id.as_deref().unwrap().parse().unwrap();
        sqlite_owners::execute(
            &w.db_url,
            &format!("INSERT OR IGNORE INTO adds (id) VALUES ({id})"),
        )
        .await;
    }
    let planned = plan.orphans.len() as u64;
    let run = w
        .janitor
        .begin_run(&PlanOptions::orphans(), false)
        .await
        .unwrap();
    let report = run.apply(plan, &RunCtx::quiet()).await.unwrap();
    assert_eq!(report.orphans.removed.total(), 0, "{report:?}");
    assert_eq!(report.orphans.skipped.revived, planned, "{report:?}");
    let after = Snapshot::take(&w.redis).await;
    before.assert_same_content(&after, "revived entries were removed");
}

#[tokio::test]
async fn a_run_plans_under_its_lock_and_applies_exactly_the_plan() {
    let w = world("J").await;
    let seen = orphans(&w.janitor).await;
    assert!(!seen.is_empty());
    let before = Snapshot::take(&w.redis).await;
    let run = w
        .janitor
        .begin_run(&PlanOptions::orphans(), false)
        .await
        .unwrap();
    // Planning under the lock: a second run is refused meanwhile.
    let busy = w
        .janitor
        .begin_run(&PlanOptions::orphans(), false)
        .await
        .err()
        .expect("the lock is held");
    assert!(
        matches!(busy, janitor_engine::EngineError::Busy { .. }),
        "{busy}"
    );
    let plan = run.plan(&RunCtx::quiet()).await.unwrap();
    let run_id = run.id().to_owned();
    let report = run.apply(plan, &RunCtx::quiet()).await.unwrap();
    assert_eq!(report.run_id, run_id);
    assert_eq!(report.orphans.removed.total(), seen.len() as u64);
    let removed: Vec<(Vec<u8>, Vec<u8>)> = seen
        .iter()
        .map(|e| (e.key.clone(), e.raw.clone()))
        .collect();
    before.assert_only_removed(&Snapshot::take(&w.redis).await, &removed, "apply");
    // The lock is released: another run can start.
    let again = w
        .janitor
        .begin_run(&PlanOptions::orphans(), false)
        .await
        .unwrap();
    let report = again
        .apply(again_plan(&w).await, &RunCtx::quiet())
        .await
        .unwrap();
    assert_eq!(report.orphans.removed.total(), 0);
}

async fn again_plan(w: &World) -> janitor_engine::CleanupPlan {
    w.janitor
        .plan(&PlanOptions::orphans(), &RunCtx::quiet())
        .await
        .unwrap()
}

/// A front end that lets a `Run` go (an error between `begin_run` and `apply`) must not keep
/// the lock alive: the heartbeat stops, so the lock expires by itself.
#[tokio::test]
async fn a_run_dropped_without_apply_stops_refreshing_its_lock() {
    let w = world("A").await;
    let run = w
        .janitor
        .begin_run(&PlanOptions::orphans(), false)
        .await
        .unwrap();
    drop(run);
    // The heartbeat refreshes every 5 s to a 30 s TTL; after 6 s unrefreshed, at most 24 s remain.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    let mut con = w.redis.con().await;
    let pttl: i64 = redis::cmd("PTTL")
        .arg("celery-janitor:lock")
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(
        (0..=24_500).contains(&pttl),
        "the lock is still refreshed: pttl {pttl}"
    );
}
