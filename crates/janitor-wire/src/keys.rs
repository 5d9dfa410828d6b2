//! Key names Celery and kombu use in Redis, with their prefixes, as raw bytes.
//!
//! Keys are `Vec<u8>`: queue names are user-defined and priority sub-lists contain `\x06\x16`.
//! The broker's `global_keyprefix` is concatenated raw (`myappunacked`); the result backend's gets
//! an `_` appended unless it already ends in one of `: _ - .` (`myapp_celery-task-meta-…`).

/// kombu's default separator between a queue name and its priority step.
pub const DEFAULT_SEP: &[u8] = b"\x06\x16";
/// kombu's default `priority_steps`.
pub const DEFAULT_PRIORITY_STEPS: [u32; 4] = [0, 3, 6, 9];

/// kombu clamps `properties.priority` into this range before picking a step.
const MAX_PRIORITY: i64 = 9;

const BINDING: &[u8] = b"_kombu.binding.";
const BINDING_PERMANENT: &[u8] = b"_kombu.binding_permanent.";
const BINDING_DEADLINES: &[u8] = b"_kombu.binding_deadlines";
const TASK_META: &[u8] = b"celery-task-meta-";
const TASKSET_META: &[u8] = b"celery-taskset-meta-";

/// Where kombu keeps broker state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerLayout {
    pub prefix: Vec<u8>,
    pub sep: Vec<u8>,
    pub priority_steps: Vec<u32>,
}

impl Default for BrokerLayout {
    fn default() -> Self {
        BrokerLayout {
            prefix: Vec::new(),
            sep: DEFAULT_SEP.to_vec(),
            priority_steps: DEFAULT_PRIORITY_STEPS.to_vec(),
        }
    }
}

/// What a broker key is, judged by its name alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerKey<'a> {
    /// The `unacked` hash.
    Unacked,
    /// The `unacked_index` zset (delivery tag → receive time in worker seconds).
    UnackedIndex,
    /// The lock a restore sweep holds.
    UnackedMutex,
    /// `_kombu.binding.<exchange>`: the routing table kombu reads.
    Binding { exchange: &'a [u8] },
    /// `_kombu.binding_permanent.<exchange>` (kombu ≥ 5.7): keeps a table from the deadline sweep.
    PermanentBinding { exchange: &'a [u8] },
    /// `_kombu.binding_deadlines` (kombu ≥ 5.7): exchange → sweep deadline in Redis-server ms.
    BindingDeadlines,
    /// Anything else under the prefix. A list here is a queue (see
    /// [`BrokerLayout::split_queue_key`]) or a `<oid>.reply.celery.pidbox` reply list; a key
    /// without the prefix is `Other` too.
    Other,
}

/// One member of a `_kombu.binding.<exchange>` set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub routing_key: Vec<u8>,
    pub pattern: Vec<u8>,
    pub queue: Vec<u8>,
}

fn concat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

impl BrokerLayout {
    pub fn with_prefix(prefix: impl Into<Vec<u8>>) -> Self {
        BrokerLayout {
            prefix: prefix.into(),
            ..Default::default()
        }
    }

    /// The list key for one priority step of a queue (step 0 is the bare name).
    pub fn queue_key(&self, queue: &[u8], step: u32) -> Vec<u8> {
        if step == 0 {
            concat(&[&self.prefix, queue])
        } else {
            concat(&[&self.prefix, queue, &self.sep, step.to_string().as_bytes()])
        }
    }

    /// The priority step kombu files a message under: the priority is clamped to 0–9 (missing
    /// means 0) and mapped to the largest step not above it. Like kombu's
    /// `steps[bisect(steps, n) - 1]`, a priority below every step wraps to the last step.
    pub fn priority_step(&self, priority: Option<i64>) -> u32 {
        let priority = priority.unwrap_or(0).clamp(0, MAX_PRIORITY);
        let below = self
            .priority_steps
            .iter()
            .take_while(|&&step| i64::from(step) <= priority)
            .count();
        match below.checked_sub(1) {
            Some(i) => self.priority_steps[i],
            None => self.priority_steps.last().copied().unwrap_or(0),
        }
    }

