//! Customers and how they prove who they are: accounts, second factors, devices and sessions, brute-force counters,
//! one-time tickets, API keys and notifications. Every security event is written in one transaction with its audit
//! entries, its in-app notification and its email (the outbox row), so that none can happen without the others.
//!
//! The SQL is written once for both databases (see [`on_backend!`]); rows are read as tuples, which each expansion
//! types for its own driver.

use rampart_audit::AuditRecord;

use crate::audit::{self, Auditor};
use crate::backend::Pipe;
use crate::{Store, StoreError, ts};

/// Where a customer account stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CustomerStatus {
    /// May sign in.
    Active,
    /// Locked after repeated failed sign-ins: only the owner with a second factor, or support, can unlock it.
    Locked,
    /// Frozen by risk or compliance.
    Frozen,
}

impl CustomerStatus {
    /// A stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            CustomerStatus::Active => "active",
            CustomerStatus::Locked => "locked",
            CustomerStatus::Frozen => "frozen",
        }
    }

    fn parse(s: &str) -> Result<CustomerStatus, StoreError> {
        Ok(match s {
            "active" => CustomerStatus::Active,
            "locked" => CustomerStatus::Locked,
            "frozen" => CustomerStatus::Frozen,
            other => return Err(StoreError::Corrupt(format!("customer status {other:?}"))),
        })
    }
}

/// A customer as stored: personal data and secrets are ciphertexts, the password a hash.
#[derive(Clone, PartialEq, Eq)]
pub struct CustomerRecord {
    /// The id.
    pub id: i64,
    /// The random public handle (also the WebAuthn user handle).
    pub handle: [u8; 16],
    /// The encrypted email address.
    pub email: Vec<u8>,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// Where the account stands.
    pub status: CustomerStatus,
    /// When the email address was verified.
    pub email_verified_at_ns: Option<u64>,
    /// The confirmed, encrypted TOTP secret.
    pub totp_secret: Option<Vec<u8>>,
    /// A TOTP secret being enrolled, not yet proven.
    pub totp_pending: Option<Vec<u8>>,
    /// The encrypted anti-phishing code.
    pub anti_phishing_code: Option<Vec<u8>>,
    /// Withdrawals are refused until then.
    pub withdrawal_lock_until_ns: Option<u64>,
    /// Why.
    pub withdrawal_lock_reason: Option<String>,
    /// When the account was created.
    pub created_at_ns: u64,
}

impl std::fmt::Debug for CustomerRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustomerRecord")
            .field("id", &self.id)
            .field("status", &self.status)
            .field("email_verified", &self.email_verified_at_ns.is_some())
            .field("totp", &self.totp_secret.is_some())
            .finish_non_exhaustive()
    }
}

impl CustomerRecord {
    /// The actor or target name of this customer in audit entries.
    pub fn subject(&self) -> String {
        format!("customer:{}", self.id)
    }
}

type CustomerRow = (
    i64,
    Vec<u8>,
    Vec<u8>,
    String,
    String,
    Option<i64>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<i64>,
    Option<String>,
    i64,
);

const CUSTOMER_COLUMNS: &str = "id, handle, email, password_hash, status, email_verified_at, totp_secret, totp_pending, \
                                anti_phishing_code, withdrawal_lock_until, withdrawal_lock_reason, created_at";

fn ns(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn customer(row: CustomerRow) -> Result<CustomerRecord, StoreError> {
    let (id, handle, email, password_hash, status, verified, totp, pending, code, lock, reason, created) = row;
    Ok(CustomerRecord {
        id,
        handle: handle.try_into().map_err(|_| StoreError::Corrupt(format!("customer {id} handle")))?,
        email,
        password_hash,
        status: CustomerStatus::parse(&status)?,
        email_verified_at_ns: verified.map(ns),
        totp_secret: totp,
        totp_pending: pending,
        anti_phishing_code: code,
        withdrawal_lock_until_ns: lock.map(ns),
        withdrawal_lock_reason: reason,
        created_at_ns: ns(created),
    })
}

/// A notification for a customer: always an in-app entry, and an email unless `email` is `None`.
#[derive(Clone)]
pub struct Notice {
    /// A stable name of the event (`password_changed`, …).
    pub kind: String,
    /// A short title for the in-app list.
    pub title: String,
    /// The email: its outbox id and its encrypted payload (the notification, which may carry a link).
    pub email: Option<([u8; 16], Vec<u8>)>,
}

/// A one-time ticket to store: the state between the two halves of a ceremony, or an emailed link.
#[derive(Clone)]
pub struct NewTicket {
    /// SHA-256 of the token.
    pub token_hash: [u8; 32],
    /// What it is for (`sign_in`, `enrol`, `verify_email`, `device`, `recovery`, `webauthn_register`, …).
    pub purpose: &'static str,
    /// Whom it is for (`customer:<id>`, `staff:<id>`).
    pub owner: String,
    /// Opaque state (such as a WebAuthn challenge).
    pub data: Option<Vec<u8>>,
    /// When it stops working.
    pub expires_at_ns: u64,
}

/// A ticket as stored.
#[derive(Clone)]
pub struct Ticket {
    /// Whom it is for.
    pub owner: String,
    /// Opaque state.
    pub data: Option<Vec<u8>>,
    /// Uses so far (for tickets that allow a few wrong answers).
    pub attempts: u32,
}

/// What a security command writes besides its own change, in the same transaction: audit entries, notifications
/// (in-app and email) and tickets.
#[derive(Clone, Default)]
pub struct Effects {
    /// Audit records.
    pub records: Vec<AuditRecord>,
    /// Notifications for the customer the command is about.
    pub notices: Vec<Notice>,
    /// Tickets to store.
    pub tickets: Vec<NewTicket>,
}

impl Effects {
    /// Effects of one audit record.
    pub fn audit(record: AuditRecord) -> Effects {
        Effects { records: vec![record], ..Effects::default() }
    }

    /// Adds a notification.
    pub fn notify(mut self, notice: Notice) -> Effects {
        self.notices.push(notice);
        self
    }

    /// Adds a ticket.
    pub fn ticket(mut self, ticket: NewTicket) -> Effects {
        self.tickets.push(ticket);
        self
    }
}

/// Writes `$effects` for customer `$customer` inside a transaction of [`on_backend!`].
macro_rules! write_effects {
    ($tx:ident, $sql:ident, $customer:expr, $now:expr, $effects:expr, $auditor:expr) => {{
        let effects: crate::customers::Effects = $effects;
        write_effects_of_many!($tx, $sql, $now, vec![($customer, effects)], $auditor)
    }};
}

/// Writes the effects of several commands (each `(customer, Effects)`) inside a transaction of [`on_backend!`]:
/// one multi-row insert for the notifications, one for the emails, one append to the audit log for all their
/// records, in order.
macro_rules! write_effects_of_many {
    ($tx:ident, $sql:ident, $now:expr, $many:expr, $auditor:expr) => {{
        let many: Vec<(i64, crate::customers::Effects)> = $many;
        let notices: Vec<(i64, &crate::customers::Notice)> =
            many.iter().flat_map(|(c, e)| e.notices.iter().map(move |n| (*c, n))).collect();
        insert_notices!($tx, $sql, $now, &notices);
        insert_tickets!($tx, $sql, many.iter().flat_map(|(_, e)| e.tickets.iter()));
        let records: Vec<rampart_audit::AuditRecord> = many.into_iter().flat_map(|(_, e)| e.records).collect();
        if !records.is_empty() {
            audit::append(&mut $tx, records, $auditor).await?;
        }
    }};
}

/// Inserts notices, each `(customer, &Notice)`, inside a transaction of [`on_backend!`]: the in-app notifications
/// in one multi-row insert, the emails in another.
macro_rules! insert_notices {
    ($tx:ident, $sql:ident, $now:expr, $notices:expr) => {{
        let notices: &[(i64, &crate::customers::Notice)] = $notices;
        let now: u64 = $now;
        for chunk in notices.chunks(crate::backend::ROWS_PER_INSERT) {
            let q = $sql(&format!(
                "INSERT INTO customer_notifications (customer_id, kind, title, created_at) VALUES {}",
                crate::backend::placeholders(chunk.len(), 4)
            ));
            let mut query = sqlx::query(&q);
            for (customer, n) in chunk {
                query = query.bind(*customer).bind(&n.kind).bind(&n.title).bind(ts(now));
            }
            query.execute(&mut *$tx.0).await?;
        }
        let emails: Vec<(i64, &crate::customers::Notice, &([u8; 16], Vec<u8>))> =
            notices.iter().filter_map(|(c, n)| n.email.as_ref().map(|e| (*c, *n, e))).collect();
        for chunk in emails.chunks(crate::backend::ROWS_PER_INSERT) {
            let rows: Vec<String> = (0..chunk.len())
                .map(|r| {
                    let b = r * 5;
                    format!("(${}, ${}, ${}, ${}, ${}, ${})", b + 1, b + 2, b + 3, b + 4, b + 5, b + 5)
                })
                .collect();
            let q = $sql(&format!(
                "INSERT INTO email_outbox (id, customer_id, kind, payload, created_at, next_attempt_at) VALUES {}",
                rows.join(", ")
            ));
            let mut query = sqlx::query(&q);
            for (customer, n, (id, payload)) in chunk {
                query = query.bind(id.to_vec()).bind(*customer).bind(&n.kind).bind(payload.clone()).bind(ts(now));
            }
            query.execute(&mut *$tx.0).await?;
        }
    }};
}

/// Inserts tickets (an iterator of `&NewTicket`) inside a transaction of [`on_backend!`].
macro_rules! insert_tickets {
    ($tx:ident, $sql:ident, $tickets:expr) => {{
        for t in $tickets {
            let t: &crate::customers::NewTicket = t;
            sqlx::query(&$sql(
                "INSERT INTO auth_tickets (token_hash, purpose, owner, data, expires_at) VALUES ($1, $2, $3, $4, $5)",
            ))
            .bind(t.token_hash.to_vec())
            .bind(t.purpose)
            .bind(&t.owner)
            .bind(t.data.clone())
            .bind(ts(t.expires_at_ns))
            .execute(&mut *$tx.0)
            .await?;
        }
    }};
}

/// Suspends a customer's withdrawals until `$1` for reason `$2` (customer `$3`): a later lock extends an earlier one,
/// never shortens it.
pub(crate) const EXTEND_WITHDRAWAL_LOCK: &str = "UPDATE customers SET withdrawal_lock_until = $1, \
     withdrawal_lock_reason = $2 WHERE id = $3 AND (withdrawal_lock_until IS NULL OR withdrawal_lock_until < $1)";

/// A new customer to create.
pub struct NewCustomer<'a> {
    /// The random public handle.
    pub handle: [u8; 16],
    /// The keyed blind index of the normalised email.
    pub email_index: &'a [u8; 32],
    /// The encrypted email.
    pub email: &'a [u8],
    /// Argon2id PHC string.
    pub password_hash: &'a str,
    /// The TOTP secret to enrol, encrypted.
    pub totp_pending: &'a [u8],
}

