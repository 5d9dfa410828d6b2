//! Scheduled cleanup across instances: two real `celery-janitor watch --every 2s` processes on
//! one Redis (the captured Celery 5.7 keyspace) and one owner database. Each slot is claimed by
//! one of them (`celery-janitor:slot:<start>`) and runs exactly once; SIGTERM stops both cleanly.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use janitor_testkit::redis_server::TestRedis;
use janitor_testkit::{keyspace, sqlite_owners};

const BIN: &str = env!("CARGO_BIN_EXE_celery-janitor");

fn watch(config: &std::path::Path, log: &std::path::Path) -> Child {
    Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(["watch", "--every", "2s"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn terminate(child: &mut Child) -> i32 {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for _ in 0..200 {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("watch did not stop within 10 s of SIGTERM");
}

#[tokio::test]
async fn two_watchers_run_each_slot_exactly_once() {
    let redis = TestRedis::start().await;
    keyspace::load(&redis).await;
    let dir = tempfile::tempdir().unwrap();
    let db_url = sqlite_owners::create(dir.path()).await;
    let section = format!("url = \"{}\"", redis.url());
    let config = dir.path().join("celery-janitor.toml");
    std::fs::write(
        &config,
        sqlite_owners::config(&section, &db_url, dir.path(), ""),
    )
    .unwrap();
    let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let mut a = watch(&config, &log_a);
    let mut b = watch(&config, &log_b);
    tokio::time::sleep(Duration::from_secs(9)).await;
    let (code_a, code_b) = (terminate(&mut a), terminate(&mut b));
    let logs = format!(
        "a:\n{}\nb:\n{}",
        std::fs::read_to_string(&log_a).unwrap(),
        std::fs::read_to_string(&log_b).unwrap()
    );
    assert_eq!((code_a, code_b), (0, 0), "{logs}");

    // Every claimed slot ran one full-cleanup, and no slot ran twice.
    let mut con = redis.con().await;
    let mut slots: Vec<String> = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("celery-janitor:slot:*")
            .query_async(&mut con)
            .await
            .unwrap();
        slots.extend(keys);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let mut starts: Vec<u64> = slots
        .iter()
        .map(|k| k.rsplit(':').next().unwrap().parse().unwrap())
        .collect();
    starts.sort();
    assert!(starts.len() >= 4, "{starts:?}\n{logs}");
    assert!(starts.iter().all(|s| s % 2 == 0), "{starts:?}");
    assert!(
        starts.windows(2).all(|w| w[1] - w[0] == 2),
        "a slot was skipped: {starts:?}\n{logs}"
    );
    let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    let mut runs: Vec<String> = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["action"] == "run" && v["command"] == "full-cleanup")
        .map(|v| {
            assert_eq!(v["dry_run"], false, "{v}");
            v["run_id"].as_str().unwrap().to_owned()
        })
        .collect();
    let total = runs.len();
    runs.sort();
    runs.dedup();
    assert_eq!(runs.len(), total, "a run was audited twice");
    // The last slot may have been stopped by SIGTERM before its run ended (its claim stays).
    assert!(
        total == starts.len() || total + 1 == starts.len(),
        "{total} runs for {} slots\n{logs}\n{audit}",
        starts.len()
    );
    assert!(!logs.contains("busy"), "{logs}");
    let completed = logs.matches("scheduled cleanup ").count();
    assert!(completed >= starts.len() - 1, "{logs}");
}
