//! celery-janitor's settings, declared once and resolved in one place.
//!
//! Parse, then resolve: the TOML file is parsed into [`FileConfig`] (every key documented on its
//! field), then [`resolve`] applies **flag > environment > file > default** and validates the
//! result into [`Settings`], which the rest of the program uses. Environment variables are the
//! constants in [`env`]. URLs are held in [`SecretUrl`], which never prints a password.

mod api;
mod app;
mod keys;
mod owners;
mod secret;
mod starter;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use api::{
    api_defaults, parse_bind, ApiRole, ApiSection, ApiSettings, ApiToken, ApiTokenFile, ClaimRule,
    IpRange, JwtAlgorithm, JwtKeySource, JwtSection, JwtSettings,
};
pub use app::{agree, same_redis, AppDefaults};
pub use keys::file_keys;
pub use owners::{
    quote_ident, IdSource, LostRowRule, OwnerMatch, OwnerRule, OwnerRuleFile, Owners,
};
pub use secret::{redact_url, SecretUrl};
pub use starter::STARTER_CONFIG;

/// Every environment variable celery-janitor reads, each read in exactly one place: the settings
/// in [`resolve`], the user config directory in [`Discovery::standard`], the log filter in the
/// binary's logging setup. [`env::ALL`] is the complete list; docs/cli.md's table is checked
/// against it.
pub mod env {
    /// Path of the TOML config file.
    pub const CONFIG: &str = "CELERY_JANITOR_CONFIG";
    /// Redis URL for broker and result backend (overrides `[redis] url`).
    pub const REDIS_URL: &str = "REDIS_URL";
    /// Database URL of the owner tables (overrides `[database] url`).
    pub const DATABASE_URL: &str = "DATABASE_URL";
    /// Overrides `[cleanup] max_age_hours`.
    pub const MAX_AGE_HOURS: &str = "CELERY_JANITOR_MAX_AGE_HOURS";
    /// Overrides `[cleanup] cleanup_on_startup`.
    pub const CLEANUP_ON_STARTUP: &str = "CELERY_JANITOR_CLEANUP_ON_STARTUP";
    /// Overrides `[cleanup] grace_seconds`.
    pub const GRACE_SECONDS: &str = "CELERY_JANITOR_GRACE_SECONDS";
    /// The user config directory, where the config file is looked for when none is named.
    pub const XDG_CONFIG_HOME: &str = "XDG_CONFIG_HOME";
    /// `$HOME/.config` is the user config directory when `XDG_CONFIG_HOME` is unset.
    pub const HOME: &str = "HOME";
    /// Log filter of the application log (`info` by default; e.g. `debug`), in
    /// `tracing_subscriber::EnvFilter` syntax.
    pub const LOG: &str = "CELERY_JANITOR_LOG";

    /// Every variable above.
    pub const ALL: [&str; 9] = [
        CONFIG,
        REDIS_URL,
        DATABASE_URL,
        MAX_AGE_HOURS,
        GRACE_SECONDS,
        CLEANUP_ON_STARTUP,
        XDG_CONFIG_HOME,
        HOME,
        LOG,
    ];
}