/// A device a customer signs in from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// The id.
    pub id: i64,
    /// The owner.
    pub customer_id: i64,
    /// The user agent at first sight.
    pub user_agent: String,
    /// The last address seen.
    pub ip: String,
    /// The country, once geolocation exists.
    pub country: Option<String>,
    /// When the owner confirmed it (through the emailed link, or by signing up from it).
    pub confirmed_at_ns: Option<u64>,
    /// When it was revoked.
    pub revoked_at_ns: Option<u64>,
    /// First seen.
    pub first_seen_ns: u64,
    /// Last seen.
    pub last_seen_ns: u64,
}

/// A WebAuthn credential row.
type CredentialRow = (Vec<u8>, String, String, Vec<u8>, i64, i64, Option<i64>);
/// An outbox row.
type OutboxRow = (Vec<u8>, i64, String, Vec<u8>, i64, i64);

type DeviceRow = (i64, i64, String, String, Option<String>, Option<i64>, Option<i64>, i64, i64);

const DEVICE_COLUMNS: &str =
    "id, customer_id, user_agent, ip, country, confirmed_at, revoked_at, first_seen_at, last_seen_at";

fn device(row: DeviceRow) -> DeviceRecord {
    let (id, customer_id, user_agent, ip, country, confirmed, revoked, first, last) = row;
    DeviceRecord {
        id,
        customer_id,
        user_agent,
        ip,
        country,
        confirmed_at_ns: confirmed.map(ns),
        revoked_at_ns: revoked.map(ns),
        first_seen_ns: ns(first),
        last_seen_ns: ns(last),
    }
}

/// A customer's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerSession {
    /// SHA-256 of the token.
    pub token_hash: [u8; 32],
    /// The customer.
    pub customer_id: i64,
    /// The device it is bound to.
    pub device_id: i64,
    /// When it began.
    pub created_at_ns: u64,
    /// When it was last used.
    pub last_seen_ns: u64,
    /// When it ends whatever happens.
    pub expires_at_ns: u64,
    /// When a second factor was last proven in it.
    pub second_factor_at_ns: u64,
    /// Which (`totp`, `webauthn`, `backup_code`).
    pub second_factor: String,
}

type SessionRow = (Vec<u8>, i64, i64, i64, i64, i64, i64, String);

const SESSION_COLUMNS: &str =
    "token_hash, customer_id, device_id, created_at, last_seen_at, expires_at, second_factor_at, second_factor";

fn session(row: SessionRow) -> Result<CustomerSession, StoreError> {
    let (hash, customer_id, device_id, created, last, expires, factor_at, factor) = row;
    Ok(CustomerSession {
        token_hash: hash.try_into().map_err(|_| StoreError::Corrupt("session token hash".into()))?,
        customer_id,
        device_id,
        created_at_ns: ns(created),
        last_seen_ns: ns(last),
        expires_at_ns: ns(expires),
        second_factor_at_ns: ns(factor_at),
        second_factor: factor,
    })
}

/// A new session to store.
pub struct NewSession {
    /// SHA-256 of the token.
    pub token_hash: [u8; 32],
    /// The device.
    pub device_id: i64,
    /// When it ends whatever happens.
    pub expires_at_ns: u64,
    /// The second factor proven at sign-in.
    pub second_factor: &'static str,
}

/// Failed sign-ins of one account or one source address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleState {
    /// Consecutive failures (within the counting window).
    pub failures: u32,
    /// When the last one happened.
    pub last_failure_ns: u64,
    /// No attempt is considered before then.
    pub blocked_until_ns: u64,
}

/// An API key as stored; the secret is a ciphertext.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// The key id (`rak_…`).
    pub id: String,
    /// The owner.
    pub customer_id: i64,
    /// The owner's label.
    pub label: String,
    /// The encrypted secret.
    pub secret: Vec<u8>,
    /// Comma-separated scopes.
    pub scopes: String,
    /// Comma-separated addresses and CIDR ranges.
    pub allow_list: String,
    /// Created.
    pub created_at_ns: u64,
    /// Expires.
    pub expires_at_ns: u64,
    /// Revoked.
    pub revoked_at_ns: Option<u64>,
    /// Last used.
    pub last_used_ns: Option<u64>,
}

impl std::fmt::Debug for ApiKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyRecord")
            .field("id", &self.id)
            .field("customer_id", &self.customer_id)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// `SELECT` of an API key's columns (0–9) and its customer's (10–21), from `api_keys k JOIN customers c`.
fn key_and_customer_select() -> String {
    let k: Vec<String> = API_KEY_COLUMNS.split(',').map(|c| format!("k.{}", c.trim())).collect();
    let c: Vec<String> = CUSTOMER_COLUMNS.split(',').map(|c| format!("c.{}", c.trim())).collect();
    format!("SELECT {}, {} FROM api_keys k JOIN customers c ON c.id = k.customer_id", k.join(", "), c.join(", "))
}

/// Decodes a row of [`key_and_customer_select`] (on either backend's row type) into `(ApiKeyRecord, CustomerRecord)`.
macro_rules! key_and_customer {
    ($r:expr) => {{
        use sqlx::Row;
        let r = &$r;
        let key: ApiKeyRow = (
            r.try_get(0)?,
            r.try_get(1)?,
            r.try_get(2)?,
            r.try_get(3)?,
            r.try_get(4)?,
            r.try_get(5)?,
            r.try_get(6)?,
            r.try_get(7)?,
            r.try_get(8)?,
            r.try_get(9)?,
        );
        let owner: CustomerRow = (
            r.try_get(10)?,
            r.try_get(11)?,
            r.try_get(12)?,
            r.try_get(13)?,
            r.try_get(14)?,
            r.try_get(15)?,
            r.try_get(16)?,
            r.try_get(17)?,
            r.try_get(18)?,
            r.try_get(19)?,
            r.try_get(20)?,
            r.try_get(21)?,
        );
        (api_key(key), customer(owner)?)
    }};
}

/// What admitting one signed API request found ([`Store::admit_api_requests`]).
#[derive(Debug, Clone)]
pub struct Admission {
    /// Whether its signature was spent now (`false`: a replay).
    pub fresh: bool,
    /// Its key with the key's customer, as they are now (`None`: no such key).
    pub key: Option<(ApiKeyRecord, CustomerRecord)>,
}

type ApiKeyRow = (String, i64, String, Vec<u8>, String, String, i64, i64, Option<i64>, Option<i64>);

const API_KEY_COLUMNS: &str =
    "id, customer_id, label, secret, scopes, allow_list, created_at, expires_at, revoked_at, last_used_at";

fn api_key(row: ApiKeyRow) -> ApiKeyRecord {
    let (id, customer_id, label, secret, scopes, allow_list, created, expires, revoked, used) = row;
    ApiKeyRecord {
        id,
        customer_id,
        label,
        secret,
        scopes,
        allow_list,
        created_at_ns: ns(created),
        expires_at_ns: ns(expires),
        revoked_at_ns: revoked.map(ns),
        last_used_ns: used.map(ns),
    }
}

