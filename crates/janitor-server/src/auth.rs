//! Who is calling, and what they may do: bearer API tokens (`[[api.tokens]]`, kept only as
//! SHA-256 digests and compared in constant time) and the host application's JWTs (`[api.jwt]`:
//! signature, `exp`, `nbf`, audience and issuer checked; the role from a claim). The token and
//! the JWT secret never reach a log line, an error or a response.

use janitor_config::{
    ApiRole, ApiSettings, ApiToken, ClaimRule, JwtAlgorithm, JwtKeySource, JwtSettings,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Seconds of clock skew allowed on `exp` and `nbf`.
pub const JWT_LEEWAY_SECONDS: u64 = 30;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The token's name, or the JWT's `sub`: the actor of the audit log.
    pub name: String,
    pub role: ApiRole,
    pub via: Credential,
}

/// How the caller authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    ApiToken,
    Jwt,
    /// `--insecure-no-auth`: nobody was asked.
    None,
}

impl Credential {
    pub fn as_str(self) -> &'static str {
        match self {
            Credential::ApiToken => "token",
            Credential::Jwt => "jwt",
            Credential::None => "none",
        }
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 401: no credential, or one that is not valid (unknown token, bad signature, expired…).
    Unauthorized(&'static str),
    /// 403: a valid JWT that grants no role.
    Forbidden(&'static str),
}

/// Setting up authentication failed (at start-up).
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("[api.jwt] secret_env names {0}, which is not set or empty")]
    MissingSecret(String),
    #[error("cannot read [api.jwt] public_key_file {path}: {message}")]
    PublicKey { path: String, message: String },
}

/// Checks credentials against the configured tokens and JWT key.
pub struct Authenticator {
    tokens: Vec<ApiToken>,
    jwt: Option<JwtVerifier>,
    /// `--insecure-no-auth`: every caller is an anonymous admin.
    open: bool,
}

struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    admin: ClaimRule,
    viewer: Option<ClaimRule>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("tokens", &self.tokens.len())
            .field("jwt", &self.jwt.is_some())
            .field("open", &self.open)
            .finish()
    }
}

