//! Compliance over HTTP: list imports and versions, staff screening, the exchange's address lists, compliance cases,
//! KYC submissions (customers submit; reviewers decide; personal data masked unless the role may see it, every view
//! audited), Travel Rule records, the three-level review of large transfers, and the customer's destination check.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use rampart_audit::{Outcome, Permission, Role};
use rampart_compliance::kyc::{self, DocumentKind, Identity, Level};
use rampart_compliance::{Query as NameQuery, canonical, countries, review, travel};
use rampart_store::{ComplianceResolution, ComplianceResolved, KycDecided, NewDocument, ReviewDecided};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::compliance::{self, AddressVerdict, ImportReport, OFAC_SDN, SDN_FILES, ScreeningData, Verdict};
use crate::error::{ApiError, ErrorBody};
use crate::handlers::ApiJson;
use crate::identity::{Customer, Scope};
use crate::principal::Principal;
use crate::staff_api::path_i64;

use crate::identity::rfc3339;

/// `?all=true` lists closed items too.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AllQuery {
    /// Closed items too.
    #[serde(default)]
    all: bool,
    /// Only this customer's (internal id; KYC submissions and Travel Rule records).
    #[serde(default)]
    customer: Option<i64>,
}

/// A query string's parameters, or `invalid_query` (400, the JSON error shape) saying what is wrong with it.
pub(crate) fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q).map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
}

fn note_text(body: &str) -> Result<&str, ApiError> {
    let body = body.trim();
    if body.is_empty() || body.chars().count() > 2_000 || body.chars().any(|c| c.is_control() && c != '\n') {
        return Err(ApiError::bad_request("invalid_note", "a note or reason is 1 to 2 000 printable characters"));
    }
    Ok(body)
}

// ---------------------------------------------------------------------------------------------------------------
// Lists.

/// `POST /v1/compliance/lists/ofac`: the SDN list's files as text, and per-asset address lists.
#[derive(Deserialize, ToSchema)]
pub struct ImportRequest {
    /// `sdn.csv`, `alt.csv`, `add.csv` (required) and `sdn_comments.csv` (optional), as text.
    pub files: BTreeMap<String, String>,
    /// Per-asset lists of sanctioned addresses, one address a line, by asset code (`XBT`, `ETH` ...).
    #[serde(default)]
    pub addresses: BTreeMap<String, String>,
}

/// An imported version.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ListView {
    /// Version.
    pub version: i64,
    /// Source.
    pub source: String,
    /// SHA-256 of its files.
    pub digest: String,
    /// Entries.
    pub entries: i64,
    /// Who imported it.
    pub imported_by: String,
    /// When.
    pub imported_at: String,
    /// The import's report.
    pub report: serde_json::Value,
    /// When every customer had been re-screened against it.
    pub rescreened_at: Option<String>,
    /// What the re-screening found.
    pub rescreen: Option<serde_json::Value>,
}

fn list_view(v: rampart_store::ListVersion) -> ListView {
    ListView {
        version: v.version,
        source: v.source,
        digest: hex::encode(v.digest),
        entries: v.entries,
        imported_by: v.imported_by,
        imported_at: rfc3339(v.imported_at_ns),
        report: serde_json::from_str(&v.report).unwrap_or(serde_json::Value::Null),
        rescreened_at: v.rescreened_at_ns.map(rfc3339),
        rescreen: v.rescreen_report.and_then(|r| serde_json::from_str(&r).ok()),
    }
}

/// What an import did.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ImportView {
    /// The new version.
    pub version: i64,
    /// What it holds and what changed.
    #[schema(value_type = Object)]
    pub report: ImportReport,
    /// `started`: every customer is being re-screened against it.
    pub rescreen: String,
}

/// Imports a new version of the OFAC SDN list; every customer is then re-screened against it in the background.
#[utoipa::path(post, path = "/v1/compliance/lists/ofac", tag = "compliance", request_body = ImportRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "imported; customers are being re-screened", body = ImportView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, description = "list_unchanged", body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, description = "list_unreadable", body = ErrorBody)
    ))]
pub(crate) async fn import(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<ImportRequest>,
) -> Result<(StatusCode, Json<ImportView>), ApiError> {
    state.authorize(&principal, Permission::ComplianceLists, "compliance.lists.import", OFAC_SDN).await?;
    let keyring = state.keyring()?;
    for name in body.files.keys() {
        if !SDN_FILES.contains(&name.as_str()) {
            return Err(ApiError::bad_request(
                "unknown_file",
                format!("{name:?} is not a file of the SDN list: sdn.csv, alt.csv, add.csv, sdn_comments.csv"),
            ));
        }
    }
    for required in &SDN_FILES[..3] {
        if !body.files.contains_key(*required) {
            return Err(ApiError::bad_request("missing_file", format!("{required} is required")));
        }
    }
    for asset in body.addresses.keys() {
        if asset.is_empty() || asset.len() > 10 || !asset.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        {
            return Err(ApiError::bad_request(
                "invalid_asset",
                format!("{asset:?} is not an asset code (XBT, ETH ...)"),
            ));
        }
    }
    let mut files: Vec<(String, Vec<u8>)> = body.files.into_iter().map(|(n, t)| (n, t.into_bytes())).collect();
    files.extend(body.addresses.into_iter().map(|(a, t)| (format!("addresses/{a}"), t.into_bytes())));
    files.sort();
    let own = state.store().address_listings().await?;
    let current = state.compliance().lists();
    let (report, digest, lists, files) = tokio::task::spawn_blocking(move || {
        let (report, digest, lists) = compliance::prepare_import(&files, &current, &own);
        (report, digest, lists, files)
    })
    .await
    .map_err(|e| ApiError::internal(format!("import failed: {e}")))?;
    if report.entries == 0 {
        let first =
            report.problems.first().map_or(String::new(), |p| format!(": {} line {}: {}", p.file, p.line, p.message));
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "list_unreadable",
            format!("no entry could be read ({} problems){first}", report.problems.len()),
        ));
    }
    let text = serde_json::to_string(&report).expect("a report serialises");
    let mut record = state.record(&principal.actor(), "compliance.lists.imported", OFAC_SDN, Outcome::Success);
    for (k, v) in [
        ("entries", report.entries),
        ("added", report.added.len()),
        ("removed", report.removed.len()),
        ("changed", report.changed.len()),
        ("problems", report.problems.len()),
    ] {
        record.details.insert(k.into(), v.to_string());
    }
    record.details.insert("digest".into(), hex::encode(&digest));
    let version = state
        .store()
        .record_sanctions_list(
            OFAC_SDN,
            &digest,
            report.entries as i64,
            &text,
            &files,
            &principal.actor(),
            state.now_ns(),
            &state.auditor(&keyring),
            vec![record],
        )
        .await?
        .ok_or_else(|| {
            ApiError::new(StatusCode::CONFLICT, "list_unchanged", "these files are the version in force already")
        })?;
    compliance::install_import(&state, lists, version);
    let background = state.clone();
    tokio::spawn(async move {
        if let Err(e) = compliance::rescreen_all(&background, version).await {
            tracing::error!(version, error = e.message(), "re-screening customers failed");
        }
    });
    Ok((StatusCode::CREATED, Json(ImportView { version, report, rescreen: "started".into() })))
}

