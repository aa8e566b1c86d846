//! The audit log in storage, on SQLite and (when configured) PostgreSQL: appends in the same transaction as the
//! change, append-only triggers, and verification that pinpoints tampering done directly in the database.

use std::collections::BTreeMap;

use rampart_audit::{AuditRecord, FindingKind, Outcome};
use rampart_core::{AccountId, Amount, AssetCode, TransferId};
use rampart_crypto::{Keyring, initialise};
use rampart_ledger::{AccountFlags, CreateTransferResult as TR, NewAccount, NewTransfer, TransferFlags};
use rampart_store::{AuditFilter, AuditedBy, Auditor, ConnectOptions, Store, testing};
use sqlx::Connection;

const NOW: u64 = 1_800_000_000_000_000_000;

/// Runs `body(store, url)` on a fresh SQLite file and, if configured, a fresh PostgreSQL database.
macro_rules! on_both_backends {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let dir = tempfile::tempdir().unwrap();
                let url = testing::sqlite_url(dir.path());
                ($body)(open(&url).await, url).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(url) = testing::fresh_postgres_url(concat!(stringify!($name), "::postgres")).await else {
                    return;
                };
                ($body)(open(&url).await, url).await;
            }
        }
    };
}

async fn open(url: &str) -> Store {
    let store = Store::connect(url, &ConnectOptions::default()).await.unwrap();
    store.migrate().await.unwrap();
    store
}

fn keyring() -> Keyring {
    let (config, root, _) = initialise(5, 3, &mut rand_core::OsRng).unwrap();
    Keyring::create(root, config.init_id).0
}

fn record(i: u64) -> AuditRecord {
    AuditRecord {
        time_ns: NOW + i,
        actor: format!("staff:{}", i % 4),
        action: "staff.role.grant".into(),
        target: format!("staff:{}", i + 100),
        outcome: Outcome::Success,
        details: BTreeMap::from([("role".to_owned(), "auditor".to_owned())]),
    }
}

/// Appends `n` entries, one transaction each, with a checkpoint every 10.
async fn fill(store: &Store, keys: &Keyring, n: u64) {
    let auditor = Auditor { signer: keys, checkpoint_every: 10 };
    for i in 1..=n {
        store.append_audit(vec![record(i)], &auditor).await.unwrap();
    }
}

async fn finding(store: &Store, keys: &Keyring) -> Option<(u64, FindingKind)> {
    store.verify_audit(&keys.verifying_key()).await.unwrap().finding.map(|f| (f.seq, f.kind))
}

/// Runs SQL as someone with direct database access who has switched off the append-only triggers.
async fn tamper(url: &str, statements: &[&str]) {
    if url.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
        for trigger in
            ["audit_log_no_update", "audit_log_no_delete", "audit_head_no_delete", "audit_checkpoints_no_delete"]
        {
            sqlx::query(&format!("DROP TRIGGER IF EXISTS {trigger}")).execute(&mut conn).await.unwrap();
        }
        for sql in statements {
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        }
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query("SET session_replication_role = replica").execute(&mut conn).await.unwrap();
        for sql in statements {
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        }
    }
}

on_both_backends!(an_intact_log_verifies_and_reads_back_filtered, |store: Store, _url: String| async move {
    let keys = keyring();
    fill(&store, &keys, 35).await;
    let report = store.verify_audit(&keys.verifying_key()).await.unwrap();
    assert_eq!((report.entries, report.checkpoints, report.finding), (35, 3, None));
    let by_actor = AuditFilter { actor: Some("staff:1".into()), ..AuditFilter::default() };
    let entries = store.audit_entries(&by_actor, 100).await.unwrap();
    assert_eq!(entries.len(), 9);
    assert!(entries.iter().all(|e| e.record.actor == "staff:1"));
    let window = AuditFilter { from_ns: Some(NOW + 10), until_ns: Some(NOW + 20), ..AuditFilter::default() };
    assert_eq!(store.audit_entries(&window, 100).await.unwrap().len(), 10);
    // Another key does not verify the log.
    assert!(store.verify_audit(&keyring().verifying_key()).await.unwrap().finding.is_some());
});

