//! The worker guard against captured Celery 5.7 state in a real Redis and the SQLite owner
//! table: the owner a guard reads from a call's JSON arguments is the one the cleanup reads from
//! the queued message; checks answer run / missing / revoked; `guard_record` counts, streams
//! and archives atomically and never removes a final (SUCCESS/FAILURE) result. On PostgreSQL, a
//! worker's checks share one connection, re-opened after the server drops it.

use janitor_engine::{
    guard_target, GuardError, GuardEvent, GuardEventKind, GuardVerdict, Janitor, Location,
    RestoreOptions, RevokeOptions, RevokedBy, RunCtx, State,
};
use janitor_testkit::fixtures::{self as support, Capture, Dump};
use janitor_testkit::postgres::TestDatabase;
use janitor_testkit::redis_server::TestRedis;
use janitor_testkit::sqlite_owners;
use redis::AsyncCommands;

struct World {
    redis: TestRedis,
    janitor: Janitor,
    dir: tempfile::TempDir,
}

async fn world(scenario: Option<&str>) -> World {
    let redis = TestRedis::start().await;
    if let Some(scenario) = scenario {
        let (_, path) = support::scenario(scenario)
            .into_iter()
            .find(|(c, _)| *c == Capture::Celery57Same)
            .expect("capture has the scenario");
        redis.load(&Dump::load(&path)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let db_url = sqlite_owners::create(dir.path()).await;
    let section = format!("url = \"{}\"", redis.url());
    let settings = sqlite_owners::settings(&section, &db_url, dir.path());
    let janitor = Janitor::connect(settings).await.unwrap();
    World {
        redis,
        janitor,
        dir,
    }
}

/// A task's args and kwargs as the worker has them, JSON-encoded, from the message bytes.
fn call_json(location: Location, raw: &[u8]) -> (String, String, String) {
    let env = match location {
        Location::Unacked => janitor_wire::UnackedEntry::parse(raw).unwrap().envelope,
        _ => janitor_wire::Envelope::parse(raw).unwrap(),
    };
    let call = env.decode_call().unwrap();
    let name = env.task_name.clone().or(call.name.clone()).unwrap();
    (
        name,
        serde_json::to_string(&call.args).unwrap(),
        serde_json::to_string(&call.kwargs).unwrap(),
    )
}

#[tokio::test]
async fn the_guard_reads_the_same_owner_as_the_cleanup() {
    for scenario in ["A", "C1", "C2"] {
        let w = world(Some(scenario)).await;
        let mut entries = Vec::new();
        w.janitor
            .entries(0.0, true, &janitor_engine::NoProgress, &mut |e| {
                entries.push(e)
            })
            .await
            .unwrap();
        let mut compared = 0;
        for e in entries.iter().filter(|e| e.location != Location::Result) {
            let Ok(_) = janitor_wire::Envelope::parse(&e.raw)
                .map(drop)
                .or_else(|_| janitor_wire::UnackedEntry::parse(&e.raw).map(drop))
            else {
                continue;
            };
            let (name, args, kwargs) = call_json(e.location, &e.raw);
            let task_id = e.task_id.clone().unwrap();
            let target = guard_target(
                &w.janitor.settings().owners,
                &task_id,
                &name,
                &args,
                &kwargs,
            );
            // The same owner row, or none: an id the database can't hold (undecidable in a
            // cleanup) is still read, and the check then lets the task run.
            match (&e.owner_id, e.state) {
                (Some(id), State::Live | State::Orphaned | State::Undecidable) => {
                    let t = target.expect("an owned task has a target");
                    assert_eq!(Some(&t.table), e.owner_table.as_ref());
                    assert_eq!(&t.owner_id, id);
                    let verdict = w.janitor.guard_check(&task_id, Some(&t)).await.unwrap();
                    let expected = match e.state {
                        State::Orphaned => GuardVerdict::Missing,
                        _ => GuardVerdict::Run,
                    };
                    assert_eq!(verdict, expected, "{:?}", e.reason);
                    compared += 1;
                }
                _ => assert!(target.is_none(), "{:?}", e.reason),
            }
        }
        assert!(
            compared > 0,
            "scenario {scenario}: no owned message compared"
        );
    }
}

#[test]
fn undecidable_calls_have_no_target() {
    let config = sqlite_owners::config(
        "url = \"redis://h\"",
        "sqlite://x",
        std::path::Path::new("/tmp"),
        "",
    );
    let settings =
        janitor_config::resolve_text(&config, &janitor_config::Flags::default(), &|_| None)
            .unwrap();
    let owners = &settings.owners;
    let t = guard_target(owners, "t1", "app.add", "[2, 3]", "{}").unwrap();
    assert_eq!((t.table.as_str(), t.owner_id.as_str()), ("adds", "2"));
    // Not owned, no such argument, not an id, not JSON: never guarded.
    assert!(guard_target(owners, "t1", "app.other", "[2]", "{}").is_none());
    assert!(guard_target(owners, "t1", "app.add", "[]", "{}").is_none());
    assert!(guard_target(owners, "t1", "app.add", "[[1]]", "{}").is_none());
    assert!(guard_target(owners, "t1", "app.add", "(2,)", "{}").is_none());
    assert!(guard_target(owners, "t1", "app.add", "[2.5]", "{}").is_none());
}

#[tokio::test]
async fn a_check_says_run_missing_or_revoked() {
    let w = world(None).await;
    let j = &w.janitor;
    let live = j.guard_target("t-live", "app.add", "[2, 1]", "{}").unwrap();
    let gone = j.guard_target("t-gone", "app.add", "[7, 1]", "{}").unwrap();
    assert_eq!(
        j.guard_check("t-live", Some(&live)).await.unwrap(),
        GuardVerdict::Run
    );
    assert_eq!(
        j.guard_check("t-gone", Some(&gone)).await.unwrap(),
        GuardVerdict::Missing
    );
    // No owner to check: only revocations count.
    assert_eq!(
        j.guard_check("t-free", None).await.unwrap(),
        GuardVerdict::Run
    );

    let revoke = |task_ids: Vec<String>, owners: Vec<(String, String)>| RevokeOptions {
        task_ids,
        owners,
        ..Default::default()
    };
    j.revoke(&revoke(vec!["t-live".into()], vec![]), &RunCtx::quiet())
        .await
        .unwrap();
    assert_eq!(
        j.guard_check("t-live", Some(&live)).await.unwrap(),
        GuardVerdict::Revoked {
            by: RevokedBy::Task
        }
    );
    assert_eq!(
        j.guard_check("t-free", None).await.unwrap(),
        GuardVerdict::Run
    );
    let other = j
        .guard_target("t-other", "app.add", "[3, 1]", "{}")
        .unwrap();
    j.revoke(
        &revoke(vec![], vec![("adds".into(), "3".into())]),
        &RunCtx::quiet(),
    )
    .await
    .unwrap();
    assert_eq!(
        j.guard_check("t-other", Some(&other)).await.unwrap(),
        GuardVerdict::Revoked {
            by: RevokedBy::Owner
        }
    );
    // Lifted: the row is there, so it runs.
    j.revoke(
        &RevokeOptions {
            undo: true,
            ..revoke(vec!["t-live".into()], vec![("adds".into(), "3".into())])
        },
        &RunCtx::quiet(),
    )
    .await
    .unwrap();
    assert_eq!(
        j.guard_check("t-live", Some(&live)).await.unwrap(),
        GuardVerdict::Run
    );
    assert_eq!(
        j.guard_check("t-other", Some(&other)).await.unwrap(),
        GuardVerdict::Run
    );
}

#[tokio::test]
async fn a_database_that_is_down_is_a_typed_error_and_a_revocation_still_wins() {
    // Captured messages, so a revoke's removal has owners to ask.
    let w = world(Some("A")).await;
    // A worker starts while its database is unreachable: the janitor is built anyway.
    let section = format!("url = \"{}\"", w.redis.url());
    let missing = w.dir.path().join("no/such/dir/owners.sqlite");
    let config = sqlite_owners::config(
        &section,
        &format!("sqlite://{}", missing.display()),
        w.dir.path(),
        "",
    );
    let settings =
        janitor_config::resolve_text(&config, &janitor_config::Flags::default(), &|_| None)
            .unwrap();
    let lazy = Janitor::connect_lazy_db(settings, std::time::Duration::from_secs(2))
        .await
        .unwrap();
    let target = lazy.guard_target("t1", "app.add", "[2]", "{}").unwrap();
    let err = lazy.guard_check("t1", Some(&target)).await.unwrap_err();
    assert!(matches!(err, GuardError::Database(_)), "{err}");
    // The broker's clock is there all the same.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((lazy.broker_time().await.unwrap() - now).abs() < 5.0);
    // A revoke still writes its revocations; the removal (which needs the database) is
    // reported, not failed.
    let report = lazy
        .revoke(
            &RevokeOptions {
                task_ids: vec!["t2".into()],
                ..Default::default()
            },
            &RunCtx::quiet(),
        )
        .await
        .unwrap();
    assert!(report.removal.is_none());
    assert!(
        report
            .removal_skipped
            .as_deref()
            .unwrap()
            .contains("failed"),
        "{report:?}"
    );
    assert!(lazy.revocation("t2").await.unwrap().is_some());
    w.janitor
        .revoke(
            &RevokeOptions {
                task_ids: vec!["t1".into()],
                ..Default::default()
            },
            &RunCtx::quiet(),
        )
        .await
        .unwrap();
    assert_eq!(
        lazy.guard_check("t1", Some(&target)).await.unwrap(),
        GuardVerdict::Revoked {
            by: RevokedBy::Task
        }
    );
}

fn event(kind: GuardEventKind, task_id: &str, node: &str) -> GuardEvent {
    GuardEvent {
        kind,
        task_id: task_id.into(),
        task_name: "app.add".into(),
        owner_table: Some("adds".into()),
        owner_id: Some("7".into()),
        reason: "owner row missing".into(),
        node: node.into(),
    }
}

fn meta(task_id: &str, status: &str) -> String {
    serde_json::json!({"status": status, "result": null, "traceback": null, "children": [],
        "date_done": null, "task_id": task_id})
    .to_string()
}

#[tokio::test]
async fn record_counts_streams_and_removes_only_unfinished_results() {
    let w = world(None).await;
    let j = &w.janitor;
    let mut con = w.redis.con().await;
    let started = meta("t-started", "STARTED");
    let _: () = con
        .set_ex("celery-task-meta-t-started", &started, 3600)
        .await
        .unwrap();
    for status in ["SUCCESS", "FAILURE"] {
        let id = format!("t-{status}");
        let _: () = con
            .set(format!("celery-task-meta-{id}"), meta(&id, status))
            .await
            .unwrap();
    }

    let r = j
        .guard_record(&event(GuardEventKind::Skipped, "t-started", "celery@a"))
        .await
        .unwrap();
    assert_eq!(r.result, "removed");
    assert!(r.archive_id.is_some());
    let gone: bool = con.exists("celery-task-meta-t-started").await.unwrap();
    assert!(!gone);
    for status in ["SUCCESS", "FAILURE"] {
        let id = format!("t-{status}");
        let r = j
            .guard_record(&event(GuardEventKind::Revoked, &id, "celery@b"))
            .await
            .unwrap();
        assert_eq!(r.result, format!("kept:{status}"));
        let kept: bool = con.exists(format!("celery-task-meta-{id}")).await.unwrap();
        assert!(kept, "{status} result removed");
    }
    // A re-queue never touches the result.
    let _: () = con
        .set("celery-task-meta-t-retry", meta("t-retry", "RETRY"))
        .await
        .unwrap();
    let r = j
        .guard_record(&event(GuardEventKind::Requeued, "t-retry", "celery@a"))
        .await
        .unwrap();
    assert_eq!(r.result, "untouched");
    let none = j
        .guard_record(&event(GuardEventKind::Skipped, "t-none", "celery@a"))
        .await
        .unwrap();
    assert_eq!(none.result, "none");

    let stats = j.guard_stats().await.unwrap();
    assert_eq!(stats.totals["skipped"], 2);
    assert_eq!(stats.totals["revoked"], 2);
    assert_eq!(stats.totals["requeued"], 1);
    assert_eq!(stats.nodes["celery@a"]["skipped"], 2);
    assert_eq!(stats.nodes["celery@b"]["revoked"], 2);
    assert_eq!(stats.recent.len(), 5);
    assert_eq!(stats.recent[0].fields["task_id"], "t-none");
    assert_eq!(stats.recent[4].fields["task_id"], "t-started");
    assert_eq!(
        stats.recent[4].fields.get("archive_id"),
        r_archive(&stats, "t-started").as_ref()
    );
    serde_json::to_string(&stats).unwrap();

    // The removed result comes back with `restore`, like any removal.
    let report = j
        .restore(
            &RestoreOptions {
                run_id: Some("guard-t-started".into()),
                ..Default::default()
            },
            &RunCtx::quiet(),
        )
        .await
        .unwrap();
    assert_eq!(report.restored_total(), 1, "{report:?}");
    let back: String = con.get("celery-task-meta-t-started").await.unwrap();
    assert_eq!(back, started);
}

fn r_archive(stats: &janitor_engine::GuardStats, task_id: &str) -> Option<String> {
    stats
        .recent
        .iter()
        .find(|e| e.fields["task_id"] == task_id)
        .and_then(|e| e.fields.get("archive_id").cloned())
}

#[tokio::test]
async fn a_wrong_typed_key_makes_record_write_nothing() {
    let w = world(None).await;
    let mut con = w.redis.con().await;
    let _: () = con
        .set("celery-task-meta-t1", meta("t1", "STARTED"))
        .await
        .unwrap();
    let _: () = con
        .set("celery-janitor:guard:events", "not a stream")
        .await
        .unwrap();
    let err = w
        .janitor
        .guard_record(&event(GuardEventKind::Skipped, "t1", "celery@a"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("guard:events"), "{err}");
    let result: bool = con.exists("celery-task-meta-t1").await.unwrap();
    let stats: bool = con.exists("celery-janitor:guard:stats").await.unwrap();
    let archive: bool = con.exists("celery-janitor:archive").await.unwrap();
    assert!(result && !stats && !archive);
}

/// The guard's backends in `db` other than the test's own: what a worker holds open.
async fn guard_backends(db: &TestDatabase) -> usize {
    let rows = db
        .rows(
            "SELECT count(*)::text FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .await;
    rows[0][0].as_deref().unwrap().parse().unwrap()
}

#[tokio::test]
async fn on_postgres_a_worker_checks_on_one_connection_and_reconnects_after_losing_it() {
    let redis = TestRedis::start().await;
    let db = TestDatabase::create().await;
    db.execute(
        "CREATE TABLE adds (id bigint PRIMARY KEY, status text, created_at timestamptz);
         INSERT INTO adds (id) VALUES (2), (3);",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = sqlite_owners::config(
        &format!("url = \"{}\"", redis.url()),
        db.url(),
        dir.path(),
        "",
    );
    let settings =
        janitor_config::resolve_text(&config, &janitor_config::Flags::default(), &|_| None)
            .unwrap();
    let j = Janitor::connect_lazy_db(settings, std::time::Duration::from_secs(5))
        .await
        .unwrap();
    let live = j.guard_target("t-live", "app.add", "[2]", "{}").unwrap();
    let gone = j.guard_target("t-gone", "app.add", "[7]", "{}").unwrap();
    for _ in 0..50 {
        assert_eq!(
            j.guard_check("t-live", Some(&live)).await.unwrap(),
            GuardVerdict::Run
        );
        assert_eq!(
            j.guard_check("t-gone", Some(&gone)).await.unwrap(),
            GuardVerdict::Missing
        );
    }
    // The check's own connection, plus at most the pool's one that read the id column's type
    // once: checks don't open more (a pool opened up to its size on a current-thread runtime).
    assert!(guard_backends(&db).await <= 2);

    // The server drops the worker's sessions: one check fails (the policy's case), the next
    // one reconnects.
    db.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .await;
    let mut errors = 0;
    let verdict = loop {
        match j.guard_check("t-live", Some(&live)).await {
            Ok(v) => break v,
            Err(GuardError::Database(_)) if errors == 0 => errors += 1,
            Err(e) => panic!("after a reconnect: {e}"),
        }
    };
    assert_eq!(verdict, GuardVerdict::Run);
    assert_eq!(
        j.guard_check("t-gone", Some(&gone)).await.unwrap(),
        GuardVerdict::Missing
    );
}
