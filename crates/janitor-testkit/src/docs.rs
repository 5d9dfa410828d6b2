//! Reads `docs/cli.md`, the documented contract, so tests can hold it against the code: its
//! sections, Markdown tables and fenced code blocks, and the key structure of JSON examples.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The repository root (two folders above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A Markdown document.
#[derive(Debug, Clone)]
pub struct Doc {
    pub name: String,
    pub text: String,
}

/// A fenced code block, with the text just above it that says what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeBlock {
    /// The word after the opening fence (`json`, `toml`, …).
    pub lang: String,
    pub code: String,
    /// The last non-empty line before the fence.
    pub intro: String,
}

impl Doc {
    /// `docs/cli.md`.
    pub fn cli() -> Doc {
        Doc::load(&repo_root().join("docs/cli.md"))
    }

    pub fn load(path: &Path) -> Doc {
        let text =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Doc {
            name: path.file_name().unwrap().to_string_lossy().into_owned(),
            text,
        }
    }

    /// The text under the heading `heading` (e.g. `## Exit codes`), up to the next heading of
    /// the same or a higher level. Panics when the heading is missing or appears twice.
    pub fn section(&self, heading: &str) -> &str {
        let level = heading.chars().take_while(|c| *c == '#').count();
        assert!(level > 0, "{heading:?} is not a Markdown heading");
        let mut starts = self
            .text
            .match_indices('\n')
            .map(|(i, _)| i + 1)
            .chain([0])
            .filter(|&i| self.text[i..].lines().next() == Some(heading));
        let start = starts
            .next()
            .unwrap_or_else(|| panic!("{}: no heading {heading:?}", self.name));
        assert!(
            starts.next().is_none(),
            "{}: heading {heading:?} appears twice",
            self.name
        );
        let body = &self.text[start + heading.len()..];
        let mut offset = 0;
        let mut in_fence = false;
        for line in body.split_inclusive('\n') {
            if line.starts_with("```") {
                in_fence = !in_fence;
            }
            let hashes = line.chars().take_while(|c| *c == '#').count();
            if !in_fence && hashes > 0 && hashes <= level && line[hashes..].starts_with(' ') {
                break;
            }
            offset += line.len();
        }
        &body[..offset]
    }
}

/// The rows of the first Markdown table in `text`, without its header and separator rows;
/// cells trimmed, `\|` read as `|`.
pub fn table(text: &str) -> Vec<Vec<String>> {
    let rows: Vec<Vec<String>> = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with('|'))
        .take_while(|l| l.trim_start().starts_with('|'))
        .map(split_row)
        .collect();
    assert!(rows.len() >= 2, "no Markdown table in:\n{text}");
    assert!(
        rows[1]
            .iter()
            .all(|c| !c.is_empty() && c.chars().all(|ch| "-:".contains(ch))),
        "the second row of a table must be its separator: {:?}",
        rows[1]
    );
    rows.into_iter().skip(2).collect()
}

fn split_row(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|');
    let inner = inner.strip_suffix('|').unwrap_or(inner);
    let mut cells = vec![String::new()];
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                chars.next();
                cells.last_mut().unwrap().push('|');
            }
            '|' => cells.push(String::new()),
            c => cells.last_mut().unwrap().push(c),
        }
    }
    cells.into_iter().map(|c| c.trim().to_owned()).collect()
}

/// The `code spans` of a Markdown cell, e.g. ``"`XDG_CONFIG_HOME`, `HOME`"`` → both names.
pub fn code_spans(cell: &str) -> Vec<String> {
    cell.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_owned())
        .collect()
}

/// Every fenced code block of `text`, in order.
pub fn code_blocks(text: &str) -> Vec<CodeBlock> {
    let mut blocks = Vec::new();
    let mut intro = String::new();
    let mut open: Option<(String, String)> = None;
    for line in text.lines() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(lang)) => open = Some((lang.trim().to_owned(), String::new())),
            (Some(_), Some(_)) => {
                let (lang, code) = open.take().unwrap();
                blocks.push(CodeBlock {
                    lang,
                    code,
                    intro: intro.clone(),
                });
                intro.clear();
            }
            (Some((_, code)), None) => {
                code.push_str(line);
                code.push('\n');
            }
            (None, None) => {
                if !line.trim().is_empty() {
                    intro = line.trim().to_owned();
                }
            }
        }
    }
    assert!(open.is_none(), "a code block is never closed");
    blocks
}

