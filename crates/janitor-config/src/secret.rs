//! URLs that carry credentials. Only [`SecretUrl::expose`] yields the password; `Display` and
//! `Debug` show `****` instead, so a URL can go into any log line or error message.
//!
//! Redaction never depends on the URL being well formed: everything between `://` and the
//! *last* `@` is the userinfo and is shown as `****` (a password may hold an unencoded `@`), and
//! a query string, which may carry `password=`, is shown as `?…`. [`redact_url`] does the same
//! for text that never became a [`SecretUrl`]. Messages from drivers go through
//! [`SecretUrl::scrub`], which hides the password in every spelling a driver might echo.

use std::fmt;

/// A URL and its redacted form.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl {
    raw: String,
    redacted: String,
    scheme: String,
    /// What [`SecretUrl::scrub`] hides: the userinfo and password as written, percent-decoded,
    /// and as the `url` crate (which the drivers use) reads them. Longest first.
    secrets: Vec<String>,
}

/// Schemes whose URLs may have no host (`postgresql:///db?host=/run/postgresql`,
/// `unix:///run/redis.sock`, `sqlite:///data.db`): when `://` is followed by `/`, the rest is a
/// path and query.
const HOSTLESS_SCHEMES: &[&str] = &["postgresql", "postgres", "unix", "redis+unix", "sqlite"];

/// Query parameters that carry a password (libpq's `password`, redis-rs's `pass` for sockets).
const PASSWORD_PARAMS: &[&str] = &["password", "pass"];

/// Whether `s` is a URL scheme (RFC 3986: a letter, then letters, digits, `+`, `-`, `.`), and so
/// safe to echo in a message.
fn is_scheme(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// Whether a URL of `scheme` whose text after `://` is `rest` has no authority at all, so that
/// an `@` in it is part of a path or query, not a userinfo delimiter (redaction still hides up
/// to the last `@`: that only hides more).
fn is_hostless(scheme: &str, rest: &str) -> bool {
    HOSTLESS_SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()) && rest.starts_with('/')
}

/// `rest` (what follows `://`) with everything up to its last `@` as `****` and its query as `?…`.
fn redact_after_scheme(rest: &str) -> String {
    let (userinfo, after) = match rest.rfind('@') {
        Some(at) => ("****@", at + 1),
        None => ("", 0),
    };
    match rest.find('?') {
        None => format!("{userinfo}{}", &rest[after..]),
        Some(q) if q >= after => format!("{userinfo}{}?…", &rest[after..q]),
        // A `?` before the last `@`: what follows the `@` may be the end of a query value
        // (`?password=a@b`), so nothing after it is shown.
        Some(_) => format!("{userinfo}…"),
    }
}

/// The redacted form of any text given as a URL, well formed or not: everything between `://`
/// and the last `@` becomes `****`, a query string becomes `?…`
/// (`redis://:pw@h:6379/0?x=1` → `redis://****@h:6379/0?…`).
pub fn redact_url(raw: &str) -> String {
    match raw.split_once("://") {
        Some((scheme, rest)) if is_scheme(scheme) => format!(
            "{}://{}",
            scheme.to_ascii_lowercase(),
            redact_after_scheme(rest)
        ),
        // Not a URL: whatever precedes an `@` may still be a password.
        _ => redact_after_scheme(raw),
    }
}

/// Decodes `%XX` escapes, keeping invalid ones; never fails.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every spelling of the credentials in `raw` (`rest` follows its `://`) a message could echo.
fn secrets_of(raw: &str, rest: &str) -> Vec<String> {
    let mut secrets = Vec::new();
    let mut add = |s: &str| {
        secrets.push(s.to_owned());
        secrets.push(percent_decode(s));
    };
    if let Some(at) = rest.rfind('@') {
        let userinfo = &rest[..at];
        add(userinfo);
        if let Some((_user, password)) = userinfo.split_once(':') {
            add(password);
        }
    }
    if let Some((_, query)) = rest.split_once('?') {
        for pair in query.split(['&', '#']) {
            if let Some((k, v)) = pair.split_once('=') {
                if PASSWORD_PARAMS.contains(&percent_decode(k).to_ascii_lowercase().as_str()) {
                    add(v);
                }
            }
        }
    }
    // The drivers parse with the `url` crate, whose reading of a malformed URL may differ.
    if let Ok(url) = url::Url::parse(raw) {
        if let Some(password) = url.password() {
            add(password);
        }
        for (k, v) in url.query_pairs() {
            if PASSWORD_PARAMS.contains(&k.to_ascii_lowercase().as_str()) {
                add(&v);
            }
        }
    }
    secrets.retain(|s| !s.is_empty());
    secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    secrets.dedup();
    secrets
}

