//! Listing the archive ([`Janitor::archive_entries`]): what the removals archived in the Redis
//! archive stream(s), newest first, a page at a time — metadata only (archive id, run, where it
//! was, task id and name, owner, when), never the stored bytes, which may hold secrets.
//!
//! The stream is read backwards with XREVRANGE in small chunks, so memory holds a chunk and the
//! page, never the stream. When the result backend is another Redis, its stream (results) and
//! the broker's (messages) are merged by archive id. The cursor is the position of the last
//! entry handed out; entries restored meanwhile leave the stream (and so the listing), and new
//! ones come before the first page, so paging never repeats or skips an entry that stays.

use serde::Serialize;

use crate::archive::{printable, stream_fields, stream_id_order};
use crate::classify::Location;
use crate::error::{EngineError, Result};
use crate::janitor::{Janitor, OwnKey};
use crate::redis_io::RedisHandle;

/// Stream entries read per XREVRANGE: each holds the archived bytes until it is parsed, so this
/// bounds the memory a listing needs whatever the page size.
const CHUNK: usize = 100;

/// What [`Janitor::archive_entries`] lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveQuery {
    /// Only entries archived by this run.
    pub run_id: Option<String>,
    /// At most this many entries (1 to [`ArchiveQuery::MAX_LIMIT`]).
    pub limit: usize,
    /// Where the page starts: the previous page's `next_cursor`. `None`: the newest entry.
    pub cursor: Option<String>,
}

impl ArchiveQuery {
    /// The default page size.
    pub const DEFAULT_LIMIT: usize = 100;
    /// The largest page.
    pub const MAX_LIMIT: usize = 10_000;

    /// Refuses (with [`EngineError::BadArchiveCursor`]) a cursor that no archive listing hands
    /// out, without asking Redis: front ends check one before connecting.
    pub fn check_cursor(cursor: &str) -> Result<()> {
        Position::parse(cursor).map(drop)
    }
}

impl Default for ArchiveQuery {
    fn default() -> Self {
        ArchiveQuery {
            run_id: None,
            limit: Self::DEFAULT_LIMIT,
            cursor: None,
        }
    }
}

/// The owner row an archived entry belonged to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ArchiveOwner {
    pub table: String,
    pub id: String,
}

/// One archived entry, without its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ArchiveItem {
    /// The stream entry id (`<ms>-<seq>`): what `restore` tracks it by.
    pub archive_id: String,
    /// The run that removed it (`None`: archived by a version that did not say).
    pub run_id: Option<String>,
    pub location: Location,
    /// The Redis key it was removed from, escaped by [`printable`](crate::printable).
    pub key: String,
    /// The queue a message was in (`None` for results, or when not known).
    pub queue: Option<String>,
    pub task_id: Option<String>,
    pub task_name: Option<String>,
    pub owner: Option<ArchiveOwner>,
    /// Why it was removed: `orphaned`, `expired`, `revoked`, `purged`.
    pub reason: Option<String>,
    /// When it was archived (RFC 3339).
    pub archived_at: String,
}

/// One page of the archive listing.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ArchivePage {
    pub items: Vec<ArchiveItem>,
    /// Where the next page starts; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// Which archive stream an entry is in: the broker's, or the result backend's when that is
/// another Redis. Entries order by (archive id, source), newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    Broker = 0,
    Backend = 1,
}

/// A position in the merged listing: entries strictly older than it come next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    id: (u64, u64),
    source: Source,
}

const BACKEND_SUFFIX: &str = "/backend";

