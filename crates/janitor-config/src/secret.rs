//! URLs that carry credentials. Only [`SecretUrl::expose`] yields the password; `Display` and
//! `Debug` show `****` instead, so a URL can go into any log line or error message.

use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl {
    raw: String,
    redacted: String,
    scheme: String,
}

impl SecretUrl {
    fn parse(raw: &str, schemes: &[&str]) -> Result<Self, String> {
        let url = url::Url::parse(raw).map_err(|e| format!("not a URL ({e})"))?;
        let scheme = url.scheme().to_owned();
        if !schemes.contains(&scheme.as_str()) {
            return Err(format!(
                "unsupported scheme {scheme:?} (expected one of {})",
                schemes.join(", ")
            ));
        }
        let mut shown = url.clone();
        if shown.password().is_some() {
            let _ = shown.set_password(Some("****"));
        }
        let mut redacted = shown.to_string();
        // Query strings may carry `password=`; keep them out of logs entirely.
        if let Some(q) = redacted.find('?') {
            redacted.truncate(q);
            redacted.push_str("?…");
        }
        Ok(SecretUrl {
            raw: raw.to_owned(),
            redacted,
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

    #[test]
    fn passwords_are_redacted() {
        let u = SecretUrl::parse_redis("redis://:pw@localhost:6379/0").unwrap();
        assert_eq!(u.to_string(), "redis://:****@localhost:6379/0");
        let d = SecretUrl::parse_database("postgresql://me:pw@db/app?password=x").unwrap();
        assert_eq!(d.to_string(), "postgresql://me:****@db/app?…");
        assert!(SecretUrl::parse_database("mysql://x").is_err());
    }
}