impl SecretUrl {
    /// Checks the scheme and the userinfo and builds the redacted form by hand, so every form the
    /// drivers accept (an empty host with `?host=/socket/dir`, `unix:///path`) is accepted here.
    fn parse(raw: &str, schemes: &[&str]) -> Result<Self, String> {
        let expected = schemes.first().copied().unwrap_or("scheme");
        // Neither the text nor a part of it is echoed: it may be a bare password.
        let not_a_url = || format!("not a URL: expected {expected}://…");
        let Some((scheme, rest)) = raw.split_once("://") else {
            return Err(not_a_url());
        };
        if !is_scheme(scheme) {
            return Err(not_a_url());
        }
        let scheme = scheme.to_ascii_lowercase();
        if !schemes.contains(&scheme.as_str()) {
            return Err(format!(
                "unsupported scheme {scheme:?} (expected one of {})",
                schemes.join(", ")
            ));
        }
        let redacted = redact_url(raw);
        // The drivers end the userinfo at the first `/`, `?` or `#`, so a password holding one
        // would be split: part of it read as the host, port or path, and echoed in errors.
        if scheme != "sqlite" && !is_hostless(&scheme, rest) {
            if let Some(at) = rest.rfind('@') {
                if rest[..at].contains(['/', '?', '#']) {
                    return Err(format!(
                        "{redacted}: the user name or password (before the last '@') holds an \
                         unencoded '/', '?' or '#'; percent-encode it: '/' as %2F, '?' as %3F, \
                         '#' as %23, '@' as %40"
                    ));
                }
            }
        }
        Ok(SecretUrl {
            raw: raw.to_owned(),
            redacted,
            secrets: secrets_of(raw, rest),
            scheme,
        })
    }

    pub fn parse_redis(raw: &str) -> Result<Self, String> {
        Self::parse(raw, &["redis", "rediss", "unix", "redis+unix"])
    }

    pub fn parse_database(raw: &str) -> Result<Self, String> {
        Self::parse(raw, &["postgresql", "postgres", "sqlite"])
    }