impl Position {
    fn parse(text: &str) -> Result<Self> {
        let bad = |reason| EngineError::BadArchiveCursor {
            cursor: text.chars().take(64).collect(),
            reason,
        };
        let (id, source) = match text.strip_suffix(BACKEND_SUFFIX) {
            Some(id) => (id, Source::Backend),
            None => (text, Source::Broker),
        };
        let (ms, seq) = id
            .split_once('-')
            .ok_or_else(|| bad("expected <ms>-<seq>, as next_cursor gives it"))?;
        let number = |n: &str| {
            (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .then(|| n.parse::<u64>().ok())
                .flatten()
                .ok_or_else(|| bad("expected <ms>-<seq> with decimal numbers"))
        };
        Ok(Position {
            id: (number(ms)?, number(seq)?),
            source,
        })
    }

    fn text(&self) -> String {
        let id = format!("{}-{}", self.id.0, self.id.1);
        match self.source {
            Source::Broker => id,
            Source::Backend => id + BACKEND_SUFFIX,
        }
    }

    /// The XREVRANGE end that lists, in `source`'s stream, the entries after this position:
    /// a stream ordered before this one in a tie still has this id to give.
    fn end_in(&self, source: Source) -> String {
        let id = format!("{}-{}", self.id.0, self.id.1);
        if source < self.source {
            id
        } else {
            format!("({id}")
        }
    }
}

/// The item of one stream entry, its stored bytes left unread; `None` for an entry that is not
/// an archive record.
fn item(id: &str, fields: &[(String, Vec<u8>)]) -> Option<ArchiveItem> {
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    };
    let location = match field(stream_fields::KIND)? {
        b"queue" => Location::Queue,
        b"unacked" => Location::Unacked,
        b"result" => Location::Result,
        _ => return None,
    };
    let meta: serde_json::Value = field(stream_fields::META)
        .and_then(|m| serde_json::from_slice(m).ok())
        .unwrap_or_default();
    let text = |k: &str| {
        meta.get(k)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let owner = match (text("owner_table"), text("owner_id")) {
        (Some(table), Some(id)) => Some(ArchiveOwner { table, id }),
        _ => None,
    };
    let archived_at = text("removed_at").unwrap_or_else(|| {
        let (ms, _) = stream_id_order(id);
        chrono::DateTime::from_timestamp_millis(ms as i64)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default()
    });
    Some(ArchiveItem {
        archive_id: id.to_owned(),
        run_id: text("run_id"),
        location,
        key: printable(field(stream_fields::KEY).unwrap_or_default()),
        queue: text("queue"),
        task_id: text("task_id"),
        task_name: text("task_name"),
        owner,
        reason: text("reason"),
        archived_at,
    })
}

impl Janitor {
    /// One page of the archive, newest first: metadata of archived entries (see
    /// [`ArchiveItem`]), never their bytes. Entries restored since leave the archive.
    ///
    /// Errors: [`EngineError::InvalidOption`] for a `limit` outside 1–10000,
    /// [`EngineError::BadArchiveCursor`] for a cursor this listing did not hand out (both
    /// before Redis is asked), [`EngineError::ArchiveStream`] when a stream can't be read.
    pub async fn archive_entries(&self, q: &ArchiveQuery) -> Result<ArchivePage> {
        if !(1..=ArchiveQuery::MAX_LIMIT).contains(&q.limit) {
            return Err(EngineError::InvalidOption(
                janitor_config::ConfigError::Invalid {
                    key: "limit".into(),
                    message: format!(
                        "{} is out of range: from 1 to {}",
                        q.limit,
                        ArchiveQuery::MAX_LIMIT
                    ),
                },
            ));
        }
        let after = q.cursor.as_deref().map(Position::parse).transpose()?;
        let mut sources = vec![(&self.broker, Source::Broker)];
        if !self.shared_redis {
            sources.push((&self.backend, Source::Backend));
        }
        let mut found: Vec<(Position, ArchiveItem)> = Vec::new();
        for (handle, source) in sources {
            let end = after.map_or_else(|| "+".to_owned(), |p| p.end_in(source));
            found.extend(
                self.newest_archived(handle, source, end, q.run_id.as_deref(), q.limit + 1)
                    .await?,
            );
        }
        found.sort_by_key(|(p, _)| std::cmp::Reverse((p.id, p.source)));
        let next_cursor = (found.len() > q.limit).then(|| found[q.limit - 1].0.text());
        found.truncate(q.limit);
        Ok(ArchivePage {
            items: found.into_iter().map(|(_, item)| item).collect(),
            next_cursor,
        })
    }

