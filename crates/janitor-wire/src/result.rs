//! `celery-task-meta-<id>` and `celery-taskset-meta-<id>` values written by Celery's Redis
//! result backend.
//!
//! JSON is read; a value that is not JSON (pickle, msgpack, compressed) is kept opaque and never
//! deserialized. `date_done` is naive UTC in Celery 5.3 and carries `+00:00` from 5.5 on; both
//! are accepted. STARTED and RETRY have no `date_done`.

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq)]
pub struct ResultMeta {
    pub status: String,
    pub task_id: Option<String>,
    /// Only present with `result_extended=True`.
    pub name: Option<String>,
    pub args: Option<Vec<Value>>,
    pub kwargs: Option<Map<String, Value>>,
    pub date_done: Option<DateTime<Utc>>,
    pub group_id: Option<String>,
    pub parent_id: Option<String>,
    pub queue: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once per key and consumed at once; boxing would change the public API"
)]
pub enum ResultValue {
    Json(ResultMeta),
    /// Not a JSON task meta (pickle, msgpack, compressed, or JSON without a `status`, such as a
    /// group meta): never deserialized further.
    Opaque,
}

/// A saved `GroupResult` (`celery-taskset-meta-<group_id>`), written by `GroupResult.save()` or
/// for a chord whose header holds groups: `{"result": [[gid, parent], [member, …]]}`, each member
/// `[[task_id, parent], children]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMeta {
    pub group_id: String,
    /// Direct members' ids, in group order (a nested group shows up as its own id).
    pub members: Vec<String>,
}

impl GroupMeta {
    /// `None` for anything that is not a JSON group meta; pickled values are never deserialized.
    pub fn parse(raw: &[u8]) -> Option<GroupMeta> {
        if raw.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return None;
        }
        let value: Value = serde_json::from_slice(raw).ok()?;
        let [head, members] = value.get("result")?.as_array()?.as_slice() else {
            return None;
        };
        let id_of = |tuple: &Value| tuple.get(0)?.as_str().map(str::to_owned);
        Some(GroupMeta {
            group_id: id_of(head)?,
            members: members
                .as_array()?
                .iter()
                .map(|m| m.get(0).and_then(id_of))
                .collect::<Option<_>>()?,
        })
    }
}

impl ResultMeta {
    /// States in which a task is still in flight: its owner row is not "lost".
    pub fn is_in_flight(&self) -> bool {
        matches!(self.status.as_str(), "STARTED" | "RETRY" | "RECEIVED")
    }
}

/// Parses Celery's `date_done`, accepting both the naive (5.3) and the offset (5.5+) form.
pub fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(dt) = DateTime::parse_from_rfc3339(text) {
        return Some(dt.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|n| n.and_utc())
}

impl ResultValue {
    pub fn parse(raw: &[u8]) -> ResultValue {
        let trimmed = raw.iter().position(|b| !b.is_ascii_whitespace());
        if trimmed.map(|i| raw[i]) != Some(b'{') {
            return ResultValue::Opaque;
        }
        let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(raw) else {
            return ResultValue::Opaque;
        };
        let Some(status) = map.get("status").and_then(Value::as_str) else {
            return ResultValue::Opaque;
        };
        let s = |k: &str| map.get(k).and_then(Value::as_str).map(str::to_owned);
        ResultValue::Json(ResultMeta {
            status: status.to_owned(),
            task_id: s("task_id"),
            name: s("name"),
            args: map.get("args").and_then(Value::as_array).cloned(),
            kwargs: map.get("kwargs").and_then(Value::as_object).cloned(),
            date_done: map
                .get("date_done")
                .and_then(Value::as_str)
                .and_then(parse_timestamp),
            group_id: s("group_id"),
            parent_id: s("parent_id"),
            queue: s("queue"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naive_and_offset_dates_are_utc() {
        let a = parse_timestamp("2026-11-28T04:06:20.925902").unwrap();
        let b = parse_timestamp("2026-11-28T04:06:20.925902+00:00").unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn whole_seconds_have_no_fraction() {
        // Python's isoformat() drops `.ffffff` when the microseconds are zero.
        let a = parse_timestamp("2030-01-01T00:00:00").unwrap();
        let b = parse_timestamp("2030-01-01T00:00:00+00:00").unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn started_is_in_flight_without_date_done() {
        // Observed with task_track_started=True (celery-redis-layout.md §4.1); no captured fixture
        // holds a STARTED meta.
        let raw = br#"{"status": "STARTED", "result": {"pid": 10370, "hostname": "w3@vm"}, "traceback": null, "children": [], "date_done": null, "task_id": "x"}"#;
        let ResultValue::Json(meta) = ResultValue::parse(raw) else {
            panic!("STARTED meta is JSON");
        };
        assert!(meta.is_in_flight());
        assert_eq!(meta.date_done, None);
    }

    #[test]
    fn group_metas_list_their_members() {
        let raw = br#"{"result": [["g", null], [[["a", null], null], [["b", null], null]]]}"#;
        let group = GroupMeta::parse(raw).unwrap();
        assert_eq!(group.group_id, "g");
        assert_eq!(group.members, ["a", "b"]);
        assert_eq!(ResultValue::parse(raw), ResultValue::Opaque);
        assert_eq!(GroupMeta::parse(b"\x80\x04\x95"), None);
    }

    #[test]
    fn binary_values_are_opaque() {
        assert_eq!(ResultValue::parse(b"\x80\x04\x95..."), ResultValue::Opaque);
        assert_eq!(ResultValue::parse(b"{not json"), ResultValue::Opaque);
    }
}
