//! The `[api]` section: the HTTP server's listener, its credentials (`[[api.tokens]]`, `[api.jwt]`)
//! and its limits, parsed and validated here like every other key. Tokens are held only as
//! SHA-256 digests; the JWT secret is never in the file, only the name of the variable holding it.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::Deserialize;

use crate::{invalid, ConfigError};

/// Defaults of the `[api]` keys.
pub mod api_defaults {
    pub const BIND: &str = "127.0.0.1:8000";
    pub const PURGE_MAX: u64 = 100_000;
    pub const REFRESH_SECONDS: f64 = 300.0;
}

/// `[api]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// Address `serve` listens on (default `127.0.0.1:8000`; `--bind` overrides it).
    pub bind: Option<String>,
    /// `[[api.tokens]]`: bearer tokens, each stored as its SHA-256 digest.
    pub tokens: Option<Vec<ApiTokenFile>>,
    /// `[api.jwt]`: accept the host application's JWTs.
    pub jwt: Option<JwtSection>,
    /// A queue purge removing more messages than this needs `"force": true` (default 100000).
    pub purge_max: Option<u64>,
    /// Seconds between refreshes of the cached metrics figures (default 300).
    pub refresh_seconds: Option<f64>,
    /// Proxies (IP addresses or CIDR ranges) whose `X-Forwarded-For` is trusted.
    pub trusted_proxies: Option<Vec<String>>,
    /// PEM certificate chain: serve HTTPS (with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address (behind a TLS-terminating proxy).
    pub allow_plain_http: Option<bool>,
    /// Serve `/metrics` without authentication on this separate address.
    pub metrics_bind: Option<String>,
}

/// One `[[api.tokens]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiTokenFile {
    /// Shows up as the actor in the audit log.
    pub name: String,
    /// SHA-256 of the token, 64 hex digits (`celery-janitor token new` prints it).
    pub sha256: String,
    /// `admin` (everything) or `viewer` (GET only).
    pub role: ApiRole,
}

/// What a credential may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiRole {
    /// Every endpoint.
    Admin,
    /// Only reads (GET).
    Viewer,
}

impl ApiRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiRole::Admin => "admin",
            ApiRole::Viewer => "viewer",
        }
    }
}

/// `[api.jwt]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSection {
    /// `HS256` or `RS256`.
    pub algorithm: Option<String>,
    /// HS256: the environment variable holding the shared secret.
    pub secret_env: Option<String>,
    /// RS256: PEM file of the public key.
    pub public_key_file: Option<PathBuf>,
    /// `path=value` a claim must match to be an admin (e.g. `is_superuser=true`).
    pub admin_claim: Option<String>,
    /// `path=value` a claim must match to be a viewer.
    pub viewer_claim: Option<String>,
    /// Checked against the `aud` claim when set.
    pub audience: Option<String>,
    /// Checked against the `iss` claim when set.
    pub issuer: Option<String>,
}

/// A configured API token.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub name: String,
    /// SHA-256 digest of the token.
    pub sha256: [u8; 32],
    pub role: ApiRole,
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiToken")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// JWT signature algorithms accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAlgorithm {
    Hs256,
    Rs256,
}

/// Where the JWT verification key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtKeySource {
    /// HS256: the secret is in this environment variable (read when the server starts).
    SecretEnv(String),
    /// RS256: the public key is in this PEM file.
    PublicKeyFile(PathBuf),
}

/// A claim test, `path=value`: `path` is dotted (`realm_access.roles`), `value` is JSON when it
/// parses as JSON (`true`, `3`, `"x"`) and a string otherwise (`admin`).
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimRule {
    pub path: Vec<String>,
    pub value: serde_json::Value,
}

impl ClaimRule {
    pub fn parse(key: &str, text: &str) -> Result<Self, ConfigError> {
        let (path, value) = text
            .split_once('=')
            .ok_or_else(|| invalid(key, format!("expected \"path=value\", got {text:?}")))?;
        let path: Vec<String> = path.trim().split('.').map(str::to_owned).collect();
        if path.iter().any(|p| p.is_empty()) {
            return Err(invalid(
                key,
                format!("the claim path of {text:?} is empty or has an empty part"),
            ));
        }
        let value = value.trim();
        let value = serde_json::from_str(value)
            .unwrap_or_else(|_| serde_json::Value::String(value.to_owned()));
        Ok(ClaimRule { path, value })
    }
}

/// `[api.jwt]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtSettings {
    pub algorithm: JwtAlgorithm,
    pub key: JwtKeySource,
    pub admin_claim: ClaimRule,
    pub viewer_claim: Option<ClaimRule>,
    pub audience: Option<String>,
    pub issuer: Option<String>,
}

