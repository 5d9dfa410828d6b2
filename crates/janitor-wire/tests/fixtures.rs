//! Pins janitor-wire to the bytes real Celery 5.3, 5.5 and 5.7 workers left in Redis.
//!
//! The unit tests in `src/` show what the model does; these specs show that it matches what
//! Celery really writes. Each scenario in `tests/fixtures/` (see its README) has one spec, named in
//! [`SPECS`]; `every_fixture_file_belongs_to_a_spec` fails when a captured file has none. Where
//! the versions differ (priority restore in kombu 5.3, naive `date_done` in celery 5.3, the 5.7
//! binding bookkeeping and chord claim keys) the spec says which capture shows what.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use janitor_testkit::fixtures as support;
use janitor_wire::result::parse_timestamp;
use janitor_wire::{
    BackendKey, BackendLayout, BodyError, BrokerKey, BrokerLayout, Envelope, GroupMeta, Protocol,
    ResultMeta, ResultValue, UnackedEntry,
};
use serde_json::{json, Value as Json};
use support::{file_name, scenario, show, Blob, Capture, Dump, Value};

/// Every scenario and the test that pins its files.
const SPECS: &[(&str, fn())] = &[
    ("A", published_tasks_wait_in_their_priority_lists),
    (
        "B",
        every_serializer_keeps_headers_readable_and_pickle_is_never_decoded,
    ),
    ("C1", a_running_solo_task_stays_in_unacked),
    (
        "C2",
        an_eta_task_is_held_in_unacked_while_results_accumulate,
    ),
    ("C3", an_unacked_value_is_envelope_exchange_and_routing_key),
    ("C3b", a_redelivered_unacked_value_only_gains_two_flags),
    ("D", result_metas_groups_and_chords_read_in_every_version),
    ("E", control_reply_and_event_envelopes_carry_no_task),
    ("H", prefixed_keys_classify_under_their_layouts),
    ("J", a_killed_worker_leaves_its_messages_in_unacked),
    ("J2", restored_messages_return_to_their_queues),
];

/// `unacked_index` scores are the worker's `time.time()`: seconds, around 2026.
const WORKER_SECONDS: std::ops::Range<f64> = 1.7e9..2.0e9;
/// `_kombu.binding_deadlines` scores are Redis `TIME` in milliseconds.
const SERVER_MILLIS: std::ops::Range<f64> = 1.7e12..2.0e12;
/// Exchanges whose bindings belong to remote control, control replies and events.
const CONTROL_EXCHANGES: [&[u8]; 3] = [b"celery.pidbox", b"reply.celery.pidbox", b"celeryev"];

// ---------------------------------------------------------------------------------------------
// Coverage

