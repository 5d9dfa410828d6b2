//! The commented starter file written by `celery-janitor init`. A test parses it, so it can't
//! drift from the schema.

pub const STARTER_CONFIG: &str = r#"# celery-janitor configuration.
# Precedence: command-line flag > environment variable > this file > default.
# Point the tool at this file with --config PATH or CELERY_JANITOR_CONFIG=PATH; without either,
# it reads ./celery-janitor.toml, else $XDG_CONFIG_HOME/celery-janitor/config.toml (~/.config/…).
# Relative paths below ([logging], [archive]) are relative to this file's directory.

[redis]
# Broker and result backend (env REDIS_URL, flag --redis-url). Percent-encode a password's
# / ? # @ characters (%2F %3F %23 %40): redis://:p%2Fss@127.0.0.1:6379/0
url = "redis://127.0.0.1:6379/0"
# When broker and result backend differ (separate DBs or servers):
# broker_url = "redis://127.0.0.1:6379/1"
# result_backend_url = "redis://127.0.0.1:6379/2"
# Celery's broker_transport_options / result_backend_transport_options global_keyprefix.
# The broker uses it raw ("myappunacked"); the backend appends "_" unless it ends in : _ - .
# global_keyprefix = "myapp"
# broker_keyprefix = "myapp"      # only if the broker's differs from global_keyprefix
# result_keyprefix = "myapp"      # only if the backend's differs from global_keyprefix
# kombu priority_steps, if your app changed them:
# priority_steps = [0, 3, 6, 9]

[database]
# Where the owner tables live (env DATABASE_URL, flag --database-url).
# postgresql://, postgres:// or sqlite:// URLs.
url = "postgresql://app@127.0.0.1:5432/app"

[cleanup]
# full-cleanup removes task results older than this many hours, 0-87600
# (env CELERY_JANITOR_MAX_AGE_HOURS, flag --max-age-hours).
max_age_hours = 24
# Worker integration (celery_janitor.install): clean orphans when a worker starts, by running
# `cleanup-orphaned --startup`, which skips when this is false (env CELERY_JANITOR_CLEANUP_ON_STARTUP).
cleanup_on_startup = true
# An orphan is removed only if its row is still missing after this many seconds (0-86400). This
# protects apps that enqueue before their transaction commits (env CELERY_JANITOR_GRACE_SECONDS,
# flag --grace).
grace_seconds = 10
# Worker integration: the start-up cleanup is skipped when a cleanup completed less than this
# long ago (seconds, or "90s", "10m", "1h"), so a rolling restart scans once.
startup_min_interval = "10m"
# Queues to inspect. By default they are discovered from kombu's binding sets and `unacked`;
# list them if your app declares queues that have never been bound.
# queues = ["celery"]

[logging]
# Application log (flag --log-file).
app_log = "logs/app.log"
# Audit log: one JSON line per change (flag --audit-log).
audit_log = "logs/audit.jsonl"

[archive]
# Every removed entry is archived here, byte for byte, so `celery-janitor restore` can put it back
# (flag --archive-dir). The same records are also kept in Redis under celery-janitor:archive.
dir = "archive"

[guard]
# Worker integration (celery_janitor.install): when the guard can't tell whether a task's owner
# row exists (database or Redis down): "retry" re-queues the task with backoff (1 s doubling to
# 60 s, outside its own retries; nothing is lost), "run" runs it unchecked.
on_error = "retry"

[revoke]
# Days a durable revocation (celery-janitor revoke, celery_janitor.revoke) is kept in Redis.
ttl_days = 7

# One [[owners]] block per table that owns tasks.
[[owners]]
# The owner table (optionally schema.table) and the column the id is compared with.
table = "scan_tasks"
id_column = "id"
# Task names owned by this table; globs allowed ("app.tasks.scan_*").
tasks = ["app.tasks.scan_domain_task"]
# Where the owning row's id is found: "arg:N" (0-based positional argument),
# "kwarg:NAME", or "task_id" (the Celery task id).
id_from = "arg:0"
# Result keys without a task name (result_extended off) belong to this owner.
# Only meaningful with id_from = "task_id"; at most one owner may claim them.
claim_unnamed_results = false
# Lost rows (full-cleanup): rows in active_statuses, created more than lost_after_minutes ago,
# with no queued or unacked message and no STARTED/RETRY result, are set to lost_status.
# Remove these five keys to disable lost-row detection for this table.
status_column = "status"
active_statuses = ["pending", "running"]
lost_status = "lost"
created_column = "created_at"
lost_after_minutes = 60
"#;