    /// The list key kombu ≥ 5.5 pushes a message with this priority to, on publish and on
    /// restore. kombu 5.3 restores every message to step 0, whatever its priority.
    pub fn queue_key_for_priority(&self, queue: &[u8], priority: Option<i64>) -> Vec<u8> {
        self.queue_key(queue, self.priority_step(priority))
    }

    /// Every list key of a queue: the bare name and each configured priority step.
    pub fn queue_keys(&self, queue: &[u8]) -> Vec<Vec<u8>> {
        let mut keys = vec![self.queue_key(queue, 0)];
        for &step in &self.priority_steps {
            if step != 0 {
                keys.push(self.queue_key(queue, step));
            }
        }
        keys
    }

    /// A `SCAN MATCH` pattern for every priority sub-list of every queue (any key with the
    /// separator in its name), so one pass finds them all.
    pub fn sublist_scan_pattern(&self) -> Vec<u8> {
        let mut p = escape_glob(&self.prefix);
        p.push(b'*');
        p.extend(escape_glob(&self.sep));
        p.push(b'*');
        p
    }

    /// Splits a (prefixed) list key into queue name and priority step, on the last separator as
    /// kombu does. Returns `None` when the key does not carry this layout's prefix.
    pub fn split_queue_key<'a>(&self, key: &'a [u8]) -> Option<(&'a [u8], u32)> {
        let bare = key.strip_prefix(self.prefix.as_slice())?;
        if let Some(pos) = rfind(bare, &self.sep) {
            let step = &bare[pos + self.sep.len()..];
            // Only plain decimal, as kombu writes it: `+6` would parse but never round-trips.
            let digits = !step.is_empty() && step.iter().all(u8::is_ascii_digit);
            let step = std::str::from_utf8(step).ok().and_then(|s| s.parse().ok());
            if let (true, Some(step)) = (digits, step) {
                return Some((&bare[..pos], step));
            }
        }
        Some((bare, 0))
    }

    pub fn unacked_key(&self) -> Vec<u8> {
        concat(&[&self.prefix, b"unacked"])
    }

    pub fn unacked_index_key(&self) -> Vec<u8> {
        concat(&[&self.prefix, b"unacked_index"])
    }

    pub fn unacked_mutex_key(&self) -> Vec<u8> {
        concat(&[&self.prefix, b"unacked_mutex"])
    }

    /// `_kombu.binding_deadlines` (kombu ≥ 5.7).
    pub fn binding_deadlines_key(&self) -> Vec<u8> {
        concat(&[&self.prefix, BINDING_DEADLINES])
    }

    /// Names a broker key. kombu's bookkeeping keys are recognised exactly; everything else is
    /// [`BrokerKey::Other`], because a queue may have any name and only its type tells a list.
    pub fn classify<'a>(&self, key: &'a [u8]) -> BrokerKey<'a> {
        let Some(bare) = key.strip_prefix(self.prefix.as_slice()) else {
            return BrokerKey::Other;
        };
        if let Some(exchange) = bare.strip_prefix(BINDING) {
            return BrokerKey::Binding { exchange };
        }
        if let Some(exchange) = bare.strip_prefix(BINDING_PERMANENT) {
            return BrokerKey::PermanentBinding { exchange };
        }
        match bare {
            b"unacked" => BrokerKey::Unacked,
            b"unacked_index" => BrokerKey::UnackedIndex,
            b"unacked_mutex" => BrokerKey::UnackedMutex,
            BINDING_DEADLINES => BrokerKey::BindingDeadlines,
            _ => BrokerKey::Other,
        }
    }

    /// `SCAN MATCH` pattern for binding tables (not `_kombu.binding_permanent.*`).
    pub fn binding_scan_pattern(&self) -> Vec<u8> {
        let mut p = escape_glob(&concat(&[&self.prefix, BINDING]));
        p.push(b'*');
        p
    }

    /// The exchange a binding-table key names, if the key is one.
    pub fn binding_exchange<'a>(&self, key: &'a [u8]) -> Option<&'a [u8]> {
        key.strip_prefix(self.prefix.as_slice())?
            .strip_prefix(BINDING)
    }

    /// Parses `<routing_key><sep><pattern><sep><queue>`.
    pub fn parse_binding(&self, member: &[u8]) -> Option<Binding> {
        let first = find(member, &self.sep)?;
        let rest = &member[first + self.sep.len()..];
        let second = find(rest, &self.sep)?;
        Some(Binding {
            routing_key: member[..first].to_vec(),
            pattern: rest[..second].to_vec(),
            queue: rest[second + self.sep.len()..].to_vec(),
        })
    }

    /// The pub/sub channel of Celery's remote-control broadcasts (`revoke`, `ping`, …) for a
    /// broker in Redis database `db`: `<prefix>/<db>.celery.pidbox`. kombu puts the database in
    /// the name (its default `fanout_prefix`) because pub/sub is global across databases, and
    /// prefixes channels like keys, raw.
    pub fn pidbox_channel(&self, db: i64) -> Vec<u8> {
        let name = format!("/{db}.{}", crate::control::CONTROL_EXCHANGE);
        concat(&[&self.prefix, name.as_bytes()])
    }

    /// True for bindings of remote-control, reply and event queues, which never hold tasks.
    pub fn is_control_binding(exchange: &[u8], binding: &Binding) -> bool {
        exchange.ends_with(b".pidbox")
            || exchange == b"celeryev"
            || binding.queue.ends_with(b".pidbox")
            || binding.queue.starts_with(b"celeryev.")
    }
}

