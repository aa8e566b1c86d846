//! Custody over HTTP: custodians and their identity keys, the ceremonies the server relays (key generation, share
//! refresh, removal of a custodian, repair of a lost share, signing of cold spends), refills of the hot wallet from
//! cold with approvals, the custody status, customers' deposit addresses and deposits, and (development only) the
//! built-in chain's faucet, miner and reorganisations.
//!
//! The server never holds a share: round-2 packages and repair deltas are encrypted end to end between custodians;
//! every message is signed by its sender's identity key, checked here before it is stored, and relayed as posted.
//! The server does check what it can: it completes a key ceremony only when every participant confirmed the same
//! transcript and public key package, and it checks each signature share against its custodian's verifying share
//! (naming a cheater) and the finished transaction with Bitcoin Core's interpreter.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use bitcoin::hashes::Hash;
use rampart_audit::{Outcome, Permission};
use rampart_custody::dkg::{CeremonyKind, Confirmation};
use rampart_custody::frost::Identifier;
use rampart_custody::frost::keys::PublicKeyPackage;
use rampart_custody::frost::round1::SigningCommitments;
use rampart_custody::frost::round2::SignatureShare;
use rampart_custody::policy;
use rampart_custody::{SigningRound, attach_key_spend_signatures, key_spend_sighashes, output_script, verify_spend};
use rampart_store::{CeremonyMessage, CeremonyRecord, KeyOutcome, Member, NewCeremony, PostOutcome, RefillDecision};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::custody::Custody;
use crate::error::{ApiError, ErrorBody};
use crate::handlers::ApiJson;
use crate::identity::{Customer, Scope};
use crate::principal::Principal;
use crate::staff_api::path_i64;

fn custody(state: &AppState) -> Result<&Custody, ApiError> {
    state.custody().ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "custody_disabled", "custody is not configured"))
}

fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, code, message)
}

fn hex_field(name: &str, value: &str) -> Result<Vec<u8>, ApiError> {
    hex::decode(value).map_err(|_| ApiError::bad_request("invalid_hex", format!("{name} is not hexadecimal")))
}

fn key32(name: &str, value: &str) -> Result<[u8; 32], ApiError> {
    hex_field(name, value)?
        .try_into()
        .map_err(|_| ApiError::bad_request("invalid_key", format!("{name} must be 32 bytes")))
}

pub(crate) fn staff_id(principal: &Principal) -> Result<i64, ApiError> {
    match principal {
        Principal::Staff(s) => Ok(s.id),
        Principal::DevRoot => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "staff_only",
            "this needs a staff member's own session, not the development root token",
        )),
    }
}

/// A custodian as others see them.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct CustodianView {
    /// The id.
    pub id: i64,
    /// The staff account.
    pub staff_id: i64,
    /// The name.
    pub name: String,
    /// Ed25519 identity key (hex).
    pub signing_key: String,
    /// X25519 key that secret packages are encrypted to (hex).
    pub exchange_key: String,
    /// `pending`, `active` or `retired`.
    pub status: String,
}

impl From<rampart_store::CustodianRecord> for CustodianView {
    fn from(c: rampart_store::CustodianRecord) -> CustodianView {
        CustodianView {
            id: c.id,
            staff_id: c.staff_id,
            name: c.name,
            signing_key: hex::encode(c.signing_key),
            exchange_key: hex::encode(c.exchange_key),
            status: c.status,
        }
    }
}

/// `POST /v1/custody/custodians`: the caller's identity keys.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterCustodian {
    /// Ed25519 public key (hex, 32 bytes).
    pub signing_key: String,
    /// X25519 public key (hex, 32 bytes).
    pub exchange_key: String,
}

/// Registers the signed-in treasury custodian with their identity keys (pending until an administrator activates).
#[utoipa::path(post, path = "/v1/custody/custodians", request_body = RegisterCustodian, security(("bearer" = [])),
    responses((status = 201, body = CustodianView), (status = 409, body = ErrorBody)))]
pub(crate) async fn register_custodian(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<RegisterCustodian>,
) -> Result<(StatusCode, Json<CustodianView>), ApiError> {
    state.authorize(&principal, Permission::CustodyCeremony, "custody.custodian.register", "-").await?;
    let id = staff_id(&principal)?;
    let signing = key32("signing_key", &body.signing_key)?;
    let exchange = key32("exchange_key", &body.exchange_key)?;
    let public = rampart_custody::envelope::PublicIdentity { signing, exchange };
    public.check().map_err(|e| ApiError::bad_request("invalid_key", e.to_string()))?;
    let Principal::Staff(staff) = &principal else { return Err(staff_id(&principal).unwrap_err()) };
    let keyring = state.keyring()?;
    let record =
        state.record(&principal.actor(), "custody.custodian.register", &format!("staff:{id}"), Outcome::Success);
    let created = state
        .store()
        .register_custodian(
            id,
            &staff.username,
            &signing,
            &exchange,
            state.now_ns(),
            &state.auditor(&keyring),
            vec![record],
        )
        .await?;
    if created.is_none() {
        return Err(conflict("already_registered", "this staff member or this key is registered already"));
    }
    let c = state.store().custodian_of_staff(id).await?.ok_or_else(|| ApiError::not_found("no custodian"))?;
    Ok((StatusCode::CREATED, Json(c.into())))
}

/// Every custodian.
#[utoipa::path(get, path = "/v1/custody/custodians", security(("bearer" = [])),
    responses((status = 200, body = Vec<CustodianView>)))]
pub(crate) async fn list_custodians(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Vec<CustodianView>>, ApiError> {
    if !principal.may(Permission::CustodyCeremony) {
        state.authorize(&principal, Permission::CustodyRead, "custody.custodian.list", "-").await?;
    }
    Ok(Json(state.store().custodians().await?.into_iter().map(Into::into).collect()))
}

/// Activates a registered custodian (an administrator, who has checked the keys with the person out of band).
#[utoipa::path(post, path = "/v1/custody/custodians/{id}/activate", params(("id" = i64, Path, description = "custodian id")),
    security(("bearer" = [])), responses((status = 200, body = CustodianView), (status = 404, body = ErrorBody)))]
pub(crate) async fn activate_custodian(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<CustodianView>, ApiError> {
    let id = path_i64(path)?;
    let target = format!("custodian:{id}");
    state.authorize(&principal, Permission::KeysManage, "custody.custodian.activate", &target).await?;
    let keyring = state.keyring()?;
    let record = state.record(&principal.actor(), "custody.custodian.activate", &target, Outcome::Success);
    if !state.store().set_custodian_status(id, "active", &state.auditor(&keyring), vec![record]).await? {
        return Err(ApiError::not_found(format!("no custodian {id}")));
    }
    let c = state.store().custodians().await?.into_iter().find(|c| c.id == id);
    Ok(Json(c.ok_or_else(|| ApiError::not_found(format!("no custodian {id}")))?.into()))
}

/// `POST /v1/custody/ceremonies`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCeremony {
    /// `dkg` (a new cold key), `refresh` (new shares, same key), `remove` (a refresh without one custodian) or
    /// `repair` (a lost share rebuilt by others).
    pub kind: String,
    /// Key generation: the custodians, in the order of their identifiers (1, 2, …).
    #[serde(default)]
    pub custodians: Vec<i64>,
    /// Key generation: signers needed (default 3).
    #[serde(default)]
    pub threshold: Option<u16>,
    /// Removal: the custodian who leaves.
    #[serde(default)]
    pub remove: Option<i64>,
    /// Repair: the identifier whose share was lost.
    #[serde(default)]
    pub lost: Option<u16>,
}

