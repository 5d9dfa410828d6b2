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
    /// Checks the scheme and builds the redacted form by hand, so every form the drivers accept
    /// (an empty host with `?host=/socket/dir`, `unix:///path`) is accepted here too.
    fn parse(raw: &str, schemes: &[&str]) -> Result<Self, String> {
        let Some((scheme, rest)) = raw.split_once("://") else {
            return Err(format!(
                "not a URL: expected {}://…",
                schemes.first().copied().unwrap_or("scheme")
            ));
        };
        let scheme = scheme.to_ascii_lowercase();
        if !schemes.contains(&scheme.as_str()) {
            return Err(format!(
                "unsupported scheme {scheme:?} (expected one of {})",
                schemes.join(", ")
            ));
        }
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let authority = match authority.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _password)) => format!("{user}:****@{host}"),
                None => format!("{userinfo}@{host}"),
            },
            None => authority.to_owned(),
        };
        // Query strings may carry `password=`; keep them out of logs entirely.
        let tail = match tail.find('?') {
            Some(q) => format!("{}?…", &tail[..q]),
            None => tail.to_owned(),
        };
        Ok(SecretUrl {
            raw: raw.to_owned(),
            redacted: format!("{scheme}://{authority}{tail}"),
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
        let sock =
            SecretUrl::parse_database("postgresql://root@/db?host=/var/run/postgresql").unwrap();
        assert_eq!(sock.to_string(), "postgresql://root@/db?…");
        assert_eq!(
            SecretUrl::parse_redis("unix:///run/redis.sock")
                .unwrap()
                .to_string(),
            "unix:///run/redis.sock"
        );
        assert_eq!(
            SecretUrl::parse_redis("redis://:p@ss:w@h:1/0")
                .unwrap()
                .to_string(),
            "redis://:****@h:1/0"
        );
    }
}
