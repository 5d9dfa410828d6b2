//! Queue purge and archive listing, against captured Celery 5.7 state in a real Redis and the
//! SQLite owner table: a purge removes every message of the queue's lists (all priority
//! sub-lists) present at its start, whoever owns it, archived and restorable in order;
//! `unacked`, other queues, foreign elements and messages pushed after the scan stay; too many
//! messages without `force` is refused with nothing changed; a dry run changes nothing; a held
//! lock refuses it. The archive listing pages metadata, newest first, never the bytes.

use std::sync::Mutex;

use janitor_engine::{
    ArchiveQuery, EngineError, Janitor, Location, Progress, PurgeOptions, RestoreOptions, RunCtx,
};
use janitor_testkit::fixtures::{self as support, Capture, Dump};
use janitor_testkit::redis_server::{Snapshot, TestRedis, Val};
use janitor_testkit::sqlite_owners;

struct World {
    redis: TestRedis,
    janitor: Janitor,
    dir: tempfile::TempDir,
}

fn dump(scenario: &str) -> Dump {
    let (_, path) = support::scenario(scenario)
        .into_iter()
        .find(|(c, _)| *c == Capture::Celery57Same)
        .expect("capture has the scenario");
    Dump::load(&path)
}

const CELERY: &[u8] = b"celery";
const CELERY_P6: &[u8] = b"celery\x06\x166";
const FOREIGN: &[u8] = b"not a celery message";

/// Queues `celery` (with its priority-6 sub-list), `custom` and `prio` (scenario A), `unacked`
/// left by a killed worker (scenario J), more messages in `celery`'s lists so batches and
/// budgets are exercised, and one element in `celery` that is no Celery message.
async fn world() -> World {
    let redis = TestRedis::start().await;
    redis.load(&dump("A")).await;
    redis
        .load_into(&dump("J"), 0, |e| e.key.starts_with(b"unacked"))
        .await;
    let mut con = redis.con().await;
    let template = {
        let items: Vec<Vec<u8>> = redis::cmd("LRANGE")
            .arg(CELERY)
            .arg(0)
            .arg(0)
            .query_async(&mut con)
            .await
            .unwrap();
        String::from_utf8(items[0].clone()).unwrap()
    };
    let id = task_id_of(template.as_bytes());
    for (key, n) in [(CELERY, 230), (CELERY_P6, 40)] {
        for i in 0..n {
            let fresh = uuid_like(key.len(), i);
            let _: i64 = redis::cmd("LPUSH")
                .arg(key)
                .arg(template.replace(&id, &fresh))
                .query_async(&mut con)
                .await
                .unwrap();
        }
    }
    let _: i64 = redis::cmd("LPUSH")
        .arg(CELERY)
        .arg(FOREIGN)
        .query_async(&mut con)
        .await
        .unwrap();
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

fn uuid_like(salt: usize, i: usize) -> String {
    format!("00000000-0000-4000-8000-{salt:04}{i:08}")
}

/// The task id in an envelope's headers.
fn task_id_of(raw: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(raw).unwrap();
    v["headers"]["id"].as_str().unwrap().to_owned()
}

fn list<'a>(s: &'a Snapshot, key: &[u8]) -> &'a [Vec<u8>] {
    match s.0.get(key) {
        Some(Val::List(items)) => items,
        None => &[],
        other => panic!("not a list: {other:?}"),
    }
}

fn purge(queue: &str) -> PurgeOptions {
    PurgeOptions::new(queue)
}

