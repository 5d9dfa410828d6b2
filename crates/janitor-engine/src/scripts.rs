//! One typed wrapper per removal script (`../lua/*.lua`): the arguments go in as Rust values,
//! the reply comes back as typed outcomes, and a reply of the wrong length is an error — never
//! a silent "gone" (the archive stream holds whatever a call removed).
//!
//! The wrappers only call; what a run does with the outcomes (archive file, audit, revokes,
//! counts) is `apply.rs`'s business.

use redis::aio::MultiplexedConnection;
use redis::{Script, Value};

use crate::archive::printable;
use crate::error::{EngineError, Result};
use crate::redis_io::WrongTypeReply;
use crate::spec::ValueSpec;

/// A script that writes, with the shared pre-write checks (`../lua/checks.lua`) in front.
macro_rules! checked_script {
    ($file:literal) => {
        Script::new(concat!(
            include_str!("../lua/checks.lua"),
            include_str!(concat!("../lua/", $file))
        ))
    };
}

/// Every script the engine runs, loaded once.
pub(crate) struct Scripts {
    pub(crate) remove_list: RemoveListEntries,
    pub(crate) remove_unacked: RemoveUnacked,
    pub(crate) remove_results: RemoveResults,
    pub(crate) restore: RestoreEntry,
    /// `guard_record.lua`: one guard event, counted, streamed and (its result) archived.
    pub(crate) guard_record: Script,
    /// `lock.lua`: refresh or release a lock by compare-and-set.
    pub(crate) lock: Script,
}

impl Scripts {
    pub(crate) fn load() -> Self {
        Scripts {
            remove_list: RemoveListEntries(checked_script!("remove_list_entries.lua")),
            remove_unacked: RemoveUnacked(checked_script!("remove_unacked_entries.lua")),
            remove_results: RemoveResults(checked_script!("remove_results.lua")),
            restore: RestoreEntry(checked_script!("restore_entry.lua")),
            guard_record: checked_script!("guard_record.lua"),
            lock: Script::new(include_str!("../lua/lock.lua")),
        }
    }
}

/// What every removal call writes besides its targets: the archive stream and the lock check.
pub(crate) struct Common<'a> {
    pub(crate) archive: &'a [u8],
    pub(crate) lock_key: &'a [u8],
    pub(crate) lock_token: &'a str,
    /// Approximate cap of the archive stream.
    pub(crate) archive_maxlen: u64,
}

/// Work caps of one list-removal call: elements and bytes compared.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SearchBudget {
    pub(crate) elements: i64,
    pub(crate) bytes: i64,
}

/// One message to remove from a list (see `remove_list_entries.lua` for the position model).
pub(crate) struct ListTarget<'a> {
    /// Distance from the tail when read, less this run's removals nearer the tail.
    pub(crate) from_tail: i64,
    /// Where to resume: pops to try first, or `-1 - position` to go on with the head sweep.
    pub(crate) resume: i64,
    /// Index from the head when read.
    pub(crate) index: i64,
    pub(crate) spec: &'a ValueSpec,
    /// Archive metadata (JSON).
    pub(crate) meta: String,
}

/// One entry a script removed: its archive id and the exact bytes it archived (a plan holds
/// only their spec; the archive file is written from these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Removed {
    pub(crate) archive_id: String,
    pub(crate) value: Vec<u8>,
}

/// What became of one list target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ListOutcome {
    /// Removed and archived.
    Removed(Removed),
    /// The call's work budget ran out first: call again with `resume`.
    Resume { resume: i64 },
    /// Not in the list any more (a worker took it, or it changed).
    Gone,
}

pub(crate) struct RemoveListEntries(Script);

impl RemoveListEntries {
    pub(crate) async fn call(
        &self,
        con: &mut MultiplexedConnection,
        key: &[u8],
        common: &Common<'_>,
        tombstone: &str,
        budget: SearchBudget,
        targets: &[ListTarget<'_>],
    ) -> Result<Vec<ListOutcome>> {
        let mut inv = self.0.key(key);
        inv.key(common.archive).key(common.lock_key);
        inv.arg(common.lock_token)
            .arg(tombstone)
            .arg(budget.elements)
            .arg(budget.bytes)
            .arg(common.archive_maxlen);
        for t in targets {
            inv.arg(t.from_tail)
                .arg(t.resume)
                .arg(t.index)
                .arg(t.spec.to_arg())
                .arg(&t.meta);
        }
        let keys = [key, common.archive, common.lock_key];
        let reply = invoke(&mut inv, con, &keys, common.archive).await?;
        let pairs = expect_pairs(reply, targets.len(), "remove_list_entries.lua")?;
        pairs
            .map(|(status, at)| match removed(&status)? {
                Some(r) => Ok(ListOutcome::Removed(r)),
                None if text(&status).as_deref() == Some("resume") => Ok(ListOutcome::Resume {
                    resume: number(&at).unwrap_or(0),
                }),
                None => Ok(ListOutcome::Gone),
            })
            .collect()
    }
}

/// One `unacked` entry to remove.
pub(crate) struct UnackedTarget<'a> {
    pub(crate) delivery_tag: &'a [u8],
    pub(crate) spec: &'a ValueSpec,
    pub(crate) meta: String,
}