/// A participant of a ceremony.
#[derive(Serialize, Deserialize, ToSchema, Clone)]
pub struct RosterEntry {
    /// The FROST identifier of their share.
    pub identifier: u16,
    /// The custodian.
    pub custodian_id: i64,
    /// Their name.
    #[serde(default)]
    pub name: String,
    /// Their Ed25519 identity key (hex).
    #[serde(default)]
    pub signing_key: String,
    /// Their X25519 key (hex).
    #[serde(default)]
    pub exchange_key: String,
}

/// A relayed message.
#[derive(Serialize, Deserialize, ToSchema, Clone)]
pub struct MessageView {
    /// The round.
    pub round: String,
    /// The sender's identifier.
    pub sender: u16,
    /// The recipient's identifier; 0 is everyone.
    pub recipient: u16,
    /// The payload (hex).
    pub payload: String,
    /// The sender's Ed25519 signature (hex).
    pub signature: String,
}

/// A ceremony as a participant needs it.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct CeremonyView {
    /// The id.
    pub id: i64,
    /// Its kind.
    pub kind: String,
    /// The asset.
    pub asset: String,
    /// The network of the asset's chain (`regtest`, `bitcoin`, …).
    pub network: String,
    /// `open`, `completed`, `failed` or `expired`.
    pub state: String,
    /// Signers needed.
    pub threshold: u64,
    /// The participants.
    pub roster: Vec<RosterEntry>,
    /// Kind-specific parameters.
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    /// Why it failed.
    pub failure: Option<String>,
    /// The wallet it works on (or created).
    pub wallet_id: Option<i64>,
    /// The wallet's key epoch.
    pub epoch: Option<u64>,
    /// The wallet's public key package (hex), for every kind but key generation.
    pub public_package: Option<String>,
    /// The wallet's output script (hex).
    pub wallet_script: Option<String>,
    /// Signing: the unsigned transaction (hex, consensus encoding).
    pub tx: Option<String>,
    /// Signing: the outputs it spends (hex, consensus encoding of a vector of outputs).
    pub prevouts: Option<String>,
    /// The caller's identifier in the roster, if they are in it.
    pub you: Option<u16>,
    /// The messages the caller may read: broadcasts and those addressed to them.
    pub messages: Vec<MessageView>,
    /// When it expires (ns since the epoch, as a string).
    pub expires_at_ns: String,
}

fn roster_of(ceremony: &CeremonyRecord) -> Result<Vec<RosterEntry>, ApiError> {
    serde_json::from_str(&ceremony.roster)
        .map_err(|e| crate::custody::internal_error(format!("a stored roster does not parse: {e}")))
}

async fn roster_with_keys(state: &AppState, ceremony: &CeremonyRecord) -> Result<Vec<RosterEntry>, ApiError> {
    let custodians = state.store().custodians().await?;
    let mut roster = roster_of(ceremony)?;
    for entry in &mut roster {
        if let Some(c) = custodians.iter().find(|c| c.id == entry.custodian_id) {
            entry.name = c.name.clone();
            entry.signing_key = hex::encode(&c.signing_key);
            entry.exchange_key = hex::encode(&c.exchange_key);
        }
    }
    Ok(roster)
}

async fn caller_identifier(
    state: &AppState,
    principal: &Principal,
    roster: &[RosterEntry],
) -> Result<Option<u16>, ApiError> {
    let Principal::Staff(s) = principal else { return Ok(None) };
    let Some(me) = state.store().custodian_of_staff(s.id).await? else { return Ok(None) };
    Ok(roster.iter().find(|r| r.custodian_id == me.id).map(|r| r.identifier))
}

