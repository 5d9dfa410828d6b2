//! Listing entries a page at a time ([`Janitor::list`]): the filter, the limit and the cursor live
//! here, so the CLI's `tasks`, the server's pages and the Python binding's lists are the same
//! rows, with no callback crossing into a front end.
//!
//! A page is cut from the stream of [`Janitor::entries`]: every call rescans the keyspace (and
//! waits out the grace period when there are orphan candidates), keeps only the matching rows of
//! its page, and counts the rest to know whether another page follows. The cursor is an offset
//! into the matching rows in scan order, which is stable while Redis and the owner rows don't
//! change; between pages an entry that appears, goes or changes state shifts the rest by one, so
//! a row can be skipped or repeated. Entries are not held between calls: memory grows with the
//! page, not the keyspace. (Resuming where the scan stopped, rather than rescanning, is a later
//! performance step; the cursor is opaque so its format can change.)

use std::fmt;
use std::str::FromStr;

use janitor_wire::BrokerLayout;
use serde::Serialize;

use crate::classify::{Entry, Location, State};
use crate::context::RunCtx;
use crate::error::{EngineError, Result};
use crate::janitor::Janitor;

/// What [`Janitor::list`] lists. The default lists every entry in one page, confirming orphans
/// with the settings' `grace_seconds`.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Only entries in these states; empty: every state (`tasks --orphaned` is `[Orphaned]`).
    pub states: Vec<State>,
    /// Only entries in these locations; empty: every location. Every location is still read:
    /// the filter picks rows, it does not narrow the scan.
    pub locations: Vec<Location>,
    /// At most this many rows in the page; `None`: every matching row in one page.
    pub limit: Option<usize>,
    /// Only entries of this queue: queued in it, or unacked after delivery from it (results
    /// are left out). `None`: every queue, and results.
    pub queue: Option<String>,
    /// Where the page starts: the previous page's `next_cursor`, listed with the same `states`,
    /// `locations` and `queue`. `None`: the first page.
    pub cursor: Option<Cursor>,
    /// Overrides `grace_seconds` (0–86400): how long an orphan's row must stay missing.
    pub grace_seconds: Option<f64>,
}

/// One page of a listing.
#[derive(Debug, Clone, Serialize)]
pub struct Page<T> {
    pub rows: Vec<T>,
    /// Where the next page starts; `None` when this page holds the last matching row.
    pub next_cursor: Option<Cursor>,
}

/// One listed entry: the row of `tasks --json` (docs/cli.md), serialized field for field as the
/// CLI has always printed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskRow {
    pub task_id: Option<String>,
    pub task_name: Option<String>,
    pub location: Location,
    pub queue: Option<String>,
    pub owner_table: Option<String>,
    pub owner_id: Option<String>,
    pub state: State,
    /// The Redis key, escaped by [`printable`](crate::printable).
    pub key: String,
    pub reason: Option<String>,
    /// The kombu priority step of the sub-list a queued entry was read from (`celery (p9)` in
    /// the human table); `None` for a queue's bare list and for `unacked` and results. Not part
    /// of the JSON row, whose shape docs/cli.md fixes.
    #[serde(skip)]
    pub priority_step: Option<u32>,
}

impl TaskRow {
    fn new(e: &Entry, layout: &BrokerLayout) -> Self {
        TaskRow {
            task_id: e.task_id.clone(),
            task_name: e.task_name.clone(),
            location: e.location,
            queue: e.queue.clone(),
            owner_table: e.owner_table.clone(),
            owner_id: e.owner_id.clone(),
            state: e.state,
            key: crate::printable(&e.key),
            reason: e.reason.clone(),
            priority_step: (e.location == Location::Queue)
                .then(|| layout.split_queue_key(&e.key))
                .flatten()
                .map(|(_, step)| step)
                .filter(|&step| step > 0),
        }
    }
}

/// Which states and locations a listing keeps, as bits: the states in the low nibble, the
/// locations above. An empty choice means all, so equal filters have equal bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Filter(u8);

/// A listing's queue filter as it travels in a cursor: the first eight bytes of the SHA-1 of
/// the queue name (stable across processes and versions, unlike `hash64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct QueueTag(u64);

impl QueueTag {
    fn of(queue: &str) -> Self {
        let digest = sha1_smol::Sha1::from(queue.as_bytes()).digest().bytes();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        QueueTag(u64::from_be_bytes(first))
    }
}