/// The imported versions, newest first.
#[utoipa::path(get, path = "/v1/compliance/lists", tag = "compliance", security(("bearer" = [])),
    responses(
        (status = 200, body = Vec<ListView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)
    ))]
pub(crate) async fn lists(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Vec<ListView>>, ApiError> {
    state.authorize(&principal, Permission::ComplianceRead, "compliance.lists.read", OFAC_SDN).await?;
    Ok(Json(state.store().sanctions_lists(100).await?.into_iter().map(list_view).collect()))
}

/// `POST /v1/compliance/screen`.
#[derive(Deserialize, ToSchema)]
pub struct ScreenRequest {
    /// A name in any form.
    pub name: String,
    /// ISO code.
    #[serde(default)]
    pub country: Option<String>,
    /// `YYYY-MM-DD` or a year.
    #[serde(default)]
    pub date_of_birth: Option<String>,
    /// How many matches (1 to 50, default 10).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// Screens a name against the list in force (staff): the best matches with entry, names, programmes and score.
#[utoipa::path(post, path = "/v1/compliance/screen", tag = "compliance", request_body = ScreenRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "`list_version`, `threshold` and the best `matches`", body = serde_json::Value),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)
    ))]
pub(crate) async fn screen(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<ScreenRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.authorize(&principal, Permission::ComplianceRead, "compliance.screen", "-").await?;
    let name = body.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::bad_request("invalid_name", "a name is 1 to 200 characters"));
    }
    let country = valid_country(body.country.as_deref())?;
    let birth_year =
        match body.date_of_birth.as_deref() {
            None => None,
            Some(d) => Some(d.get(..4).and_then(|y| y.parse::<u16>().ok()).ok_or_else(|| {
                ApiError::bad_request("invalid_date_of_birth", "date_of_birth is YYYY-MM-DD or a year")
            })?),
        };
    let limit = body.limit.unwrap_or(10);
    if !(1..=50).contains(&limit) {
        return Err(ApiError::bad_request("invalid_limit", "limit is 1 to 50"));
    }
    let lists = state.compliance().lists();
    let matches = lists.screen(&NameQuery { name: &name, country: country.as_deref(), birth_year }, limit);
    let threshold = state.compliance().config().name_threshold;
    let shown: Vec<serde_json::Value> = matches
        .iter()
        .map(|m| {
            let programs = lists.entry(m.entry).map(|e| e.programs.clone()).unwrap_or_default();
            serde_json::json!({"entry": m.entry, "primary_name": m.primary, "matched_name": m.matched,
                "score": m.score, "match": m.score >= threshold, "programs": programs})
        })
        .collect();
    Ok(Json(serde_json::json!({"list_version": lists.version, "threshold": threshold, "matches": shown})))
}

pub(crate) fn valid_country(c: Option<&str>) -> Result<Option<String>, ApiError> {
    match c {
        None => Ok(None),
        Some(c) if countries::is_code(&c.trim().to_ascii_uppercase()) => Ok(Some(c.trim().to_ascii_uppercase())),
        Some(_) => Err(ApiError::bad_request("invalid_country", "country is an ISO 3166-1 alpha-2 code such as GB")),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Address lists.

/// `POST /v1/compliance/addresses`.
#[derive(Deserialize, ToSchema)]
pub struct ListAddressRequest {
    /// The address.
    pub address: String,
    /// The asset, when the listing concerns one only.
    #[serde(default)]
    pub asset: Option<String>,
    /// `blocked` (refused like a sanctioned address) or `risk` (held for review).
    pub category: String,
    /// Why.
    pub reason: String,
}

/// A listed address.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ListingView {
    /// Id (absent for the sanctions lists' own entries).
    pub id: Option<i64>,
    /// The address.
    pub address: String,
    /// Asset.
    pub asset: Option<String>,
    /// Where the listing comes from (`exchange`, `ofac-sdn`, `ofac-asset-list`).
    pub source: String,
    /// `sanctioned`, `blocked` or `risk`.
    pub category: String,
    /// Why.
    pub reason: String,
}

fn valid_address(raw: &str) -> Result<String, ApiError> {
    let a = raw.trim();
    if a.len() < 20 || a.len() > 128 || !a.bytes().all(|b| b.is_ascii_alphanumeric() || b == b':') {
        return Err(ApiError::bad_request("invalid_address", "an address is 20 to 128 letters and digits"));
    }
    Ok(a.to_owned())
}

/// The exchange's own listings.
#[utoipa::path(get, path = "/v1/compliance/addresses", tag = "compliance", security(("bearer" = [])),
    responses(
        (status = 200, body = Vec<ListingView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)
    ))]
pub(crate) async fn addresses(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Vec<ListingView>>, ApiError> {
    state.authorize(&principal, Permission::ComplianceRead, "compliance.addresses.list", "-").await?;
    Ok(Json(
        state
            .store()
            .address_listings()
            .await?
            .into_iter()
            .map(|l| ListingView {
                id: Some(l.id),
                address: l.address,
                asset: l.asset,
                source: "exchange".into(),
                category: l.category,
                reason: l.reason,
            })
            .collect(),
    ))
}

/// Lists an address as blocked or risky.
#[utoipa::path(post, path = "/v1/compliance/addresses", tag = "compliance", operation_id = "compliance_add_address",
    request_body = ListAddressRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, body = ListingView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, description = "address_listed", body = ErrorBody)
    ))]