#[tokio::test]
async fn purge_removes_every_sublist_keeps_the_rest_and_restore_puts_them_back_in_order() {
    let w = world().await;
    let j = &w.janitor;
    let before = Snapshot::take(&w.redis).await;
    let messages = list(&before, CELERY).len() + list(&before, CELERY_P6).len() - 1;
    assert!(messages > 270, "{messages}");
    assert!(matches!(before.0.get(&b"unacked"[..]), Some(Val::Hash(h)) if !h.is_empty()));

    let report = j
        .purge_queue(
            &PurgeOptions {
                actor: Some("ops-token".into()),
                ..purge("celery")
            },
            &RunCtx::quiet(),
        )
        .await
        .unwrap();
    assert!(!report.dry_run);
    assert_eq!(report.found.queue, messages as u64);
    assert_eq!(report.removed.queue, messages as u64);
    assert_eq!(report.removed.unacked + report.removed.result, 0);
    assert_eq!(report.archived, messages as u64);
    assert_eq!(report.undecidable, 1, "the foreign element is left alone");
    assert!(report.revoke.is_none(), "a purge revokes nothing");

    let after = Snapshot::take(&w.redis).await;
    assert_eq!(list(&after, CELERY), [FOREIGN.to_vec()]);
    assert!(list(&after, CELERY_P6).is_empty());
    for key in before.0.keys() {
        if key.as_slice() != CELERY && key.as_slice() != CELERY_P6 {
            assert_eq!(before.0.get(key), after.0.get(key), "{key:?} changed");
        }
    }

    // Recorded, archived (metadata listed, never the bytes) and audited with the actor.
    let runs = j.runs(10).await.unwrap();
    assert_eq!(runs[0].run_id, report.run_id);
    assert_eq!(runs[0].command, "purge-queue");
    assert_eq!(
        runs[0].queue.as_deref(),
        Some("celery"),
        "the record names the queue"
    );
    assert_eq!(runs[0].removed.queue, messages as u64);
    let json = serde_json::to_value(&runs[0]).unwrap();
    for field in [
        "run_id",
        "host",
        "started_at",
        "ended_at",
        "outcome",
        "removed",
        "archived",
    ] {
        assert!(!json[field].is_null(), "{field}: {json}");
    }
    let page = j
        .archive_entries(&ArchiveQuery {
            run_id: Some(report.run_id.clone()),
            limit: 1000,
            cursor: None,
        })
        .await
        .unwrap();
    assert_eq!(page.items.len(), messages);
    assert!(page.next_cursor.is_none());
    for item in &page.items {
        assert_eq!(item.location, Location::Queue);
        assert_eq!(item.reason.as_deref(), Some("purged"));
        assert_eq!(item.queue.as_deref(), Some("celery"));
        assert_eq!(item.run_id.as_deref(), Some(report.run_id.as_str()));
    }
    let text = serde_json::to_string(&page).unwrap();
    assert!(
        !text.contains("\"body\""),
        "the archive listing shows stored bytes"
    );
    let audit = std::fs::read_to_string(w.dir.path().join("audit.jsonl")).unwrap();
    let removals: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["action"] == "remove")
        .collect();
    assert_eq!(removals.len(), messages);
    assert!(removals
        .iter()
        .all(|v| v["reason"] == "purged" && v["actor"] == "ops-token"));

    let restored = j
        .restore(
            &RestoreOptions {
                run_id: Some(report.run_id.clone()),
                ..Default::default()
            },
            &RunCtx::quiet(),
        )
        .await
        .unwrap();
    assert_eq!(restored.restored["queue"], messages as u64);
    assert_eq!(restored.missing, 0);
    assert!(restored.warnings.is_empty(), "{:?}", restored.warnings);
    let back = Snapshot::take(&w.redis).await;
    // Every list exactly as it was, in order: the queue is consumed as it would have been.
    for key in [CELERY, CELERY_P6] {
        assert_eq!(list(&back, key), list(&before, key), "{key:?}");
    }
    assert_eq!(back, before);
}

