//! The rules `serve` checks before it listens: bearer tokens never cross a network in clear by
//! default, and a server never runs open to anyone but this host. Each refusal is one line for
//! the operator (the CLI exits 2 with it).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use janitor_config::ApiSettings;

/// How `serve` runs: `[api]` with the command line's overrides.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Where to listen (`--bind`, else `[api] bind`).
    pub bind: SocketAddr,
    /// `--insecure-no-auth`: no credentials at all (loopback only).
    pub insecure_no_auth: bool,
    /// `[api] tls_cert` and `tls_key`.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// `[api] allow_plain_http`.
    pub allow_plain_http: bool,
    /// Reads (GET) taking longer are answered `504 timeout` (cleanups and restores are never
    /// cut short). `None`: the settings' grace period plus a minute, at least two minutes.
    pub request_timeout: Option<Duration>,
    /// Largest request body accepted.
    pub body_limit: usize,
}

/// Largest request body by default: the bodies are a few small fields and a list of task ids.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

impl ServeOptions {
    /// From `[api]`; `bind` (the `--bind` flag) overrides `[api] bind`.
    pub fn from_settings(
        api: &ApiSettings,
        bind: Option<SocketAddr>,
        insecure_no_auth: bool,
    ) -> Self {
        ServeOptions {
            bind: bind.unwrap_or(api.bind),
            insecure_no_auth,
            tls: api.tls_cert.clone().zip(api.tls_key.clone()),
            allow_plain_http: api.allow_plain_http,
            request_timeout: None,
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }
}

/// Why `serve` refuses to start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartupError {
    #[error(
        "no API credentials are configured: add an [[api.tokens]] table (celery-janitor token new \
         --name NAME --role admin prints one) or [api.jwt]; --insecure-no-auth serves without \
         authentication on a loopback address only"
    )]
    NoCredentials,
    #[error("--insecure-no-auth is refused on {0}, which is not a loopback address")]
    OpenOnNetwork(SocketAddr),
    #[error(
        "refusing plain HTTP on {0}, which is not a loopback address: bearer tokens would cross \
         the network in clear. Set [api] tls_cert and tls_key, or [api] allow_plain_http = true \
         behind a TLS-terminating proxy"
    )]
    PlainHttpOnNetwork(SocketAddr),
    #[error("cannot load the TLS certificate or key ([api] tls_cert, tls_key): {0}")]
    Tls(String),
    #[error("{0}")]
    Auth(String),
    #[error("cannot listen on {addr}: {message}")]
    Bind { addr: SocketAddr, message: String },
}

/// Checks the start-up rules: credentials exist unless `insecure_no_auth`, which needs a loopback
/// bind; a non-loopback bind needs TLS or `allow_plain_http`.
pub fn check_bind(o: &ServeOptions, has_credentials: bool) -> Result<(), StartupError> {
    let loopback = o.bind.ip().is_loopback();
    if o.insecure_no_auth {
        if !loopback {
            return Err(StartupError::OpenOnNetwork(o.bind));
        }
    } else if !has_credentials {
        return Err(StartupError::NoCredentials);
    }
    if !loopback && o.tls.is_none() && !o.allow_plain_http {
        return Err(StartupError::PlainHttpOnNetwork(o.bind));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(bind: &str, open: bool, tls: bool, plain: bool) -> ServeOptions {
        ServeOptions {
            bind: bind.parse().unwrap(),
            insecure_no_auth: open,
            tls: tls.then(|| ("c.pem".into(), "k.pem".into())),
            allow_plain_http: plain,
            request_timeout: None,
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }

    #[test]
    fn without_credentials_only_an_open_loopback_server_starts() {
        assert_eq!(
            check_bind(&opts("127.0.0.1:8000", false, false, false), false),
            Err(StartupError::NoCredentials)
        );
        assert_eq!(
            check_bind(&opts("127.0.0.1:8000", true, false, false), false),
            Ok(())
        );
        assert_eq!(
            check_bind(&opts("[::1]:8000", true, false, false), false),
            Ok(())
        );
        for addr in ["0.0.0.0:8000", "192.0.2.7:8000", "[::]:8000"] {
            assert!(matches!(
                check_bind(&opts(addr, true, true, true), false),
                Err(StartupError::OpenOnNetwork(_))
            ));
            assert!(matches!(
                check_bind(&opts(addr, true, true, true), true),
                Err(StartupError::OpenOnNetwork(_))
            ));
        }
    }

    #[test]
    fn a_network_bind_needs_tls_or_an_explicit_plain_http() {
        assert!(matches!(
            check_bind(&opts("0.0.0.0:8000", false, false, false), true),
            Err(StartupError::PlainHttpOnNetwork(_))
        ));
        assert_eq!(
            check_bind(&opts("0.0.0.0:8000", false, true, false), true),
            Ok(())
        );
        assert_eq!(
            check_bind(&opts("0.0.0.0:8000", false, false, true), true),
            Ok(())
        );
        assert_eq!(
            check_bind(&opts("127.0.0.1:8000", false, false, false), true),
            Ok(())
        );
    }

    #[test]
    fn every_refusal_is_one_line() {
        for e in [
            StartupError::NoCredentials,
            StartupError::OpenOnNetwork("0.0.0.0:1".parse().unwrap()),
            StartupError::PlainHttpOnNetwork("0.0.0.0:1".parse().unwrap()),
            StartupError::Tls("x".into()),
        ] {
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }
}