/// The SHA-256 of a token, as `[[api.tokens]] sha256` holds it (64 lowercase hex digits).
pub fn token_digest_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Authenticator {
    /// From `[api]`; the HS256 secret is read from the environment through `get_env`.
    pub fn from_settings(
        api: &ApiSettings,
        get_env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, AuthSetupError> {
        let jwt = api
            .jwt
            .as_ref()
            .map(|j| JwtVerifier::new(j, get_env))
            .transpose()?;
        Ok(Authenticator {
            tokens: api.tokens.clone(),
            jwt,
            open: false,
        })
    }

    /// Lets every caller in as an anonymous admin (`--insecure-no-auth`, loopback only).
    pub fn open() -> Self {
        Authenticator {
            tokens: Vec::new(),
            jwt: None,
            open: true,
        }
    }

    /// A token or a JWT key is configured.
    pub fn has_credentials(&self) -> bool {
        !self.tokens.is_empty() || self.jwt.is_some()
    }

    /// The `Authorization` header's value checked: `Bearer <token or JWT>`.
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Actor, Refusal> {
        if self.open {
            return Ok(Actor {
                name: "anonymous".into(),
                role: ApiRole::Admin,
                via: Credential::None,
            });
        }
        let Some(header) = authorization else {
            return Err(Refusal::Unauthorized(
                "missing bearer token (Authorization: Bearer <token>)",
            ));
        };
        let token = std::str::from_utf8(header)
            .ok()
            .and_then(|h| {
                let (scheme, rest) = h.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or(Refusal::Unauthorized(
                "malformed Authorization header (expected: Bearer <token>)",
            ))?;
        if let Some(actor) = self.match_token(token) {
            return Ok(actor);
        }
        match &self.jwt {
            Some(jwt) if token.matches('.').count() == 2 => jwt.verify(token),
            _ => Err(Refusal::Unauthorized("invalid or expired bearer token")),
        }
    }

    /// The configured token whose digest is the token's, comparing every digest in constant
    /// time.
    fn match_token(&self, token: &str) -> Option<Actor> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for t in &self.tokens {
            if bool::from(t.sha256.ct_eq(&digest)) {
                found = Some(t);
            }
        }
        found.map(|t| Actor {
            name: t.name.clone(),
            role: t.role,
            via: Credential::ApiToken,
        })
    }
}

impl JwtVerifier {
    fn new(
        j: &JwtSettings,
        get_env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, AuthSetupError> {
        let algorithm = match j.algorithm {
            JwtAlgorithm::Hs256 => Algorithm::HS256,
            JwtAlgorithm::Rs256 => Algorithm::RS256,
        };
        // The config pairs HS256 with secret_env and RS256 with public_key_file.
        let key = match &j.key {
            JwtKeySource::SecretEnv(var) => {
                let secret = get_env(var)
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| AuthSetupError::MissingSecret(var.clone()))?;
                DecodingKey::from_secret(secret.as_bytes())
            }
            JwtKeySource::PublicKeyFile(path) => {
                let unreadable = |message: String| AuthSetupError::PublicKey {
                    path: path.display().to_string(),
                    message,
                };
                let pem = std::fs::read(path).map_err(|e| unreadable(e.to_string()))?;
                DecodingKey::from_rsa_pem(&pem).map_err(|e| unreadable(e.to_string()))?
            }
        };
        // Only the configured algorithm: a token can't choose another (or `none`).
        let mut validation = Validation::new(algorithm);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = JWT_LEEWAY_SECONDS;
        match &j.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &j.issuer {
            validation.set_issuer(&[iss]);
        }
        Ok(JwtVerifier {
            key,
            validation,
            admin: j.admin_claim.clone(),
            viewer: j.viewer_claim.clone(),
        })
    }

    fn verify(&self, token: &str) -> Result<Actor, Refusal> {
        let claims = jsonwebtoken::decode::<Value>(token, &self.key, &self.validation)
            .map_err(|e| {
                tracing::debug!(kind = ?e.kind(), "JWT refused");
                Refusal::Unauthorized("invalid or expired bearer token")
            })?
            .claims;
        let role = if claim_matches(&claims, &self.admin) {
            ApiRole::Admin
        } else if self
            .viewer
            .as_ref()
            .is_some_and(|v| claim_matches(&claims, v))
        {
            ApiRole::Viewer
        } else {
            return Err(Refusal::Forbidden(
                "the token is valid but grants no role here (no admin or viewer claim)",
            ));
        };
        let name = match claims.get("sub") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => "(jwt without sub)".to_owned(),
        };
        Ok(Actor {
            name,
            role,
            via: Credential::Jwt,
        })
    }
}

/// The claim at the rule's dotted path equals the rule's value (as JSON; numbers by value), or is
/// an array holding it.
pub fn claim_matches(claims: &Value, rule: &ClaimRule) -> bool {
    let mut at = claims;
    for part in &rule.path {
        match at.get(part) {
            Some(next) => at = next,
            None => return false,
        }
    }
    json_eq(at, &rule.value)
        || matches!(at, Value::Array(items) if items.iter().any(|i| json_eq(i, &rule.value)))
}

fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "a-test-secret-of-some-length-0123456789";

    fn settings(jwt: bool) -> ApiSettings {
        let text = format!(
            r#"
[[api.tokens]]
name = "ops"
sha256 = "{}"
role = "admin"
[[api.tokens]]
name = "grafana"
sha256 = "{}"
role = "viewer"
{}
"#,
            token_digest_hex("admin-token"),
            token_digest_hex("viewer-token"),
            if jwt {
                "[api.jwt]\nalgorithm = \"HS256\"\nsecret_env = \"JWT_SECRET\"\n\
                 admin_claim = \"realm_access.roles=admin\"\nviewer_claim = \"is_staff=true\"\n\
                 audience = \"janitor\"\nissuer = \"https://auth\"\n"
            } else {
                ""
            }
        );
        janitor_config::resolve_text(
            &text,
            &janitor_config::Flags {
                redis_url: Some("redis://127.0.0.1:1/0".into()),
                ..Default::default()
            },
            &|_| None,
        )
        .unwrap()
        .api
    }

    fn auth() -> Authenticator {
        Authenticator::from_settings(&settings(true), &|k| {
            (k == "JWT_SECRET").then(|| SECRET.to_owned())
        })
        .unwrap()
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn jwt(claims: Value) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn claims(extra: Value) -> Value {
        let mut c =
            json!({"sub": "alice", "aud": "janitor", "iss": "https://auth", "exp": now() + 600});
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        c
    }

    fn bearer(t: &str) -> Vec<u8> {
        format!("Bearer {t}").into_bytes()
    }

    #[test]
    fn tokens_authenticate_by_digest_with_their_role() {
        let a = auth();
        let admin = a.authenticate(Some(&bearer("admin-token"))).unwrap();
        assert_eq!((admin.name.as_str(), admin.role), ("ops", ApiRole::Admin));
        let viewer = a.authenticate(Some(b"bearer   viewer-token ")).unwrap();
        assert_eq!(viewer.role, ApiRole::Viewer);
        for bad in [
            None,
            Some(&b"admin-token"[..]),
            Some(&b"Basic admin-token"[..]),
            Some(&b"Bearer "[..]),
            Some(&b"Bearer admin-token2"[..]),
            Some(&b"Bearer \xff"[..]),
        ] {
            assert!(
                matches!(a.authenticate(bad), Err(Refusal::Unauthorized(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn jwts_need_a_valid_signature_time_audience_issuer_and_a_role_claim() {
        let a = auth();
        let admin = a
            .authenticate(Some(&bearer(&jwt(claims(
                json!({"realm_access": {"roles": ["user", "admin"]}}),
            )))))
            .unwrap();
        assert_eq!(admin.name, "alice");
        assert_eq!((admin.role, admin.via), (ApiRole::Admin, Credential::Jwt));
        let viewer = a
            .authenticate(Some(&bearer(&jwt(claims(json!({"is_staff": true}))))))
            .unwrap();
        assert_eq!(viewer.role, ApiRole::Viewer);

        let no_role = jwt(claims(json!({"is_staff": "true"})));
        assert!(matches!(
            a.authenticate(Some(&bearer(&no_role))),
            Err(Refusal::Forbidden(_))
        ));

        let admin_claim = json!({"realm_access": {"roles": "admin"}});
        let unauthorized = [
            jwt(claims(
                json!({"exp": now() - 3600, "realm_access": {"roles": "admin"}}),
            )),
            jwt(claims(
                json!({"nbf": now() + 3600, "realm_access": {"roles": "admin"}}),
            )),
            jwt(claims(
                json!({"aud": "other", "realm_access": {"roles": "admin"}}),
            )),
            jwt(claims(
                json!({"iss": "https://evil", "realm_access": {"roles": "admin"}}),
            )),
            jwt({
                let mut c = claims(admin_claim.clone());
                c.as_object_mut().unwrap().remove("exp");
                c
            }),
            encode(
                &Header::default(),
                &claims(admin_claim.clone()),
                &EncodingKey::from_secret(b"another secret"),
            )
            .unwrap(),
            encode(
                &Header::new(jsonwebtoken::Algorithm::HS384),
                &claims(admin_claim.clone()),
                &EncodingKey::from_secret(SECRET.as_bytes()),
            )
            .unwrap(),
            "a.b.c".to_owned(),
        ];
        for (i, token) in unauthorized.iter().enumerate() {
            assert!(
                matches!(
                    a.authenticate(Some(&bearer(token))),
                    Err(Refusal::Unauthorized(_))
                ),
                "case {i}"
            );
        }
    }

    #[test]
    fn rs256_jwts_are_checked_against_the_public_key_file() {
        let keys = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys");
        let text = format!(
            "[api.jwt]\nalgorithm = \"RS256\"\npublic_key_file = \"{}\"\nadmin_claim = \"role=admin\"\n",
            keys.join("test-only-rsa-public.pem").display()
        );
        let api = janitor_config::resolve_text(
            &text,
            &janitor_config::Flags {
                redis_url: Some("redis://127.0.0.1:1/0".into()),
                ..Default::default()
            },
            &|_| None,
        )
        .unwrap()
        .api;
        let a = Authenticator::from_settings(&api, &|_| None).unwrap();
        let private = std::fs::read(keys.join("test-only-rsa-private.pem")).unwrap();
        let sign = |header: Header, key: &EncodingKey| {
            encode(
                &header,
                &json!({"sub": "svc", "role": "admin", "exp": now() + 60}),
                key,
            )
            .unwrap()
        };
        let rsa = EncodingKey::from_rsa_pem(&private).unwrap();
        let actor = a
            .authenticate(Some(&bearer(&sign(Header::new(Algorithm::RS256), &rsa))))
            .unwrap();
        assert_eq!((actor.name.as_str(), actor.role), ("svc", ApiRole::Admin));
        // The public key used as an HMAC secret (algorithm confusion) is refused.
        let public = std::fs::read(keys.join("test-only-rsa-public.pem")).unwrap();
        let forged = sign(
            Header::new(Algorithm::HS256),
            &EncodingKey::from_secret(&public),
        );
        assert!(matches!(
            a.authenticate(Some(&bearer(&forged))),
            Err(Refusal::Unauthorized(_))
        ));
        let bad = janitor_config::JwtSettings {
            key: JwtKeySource::PublicKeyFile(keys.join("README.md")),
            ..api.jwt.clone().unwrap()
        };
        let api = ApiSettings {
            jwt: Some(bad),
            ..api
        };
        assert!(matches!(
            Authenticator::from_settings(&api, &|_| None),
            Err(AuthSetupError::PublicKey { .. })
        ));
    }

    #[test]
    fn a_jwt_is_refused_when_no_jwt_key_is_configured() {
        let a = Authenticator::from_settings(&settings(false), &|_| None).unwrap();
        let token = jwt(claims(json!({"realm_access": {"roles": "admin"}})));
        assert!(matches!(
            a.authenticate(Some(&bearer(&token))),
            Err(Refusal::Unauthorized(_))
        ));
    }

    #[test]
    fn a_missing_secret_is_a_setup_error_that_names_the_variable_only() {
        let err = Authenticator::from_settings(&settings(true), &|_| None).unwrap_err();
        assert!(err.to_string().contains("JWT_SECRET"), "{err}");
    }

    #[test]
    fn claims_match_by_json_value_or_array_containment() {
        let rule = |t: &str| ClaimRule::parse("k", t).unwrap();
        let c = json!({"is_superuser": true, "level": 3, "role": "admin",
                       "groups": ["a", 7], "nested": {"deep": {"x": "y"}}});
        assert!(claim_matches(&c, &rule("is_superuser=true")));
        assert!(!claim_matches(&c, &rule("is_superuser=\"true\"")));
        assert!(claim_matches(&c, &rule("level=3")));
        assert!(claim_matches(&c, &rule("level=3.0")));
        assert!(claim_matches(&c, &rule("role=admin")));
        assert!(claim_matches(&c, &rule("role=\"admin\"")));
        assert!(claim_matches(&c, &rule("groups=a")));
        assert!(claim_matches(&c, &rule("groups=7")));
        assert!(!claim_matches(&c, &rule("groups=b")));
        assert!(claim_matches(&c, &rule("nested.deep.x=y")));
        assert!(!claim_matches(&c, &rule("nested.deep=y")));
        assert!(!claim_matches(&c, &rule("missing=true")));
    }

    #[test]
    fn open_mode_lets_anyone_in_as_admin() {
        let actor = Authenticator::open().authenticate(None).unwrap();
        assert_eq!((actor.role, actor.via), (ApiRole::Admin, Credential::None));
    }

    #[test]
    fn the_debug_form_shows_no_digest() {
        let shown = format!("{:?}", auth());
        assert!(
            !shown.contains(&token_digest_hex("admin-token")[..8]),
            "{shown}"
        );
    }
}