pub(crate) async fn add_address(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<ListAddressRequest>,
) -> Result<(StatusCode, Json<ListingView>), ApiError> {
    state.authorize(&principal, Permission::ComplianceLists, "compliance.addresses.add", "-").await?;
    let address = valid_address(&body.address)?;
    let address = canonical(&address).into_owned();
    if !matches!(body.category.as_str(), "blocked" | "risk") {
        return Err(ApiError::bad_request("invalid_category", "category is blocked or risk"));
    }
    let reason = note_text(&body.reason)?;
    let keyring = state.keyring()?;
    let target = format!("address:{address}");
    let mut record = state.record(&principal.actor(), "compliance.address.listed", &target, Outcome::Success);
    record.details.insert("category".into(), body.category.clone());
    let id = state
        .store()
        .add_address_listing(
            &address,
            body.asset.as_deref(),
            &body.category,
            reason,
            &principal.actor(),
            state.now_ns(),
            &state.auditor(&keyring),
            vec![record],
        )
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::CONFLICT, "address_listed", "this address is listed already"))?;
    state.compliance().reload_own_lists(state.store()).await?;
    Ok((
        StatusCode::CREATED,
        Json(ListingView {
            id: Some(id),
            address,
            asset: body.asset,
            source: "exchange".into(),
            category: body.category,
            reason: reason.to_owned(),
        }),
    ))
}

/// Takes an address off the exchange's lists.
#[utoipa::path(delete, path = "/v1/compliance/addresses/{id}", tag = "compliance",
    operation_id = "compliance_remove_address",
    params(("id" = i64, Path, description = "listing id")), security(("bearer" = [])),
    responses(
        (status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)
    ))]
pub(crate) async fn remove_address(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id = path_i64(path)?;
    let target = format!("address_listing:{id}");
    state.authorize(&principal, Permission::ComplianceLists, "compliance.addresses.remove", &target).await?;
    let keyring = state.keyring()?;
    let record = state.record(&principal.actor(), "compliance.address.unlisted", &target, Outcome::Success);
    if !state
        .store()
        .remove_address_listing(id, &principal.actor(), state.now_ns(), &state.auditor(&keyring), vec![record])
        .await?
    {
        return Err(ApiError::not_found(format!("no live listing {id}")));
    }
    state.compliance().reload_own_lists(state.store()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST …/addresses/screen` and `POST /v1/me/destinations/screen`.
#[derive(Deserialize, ToSchema)]
pub struct AddressQuery {
    /// The address.
    pub address: String,
    /// The asset.
    #[serde(default)]
    pub asset: Option<String>,
}

/// Everything listed about an address (staff).
#[utoipa::path(post, path = "/v1/compliance/addresses/screen", tag = "compliance", request_body = AddressQuery,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "every listing of the address", body = Vec<ListingView>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)
    ))]
pub(crate) async fn screen_address(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<AddressQuery>,
) -> Result<Json<Vec<ListingView>>, ApiError> {
    state.authorize(&principal, Permission::ComplianceRead, "compliance.addresses.screen", "-").await?;
    let address = valid_address(&body.address)?;
    let lists = state.compliance().lists();
    Ok(Json(
        lists
            .address(&address)
            .iter()
            .map(|l| ListingView {
                id: None,
                address: canonical(&address).into_owned(),
                asset: (!l.asset.is_empty()).then(|| l.asset.clone()),
                source: l.source.clone(),
                category: format!("{:?}", l.category).to_lowercase(),
                reason: l.reason.clone(),
            })
            .collect(),
    ))
}

/// The customer's check of a withdrawal destination before asking for the withdrawal: a sanctioned or blocked
/// address is refused (`403 destination_refused`, which never says which list) and a case is opened for review.
#[utoipa::path(post, path = "/v1/me/destinations/screen", tag = "compliance", request_body = AddressQuery,
    security(("bearer" = [], "device" = []), ("api_key" = [], "api_timestamp" = [], "api_signature" = [])),
    responses(
        (status = 200, description = "`{\"allowed\": true}`", body = serde_json::Value),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "destination_refused (never says which list), or scope_missing", body = ErrorBody)
    ))]
pub(crate) async fn check_destination(
    State(state): State<AppState>,
    customer: Customer,
    ApiJson(body): ApiJson<AddressQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    customer.require(Scope::Read)?;
    let address = valid_address(&body.address)?;
    let asset = body.asset.clone().unwrap_or_else(|| "BTC".into());
    match state.compliance().screen_address(&address) {
        AddressVerdict::Clear | AddressVerdict::Review(_) => Ok(Json(serde_json::json!({"allowed": true}))),
        AddressVerdict::Refuse(listing) => {
            Err(refuse_destination(&state, &customer, &address, &asset, &listing).await?)
        }
    }
}

/// Refuses a withdrawal destination on a sanctions or block list: audits the refusal, opens an `address_match` case
/// (or leaves the open one), and answers the error the customer sees, which never says which list.
pub(crate) async fn refuse_destination(
    state: &AppState,
    customer: &Customer,
    address: &str,
    asset: &str,
    listing: &rampart_compliance::Listing,
) -> Result<ApiError, ApiError> {
    let keyring = state.keyring()?;
    let details = serde_json::json!({"address": canonical(address), "asset": asset, "source": listing.source,
        "category": format!("{:?}", listing.category).to_lowercase(), "reason": listing.reason,
        "direction": "withdrawal"})
    .to_string();
    let mut record = state.record(
        &customer.actor(),
        "compliance.destination.refused",
        &format!("customer:{}", customer.record.id),
        Outcome::Denied,
    );
    record.details.insert("address".into(), canonical(address).into_owned());
    record.details.insert("source".into(), listing.source.clone());
    let new = rampart_store::NewCase {
        customer_id: customer.record.id,
        kind: "address_match",
        outcome: "hold",
        details: &details,
    };
    if state
        .store()
        .open_compliance_case(new, state.now_ns(), &state.auditor(&keyring), vec![record.clone()])
        .await?
        .is_none()
    {
        // A case is open already: the refusal is still on the record.
        state.audit(vec![record]).await?;
    }
    Ok(ApiError::new(
        StatusCode::FORBIDDEN,
        "destination_refused",
        "withdrawals to this address are not possible; contact support if you believe this is wrong",
    ))
}

