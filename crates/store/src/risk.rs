//! Risk records: the log of scored events (replayed after the newest snapshot at start, exported for back-tests),
//! the engine's snapshots, and the review queue — cases for held and frozen items, with notes, an assignee and a
//! resolution that releases or keeps what the case holds.

#![allow(clippy::too_many_arguments)] // each audited command takes its auditor and records besides its data

use rampart_audit::AuditRecord;

use crate::audit::{self, Auditor};
use crate::backend::Pipe;
use crate::{Store, StoreError, ts};

/// Inserts risk events (`&[RiskEventRecord]`) in transaction `$tx`; one already logged (its `seq`) stays as it is.
macro_rules! insert_risk_events {
    ($tx:ident, $sql:ident, $events:expr) => {
        for chunk in $events.chunks($crate::backend::ROWS_PER_INSERT) {
            let q = $sql(&format!(
                "INSERT INTO risk_events (seq, at_ns, customer_id, event, outcome, rules_version) VALUES {} \
                 ON CONFLICT (seq) DO NOTHING",
                $crate::backend::placeholders(chunk.len(), 6)
            ));
            let mut query = sqlx::query(&q);
            for e in chunk {
                query = query
                    .bind(e.seq)
                    .bind($crate::ts(e.at_ns))
                    .bind(e.customer_id)
                    .bind(&e.event)
                    .bind(&e.outcome)
                    .bind(i64::from(e.rules_version));
            }
            query.execute(&mut *$tx.0).await?;
        }
    };
}
pub(crate) use insert_risk_events;

/// One scored event as the log keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RiskEventRecord {
    /// The engine's sequence number (its order of scoring).
    pub seq: i64,
    /// When it happened.
    pub at_ns: u64,
    /// Whose.
    pub customer_id: i64,
    /// The event as JSON.
    pub event: String,
    /// The decision's outcome.
    pub outcome: String,
    /// The rule set's version that decided.
    pub rules_version: u32,
}

/// A case in the review queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RiskCase {
    /// The id.
    pub id: i64,
    /// The customer concerned.
    pub customer_id: i64,
    /// The event that opened it.
    pub event_seq: i64,
    /// The kind of that event.
    pub kind: String,
    /// `hold` or `freeze`.
    pub outcome: String,
    /// `open` or `resolved`.
    pub state: String,
    /// The decision's reasons, as JSON.
    pub reasons: String,
    /// Who is working on it.
    pub assigned_to: Option<String>,
    /// `release`, `keep_frozen` or `escalate`, once resolved.
    pub resolution: Option<String>,
    /// Who resolved it.
    pub resolved_by: Option<String>,
    /// When it was opened.
    pub created_at_ns: u64,
    /// When it was resolved.
    pub resolved_at_ns: Option<u64>,
}

/// A reviewer's note on a case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RiskCaseNote {
    /// Who wrote it.
    pub author: String,
    /// What they wrote.
    pub body: String,
    /// When.
    pub created_at_ns: u64,
}

type CaseRow =
    (i64, i64, i64, String, String, String, String, Option<String>, Option<String>, Option<String>, i64, Option<i64>);

const CASE_COLUMNS: &str = "id, customer_id, event_seq, kind, outcome, state, reasons, assigned_to, resolution, \
                            resolved_by, created_at, resolved_at";

fn case(r: CaseRow) -> RiskCase {
    let u = |v: i64| u64::try_from(v).unwrap_or(0);
    RiskCase {
        id: r.0,
        customer_id: r.1,
        event_seq: r.2,
        kind: r.3,
        outcome: r.4,
        state: r.5,
        reasons: r.6,
        assigned_to: r.7,
        resolution: r.8,
        resolved_by: r.9,
        created_at_ns: u(r.10),
        resolved_at_ns: r.11.map(u),
    }
}

/// A case's resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaseResolution {
    /// What the case held is released: a frozen account is unfrozen (unless another open freeze holds it).
    Release,
    /// The account stays frozen.
    KeepFrozen,
    /// Handed to compliance; the account stays as it is.
    Escalate,
}

impl CaseResolution {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            CaseResolution::Release => "release",
            CaseResolution::KeepFrozen => "keep_frozen",
            CaseResolution::Escalate => "escalate",
        }
    }

    /// The resolution named `s`.
    pub fn parse(s: &str) -> Option<CaseResolution> {
        [CaseResolution::Release, CaseResolution::KeepFrozen, CaseResolution::Escalate]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// What resolving a case did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaseResolved {
    /// Resolved; `unfrozen` says whether the account was unfrozen by it.
    Done {
        /// The case as it is now.
        case: Box<RiskCase>,
        /// Whether the account was unfrozen.
        unfrozen: bool,
    },
    /// No such case.
    NotFound,
    /// The case was already resolved.
    AlreadyResolved,
}

