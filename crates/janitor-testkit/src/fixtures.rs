//! Reads the captured fixture files (`crates/janitor-wire/tests/fixtures/`), so the wire specs,
//! the engine specs and the CLI contract tests can talk about keys and values.
//!
//! The dumps are Python `repr`s, and the values that matter (envelopes, binary keys with
//! `\x06\x16`) are bytes literals: they are decoded exactly, escape by escape, into `Vec<u8>`,
//! never through a lossy string. Some `celery-5.7` value lines were cut by the capture script;
//! the cut literal is kept as a [`Blob`] marked `cut`, so a spec can tell "truncated by the
//! capture" from "malformed in Redis".

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The folders under `tests/fixtures/`, one per captured run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Capture {
    /// celery 5.3.6 / kombu 5.3.7.
    Celery53,
    /// celery 5.5.3 / kombu 5.5.4.
    Celery55,
    /// celery 5.7.0 / kombu 5.7.0, same app and scenarios as 5.3 and 5.5.
    Celery57Same,
    /// celery 5.7.0 / kombu 5.7.0, the earlier captures with their own app config.
    Celery57,
}

impl Capture {
    pub const ALL: [Capture; 4] = [
        Capture::Celery53,
        Capture::Celery55,
        Capture::Celery57Same,
        Capture::Celery57,
    ];

    pub fn folder(self) -> &'static str {
        match self {
            Capture::Celery53 => "celery-5.3",
            Capture::Celery55 => "celery-5.5",
            Capture::Celery57Same => "celery-5.7-same-scenarios",
            Capture::Celery57 => "celery-5.7",
        }
    }

    /// kombu ≥ 5.7 writes `_kombu.binding_permanent.*` and `_kombu.binding_deadlines`, and
    /// celery 5.7 leaves the chord claim key `.c`.
    pub fn is_57(self) -> bool {
        matches!(self, Capture::Celery57Same | Capture::Celery57)
    }
}

impl fmt::Display for Capture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.folder())
    }
}

/// The vendored fixtures, which belong to `janitor-wire` (they pin its wire model).
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../janitor-wire/tests/fixtures")
}

/// The scenario a fixture file belongs to: its name up to the first `_` (`C3b`, `J2`, …).
pub fn scenario_of(file_name: &str) -> &str {
    file_name.split('_').next().unwrap_or(file_name)
}

/// Every file of `capture`'s folder, sorted by name.
pub fn files_in(capture: Capture) -> Vec<PathBuf> {
    let dir = fixtures_dir().join(capture.folder());
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files
}

/// The files of one scenario in every capture that has it. Panics if none does, so a spec
/// cannot pass by reading nothing.
pub fn scenario(id: &str) -> Vec<(Capture, PathBuf)> {
    let found: Vec<(Capture, PathBuf)> = Capture::ALL
        .into_iter()
        .flat_map(|c| files_in(c).into_iter().map(move |p| (c, p)))
        .filter(|(_, p)| scenario_of(&file_name(p)) == id)
        .collect();
    assert!(!found.is_empty(), "no fixture file for scenario {id}");
    found
}

pub fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

/// A byte string from the dump; `cut` when the capture script truncated it, in which case
/// `bytes` is only the part that was kept (without any `...` marker).
#[derive(Debug, Clone, PartialEq)]
pub struct Blob {
    pub bytes: Vec<u8>,
    pub cut: bool,
}

impl Blob {
    /// The bytes of a value the capture kept whole.
    pub fn whole(&self) -> Option<&[u8]> {
        (!self.cut).then_some(self.bytes.as_slice())
    }

    pub fn contains(&self, needle: &str) -> bool {
        self.bytes
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    }
}