#[test]
fn every_fixture_file_belongs_to_a_spec() {
    let mut folders: Vec<String> = std::fs::read_dir(support::fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .map(|p| file_name(&p))
        .collect();
    folders.sort();
    let mut expected: Vec<&str> = Capture::ALL.iter().map(|c| c.folder()).collect();
    expected.sort();
    assert_eq!(folders, expected, "a capture folder has no Capture variant");

    for capture in Capture::ALL {
        let files = support::files_in(capture);
        // The shared docs list 10 files per same-scenario run and 9 for the original 5.7 run.
        let count = if capture == Capture::Celery57 { 9 } else { 10 };
        assert_eq!(files.len(), count, "{capture}: {files:?}");
        for path in files {
            let name = file_name(&path);
            let id = support::scenario_of(&name);
            assert!(
                SPECS.iter().any(|(spec, _)| *spec == id),
                "{capture}/{name}: no spec reads scenario {id}"
            );
            let ext = path.extension().unwrap().to_str().unwrap();
            let expected = match id {
                "B" => "jsonl",
                "C3" | "C3b" | "E" => "json",
                _ => "txt",
            };
            assert_eq!(ext, expected, "{capture}/{name}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// The layouts a capture was written with: the `H_` runs set `global_keyprefix='myapp'` on both
/// sides; the broker uses it raw and the backend appends `_`.
fn layouts(path: &Path) -> (BrokerLayout, BackendLayout) {
    if support::scenario_of(&file_name(path)) == "H" {
        (
            BrokerLayout::with_prefix(b"myapp".to_vec()),
            BackendLayout::with_prefix(b"myapp"),
        )
    } else {
        (BrokerLayout::default(), BackendLayout::default())
    }
}

fn every_dump() -> Vec<(Capture, Dump, BrokerLayout, BackendLayout)> {
    let mut dumps = Vec::new();
    for capture in Capture::ALL {
        for path in support::files_in(capture) {
            if path.extension().is_some_and(|e| e == "txt") {
                let (broker, backend) = layouts(&path);
                dumps.push((capture, Dump::load(&path), broker, backend));
            }
        }
    }
    dumps
}

fn ids_of<'a>(envelopes: impl IntoIterator<Item = &'a Envelope>) -> BTreeSet<String> {
    envelopes
        .into_iter()
        .map(|e| e.task_id.clone().unwrap())
        .collect()
}

fn envelope(raw: &[u8], context: &str) -> Envelope {
    Envelope::parse(raw)
        .unwrap_or_else(|e| panic!("{context}: not an envelope ({e}): {}", show(raw)))
}

fn task_id(n: u32, prefix: &str) -> String {
    format!("{prefix}-0000-0000-0000-{n:012}")
}

fn meta(raw: &[u8], context: &str) -> ResultMeta {
    match ResultValue::parse(raw) {
        ResultValue::Json(meta) => meta,
        ResultValue::Opaque => panic!("{context}: not a JSON task meta: {}", show(raw)),
    }
}

/// Every task meta of a dump, by task id, with its raw JSON for fields the model leaves out.
fn task_metas(dump: &Dump, backend: &BackendLayout) -> BTreeMap<String, (ResultMeta, Json)> {
    let mut metas = BTreeMap::new();
    for e in &dump.entries {
        if let BackendKey::TaskMeta { task_id } = backend.classify(&e.key) {
            let raw = dump.string(&e.key);
            let id = String::from_utf8(task_id.to_vec()).unwrap();
            let parsed = meta(raw, &dump.name);
            metas.insert(id, (parsed, serde_json::from_slice(raw).unwrap()));
        }
    }
    metas
}

/// Celery 5.3 writes `date_done` as naive UTC, 5.5 and 5.7 with `+00:00`; both read as the
/// same instant.
fn assert_date_done(capture: Capture, meta: &ResultMeta, raw: &Json, context: &str) {
    let text = raw["date_done"]
        .as_str()
        .unwrap_or_else(|| panic!("{context}: no date_done"));
    if capture == Capture::Celery53 {
        assert_eq!(
            text.len(),
            "2026-11-28T04:06:20.925902".len(),
            "{context}: {text}"
        );
    } else {
        assert!(text.ends_with("+00:00"), "{context}: {text}");
    }
    assert_eq!(meta.date_done, parse_timestamp(text), "{context}");
    assert!(meta.date_done.is_some(), "{context}: {text}");
}

/// A message held in `unacked`, with what its value let us read.
struct Held {
    tag: Vec<u8>,
    score: f64,
    raw: Blob,
    /// `None` when the capture cut the value.
    entry: Option<UnackedEntry>,
}

impl Held {
    /// Whether this message is the given task: from the parsed envelope, or from the part the
    /// capture kept.
    fn is_task(&self, id: &str, name: &str) -> bool {
        match &self.entry {
            Some(e) => {
                e.envelope.task_id.as_deref() == Some(id)
                    && e.envelope.task_name.as_deref() == Some(name)
            }
            None => self.raw.contains(id) && self.raw.contains(name),
        }
    }
}

/// The rules every `unacked` hash follows, in every version: each field is the delivery tag of
/// the `[envelope, exchange, routing_key]` stored under it, and has a receive time in
/// `unacked_index`. Returns the entries for the scenario's own facts.
fn unacked(dump: &Dump, broker: &BrokerLayout) -> Vec<Held> {
    let hash_key = broker.unacked_key();
    let index_key = broker.unacked_index_key();
    let Some(_) = dump.get(&hash_key) else {
        assert!(
            dump.get(&index_key).is_none(),
            "{}: index without hash",
            dump.name
        );
        return Vec::new();
    };
    let index = dump.zset(&index_key);
    let mut held = Vec::new();
    for (tag, raw) in dump.hash(&hash_key) {
        let context = format!("{} unacked {}", dump.name, show(tag));
        let score = *index
            .get(tag)
            .unwrap_or_else(|| panic!("{context}: no unacked_index member"));
        assert!(WORKER_SECONDS.contains(&score), "{context}: score {score}");
        let entry = match raw.whole() {
            Some(bytes) => {
                let entry = UnackedEntry::parse(bytes)
                    .unwrap_or_else(|e| panic!("{context}: {e}: {}", show(bytes)));
                let env = &entry.envelope;
                assert!(env.is_task(), "{context}");
                assert_eq!(env.protocol, Protocol::V2, "{context}");
                assert_eq!(
                    env.delivery_tag.as_deref().map(str::as_bytes),
                    Some(&tag[..])
                );
                // Celery publishes through the nameless exchange, so the routing key is the queue.
                assert_eq!(entry.exchange, "", "{context}");
                assert_eq!(entry.direct_queue(), Some(entry.routing_key.as_str()));
                assert_eq!(env.routing_key.as_deref(), Some(entry.routing_key.as_str()));
                Some(entry)
            }
            None => {
                // The capture kept a prefix only: it must not parse, and it is still the
                // array-of-envelope-object shape.
                assert!(UnackedEntry::parse(&raw.bytes).is_err(), "{context}");
                assert!(raw.bytes.starts_with(br#"[{"body": ""#), "{context}");
                None
            }
        };
        held.push(Held {
            tag: tag.clone(),
            score,
            raw: raw.clone(),
            entry,
        });
    }
    if held.iter().all(|h| h.entry.is_some()) {
        let fields: BTreeSet<&[u8]> = held.iter().map(|h| h.tag.as_slice()).collect();
        let members: BTreeSet<&[u8]> = index.keys().map(Vec::as_slice).collect();
        assert_eq!(fields, members, "{}: hash and index disagree", dump.name);
    }
    held
}

/// The messages of one queue list, newest first, parsed (cut elements are `None`).
fn queue(dump: &Dump, key: &[u8]) -> Vec<(Blob, Option<Envelope>)> {
    dump.list(key)
        .iter()
        .map(|blob| {
            let env = blob.whole().map(|raw| envelope(raw, &dump.name));
            (blob.clone(), env)
        })
        .collect()
}

/// The envelope kombu stored in an unacked value, as the exact bytes it was popped with.
fn envelope_bytes_of(unacked_value: &[u8]) -> &[u8] {
    let tail = br#", "", "celery"]"#;
    assert!(unacked_value.starts_with(b"[") && unacked_value.ends_with(tail));
    &unacked_value[1..unacked_value.len() - tail.len()]
}

/// What a restore adds to a message: `redelivered` as the last header and the last
/// `delivery_info` key. Nothing else changes, byte for byte.
fn with_redelivered(envelope: &[u8], routing_key: &str) -> Vec<u8> {
    let text = std::str::from_utf8(envelope).unwrap();
    let di = format!(r#""routing_key": "{routing_key}"}}"#);
    assert_eq!(text.matches(r#""stamps": {}}"#).count(), 1);
    assert_eq!(text.matches(&di).count(), 1);
    text.replace(r#""stamps": {}}"#, r#""stamps": {}, "redelivered": true}"#)
        .replace(
            &di,
            &format!(r#""routing_key": "{routing_key}", "redelivered": true}}"#),
        )
        .into_bytes()
}

// ---------------------------------------------------------------------------------------------
// Every dump

#[test]
fn every_key_in_every_dump_is_a_known_kind() {
    for (capture, dump, broker, backend) in every_dump() {
        for e in &dump.entries {
            let context = format!("{} {}", dump.name, e.key_text());
            let broker_kind = broker.classify(&e.key);
            let backend_kind = backend.classify(&e.key);
            if broker_kind != BrokerKey::Other {
                assert_eq!(backend_kind, BackendKey::Other, "{context}");
                // kombu never sets a TTL on its own keys.
                assert_eq!(e.pttl, -1, "{context}");
            }
            match (&e.value, &broker_kind, &backend_kind) {
                (Value::List(items), BrokerKey::Other, BackendKey::Other) => {
                    let (queue, step) = broker
                        .split_queue_key(&e.key)
                        .unwrap_or_else(|| panic!("{context}: list outside the prefix"));
                    assert!(broker.priority_steps.contains(&step), "{context}");
                    assert_eq!(broker.queue_key(queue, step), e.key, "{context}");
                    assert_eq!(e.pttl, -1, "{context}");
                    for blob in items {
                        let Some(raw) = blob.whole() else {
                            assert!(Envelope::parse(&blob.bytes).is_err(), "{context}");
                            continue;
                        };
                        let env = envelope(raw, &context);
                        assert!(env.is_task(), "{context}");
                        assert_eq!(env.exchange.as_deref(), Some(""), "{context}");
                        assert_eq!(env.routing_key.as_deref().map(str::as_bytes), Some(queue));
                    }
                }
                (Value::Hash(_), BrokerKey::Unacked, _) => {
                    unacked(&dump, &broker);
                }
                (Value::Zset(members), BrokerKey::UnackedIndex, _) => {
                    assert!(members.iter().all(|(_, s)| WORKER_SECONDS.contains(s)));
                }
                (Value::Zset(members), BrokerKey::BindingDeadlines, _) => {
                    assert!(capture.is_57(), "{context}: deadlines are new in kombu 5.7");
                    for (exchange, deadline) in members {
                        assert!(SERVER_MILLIS.contains(deadline), "{context}");
                        // Only exchanges with expiring queues get a deadline.
                        assert!(
                            CONTROL_EXCHANGES.contains(&exchange.as_slice()),
                            "{context}"
                        );
                    }
                }
                (Value::Set(members), BrokerKey::Binding { .. }, _) => {
                    assert!(members.iter().all(|m| broker.parse_binding(m).is_some()));
                }
                (Value::Set(members), BrokerKey::PermanentBinding { exchange }, _) => {
                    assert!(
                        capture.is_57(),
                        "{context}: permanent tables are new in 5.7"
                    );
                    // Only task queues are permanent, and each mirrors its binding table.
                    assert!(!CONTROL_EXCHANGES.contains(exchange), "{context}");
                    let table = [broker.prefix.as_slice(), b"_kombu.binding.", exchange].concat();
                    assert_eq!(members, dump.set(&table), "{context}");
                }
                (Value::String(_), _, BackendKey::TaskMeta { task_id }) => {
                    let id = std::str::from_utf8(task_id).unwrap();
                    assert_eq!(backend.task_meta_key(id), e.key);
                    let meta = meta(dump.string(&e.key), &context);
                    assert_eq!(meta.task_id.as_deref(), Some(id), "{context}");
                }
                (Value::String(_), _, BackendKey::GroupMeta { group_id }) => {
                    let group = GroupMeta::parse(dump.string(&e.key))
                        .unwrap_or_else(|| panic!("{context}: not a group meta"));
                    assert_eq!(group.group_id.as_bytes(), *group_id, "{context}");
                    assert!(!group.members.is_empty(), "{context}");
                }
                (Value::String(_), _, BackendKey::ChordPart { part: b'c', .. }) => {
                    assert!(capture.is_57(), "{context}: the claim key is new in 5.7");
                    assert_eq!(dump.string(&e.key), b"done", "{context}");
                    assert!(0 < e.pttl && e.pttl <= 300_000, "{context}: {}", e.pttl);
                }
                (Value::String(_), _, BackendKey::ChordPart { part: b's', .. })
                | (Value::Set(_), _, BackendKey::ChordPart { part: b'd', .. })
                | (Value::Zset(_), _, BackendKey::ChordPart { part: b'j', .. }) => {}
                (value, broker_kind, backend_kind) => panic!(
                    "{context}: unexplained key ({broker_kind:?}, {backend_kind:?}): {value:?}"
                ),
            }
        }
    }
}

#[test]
fn binding_members_name_task_queues_or_control_queues() {
    for (_, dump, broker, _) in every_dump() {
        for e in &dump.entries {
            let BrokerKey::Binding { exchange } = broker.classify(&e.key) else {
                continue;
            };
            assert_eq!(broker.binding_exchange(&e.key), Some(exchange));
            let control = CONTROL_EXCHANGES.contains(&exchange);
            for member in dump.set(&e.key) {
                let context = format!("{} {} {}", dump.name, e.key_text(), show(member));
                let binding = broker.parse_binding(member).unwrap();
                assert_eq!(
                    BrokerLayout::is_control_binding(exchange, &binding),
                    control,
                    "{context}"
                );
                // Members are never prefixed, whatever the broker's global_keyprefix.
                assert!(!binding.queue.starts_with(b"myapp"), "{context}");
                assert!(binding.pattern.is_empty(), "{context}");
                match exchange {
                    // One pidbox queue per worker hostname, bound with empty routing key.
                    b"celery.pidbox" => {
                        assert!(binding.routing_key.is_empty(), "{context}");
                        assert!(binding.queue.ends_with(b"@vm.celery.pidbox"), "{context}");
                    }
                    // The worker's gossip receiver.
                    b"celeryev" => {
                        assert_eq!(binding.routing_key, b"worker.#", "{context}");
                        assert!(binding.queue.starts_with(b"celeryev."), "{context}");
                    }
                    _ => {
                        assert!(!control, "{context}");
                        let queue = binding.queue.as_slice();
                        assert!([&b"celery"[..], b"custom", b"prio"].contains(&queue));
                        // Either every queue hangs off exchange `celery` (the original 5.7 app's
                        // task_queues) or each automatic queue gets its own exchange.
                        assert!(exchange == b"celery" || exchange == queue, "{context}");
                        assert_eq!(binding.routing_key, exchange, "{context}");
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A: tasks published with no worker running

/// The ten `aaaaaaaa-…-00NN` tasks: (NN, list key, priority, args, kwargs).
const PUBLISHED: [(u32, &[u8], i64, &str, &str); 10] = [
    (1, b"celery", 0, "[2, 3]", "{}"),
    (2, b"custom", 0, "[4, 5]", "{}"),
    (3, b"celery", 0, "[]", r#"{"x": 1, "y": 2}"#), // countdown
    (4, b"celery", 0, "[1, 1]", "{}"),              // eta + expires in 2030/2031
    (5, b"celery\x06\x166", 7, "[1, 2]", "{}"),
    (6, b"prio", 2, "[1, 3]", "{}"),
    (7, b"celery", 0, "[1, 4]", "{}"),
    (8, b"celery", 0, r#"["a", "b"]"#, "{}"), // ignore_result + custom header
    (9, b"celery", 0, "[1, 2]", "{}"),        // expires=300
    (10, b"custom\x06\x169", 9, "[9, 9]", "{}"),
];

#[test]
fn published_tasks_wait_in_their_priority_lists() {
    for (capture, path) in scenario("A") {
        let dump = Dump::load(&path);
        let broker = BrokerLayout::default();
        let mut seen = BTreeMap::new();
        let mut tags = BTreeSet::new();
        for e in &dump.entries {
            let Value::List(_) = e.value else { continue };
            let (queue, step) = broker.split_queue_key(&e.key).unwrap();
            let mut previous = u32::MAX;
            for (_, env) in queue_of(&dump, &e.key) {
                let id = env.task_id.clone().unwrap();
                let n: u32 = id
                    .strip_prefix("aaaaaaaa-0000-0000-0000-")
                    .unwrap()
                    .parse()
                    .unwrap();
                let context = format!("{} task {n}", dump.name);
                // LRANGE lists the newest first, and the tasks were published in id order.
                assert!(n < previous, "{context}: not newest first");
                previous = n;

                assert_eq!(env.protocol, Protocol::V2, "{context}");
                assert_eq!(env.task_name.as_deref(), Some("app.add"), "{context}");
                assert_eq!(env.routing_key.as_deref().map(str::as_bytes), Some(queue));
                assert_eq!(broker.priority_step(env.priority), step, "{context}");
                assert_eq!(env.retries, Some(0), "{context}");
                assert!(!env.redelivered, "{context}");
                assert!(tags.insert(env.delivery_tag.clone().unwrap()), "{context}");
                seen.insert(n, (e.key.clone(), env));
            }
        }

        // The original 5.7 run published nine tasks: no priority-9 task on `custom`.
        let expected: Vec<u32> = if capture == Capture::Celery57 {
            (1..=9).collect()
        } else {
            (1..=10).collect()
        };
        assert_eq!(
            seen.keys().copied().collect::<Vec<_>>(),
            expected,
            "{}",
            dump.name
        );

        for (n, key, priority, args, kwargs) in PUBLISHED {
            let Some((found_key, env)) = seen.get(&n) else {
                continue;
            };
            let context = format!("{} task {n}", dump.name);
            assert_eq!(found_key.as_slice(), key, "{context}");
            assert_eq!(env.priority, Some(priority), "{context}");
            let call = env.decode_call().unwrap();
            assert_eq!(
                Json::from(call.args),
                serde_json::from_str::<Json>(args).unwrap()
            );
            assert_eq!(
                Json::from(call.kwargs),
                serde_json::from_str::<Json>(kwargs).unwrap()
            );
            assert_eq!(call.name.as_deref(), Some("app.add"));
            assert_eq!(call.id, env.task_id);

            // countdown= becomes an absolute eta at publish time; expires is absolute too.
            match n {
                3 => assert!(env.eta.is_some() && env.expires.is_none(), "{context}"),
                4 => {
                    assert_eq!(env.eta.as_deref(), Some("2030-01-01T00:00:00+00:00"));
                    assert_eq!(env.expires.as_deref(), Some("2031-01-01T00:00:00+00:00"));
                }
                9 => assert!(env.eta.is_none() && env.expires.is_some(), "{context}"),
                _ => assert!(env.eta.is_none() && env.expires.is_none(), "{context}"),
            }
        }

        // Publishing declares the queue's binding, and kombu 5.7 also marks it permanent.
        let permanent = dump
            .entries
            .iter()
            .any(|e| matches!(broker.classify(&e.key), BrokerKey::PermanentBinding { .. }));
        assert_eq!(permanent, capture.is_57(), "{}", dump.name);
    }
}

fn queue_of(dump: &Dump, key: &[u8]) -> Vec<(Blob, Envelope)> {
    queue(dump, key)
        .into_iter()
        .map(|(blob, env)| (blob, env.expect("the A dumps are not cut")))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// B: one envelope per serializer, and protocol 1

#[test]
fn every_serializer_keeps_headers_readable_and_pickle_is_never_decoded() {
    for (capture, path) in scenario("B") {
        // One line per publish, in this order; the id's last two characters name the case.
        let cases = [
            ("js", "application/json", Protocol::V2),
            ("ms", "application/x-msgpack", Protocol::V2),
            ("pi", "application/x-python-serialize", Protocol::V2),
            ("ya", "application/x-yaml", Protocol::V2),
            ("p1", "application/json", Protocol::V1),
            ("pp", "application/x-python-serialize", Protocol::V1),
        ];
        let lines = support::jsonl(&path);
        assert_eq!(lines.len(), cases.len(), "{capture}");
        for (raw, (suffix, content_type, protocol)) in lines.iter().zip(cases) {
            let context = format!("{capture}/B {suffix}");
            let id = format!("bbbbbbbb-0000-0000-0000-0000000000{suffix}");
            let env = envelope(raw, &context);
            assert!(env.is_task(), "{context}");
            // Whatever the serializer, the id is readable without the body.
            assert_eq!(env.task_id.as_deref(), Some(id.as_str()), "{context}");
            assert_eq!(env.routing_key.as_deref(), Some("celery"), "{context}");
            assert_eq!(env.content_type.as_deref(), Some(content_type), "{context}");
            assert_eq!(env.protocol, protocol, "{context}");

            match suffix {
                "js" | "ms" | "ya" => {
                    assert_eq!(env.task_name.as_deref(), Some("app.add"), "{context}");
                    let call = env.decode_call().unwrap();
                    assert_eq!(call.args, vec![json!(2), json!(3)], "{context}");
                    assert!(call.kwargs.is_empty(), "{context}");
                    assert_eq!(call.name.as_deref(), Some("app.add"));
                    assert_eq!(call.id.as_deref(), Some(id.as_str()));
                }
                "pi" => {
                    // Protocol 2 headers still give the name; the body stays opaque.
                    assert_eq!(env.task_name.as_deref(), Some("app.add"), "{context}");
                    assert!(
                        matches!(env.decode_call(), Err(BodyError::Unsafe(_))),
                        "{context}"
                    );
                    assert_eq!(env.resolved_name().as_deref(), Some("app.add"));
                }
                "p1" => {
                    // `headers` is `{}`: the name is only in the (JSON, so safe) body.
                    assert_eq!(env.task_name, None, "{context}");
                    let call = env.decode_call().unwrap();
                    assert_eq!(call.name.as_deref(), Some("app.add"), "{context}");
                    assert_eq!(call.id.as_deref(), Some(id.as_str()), "{context}");
                    assert_eq!(call.args, vec![json!(2), json!(3)], "{context}");
                    assert_eq!(env.resolved_name().as_deref(), Some("app.add"));
                }
                "pp" => {
                    // Protocol 1 + pickle: correlation_id is the only safe source of the id, and
                    // the name stays unknown rather than unpickled.
                    assert_eq!(env.task_name, None, "{context}");
                    assert!(
                        matches!(env.decode_call(), Err(BodyError::Unsafe(_))),
                        "{context}"
                    );
                    assert_eq!(env.resolved_name(), None, "{context}");
                }
                _ => unreachable!(),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// C1–C3b: what a live worker keeps in unacked

#[test]
fn a_running_solo_task_stays_in_unacked() {
    for (capture, path) in scenario("C1") {
        let dump = Dump::load(&path);
        let held = unacked(&dump, &BrokerLayout::default());
        // The solo pool acks only when the task returns, so the running sleeper is still held.
        assert_eq!(held.len(), 1, "{}", dump.name);
        let cccc = |n| task_id(n, "cccccccc");
        assert!(held[0].is_task(&cccc(1), "app.sleeper"), "{}", dump.name);

        let waiting = queue(&dump, b"celery");
        assert_eq!(waiting.len(), 1, "{}", dump.name);
        match &waiting[0] {
            (_, Some(env)) => assert_eq!(env.task_id, Some(cccc(8))),
            (blob, None) => {
                // Only the original 5.7 capture cut its values.
                assert_eq!(capture, Capture::Celery57);
                assert!(blob.contains(&cccc(8)), "{}", dump.name);
            }
        }
        assert_eq!(
            held[0].entry.is_none(),
            capture == Capture::Celery57,
            "{}",
            dump.name
        );
    }
}

#[test]
fn an_eta_task_is_held_in_unacked_while_results_accumulate() {
    for (capture, path) in scenario("C2") {
        let dump = Dump::load(&path);
        let backend = BackendLayout::default();
        let cccc = |n| task_id(n, "cccccccc");

        let metas = task_metas(&dump, &backend);
        let done: Vec<String> = [1, 3, 4, 5, 6, 7, 8].into_iter().map(cccc).collect();
        assert_eq!(
            metas.keys().cloned().collect::<Vec<_>>(),
            done,
            "{}",
            dump.name
        );
        for (id, (meta, raw)) in &metas {
            let context = format!("{} {id}", dump.name);
            assert_eq!(meta.status, "SUCCESS", "{context}");
            assert!(!meta.is_in_flight(), "{context}");
            // Without result_extended there is no name, args or queue.
            assert_eq!((&meta.name, &meta.args, &meta.queue), (&None, &None, &None));
            assert_date_done(capture, meta, raw, &context);
        }

        let held = unacked(&dump, &BrokerLayout::default());
        assert_eq!(held.len(), 1, "{}", dump.name);
        let h = &held[0];
        assert!(h.is_task(&cccc(2), "app.add"), "{}", dump.name);
        match &h.entry {
            Some(entry) => {
                // The score is when the worker received it; the countdown=90 eta is later.
                let eta = parse_timestamp(entry.envelope.eta.as_deref().unwrap()).unwrap();
                let wait = eta.timestamp() as f64 - h.score;
                assert!((80.0..=91.0).contains(&wait), "{}: {wait}", dump.name);
                assert!(!entry.envelope.redelivered);
            }
            None => {
                // The cut value is the start of the same message the C3 file holds whole.
                assert_eq!(capture, Capture::Celery57);
                let c3 = std::fs::read(path.with_file_name("C3_unacked_hash_value.json"));
                assert!(c3.unwrap().starts_with(&h.raw.bytes), "{}", dump.name);
            }
        }
    }
}

#[test]
fn an_unacked_value_is_envelope_exchange_and_routing_key() {
    for (capture, path) in scenario("C3") {
        let raw = std::fs::read(&path).unwrap();
        let entry = UnackedEntry::parse(&raw).unwrap();
        let env = &entry.envelope;
        let context = format!("{capture}/C3");
        assert_eq!(
            (entry.exchange.as_str(), entry.routing_key.as_str()),
            ("", "celery")
        );
        assert_eq!(entry.direct_queue(), Some("celery"));
        assert_eq!(env.protocol, Protocol::V2, "{context}");
        assert_eq!(env.task_name.as_deref(), Some("app.add"), "{context}");
        assert!(env.eta.is_some(), "{context}: a countdown task");
        let expected = match capture {
            Capture::Celery57 => task_id(2, "cccccccc"),
            _ => task_id(1, "99999999"),
        };
        assert_eq!(env.task_id, Some(expected), "{context}");
        // The original 5.7 capture took this value after a restore; the others on first delivery.
        assert_eq!(env.redelivered, capture == Capture::Celery57, "{context}");
        assert_eq!(
            env.decode_call().unwrap().args,
            vec![json!(1), json!(2)],
            "{context}"
        );
    }
}

#[test]
fn a_redelivered_unacked_value_only_gains_two_flags() {
    for (capture, path) in scenario("C3b") {
        let context = format!("{capture}/C3b");
        let again = std::fs::read(&path).unwrap();
        let first = std::fs::read(path.with_file_name("C3_unacked_hash_value.json")).unwrap();
        let (a, b) = (
            UnackedEntry::parse(&first).unwrap(),
            UnackedEntry::parse(&again).unwrap(),
        );
        assert!(
            !a.envelope.redelivered && b.envelope.redelivered,
            "{context}"
        );
        // Same message: the delivery tag survives the restore.
        assert_eq!(
            a.envelope.delivery_tag, b.envelope.delivery_tag,
            "{context}"
        );
        assert_eq!(a.envelope.task_id, b.envelope.task_id, "{context}");
        let expected = [
            b"[".as_slice(),
            &with_redelivered(envelope_bytes_of(&first), "celery"),
            br#", "", "celery"]"#,
        ]
        .concat();
        assert_eq!(show(&again), show(&expected), "{context}");
    }
}

// ---------------------------------------------------------------------------------------------
// D: result metas, groups, chords, chains

/// The chord callback's fixed id in the same-scenario runs.
const CHORD_BODY: &str = "eeeeeeee-0000-0000-0000-0000000000cb";

#[test]
fn result_metas_groups_and_chords_read_in_every_version() {
    for (capture, path) in scenario("D") {
        let dump = Dump::load(&path);
        let backend = BackendLayout::default();
        let metas = task_metas(&dump, &backend);
        let d = |n| task_id(n, "dddddddd");
        let get = |id: &str| {
            metas
                .get(id)
                .unwrap_or_else(|| panic!("{}: no meta for {id}", dump.name))
        };

        for (id, (meta, raw)) in &metas {
            let context = format!("{} {id}", dump.name);
            match meta.status.as_str() {
                // RETRY has no date_done, in every version; the task is not finished.
                "RETRY" => {
                    assert_eq!(meta.date_done, None, "{context}");
                    assert!(meta.is_in_flight(), "{context}");
                }
                "SUCCESS" | "FAILURE" | "REVOKED" => {
                    assert_date_done(capture, meta, raw, &context);
                    assert!(!meta.is_in_flight(), "{context}");
                }
                other => panic!("{context}: unexpected status {other}"),
            }
            // result_extended carries the call; its queue is the delivery routing key.
            if meta.name.is_some() {
                assert!(meta.args.is_some() && meta.kwargs.is_some(), "{context}");
                assert_eq!(meta.queue.as_deref(), Some("celery"), "{context}");
            } else {
                assert_eq!(
                    (&meta.args, &meta.kwargs, &meta.queue),
                    (&None, &None, &None)
                );
            }
        }

        // The RETRY meta's task is waiting in unacked as a new message with the same id.
        let (retry, _) = get(&d(5));
        assert_eq!(retry.status, "RETRY");
        assert_eq!(retry.name.as_deref(), Some("app.flaky"));
        assert_eq!(retry.args, Some(vec![json!(1)]));
        let held = unacked(&dump, &BrokerLayout::default());
        assert_eq!(held.len(), 1, "{}", dump.name);
        let env = &held[0].entry.as_ref().unwrap().envelope;
        assert_eq!(env.task_id, Some(d(5)), "{}", dump.name);
        assert!(
            env.retries.unwrap() >= 1 && env.eta.is_some(),
            "{}",
            dump.name
        );

        let failure = if capture == Capture::Celery57 { 4 } else { 2 };
        let (failed, raw) = get(&d(failure));
        assert_eq!(failed.status, "FAILURE");
        assert_eq!(raw["result"]["exc_type"], "ValueError");

        if capture == Capture::Celery57 {
            // This run revoked two tasks instead of running the plain/extended pairs.
            for n in [2, 3] {
                let (revoked, raw) = get(&d(n));
                assert_eq!(revoked.status, "REVOKED");
                assert_eq!(raw["result"]["exc_type"], "TaskRevokedError");
                assert_eq!(revoked.name.as_deref(), Some("app.add"));
            }
        } else {
            // 0001/0002 without result_extended, 0003/0004 with it.
            assert_eq!(get(&d(1)).0.name, None);
            assert_eq!(get(&d(2)).0.name, None);
            let (extended, _) = get(&d(3));
            assert_eq!(extended.name.as_deref(), Some("app.add"));
            assert_eq!(extended.args, Some(vec![json!(3), json!(3)]));
            let (boom, _) = get(&d(4));
            assert_eq!(
                (boom.status.as_str(), boom.name.as_deref()),
                ("FAILURE", Some("app.boom"))
            );
        }

        // A saved group: every member's meta points back at it.
        let groups: Vec<GroupMeta> = dump
            .entries
            .iter()
            .filter(|e| matches!(backend.classify(&e.key), BackendKey::GroupMeta { .. }))
            .map(|e| GroupMeta::parse(dump.string(&e.key)).unwrap())
            .collect();
        assert_eq!(groups.len(), 1, "{}", dump.name);
        assert_eq!(groups[0].members.len(), 3, "{}", dump.name);
        for member in &groups[0].members {
            assert_eq!(get(member).0.group_id, Some(groups[0].group_id.clone()));
        }

        // Chord claim keys are 5.7-only; a finished chord leaves nothing else behind.
        let claims: Vec<String> = dump
            .entries
            .iter()
            .filter_map(|e| match backend.classify(&e.key) {
                BackendKey::ChordPart { group_id, part } => {
                    assert_eq!(part, b'c', "{}: {}", dump.name, e.key_text());
                    Some(String::from_utf8(group_id.to_vec()).unwrap())
                }
                _ => None,
            })
            .collect();
        let bodies: Vec<&ResultMeta> = metas
            .values()
            .map(|(m, _)| m)
            .filter(|m| m.name.as_deref() == Some("app.tsum"))
            .collect();
        match capture {
            Capture::Celery53 | Capture::Celery55 => {
                assert!(claims.is_empty(), "{}", dump.name);
                // Not in the shared docs: before 5.7 the chord body's meta has no group_id.
                let [body] = bodies[..] else {
                    panic!("{}: one chord body expected", dump.name);
                };
                assert_eq!(body.task_id.as_deref(), Some(CHORD_BODY), "{}", dump.name);
                assert_eq!(body.group_id, None, "{}", dump.name);
            }
            Capture::Celery57Same | Capture::Celery57 => {
                assert!(!claims.is_empty(), "{}", dump.name);
                if capture == Capture::Celery57Same {
                    assert_eq!(bodies[0].task_id.as_deref(), Some(CHORD_BODY));
                }
                // From 5.7 the body names the chord's group: the one its claim key is for.
                assert_eq!(bodies.len(), claims.len(), "{}", dump.name);
                for body in &bodies {
                    assert!(claims.contains(body.group_id.as_ref().unwrap()));
                }
            }
        }
        for body in bodies {
            // The body of `chord(add.s(i, i) for i in range(3))(tsum.s())` gets the header results.
            assert!(body.parent_id.is_some(), "{}", dump.name);
            assert_eq!(body.args.as_ref().unwrap().len(), 1, "{}", dump.name);
        }

        // A chain `add(1, 1) | add(5)`: the child names its parent.
        let (child, _) = metas
            .values()
            .find(|(m, _)| m.args == Some(vec![json!(2), json!(5)]))
            .unwrap_or_else(|| panic!("{}: no chain child", dump.name));
        let (parent, raw) = get(child.parent_id.as_deref().unwrap());
        assert_eq!(parent.args, Some(vec![json!(1), json!(1)]));
        assert_eq!(raw["children"][0][0][0], json!(child.task_id));
    }
}

// ---------------------------------------------------------------------------------------------
// E: control, reply and event envelopes, and the chord join call

#[test]
fn control_reply_and_event_envelopes_carry_no_task() {
    for (capture, path) in scenario("E") {
        let file: Json = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let cases = [
            ("revoke_broadcast", "celery.pidbox", ""),
            (
                "control_reply",
                "reply.celery.pidbox",
                "ebf7cac2-018b-39f9-a166-e02384322304",
            ),
            ("event_task_multi", "celeryev", "task.multi"),
        ];
        for (name, exchange, routing_key) in cases {
            let context = format!("{capture}/E {name}");
            let mut captured = file[name]["envelope"].clone();
            let decoded = captured
                .as_object_mut()
                .unwrap()
                .remove("_decoded_body")
                .unwrap();
            let env = Envelope::parse(captured.to_string().as_bytes()).unwrap();

            // A valid kombu envelope, but no task: no protocol-2 headers, no correlation_id.
            assert!(!env.is_task(), "{context}");
            assert_eq!(env.protocol, Protocol::V1, "{context}");
            assert_eq!((env.task_id.as_ref(), env.task_name.as_ref()), (None, None));
            assert_eq!(env.exchange.as_deref(), Some(exchange), "{context}");
            assert_eq!(env.routing_key.as_deref(), Some(routing_key), "{context}");
            assert!(
                CONTROL_EXCHANGES.contains(&exchange.as_bytes()),
                "{context}"
            );
            // The revoke's headers.expires is a float timestamp, not an ISO string.
            assert_eq!(env.expires, None, "{context}");
            // A body that is not a task must not come back as a task called with no arguments.
            assert!(
                matches!(env.decode_call(), Err(BodyError::Malformed(_))),
                "{context}"
            );
            assert_eq!(env.resolved_name(), None, "{context}");

            let body = janitor_wire::body::deserialize(
                env.content_type.as_deref(),
                &base64_decode(captured["body"].as_str().unwrap()),
            )
            .unwrap();
            assert_eq!(body, decoded, "{context}: the annotation matches the body");
        }

        // The chord join script gets `<p>.j <p>.t <p>.s <p>.d <p> <p>.c` for one group.
        let call = file["chord_part_return_evalsha"].as_array().unwrap();
        assert_eq!(call[2], "6");
        let backend = BackendLayout::default();
        let gid = b"3fdfe296-9b6e-4da7-9945-425a2a494f45".as_slice();
        let kinds: Vec<BackendKey> = call[3..9]
            .iter()
            .map(|k| backend.classify(k.as_str().unwrap().as_bytes()))
            .collect();
        let part = |part| BackendKey::ChordPart {
            group_id: gid,
            part,
        };
        assert_eq!(
            kinds,
            [
                part(b'j'),
                part(b't'),
                part(b's'),
                part(b'd'),
                BackendKey::GroupMeta { group_id: gid },
                part(b'c'),
            ]
        );
        // The header task it reports is in the D capture, as a member of that chord's group.
        let dump = Dump::load(&path.with_file_name("D_results_extended_db0.txt"));
        let metas = task_metas(&dump, &backend);
        let tid = call[9].as_str().unwrap();
        assert_eq!(call[10], format!(r#"[1, "{tid}", "SUCCESS", 0]"#));
        let gid = String::from_utf8(gid.to_vec()).unwrap();
        assert_eq!(metas[tid].0.group_id.as_ref(), Some(&gid));
    }
}

/// The revoke the janitor broadcasts against the one `app.control.revoke` sent, field by field:
/// every field the janitor sends has the captured value (the delivery tag aside, a fresh UUID
/// each time), and every captured field it leaves out is one that celery-redis-layout.md §5.2
/// shows workers do without. It goes to the captured channel.
#[test]
fn the_janitors_revoke_is_the_captured_broadcast_without_its_optional_fields() {
    /// Sent by `celery control revoke`, not needed by a worker (a real worker honoured the
    /// broadcast without them).
    const OPTIONAL: [&str; 6] = [
        "headers.clock",
        "headers.expires",
        "properties.delivery_mode",
        "properties.priority",
        "arguments.terminate",
        "arguments.signal",
    ];
    for (capture, path) in scenario("E") {
        let file: Json = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let captured = &file["revoke_broadcast"];
        let channel = BrokerLayout::default().pidbox_channel(0);
        assert_eq!(
            captured["command"],
            json!(["PUBLISH", String::from_utf8(channel).unwrap()]),
            "{capture}"
        );

        let theirs = &captured["envelope"];
        let task_id = theirs["_decoded_body"]["arguments"]["task_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let bytes = janitor_wire::control::revoke(std::slice::from_ref(&task_id), "tag");
        let ours: Json = serde_json::from_slice(&bytes).unwrap();

        let mut envelope_theirs = leaves(theirs);
        envelope_theirs.remove("body");
        envelope_theirs.retain(|path, _| !path.starts_with("_decoded_body."));
        let mut envelope_ours = leaves(&ours);
        envelope_ours.remove("body");
        assert_eq!(
            ours["headers"],
            json!({}),
            "{capture}: no headers are needed"
        );
        assert_same_but_optional(
            &envelope_ours,
            &envelope_theirs,
            &["properties.delivery_tag"],
            &OPTIONAL,
            &format!("{capture}/E envelope"),
        );

        let body = |env: &Json| -> Json {
            janitor_wire::body::deserialize(
                env["content-type"].as_str(),
                &base64_decode(env["body"].as_str().unwrap()),
            )
            .unwrap()
        };
        let (body_ours, body_theirs) = (body(&ours), body(theirs));
        assert_eq!(body_theirs, theirs["_decoded_body"], "{capture}");
        // A worker takes one id or a list; the janitor sends a batch as a list.
        assert_eq!(body_ours["arguments"]["task_id"], json!([task_id]));
        assert_eq!(body_theirs["arguments"]["task_id"], json!(task_id));
        assert_same_but_optional(
            &leaves(&body_ours),
            &leaves(&body_theirs),
            &["arguments.task_id"],
            &OPTIONAL,
            &format!("{capture}/E body"),
        );

        // Like the captured broadcast, it reads as a control envelope, never as a task.
        let env = Envelope::parse(&bytes).unwrap();
        assert!(!env.is_task());
        assert_eq!(env.exchange.as_deref(), Some("celery.pidbox"));
        assert_eq!(env.routing_key.as_deref(), Some(""));
    }
}

/// A JSON value's leaves by dotted path (`properties.delivery_info.exchange`); an empty object
/// has none.
fn leaves(value: &Json) -> BTreeMap<String, Json> {
    fn walk(prefix: &str, value: &Json, out: &mut BTreeMap<String, Json>) {
        match value {
            Json::Object(map) => {
                for (k, v) in map {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&path, v, out);
                }
            }
            leaf => {
                out.insert(prefix.to_owned(), leaf.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", value, &mut out);
    out
}

/// `ours` has exactly `theirs`' leaves, except those in `ignore` (compared elsewhere or never
/// the same) and those `theirs` has in `optional`.
fn assert_same_but_optional(
    ours: &BTreeMap<String, Json>,
    theirs: &BTreeMap<String, Json>,
    ignore: &[&str],
    optional: &[&str],
    context: &str,
) {
    for (path, value) in ours {
        if ignore.contains(&path.as_str()) {
            continue;
        }
        assert_eq!(theirs.get(path), Some(value), "{context}: {path}");
    }
    for path in theirs.keys() {
        if ignore.contains(&path.as_str()) || ours.contains_key(path) {
            continue;
        }
        assert!(
            optional.contains(&path.as_str()),
            "{context}: the captured {path} is missing from ours"
        );
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// H: global_keyprefix on both sides, broker in DB 1 and backend in DB 2

#[test]
fn prefixed_keys_classify_under_their_layouts() {
    for (capture, path) in scenario("H") {
        let dump = Dump::load(&path);
        let (broker, backend) = layouts(&path);
        assert_eq!(backend.prefix, b"myapp_");
        let sections: Vec<&str> = match capture {
            Capture::Celery57 => vec!["db1", "db2"],
            _ => vec!["broker db 1", "backend db 2"],
        };
        let (mut exchanges, mut permanent) = (BTreeSet::new(), BTreeSet::new());
        for e in &dump.entries {
            let context = format!("{} {}", dump.name, e.key_text());
            let section = e.section.as_deref().unwrap();
            // The unprefixed layouts must not mistake any of these keys for their own.
            assert_eq!(BrokerLayout::default().classify(&e.key), BrokerKey::Other);
            assert_eq!(BackendLayout::default().classify(&e.key), BackendKey::Other);
            match (broker.classify(&e.key), backend.classify(&e.key)) {
                (BrokerKey::Other, BackendKey::Other) => {
                    assert_eq!(section, sections[0], "{context}");
                    // The one list: `custom` priority 9, raw prefix and no separator.
                    assert_eq!(e.key, b"myappcustom\x06\x169", "{context}");
                    assert_eq!(broker.split_queue_key(&e.key), Some((&b"custom"[..], 9)));
                    let messages = queue(&dump, &e.key);
                    let [(_, Some(env))] = &messages[..] else {
                        panic!("{context}: one whole message expected");
                    };
                    assert_eq!(env.task_id, Some(task_id(3, "hhhhhhhh")), "{context}");
                    assert_eq!(
                        broker.queue_key_for_priority(b"custom", env.priority),
                        e.key
                    );
                }
                (BrokerKey::Binding { exchange }, BackendKey::Other) => {
                    assert_eq!(section, sections[0], "{context}");
                    exchanges.insert(exchange.to_vec());
                }
                (BrokerKey::PermanentBinding { exchange }, BackendKey::Other) => {
                    permanent.insert(exchange.to_vec());
                }
                (BrokerKey::Unacked | BrokerKey::UnackedIndex, BackendKey::Other) => {
                    assert_eq!(section, sections[0], "{context}");
                }
                (BrokerKey::BindingDeadlines, BackendKey::Other) => {
                    assert_eq!(e.key, broker.binding_deadlines_key());
                }
                (BrokerKey::Other, BackendKey::TaskMeta { .. } | BackendKey::ChordPart { .. }) => {
                    assert_eq!(section, sections[1], "{context}");
                    // The captured 5.7 run had no result TTL; the others kept the default day.
                    if capture == Capture::Celery57 {
                        assert_eq!(e.pttl, -1, "{context}");
                    } else {
                        assert!(e.pttl > 86_000_000, "{context}");
                    }
                }
                other => panic!("{context}: {other:?}"),
            }
        }

        let names =
            |v: &[&str]| -> BTreeSet<Vec<u8>> { v.iter().map(|s| s.as_bytes().to_vec()).collect() };
        let held = unacked(&dump, &broker);
        let metas = task_metas(&dump, &backend);
        if capture == Capture::Celery57 {
            assert_eq!(exchanges, names(&["celery", "celery.pidbox"]));
            assert_eq!(permanent, names(&["celery"]));
            // The capture cut the hash after its first value; the index still lists both.
            assert_eq!(held.len(), 1);
            assert!(held[0].entry.is_none());
            assert_eq!(dump.zset(&broker.unacked_index_key()).len(), 2);
            // A chord mid-join: one of its two header tasks has reported.
            let gid = "f32c655b-b096-4843-b520-17b9183dda2f";
            let part = |p: char| {
                [
                    format!("myapp_celery-taskset-meta-{gid}.").as_bytes(),
                    &[p as u8],
                ]
                .concat()
            };
            let tid = "d831e669-c72b-40d6-bfc7-1cac86c1bac0";
            assert_eq!(metas[tid].0.group_id.as_deref(), Some(gid));
            assert_eq!(dump.set(&part('d')), [format!("{tid}:0").into_bytes()]);
            let join = dump.zset(&part('j'));
            assert_eq!(
                join.get(format!(r#"[1, "{tid}", "SUCCESS", 2]"#).as_bytes()),
                Some(&0.0)
            );
            assert_eq!(dump.string(&part('s')), b"2");
            for n in [1, 3] {
                assert_eq!(metas[&task_id(n, "22222222")].0.status, "SUCCESS");
            }
        } else {
            assert_eq!(
                exchanges,
                names(&["celery", "celery.pidbox", "celeryev", "custom"])
            );
            let expected = if capture.is_57() {
                names(&["celery", "custom"])
            } else {
                BTreeSet::new()
            };
            assert_eq!(permanent, expected, "{}", dump.name);
            assert_eq!(held.len(), 1);
            assert!(held[0].is_task(&task_id(2, "hhhhhhhh"), "app.add"));
            let id = task_id(1, "hhhhhhhh");
            assert_eq!(metas.keys().collect::<Vec<_>>(), [&id]);
            assert_eq!(
                backend.task_meta_key(&id),
                [b"myapp_celery-task-meta-".as_slice(), id.as_bytes()].concat()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// J, J2: a worker killed with messages held, then the visibility-timeout restore

#[test]
fn a_killed_worker_leaves_its_messages_in_unacked() {
    for (capture, path) in scenario("J") {
        let dump = Dump::load(&path);
        let held = unacked(&dump, &BrokerLayout::default());
        let entries: Vec<&UnackedEntry> = held.iter().map(|h| h.entry.as_ref().unwrap()).collect();
        let in_unacked = ids_of(entries.iter().map(|e| &e.envelope));
        let queued = |key: &[u8]| {
            let envelopes: Vec<Envelope> = queue(&dump, key)
                .into_iter()
                .map(|(_, e)| e.unwrap())
                .collect();
            ids_of(&envelopes)
        };
        if capture == Capture::Celery57 {
            // prefork -c 2 with prefetch multiplier 4: 8 prefetched, 2 still queued, and the
            // 2 running tasks were acked early and are gone without a trace.
            let six = |ns: std::ops::RangeInclusive<u32>| {
                ns.map(|n| task_id(n, "66666666")).collect::<BTreeSet<_>>()
            };
            assert_eq!(in_unacked, six(2..=9), "{}", dump.name);
            assert_eq!(queued(b"celery"), six(10..=11), "{}", dump.name);
            assert!(entries.iter().all(|e| e.envelope.eta.is_none()));
        } else {
            // Solo: three countdown tasks held, one of them priority 9; the `custom` task was
            // never consumed.
            let nines = |ns: &[u32]| {
                ns.iter()
                    .map(|&n| task_id(n, "99999999"))
                    .collect::<BTreeSet<_>>()
            };
            assert_eq!(in_unacked, nines(&[1, 2, 3]), "{}", dump.name);
            let priorities: BTreeMap<String, Option<i64>> = entries
                .iter()
                .map(|e| (e.envelope.task_id.clone().unwrap(), e.envelope.priority))
                .collect();
            assert_eq!(priorities[&task_id(3, "99999999")], Some(9));
            assert!(entries
                .iter()
                .all(|e| e.envelope.eta.is_some() && !e.envelope.redelivered));
            assert_eq!(queued(b"custom"), nines(&[4]), "{}", dump.name);
        }
    }
}

#[test]
fn restored_messages_return_to_their_queues() {
    for (capture, path) in scenario("J2") {
        let dump = Dump::load(&path);
        let broker = BrokerLayout::default();
        // The restore empties unacked: every held message is back in a list.
        assert!(dump.get(&broker.unacked_key()).is_none(), "{}", dump.name);
        assert!(
            dump.get(&broker.unacked_index_key()).is_none(),
            "{}",
            dump.name
        );

        // Same run as the J capture: what it held is what came back.
        let before = Dump::load(&path.with_file_name("J_solo_killed_unacked.txt"));
        let held: BTreeMap<Vec<u8>, (f64, Vec<u8>)> = before
            .hash(&broker.unacked_key())
            .iter()
            .map(|(tag, raw)| {
                let score = before.zset(&broker.unacked_index_key())[tag];
                (tag.clone(), (score, raw.bytes.clone()))
            })
            .collect();

        let mut restored = BTreeSet::new();
        for e in &dump.entries {
            let Value::List(_) = e.value else { continue };
            let (queue_name, step) = broker.split_queue_key(&e.key).unwrap();
            let mut scores = Vec::new();
            for (blob, env) in queue(&dump, &e.key) {
                let env = env.unwrap();
                let context = format!("{} {} {:?}", dump.name, e.key_text(), env.task_id);
                let tag = env.delivery_tag.clone().unwrap().into_bytes();
                let Some((score, value)) = held.get(&tag) else {
                    // Never delivered, so never restored: untouched.
                    assert_eq!(queue_name, b"custom", "{context}");
                    assert!(!env.redelivered, "{context}");
                    continue;
                };
                restored.insert(tag.clone());
                scores.push(*score);
                assert!(env.redelivered, "{context}");
                assert_eq!(
                    blob.bytes,
                    with_redelivered(envelope_bytes_of(value), "celery")
                );

                if capture == Capture::Celery53 && env.priority == Some(9) {
                    // kombu 5.3 restores to the bare list whatever the priority: a priority-9
                    // message sits in bucket 0.
                    assert_eq!(e.key, b"celery", "{context}");
                    assert_eq!(step, 0, "{context}");
                    assert_eq!(broker.priority_step(env.priority), 9, "{context}");
                } else {
                    assert_eq!(broker.priority_step(env.priority), step, "{context}");
                }
            }
            // RPUSH in receive order: the earliest-received message is at the consume end.
            assert!(scores.windows(2).all(|w| w[0] > w[1]), "{}", dump.name);
        }
        assert_eq!(restored, held.keys().cloned().collect(), "{}", dump.name);

        let nine_bucket = dump.get(b"celery\x06\x169").is_some();
        assert_eq!(nine_bucket, capture != Capture::Celery53, "{}", dump.name);
    }
}
