//! The seal configuration and the wrapped keys, in SQL written once for both databases.

use rampart_audit::{AuditEntry, AuditRecord, Checkpoint, SignedHead};
use rampart_crypto::{SealConfig, WrappedKey};
use sqlx::Row;

use crate::audit::{self, AuditFilter, Auditor};
use crate::{Store, StoreError, ts};

/// Inserts a wrapped key inside an `on_backend!` body.
macro_rules! insert_key {
    ($tx:ident, $sql:ident, $key:expr, $now:expr) => {
        sqlx::query(&$sql("INSERT INTO crypto_keys (purpose, version, wrapped, created_at) VALUES ($1, $2, $3, $4)"))
            .bind($key.purpose.as_str())
            // INTEGER in both schemas: bound as 32 bits, because a statement PostgreSQL prepared for an int4
            // parameter refuses an int8.
            .bind(i32::try_from($key.version).map_err(|_| StoreError::Corrupt("key version".into()))?)
            .bind($key.wrapped.clone())
            .bind(ts($now))
            .execute(&mut *$tx.0)
            .await?
    };
}

impl Store {
    /// Up to `limit` audit entries matching `filter`, in sequence order.
    pub async fn audit_entries(&self, filter: &AuditFilter, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        // The filters present become numbered parameters, bound below in the same order.
        let mut text = String::from(
            "SELECT seq, time_ns, actor, action, target, outcome, details, prev_hash, hash FROM audit_log WHERE seq > $1",
        );
        let mut n = 1;
        let mut clause = |text: &mut String, condition: &str| {
            n += 1;
            text.push_str(&format!(" AND {condition} ${n}"));
        };
        let through = filter.through_seq.map(audit::clamp_i64);
        let from = filter.from_ns.map(audit::clamp_i64);
        let until = filter.until_ns.map(audit::clamp_i64);
        for (present, condition) in [
            (through.is_some(), "seq <="),
            (from.is_some(), "time_ns >="),
            (until.is_some(), "time_ns <"),
            (filter.actor.is_some(), "actor ="),
            (filter.action.is_some(), "action ="),
        ] {
            if present {
                clause(&mut text, condition);
            }
        }
        text.push_str(&format!(" ORDER BY seq LIMIT ${}", n + 1));
        on_reader!(self, |pool, sql| {
            let q = sql(&text);
            let mut query = sqlx::query(&q).bind(audit::clamp_i64(filter.after_seq));
            for value in [through, from, until].into_iter().flatten() {
                query = query.bind(value);
            }
            for value in [&filter.actor, &filter.action].into_iter().flatten() {
                query = query.bind(value.as_str());
            }
            let rows = query.bind(i64::from(limit)).fetch_all(pool).await?;
            rows.iter()
                .map(|r| {
                    audit::decode_entry(
                        r.try_get(0)?,
                        r.try_get(1)?,
                        r.try_get(2)?,
                        r.try_get(3)?,
                        r.try_get(4)?,
                        r.try_get::<String, _>(5)?.as_str(),
                        r.try_get::<String, _>(6)?.as_str(),
                        r.try_get::<Vec<u8>, _>(7)?.as_slice(),
                        r.try_get::<Vec<u8>, _>(8)?.as_slice(),
                    )
                })
                .collect()
        })
    }

