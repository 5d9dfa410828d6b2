//! celery-janitor's test support, shared by the crates' tests (a dev-dependency only, never
//! published): the captured Celery fixtures ([`fixtures`]), a `redis-server` of the test's own
//! ([`redis_server`]), a PostgreSQL database per test ([`postgres`]), the one fixed captured
//! keyspace the CLI contract runs against ([`keyspace`]), and the reader of `docs/cli.md`
//! ([`docs`]).
//!
//! Every server and database a test uses is started or created by the test and removed after
//! it; nothing here touches the machine's own Redis or an existing database. A missing
//! `redis-server` or PostgreSQL fails the test with a message, never skips it.

pub mod docs;
pub mod fixtures;
pub mod keyspace;
pub mod postgres;
pub mod redis_server;
