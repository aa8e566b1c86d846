//! Compliance records: versions of sanctions lists (their files and what each import changed), what each customer
//! is screened as, compliance cases, the exchange's own address lists, KYC submissions and levels, Travel Rule
//! records and the three-level review of large transfers. Personal data arrives here already encrypted: the store
//! never sees it in the clear.

#![allow(clippy::too_many_arguments)] // each audited command takes its auditor and records besides its data
#![allow(clippy::type_complexity)] // rows arrive as the tuples sqlx decodes; each is named where it is used

use rampart_audit::AuditRecord;
use rampart_compliance::review::{self, Decision, Refused};

use crate::audit::{self, Auditor};
use crate::backend::Pipe;
use crate::{Store, StoreError, ts};

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// One imported version of a sanctions list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListVersion {
    /// The version, rising with each import.
    pub version: i64,
    /// Where it is from (`ofac-sdn`).
    pub source: String,
    /// SHA-256 over its files.
    pub digest: Vec<u8>,
    /// How many entries it has.
    pub entries: i64,
    /// The import's report, as JSON.
    pub report: String,
    /// Who imported it.
    pub imported_by: String,
    /// When.
    pub imported_at_ns: u64,
    /// When every customer had been screened against it.
    pub rescreened_at_ns: Option<u64>,
    /// What the re-screening found, as JSON.
    pub rescreen_report: Option<String>,
}

type ListRow = (i64, String, Vec<u8>, i64, String, String, i64, Option<i64>, Option<String>);
const LIST_COLUMNS: &str =
    "version, source, digest, entries, report, imported_by, imported_at, rescreened_at, rescreen_report";

fn list(r: ListRow) -> ListVersion {
    ListVersion {
        version: r.0,
        source: r.1,
        digest: r.2,
        entries: r.3,
        report: r.4,
        imported_by: r.5,
        imported_at_ns: u(r.6),
        rescreened_at_ns: r.7.map(u),
        rescreen_report: r.8,
    }
}

/// A customer's screening data (encrypted) and where it stood at the last screening.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScreeningRecord {
    /// The customer.
    pub customer_id: i64,
    /// Their handle (the identity in the ciphertext's associated data).
    pub handle: Vec<u8>,
    /// Name, country and date of birth, encrypted.
    pub data: Vec<u8>,
}

/// A compliance case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComplianceCase {
    /// The id.
    pub id: i64,
    /// The customer concerned.
    pub customer_id: i64,
    /// `sanctions_match`, `address_match`, `offboarding` or `kyc`.
    pub kind: String,
    /// `freeze`, `hold` or `flag`.
    pub outcome: String,
    /// `open` or `resolved`.
    pub state: String,
    /// What was found, as JSON.
    pub details: String,
    /// Who is working on it.
    pub assigned_to: Option<String>,
    /// `release`, `keep_frozen` or `offboard`, once resolved.
    pub resolution: Option<String>,
    /// Who resolved it.
    pub resolved_by: Option<String>,
    /// When it was opened.
    pub created_at_ns: u64,
    /// When it was resolved.
    pub resolved_at_ns: Option<u64>,
}

type CaseRow =
    (i64, i64, String, String, String, String, Option<String>, Option<String>, Option<String>, i64, Option<i64>);
const CASE_COLUMNS: &str =
    "id, customer_id, kind, outcome, state, details, assigned_to, resolution, resolved_by, created_at, resolved_at";

fn case(r: CaseRow) -> ComplianceCase {
    ComplianceCase {
        id: r.0,
        customer_id: r.1,
        kind: r.2,
        outcome: r.3,
        state: r.4,
        details: r.5,
        assigned_to: r.6,
        resolution: r.7,
        resolved_by: r.8,
        created_at_ns: u(r.9),
        resolved_at_ns: r.10.map(u),
    }
}

/// A new compliance case.
#[derive(Debug, Clone, Copy)]
pub struct NewCase<'a> {
    /// The customer.
    pub customer_id: i64,
    /// Its kind.
    pub kind: &'a str,
    /// `freeze` (the account is frozen in the same transaction), `hold` or `flag`.
    pub outcome: &'a str,
    /// What was found, as JSON.
    pub details: &'a str,
}

/// How a compliance case ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComplianceResolution {
    /// A false positive: a freeze is lifted unless another open freeze holds the account.
    Release,
    /// The account stays frozen.
    KeepFrozen,
    /// The relationship ends: the account stays frozen for off-boarding.
    Offboard,
}

impl ComplianceResolution {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ComplianceResolution::Release => "release",
            ComplianceResolution::KeepFrozen => "keep_frozen",
            ComplianceResolution::Offboard => "offboard",
        }
    }

    /// The resolution named `s`.
    pub fn parse(s: &str) -> Option<ComplianceResolution> {
        [ComplianceResolution::Release, ComplianceResolution::KeepFrozen, ComplianceResolution::Offboard]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// Opens a case unless one of its kind is open for the customer (then no row comes back).
const OPEN_CASE: &str = "INSERT INTO compliance_cases (customer_id, kind, outcome, state, details, created_at) \
                         VALUES ($1, $2, $3, 'open', $4, $5) ON CONFLICT DO NOTHING RETURNING id";

/// Adds a note to a case.
const ADD_NOTE: &str = "INSERT INTO compliance_case_notes (case_id, author, body, created_at) VALUES ($1, $2, $3, $4)";

/// The kind of case a deposit from a listed address opens; resolving it releases (or refuses) the customer's held
/// deposits.
pub const DEPOSIT_HOLD: &str = "deposit_hold";

/// What resolving a compliance case did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComplianceResolved {
    /// Resolved; whether the account was unfrozen by it.
    Done {
        /// Whether the account was unfrozen.
        unfrozen: bool,
        /// How many held deposits were released or refused (cases of kind [`DEPOSIT_HOLD`]).
        deposits: u64,
    },
    /// No such case.
    NotFound,
    /// Already resolved.
    AlreadyResolved,
}

