//! A `redis-server` of the test's own on a free port (never the machine's, which a test must not
//! write to), a loader for captured dumps, and byte-exact keyspace snapshots.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::fixtures::{show, Dump, Entry, Value};

/// Prefix of the keys celery-janitor itself writes (after any broker prefix); the same text as
/// `janitor_engine::OWN_KEY_PREFIX`, which this crate can't depend on (the engine's tests use it).
pub const OWN_KEY_PREFIX: &[u8] = b"celery-janitor:";

pub struct TestRedis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl TestRedis {
    pub async fn start() -> TestRedis {
        for _ in 0..20 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let dir = tempfile::tempdir().unwrap();
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                ])
                .args(["--appendonly", "no", "--dir"])
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot run redis-server ({e}): it must be installed (scripts/setup installs it)")
                });
            let mut redis = TestRedis {
                child,
                port,
                _dir: dir,
            };
            for _ in 0..100 {
                if let Ok(client) = redis::Client::open(redis.url()) {
                    if let Ok(mut con) = client.get_multiplexed_async_connection().await {
                        if redis::cmd("PING")
                            .query_async::<String>(&mut con)
                            .await
                            .is_ok()
                        {
                            return redis;
                        }
                    }
                }
                if redis.child.try_wait().ok().flatten().is_some() {
                    break; // port taken: try another
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        panic!("could not start a redis-server on a free port (20 tries)");
    }

    pub fn url(&self) -> String {
        self.url_db(0)
    }

    pub fn url_db(&self, db: i64) -> String {
        format!("redis://127.0.0.1:{}/{db}", self.port)
    }

    pub async fn con(&self) -> redis::aio::MultiplexedConnection {
        self.con_db(0).await
    }

    pub async fn con_db(&self, db: i64) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url_db(db))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// Writes a captured keyspace into database 0.
    pub async fn load(&self, dump: &Dump) {
        self.load_into(dump, 0, |_| true).await
    }

    /// Writes the entries `pick` selects into database `db`. Lists keep their order (the dump
    /// is head first).
    pub async fn load_into(&self, dump: &Dump, db: i64, pick: impl Fn(&Entry) -> bool) {
        let mut con = self.con_db(db).await;
        for e in dump.entries.iter().filter(|e| pick(e)) {
            let cmd = match &e.value {
                Value::List(items) => {
                    let mut c = redis::cmd("RPUSH");
                    c.arg(&e.key);
                    for i in items {
                        c.arg(i.whole().expect("whole value"));
                    }
                    c
                }
                Value::Hash(fields) => {
                    let mut c = redis::cmd("HSET");
                    c.arg(&e.key);
                    for (f, v) in fields {
                        c.arg(f).arg(v.whole().expect("whole value"));
                    }
                    c
                }
                Value::Zset(members) => {
                    let mut c = redis::cmd("ZADD");
                    c.arg(&e.key);
                    for (m, s) in members {
                        c.arg(*s).arg(m);
                    }
                    c
                }
                Value::Set(members) => {
                    let mut c = redis::cmd("SADD");
                    c.arg(&e.key).arg(members);
                    c
                }
                Value::String(v) => {
                    let mut c = redis::cmd("SET");
                    c.arg(&e.key).arg(v.whole().expect("whole value"));
                    if e.pttl > 0 {
                        c.arg("PX").arg(e.pttl);
                    }
                    c
                }
            };
            let _: redis::Value = cmd.query_async(&mut con).await.unwrap();
        }
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    List(Vec<Vec<u8>>),
    Hash(BTreeMap<Vec<u8>, Vec<u8>>),
    Zset(BTreeMap<Vec<u8>, String>),
    Set(BTreeSet<Vec<u8>>),
    Str(Vec<u8>),
}

/// Every key but celery-janitor's own, byte for byte (TTLs aside).
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot(pub BTreeMap<Vec<u8>, Val>);

