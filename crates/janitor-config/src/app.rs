//! What a Celery app's own configuration says about Redis, given by the Python package from
//! `app.conf` ([`AppDefaults`]), and how it meets the config file: the file (or environment, or
//! flag) wins where it speaks, the app fills in where it is silent, and where both speak they
//! must agree ([`agree`]) — a janitor looking at another Redis than the workers would find
//! nothing, or the wrong things.

use crate::{invalid, redact_url, ConfigError};

/// Settings a Celery app already holds (`app.conf`), filled in by the Python package.
/// `None` means the app does not say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppDefaults {
    /// `broker_url`.
    pub broker_url: Option<String>,
    /// `result_backend` (only a Redis backend is used; any other scheme counts as silent).
    pub result_backend: Option<String>,
    /// `broker_transport_options['global_keyprefix']`.
    pub broker_keyprefix: Option<String>,
    /// `result_backend_transport_options['global_keyprefix']`.
    pub backend_keyprefix: Option<String>,
    /// `broker_transport_options['priority_steps']`.
    pub priority_steps: Option<Vec<u32>>,
    /// `broker_transport_options['sep']`, kombu's priority-queue separator.
    pub sep: Option<String>,
}

impl AppDefaults {
    /// The app's result backend when it is a Redis URL (Celery also accepts `rpc://`,
    /// `db+…` and others, which the janitor does not read).
    pub(crate) fn redis_backend(&self) -> Option<String> {
        self.result_backend.clone().filter(|u| {
            let scheme = u.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
            matches!(
                scheme.as_deref(),
                Some("redis" | "rediss" | "unix" | "redis+unix" | "redis+socket")
            )
        })
    }
}

/// `ours` (flag, environment or file, from `source`) where given, else the app's value; an
/// error naming both (URLs redacted) when both are given and `same` says they differ.
pub fn agree<T: Clone + std::fmt::Debug>(
    key: &str,
    ours: Option<(T, &str)>,
    app: Option<T>,
    same: impl Fn(&T, &T) -> bool,
    show: impl Fn(&T) -> String,
) -> Result<Option<T>, ConfigError> {
    match (ours, app) {
        (Some((ours, source)), Some(app)) if !same(&ours, &app) => Err(invalid(
            key,
            format!(
                "{} (from {source}) disagrees with the Celery app's {} (from app.conf); \
                 make them the same or remove one",
                show(&ours),
                show(&app)
            ),
        )),
        (Some((ours, _)), _) => Ok(Some(ours)),
        (None, app) => Ok(app),
    }
}

/// A Redis URL's identity: which server (host and port, or socket path) and database. The
/// credentials, the scheme's spelling of the same transport, default ports and databases do not
/// make two URLs different.
#[derive(Debug, PartialEq, Eq)]
struct RedisTarget {
    tls: bool,
    place: String,
    db: i64,
}

fn redis_target(raw: &str) -> Option<RedisTarget> {
    let (scheme, rest) = raw.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let query_db = |q: Option<&str>| {
        q.into_iter()
            .flat_map(|q| q.split('&'))
            .find_map(|p| p.strip_prefix("db="))
            .map(|d| d.parse::<i64>().ok())
    };
    match scheme.as_str() {
        "unix" | "redis+unix" | "redis+socket" => {
            let after_at = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
            let (path, query) = match after_at.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (after_at, None),
            };
            Some(RedisTarget {
                tls: false,
                place: path.trim_end_matches('/').to_owned(),
                db: query_db(query).unwrap_or(Some(0))?,
            })
        }
        "redis" | "rediss" => {
            let url = url::Url::parse(raw).ok()?;
            let host = url.host_str().unwrap_or("localhost").to_ascii_lowercase();
            let host = match host.as_str() {
                "localhost" | "127.0.0.1" | "[::1]" | "::1" => "localhost".to_owned(),
                _ => host,
            };
            let port = url.port().unwrap_or(6379);
            let path_db = url.path().trim_matches('/');
            let db = if path_db.is_empty() {
                query_db(url.query()).unwrap_or(Some(0))?
            } else {
                path_db.parse().ok()?
            };
            Some(RedisTarget {
                tls: scheme == "rediss",
                place: format!("{host}:{port}"),
                db,
            })
        }
        _ => None,
    }
}

/// Whether two Redis URLs name the same server and database (see [`RedisTarget`]): equivalent
/// spellings are equal; URLs that can't be read are equal only when identical.
pub fn same_redis(a: &str, b: &str) -> bool {
    match (redis_target(a), redis_target(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// A URL for an error message.
pub(crate) fn show_url(u: &str) -> String {
    redact_url(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equivalent_urls_are_the_same_redis() {
        for (a, b) in [
            ("redis://localhost", "redis://127.0.0.1:6379/0"),
            ("redis://:pw@h:6379/0", "redis://h:6379"),
            ("redis://H:6379/2", "redis://h/2"),
            ("redis://h:6379?db=3", "redis://h:6379/3"),
            ("unix:///run/r.sock", "redis+unix:///run/r.sock?db=0"),
        ] {
            assert!(same_redis(a, b), "{a} {b}");
        }
        for (a, b) in [
            ("redis://h:6379/0", "redis://h:6379/1"),
            ("redis://h:6379/0", "redis://h:6380/0"),
            ("redis://h/0", "rediss://h/0"),
            ("redis://a/0", "redis://b/0"),
            ("unix:///a.sock", "unix:///b.sock"),
        ] {
            assert!(!same_redis(a, b), "{a} {b}");
        }
    }

    #[test]
    fn disagreement_names_both_values_redacted() {
        let err = agree(
            "redis broker url",
            Some(("redis://:secret@a:6379/0".to_owned(), "REDIS_URL")),
            Some("redis://:other@b:6379/0".to_owned()),
            |a, b| same_redis(a, b),
            |u: &String| show_url(u),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("a:6379") && err.contains("b:6379"), "{err}");
        assert!(
            err.contains("REDIS_URL") && err.contains("app.conf"),
            "{err}"
        );
        assert!(!err.contains("secret") && !err.contains("other"), "{err}");
        let ok = agree(
            "k",
            None,
            Some(3u32),
            |a, b| a == b,
            |v: &u32| v.to_string(),
        );
        assert_eq!(ok.unwrap(), Some(3));
    }

    #[test]
    fn only_redis_backends_count() {
        let app = AppDefaults {
            result_backend: Some("db+postgresql://x/y".into()),
            ..Default::default()
        };
        assert_eq!(app.redis_backend(), None);
        let app = AppDefaults {
            result_backend: Some("redis://x/1".into()),
            ..Default::default()
        };
        assert_eq!(app.redis_backend().as_deref(), Some("redis://x/1"));
    }
}
