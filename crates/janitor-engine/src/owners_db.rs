//! Owner-row lookups in the application database (PostgreSQL or SQLite), always batched.
//!
//! Table and column names come from the config, so queries are built at run time from validated,
//! quoted identifiers; every value is bound. Ids are bound in the id column's own type (looked up
//! once per table) so `= ANY($1)` uses the primary-key index. An id that can't be of that type is
//! reported as invalid — never as "missing", which would make it an orphan.

use std::collections::{HashMap, HashSet};

use janitor_config::{quote_ident, OwnerRule, SecretUrl};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqlitePool, SqlitePoolOptions};
use sqlx::Row;

use crate::error::{EngineError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdKind {
    Int,
    Uuid,
    Text,
}

enum Pool {
    Pg(PgPool),
    Sqlite(SqlitePool),
}

pub(crate) struct OwnerDb {
    pool: Pool,
    /// Each rule's id column type, looked up once: at connect, or at first use by a lazy pool.
    kinds: tokio::sync::OnceCell<Vec<IdKind>>,
    rules: Vec<OwnerRule>,
    /// The database's URL, for [`OwnerDb::lookup_one`]'s own connection.
    url: SecretUrl,
    /// The worker guard's own PostgreSQL connection ([`OwnerDb::lookup_one`]): connected on
    /// first use, taken out while a query runs and put back only after it answered, so a
    /// failed or abandoned (timed-out) lookup drops it and the next one reconnects.
    single: tokio::sync::Mutex<Option<sqlx::PgConnection>>,
}

/// Typed id batch for binding.
enum Ids {
    Int(Vec<i64>),
    Uuid(Vec<uuid::Uuid>),
    Text(Vec<String>),
}

/// The answer for one batch of ids.
#[derive(Debug, Default)]
pub(crate) struct Lookup {
    pub existing: HashSet<String>,
    /// Ids that can't be values of the id column, with the reason.
    pub invalid: HashMap<String, String>,
}

fn db_error(rule: &OwnerRule, e: impl std::fmt::Display) -> EngineError {
    EngineError::Database {
        table: rule.table.clone(),
        message: e.to_string(),
    }
}

/// A query's error: a lost or refused connection (the server went away, was shut down, or
/// terminated this session) is told apart from an error of the query itself.
fn sql_error(rule: &OwnerRule, e: sqlx::Error) -> EngineError {
    let lost = match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // Operator intervention (57P: admin_shutdown, crash_shutdown, cannot_connect_now),
        // connection exceptions (08), and what a reconnect of the pool meets when the database
        // went away: it no longer exists (3D000), refuses connections (55000, "not currently
        // accepting connections"), is full (53300) or refuses the credentials (28000, 28P01).
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            c.starts_with("57P")
                || c.starts_with("08")
                || matches!(&*c, "3D000" | "55000" | "53300" | "28000" | "28P01")
        }),
        _ => false,
    };
    if lost {
        EngineError::DatabaseLost {
            table: rule.table.clone(),
            message: e.to_string(),
        }
    } else {
        db_error(rule, e)
    }
}

impl OwnerDb {
    pub(crate) async fn connect(url: &SecretUrl, rules: &[OwnerRule]) -> Result<Self> {
        // A driver message may echo the URL or a piece of it: scrub it.
        let unavailable = |e: sqlx::Error| EngineError::DatabaseUnavailable {
            url: url.to_string(),
            message: url.scrub(&e.to_string()),
        };
        let timeout = std::time::Duration::from_secs(5);
        // One direct connection first: a pool would only report "timed out", hiding the cause
        // (connection refused, unknown database, authentication failed).
        let check = async {
            use sqlx::Connection;
            if url.scheme() == "sqlite" {
                sqlx::SqliteConnection::connect(url.expose())
                    .await?
                    .close()
                    .await
            } else {
                sqlx::PgConnection::connect(url.expose())
                    .await?
                    .close()
                    .await
            }
        };
        match tokio::time::timeout(timeout, check).await {
            Ok(result) => result.map_err(unavailable)?,
            Err(_) => return Err(unavailable(sqlx::Error::PoolTimedOut)),
        }
        let db = Self::lazy(url, rules, timeout)?;
        db.kinds().await?;
        Ok(db)
    }

