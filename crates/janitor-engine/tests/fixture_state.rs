//! The engine against real Celery bytes in a real Redis, with the owner table in SQLite.
//!
//! Each spec loads a captured keyspace (queues with priority sub-lists, `unacked` left by a
//! killed worker, results) into a `redis-server` of its own, owns `app.add` tasks by their first
//! argument, and checks that exactly the orphans are found, that cleanup removes exactly those
//! bytes and nothing else, and that restore puts every byte back. The Python interop suite does
//! the same with a live Celery and PostgreSQL; this one runs in `cargo test`.

use std::collections::BTreeMap;

use janitor_engine::{
    Cancel, CleanupOptions, EngineError, Janitor, ListOptions, Location, NoProgress, PlanOptions,
    ReadOptions, RestoreOptions, RunCtx, State, TaskRow,
};
use janitor_testkit::fixtures::{self as support, Capture, Dump};
use janitor_testkit::redis_server::{Snapshot, TestRedis};

use janitor_testkit::sqlite_owners::{self, LIVE_IDS};

async fn janitor_for(redis: &TestRedis, dir: &std::path::Path) -> Janitor {
    let section = format!("url = \"{}\"", redis.url());
    janitor_with(&section, "", dir).await
}

/// A janitor whose `[redis]` section is `redis_section`, with `owner_extra` added to its rule.
async fn janitor_with(redis_section: &str, owner_extra: &str, dir: &std::path::Path) -> Janitor {
    let url = sqlite_owners::create(dir).await;
    let config = dir.join("janitor.toml");
    std::fs::write(
        &config,
        sqlite_owners::config(redis_section, &url, dir, owner_extra),
    )
    .unwrap();
    let flags = janitor_config::Flags {
        config: Some(config),
        ..Default::default()
    };
    let settings = janitor_config::resolve(&flags, &|_| None).unwrap();
    Janitor::connect(settings).await.unwrap()
}

/// What the entries should be, decided independently of the engine from the wire model.
fn expected_state(location: Location, raw: &[u8]) -> State {
    use janitor_wire::{Envelope, ResultValue, UnackedEntry};
    let call = match location {
        Location::Queue => Envelope::parse(raw).ok(),
        Location::Unacked => UnackedEntry::parse(raw).ok().map(|u| u.envelope),
        Location::Result => {
            return match ResultValue::parse(raw) {
                ResultValue::Json(m) if m.name.as_deref() == Some("app.add") => {
                    owner_state(m.args.as_ref().and_then(|a| a.first()))
                }
                _ => State::Unowned,
            }
        }
    };
    let env = call.expect("fixture messages are envelopes");
    if env.task_name.as_deref() != Some("app.add") {
        return State::Unowned;
    }
    let args = env.decode_call().expect("json bodies").args;
    owner_state(args.first())
}

fn owner_state(first: Option<&serde_json::Value>) -> State {
    match first.and_then(|v| v.as_i64()) {
        Some(id) if LIVE_IDS.contains(&id) => State::Live,
        Some(_) => State::Orphaned,
        None => State::Undecidable,
    }
}

async fn classify(j: &Janitor) -> Vec<janitor_engine::Entry> {
    let mut out = Vec::new();
    j.entries(0.0, true, &NoProgress, &mut |e| out.push(e))
        .await
        .unwrap();
    out
}

