//! The world the reports run in: the fixed captured keyspace in a private `redis-server`, owner
//! rows in a PostgreSQL database of the test's own, a config file naming both, and the binary run
//! against them, with what varies between runs (run ids, times, paths, ports, memory) filtered.

use std::path::{Path, PathBuf};
use std::process::Command;

use janitor_testkit::keyspace;
use janitor_testkit::postgres::TestDatabase;
use janitor_testkit::redis_server::TestRedis;

/// The binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_celery-janitor");

/// The owner tables: `adds` owns `app.add` by its first argument (rows 1, 2 and 3 exist; the
/// keyspace holds `app.add` calls for other ids, and some whose first argument is missing or not
/// a number, which makes the table's lost rows undecidable); `flaky_jobs` owns `app.flaky` (row 1
/// has an ETA task in `unacked`; row 50 is active, old and has no work left, so it is lost; row
/// 51 is too young and row 52 is done).
const OWNER_ROWS: &str = r#"
CREATE TABLE adds (id bigint PRIMARY KEY, status text NOT NULL, created_at timestamptz NOT NULL);
INSERT INTO adds VALUES
    (1, 'done', '2020-01-01 00:00:00+00'),
    (2, 'running', '2020-01-01 00:00:00+00'),
    (3, 'done', '2020-01-01 00:00:00+00');
CREATE TABLE flaky_jobs (id bigint PRIMARY KEY, status text NOT NULL, created_at timestamptz NOT NULL);
INSERT INTO flaky_jobs VALUES
    (1, 'running', '2020-01-01 00:00:00+00'),
    (50, 'pending', '2020-01-01 00:00:00+00'),
    (51, 'pending', now()),
    (52, 'done', '2020-01-01 00:00:00+00');
"#;

/// The `[[owners]]` rules for [`OWNER_ROWS`].
const OWNERS: &str = r#"
[[owners]]
table = "adds"
id_column = "id"
tasks = ["app.add"]
id_from = "arg:0"
status_column = "status"
active_statuses = ["pending", "running"]
lost_status = "lost"
created_column = "created_at"
lost_after_minutes = 60

[[owners]]
table = "flaky_jobs"
id_column = "id"
tasks = ["app.flaky"]
id_from = "arg:0"
status_column = "status"
active_statuses = ["pending", "running"]
lost_status = "lost"
created_column = "created_at"
lost_after_minutes = 60
"#;

pub(crate) struct World {
    pub(crate) redis: TestRedis,
    pub(crate) db: TestDatabase,
    dir: tempfile::TempDir,
    config: PathBuf,
}

/// One run of the binary.
#[derive(Debug)]
pub(crate) struct Run {
    /// The arguments after the program name, as shown in a snapshot.
    pub(crate) args: String,
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    /// The run as a snapshot shows it.
    pub(crate) fn render(&self) -> String {
        format!(
            "$ celery-janitor {}\nexit code: {}\n----- stdout -----\n{}----- stderr -----\n{}",
            self.args, self.code, self.stdout, self.stderr
        )
    }

    /// Stdout parsed as the one JSON document it must be.
    pub(crate) fn json(&self) -> serde_json::Value {
        assert_eq!(self.code, 0, "{}", self.render());
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.render()))
    }
}

impl World {
    pub(crate) async fn new() -> World {
        let redis = TestRedis::start().await;
        keyspace::load(&redis).await;
        let db = TestDatabase::create().await;
        db.execute(OWNER_ROWS).await;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("celery-janitor.toml");
        std::fs::write(
            &config,
            format!(
                "[redis]\nurl = \"{}\"\n\n[database]\nurl = \"{}\"\n\n[cleanup]\ngrace_seconds = 0\n\
                 max_age_hours = 24\n\n[logging]\napp_log = \"logs/app.log\"\n\
                 audit_log = \"logs/audit.jsonl\"\n\n[archive]\ndir = \"archive\"\n{OWNERS}",
                redis.url(),
                db.url()
            ),
        )
        .unwrap();
        World {
            redis,
            db,
            dir,
            config,
        }
    }

    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `celery-janitor --config <file> ARGS` in the world's folder.
    pub(crate) fn run(&self, args: &[&str]) -> Run {
        let mut all: Vec<&str> = vec!["--config"];
        let config = self.config.to_str().unwrap();
        all.push(config);
        all.extend(args);
        let mut run = run_bin(&all, self.dir());
        run.args = args.join(" ");
        run
    }

    /// Filters for what varies between runs; the redis port and database name are in the
    /// world's paths and URLs.
    pub(crate) fn filters(&self) -> Vec<(String, String)> {
        let mut filters = vec![(
            regex_escape(&self.dir().display().to_string()),
            "[TMP]".to_owned(),
        )];
        if let Ok(real) = self.dir().canonicalize() {
            filters.push((
                regex_escape(&real.display().to_string()),
                "[TMP]".to_owned(),
            ));
        }
        filters.push((regex_escape(self.db.name()), "[DB]".to_owned()));
        // `runs` names the host each run ran on.
        filters.push((
            format!(r"\b{}\b", regex_escape(&janitor_engine::hostname())),
            "[HOST]".to_owned(),
        ));
        filters.extend(common_filters());
        filters
    }
}

/// Runs the binary with `args` in `dir`, with an empty environment: no setting, terminal width
/// or config file of the machine's reaches it.
pub(crate) fn run_bin(args: &[&str], dir: &Path) -> Run {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_clear()
        .output()
        .unwrap_or_else(|e| panic!("{BIN}: {e}"));
    Run {
        args: args.join(" "),
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(out.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("UTF-8 stderr"),
    }
}

/// Filters for every snapshot: run ids, times, ports, memory and client counts.
pub(crate) fn common_filters() -> Vec<(String, String)> {
    [
        (r"\d{8}T\d{6}Z-[0-9a-f]{8}", "[RUN_ID]"),
        // Redis stream ids: the archive ids.
        (r"\b\d{13}-\d+\b", "[ARCHIVE_ID]"),
        (
            r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d+)?( UTC|Z|\+00:00)?",
            "[TIME]",
        ),
        (r"127\.0\.0\.1:\d+", "127.0.0.1:[PORT]"),
        // Durations counted from the moment of the run (a lock's remaining time).
        (r"\b(in|after|for) \d+(\.\d+)? (s|ms)\b", "$1 [DURATION] $3"),
        (r"(memory used: +)\S+ \S+", "$1[MEMORY]"),
        (r"(client connections: +)\d+", "$1[CLIENTS]"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_owned(), b.to_owned()))
    .collect()
}

pub(crate) fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if r"\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `filters` as insta wants them.
pub(crate) fn insta_settings(filters: &[(String, String)]) -> insta::Settings {
    let mut settings = insta::Settings::clone_current();
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    for (pattern, replacement) in filters {
        settings.add_filter(pattern, replacement.as_str());
    }
    settings
}
