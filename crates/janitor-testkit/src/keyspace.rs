//! The one fixed keyspace the CLI contract tests (snapshots and docs checks) run against: real
//! Celery 5.7 state captured from Redis, so the pinned reports show what a user's Redis holds.
//!
//! It is three captures of `celery-5.7-same-scenarios` loaded into one database, in this order
//! (lists are appended to, hashes, sets and sorted sets merged):
//! - `A`: `app.add` messages in the queues `celery`, `custom`, `prio` and their priority
//!   sub-lists, some whose first argument is missing or not a number;
//! - `J`: a worker killed with tasks in `unacked` (ETA tasks) and one left in `custom`;
//! - `D`: results, plain and extended (`app.add`, `app.tsum`, nameless ones, a `RETRY`), a saved
//!   group and a finished chord, and an `app.flaky` ETA task in `unacked`;
//!
//! plus one key no Celery wrote: [`WRONG_TYPE_KEY`], a list where Celery keeps a result string.

use crate::fixtures::{scenario, Capture, Dump};
use crate::redis_server::TestRedis;

/// The captured scenarios, in loading order.
pub const SCENARIOS: [&str; 3] = ["A", "J", "D"];

/// A result key holding a list: reported as a key of the wrong type, never touched.
pub const WRONG_TYPE_KEY: &str = "celery-task-meta-ffffffff-0000-0000-0000-00000000dead";

/// The dumps of [`SCENARIOS`], from Celery 5.7.
pub fn dumps() -> Vec<Dump> {
    SCENARIOS
        .iter()
        .map(|id| {
            let (_, path) = scenario(id)
                .into_iter()
                .find(|(c, _)| *c == Capture::Celery57Same)
                .unwrap_or_else(|| panic!("celery-5.7-same-scenarios has no scenario {id}"));
            Dump::load(&path)
        })
        .collect()
}

/// Loads the keyspace into database 0 of `redis`, which must be empty.
pub async fn load(redis: &TestRedis) {
    let mut con = redis.con().await;
    let keys: i64 = redis::cmd("DBSIZE").query_async(&mut con).await.unwrap();
    assert_eq!(
        keys, 0,
        "the fixed keyspace is loaded into an empty database"
    );
    for dump in dumps() {
        redis.load(&dump).await;
    }
    let _: i64 = redis::cmd("RPUSH")
        .arg(WRONG_TYPE_KEY)
        .arg("not a result")
        .query_async(&mut con)
        .await
        .unwrap();
}