async fn check_capture(capture: Capture, scenario: &str) {
    let (_, path) = support::scenario(scenario)
        .into_iter()
        .find(|(c, _)| *c == capture)
        .expect("capture has the scenario");
    let dump = Dump::load(&path);
    let redis = TestRedis::start().await;
    redis.load(&dump).await;
    let dir = tempfile::tempdir().unwrap();
    let j = janitor_for(&redis, dir.path()).await;

    let entries = classify(&j).await;
    assert!(!entries.is_empty(), "{}: nothing scanned", dump.name);
    let mut orphans = BTreeMap::new();
    for e in &entries {
        assert_eq!(
            e.state,
            expected_state(e.location, &e.raw),
            "{}: {:?} {:?} ({:?})",
            dump.name,
            e.location,
            e.task_id,
            e.reason
        );
        if e.state == State::Orphaned {
            *orphans.entry(e.location).or_insert(0u64) += 1;
        }
    }

    assert!(
        !orphans.is_empty(),
        "{}: the scenario has no orphan to remove",
        dump.name
    );
    let before = Snapshot::take(&redis).await;
    let report = j
        .cleanup(&CleanupOptions::default(), &RunCtx::quiet())
        .await
        .unwrap()
        .orphans;
    assert_eq!(
        report.removed.queue,
        orphans.get(&Location::Queue).copied().unwrap_or(0)
    );
    assert_eq!(
        report.removed.unacked,
        orphans.get(&Location::Unacked).copied().unwrap_or(0)
    );
    assert_eq!(
        report.removed.result,
        orphans.get(&Location::Result).copied().unwrap_or(0)
    );
    assert_eq!(report.archived, report.removed.total());
    assert_eq!(report.skipped.changed, 0);

    let after = Snapshot::take(&redis).await;
    let removed: Vec<(Vec<u8>, Vec<u8>)> = entries
        .iter()
        .filter(|e| e.state == State::Orphaned)
        .map(|e| (e.key.clone(), e.raw.clone()))
        .collect();
    before.assert_only_removed(&after, &removed, &dump.name);
    assert!(
        classify(&j)
            .await
            .iter()
            .all(|e| e.state != State::Orphaned),
        "{}: orphans left after cleanup",
        dump.name
    );

    let restored = j
        .restore(&RestoreOptions::default(), &RunCtx::quiet())
        .await
        .unwrap();
    assert_eq!(
        restored.restored.values().sum::<u64>(),
        report.removed.total()
    );
    let back = Snapshot::take(&redis).await;
    before.assert_same_content(&back, &dump.name);

    // Restoring again changes nothing.
    let again = j
        .restore(&RestoreOptions::default(), &RunCtx::quiet())
        .await
        .unwrap();
    assert_eq!(again.restored.values().sum::<u64>(), 0);
}

#[tokio::test]
async fn queues_and_priority_sublists_5_7() {
    check_capture(Capture::Celery57Same, "A").await;
}

#[tokio::test]
async fn queues_and_priority_sublists_5_3() {
    check_capture(Capture::Celery53, "A").await;
}

#[tokio::test]
async fn unacked_left_by_a_killed_worker_5_7() {
    check_capture(Capture::Celery57Same, "J").await;
}

#[tokio::test]
async fn unacked_left_by_a_killed_worker_5_5() {
    check_capture(Capture::Celery55, "J").await;
}

#[tokio::test]
async fn restored_lists_5_3() {
    check_capture(Capture::Celery53, "J2").await;
}

#[tokio::test]
async fn results_plain_and_extended_5_7() {
    check_capture(Capture::Celery57Same, "D").await;
}

#[tokio::test]
async fn results_plain_and_extended_5_3() {
    check_capture(Capture::Celery53, "D").await;
}

#[tokio::test]
async fn a_second_cleanup_is_refused_while_one_holds_the_lock() {
    let redis = TestRedis::start().await;
    let dir = tempfile::tempdir().unwrap();
    let j = janitor_for(&redis, dir.path()).await;
    let mut con = redis.con().await;
    let _: () = redis::cmd("SET")
        .arg("celery-janitor:lock")
        .arg("someone-else")
        .query_async(&mut con)
        .await
        .unwrap();
    let err = j
        .cleanup(&CleanupOptions::default(), &RunCtx::quiet())
        .await
        .unwrap_err();
    assert!(
        matches!(err, janitor_engine::EngineError::Busy { .. }),
        "{err}"
    );
}

