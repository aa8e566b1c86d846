//! Support for tests that run against both backends: a fresh SQLite file, and a fresh PostgreSQL database when
//! `RAMPART_TEST_POSTGRES_URL` names a server (CI sets it; without it, PostgreSQL tests say loudly that they skipped).

use std::path::Path;

use sqlx::Connection;

/// The environment variable naming a PostgreSQL server for tests, e.g. `postgres://postgres@127.0.0.1:5432/test`.
pub const POSTGRES_URL_ENV: &str = "RAMPART_TEST_POSTGRES_URL";

/// The URL of a new SQLite file inside `dir`.
pub fn sqlite_url(dir: &Path) -> String {
    crate::Store::sqlite_url_in(dir)
}

/// Creates a new, empty PostgreSQL database on the test server and returns its URL, or `None` (after printing a
/// loud notice naming `test_name`) if no test server is configured.
pub async fn fresh_postgres_url(test_name: &str) -> Option<String> {
    let Ok(base) = std::env::var(POSTGRES_URL_ENV) else {
        eprintln!("\n*** SKIPPED on PostgreSQL: {test_name} (set {POSTGRES_URL_ENV} to run it) ***\n");
        return None;
    };
    let name = format!("rampart_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&base)
        .await
        .unwrap_or_else(|e| panic!("{POSTGRES_URL_ENV} is set but the server is unreachable: {e}"));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
    let (prefix, _) = base.rsplit_once('/').expect("a postgres url names a database");
    Some(format!("{prefix}/{name}"))
}