/// Creates a key ceremony (administrators): a new cold key among custodians, a refresh of its shares, the removal of
/// a custodian, or the repair of a lost share.
#[utoipa::path(post, path = "/v1/custody/ceremonies", request_body = CreateCeremony, security(("bearer" = [])),
    responses((status = 201, body = CeremonyView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn create_ceremony(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<CreateCeremony>,
) -> Result<(StatusCode, Json<CeremonyView>), ApiError> {
    let custody = custody(&state)?;
    let action = format!("custody.{}.create", body.kind);
    state.authorize(&principal, Permission::KeysManage, &action, "-").await?;
    let asset = custody.config.asset.clone();
    let active: Vec<i64> =
        state.store().custodians().await?.into_iter().filter(|c| c.status == "active").map(|c| c.id).collect();
    let cold = state.store().active_wallet(&asset, "cold").await?;
    let (roster, threshold, params, wallet_id): (Vec<(u16, i64)>, u64, serde_json::Value, Option<i64>) =
        match body.kind.as_str() {
            "dkg" => {
                if cold.is_some() {
                    return Err(conflict("wallet_exists", format!("{asset} has an active cold wallet")));
                }
                let threshold = body.threshold.unwrap_or(3);
                let n = body.custodians.len();
                let distinct: BTreeSet<i64> = body.custodians.iter().copied().collect();
                if distinct.len() != n || !(2..=255).contains(&n) || threshold < 2 || usize::from(threshold) > n {
                    return Err(ApiError::bad_request(
                        "invalid_roster",
                        "name 2 to 255 distinct custodians and a threshold between 2 and their number",
                    ));
                }
                if let Some(c) = body.custodians.iter().find(|c| !active.contains(c)) {
                    return Err(ApiError::bad_request("custodian_not_active", format!("custodian {c} is not active")));
                }
                let roster = body
                    .custodians
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (u16::try_from(i + 1).unwrap_or(u16::MAX), *c))
                    .collect();
                (roster, u64::from(threshold), serde_json::json!({"total": n, "threshold": threshold}), None)
            }
            "refresh" | "remove" | "repair" => {
                let cold = cold.ok_or_else(|| conflict("no_cold_wallet", format!("{asset} has no cold wallet")))?;
                let members = state.store().wallet_members(cold.id, cold.epoch).await?;
                let threshold = cold.threshold.unwrap_or(3);
                let mut roster: Vec<(u16, i64)> = members.iter().map(|m| (m.identifier, m.custodian_id)).collect();
                let params = match body.kind.as_str() {
                    "refresh" => serde_json::json!({"epoch": cold.epoch + 1}),
                    "remove" => {
                        let leaving = body.remove.ok_or_else(|| {
                            ApiError::bad_request("invalid_request", "name the custodian to remove (remove)")
                        })?;
                        let Some(pos) = roster.iter().position(|(_, c)| *c == leaving) else {
                            return Err(ApiError::bad_request(
                                "not_a_member",
                                format!("custodian {leaving} holds no share"),
                            ));
                        };
                        let (identifier, _) = roster.remove(pos);
                        if (roster.len() as u64) < threshold {
                            return Err(conflict("below_threshold", "the remaining custodians could no longer sign"));
                        }
                        serde_json::json!({"epoch": cold.epoch + 1, "removed": identifier})
                    }
                    _ => {
                        let lost = body.lost.filter(|l| roster.iter().any(|(i, _)| i == l)).ok_or_else(|| {
                            ApiError::bad_request("invalid_request", "name the lost share's identifier (lost)")
                        })?;
                        let helpers: Vec<u16> = roster
                            .iter()
                            .map(|(i, _)| *i)
                            .filter(|i| *i != lost)
                            .take(usize::try_from(threshold).unwrap_or(3))
                            .collect();
                        if (helpers.len() as u64) < threshold {
                            return Err(conflict("below_threshold", "not enough other custodians to repair a share"));
                        }
                        serde_json::json!({"lost": lost, "helpers": helpers, "epoch": cold.epoch})
                    }
                };
                (roster, threshold, params, Some(cold.id))
            }
            other => {
                return Err(ApiError::bad_request(
                    "invalid_kind",
                    format!("kind {:?}: expected dkg, refresh, remove or repair", other.escape_debug().to_string()),
                ));
            }
        };
    let keyring = state.keyring()?;
    let roster_json = serde_json::to_string(
        &roster.iter().map(|(i, c)| serde_json::json!({"identifier": i, "custodian_id": c})).collect::<Vec<_>>(),
    )
    .map_err(crate::custody::internal_error)?;
    let new = NewCeremony {
        kind: body.kind.clone(),
        asset,
        wallet_id,
        threshold,
        roster: roster_json,
        params: params.to_string(),
        created_by: principal.actor(),
        expires_at_ns: state.now_ns().saturating_add(custody.config.ceremony_ttl_s.saturating_mul(1_000_000_000)),
    };
    let mut record = state.record(&principal.actor(), &action, "-", Outcome::Success);
    record.details.insert("participants".into(), roster.len().to_string());
    let id = state.store().create_ceremony(&new, state.now_ns(), &state.auditor(&keyring), vec![record]).await?;
    let ceremony = state.store().ceremony(id).await?.ok_or_else(|| ApiError::not_found("no ceremony"))?;
    Ok((StatusCode::CREATED, Json(view(&state, custody, &principal, &ceremony).await?)))
}

async fn view(
    state: &AppState,
    custody: &Custody,
    principal: &Principal,
    ceremony: &CeremonyRecord,
) -> Result<CeremonyView, ApiError> {
    let roster = roster_with_keys(state, ceremony).await?;
    let you = caller_identifier(state, principal, &roster).await?;
    let wallet = match ceremony.wallet_id {
        Some(w) => state.store().wallet(w).await?,
        None => None,
    };
    let (tx, prevouts) = if ceremony.kind == "sign" {
        match state.store().custody_tx_of_ceremony(ceremony.id).await? {
            Some(t) => (Some(hex::encode(&t.tx)), Some(hex::encode(&t.prevouts))),
            None => (None, None),
        }
    } else {
        (None, None)
    };
    let messages = state
        .store()
        .ceremony_messages(ceremony.id, Some(you.unwrap_or(0)))
        .await?
        .into_iter()
        .map(|m| MessageView {
            round: m.round,
            sender: m.sender,
            recipient: m.recipient,
            payload: hex::encode(m.payload),
            signature: hex::encode(m.signature),
        })
        .collect();
    Ok(CeremonyView {
        id: ceremony.id,
        kind: ceremony.kind.clone(),
        asset: ceremony.asset.clone(),
        network: custody.network().to_string(),
        state: ceremony.state.clone(),
        threshold: ceremony.threshold,
        roster,
        params: serde_json::from_str(&ceremony.params).unwrap_or(serde_json::Value::Null),
        failure: ceremony.failure.clone(),
        wallet_id: ceremony.wallet_id,
        epoch: wallet.as_ref().map(|w| w.epoch),
        public_package: wallet.as_ref().and_then(|w| w.public_package.as_ref()).map(hex::encode),
        wallet_script: wallet.as_ref().map(|w| hex::encode(&w.script_pubkey)),
        tx,
        prevouts,
        you,
        messages,
        expires_at_ns: ceremony.expires_at_ns.to_string(),
    })
}

/// Open ceremonies, newest first.
#[utoipa::path(get, path = "/v1/custody/ceremonies", security(("bearer" = [])),
    responses((status = 200, body = Vec<CeremonyView>)))]