    /// The URL with its credentials, for opening a connection only.
    pub fn expose(&self) -> &str {
        &self.raw
    }

    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// `text` (say, a driver's error message) with this URL shown redacted and its userinfo and
    /// password, in any spelling, replaced by `****`.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.replace(&self.raw, &self.redacted);
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), "****");
            }
        }
        out
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({})", self.redacted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn shown(raw: &str) -> String {
        SecretUrl::parse_redis(raw)
            .or_else(|_| SecretUrl::parse_database(raw))
            .unwrap()
            .to_string()
    }

    #[test]
    fn the_userinfo_is_redacted_up_to_the_last_at() {
        assert_eq!(
            shown("redis://:pw@localhost:6379/0"),
            "redis://****@localhost:6379/0"
        );
        assert_eq!(shown("redis://user:pw@h/0"), "redis://****@h/0");
        assert_eq!(shown("rediss://user@h:6380"), "rediss://****@h:6380");
        assert_eq!(shown("redis://:p@ss:w@h:1/0"), "redis://****@h:1/0");
        assert_eq!(shown("REDIS://:pw@h/0"), "redis://****@h/0");
        assert_eq!(shown("redis://h:6379/0"), "redis://h:6379/0");
        assert_eq!(
            shown("postgresql://me:pw@db/app?password=x"),
            "postgresql://****@db/app?…"
        );
        assert_eq!(
            shown("postgres://me@db:5432/app"),
            "postgres://****@db:5432/app"
        );
    }

    #[test]
    fn socket_forms_are_accepted() {
        assert_eq!(
            shown("postgresql://root@/db?host=/var/run/postgresql"),
            "postgresql://****@/db?…"
        );
        assert_eq!(
            shown("postgresql:///db?host=/var/run/postgresql&user=me@corp"),
            "postgresql://****@…"
        );
        assert_eq!(
            shown("postgres:///db?host=/tmp&password=a@b"),
            "postgres://****@…"
        );
        assert_eq!(
            shown("unix:///run/user@1000/r.sock"),
            "unix://****@1000/r.sock"
        );
        assert_eq!(shown("unix:///run/redis.sock"), "unix:///run/redis.sock");
        assert_eq!(shown("redis+unix:///p?db=0"), "redis+unix:///p?…");
        assert_eq!(
            shown("redis+unix:///run/redis.sock?db=0&pass=pw"),
            "redis+unix:///run/redis.sock?…"
        );
        assert_eq!(shown("sqlite://data.db"), "sqlite://data.db");
        assert_eq!(shown("sqlite:///tmp/a@b/x.db"), "sqlite://****@b/x.db");
    }

    #[test]
    fn unencoded_delimiters_in_the_userinfo_are_errors() {
        for raw in [
            "redis://:Pa/ss@127.0.0.1:6379/0",
            "redis://:Pa#ss@127.0.0.1:6379/0",
            "redis://:Pa?ss@127.0.0.1:6379/0",
            "redis://us/er:pw@h/0",
            "rediss://:a@b/c@h",
            "unix://:Pa/ss@/run/redis.sock",
        ] {
            let err = SecretUrl::parse_redis(raw).unwrap_err();
            assert!(
                err.contains("percent-encode") && err.contains("%2F"),
                "{err}"
            );
            assert!(err.contains("://****@"), "{err}");
            assert!(!err.contains("Pa") && !err.contains("ss@"), "{err}");
        }
        let err = SecretUrl::parse_database("postgresql://me:a/b@db/app").unwrap_err();
        assert!(err.starts_with("postgresql://****@db/app: "), "{err}");
        // Encoded, the same passwords are fine.
        let u = SecretUrl::parse_redis("redis://:Pa%2Fss%23%3F@127.0.0.1:6379/0").unwrap();
        assert_eq!(u.to_string(), "redis://****@127.0.0.1:6379/0");
    }

    #[test]
    fn other_errors_never_echo_the_text() {
        for raw in ["hunter2", "redis:hunter2@h", "h:unter2://x", "se/cr@et://h"] {
            let err = SecretUrl::parse_redis(raw).unwrap_err();
            assert!(!err.contains("unter2") && !err.contains("cr@et"), "{err}");
        }
        let err = SecretUrl::parse_database("mysql://me:hunter2@h/db").unwrap_err();
        assert!(
            err.contains("\"mysql\"") && !err.contains("hunter2"),
            "{err}"
        );
    }

    #[test]
    fn redact_handles_any_text() {
        assert_eq!(redact_url("redis://:Pa/ss@h:1/0?x"), "redis://****@h:1/0?…");
        assert_eq!(redact_url("redis://:Pa?ss@h:1/0"), "redis://****@…");
        assert_eq!(
            redact_url("postgresql://db/app?password=a@b"),
            "postgresql://****@…"
        );
        assert_eq!(redact_url("redis:Pa/ss@h"), "****@h");
        assert_eq!(redact_url("no url here"), "no url here");
        assert_eq!(redact_url("Bad Scheme://x:pw@h"), "****@h");
    }

    #[test]
    fn scrub_hides_every_spelling_of_the_password() {
        let u = SecretUrl::parse_redis("redis://me:p%40ss%2Fw0rd@h:6379/0").unwrap();
        let text = "auth failed for redis://me:p%40ss%2Fw0rd@h:6379/0 (password p@ss/w0rd, \
                    as written p%40ss%2Fw0rd, userinfo me:p%40ss%2Fw0rd)";
        let scrubbed = u.scrub(text);
        assert!(!scrubbed.contains("w0rd"), "{scrubbed}");
        assert!(scrubbed.contains("redis://****@h:6379/0"), "{scrubbed}");
        assert!(scrubbed.contains("auth failed"), "{scrubbed}");

        let u = SecretUrl::parse_database("postgresql:///db?host=/tmp&password=s3cr%65t").unwrap();
        assert_eq!(u.scrub("bad s3cret / s3cr%65t"), "bad **** / ****");
    }

    /// Arbitrary text around a marker that must never be shown.
    fn password() -> impl Strategy<Value = String> {
        let piece = "[/?#@:%=&+ a-z0-9]{0,6}|\\PC{0,4}";
        (piece, piece).prop_map(|(a, b)| format!("{a}Q7x{b}"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn a_password_never_shows(
            password in password(),
            user in "[a-z/@]{0,4}",
            (template, in_query) in prop::sample::select(vec![
                ("redis://{u}:{p}@127.0.0.1:6379/0", false),
                ("rediss://{u}:{p}@h:6380", false),
                ("unix://{u}:{p}@/run/redis.sock", false),
                ("postgresql://{u}:{p}@db/app", false),
                ("postgresql://{u}:{p}@/app?host=/run/postgresql", false),
                ("redis:{u}:{p}@h", false),
                ("{u}:{p}@h", false),
                ("redis+unix:///run/redis.sock?pass={p}", true),
                ("postgres:///app?host=/tmp&password={p}", true),
                ("postgresql://db/app?password={p}", true),
            ]),
        ) {
            let raw = template.replace("{u}", &user).replace("{p}", &password);
            let parsed = SecretUrl::parse_redis(&raw).or_else(|_| SecretUrl::parse_database(&raw));
            let mut shown = vec![redact_url(&raw)];
            match parsed {
                Ok(url) => {
                    shown.push(url.to_string());
                    shown.push(format!("{url:?}"));
                    // What a driver could echo: the URL, the password, the userinfo.
                    let echoed = if in_query {
                        format!("error: {raw}")
                    } else {
                        format!(
                            "error: {raw}, password {password} ({}), userinfo {user}:{password}",
                            percent_decode(&password)
                        )
                    };
                    shown.push(url.scrub(&echoed));
                }
                Err(message) => shown.push(message),
            }
            for text in shown {
                prop_assert!(!text.contains("Q7x"), "{raw:?} shown as {text:?}");
            }
        }
    }
}