/// Broker in db 1 and backend in db 2, both with `global_keyprefix = "myapp"` (raw for the
/// broker, `myapp_` for the backend), as captured from Celery 5.7.
#[tokio::test]
async fn key_prefixes_and_separate_broker_and_backend_databases() {
    let (_, path) = support::scenario("H")
        .into_iter()
        .find(|(c, _)| *c == Capture::Celery57Same)
        .unwrap();
    let dump = Dump::load(&path);
    let redis = TestRedis::start().await;
    let in_section = |name: &'static str| {
        move |e: &support::Entry| e.section.as_deref().is_some_and(|s| s.contains(name))
    };
    redis.load_into(&dump, 1, in_section("broker")).await;
    redis.load_into(&dump, 2, in_section("backend")).await;
    let dir = tempfile::tempdir().unwrap();
    let section = format!(
        "broker_url = \"{}\"\nresult_backend_url = \"{}\"\nglobal_keyprefix = \"myapp\"",
        redis.url_db(1),
        redis.url_db(2)
    );
    let j = janitor_with(&section, "", dir.path()).await;

    let entries = classify(&j).await;
    let seen: BTreeMap<Location, usize> = entries.iter().fold(BTreeMap::new(), |mut m, e| {
        *m.entry(e.location).or_default() += 1;
        m
    });
    assert!(
        seen.get(&Location::Queue).is_some_and(|n| *n > 0),
        "{seen:?}"
    );
    assert!(
        seen.get(&Location::Unacked).is_some_and(|n| *n > 0),
        "{seen:?}"
    );
    assert!(
        seen.get(&Location::Result).is_some_and(|n| *n > 0),
        "{seen:?}"
    );
    for e in &entries {
        assert_eq!(
            e.state,
            expected_state(e.location, &e.raw),
            "{:?} {:?}",
            e.location,
            e.task_id
        );
    }
    let orphans: Vec<(Vec<u8>, Vec<u8>)> = entries
        .iter()
        .filter(|e| e.state == State::Orphaned)
        .map(|e| (e.key.clone(), e.raw.clone()))
        .collect();
    assert!(!orphans.is_empty());

    let (broker_before, backend_before) = (
        Snapshot::take_db(&redis, 1).await,
        Snapshot::take_db(&redis, 2).await,
    );
    let report = j
        .cleanup(&CleanupOptions::default(), &RunCtx::quiet())
        .await
        .unwrap()
        .orphans;
    assert_eq!(report.removed.total(), orphans.len() as u64);
    broker_before.assert_only_removed(&Snapshot::take_db(&redis, 1).await, &orphans, "broker db");
    assert_eq!(
        backend_before,
        Snapshot::take_db(&redis, 2).await,
        "the backend db changed"
    );
    // The janitor's own keys carry the broker prefix.
    let mut con = redis.con_db(1).await;
    let archived: i64 = redis::cmd("XLEN")
        .arg("myappcelery-janitor:archive")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(archived, orphans.len() as i64);

    j.restore(&RestoreOptions::default(), &RunCtx::quiet())
        .await
        .unwrap();
    broker_before.assert_same_content(&Snapshot::take_db(&redis, 1).await, "broker db");
}

/// Groups and chords are counted, never classified or removed.
#[tokio::test]
async fn status_counts_saved_groups_and_leaves_chord_keys_alone() {
    let (_, path) = support::scenario("D")
        .into_iter()
        .find(|(c, _)| *c == Capture::Celery57Same)
        .unwrap();
    let dump = Dump::load(&path);
    let redis = TestRedis::start().await;
    redis.load(&dump).await;
    let dir = tempfile::tempdir().unwrap();
    let j = janitor_for(&redis, dir.path()).await;
    let status = j
        .status(
            &ReadOptions {
                grace_seconds: Some(0.0),
            },
            &RunCtx::quiet(),
        )
        .await
        .unwrap();
    assert_eq!(status.results.groups, 1, "{status:?}");
    // The chord in this capture finished: only its `.c` = done marker is left.
    assert_eq!(status.results.chords_in_progress, 0, "{status:?}");
    j.cleanup(&CleanupOptions::default(), &RunCtx::quiet())
        .await
        .unwrap();
    let mut con = redis.con().await;
    let tasksets: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg("celery-taskset-meta-*")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(
        tasksets.len(),
        2,
        "group and chord keys must survive a cleanup"
    );
}