#[tokio::test]
async fn more_than_max_without_force_is_refused_with_nothing_changed() {
    let w = world().await;
    let j = &w.janitor;
    let before = Snapshot::take(&w.redis).await;
    for dry_run in [false, true] {
        let err = j
            .purge_queue(
                &PurgeOptions {
                    max: 10,
                    dry_run,
                    ..purge("celery")
                },
                &RunCtx::quiet(),
            )
            .await
            .unwrap_err();
        match err.root() {
            EngineError::PurgeTooLarge {
                queue,
                messages,
                max,
            } => {
                assert_eq!(queue, "celery");
                assert!(*messages > 270, "{messages}");
                assert_eq!(*max, 10);
            }
            other => panic!("{other}"),
        }
        assert!(err.to_string().contains("--force"), "{err}");
    }
    Snapshot::take(&w.redis)
        .await
        .assert_same_content(&before, "a refused purge changed Redis");
    assert!(
        j.runs(10).await.unwrap().is_empty(),
        "a refused purge left a run"
    );

    let report = j
        .purge_queue(
            &PurgeOptions {
                max: 10,
                force: true,
                ..purge("custom")
            },
            &RunCtx::quiet(),
        )
        .await
        .unwrap();
    assert!(report.removed.queue > 0);
}

#[tokio::test]
async fn a_dry_run_changes_nothing_and_previews_the_counts() {
    let w = world().await;
    let before = Snapshot::take(&w.redis).await;
    let messages = list(&before, CELERY).len() + list(&before, CELERY_P6).len() - 1;
    let report = w
        .janitor
        .purge_queue(
            &PurgeOptions {
                dry_run: true,
                ..purge("celery")
            },
            &RunCtx::quiet(),
        )
        .await
        .unwrap();
    assert!(report.dry_run);
    assert_eq!(report.removed.queue, messages as u64);
    assert_eq!(report.archived, 0);
    Snapshot::take(&w.redis)
        .await
        .assert_same_content(&before, "a dry run changed Redis");
    assert!(w.janitor.runs(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_held_lock_refuses_the_purge() {
    let w = world().await;
    let before = Snapshot::take(&w.redis).await;
    let mut con = w.redis.con().await;
    let _: () = redis::cmd("SET")
        .arg("celery-janitor:lock")
        .arg(r#"{"host":"elsewhere","pid":1,"run_id":"20260101T000000Z-00000000","since":"2026-01-01T00:00:00Z"}"#)
        .arg("EX")
        .arg(60)
        .query_async(&mut con)
        .await
        .unwrap();
    let err = w
        .janitor
        .purge_queue(&purge("celery"), &RunCtx::quiet())
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Busy { .. }), "{err}");
    Snapshot::take(&w.redis)
        .await
        .assert_same_content(&before, "a refused purge changed Redis");
}

/// Pushes one message to `celery` when the removal starts: after the purge read the lists.
struct PushDuringRemoval {
    url: String,
    message: Vec<u8>,
    pushed: Mutex<bool>,
}

impl Progress for PushDuringRemoval {
    fn phase(&self, name: &str, _: Option<u64>) {
        let mut pushed = self.pushed.lock().unwrap();
        if name.starts_with("removing") && !*pushed {
            let client = redis::Client::open(self.url.as_str()).unwrap();
            let mut con = client.get_connection().unwrap();
            let _: i64 = redis::cmd("LPUSH")
                .arg(CELERY)
                .arg(&self.message)
                .query(&mut con)
                .unwrap();
            *pushed = true;
        }
    }
    fn advance(&self, _: u64) {}
}

#[tokio::test]
async fn a_message_pushed_after_the_start_stays() {
    let w = world().await;
    let before = Snapshot::take(&w.redis).await;
    let template = String::from_utf8(list(&before, CELERY)[1].clone()).unwrap();
    let late = template.replace(&task_id_of(template.as_bytes()), "late-0000");
    let progress = PushDuringRemoval {
        url: w.redis.url(),
        message: late.clone().into_bytes(),
        pushed: Mutex::new(false),
    };
    let cx = RunCtx::new(&progress, janitor_engine::Cancel::default());
    let report = w.janitor.purge_queue(&purge("celery"), &cx).await.unwrap();
    assert!(*progress.pushed.lock().unwrap());
    assert_eq!(report.skipped.changed, 0);
    let after = Snapshot::take(&w.redis).await;
    assert_eq!(
        list(&after, CELERY),
        [late.into_bytes(), FOREIGN.to_vec()],
        "the late message and the foreign element stay"
    );
}

#[tokio::test]
async fn the_archive_pages_newest_first_without_repeats_and_refuses_bad_input() {
    let w = world().await;
    let j = &w.janitor;
    let first = j
        .purge_queue(&purge("custom"), &RunCtx::quiet())
        .await
        .unwrap();
    let second = j
        .purge_queue(&purge("prio"), &RunCtx::quiet())
        .await
        .unwrap();
    let total = (first.removed.queue + second.removed.queue) as usize;
    assert!(total >= 3, "{total}");
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = j
            .archive_entries(&ArchiveQuery {
                run_id: None,
                limit: 2,
                cursor: cursor.clone(),
            })
            .await
            .unwrap();
        assert!(page.items.len() <= 2);
        seen.extend(page.items);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen.len(), total);
    let ids: Vec<&str> = seen.iter().map(|i| i.archive_id.as_str()).collect();
    let mut sorted = ids.clone();
    sorted.sort_by_key(|id| {
        let (ms, seq) = id.split_once('-').unwrap();
        std::cmp::Reverse((ms.parse::<u64>().unwrap(), seq.parse::<u64>().unwrap()))
    });
    sorted.dedup();
    assert_eq!(ids, sorted, "newest first, each once");
    // The newest entries are the second run's.
    assert_eq!(seen[0].run_id.as_deref(), Some(second.run_id.as_str()));
    let only_first = j
        .archive_entries(&ArchiveQuery {
            run_id: Some(first.run_id.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(only_first.items.len() as u64, first.removed.queue);

    for bad in [0, ArchiveQuery::MAX_LIMIT + 1] {
        let err = j
            .archive_entries(&ArchiveQuery {
                limit: bad,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(matches!(err, EngineError::InvalidOption(_)), "{err}");
    }
    let err = j
        .archive_entries(&ArchiveQuery {
            cursor: Some("not-a-cursor".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::BadArchiveCursor { .. }), "{err}");
}

/// Broker and backend in two databases: results are archived in the backend's stream, messages
/// in the broker's, and the listing merges them newest first, page after page.
#[tokio::test]
async fn the_archive_merges_the_broker_and_backend_streams_across_pages() {
    let redis = TestRedis::start().await;
    redis.load_into(&dump("A"), 1, |_| true).await;
    redis.load_into(&dump("D"), 2, |_| true).await;
    let dir = tempfile::tempdir().unwrap();
    let db_url = sqlite_owners::create(dir.path()).await;
    let section = format!(
        "broker_url = \"{}\"\nresult_backend_url = \"{}\"",
        redis.url_db(1),
        redis.url_db(2)
    );
    let settings = sqlite_owners::settings(&section, &db_url, dir.path());
    let j = Janitor::connect(settings).await.unwrap();
    let report = j
        .cleanup(
            &janitor_engine::CleanupOptions {
                plan: janitor_engine::PlanOptions::full(),
                ..Default::default()
            },
            &RunCtx::quiet(),
        )
        .await
        .unwrap();
    let results = report.orphans.removed.result + report.expired_results.removed;
    let messages = report.orphans.removed.queue;
    assert!(results > 0 && messages > 0, "{report:?}");
    let whole = j
        .archive_entries(&ArchiveQuery {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(whole.items.len() as u64, results + messages);
    let in_results = whole
        .items
        .iter()
        .filter(|i| i.location == Location::Result)
        .count();
    assert_eq!(in_results as u64, results);
    let order: Vec<(u64, u64)> = whole
        .items
        .iter()
        .map(|i| {
            let (ms, seq) = i.archive_id.split_once('-').unwrap();
            (ms.parse().unwrap(), seq.parse().unwrap())
        })
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {order:?}"
    );
    for limit in [1, 2, 5] {
        let mut paged = Vec::new();
        let mut cursor = None;
        loop {
            let page = j
                .archive_entries(&ArchiveQuery {
                    run_id: None,
                    limit,
                    cursor,
                })
                .await
                .unwrap();
            paged.extend(page.items);
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(paged, whole.items, "pages of {limit}");
    }
}
