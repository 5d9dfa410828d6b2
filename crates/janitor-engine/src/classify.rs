//! Classification of one Redis entry: live, orphaned, unowned or undecidable.
//!
//! This is pure: [`pre_classify`] reads the bytes and the `[[owners]]` rules and either settles
//! the entry (unowned, undecidable) or names the owner row to look up; the scan then asks the
//! database in batches and settles the rest with [`Entry::settle`].

use chrono::{DateTime, Utc};
use janitor_config::{IdSource, OwnerMatch, Owners};
use janitor_wire::{Envelope, ResultValue, UnackedEntry};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::spec::ValueSpec;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, PartialOrd, Ord,
)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Location {
    Queue,
    Unacked,
    Result,
}

impl Location {
    pub const ALL: [Location; 3] = [Location::Queue, Location::Unacked, Location::Result];

    pub fn as_str(self) -> &'static str {
        match self {
            Location::Queue => "queue",
            Location::Unacked => "unacked",
            Location::Result => "result",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum State {
    /// The owner row exists.
    Live,
    /// An owner rule matched and the row is missing.
    Orphaned,
    /// No rule matches: never removed as an orphan.
    Unowned,
    /// The payload or the owner can't be read safely: never removed, only reported.
    Undecidable,
}

impl State {
    pub const ALL: [State; 4] = [
        State::Live,
        State::Orphaned,
        State::Unowned,
        State::Undecidable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Live => "live",
            State::Orphaned => "orphaned",
            State::Unowned => "unowned",
            State::Undecidable => "undecidable",
        }
    }
}

/// One Redis entry (a list element, an `unacked` field, a result key) and what it is.
#[derive(Debug, Clone)]
pub struct Entry {
    pub location: Location,
    /// The list key, the `unacked` hash key, or the result key.
    pub key: Vec<u8>,
    pub queue: Option<String>,
    pub task_id: Option<String>,
    pub task_name: Option<String>,
    pub owner_table: Option<String>,
    pub owner_id: Option<String>,
    pub state: State,
    pub reason: Option<String>,
    /// Exact bytes as read; removals compare against them.
    pub raw: Vec<u8>,
    /// `unacked` field (delivery tag).
    pub field: Option<Vec<u8>>,
    /// List index from the head when read.
    pub index: Option<i64>,
    /// The list's length when this entry was read (index and length come from one MULTI).
    pub list_len: Option<i64>,
    pub result_status: Option<String>,
    pub date_done: Option<DateTime<Utc>>,
    pub eta: Option<String>,
    /// Remaining TTL in ms of a result key when read (-1: none).
    pub pttl: Option<i64>,
    pub(crate) owner_rule: Option<usize>,
    /// When the scan read this entry: an orphan is confirmed only `grace_seconds` after it.
    pub(crate) read_at: Option<std::time::Instant>,
    /// What a plan keeps of `raw` once it drops the bytes (see [`Entry::keep_spec_only`]).
    pub(crate) spec: Option<ValueSpec>,
    /// Not a kombu message at all (a list element that is no Celery envelope): a queue purge
    /// leaves it alone, as a cleanup does.
    pub(crate) foreign: bool,
}

impl Entry {
    pub(crate) fn new(location: Location, key: Vec<u8>, raw: Vec<u8>) -> Self {
        Entry {
            location,
            key,
            queue: None,
            task_id: None,
            task_name: None,
            owner_table: None,
            owner_id: None,
            state: State::Undecidable,
            reason: None,
            raw,
            field: None,
            index: None,
            list_len: None,
            result_status: None,
            date_done: None,
            eta: None,
            pttl: None,
            owner_rule: None,
            read_at: None,
            spec: None,
            foreign: false,
        }
    }

    fn undecidable(mut self, reason: impl Into<String>) -> Self {
        self.state = State::Undecidable;
        self.reason = Some(reason.into());
        self
    }

    /// Settles a pending entry with the database's answer.
    pub(crate) fn settle(&mut self, exists: bool) {
        self.state = if exists { State::Live } else { State::Orphaned };
        self.reason = Some(if exists {
            "owner row exists".into()
        } else {
            "owner row is missing".into()
        });
    }

