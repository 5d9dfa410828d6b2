//! `[[owners]]` rules: which table owns which task names, and where the owning row's id is.
//!
//! A rule names the table and id column (validated SQL identifiers, quoted when used), the task
//! names it owns (globs) and `id_from`. A task name matched by two rules is ambiguous and its
//! entries are never treated as orphans.

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;

use crate::{defaults, invalid, ConfigError};

/// A rule as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnerRuleFile {
    /// Owner table, optionally schema-qualified (`public.scan_tasks`).
    pub table: String,
    /// Primary-key (or unique) column the id is compared with.
    pub id_column: String,
    /// Task names this table owns; globs allowed (`app.tasks.scan_*`).
    pub tasks: Vec<String>,
    /// `arg:N` (0-based positional argument), `kwarg:NAME`, or `task_id`.
    pub id_from: String,
    /// Result keys that carry no task name (no `result_extended`) belong to this owner.
    #[serde(default)]
    pub claim_unnamed_results: bool,
    /// Lost rows: the status column.
    pub status_column: Option<String>,
    /// Lost rows: statuses that mean "work is queued or running".
    pub active_statuses: Option<Vec<String>>,
    /// Lost rows: the status written to a lost row.
    pub lost_status: Option<String>,
    /// Lost rows: the creation-time column used for age.
    pub created_column: Option<String>,
    /// Lost rows: only rows older than this are considered (default 60).
    pub lost_after_minutes: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdSource {
    Arg(usize),
    Kwarg(String),
    TaskId,
}

impl IdSource {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "task_id" {
            return Ok(IdSource::TaskId);
        }
        if let Some(n) = text.strip_prefix("arg:") {
            return n
                .parse()
                .map(IdSource::Arg)
                .map_err(|_| format!("{text:?}: arg:N needs a non-negative index"));
        }
        if let Some(name) = text.strip_prefix("kwarg:") {
            if !name.is_empty() {
                return Ok(IdSource::Kwarg(name.to_owned()));
            }
        }
        Err(format!(
            "{text:?}: expected \"arg:N\", \"kwarg:NAME\" or \"task_id\""
        ))
    }
}

impl std::fmt::Display for IdSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdSource::Arg(n) => write!(f, "arg:{n}"),
            IdSource::Kwarg(k) => write!(f, "kwarg:{k}"),
            IdSource::TaskId => f.write_str("task_id"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LostRowRule {
    pub status_column: String,
    pub active_statuses: Vec<String>,
    pub lost_status: String,
    pub created_column: String,
    pub lost_after_minutes: f64,
}

#[derive(Debug, Clone)]
pub struct OwnerRule {
    pub table: String,
    pub id_column: String,
    pub tasks: Vec<String>,
    pub id_from: IdSource,
    pub claim_unnamed_results: bool,
    pub lost: Option<LostRowRule>,
}

impl OwnerRule {
    /// The table as a quoted SQL identifier (`"public"."scan_tasks"`).
    pub fn quoted_table(&self) -> String {
        self.table
            .split('.')
            .map(quote_ident)
            .collect::<Vec<_>>()
            .join(".")
    }
}

/// Quotes a validated identifier.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn check_ident(key: &str, ident: &str, qualified: bool) -> Result<(), ConfigError> {
    let parts: Vec<&str> = if qualified {
        ident.split('.').collect()
    } else {
        vec![ident]
    };
    let ok = !parts.is_empty()
        && parts.len() <= 2
        && parts.iter().all(|p| {
            let mut chars = p.chars();
            matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
                && p.len() <= 63
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("{ident:?} is not a plain SQL identifier (letters, digits, _; at most schema.table)"),
        ))
    }
}

/// What the rules say about a task name.
#[derive(Debug, Clone, Copy)]
pub enum OwnerMatch<'a> {
    None,
    One(&'a OwnerRule),
    /// Two or more rules match: the owner can't be determined.
    Ambiguous(&'a OwnerRule, &'a OwnerRule),
}

#[derive(Debug, Clone, Default)]
pub struct Owners {
    rules: Vec<OwnerRule>,
    globs: Vec<GlobSet>,
    unnamed: Option<usize>,
}

impl Owners {
    pub(crate) fn from_file(files: &[OwnerRuleFile]) -> Result<Self, ConfigError> {
        let mut owners = Owners::default();
        for (i, f) in files.iter().enumerate() {
            let key = |k: &str| format!("owners[{i}].{k}");
            check_ident(&key("table"), &f.table, true)?;
            check_ident(&key("id_column"), &f.id_column, false)?;
            if f.tasks.is_empty() {
                return Err(invalid(key("tasks"), "must name at least one task"));
            }
            let mut set = GlobSetBuilder::new();
            for t in &f.tasks {
                let glob = Glob::new(t).map_err(|e| invalid(key("tasks"), e.to_string()))?;
                set.add(glob);
            }
            let id_from = IdSource::parse(&f.id_from).map_err(|m| invalid(key("id_from"), m))?;
            let lost = lost_rule(f, &key)?;
            if f.claim_unnamed_results {
                if let Some(prev) = owners.unnamed {
                    return Err(invalid(
                        key("claim_unnamed_results"),
                        format!("owners[{prev}] already claims unnamed results"),
                    ));
                }
                owners.unnamed = Some(i);
            }
            owners.globs.push(
                set.build()
                    .map_err(|e| invalid(key("tasks"), e.to_string()))?,
            );
            owners.rules.push(OwnerRule {
                table: f.table.clone(),
                id_column: f.id_column.clone(),
                tasks: f.tasks.clone(),
                id_from,
                claim_unnamed_results: f.claim_unnamed_results,
                lost,
            });
        }
        Ok(owners)
    }