pub(crate) async fn list_ceremonies(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Vec<CeremonyView>>, ApiError> {
    let custody = custody(&state)?;
    if !principal.may(Permission::CustodyCeremony) {
        state.authorize(&principal, Permission::CustodyRead, "custody.ceremony.list", "-").await?;
    }
    let mut out = Vec::new();
    for c in state.store().ceremonies(false, 50).await? {
        out.push(view(&state, custody, &principal, &c).await?);
    }
    Ok(Json(out))
}

/// One ceremony, with the messages the caller may read.
#[utoipa::path(get, path = "/v1/custody/ceremonies/{id}", params(("id" = i64, Path, description = "ceremony id")),
    security(("bearer" = [])), responses((status = 200, body = CeremonyView), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_ceremony(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<CeremonyView>, ApiError> {
    let custody = custody(&state)?;
    let id = path_i64(path)?;
    if !principal.may(Permission::CustodyCeremony) {
        state
            .authorize(&principal, Permission::CustodyRead, "custody.ceremony.read", &format!("ceremony:{id}"))
            .await?;
    }
    let ceremony = state.store().ceremony(id).await?.ok_or_else(|| ApiError::not_found(format!("no ceremony {id}")))?;
    Ok(Json(view(&state, custody, &principal, &ceremony).await?))
}

/// `POST /v1/custody/ceremonies/{id}/messages`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostMessage {
    /// The round.
    pub round: String,
    /// The sender's identifier (the caller's).
    pub sender: u16,
    /// The recipient's identifier; 0 for everyone.
    #[serde(default)]
    pub recipient: u16,
    /// The payload (hex).
    pub payload: String,
    /// The sender's Ed25519 signature over the ceremony, round, sender, recipient and payload (hex).
    pub signature: String,
}

/// The rounds of each kind: (round, addressed to one participant).
fn round_rule(kind: &str, round: &str) -> Option<bool> {
    match (kind, round) {
        ("dkg" | "refresh" | "remove", "round1" | "confirm") => Some(false),
        ("dkg" | "refresh" | "remove", "round2") => Some(true),
        ("repair", "delta" | "sigma") => Some(true),
        ("repair", "confirm") => Some(false),
        ("sign", "commit" | "share") => Some(false),
        _ => None,
    }
}

/// The context every ceremony message is signed and encrypted under: the ceremony's id.
pub fn ceremony_context(id: i64) -> Vec<u8> {
    format!("rampart/custody/ceremony/{id}").into_bytes()
}

/// Posts a message to a ceremony as the caller's custodian; the server checks the sender's signature, stores the
/// message once, and moves the ceremony on when it can (completing or failing it).
#[utoipa::path(post, path = "/v1/custody/ceremonies/{id}/messages", params(("id" = i64, Path, description = "ceremony id")),
    request_body = PostMessage, security(("bearer" = [])),
    responses((status = 200, body = CeremonyView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn post_message(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    ApiJson(body): ApiJson<PostMessage>,
) -> Result<Json<CeremonyView>, ApiError> {
    let custody = custody(&state)?;
    let id = path_i64(path)?;
    let target = format!("ceremony:{id}");
    state.authorize(&principal, Permission::CustodyCeremony, "custody.ceremony.message", &target).await?;
    let ceremony = state.store().ceremony(id).await?.ok_or_else(|| ApiError::not_found(format!("no ceremony {id}")))?;
    let roster = roster_with_keys(&state, &ceremony).await?;
    let me = caller_identifier(&state, &principal, &roster).await?.ok_or_else(|| {
        ApiError::new(StatusCode::FORBIDDEN, "not_a_participant", "you are not in this ceremony's roster")
    })?;
    if body.sender != me {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "not_the_sender", "you can only post as your own identifier"));
    }
    let addressed = round_rule(&ceremony.kind, &body.round).ok_or_else(|| {
        ApiError::bad_request("invalid_round", format!("{} has no round {:?}", ceremony.kind, body.round))
    })?;
    if addressed != (body.recipient != 0)
        || body.recipient == me
        || (addressed && !roster.iter().any(|r| r.identifier == body.recipient))
    {
        return Err(ApiError::bad_request(
            "invalid_recipient",
            "this round's messages go to one other participant or to everyone",
        ));
    }
    if ceremony.kind == "sign" && body.round == "share" {
        let committed = state.store().ceremony_messages(id, None).await?;
        if !committed.iter().any(|m| m.round == "commit" && m.sender == me) {
            return Err(conflict("not_a_signer", "only the custodians who committed first sign this session"));
        }
    }
    let payload = hex_field("payload", &body.payload)?;
    let signature: [u8; 64] = hex_field("signature", &body.signature)?
        .try_into()
        .map_err(|_| ApiError::bad_request("invalid_signature", "a signature is 64 bytes"))?;
    let sender = roster.iter().find(|r| r.identifier == me).ok_or_else(|| ApiError::not_found("no roster entry"))?;
    let signing_key = key32("signing_key", &sender.signing_key)?;
    let to = (body.recipient != 0).then_some(body.recipient);
    if !rampart_custody::envelope::verify_message(
        &signing_key,
        &ceremony_context(id),
        &body.round,
        me,
        to,
        &payload,
        &signature,
    ) {
        return Err(ApiError::bad_request("invalid_signature", "the message is not signed by your identity key"));
    }
    let max_senders = (ceremony.kind == "sign" && body.round == "commit")
        .then(|| u16::try_from(ceremony.threshold).unwrap_or(u16::MAX));
    let message = CeremonyMessage {
        round: body.round.clone(),
        sender: me,
        recipient: body.recipient,
        payload,
        signature: signature.to_vec(),
    };
    match state.store().post_ceremony_message(id, &message, max_senders, state.now_ns()).await? {
        PostOutcome::Stored | PostOutcome::Duplicate => {}
        PostOutcome::Conflict => {
            return Err(conflict("message_conflict", "you already posted a different message for this round"));
        }
        PostOutcome::Closed => return Err(conflict("ceremony_closed", format!("ceremony {id} is {}", ceremony.state))),
        PostOutcome::Full => return Err(conflict("signers_complete", "the session already has its signers")),
    }
    progress(&state, custody, &ceremony, &roster).await?;
    let ceremony = state.store().ceremony(id).await?.ok_or_else(|| ApiError::not_found(format!("no ceremony {id}")))?;
    Ok(Json(view(&state, custody, &principal, &ceremony).await?))
}

fn identifier(i: u16) -> Result<Identifier, ApiError> {
    Identifier::try_from(i).map_err(|_| ApiError::bad_request("invalid_identifier", "identifiers start at 1"))
}

async fn fail(state: &AppState, ceremony: &CeremonyRecord, action: &str, reason: String) -> Result<(), ApiError> {
    let keyring = state.keyring()?;
    let mut record = state.record("system", action, &format!("ceremony:{}", ceremony.id), Outcome::Failure);
    record.details.insert("reason".into(), reason.clone());
    state.store().fail_ceremony(ceremony.id, &reason, state.now_ns(), &state.auditor(&keyring), vec![record]).await?;
    Ok(())
}

async fn complete(
    state: &AppState,
    ceremony: &CeremonyRecord,
    outcome: KeyOutcome,
    action: &str,
    details: Vec<(&str, String)>,
) -> Result<(), ApiError> {
    let keyring = state.keyring()?;
    let mut record = state.record("system", action, &format!("ceremony:{}", ceremony.id), Outcome::Success);
    for (k, v) in details {
        record.details.insert(k.into(), v);
    }
    state
        .store()
        .complete_ceremony(ceremony.id, &outcome, state.now_ns(), &state.auditor(&keyring), vec![record])
        .await?;
    Ok(())
}

/// Moves a ceremony on after a message: a key ceremony completes when every participant has confirmed the same
/// outcome; a signing session checks each share as it arrives and finishes the transaction with the last one.
async fn progress(
    state: &AppState,
    custody: &Custody,
    ceremony: &CeremonyRecord,
    roster: &[RosterEntry],
) -> Result<(), ApiError> {
    let messages = state.store().ceremony_messages(ceremony.id, None).await?;
    match ceremony.kind.as_str() {
        "dkg" | "refresh" | "remove" => key_confirmations(state, ceremony, roster, &messages).await,
        "repair" => repair_confirmation(state, ceremony, &messages).await,
        "sign" => signing(state, custody, ceremony, roster, &messages).await,
        _ => Ok(()),
    }
}

async fn key_confirmations(
    state: &AppState,
    ceremony: &CeremonyRecord,
    roster: &[RosterEntry],
    messages: &[CeremonyMessage],
) -> Result<(), ApiError> {
    let confirms: Vec<&CeremonyMessage> = messages.iter().filter(|m| m.round == "confirm").collect();
    if confirms.len() < roster.len() {
        return Ok(());
    }
    let kind = if ceremony.kind == "dkg" { CeremonyKind::Dkg } else { CeremonyKind::Refresh };
    let action = format!("custody.{}.completed", ceremony.kind);
    let failed = format!("custody.{}.failed", ceremony.kind);
    let mut agreed: Option<([u8; 32], Vec<u8>)> = None;
    for entry in roster {
        let Some(m) = confirms.iter().find(|m| m.sender == entry.identifier) else { return Ok(()) };
        if m.payload.len() < 96 {
            return fail(state, ceremony, &failed, format!("custodian {} sent a malformed confirmation", entry.name))
                .await;
        }
        let transcript: [u8; 32] = m.payload[..32].try_into().expect("32 bytes");
        let signature: [u8; 64] = m.payload[32..96].try_into().expect("64 bytes");
        let package = m.payload[96..].to_vec();
        let Ok(public) = PublicKeyPackage::deserialize(&package) else {
            return fail(state, ceremony, &failed, format!("custodian {} sent an unreadable key package", entry.name))
                .await;
        };
        let group_key = public.verifying_key().serialize().map_err(crate::custody::internal_error)?;
        let confirmation = Confirmation { kind, id: identifier(entry.identifier)?, transcript, group_key, signature };
        let identity = ed25519_dalek::VerifyingKey::from_bytes(&key32("signing_key", &entry.signing_key)?)
            .map_err(|_| ApiError::bad_request("invalid_key", "a custodian's identity key is invalid"))?;
        if !confirmation.verify(&identity) {
            return fail(
                state,
                ceremony,
                &failed,
                format!("the confirmation of custodian {} is not signed by them", entry.name),
            )
            .await;
        }
        match &agreed {
            None => agreed = Some((transcript, package)),
            Some((t, p)) if *t == transcript && *p == package => {}
            Some(_) => {
                return fail(state, ceremony, &failed, format!("custodian {} saw a different ceremony", entry.name))
                    .await;
            }
        }
    }
    let Some((_, package)) = agreed else { return Ok(()) };
    let public = PublicKeyPackage::deserialize(&package).map_err(crate::custody::internal_error)?;
    let identifiers: BTreeSet<Identifier> =
        roster.iter().map(|r| identifier(r.identifier)).collect::<Result<_, _>>()?;
    let shares: BTreeSet<Identifier> = public.verifying_shares().keys().copied().collect();
    if identifiers != shares || public.min_signers().map(u64::from) != Some(ceremony.threshold) {
        return fail(state, ceremony, &failed, "the key package does not match the roster or the threshold".into())
            .await;
    }
    let members: Vec<Member> =
        roster.iter().map(|r| Member { identifier: r.identifier, custodian_id: r.custodian_id }).collect();
    let script = output_script(&public).map_err(crate::custody::internal_error)?;
    if ceremony.kind == "dkg" {
        let address = bitcoin::Address::from_script(&script, crate::custody::network_of(state)?)
            .map(|a| a.to_string())
            .unwrap_or_default();
        let outcome = KeyOutcome::NewWallet { script_pubkey: script.to_bytes(), public_package: package, members };
        complete(state, ceremony, outcome, &action, vec![("address", address)]).await
    } else {
        let wallet = match ceremony.wallet_id {
            Some(w) => state.store().wallet(w).await?,
            None => None,
        };
        let Some(wallet) = wallet else { return fail(state, ceremony, &failed, "the wallet is gone".into()).await };
        if wallet.script_pubkey != script.to_bytes() {
            return fail(state, ceremony, &failed, "the refreshed key is not the wallet's key".into()).await;
        }
        let outcome = KeyOutcome::NewEpoch { public_package: package, members };
        complete(state, ceremony, outcome, &action, vec![("epoch", (wallet.epoch + 1).to_string())]).await
    }
}

/// The public key package of the wallet a ceremony works on.
async fn wallet_package(state: &AppState, ceremony: &CeremonyRecord) -> Result<PublicKeyPackage, ApiError> {
    let wallet = match ceremony.wallet_id {
        Some(w) => state.store().wallet(w).await?,
        None => None,
    };
    wallet
        .and_then(|w| w.public_package)
        .and_then(|p| PublicKeyPackage::deserialize(&p).ok())
        .ok_or_else(|| crate::custody::internal_error(format!("ceremony {} has no wallet key package", ceremony.id)))
}

async fn repair_confirmation(
    state: &AppState,
    ceremony: &CeremonyRecord,
    messages: &[CeremonyMessage],
) -> Result<(), ApiError> {
    let params: serde_json::Value = serde_json::from_str(&ceremony.params).unwrap_or_default();
    let lost = params["lost"].as_u64().and_then(|l| u16::try_from(l).ok()).unwrap_or(0);
    let Some(m) = messages.iter().find(|m| m.round == "confirm" && m.sender == lost) else { return Ok(()) };
    let public = wallet_package(state, ceremony).await?;
    let expected = public
        .verifying_shares()
        .get(&identifier(lost)?)
        .and_then(|s| s.serialize().ok())
        .ok_or_else(|| crate::custody::internal_error("no verifying share for the lost identifier"))?;
    if m.payload == expected {
        complete(
            state,
            ceremony,
            KeyOutcome::Unchanged,
            "custody.repair.completed",
            vec![("identifier", lost.to_string())],
        )
        .await
    } else {
        fail(state, ceremony, "custody.repair.failed", "the rebuilt share does not match the lost one".into()).await
    }
}

fn hex_list(payload: &[u8]) -> Option<Vec<Vec<u8>>> {
    let list: Vec<String> = serde_json::from_slice(payload).ok()?;
    list.iter().map(|h| hex::decode(h).ok()).collect()
}

/// A signing session's statement to sign, when it signs a proof-of-reserves statement rather than a transaction
/// (`params.attest`, written by the service when it opened the session).
pub(crate) fn attest_statement(params: &serde_json::Value) -> Option<AttestParams> {
    serde_json::from_value(params.get("attest")?.clone()).ok()
}

/// What a cold wallet's attestation session signs (docs/reserves-spec.md §9.1).
#[derive(Deserialize, Serialize, Clone, Debug)]
pub(crate) struct AttestParams {
    pub exchange: String,
    pub snapshot: String,
    pub asset: String,
    pub height: u64,
    /// Display order, hex.
    pub block_hash: String,
    /// Hex.
    pub script_pubkey: String,
}

impl AttestParams {
    /// `f` applied to the statement, if its hex fields are well formed.
    pub(crate) fn with_statement<R>(&self, f: impl FnOnce(&rampart_verify::report::Statement<'_>) -> R) -> Option<R> {
        let block_hash: [u8; 32] = hex::decode(&self.block_hash).ok()?.try_into().ok()?;
        let script = hex::decode(&self.script_pubkey).ok()?;
        Some(f(&rampart_verify::report::Statement {
            exchange: &self.exchange,
            snapshot: &self.snapshot,
            asset: &self.asset,
            height: self.height,
            block_hash,
            script_pubkey: &script,
        }))
    }
}

/// A signing session moves on: a transaction's (one signature per input) or a reserves statement's (one).
async fn signing(
    state: &AppState,
    custody: &Custody,
    ceremony: &CeremonyRecord,
    roster: &[RosterEntry],
    messages: &[CeremonyMessage],
) -> Result<(), ApiError> {
    let params: serde_json::Value = serde_json::from_str(&ceremony.params).unwrap_or_default();
    if let Some(attest) = attest_statement(&params) {
        let Some(message) = attest.with_statement(rampart_verify::report::control_message) else {
            return fail(state, ceremony, "custody.attest.failed", "the statement is malformed".into()).await;
        };
        let Some((signatures, signers)) =
            frost_rounds(state, ceremony, roster, messages, &[message], "custody.attest").await?
        else {
            return Ok(());
        };
        let signature = signatures[0];
        // The aggregate verified under the group key; this checks it under the address's key too.
        if attest.with_statement(|s| rampart_verify::report::verify_control(s, &signature).is_ok()) != Some(true) {
            return fail(
                state,
                ceremony,
                "custody.attest.failed",
                "the signature does not verify under the address's key".into(),
            )
            .await;
        }
        let names: Vec<String> = signers.iter().map(|i| crate::custody::identifier_number(i).to_string()).collect();
        return complete(
            state,
            ceremony,
            KeyOutcome::Attested { signature: signature.to_vec() },
            "custody.attest.completed",
            vec![("snapshot", attest.snapshot.clone()), ("signers", names.join(","))],
        )
        .await;
    }
    let Some(t) = state.store().custody_tx_of_ceremony(ceremony.id).await? else { return Ok(()) };
    let (mut tx, spent) = crate::custody::decode_tx(&t)?;
    let sighashes = key_spend_sighashes(&tx, &spent).map_err(crate::custody::internal_error)?;
    let Some((signatures, signers)) =
        frost_rounds(state, ceremony, roster, messages, &sighashes, "custody.sign").await?
    else {
        return Ok(());
    };
    let name = |i: u16| roster.iter().find(|r| r.identifier == i).map_or_else(|| i.to_string(), |r| r.name.clone());
    attach_key_spend_signatures(&mut tx, &signatures).map_err(crate::custody::internal_error)?;
    if let Err(e) = verify_spend(&tx, &spent) {
        return fail(
            state,
            ceremony,
            "custody.sign.failed",
            format!("Bitcoin Core's interpreter refused the transaction: {e}"),
        )
        .await;
    }
    let signed = bitcoin::consensus::encode::serialize(&tx);
    let signer_names: Vec<String> = signers.iter().map(|i| name(crate::custody::identifier_number(i))).collect();
    complete(
        state,
        ceremony,
        KeyOutcome::Signed { custody_tx_id: t.id, tx: signed },
        "custody.sign.completed",
        vec![("txid", tx.compute_txid().to_string()), ("signers", signer_names.join(","))],
    )
    .await?;
    // Send it at once rather than on the worker's next tick.
    let keyring = state.keyring()?;
    crate::custody::broadcast_pending(state, custody, &keyring).await?;
    Ok(())
}

/// The FROST rounds of a signing session over `sighashes` (one round per message): each custodian's commitments
/// and shares, every share checked on arrival against the signer's verifying share. `None` while messages are
/// missing, or when the session failed (recorded under `action` `.failed` / `.invalid_share`); otherwise the
/// aggregated signatures, each verified under the group key, and the signers.
async fn frost_rounds(
    state: &AppState,
    ceremony: &CeremonyRecord,
    roster: &[RosterEntry],
    messages: &[CeremonyMessage],
    sighashes: &[[u8; 32]],
    action: &str,
) -> Result<Option<(Vec<[u8; 64]>, BTreeSet<Identifier>)>, ApiError> {
    let commits: Vec<&CeremonyMessage> = messages.iter().filter(|m| m.round == "commit").collect();
    if (commits.len() as u64) < ceremony.threshold {
        return Ok(None);
    }
    let shares: Vec<&CeremonyMessage> = messages.iter().filter(|m| m.round == "share").collect();
    if shares.is_empty() {
        return Ok(None);
    }
    let failed = format!("{action}.failed");
    let invalid = format!("{action}.invalid_share");
    let name = |i: u16| roster.iter().find(|r| r.identifier == i).map_or_else(|| i.to_string(), |r| r.name.clone());
    let public = wallet_package(state, ceremony).await?;
    let signers: BTreeSet<Identifier> = commits.iter().map(|m| identifier(m.sender)).collect::<Result<_, _>>()?;
    let mut rounds = Vec::with_capacity(sighashes.len());
    for sighash in sighashes {
        rounds
            .push(SigningRound::new(public.clone(), sighash, signers.clone()).map_err(crate::custody::internal_error)?);
    }
    for m in &commits {
        let parsed = hex_list(&m.payload).filter(|l| l.len() == sighashes.len());
        let malformed = format!("custodian {} sent malformed commitments", name(m.sender));
        let Some(list) = parsed else {
            fail(state, ceremony, &failed, malformed).await?;
            return Ok(None);
        };
        for (round, bytes) in rounds.iter_mut().zip(list) {
            let Ok(c) = SigningCommitments::deserialize(&bytes) else {
                fail(state, ceremony, &failed, malformed).await?;
                return Ok(None);
            };
            round.commit(identifier(m.sender)?, c).map_err(crate::custody::internal_error)?;
        }
    }
    for m in &shares {
        let list = hex_list(&m.payload).filter(|l| l.len() == sighashes.len());
        let Some(list) = list else {
            fail(state, ceremony, &invalid, format!("custodian {} sent malformed shares", name(m.sender))).await?;
            return Ok(None);
        };
        for (input, (round, bytes)) in rounds.iter_mut().zip(list).enumerate() {
            let checked = SignatureShare::deserialize(&bytes).map_err(|e| e.to_string()).and_then(|s| {
                round.share(identifier(m.sender).map_err(|e| e.message().to_owned())?, s).map_err(|e| e.to_string())
            });
            if let Err(why) = checked {
                tracing::warn!(ceremony = ceremony.id, custodian = %name(m.sender), input, error = %why, "an invalid signature share");
                let reason = format!("the signature share of custodian {} is invalid (input {input})", name(m.sender));
                fail(state, ceremony, &invalid, reason).await?;
                return Ok(None);
            }
        }
    }
    if shares.len() < signers.len() {
        return Ok(None);
    }
    let mut signatures = Vec::with_capacity(rounds.len());
    for round in &rounds {
        signatures.push(round.aggregate().map_err(crate::custody::internal_error)?);
    }
    Ok(Some((signatures, signers)))
}

/// `POST /v1/custody/refills`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProposeRefill {
    /// The amount to move from cold to hot, in the asset's unit (`0.5`).
    pub amount: String,
    /// Why.
    pub reason: String,
}

/// A refill proposal.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct RefillView {
    /// The id.
    pub id: i64,
    /// The asset.
    pub asset: String,
    /// The amount, in the asset's unit.
    pub amount: String,
    /// Why.
    pub reason: String,
    /// Who proposed it.
    pub proposed_by: String,
    /// `pending`, `approved`, `rejected` or `done`.
    pub state: String,
    /// The signing session, once approved.
    pub ceremony_id: Option<i64>,
    /// Staff ids who approved.
    pub approvals: Vec<i64>,
}

fn refill_view(state: &AppState, p: rampart_store::RefillProposal) -> RefillView {
    let amount = state
        .assets()
        .lookup(&p.asset)
        .map(|a| a.format_amount(rampart_core::Amount::new(u128::from(p.amount))))
        .unwrap_or_else(|_| p.amount.to_string());
    RefillView {
        id: p.id,
        asset: p.asset,
        amount,
        reason: p.reason,
        proposed_by: p.proposed_by,
        state: p.state,
        ceremony_id: p.ceremony_id,
        approvals: p.approvals,
    }
}

/// Proposes a refill of the hot wallet from cold (treasury custodians); a quorum of others must approve.
#[utoipa::path(post, path = "/v1/custody/refills", request_body = ProposeRefill, security(("bearer" = [])),
    responses((status = 201, body = RefillView), (status = 400, body = ErrorBody)))]