    /// The owner rule index and id still to be looked up, if any.
    pub(crate) fn pending_owner(&self) -> Option<(usize, &str)> {
        match (self.owner_rule, &self.owner_id, self.reason.is_none()) {
            (Some(rule), Some(id), true) => Some((rule, id.as_str())),
            _ => None,
        }
    }

    /// Replaces the bytes with their spec: a plan holds entries without their bytes.
    pub(crate) fn keep_spec_only(&mut self) {
        if self.spec.is_none() {
            self.spec = Some(ValueSpec::of(&self.raw, self.task_id.as_deref()));
        }
        self.raw = Vec::new();
    }

    /// The spec of the bytes as read, which the removal scripts compare with.
    pub fn value_spec(&self) -> ValueSpec {
        self.spec
            .clone()
            .unwrap_or_else(|| ValueSpec::of(&self.raw, self.task_id.as_deref()))
    }

    /// Whether this entry means work is still queued or running for its owner row.
    pub fn holds_work(&self) -> bool {
        match self.location {
            Location::Queue | Location::Unacked => true,
            Location::Result => matches!(
                self.result_status.as_deref(),
                Some("STARTED" | "RETRY" | "RECEIVED")
            ),
        }
    }
}

/// What the scan read, before classification.
pub(crate) enum RawEntry {
    Queue {
        key: Vec<u8>,
        queue: String,
        index: i64,
        list_len: i64,
        raw: Vec<u8>,
    },
    Unacked {
        key: Vec<u8>,
        field: Vec<u8>,
        raw: Vec<u8>,
    },
    Result {
        key: Vec<u8>,
        task_id: String,
        raw: Vec<u8>,
        pttl: i64,
    },
}

/// Reads the entry and applies the owner rules. The returned entry is settled (unowned or
/// undecidable) unless [`Entry::pending_owner`] names a row to look up.
pub(crate) fn pre_classify(raw: RawEntry, owners: &Owners) -> Entry {
    match raw {
        RawEntry::Queue {
            key,
            queue,
            index,
            list_len,
            raw,
        } => {
            let mut e = Entry::new(Location::Queue, key, raw);
            e.queue = Some(queue);
            e.index = Some(index);
            e.list_len = Some(list_len);
            match Envelope::parse(&e.raw) {
                Ok(env) => classify_message(e, &env, owners),
                Err(err) => {
                    e.foreign = true;
                    e.undecidable(format!("not a Celery message: {err}"))
                }
            }
        }
        RawEntry::Unacked { key, field, raw } => {
            let mut e = Entry::new(Location::Unacked, key, raw);
            e.field = Some(field);
            match UnackedEntry::parse(&e.raw) {
                Ok(u) => {
                    e.queue = Some(u.routing_key.clone());
                    classify_message(e, &u.envelope, owners)
                }
                Err(err) => e.undecidable(format!("not a kombu unacked entry: {err}")),
            }
        }
        RawEntry::Result {
            key,
            task_id,
            raw,
            pttl,
        } => {
            let mut e = Entry::new(Location::Result, key, raw);
            e.task_id = Some(task_id);
            e.pttl = Some(pttl);
            classify_result(e, owners)
        }
    }
}

fn classify_message(mut e: Entry, env: &Envelope, owners: &Owners) -> Entry {
    e.task_id = env.task_id.clone();
    e.eta = env.eta.clone();
    if e.queue.is_none() {
        e.queue = env.routing_key.clone();
    }
    // The name is in the headers for protocol 2; protocol 1 needs a safely decodable body.
    let call = env.decode_call();
    e.task_name = env
        .task_name
        .clone()
        .or_else(|| call.as_ref().ok().and_then(|c| c.name.clone()));
    let Some(name) = e.task_name.clone() else {
        let why = match &call {
            Err(err) => format!("task name unreadable: {err}"),
            Ok(_) => "message has no task name".into(),
        };
        return e.undecidable(why);
    };
    let Some(rule_idx) = rule_for_name(&mut e, &name, owners) else {
        return e;
    };
    let args = call
        .as_ref()
        .map(|c| (c.args.as_slice(), &c.kwargs))
        .map_err(|err| format!("arguments unreadable: {err}"));
    let id = message_owner_id(&owners.rules()[rule_idx], e.task_id.as_deref(), args);
    with_owner(e, rule_idx, id, owners)
}

/// The owner row id of a task message (or of a call about to run: the worker guard), by the
/// rule's `id_from`: the task id, or one of the call's arguments (`args` is `Err` when they
/// can't be read). The one place a message's owner id is read.
pub(crate) fn message_owner_id(
    rule: &janitor_config::OwnerRule,
    task_id: Option<&str>,
    args: Result<(&[Value], &Map<String, Value>), String>,
) -> Result<String, String> {
    match &rule.id_from {
        IdSource::TaskId => task_id
            .map(str::to_owned)
            .ok_or_else(|| "message has no task id".to_owned()),
        source => {
            let (args, kwargs) = args?;
            id_from_call(source, args, kwargs)
        }
    }
}

/// The rule owning task `name`, when exactly one does.
pub(crate) fn owning_rule(owners: &Owners, name: &str) -> Option<usize> {
    match owners.match_task(name) {
        OwnerMatch::One(rule) => Some(rule_index(owners, rule)),
        OwnerMatch::None | OwnerMatch::Ambiguous(..) => None,
    }
}

/// The rule owning task `name`; `None` when there is none (the entry is settled as unowned) or
/// more than one (settled as undecidable).
fn rule_for_name(e: &mut Entry, name: &str, owners: &Owners) -> Option<usize> {
    match owners.match_task(name) {
        OwnerMatch::None => {
            e.state = State::Unowned;
            e.reason = Some("no [[owners]] rule matches this task".into());
            None
        }
        OwnerMatch::Ambiguous(a, b) => {
            e.state = State::Undecidable;
            e.reason = Some(format!("task matches owners {} and {}", a.table, b.table));
            None
        }
        OwnerMatch::One(rule) => Some(rule_index(owners, rule)),
    }
}

/// Records the owner rule and the row id to look up — or why the id can't be read.
fn with_owner(mut e: Entry, rule_idx: usize, id: Result<String, String>, owners: &Owners) -> Entry {
    e.owner_table = Some(owners.rules()[rule_idx].table.clone());
    e.owner_rule = Some(rule_idx);
    match id {
        Ok(id) => {
            e.owner_id = Some(id);
            e
        }
        Err(why) => e.undecidable(why),
    }
}

fn classify_result(mut e: Entry, owners: &Owners) -> Entry {
    let meta = match ResultValue::parse(&e.raw) {
        ResultValue::Json(meta) => Some(meta),
        ResultValue::Opaque => None,
    };
    if let Some(m) = &meta {
        e.result_status = Some(m.status.clone());
        e.date_done = m.date_done;
        e.task_name = m.name.clone();
        e.queue = m.queue.clone();
    }
    let rule_idx = match e.task_name.clone() {
        Some(name) => match rule_for_name(&mut e, &name, owners) {
            Some(rule_idx) => rule_idx,
            None => return e,
        },
        None => match owners.unnamed_results_owner() {
            Some(rule) => rule_index(owners, rule),
            None => {
                e.state = State::Unowned;
                e.reason = Some(if meta.is_some() {
                    "result has no task name (result_extended is off)".into()
                } else {
                    "result value is not JSON (never deserialized)".into()
                });
                return e;
            }
        },
    };
    let id = match (&owners.rules()[rule_idx].id_from, &meta) {
        (IdSource::TaskId, _) => e.task_id.clone().ok_or_else(|| "no task id".to_owned()),
        (source, Some(m)) => match (&m.args, &m.kwargs) {
            (Some(args), kwargs) => {
                id_from_call(source, args, kwargs.as_ref().unwrap_or(&Map::new()))
            }
            (None, _) => Err("result carries no arguments (result_extended is off)".into()),
        },
        (_, None) => Err("result value is not JSON (never deserialized)".into()),
    };
    with_owner(e, rule_idx, id, owners)
}

fn rule_index(owners: &Owners, rule: &janitor_config::OwnerRule) -> usize {
    owners
        .rules()
        .iter()
        .position(|r| std::ptr::eq(r, rule))
        .expect("rule comes from this Owners")
}

fn id_from_call(
    source: &IdSource,
    args: &[Value],
    kwargs: &Map<String, Value>,
) -> Result<String, String> {
    let value = match source {
        IdSource::Arg(n) => args
            .get(*n)
            .ok_or_else(|| format!("message has no positional argument {n}"))?,
        IdSource::Kwarg(k) => kwargs
            .get(k)
            .ok_or_else(|| format!("message has no keyword argument {k}"))?,
        IdSource::TaskId => unreachable!("handled by the caller"),
    };
    match value {
        Value::String(s) if !s.is_empty() => Ok(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
        other => Err(format!("owner id {other} is not a string or integer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owners(toml: &str) -> Owners {
        let text = format!("[redis]\nurl = \"redis://x\"\n{toml}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        let flags = janitor_config::Flags {
            config: Some(path),
            ..Default::default()
        };
        janitor_config::resolve(&flags, &|_| None).unwrap().owners
    }

    const RULE: &str = "[[owners]]\ntable = \"scan_tasks\"\nid_column = \"id\"\ntasks = [\"app.add\"]\nid_from = \"arg:0\"\n";
    const ADD: &str = r#"{"body": "W1syLCAzXSwge30sIHsiY2FsbGJhY2tzIjogbnVsbCwgImVycmJhY2tzIjogbnVsbCwgImNoYWluIjogbnVsbCwgImNob3JkIjogbnVsbH1d", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"lang": "py", "task": "app.add", "id": "t1"}, "properties": {"correlation_id": "t1", "delivery_info": {"exchange": "", "routing_key": "celery"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "d1"}}"#;

    fn queued(raw: &str) -> RawEntry {
        RawEntry::Queue {
            key: b"celery".to_vec(),
            queue: "celery".into(),
            index: 0,
            list_len: 1,
            raw: raw.as_bytes().to_vec(),
        }
    }

    #[test]
    fn owned_message_names_its_row() {
        let e = pre_classify(queued(ADD), &owners(RULE));
        assert_eq!(e.pending_owner(), Some((0, "2")));
        assert_eq!(e.owner_table.as_deref(), Some("scan_tasks"));
    }

    #[test]
    fn unmatched_task_is_unowned() {
        let e = pre_classify(queued(ADD), &owners(&RULE.replace("app.add", "app.other")));
        assert_eq!(e.state, State::Unowned);
        assert!(e.pending_owner().is_none());
    }

    #[test]
    fn pickle_args_are_undecidable_but_task_id_is_not() {
        let pickled = ADD.replace("application/json", "application/x-python-serialize");
        let e = pre_classify(queued(&pickled), &owners(RULE));
        assert_eq!(e.state, State::Undecidable);
        assert!(e.pending_owner().is_none());
        let e = pre_classify(queued(&pickled), &owners(&RULE.replace("arg:0", "task_id")));
        assert_eq!(e.pending_owner(), Some((0, "t1")));
    }

    #[test]
    fn garbage_is_undecidable() {
        let e = pre_classify(queued("\u{1}not json"), &owners(RULE));
        assert_eq!(e.state, State::Undecidable);
    }

    #[test]
    fn plain_results_are_unowned_unless_claimed() {
        let raw = br#"{"status": "SUCCESS", "result": 4, "traceback": null, "children": [], "date_done": "2026-11-28T04:07:39.707767+00:00", "task_id": "t9"}"#;
        let r = || RawEntry::Result {
            key: b"celery-task-meta-t9".to_vec(),
            task_id: "t9".into(),
            raw: raw.to_vec(),
            pttl: -1,
        };
        assert_eq!(pre_classify(r(), &owners(RULE)).state, State::Unowned);
        let claimed = RULE.replace("arg:0", "task_id") + "claim_unnamed_results = true\n";
        assert_eq!(
            pre_classify(r(), &owners(&claimed)).pending_owner(),
            Some((0, "t9"))
        );
    }
}