    /// Every signed checkpoint, by sequence number.
    pub async fn audit_checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        on_reader!(self, |pool, sql| {
            let q = sql("SELECT seq, hash, time_ns, signature FROM audit_checkpoints ORDER BY seq");
            let rows = sqlx::query(&q).fetch_all(pool).await?;
            rows.iter()
                .map(|r| {
                    audit::decode_checkpoint(
                        r.try_get(0)?,
                        r.try_get::<Vec<u8>, _>(1)?.as_slice(),
                        r.try_get(2)?,
                        r.try_get::<Vec<u8>, _>(3)?.as_slice(),
                    )
                })
                .collect()
        })
    }

    /// The signed head of the log, if anything was ever appended.
    pub async fn audit_head(&self) -> Result<Option<SignedHead>, StoreError> {
        on_reader!(self, |pool, sql| {
            let q = sql("SELECT seq, hash, signature FROM audit_head WHERE id = 1");
            let row = sqlx::query(&q).fetch_optional(pool).await?;
            row.map(|r| {
                audit::decode_head(
                    r.try_get(0)?,
                    r.try_get::<Vec<u8>, _>(1)?.as_slice(),
                    r.try_get::<Vec<u8>, _>(2)?.as_slice(),
                )
            })
            .transpose()
        })
    }

    /// The stored seal configuration, if `rampart init` has run.
    pub async fn seal_config(&self) -> Result<Option<SealConfig>, StoreError> {
        on_reader!(self, |pool, sql| {
            let q = sql(
                "SELECT init_id, CAST(shares AS BIGINT), CAST(threshold AS BIGINT), root_check FROM seal_config WHERE id = 1",
            );
            let row = sqlx::query(&q).fetch_optional(pool).await?;
            row.map(|r| {
                audit::decode_seal(r.try_get::<Vec<u8>, _>(0)?.as_slice(), r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)
            })
            .transpose()
        })
    }

    /// The audit public key recorded at initialisation. Whoever can write the database can replace it: an
    /// independent check pins the key printed by `rampart init` instead.
    pub async fn audit_public_key(&self) -> Result<Option<[u8; 32]>, StoreError> {
        on_reader!(self, |pool, sql| {
            let row =
                sqlx::query(&sql("SELECT audit_public_key FROM seal_config WHERE id = 1")).fetch_optional(pool).await?;
            row.map(|r| audit::decode_public_key(r.try_get::<Vec<u8>, _>(0)?.as_slice())).transpose()
        })
    }

    /// Every wrapped key.
    pub async fn crypto_keys(&self) -> Result<Vec<WrappedKey>, StoreError> {
        on_reader!(self, |pool, sql| {
            let q = sql("SELECT purpose, CAST(version AS BIGINT), wrapped FROM crypto_keys ORDER BY purpose, version");
            let rows = sqlx::query(&q).fetch_all(pool).await?;
            rows.iter()
                .map(|r| audit::decode_key(r.try_get::<String, _>(0)?.as_str(), r.try_get(1)?, r.try_get(2)?))
                .collect()
        })
    }

    /// Records a new initialisation and its wrapped keys. Returns `false` (and changes nothing) if the database was
    /// already initialised.
    pub async fn initialise_seal(
        &self,
        config: &SealConfig,
        keys: &[WrappedKey],
        audit_public_key: &[u8; 32],
        now_ns: u64,
    ) -> Result<bool, StoreError> {
        on_backend!(self, |tx, sql| {
            let inserted = sqlx::query(&sql(
                "INSERT INTO seal_config (id, init_id, shares, threshold, root_check, audit_public_key, created_at) \
                 VALUES (1, $1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
            ))
            .bind(config.init_id.to_vec())
            .bind(i32::from(config.shares))
            .bind(i32::from(config.threshold))
            .bind(config.root_check.clone())
            .bind(audit_public_key.to_vec())
            .bind(ts(now_ns))
            .execute(&mut *tx.0)
            .await?
            .rows_affected()
                == 1;
            if !inserted {
                return Ok(false);
            }
            for key in keys {
                insert_key!(tx, sql, key, now_ns);
            }
        });
        Ok(true)
    }

    /// Stores a new wrapped key (a rotated data key) and its audit record, in one transaction.
    pub async fn add_crypto_key_audited(
        &self,
        key: &WrappedKey,
        now_ns: u64,
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<(), StoreError> {
        on_backend!(self, |tx, sql| {
            insert_key!(tx, sql, key, now_ns);
            audit::append(&mut tx, records, auditor).await?;
        });
        Ok(())
    }
}