pub(crate) async fn propose_refill(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<ProposeRefill>,
) -> Result<(StatusCode, Json<RefillView>), ApiError> {
    let custody = custody(&state)?;
    state.authorize(&principal, Permission::CustodyCeremony, "custody.refill.propose", "-").await?;
    let asset = state
        .assets()
        .lookup(&custody.config.asset)
        .map_err(|e| ApiError::bad_request("unknown_asset", e.to_string()))?;
    let amount =
        asset.parse_amount(&body.amount).map_err(|e| ApiError::bad_request("invalid_amount", e.to_string()))?;
    let amount = u64::try_from(amount.units())
        .ok()
        .filter(|a| *a > 0)
        .ok_or_else(|| ApiError::bad_request("invalid_amount", "the amount is out of range"))?;
    // A refill may not push the hot wallet over its cap: the sweeper would only send it back.
    let b = state.store().custody_balances(&custody.config.asset).await?;
    let total = u128::from(b.cold.0)
        + u128::from(b.hot.0)
        + u128::from(b.deposit.0)
        + u128::from(b.in_flight_to_cold)
        + u128::from(b.in_flight_to_hot);
    let hot_after = u128::from(b.hot.0) + u128::from(b.deposit.0) + u128::from(b.in_flight_to_hot) + u128::from(amount);
    if hot_after * 10_000 > u128::from(custody.config.policy.max_hot_bps) * total {
        return Err(conflict(
            "above_hot_cap",
            format!(
                "the hot wallet would hold more than {} basis points of the custody total",
                custody.config.policy.max_hot_bps
            ),
        ));
    }
    let reason = body.reason.trim();
    if reason.is_empty() || reason.chars().count() > 500 {
        return Err(ApiError::bad_request("invalid_reason", "give a reason of 1 to 500 characters"));
    }
    let keyring = state.keyring()?;
    let mut record = state.record(&principal.actor(), "custody.refill.proposed", "-", Outcome::Success);
    record.details.insert("amount_sat".into(), amount.to_string());
    let id = state
        .store()
        .propose_refill(
            &custody.config.asset,
            amount,
            reason,
            &principal.actor(),
            state.now_ns(),
            &state.auditor(&keyring),
            vec![record],
        )
        .await?;
    let p = state
        .store()
        .refill_proposals(None)
        .await?
        .into_iter()
        .find(|p| p.id == id)
        .ok_or_else(|| ApiError::not_found("no refill"))?;
    Ok((StatusCode::CREATED, Json(refill_view(&state, p))))
}