/// An entry of the exchange's own address lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressListing {
    /// The id.
    pub id: i64,
    /// The address, canonical.
    pub address: String,
    /// The asset it is for, if only one.
    pub asset: Option<String>,
    /// `blocked` or `risk`.
    pub category: String,
    /// Why.
    pub reason: String,
    /// Who listed it.
    pub added_by: String,
    /// When.
    pub added_at_ns: u64,
}

/// A KYC submission (its identity still encrypted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KycSubmission {
    /// The id.
    pub id: i64,
    /// Whose.
    pub customer_id: i64,
    /// The level applied for.
    pub level: u8,
    /// `pending`, `approved` or `rejected`.
    pub state: String,
    /// The identity, encrypted (AAD `kyc:<id>:identity`).
    pub data: Vec<u8>,
    /// Which provider checks it (`manual` for the exchange's own reviewers).
    pub provider: String,
    /// The provider's reference.
    pub provider_ref: Option<String>,
    /// Who decided.
    pub reviewed_by: Option<String>,
    /// Why (a rejection's reason).
    pub reason: Option<String>,
    /// When it was submitted.
    pub submitted_at_ns: u64,
    /// When it was decided.
    pub reviewed_at_ns: Option<u64>,
    /// Its documents: id, kind, content type, SHA-256 of the plaintext.
    pub documents: Vec<KycDocument>,
}

/// A document of a submission, without its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KycDocument {
    /// The id.
    pub id: i64,
    /// What it is.
    pub kind: String,
    /// Its format.
    pub content_type: String,
    /// SHA-256 of the plaintext.
    pub sha256: Vec<u8>,
}

type KycRow =
    (i64, i64, i64, String, Vec<u8>, String, Option<String>, Option<String>, Option<String>, i64, Option<i64>);
const KYC_COLUMNS: &str = "id, customer_id, level, state, data, provider, provider_ref, reviewed_by, reason, \
                           submitted_at, reviewed_at";

fn kyc(r: KycRow, documents: Vec<KycDocument>) -> KycSubmission {
    KycSubmission {
        id: r.0,
        customer_id: r.1,
        level: u8::try_from(r.2).unwrap_or(0),
        state: r.3,
        data: r.4,
        provider: r.5,
        provider_ref: r.6,
        reviewed_by: r.7,
        reason: r.8,
        submitted_at_ns: u(r.9),
        reviewed_at_ns: r.10.map(u),
        documents,
    }
}

/// A document to store: kind, content type, SHA-256 of the plaintext, and the plaintext, which `encrypt` seals
/// once the document's id is known.
pub struct NewDocument {
    /// What it is.
    pub kind: String,
    /// Its format.
    pub content_type: String,
    /// SHA-256 of the plaintext.
    pub sha256: Vec<u8>,
}

/// What deciding a KYC submission did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KycDecided {
    /// Decided; the customer's level now.
    Done {
        /// The customer.
        customer_id: i64,
        /// Their level after the decision.
        level: u8,
    },
    /// No such submission.
    NotFound,
    /// Already decided.
    AlreadyDecided,
}

/// A Travel Rule record (its parties still encrypted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TravelRuleRecord {
    /// What it travels with.
    pub reference: String,
    /// The originating customer.
    pub customer_id: i64,
    /// The asset.
    pub asset: String,
    /// The amount, in the asset's smallest unit.
    pub amount: String,
    /// Its value in USD micro-dollars.
    pub amount_usd: u64,
    /// Originator and beneficiary, encrypted (AAD `travel_rule:<reference>`).
    pub data: Vec<u8>,
    /// When it was recorded.
    pub created_at_ns: u64,
}

/// A large transfer under review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferReview {
    /// The id.
    pub id: i64,
    /// What is reviewed (a withdrawal's id).
    pub reference: String,
    /// Whose transfer.
    pub customer_id: i64,
    /// Who asked for it (`customer:<id>` or a staff actor).
    pub requested_by: String,
    /// The asset.
    pub asset: String,
    /// The amount, in the asset's smallest unit.
    pub amount: String,
    /// Its value in USD micro-dollars.
    pub amount_usd: u64,
    /// Where it stands.
    pub state: review::State,
    /// The decisions so far, by level.
    pub decisions: Vec<(Decision, String, u64)>,
    /// When it was opened.
    pub created_at_ns: u64,
}

/// What a review decision did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReviewDecided {
    /// Recorded; where the review stands now.
    Done(review::State),
    /// No such review.
    NotFound,
    /// The rules refuse it.
    Refused(Refused),
}

impl Store {
    /// The newest version of the list from `source`, with its files (name, bytes).
    pub async fn latest_sanctions_list(
        &self,
        source: &str,
    ) -> Result<Option<(ListVersion, Vec<(String, Vec<u8>)>)>, StoreError> {
        let found: Option<(ListRow, Vec<(String, Vec<u8>)>)> = on_reader!(self, |pool, sql| {
            let row: Option<ListRow> = sqlx::query_as(&sql(&format!(
                "SELECT {LIST_COLUMNS} FROM sanctions_lists WHERE source = $1 ORDER BY version DESC LIMIT 1"
            )))
            .bind(source)
            .fetch_optional(pool)
            .await?;
            match row {
                None => None,
                Some(row) => {
                    let files = sqlx::query_as(&sql(
                        "SELECT name, body FROM sanctions_list_files WHERE version = $1 ORDER BY name",
                    ))
                    .bind(row.0)
                    .fetch_all(pool)
                    .await?;
                    Some((row, files))
                }
            }
        });
        Ok(found.map(|(row, files)| (list(row), files)))
    }