/// Defaults, in one place.
pub mod defaults {
    pub const MAX_AGE_HOURS: f64 = 24.0;
    pub const CLEANUP_ON_STARTUP: bool = true;
    pub const GRACE_SECONDS: f64 = 10.0;
    pub const APP_LOG: &str = "logs/app.log";
    pub const AUDIT_LOG: &str = "logs/audit.jsonl";
    pub const ARCHIVE_DIR: &str = "archive";
    pub const LOST_AFTER_MINUTES: f64 = 60.0;
    pub const PRIORITY_STEPS: [u32; 4] = [0, 3, 6, 9];
    /// `[cleanup] startup_min_interval`: ten minutes.
    pub const STARTUP_MIN_INTERVAL_SECONDS: f64 = 600.0;
    pub const GUARD_ON_ERROR: super::OnError = super::OnError::Retry;
    pub const REVOKE_TTL_DAYS: f64 = 7.0;
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting {key}: {message}")]
    Invalid { key: String, message: String },
    #[error("missing setting: {0}")]
    Missing(&'static str),
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The TOML file as written. Unknown keys are errors, so a typo never silently disables a rule.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub redis: RedisSection,
    #[serde(default)]
    pub database: DatabaseSection,
    #[serde(default)]
    pub cleanup: CleanupSection,
    #[serde(default)]
    pub logging: LoggingSection,
    #[serde(default)]
    pub archive: ArchiveSection,
    #[serde(default)]
    pub guard: GuardSection,
    #[serde(default)]
    pub revoke: RevokeSection,
    #[serde(default)]
    pub owners: Vec<owners::OwnerRuleFile>,
    /// The HTTP server (`serve`): see `api.rs`.
    #[serde(default)]
    pub api: ApiSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSection {
    /// Redis URL used for both broker and result backend (`redis://`, `rediss://`, `unix://`).
    pub url: Option<String>,
    /// Broker URL when it differs from `url`.
    pub broker_url: Option<String>,
    /// Result backend URL when it differs from `url`.
    pub result_backend_url: Option<String>,
    /// kombu/celery `global_keyprefix`; used for both broker and backend unless the specific
    /// ones below are set.
    pub global_keyprefix: Option<String>,
    /// `broker_transport_options['global_keyprefix']`, if it differs.
    pub broker_keyprefix: Option<String>,
    /// `result_backend_transport_options['global_keyprefix']`, if it differs.
    pub result_keyprefix: Option<String>,
    /// kombu `priority_steps` (default `[0, 3, 6, 9]`).
    pub priority_steps: Option<Vec<u32>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSection {
    /// `postgresql://…`, `postgres://…` or `sqlite://…`.
    pub url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanupSection {
    /// Results older than this are removed by `full-cleanup` (default 24).
    pub max_age_hours: Option<f64>,
    /// Worker integration: clean orphans when a worker starts (default true).
    pub cleanup_on_startup: Option<bool>,
    /// An orphan is removed only if its row is still missing after this many seconds (default 10).
    pub grace_seconds: Option<f64>,
    /// Queue names to inspect. Default: discovered from kombu's binding sets and `unacked`.
    pub queues: Option<Vec<String>>,
    /// Worker start-up cleanup (`cleanup-orphaned --startup`) is skipped when a cleanup
    /// completed less than this long ago: seconds, or a duration such as `"10m"` (default 600).
    pub startup_min_interval: Option<Duration>,
}

/// A number of seconds, or a duration written as text: `"90s"`, `"10m"`, `"1h"`, `"1d"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Duration {
    Seconds(f64),
    Text(String),
}

impl Duration {
    /// The duration in seconds, or why it can't be read.
    pub fn seconds(&self) -> Result<f64, String> {
        match self {
            Duration::Seconds(s) => Ok(*s),
            Duration::Text(t) => parse_duration(t),
        }
    }
}

/// `"600"`, `"90s"`, `"10m"`, `"1.5h"`, `"1d"` as seconds.
pub fn parse_duration(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let (number, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&t[..i], t[i..].trim()),
        None => (t, "s"),
    };
    let factor = match unit {
        "s" | "sec" | "secs" | "seconds" => 1.0,
        "m" | "min" | "mins" | "minutes" => 60.0,
        "h" | "hour" | "hours" => 3600.0,
        "d" | "day" | "days" => 86_400.0,
        _ => return Err(format!("{text:?}: unknown unit (use s, m, h or d)")),
    };
    number
        .trim()
        .parse::<f64>()
        .map(|n| n * factor)
        .map_err(|_| format!("{text:?}: expected a number of seconds or a duration like \"10m\""))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardSection {
    /// What a worker's guard does when it can't decide (database or Redis down): `"retry"`
    /// re-queues the task with backoff (default), `"run"` runs it unchecked.
    pub on_error: Option<OnError>,
}

/// The guard's policy when it can't decide (see [`GuardSection::on_error`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Re-queue the task (outside its own retry count), backoff 1 s doubling to 60 s.
    Retry,
    /// Run the task unchecked.
    Run,
}

impl OnError {
    pub fn as_str(self) -> &'static str {
        match self {
            OnError::Retry => "retry",
            OnError::Run => "run",
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeSection {
    /// Days a durable revocation (`celery-janitor revoke`) is kept in Redis (default 7).
    pub ttl_days: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingSection {
    /// Application log file (default `logs/app.log`).
    pub app_log: Option<PathBuf>,
    /// Audit log, one JSON line per change (default `logs/audit.jsonl`).
    pub audit_log: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveSection {
    /// Directory of JSON-lines archives of removed entries (default `archive`).
    pub dir: Option<PathBuf>,
}

/// Values given on the command line; `None` means "not given".
#[derive(Debug, Default, Clone)]
pub struct Flags {
    pub config: Option<PathBuf>,
    pub redis_url: Option<String>,
    pub database_url: Option<String>,
    pub app_log: Option<PathBuf>,
    pub audit_log: Option<PathBuf>,
    pub archive_dir: Option<PathBuf>,
    pub grace_seconds: Option<f64>,
    pub max_age_hours: Option<f64>,
}

/// Where the config file was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigOrigin {
    /// `--config PATH`.
    Flag,
    /// `CELERY_JANITOR_CONFIG`.
    Env,
    /// `./celery-janitor.toml`, found in the working directory.
    WorkingDir,
    /// `$XDG_CONFIG_HOME/celery-janitor/config.toml` (or `~/.config/…`).
    UserConfigDir,
    /// Text given in memory (the Python package, the server's tests).
    Text,
}

impl ConfigOrigin {
    /// How the file was found, for people.
    pub fn describe(self) -> &'static str {
        match self {
            ConfigOrigin::Flag => "from --config",
            ConfigOrigin::Env => "from CELERY_JANITOR_CONFIG",
            ConfigOrigin::WorkingDir => "found in the working directory",
            ConfigOrigin::UserConfigDir => "found in the user config directory",
            ConfigOrigin::Text => "given as text",
        }
    }
}

/// Where to look for a config file when neither `--config` nor `CELERY_JANITOR_CONFIG` names
/// one: `./celery-janitor.toml`, then `<user config dir>/celery-janitor/config.toml`. Injected,
/// so tests never depend on the developer's working or home directory.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    pub working_dir: Option<PathBuf>,
    /// `$XDG_CONFIG_HOME`, else `$HOME/.config`.
    pub user_config_dir: Option<PathBuf>,
}

/// The file `init` writes by default, and the first one discovery looks for.
pub const DEFAULT_CONFIG_FILE: &str = "celery-janitor.toml";

impl Discovery {
    /// Looks nowhere.
    pub fn none() -> Self {
        Self::default()
    }

    /// The process's working directory and the user's config directory (from `get_env`).
    pub fn standard(get_env: &dyn Fn(&str) -> Option<String>) -> Self {
        let get = |k: &str| get_env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        Discovery {
            working_dir: std::env::current_dir().ok(),
            user_config_dir: get(env::XDG_CONFIG_HOME)
                .filter(|p| p.is_absolute())
                .or_else(|| get(env::HOME).map(|h| h.join(".config"))),
        }
    }

    fn find(&self) -> Option<(PathBuf, ConfigOrigin)> {
        let here = self
            .working_dir
            .as_ref()
            .map(|d| (d.join(DEFAULT_CONFIG_FILE), ConfigOrigin::WorkingDir));
        let user = self.user_config_dir.as_ref().map(|d| {
            (
                d.join("celery-janitor").join("config.toml"),
                ConfigOrigin::UserConfigDir,
            )
        });
        [here, user]
            .into_iter()
            .flatten()
            .find(|(p, _)| p.is_file())
    }
}

/// Resolved, validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config_path: Option<PathBuf>,
    /// How the config file was found (`None`: no file).
    pub config_origin: Option<ConfigOrigin>,
    pub broker_url: SecretUrl,
    pub backend_url: SecretUrl,
    pub broker_prefix: Vec<u8>,
    /// As configured; the backend layout applies Celery's `_` rule.
    pub backend_prefix: Vec<u8>,
    pub priority_steps: Vec<u32>,
    /// kombu's priority-queue separator, when the app changed it (`None`: kombu's default).
    pub priority_sep: Option<Vec<u8>>,
    pub database_url: Option<SecretUrl>,
    pub max_age_hours: f64,
    pub cleanup_on_startup: bool,
    /// `[cleanup] startup_min_interval`, in seconds.
    pub startup_min_interval: f64,
    pub grace_seconds: f64,
    /// `[guard] on_error`.
    pub guard_on_error: OnError,
    /// `[revoke] ttl_days`.
    pub revoke_ttl_days: f64,
    pub queues: Option<Vec<String>>,
    pub app_log: PathBuf,
    pub audit_log: PathBuf,
    pub archive_dir: PathBuf,
    pub owners: Owners,
    /// `[api]`: the HTTP server's settings.
    pub api: ApiSettings,
}

/// Reads and parses a config file.
pub fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_file(&text).map_err(|message| ConfigError::Parse {
        path: path.to_owned(),
        message,
    })
}

/// Parses config text (used by [`load_file`] and tests).
pub fn parse_file(text: &str) -> Result<FileConfig, String> {
    toml::from_str(text).map_err(|e| {
        let message = e.message().trim().replace('\n', " ");
        match e.span() {
            Some(span) => {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!("line {line}, column {column}: {message}")
            }
            None => message,
        }
    })
}

fn env_f64(get: &dyn Fn(&str) -> Option<String>, key: &str) -> Result<Option<f64>, ConfigError> {
    match get(key).filter(|v| !v.trim().is_empty()) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse::<f64>()
            .map(Some)
            .map_err(|_| invalid(key, format!("expected a number, got {v:?}"))),
    }
}