// ---------------------------------------------------------------------------------------------------------------
// Cases.

/// A compliance case.
#[derive(Serialize, Deserialize, ToSchema)]
#[schema(as = ComplianceCaseView)]
pub struct CaseView {
    /// Id.
    pub id: i64,
    /// The customer (internal id).
    pub customer: i64,
    /// Kind.
    pub kind: String,
    /// `freeze`, `hold` or `flag`.
    pub outcome: String,
    /// `open` or `resolved`.
    pub state: String,
    /// What was found.
    pub details: serde_json::Value,
    /// Assignee.
    pub assigned_to: Option<String>,
    /// Resolution.
    pub resolution: Option<String>,
    /// Resolved by.
    pub resolved_by: Option<String>,
    /// Opened.
    pub created_at: String,
    /// Notes.
    pub notes: Vec<serde_json::Value>,
}

fn case_view(c: rampart_store::ComplianceCase, notes: Vec<rampart_store::RiskCaseNote>) -> CaseView {
    CaseView {
        id: c.id,
        customer: c.customer_id,
        kind: c.kind,
        outcome: c.outcome,
        state: c.state,
        details: serde_json::from_str(&c.details).unwrap_or(serde_json::Value::Null),
        assigned_to: c.assigned_to,
        resolution: c.resolution,
        resolved_by: c.resolved_by,
        created_at: rfc3339(c.created_at_ns),
        notes: notes
            .into_iter()
            .map(|n| serde_json::json!({"author": n.author, "body": n.body, "at": rfc3339(n.created_at_ns)}))
            .collect(),
    }
}

/// Open cases (all with `?all=true`), newest first.
#[utoipa::path(get, path = "/v1/compliance/cases", tag = "compliance", operation_id = "compliance_cases",
    params(AllQuery), security(("bearer" = [])),
    responses(
        (status = 200, body = Vec<CaseView>), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)
    ))]
pub(crate) async fn cases(
    State(state): State<AppState>,
    principal: Principal,
    q: Result<Query<AllQuery>, QueryRejection>,
) -> Result<Json<Vec<CaseView>>, ApiError> {
    let q = query(q)?;
    state.authorize(&principal, Permission::ComplianceRead, "compliance.cases.list", "-").await?;
    Ok(Json(state.store().compliance_cases(q.all, 500).await?.into_iter().map(|c| case_view(c, vec![])).collect()))
}

/// One case with its notes.
#[utoipa::path(get, path = "/v1/compliance/cases/{id}", tag = "compliance", operation_id = "compliance_case",
    params(("id" = i64, Path, description = "case id")), security(("bearer" = [])),
    responses(
        (status = 200, body = CaseView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)
    ))]
pub(crate) async fn case(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<CaseView>, ApiError> {
    let id = path_i64(path)?;
    state
        .authorize(&principal, Permission::ComplianceRead, "compliance.cases.read", &format!("compliance_case:{id}"))
        .await?;
    let (c, notes) =
        state.store().compliance_case(id).await?.ok_or_else(|| ApiError::not_found(format!("no case {id}")))?;
    Ok(Json(case_view(c, notes)))
}

/// A note (or a resolution's reason).
#[derive(Deserialize, ToSchema)]
#[schema(as = ComplianceNoteRequest)]
pub struct NoteRequest {
    /// The text.
    pub note: String,
    /// For `…/resolve`: `release`, `keep_frozen` or `offboard`.
    #[serde(default)]
    pub resolution: Option<String>,
}

async fn work_case(
    state: AppState,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    assign: bool,
    note: Option<String>,
) -> Result<Json<CaseView>, ApiError> {
    let id = path_i64(path)?;
    let target = format!("compliance_case:{id}");
    state.authorize(&principal, Permission::ComplianceReview, "compliance.cases.work", &target).await?;
    let note = note.as_deref().map(note_text).transpose()?;
    let keyring = state.keyring()?;
    let action = if assign { "compliance.case.assigned" } else { "compliance.case.noted" };
    let record = state.record(&principal.actor(), action, &target, Outcome::Success);
    if !state
        .store()
        .work_compliance_case(
            id,
            &principal.actor(),
            assign,
            note,
            state.now_ns(),
            &state.auditor(&keyring),
            vec![record],
        )
        .await?
    {
        return Err(ApiError::not_found(format!("no open case {id}")));
    }
    case(State(state), principal, Ok(Path(id.to_string()))).await
}

/// Takes a case.
#[utoipa::path(post, path = "/v1/compliance/cases/{id}/assign", tag = "compliance",
    operation_id = "compliance_assign",
    params(("id" = i64, Path, description = "case id")), security(("bearer" = [])),
    responses(
        (status = 200, body = CaseView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)
    ))]
pub(crate) async fn assign(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<CaseView>, ApiError> {
    work_case(state, principal, path, true, None).await
}

/// Adds a note.
#[utoipa::path(post, path = "/v1/compliance/cases/{id}/notes", tag = "compliance",
    operation_id = "compliance_note", request_body = NoteRequest,
    params(("id" = i64, Path, description = "case id")), security(("bearer" = [])),
    responses(
        (status = 200, body = CaseView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)
    ))]
pub(crate) async fn note(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    ApiJson(body): ApiJson<NoteRequest>,
) -> Result<Json<CaseView>, ApiError> {
    work_case(state, principal, path, false, Some(body.note)).await
}

/// Resolves a case: `release` (a false positive: the freeze is lifted unless another holds the account),
/// `keep_frozen` or `offboard`.
#[utoipa::path(post, path = "/v1/compliance/cases/{id}/resolve", tag = "compliance",
    operation_id = "compliance_resolve",
    request_body = NoteRequest, params(("id" = i64, Path, description = "case id")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = CaseView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "case_resolved", body = ErrorBody)
    ))]