    /// Every version, newest first.
    pub async fn sanctions_lists(&self, limit: u32) -> Result<Vec<ListVersion>, StoreError> {
        let rows: Vec<ListRow> = on_reader!(self, |pool, sql| {
            sqlx::query_as(&sql(&format!("SELECT {LIST_COLUMNS} FROM sanctions_lists ORDER BY version DESC LIMIT $1")))
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
        });
        Ok(rows.into_iter().map(list).collect())
    }

    /// Records a new version of a list with its files; `None` when the newest version of that source has the same
    /// digest (nothing changed).
    pub async fn record_sanctions_list(
        &self,
        source: &str,
        digest: &[u8],
        entries: i64,
        report: &str,
        files: &[(String, Vec<u8>)],
        by: &str,
        now_ns: u64,
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<Option<i64>, StoreError> {
        on_backend!(self, |tx, sql| {
            let newest: Option<Vec<u8>> = sqlx::query_scalar(&sql(
                "SELECT digest FROM sanctions_lists WHERE source = $1 ORDER BY version DESC LIMIT 1",
            ))
            .bind(source)
            .fetch_optional(&mut *tx.0)
            .await?;
            if newest.as_deref() == Some(digest) {
                None
            } else {
                let version: i64 = sqlx::query_scalar(&sql(
                    "INSERT INTO sanctions_lists (source, digest, entries, report, imported_by, imported_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) RETURNING version",
                ))
                .bind(source)
                .bind(digest)
                .bind(entries)
                .bind(report)
                .bind(by)
                .bind(ts(now_ns))
                .fetch_one(&mut *tx.0)
                .await?;
                for (name, body) in files {
                    sqlx::query(&sql("INSERT INTO sanctions_list_files (version, name, body) VALUES ($1, $2, $3)"))
                        .bind(version)
                        .bind(name)
                        .bind(body)
                        .execute(&mut *tx.0)
                        .await?;
                }
                audit::append(&mut tx, audit::tagged(records, "version", version), auditor).await?;
                Some(version)
            }
        })
        .pipe(Ok)
    }

    /// Records that every customer was screened against `version`, and what was found.
    pub async fn finish_rescreen(&self, version: i64, report: &str, now_ns: u64) -> Result<(), StoreError> {
        on_backend!(self, |tx, sql| {
            sqlx::query(&sql("UPDATE sanctions_lists SET rescreened_at = $2, rescreen_report = $3 WHERE version = $1"))
                .bind(version)
                .bind(ts(now_ns))
                .bind(report)
                .execute(&mut *tx.0)
                .await?;
        });
        Ok(())
    }

    /// Stores what a customer is screened as (encrypted) and the outcome of screening it.
    pub async fn save_customer_screening(
        &self,
        customer_id: i64,
        data: &[u8],
        result: Option<(i64, u32, u32)>,
        now_ns: u64,
    ) -> Result<(), StoreError> {
        let (version, score, entry) =
            result.map_or((None, None, None), |(v, s, e)| (Some(v), Some(i64::from(s)), Some(i64::from(e))));
        on_backend!(self, |tx, sql| {
            sqlx::query(&sql(
                "INSERT INTO customer_screening (customer_id, data, list_version, best_score, best_entry, \
                 screened_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (customer_id) DO UPDATE SET \
                 data = excluded.data, list_version = excluded.list_version, best_score = excluded.best_score, \
                 best_entry = excluded.best_entry, screened_at = excluded.screened_at",
            ))
            .bind(customer_id)
            .bind(data)
            .bind(version)
            .bind(score)
            .bind(entry)
            .bind(ts(now_ns))
            .execute(&mut *tx.0)
            .await?;
        });
        Ok(())
    }

    /// A page of customers' screening data, by customer id after `after`.
    pub async fn screening_page(&self, after: i64, limit: u32) -> Result<Vec<ScreeningRecord>, StoreError> {
        let rows: Vec<(i64, Vec<u8>, Vec<u8>)> = on_reader!(self, |pool, sql| {
            sqlx::query_as(&sql("SELECT s.customer_id, c.handle, s.data FROM customer_screening s JOIN customers c \
                 ON c.id = s.customer_id WHERE s.customer_id > $1 ORDER BY s.customer_id LIMIT $2"))
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
        });
        Ok(rows.into_iter().map(|(customer_id, handle, data)| ScreeningRecord { customer_id, handle, data }).collect())
    }

    /// Records the outcomes of a batch of screenings: (customer, best score, best entry) against `version`.
    pub async fn record_screenings(
        &self,
        version: i64,
        results: &[(i64, u32, u32)],
        now_ns: u64,
    ) -> Result<(), StoreError> {
        on_backend!(self, |tx, sql| {
            for (customer, score, entry) in results {
                sqlx::query(&sql(
                    "UPDATE customer_screening SET list_version = $2, best_score = $3, best_entry = $4, \
                     screened_at = $5 WHERE customer_id = $1",
                ))
                .bind(customer)
                .bind(version)
                .bind(i64::from(*score))
                .bind(i64::from(*entry))
                .bind(ts(now_ns))
                .execute(&mut *tx.0)
                .await?;
            }
        });
        Ok(())
    }

    /// Opens a compliance case unless one of its kind is open for the customer (answers `None` then, and writes
    /// nothing); a `freeze` freezes the account in the same transaction.
    pub async fn open_compliance_case(
        &self,
        new: NewCase<'_>,
        now_ns: u64,
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<Option<i64>, StoreError> {
        on_backend!(self, |tx, sql| {
            let id: Option<i64> = sqlx::query_scalar(&sql(OPEN_CASE))
                .bind(new.customer_id)
                .bind(new.kind)
                .bind(new.outcome)
                .bind(new.details)
                .bind(ts(now_ns))
                .fetch_optional(&mut *tx.0)
                .await?;
            if let Some(id) = id {
                if new.outcome == "freeze" {
                    sqlx::query(&sql("UPDATE customers SET status = 'frozen' WHERE id = $1"))
                        .bind(new.customer_id)
                        .execute(&mut *tx.0)
                        .await?;
                }
                audit::append(&mut tx, audit::tagged(records, "case", id), auditor).await?;
            }
            id
        })
        .pipe(Ok)
    }

    /// The addresses that funded a deposit transaction, as the watcher recorded them.
    pub async fn deposit_sources(&self, asset: &str, txid: &[u8]) -> Result<Vec<String>, StoreError> {
        on_reader!(self, |pool, sql| {
            sqlx::query_scalar(&sql(
                "SELECT address FROM deposit_sources WHERE asset = $1 AND txid = $2 ORDER BY address",
            ))
            .bind(asset)
            .bind(txid)
            .fetch_all(pool)
            .await?
        })
        .pipe(Ok)
    }

    /// Holds a pending deposit for compliance, atomically: the deposit becomes `held` and a case of `new`'s kind is
    /// opened for its customer, or, when one is open already, the deposit is noted on it (`note`). Answers the case,
    /// or `None` if the deposit was not pending (and nothing was written).
    #[allow(clippy::too_many_arguments)]
    pub async fn hold_deposit(
        &self,
        asset: &str,
        txid: &[u8],
        vout: u32,
        new: NewCase<'_>,
        note: &str,
        now_ns: u64,
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<Option<i64>, StoreError> {
        on_backend!(self, |tx, sql| {
            let held = sqlx::query(&sql(
                "UPDATE chain_deposits SET state = 'held', updated_at = $1 WHERE asset = $2 AND txid = $3 AND vout = $4 \
                 AND state = 'pending'",
            ))
            .bind(ts(now_ns))
            .bind(asset)
            .bind(txid)
            .bind(i64::from(vout))
            .execute(&mut *tx.0)
            .await?
            .rows_affected();
            if held != 1 {
                return Ok(None);
            }
            let opened: Option<i64> = sqlx::query_scalar(&sql(
                OPEN_CASE,
            ))
            .bind(new.customer_id)
            .bind(new.kind)
            .bind(new.outcome)
            .bind(new.details)
            .bind(ts(now_ns))
            .fetch_optional(&mut *tx.0)
            .await?;
            let id = match opened {
                Some(id) => id,
                None => {
                    let id: i64 = sqlx::query_scalar(&sql(
                        "SELECT id FROM compliance_cases WHERE customer_id = $1 AND kind = $2 AND state = 'open'",
                    ))
                    .bind(new.customer_id)
                    .bind(new.kind)
                    .fetch_one(&mut *tx.0)
                    .await?;
                    sqlx::query(&sql(
                        ADD_NOTE,
                    ))
                    .bind(id)
                    .bind("system")
                    .bind(note)
                    .bind(ts(now_ns))
                    .execute(&mut *tx.0)
                    .await?;
                    id
                }
            };
            audit::append(&mut tx, audit::tagged(records, "case", id), auditor).await?;
            Some(id)
        })
        .pipe(Ok)
    }

    /// Compliance cases, newest first: only open ones unless `all`.
    pub async fn compliance_cases(&self, all: bool, limit: u32) -> Result<Vec<ComplianceCase>, StoreError> {
        let rows: Vec<CaseRow> = on_reader!(self, |pool, sql| {
            sqlx::query_as(&sql(&format!(
                "SELECT {CASE_COLUMNS} FROM compliance_cases WHERE ($1 OR state = 'open') ORDER BY id DESC LIMIT $2"
            )))
            .bind(all)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
        });
        Ok(rows.into_iter().map(case).collect())
    }

    /// One compliance case with its notes (author, body, time), oldest note first.
    pub async fn compliance_case(
        &self,
        id: i64,
    ) -> Result<Option<(ComplianceCase, Vec<crate::RiskCaseNote>)>, StoreError> {
        let (row, notes): (Option<CaseRow>, Vec<(String, String, i64)>) = on_reader!(self, |pool, sql| {
            let row = sqlx::query_as(&sql(&format!("SELECT {CASE_COLUMNS} FROM compliance_cases WHERE id = $1")))
                .bind(id)
                .fetch_optional(pool)
                .await?;
            let notes = sqlx::query_as(&sql(
                "SELECT author, body, created_at FROM compliance_case_notes WHERE case_id = $1 ORDER BY id",
            ))
            .bind(id)
            .fetch_all(pool)
            .await?;
            (row, notes)
        });
        Ok(row.map(|r| {
            let notes = notes
                .into_iter()
                .map(|(author, body, at)| crate::RiskCaseNote { author, body, created_at_ns: u(at) })
                .collect();
            (case(r), notes)
        }))
    }

    /// Resolves an open compliance case with a note, atomically: a release of a freeze unfreezes the account unless
    /// another open freeze (risk or compliance) holds it.
    pub async fn resolve_compliance_case(
        &self,
        id: i64,
        resolution: ComplianceResolution,
        by: &str,
        note: &str,
        now_ns: u64,
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<ComplianceResolved, StoreError> {
        on_backend!(self, |tx, sql| {
            let row: Option<(i64, String, String, String)> =
                sqlx::query_as(&sql("SELECT customer_id, outcome, state, kind FROM compliance_cases WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&mut *tx.0)
                    .await?;
            match row {
                None => ComplianceResolved::NotFound,
                Some((_, _, state, _)) if state != "open" => ComplianceResolved::AlreadyResolved,
                Some((customer, outcome, _, kind)) => {
                    let n = sqlx::query(&sql(
                        "UPDATE compliance_cases SET state = 'resolved', resolution = $2, resolved_by = $3, \
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
                        ComplianceResolved::AlreadyResolved
                    } else {
                        sqlx::query(&sql(ADD_NOTE))
                            .bind(id)
                            .bind(by)
                            .bind(note)
                            .bind(ts(now_ns))
                            .execute(&mut *tx.0)
                            .await?;
                        let unfrozen = resolution == ComplianceResolution::Release
                            && outcome == "freeze"
                            && sqlx::query(&sql(crate::compliance::UNFREEZE_IF_CLEAR))
                                .bind(customer)
                                .execute(&mut *tx.0)
                                .await?
                                .rows_affected()
                                == 1;
                        // The customer's held deposits follow the case: released to be credited by the watcher,
                        // or refused for good.
                        let deposits = if kind == DEPOSIT_HOLD {
                            let to = if resolution == ComplianceResolution::Release { "released" } else { "refused" };
                            sqlx::query(&sql(
                                "UPDATE chain_deposits SET state = $1, updated_at = $2 WHERE customer_id = $3 \
                                 AND state = 'held'",
                            ))
                            .bind(to)
                            .bind(ts(now_ns))
                            .bind(customer)
                            .execute(&mut *tx.0)
                            .await?
                            .rows_affected()
                        } else {
                            0
                        };
                        audit::append(&mut tx, records, auditor).await?;
                        ComplianceResolved::Done { unfrozen, deposits }
                    }
                }
            }
        })
        .pipe(Ok)
    }

    /// Assigns an open compliance case or adds a note to it (assign when `assign`); answers whether it was open.
    pub async fn work_compliance_case(
        &self,
        id: i64,
        by: &str,
        assign: bool,
        note: Option<&str>,
        now_ns: u64,
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<bool, StoreError> {
        on_backend!(self, |tx, sql| {
            let open: Option<i64> =
                sqlx::query_scalar(&sql("SELECT id FROM compliance_cases WHERE id = $1 AND state = 'open'"))
                    .bind(id)
                    .fetch_optional(&mut *tx.0)
                    .await?;
            if open.is_some() {
                if assign {
                    sqlx::query(&sql("UPDATE compliance_cases SET assigned_to = $2 WHERE id = $1"))
                        .bind(id)
                        .bind(by)
                        .execute(&mut *tx.0)
                        .await?;
                }
                if let Some(body) = note {
                    sqlx::query(&sql(ADD_NOTE))
                        .bind(id)
                        .bind(by)
                        .bind(body)
                        .bind(ts(now_ns))
                        .execute(&mut *tx.0)
                        .await?;
                }
                audit::append(&mut tx, records, auditor).await?;
            }
            open.is_some()
        })
        .pipe(Ok)
    }

    /// The live entries of the exchange's address lists.
    pub async fn address_listings(&self) -> Result<Vec<AddressListing>, StoreError> {
        let rows: Vec<(i64, String, Option<String>, String, String, String, i64)> = on_reader!(self, |pool, sql| {
            sqlx::query_as(&sql(
                "SELECT id, address, asset, category, reason, added_by, added_at FROM address_listings \
                 WHERE removed_at IS NULL ORDER BY id",
            ))
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(|r| AddressListing {
                id: r.0,
                address: r.1,
                asset: r.2,
                category: r.3,
                reason: r.4,
                added_by: r.5,
                added_at_ns: u(r.6),
            })
            .collect())
    }

    /// Lists an address (canonical form); `None` when it is listed already.
    pub async fn add_address_listing(
        &self,
        address: &str,
        asset: Option<&str>,
        category: &str,
        reason: &str,
        by: &str,
        now_ns: u64,
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<Option<i64>, StoreError> {
        on_backend!(self, |tx, sql| {
            let id: Option<i64> = sqlx::query_scalar(&sql(
                "INSERT INTO address_listings (address, asset, category, reason, added_by, added_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING id",
            ))
            .bind(address)
            .bind(asset)
            .bind(category)
            .bind(reason)
            .bind(by)
            .bind(ts(now_ns))
            .fetch_optional(&mut *tx.0)
            .await?;
            if id.is_some() {
                audit::append(&mut tx, records, auditor).await?;
            }
            id
        })
        .pipe(Ok)
    }

    /// Takes an address off the lists; answers whether it was on them.
    pub async fn remove_address_listing(
        &self,
        id: i64,
        by: &str,
        now_ns: u64,
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<bool, StoreError> {
        on_backend!(self, |tx, sql| {
            let n = sqlx::query(&sql(
                "UPDATE address_listings SET removed_by = $2, removed_at = $3 WHERE id = $1 AND removed_at IS NULL",
            ))
            .bind(id)
            .bind(by)
            .bind(ts(now_ns))
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

    /// A customer's KYC level (0 for an unknown customer).
    pub async fn kyc_level(&self, customer_id: i64) -> Result<u8, StoreError> {
        let level: Option<i64> = on_reader!(self, |pool, sql| {
            sqlx::query_scalar(&sql("SELECT kyc_level FROM customers WHERE id = $1"))
                .bind(customer_id)
                .fetch_optional(pool)
                .await?
        });
        Ok(level.and_then(|l| u8::try_from(l).ok()).unwrap_or(0))
    }

    /// Stores a KYC submission with its documents, sealing the identity and each document with `seal_identity(id)`
    /// and `seal_document(document id, index)` once their ids exist; `None` while another submission of the
    /// customer is pending.
    pub async fn submit_kyc(
        &self,
        customer_id: i64,
        level: u8,
        provider: &str,
        documents: &[NewDocument],
        seal_identity: impl Fn(i64) -> Vec<u8>,
        seal_document: impl Fn(i64, usize) -> Vec<u8>,
        now_ns: u64,
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<Option<i64>, StoreError> {
        on_backend!(self, |tx, sql| {
            let id: Option<i64> = sqlx::query_scalar(&sql(
                "INSERT INTO kyc_submissions (customer_id, level, state, data, provider, submitted_at) \
                 VALUES ($1, $2, 'pending', $3, $4, $5) ON CONFLICT DO NOTHING RETURNING id",
            ))
            .bind(customer_id)
            .bind(i64::from(level))
            .bind(Vec::<u8>::new())
            .bind(provider)
            .bind(ts(now_ns))
            .fetch_optional(&mut *tx.0)
            .await?;
            if let Some(id) = id {
                sqlx::query(&sql("UPDATE kyc_submissions SET data = $2 WHERE id = $1"))
                    .bind(id)
                    .bind(seal_identity(id))
                    .execute(&mut *tx.0)
                    .await?;
                for (i, d) in documents.iter().enumerate() {
                    let doc: i64 = sqlx::query_scalar(&sql(
                        "INSERT INTO kyc_documents (submission_id, kind, content_type, sha256, body) \
                         VALUES ($1, $2, $3, $4, $5) RETURNING id",
                    ))
                    .bind(id)
                    .bind(&d.kind)
                    .bind(&d.content_type)
                    .bind(&d.sha256)
                    .bind(Vec::<u8>::new())
                    .fetch_one(&mut *tx.0)
                    .await?;
                    sqlx::query(&sql("UPDATE kyc_documents SET body = $2 WHERE id = $1"))
                        .bind(doc)
                        .bind(seal_document(doc, i))
                        .execute(&mut *tx.0)
                        .await?;
                }
                audit::append(&mut tx, audit::tagged(records, "submission", id), auditor).await?;
            }
            id
        })
        .pipe(Ok)
    }

    /// KYC submissions, newest first: only pending ones unless `all`; of one customer when given.
    pub async fn kyc_submissions(
        &self,
        all: bool,
        customer: Option<i64>,
        limit: u32,
    ) -> Result<Vec<KycSubmission>, StoreError> {
        let rows: Vec<KycRow> = on_reader!(self, |pool, sql| {
            sqlx::query_as(&sql(&format!(
                "SELECT {KYC_COLUMNS} FROM kyc_submissions WHERE ($1 OR state = 'pending') \
                 AND ($2 IS NULL OR customer_id = $2) ORDER BY id DESC LIMIT $3"
            )))
            .bind(all)
            .bind(customer)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
        });
        Ok(rows.into_iter().map(|r| kyc(r, Vec::new())).collect())
    }

    /// One submission with its documents' descriptions.
    pub async fn kyc_submission(&self, id: i64) -> Result<Option<KycSubmission>, StoreError> {
        let (row, docs): (Option<KycRow>, Vec<(i64, String, String, Vec<u8>)>) = on_reader!(self, |pool, sql| {
            let row = sqlx::query_as(&sql(&format!("SELECT {KYC_COLUMNS} FROM kyc_submissions WHERE id = $1")))
                .bind(id)
                .fetch_optional(pool)
                .await?;
            let docs = sqlx::query_as(&sql(
                "SELECT id, kind, content_type, sha256 FROM kyc_documents WHERE submission_id = $1 ORDER BY id",
            ))
            .bind(id)
            .fetch_all(pool)
            .await?;
            (row, docs)
        });
        Ok(row.map(|r| {
            let docs = docs
                .into_iter()
                .map(|(id, kind, content_type, sha256)| KycDocument { id, kind, content_type, sha256 })
                .collect();
            kyc(r, docs)
        }))
    }

    /// A document's description, its submission and its sealed body.
    pub async fn kyc_document(&self, id: i64) -> Result<Option<(KycDocument, i64, Vec<u8>)>, StoreError> {
        let row: Option<(i64, String, String, Vec<u8>, i64, Vec<u8>)> = on_reader!(self, |pool, sql| {
            sqlx::query_as(&sql(
                "SELECT id, kind, content_type, sha256, submission_id, body FROM kyc_documents WHERE id = $1",
            ))
            .bind(id)
            .fetch_optional(pool)
            .await?
        });
        Ok(row.map(|(id, kind, content_type, sha256, submission, body)| {
            (KycDocument { id, kind, content_type, sha256 }, submission, body)
        }))
    }

    /// Approves or rejects a pending submission; an approval raises the customer's level to the submission's (never
    /// lowers it).
    pub async fn decide_kyc(
        &self,
        id: i64,
        approve: bool,
        by: &str,
        reason: &str,
        now_ns: u64,
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<KycDecided, StoreError> {
        on_backend!(self, |tx, sql| {
            let row: Option<(i64, i64, String)> =
                sqlx::query_as(&sql("SELECT customer_id, level, state FROM kyc_submissions WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&mut *tx.0)
                    .await?;
            match row {
                None => KycDecided::NotFound,
                Some((_, _, state)) if state != "pending" => KycDecided::AlreadyDecided,
                Some((customer, level, _)) => {
                    let n = sqlx::query(&sql(
                        "UPDATE kyc_submissions SET state = $2, reviewed_by = $3, reason = $4, reviewed_at = $5 \
                         WHERE id = $1 AND state = 'pending'",
                    ))
                    .bind(id)
                    .bind(if approve { "approved" } else { "rejected" })
                    .bind(by)
                    .bind(reason)
                    .bind(ts(now_ns))
                    .execute(&mut *tx.0)
                    .await?
                    .rows_affected();
                    if n == 0 {
                        KycDecided::AlreadyDecided
                    } else {
                        if approve {
                            sqlx::query(&sql("UPDATE customers SET kyc_level = $2 WHERE id = $1 AND kyc_level < $2"))
                                .bind(customer)
                                .bind(level)
                                .execute(&mut *tx.0)
                                .await?;
                        }
                        let now_level: i64 = sqlx::query_scalar(&sql("SELECT kyc_level FROM customers WHERE id = $1"))
                            .bind(customer)
                            .fetch_one(&mut *tx.0)
                            .await?;
                        audit::append(&mut tx, records, auditor).await?;
                        KycDecided::Done { customer_id: customer, level: u8::try_from(now_level).unwrap_or(0) }
                    }
                }
            }
        })
        .pipe(Ok)
    }

    /// Records a transfer's Travel Rule data (sealed by the caller); `false` when the reference has a record already.
    pub async fn record_travel_rule(
        &self,
        record: &TravelRuleRecord,
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<bool, StoreError> {
        on_backend!(self, |tx, sql| {
            let id: Option<i64> = sqlx::query_scalar(&sql(
                "INSERT INTO travel_rule_records (reference, customer_id, asset, amount, amount_usd, data, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING RETURNING id",
            ))
            .bind(&record.reference)
            .bind(record.customer_id)
            .bind(&record.asset)
            .bind(&record.amount)
            .bind(i64::try_from(record.amount_usd).unwrap_or(i64::MAX))
            .bind(&record.data)
            .bind(ts(record.created_at_ns))
            .fetch_optional(&mut *tx.0)
            .await?;
            if id.is_some() {
                audit::append(&mut tx, records, auditor).await?;
            }
            id.is_some()
        })
        .pipe(Ok)
    }

    /// Travel Rule records, newest first; of one customer when given.
    pub async fn travel_rule_records(
        &self,
        customer: Option<i64>,
        limit: u32,
    ) -> Result<Vec<TravelRuleRecord>, StoreError> {
        let rows: Vec<(String, i64, String, String, i64, Vec<u8>, i64)> = on_reader!(self, |pool, sql| {
            sqlx::query_as(&sql(
                "SELECT reference, customer_id, asset, amount, amount_usd, data, created_at FROM travel_rule_records \
                 WHERE ($1 IS NULL OR customer_id = $1) ORDER BY id DESC LIMIT $2",
            ))
            .bind(customer)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(|r| TravelRuleRecord {
                reference: r.0,
                customer_id: r.1,
                asset: r.2,
                amount: r.3,
                amount_usd: u(r.4),
                data: r.5,
                created_at_ns: u(r.6),
            })
            .collect())
    }

    /// Opens the three-level review of a large transfer; `None` when the reference is under review already.
    pub async fn open_transfer_review(
        &self,
        reference: &str,
        customer_id: i64,
        requested_by: &str,
        asset: &str,
        amount: &str,
        amount_usd: u64,
        now_ns: u64,
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<Option<i64>, StoreError> {
        on_backend!(self, |tx, sql| {
            let id: Option<i64> = sqlx::query_scalar(&sql(
                "INSERT INTO transfer_reviews (reference, customer_id, requested_by, asset, amount, amount_usd, \
                 state, level, created_at) VALUES ($1, $2, $3, $4, $5, $6, 'pending', 1, $7) \
                 ON CONFLICT DO NOTHING RETURNING id",
            ))
            .bind(reference)
            .bind(customer_id)
            .bind(requested_by)
            .bind(asset)
            .bind(amount)
            .bind(i64::try_from(amount_usd).unwrap_or(i64::MAX))
            .bind(ts(now_ns))
            .fetch_optional(&mut *tx.0)
            .await?;
            if let Some(id) = id {
                audit::append(&mut tx, audit::tagged(records, "review", id), auditor).await?;
            }
            id
        })
        .pipe(Ok)
    }

    /// Reviews, newest first: only pending ones unless `all`.
    pub async fn transfer_reviews(&self, all: bool, limit: u32) -> Result<Vec<TransferReview>, StoreError> {
        let ids: Vec<i64> = on_reader!(self, |pool, sql| {
            sqlx::query_scalar(&sql(
                "SELECT id FROM transfer_reviews WHERE ($1 OR state = 'pending') ORDER BY id DESC LIMIT $2",
            ))
            .bind(all)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
        });
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(r) = self.transfer_review(id).await? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// The review of a transfer by its reference (a withdrawal's id).
    pub async fn transfer_review_of(&self, reference: &str) -> Result<Option<TransferReview>, StoreError> {
        let id: Option<i64> = on_reader!(self, |pool, sql| {
            sqlx::query_scalar(&sql("SELECT id FROM transfer_reviews WHERE reference = $1"))
                .bind(reference)
                .fetch_optional(pool)
                .await?
        });
        match id {
            Some(id) => self.transfer_review(id).await,
            None => Ok(None),
        }
    }

    /// One review with its decisions.
    pub async fn transfer_review(&self, id: i64) -> Result<Option<TransferReview>, StoreError> {
        type Row = (i64, String, i64, String, String, String, i64, i64);
        let (row, decisions): (Option<Row>, Vec<(i64, String, bool, String, i64)>) = on_reader!(self, |pool, sql| {
            let row = sqlx::query_as(&sql(
                "SELECT id, reference, customer_id, requested_by, asset, amount, amount_usd, created_at \
                 FROM transfer_reviews WHERE id = $1",
            ))
            .bind(id)
            .fetch_optional(pool)
            .await?;
            let decisions = sqlx::query_as(&sql(
                "SELECT level, reviewer, approve, reason, decided_at FROM transfer_review_decisions \
                 WHERE review_id = $1 ORDER BY level",
            ))
            .bind(id)
            .fetch_all(pool)
            .await?;
            (row, decisions)
        });
        Ok(row.map(|r| {
            let decisions: Vec<(Decision, String, u64)> = decisions
                .into_iter()
                .map(|(level, reviewer, approve, reason, at)| {
                    (Decision { level: u8::try_from(level).unwrap_or(0), reviewer, approve }, reason, u(at))
                })
                .collect();
            let plain: Vec<Decision> = decisions.iter().map(|d| d.0.clone()).collect();
            TransferReview {
                id: r.0,
                reference: r.1,
                customer_id: r.2,
                requested_by: r.3,
                asset: r.4,
                amount: r.5,
                amount_usd: u(r.6),
                state: review::state(&plain),
                decisions,
                created_at_ns: u(r.7),
            }
        }))
    }

    /// Decides the waiting level of a review as `reviewer`, who holds the review roles of `levels`: the rules of
    /// [`review::decide`] are applied to the decisions as stored, under the review's row lock.
    pub async fn decide_transfer_review(
        &self,
        id: i64,
        reviewer: &str,
        levels: &[u8],
        approve: bool,
        reason: &str,
        now_ns: u64,
        auditor: &Auditor<'_>,
        mut records: Vec<AuditRecord>,
    ) -> Result<ReviewDecided, StoreError> {
        let lock = if matches!(self, Store::Postgres(_)) { " FOR UPDATE" } else { "" };
        on_backend!(self, |tx, sql| {
            let requester: Option<String> =
                sqlx::query_scalar(&sql(&format!("SELECT requested_by FROM transfer_reviews WHERE id = $1{lock}")))
                    .bind(id)
                    .fetch_optional(&mut *tx.0)
                    .await?;
            match requester {
                None => ReviewDecided::NotFound,
                Some(requester) => {
                    let rows: Vec<(i64, String, bool)> = sqlx::query_as(&sql(
                        "SELECT level, reviewer, approve FROM transfer_review_decisions WHERE review_id = $1 \
                         ORDER BY level",
                    ))
                    .bind(id)
                    .fetch_all(&mut *tx.0)
                    .await?;
                    let mut decisions: Vec<Decision> = rows
                        .into_iter()
                        .map(|(level, reviewer, approve)| Decision {
                            level: u8::try_from(level).unwrap_or(0),
                            reviewer,
                            approve,
                        })
                        .collect();
                    match review::decide(&decisions, &requester, reviewer, levels, approve) {
                        Err(refused) => ReviewDecided::Refused(refused),
                        Ok(decision) => {
                            sqlx::query(&sql(
                                "INSERT INTO transfer_review_decisions (review_id, level, reviewer, approve, reason, \
                                 decided_at) VALUES ($1, $2, $3, $4, $5, $6)",
                            ))
                            .bind(id)
                            .bind(i64::from(decision.level))
                            .bind(reviewer)
                            .bind(approve)
                            .bind(reason)
                            .bind(ts(now_ns))
                            .execute(&mut *tx.0)
                            .await?;
                            let level = decision.level;
                            decisions.push(decision);
                            let state = review::state(&decisions);
                            let (name, next) = match state {
                                review::State::Pending { level } => ("pending", level),
                                review::State::Approved => ("approved", review::LEVELS),
                                review::State::Rejected { level } => ("rejected", level),
                            };
                            sqlx::query(&sql(
                                "UPDATE transfer_reviews SET state = $2, level = $3, decided_at = $4 WHERE id = $1",
                            ))
                            .bind(id)
                            .bind(name)
                            .bind(i64::from(next))
                            .bind(if name == "pending" { None } else { Some(ts(now_ns)) })
                            .execute(&mut *tx.0)
                            .await?;
                            for r in &mut records {
                                r.details.insert("level".into(), level.to_string());
                                r.details.insert("state".into(), name.into());
                            }
                            audit::append(&mut tx, std::mem::take(&mut records), auditor).await?;
                            ReviewDecided::Done(state)
                        }
                    }
                }
            }
        })
        .pipe(Ok)
    }
}

/// Unfreezes a frozen customer (`$1`) unless an open risk or compliance case still freezes the account.
pub(crate) const UNFREEZE_IF_CLEAR: &str = "UPDATE customers SET status = 'active' WHERE id = $1 AND status = 'frozen' \
     AND NOT EXISTS (SELECT 1 FROM risk_cases WHERE customer_id = $1 AND state = 'open' AND outcome = 'freeze') \
     AND NOT EXISTS (SELECT 1 FROM compliance_cases WHERE customer_id = $1 AND state = 'open' AND outcome = 'freeze')";
