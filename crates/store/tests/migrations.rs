//! Migrations over a database that holds data: SQLite cannot change a constraint in place, so a migration that
//! rebuilds a table must keep its rows and every row that refers to them.

use std::borrow::Cow;

use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

#[tokio::test]
async fn the_deposit_screening_migration_keeps_cases_notes_and_deposits_on_sqlite() {
    let options = SqliteConnectOptions::new().in_memory(true).foreign_keys(true);
    let pool = SqlitePoolOptions::new().max_connections(1).connect_with(options).await.unwrap();
    let all = sqlx::migrate!("./migrations/sqlite");
    let mut before = sqlx::migrate!("./migrations/sqlite");
    before.migrations = Cow::Owned(all.migrations.iter().filter(|m| m.version < 8).cloned().collect());
    before.run(&pool).await.unwrap();

    for statement in [
        "INSERT INTO customers (handle, email_index, email, password_hash, status, created_at) \
         VALUES (x'01', x'02', x'03', 'hash', 'frozen', 1)",
        "INSERT INTO compliance_cases (customer_id, kind, outcome, state, details, created_at) \
         VALUES (1, 'sanctions_match', 'freeze', 'open', '{}', 2)",
        "INSERT INTO compliance_case_notes (case_id, author, body, created_at) VALUES (1, 'leo', 'looking', 3)",
        "INSERT INTO deposit_addresses (customer_id, asset, idx, script_pubkey, address, created_at) \
         VALUES (1, 'BTC', 0, x'0014', 'bcrt1q', 4)",
        "INSERT INTO chain_deposits (asset, txid, vout, address_id, customer_id, amount, height, state, created_at, \
         updated_at) VALUES ('BTC', x'aa', 0, 1, 1, 5000, 100, 'credited', 5, 5)",
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    all.run(&pool).await.unwrap();

    let case: (i64, String, String) =
        sqlx::query_as("SELECT id, kind, state FROM compliance_cases").fetch_one(&pool).await.unwrap();
    assert_eq!(case, (1, "sanctions_match".into(), "open".into()));
    let note: (i64, String) =
        sqlx::query_as("SELECT case_id, body FROM compliance_case_notes").fetch_one(&pool).await.unwrap();
    assert_eq!(note, (1, "looking".into()));
    let deposit: (i64, String) =
        sqlx::query_as("SELECT amount, state FROM chain_deposits").fetch_one(&pool).await.unwrap();
    assert_eq!(deposit, (5000, "credited".into()));
    // The references still hold, the new values are accepted, ids go on from where they were, and a note for a case
    // that does not exist is still refused.
    let broken: Vec<(String,)> = sqlx::query_as("PRAGMA foreign_key_check").fetch_all(&pool).await.unwrap();
    assert!(broken.is_empty(), "{broken:?}");
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO compliance_cases (customer_id, kind, outcome, state, details, created_at) \
         VALUES (1, 'deposit_hold', 'hold', 'open', '{}', 6) RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(id, 2);
    sqlx::query("UPDATE chain_deposits SET state = 'held'").execute(&pool).await.unwrap();
    let orphan =
        sqlx::query("INSERT INTO compliance_case_notes (case_id, author, body, created_at) VALUES (9, 'x', 'y', 7)")
            .execute(&pool)
            .await;
    assert!(orphan.is_err(), "foreign keys are enforced after the migration");
}