/// Whether `e` is an entry of `queue`: queued in it, or unacked after delivery from it.
fn in_queue(e: &Entry, queue: &str) -> bool {
    matches!(e.location, Location::Queue | Location::Unacked) && e.queue.as_deref() == Some(queue)
}

impl Filter {
    const VALID: u8 = 0b0111_1111;

    fn state_bit(s: State) -> u8 {
        1 << State::ALL
            .iter()
            .position(|&a| a == s)
            .expect("every state")
    }

    fn location_bit(l: Location) -> u8 {
        1 << (4 + Location::ALL
            .iter()
            .position(|&a| a == l)
            .expect("every location"))
    }

    fn of(o: &ListOptions) -> Self {
        let states = match o.states.as_slice() {
            [] => 0b1111,
            some => some.iter().fold(0, |m, &s| m | Self::state_bit(s)),
        };
        let locations = match o.locations.as_slice() {
            [] => 0b0111_0000,
            some => some.iter().fold(0, |m, &l| m | Self::location_bit(l)),
        };
        Filter(states | locations)
    }

    fn matches(self, e: &Entry) -> bool {
        self.0 & Self::state_bit(e.state) != 0 && self.0 & Self::location_bit(e.location) != 0
    }
}

/// Where a page starts: an opaque token from [`Page::next_cursor`], handed back as
/// [`ListOptions::cursor`]. It travels as text (`to_string()`, [`str::parse`], or as a JSON
/// string) and is checked when parsed and against the listing it resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Matching rows before the page, in scan order.
    offset: u64,
    filter: Filter,
    /// The listing's queue filter, if it had one.
    queue: Option<QueueTag>,
}

/// Marks the format, so another can replace it and old tokens are refused, not misread.
const CURSOR_VERSION: &str = "v1";

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{CURSOR_VERSION}.{}.{:02x}", self.offset, self.filter.0)?;
        if let Some(QueueTag(tag)) = self.queue {
            write!(f, ".{tag:016x}")?;
        }
        Ok(())
    }
}

impl FromStr for Cursor {
    type Err = EngineError;

    fn from_str(text: &str) -> Result<Self> {
        let bad = |reason| EngineError::BadCursor {
            cursor: text.chars().take(64).collect(),
            reason,
        };
        let mut parts = text.split('.');
        let (Some(CURSOR_VERSION), Some(offset), Some(filter), queue, None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad("not a cursor this version made"));
        };
        // Only the digits `Display` writes: `+1` or `01` would parse but was never handed out.
        let canonical = |s: &str, hex: bool| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (hex && (b'a'..=b'f').contains(&b)))
        };
        let offset = Some(offset)
            .filter(|o| canonical(o, false) && (*o == "0" || !o.starts_with('0')))
            .and_then(|o| o.parse().ok())
            .ok_or_else(|| bad("not a cursor this version made"))?;
        let filter = Some(filter)
            .filter(|f| f.len() == 2 && canonical(f, true))
            .and_then(|f| u8::from_str_radix(f, 16).ok())
            .filter(|bits| bits & !Filter::VALID == 0)
            .ok_or_else(|| bad("not a cursor this version made"))?;
        let queue = match queue {
            None => None,
            Some(tag) => Some(
                Some(tag)
                    .filter(|t| t.len() == 16 && canonical(t, true))
                    .and_then(|t| u64::from_str_radix(t, 16).ok())
                    .map(QueueTag)
                    .ok_or_else(|| bad("not a cursor this version made"))?,
            ),
        };
        Ok(Cursor {
            offset,
            filter: Filter(filter),
            queue,
        })
    }
}