fn env_bool(get: &dyn Fn(&str) -> Option<String>, key: &str) -> Result<Option<bool>, ConfigError> {
    match get(key).filter(|v| !v.trim().is_empty()) {
        None => Ok(None),
        Some(v) => match v.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(Some(true)),
            "0" | "false" | "no" | "off" => Ok(Some(false)),
            _ => Err(invalid(key, format!("expected true or false, got {v:?}"))),
        },
    }
}

/// Largest `grace_seconds`: one day.
pub const MAX_GRACE_SECONDS: f64 = 86_400.0;
/// Largest `max_age_hours`: ten years.
pub const MAX_MAX_AGE_HOURS: f64 = 87_600.0;

fn in_range(key: &str, v: f64, max: f64, unit: &str) -> Result<f64, ConfigError> {
    if v.is_finite() && (0.0..=max).contains(&v) {
        // `-0.0` is in range; hand back a plain zero.
        Ok(v + 0.0)
    } else {
        Err(invalid(
            key,
            format!(
                "must be a number of {unit} from 0 to {max}, got {}",
                show_number(v)
            ),
        ))
    }
}

/// A number as the user would write it: `-1`, `2.5`, `1e20`, `NaN`, `inf`.
fn show_number(v: f64) -> String {
    if v.is_finite() && v.abs() >= 1e6 {
        format!("{v:e}")
    } else {
        v.to_string()
    }
}

/// Checks a grace period in seconds: finite, 0 to [`MAX_GRACE_SECONDS`]. The CLI, the engine
/// and API bodies all validate with this, so they accept exactly the same values.
pub fn validate_grace_seconds(v: f64) -> Result<f64, ConfigError> {
    in_range("grace_seconds", v, MAX_GRACE_SECONDS, "seconds")
}

/// Checks a result age in hours: finite, 0 to [`MAX_MAX_AGE_HOURS`]. The CLI, the engine and
/// API bodies all validate with this, so they accept exactly the same values.
pub fn validate_max_age_hours(v: f64) -> Result<f64, ConfigError> {
    in_range("max_age_hours", v, MAX_MAX_AGE_HOURS, "hours")
}

/// The first value given, in precedence order, validated; the error names where it came from.
fn pick_number(
    sources: [(Option<f64>, &str); 3],
    default: f64,
    validate: fn(f64) -> Result<f64, ConfigError>,
) -> Result<f64, ConfigError> {
    let Some((v, source)) = sources.into_iter().find_map(|(v, s)| v.map(|v| (v, s))) else {
        return validate(default);
    };
    validate(v).map_err(|e| match e {
        ConfigError::Invalid { key, message } => ConfigError::Invalid {
            key: format!("{key} (from {source})"),
            message,
        },
        other => other,
    })
}

