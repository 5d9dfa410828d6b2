//! `celery-janitor token new`: a fresh random API token (32 bytes from the OS), shown once, and
//! the `[[api.tokens]]` table holding only its SHA-256, to paste into the config file.

use base64::Engine;
use janitor_config::ApiRole;

use crate::auth::token_digest_hex;

/// Prefix of generated tokens, so secret scanners and people can tell what one is.
pub const TOKEN_PREFIX: &str = "cjt_";

/// A generated token and its config table.
#[derive(Debug)]
pub struct NewToken {
    /// The token: shown once, stored nowhere.
    pub token: String,
    /// The `[[api.tokens]]` TOML table (name, sha256, role).
    pub toml: String,
}

/// Token names: what `[[api.tokens]] name` may hold from the command line (they show in logs).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
}

/// A new token for `name` with `role`.
pub fn new_token(name: &str, role: ApiRole) -> Result<NewToken, String> {
    if !valid_name(name) {
        return Err(format!(
            "invalid token name {name:?}: use 1-64 letters, digits, '-', '_', '.' or '@'"
        ));
    }
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| format!("cannot read random bytes from the OS: {e}"))?;
    let token = format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let toml = format!(
        "[[api.tokens]]\nname = \"{name}\"\nsha256 = \"{}\"\nrole = \"{}\"\n",
        token_digest_hex(&token),
        role.as_str()
    );
    Ok(NewToken { token, toml })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_token_is_random_and_its_table_parses_to_its_digest() {
        let a = new_token("ops", ApiRole::Admin).unwrap();
        let b = new_token("ops", ApiRole::Admin).unwrap();
        assert_ne!(a.token, b.token);
        assert!(a.token.starts_with(TOKEN_PREFIX));
        assert_eq!(a.token.len(), TOKEN_PREFIX.len() + 43);
        assert!(!a.toml.contains(&a.token));
        let settings = janitor_config::resolve_text(
            &a.toml,
            &janitor_config::Flags {
                redis_url: Some("redis://127.0.0.1:1/0".into()),
                ..Default::default()
            },
            &|_| None,
        )
        .unwrap();
        let auth = crate::auth::Authenticator::from_settings(&settings.api, &|_| None).unwrap();
        let actor = auth
            .authenticate(Some(format!("Bearer {}", a.token).as_bytes()))
            .unwrap();
        assert_eq!((actor.name.as_str(), actor.role), ("ops", ApiRole::Admin));
        let viewer = new_token("grafana", ApiRole::Viewer).unwrap();
        assert!(viewer.toml.contains("role = \"viewer\""));
    }

    #[test]
    fn names_that_would_break_the_toml_are_refused() {
        for bad in ["", "a\"b", "a b", "x\n[api]", &"n".repeat(65)] {
            assert!(new_token(bad, ApiRole::Viewer).is_err(), "{bad:?}");
        }
    }
}