/// One key's value, typed by the dump's `type=`.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `LRANGE 0 -1`: newest first.
    List(Vec<Blob>),
    /// `HGETALL`, in the dump's order.
    Hash(Vec<(Vec<u8>, Blob)>),
    /// `ZRANGE 0 -1 WITHSCORES`.
    Zset(Vec<(Vec<u8>, f64)>),
    /// Sorted `SMEMBERS`.
    Set(Vec<Vec<u8>>),
    /// `GET`.
    String(Blob),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The `== db1` / `# broker db 1` header above the key, if any.
    pub section: Option<String>,
    pub key: Vec<u8>,
    pub pttl: i64,
    pub value: Value,
}

impl Entry {
    pub fn key_text(&self) -> String {
        show(&self.key)
    }
}

/// A parsed `.txt` dump.
#[derive(Debug, Clone)]
pub struct Dump {
    pub name: String,
    pub entries: Vec<Entry>,
}

impl Dump {
    pub fn load(path: &Path) -> Dump {
        let text =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = format!(
            "{}/{}",
            path.parent().map(file_name).unwrap_or_default(),
            file_name(path)
        );
        match parse_dump(&text) {
            Ok(entries) => Dump { name, entries },
            Err(e) => panic!("{name}: {e}"),
        }
    }

    pub fn get(&self, key: &[u8]) -> Option<&Entry> {
        self.entries.iter().find(|e| e.key == key)
    }

    pub fn entry(&self, key: &[u8]) -> &Entry {
        self.get(key)
            .unwrap_or_else(|| panic!("{}: no key {}", self.name, show(key)))
    }

    pub fn list(&self, key: &[u8]) -> &[Blob] {
        match &self.entry(key).value {
            Value::List(items) => items,
            other => panic!("{}: {} is not a list: {other:?}", self.name, show(key)),
        }
    }

    pub fn hash(&self, key: &[u8]) -> &[(Vec<u8>, Blob)] {
        match &self.entry(key).value {
            Value::Hash(fields) => fields,
            other => panic!("{}: {} is not a hash: {other:?}", self.name, show(key)),
        }
    }

    pub fn zset(&self, key: &[u8]) -> BTreeMap<Vec<u8>, f64> {
        match &self.entry(key).value {
            Value::Zset(members) => members.iter().cloned().collect(),
            other => panic!("{}: {} is not a zset: {other:?}", self.name, show(key)),
        }
    }

    pub fn set(&self, key: &[u8]) -> &[Vec<u8>] {
        match &self.entry(key).value {
            Value::Set(members) => members,
            other => panic!("{}: {} is not a set: {other:?}", self.name, show(key)),
        }
    }

    pub fn string(&self, key: &[u8]) -> &[u8] {
        match &self.entry(key).value {
            Value::String(blob) => blob
                .whole()
                .unwrap_or_else(|| panic!("{}: {} was cut", self.name, show(key))),
            other => panic!("{}: {} is not a string: {other:?}", self.name, show(key)),
        }
    }
}

/// Renders bytes the way the dump does, for messages.
pub fn show(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

fn parse_dump(text: &str) -> Result<Vec<Entry>, String> {
    let mut entries = Vec::new();
    let mut section: Option<String> = None;
    // The key line waiting for its value line.
    let mut pending: Option<(Vec<u8>, String, i64)> = None;
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}", n + 1);
        if line.trim().is_empty() {
            continue;
        }
        if line.starts_with(' ') {
            let (key, kind, pttl) = pending
                .take()
                .ok_or_else(|| at("value line without a key line".into()))?;
            let py = parse_py(line.trim_start()).map_err(at)?;
            let value = typed(&kind, py).map_err(at)?;
            entries.push(Entry {
                section: section.clone(),
                key,
                pttl,
                value,
            });
            continue;
        }
        if pending.is_some() {
            return Err(at("key line without a value line above".into()));
        }
        if let Some(name) = line.strip_prefix("== ").or_else(|| line.strip_prefix("# ")) {
            section = Some(name.trim().to_owned());
        } else if line.starts_with("b'") || line.starts_with("b\"") {
            pending = Some(parse_key_line(line).map_err(at)?);
        } else {
            return Err(at(format!("unexpected line {line:?}")));
        }
    }
    match pending {
        Some((key, ..)) => Err(format!("key {} has no value line", show(&key))),
        None => Ok(entries),
    }
}