/// An in-app notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationRecord {
    /// The id.
    pub id: i64,
    /// A stable name of the event.
    pub kind: String,
    /// The title.
    pub title: String,
    /// When.
    pub created_at_ns: u64,
    /// When the customer read it.
    pub read_at_ns: Option<u64>,
}

/// An email waiting in the outbox.
#[derive(Clone)]
pub struct OutboxEmail {
    /// The id (also the associated data of its payload).
    pub id: [u8; 16],
    /// The customer it is for.
    pub customer_id: i64,
    /// The event.
    pub kind: String,
    /// The encrypted notification.
    pub payload: Vec<u8>,
    /// Deliveries tried so far.
    pub attempts: u32,
    /// When the event happened (the email says so, however late it is delivered).
    pub created_at_ns: u64,
}

/// A WebAuthn credential as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct WebauthnCredentialRecord {
    /// The credential id.
    pub credential_id: Vec<u8>,
    /// `customer:<id>` or `staff:<id>`.
    pub owner: String,
    /// The owner's name for it.
    pub name: String,
    /// The serialised credential.
    pub data: Vec<u8>,
    /// The last signature counter seen.
    pub counter: u32,
    /// Registered.
    pub created_at_ns: u64,
    /// Last used.
    pub last_used_ns: Option<u64>,
}

impl std::fmt::Debug for WebauthnCredentialRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebauthnCredentialRecord")
            .field("owner", &self.owner)
            .field("name", &self.name)
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