/// Lost rows, on SQLite: active and old, with no message and no in-flight result.
#[tokio::test]
async fn full_cleanup_marks_lost_rows_in_sqlite() {
    let (_, path) = support::scenario("A")
        .into_iter()
        .find(|(c, _)| *c == Capture::Celery57Same)
        .unwrap();
    let redis = TestRedis::start().await;
    redis.load(&Dump::load(&path)).await;
    let dir = tempfile::tempdir().unwrap();
    let lost = "status_column = \"status\"\nactive_statuses = [\"pending\"]\nlost_status = \"lost\"\ncreated_column = \"created_at\"\nlost_after_minutes = 30";
    let section = format!("url = \"{}\"", redis.url());
    // Row 2 has queued work (app.add(2, 3)); row 70 has none; row 71 is too young.
    let j = janitor_with(&section, lost, dir.path()).await;
    let url = format!("sqlite://{}", dir.path().join("owners.sqlite").display());
    {
        use sqlx::Connection;
        let mut con = sqlx::SqliteConnection::connect(&url).await.unwrap();
        for (id, created) in [(70, "2020-01-01 00:00:00"), (71, "2999-01-01 00:00:00")] {
            sqlx::query("INSERT INTO adds (id, status, created_at) VALUES (?, 'pending', ?)")
                .bind(id)
                .bind(created)
                .execute(&mut con)
                .await
                .unwrap();
        }
        sqlx::query("UPDATE adds SET status = 'pending' WHERE id = 2")
            .execute(&mut con)
            .await
            .unwrap();
    }
    // The capture holds app.add messages whose first argument is missing or not an integer:
    // they could be any row's, so no row of the table may be called lost.
    let dry = CleanupOptions {
        plan: PlanOptions::full(),
        dry_run: true,
        ..Default::default()
    };
    let report = j.cleanup(&dry, &RunCtx::quiet()).await.unwrap();
    assert!(
        report.lost_rows.skipped_tables.contains_key("adds"),
        "{report:?}"
    );
    assert_eq!(report.lost_rows.marked, 0);
    let mut con = redis.con().await;
    for e in classify(&j).await {
        if e.state == State::Undecidable {
            let _: i64 = redis::cmd("LREM")
                .arg(&e.key)
                .arg(1)
                .arg(&e.raw)
                .query_async(&mut con)
                .await
                .unwrap();
        }
    }

    let report = j
        .cleanup(
            &CleanupOptions {
                plan: PlanOptions::full(),
                ..Default::default()
            },
            &RunCtx::quiet(),
        )
        .await
        .unwrap();
    assert_eq!(report.lost_rows.marked, 1, "{report:?}");
    use sqlx::Connection;
    let mut con = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let rows: Vec<(i64, String)> = sqlx::query_as("SELECT id, status FROM adds ORDER BY id")
        .fetch_all(&mut con)
        .await
        .unwrap();
    assert_eq!(
        rows,
        vec![
            (2, "pending".into()),
            (3, "done".into()),
            (70, "lost".into()),
            (71, "pending".into())
        ]
    );
}

/// A keyspace with every location: queues with priority sub-lists (A), `unacked` left by a
/// killed worker (J) and results (D), all from the same Celery 5.7 run.
async fn every_location(redis: &TestRedis) {
    for scenario in ["A", "J", "D"] {
        let (_, path) = support::scenario(scenario)
            .into_iter()
            .find(|(c, _)| *c == Capture::Celery57Same)
            .unwrap();
        redis.load(&Dump::load(&path)).await;
    }
}

/// Every page of a listing, following the cursors, and how many pages it took.
async fn all_pages(j: &Janitor, options: &ListOptions) -> (Vec<TaskRow>, usize) {
    let mut options = options.clone();
    let (mut rows, mut pages) = (Vec::new(), 0);
    loop {
        let page = j.list(&options, &RunCtx::quiet()).await.unwrap();
        pages += 1;
        rows.extend(page.rows);
        match page.next_cursor {
            Some(cursor) => options.cursor = Some(cursor.to_string().parse().unwrap()),
            None => return (rows, pages),
        }
    }
}

