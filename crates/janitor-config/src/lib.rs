//! celery-janitor's settings, declared once and resolved in one place.
//!
//! Parse, then resolve: the TOML file is parsed into [`FileConfig`] (every key documented on its
//! field), then [`resolve`] applies **flag > environment > file > default** and validates the
//! result into [`Settings`], which the rest of the program uses. Environment variables are the
//! constants in [`env`]. URLs are held in [`SecretUrl`], which never prints a password.

mod owners;
mod secret;
mod starter;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use owners::{quote_ident, IdSource, LostRowRule, OwnerMatch, OwnerRule, Owners};
pub use secret::SecretUrl;
pub use starter::STARTER_CONFIG;

/// Environment variables, each read in exactly one place ([`resolve`]).
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
    pub owners: Vec<owners::OwnerRuleFile>,
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

/// Resolved, validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config_path: Option<PathBuf>,
    pub broker_url: SecretUrl,
    pub backend_url: SecretUrl,
    pub broker_prefix: Vec<u8>,
    /// As configured; the backend layout applies Celery's `_` rule.
    pub backend_prefix: Vec<u8>,
    pub priority_steps: Vec<u32>,
    pub database_url: Option<SecretUrl>,
    pub max_age_hours: f64,
    pub cleanup_on_startup: bool,
    pub grace_seconds: f64,
    pub queues: Option<Vec<String>>,
    pub app_log: PathBuf,
    pub audit_log: PathBuf,
    pub archive_dir: PathBuf,
    pub owners: Owners,
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

fn non_negative(key: &str, v: f64) -> Result<f64, ConfigError> {
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(invalid(key, "must be a non-negative number"))
    }
}

/// Resolves settings from flags, the environment (`get_env`) and the config file.
pub fn resolve(
    flags: &Flags,
    get_env: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, ConfigError> {
    let get = |k: &str| get_env(k).filter(|v| !v.is_empty());
    let config_path = flags
        .config
        .clone()
        .or_else(|| get(env::CONFIG).map(PathBuf::from));
    let file = match &config_path {
        Some(path) => load_file(path)?,
        None => FileConfig::default(),
    };

    let redis_url = flags
        .redis_url
        .clone()
        .or_else(|| get(env::REDIS_URL))
        .or(file.redis.url.clone());
    // An explicit REDIS_URL (flag or env) means "this one Redis", so it overrides the file's
    // split URLs too; otherwise the file's broker/backend URLs win over its `url`.
    let explicit = flags.redis_url.is_some() || get(env::REDIS_URL).is_some();
    let pick = |specific: &Option<String>| {
        if explicit {
            redis_url.clone()
        } else {
            specific.clone().or_else(|| redis_url.clone())
        }
    };
    let broker = pick(&file.redis.broker_url).ok_or(ConfigError::Missing(
        "Redis URL: set REDIS_URL, --redis-url or [redis] url",
    ))?;
    let backend = pick(&file.redis.result_backend_url).ok_or(ConfigError::Missing(
        "Redis URL: set REDIS_URL, --redis-url or [redis] url",
    ))?;
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

    let global = file.redis.global_keyprefix.clone().unwrap_or_default();
    let broker_prefix = file
        .redis
        .broker_keyprefix
        .clone()
        .unwrap_or(global.clone());
    let backend_prefix = file.redis.result_keyprefix.clone().unwrap_or(global);

    let priority_steps = file
        .redis
        .priority_steps
        .clone()
        .unwrap_or_else(|| defaults::PRIORITY_STEPS.to_vec());
    if priority_steps.is_empty() || priority_steps.iter().any(|&s| s > 255) {
        return Err(invalid(
            "redis.priority_steps",
            "must be a non-empty list of steps 0-255",
        ));
    }

    let max_age_hours = non_negative(
        "max_age_hours",
        flags
            .max_age_hours
            .or(env_f64(&get, env::MAX_AGE_HOURS)?)
            .or(file.cleanup.max_age_hours)
            .unwrap_or(defaults::MAX_AGE_HOURS),
    )?;
    let grace_seconds = non_negative(
        "grace_seconds",
        flags
            .grace_seconds
            .or(env_f64(&get, env::GRACE_SECONDS)?)
            .or(file.cleanup.grace_seconds)
            .unwrap_or(defaults::GRACE_SECONDS),
    )?;
    let cleanup_on_startup = env_bool(&get, env::CLEANUP_ON_STARTUP)?
        .or(file.cleanup.cleanup_on_startup)
        .unwrap_or(defaults::CLEANUP_ON_STARTUP);

    if let Some(queues) = &file.cleanup.queues {
        if queues.iter().any(|q| q.is_empty()) {
            return Err(invalid("cleanup.queues", "queue names must not be empty"));
        }
    }

    let owners = Owners::from_file(&file.owners)?;

    Ok(Settings {
        config_path,
        broker_url,
        backend_url,
        broker_prefix: broker_prefix.into_bytes(),
        backend_prefix: backend_prefix.into_bytes(),
        priority_steps,
        database_url,
        max_age_hours,
        cleanup_on_startup,
        grace_seconds,
        queues: file.cleanup.queues.clone(),
        app_log: flags
            .app_log
            .clone()
            .or(file.logging.app_log.clone())
            .unwrap_or_else(|| defaults::APP_LOG.into()),
        audit_log: flags
            .audit_log
            .clone()
            .or(file.logging.audit_log.clone())
            .unwrap_or_else(|| defaults::AUDIT_LOG.into()),
        archive_dir: flags
            .archive_dir
            .clone()
            .or(file.archive.dir.clone())
            .unwrap_or_else(|| defaults::ARCHIVE_DIR.into()),
        owners,
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
    fn missing_redis_is_a_clear_error() {
        let err = resolve(&Flags::default(), &env_of(&[])).unwrap_err();
        assert!(err.to_string().contains("REDIS_URL"));
    }

    #[test]
    fn starter_config_parses() {
        parse_file(STARTER_CONFIG).unwrap();
    }
}