fn parse_key_line(line: &str) -> Result<(Vec<u8>, String, i64), String> {
    let mut p = PyParser::new(line);
    let Py::Bytes(key) = p.value()? else {
        return Err("key is not a bytes literal".into());
    };
    if key.cut {
        return Err("key line is cut".into());
    }
    let rest = std::str::from_utf8(&p.input[p.pos..]).map_err(|e| e.to_string())?;
    let rest = rest
        .strip_prefix(" type=")
        .ok_or("expected ` type=` after the key")?;
    let (kind, pttl) = rest.split_once(" pttl=").ok_or("expected ` pttl=`")?;
    let pttl = pttl.parse().map_err(|e| format!("pttl {pttl:?}: {e}"))?;
    Ok((key.bytes, kind.to_owned(), pttl))
}

fn typed(kind: &str, py: Py) -> Result<Value, String> {
    let whole = |py: Py| match py {
        Py::Bytes(b) if !b.cut => Ok(b.bytes),
        other => Err(format!("expected whole bytes, got {other:?}")),
    };
    Ok(match (kind, py) {
        ("list", Py::List(items)) => Value::List(
            items
                .into_iter()
                .map(|i| match i {
                    Py::Bytes(b) => Ok(b),
                    other => Err(format!("list element {other:?}")),
                })
                .collect::<Result<_, _>>()?,
        ),
        ("hash", Py::Dict(pairs)) => Value::Hash(
            pairs
                .into_iter()
                .map(|(k, v)| match v {
                    Py::Bytes(b) => Ok((whole(k)?, b)),
                    other => Err(format!("hash value {other:?}")),
                })
                .collect::<Result<_, String>>()?,
        ),
        ("zset", Py::List(items)) => Value::Zset(
            items
                .into_iter()
                .map(|i| match i {
                    Py::Tuple(mut pair) if pair.len() == 2 => {
                        let score = match pair.pop() {
                            Some(Py::Float(f)) => f,
                            Some(Py::Int(i)) => i as f64,
                            other => return Err(format!("zset score {other:?}")),
                        };
                        Ok((whole(pair.pop().unwrap())?, score))
                    }
                    other => Err(format!("zset member {other:?}")),
                })
                .collect::<Result<_, _>>()?,
        ),
        ("set", Py::List(items)) => {
            Value::Set(items.into_iter().map(whole).collect::<Result<_, _>>()?)
        }
        ("string", Py::Bytes(b)) => Value::String(b),
        (kind, py) => return Err(format!("type={kind} with value {py:?}")),
    })
}

/// The subset of Python literals the dumps use.
#[derive(Debug, Clone, PartialEq)]
pub enum Py {
    Bytes(Blob),
    Int(i64),
    Float(f64),
    None,
    Bool(bool),
    List(Vec<Py>),
    Tuple(Vec<Py>),
    Dict(Vec<(Py, Py)>),
}

/// Parses one Python literal. A line that ends inside a bytes literal is accepted as cut: the
/// literal becomes a cut [`Blob`] and every open container closes there.
pub fn parse_py(text: &str) -> Result<Py, String> {
    let mut p = PyParser::new(text);
    let value = p.value()?;
    p.skip_ws();
    if !p.cut && p.pos != p.input.len() {
        return Err(format!("trailing text at byte {}", p.pos));
    }
    Ok(value)
}

struct PyParser<'a> {
    input: &'a [u8],
    pos: usize,
    /// Set once the input ended inside a literal; everything after is missing.
    cut: bool,
}