/// Refill proposals, newest first.
#[utoipa::path(get, path = "/v1/custody/refills", security(("bearer" = [])), responses((status = 200, body = Vec<RefillView>)))]
pub(crate) async fn list_refills(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Vec<RefillView>>, ApiError> {
    if !principal.may(Permission::CustodyCeremony) {
        state.authorize(&principal, Permission::CustodyRead, "custody.refill.list", "-").await?;
    }
    Ok(Json(state.store().refill_proposals(None).await?.into_iter().map(|p| refill_view(&state, p)).collect()))
}

/// Approves a refill (a treasury custodian other than the proposer). With the quorum reached, the refill
/// transaction is built and a signing session opened for the cold wallet's custodians.
#[utoipa::path(post, path = "/v1/custody/refills/{id}/approve", params(("id" = i64, Path, description = "refill id")),
    security(("bearer" = [])), responses((status = 200, body = RefillView), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn approve_refill(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<RefillView>, ApiError> {
    let custody = custody(&state)?;
    let id = path_i64(path)?;
    let target = format!("refill:{id}");
    state.authorize(&principal, Permission::CustodyCeremony, "custody.refill.approve", &target).await?;
    let staff = staff_id(&principal)?;
    let keyring = state.keyring()?;
    let record = state.record(&principal.actor(), "custody.refill.approve", &target, Outcome::Success);
    let decision = state
        .store()
        .approve_refill(id, staff, custody.config.refill_quorum, state.now_ns(), &state.auditor(&keyring), vec![record])
        .await?;
    let proposal = match decision {
        RefillDecision::Recorded(p) => p,
        RefillDecision::Approved(p) => {
            crate::custody::start_refill(&state, custody, &p, &principal.actor()).await?;
            state.store().refill_proposals(None).await?.into_iter().find(|q| q.id == id).unwrap_or(p)
        }
        RefillDecision::NotFound => return Err(ApiError::not_found(format!("no refill {id}"))),
        RefillDecision::NotPending => return Err(conflict("not_pending", "this refill is not waiting for approvals")),
        RefillDecision::AlreadyApproved => {
            return Err(conflict("already_approved", "you approved this refill already"));
        }
        RefillDecision::OwnProposal => {
            let mut denied = state.record(&principal.actor(), "custody.refill.approve", &target, Outcome::Denied);
            denied.details.insert("reason".into(), "own_proposal".into());
            state.audit(vec![denied]).await?;
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "four_eyes",
                "a refill must be approved by others than its proposer",
            ));
        }
    };
    Ok(Json(refill_view(&state, proposal)))
}

/// Custody of one asset at a glance.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct CustodyStatusView {
    /// The asset.
    pub asset: String,
    /// The chain's network.
    pub network: String,
    /// The last block the watcher processed.
    pub height: Option<u64>,
    /// Satoshis in the cold wallet.
    pub cold_sat: u64,
    /// In the hot wallet.
    pub hot_sat: u64,
    /// In deposit addresses, not yet swept.
    pub deposit_sat: u64,
    /// Counted as cold: in flight to cold.
    pub in_flight_to_cold_sat: u64,
    /// In flight to hot.
    pub in_flight_to_hot_sat: u64,
    /// The cold share in basis points (10 000 = all).
    pub cold_share_bps: u32,
    /// The floor of the cold share, in basis points.
    pub cold_share_floor_bps: u32,
    /// Unspent outputs: cold, hot, deposit.
    pub utxos: [u64; 3],
    /// Sweeps not yet confirmed.
    pub pending_sweeps: u64,
    /// Refills not yet done.
    pub pending_refills: u64,
    /// Deposits waiting for confirmations.
    pub pending_deposits: u64,
    /// The cold wallet's address and key epoch, once it exists.
    pub cold_address: Option<String>,
    /// The cold key's epoch.
    pub cold_epoch: Option<u64>,
    /// The hot wallet's address.
    pub hot_address: Option<String>,
}