/// The key structure of a JSON value: object keys and nesting; every scalar but `null` (string,
/// number, bool) is a [`Shape::Leaf`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    Leaf,
    /// `null`: agrees with a scalar, and with an object where a path is declared nullable.
    Null,
    Object(BTreeMap<String, Shape>),
    /// An object whose keys are data (table names, …): only the shape of its values counts.
    /// `None` when it is empty.
    Map(Option<Box<Shape>>),
    /// The shape shared by the elements; `None` when the array is empty.
    Array(Option<Box<Shape>>),
}

impl Shape {
    /// The shape of `value`. `data_keyed` lists the paths (`lost_rows.by_table`; array elements
    /// add nothing to a path) of objects whose keys are data, not field names. Panics when the
    /// elements of an array, or the values of such an object, differ in shape.
    pub fn of(value: &serde_json::Value, data_keyed: &[&str]) -> Shape {
        Self::at(value, "", data_keyed)
    }

    fn at(value: &serde_json::Value, path: &str, data_keyed: &[&str]) -> Shape {
        use serde_json::Value as J;
        let one = |items: Vec<Shape>, what: &str| -> Option<Box<Shape>> {
            let mut items = items.into_iter();
            let first = items.next()?;
            Some(Box::new(items.fold(first, |a, b| {
                a.merge(b)
                    .unwrap_or_else(|| panic!("{what} at `{path}` differ in shape"))
            })))
        };
        match value {
            J::Object(map) if data_keyed.contains(&path) => Shape::Map(one(
                map.values()
                    .map(|v| Self::at(v, path, data_keyed))
                    .collect(),
                "the values",
            )),
            J::Object(map) => Shape::Object(
                map.iter()
                    .map(|(k, v)| {
                        let sub = if path.is_empty() {
                            k.clone()
                        } else {
                            format!("{path}.{k}")
                        };
                        (k.clone(), Self::at(v, &sub, data_keyed))
                    })
                    .collect(),
            ),
            J::Array(items) => Shape::Array(one(
                items
                    .iter()
                    .map(|v| Self::at(v, path, data_keyed))
                    .collect(),
                "the elements",
            )),
            J::Null => Shape::Null,
            _ => Shape::Leaf,
        }
    }

    /// The shape that covers both, when they agree but for scalars that are `null` in one.
    fn merge(self, other: Shape) -> Option<Shape> {
        Some(match (self, other) {
            (Shape::Null, Shape::Null) => Shape::Null,
            (Shape::Leaf | Shape::Null, Shape::Leaf | Shape::Null) => Shape::Leaf,
            (Shape::Object(a), Shape::Object(mut b)) => {
                if !a.keys().eq(b.keys()) {
                    return None;
                }
                let mut merged = BTreeMap::new();
                for (k, v) in a {
                    let w = b.remove(&k)?;
                    merged.insert(k, v.merge(w)?);
                }
                Shape::Object(merged)
            }
            (Shape::Map(a), Shape::Map(b)) => Shape::Map(Self::merge_inner(a, b)?),
            (Shape::Array(a), Shape::Array(b)) => Shape::Array(Self::merge_inner(a, b)?),
            _ => return None,
        })
    }

    fn merge_inner(a: Option<Box<Shape>>, b: Option<Box<Shape>>) -> Option<Option<Box<Shape>>> {
        Some(match (a, b) {
            (Some(a), Some(b)) => Some(Box::new(a.merge(*b)?)),
            (a, b) => a.or(b),
        })
    }

    /// The differences between `self` (documented) and `actual`, one line each, with the path
    /// where they are; empty when the structures agree. An empty array or data-keyed object
    /// agrees with any of the same kind, `null` with any scalar, and with an object at the
    /// paths listed in `nullable` (`orphans.revoke`).
    pub fn differences(&self, actual: &Shape, nullable: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        self.diff(actual, "", nullable, &mut out);
        out
    }