impl<'a> PyParser<'a> {
    fn new(text: &'a str) -> Self {
        PyParser {
            input: text.as_bytes(),
            pos: 0,
            cut: false,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, token: &str) -> bool {
        if self.input[self.pos..].starts_with(token.as_bytes()) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self) -> Result<Py, String> {
        self.skip_ws();
        match self.peek() {
            Some(b'b' | b'B') => self.bytes().map(Py::Bytes),
            Some(b'[') => {
                self.pos += 1;
                self.items(b']').map(Py::List)
            }
            Some(b'(') => {
                self.pos += 1;
                self.items(b')').map(Py::Tuple)
            }
            Some(b'{') => {
                self.pos += 1;
                self.dict()
            }
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ if self.eat("None") => Ok(Py::None),
            _ if self.eat("True") => Ok(Py::Bool(true)),
            _ if self.eat("False") => Ok(Py::Bool(false)),
            other => Err(format!(
                "unexpected {:?} at byte {}",
                other.map(char::from),
                self.pos
            )),
        }
    }

    /// Comma-separated values up to `close`. Python allows a trailing comma (`(1,)`).
    fn items(&mut self, close: u8) -> Result<Vec<Py>, String> {
        let mut items = Vec::new();
        loop {
            self.skip_ws();
            if self.cut || self.peek().is_none() {
                return self.ended(items);
            }
            if self.peek() == Some(close) {
                self.pos += 1;
                return Ok(items);
            }
            items.push(self.value()?);
            self.skip_ws();
            if !self.eat(",") && self.peek() != Some(close) && !self.cut && self.peek().is_some() {
                return Err(format!("expected `,` at byte {}", self.pos));
            }
        }
    }

    fn dict(&mut self) -> Result<Py, String> {
        let mut pairs = Vec::new();
        loop {
            self.skip_ws();
            if self.cut || self.peek().is_none() {
                return self.ended(pairs).map(Py::Dict);
            }
            if self.eat("}") {
                return Ok(Py::Dict(pairs));
            }
            let key = self.value()?;
            self.skip_ws();
            if !self.eat(":") {
                return Err(format!("expected `:` at byte {}", self.pos));
            }
            let value = self.value()?;
            pairs.push((key, value));
            self.skip_ws();
            if !self.eat(",") && self.peek() != Some(b'}') && !self.cut && self.peek().is_some() {
                return Err(format!("expected `,` at byte {}", self.pos));
            }
        }
    }

    /// A container may only be left open if a literal inside it was cut.
    fn ended<T>(&self, items: T) -> Result<T, String> {
        if self.cut {
            Ok(items)
        } else {
            Err("input ended inside a container, not inside a literal".into())
        }
    }

    fn number(&mut self) -> Result<Py, String> {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|b| b.is_ascii_digit() || b"+-.eE".contains(&b))
        {
            self.pos += 1;
        }
        let text = std::str::from_utf8(&self.input[start..self.pos]).unwrap();
        if text.contains(['.', 'e', 'E']) {
            text.parse()
                .map(Py::Float)
                .map_err(|e| format!("{text}: {e}"))
        } else {
            text.parse()
                .map(Py::Int)
                .map_err(|e| format!("{text}: {e}"))
        }
    }

