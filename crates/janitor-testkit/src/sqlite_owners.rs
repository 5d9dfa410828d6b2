//! The SQLite owner table the engine's tests and its example run against: `adds`, which owns
//! the captured Celery `app.add` tasks by their first argument, with rows [`LIVE_IDS`] present
//! (every other first argument is a deleted row), and the janitor config that goes with it.

use std::path::Path;

/// Rows that exist in `adds`: `app.add(2, …)` and `app.add(3, …)` are live.
pub const LIVE_IDS: [i64; 2] = [2, 3];

/// Creates `adds` (if missing) in `dir/owners.sqlite` with the live rows; returns its URL.
pub async fn create(dir: &Path) -> String {
    let url = format!("sqlite://{}?mode=rwc", dir.join("owners.sqlite").display());
    execute(
        &url,
        "CREATE TABLE IF NOT EXISTS adds (id INTEGER PRIMARY KEY, status TEXT, created_at TEXT)",
    )
    .await;
    for id in LIVE_IDS {
        execute(
            &url,
            &format!(
                "INSERT OR IGNORE INTO adds (id, status, created_at) \
                 VALUES ({id}, 'done', '2020-01-01 00:00:00')"
            ),
        )
        .await;
    }
    url
}

/// Runs one SQL statement on the database at `url`.
pub async fn execute(url: &str, statement: &str) {
    use sqlx::Connection;
    let mut con = sqlx::SqliteConnection::connect(url).await.unwrap();
    sqlx::query(statement).execute(&mut con).await.unwrap();
}

/// The janitor's config text: `[redis]` holding `redis_section`, the owner database at
/// `db_url`, `grace_seconds = 0`, logs and archive under `dir`, and the `adds` rule with
/// `owner_extra` appended to it.
pub fn config(redis_section: &str, db_url: &str, dir: &Path, owner_extra: &str) -> String {
    format!(
        r#"
[redis]
{redis_section}
[database]
url = "{db_url}"
[cleanup]
grace_seconds = 0
[logging]
app_log = "{dir}/app.log"
audit_log = "{dir}/audit.jsonl"
[archive]
dir = "{dir}/archive"
[[owners]]
table = "adds"
id_column = "id"
tasks = ["app.add"]
id_from = "arg:0"
{owner_extra}
"#,
        dir = dir.display(),
    )
}

/// The settings of [`config`] (no owner extra), resolved from the text alone — no flags, no
/// environment — as the server and the Python package resolve theirs.
pub fn settings(redis_section: &str, db_url: &str, dir: &Path) -> janitor_config::Settings {
    janitor_config::resolve_text(
        &config(redis_section, db_url, dir, ""),
        &janitor_config::Flags::default(),
        &|_| None,
    )
    .unwrap()
}
