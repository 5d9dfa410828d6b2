//! The CLI as a library (`celery_janitor::run_json`, `main_with_args` with `Host::Embedded`), as
//! the Python package calls it: the JSON is the binary's, byte for byte; every failure comes back
//! as a `Failure` whose `kind` is derived from the error's type; nothing exits the process.

use std::ffi::OsString;

use celery_janitor::{Cancel, Failure, Host};

use crate::world::World;

/// `celery-janitor --config <world> --log-file … ARGS`, with every file the run writes in the
/// world's folder (the test's working directory is the crate's).
fn argv(world: &World, args: &[&str]) -> Vec<OsString> {
    let dir = world.dir();
    let file = |name: &str| dir.join(name).into_os_string();
    let mut all: Vec<OsString> = vec!["celery-janitor".into(), "--config".into()];
    all.push(dir.join("celery-janitor.toml").into_os_string());
    all.extend([
        "--log-file".into(),
        file("logs/app.log"),
        "--audit-log".into(),
        file("logs/audit.jsonl"),
        "--archive-dir".into(),
        file("archive"),
    ]);
    all.extend(args.iter().map(OsString::from));
    all
}

fn run_json(world: &World, args: &[&str]) -> Result<serde_json::Value, Failure> {
    let text = celery_janitor::run_json(argv(world, args))?;
    Ok(serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
}

fn failure(world: &World, args: &[&str]) -> Failure {
    match celery_janitor::run_json(argv(world, args)) {
        Ok(out) => panic!("{args:?} succeeded: {out}"),
        Err(failure) => failure,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn run_json_prints_what_the_binary_prints() {
    let world = World::new().await;
    let args = ["tasks", "--json", "--grace", "0"];
    let binary = world.run(&args);
    let text = tokio::task::block_in_place(|| celery_janitor::run_json(argv(&world, &args)))
        .expect("tasks --json");
    assert_eq!(text, binary.stdout, "{}", binary.render());
    let status = tokio::task::block_in_place(|| run_json(&world, &["status", "--json"])).unwrap();
    assert_eq!(
        status["tasks"],
        world.run(&["status", "--json"]).json()["tasks"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_cover_the_listing_and_cursors_keep_to_theirs() {
    let world = World::new().await;
    tokio::task::block_in_place(|| {
        let all = run_json(&world, &["tasks", "--json"]).unwrap();
        let all = all.as_array().unwrap();
        assert!(
            all.len() > 4,
            "the world holds a few entries: {}",
            all.len()
        );
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut args = vec!["tasks", "--json", "--page", "--limit", "3"];
            if let Some(c) = &cursor {
                args.extend(["--cursor", c.as_str()]);
            }
            let page = run_json(&world, &args).unwrap();
            let page = page.as_object().unwrap();
            assert_eq!(page.keys().collect::<Vec<_>>(), ["items", "next_cursor"]);
            let got = page["items"].as_array().unwrap();
            assert!(got.len() <= 3);
            items.extend(got.iter().cloned());
            match &page["next_cursor"] {
                serde_json::Value::Null => break,
                serde_json::Value::String(next) => cursor = Some(next.clone()),
                other => panic!("next_cursor: {other}"),
            }
        }
        assert_eq!(&items, all, "the pages are the listing, in order");

        let first = run_json(&world, &["tasks", "--json", "--page", "--limit", "1"]).unwrap();
        let cursor = first["next_cursor"].as_str().unwrap().to_owned();
        for other in [
            vec!["--state", "orphaned"],
            vec!["--location", "queue"],
            vec!["--queue", "celery"],
        ] {
            let mut args = vec!["tasks", "--json", "--page", "--cursor", cursor.as_str()];
            args.extend(other.iter().copied());
            let f = failure(&world, &args);
            assert_eq!((f.kind, f.code), ("bad_cursor", 2), "{other:?}: {f:?}");
        }
        let f = failure(&world, &["tasks", "--json", "--page", "--cursor", "nope"]);
        assert_eq!((f.kind, f.code), ("bad_cursor", 2), "{f:?}");
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn the_queue_filter_keeps_that_queues_entries() {
    let world = World::new().await;
    tokio::task::block_in_place(|| {
        let all = run_json(&world, &["tasks", "--json"]).unwrap();
        let queues: std::collections::BTreeSet<String> = all
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["location"] != "result")
            .filter_map(|r| r["queue"].as_str().map(str::to_owned))
            .collect();
        assert!(!queues.is_empty());
        for queue in &queues {
            let page = run_json(&world, &["tasks", "--json", "--page", "--queue", queue]).unwrap();
            let want: Vec<_> = all
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["location"] != "result" && r["queue"] == queue.as_str())
                .cloned()
                .collect();
            assert_eq!(page["items"].as_array().unwrap(), &want, "{queue}");
        }
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_have_the_kind_of_their_error() {
    let world = World::new().await;
    let mut con = world.redis.con().await;
    tokio::task::block_in_place(|| {
        let f = failure(&world, &["status", "--json", "--no-such-flag"]);
        assert_eq!((f.kind, f.code), ("usage", 2), "{f:?}");
        assert!(f.message.contains("--no-such-flag"), "{f:?}");
        let f = failure(&world, &["status"]);
        assert_eq!((f.kind, f.code), ("usage", 2), "without --json: {f:?}");
        let f = failure(&world, &["cleanup-orphaned", "--json", "--grace", "-1"]);
        assert_eq!((f.kind, f.code), ("config", 2), "{f:?}");
        let missing = [
            "celery-janitor",
            "--config",
            "/nonexistent/c.toml",
            "status",
            "--json",
        ];
        let f = celery_janitor::run_json(missing.map(OsString::from).to_vec()).unwrap_err();
        assert_eq!((f.kind, f.code), ("config", 2), "{f:?}");

        let f = failure(
            &world,
            &[
                "--redis-url",
                "redis://:s3cret@127.0.0.1:1/0",
                "status",
                "--json",
            ],
        );
        assert_eq!((f.kind, f.code), ("redis_unreachable", 3), "{f:?}");
        assert!(!f.message.contains("s3cret"), "{f:?}");
        assert!(f.hint.is_some(), "{f:?}");
        assert!(!f.message.contains('\n'), "{f:?}");
        let f = failure(
            &world,
            &[
                "--database-url",
                "postgresql://root:s3cret@127.0.0.1:1/nowhere",
                "status",
                "--json",
            ],
        );
        assert_eq!((f.kind, f.code), ("database_unreachable", 4), "{f:?}");
        assert!(!f.message.contains("s3cret"), "{f:?}");

        let cancel = Cancel::new();
        cancel.cancel();
        let f = celery_janitor::run_json_with_cancel(
            argv(&world, &["cleanup-orphaned", "--json", "--grace", "0"]),
            Some(cancel),
        )
        .unwrap_err();
        assert_eq!((f.kind, f.code), ("interrupted", 130), "{f:?}");
    });
    let _: () = redis::cmd("SET")
        .arg("celery-janitor:lock")
        .arg(r#"{"host":"worker-7","pid":4242,"run_id":"r","since":"2026-11-28T04:12:00Z","token":"t"}"#)
        .arg("EX")
        .arg(3600)
        .query_async(&mut con)
        .await
        .unwrap();
    tokio::task::block_in_place(|| {
        let f = failure(&world, &["cleanup-orphaned", "--json", "--grace", "0"]);
        assert_eq!((f.kind, f.code), ("busy", 5), "{f:?}");
        assert!(f.hint.is_some(), "{f:?}");
        assert!(Failure::KINDS.contains(&f.kind));
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_main_returns_its_code_and_may_run_again() {
    let world = World::new().await;
    tokio::task::block_in_place(|| {
        let bad = argv(&world, &["status", "--no-such-flag"]);
        assert_eq!(celery_janitor::main_with_args(bad, Host::Embedded), 2);
        for _ in 0..2 {
            let ok = argv(&world, &["status", "--json"]);
            assert_eq!(celery_janitor::main_with_args(ok, Host::Embedded), 0);
        }
        let unreachable = argv(&world, &["--redis-url", "redis://127.0.0.1:1/0", "status"]);
        assert_eq!(
            celery_janitor::main_with_args(unreachable, Host::Embedded),
            3
        );
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn the_actor_is_recorded_in_the_audit_log() {
    let world = World::new().await;
    tokio::task::block_in_place(|| {
        let report = run_json(
            &world,
            &[
                "--actor",
                "alice@example",
                "cleanup-orphaned",
                "--json",
                "--grace",
                "0",
            ],
        )
        .unwrap();
        assert!(report["removed"].is_object(), "{report}");
        let audit = std::fs::read_to_string(world.dir().join("logs/audit.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = audit
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(lines.len() > 1, "the cleanup removed entries: {audit}");
        for line in &lines {
            assert_eq!(line["actor"], "alice@example", "{line}");
        }
    });
}