    /// A pool that connects on first use (a long-lived worker whose database may be down when
    /// it starts): nothing is checked now; each lookup waits at most `timeout` for a connection.
    pub(crate) fn lazy(
        url: &SecretUrl,
        rules: &[OwnerRule],
        timeout: std::time::Duration,
    ) -> Result<Self> {
        let unavailable = |e: sqlx::Error| EngineError::DatabaseUnavailable {
            url: url.to_string(),
            message: url.scrub(&e.to_string()),
        };
        let pool = if url.scheme() == "sqlite" {
            Pool::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(timeout)
                    .connect_lazy(url.expose())
                    .map_err(unavailable)?,
            )
        } else {
            Pool::Pg(
                PgPoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(timeout)
                    .connect_lazy(url.expose())
                    .map_err(unavailable)?,
            )
        };
        Ok(OwnerDb {
            pool,
            kinds: tokio::sync::OnceCell::new(),
            rules: rules.to_vec(),
            url: url.clone(),
            single: tokio::sync::Mutex::new(None),
        })
    }

    /// Each rule's id column type (looked up once).
    async fn kinds(&self) -> Result<&[IdKind]> {
        self.kinds
            .get_or_try_init(|| async {
                let mut kinds = Vec::with_capacity(self.rules.len());
                for rule in &self.rules {
                    kinds.push(self.id_kind(rule).await?);
                }
                Ok::<_, EngineError>(kinds)
            })
            .await
            .map(Vec::as_slice)
    }

    async fn id_kind(&self, rule: &OwnerRule) -> Result<IdKind> {
        let (schema, table) = match rule.table.split_once('.') {
            Some((s, t)) => (Some(s), t),
            None => (None, rule.table.as_str()),
        };
        let type_name: Option<String> = match &self.pool {
            Pool::Pg(pool) => {
                let row = sqlx::query(
                    "SELECT data_type FROM information_schema.columns \
                     WHERE table_name = $1 AND column_name = $2 \
                     AND table_schema = COALESCE($3, current_schema()) LIMIT 1",
                )
                .bind(table)
                .bind(&rule.id_column)
                .bind(schema)
                .fetch_optional(pool)
                .await
                .map_err(|e| sql_error(rule, e))?;
                row.map(|r| r.get::<String, _>(0))
            }
            Pool::Sqlite(pool) => {
                let sql = format!(
                    "SELECT type FROM pragma_table_info({}) WHERE name = ?",
                    sql_string(table)
                );
                let row = sqlx::query(&sql)
                    .bind(&rule.id_column)
                    .fetch_optional(pool)
                    .await
                    .map_err(|e| sql_error(rule, e))?;
                row.map(|r| r.get::<String, _>(0))
            }
        };
        let Some(type_name) = type_name else {
            return Err(db_error(
                rule,
                format!(
                    "column {}.{} does not exist (check [[owners]] table and id_column)",
                    rule.table, rule.id_column
                ),
            ));
        };
        let t = type_name.to_ascii_lowercase();
        Ok(if t.contains("int") {
            IdKind::Int
        } else if t == "uuid" {
            IdKind::Uuid
        } else {
            IdKind::Text
        })
    }

    fn typed(kind: IdKind, ids: &[String], lookup: &mut Lookup) -> Ids {
        match kind {
            IdKind::Int => {
                let mut v = Vec::new();
                for id in ids {
                    match id.trim().parse::<i64>() {
                        Ok(n) if n.to_string() == *id => v.push(n),
                        _ => {
                            lookup
                                .invalid
                                .insert(id.clone(), format!("owner id {id:?} is not an integer"));
                        }
                    }
                }
                Ids::Int(v)
            }
            IdKind::Uuid => {
                let mut v = Vec::new();
                for id in ids {
                    match uuid::Uuid::parse_str(id) {
                        Ok(u) if u.hyphenated().to_string() == *id => v.push(u),
                        _ => {
                            lookup.invalid.insert(
                                id.clone(),
                                format!("owner id {id:?} is not a canonical uuid"),
                            );
                        }
                    }
                }
                Ids::Uuid(v)
            }
            IdKind::Text => Ids::Text(ids.to_vec()),
        }
    }

    /// Why `id` can never be an id of the rule's column (`042` for an integer column, a uuid
    /// not in canonical form), or `None` when it can. The guard and the cleanup compare ids in
    /// that canonical form, so a revocation of any other spelling would never match a task.
    pub(crate) async fn unmatchable_id(&self, rule_idx: usize, id: &str) -> Result<Option<String>> {
        let kind = self.kinds().await?[rule_idx];
        let mut lookup = Lookup::default();
        Self::typed(kind, &[id.to_owned()], &mut lookup);
        Ok(lookup.invalid.remove(id))
    }

    /// Which of `ids` exist in the rule's table. One query per call (per 500 ids on SQLite).
    pub(crate) async fn lookup(
        &self,
        rule_idx: usize,
        rule: &OwnerRule,
        ids: &[String],
    ) -> Result<Lookup> {
        let mut lookup = Lookup::default();
        let kind = self.kinds().await?[rule_idx];
        let typed = Self::typed(kind, ids, &mut lookup);
        let table = rule.quoted_table();
        let col = quote_ident(&rule.id_column);
        match &self.pool {
            Pool::Pg(pool) => {
                let sql = answered_as_asked(&table, &col);
                let q = sqlx::query_scalar::<_, String>(&sql);
                let rows = match typed {
                    Ids::Int(v) => q.bind(v).fetch_all(pool).await,
                    Ids::Uuid(v) => q.bind(v).fetch_all(pool).await,
                    Ids::Text(v) => q.bind(v).fetch_all(pool).await,
                }
                .map_err(|e| sql_error(rule, e))?;
                lookup.existing.extend(rows);
            }
            Pool::Sqlite(pool) => {
                let values: Vec<String> = match typed {
                    Ids::Int(v) => v.iter().map(i64::to_string).collect(),
                    Ids::Uuid(v) => v.iter().map(|u| u.hyphenated().to_string()).collect(),
                    Ids::Text(v) => v,
                };
                for chunk in values.chunks(500) {
                    let marks = vec!["?"; chunk.len()].join(", ");
                    let sql =
                        format!("SELECT CAST({col} AS TEXT) FROM {table} WHERE {col} IN ({marks})");
                    let mut q = sqlx::query_scalar::<_, String>(&sql);
                    for v in chunk {
                        q = match kind {
                            IdKind::Int => q.bind(v.parse::<i64>().unwrap_or_default()),
                            _ => q.bind(v.clone()),
                        };
                    }
                    let rows = q.fetch_all(pool).await.map_err(|e| sql_error(rule, e))?;
                    lookup.existing.extend(rows);
                }
            }
        }
        Ok(lookup)
    }

    /// `SELECT 1`: the database answers.
    pub(crate) async fn ping(&self) -> Result<()> {
        let answered: std::result::Result<i32, sqlx::Error> = match &self.pool {
            Pool::Pg(pool) => sqlx::query_scalar("SELECT 1").fetch_one(pool).await,
            Pool::Sqlite(pool) => sqlx::query_scalar("SELECT 1").fetch_one(pool).await,
        };
        answered.map(drop).map_err(|e| EngineError::DatabaseLost {
            table: "(health check)".into(),
            message: e.to_string(),
        })
    }

    /// Whether one id exists, for the worker guard: on PostgreSQL one round trip on a
    /// connection of its own (a prepared statement after the first call). The pool is not used
    /// here because in a worker it costs more than the query: sqlx pings a connection when it
    /// is taken (`test_before_acquire`) and again when it is returned, and on the guard's
    /// current-thread runtime the return only runs during the next check, which then finds no
    /// idle connection and opens another (up to the pool's size).
    pub(crate) async fn lookup_one(
        &self,
        rule_idx: usize,
        rule: &OwnerRule,
        id: &str,
    ) -> Result<Lookup> {
        let ids = [id.to_owned()];
        if !matches!(self.pool, Pool::Pg(_)) {
            return self.lookup(rule_idx, rule, &ids).await;
        }
        let mut lookup = Lookup::default();
        let kind = self.kinds().await?[rule_idx];
        let typed = Self::typed(kind, &ids, &mut lookup);
        let mut slot = self.single.lock().await;
        let mut conn = match slot.take() {
            Some(conn) => conn,
            None => {
                use sqlx::Connection;
                sqlx::PgConnection::connect(self.url.expose())
                    .await
                    .map_err(|e| EngineError::DatabaseLost {
                        table: rule.table.clone(),
                        message: self.url.scrub(&e.to_string()),
                    })?
            }
        };
        let sql = answered_as_asked(&rule.quoted_table(), &quote_ident(&rule.id_column));
        let q = sqlx::query_scalar::<_, String>(&sql);
        let rows = match typed {
            Ids::Int(v) => q.bind(v).fetch_all(&mut conn).await,
            Ids::Uuid(v) => q.bind(v).fetch_all(&mut conn).await,
            Ids::Text(v) => q.bind(v).fetch_all(&mut conn).await,
        }
        .map_err(|e| sql_error(rule, e))?;
        *slot = Some(conn);
        lookup.existing.extend(rows);
        Ok(lookup)
    }

    pub(crate) async fn count_rows(&self, rule: &OwnerRule) -> Result<u64> {
        let sql = format!("SELECT count(*) FROM {}", rule.quoted_table());
        let n: i64 = match &self.pool {
            Pool::Pg(pool) => sqlx::query_scalar(&sql).fetch_one(pool).await,
            Pool::Sqlite(pool) => sqlx::query_scalar(&sql).fetch_one(pool).await,
        }
        .map_err(|e| sql_error(rule, e))?;
        Ok(n.max(0) as u64)
    }

    /// Ids of rows in an active status created more than `lost_after_minutes` ago.
    pub(crate) async fn lost_candidates(&self, rule: &OwnerRule) -> Result<Vec<String>> {
        let Some(lost) = &rule.lost else {
            return Ok(Vec::new());
        };
        let table = rule.quoted_table();
        let col = quote_ident(&rule.id_column);
        let status = quote_ident(&lost.status_column);
        let created = quote_ident(&lost.created_column);
        let cutoff = lost_cutoff(lost.lost_after_minutes);
        let rows = match &self.pool {
            Pool::Pg(pool) => {
                let sql = format!(
                    "SELECT {col}::text FROM {table} WHERE {status} = ANY($1) AND {created} < $2"
                );
                sqlx::query_scalar::<_, String>(&sql)
                    .bind(&lost.active_statuses)
                    .bind(cutoff)
                    .fetch_all(pool)
                    .await
            }
            Pool::Sqlite(pool) => {
                let marks = vec!["?"; lost.active_statuses.len()].join(", ");
                let sql = format!(
                    "SELECT CAST({col} AS TEXT) FROM {table} WHERE {status} IN ({marks}) AND {created} < ?"
                );
                let mut q = sqlx::query_scalar::<_, String>(&sql);
                for s in &lost.active_statuses {
                    q = q.bind(s.clone());
                }
                q.bind(cutoff.format("%Y-%m-%d %H:%M:%S").to_string())
                    .fetch_all(pool)
                    .await
            }
        }
        .map_err(|e| sql_error(rule, e))?;
        Ok(rows)
    }

    /// Sets `lost_status` on the given rows of every table, all in one transaction, only where
    /// they are still active and old enough. Returns, per batch, the ids actually changed.
    pub(crate) async fn mark_lost(
        &self,
        batches: &[(usize, &OwnerRule, Vec<String>)],
    ) -> Result<Vec<Vec<String>>> {
        let any_rule = match batches.first() {
            Some((_, rule, _)) => *rule,
            None => return Ok(Vec::new()),
        };
        let mut out = Vec::with_capacity(batches.len());
        match &self.pool {
            Pool::Pg(pool) => {
                let mut tx = pool.begin().await.map_err(|e| sql_error(any_rule, e))?;
                for (rule_idx, rule, ids) in batches {
                    out.push(self.mark_lost_pg(&mut tx, *rule_idx, rule, ids).await?);
                }
                tx.commit().await.map_err(|e| sql_error(any_rule, e))?;
            }
            Pool::Sqlite(pool) => {
                let mut tx = pool.begin().await.map_err(|e| sql_error(any_rule, e))?;
                for (rule_idx, rule, ids) in batches {
                    out.push(self.mark_lost_sqlite(&mut tx, *rule_idx, rule, ids).await?);
                }
                tx.commit().await.map_err(|e| sql_error(any_rule, e))?;
            }
        }
        Ok(out)
    }

    /// One table's part of [`OwnerDb::mark_lost`] on PostgreSQL: one UPDATE … RETURNING.
    async fn mark_lost_pg(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        rule_idx: usize,
        rule: &OwnerRule,
        ids: &[String],
    ) -> Result<Vec<String>> {
        let Some(lost) = rule.lost.as_ref().filter(|_| !ids.is_empty()) else {
            return Ok(Vec::new());
        };
        let (table, col) = (rule.quoted_table(), quote_ident(&rule.id_column));
        let status = quote_ident(&lost.status_column);
        let created = quote_ident(&lost.created_column);
        let sql = format!(
            "UPDATE {table} SET {status} = $1 WHERE {col} = ANY($2) \
             AND {status} = ANY($3) AND {created} < $4 RETURNING {col}::text"
        );
        let q = sqlx::query_scalar::<_, String>(&sql).bind(&lost.lost_status);
        let kind = self.kinds().await?[rule_idx];
        let q = match Self::typed(kind, ids, &mut Lookup::default()) {
            Ids::Int(v) => q.bind(v),
            Ids::Uuid(v) => q.bind(v),
            Ids::Text(v) => q.bind(v),
        };
        q.bind(&lost.active_statuses)
            .bind(lost_cutoff(lost.lost_after_minutes))
            .fetch_all(&mut **tx)
            .await
            .map_err(|e| sql_error(rule, e))
    }

    /// One table's part of [`OwnerDb::mark_lost`] on SQLite: one UPDATE per row.
    async fn mark_lost_sqlite(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        rule_idx: usize,
        rule: &OwnerRule,
        ids: &[String],
    ) -> Result<Vec<String>> {
        let Some(lost) = rule.lost.as_ref() else {
            return Ok(Vec::new());
        };
        let (table, col) = (rule.quoted_table(), quote_ident(&rule.id_column));
        let status = quote_ident(&lost.status_column);
        let created = quote_ident(&lost.created_column);
        let active = vec!["?"; lost.active_statuses.len()].join(", ");
        let sql = format!(
            "UPDATE {table} SET {status} = ? WHERE {col} = ? AND {status} IN ({active}) \
             AND {created} < ?"
        );
        let cutoff = lost_cutoff(lost.lost_after_minutes)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string();
        let kind = self.kinds().await?[rule_idx];
        let mut changed = Vec::new();
        for id in ids {
            let mut q = sqlx::query(&sql).bind(lost.lost_status.clone());
            q = match kind {
                IdKind::Int => match id.parse::<i64>() {
                    Ok(n) => q.bind(n),
                    Err(_) => continue,
                },
                _ => q.bind(id.clone()),
            };
            for st in &lost.active_statuses {
                q = q.bind(st.clone());
            }
            let done = q
                .bind(cutoff.clone())
                .execute(&mut **tx)
                .await
                .map_err(|e| sql_error(rule, e))?;
            if done.rows_affected() > 0 {
                changed.push(id.clone());
            }
        }
        Ok(changed)
    }
}

/// Rows created before this are old enough to be lost.
fn lost_cutoff(minutes: f64) -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now() - chrono::Duration::milliseconds((minutes * 60_000.0) as i64)
}

fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The PostgreSQL lookup of which ids exist, answering with the ids *as asked*: the column's
/// own spelling can differ from an id it equals (a case-insensitive collation answers
/// `Ops@Example.com` for `ops@example.com`), and an id answered in another spelling would read
/// as missing — a live task skipped by the guard or removed by a cleanup.
fn answered_as_asked(table: &str, col: &str) -> String {
    format!(
        "SELECT x::text FROM unnest($1) AS x WHERE EXISTS (SELECT 1 FROM {table} WHERE {col} = x)"
    )
}
