//! Durable revoke and start-up cleanup support, against captured Celery 5.7 state in a real
//! Redis and the SQLite owner table: revocation keys with their TTL, queued and `unacked`
//! copies removed through the normal plan/apply path (archived), `undo`, a busy run lock
//! reported as skipped, and the reasons a start-up cleanup skips.

use janitor_engine::{
    CleanupOptions, Janitor, Location, PlanOptions, RestoreOptions, RevokeOptions, RunCtx,
};
use janitor_testkit::fixtures::{self as support, Capture, Dump};
use janitor_testkit::redis_server::TestRedis;
use janitor_testkit::sqlite_owners;
use redis::AsyncCommands;

struct World {
    redis: TestRedis,
    janitor: Janitor,
    _dir: tempfile::TempDir,
}

async fn world(scenario: &str, extra: &str) -> World {
    let (_, path) = support::scenario(scenario)
        .into_iter()
        .find(|(c, _)| *c == Capture::Celery57Same)
        .expect("capture has the scenario");
    let redis = TestRedis::start().await;
    redis.load(&Dump::load(&path)).await;
    let dir = tempfile::tempdir().unwrap();
    let db_url = sqlite_owners::create(dir.path()).await;
    let section = format!("url = \"{}\"", redis.url());
    let config = format!(
        "{extra}\n{}",
        sqlite_owners::config(&section, &db_url, dir.path(), "")
    );
    let settings =
        janitor_config::resolve_text(&config, &janitor_config::Flags::default(), &|_| None)
            .unwrap();
    let janitor = Janitor::connect(settings).await.unwrap();
    World {
        redis,
        janitor,
        _dir: dir,
    }
}

/// Task ids of the messages now queued or in `unacked`, with where.
async fn messages(j: &Janitor) -> Vec<(String, Location, Option<String>)> {
    let mut out = Vec::new();
    j.entries(0.0, false, &janitor_engine::NoProgress, &mut |e| {
        if e.location != Location::Result {
            out.push((
                e.task_id.clone().unwrap_or_default(),
                e.location,
                e.owner_id.clone(),
            ));
        }
    })
    .await
    .unwrap();
    out
}

