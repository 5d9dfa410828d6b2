//! The human reports and the `--json` output of every command, pinned, in one sequence over the
//! fixed keyspace: look (`status`, `tasks`), clean orphans (dry run, then for real), undo it
//! (`restore`, dry run, real, and once more when nothing is left), then `full-cleanup` (dry run
//! and real, which also removes expired results and marks lost rows) and its `restore`; then
//! purge a queue (dry run, then for real), list the archive and the runs, and restore the purge;
//! then a durable `revoke` of a queued task and its `--undo`.
//!
//! The human and the JSON sequence each run in a world of their own. `tasks` lists entries in
//! Redis's scan order, which changes from one `redis-server` to the next, so its rows are sorted
//! before they are compared.

use serde_json::{json, Value};

use crate::world::{insta_settings, Run, World};

/// The sequence: snapshot name and arguments (`--json` is added for the JSON sequence).
pub(crate) const STEPS: [(&str, &[&str]); 19] = [
    ("01_status", &["status", "--grace", "0"]),
    ("02_tasks", &["tasks", "--grace", "0"]),
    (
        "03_tasks_orphaned",
        &["tasks", "--orphaned", "--grace", "0"],
    ),
    (
        "04_cleanup_orphaned_dry_run",
        &["cleanup-orphaned", "--dry-run", "--grace", "0"],
    ),
    ("05_cleanup_orphaned", &["cleanup-orphaned", "--grace", "0"]),
    ("06_restore_dry_run", &["restore", "--dry-run"]),
    ("07_restore", &["restore"]),
    ("08_restore_again", &["restore"]),
    (
        "09_full_cleanup_dry_run",
        &["full-cleanup", "--dry-run", "--grace", "0"],
    ),
    ("10_full_cleanup", &["full-cleanup", "--grace", "0"]),
    ("11_restore_full_cleanup", &["restore"]),
    ("12_status_after", &["status", "--grace", "0"]),
    (
        "13_purge_queue_dry_run",
        &["purge-queue", "celery", "--dry-run"],
    ),
    ("14_purge_queue", &["purge-queue", "celery", "--yes"]),
    ("15_archive", &["archive"]),
    ("16_runs", &["runs"]),
    ("17_restore_purge", &["restore"]),
    (
        "18_revoke",
        &["revoke", "aaaaaaaa-0000-0000-0000-000000000001"],
    ),
    (
        "19_revoke_undo",
        &["revoke", "aaaaaaaa-0000-0000-0000-000000000001", "--undo"],
    ),
];

/// The human table of `tasks` with its rows sorted (header and count line stay in place).
fn sorted_tasks_table(stdout: &str) -> String {
    let lines: Vec<&str> = stdout.lines().collect();
    let (Some((header, rest)), true) = (lines.split_first(), lines.len() >= 2) else {
        return stdout.to_owned();
    };
    let (footer, rows) = rest.split_last().unwrap();
    let mut rows = rows.to_vec();
    rows.sort();
    let mut out = vec![*header];
    out.extend(rows);
    out.push(footer);
    out.join("\n") + "\n"
}

/// `tasks --json` sorted by location, key and task id.
fn sorted_tasks_json(value: &mut Value) {
    let rows = value.as_array_mut().expect("tasks --json is an array");
    let field = |v: &Value, k: &str| v[k].as_str().unwrap_or("").to_owned();
    rows.sort_by_key(|r| (field(r, "location"), field(r, "key"), field(r, "task_id")));
}

#[tokio::test]
async fn human_reports_of_one_cleanup_and_its_undoing() {
    let world = World::new().await;
    let settings = insta_settings(&world.filters());
    let _guard = settings.bind_to_scope();
    for (name, args) in STEPS {
        let mut run = world.run(args);
        if args[0] == "tasks" {
            run.stdout = sorted_tasks_table(&run.stdout);
        }
        insta::assert_snapshot!(format!("human_{name}"), run.render());
    }
}

/// One `--json` output of the sequence, for the docs check.
pub(crate) struct JsonRun {
    /// The step's snapshot name (`05_cleanup_orphaned`).
    pub(crate) name: &'static str,
    /// The subcommand (`cleanup-orphaned`).
    pub(crate) command: &'static str,
    pub(crate) stdout: Value,
}

pub(crate) type JsonRuns = Vec<JsonRun>;

#[tokio::test]
async fn json_output_of_one_cleanup_and_its_undoing() {
    let world = World::new().await;
    let mut settings = insta_settings(&world.filters());
    settings.add_redaction(".stdout.redis.used_memory_bytes", "[MEMORY]");
    settings.add_redaction(".stdout.redis.connected_clients", "[CLIENTS]");
    // `runs --json`: the process ids of the runs.
    settings.add_redaction(".stdout[].pid", "[PID]");
    let _guard = settings.bind_to_scope();
    let mut outputs: JsonRuns = Vec::new();
    for (name, args) in STEPS {
        let mut args = args.to_vec();
        args.push("--json");
        let run: Run = world.run(&args);
        let mut stdout = run.json();
        if args[0] == "tasks" {
            sorted_tasks_json(&mut stdout);
        }
        let snapshot = json!({
            "command": format!("celery-janitor {}", run.args),
            "exit_code": run.code,
            "stdout": stdout,
            "stderr": run.stderr,
        });
        insta::assert_json_snapshot!(format!("json_{name}"), snapshot);
        if args[0] == "archive" {
            // Items with and without an owner differ in shape (`owner` is an object or null),
            // which one shape can't hold: each item is held against the docs on its own.
            for item in stdout["items"].as_array().expect("archive items") {
                let mut one = stdout.clone();
                one["items"] = json!([item]);
                outputs.push(JsonRun {
                    name,
                    command: args[0],
                    stdout: one,
                });
            }
            continue;
        }
        outputs.push(JsonRun {
            name,
            command: args[0],
            stdout,
        });
    }
    assert_the_world_has_everything(&outputs);
    crate::docs::assert_json_examples_match(&outputs);

    // full-cleanup marked the one lost row, and only it.
    let rows = world
        .db
        .rows("SELECT id::text, status FROM flaky_jobs ORDER BY id")
        .await;
    let rows: Vec<String> = rows
        .into_iter()
        .map(|r| r.into_iter().flatten().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        rows,
        ["1 running", "50 lost", "51 pending", "52 done"],
        "flaky_jobs after full-cleanup"
    );
}

/// The pinned output is only worth something if the keyspace shows every kind of entry and
/// every kind of change.
fn assert_the_world_has_everything(outputs: &JsonRuns) {
    let get = |name: &str| &outputs.iter().find(|r| r.name == name).unwrap().stdout;
    let tasks = &get("01_status")["tasks"];
    for state in ["live", "orphaned", "unowned", "undecidable"] {
        assert!(tasks[state].as_u64() > Some(0), "no {state} entry: {tasks}");
    }
    for location in ["queue", "unacked", "result"] {
        assert!(
            tasks["orphaned_by_location"][location].as_u64() > Some(0),
            "no orphan in {location}: {tasks}"
        );
    }
    let full = get("10_full_cleanup");
    assert!(
        full["expired_results"]["removed"].as_u64() > Some(0),
        "{full}"
    );
    assert!(full["lost_rows"]["marked"].as_u64() > Some(0), "{full}");
    assert!(
        full["lost_rows"]["skipped_tables"]
            .as_object()
            .is_some_and(|t| !t.is_empty()),
        "{full}"
    );
    assert!(get("05_cleanup_orphaned")["revoke"].is_object());
}