pub(crate) async fn resolve(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    ApiJson(body): ApiJson<NoteRequest>,
) -> Result<Json<CaseView>, ApiError> {
    let id = path_i64(path)?;
    let target = format!("compliance_case:{id}");
    state.authorize(&principal, Permission::ComplianceReview, "compliance.cases.resolve", &target).await?;
    let resolution = body.resolution.as_deref().and_then(ComplianceResolution::parse).ok_or_else(|| {
        ApiError::bad_request("invalid_resolution", "resolution is one of release, keep_frozen, offboard")
    })?;
    let text = note_text(&body.note)?;
    let keyring = state.keyring()?;
    let mut record = state.record(&principal.actor(), "compliance.case.resolved", &target, Outcome::Success);
    record.details.insert("resolution".into(), resolution.as_str().into());
    match state
        .store()
        .resolve_compliance_case(
            id,
            resolution,
            &principal.actor(),
            text,
            state.now_ns(),
            &state.auditor(&keyring),
            vec![record],
        )
        .await?
    {
        ComplianceResolved::NotFound => Err(ApiError::not_found(format!("no case {id}"))),
        ComplianceResolved::AlreadyResolved => {
            Err(ApiError::new(StatusCode::CONFLICT, "case_resolved", "this case is resolved already"))
        }
        ComplianceResolved::Done { .. } => case(State(state), principal, Ok(Path(id.to_string()))).await,
    }
}

// ---------------------------------------------------------------------------------------------------------------
// KYC.

/// A document of a submission, base64.
#[derive(Deserialize)]
pub struct DocumentUpload {
    /// `passport`, `id_card`, `driving_licence`, `selfie`, `proof_of_address`, `source_of_funds`.
    pub kind: DocumentKind,
    /// The file (PDF, PNG or JPEG), base64.
    pub content_base64: String,
}

/// `POST /v1/me/kyc`.
#[derive(Deserialize)]
pub struct KycRequest {
    /// The identity.
    #[serde(flatten)]
    pub identity: Identity,
    /// The documents.
    pub documents: Vec<DocumentUpload>,
}

/// The most documents one submission carries.
const DOCUMENTS_MAX: usize = 8;

/// Submits KYC data for a level: stored sealed, the customer screened against the list with it, the provider told.
#[utoipa::path(post, path = "/v1/me/kyc", tag = "compliance",
    request_body(content = serde_json::Value, description = "the identity's fields (`level`, `legal_name`, \
        `date_of_birth`, `nationality`, `address`, …) and `documents`: a list of `kind` and `content_base64` \
        (PDF, PNG or JPEG, at most 10 MiB each, at most 8)"),
    security(("bearer" = [], "device" = [])),
    responses(
        (status = 201, description = "`submission` and its `state`", body = serde_json::Value),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, description = "level_held or submission_pending", body = ErrorBody),
        (status = 413, body = ErrorBody)
    ))]
pub(crate) async fn submit_kyc(
    State(state): State<AppState>,
    customer: Customer,
    ApiJson(body): ApiJson<KycRequest>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    customer.session()?;
    let mut identity = body.identity;
    identity.legal_name = identity.legal_name.trim().to_owned();
    identity.nationality = identity.nationality.trim().to_ascii_uppercase();
    if let Some(a) = identity.address.as_mut() {
        a.country = a.country.trim().to_ascii_uppercase();
    }
    if body.documents.len() > DOCUMENTS_MAX {
        return Err(ApiError::bad_request("too_many_documents", format!("at most {DOCUMENTS_MAX} documents")));
    }
    let mut docs = Vec::with_capacity(body.documents.len());
    for (i, d) in body.documents.iter().enumerate() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(d.content_base64.trim())
            .map_err(|_| ApiError::bad_request("invalid_document", format!("document {i} is not base64")))?;
        if bytes.len() > kyc::MAX_DOCUMENT_BYTES {
            return Err(ApiError::bad_request("document_too_large", format!("document {i} exceeds 10 MiB")));
        }
        let format = kyc::document_format(&bytes).ok_or_else(|| {
            ApiError::bad_request("invalid_document", format!("document {i} is not a PDF, PNG or JPEG file"))
        })?;
        docs.push((d.kind, format, bytes));
    }
    let kinds: Vec<DocumentKind> = docs.iter().map(|d| d.0).collect();
    let today = &rfc3339(state.now_ns())[..10];
    kyc::validate(&identity, &kinds, today).map_err(|e| ApiError::bad_request(e.code, e.message))?;
    let current = state.store().kyc_level(customer.record.id).await?;
    if identity.level.number() <= current {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "level_held",
            format!("your account is at level {current} already"),
        ));
    }
    let keyring = state.keyring()?;
    let provider = state.compliance().provider();
    let plain = serde_json::to_vec(&identity).expect("an identity serialises");
    let new_docs: Vec<NewDocument> = docs
        .iter()
        .map(|(kind, format, bytes)| NewDocument {
            kind: serde_json::to_value(kind).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
            content_type: (*format).to_owned(),
            sha256: Sha256::digest(bytes).to_vec(),
        })
        .collect();
    let record = crate::identity::customer_record(
        &state,
        &customer.actor(),
        "compliance.kyc.submitted",
        customer.record.id,
        Outcome::Success,
        &[("level", identity.level.number().to_string()), ("documents", docs.len().to_string())],
    );
    let id = state
        .store()
        .submit_kyc(
            customer.record.id,
            identity.level.number(),
            provider.name(),
            &new_docs,
            |id| keyring.encrypt(&plain, format!("kyc:{id}:identity").as_bytes()),
            |doc, i| keyring.encrypt(&docs[i].2, format!("kyc_document:{doc}").as_bytes()),
            state.now_ns(),
            &state.auditor(&keyring),
            vec![record],
        )
        .await?
        .ok_or_else(|| {
            ApiError::new(StatusCode::CONFLICT, "submission_pending", "a submission of yours is waiting for review")
        })?;
    let data = ScreeningData {
        name: identity.legal_name.clone(),
        country: Some(identity.nationality.clone()),
        date_of_birth: Some(identity.date_of_birth.clone()),
    };
    compliance::screen_customer(&state, customer.record.id, &customer.record.handle, &data, "kyc_submission").await?;
    let mut state_name = "pending";
    match provider.assess(&identity, &kinds) {
        Verdict::Pending => {}
        verdict => {
            let approve = verdict == Verdict::Approve;
            let reason = match verdict {
                Verdict::Reject(r) => r,
                _ => "approved by the provider".into(),
            };
            let by = format!("provider:{}", provider.name());
            let record = state.record(&by, "compliance.kyc.decided", &format!("kyc_submission:{id}"), Outcome::Success);
            state
                .store()
                .decide_kyc(id, approve, &by, &reason, state.now_ns(), &state.auditor(&keyring), vec![record])
                .await?;
            state_name = if approve { "approved" } else { "rejected" };
        }
    }
    Ok((StatusCode::CREATED, Json(serde_json::json!({"submission": id, "state": state_name}))))
}