/// The keys of kombu's `unacked` structures, and the mutex token this run holds.
pub(crate) struct UnackedKeys<'a> {
    pub(crate) hash: &'a [u8],
    pub(crate) index: &'a [u8],
    pub(crate) mutex: &'a [u8],
    pub(crate) mutex_token: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UnackedOutcome {
    /// Removed, with its `unacked_index` score (`None` if it had none).
    Removed(Removed, Option<String>),
    /// Gone or changed (acknowledged, or restored to its queue).
    Gone,
}

pub(crate) struct RemoveUnacked(Script);

impl RemoveUnacked {
    pub(crate) async fn call(
        &self,
        con: &mut MultiplexedConnection,
        keys: &UnackedKeys<'_>,
        common: &Common<'_>,
        targets: &[UnackedTarget<'_>],
    ) -> Result<Vec<UnackedOutcome>> {
        let mut inv = self.0.key(keys.hash);
        inv.key(keys.index)
            .key(keys.mutex)
            .key(common.archive)
            .key(common.lock_key);
        inv.arg(common.lock_token)
            .arg(keys.mutex_token)
            .arg(common.archive_maxlen);
        for t in targets {
            inv.arg(t.delivery_tag).arg(t.spec.to_arg()).arg(&t.meta);
        }
        let named = [
            keys.hash,
            keys.index,
            keys.mutex,
            common.archive,
            common.lock_key,
        ];
        let reply = invoke(&mut inv, con, &named, common.archive).await?;
        let pairs = expect_pairs(reply, targets.len(), "remove_unacked_entries.lua")?;
        pairs
            .map(|(id, score)| {
                Ok(match removed(&id)? {
                    Some(r) => UnackedOutcome::Removed(r, text(&score).filter(|s| !s.is_empty())),
                    None => UnackedOutcome::Gone,
                })
            })
            .collect()
    }
}

/// One result key to remove.
pub(crate) struct ResultTarget<'a> {
    pub(crate) key: &'a [u8],
    pub(crate) spec: &'a ValueSpec,
    pub(crate) meta: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ResultOutcome {
    /// Removed, with the TTL it had left (ms, -1 for none).
    Removed(Removed, Option<i64>),
    /// Gone, changed, or no longer a string.
    Gone,
}

pub(crate) struct RemoveResults(Script);

impl RemoveResults {
    pub(crate) async fn call(
        &self,
        con: &mut MultiplexedConnection,
        common: &Common<'_>,
        targets: &[ResultTarget<'_>],
    ) -> Result<Vec<ResultOutcome>> {
        let mut inv = self.0.key(common.archive);
        inv.key(common.lock_key);
        for t in targets {
            inv.key(t.key);
        }
        inv.arg(common.lock_token).arg(common.archive_maxlen);
        for t in targets {
            inv.arg(t.spec.to_arg()).arg(&t.meta);
        }
        let mut keys: Vec<&[u8]> = vec![common.archive, common.lock_key];
        keys.extend(targets.iter().map(|t| t.key));
        let reply = invoke(&mut inv, con, &keys, common.archive).await?;
        let pairs = expect_pairs(reply, targets.len(), "remove_results.lua")?;
        pairs
            .map(|(id, pttl)| {
                Ok(match removed(&id)? {
                    Some(r) => ResultOutcome::Removed(r, number(&pttl)),
                    None => ResultOutcome::Gone,
                })
            })
            .collect()
    }
}

/// The keys `restore_entry.lua` works on.
pub(crate) struct RestoreKeys<'a> {
    pub(crate) archive: &'a [u8],
    /// Archive ids restored by versions before per-run sets (only read).
    pub(crate) restored_before: &'a [u8],
    /// Where the entry goes back: the list, the `unacked` hash or the result key.
    pub(crate) target: &'a [u8],
    /// `unacked_index` for an `unacked` entry; any key name otherwise.
    pub(crate) index: &'a [u8],
    /// This run's restored-ids set.
    pub(crate) restored: &'a [u8],
}

impl RestoreKeys<'_> {
    pub(crate) fn as_array(&self) -> [&[u8]; 5] {
        [
            self.archive,
            self.restored_before,
            self.target,
            self.index,
            self.restored,
        ]
    }
}

/// One archived entry to put back, with everything the archive kept of it.
pub(crate) struct RestoreTarget<'a> {
    pub(crate) archive_id: &'a str,
    pub(crate) kind: &'a str,
    pub(crate) value: &'a [u8],
    pub(crate) field: &'a [u8],
    pub(crate) score: &'a str,
    pub(crate) pttl: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RestoreOutcome {
    Restored,
    /// Restored before (this run's set, or an earlier version's global set).
    AlreadyRestored,
    /// Something else is where the entry would go: left untouched.
    Occupied,
}

pub(crate) struct RestoreEntry(Script);