/// A change to a customer's security settings, applied with its effects in one transaction.
pub enum SecurityChange<'a> {
    /// A new password hash; the other sessions end (all of them if `keep_session` is `None`).
    Password {
        /// The new Argon2id hash.
        hash: &'a str,
        /// The session that made the change, which stays signed in.
        keep_session: Option<[u8; 32]>,
    },
    /// A new (encrypted) anti-phishing code.
    AntiPhishingCode(&'a [u8]),
    /// A new TOTP secret to enrol (encrypted), replacing any pending one.
    TotpPending(&'a [u8]),
    /// The pending TOTP secret becomes the factor; `step` is the step that proved it.
    TotpConfirmed {
        /// The step that proved it (accepted once, like any other).
        step: u64,
    },
    /// The TOTP factor is removed.
    TotpRemoved,
    /// New backup codes replace the old ones.
    BackupCodes(&'a [[u8; 32]]),
    /// The email address was verified.
    EmailVerified,
    /// A new email address (encrypted, with its blind index), verified by the link that led here.
    Email {
        /// Blind index.
        index: &'a [u8; 32],
        /// Ciphertext.
        email: &'a [u8],
    },
    /// A WebAuthn credential is added.
    WebauthnAdded(&'a WebauthnCredentialRecord),
    /// A WebAuthn credential is removed.
    WebauthnRemoved(&'a [u8]),
    /// A device is confirmed.
    DeviceConfirmed(i64),
    /// A device is revoked, and its sessions end.
    DeviceRevoked(i64),
    /// A session ends.
    SessionRevoked([u8; 32]),
    /// The account is unlocked (by its owner with a second factor, or by support); every session ends and the
    /// account's failure counter is cleared (`email_index`).
    Recovered {
        /// The new password hash, if the recovery set one.
        password_hash: Option<&'a str>,
        /// Remove every second factor (support's recovery of an owner who lost them); the owner enrols anew.
        reset_factors: bool,
        /// The blind index whose account counter is cleared.
        email_index: &'a [u8; 32],
    },
    /// The account is locked (too many failed sign-ins).
    Locked,
    /// Nothing but the effects.
    None,
}

impl Store {
    /// Creates a customer with its pending TOTP secret and its first device (confirmed: the owner signs up from it).
    /// Returns `None` if the email is taken.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_customer(
        &self,
        new: &NewCustomer<'_>,
        device_token_hash: &[u8; 32],
        user_agent: &str,
        ip: &str,
        now_ns: u64,
        auditor: &Auditor<'_>,
        effects: impl FnOnce(i64) -> Effects,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        on_backend!(self, |tx, sql| {
            let taken: Option<i64> = sqlx::query_scalar(&sql("SELECT id FROM customers WHERE email_index = $1"))
                .bind(new.email_index.to_vec())
                .fetch_optional(&mut *tx.0)
                .await?;
            if taken.is_some() {
                return Ok(None);
            }
            let id: Result<i64, sqlx::Error> = sqlx::query_scalar(&sql(
                "INSERT INTO customers (handle, email_index, email, password_hash, status, totp_pending, created_at) \
                 VALUES ($1, $2, $3, $4, 'active', $5, $6) RETURNING id",
            ))
            .bind(new.handle.to_vec())
            .bind(new.email_index.to_vec())
            .bind(new.email.to_vec())
            .bind(new.password_hash)
            .bind(new.totp_pending.to_vec())
            .bind(ts(now_ns))
            .fetch_one(&mut *tx.0)
            .await;
            // Two sign-ups with the same email at once: the loser's insert breaks the unique index.
            let id: i64 = match id {
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => return Ok(None),
                other => other?,
            };
            let device_id: i64 = sqlx::query_scalar(&sql(
                "INSERT INTO customer_devices (customer_id, token_hash, user_agent, ip, confirmed_at, first_seen_at, \
                 last_seen_at) VALUES ($1, $2, $3, $4, $5, $5, $5) RETURNING id",
            ))
            .bind(id)
            .bind(device_token_hash.to_vec())
            .bind(user_agent)
            .bind(ip)
            .bind(ts(now_ns))
            .fetch_one(&mut *tx.0)
            .await?;
            write_effects!(tx, sql, id, now_ns, effects(id), auditor);
            Some((id, device_id))
        })
        .pipe(Ok)
    }

    /// The customer whose email has this blind index.
    pub async fn customer_by_email_index(&self, index: &[u8; 32]) -> Result<Option<CustomerRecord>, StoreError> {
        on_reader!(self, |pool, sql| {
            let q = sql(&format!("SELECT {CUSTOMER_COLUMNS} FROM customers WHERE email_index = $1"));
            let row: Option<CustomerRow> = sqlx::query_as(&q).bind(index.to_vec()).fetch_optional(pool).await?;
            row.map(customer).transpose()
        })
    }

    /// The customer with this public handle.
    pub async fn customer_by_handle(&self, handle: &[u8; 16]) -> Result<Option<CustomerRecord>, StoreError> {
        on_reader!(self, |pool, sql| {
            let q = sql(&format!("SELECT {CUSTOMER_COLUMNS} FROM customers WHERE handle = $1"));
            let row: Option<CustomerRow> = sqlx::query_as(&q).bind(handle.to_vec()).fetch_optional(pool).await?;
            row.map(customer).transpose()
        })
    }

    /// The customer with this id.
    pub async fn customer_by_id(&self, id: i64) -> Result<Option<CustomerRecord>, StoreError> {
        on_reader!(self, |pool, sql| {
            let q = sql(&format!("SELECT {CUSTOMER_COLUMNS} FROM customers WHERE id = $1"));
            let row: Option<CustomerRow> = sqlx::query_as(&q).bind(id).fetch_optional(pool).await?;
            row.map(customer).transpose()
        })
    }

    /// Every customer's id, in order (for re-encryption and screening).
    pub async fn customer_ids(&self) -> Result<Vec<i64>, StoreError> {
        on_reader!(self, |pool, sql| {
            Ok(sqlx::query_scalar(&sql("SELECT id FROM customers ORDER BY id")).fetch_all(pool).await?)
        })
    }

    /// Applies a security change to customer `id` with its effects, in one transaction. Returns `false` (and writes
    /// nothing) if the change found nothing to change: no such customer, credential, device or session, or a TOTP
    /// confirmation whose step was already used.
    pub async fn apply_security_change(
        &self,
        id: i64,
        change: SecurityChange<'_>,
        withdrawal_lock: Option<(u64, &str)>,
        now_ns: u64,
        auditor: &Auditor<'_>,
        effects: Effects,
    ) -> Result<bool, StoreError> {
        on_backend!(self, |tx, sql| {
            let changed = match &change {
                SecurityChange::Password { hash, keep_session } => {
                    let n = sqlx::query(&sql("UPDATE customers SET password_hash = $1 WHERE id = $2"))
                        .bind(*hash)
                        .bind(id)
                        .execute(&mut *tx.0)
                        .await?
                        .rows_affected();
                    sqlx::query(&sql("DELETE FROM customer_sessions WHERE customer_id = $1 AND token_hash <> $2"))
                        .bind(id)
                        .bind(keep_session.map(|h| h.to_vec()).unwrap_or_default())
                        .execute(&mut *tx.0)
                        .await?;
                    n == 1
                }
                SecurityChange::AntiPhishingCode(code) => {
                    sqlx::query(&sql("UPDATE customers SET anti_phishing_code = $1 WHERE id = $2"))
                        .bind(code.to_vec())
                        .bind(id)
                        .execute(&mut *tx.0)
                        .await?
                        .rows_affected()
                        == 1
                }
                SecurityChange::TotpPending(secret) => {
                    sqlx::query(&sql("UPDATE customers SET totp_pending = $1 WHERE id = $2"))
                        .bind(secret.to_vec())
                        .bind(id)
                        .execute(&mut *tx.0)
                        .await?
                        .rows_affected()
                        == 1
                }
                SecurityChange::TotpConfirmed { step } => {
                    sqlx::query(&sql(
                        "UPDATE customers SET totp_secret = totp_pending, totp_pending = NULL, totp_last_step = $1 \
                         WHERE id = $2 AND totp_pending IS NOT NULL \
                         AND (totp_last_step IS NULL OR totp_last_step < $1)",
                    ))
                    .bind(i64::try_from(*step).unwrap_or(i64::MAX))
                    .bind(id)
                    .execute(&mut *tx.0)
                    .await?
                    .rows_affected()
                        == 1
                }
                SecurityChange::TotpRemoved => {
                    sqlx::query(&sql("UPDATE customers SET totp_secret = NULL, totp_pending = NULL WHERE id = $1 \
                         AND totp_secret IS NOT NULL"))
                    .bind(id)
                    .execute(&mut *tx.0)
                    .await?
                    .rows_affected()
                        == 1
                }
                SecurityChange::BackupCodes(hashes) => {
                    sqlx::query(&sql("DELETE FROM customer_backup_codes WHERE customer_id = $1"))
                        .bind(id)
                        .execute(&mut *tx.0)
                        .await?;
                    for hash in *hashes {
                        sqlx::query(&sql("INSERT INTO customer_backup_codes (customer_id, code_hash) VALUES ($1, $2)"))
                            .bind(id)
                            .bind(hash.to_vec())
                            .execute(&mut *tx.0)
                            .await?;
                    }
                    true
                }
                SecurityChange::EmailVerified => {
                    sqlx::query(&sql(
                        "UPDATE customers SET email_verified_at = $1 WHERE id = $2 AND email_verified_at IS NULL",
                    ))
                    .bind(ts(now_ns))
                    .bind(id)
                    .execute(&mut *tx.0)
                    .await?
                    .rows_affected()
                        == 1
                }
                SecurityChange::Email { index, email } => {
                    let r = sqlx::query(&sql(
                        "UPDATE customers SET email_index = $1, email = $2, email_verified_at = $3 WHERE id = $4",
                    ))
                    .bind(index.to_vec())
                    .bind(email.to_vec())
                    .bind(ts(now_ns))
                    .bind(id)
                    .execute(&mut *tx.0)
                    .await;
                    match r {
                        // Someone else took the address meanwhile.
                        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => return Ok(false),
                        other => other?.rows_affected() == 1,
                    }
                }
                SecurityChange::WebauthnAdded(c) => {
                    let r = sqlx::query(&sql(
                        "INSERT INTO webauthn_credentials (credential_id, owner, name, data, counter, created_at) \
                         VALUES ($1, $2, $3, $4, $5, $6)",
                    ))
                    .bind(c.credential_id.clone())
                    .bind(&c.owner)
                    .bind(&c.name)
                    .bind(c.data.clone())
                    .bind(i64::from(c.counter))
                    .bind(ts(now_ns))
                    .execute(&mut *tx.0)
                    .await;
                    match r {
                        // The credential is registered already (to anyone): nothing changes.
                        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => return Ok(false),
                        other => other?,
                    };
                    true
                }
                SecurityChange::WebauthnRemoved(credential_id) => {
                    sqlx::query(&sql("DELETE FROM webauthn_credentials WHERE credential_id = $1 AND owner = $2"))
                        .bind(credential_id.to_vec())
                        .bind(format!("customer:{id}"))
                        .execute(&mut *tx.0)
                        .await?
                        .rows_affected()
                        == 1
                }
                SecurityChange::DeviceConfirmed(device) => {
                    sqlx::query(&sql(
                        "UPDATE customer_devices SET confirmed_at = $1 WHERE id = $2 AND customer_id = $3 \
                         AND confirmed_at IS NULL AND revoked_at IS NULL",
                    ))
                    .bind(ts(now_ns))
                    .bind(device)
                    .bind(id)
                    .execute(&mut *tx.0)
                    .await?
                    .rows_affected()
                        == 1
                }
                SecurityChange::DeviceRevoked(device) => {
                    let n = sqlx::query(&sql(
                        "UPDATE customer_devices SET revoked_at = $1 WHERE id = $2 AND customer_id = $3 \
                         AND revoked_at IS NULL",
                    ))
                    .bind(ts(now_ns))
                    .bind(device)
                    .bind(id)
                    .execute(&mut *tx.0)
                    .await?
                    .rows_affected();
                    sqlx::query(&sql("DELETE FROM customer_sessions WHERE device_id = $1 AND customer_id = $2"))
                        .bind(device)
                        .bind(id)
                        .execute(&mut *tx.0)
                        .await?;
                    n == 1
                }
                SecurityChange::SessionRevoked(hash) => {
                    sqlx::query(&sql("DELETE FROM customer_sessions WHERE token_hash = $1 AND customer_id = $2"))
                        .bind(hash.to_vec())
                        .bind(id)
                        .execute(&mut *tx.0)
                        .await?
                        .rows_affected()
                        == 1
                }
                SecurityChange::Recovered { password_hash, reset_factors, email_index } => {
                    let n = sqlx::query(&sql(
                        "UPDATE customers SET status = 'active', password_hash = COALESCE($1, password_hash) \
                         WHERE id = $2 AND status <> 'frozen'",
                    ))
                    .bind(*password_hash)
                    .bind(id)
                    .execute(&mut *tx.0)
                    .await?
                    .rows_affected();
                    if n == 1 {
                        // Whoever held the account before the recovery loses every way in: sessions and API keys.
                        sqlx::query(&sql("DELETE FROM customer_sessions WHERE customer_id = $1"))
                            .bind(id)
                            .execute(&mut *tx.0)
                            .await?;
                        sqlx::query(&sql(
                            "UPDATE api_keys SET revoked_at = $1 WHERE customer_id = $2 AND revoked_at IS NULL",
                        ))
                        .bind(ts(now_ns))
                        .bind(id)
                        .execute(&mut *tx.0)
                        .await?;
                        sqlx::query(&sql("DELETE FROM auth_throttle WHERE scope = 'account' AND subject = $1"))
                            .bind(hex::encode(email_index))
                            .execute(&mut *tx.0)
                            .await?;
                        if *reset_factors {
                            sqlx::query(&sql(
                                "UPDATE customers SET totp_secret = NULL, totp_pending = NULL WHERE id = $1",
                            ))
                            .bind(id)
                            .execute(&mut *tx.0)
                            .await?;
                            sqlx::query(&sql("DELETE FROM customer_backup_codes WHERE customer_id = $1"))
                                .bind(id)
                                .execute(&mut *tx.0)
                                .await?;
                            sqlx::query(&sql("DELETE FROM webauthn_credentials WHERE owner = $1"))
                                .bind(format!("customer:{id}"))
                                .execute(&mut *tx.0)
                                .await?;
                        }
                    }
                    n == 1
                }
                SecurityChange::Locked => {
                    let n =
                        sqlx::query(&sql("UPDATE customers SET status = 'locked' WHERE id = $1 AND status = 'active'"))
                            .bind(id)
                            .execute(&mut *tx.0)
                            .await?
                            .rows_affected();
                    // Sign-in stops; sessions and API keys the owner already has keep working (a stranger's guesses
                    // must not cut the owner off), but sign-in tickets issued before the lock die with it.
                    sqlx::query(&sql("DELETE FROM auth_tickets WHERE owner = $1 AND purpose = 'sign_in'"))
                        .bind(format!("customer:{id}"))
                        .execute(&mut *tx.0)
                        .await?;
                    n == 1
                }
                SecurityChange::None => true,
            };
            if !changed {
                return Ok(false);
            }
            if let Some((until, reason)) = withdrawal_lock {
                // A later lock extends an earlier one; never shortens it.
                sqlx::query(&sql(EXTEND_WITHDRAWAL_LOCK))
                    .bind(ts(until))
                    .bind(reason)
                    .bind(id)
                    .execute(&mut *tx.0)
                    .await?;
            }
            write_effects!(tx, sql, id, now_ns, effects, auditor);
            true
        })
        .pipe(Ok)
    }

    /// Records that TOTP step `step` was used by customer `id`, atomically: `false` if that step (or a later one)
    /// was already used, so a code can never be replayed, even on another node.
    pub async fn accept_customer_totp_step(&self, id: i64, step: u64) -> Result<bool, StoreError> {
        let step = i64::try_from(step).unwrap_or(i64::MAX);
        on_backend!(self, |tx, sql| {
            sqlx::query(&sql("UPDATE customers SET totp_last_step = $1 WHERE id = $2 \
                 AND (totp_last_step IS NULL OR totp_last_step < $1)"))
            .bind(step)
            .bind(id)
            .execute(&mut *tx.0)
            .await?
            .rows_affected()
                == 1
        })
        .pipe(Ok)
    }

    /// Marks a backup code used, atomically: `false` if it is not one of the customer's unused codes.
    pub async fn use_backup_code(&self, id: i64, hash: &[u8; 32], now_ns: u64) -> Result<bool, StoreError> {
        on_backend!(self, |tx, sql| {
            sqlx::query(&sql(
                "UPDATE customer_backup_codes SET used_at = $1 WHERE customer_id = $2 AND code_hash = $3 \
                 AND used_at IS NULL",
            ))
            .bind(ts(now_ns))
            .bind(id)
            .bind(hash.to_vec())
            .execute(&mut *tx.0)
            .await?
            .rows_affected()
                == 1
        })
        .pipe(Ok)
    }

    /// How many unused backup codes the customer has left.
    pub async fn backup_codes_left(&self, id: i64) -> Result<u32, StoreError> {
        on_reader!(self, |pool, sql| {
            let n: i64 = sqlx::query_scalar(&sql(
                "SELECT count(*) FROM customer_backup_codes WHERE customer_id = $1 AND used_at IS NULL",
            ))
            .bind(id)
            .fetch_one(pool)
            .await?;
            Ok(u32::try_from(n).unwrap_or(0))
        })
    }

    /// Stores tickets on their own (with audit records, if any).
    pub async fn store_tickets(&self, auditor: &Auditor<'_>, effects: Effects) -> Result<(), StoreError> {
        on_backend!(self, |tx, sql| {
            write_effects!(tx, sql, 0i64, 0u64, effects, auditor);
        });
        Ok(())
    }

    /// Consumes a ticket: returns it and deletes it, atomically, if it exists for `purpose` and has not expired.
    pub async fn take_ticket(
        &self,
        token_hash: &[u8; 32],
        purpose: &str,
        now_ns: u64,
    ) -> Result<Option<Ticket>, StoreError> {
        on_backend!(self, |tx, sql| {
            let row: Option<(String, Option<Vec<u8>>, i64)> = sqlx::query_as(&sql(
                "DELETE FROM auth_tickets WHERE token_hash = $1 AND purpose = $2 AND expires_at > $3 \
                 RETURNING owner, data, attempts",
            ))
            .bind(token_hash.to_vec())
            .bind(purpose)
            .bind(ts(now_ns))
            .fetch_optional(&mut *tx.0)
            .await?;
            row.map(|(owner, data, attempts)| Ticket { owner, data, attempts: u32::try_from(attempts).unwrap_or(0) })
        })
        .pipe(Ok)
    }

    /// Counts one use of a ticket that allows up to `attempts_max` (a sign-in ticket tolerates a mistyped code):
    /// returns it if it was still valid, atomically, so that concurrent guesses share the same budget.
    pub async fn use_ticket(
        &self,
        token_hash: &[u8; 32],
        purpose: &str,
        attempts_max: u32,
        now_ns: u64,
    ) -> Result<Option<Ticket>, StoreError> {
        on_backend!(self, |tx, sql| {
            let row: Option<(String, Option<Vec<u8>>, i64)> = sqlx::query_as(&sql(
                "UPDATE auth_tickets SET attempts = attempts + 1 WHERE token_hash = $1 AND purpose = $2 \
                 AND expires_at > $3 AND attempts < $4 RETURNING owner, data, attempts",
            ))
            .bind(token_hash.to_vec())
            .bind(purpose)
            .bind(ts(now_ns))
            .bind(i64::from(attempts_max))
            .fetch_optional(&mut *tx.0)
            .await?;
            row.map(|(owner, data, attempts)| Ticket { owner, data, attempts: u32::try_from(attempts).unwrap_or(0) })
        })
        .pipe(Ok)
    }

    /// A live ticket, read without using it up (to start a ceremony on it).
    pub async fn peek_ticket(
        &self,
        token_hash: &[u8; 32],
        purpose: &str,
        now_ns: u64,
    ) -> Result<Option<Ticket>, StoreError> {
        on_reader!(self, |pool, sql| {
            let row: Option<(String, Option<Vec<u8>>, i64)> = sqlx::query_as(&sql(
                "SELECT owner, data, attempts FROM auth_tickets WHERE token_hash = $1 AND purpose = $2 \
                 AND expires_at > $3",
            ))
            .bind(token_hash.to_vec())
            .bind(purpose)
            .bind(ts(now_ns))
            .fetch_optional(pool)
            .await?;
            Ok(row.map(|(owner, data, attempts)| Ticket {
                owner,
                data,
                attempts: u32::try_from(attempts).unwrap_or(0),
            }))
        })
    }

    /// Stores a ceremony's state in a live ticket (a WebAuthn challenge issued for a sign-in ticket).
    pub async fn set_ticket_data(&self, token_hash: &[u8; 32], purpose: &str, data: &[u8]) -> Result<bool, StoreError> {
        on_backend!(self, |tx, sql| {
            sqlx::query(&sql("UPDATE auth_tickets SET data = $1 WHERE token_hash = $2 AND purpose = $3"))
                .bind(data.to_vec())
                .bind(token_hash.to_vec())
                .bind(purpose)
                .execute(&mut *tx.0)
                .await?
                .rows_affected()
                == 1
        })
        .pipe(Ok)
    }

    /// Takes a ceremony's state out of a live ticket, atomically: of two requests racing with the same ticket, one
    /// gets the state and the other nothing, and a refused answer cannot be followed by another to the same challenge.
    pub async fn take_ticket_data(
        &self,
        token_hash: &[u8; 32],
        purpose: &str,
        now_ns: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        // RETURNING gives the new (NULL) value, so the old one is read under the row lock first (SQLite's write
        // transactions are serial anyway).
        let lock = if matches!(self, Store::Postgres(_)) { " FOR UPDATE" } else { "" };
        on_backend!(self, |tx, sql| {
            let q = sql(&format!(
                "SELECT data FROM auth_tickets WHERE token_hash = $1 AND purpose = $2 AND expires_at > $3{lock}"
            ));
            let data: Option<Option<Vec<u8>>> = sqlx::query_scalar(&q)
                .bind(token_hash.to_vec())
                .bind(purpose)
                .bind(ts(now_ns))
                .fetch_optional(&mut *tx.0)
                .await?;
            let data = data.flatten();
            if data.is_some() {
                sqlx::query(&sql("UPDATE auth_tickets SET data = NULL WHERE token_hash = $1"))
                    .bind(token_hash.to_vec())
                    .execute(&mut *tx.0)
                    .await?;
            }
            data
        })
        .pipe(Ok)
    }

    /// Deletes every ticket of `owner` for `purpose` (so that only the newest sign-in or recovery ticket lives).
    pub async fn delete_tickets_of(&self, owner: &str, purpose: &str) -> Result<u64, StoreError> {
        on_backend!(self, |tx, sql| {
            sqlx::query(&sql("DELETE FROM auth_tickets WHERE owner = $1 AND purpose = $2"))
                .bind(owner)
                .bind(purpose)
                .execute(&mut *tx.0)
                .await?
                .rows_affected()
        })
        .pipe(Ok)
    }

    /// Deletes a ticket (after its ceremony finished).
    pub async fn delete_ticket(&self, token_hash: &[u8; 32]) -> Result<(), StoreError> {
        on_backend!(self, |tx, sql| {
            sqlx::query(&sql("DELETE FROM auth_tickets WHERE token_hash = $1"))
                .bind(token_hash.to_vec())
                .execute(&mut *tx.0)
                .await?;
        });
        Ok(())
    }

    /// Deletes expired tickets and spent API signatures; returns how many rows went.
    pub async fn purge_expired_auth(&self, now_ns: u64) -> Result<u64, StoreError> {
        on_backend!(self, |tx, sql| {
            let a = sqlx::query(&sql("DELETE FROM auth_tickets WHERE expires_at <= $1"))
                .bind(ts(now_ns))
                .execute(&mut *tx.0)
                .await?
                .rows_affected();
            let b = sqlx::query(&sql("DELETE FROM api_signatures WHERE expires_at <= $1"))
                .bind(ts(now_ns))
                .execute(&mut *tx.0)
                .await?
                .rows_affected();
            a + b
        })
        .pipe(Ok)
    }

    /// The device with this token, if it belongs to the customer and is not revoked.
    pub async fn device_by_token(
        &self,
        customer_id: i64,
        token_hash: &[u8; 32],
    ) -> Result<Option<DeviceRecord>, StoreError> {
        on_reader!(self, |pool, sql| {
            let q = sql(&format!(
                "SELECT {DEVICE_COLUMNS} FROM customer_devices WHERE token_hash = $1 AND customer_id = $2 \
                 AND revoked_at IS NULL"
            ));
            let row: Option<DeviceRow> =
                sqlx::query_as(&q).bind(token_hash.to_vec()).bind(customer_id).fetch_optional(pool).await?;
            Ok(row.map(device))
        })
    }

    /// A customer's devices, newest first.
    pub async fn devices(&self, customer_id: i64) -> Result<Vec<DeviceRecord>, StoreError> {
        on_reader!(self, |pool, sql| {
            let q =
                sql(&format!("SELECT {DEVICE_COLUMNS} FROM customer_devices WHERE customer_id = $1 ORDER BY id DESC"));
            let rows: Vec<DeviceRow> = sqlx::query_as(&q).bind(customer_id).fetch_all(pool).await?;
            Ok(rows.into_iter().map(device).collect())
        })
    }

    /// Records a new, unconfirmed device and its effects (the emailed confirmation link); returns its id.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_device(
        &self,
        customer_id: i64,
        token_hash: &[u8; 32],
        user_agent: &str,
        ip: &str,
        now_ns: u64,
        auditor: &Auditor<'_>,
        effects: impl FnOnce(i64) -> Effects,
    ) -> Result<i64, StoreError> {
        on_backend!(self, |tx, sql| {
            let device_id: i64 = sqlx::query_scalar(&sql(
                "INSERT INTO customer_devices (customer_id, token_hash, user_agent, ip, first_seen_at, last_seen_at) \
                 VALUES ($1, $2, $3, $4, $5, $5) RETURNING id",
            ))
            .bind(customer_id)
            .bind(token_hash.to_vec())
            .bind(user_agent)
            .bind(ip)
            .bind(ts(now_ns))
            .fetch_one(&mut *tx.0)
            .await?;
            write_effects!(tx, sql, customer_id, now_ns, effects(device_id), auditor);
            device_id
        })
        .pipe(Ok)
    }

    /// Starts a session on a confirmed device, with its effects (the sign-in's audit entry, notifications).
    pub async fn create_customer_session(
        &self,
        customer_id: i64,
        new: &NewSession,
        ip: &str,
        now_ns: u64,
        auditor: &Auditor<'_>,
        effects: Effects,
    ) -> Result<(), StoreError> {
        on_backend!(self, |tx, sql| {
            sqlx::query(&sql(
                "INSERT INTO customer_sessions (token_hash, customer_id, device_id, created_at, last_seen_at, \
                 expires_at, second_factor_at, second_factor) VALUES ($1, $2, $3, $4, $4, $5, $4, $6)",
            ))
            .bind(new.token_hash.to_vec())
            .bind(customer_id)
            .bind(new.device_id)
            .bind(ts(now_ns))
            .bind(ts(new.expires_at_ns))
            .bind(new.second_factor)
            .execute(&mut *tx.0)
            .await?;
            sqlx::query(&sql("UPDATE customer_devices SET last_seen_at = $1, ip = $2 WHERE id = $3"))
                .bind(ts(now_ns))
                .bind(ip)
                .bind(new.device_id)
                .execute(&mut *tx.0)
                .await?;
            write_effects!(tx, sql, customer_id, now_ns, effects, auditor);
        });
        Ok(())
    }

    /// The live session with this token: not past its absolute end, not idle for longer than `idle_ns`. Touches
    /// its last use when it was last touched more than `touch_after_ns` ago (so that a busy session does not write
    /// on every request).
    pub async fn customer_session(
        &self,
        token_hash: &[u8; 32],
        now_ns: u64,
        idle_ns: u64,
        touch_after_ns: u64,
    ) -> Result<Option<CustomerSession>, StoreError> {
        let idle_since = ts(now_ns.saturating_sub(idle_ns));
        let found = on_reader!(self, |pool, sql| {
            let q = sql(&format!(
                "SELECT {SESSION_COLUMNS} FROM customer_sessions WHERE token_hash = $1 AND expires_at > $2 \
                 AND last_seen_at > $3"
            ));
            let row: Option<SessionRow> = sqlx::query_as(&q)
                .bind(token_hash.to_vec())
                .bind(ts(now_ns))
                .bind(idle_since)
                .fetch_optional(pool)
                .await?;
            row.map(session).transpose()?
        });
        if let Some(s) = &found
            && now_ns.saturating_sub(s.last_seen_ns) > touch_after_ns
        {
            on_backend!(self, |tx, sql| {
                sqlx::query(&sql("UPDATE customer_sessions SET last_seen_at = $1 WHERE token_hash = $2"))
                    .bind(ts(now_ns))
                    .bind(token_hash.to_vec())
                    .execute(&mut *tx.0)
                    .await?;
                sqlx::query(&sql("UPDATE customer_devices SET last_seen_at = $1 WHERE id = $2"))
                    .bind(ts(now_ns))
                    .bind(s.device_id)
                    .execute(&mut *tx.0)
                    .await?;
            });
        }
        Ok(found)
    }

    /// A customer's sessions, newest first.
    pub async fn customer_sessions(&self, customer_id: i64, now_ns: u64) -> Result<Vec<CustomerSession>, StoreError> {
        on_reader!(self, |pool, sql| {
            let q = sql(&format!(
                "SELECT {SESSION_COLUMNS} FROM customer_sessions WHERE customer_id = $1 AND expires_at > $2 \
                 ORDER BY created_at DESC"
            ));
            let rows: Vec<SessionRow> = sqlx::query_as(&q).bind(customer_id).bind(ts(now_ns)).fetch_all(pool).await?;
            rows.into_iter().map(session).collect()
        })
    }

    /// Records a second factor proven in a session just now (step-up).
    pub async fn session_second_factor(
        &self,
        token_hash: &[u8; 32],
        factor: &str,
        now_ns: u64,
    ) -> Result<bool, StoreError> {
        on_backend!(self, |tx, sql| {
            sqlx::query(&sql(
                "UPDATE customer_sessions SET second_factor_at = $1, second_factor = $2 WHERE token_hash = $3",
            ))
            .bind(ts(now_ns))
            .bind(factor)
            .bind(token_hash.to_vec())
            .execute(&mut *tx.0)
            .await?
            .rows_affected()
                == 1
        })
        .pipe(Ok)
    }

    /// The failure counter of a sign-in subject (`account` by email blind index in hex, or `ip`).
    pub async fn throttle_state(&self, scope: &str, subject: &str) -> Result<Option<ThrottleState>, StoreError> {
        on_reader!(self, |pool, sql| {
            let row: Option<(i64, i64, i64)> = sqlx::query_as(&sql(
                "SELECT failures, last_failure_at, blocked_until FROM auth_throttle WHERE scope = $1 AND subject = $2",
            ))
            .bind(scope)
            .bind(subject)
            .fetch_optional(pool)
            .await?;
            Ok(row.map(|(f, last, blocked)| ThrottleState {
                failures: u32::try_from(f).unwrap_or(u32::MAX),
                last_failure_ns: ns(last),
                blocked_until_ns: ns(blocked),
            }))
        })
    }

    /// Counts a failed sign-in against a subject, atomically across nodes: a failure after `forget_ns` of quiet
    /// starts the count again. `block` maps the new count to the time before which no attempt is considered.
    /// Returns the new state.
    pub async fn record_auth_failure(
        &self,
        scope: &str,
        subject: &str,
        now_ns: u64,
        forget_ns: u64,
        block: impl Fn(u32) -> u64,
    ) -> Result<ThrottleState, StoreError> {
        let forget_before = ts(now_ns.saturating_sub(forget_ns));
        on_backend!(self, |tx, sql| {
            let failures: i64 = sqlx::query_scalar(&sql(
                "INSERT INTO auth_throttle (scope, subject, failures, last_failure_at, blocked_until) \
                 VALUES ($1, $2, 1, $3, 0) ON CONFLICT (scope, subject) DO UPDATE SET \
                 failures = CASE WHEN auth_throttle.last_failure_at < $4 THEN 1 ELSE auth_throttle.failures + 1 END, \
                 last_failure_at = $3 RETURNING failures",
            ))
            .bind(scope)
            .bind(subject)
            .bind(ts(now_ns))
            .bind(forget_before)
            .fetch_one(&mut *tx.0)
            .await?;
            let failures = u32::try_from(failures).unwrap_or(u32::MAX);
            let blocked_until_ns = block(failures);
            sqlx::query(&sql("UPDATE auth_throttle SET blocked_until = $1 WHERE scope = $2 AND subject = $3"))
                .bind(ts(blocked_until_ns))
                .bind(scope)
                .bind(subject)
                .execute(&mut *tx.0)
                .await?;
            ThrottleState { failures, last_failure_ns: now_ns, blocked_until_ns }
        })
        .pipe(Ok)
    }

    /// Gives back an attempt counted in advance by [`Store::record_auth_failure`] that turned out right: one failure
    /// fewer, and the block as it was before.
    pub async fn release_auth_attempt(
        &self,
        scope: &str,
        subject: &str,
        blocked_until_ns: u64,
    ) -> Result<(), StoreError> {
        on_backend!(self, |tx, sql| {
            sqlx::query(&sql("UPDATE auth_throttle SET failures = failures - 1, blocked_until = $3 WHERE scope = $1 \
                 AND subject = $2 AND failures > 0"))
            .bind(scope)
            .bind(subject)
            .bind(ts(blocked_until_ns))
            .execute(&mut *tx.0)
            .await?;
        });
        Ok(())
    }

    /// Forgets the failures of a subject (after a successful sign-in).
    pub async fn clear_throttle(&self, scope: &str, subject: &str) -> Result<(), StoreError> {
        on_backend!(self, |tx, sql| {
            sqlx::query(&sql("DELETE FROM auth_throttle WHERE scope = $1 AND subject = $2"))
                .bind(scope)
                .bind(subject)
                .execute(&mut *tx.0)
                .await?;
        });
        Ok(())
    }

    /// Stores a new API key with its effects.
    pub async fn create_api_key(
        &self,
        key: &ApiKeyRecord,
        auditor: &Auditor<'_>,
        effects: Effects,
    ) -> Result<(), StoreError> {
        on_backend!(self, |tx, sql| {
            sqlx::query(&sql(&format!(
                "INSERT INTO api_keys ({API_KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, NULL)"
            )))
            .bind(&key.id)
            .bind(key.customer_id)
            .bind(&key.label)
            .bind(key.secret.clone())
            .bind(&key.scopes)
            .bind(&key.allow_list)
            .bind(ts(key.created_at_ns))
            .bind(ts(key.expires_at_ns))
            .execute(&mut *tx.0)
            .await?;
            write_effects!(tx, sql, key.customer_id, key.created_at_ns, effects, auditor);
        });
        Ok(())
    }

    /// The API key with this id.
    pub async fn api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        on_reader!(self, |pool, sql| {
            let q = sql(&format!("SELECT {API_KEY_COLUMNS} FROM api_keys WHERE id = $1"));
            let row: Option<ApiKeyRow> = sqlx::query_as(&q).bind(id).fetch_optional(pool).await?;
            Ok(row.map(api_key))
        })
    }

    /// An API key with its customer, in one read (a signed request from a key not seen before needs both).
    pub async fn api_key_with_customer(&self, id: &str) -> Result<Option<(ApiKeyRecord, CustomerRecord)>, StoreError> {
        let q = format!("{} WHERE k.id = $1", key_and_customer_select());
        on_reader!(self, |pool, sql| {
            let q = sql(&q);
            let Some(r) = sqlx::query(&q).bind(id).fetch_optional(pool).await? else { return Ok(None) };
            Ok(Some(key_and_customer!(r)))
        })
    }

    /// A customer's API keys, newest first.
    pub async fn api_keys(&self, customer_id: i64) -> Result<Vec<ApiKeyRecord>, StoreError> {
        on_reader!(self, |pool, sql| {
            let q =
                sql(&format!("SELECT {API_KEY_COLUMNS} FROM api_keys WHERE customer_id = $1 ORDER BY created_at DESC"));
            let rows: Vec<ApiKeyRow> = sqlx::query_as(&q).bind(customer_id).fetch_all(pool).await?;
            Ok(rows.into_iter().map(api_key).collect())
        })
    }

    /// Revokes a customer's API key with its effects; `false` if there is no such live key.
    pub async fn revoke_api_key(
        &self,
        customer_id: i64,
        id: &str,
        now_ns: u64,
        auditor: &Auditor<'_>,
        effects: Effects,
    ) -> Result<bool, StoreError> {
        on_backend!(self, |tx, sql| {
            let n = sqlx::query(&sql(
                "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND customer_id = $3 AND revoked_at IS NULL",
            ))
            .bind(ts(now_ns))
            .bind(id)
            .bind(customer_id)
            .execute(&mut *tx.0)
            .await?
            .rows_affected();
            if n == 1 {
                write_effects!(tx, sql, customer_id, now_ns, effects, auditor);
            }
            n == 1
        })
        .pipe(Ok)
    }

    /// Spends a signature of API key `key_id`: `false` if it was spent before (a replay). It is remembered until
    /// `expires_at_ns`, when its timestamp has left the window.
    pub async fn spend_api_signature(
        &self,
        key_id: &str,
        signature: &[u8; 32],
        expires_at_ns: u64,
        now_ns: u64,
    ) -> Result<bool, StoreError> {
        let admitted = self.admit_api_requests(&[(key_id.to_owned(), *signature, expires_at_ns)], now_ns).await?;
        Ok(admitted.first().is_some_and(|a| a.fresh))
    }

    /// Admits signed API requests in one transaction: spends their signatures `(key, signature, remembered until)`
    /// — one spent before, or earlier in the same list, is a replay (`fresh: false`); each key's last use is written
    /// at most once a minute — and reads each key with its customer as they are now (revoked, frozen), so that a
    /// key's details cached by the service never decide alone.
    pub async fn admit_api_requests(
        &self,
        spends: &[(String, [u8; 32], u64)],
        now_ns: u64,
    ) -> Result<Vec<Admission>, StoreError> {
        let mut seen = std::collections::HashSet::new();
        let first: Vec<bool> = spends.iter().map(|(k, s, _)| seen.insert((k.as_str(), *s))).collect();
        let fresh: Vec<&(String, [u8; 32], u64)> =
            spends.iter().zip(&first).filter(|(_, f)| **f).map(|(s, _)| s).collect();
        if fresh.len() > crate::backend::ROWS_PER_INSERT {
            return Err(StoreError::BatchTooLarge { len: fresh.len(), max: crate::backend::ROWS_PER_INSERT });
        }
        let mut keys: Vec<&str> = spends.iter().map(|(k, _, _)| k.as_str()).collect();
        keys.sort_unstable();
        keys.dedup();
        type Spent = Vec<(String, Vec<u8>)>;
        let (inserted, found): (Spent, Vec<(ApiKeyRecord, CustomerRecord)>) =
            if let (Store::Postgres(pg), false) = (self, spends.is_empty()) {
                // One statement, so no transaction of its own: one round trip instead of five. It reads the keys as the
                // statement began, so their last use is set here as the statement writes it.
                let select = key_and_customer_select();
                let (columns, from) = select.split_once(" FROM ").expect("the select has a FROM");
                let q = format!(
                    "WITH spent AS (INSERT INTO api_signatures (key_id, signature, expires_at) \
                 SELECT * FROM UNNEST($1::text[], $2::bytea[], $3::bigint[]) \
                 ON CONFLICT (key_id, signature) DO NOTHING RETURNING key_id, signature), \
                 used AS (UPDATE api_keys SET last_used_at = $4 WHERE id IN (SELECT key_id FROM spent) \
                 AND (last_used_at IS NULL OR last_used_at < $5)) \
                 {columns}, ARRAY(SELECT s.signature FROM spent s WHERE s.key_id = q.id), q.id \
                 FROM UNNEST($6::text[]) AS q(id) LEFT JOIN ({from}) ON k.id = q.id"
                );
                let stale_before = now_ns.saturating_sub(60_000_000_000);
                let rows = sqlx::query(&q)
                    .bind(fresh.iter().map(|(k, _, _)| k.as_str()).collect::<Vec<_>>())
                    .bind(fresh.iter().map(|(_, s, _)| s.to_vec()).collect::<Vec<_>>())
                    .bind(fresh.iter().map(|(_, _, e)| ts(*e)).collect::<Vec<_>>())
                    .bind(ts(now_ns))
                    .bind(ts(stale_before))
                    .bind(&keys)
                    .fetch_all(&pg.pool)
                    .await?;
                let (mut inserted, mut found) = (Vec::new(), Vec::with_capacity(rows.len()));
                for r in rows {
                    let signatures: Vec<Vec<u8>> = sqlx::Row::try_get(&r, 22)?;
                    let id: String = sqlx::Row::try_get(&r, 23)?;
                    if sqlx::Row::try_get::<Option<String>, _>(&r, 0)?.is_some() {
                        let (mut key, customer) = key_and_customer!(r);
                        if !signatures.is_empty() && key.last_used_ns.is_none_or(|at| at < stale_before) {
                            key.last_used_ns = Some(now_ns);
                        }
                        found.push((key, customer));
                    }
                    inserted.extend(signatures.into_iter().map(|s| (id.clone(), s)));
                }
                (inserted, found)
            } else {
                on_backend!(self, |tx, sql| {
                    if spends.is_empty() {
                        (Vec::new(), Vec::new())
                    } else {
                        // Every spend but an in-list replay is fresh: `fresh` is never empty here.
                        let q = sql(&format!(
                            "INSERT INTO api_signatures (key_id, signature, expires_at) VALUES {} \
                         ON CONFLICT (key_id, signature) DO NOTHING RETURNING key_id, signature",
                            crate::backend::placeholders(fresh.len(), 3)
                        ));
                        let mut query = sqlx::query_as(&q);
                        for (key, signature, expires) in &fresh {
                            query = query.bind(key).bind(signature.to_vec()).bind(ts(*expires));
                        }
                        let inserted: Vec<(String, Vec<u8>)> = query.fetch_all(&mut *tx.0).await?;
                        let mut used: Vec<&str> = inserted.iter().map(|(k, _)| k.as_str()).collect();
                        used.sort_unstable();
                        used.dedup();
                        if !used.is_empty() {
                            let q = sql(&format!(
                                "UPDATE api_keys SET last_used_at = $1 WHERE id IN ({}) \
                             AND (last_used_at IS NULL OR last_used_at < $2)",
                                crate::backend::numbered(3, used.len())
                            ));
                            let mut query =
                                sqlx::query(&q).bind(ts(now_ns)).bind(ts(now_ns.saturating_sub(60_000_000_000)));
                            for k in &used {
                                query = query.bind(*k);
                            }
                            query.execute(&mut *tx.0).await?;
                        }
                        let q = sql(&format!(
                            "{} WHERE k.id IN ({})",
                            key_and_customer_select(),
                            crate::backend::numbered(1, keys.len())
                        ));
                        let mut query = sqlx::query(&q);
                        for k in &keys {
                            query = query.bind(*k);
                        }
                        let mut found = Vec::with_capacity(keys.len());
                        for r in query.fetch_all(&mut *tx.0).await? {
                            found.push(key_and_customer!(r));
                        }
                        (inserted, found)
                    }
                })
            };
        let inserted: std::collections::HashSet<(String, Vec<u8>)> = inserted.into_iter().collect();
        let found: std::collections::HashMap<String, (ApiKeyRecord, CustomerRecord)> =
            found.into_iter().map(|(k, c)| (k.id.clone(), (k, c))).collect();
        Ok(spends
            .iter()
            .zip(first)
            .map(|((k, s, _), first)| Admission {
                fresh: first && inserted.contains(&(k.clone(), s.to_vec())),
                key: found.get(k).cloned(),
            })
            .collect())
    }

    /// A customer's WebAuthn credentials (`owner` is `customer:<id>` or `staff:<id>`).
    pub async fn webauthn_credentials(&self, owner: &str) -> Result<Vec<WebauthnCredentialRecord>, StoreError> {
        on_reader!(self, |pool, sql| {
            let rows: Vec<CredentialRow> = sqlx::query_as(&sql(
                "SELECT credential_id, owner, name, data, counter, created_at, last_used_at FROM webauthn_credentials \
                 WHERE owner = $1 ORDER BY created_at",
            ))
            .bind(owner)
            .fetch_all(pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|(credential_id, owner, name, data, counter, created, used)| WebauthnCredentialRecord {
                    credential_id,
                    owner,
                    name,
                    data,
                    counter: u32::try_from(counter).unwrap_or(u32::MAX),
                    created_at_ns: ns(created),
                    last_used_ns: used.map(ns),
                })
                .collect())
        })
    }

    /// Adds a WebAuthn credential for any owner (staff included), with its audit records.
    pub async fn add_webauthn_credential(
        &self,
        credential: &WebauthnCredentialRecord,
        auditor: &Auditor<'_>,
        records: Vec<AuditRecord>,
    ) -> Result<(), StoreError> {
        on_backend!(self, |tx, sql| {
            sqlx::query(&sql(
                "INSERT INTO webauthn_credentials (credential_id, owner, name, data, counter, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            ))
            .bind(credential.credential_id.clone())
            .bind(&credential.owner)
            .bind(&credential.name)
            .bind(credential.data.clone())
            .bind(i64::from(credential.counter))
            .bind(ts(credential.created_at_ns))
            .execute(&mut *tx.0)
            .await?;
            audit::append(&mut tx, records, auditor).await?;
        });
        Ok(())
    }

    /// Records a successful assertion: the new counter and credential state, atomically and only if the counter
    /// went up (or the authenticator keeps no counter, when both are 0), so that a cloned authenticator racing the
    /// real one cannot both succeed.
    pub async fn webauthn_used(
        &self,
        credential_id: &[u8],
        old_counter: u32,
        new_counter: u32,
        data: &[u8],
        now_ns: u64,
    ) -> Result<bool, StoreError> {
        on_backend!(self, |tx, sql| {
            sqlx::query(&sql("UPDATE webauthn_credentials SET counter = $1, data = $2, last_used_at = $3 \
                 WHERE credential_id = $4 AND counter = $5 AND ($1 > $5 OR $1 = 0)"))
            .bind(i64::from(new_counter))
            .bind(data.to_vec())
            .bind(ts(now_ns))
            .bind(credential_id.to_vec())
            .bind(i64::from(old_counter))
            .execute(&mut *tx.0)
            .await?
            .rows_affected()
                == 1
        })
        .pipe(Ok)
    }

    /// A customer's in-app notifications, newest first.
    pub async fn notifications(&self, customer_id: i64, limit: u32) -> Result<Vec<NotificationRecord>, StoreError> {
        on_reader!(self, |pool, sql| {
            let rows: Vec<(i64, String, String, i64, Option<i64>)> = sqlx::query_as(&sql(
                "SELECT id, kind, title, created_at, read_at FROM customer_notifications WHERE customer_id = $1 \
                 ORDER BY id DESC LIMIT $2",
            ))
            .bind(customer_id)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|(id, kind, title, created, read)| NotificationRecord {
                    id,
                    kind,
                    title,
                    created_at_ns: ns(created),
                    read_at_ns: read.map(ns),
                })
                .collect())
        })
    }

    /// Claims up to `limit` due emails for delivery: each is leased for `lease_ns` (its next attempt moves out),
    /// so that another node's worker does not send it at the same time.
    pub async fn claim_outbox(&self, now_ns: u64, lease_ns: u64, limit: u32) -> Result<Vec<OutboxEmail>, StoreError> {
        let lock = if matches!(self, Store::Postgres(_)) { " FOR UPDATE SKIP LOCKED" } else { "" };
        on_backend!(self, |tx, sql| {
            let q = sql(&format!(
                "SELECT id, customer_id, kind, payload, attempts, created_at FROM email_outbox WHERE sent_at IS NULL \
                 AND failed_at IS NULL AND next_attempt_at <= $1 ORDER BY next_attempt_at LIMIT $2{lock}"
            ));
            let rows: Vec<OutboxRow> =
                sqlx::query_as(&q).bind(ts(now_ns)).bind(i64::from(limit)).fetch_all(&mut *tx.0).await?;
            let mut out = Vec::with_capacity(rows.len());
            for (id, customer_id, kind, payload, attempts, created) in rows {
                sqlx::query(&sql("UPDATE email_outbox SET next_attempt_at = $1 WHERE id = $2"))
                    .bind(ts(now_ns.saturating_add(lease_ns)))
                    .bind(id.clone())
                    .execute(&mut *tx.0)
                    .await?;
                let id: [u8; 16] = id.try_into().map_err(|_| StoreError::Corrupt("outbox id".into()))?;
                out.push(OutboxEmail {
                    id,
                    customer_id,
                    kind,
                    payload,
                    attempts: u32::try_from(attempts).unwrap_or(0),
                    created_at_ns: ns(created),
                });
            }
            out
        })
        .pipe(Ok)
    }

    /// Records the outcome of one delivery attempt: sent, retry at `retry_at_ns`, or given up (`None`).
    pub async fn outbox_attempted(
        &self,
        id: &[u8; 16],
        outcome: Result<(), (Option<u64>, &str)>,
        now_ns: u64,
    ) -> Result<(), StoreError> {
        on_backend!(self, |tx, sql| {
            match outcome {
                Ok(()) => {
                    sqlx::query(&sql("UPDATE email_outbox SET sent_at = $1, attempts = attempts + 1 WHERE id = $2"))
                        .bind(ts(now_ns))
                        .bind(id.to_vec())
                        .execute(&mut *tx.0)
                        .await?;
                }
                Err((retry_at, error)) => {
                    sqlx::query(&sql("UPDATE email_outbox SET attempts = attempts + 1, last_error = $1, \
                         next_attempt_at = COALESCE($2, next_attempt_at), failed_at = $3 WHERE id = $4"))
                    .bind(error)
                    .bind(retry_at.map(ts))
                    .bind(if retry_at.is_none() { Some(ts(now_ns)) } else { None })
                    .bind(id.to_vec())
                    .execute(&mut *tx.0)
                    .await?;
                }
            }
        });
        Ok(())
    }

    /// Emails in the outbox by state: (waiting, sent, failed).
    pub async fn outbox_counts(&self) -> Result<(u64, u64, u64), StoreError> {
        on_reader!(self, |pool, sql| {
            let (w, s, f): (i64, i64, i64) =
                sqlx::query_as(&sql("SELECT count(*) FILTER (WHERE sent_at IS NULL AND failed_at IS NULL), \
                 count(*) FILTER (WHERE sent_at IS NOT NULL), count(*) FILTER (WHERE failed_at IS NOT NULL) \
                 FROM email_outbox"))
                .fetch_one(pool)
                .await?;
            Ok((ns(w), ns(s), ns(f)))
        })
    }
}
