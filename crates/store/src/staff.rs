//! Staff accounts, sessions and four-eyes role changes. Every change is audited in its own transaction.
//!
//! The SQL is written once, with `$n` placeholders (SQLite reads them as `?n`), and the [`on_backend!`] macro expands
//! each method for both databases: the statements are the same, only the driver types differ.

use rampart_audit::{AuditRecord, Role};
use sqlx::Row;

use crate::audit::{self, Auditor};
use crate::backend::Pipe;
use crate::{Store, StoreError, ts};

/// Where a staff account stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaffStatus {
    /// Created; the owner has not yet set a password and a second factor.
    Enrolling,
    /// May sign in.
    Active,
    /// May not sign in.
    Disabled,
}

impl StaffStatus {
    /// A stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            StaffStatus::Enrolling => "enrolling",
            StaffStatus::Active => "active",
            StaffStatus::Disabled => "disabled",
        }
    }

    fn parse(s: &str) -> Result<StaffStatus, StoreError> {
        Ok(match s {
            "enrolling" => StaffStatus::Enrolling,
            "active" => StaffStatus::Active,
            "disabled" => StaffStatus::Disabled,
            other => return Err(StoreError::Corrupt(format!("staff status {other:?}"))),
        })
    }
}

/// A staff account as stored. The TOTP secret is a ciphertext; the password a hash.
#[derive(Clone, PartialEq, Eq)]
pub struct StaffRecord {
    /// The id.
    pub id: i64,
    /// The sign-in name.
    pub username: String,
    /// Argon2id PHC string, once enrolled.
    pub password_hash: Option<String>,
    /// The encrypted TOTP secret, once enrolled.
    pub totp_secret: Option<Vec<u8>>,
    /// The last TOTP time step accepted.
    pub totp_last_step: Option<i64>,
    /// Roles held.
    pub roles: Vec<Role>,
    /// Where the account stands.
    pub status: StaffStatus,
    /// SHA-256 of the one-time enrolment code, while enrolling.
    pub enrolment_hash: Option<Vec<u8>>,
    /// When the enrolment code stops working.
    pub enrolment_expires_at_ns: Option<u64>,
}

impl std::fmt::Debug for StaffRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaffRecord")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("roles", &self.roles)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// A request to grant or revoke a role, waiting for a second administrator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleRequest {
    /// The id.
    pub id: i64,
    /// The staff member whose roles change.
    pub staff_id: i64,
    /// The role.
    pub role: Role,
    /// Grant (true) or revoke (false).
    pub grant: bool,
    /// Who asked (`staff:<id>`).
    pub requested_by: String,
    /// `pending`, `approved` or `rejected`.
    pub status: String,
    /// Who decided.
    pub decided_by: Option<String>,
}

/// Re-encrypts one staff member's secret: `Ok(None)` if it is already under the current key.
pub type Rewrap<'a> = dyn Fn(i64, &[u8]) -> Result<Option<Vec<u8>>, StoreError> + Sync + 'a;

/// The outcome of deciding a role request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleDecision {
    /// Decided (and, if approved, applied).
    Decided(RoleRequest),
    /// No such request.
    NotFound,
    /// Already decided.
    NotPending,
    /// The decider asked for it, or it changes the decider's own roles: four eyes means someone else decides.
    OwnRequest,
    /// Approving it would give one person roles that together break separation of duties.
    SeparationOfDuties(&'static str),
}

fn roles_text(roles: &[Role]) -> String {
    roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(",")
}

fn parse_roles(s: &str) -> Result<Vec<Role>, StoreError> {
    s.split(',')
        .filter(|r| !r.is_empty())
        .map(|r| Role::parse(r).ok_or_else(|| StoreError::Corrupt(format!("role {r:?}"))))
        .collect()
}

const STAFF_COLUMNS: &str = "id, username, password_hash, totp_secret, totp_last_step, roles, status, enrolment_hash, \
                             enrolment_expires_at";