/// Where Celery's Redis result backend keeps results.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BackendLayout {
    /// The effective prefix, with the `_` Celery appends already applied.
    pub prefix: Vec<u8>,
}

/// What a result-backend key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendKey<'a> {
    TaskMeta {
        task_id: &'a [u8],
    },
    GroupMeta {
        group_id: &'a [u8],
    },
    /// Chord bookkeeping: `.j` join, `.s` size, `.d` dedup, `.t` delta, `.c` claim.
    ChordPart {
        group_id: &'a [u8],
        part: u8,
    },
    Other,
}

impl BackendLayout {
    /// Applies Celery's rule: a prefix not ending in `:`, `_`, `-` or `.` gets an `_`.
    pub fn with_prefix(configured: &[u8]) -> Self {
        let mut prefix = configured.to_vec();
        if let Some(last) = prefix.last() {
            if !b":_-.".contains(last) {
                prefix.push(b'_');
            }
        }
        BackendLayout { prefix }
    }

    pub fn task_meta_key(&self, task_id: &str) -> Vec<u8> {
        concat(&[&self.prefix, TASK_META, task_id.as_bytes()])
    }

    pub fn task_meta_scan_pattern(&self) -> Vec<u8> {
        let mut p = escape_glob(&concat(&[&self.prefix, TASK_META]));
        p.push(b'*');
        p
    }

    pub fn taskset_scan_pattern(&self) -> Vec<u8> {
        let mut p = escape_glob(&concat(&[&self.prefix, TASKSET_META]));
        p.push(b'*');
        p
    }

    pub fn classify<'a>(&self, key: &'a [u8]) -> BackendKey<'a> {
        let Some(bare) = key.strip_prefix(self.prefix.as_slice()) else {
            return BackendKey::Other;
        };
        if let Some(id) = bare.strip_prefix(TASK_META) {
            return BackendKey::TaskMeta { task_id: id };
        }
        if let Some(rest) = bare.strip_prefix(TASKSET_META) {
            if let [head @ .., b'.', part @ (b'j' | b's' | b'd' | b't' | b'c')] = rest {
                return BackendKey::ChordPart {
                    group_id: head,
                    part: *part,
                };
            }
            return BackendKey::GroupMeta { group_id: rest };
        }
        BackendKey::Other
    }
}

