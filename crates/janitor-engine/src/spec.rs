//! [`ValueSpec`]: what a cleanup plan keeps of an entry's bytes instead of the bytes — their
//! SHA-1, their length and a locator — so a plan's memory does not grow with the size of the
//! messages it will remove. The removal scripts compare the value they find with the spec
//! exactly (`cj_is` in `../lua/checks.lua`): length, locator, then the digest.

use serde::{Serialize, Serializer};

/// The spec of one value: enough to recognise its exact bytes, never the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct ValueSpec {
    digest: [u8; 20],
    len: u64,
    /// The task id, when it appears as plain text in the bytes: a script tries it (a cheap
    /// substring search) before hashing an element of the same length.
    locator: Option<Box<str>>,
}

impl ValueSpec {
    pub fn of(bytes: &[u8], task_id: Option<&str>) -> Self {
        let locator = task_id
            .filter(|id| !id.is_empty() && contains(bytes, id.as_bytes()))
            .map(Box::from);
        ValueSpec {
            digest: sha1_smol::Sha1::from(bytes).digest().bytes(),
            len: bytes.len() as u64,
            locator,
        }
    }

    /// The SHA-1 of the bytes, as Redis's `redis.sha1hex` writes it.
    pub fn digest_hex(&self) -> String {
        self.digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The argument a removal script takes: `<sha1 hex>:<length>:<locator>`.
    pub(crate) fn to_arg(&self) -> String {
        format!(
            "{}:{}:{}",
            self.digest_hex(),
            self.len,
            self.locator.as_deref().unwrap_or("")
        )
    }
}

impl std::fmt::Debug for ValueSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ValueSpec({})", self.to_arg())
    }
}

impl Serialize for ValueSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_arg())
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.len() <= haystack.len() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_matches_redis_sha1hex_format() {
        let spec = ValueSpec::of(b"abc", None);
        assert_eq!(spec.to_arg(), "a9993e364706816aba3e25717850c26c9cd0d89d:3:");
    }

    #[test]
    fn locator_only_when_the_task_id_is_in_the_bytes() {
        let raw = br#"{"headers": {"id": "5d9e"}}"#;
        assert!(ValueSpec::of(raw, Some("5d9e")).to_arg().ends_with(":5d9e"));
        assert!(ValueSpec::of(raw, Some("ffff")).to_arg().ends_with(':'));
        assert!(ValueSpec::of(raw, Some("")).to_arg().ends_with(':'));
    }
}