/// An address or CIDR range of trusted proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpRange {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR range"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?} has an invalid prefix length"))?,
        };
        Ok(IpRange { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            _ => ip,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// `[api]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiSettings {
    pub bind: SocketAddr,
    pub tokens: Vec<ApiToken>,
    pub jwt: Option<JwtSettings>,
    pub purge_max: u64,
    pub refresh_seconds: f64,
    pub trusted_proxies: Vec<IpRange>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub allow_plain_http: bool,
    pub metrics_bind: Option<SocketAddr>,
}

impl Default for ApiSettings {
    fn default() -> Self {
        resolve_api(&ApiSection::default(), &|p| p.clone()).expect("the defaults are valid")
    }
}

/// Parses an address to listen on (`127.0.0.1:8000`, `[::1]:8000`).
pub fn parse_bind(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.trim().parse().map_err(|_| {
        invalid(
            key,
            format!("expected an address and port such as 127.0.0.1:8000, got {text:?}"),
        )
    })
}

/// Validates `[api]`; relative paths go through `in_file_dir` (next to the config file).
pub(crate) fn resolve_api(
    a: &ApiSection,
    in_file_dir: &dyn Fn(&PathBuf) -> PathBuf,
) -> Result<ApiSettings, ConfigError> {
    let bind = parse_bind("api.bind", a.bind.as_deref().unwrap_or(api_defaults::BIND))?;
    let metrics_bind = a
        .metrics_bind
        .as_deref()
        .map(|m| parse_bind("api.metrics_bind", m))
        .transpose()?;
    let mut tokens: Vec<ApiToken> = Vec::new();
    for t in a.tokens.iter().flatten() {
        if t.name.trim().is_empty() {
            return Err(invalid("api.tokens.name", "must not be empty"));
        }
        if tokens.iter().any(|o| o.name == t.name) {
            return Err(invalid(
                "api.tokens.name",
                format!("{:?} is used by two tokens", t.name),
            ));
        }
        let sha256 = parse_digest(&t.sha256).ok_or_else(|| {
            invalid(
                format!("api.tokens.sha256 (token {:?})", t.name),
                "must be 64 hex digits (the SHA-256 of the token)",
            )
        })?;
        tokens.push(ApiToken {
            name: t.name.clone(),
            sha256,
            role: t.role,
        });
    }
    let jwt = a
        .jwt
        .as_ref()
        .map(|j| resolve_jwt(j, in_file_dir))
        .transpose()?;
    let refresh_seconds = a.refresh_seconds.unwrap_or(api_defaults::REFRESH_SECONDS);
    if !(refresh_seconds.is_finite() && (1.0..=86_400.0).contains(&refresh_seconds)) {
        return Err(invalid(
            "api.refresh_seconds",
            "must be a number of seconds from 1 to 86400",
        ));
    }
    let trusted_proxies = a
        .trusted_proxies
        .iter()
        .flatten()
        .map(|p| IpRange::parse(p).map_err(|m| invalid("api.trusted_proxies", m)))
        .collect::<Result<_, _>>()?;
    let (tls_cert, tls_key) = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => (Some(in_file_dir(c)), Some(in_file_dir(k))),
        (None, None) => (None, None),
        _ => {
            return Err(invalid(
                "api.tls_cert",
                "tls_cert and tls_key go together: set both or neither",
            ))
        }
    };
    Ok(ApiSettings {
        bind,
        tokens,
        jwt,
        purge_max: a.purge_max.unwrap_or(api_defaults::PURGE_MAX),
        refresh_seconds,
        trusted_proxies,
        tls_cert,
        tls_key,
        allow_plain_http: a.allow_plain_http.unwrap_or(false),
        metrics_bind,
    })
}