#[tokio::test]
async fn list_pages_through_exactly_the_entries_of_a_scan() {
    let redis = TestRedis::start().await;
    every_location(&redis).await;
    let dir = tempfile::tempdir().unwrap();
    let j = janitor_for(&redis, dir.path()).await;

    let entries = classify(&j).await;
    let whole = j
        .list(&ListOptions::default(), &RunCtx::quiet())
        .await
        .unwrap();
    assert!(whole.next_cursor.is_none());
    let ident =
        |id: &Option<String>, l: Location, s: State, key: String| (id.clone(), l, s.as_str(), key);
    let mut listed: Vec<_> = whole
        .rows
        .iter()
        .map(|r| ident(&r.task_id, r.location, r.state, r.key.clone()))
        .collect();
    let mut scanned: Vec<_> = entries
        .iter()
        .map(|e| {
            ident(
                &e.task_id,
                e.location,
                e.state,
                janitor_engine::printable(&e.key),
            )
        })
        .collect();
    listed.sort();
    scanned.sort();
    assert_eq!(listed, scanned);
    for l in Location::ALL {
        assert!(whole.rows.iter().any(|r| r.location == l), "no {l:?} row");
    }
    assert!(whole.rows.iter().any(|r| r.state == State::Orphaned));
    // Queued rows of a priority sub-list name its step; the bare list and other places don't.
    for r in &whole.rows {
        let sub = r.location == Location::Queue && r.key.contains("\\x06\\x16");
        assert_eq!(r.priority_step.is_some(), sub, "{r:?}");
    }

    let filters = [
        ListOptions::default(),
        ListOptions {
            states: vec![State::Orphaned],
            ..Default::default()
        },
        ListOptions {
            locations: vec![Location::Queue],
            ..Default::default()
        },
        ListOptions {
            states: vec![State::Live, State::Unowned],
            locations: vec![Location::Unacked, Location::Result],
            ..Default::default()
        },
    ];
    for filter in filters {
        let wanted: Vec<TaskRow> = whole
            .rows
            .iter()
            .filter(|r| filter.states.is_empty() || filter.states.contains(&r.state))
            .filter(|r| filter.locations.is_empty() || filter.locations.contains(&r.location))
            .cloned()
            .collect();
        assert!(!wanted.is_empty(), "{filter:?} lists nothing here");
        for limit in [1, 2, 5, 1000] {
            let options = ListOptions {
                limit: Some(limit),
                ..filter.clone()
            };
            let (rows, pages) = all_pages(&j, &options).await;
            assert_eq!(rows, wanted, "{options:?}");
            assert_eq!(pages, wanted.len().div_ceil(limit).max(1), "{options:?}");
        }
    }
}

#[tokio::test]
async fn list_refuses_a_cursor_of_another_listing() {
    let redis = TestRedis::start().await;
    every_location(&redis).await;
    let dir = tempfile::tempdir().unwrap();
    let j = janitor_for(&redis, dir.path()).await;
    let orphans = ListOptions {
        states: vec![State::Orphaned],
        limit: Some(1),
        ..Default::default()
    };
    let cursor = j
        .list(&orphans, &RunCtx::quiet())
        .await
        .unwrap()
        .next_cursor
        .expect("more than one orphan");
    let everything = ListOptions {
        cursor: Some(cursor),
        ..Default::default()
    };
    let err = j.list(&everything, &RunCtx::quiet()).await.unwrap_err();
    assert!(matches!(err, EngineError::BadCursor { .. }), "{err}");
    assert!("v1.x.72".parse::<janitor_engine::Cursor>().is_err());
}

#[tokio::test]
async fn list_stops_when_cancelled_even_in_the_grace_wait() {
    let redis = TestRedis::start().await;
    every_location(&redis).await;
    let dir = tempfile::tempdir().unwrap();
    let j = janitor_for(&redis, dir.path()).await;

    let cancelled = Cancel::new();
    cancelled.cancel();
    let err = j
        .list(
            &ListOptions::default(),
            &RunCtx::new(&NoProgress, cancelled),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Interrupted), "{err}");

    // Orphans wait out a long grace period; a cancel ends the wait at once.
    let cancel = Cancel::new();
    let later = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        later.cancel();
    });
    let started = std::time::Instant::now();
    let options = ListOptions {
        grace_seconds: Some(60.0),
        ..Default::default()
    };
    let err = j
        .list(&options, &RunCtx::new(&NoProgress, cancel))
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Interrupted), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[tokio::test]
async fn list_checks_the_grace_period_like_every_operation() {
    let redis = TestRedis::start().await;
    let dir = tempfile::tempdir().unwrap();
    let j = janitor_for(&redis, dir.path()).await;
    let options = ListOptions {
        grace_seconds: Some(-1.0),
        ..Default::default()
    };
    let err = j.list(&options, &RunCtx::quiet()).await.unwrap_err();
    assert!(matches!(err, EngineError::InvalidOption(_)), "{err}");
}