impl Snapshot {
    pub async fn take(redis: &TestRedis) -> Snapshot {
        Self::take_db(redis, 0).await
    }

    pub async fn take_db(redis: &TestRedis, db: i64) -> Snapshot {
        let mut con = redis.con_db(db).await;
        let mut keys: Vec<Vec<u8>> = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, page): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut con)
                .await
                .unwrap();
            keys.extend(page);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let mut map = BTreeMap::new();
        for k in keys {
            // celery-janitor's own keys (after any broker prefix) are not Celery's state.
            if k.windows(OWN_KEY_PREFIX.len()).any(|w| w == OWN_KEY_PREFIX) {
                continue;
            }
            let ty: String = redis::cmd("TYPE")
                .arg(&k)
                .query_async(&mut con)
                .await
                .unwrap();
            let v = match ty.as_str() {
                "list" => Val::List(
                    redis::cmd("LRANGE")
                        .arg(&k)
                        .arg(0)
                        .arg(-1)
                        .query_async(&mut con)
                        .await
                        .unwrap(),
                ),
                "hash" => Val::Hash(
                    redis::cmd("HGETALL")
                        .arg(&k)
                        .query_async(&mut con)
                        .await
                        .unwrap(),
                ),
                "zset" => {
                    let pairs: Vec<(Vec<u8>, String)> = redis::cmd("ZRANGE")
                        .arg(&k)
                        .arg(0)
                        .arg(-1)
                        .arg("WITHSCORES")
                        .query_async(&mut con)
                        .await
                        .unwrap();
                    Val::Zset(pairs.into_iter().collect())
                }
                "set" => Val::Set(
                    redis::cmd("SMEMBERS")
                        .arg(&k)
                        .query_async(&mut con)
                        .await
                        .unwrap(),
                ),
                "string" => Val::Str(
                    redis::cmd("GET")
                        .arg(&k)
                        .query_async(&mut con)
                        .await
                        .unwrap(),
                ),
                other => panic!("unexpected type {other} of {}", show(&k)),
            };
            map.insert(k, v);
        }
        Snapshot(map)
    }

    /// `after` must equal `self` minus exactly the `removed` (key, value) entries.
    pub fn assert_only_removed(
        &self,
        after: &Snapshot,
        removed: &[(Vec<u8>, Vec<u8>)],
        what: &str,
    ) {
        let mut expected = self.0.clone();
        for (key, raw) in removed {
            match expected.get_mut(key) {
                Some(Val::List(items)) => {
                    let pos = items
                        .iter()
                        .position(|i| i == raw)
                        .expect("removed item was there");
                    items.remove(pos);
                }
                Some(Val::Hash(fields)) => {
                    let field = fields
                        .iter()
                        .find(|(_, v)| *v == raw)
                        .map(|(f, _)| f.clone())
                        .expect("removed field was there");
                    fields.remove(&field);
                    let index_key = [key.as_slice(), b"_index"].concat();
                    if let Some(Val::Zset(members)) = expected.get_mut(&index_key) {
                        members.remove(&field);
                    }
                }
                Some(Val::Str(_)) => {
                    expected.remove(key);
                }
                other => panic!("{what}: removed entry of unexpected kind {other:?}"),
            }
        }
        expected.retain(|_, v| match v {
            Val::List(i) => !i.is_empty(),
            Val::Hash(f) => !f.is_empty(),
            Val::Zset(m) => !m.is_empty(),
            _ => true,
        });
        assert_eq!(expected, after.0, "{what}: more than the orphans changed");
    }

    /// Same keys and values; list order may differ (restored messages go to the consume end).
    pub fn assert_same_content(&self, other: &Snapshot, what: &str) {
        let norm = |s: &Snapshot| {
            let mut m = s.0.clone();
            for v in m.values_mut() {
                if let Val::List(items) = v {
                    items.sort();
                }
            }
            m
        };
        assert_eq!(
            norm(self),
            norm(other),
            "{what}: restore did not bring every byte back"
        );
    }
}
