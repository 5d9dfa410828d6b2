//! celery-janitor's test support, shared by the crates' tests (a dev-dependency only, never
//! published): the captured Celery fixtures ([`fixtures`]), a `redis-server` of the test's own
//! ([`redis_server`]), a PostgreSQL database per test ([`postgres`]), the one fixed captured
//! keyspace the CLI contract runs against ([`keyspace`]), the SQLite owner table of the engine's
//! tests ([`sqlite_owners`]), and the reader of `docs/cli.md` ([`docs`]).
//!
//! Every server and database a test uses is started or created by the test and removed after
//! it; nothing here touches the machine's own Redis or an existing database. A missing
//! `redis-server` or PostgreSQL fails the test with a message, never skips it.

pub mod docs;
pub mod fixtures;
pub mod keyspace;
pub mod postgres;
pub mod redis_server;
pub mod sqlite_owners;

#[cfg(test)]
mod tests {
    /// This crate is test support: no crate of the workspace may depend on it but for its tests.
    #[test]
    fn the_testkit_is_only_ever_a_dev_dependency() {
        let crates = crate::docs::repo_root().join("crates");
        let mut checked = 0;
        for dir in std::fs::read_dir(&crates).unwrap() {
            let manifest = dir.unwrap().path().join("Cargo.toml");
            let Ok(text) = std::fs::read_to_string(&manifest) else {
                continue;
            };
            let toml: toml::Table = text.parse().unwrap();
            for section in ["dependencies", "build-dependencies"] {
                let deps = toml.get(section).and_then(|d| d.as_table());
                assert!(
                    deps.is_none_or(|d| !d.contains_key("janitor-testkit")),
                    "{}: janitor-testkit in [{section}]; it belongs in [dev-dependencies]",
                    manifest.display()
                );
            }
            checked += 1;
        }
        assert!(
            checked >= 5,
            "read {checked} manifests in {}",
            crates.display()
        );
    }
}