/// The customer's KYC level, its limits and their submissions.
#[utoipa::path(get, path = "/v1/me/kyc", tag = "compliance",
    security(("bearer" = [], "device" = []), ("api_key" = [], "api_timestamp" = [], "api_signature" = [])),
    responses(
        (status = 200, description = "`level`, its `limits` and the `submissions`", body = serde_json::Value),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)
    ))]
pub(crate) async fn my_kyc(
    State(state): State<AppState>,
    customer: Customer,
) -> Result<Json<serde_json::Value>, ApiError> {
    customer.require(Scope::Read)?;
    let level = state.store().kyc_level(customer.record.id).await?;
    let limits = state.compliance().config().kyc_limits.of(Level::from_number(level).unwrap_or(Level::Zero));
    let subs = state.store().kyc_submissions(true, Some(customer.record.id), 20).await?;
    Ok(Json(serde_json::json!({
        "level": level,
        "limits": {"daily_usd": usd(limits.daily), "monthly_usd": usd(limits.monthly)},
        "submissions": subs.iter().map(|s| serde_json::json!({"id": s.id, "level": s.level, "state": s.state,
            "reason": s.reason, "submitted_at": rfc3339(s.submitted_at_ns)})).collect::<Vec<_>>(),
    })))
}

fn usd(micros: u64) -> String {
    format!("{}.{:02}", micros / kyc::USD, (micros % kyc::USD) / 10_000)
}

/// Submissions waiting (all with `?all=true`), without personal data.
#[utoipa::path(get, path = "/v1/compliance/kyc", tag = "compliance", params(AllQuery), security(("bearer" = [])),
    responses(
        (status = 200, description = "submissions, without personal data", body = Vec<serde_json::Value>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)
    ))]
pub(crate) async fn kyc_queue(
    State(state): State<AppState>,
    principal: Principal,
    q: Result<Query<AllQuery>, QueryRejection>,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    let q = query(q)?;
    state.authorize(&principal, Permission::ComplianceRead, "compliance.kyc.list", "-").await?;
    let subs = state.store().kyc_submissions(q.all, q.customer, 500).await?;
    Ok(Json(
        subs.iter()
            .map(|s| {
                serde_json::json!({"id": s.id, "customer": s.customer_id, "level": s.level, "state": s.state,
                "provider": s.provider, "submitted_at": rfc3339(s.submitted_at_ns)})
            })
            .collect(),
    ))
}

/// One submission: personal data masked unless the caller's roles may see it; every view is audited.
#[utoipa::path(get, path = "/v1/compliance/kyc/{id}", tag = "compliance",
    params(("id" = i64, Path, description = "submission id")), security(("bearer" = [])),
    responses(
        (status = 200, description = "the submission, personal data masked unless the roles may see it",
            body = serde_json::Value),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)
    ))]
pub(crate) async fn kyc_submission(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = path_i64(path)?;
    let target = format!("kyc_submission:{id}");
    state.authorize(&principal, Permission::ComplianceRead, "compliance.kyc.read", &target).await?;
    let s =
        state.store().kyc_submission(id).await?.ok_or_else(|| ApiError::not_found(format!("no submission {id}")))?;
    let keyring = state.keyring()?;
    let plain = keyring.decrypt(&s.data, format!("kyc:{id}:identity").as_bytes()).map_err(|e| {
        tracing::error!(submission = id, error = %e, "a KYC submission does not decrypt");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
    })?;
    let identity: Identity = serde_json::from_slice(&plain)
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error"))?;
    let unmasked = principal.may(Permission::PersonalData);
    let mut record = state.record(&principal.actor(), "compliance.kyc.viewed", &target, Outcome::Success);
    record.details.insert("customer".into(), s.customer_id.to_string());
    record.details.insert("unmasked".into(), unmasked.to_string());
    state.audit(vec![record]).await?;
    let shown = if unmasked { identity } else { identity.masked() };
    Ok(Json(serde_json::json!({
        "id": s.id, "customer": s.customer_id, "level": s.level, "state": s.state, "provider": s.provider,
        "reviewed_by": s.reviewed_by, "reason": s.reason, "submitted_at": rfc3339(s.submitted_at_ns),
        "masked": !unmasked, "identity": shown,
        "documents": s.documents.iter().map(|d| serde_json::json!({"id": d.id, "kind": d.kind,
            "content_type": d.content_type, "sha256": hex::encode(&d.sha256)})).collect::<Vec<_>>(),
    })))
}

/// A document's bytes: only for roles that may see personal data; audited.
#[utoipa::path(get, path = "/v1/compliance/kyc/documents/{id}", tag = "compliance",
    params(("id" = i64, Path, description = "document id")), security(("bearer" = [])),
    responses(
        (status = 200, description = "the document's bytes, with its own content type (PDF, PNG or JPEG)"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)
    ))]
pub(crate) async fn kyc_document(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = path_i64(path)?;
    let target = format!("kyc_document:{id}");
    state.authorize(&principal, Permission::PersonalData, "compliance.kyc.document", &target).await?;
    let (doc, submission, sealed) =
        state.store().kyc_document(id).await?.ok_or_else(|| ApiError::not_found(format!("no document {id}")))?;
    let keyring = state.keyring()?;
    let plain = keyring.decrypt(&sealed, target.as_bytes()).map_err(|e| {
        tracing::error!(document = id, error = %e, "a KYC document does not decrypt");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
    })?;
    let mut record = state.record(&principal.actor(), "compliance.kyc.document_viewed", &target, Outcome::Success);
    record.details.insert("submission".into(), submission.to_string());
    state.audit(vec![record]).await?;
    Ok(([(header::CONTENT_TYPE, doc.content_type)], plain.to_vec()).into_response())
}