impl Serialize for Cursor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Cursor {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Cursor {
    /// The offset to resume at, if this cursor was made for a listing with `filter`: an offset
    /// into other rows would silently skip or repeat entries.
    fn resume(&self, filter: Filter, queue: Option<QueueTag>) -> Result<u64> {
        if self.filter != filter {
            Err(EngineError::BadCursor {
                cursor: self.to_string(),
                reason: "made for a listing with other states or locations",
            })
        } else if self.queue != queue {
            Err(EngineError::BadCursor {
                cursor: self.to_string(),
                reason: "made for a listing of another queue",
            })
        } else {
            Ok(self.offset)
        }
    }
}

impl Janitor {
    /// One page of classified entries in scan order (`unacked`, each queue list, results),
    /// except that entries whose owner row was missing when read come last: like `status`, they
    /// count as orphaned only if the row is still missing `grace_seconds` after the entry was
    /// read, so they wait for that (live if the row appeared). Stops with
    /// [`EngineError::Interrupted`] when `cx` is cancelled (between scan pages or during the
    /// grace wait), and with [`EngineError::BadCursor`] for a cursor of another listing.
    pub async fn list(&self, o: &ListOptions, cx: &RunCtx<'_>) -> Result<Page<TaskRow>> {
        let filter = Filter::of(o);
        let queue = o.queue.as_deref();
        let tag = queue.map(QueueTag::of);
        let start = match &o.cursor {
            Some(cursor) => cursor.resume(filter, tag)?,
            None => 0,
        };
        let end = o.limit.map(|limit| start.saturating_add(limit as u64));
        let grace = o.grace_seconds.unwrap_or(self.settings.grace_seconds);
        let layout = &self.broker_layout;
        let mut matched: u64 = 0;
        let mut rows = Vec::new();
        self.entries_noting(grace, false, cx, &mut |e: Entry| {
            if !filter.matches(&e) || queue.is_some_and(|q| !in_queue(&e, q)) {
                return;
            }
            if matched >= start && end.is_none_or(|end| matched < end) {
                rows.push(TaskRow::new(&e, layout));
            }
            matched += 1;
        })
        .await?;
        let next_cursor = end.filter(|&end| matched > end).map(|offset| Cursor {
            offset,
            filter,
            queue: tag,
        });
        Ok(Page { rows, next_cursor })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> TaskRow {
        TaskRow {
            task_id: Some("t1".into()),
            task_name: Some("app.add".into()),
            location: Location::Queue,
            queue: Some("celery".into()),
            owner_table: Some("scan_tasks".into()),
            owner_id: None,
            state: State::Orphaned,
            key: crate::printable(b"celery\x06\x163"),
            reason: Some("owner row is missing".into()),
            priority_step: Some(3),
        }
    }

    /// `tasks --json` printed this before the row moved into the engine: the same bytes.
    #[test]
    fn a_row_serializes_as_tasks_json_always_printed_it() {
        let expected = r#"[
  {
    "task_id": "t1",
    "task_name": "app.add",
    "location": "queue",
    "queue": "celery",
    "owner_table": "scan_tasks",
    "owner_id": null,
    "state": "orphaned",
    "key": "celery\\x06\\x163",
    "reason": "owner row is missing"
  }
]"#;
        assert_eq!(
            serde_json::to_string_pretty(&vec![row()]).unwrap(),
            expected
        );
    }

    /// The one escaping rule for keys shown as text: the table the Python tests check too.
    #[test]
    fn row_keys_follow_the_shared_printable_table() {
        let table: serde_json::Value =
            serde_json::from_str(include_str!("../../../tests/shared/printable-keys.json"))
                .unwrap();
        let examples = table["examples"].as_array().unwrap();
        assert!(examples.len() >= 10);
        let layout = BrokerLayout::default();
        for example in examples {
            let hex = example["hex"].as_str().unwrap();
            let key: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            let want = example["printable"].as_str().unwrap();
            assert_eq!(crate::printable(&key), want, "{}", example["why"]);
            assert_eq!(
                TaskRow::new(&entry(Location::Result, &key), &layout).key,
                want
            );
        }
    }

    #[test]
    fn every_state_and_location_serializes_as_its_name() {
        for s in State::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for l in Location::ALL {
            assert_eq!(serde_json::to_value(l).unwrap(), l.as_str());
        }
    }

    fn entry(location: Location, key: &[u8]) -> Entry {
        let mut e = Entry::new(location, key.to_vec(), Vec::new());
        e.queue = Some("custom".into());
        e.task_id = Some("t1".into());
        e.task_name = Some("app.add".into());
        e.state = State::Unowned;
        e
    }

    #[test]
    fn the_priority_step_comes_from_the_layout() {
        let layout = BrokerLayout::with_prefix(b"myapp".to_vec());
        let mut e = entry(Location::Queue, b"myappcustom\x06\x169");
        assert_eq!(TaskRow::new(&e, &layout).priority_step, Some(9));
        e.key = b"myappcustom".to_vec();
        assert_eq!(TaskRow::new(&e, &layout).priority_step, None);
        e.location = Location::Unacked;
        e.key = b"myappunacked".to_vec();
        assert_eq!(TaskRow::new(&e, &layout).priority_step, None);
    }