impl Store {
    /// Appends scored events to the log (a batch, in one transaction); an event already logged is left as it is.
    pub async fn append_risk_events(&self, events: &[RiskEventRecord]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        on_backend!(self, |tx, sql| {
            insert_risk_events!(tx, sql, events);
        });
        Ok(())
    }

    /// Logged events after `seq`, oldest first, at most `limit`.
    pub async fn risk_events_after(&self, seq: i64, limit: u32) -> Result<Vec<RiskEventRecord>, StoreError> {
        let rows: Vec<(i64, i64, i64, String, String, i64)> = on_reader!(self, |pool, sql| {
            sqlx::query_as(&sql("SELECT seq, at_ns, customer_id, event, outcome, rules_version FROM risk_events \
                 WHERE seq > $1 ORDER BY seq LIMIT $2"))
            .bind(seq)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(|(seq, at, customer_id, event, outcome, version)| RiskEventRecord {
                seq,
                at_ns: u64::try_from(at).unwrap_or(0),
                customer_id,
                event,
                outcome,
                rules_version: u32::try_from(version).unwrap_or(0),
            })
            .collect())
    }

    /// The highest logged sequence number (0 when the log is empty).
    pub async fn last_risk_seq(&self) -> Result<i64, StoreError> {
        let seq: Option<i64> = on_reader!(self, |pool, sql| {
            sqlx::query_scalar(&sql("SELECT MAX(seq) FROM risk_events")).fetch_one(pool).await?
        });
        Ok(seq.unwrap_or(0))
    }

    /// Stores a snapshot of the engine that includes every event up to `last_seq`; older snapshots but the previous
    /// one are dropped.
    pub async fn save_risk_snapshot(&self, last_seq: i64, state: &[u8], now_ns: u64) -> Result<(), StoreError> {
        on_backend!(self, |tx, sql| {
            let id: i64 = sqlx::query_scalar(&sql(
                "INSERT INTO risk_snapshots (last_seq, state, created_at) VALUES ($1, $2, $3) RETURNING id",
            ))
            .bind(last_seq)
            .bind(state)
            .bind(ts(now_ns))
            .fetch_one(&mut *tx.0)
            .await?;
            sqlx::query(&sql("DELETE FROM risk_snapshots WHERE id < $1 - 1")).bind(id).execute(&mut *tx.0).await?;
        });
        Ok(())
    }

    /// The newest snapshot: the last sequence it includes and its bytes.
    pub async fn latest_risk_snapshot(&self) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
        on_reader!(self, |pool, sql| {
            sqlx::query_as(&sql("SELECT last_seq, state FROM risk_snapshots ORDER BY id DESC LIMIT 1"))
                .fetch_optional(pool)
                .await?
        })
        .pipe(Ok)
    }