/// `POST /v1/compliance/kyc/{id}/decide`.
#[derive(Deserialize, ToSchema)]
pub struct DecideRequest {
    /// Approve or reject.
    pub approve: bool,
    /// Why (shown to the customer when rejected).
    pub reason: String,
}

/// Approves (the customer's level rises) or rejects a submission.
#[utoipa::path(post, path = "/v1/compliance/kyc/{id}/decide", tag = "compliance", request_body = DecideRequest,
    params(("id" = i64, Path, description = "submission id")), security(("bearer" = [])),
    responses(
        (status = 200, description = "`submission`, `state`, `customer` and their `level`", body = serde_json::Value),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "submission_decided", body = ErrorBody)
    ))]
pub(crate) async fn decide_kyc(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    ApiJson(body): ApiJson<DecideRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = path_i64(path)?;
    let target = format!("kyc_submission:{id}");
    state.authorize(&principal, Permission::ComplianceReview, "compliance.kyc.decide", &target).await?;
    let reason = note_text(&body.reason)?;
    let keyring = state.keyring()?;
    let mut record = state.record(&principal.actor(), "compliance.kyc.decided", &target, Outcome::Success);
    record.details.insert("approve".into(), body.approve.to_string());
    match state
        .store()
        .decide_kyc(
            id,
            body.approve,
            &principal.actor(),
            reason,
            state.now_ns(),
            &state.auditor(&keyring),
            vec![record],
        )
        .await?
    {
        KycDecided::NotFound => Err(ApiError::not_found(format!("no submission {id}"))),
        KycDecided::AlreadyDecided => {
            Err(ApiError::new(StatusCode::CONFLICT, "submission_decided", "this submission is decided already"))
        }
        KycDecided::Done { customer_id, level } => Ok(Json(serde_json::json!({
            "submission": id, "state": if body.approve { "approved" } else { "rejected" },
            "customer": customer_id, "level": level,
        }))),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Travel Rule and transfer reviews.

/// `POST /v1/compliance/travel-rule`: a transfer's originator and beneficiary.
#[derive(Deserialize)]
pub struct TravelRuleRequest {
    /// The transfer.
    #[serde(flatten)]
    pub transfer: TransferBody,
    /// The parties.
    #[serde(flatten)]
    pub data: travel::TravelRule,
}

/// A transfer named in a staff request.
#[derive(Deserialize, ToSchema)]
pub struct TransferBody {
    /// The transfer's reference.
    pub reference: String,
    /// The customer (internal id).
    pub customer: i64,
    /// Asset.
    pub asset: String,
    /// Amount in the asset's units, as text.
    pub amount: String,
    /// Value in USD micro-dollars.
    pub amount_usd_micros: u64,
}

impl TransferBody {
    /// The transfer, once its reference is well formed and its customer exists.
    async fn checked(&self, state: &AppState) -> Result<compliance::Transfer<'_>, ApiError> {
        valid_reference(&self.reference)?;
        if state.store().customer_by_id(self.customer).await?.is_none() {
            return Err(ApiError::bad_request("unknown_customer", format!("no customer {}", self.customer)));
        }
        Ok(compliance::Transfer {
            customer_id: self.customer,
            reference: &self.reference,
            asset: &self.asset,
            amount: &self.amount,
            amount_usd: self.amount_usd_micros,
        })
    }
}

fn valid_reference(r: &str) -> Result<(), ApiError> {
    if r.is_empty() || r.len() > 100 || !r.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_:.".contains(&b)) {
        return Err(ApiError::bad_request("invalid_reference", "a reference is 1 to 100 letters, digits and -_:."));
    }
    Ok(())
}

/// Records a transfer's Travel Rule data (for transfers made outside the withdrawal flow, and the data a
/// counterparty sends with a deposit).
#[utoipa::path(post, path = "/v1/compliance/travel-rule", tag = "compliance",
    request_body(content = serde_json::Value, description = "the transfer's `reference`, `customer`, `asset`, \
        `amount` and `amount_usd_micros`, with its `originator` and `beneficiary`"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "recorded"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, description = "exists", body = ErrorBody)
    ))]
pub(crate) async fn record_travel_rule(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<TravelRuleRequest>,
) -> Result<StatusCode, ApiError> {
    let reference = &body.transfer.reference;
    state.authorize(&principal, Permission::ComplianceReview, "compliance.travel_rule.record", reference).await?;
    let transfer = body.transfer.checked(&state).await?;
    let fresh = compliance::record_travel_rule(&state, &principal.actor(), transfer, &body.data).await?;
    if fresh {
        Ok(StatusCode::CREATED)
    } else {
        Err(ApiError::new(StatusCode::CONFLICT, "exists", "this transfer has its record"))
    }
}

/// Travel Rule records, parties masked unless the roles may see personal data; unmasked views are audited.
#[utoipa::path(get, path = "/v1/compliance/travel-rule", tag = "compliance", params(AllQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "records, parties masked unless the roles may see personal data",
            body = Vec<serde_json::Value>),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)
    ))]