fn staff_row<R: Row>(row: &R) -> Result<StaffRecord, StoreError>
where
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database>,
    for<'r> Option<Vec<u8>>: sqlx::Decode<'r, R::Database>,
    Vec<u8>: sqlx::Type<R::Database>,
    usize: sqlx::ColumnIndex<R>,
{
    let roles: String = row.try_get(5)?;
    let status: String = row.try_get(6)?;
    Ok(StaffRecord {
        id: row.try_get(0)?,
        username: row.try_get(1)?,
        password_hash: row.try_get(2)?,
        totp_secret: row.try_get(3)?,
        totp_last_step: row.try_get(4)?,
        roles: parse_roles(&roles)?,
        status: StaffStatus::parse(&status)?,
        enrolment_hash: row.try_get(7)?,
        enrolment_expires_at_ns: row.try_get::<Option<i64>, _>(8)?.map(|v| u64::try_from(v).unwrap_or(0)),
    })
}

fn request_row<R: Row>(row: &R) -> Result<RoleRequest, StoreError>
where
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database>,
    usize: sqlx::ColumnIndex<R>,
{
    let role: String = row.try_get(2)?;
    Ok(RoleRequest {
        id: row.try_get(0)?,
        staff_id: row.try_get(1)?,
        role: Role::parse(&role).ok_or_else(|| StoreError::Corrupt(format!("role {role:?}")))?,
        grant: row.try_get::<i64, _>(3)? == 1,
        requested_by: row.try_get(4)?,
        status: row.try_get(5)?,
        decided_by: row.try_get(6)?,
    })
}

const REQUEST_COLUMNS: &str = "id, staff_id, role, grant_role, requested_by, status, decided_by";

impl Store {
    /// Creates a staff account in the `enrolling` state with a one-time enrolment code (stored as its hash).
    /// Returns `None` if the username is taken.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_staff(
        &self,
        username: &str,
        roles: &[Role],
        enrolment_hash: &[u8; 32],
        enrolment_expires_at_ns: u64,
        now_ns: u64,
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<Option<i64>, StoreError> {
        on_backend!(self, |tx, sql| {
            let taken: Option<i64> = sqlx::query_scalar(&sql("SELECT id FROM staff WHERE username = $1"))
                .bind(username)
                .fetch_optional(&mut *tx.0)
                .await?;
            if taken.is_some() {
                return Ok(None);
            }
            let id: Result<i64, sqlx::Error> = sqlx::query_scalar(&sql(
                "INSERT INTO staff (username, roles, status, enrolment_hash, enrolment_expires_at, created_at) \
                 VALUES ($1, $2, 'enrolling', $3, $4, $5) RETURNING id",
            ))
            .bind(username)
            .bind(roles_text(roles))
            .bind(enrolment_hash.to_vec())
            .bind(ts(enrolment_expires_at_ns))
            .bind(ts(now_ns))
            .fetch_one(&mut *tx.0)
            .await;
            // Two requests for the same new name at once: the loser's insert breaks the unique index.
            let id: i64 = match id {
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => return Ok(None),
                other => other?,
            };
            audit::append(&mut tx, records, auditor).await?;
            Some(id)
        })
        .pipe(Ok)
    }

    /// The staff account with this username.
    pub async fn staff_by_username(&self, username: &str) -> Result<Option<StaffRecord>, StoreError> {
        on_reader!(self, |pool, sql| {
            let q = sql(&format!("SELECT {STAFF_COLUMNS} FROM staff WHERE username = $1"));
            let row = sqlx::query(&q).bind(username).fetch_optional(pool).await?;
            row.as_ref().map(staff_row).transpose()
        })
    }

