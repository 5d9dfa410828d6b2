//! Redis connections and the primitive, bounded operations the engine is built from: SCAN pages,
//! pipelined reads, the janitor lock, kombu's `unacked_mutex`, (the Lua scripts have typed wrappers in `scripts.rs`).

use std::time::Duration;

use janitor_config::SecretUrl;
use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, Script};

use crate::error::{EngineError, Result};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(600);
/// kombu's `unacked_mutex` expiry (`unacked_mutex_expire`, 300 s).
const UNACKED_MUTEX_TTL_MS: u64 = 300_000;

/// A script's `CJWRONGTYPE <i> <found> <expected>` error reply (see `../lua/checks.lua`), read
/// against the keys the script was called with.
pub(crate) struct WrongTypeReply {
    /// KEYS[i] as printable text; `None` if the reply names no key of `keys`.
    pub(crate) key: Option<String>,
    pub(crate) found: String,
    /// The expected types, "list or hash".
    pub(crate) expected: String,
}

impl WrongTypeReply {
    /// `None` unless `err` is a `CJWRONGTYPE` reply.
    pub(crate) fn parse(err: &redis::RedisError, keys: &[&[u8]]) -> Option<Self> {
        if err.code() != Some("CJWRONGTYPE") {
            return None;
        }
        let mut parts = err.detail().unwrap_or_default().split_whitespace();
        let key = parts
            .next()
            .and_then(|i| i.parse::<usize>().ok())
            .filter(|i| (1..=keys.len()).contains(i))
            .map(|i| crate::archive::printable(keys[i - 1]));
        Some(WrongTypeReply {
            key,
            found: parts.next().unwrap_or("?").to_owned(),
            expected: parts.next().unwrap_or("?").replace('|', " or "),
        })
    }
}

/// One Redis server/database: the broker, the result backend, or both.
#[derive(Clone)]
pub(crate) struct RedisHandle {
    pub con: MultiplexedConnection,
    /// The database number, which Celery puts in its fanout channel names.
    pub db: i64,
}

impl RedisHandle {
    pub(crate) async fn connect(url: &SecretUrl) -> Result<Self> {
        // A driver message may echo the URL or a piece of it: scrub it.
        let unavailable = |message: String| EngineError::RedisUnavailable {
            url: url.to_string(),
            message: url.scrub(&message),
        };
        let client = redis::Client::open(url.expose()).map_err(|e| unavailable(e.to_string()))?;
        let db = client.get_connection_info().redis_settings().db();
        // Removal scripts are capped, but a busy server can still be slow to answer; never
        // give up on a reply to a script that may have run (its outcome would go unrecorded).
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let mut con = tokio::time::timeout(
            CONNECT_TIMEOUT,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .map_err(|_| unavailable("timed out after 5 s".into()))?
        .map_err(|e| unavailable(e.to_string()))?;
        let _: String = redis::cmd("PING")
            .query_async(&mut con)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        Ok(RedisHandle { con, db })
    }

    /// One `SCAN` page.
    pub(crate) async fn scan_page(
        &self,
        cursor: u64,
        pattern: &[u8],
        count: usize,
    ) -> Result<(u64, Vec<Vec<u8>>)> {
        let mut con = self.con.clone();
        Ok(redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count)
            .query_async(&mut con)
            .await?)
    }

    /// All keys matching `pattern`, by SCAN. Only for families that stay small (binding sets,
    /// priority sub-lists of one queue).
    pub(crate) async fn scan_all(&self, pattern: &[u8]) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        let mut cursor = 0;
        loop {
            let (next, keys) = self.scan_page(cursor, pattern, 1000).await?;
            out.extend(keys);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Types of several keys in one round trip.
    pub(crate) async fn types(&self, keys: &[Vec<u8>]) -> Result<Vec<String>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.cmd("TYPE").arg(k);
        }
        let mut con = self.con.clone();
        Ok(pipe.query_async(&mut con).await?)
    }

    /// Takes a lock with a random token (`SET NX PX`). Returns the token, or `None` if held.
    pub(crate) async fn try_lock(&self, key: &[u8], ttl_ms: u64) -> Result<Option<String>> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        Ok(self.lock_with(key, &token, ttl_ms).await?.then_some(token))
    }

    /// Takes a lock holding `value` (`SET NX PX`); false if it is held.
    pub(crate) async fn lock_with(&self, key: &[u8], value: &str, ttl_ms: u64) -> Result<bool> {
        let mut con = self.con.clone();
        let ok: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .query_async(&mut con)
            .await?;
        Ok(ok.is_some())
    }

    /// Refreshes (`Some(ttl)`) or releases (`None`) a lock held with `token`.
    /// `lock_script` is `lock.lua` (`Scripts::lock`).
    pub(crate) async fn lock_cas(
        &self,
        lock_script: &Script,
        key: &[u8],
        token: &str,
        refresh: Option<u64>,
    ) -> Result<bool> {
        let mut con = self.con.clone();
        let mut inv = lock_script.key(key);
        inv.arg(token);
        match refresh {
            Some(ttl) => inv.arg(ttl),
            None => inv.arg("release"),
        };
        let done: i64 = inv.invoke_async(&mut con).await?;
        Ok(done == 1)
    }

    /// Takes kombu's `unacked_mutex` the way kombu does, retrying briefly while a worker's
    /// restore sweep holds it. Returns `None` if it stayed held.
    pub(crate) async fn take_unacked_mutex(&self, key: &[u8]) -> Result<Option<String>> {
        for attempt in 0..50u64 {
            if let Some(token) = self.try_lock(key, UNACKED_MUTEX_TTL_MS).await? {
                return Ok(Some(token));
            }
            tokio::time::sleep(Duration::from_millis(20 + attempt * 4)).await;
        }
        Ok(None)
    }

    pub(crate) async fn info_fields(&self) -> Result<(Option<u64>, Option<u64>)> {
        let mut con = self.con.clone();
        let info: String = redis::cmd("INFO").query_async(&mut con).await?;
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':')))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        Ok((field("used_memory"), field("connected_clients")))
    }

    pub(crate) async fn publish(&self, channel: &[u8], message: &[u8]) -> Result<i64> {
        let mut con = self.con.clone();
        Ok(con.publish(channel, message).await?)
    }
}
