//! A PostgreSQL database of the test's own: created on the server named by
//! `CJ_TEST_PG_ADMIN_URL` (the interop suite's variable; `scripts/test` exports it) and dropped
//! when the test ends, so a test never reads or writes a database it did not create.
//!
//! A missing or unreachable server fails the test with a message saying what to do: the
//! contract tests are never skipped.

use sqlx::{Connection, PgConnection};

/// The variable naming a URL allowed to `CREATE DATABASE` and `DROP DATABASE`.
pub const ADMIN_URL_ENV: &str = "CJ_TEST_PG_ADMIN_URL";
/// Used when [`ADMIN_URL_ENV`] is unset, as in the interop suite.
pub const DEFAULT_ADMIN_URL: &str = "postgresql://root@127.0.0.1:5432/postgres";

/// A fresh, empty database, dropped (with its connections) on drop.
#[derive(Debug)]
pub struct TestDatabase {
    admin_url: String,
    name: String,
    url: String,
}

/// The admin URL with its path (the database name) replaced by `name`; the query string (a
/// socket directory in `?host=`) is kept.
fn with_database(admin_url: &str, name: &str) -> String {
    let mut url =
        url::Url::parse(admin_url).unwrap_or_else(|e| panic!("{ADMIN_URL_ENV} is not a URL: {e}"));
    url.set_path(&format!("/{name}"));
    url.to_string()
}

/// `url` with its password, if any, shown as `****`.
fn without_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("****"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

impl TestDatabase {
    /// The admin URL the tests use.
    pub fn admin_url() -> String {
        std::env::var(ADMIN_URL_ENV)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| DEFAULT_ADMIN_URL.to_owned())
    }

    pub async fn create() -> TestDatabase {
        let admin_url = Self::admin_url();
        let shown = without_password(&admin_url);
        let name = format!(
            "cj_rstest_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let mut con = PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
            panic!(
                "cannot reach PostgreSQL at {shown}: {e}\n\
                 These tests need a PostgreSQL server where they may create a database of their \
                 own: start it (scripts/setup installs it; scripts/test starts it), or set \
                 {ADMIN_URL_ENV} to a URL allowed to CREATE DATABASE."
            )
        });
        sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut con)
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} at {shown}: {e}"));
        let _ = con.close().await;
        let url = with_database(&admin_url, &name);
        TestDatabase {
            admin_url,
            name,
            url,
        }
    }

    /// The database's URL, for the config of the program under test.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }

    /// Runs `sql` (one or more statements).
    pub async fn execute(&self, sql: &str) {
        let mut con = self.connect().await;
        sqlx::raw_sql(sql)
            .execute(&mut con)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}\n{sql}", self.name));
        let _ = con.close().await;
    }

    /// The rows of `sql`, each column as text (`NULL` as `None`); cast in the query as needed.
    pub async fn rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        use sqlx::Row;
        let mut con = self.connect().await;
        let rows = sqlx::query(sql)
            .fetch_all(&mut con)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}\n{sql}", self.name));
        let _ = con.close().await;
        rows.iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| r.get::<Option<String>, _>(i))
                    .collect()
            })
            .collect()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which can't be blocked on: a thread of its own.
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async {
                let mut con = PgConnection::connect(&admin_url).await?;
                sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut con)
                    .await?;
                con.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) && !std::thread::panicking() {
            eprintln!("warning: could not drop the test database {}", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_database_name_replaces_the_path_and_keeps_the_socket() {
        assert_eq!(
            with_database("postgresql://root@127.0.0.1:5432/postgres", "cj_x"),
            "postgresql://root@127.0.0.1:5432/cj_x"
        );
        assert_eq!(
            with_database(
                "postgresql://root@localhost/postgres?host=/var/run/postgresql",
                "cj_x"
            ),
            "postgresql://root@localhost/cj_x?host=/var/run/postgresql"
        );
    }
}