on_both_backends!(the_database_refuses_updates_and_deletes_of_the_log, |store: Store, url: String| async move {
    let keys = keyring();
    fill(&store, &keys, 3).await;
    if url.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        assert!(sqlx::query("UPDATE audit_log SET actor = 'x' WHERE seq = 2").execute(&mut conn).await.is_err());
        assert!(sqlx::query("DELETE FROM audit_log WHERE seq = 3").execute(&mut conn).await.is_err());
    } else {
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        assert!(sqlx::query("UPDATE audit_log SET actor = 'x' WHERE seq = 2").execute(&mut conn).await.is_err());
        assert!(sqlx::query("DELETE FROM audit_log WHERE seq = 3").execute(&mut conn).await.is_err());
        assert!(sqlx::query("TRUNCATE audit_log").execute(&mut conn).await.is_err());
    }
    assert_eq!(finding(&store, &keys).await, None);
});

on_both_backends!(an_edited_field_is_pinpointed, |store: Store, url: String| async move {
    let keys = keyring();
    fill(&store, &keys, 30).await;
    tamper(&url, &["UPDATE audit_log SET actor = 'staff:innocent' WHERE seq = 17"]).await;
    assert_eq!(finding(&store, &keys).await, Some((17, FindingKind::Edited)));
});

on_both_backends!(a_deleted_entry_is_pinpointed, |store: Store, url: String| async move {
    let keys = keyring();
    fill(&store, &keys, 30).await;
    tamper(&url, &["DELETE FROM audit_log WHERE seq = 12"]).await;
    assert_eq!(finding(&store, &keys).await, Some((12, FindingKind::Deleted)));
});

on_both_backends!(an_inserted_entry_is_pinpointed, |store: Store, url: String| async move {
    let keys = keyring();
    fill(&store, &keys, 30).await;
    // Make room after entry 8 and slip a forged entry in, copying entry 8's hash as its predecessor.
    tamper(
        &url,
        &[
            "UPDATE audit_log SET seq = seq + 1000 WHERE seq > 8",
            "UPDATE audit_log SET seq = seq - 999 WHERE seq > 1000",
            "INSERT INTO audit_log (seq, time_ns, actor, action, target, outcome, details, prev_hash, hash) \
             SELECT 9, time_ns, 'staff:0', 'staff.role.grant', 'staff:666', 'success', '{}', hash, hash \
             FROM audit_log WHERE seq = 8",
        ],
    )
    .await;
    let (seq, kind) = finding(&store, &keys).await.unwrap();
    assert_eq!(seq, 9, "{kind:?}");
});

on_both_backends!(a_reordering_is_pinpointed, |store: Store, url: String| async move {
    let keys = keyring();
    fill(&store, &keys, 30).await;
    tamper(
        &url,
        &[
            "UPDATE audit_log SET seq = 1000 WHERE seq = 22",
            "UPDATE audit_log SET seq = 22 WHERE seq = 23",
            "UPDATE audit_log SET seq = 23 WHERE seq = 1000",
        ],
    )
    .await;
    let (seq, _) = finding(&store, &keys).await.unwrap();
    assert_eq!(seq, 22);
});

on_both_backends!(a_truncated_tail_after_the_last_checkpoint_is_caught, |store: Store, url: String| async move {
    let keys = keyring();
    fill(&store, &keys, 26).await;
    tamper(&url, &["DELETE FROM audit_log WHERE seq > 22"]).await;
    assert_eq!(finding(&store, &keys).await, Some((23, FindingKind::Truncated)));
});