    /// A bytes literal, with Python's escapes. Ending before the closing quote means the line
    /// was cut; a trailing `...` is the capture script's marker, not data.
    fn bytes(&mut self) -> Result<Blob, String> {
        self.pos += 1; // the `b` prefix
        let quote = match self.peek() {
            Some(q @ (b'\'' | b'"')) => q,
            _ => return Err(format!("expected a quote at byte {}", self.pos)),
        };
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            let Some(b) = self.peek() else {
                if out.ends_with(b"...") {
                    out.truncate(out.len() - 3);
                }
                self.cut = true;
                return Ok(Blob {
                    bytes: out,
                    cut: true,
                });
            };
            self.pos += 1;
            if b == quote {
                return Ok(Blob {
                    bytes: out,
                    cut: false,
                });
            }
            if b != b'\\' {
                out.push(b);
                continue;
            }
            let Some(e) = self.peek() else {
                // A cut right after a backslash: the escape is lost with the rest.
                self.cut = true;
                return Ok(Blob {
                    bytes: out,
                    cut: true,
                });
            };
            self.pos += 1;
            match e {
                b'\\' | b'\'' | b'"' => out.push(e),
                b'a' => out.push(0x07),
                b'b' => out.push(0x08),
                b'f' => out.push(0x0c),
                b'n' => out.push(b'\n'),
                b'r' => out.push(b'\r'),
                b't' => out.push(b'\t'),
                b'v' => out.push(0x0b),
                b'\n' => {}
                b'x' => {
                    let hex = self.input.get(self.pos..self.pos + 2);
                    match hex.and_then(|h| std::str::from_utf8(h).ok()) {
                        Some(h) if h.bytes().all(|c| c.is_ascii_hexdigit()) => {
                            out.push(u8::from_str_radix(h, 16).unwrap());
                            self.pos += 2;
                        }
                        _ if self.input.len() - self.pos < 2 => {
                            self.cut = true;
                            return Ok(Blob {
                                bytes: out,
                                cut: true,
                            });
                        }
                        _ => return Err(format!("bad \\x escape at byte {}", self.pos)),
                    }
                }
                b'0'..=b'7' => {
                    let mut n = u32::from(e - b'0');
                    for _ in 0..2 {
                        match self.peek() {
                            Some(d @ b'0'..=b'7') => {
                                n = n * 8 + u32::from(d - b'0');
                                self.pos += 1;
                            }
                            _ => break,
                        }
                    }
                    out.push((n & 0xff) as u8);
                }
                // Python keeps unknown escapes as written.
                other => out.extend_from_slice(&[b'\\', other]),
            }
        }
    }
}

/// The raw values of a `.jsonl` file, one per line.
pub fn jsonl(path: &Path) -> Vec<Vec<u8>> {
    let raw = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    raw.split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(text: &str) -> Blob {
        match parse_py(text).unwrap() {
            Py::Bytes(b) => b,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bytes_literals_decode_every_escape() {
        let b = bytes(r#"b'a\x06\x16\n\t\r\\\'"\x00\xff\0\177\q'"#);
        assert_eq!(b.bytes, b"a\x06\x16\n\t\r\\'\"\x00\xff\0\x7f\\q");
        assert!(!b.cut);
        assert_eq!(bytes(r#"b"it's""#).bytes, b"it's");
    }

    #[test]
    fn cut_literals_close_their_containers() {
        let py = parse_py("{b'k': b'[{\"body\"...").unwrap();
        let Py::Dict(pairs) = py else { panic!() };
        assert_eq!(pairs.len(), 1);
        assert_eq!(
            pairs[0].1,
            Py::Bytes(Blob {
                bytes: b"[{\"body\"".to_vec(),
                cut: true
            })
        );
        assert!(parse_py("[b'a', ").is_err(), "only literals may be cut");
        assert!(parse_py("[b'a'] x").is_err());
    }

    #[test]
    fn zsets_and_sections_parse() {
        let dump = parse_dump(
            "== db1\nb'z' type=zset pttl=-1\n    [(b'm', 1795836279.2112713), (b'n', 0.0)]\n\
             # backend db 2\nb's\\x06' type=string pttl=5\n    b'2'\n",
        )
        .unwrap();
        assert_eq!(dump[0].section.as_deref(), Some("db1"));
        assert_eq!(
            dump[0].value,
            Value::Zset(vec![
                (b"m".to_vec(), 1795836279.2112713),
                (b"n".to_vec(), 0.0)
            ])
        );
        assert_eq!(dump[1].key, b"s\x06");
        assert_eq!(dump[1].section.as_deref(), Some("backend db 2"));
        assert_eq!(dump[1].pttl, 5);
    }
}