/// Resolves settings from flags, the environment (`get_env`) and the config file.
///
/// Without `--config` or `CELERY_JANITOR_CONFIG` no file is read; see [`resolve_with`] for
/// discovery.
pub fn resolve(
    flags: &Flags,
    get_env: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, ConfigError> {
    resolve_with(flags, get_env, &Discovery::none())
}

/// [`resolve`], looking for a config file where `discovery` says when neither `--config` nor
/// `CELERY_JANITOR_CONFIG` names one.
pub fn resolve_with(
    flags: &Flags,
    get_env: &dyn Fn(&str) -> Option<String>,
    discovery: &Discovery,
) -> Result<Settings, ConfigError> {
    resolve_for_app(flags, get_env, discovery, None)
}

/// [`resolve_with`] for a Celery app: `app` (from `app.conf`) fills in the Redis URLs, key
/// prefixes and priority steps where flags, environment and file are silent, and is an error
/// where they disagree (see [`agree`]).
pub fn resolve_for_app(
    flags: &Flags,
    get_env: &dyn Fn(&str) -> Option<String>,
    discovery: &Discovery,
    app: Option<&AppDefaults>,
) -> Result<Settings, ConfigError> {
    let get = |k: &str| get_env(k).filter(|v| !v.is_empty());
    let found = match (&flags.config, get(env::CONFIG)) {
        (Some(path), _) => Some((path.clone(), ConfigOrigin::Flag)),
        (None, Some(path)) => Some((PathBuf::from(path), ConfigOrigin::Env)),
        (None, None) => discovery.find(),
    };
    match found {
        Some((path, origin)) => {
            let file = load_file(&path)?;
            build(file, Some((path, origin)), flags, get_env, app)
        }
        None => build(FileConfig::default(), None, flags, get_env, app),
    }
}

/// Settings from config text held in memory (no file): relative paths resolve against the
/// working directory. Flags and the environment still win over the text.
pub fn resolve_text(
    text: &str,
    flags: &Flags,
    get_env: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, ConfigError> {
    resolve_text_for_app(text, flags, get_env, None)
}

/// [`resolve_text`] for a Celery app (see [`resolve_for_app`]).
pub fn resolve_text_for_app(
    text: &str,
    flags: &Flags,
    get_env: &dyn Fn(&str) -> Option<String>,
    app: Option<&AppDefaults>,
) -> Result<Settings, ConfigError> {
    let file = parse_file(text).map_err(|message| ConfigError::Parse {
        path: PathBuf::from("<config text>"),
        message,
    })?;
    let mut settings = build(file, None, flags, get_env, app)?;
    settings.config_origin = Some(ConfigOrigin::Text);
    Ok(settings)
}

/// Applies flag > environment > file > default to one parsed file.
fn build(
    file: FileConfig,
    source: Option<(PathBuf, ConfigOrigin)>,
    flags: &Flags,
    get_env: &dyn Fn(&str) -> Option<String>,
    app: Option<&AppDefaults>,
) -> Result<Settings, ConfigError> {
    let no_app = AppDefaults::default();
    let app = app.unwrap_or(&no_app);
    let get = |k: &str| get_env(k).filter(|v| !v.is_empty());
    let (config_path, config_origin) = match source {
        Some((path, origin)) => (Some(path), Some(origin)),
        None => (None, None),
    };
    // Relative paths written in the file mean "next to the file", wherever the tool runs.
    let file_dir = config_path
        .as_deref()
        .and_then(Path::parent)
        .map(Path::to_path_buf);
    let in_file_dir = |p: &PathBuf| match &file_dir {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p.clone(),
    };

    let redis_url = match (&flags.redis_url, get(env::REDIS_URL), &file.redis.url) {
        (Some(u), _, _) => Some((u.clone(), "--redis-url")),
        (None, Some(u), _) => Some((u, env::REDIS_URL)),
        (None, None, Some(u)) => Some((u.clone(), "[redis] url")),
        (None, None, None) => None,
    };
    // An explicit REDIS_URL (flag or env) means "this one Redis", so it overrides the file's
    // split URLs too; otherwise the file's broker/backend URLs win over its `url`.
    let explicit = flags.redis_url.is_some() || get(env::REDIS_URL).is_some();
    let pick = |specific: &Option<String>, key: &'static str| {
        if explicit {
            redis_url.clone()
        } else {
            specific
                .clone()
                .map(|u| (u, key))
                .or_else(|| redis_url.clone())
        }
    };
    let same_url = |a: &String, b: &String| same_redis(a, b);
    let broker = agree(
        "redis broker url",
        pick(&file.redis.broker_url, "[redis] broker_url"),
        app.broker_url.clone(),
        same_url,
        |u: &String| app::show_url(u),
    )?
    .ok_or(ConfigError::Missing(
        "Redis URL: set REDIS_URL, --redis-url or [redis] url",
    ))?;
    let backend = agree(
        "redis result backend url",
        pick(&file.redis.result_backend_url, "[redis] result_backend_url"),
        app.redis_backend(),
        same_url,
        |u: &String| app::show_url(u),
    )?
    // An app without a Redis result backend: results live with the broker, if anywhere.
    .unwrap_or_else(|| broker.clone());
    let broker_url = SecretUrl::parse_redis(&broker).map_err(|m| invalid("redis url", m))?;
    let backend_url = SecretUrl::parse_redis(&backend).map_err(|m| invalid("redis url", m))?;

    let database_url = match flags
        .database_url
        .clone()
        .or_else(|| get(env::DATABASE_URL))
        .or(file.database.url.clone())
    {
        Some(u) => Some(SecretUrl::parse_database(&u).map_err(|m| invalid("database url", m))?),
        None => None,
    };

    let global = file.redis.global_keyprefix.clone();
    let show = |v: &String| format!("{v:?}");
    let file_prefix = |specific: &Option<String>, key: &'static str| {
        specific
            .clone()
            .map(|p| (p, key))
            .or_else(|| global.clone().map(|p| (p, "[redis] global_keyprefix")))
    };
    let broker_prefix = agree(
        "redis broker key prefix",
        file_prefix(&file.redis.broker_keyprefix, "[redis] broker_keyprefix"),
        app.broker_keyprefix.clone(),
        |a, b| a == b,
        show,
    )?
    .unwrap_or_default();
    let backend_prefix = agree(
        "redis result key prefix",
        file_prefix(&file.redis.result_keyprefix, "[redis] result_keyprefix"),
        app.backend_keyprefix.clone(),
        |a, b| a == b,
        show,
    )?
    .unwrap_or_default();

    let priority_steps = agree(
        "redis.priority_steps",
        file.redis
            .priority_steps
            .clone()
            .map(|p| (p, "[redis] priority_steps")),
        app.priority_steps.clone(),
        |a, b| a == b,
        |v| format!("{v:?}"),
    )?
    .unwrap_or_else(|| defaults::PRIORITY_STEPS.to_vec());
    if priority_steps.is_empty() || priority_steps.iter().any(|&s| s > 255) {
        return Err(invalid(
            "redis.priority_steps",
            "must be a non-empty list of steps 0-255",
        ));
    }

    let max_age_hours = pick_number(
        [
            (flags.max_age_hours, "--max-age-hours"),
            (env_f64(&get, env::MAX_AGE_HOURS)?, env::MAX_AGE_HOURS),
            (file.cleanup.max_age_hours, "[cleanup] max_age_hours"),
        ],
        defaults::MAX_AGE_HOURS,
        validate_max_age_hours,
    )?;
    let grace_seconds = pick_number(
        [
            (flags.grace_seconds, "--grace"),
            (env_f64(&get, env::GRACE_SECONDS)?, env::GRACE_SECONDS),
            (file.cleanup.grace_seconds, "[cleanup] grace_seconds"),
        ],
        defaults::GRACE_SECONDS,
        validate_grace_seconds,
    )?;
    let cleanup_on_startup = env_bool(&get, env::CLEANUP_ON_STARTUP)?
        .or(file.cleanup.cleanup_on_startup)
        .unwrap_or(defaults::CLEANUP_ON_STARTUP);

    let startup_min_interval = match &file.cleanup.startup_min_interval {
        None => defaults::STARTUP_MIN_INTERVAL_SECONDS,
        Some(d) => {
            let key = "[cleanup] startup_min_interval";
            let seconds = d.seconds().map_err(|m| invalid(key, m))?;
            in_range(key, seconds, MAX_MAX_AGE_HOURS * 3600.0, "seconds")?
        }
    };
    let revoke_ttl_days = match file.revoke.ttl_days {
        None => defaults::REVOKE_TTL_DAYS,
        Some(days) if days.is_finite() && days > 0.0 && days <= 3650.0 => days,
        Some(days) => {
            return Err(invalid(
                "[revoke] ttl_days",
                format!(
                    "must be a number of days above 0, at most 3650, got {}",
                    show_number(days)
                ),
            ))
        }
    };

    if let Some(queues) = &file.cleanup.queues {
        if queues.iter().any(|q| q.is_empty()) {
            return Err(invalid("cleanup.queues", "queue names must not be empty"));
        }
    }

    let owners = Owners::from_file(&file.owners)?;
    let api = api::resolve_api(&file.api, &in_file_dir)?;

    Ok(Settings {
        config_path,
        config_origin,
        broker_url,
        backend_url,
        broker_prefix: broker_prefix.into_bytes(),
        backend_prefix: backend_prefix.into_bytes(),
        priority_steps,
        priority_sep: app.sep.clone().map(String::into_bytes),
        database_url,
        max_age_hours,
        cleanup_on_startup,
        startup_min_interval,
        grace_seconds,
        guard_on_error: file.guard.on_error.unwrap_or(defaults::GUARD_ON_ERROR),
        revoke_ttl_days,
        queues: file.cleanup.queues.clone(),
        app_log: flags
            .app_log
            .clone()
            .or(file.logging.app_log.as_ref().map(in_file_dir))
            .unwrap_or_else(|| defaults::APP_LOG.into()),
        audit_log: flags
            .audit_log
            .clone()
            .or(file.logging.audit_log.as_ref().map(in_file_dir))
            .unwrap_or_else(|| defaults::AUDIT_LOG.into()),
        archive_dir: flags
            .archive_dir
            .clone()
            .or(file.archive.dir.as_ref().map(in_file_dir))
            .unwrap_or_else(|| defaults::ARCHIVE_DIR.into()),
        owners,
        api,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    const FILE: &str = r#"
[redis]
url = "redis://file:6379/0"
[database]
url = "postgresql://u:secret@db/app"
[cleanup]
max_age_hours = 12
grace_seconds = 3
[[owners]]
table = "scan_tasks"
id_column = "id"
tasks = ["app.scan_*"]
id_from = "arg:0"
"#;

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let f = write(FILE);
        let flags = Flags {
            config: Some(f.path().into()),
            ..Default::default()
        };
        let s = resolve(&flags, &env_of(&[])).unwrap();
        assert_eq!(s.broker_url.expose(), "redis://file:6379/0");
        assert_eq!(s.max_age_hours, 12.0);
        assert_eq!(s.grace_seconds, 3.0);
        assert!(s.cleanup_on_startup);

        let env = env_of(&[
            ("REDIS_URL", "redis://env:6379/1"),
            ("CELERY_JANITOR_MAX_AGE_HOURS", "6"),
        ]);
        let s = resolve(&flags, &env).unwrap();
        assert_eq!(s.broker_url.expose(), "redis://env:6379/1");
        assert_eq!(s.backend_url.expose(), "redis://env:6379/1");
        assert_eq!(s.max_age_hours, 6.0);

        let flags = Flags {
            redis_url: Some("redis://flag:6379/2".into()),
            max_age_hours: Some(1.0),
            ..flags
        };
        let s = resolve(&flags, &env).unwrap();
        assert_eq!(s.broker_url.expose(), "redis://flag:6379/2");
        assert_eq!(s.max_age_hours, 1.0);
    }

    #[test]
    fn config_path_from_env() {
        let f = write(FILE);
        let env = env_of(&[("CELERY_JANITOR_CONFIG", f.path().to_str().unwrap())]);
        let s = resolve(&Flags::default(), &env).unwrap();
        assert_eq!(s.owners.rules().len(), 1);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let f = write("[cleanup]\nmax_age_hour = 3\n");
        let flags = Flags {
            config: Some(f.path().into()),
            ..Default::default()
        };
        let err = resolve(&flags, &env_of(&[("REDIS_URL", "redis://x")])).unwrap_err();
        assert!(err.to_string().contains("max_age_hour"), "{err}");
    }

    #[test]
    fn secrets_never_print() {
        let f = write(FILE);
        let flags = Flags {
            config: Some(f.path().into()),
            redis_url: Some("redis://:hunter2@h:6379/0".into()),
            ..Default::default()
        };
        let s = resolve(&flags, &env_of(&[])).unwrap();
        let shown = format!(
            "{s:?} {} {}",
            s.broker_url,
            s.database_url.as_ref().unwrap()
        );
        assert!(
            !shown.contains("hunter2") && !shown.contains("secret"),
            "{shown}"
        );
    }

    #[test]
    fn discovery_finds_the_working_dir_file_then_the_user_config() {
        let home = tempfile::tempdir().unwrap();
        let cwd = tempfile::tempdir().unwrap();
        let user = home.path().join("celery-janitor");
        std::fs::create_dir_all(&user).unwrap();
        std::fs::write(user.join("config.toml"), FILE).unwrap();
        let discovery = Discovery {
            working_dir: Some(cwd.path().into()),
            user_config_dir: Some(home.path().into()),
        };
        let s = resolve_with(&Flags::default(), &env_of(&[]), &discovery).unwrap();
        assert_eq!(s.config_origin, Some(ConfigOrigin::UserConfigDir));
        assert_eq!(s.config_path.unwrap(), user.join("config.toml"));

        std::fs::write(cwd.path().join(DEFAULT_CONFIG_FILE), FILE).unwrap();
        let s = resolve_with(&Flags::default(), &env_of(&[]), &discovery).unwrap();
        assert_eq!(s.config_origin, Some(ConfigOrigin::WorkingDir));
        // Relative paths written in the file resolve next to it; defaults stay relative.
        let f = write(&format!(
            "{FILE}\n[logging]\naudit_log = \"audit/a.jsonl\"\n"
        ));
        let flags = Flags {
            config: Some(f.path().into()),
            ..Default::default()
        };
        let s = resolve_with(&flags, &env_of(&[]), &discovery).unwrap();
        assert_eq!(s.config_origin, Some(ConfigOrigin::Flag));
        assert_eq!(
            s.audit_log,
            f.path().parent().unwrap().join("audit/a.jsonl")
        );
        assert_eq!(s.app_log, PathBuf::from(defaults::APP_LOG));
        // Nothing is discovered unless asked.
        let err = resolve(&Flags::default(), &env_of(&[])).unwrap_err();
        assert!(err.to_string().contains("REDIS_URL"));
    }

    #[test]
    fn settings_from_text() {
        let s = resolve_text(FILE, &Flags::default(), &env_of(&[])).unwrap();
        assert_eq!(s.config_origin, Some(ConfigOrigin::Text));
        assert_eq!(s.grace_seconds, 3.0);
        assert_eq!(s.owners.rules().len(), 1);
        let err = resolve_text(
            "[cleanup]\ngrace_seconds = 1e20\n",
            &Flags::default(),
            &env_of(&[("REDIS_URL", "redis://x")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("grace_seconds"), "{err}");
    }

    #[test]
    fn missing_redis_is_a_clear_error() {
        let err = resolve(&Flags::default(), &env_of(&[])).unwrap_err();
        assert!(err.to_string().contains("REDIS_URL"));
    }

    #[test]
    fn starter_config_parses() {
        parse_file(STARTER_CONFIG).unwrap();
    }

    #[test]
    fn guard_revoke_and_startup_keys() {
        let url = [("REDIS_URL", "redis://h")];
        let s = resolve_text("", &Flags::default(), &env_of(&url)).unwrap();
        assert_eq!(s.startup_min_interval, 600.0);
        assert_eq!(s.guard_on_error, OnError::Retry);
        assert_eq!(s.revoke_ttl_days, 7.0);
        let text = "[cleanup]\nstartup_min_interval = \"2m\"\n[guard]\non_error = \"run\"\n\
                    [revoke]\nttl_days = 1.5\n";
        let s = resolve_text(text, &Flags::default(), &env_of(&url)).unwrap();
        assert_eq!(s.startup_min_interval, 120.0);
        assert_eq!(s.guard_on_error, OnError::Run);
        assert_eq!(s.revoke_ttl_days, 1.5);
        let s = resolve_text(
            "[cleanup]\nstartup_min_interval = 30\n",
            &Flags::default(),
            &env_of(&url),
        )
        .unwrap();
        assert_eq!(s.startup_min_interval, 30.0);
        for bad in [
            "[cleanup]\nstartup_min_interval = \"10 parsecs\"\n",
            "[cleanup]\nstartup_min_interval = -1\n",
            "[guard]\non_error = \"ignore\"\n",
            "[revoke]\nttl_days = 0\n",
        ] {
            assert!(
                resolve_text(bad, &Flags::default(), &env_of(&url)).is_err(),
                "{bad}"
            );
        }
        let s = resolve_text(STARTER_CONFIG, &Flags::default(), &env_of(&[])).unwrap();
        assert_eq!(s.startup_min_interval, 600.0);
    }

    #[test]
    fn app_defaults_fill_in_and_must_agree() {
        let app = AppDefaults {
            broker_url: Some("redis://:pw@app:6379/1".into()),
            result_backend: Some("redis://app:6379/2".into()),
            broker_keyprefix: Some("myapp".into()),
            backend_keyprefix: Some("myapp".into()),
            priority_steps: Some(vec![0, 5, 9]),
            sep: Some(":".into()),
        };
        let none = env_of(&[]);
        let s = resolve_text_for_app("", &Flags::default(), &none, Some(&app)).unwrap();
        assert_eq!(s.broker_url.expose(), "redis://:pw@app:6379/1");
        assert_eq!(s.backend_url.expose(), "redis://app:6379/2");
        assert_eq!(s.broker_prefix, b"myapp");
        assert_eq!(s.backend_prefix, b"myapp");
        assert_eq!(s.priority_steps, [0, 5, 9]);
        assert_eq!(s.priority_sep.as_deref(), Some(&b":"[..]));

        // The file agreeing (another spelling of the same Redis) is fine.
        let text = "[redis]\nbroker_url = \"redis://app/1\"\n\
                    result_backend_url = \"redis://app:6379?db=2\"\nglobal_keyprefix = \"myapp\"\n";
        resolve_text_for_app(text, &Flags::default(), &none, Some(&app)).unwrap();

        // Disagreeing: an error naming both, redacted.
        let env = env_of(&[("REDIS_URL", "redis://:secret@other:6379/0")]);
        let err = resolve_text_for_app("", &Flags::default(), &env, Some(&app))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("other:6379") && err.contains("app:6379"),
            "{err}"
        );
        assert!(!err.contains("secret") && !err.contains(":pw@"), "{err}");
        let err = resolve_text_for_app(
            "[redis]\nurl = \"redis://app/1\"\nresult_backend_url = \"redis://app/2\"\nglobal_keyprefix = \"x\"\n",
            &Flags::default(),
            &none,
            Some(&app),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("\"x\"") && err.contains("\"myapp\""), "{err}");
        // No app, no URL: the usual error.
        assert!(resolve_text_for_app("", &Flags::default(), &none, None).is_err());
        // An app with a non-Redis backend: results are looked for with the broker.
        let app = AppDefaults {
            broker_url: Some("redis://app/1".into()),
            result_backend: Some("rpc://".into()),
            ..Default::default()
        };
        let s = resolve_text_for_app("", &Flags::default(), &none, Some(&app)).unwrap();
        assert_eq!(s.backend_url.expose(), "redis://app/1");
    }

    #[test]
    fn grace_and_max_age_have_finite_ranges() {
        assert_eq!(validate_grace_seconds(0.0).unwrap(), 0.0);
        assert_eq!(validate_grace_seconds(86_400.0).unwrap(), 86_400.0);
        assert_eq!(validate_max_age_hours(87_600.0).unwrap(), 87_600.0);
        assert!(validate_grace_seconds(-0.0).unwrap().is_sign_positive());
        for bad in [
            -1.0,
            86_400.5,
            1e20,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ] {
            let err = validate_grace_seconds(bad).unwrap_err().to_string();
            assert!(
                err.contains("grace_seconds") && err.contains("0 to 86400"),
                "{err}"
            );
        }
        for bad in [-0.5, 87_600.5, 1e15, f64::NAN, f64::INFINITY] {
            let err = validate_max_age_hours(bad).unwrap_err().to_string();
            assert!(
                err.contains("max_age_hours") && err.contains("0 to 87600"),
                "{err}"
            );
        }
    }

    #[test]
    fn out_of_range_values_name_their_source() {
        let url = [("REDIS_URL", "redis://h")];
        let flags = Flags {
            grace_seconds: Some(1e20),
            ..Default::default()
        };
        let err = resolve(&flags, &env_of(&url)).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { .. }));
        assert!(err.to_string().contains("(from --grace)"), "{err}");
        assert!(err.to_string().contains("got 1e20"), "{err}");

        let env = env_of(&[url[0], ("CELERY_JANITOR_MAX_AGE_HOURS", "1e15")]);
        let err = resolve(&Flags::default(), &env).unwrap_err().to_string();
        assert!(
            err.contains("max_age_hours (from CELERY_JANITOR_MAX_AGE_HOURS)"),
            "{err}"
        );

        let env = env_of(&[url[0], ("CELERY_JANITOR_GRACE_SECONDS", "nan")]);
        assert!(resolve(&Flags::default(), &env).is_err());

        let f = write("[cleanup]\ngrace_seconds = inf\n");
        let flags = Flags {
            config: Some(f.path().into()),
            ..Default::default()
        };
        let err = resolve(&flags, &env_of(&url)).unwrap_err().to_string();
        assert!(err.contains("[cleanup] grace_seconds"), "{err}");
        // A valid flag overrides a bad file value: precedence picks one value, then validates.
        let flags = Flags {
            grace_seconds: Some(5.0),
            ..flags
        };
        assert_eq!(resolve(&flags, &env_of(&url)).unwrap().grace_seconds, 5.0);

        let lost_rule = "status_column = \"s\"\nactive_statuses = [\"a\"]\nlost_status = \"l\"\n\
                         created_column = \"c\"\nlost_after_minutes = 1e15\n";
        let f = write(&format!("{FILE}{lost_rule}"));
        let flags = Flags {
            config: Some(f.path().into()),
            ..Default::default()
        };
        let err = resolve(&flags, &env_of(&[])).unwrap_err().to_string();
        assert!(err.contains("lost_after_minutes"), "{err}");
    }

    #[test]
    fn unencoded_passwords_are_config_errors() {
        for (key, url) in [
            ("REDIS_URL", "redis://:Pa/ss@h:6379/0"),
            ("DATABASE_URL", "postgresql://me:Pa#ss@db/app"),
        ] {
            let env = env_of(&[("REDIS_URL", "redis://h"), (key, url)]);
            let err = resolve(&Flags::default(), &env).unwrap_err();
            let text = format!("{err} {err:?}");
            assert!(matches!(err, ConfigError::Invalid { .. }), "{text}");
            assert!(
                text.contains("percent-encode") && !text.contains("Pa"),
                "{text}"
            );
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// A TOML value for a number key: numbers of every kind, and things that are not.
        fn toml_value() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<f64>().prop_map(|v| match v {
                    v if v.is_nan() => "nan".to_owned(),
                    v if v.is_infinite() => (if v > 0.0 { "inf" } else { "-inf" }).to_owned(),
                    v => format!("{v:e}"),
                }),
                any::<i64>().prop_map(|v| v.to_string()),
                prop::sample::select(vec![
                    "nan",
                    "+nan",
                    "-nan",
                    "inf",
                    "-inf",
                    "1e20",
                    "1e15",
                    "1e400",
                    "-1",
                    "-0.0",
                    "86400",
                    "86400.0001",
                    "87600",
                    "87600.1",
                    "99999999999999999999",
                    "0x10",
                    "true",
                    "[1]",
                    "{}",
                ])
                .prop_map(str::to_owned),
                "-?[0-9]{1,4}(\\.[0-9]{1,4})?(e-?[0-9]{1,3})?",
                "\"[ -~]{0,12}\"".prop_map(|v| v.replace('\\', "")),
            ]
        }

        /// A URL-ish string: well formed, with odd userinfo, or not a URL at all.
        fn url_value() -> impl Strategy<Value = String> {
            let scheme = prop::sample::select(vec![
                "redis",
                "rediss",
                "unix",
                "redis+unix",
                "postgresql",
                "postgres",
                "sqlite",
                "mysql",
                "",
            ]);
            let odd = (scheme, "[ -~]{0,16}", "[ -~]{0,12}")
                .prop_map(|(s, a, b)| format!("{s}://{a}@{b}").replace(['"', '\\'], ""));
            let good = prop::sample::select(vec![
                "redis://h:6379/0",
                "redis://:p%2Fw@h/1",
                "unix:///run/redis.sock",
                "redis+unix:///p?db=0",
                "postgresql://root@/db?host=/var/run/postgresql",
                "postgres://u:p@db/app",
                "sqlite://data.db",
            ])
            .prop_map(str::to_owned);
            prop_oneof![odd, good]
        }

        fn env_value() -> impl Strategy<Value = String> {
            prop_oneof![toml_value(), "\\PC{0,12}", url_value()]
        }

        /// Often absent, so the other keys' values get through to the range checks.
        fn maybe<S: Strategy>(s: S) -> impl Strategy<Value = Option<S::Value>> {
            prop::option::weighted(0.2, s)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Whatever the file and the environment hold, `resolve` answers Ok or Err (never a
            /// panic), and what it accepts is in range.
            #[test]
            fn resolve_never_panics_and_accepts_only_ranges(
                grace in maybe(toml_value()),
                max_age in maybe(toml_value()),
                lost_after in maybe(toml_value()),
                redis in maybe(url_value()),
                database in maybe(url_value()),
                steps in maybe(toml_value()),
                env_grace in maybe(env_value()),
                env_max_age in maybe(env_value()),
                env_startup in maybe(env_value()),
                env_redis in maybe(env_value()),
                env_database in maybe(env_value()),
            ) {
                let line = |key: &str, v: &Option<String>| {
                    v.as_ref().map(|v| format!("{key} = {v}\n")).unwrap_or_default()
                };
                let quoted = |v: &Option<String>| v.as_ref().map(|v| format!("\"{v}\""));
                let text = [
                    "[redis]\n".to_owned(),
                    line("url", &quoted(&redis).or(Some("\"redis://h:6379/0\"".into()))),
                    line("priority_steps", &steps.map(|v| format!("[{v}]"))),
                    "[database]\n".to_owned(),
                    line("url", &quoted(&database)),
                    "[cleanup]\n".to_owned(),
                    line("grace_seconds", &grace),
                    line("max_age_hours", &max_age),
                    "[[owners]]\ntable = \"t\"\nid_column = \"id\"\ntasks = [\"a.*\"]\n\
                     id_from = \"arg:0\"\nstatus_column = \"s\"\nactive_statuses = [\"p\"]\n\
                     lost_status = \"l\"\ncreated_column = \"c\"\n".to_owned(),
                    line("lost_after_minutes", &lost_after),
                ]
                .concat();
                let f = write(&text);
                let flags = Flags { config: Some(f.path().into()), ..Default::default() };
                let env: Vec<(&str, String)> = [
                    (env::GRACE_SECONDS, env_grace),
                    (env::MAX_AGE_HOURS, env_max_age),
                    (env::CLEANUP_ON_STARTUP, env_startup),
                    (env::REDIS_URL, env_redis),
                    (env::DATABASE_URL, env_database),
                ]
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k, v)))
                .collect();
                let get = |k: &str| env.iter().find(|(name, _)| *name == k).map(|(_, v)| v.clone());
                match resolve(&flags, &get) {
                    Ok(s) => {
                        prop_assert!((0.0..=MAX_GRACE_SECONDS).contains(&s.grace_seconds));
                        prop_assert!((0.0..=MAX_MAX_AGE_HOURS).contains(&s.max_age_hours));
                        for rule in s.owners.rules() {
                            let lost = rule.lost.as_ref().unwrap();
                            prop_assert!((0.0..=MAX_MAX_AGE_HOURS * 60.0)
                                .contains(&lost.lost_after_minutes));
                        }
                    }
                    Err(e) => prop_assert!(!e.to_string().is_empty()),
                }
            }

            /// Flag values: in range or an error, never a panic.
            #[test]
            fn flag_numbers_are_in_range_or_errors(grace in any::<f64>(), max_age in any::<f64>()) {
                let flags = Flags {
                    grace_seconds: Some(grace),
                    max_age_hours: Some(max_age),
                    ..Default::default()
                };
                let env = env_of(&[("REDIS_URL", "redis://h")]);
                let ok = resolve(&flags, &env).is_ok();
                let in_range = grace.is_finite() && (0.0..=86_400.0).contains(&grace)
                    && max_age.is_finite() && (0.0..=87_600.0).contains(&max_age);
                prop_assert_eq!(ok, in_range);
            }

            /// Any text at all as a config file: parsed or a located error, never a panic.
            #[test]
            fn any_file_text_parses_or_errs(
                text in "\\PC{0,200}|[\\[\\]=\"a-z. \n\u{e9}\u{1F600}]{0,80}"
            ) {
                let _ = parse_file(&text);
            }
        }
    }
}