/// Escapes Redis glob metacharacters so a literal name can be used in `SCAN MATCH`.
pub fn escape_glob(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    for &b in raw {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

fn rfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).rposition(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_keys_and_split() {
        let l = BrokerLayout::with_prefix(b"myapp".to_vec());
        assert_eq!(l.queue_key(b"celery", 0), b"myappcelery");
        assert_eq!(l.queue_key(b"custom", 9), b"myappcustom\x06\x169");
        assert_eq!(
            l.split_queue_key(b"myappcustom\x06\x169"),
            Some((&b"custom"[..], 9))
        );
        assert_eq!(l.split_queue_key(b"myappcelery"), Some((&b"celery"[..], 0)));
        assert_eq!(l.split_queue_key(b"celery"), None);
        assert_eq!(l.unacked_key(), b"myappunacked");
    }

    #[test]
    fn backend_prefix_rule() {
        assert_eq!(BackendLayout::with_prefix(b"myapp").prefix, b"myapp_");
        assert_eq!(BackendLayout::with_prefix(b"myapp:").prefix, b"myapp:");
        assert_eq!(BackendLayout::with_prefix(b"").prefix, b"");
        let b = BackendLayout::with_prefix(b"myapp");
        assert_eq!(
            b.classify(b"myapp_celery-taskset-meta-abc.j"),
            BackendKey::ChordPart {
                group_id: b"abc",
                part: b'j'
            }
        );
        assert_eq!(
            b.classify(b"myapp_celery-task-meta-x"),
            BackendKey::TaskMeta { task_id: b"x" }
        );
    }

    #[test]
    fn priorities_map_to_the_largest_step_not_above_them() {
        let l = BrokerLayout::default();
        let steps: Vec<u32> = (-1..=11).map(|p| l.priority_step(Some(p))).collect();
        assert_eq!(steps, [0, 0, 0, 0, 3, 3, 3, 6, 6, 6, 9, 9, 9]);
        assert_eq!(l.priority_step(None), 0);
        assert_eq!(l.queue_key_for_priority(b"q", Some(7)), b"q\x06\x166");
        assert_eq!(l.queue_key_for_priority(b"q", Some(2)), b"q");

        let all = BrokerLayout {
            priority_steps: (0..10).collect(),
            ..BrokerLayout::default()
        };
        assert_eq!(all.priority_step(Some(4)), 4);
        // kombu indexes steps[-1] when no step is low enough.
        let no_zero = BrokerLayout {
            priority_steps: vec![2, 5],
            ..BrokerLayout::default()
        };
        assert_eq!(no_zero.priority_step(Some(1)), 5);
    }

    #[test]
    fn only_decimal_steps_split() {
        let l = BrokerLayout::default();
        assert_eq!(
            l.split_queue_key(b"q\x06\x16+6"),
            Some((&b"q\x06\x16+6"[..], 0))
        );
        assert_eq!(
            l.split_queue_key(b"q\x06\x16"),
            Some((&b"q\x06\x16"[..], 0))
        );
    }

    #[test]
    fn bookkeeping_keys_classify() {
        let l = BrokerLayout::with_prefix(b"p".to_vec());
        assert_eq!(l.classify(b"punacked"), BrokerKey::Unacked);
        assert_eq!(l.classify(b"punacked_index"), BrokerKey::UnackedIndex);
        assert_eq!(l.classify(b"punacked_mutex"), BrokerKey::UnackedMutex);
        assert_eq!(
            l.classify(b"p_kombu.binding.celery"),
            BrokerKey::Binding {
                exchange: b"celery"
            }
        );
        assert_eq!(
            l.classify(b"p_kombu.binding_permanent.celery"),
            BrokerKey::PermanentBinding {
                exchange: b"celery"
            }
        );
        assert_eq!(
            l.classify(&l.binding_deadlines_key()),
            BrokerKey::BindingDeadlines
        );
        assert_eq!(l.classify(b"pcelery"), BrokerKey::Other);
        assert_eq!(l.classify(b"unacked"), BrokerKey::Other);
    }

    #[test]
    fn pidbox_channels_name_the_database_after_the_raw_prefix() {
        assert_eq!(
            BrokerLayout::default().pidbox_channel(0),
            b"/0.celery.pidbox"
        );
        // celery-redis-layout.md §6: `global_keyprefix = "myapp"`, broker `redis://…/1`.
        assert_eq!(
            BrokerLayout::with_prefix(b"myapp".to_vec()).pidbox_channel(1),
            b"myapp/1.celery.pidbox"
        );
    }

    #[test]
    fn globs_are_escaped() {
        assert_eq!(escape_glob(b"q*[1]?"), b"q\\*\\[1\\]\\?");
    }

    #[test]
    fn binding_members() {
        let l = BrokerLayout::default();
        let b = l.parse_binding(b"celery\x06\x16\x06\x16custom").unwrap();
        assert_eq!(b.routing_key, b"celery");
        assert_eq!(b.pattern, b"");
        assert_eq!(b.queue, b"custom");
    }
}