pub(crate) async fn travel_rule(
    State(state): State<AppState>,
    principal: Principal,
    q: Result<Query<AllQuery>, QueryRejection>,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    let q = query(q)?;
    state.authorize(&principal, Permission::ComplianceRead, "compliance.travel_rule.list", "-").await?;
    let records = state.store().travel_rule_records(q.customer, 200).await?;
    let unmasked = principal.may(Permission::PersonalData);
    let keyring = state.keyring()?;
    let mut out = Vec::with_capacity(records.len());
    for r in &records {
        let parties: Option<travel::TravelRule> = keyring
            .decrypt(&r.data, format!("travel_rule:{}", r.reference).as_bytes())
            .ok()
            .and_then(|p| serde_json::from_slice(&p).ok());
        if parties.is_none() {
            tracing::error!(reference = %r.reference, "a Travel Rule record does not decrypt");
        }
        let show = |p: &travel::Party| {
            if unmasked {
                serde_json::json!({"name": p.name, "account": p.account, "institution": p.institution, "details": p.details})
            } else {
                serde_json::json!({"name": kyc::mask_name(&p.name), "account": rampart_notify::mask_address(&p.account),
                    "institution": p.institution, "details": p.details.as_deref().map(kyc::mask_text)})
            }
        };
        out.push(serde_json::json!({
            "reference": r.reference, "customer": r.customer_id, "asset": r.asset, "amount": r.amount,
            "amount_usd": usd(r.amount_usd), "recorded_at": rfc3339(r.created_at_ns), "masked": !unmasked,
            "originator": parties.as_ref().map(|p| show(&p.originator)),
            "beneficiary": parties.as_ref().map(|p| show(&p.beneficiary)),
        }));
    }
    let mut record = state.record(&principal.actor(), "compliance.travel_rule.viewed", "-", Outcome::Success);
    record.details.insert("records".into(), records.len().to_string());
    record.details.insert("unmasked".into(), unmasked.to_string());
    state.audit(vec![record]).await?;
    Ok(Json(out))
}

fn review_view(r: &rampart_store::TransferReview) -> serde_json::Value {
    serde_json::json!({
        "id": r.id, "reference": r.reference, "customer": r.customer_id, "requested_by": r.requested_by,
        "asset": r.asset, "amount": r.amount, "amount_usd": usd(r.amount_usd), "state": r.state,
        "decisions": r.decisions.iter().map(|(d, reason, at)| serde_json::json!({"level": d.level,
            "reviewer": d.reviewer, "approve": d.approve, "reason": reason, "at": rfc3339(*at)})).collect::<Vec<_>>(),
        "created_at": rfc3339(r.created_at_ns),
    })
}

/// Opens the review of a transfer above the threshold (transfers made outside the withdrawal flow: the withdrawal
/// flow opens its own).
#[utoipa::path(post, path = "/v1/compliance/reviews", tag = "compliance", request_body = TransferBody,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "the review", body = serde_json::Value), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, description = "exists", body = ErrorBody)
    ))]
pub(crate) async fn open_review(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<TransferBody>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    state.authorize(&principal, Permission::ComplianceReview, "compliance.reviews.open", &body.reference).await?;
    let transfer = body.checked(&state).await?;
    if !review::needed(body.amount_usd_micros, state.compliance().config().review_usd) {
        return Err(ApiError::bad_request(
            "review_not_needed",
            format!("only transfers above USD {} are reviewed", usd(state.compliance().config().review_usd)),
        ));
    }
    let id = compliance::open_transfer_review(&state, &principal.actor(), transfer)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::CONFLICT, "exists", "this transfer is under review already"))?;
    let r = state.store().transfer_review(id).await?.ok_or_else(|| ApiError::not_found("review vanished"))?;
    Ok((StatusCode::CREATED, Json(review_view(&r))))
}

/// Reviews pending (all with `?all=true`).
#[utoipa::path(get, path = "/v1/compliance/reviews", tag = "compliance", params(AllQuery), security(("bearer" = [])),
    responses(
        (status = 200, body = Vec<serde_json::Value>), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)
    ))]
pub(crate) async fn reviews(
    State(state): State<AppState>,
    principal: Principal,
    q: Result<Query<AllQuery>, QueryRejection>,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    let q = query(q)?;
    state.authorize(&principal, Permission::ComplianceRead, "compliance.reviews.list", "-").await?;
    Ok(Json(state.store().transfer_reviews(q.all, 500).await?.iter().map(review_view).collect()))
}

/// Decides the waiting level of a review: the caller must hold that level's role, must not have asked for the
/// transfer nor decided an earlier level.
#[utoipa::path(post, path = "/v1/compliance/reviews/{id}/decide", tag = "compliance", request_body = DecideRequest,
    params(("id" = i64, Path, description = "review id")), security(("bearer" = [])),
    responses(
        (status = 200, description = "the review", body = serde_json::Value), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "forbidden, review_closed, own_request, already_decided, wrong_level",
            body = ErrorBody),
        (status = 404, body = ErrorBody)
    ))]
pub(crate) async fn decide_review(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    ApiJson(body): ApiJson<DecideRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = path_i64(path)?;
    let target = format!("transfer_review:{id}");
    state.authorize(&principal, Permission::ComplianceReview, "compliance.reviews.decide", &target).await?;
    let reason = note_text(&body.reason)?;
    let levels: Vec<u8> = principal
        .roles()
        .iter()
        .filter_map(|r| match r {
            Role::ComplianceL1 => Some(1),
            Role::ComplianceL2 => Some(2),
            Role::ComplianceL3 => Some(3),
            _ => None,
        })
        .collect();
    let keyring = state.keyring()?;
    let mut record = state.record(&principal.actor(), "compliance.review.decided", &target, Outcome::Success);
    record.details.insert("approve".into(), body.approve.to_string());
    match state
        .store()
        .decide_transfer_review(
            id,
            &principal.actor(),
            &levels,
            body.approve,
            reason,
            state.now_ns(),
            &state.auditor(&keyring),
            vec![record],
        )
        .await?
    {
        ReviewDecided::NotFound => Err(ApiError::not_found(format!("no review {id}"))),
        ReviewDecided::Refused(refused) => {
            let code = match refused {
                review::Refused::Closed => "review_closed",
                review::Refused::Requester => "own_request",
                review::Refused::AlreadyDecided { .. } => "already_decided",
                review::Refused::WrongLevel { .. } => "wrong_level",
            };
            let mut denied = state.record(&principal.actor(), "compliance.review.decided", &target, Outcome::Denied);
            denied.details.insert("reason".into(), code.into());
            state.audit(vec![denied]).await?;
            Err(ApiError::new(StatusCode::FORBIDDEN, code, refused.to_string()))
        }
        ReviewDecided::Done(_) => {
            let r = state.store().transfer_review(id).await?.ok_or_else(|| ApiError::not_found("review vanished"))?;
            Ok(Json(review_view(&r)))
        }
    }
}