#[tokio::test]
async fn revoke_writes_keys_with_ttl_removes_copies_archived_and_undo_lifts_it() {
    let w = world("C1", "").await;
    let j = &w.janitor;
    let before = messages(j).await;
    let (queued, _, _) = before
        .iter()
        .find(|(_, l, _)| *l == Location::Queue)
        .cloned()
        .expect("a queued message");
    let unacked: Vec<String> = before
        .iter()
        .filter(|(_, l, _)| *l == Location::Unacked)
        .map(|(t, _, _)| t.clone())
        .collect();
    assert!(!unacked.is_empty(), "C1 has unacked messages");
    let mut task_ids = vec![queued.clone()];
    task_ids.extend(unacked.iter().cloned());

    let report = j
        .revoke(
            &RevokeOptions {
                task_ids: task_ids.clone(),
                actor: Some("test".into()),
                ..Default::default()
            },
            &RunCtx::quiet(),
        )
        .await
        .unwrap();
    assert_eq!(report.keys, task_ids.len() as u64);
    assert_eq!(report.ttl_days, Some(7.0));
    assert_eq!(
        report.broadcast.as_ref().unwrap().task_ids,
        task_ids.len() as u64
    );
    let removal = report.removal.clone().expect("the removal ran");
    assert_eq!(removal.removed.queue, 1);
    assert_eq!(removal.removed.unacked, unacked.len() as u64);
    assert_eq!(removal.archived, 1 + unacked.len() as u64);
    assert!(report.removal_skipped.is_none());

    let mut con = w.redis.con().await;
    for t in &task_ids {
        let ttl: i64 = con
            .ttl(format!("celery-janitor:revoked:{t}"))
            .await
            .unwrap();
        assert!((7 * 86_400 - 60..=7 * 86_400).contains(&ttl), "{ttl}");
        let r = j.revocation(t).await.unwrap().expect("readable");
        assert_eq!(r.actor.as_deref(), Some("test"));
        assert!(r.expires_in_s.unwrap() > 6 * 86_400);
    }
    let after = messages(j).await;
    assert!(after.iter().all(|(t, _, _)| !task_ids.contains(t)));
    assert_eq!(after.len(), before.len() - task_ids.len());
    // Not a cleanup: no last-cleanup record.
    assert!(j.last_cleanup().await.unwrap().is_none());

    // `restore` puts them back, and warns they are revoked.
    let restored = j
        .restore(
            &RestoreOptions {
                run_id: Some(removal.run_id.clone()),
                ..Default::default()
            },
            &RunCtx::quiet(),
        )
        .await
        .unwrap();
    assert_eq!(restored.restored_total(), task_ids.len() as u64);
    assert!(
        restored
            .warnings
            .iter()
            .any(|w| w.contains("revoke --undo") && w.contains(&queued)),
        "{:?}",
        restored.warnings
    );

    let undone = j
        .revoke(
            &RevokeOptions {
                task_ids: task_ids.clone(),
                undo: true,
                ..Default::default()
            },
            &RunCtx::quiet(),
        )
        .await
        .unwrap();
    assert_eq!(undone.keys, task_ids.len() as u64);
    assert!(undone.removal.is_none() && undone.broadcast.is_none());
    for t in &task_ids {
        assert!(j.revocation(t).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn revoke_by_owner_removes_that_rows_messages() {
    let w = world("A", "").await;
    let j = &w.janitor;
    let before = messages(j).await;
    let (_, _, owner) = before
        .iter()
        .find(|(_, l, o)| {
            // An id the (integer) column can hold: the entry is live or orphaned.
            *l == Location::Queue && o.as_deref().is_some_and(|o| o.parse::<i64>().is_ok())
        })
        .cloned()
        .unwrap();
    let owner = owner.unwrap();
    let of_owner = before
        .iter()
        .filter(|(_, _, o)| o.as_ref() == Some(&owner))
        .count() as u64;
    let report = j
        .revoke(
            &RevokeOptions {
                owners: vec![("adds".into(), owner.clone())],
                ..Default::default()
            },
            &RunCtx::quiet(),
        )
        .await
        .unwrap();
    assert!(report.broadcast.is_none());
    assert_eq!(report.removal.unwrap().removed.total(), of_owner);
    assert!(j.owner_revocation("adds", &owner).await.unwrap().is_some());
    assert!(messages(j)
        .await
        .iter()
        .all(|(_, _, o)| o.as_ref() != Some(&owner)));
    // Only [[owners]] tables can be revoked.
    let err = j
        .revoke(
            &RevokeOptions {
                owners: vec![("nope".into(), "1".into())],
                ..Default::default()
            },
            &RunCtx::quiet(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}

fn busy_lock() -> String {
    serde_json::json!({"host": "elsewhere", "pid": 1, "run_id": "20260101T000000Z-busybusy",
        "since": "2026-01-01T00:00:00Z", "token": "t"})
    .to_string()
}

#[tokio::test]
async fn a_held_lock_skips_the_removal_but_not_the_revocation() {
    let w = world("A", "").await;
    let j = &w.janitor;
    let mut con = w.redis.con().await;
    let _: () = con
        .set_ex("celery-janitor:lock", busy_lock(), 60)
        .await
        .unwrap();
    let (task, _, _) = messages(j).await.into_iter().next().unwrap();
    let report = j
        .revoke(
            &RevokeOptions {
                task_ids: vec![task.clone()],
                ..Default::default()
            },
            &RunCtx::quiet(),
        )
        .await
        .unwrap();
    assert!(report.removal.is_none());
    let why = report.removal_skipped.unwrap();
    assert!(why.contains("20260101T000000Z-busybusy"), "{why}");
    assert!(j.revocation(&task).await.unwrap().is_some());
    assert!(messages(j).await.iter().any(|(t, _, _)| *t == task));
}

#[tokio::test]
async fn startup_skips_when_off_recent_or_locked() {
    let w = world("A", "").await;
    let j = &w.janitor;
    assert!(j.startup_skip_reason().await.unwrap().is_none());
    // A completed cleanup is recorded, and makes the next start-up skip.
    let report = j
        .cleanup(
            &CleanupOptions {
                plan: PlanOptions::orphans(),
                ..Default::default()
            },
            &RunCtx::quiet(),
        )
        .await
        .unwrap();
    let last = j.last_cleanup().await.unwrap().unwrap();
    assert_eq!(last.run_id, report.run_id);
    assert_eq!(last.command, "cleanup-orphaned");
    let why = j.startup_skip_reason().await.unwrap().unwrap();
    assert!(why.contains("startup_min_interval"), "{why}");
    // A dry run is not a completed cleanup.
    let mut con = w.redis.con().await;
    let _: () = con.del("celery-janitor:last-cleanup").await.unwrap();
    j.cleanup(
        &CleanupOptions {
            plan: PlanOptions::full(),
            dry_run: true,
            ..Default::default()
        },
        &RunCtx::quiet(),
    )
    .await
    .unwrap();
    assert!(j.last_cleanup().await.unwrap().is_none());
    // The lock held by another run.
    let _: () = con
        .set_ex("celery-janitor:lock", busy_lock(), 60)
        .await
        .unwrap();
    let why = j.startup_skip_reason().await.unwrap().unwrap();
    assert!(why.contains("another cleanup is running"), "{why}");
}

#[tokio::test]
async fn startup_skips_when_cleanup_on_startup_is_off() {
    // The [cleanup] table of the shared config comes after this text: set it through the env.
    let (_, path) = support::scenario("A")
        .into_iter()
        .find(|(c, _)| *c == Capture::Celery57Same)
        .unwrap();
    let redis = TestRedis::start().await;
    redis.load(&Dump::load(&path)).await;
    let dir = tempfile::tempdir().unwrap();
    let db_url = sqlite_owners::create(dir.path()).await;
    let config = sqlite_owners::config(
        &format!("url = \"{}\"", redis.url()),
        &db_url,
        dir.path(),
        "",
    );
    let settings = janitor_config::resolve_text(&config, &janitor_config::Flags::default(), &|k| {
        (k == "CELERY_JANITOR_CLEANUP_ON_STARTUP").then(|| "false".to_owned())
    })
    .unwrap();
    let j = Janitor::connect(settings).await.unwrap();
    let why = j.startup_skip_reason().await.unwrap().unwrap();
    assert!(why.contains("cleanup_on_startup is false"), "{why}");
}