/// Custody status: balances per wallet, the cold share, pending sweeps, refills and deposits, output counts.
#[utoipa::path(get, path = "/v1/custody/status", security(("bearer" = [])), responses((status = 200, body = CustodyStatusView)))]
pub(crate) async fn status(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<CustodyStatusView>, ApiError> {
    let custody = custody(&state)?;
    if !principal.may(Permission::CustodyCeremony) {
        state.authorize(&principal, Permission::CustodyRead, "custody.status", "-").await?;
    }
    Ok(Json(status_of(&state, custody).await?))
}

/// The status figures (also for the CLI and the demo).
pub async fn status_of(state: &AppState, custody: &Custody) -> Result<CustodyStatusView, ApiError> {
    let asset = &custody.config.asset;
    let b = state.store().custody_balances(asset).await?;
    let balances = policy::Balances {
        cold: b.cold.0,
        hot: b.hot.0,
        deposit: b.deposit.0,
        in_flight_to_cold: b.in_flight_to_cold,
        in_flight_to_hot: b.in_flight_to_hot,
    };
    let address = |script: &[u8]| {
        bitcoin::Address::from_script(bitcoin::Script::from_bytes(script), custody.network())
            .ok()
            .map(|a| a.to_string())
    };
    let cold = state.store().active_wallet(asset, "cold").await?;
    let hot = state.store().active_wallet(asset, "hot").await?;
    Ok(CustodyStatusView {
        asset: asset.clone(),
        network: custody.network().to_string(),
        height: state.store().seen_tip(asset).await?.map(|(h, _)| h),
        cold_sat: b.cold.0,
        hot_sat: b.hot.0,
        deposit_sat: b.deposit.0,
        in_flight_to_cold_sat: b.in_flight_to_cold,
        in_flight_to_hot_sat: b.in_flight_to_hot,
        cold_share_bps: policy::cold_share_bps(&balances),
        cold_share_floor_bps: 10_000 - custody.config.policy.max_hot_bps,
        utxos: [b.cold.1, b.hot.1, b.deposit.1],
        pending_sweeps: b.pending_sweeps,
        pending_refills: b.pending_refills,
        pending_deposits: b.pending_deposits,
        cold_address: cold.as_ref().and_then(|w| address(&w.script_pubkey)),
        cold_epoch: cold.as_ref().map(|w| w.epoch),
        hot_address: hot.as_ref().and_then(|w| address(&w.script_pubkey)),
    })
}

/// A customer's deposit address.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct DepositAddressView {
    /// The asset.
    pub asset: String,
    /// The address (Taproot).
    pub address: String,
    /// Confirmations before a deposit is credited.
    pub confirmations: u32,
}