    /// The staff account with this id.
    pub async fn staff_by_id(&self, id: i64) -> Result<Option<StaffRecord>, StoreError> {
        on_reader!(self, |pool, sql| {
            let q = sql(&format!("SELECT {STAFF_COLUMNS} FROM staff WHERE id = $1"));
            let row = sqlx::query(&q).bind(id).fetch_optional(pool).await?;
            row.as_ref().map(staff_row).transpose()
        })
    }

    /// Every staff account, by id.
    pub async fn list_staff(&self) -> Result<Vec<StaffRecord>, StoreError> {
        on_reader!(self, |pool, sql| {
            let q = sql(&format!("SELECT {STAFF_COLUMNS} FROM staff ORDER BY id"));
            let rows = sqlx::query(&q).fetch_all(pool).await?;
            rows.iter().map(staff_row).collect()
        })
    }

    /// Sets an enrolling account's password hash and encrypted TOTP secret, once: someone who intercepted the
    /// enrolment code cannot replace credentials the owner already set. Returns `false` if they were set already or
    /// the account is not enrolling.
    pub async fn set_staff_credentials(
        &self,
        id: i64,
        password_hash: &str,
        totp_secret: &[u8],
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<bool, StoreError> {
        on_backend!(self, |tx, sql| {
            let changed = sqlx::query(&sql("UPDATE staff SET password_hash = $1, totp_secret = $2 \
                 WHERE id = $3 AND status = 'enrolling' AND password_hash IS NULL"))
            .bind(password_hash)
            .bind(totp_secret.to_vec())
            .bind(id)
            .execute(&mut *tx.0)
            .await?
            .rows_affected()
                == 1;
            if changed {
                audit::append(&mut tx, records, auditor).await?;
            }
            changed
        })
        .pipe(Ok)
    }

    /// Activates an enrolling account whose owner proved the second factor with TOTP step `step`; the enrolment
    /// code stops working. Returns `false` if it was not enrolling.
    pub async fn activate_staff(
        &self,
        id: i64,
        step: u64,
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<bool, StoreError> {
        on_backend!(self, |tx, sql| {
            let changed = sqlx::query(&sql(
                "UPDATE staff SET status = 'active', enrolment_hash = NULL, enrolment_expires_at = NULL, \
                 totp_last_step = $1 WHERE id = $2 AND status = 'enrolling' AND password_hash IS NOT NULL",
            ))
            .bind(i64::try_from(step).unwrap_or(i64::MAX))
            .bind(id)
            .execute(&mut *tx.0)
            .await?
            .rows_affected()
                == 1;
            if changed {
                audit::append(&mut tx, records, auditor).await?;
            }
            changed
        })
        .pipe(Ok)
    }

    /// Records that TOTP step `step` was used by account `id`, atomically: `false` if that step (or a later one)
    /// was already used, so a code can never be replayed, even on another node.
    pub async fn accept_totp_step(&self, id: i64, step: u64) -> Result<bool, StoreError> {
        let step = i64::try_from(step).unwrap_or(i64::MAX);
        on_backend!(self, |tx, sql| {
            sqlx::query(&sql(
                "UPDATE staff SET totp_last_step = $1 WHERE id = $2 AND (totp_last_step IS NULL OR totp_last_step < $1)",
            ))
            .bind(step)
            .bind(id)
            .execute(&mut *tx.0)
            .await?
            .rows_affected()
                == 1
        })
        .pipe(Ok)
    }

    /// Stores a new session (by the hash of its token) and audits the sign-in.
    pub async fn create_session(
        &self,
        token_hash: &[u8; 32],
        staff_id: i64,
        now_ns: u64,
        expires_at_ns: u64,
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<(), StoreError> {
        on_backend!(self, |tx, sql| {
            sqlx::query(&sql(
                "INSERT INTO staff_sessions (token_hash, staff_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
            ))
            .bind(token_hash.to_vec())
            .bind(staff_id)
            .bind(ts(now_ns))
            .bind(ts(expires_at_ns))
            .execute(&mut *tx.0)
            .await?;
            audit::append(&mut tx, records, auditor).await?;
        });
        Ok(())
    }

    /// The active staff account of a live session.
    pub async fn session_staff(&self, token_hash: &[u8; 32], now_ns: u64) -> Result<Option<StaffRecord>, StoreError> {
        let columns = STAFF_COLUMNS.split(", ").map(|c| format!("s.{c}")).collect::<Vec<_>>().join(", ");
        on_reader!(self, |pool, sql| {
            let q = sql(&format!(
                "SELECT {columns} FROM staff_sessions x JOIN staff s ON s.id = x.staff_id \
                 WHERE x.token_hash = $1 AND x.expires_at > $2 AND s.status = 'active'"
            ));
            let row = sqlx::query(&q).bind(token_hash.to_vec()).bind(ts(now_ns)).fetch_optional(pool).await?;
            row.as_ref().map(staff_row).transpose()
        })
    }

    /// Ends a session.
    pub async fn delete_session(
        &self,
        token_hash: &[u8; 32],
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<(), StoreError> {
        on_backend!(self, |tx, sql| {
            sqlx::query(&sql("DELETE FROM staff_sessions WHERE token_hash = $1"))
                .bind(token_hash.to_vec())
                .execute(&mut *tx.0)
                .await?;
            audit::append(&mut tx, records, auditor).await?;
        });
        Ok(())
    }

    /// Re-encrypts every staff TOTP secret under the current data key with `rewrap` (which must keep the plaintext
    /// in the process), in one transaction with its audit record; returns how many changed.
    pub async fn rewrap_staff_secrets(
        &self,
        rewrap: &Rewrap<'_>,
        auditor: &Auditor<'_>,
        mut record: AuditRecord,
    ) -> Result<u64, StoreError> {
        let lock = if matches!(self, Store::Postgres(_)) { " FOR UPDATE" } else { "" };
        on_backend!(self, |tx, sql| {
            let q = sql(&format!("SELECT id, totp_secret FROM staff WHERE totp_secret IS NOT NULL ORDER BY id{lock}"));
            let rows = sqlx::query(&q).fetch_all(&mut *tx.0).await?;
            let mut changed = 0u64;
            for row in &rows {
                let id: i64 = row.try_get(0)?;
                let ciphertext: Vec<u8> = row.try_get(1)?;
                if let Some(new) = rewrap(id, &ciphertext)? {
                    sqlx::query(&sql("UPDATE staff SET totp_secret = $1 WHERE id = $2"))
                        .bind(new)
                        .bind(id)
                        .execute(&mut *tx.0)
                        .await?;
                    changed += 1;
                }
            }
            record.details.insert("rewrapped".into(), changed.to_string());
            audit::append(&mut tx, vec![record], auditor).await?;
            changed
        })
        .pipe(Ok)
    }

    /// Disables a staff account and ends all its sessions, in one transaction with its audit record. Returns
    /// `false` if there is no such account.
    pub async fn disable_staff(
        &self,
        id: i64,
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<bool, StoreError> {
        on_backend!(self, |tx, sql| {
            let found = sqlx::query(&sql("UPDATE staff SET status = 'disabled' WHERE id = $1"))
                .bind(id)
                .execute(&mut *tx.0)
                .await?
                .rows_affected()
                == 1;
            if found {
                sqlx::query(&sql("DELETE FROM staff_sessions WHERE staff_id = $1"))
                    .bind(id)
                    .execute(&mut *tx.0)
                    .await?;
                audit::append(&mut tx, records, auditor).await?;
            }
            found
        })
        .pipe(Ok)
    }

    /// Files a request to grant or revoke `role` for staff `staff_id`; it takes effect when another administrator
    /// approves it.
    #[allow(clippy::too_many_arguments)]
    pub async fn request_role_change(
        &self,
        staff_id: i64,
        role: Role,
        grant: bool,
        requested_by: &str,
        now_ns: u64,
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<i64, StoreError> {
        on_backend!(self, |tx, sql| {
            let id: i64 = sqlx::query_scalar(&sql(
                "INSERT INTO staff_role_requests (staff_id, role, grant_role, requested_by, status, created_at) \
                 VALUES ($1, $2, $3, $4, 'pending', $5) RETURNING id",
            ))
            .bind(staff_id)
            .bind(role.as_str())
            .bind(i64::from(grant))
            .bind(requested_by)
            .bind(ts(now_ns))
            .fetch_one(&mut *tx.0)
            .await?;
            audit::append(&mut tx, records, auditor).await?;
            id
        })
        .pipe(Ok)
    }

    /// Role requests with this status (`pending`, `approved`, `rejected`), oldest first.
    pub async fn role_requests(&self, status: &str) -> Result<Vec<RoleRequest>, StoreError> {
        on_reader!(self, |pool, sql| {
            let q = sql(&format!("SELECT {REQUEST_COLUMNS} FROM staff_role_requests WHERE status = $1 ORDER BY id"));
            let rows = sqlx::query(&q).bind(status).fetch_all(pool).await?;
            rows.iter().map(request_row).collect()
        })
    }

    /// Approves or rejects a pending role request, atomically; on approval the role change is applied. The decider
    /// may not be the requester. `records` are appended only if it was decided.
    pub async fn decide_role_request(
        &self,
        request_id: i64,
        approve: bool,
        decided_by: &str,
        now_ns: u64,
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<RoleDecision, StoreError> {
        let lock = if matches!(self, Store::Postgres(_)) { " FOR UPDATE" } else { "" };
        on_backend!(self, |tx, sql| {
            let q = sql(&format!("SELECT {REQUEST_COLUMNS} FROM staff_role_requests WHERE id = $1{lock}"));
            let row = sqlx::query(&q).bind(request_id).fetch_optional(&mut *tx.0).await?;
            match row.as_ref().map(request_row).transpose()? {
                None => RoleDecision::NotFound,
                Some(r) if r.status != "pending" => RoleDecision::NotPending,
                // Four eyes: neither the requester nor the person whose roles change may decide.
                Some(r) if r.requested_by == decided_by || decided_by == format!("staff:{}", r.staff_id) => {
                    RoleDecision::OwnRequest
                }
                Some(mut r) => {
                    let status = if approve { "approved" } else { "rejected" };
                    sqlx::query(&sql(
                        "UPDATE staff_role_requests SET status = $1, decided_by = $2, decided_at = $3 WHERE id = $4",
                    ))
                    .bind(status)
                    .bind(decided_by)
                    .bind(ts(now_ns))
                    .bind(request_id)
                    .execute(&mut *tx.0)
                    .await?;
                    if approve {
                        // Locked, so that two approvals for the same person cannot both build on the old roles.
                        let q = sql(&format!("SELECT roles FROM staff WHERE id = $1{lock}"));
                        let current: String = sqlx::query_scalar(&q).bind(r.staff_id).fetch_one(&mut *tx.0).await?;
                        let mut roles = parse_roles(&current)?;
                        roles.retain(|x| *x != r.role);
                        if r.grant {
                            roles.push(r.role);
                        }
                        roles.sort();
                        if let Some(reason) = rampart_audit::separation_violation(&roles) {
                            return Ok(RoleDecision::SeparationOfDuties(reason));
                        }
                        sqlx::query(&sql("UPDATE staff SET roles = $1 WHERE id = $2"))
                            .bind(roles_text(&roles))
                            .bind(r.staff_id)
                            .execute(&mut *tx.0)
                            .await?;
                    }
                    audit::append(&mut tx, records, auditor).await?;
                    r.status = status.to_owned();
                    r.decided_by = Some(decided_by.to_owned());
                    RoleDecision::Decided(r)
                }
            }
        })
        .pipe(Ok)
    }
}