on_both_backends!(audited_transfers_are_logged_in_the_same_transaction, |store: Store, url: String| async move {
    let keys = keyring();
    let btc: AssetCode = "BTC".parse().unwrap();
    let account =
        |id| NewAccount { id: AccountId(id), asset: btc, code: 1, flags: AccountFlags::default(), user_data: 0 };
    store.create_accounts(&[account(1), account(2)], NOW).await.unwrap();
    let transfer = |id| NewTransfer {
        id: TransferId(id),
        debit_account_id: AccountId(1),
        credit_account_id: AccountId(2),
        amount: Amount::new(5),
        pending_id: None,
        asset: btc,
        code: 1,
        flags: TransferFlags::default(),
        timeout_s: 0,
        user_data: 0,
    };
    let by = AuditedBy::new(Auditor { signer: &keys, checkpoint_every: 10 }, "staff:9");
    assert_eq!(store.create_transfers_audited(&[transfer(10), transfer(11)], NOW, &by).await.unwrap(), [TR::Ok; 2]);
    let entries = store.audit_entries(&AuditFilter::default(), 10).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].record.action, "ledger.transfers.create");
    assert_eq!(entries[0].record.details["ids"], "10,11");
    // If the audit append fails (here: someone planted a row where the next entry must go), the transfer fails too.
    tamper(
        &url,
        &["INSERT INTO audit_log (seq, time_ns, actor, action, target, outcome, details, prev_hash, hash) \
           SELECT 2, time_ns, actor, action, target, outcome, details, hash, hash FROM audit_log WHERE seq = 1"],
    )
    .await;
    assert!(store.create_transfers_audited(&[transfer(12)], NOW, &by).await.is_err());
    assert!(store.transfer(TransferId(12)).await.unwrap().is_none(), "the transfer must not survive its audit");
    assert_eq!(store.account(AccountId(2)).await.unwrap().unwrap().credits_posted, Amount::new(10));
});

on_both_backends!(the_seal_configuration_and_keys_are_stored_once, |store: Store, _url: String| async move {
    let (config, root, _) = initialise(5, 3, &mut rand_core::OsRng).unwrap();
    let (mut keys, wrapped) = Keyring::create(root, config.init_id);
    assert!(store.seal_config().await.unwrap().is_none());
    assert!(store.initialise_seal(&config, &wrapped, &keys.verifying_key(), NOW).await.unwrap());
    assert_eq!(store.audit_public_key().await.unwrap(), Some(keys.verifying_key()));
    let (other, other_root, _) = initialise(5, 3, &mut rand_core::OsRng).unwrap();
    let (other_ring, other_keys) = Keyring::create(other_root, other.init_id);
    assert!(
        !store.initialise_seal(&other, &other_keys, &other_ring.verifying_key(), NOW).await.unwrap(),
        "a second init changes nothing"
    );
    assert_eq!(store.seal_config().await.unwrap().unwrap(), config);
    let v2 = keys.rotate();
    let auditor = Auditor { signer: &keys, checkpoint_every: 10 };
    store.add_crypto_key_audited(&v2, NOW, &auditor, vec![record(1)]).await.unwrap();
    assert_eq!(store.audit_entries(&AuditFilter::default(), 10).await.unwrap().len(), 1, "audited with the key");
    let stored = store.crypto_keys().await.unwrap();
    assert_eq!(stored.len(), 4);
    assert!(stored.iter().any(|k| k.version == 2));
});

on_both_backends!(a_quiet_log_gets_a_time_based_checkpoint, |store: Store, _url: String| async move {
    let keys = keyring();
    let auditor = Auditor { signer: &keys, checkpoint_every: 10 };
    assert_eq!(store.checkpoint_audit_head(&auditor, NOW).await.unwrap(), None, "nothing to cover yet");
    fill(&store, &keys, 13).await;
    assert_eq!(store.checkpoint_audit_head(&auditor, NOW).await.unwrap(), Some(13));
    assert_eq!(store.checkpoint_audit_head(&auditor, NOW).await.unwrap(), None, "already covered");
    let report = store.verify_audit(&keys.verifying_key()).await.unwrap();
    assert_eq!((report.checkpoints, report.finding), (2, None));
});

on_both_backends!(a_wiped_log_of_an_initialised_database_is_caught, |store: Store, url: String| async move {
    let (config, root, _) = initialise(5, 3, &mut rand_core::OsRng).unwrap();
    let (keys, wrapped) = Keyring::create(root, config.init_id);
    store.initialise_seal(&config, &wrapped, &keys.verifying_key(), NOW).await.unwrap();
    fill(&store, &keys, 12).await;
    tamper(&url, &["DELETE FROM audit_log", "DELETE FROM audit_checkpoints", "DELETE FROM audit_head"]).await;
    assert_eq!(finding(&store, &keys).await, Some((1, FindingKind::Truncated)));
});