    /// Opens a case for a held or frozen item; with `freeze`, the customer's account is frozen in the same
    /// transaction (which stops its sessions and API keys at once). Answers the case's id.
    pub async fn open_risk_case(
        &self,
        customer_id: i64,
        event_seq: i64,
        kind: &str,
        outcome: &str,
        reasons: &str,
        freeze: bool,
        now_ns: u64,
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<i64, StoreError> {
        on_backend!(self, |tx, sql| {
            let id: i64 = sqlx::query_scalar(&sql(
                "INSERT INTO risk_cases (customer_id, event_seq, kind, outcome, state, reasons, created_at) \
                 VALUES ($1, $2, $3, $4, 'open', $5, $6) RETURNING id",
            ))
            .bind(customer_id)
            .bind(event_seq)
            .bind(kind)
            .bind(outcome)
            .bind(reasons)
            .bind(ts(now_ns))
            .fetch_one(&mut *tx.0)
            .await?;
            if freeze {
                sqlx::query(&sql("UPDATE customers SET status = 'frozen' WHERE id = $1"))
                    .bind(customer_id)
                    .execute(&mut *tx.0)
                    .await?;
            }
            audit::append(&mut tx, audit::tagged(records, "case", id), auditor).await?;
            id
        })
        .pipe(Ok)
    }

    /// Cases, newest first: only open ones unless `all`.
    pub async fn risk_cases(&self, all: bool, limit: u32) -> Result<Vec<RiskCase>, StoreError> {
        let rows: Vec<CaseRow> = on_reader!(self, |pool, sql| {
            sqlx::query_as(&sql(&format!(
                "SELECT {CASE_COLUMNS} FROM risk_cases WHERE ($1 OR state = 'open') ORDER BY id DESC LIMIT $2"
            )))
            .bind(all)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
        });
        Ok(rows.into_iter().map(case).collect())
    }

    /// One case with its notes, oldest note first.
    pub async fn risk_case(&self, id: i64) -> Result<Option<(RiskCase, Vec<RiskCaseNote>)>, StoreError> {
        let (row, notes): (Option<CaseRow>, Vec<(String, String, i64)>) = on_reader!(self, |pool, sql| {
            let row = sqlx::query_as(&sql(&format!("SELECT {CASE_COLUMNS} FROM risk_cases WHERE id = $1")))
                .bind(id)
                .fetch_optional(pool)
                .await?;
            let notes = sqlx::query_as(&sql(
                "SELECT author, body, created_at FROM risk_case_notes WHERE case_id = $1 ORDER BY id",
            ))
            .bind(id)
            .fetch_all(pool)
            .await?;
            (row, notes)
        });
        Ok(row.map(|r| {
            let notes = notes
                .into_iter()
                .map(|(author, body, at)| RiskCaseNote { author, body, created_at_ns: u64::try_from(at).unwrap_or(0) })
                .collect();
            (case(r), notes)
        }))
    }

    /// Assigns an open case; answers whether it was open.
    pub async fn assign_risk_case(
        &self,
        id: i64,
        to: &str,
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<bool, StoreError> {
        on_backend!(self, |tx, sql| {
            let n = sqlx::query(&sql("UPDATE risk_cases SET assigned_to = $2 WHERE id = $1 AND state = 'open'"))
                .bind(id)
                .bind(to)
                .execute(&mut *tx.0)
                .await?
                .rows_affected();
            if n == 1 {
                audit::append(&mut tx, records, auditor).await?;
            }
            n == 1
        })
        .pipe(Ok)
    }

    /// Adds a note to a case (open or not); answers whether the case exists.
    pub async fn note_risk_case(
        &self,
        id: i64,
        author: &str,
        body: &str,
        now_ns: u64,
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<bool, StoreError> {
        on_backend!(self, |tx, sql| {
            let exists: Option<i64> = sqlx::query_scalar(&sql("SELECT id FROM risk_cases WHERE id = $1"))
                .bind(id)
                .fetch_optional(&mut *tx.0)
                .await?;
            if exists.is_some() {
                sqlx::query(&sql(
                    "INSERT INTO risk_case_notes (case_id, author, body, created_at) VALUES ($1, $2, $3, $4)",
                ))
                .bind(id)
                .bind(author)
                .bind(body)
                .bind(ts(now_ns))
                .execute(&mut *tx.0)
                .await?;
                audit::append(&mut tx, records, auditor).await?;
            }
            exists.is_some()
        })
        .pipe(Ok)
    }

    /// Resolves an open case, atomically: a release of a freeze unfreezes the account unless another open freeze
    /// case holds it.
    pub async fn resolve_risk_case(
        &self,
        id: i64,
        resolution: CaseResolution,
        by: &str,
        now_ns: u64,
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<CaseResolved, StoreError> {
        on_backend!(self, |tx, sql| {
            let row: Option<CaseRow> =
                sqlx::query_as(&sql(&format!("SELECT {CASE_COLUMNS} FROM risk_cases WHERE id = $1")))
                    .bind(id)
                    .fetch_optional(&mut *tx.0)
                    .await?;
            match row.map(case) {
                None => CaseResolved::NotFound,
                Some(c) if c.state != "open" => CaseResolved::AlreadyResolved,
                Some(mut c) => {
                    let n = sqlx::query(&sql(
                        "UPDATE risk_cases SET state = 'resolved', resolution = $2, resolved_by = $3, \
                         resolved_at = $4 WHERE id = $1 AND state = 'open'",
                    ))
                    .bind(id)
                    .bind(resolution.as_str())
                    .bind(by)
                    .bind(ts(now_ns))
                    .execute(&mut *tx.0)
                    .await?
                    .rows_affected();
                    if n == 0 {
                        CaseResolved::AlreadyResolved
                    } else {
                        let unfrozen = resolution == CaseResolution::Release
                            && c.outcome == "freeze"
                            && sqlx::query(&sql(crate::compliance::UNFREEZE_IF_CLEAR))
                                .bind(c.customer_id)
                                .execute(&mut *tx.0)
                                .await?
                                .rows_affected()
                                == 1;
                        audit::append(&mut tx, records, auditor).await?;
                        c.state = "resolved".into();
                        c.resolution = Some(resolution.as_str().into());
                        c.resolved_by = Some(by.into());
                        c.resolved_at_ns = Some(now_ns);
                        CaseResolved::Done { case: Box::new(c), unfrozen }
                    }
                }
            }
        })
        .pipe(Ok)
    }
}
