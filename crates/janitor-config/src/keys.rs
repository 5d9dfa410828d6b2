//! The keys the config file accepts, read from the same serde definitions that parse it, so a
//! list of them (docs/cli.md's example is checked against it) can't drift from the parser.
//!
//! serde's derived `Deserialize` of a struct hands its field names to the deserializer
//! (`deserialize_struct(name, fields, visitor)`); [`fields_of`] asks for them and stops there.

use serde::de::{self, Deserialize, Visitor};

use crate::api::{ApiSection, ApiTokenFile, JwtSection};
use crate::owners::OwnerRuleFile;
use crate::{
    ArchiveSection, CleanupSection, DatabaseSection, FileConfig, GuardSection, LoggingSection,
    RedisSection, RevokeSection,
};

/// `[api]`'s sub-tables, listed as sections of their own (`[[api.tokens]]`, `[api.jwt]`), as a
/// TOML file writes them.
const API_TABLES: [&str; 2] = ["tokens", "jwt"];

/// Every key the config file accepts, by section, in the order they are declared: the
/// `[redis]`, `[database]`, `[cleanup]`, `[logging]`, `[archive]`, `[guard]` and `[revoke]`
/// tables, the keys of each `[[owners]]` table, and `[api]` with its `[[api.tokens]]` and
/// `[api.jwt]` tables.
pub fn file_keys() -> Vec<(&'static str, Vec<&'static str>)> {
    fields_of::<FileConfig>()
        .iter()
        .flat_map(|&section| {
            let keys = match section {
                "redis" => fields_of::<RedisSection>(),
                "database" => fields_of::<DatabaseSection>(),
                "cleanup" => fields_of::<CleanupSection>(),
                "logging" => fields_of::<LoggingSection>(),
                "archive" => fields_of::<ArchiveSection>(),
                "guard" => fields_of::<GuardSection>(),
                "revoke" => fields_of::<RevokeSection>(),
                "owners" => fields_of::<OwnerRuleFile>(),
                "api" => {
                    let own = fields_of::<ApiSection>()
                        .iter()
                        .copied()
                        .filter(|k| !API_TABLES.contains(k))
                        .collect();
                    return vec![
                        ("api", own),
                        ("api.tokens", fields_of::<ApiTokenFile>().to_vec()),
                        ("api.jwt", fields_of::<JwtSection>().to_vec()),
                    ];
                }
                other => panic!("FileConfig has a section `{other}` that file_keys() lacks"),
            };
            vec![(section, keys.to_vec())]
        })
        .collect()
}

/// The field names a derived `Deserialize` struct accepts.
fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut probe = FieldProbe(None);
    let _ = T::deserialize(&mut probe);
    probe
        .0
        .expect("a struct with a derived Deserialize asks for its fields")
}

/// A deserializer that records the field names it is asked for and fails every request.
struct FieldProbe(Option<&'static [&'static str]>);

#[derive(Debug)]
struct Stop;

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("field names probed")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<M: std::fmt::Display>(_: M) -> Self {
        Stop
    }
}

impl<'de> de::Deserializer<'de> for &mut FieldProbe {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Stop> {
        self.0 = Some(fields);
        Err(Stop)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_key_parses_and_nothing_else_does() {
        let keys = file_keys();
        assert_eq!(
            keys.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            [
                "redis",
                "database",
                "cleanup",
                "logging",
                "archive",
                "guard",
                "revoke",
                "owners",
                "api",
                "api.tokens",
                "api.jwt"
            ]
        );
        for (section, fields) in &keys {
            assert!(!fields.is_empty(), "{section}");
            let header = if *section == "owners" {
                "[[owners]]\ntable = \"t\"\nid_column = \"id\"\ntasks = [\"a\"]\nid_from = \"arg:0\"\n"
                    .to_owned()
            } else if *section == "api.tokens" {
                "[[api.tokens]]\n".to_owned()
            } else {
                format!("[{section}]\n")
            };
            let unknown = format!("{header}no_such_key = 1\n");
            let err = crate::parse_file(&unknown).unwrap_err();
            for field in fields {
                assert!(
                    err.contains(&format!("`{field}`")),
                    "{section}.{field}: {err}"
                );
            }
        }
    }
}