    /// Up to `want` items of one stream, newest first from `end`, of run `run_id` if given.
    async fn newest_archived(
        &self,
        handle: &RedisHandle,
        source: Source,
        mut end: String,
        run_id: Option<&str>,
        want: usize,
    ) -> Result<Vec<(Position, ArchiveItem)>> {
        let key = self.own_key(OwnKey::Archive);
        let mut con = handle.con.clone();
        let mut out = Vec::new();
        loop {
            let chunk: Vec<crate::archive::StreamEntry> = redis::cmd("XREVRANGE")
                .arg(&key)
                .arg(&end)
                .arg("-")
                .arg("COUNT")
                .arg(CHUNK)
                .query_async(&mut con)
                .await
                .map_err(|e| EngineError::ArchiveStream {
                    key: printable(&key),
                    source: e.into(),
                })?;
            let n = chunk.len();
            for (id, fields) in chunk {
                end = format!("({id}");
                let Some(item) = item(&id, &fields) else {
                    continue;
                };
                if run_id.is_some_and(|run| item.run_id.as_deref() != Some(run)) {
                    continue;
                }
                let position = Position {
                    id: stream_id_order(&id),
                    source,
                };
                out.push((position, item));
                if out.len() >= want {
                    return Ok(out);
                }
            }
            if n < CHUNK {
                return Ok(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_bad_ones_are_refused() {
        for text in ["1733068800000-0", "1733068800000-12/backend"] {
            assert_eq!(Position::parse(text).unwrap().text(), text);
        }
        for bad in [
            "",
            "x",
            "1-",
            "-1",
            "1-2-3",
            "1-2/broker",
            "+1-2",
            "99999999999999999999-0",
        ] {
            assert!(
                matches!(
                    Position::parse(bad),
                    Err(EngineError::BadArchiveCursor { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn ties_between_the_streams_are_neither_repeated_nor_skipped() {
        let broker = Position::parse("5-0").unwrap();
        assert_eq!(broker.end_in(Source::Broker), "(5-0");
        assert_eq!(broker.end_in(Source::Backend), "(5-0");
        let backend = Position::parse("5-0/backend").unwrap();
        assert_eq!(backend.end_in(Source::Backend), "(5-0");
        // The broker's 5-0 sorts after the backend's in the newest-first order.
        assert_eq!(backend.end_in(Source::Broker), "5-0");
    }

    #[test]
    fn an_item_never_carries_the_stored_bytes() {
        let fields = vec![
            ("kind".to_owned(), b"queue".to_vec()),
            ("key".to_owned(), b"celery\x06\x163".to_vec()),
            ("value".to_owned(), b"{\"secret\": \"hunter2\"}".to_vec()),
            (
                "meta".to_owned(),
                br#"{"run_id":"r1","task_id":"t1","task_name":"app.add","owner_table":"adds","owner_id":"7","queue":"celery","reason":"purged","removed_at":"2026-12-01T00:00:00+00:00"}"#.to_vec(),
            ),
        ];
        let full = item("1-0", &fields).unwrap();
        let json = serde_json::to_string(&full).unwrap();
        assert!(!json.contains("hunter2"), "{json}");
        assert_eq!(full.key, "celery\\x06\\x163");
        assert_eq!(
            full.owner,
            Some(ArchiveOwner {
                table: "adds".into(),
                id: "7".into()
            })
        );
        assert_eq!(full.reason.as_deref(), Some("purged"));
        let bare = item("1733068800000-0", &fields[..3]).unwrap();
        assert_eq!(bare.run_id, None);
        assert!(
            bare.archived_at.starts_with("2024-12-01T16:00:00"),
            "{}",
            bare.archived_at
        );
    }
}