async fn deposit_address_view(
    state: &AppState,
    customer: &Customer,
    fresh: bool,
) -> Result<Json<DepositAddressView>, ApiError> {
    customer.require(Scope::Read)?;
    let custody = custody(state)?;
    let a = crate::custody::deposit_address(state, custody, customer.record.id, fresh).await?;
    let confirmations = state.assets().lookup(&a.asset).map(|x| x.confirmations).unwrap_or(1);
    Ok(Json(DepositAddressView { asset: a.asset, address: a.address, confirmations }))
}

/// The signed-in customer's deposit address (made on first request).
#[utoipa::path(get, path = "/v1/me/deposit-address", responses((status = 200, body = DepositAddressView)))]
pub(crate) async fn get_deposit_address(
    State(state): State<AppState>,
    customer: Customer,
) -> Result<Json<DepositAddressView>, ApiError> {
    deposit_address_view(&state, &customer, false).await
}

/// A fresh deposit address for the signed-in customer (never used by anyone before).
#[utoipa::path(post, path = "/v1/me/deposit-address", responses((status = 200, body = DepositAddressView)))]
pub(crate) async fn new_deposit_address(
    State(state): State<AppState>,
    customer: Customer,
) -> Result<Json<DepositAddressView>, ApiError> {
    deposit_address_view(&state, &customer, true).await
}

/// A deposit.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct DepositView {
    /// The transaction id.
    pub txid: String,
    /// The output.
    pub vout: u32,
    /// The amount, in the asset's unit.
    pub amount: String,
    /// The block that confirmed it.
    pub height: u64,
    /// `pending` (waiting for confirmations), `credited`, `dust` (below the minimum, not credited), `reversed` or
    /// `orphaned` (its block left the chain), `held` (under review), `released` (to be credited) or `refused`.
    pub state: String,
}

/// The signed-in customer's deposits, newest first.
#[utoipa::path(get, path = "/v1/me/deposits", responses((status = 200, body = Vec<DepositView>)))]
pub(crate) async fn deposits(
    State(state): State<AppState>,
    customer: Customer,
) -> Result<Json<Vec<DepositView>>, ApiError> {
    customer.require(Scope::Read)?;
    let custody = custody(&state)?;
    let asset = state.assets().lookup(&custody.config.asset).ok();
    Ok(Json(
        state
            .store()
            .customer_deposits(customer.record.id, 100)
            .await?
            .into_iter()
            .map(|d| DepositView {
                txid: bitcoin::Txid::from_slice(&d.txid).map(|t| t.to_string()).unwrap_or_default(),
                vout: d.vout,
                amount: asset.map_or_else(
                    || d.amount.to_string(),
                    |a| a.format_amount(rampart_core::Amount::new(u128::from(d.amount))),
                ),
                height: d.height,
                state: d.state,
            })
            .collect(),
    ))
}

/// `POST /v1/dev/chain/mine`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MineRequest {
    /// How many blocks (1 to 1000).
    pub blocks: u64,
}

/// `POST /v1/dev/chain/faucet`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FaucetRequest {
    /// The address to pay.
    pub address: String,
    /// Satoshis.
    pub amount_sat: u64,
}

/// `POST /v1/dev/chain/reorg`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReorgRequest {
    /// Blocks to undo (0: none; the transactions in `evict` only leave the mempool, as a node restarting or trimming
    /// its mempool would drop them, and one empty block is mined).
    pub depth: u64,
    /// Transactions the new branch leaves out (hex txids).
    #[serde(default)]
    pub evict: Vec<String>,
}

/// The development chain's tip after an operation.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct DevChainView {
    /// Height.
    pub height: u64,
    /// The tip's hash.
    pub tip: String,
    /// A transaction or output made (faucet: `txid:vout`).
    pub made: Option<String>,
}

async fn dev_chain<'a>(
    state: &'a AppState,
    principal: &Principal,
    action: &str,
) -> Result<&'a std::sync::Arc<rampart_chain::DevChainNode>, ApiError> {
    state.authorize(principal, Permission::KeysManage, action, "-").await?;
    custody(state)?.dev.as_ref().ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "no_dev_chain", "the service does not run the development chain")
    })
}

fn dev_view(node: &rampart_chain::DevChainNode, made: Option<String>) -> DevChainView {
    let (height, tip) = node.with_chain(|c| c.tip());
    DevChainView { height, tip: tip.to_string(), made }
}

fn dev_error(e: rampart_chain::ChainError) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "dev_chain_refused", e.to_string())
}

/// Development only: mines blocks on the built-in chain.
#[utoipa::path(post, path = "/v1/dev/chain/mine", request_body = MineRequest, security(("bearer" = [])), responses((status = 200, body = DevChainView)))]
pub(crate) async fn dev_mine(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<MineRequest>,
) -> Result<Json<DevChainView>, ApiError> {
    let node = dev_chain(&state, &principal, "dev.chain.mine").await?;
    if !(1..=1000).contains(&body.blocks) {
        return Err(ApiError::bad_request("invalid_blocks", "mine 1 to 1000 blocks"));
    }
    node.mine(body.blocks).map_err(dev_error)?;
    Ok(Json(dev_view(node, None)))
}

/// Development only: pays an address from nothing (mined in the next block).
#[utoipa::path(post, path = "/v1/dev/chain/faucet", request_body = FaucetRequest, security(("bearer" = [])), responses((status = 200, body = DevChainView)))]
pub(crate) async fn dev_faucet(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<FaucetRequest>,
) -> Result<Json<DevChainView>, ApiError> {
    let node = dev_chain(&state, &principal, "dev.chain.faucet").await?;
    let network = custody(&state)?.network();
    let address = body
        .address
        .parse::<bitcoin::Address<bitcoin::address::NetworkUnchecked>>()
        .ok()
        .and_then(|a| a.require_network(network).ok())
        .ok_or_else(|| ApiError::bad_request("invalid_address", format!("not a {network} address")))?;
    if body.amount_sat < 330 || body.amount_sat > 21_000_000 * 100_000_000 {
        return Err(ApiError::bad_request("invalid_amount", "pay between 330 sat and 21 million BTC"));
    }
    let outpoint =
        node.faucet(address.script_pubkey(), bitcoin::Amount::from_sat(body.amount_sat)).map_err(dev_error)?;
    Ok(Json(dev_view(node, Some(outpoint.to_string()))))
}

/// Development only: a reorganisation of the built-in chain.
#[utoipa::path(post, path = "/v1/dev/chain/reorg", request_body = ReorgRequest, security(("bearer" = [])), responses((status = 200, body = DevChainView)))]
pub(crate) async fn dev_reorg(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<ReorgRequest>,
) -> Result<Json<DevChainView>, ApiError> {
    let node = dev_chain(&state, &principal, "dev.chain.reorg").await?;
    let evict: Vec<bitcoin::Txid> = body
        .evict
        .iter()
        .map(|t| t.parse().map_err(|_| ApiError::bad_request("invalid_txid", format!("{t:?} is not a txid"))))
        .collect::<Result<_, _>>()?;
    if body.depth > 100 || (body.depth == 0 && evict.is_empty()) {
        return Err(ApiError::bad_request(
            "invalid_depth",
            "reorganise 1 to 100 blocks, or 0 to evict transactions from the mempool",
        ));
    }
    node.reorg(body.depth, &evict).map_err(dev_error)?;
    Ok(Json(dev_view(node, None)))
}