    fn diff(&self, actual: &Shape, path: &str, nullable: &[&str], out: &mut Vec<String>) {
        let at = if path.is_empty() { "the top" } else { path };
        match (self, actual) {
            (Shape::Leaf | Shape::Null, Shape::Leaf | Shape::Null) => {}
            (Shape::Object(_), Shape::Null) | (Shape::Null, Shape::Object(_))
                if nullable.contains(&path) => {}
            (Shape::Object(doc), Shape::Object(real)) => {
                for k in doc.keys().filter(|k| !real.contains_key(*k)) {
                    out.push(format!(
                        "`{}` is documented but not in the output",
                        join(path, k)
                    ));
                }
                for k in real.keys().filter(|k| !doc.contains_key(*k)) {
                    out.push(format!(
                        "`{}` is in the output but not documented",
                        join(path, k)
                    ));
                }
                for (k, d) in doc {
                    if let Some(r) = real.get(k) {
                        d.diff(r, &join(path, k), nullable, out);
                    }
                }
            }
            (Shape::Map(Some(d)), Shape::Map(Some(r)))
            | (Shape::Array(Some(d)), Shape::Array(Some(r))) => d.diff(r, path, nullable, out),
            (Shape::Map(_), Shape::Map(_)) | (Shape::Array(_), Shape::Array(_)) => {}
            (d, r) => out.push(format!(
                "at {at}: documented as {}, the output has {}",
                d.kind(),
                r.kind()
            )),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Shape::Leaf => "a scalar",
            Shape::Null => "null",
            Shape::Object(_) => "an object",
            Shape::Map(_) => "an object keyed by data",
            Shape::Array(_) => "an array",
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DOC: &str = "# T\n\nintro\n\n## A\n\n| x | y |\n|---|---|\n| `a` \\| b | 1 |\n\n\
                       `thing --json`:\n```json\n{\"k\": 1}\n```\n### A.1\ntext\n## B\nb\n";

    #[test]
    fn sections_end_at_a_heading_of_the_same_level() {
        let doc = Doc {
            name: "t".into(),
            text: DOC.into(),
        };
        assert!(doc.section("## A").contains("### A.1"));
        assert!(!doc.section("## A").contains("## B"));
        assert_eq!(doc.section("### A.1"), "\ntext\n");
        assert_eq!(
            table(doc.section("## A")),
            vec![vec!["`a` | b".to_owned(), "1".to_owned()]]
        );
        let blocks = code_blocks(doc.section("## A"));
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].intro, "`thing --json`:");
        assert_eq!(blocks[0].code, "{\"k\": 1}\n");
    }

    #[test]
    fn shapes_compare_keys_and_nesting_not_values() {
        let doc = Shape::of(
            &json!({"a": 1, "b": {"c": [{"d": "x"}]}, "t": {"x": 1}, "e": []}),
            &["t"],
        );
        let same = Shape::of(
            &json!({"a": null, "b": {"c": []}, "t": {}, "e": ["w"]}),
            &["t"],
        );
        assert_eq!(doc.differences(&same, &[]), Vec::<String>::new());
        let other = Shape::of(&json!({"a": {}, "b": {"c": [{"z": 1}]}, "f": 1}), &[]);
        assert_eq!(
            doc.differences(&other, &[]),
            vec![
                "`e` is documented but not in the output",
                "`t` is documented but not in the output",
                "`f` is in the output but not documented",
                "at a: documented as a scalar, the output has an object",
                "`b.c.d` is documented but not in the output",
                "`b.c.z` is in the output but not documented",
            ]
        );
        let revoke = Shape::of(&json!({"r": {"n": 1}, "s": "x"}), &[]);
        let none = Shape::of(&json!({"r": null, "s": null}), &[]);
        assert_eq!(revoke.differences(&none, &["r"]), Vec::<String>::new());
        assert_eq!(
            revoke.differences(&none, &[]),
            ["at r: documented as an object, the output has null"]
        );
    }
}