impl RestoreEntry {
    /// Puts one entry back, once. A script error comes back as the driver's error, for the
    /// caller to name the archive entry.
    pub(crate) async fn call(
        &self,
        con: &mut MultiplexedConnection,
        keys: &RestoreKeys<'_>,
        t: &RestoreTarget<'_>,
        keep_seconds: u64,
    ) -> std::result::Result<RestoreOutcome, redis::RedisError> {
        let mut inv = self.0.prepare_invoke();
        for k in keys.as_array() {
            inv.key(k);
        }
        inv.arg(t.archive_id)
            .arg(t.kind)
            .arg(t.value)
            .arg(t.field)
            .arg(t.score)
            .arg(t.pttl)
            .arg(keep_seconds);
        let outcome: i64 = inv.invoke_async(con).await?;
        Ok(match outcome {
            1 => RestoreOutcome::Restored,
            0 => RestoreOutcome::AlreadyRestored,
            _ => RestoreOutcome::Occupied,
        })
    }
}

/// Runs a removal script; a failure is a typed error naming the key it is about.
pub(crate) async fn invoke(
    inv: &mut redis::ScriptInvocation<'_>,
    con: &mut MultiplexedConnection,
    keys: &[&[u8]],
    archive: &[u8],
) -> Result<Vec<Value>> {
    inv.invoke_async(con)
        .await
        .map_err(|e| script_error(e, keys, archive))
}

/// A removal script answers two values per target; anything else is an error.
fn expect_pairs(
    reply: Vec<Value>,
    targets: usize,
    script: &'static str,
) -> Result<impl Iterator<Item = (Value, Value)>> {
    if reply.len() != 2 * targets {
        return Err(EngineError::ScriptReply {
            script,
            got: reply.len(),
            expected: 2 * targets,
        });
    }
    let mut it = reply.into_iter();
    Ok(std::iter::from_fn(move || Some((it.next()?, it.next()?))))
}

/// `{archive id, value}` for a removed entry; `None` for a reply that is not an array.
fn removed(v: &Value) -> Result<Option<Removed>> {
    let Value::Array(items) = v else {
        return Ok(None);
    };
    if let [id, value] = items.as_slice() {
        if let (Some(archive_id), Ok(value)) =
            (text(id), redis::from_redis_value_ref::<Vec<u8>>(value))
        {
            return Ok(Some(Removed { archive_id, value }));
        }
    }
    Err(EngineError::ScriptReply {
        script: "a removal script",
        got: items.len(),
        expected: 2,
    })
}

fn text(v: &Value) -> Option<String> {
    redis::from_redis_value_ref::<Option<String>>(v)
        .ok()
        .flatten()
}

fn number(v: &Value) -> Option<i64> {
    redis::from_redis_value_ref::<i64>(v).ok()
}

/// Turns a script's error reply into a typed error naming the key (see checks.lua).
pub(crate) fn script_error(err: redis::RedisError, keys: &[&[u8]], archive: &[u8]) -> EngineError {
    if let Some(wrong) = WrongTypeReply::parse(&err, keys) {
        return EngineError::WrongType {
            key: wrong.key.unwrap_or_else(|| "a key".into()),
            found: wrong.found,
            expected: wrong.expected,
        };
    }
    let detail = err.detail().unwrap_or_default().to_owned();
    match err.code() {
        Some("LOCKLOST") => EngineError::LockLost,
        Some("MUTEXLOST") => EngineError::MutexLost,
        Some("CJARCHIVE") => EngineError::ArchiveWrite {
            key: printable(archive),
            message: detail,
        },
        _ => err.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A script's error reply, as the driver hands it over.
    fn reply_error(line: &str) -> redis::RedisError {
        match redis::parse_redis_value(format!("-{line}\r\n").as_bytes()).unwrap() {
            Value::ServerError(e) => e.into(),
            other => panic!("not an error reply: {other:?}"),
        }
    }

    #[test]
    fn lua_error_codes_become_variants() {
        let keys: [&[u8]; 2] = [b"celery", b"celery-janitor:archive"];
        let archive = keys[1];
        let cases = [
            (
                "LOCKLOST celery-janitor lock is not held by this run",
                "LockLost",
            ),
            (
                "MUTEXLOST unacked_mutex is not held by this run",
                "MutexLost",
            ),
            ("CJARCHIVE OOM command not allowed", "ArchiveWrite"),
            ("CJWRONGTYPE 1 hash list", "WrongType"),
        ];
        for (line, want) in cases {
            let err = script_error(reply_error(line), &keys, archive);
            assert!(format!("{err:?}").starts_with(want), "{line}: {err:?}");
        }
        match script_error(reply_error("CJWRONGTYPE 1 hash list"), &keys, archive) {
            EngineError::WrongType { key, found, .. } => {
                assert_eq!((key.as_str(), found.as_str()), ("celery", "hash"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_short_reply_is_an_error_not_gone() {
        let reply = vec![Value::Nil; 3];
        match expect_pairs(reply, 2, "remove_results.lua") {
            Err(EngineError::ScriptReply { got, expected, .. }) => {
                assert_eq!((got, expected), (3, 4));
            }
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("a short reply was accepted"),
        }
        let pairs: Vec<_> = expect_pairs(vec![Value::Nil; 4], 2, "x").unwrap().collect();
        assert_eq!(pairs.len(), 2);
    }
}