fn parse_digest(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn resolve_jwt(
    j: &JwtSection,
    in_file_dir: &dyn Fn(&PathBuf) -> PathBuf,
) -> Result<JwtSettings, ConfigError> {
    let algorithm = match j.algorithm.as_deref().map(str::trim) {
        Some("HS256") => JwtAlgorithm::Hs256,
        Some("RS256") => JwtAlgorithm::Rs256,
        Some(other) => {
            return Err(invalid(
                "api.jwt.algorithm",
                format!("must be \"HS256\" or \"RS256\", got {other:?}"),
            ))
        }
        None => return Err(invalid("api.jwt.algorithm", "must be set (HS256 or RS256)")),
    };
    let key = match (algorithm, &j.secret_env, &j.public_key_file) {
        (JwtAlgorithm::Hs256, Some(var), None) if !var.trim().is_empty() => {
            JwtKeySource::SecretEnv(var.trim().to_owned())
        }
        (JwtAlgorithm::Rs256, None, Some(path)) => JwtKeySource::PublicKeyFile(in_file_dir(path)),
        (JwtAlgorithm::Hs256, ..) => {
            return Err(invalid(
                "api.jwt.secret_env",
                "HS256 needs secret_env (the variable holding the secret) and no public_key_file",
            ))
        }
        (JwtAlgorithm::Rs256, ..) => {
            return Err(invalid(
                "api.jwt.public_key_file",
                "RS256 needs public_key_file (a PEM public key) and no secret_env",
            ))
        }
    };
    let admin_claim = match &j.admin_claim {
        Some(text) => ClaimRule::parse("api.jwt.admin_claim", text)?,
        None => {
            return Err(invalid(
                "api.jwt.admin_claim",
                "must be set (e.g. \"is_superuser=true\"): without it no JWT is an admin",
            ))
        }
    };
    let viewer_claim = j
        .viewer_claim
        .as_deref()
        .map(|t| ClaimRule::parse("api.jwt.viewer_claim", t))
        .transpose()?;
    Ok(JwtSettings {
        algorithm,
        key,
        admin_claim,
        viewer_claim,
        audience: j.audience.clone(),
        issuer: j.issuer.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(text: &str) -> Result<ApiSettings, String> {
        let file = crate::parse_file(text)?;
        resolve_api(&file.api, &|p| p.clone()).map_err(|e| e.to_string())
    }

    #[test]
    fn the_defaults_listen_on_loopback_without_credentials() {
        let a = api("").unwrap();
        assert_eq!(a.bind, "127.0.0.1:8000".parse().unwrap());
        assert!(a.tokens.is_empty() && a.jwt.is_none());
        assert_eq!(a.purge_max, 100_000);
        assert_eq!(a.refresh_seconds, 300.0);
        assert!(!a.allow_plain_http);
        assert_eq!(a, ApiSettings::default());
    }

    #[test]
    fn tokens_and_jwt_parse() {
        let digest = "ab".repeat(32);
        let a = api(&format!(
            r#"
[api]
bind = "0.0.0.0:9000"
trusted_proxies = ["10.0.0.0/8", "::1"]
[[api.tokens]]
name = "ops"
sha256 = "{digest}"
role = "admin"
[[api.tokens]]
name = "grafana"
sha256 = "{}"
role = "viewer"
[api.jwt]
algorithm = "HS256"
secret_env = "CELERY_JANITOR_JWT_SECRET"
admin_claim = "realm_access.roles=admin"
viewer_claim = "is_staff=true"
audience = "janitor"
"#,
            "CD".repeat(32)
        ))
        .unwrap();
        assert_eq!(a.bind.port(), 9000);
        assert_eq!(a.tokens.len(), 2);
        assert_eq!(a.tokens[0].sha256, [0xab; 32]);
        assert_eq!(a.tokens[1].role, ApiRole::Viewer);
        let jwt = a.jwt.unwrap();
        assert_eq!(jwt.admin_claim.path, ["realm_access", "roles"]);
        assert_eq!(jwt.admin_claim.value, serde_json::json!("admin"));
        assert_eq!(
            jwt.viewer_claim.unwrap().value,
            serde_json::Value::Bool(true)
        );
        assert_eq!(a.trusted_proxies.len(), 2);
        assert!(a.trusted_proxies[0].contains("10.1.2.3".parse().unwrap()));
        assert!(!a.trusted_proxies[0].contains("11.1.2.3".parse().unwrap()));
        assert!(a.trusted_proxies[1].contains("::1".parse().unwrap()));
    }

    #[test]
    fn bad_values_are_refused_with_their_key() {
        for (text, key) in [
            ("[api]\nbind = \"localhost\"\n", "api.bind"),
            (
                "[[api.tokens]]\nname = \"a\"\nsha256 = \"abc\"\nrole = \"admin\"\n",
                "api.tokens.sha256",
            ),
            (
                "[api.jwt]\nalgorithm = \"none\"\nadmin_claim = \"a=1\"\n",
                "api.jwt.algorithm",
            ),
            (
                "[api.jwt]\nalgorithm = \"HS256\"\nadmin_claim = \"a=1\"\n",
                "api.jwt.secret_env",
            ),
            (
                "[api.jwt]\nalgorithm = \"HS256\"\nsecret_env = \"S\"\n",
                "api.jwt.admin_claim",
            ),
            (
                "[api.jwt]\nalgorithm = \"HS256\"\nsecret_env = \"S\"\nadmin_claim = \"admin\"\n",
                "api.jwt.admin_claim",
            ),
            ("[api]\ntls_cert = \"c.pem\"\n", "api.tls_cert"),
            (
                "[api]\ntrusted_proxies = [\"10.0.0.0/33\"]\n",
                "api.trusted_proxies",
            ),
            ("[api]\nrefresh_seconds = 0\n", "api.refresh_seconds"),
        ] {
            let err = api(text).unwrap_err();
            assert!(err.contains(key), "{text}: {err}");
        }
        let twice = format!(
            "[[api.tokens]]\nname = \"a\"\nsha256 = \"{0}\"\nrole = \"admin\"\n\
             [[api.tokens]]\nname = \"a\"\nsha256 = \"{0}\"\nrole = \"viewer\"\n",
            "0".repeat(64)
        );
        assert!(api(&twice).unwrap_err().contains("two tokens"));
        let bad_role = format!(
            "[[api.tokens]]\nname = \"a\"\nsha256 = \"{}\"\nrole = \"root\"\n",
            "0".repeat(64)
        );
        assert!(api(&bad_role).is_err());
    }

    #[test]
    fn a_token_digest_never_prints() {
        let t = ApiToken {
            name: "ops".into(),
            sha256: [0xab; 32],
            role: ApiRole::Admin,
        };
        assert!(!format!("{t:?}").contains("ab"), "{t:?}");
    }
}