    #[test]
    fn a_cursor_round_trips_as_text() {
        let filter = Filter::of(&ListOptions {
            states: vec![State::Orphaned],
            ..Default::default()
        });
        let cursor = Cursor {
            offset: 1200,
            filter,
            queue: None,
        };
        let text = cursor.to_string();
        assert_eq!(text, "v1.1200.72");
        assert_eq!(text.parse::<Cursor>().unwrap(), cursor);
        let json = serde_json::to_string(&cursor).unwrap();
        assert_eq!(json, r#""v1.1200.72""#);
        assert_eq!(serde_json::from_str::<Cursor>(&json).unwrap(), cursor);
    }

    #[test]
    fn a_cursor_not_made_here_is_refused() {
        for text in [
            "",
            "v1",
            "v1.12",
            "v1.12.7f.0",
            "v2.12.7f",
            "v1.-1.7f",
            "v1.+1.7f",
            "v1.01.7f",
            "v1.12.7F",
            "v1.12.ff",
            "v1.12.7",
            "v1.99999999999999999999999.7f",
            "v1. 1.7f",
        ] {
            let err = text.parse::<Cursor>().unwrap_err();
            assert!(
                matches!(err, EngineError::BadCursor { .. }),
                "{text:?}: {err}"
            );
        }
        assert!(serde_json::from_str::<Cursor>(r#""nope""#).is_err());
    }

    #[test]
    fn a_cursor_resumes_only_the_listing_it_came_from() {
        let orphans = ListOptions {
            states: vec![State::Orphaned],
            ..Default::default()
        };
        let cursor = Cursor {
            offset: 5,
            filter: Filter::of(&orphans),
            queue: None,
        };
        assert_eq!(cursor.resume(Filter::of(&orphans), None).unwrap(), 5);
        let err = cursor
            .resume(Filter::of(&ListOptions::default()), None)
            .unwrap_err();
        assert!(matches!(err, EngineError::BadCursor { .. }), "{err}");
        let err = cursor
            .resume(Filter::of(&orphans), Some(QueueTag::of("celery")))
            .unwrap_err();
        assert!(matches!(err, EngineError::BadCursor { .. }), "{err}");
        let queued = Cursor {
            queue: Some(QueueTag::of("celery")),
            ..cursor
        };
        let other = Some(QueueTag::of("mail"));
        assert!(queued.resume(Filter::of(&orphans), other).is_err());
        assert!(queued.resume(Filter::of(&orphans), None).is_err());
        let same = Some(QueueTag::of("celery"));
        assert_eq!(queued.resume(Filter::of(&orphans), same).unwrap(), 5);
    }

    #[test]
    fn a_queue_cursor_round_trips_as_text() {
        let cursor = Cursor {
            offset: 7,
            filter: Filter::of(&ListOptions::default()),
            queue: Some(QueueTag::of("celery")),
        };
        let text = cursor.to_string();
        assert!(text.starts_with("v1.7.7f."), "{text}");
        assert_eq!(text.len(), "v1.7.7f.".len() + 16, "{text}");
        assert_eq!(text.parse::<Cursor>().unwrap(), cursor);
        for bad in [
            format!("{text}.0"),
            text.to_uppercase(),
            text[..text.len() - 1].to_owned(),
        ] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_queue_filter_keeps_queued_and_unacked_entries_of_that_queue() {
        let mut e = entry(Location::Queue, b"custom");
        assert!(in_queue(&e, "custom"));
        assert!(!in_queue(&e, "celery"));
        e.location = Location::Unacked;
        assert!(in_queue(&e, "custom"));
        e.location = Location::Result;
        assert!(
            !in_queue(&e, "custom"),
            "results are not entries of a queue"
        );
        e.location = Location::Queue;
        e.queue = None;
        assert!(!in_queue(&e, "custom"));
    }

    #[test]
    fn an_empty_choice_is_every_one() {
        let all = Filter::of(&ListOptions::default());
        let spelled = Filter::of(&ListOptions {
            states: State::ALL.to_vec(),
            locations: Location::ALL.to_vec(),
            ..Default::default()
        });
        assert_eq!(all, spelled);
        assert_eq!(all.0, Filter::VALID);
    }
}