    pub fn rules(&self) -> &[OwnerRule] {
        &self.rules
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn match_task(&self, name: &str) -> OwnerMatch<'_> {
        let mut hits = self
            .globs
            .iter()
            .zip(&self.rules)
            .filter(|(g, _)| g.is_match(name))
            .map(|(_, r)| r);
        match (hits.next(), hits.next()) {
            (None, _) => OwnerMatch::None,
            (Some(r), None) => OwnerMatch::One(r),
            (Some(a), Some(b)) => OwnerMatch::Ambiguous(a, b),
        }
    }

    /// The rule that claims result keys without a task name, if any.
    pub fn unnamed_results_owner(&self) -> Option<&OwnerRule> {
        self.unnamed.map(|i| &self.rules[i])
    }
}

fn lost_rule(
    f: &OwnerRuleFile,
    key: &dyn Fn(&str) -> String,
) -> Result<Option<LostRowRule>, ConfigError> {
    let any = f.status_column.is_some()
        || f.active_statuses.is_some()
        || f.lost_status.is_some()
        || f.created_column.is_some()
        || f.lost_after_minutes.is_some();
    if !any {
        return Ok(None);
    }
    let need = |v: &Option<String>, k: &str| {
        v.clone().ok_or_else(|| {
            invalid(
                key(k),
                "lost-row detection needs status_column, active_statuses, lost_status and created_column",
            )
        })
    };
    let status_column = need(&f.status_column, "status_column")?;
    let lost_status = need(&f.lost_status, "lost_status")?;
    let created_column = need(&f.created_column, "created_column")?;
    check_ident(&key("status_column"), &status_column, false)?;
    check_ident(&key("created_column"), &created_column, false)?;
    let active_statuses = f.active_statuses.clone().unwrap_or_default();
    if active_statuses.is_empty() {
        return Err(invalid(
            key("active_statuses"),
            "must list at least one status",
        ));
    }
    if active_statuses.contains(&lost_status) {
        return Err(invalid(
            key("lost_status"),
            "must not be one of active_statuses",
        ));
    }
    let lost_after_minutes = f.lost_after_minutes.unwrap_or(defaults::LOST_AFTER_MINUTES);
    // Bounded like `max_age_hours` (ten years), so the cutoff time can always be computed.
    let max_minutes = crate::MAX_MAX_AGE_HOURS * 60.0;
    if !(lost_after_minutes.is_finite() && (0.0..=max_minutes).contains(&lost_after_minutes)) {
        return Err(invalid(
            key("lost_after_minutes"),
            format!(
                "must be a number of minutes from 0 to {max_minutes}, got {}",
                crate::show_number(lost_after_minutes)
            ),
        ));
    }
    Ok(Some(LostRowRule {
        status_column,
        active_statuses,
        lost_status,
        created_column,
        lost_after_minutes,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(table: &str, tasks: &[&str], id_from: &str) -> OwnerRuleFile {
        OwnerRuleFile {
            table: table.into(),
            id_column: "id".into(),
            tasks: tasks.iter().map(|s| s.to_string()).collect(),
            id_from: id_from.into(),
            claim_unnamed_results: false,
            status_column: None,
            active_statuses: None,
            lost_status: None,
            created_column: None,
            lost_after_minutes: None,
        }
    }

    #[test]
    fn globs_and_ambiguity() {
        let o = Owners::from_file(&[
            rule("scan_tasks", &["app.scan_*"], "arg:0"),
            rule("jobs", &["app.scan_domain_task", "app.job"], "kwarg:job_id"),
        ])
        .unwrap();
        assert!(
            matches!(o.match_task("app.scan_port"), OwnerMatch::One(r) if r.table == "scan_tasks")
        );
        assert!(matches!(
            o.match_task("app.scan_domain_task"),
            OwnerMatch::Ambiguous(..)
        ));
        assert!(matches!(o.match_task("app.send_email"), OwnerMatch::None));
    }

    #[test]
    fn identifiers_are_validated() {
        assert!(Owners::from_file(&[rule("scan_tasks; drop table x", &["a"], "arg:0")]).is_err());
        assert!(Owners::from_file(&[rule("public.scan_tasks", &["a"], "arg:0")]).is_ok());
        let o = Owners::from_file(&[rule("public.scan_tasks", &["a"], "task_id")]).unwrap();
        assert_eq!(o.rules()[0].quoted_table(), "\"public\".\"scan_tasks\"");
    }

    #[test]
    fn id_from_forms() {
        assert_eq!(IdSource::parse("arg:2").unwrap(), IdSource::Arg(2));
        assert_eq!(
            IdSource::parse("kwarg:scan_id").unwrap(),
            IdSource::Kwarg("scan_id".into())
        );
        assert_eq!(IdSource::parse("task_id").unwrap(), IdSource::TaskId);
        assert!(IdSource::parse("arg:-1").is_err());
        assert!(IdSource::parse("args").is_err());
    }
}
