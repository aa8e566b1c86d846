//! Proof of reserves in the service: snapshots of every customer's balances at one ledger point, built into the
//! liabilities tree of `rampart-reserves` (docs/reserves-spec.md) and published; customers' inclusion proofs; the
//! auditors' leaf file.
//!
//! A snapshot stores its parameters, root and totals, the balances as read and the tree's secret sealed under the
//! data key; a proof is answered from the tree rebuilt from them (and kept in memory for the next request).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use rampart_audit::{Outcome, Permission};
use rampart_reserves::private::PrivateTree;
use rampart_reserves::{Holding, Reveal, Tree, TreeSecret, decode_holdings, encode_holdings, height_for};
use std::collections::BTreeMap;

use bitcoin::hashes::Hash;
use rampart_store::{Attestation, LiabilityOwner, NewReservesSnapshot, ReservesSnapshot};
use rampart_verify::params::{Asset, Params};
use rampart_verify::report::{REPORT_CONTEXT, REPORT_FORMAT, Statement, control_message};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::custody_api::AttestParams;
use crate::error::{ApiError, ErrorBody};
use crate::handlers::ApiJson;
use crate::identity::{Customer, Scope};
use crate::principal::Principal;

/// The ledger account code of customers' balances (what the exchange owes).
const CUSTOMER_ACCOUNT_CODE: u16 = crate::customer_api::CUSTOMER_ACCOUNT_CODE;
/// Published maximum of one user's balance: 10^(decimals + 12) smallest units (a trillion whole coins), capped so
/// that 2^height balances at the maximum fit 128 bits.
const MAX_WHOLE_DIGITS: u32 = 12;
/// The smallest tree the service builds: 2^10 positions, so a small exchange's user count stays hidden.
pub const HEIGHT_MIN_DEFAULT: u8 = 10;
/// Longest snapshot name.
const NAME_LEN_MAX: usize = 64;

/// How the service builds its trees.
#[derive(Clone, Debug)]
pub struct ReservesConfig {
    /// The exchange's name, bound into every hash of its trees.
    pub exchange: String,
    /// The smallest height of a tree.
    pub height_min: u8,
    /// How long `POST /v1/reserves` waits for the tree before answering `202` and finishing in the background.
    pub build_wait: std::time::Duration,
}

impl Default for ReservesConfig {
    fn default() -> Self {
        ReservesConfig { exchange: "Rampart".into(), height_min: HEIGHT_MIN_DEFAULT, build_wait: SNAPSHOT_WAIT }
    }
}

/// The service's reserves state: the configuration and the last tree built.
pub struct Reserves {
    config: ReservesConfig,
    cache: tokio::sync::Mutex<Option<(String, Built)>>,
}

/// A snapshot's tree, in its form.
#[derive(Clone)]
enum Built {
    Revealed(Arc<Tree>),
    Private(Arc<PrivateTree>),
}

impl Built {
    fn user_index(&self, user_id: &[u8]) -> Option<usize> {
        match self {
            Built::Revealed(t) => t.user_index(user_id),
            Built::Private(t) => t.user_index(user_id),
        }
    }

    fn root(&self) -> [u8; 32] {
        match self {
            Built::Revealed(t) => t.root(),
            Built::Private(t) => t.root(),
        }
    }
}

/// `revealed`: proofs reveal the sibling sums along the path (spec §4); `private`: Pedersen commitments and range
/// proofs, no other customer's balance in any proof (spec §8).
const FORMS: [&str; 2] = ["revealed", "private"];

impl Reserves {
    pub fn new(config: ReservesConfig) -> Self {
        Reserves { config, cache: tokio::sync::Mutex::new(None) }
    }
}

/// The body of `POST /v1/reserves`.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    /// The snapshot's name (1 to 64 of `[A-Za-z0-9._-]`); default `ledger-<seq>-<unix seconds>`.
    pub name: Option<String>,
    /// `revealed` (default: proofs reveal the sibling sums along the path) or `private` (Pedersen commitments and
    /// Bulletproofs range proofs: no other customer's balance in any proof; balances must fit 64 bits).
    pub form: Option<String>,
}

/// One asset of a publication.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct PublishedAsset {
    /// The asset's code.
    pub code: String,
    /// The largest balance one user may hold, in the smallest unit (decimal string).
    pub max: String,
    /// Total liabilities to customers, in the smallest unit (decimal string).
    pub liabilities: String,
}

/// A published liabilities snapshot: what anyone needs to check a proof.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Publication {
    /// The snapshot's name (bound into every hash).
    pub snapshot: String,
    /// The exchange's name (bound into every hash).
    pub exchange: String,
    /// The ledger point read: the newest transfer's sequence number.
    pub ledger_seq: i64,
    /// When it was taken (ns since the Unix epoch, decimal string).
    pub created_at_ns: String,
    /// The tree's height (2^height positions; users are padded to hide their number).
    pub height: u8,
    /// The root (hex).
    pub root: String,
    /// `revealed_sums`: proofs reveal the sibling sums along the path; `private`: they reveal no other customer's
    /// balance, and verifying them needs the publication (`GET /v1/reserves/{snapshot}/publication`).
    pub form: String,
    /// The specification the encodings follow.
    pub spec: String,
    /// Per asset, in the tree's order.
    pub assets: Vec<PublishedAsset>,
    /// The cold wallet's signing sessions its custodians are to sign for the reserves' side (when just opened).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signing_sessions: Vec<i64>,
}

/// A customer's inclusion proof.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ProofView {
    /// The snapshot.
    pub snapshot: String,
    /// The published root (hex) the proof leads to.
    pub root: String,
    /// The binary proof (docs/reserves-spec.md §4), hex; `rampart-verify proof` and the verifier page read it.
    pub proof: String,
    /// The customer's id in the tree (their public handle, hex).
    pub user_id: String,
    /// The customer's balances in the snapshot (asset, smallest units).
    pub balances: Vec<ProofBalance>,
    /// The published totals, in the tree's asset order (decimal strings), for `--totals`.
    pub totals: Vec<String>,
}

/// A balance in a proof.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ProofBalance {
    pub asset: String,
    pub amount: String,
}

/// The query of the proof routes.
#[derive(Deserialize, IntoParams, Default)]
#[serde(deny_unknown_fields)]
pub struct ProofQuery {
    /// `all` to reveal every asset's sums along the path (a larger proof); by default only the chunks of assets the
    /// customer holds.
    pub reveal: Option<String>,
}

#[derive(Deserialize)]
struct StoredParams {
    exchange: String,
    snapshot: String,
    height: u8,
    assets: Vec<(String, String)>,
}

fn params_json(p: &Params) -> String {
    serde_json::json!({
        "exchange": p.exchange,
        "snapshot": p.snapshot,
        "height": p.height,
        "assets": p.assets.iter().map(|a| (a.code.clone(), a.max.to_string())).collect::<Vec<_>>(),
    })
    .to_string()
}

fn stored_params(s: &ReservesSnapshot) -> Result<Params, ApiError> {
    let corrupt = || ApiError::internal(format!("snapshot {} has unreadable parameters", s.name));
    let p: StoredParams = serde_json::from_str(&s.params).map_err(|_| corrupt())?;
    let assets = p
        .assets
        .into_iter()
        .map(|(code, max)| Ok(Asset { code, max: max.parse().map_err(|_| corrupt())? }))
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(Params { exchange: p.exchange, snapshot: p.snapshot, height: p.height, assets })
}

fn stored_totals(s: &ReservesSnapshot) -> Result<Vec<String>, ApiError> {
    serde_json::from_str(&s.totals)
        .map_err(|_| ApiError::internal(format!("snapshot {} has unreadable totals", s.name)))
}

/// The private form's proven levels `b` for `users` customers: the crate's choice under its budget, but never more
/// published top nodes than about two per customer and asset. The top publication is paid once to save every
/// proof `h − b` range proofs; with few customers, few proofs are ever asked, and proving every level in each is
/// cheaper than proving thousands of nodes nobody's path needs. A function of what a rebuild has too, so that a
/// rebuilt tree has the same root.
fn proven_levels(params: &Params, users: usize) -> u8 {
    let budget = rampart_reserves::private::proven_levels_for(params.assets.len(), params.height);
    let users_log2 = users.max(1).ilog2() as u8;
    budget.max(params.height.saturating_sub(users_log2)).min(params.height)
}

fn form_name(s: &ReservesSnapshot) -> &'static str {
    if s.form == "private" { "private" } else { "revealed_sums" }
}

fn publication(s: &ReservesSnapshot) -> Result<Publication, ApiError> {
    let params = stored_params(s)?;
    let totals = stored_totals(s)?;
    Ok(Publication {
        snapshot: s.name.clone(),
        exchange: params.exchange.clone(),
        ledger_seq: s.ledger_seq,
        created_at_ns: s.created_at_ns.to_string(),
        height: params.height,
        root: hex::encode(&s.root),
        form: form_name(s).into(),
        spec: "docs/reserves-spec.md, version 1".into(),
        assets: params
            .assets
            .iter()
            .zip(totals)
            .map(|(a, t)| PublishedAsset { code: a.code.clone(), max: a.max.to_string(), liabilities: t })
            .collect(),
        signing_sessions: Vec::new(),
    })
}

/// A liability's id in the tree: a customer's handle in hex (what they know themselves by), or `account-<id>` for an
/// account of the customers' code that names no customer.
fn user_id(owner: &LiabilityOwner) -> Vec<u8> {
    match owner {
        LiabilityOwner::Customer(handle) => hex::encode(handle).into_bytes(),
        LiabilityOwner::Account(id) => format!("account-{id:032x}").into_bytes(),
    }
}

fn secret_aad(name: &str) -> Vec<u8> {
    format!("reserves:{name}:secret").into_bytes()
}

fn valid_name(name: &str) -> bool {
    (1..=NAME_LEN_MAX).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Takes a snapshot: reads every customer's balances at one ledger point, builds the tree, and records it. A tree
/// that takes longer than `build_wait` (20 s by default) to build (millions of users) is finished in the background: the answer
/// is then `202` with the snapshot's name, and the publication appears under it when it is recorded.
#[utoipa::path(post, path = "/v1/reserves", tag = "reserves", request_body = SnapshotRequest,
    security(("bearer" = [])), responses(
    (status = 201, body = Publication), (status = 202, body = SnapshotBuilding), (status = 400, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)
))]
pub(crate) async fn create_snapshot(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<SnapshotRequest>,
) -> Result<Response, ApiError> {
    state.authorize(&principal, Permission::ReservesPublish, "reserves.snapshot", "reserves").await?;
    if let Some(name) = &request.name
        && !valid_name(name)
    {
        return Err(ApiError::bad_request("invalid_name", "a snapshot name is 1 to 64 of [A-Za-z0-9._-]"));
    }
    let private = match request.form.as_deref() {
        None | Some("revealed") => false,
        Some("private") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_form",
                format!("a snapshot's form is one of {FORMS:?}, not {other:?}"),
            ));
        }
    };
    let (named, name) = tokio::sync::oneshot::channel();
    let mut task = tokio::spawn(take_snapshot(state.clone(), principal.actor(), request.name, private, named));
    let joined = |j: Result<Result<Publication, ApiError>, tokio::task::JoinError>| {
        j.map_err(|_| ApiError::internal("the snapshot task failed"))?
    };
    let Ok(name) = name.await else {
        // Refused before it was named (a read failed, say): the task's answer says why.
        return joined(task.await).map(|p| (StatusCode::CREATED, Json(p)).into_response());
    };
    match tokio::time::timeout(state.reserves().config.build_wait, &mut task).await {
        Ok(done) => joined(done).map(|p| (StatusCode::CREATED, Json(p)).into_response()),
        Err(_) => {
            tokio::spawn(async move {
                if let Err(e) = joined(task.await) {
                    tracing::error!(code = e.code(), error = %e.message(), "a snapshot built in the background failed");
                }
            });
            Ok((StatusCode::ACCEPTED, Json(SnapshotBuilding { snapshot: name, state: "building".into() }))
                .into_response())
        }
    }
}

/// How long `POST /v1/reserves` waits for the tree before answering `202`, by default (below the request timeout).
pub const SNAPSHOT_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// A snapshot still being built.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct SnapshotBuilding {
    /// Its name: `GET /v1/reserves/{snapshot}` answers once it is recorded.
    pub snapshot: String,
    /// `building`.
    pub state: String,
}

/// The snapshot's work: read, name (sent on `named` as soon as it is known), the reserves' side, the tree, the
/// record, the cold wallet's signing sessions.
async fn take_snapshot(
    state: AppState,
    actor: String,
    requested: Option<String>,
    private: bool,
    named: tokio::sync::oneshot::Sender<String>,
) -> Result<Publication, ApiError> {
    let keyring = state.keyring()?;
    let read = state.store().read_liabilities(CUSTOMER_ACCOUNT_CODE).await?;
    let name = requested.unwrap_or_else(|| format!("ledger-{}-{}", read.ledger_seq, state.now_ns() / 1_000_000_000));
    let config = &state.reserves().config;
    if state.store().reserves_snapshot(&name).await?.is_some() {
        return Err(ApiError::new(StatusCode::CONFLICT, "snapshot_exists", format!("a snapshot named {name} exists")));
    }
    let attestations = reserves_side(&state, &config.exchange, &name).await?;
    let _ = named.send(name.clone());

    // The configured assets, in registry order; balances of an asset no longer configured are still owed.
    let mut codes: Vec<(String, u8)> =
        state.assets().iter().map(|a| (a.code.as_str().to_owned(), a.decimals)).collect();
    for (_, asset, _) in &read.balances {
        if !codes.iter().any(|(c, _)| c == asset) {
            codes.push((asset.clone(), 18));
        }
    }
    let mut by_user: std::collections::BTreeMap<Vec<u8>, Vec<(u16, u128)>> = Default::default();
    for (owner, asset, amount) in &read.balances {
        let index = codes.iter().position(|(c, _)| c == asset).expect("every asset was added") as u16;
        by_user.entry(user_id(owner)).or_default().push((index, *amount));
    }
    let holdings: Vec<Holding> = by_user.into_iter().map(|(user_id, balances)| Holding { user_id, balances }).collect();
    let height = height_for(holdings.len(), config.height_min);
    let params = Params {
        exchange: config.exchange.clone(),
        snapshot: name.clone(),
        height,
        assets: codes
            .iter()
            .map(|(code, decimals)| Asset {
                code: code.clone(),
                max: 10u128.checked_pow(u32::from(*decimals) + MAX_WHOLE_DIGITS).unwrap_or(u128::MAX).min(
                    // The private form's range proofs are of 64 bits.
                    if private { u128::from(u64::MAX >> height) } else { u128::MAX >> height },
                ),
            })
            .collect(),
    };
    let mut secret: [u8; 32] = rand::random();
    let encoded = encode_holdings(&holdings);
    let users = holdings.len() as i64;
    let tree_secret = TreeSecret::new(secret);
    let (built, holdings_check) = tokio::task::spawn_blocking(move || {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        // The tree is built from the stored encoding, so that a rebuild later gives the same root.
        let decoded = decode_holdings(&encoded).expect("just encoded");
        let built = if private {
            let b = proven_levels(&params, decoded.len());
            PrivateTree::build_with_proven_levels(params, decoded, &tree_secret, threads, b)
                .map(|t| Built::Private(Arc::new(t)))
        } else {
            Tree::build(params, decoded, &tree_secret, threads).map(|t| Built::Revealed(Arc::new(t)))
        };
        (built, encoded)
    })
    .await
    .map_err(|_| ApiError::internal("building the tree failed"))?;
    let built = built.map_err(|e| ApiError::bad_request("snapshot_invalid", e.to_string()))?;
    let root = built.root();
    let (totals, params_text, published_bytes): (Vec<String>, String, Option<Vec<u8>>) = match &built {
        Built::Revealed(t) => (t.totals().iter().map(u128::to_string).collect(), params_json(t.params()), None),
        Built::Private(t) => {
            (t.totals().iter().map(u64::to_string).collect(), params_json(t.params()), Some(t.publication().encode()))
        }
    };
    let sealed = keyring.encrypt(&secret, &secret_aad(&name));
    secret.fill(0);
    let totals_text = serde_json::to_string(&totals).expect("strings serialise");
    let mut record = state.record(&actor, "reserves.snapshot", &format!("reserves:{name}"), Outcome::Success);
    record.details.insert("root".into(), hex::encode(root));
    record.details.insert("ledger_seq".into(), read.ledger_seq.to_string());
    if !read.overdrawn.is_empty() {
        // Overdrawn accounts of the customers' code owe rather than are owed: left out, never netted.
        record.details.insert("overdrawn_accounts".into(), read.overdrawn.len().to_string());
    }
    record.details.insert("reserve_addresses".into(), attestations.len().to_string());
    let new = NewReservesSnapshot {
        name: &name,
        ledger_seq: read.ledger_seq,
        created_by: &actor,
        params: &params_text,
        root: &root,
        totals: &totals_text,
        users,
        secret: &sealed,
        holdings: &holdings_check,
        attestations: &attestations,
        form: if private { "private" } else { "revealed" },
        publication: published_bytes.as_deref(),
    };
    state
        .store()
        .insert_reserves_snapshot(&new, state.now_ns(), &state.auditor(&keyring), vec![record])
        .await?
        .ok_or_else(|| {
            ApiError::new(StatusCode::CONFLICT, "snapshot_exists", format!("a snapshot named {name} exists"))
        })?;
    let snapshot =
        state.store().reserves_snapshot(&name).await?.ok_or_else(|| ApiError::internal("snapshot vanished"))?;
    *state.reserves().cache.lock().await = Some((name, built));
    let mut published = publication(&snapshot)?;
    published.signing_sessions = open_attestation_sessions(&state, &snapshot, &actor).await?;
    Ok(published)
}

/// The reserves' side of a snapshot (docs/reserves-spec.md §9): every address of the custody wallets holding coins
/// at the newest block the watcher has read, with its outputs there; hot and deposit addresses signed at once by the
/// hot key, the cold wallet's left to its custodians' signing session.
async fn reserves_side(state: &AppState, exchange: &str, snapshot: &str) -> Result<Vec<Attestation>, ApiError> {
    let Some(custody) = state.custody() else { return Ok(Vec::new()) };
    let asset = custody.config.asset.clone();
    let Some((height, hash)) = state.store().seen_tip(&asset).await? else { return Ok(Vec::new()) };
    let internal: [u8; 32] = hash.try_into().map_err(|_| ApiError::internal("a stored block hash is not 32 bytes"))?;
    let shown = bitcoin::BlockHash::from_byte_array(internal).to_string();
    let mut block_hash = internal;
    block_hash.reverse();
    type Outputs = (String, Option<(u32, u32)>, Vec<(String, u64)>);
    let mut by_script: BTreeMap<Vec<u8>, Outputs> = BTreeMap::new();
    for o in state.store().reserve_outputs(&asset, height).await? {
        let entry = by_script.entry(o.script_pubkey.clone()).or_insert_with(|| (o.wallet.clone(), o.path, Vec::new()));
        entry.2.push((format!("{}:{}", o.txid, o.vout), o.value));
    }
    let hot_key = if by_script.values().any(|(wallet, ..)| wallet != "cold") {
        let keyring = state.keyring()?;
        let wallet = state
            .store()
            .active_wallet(&asset, "hot")
            .await?
            .ok_or_else(|| ApiError::internal("hot-wallet coins without a hot wallet"))?;
        Some(crate::custody::open_hot_key(&keyring, &wallet)?)
    } else {
        None
    };
    let mut out = Vec::with_capacity(by_script.len());
    for (script, (wallet, path, outputs)) in by_script {
        let message = control_message(&Statement {
            exchange,
            snapshot,
            asset: &asset,
            height,
            block_hash,
            script_pubkey: &script,
        });
        let signature = match (&hot_key, wallet.as_str(), path) {
            (_, "cold", _) => None,
            (Some(key), _, Some((branch, index))) => Some(
                key.sign_message(branch, index, &bitcoin::ScriptBuf::from_bytes(script.clone()), &message)
                    .map_err(|e| ApiError::internal(format!("the hot key could not attest: {e}")))?
                    .to_vec(),
            ),
            _ => return Err(ApiError::internal(format!("a {wallet} output without its key's path"))),
        };
        out.push(Attestation {
            asset: asset.clone(),
            script_pubkey: script,
            wallet,
            height,
            block_hash: shown.clone(),
            balance: outputs.iter().map(|(_, v)| v).sum(),
            outputs,
            signature,
            ceremony_id: None,
        });
    }
    Ok(out)
}

/// Opens a signing session of the cold wallet's custodians for each unsigned cold address of `snapshot` that has
/// no open session; answers the sessions now open for it.
async fn open_attestation_sessions(
    state: &AppState,
    snapshot: &ReservesSnapshot,
    actor: &str,
) -> Result<Vec<i64>, ApiError> {
    let Some(custody) = state.custody() else { return Ok(Vec::new()) };
    let params = stored_params(snapshot)?;
    let mut open = Vec::new();
    for a in state.store().reserves_attestations(snapshot.id).await? {
        if a.signature.is_some() || a.wallet != "cold" {
            continue;
        }
        if let Some(id) = a.ceremony_id
            && state.store().ceremony(id).await?.is_some_and(|c| c.state == "open")
        {
            open.push(id);
            continue;
        }
        let cold = state.store().active_wallet(&a.asset, "cold").await?.filter(|w| w.script_pubkey == a.script_pubkey);
        let Some(cold) = cold else {
            // The key was replaced since: nobody can sign for this address through the service any more.
            tracing::warn!(snapshot = %snapshot.name, "a cold address of a snapshot is no longer the active cold wallet");
            continue;
        };
        let attest = AttestParams {
            exchange: params.exchange.clone(),
            snapshot: snapshot.name.clone(),
            asset: a.asset.clone(),
            height: a.height,
            block_hash: a.block_hash.clone(),
            script_pubkey: hex::encode(&a.script_pubkey),
        };
        let mut session = serde_json::Map::new();
        session.insert("attest".into(), serde_json::to_value(&attest).map_err(ApiError::internal)?);
        let details =
            vec![("snapshot".to_owned(), snapshot.name.clone()), ("reserves".to_owned(), a.balance.to_string())];
        let id = crate::custody::open_cold_session(state, custody, &cold, session, details, actor).await?;
        if state.store().set_reserves_attestation_ceremony(snapshot.id, &a.asset, &a.script_pubkey, id).await? {
            open.push(id);
        }
    }
    Ok(open)
}

/// Opens the cold wallet's signing sessions a snapshot still needs (one expired or failed, say).
#[utoipa::path(post, path = "/v1/reserves/{snapshot}/attestations", tag = "reserves", params(("snapshot" = String, Path)),
    security(("bearer" = [])), responses(
    (status = 200, body = Publication), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)
))]
pub(crate) async fn reopen_attestations(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Json<Publication>, ApiError> {
    state
        .authorize(&principal, Permission::ReservesPublish, "reserves.attestations", &format!("reserves:{name}"))
        .await?;
    let s = snapshot(&state, &name).await?;
    let mut published = publication(&s)?;
    published.signing_sessions = open_attestation_sessions(&state, &s, &principal.actor()).await?;
    Ok(Json(published))
}

/// A report with the service's signature.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct SignedReport {
    /// The report (docs/reserves-spec.md §9.2), as the exact JSON text that is signed.
    pub report: String,
    /// Ed25519 over `"rampart-por-v1 report\0"` then the report's bytes, hex.
    pub signature: String,
    /// The service's public key (the audit log's signing key), hex.
    pub public_key: String,
}

fn bps(part: u128, whole: u128) -> Option<u128> {
    (whole > 0).then(|| part.saturating_mul(10_000) / whole)
}

/// The snapshot's report: liabilities, reserves by wallet with every address's outputs and signature, the ratio and
/// the cold share per asset, signed by the service (public). `409 attestations_pending` until every address is
/// signed.
#[utoipa::path(get, path = "/v1/reserves/{snapshot}/report", tag = "reserves", params(("snapshot" = String, Path)),
    responses((status = 200, body = SignedReport), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn snapshot_report(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<SignedReport>, ApiError> {
    let keyring = state.keyring()?;
    let s = snapshot(&state, &name).await?;
    let params = stored_params(&s)?;
    let totals = stored_totals(&s)?;
    let attestations = state.store().reserves_attestations(s.id).await?;
    let unsigned = attestations.iter().filter(|a| a.signature.is_none()).count();
    if unsigned > 0 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "attestations_pending",
            format!("{unsigned} address(es) of the snapshot await their signature (the cold wallet's custodians)"),
        ));
    }
    let network = state.custody().map_or_else(|| "regtest".to_owned(), |c| c.network().to_string());
    let mut assets = Vec::with_capacity(params.assets.len());
    for (asset, total) in params.assets.iter().zip(&totals) {
        let liabilities: u128 = total.parse().map_err(|_| ApiError::internal("unreadable totals"))?;
        let decimals = state.assets().lookup(&asset.code).map_or(18, |a| a.decimals);
        let mine: Vec<&Attestation> = attestations.iter().filter(|a| a.asset == asset.code).collect();
        let mut entry = serde_json::json!({
            "code": asset.code,
            "decimals": decimals,
            "liabilities": total,
        });
        let Some(first) = mine.first() else {
            entry["reserves"] = serde_json::Value::Null;
            entry["ratio_bps"] = serde_json::Value::Null;
            entry["cold_share_bps"] = serde_json::Value::Null;
            entry["chain"] = serde_json::Value::Null;
            entry["addresses"] = serde_json::json!([]);
            assets.push(entry);
            continue;
        };
        let sum =
            |wallet: &str| -> u128 { mine.iter().filter(|a| a.wallet == wallet).map(|a| u128::from(a.balance)).sum() };
        let (cold, hot, deposit) = (sum("cold"), sum("hot"), sum("deposit"));
        let reserves = cold + hot + deposit;
        let mut addresses = Vec::with_capacity(mine.len());
        for a in &mine {
            let address = bitcoin::Address::from_script(
                bitcoin::Script::from_bytes(&a.script_pubkey),
                state.custody().map_or(bitcoin::Network::Regtest, |c| c.network()),
            )
            .map_err(|e| ApiError::internal(format!("a reserve address: {e}")))?;
            addresses.push(serde_json::json!({
                "address": address.to_string(),
                "wallet": a.wallet,
                "script_pubkey": hex::encode(&a.script_pubkey),
                "balance": a.balance.to_string(),
                "outputs": a.outputs.iter().map(|(o, v)| serde_json::json!([o, v.to_string()])).collect::<Vec<_>>(),
                "signature": hex::encode(a.signature.as_deref().unwrap_or_default()),
            }));
        }
        entry["reserves"] = reserves.to_string().into();
        entry["cold"] = cold.to_string().into();
        entry["hot"] = hot.to_string().into();
        entry["deposit"] = deposit.to_string().into();
        entry["ratio_bps"] = bps(reserves, liabilities).map(|b| b as u64).into();
        entry["cold_share_bps"] = bps(cold, reserves).map(|b| b as u64).into();
        entry["chain"] = serde_json::json!({"height": first.height, "block_hash": first.block_hash});
        entry["addresses"] = addresses.into();
        assets.push(entry);
    }
    let report = serde_json::json!({
        "format": REPORT_FORMAT,
        "exchange": params.exchange,
        "snapshot": s.name,
        "root": hex::encode(&s.root),
        "form": form_name(&s),
        "ledger_seq": s.ledger_seq,
        "created_at_ns": s.created_at_ns.to_string(),
        "network": network,
        "assets": assets,
    });
    let text = serde_json::to_string_pretty(&report).map_err(ApiError::internal)?;
    let mut signed = REPORT_CONTEXT.to_vec();
    signed.extend_from_slice(text.as_bytes());
    Ok(Json(SignedReport {
        signature: hex::encode(keyring.sign(&signed)),
        public_key: hex::encode(keyring.verifying_key()),
        report: text,
    }))
}

/// Published snapshots, newest first (public).
#[utoipa::path(get, path = "/v1/reserves", tag = "reserves", responses((status = 200, body = Vec<Publication>)))]
pub(crate) async fn list_snapshots(State(state): State<AppState>) -> Result<Json<Vec<Publication>>, ApiError> {
    let snapshots = state.store().reserves_snapshots(100).await?;
    Ok(Json(snapshots.iter().map(publication).collect::<Result<_, _>>()?))
}

async fn snapshot(state: &AppState, name: &str) -> Result<ReservesSnapshot, ApiError> {
    if !valid_name(name) {
        return Err(ApiError::bad_request("invalid_name", "a snapshot name is 1 to 64 of [A-Za-z0-9._-]"));
    }
    state
        .store()
        .reserves_snapshot(name)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no snapshot named {name}")))
}

/// One published snapshot (public).
#[utoipa::path(get, path = "/v1/reserves/{snapshot}", tag = "reserves", params(("snapshot" = String, Path)),
    responses((status = 200, body = Publication), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_snapshot(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Publication>, ApiError> {
    Ok(Json(publication(&snapshot(&state, &name).await?)?))
}

/// The snapshot's tree: the one in memory, or rebuilt from what the snapshot stored (checked against its root).
async fn tree(state: &AppState, s: &ReservesSnapshot) -> Result<Built, ApiError> {
    let mut cache = state.reserves().cache.lock().await;
    if let Some((name, tree)) = cache.as_ref()
        && *name == s.name
    {
        return Ok(tree.clone());
    }
    let keyring = state.keyring()?;
    let (sealed, encoded) = state
        .store()
        .reserves_snapshot_material(&s.name)
        .await?
        .ok_or_else(|| ApiError::internal("snapshot material vanished"))?;
    let secret: [u8; 32] = keyring
        .decrypt(&sealed, &secret_aad(&s.name))
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .ok_or_else(|| ApiError::internal(format!("snapshot {}'s secret does not open", s.name)))?;
    let params = stored_params(s)?;
    let private = s.form == "private";
    let built = tokio::task::spawn_blocking(move || {
        let holdings = decode_holdings(&encoded)?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let secret = TreeSecret::new(secret);
        if private {
            let b = proven_levels(&params, holdings.len());
            PrivateTree::build_with_proven_levels(params, holdings, &secret, threads, b)
                .ok()
                .map(|t| Built::Private(Arc::new(t)))
        } else {
            Tree::build(params, holdings, &secret, threads).ok().map(|t| Built::Revealed(Arc::new(t)))
        }
    })
    .await
    .map_err(|_| ApiError::internal("rebuilding the tree failed"))?
    .ok_or_else(|| ApiError::internal(format!("snapshot {}'s holdings do not rebuild", s.name)))?;
    if built.root().as_slice() != s.root.as_slice() {
        return Err(ApiError::internal(format!("snapshot {} rebuilds to another root", s.name)));
    }
    *cache = Some((s.name.clone(), built.clone()));
    Ok(built)
}

fn reveal(query: Result<Query<ProofQuery>, QueryRejection>) -> Result<Reveal, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    match q.reveal.as_deref() {
        None | Some("held") => Ok(Reveal::Held),
        Some("all") => Ok(Reveal::All),
        Some(other) => Err(ApiError::bad_request("invalid_query", format!("reveal is held or all, not {other:?}"))),
    }
}

async fn proof_of(
    state: &AppState,
    s: &ReservesSnapshot,
    handle: &[u8],
    reveal: Reveal,
) -> Result<ProofView, ApiError> {
    let tree = tree(state, s).await?;
    let user_id = hex::encode(handle);
    let index = tree.user_index(user_id.as_bytes()).ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "not_in_snapshot", "this customer held nothing at the snapshot")
    })?;
    let (bytes, balances, params) = tokio::task::spawn_blocking(move || match tree {
        Built::Revealed(t) => {
            let p = t.proof(index, reveal);
            Ok((p.encode(), p.balances.iter().map(|&(i, b)| (i, b.to_string())).collect::<Vec<_>>(), p.params))
        }
        Built::Private(t) => t
            .proof(index, reveal)
            .map(|p| (p.encode(), p.balances.iter().map(|&(i, b)| (i, b.to_string())).collect(), p.params))
            .map_err(|e| ApiError::new(StatusCode::CONFLICT, "proof_unavailable", e.to_string())),
    })
    .await
    .map_err(|_| ApiError::internal("making the proof failed"))??;
    Ok(ProofView {
        snapshot: s.name.clone(),
        root: hex::encode(&s.root),
        proof: hex::encode(bytes),
        user_id,
        balances: balances
            .into_iter()
            .map(|(i, amount)| ProofBalance { asset: params.assets[usize::from(i)].code.clone(), amount })
            .collect(),
        totals: stored_totals(s)?,
    })
}

/// The signed-in customer's inclusion proof (scope `read`).
#[utoipa::path(get, path = "/v1/reserves/{snapshot}/proof", tag = "reserves",
    params(("snapshot" = String, Path), ProofQuery), responses(
    (status = 200, body = ProofView), (status = 404, body = ErrorBody)
))]
pub(crate) async fn my_reserves_proof(
    State(state): State<AppState>,
    customer: Customer,
    Path(name): Path<String>,
    query: Result<Query<ProofQuery>, QueryRejection>,
) -> Result<Json<ProofView>, ApiError> {
    customer.require(Scope::Read)?;
    let reveal = reveal(query)?;
    let s = snapshot(&state, &name).await?;
    Ok(Json(proof_of(&state, &s, &customer.record.handle, reveal).await?))
}

/// Any customer's inclusion proof, for operators and auditors (`rampart reserves proof`).
#[utoipa::path(get, path = "/v1/reserves/{snapshot}/proofs/{customer}", tag = "reserves",
    params(("snapshot" = String, Path), ("customer" = String, Path, description = "the customer's handle, hex"), ProofQuery),
    security(("bearer" = [])), responses(
    (status = 200, body = ProofView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)
))]
pub(crate) async fn customer_reserves_proof(
    State(state): State<AppState>,
    principal: Principal,
    Path((name, customer)): Path<(String, String)>,
    query: Result<Query<ProofQuery>, QueryRejection>,
) -> Result<Json<ProofView>, ApiError> {
    let target = format!("reserves:{name}:customer:{customer}");
    state.authorize(&principal, Permission::ReservesRead, "reserves.proof.read", &target).await?;
    let reveal = reveal(query)?;
    let handle = hex::decode(&customer).ok().filter(|h| h.len() == 16).ok_or_else(|| {
        ApiError::bad_request("invalid_customer", "a customer is named by their 16-byte handle in hex")
    })?;
    let s = snapshot(&state, &name).await?;
    let view = proof_of(&state, &s, &handle, reveal).await?;
    state.audit(vec![state.record(&principal.actor(), "reserves.proof.read", &target, Outcome::Success)]).await?;
    Ok(Json(view))
}

/// The snapshot's full leaf file (docs/reserves-spec.md §5), for auditors: `rampart-verify leaves` recomputes the
/// root and the totals from it.
#[utoipa::path(get, path = "/v1/reserves/{snapshot}/leaves", tag = "reserves", params(("snapshot" = String, Path)),
    security(("bearer" = [])), responses(
    (status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 403, body = ErrorBody),
    (status = 404, body = ErrorBody)
))]
pub(crate) async fn snapshot_leaves(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let target = format!("reserves:{name}");
    state.authorize(&principal, Permission::ReservesRead, "reserves.leaves.read", &target).await?;
    let s = snapshot(&state, &name).await?;
    let Built::Revealed(tree) = tree(&state, &s).await? else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_leaf_file",
            "a private snapshot has no leaf file: it would show every balance",
        ));
    };
    let bytes = tokio::task::spawn_blocking(move || tree.leaf_file().encode())
        .await
        .map_err(|_| ApiError::internal("writing the leaf file failed"))?;
    state.audit(vec![state.record(&principal.actor(), "reserves.leaves.read", &target, Outcome::Success)]).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

/// A private snapshot's publication (spec §8.3, public): the totals and their blindings, the proven levels, the top
/// nodes' commitments and their range proofs. `rampart-verify publication` checks it once; `rampart-verify proof
/// --publication` checks a proof with it.
#[utoipa::path(get, path = "/v1/reserves/{snapshot}/publication", tag = "reserves", params(("snapshot" = String, Path)),
    responses(
    (status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 404, body = ErrorBody),
    (status = 409, body = ErrorBody)
))]
pub(crate) async fn snapshot_publication(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let s = snapshot(&state, &name).await?;
    let bytes = state.store().reserves_publication(&s.name).await?.ok_or_else(|| {
        ApiError::new(StatusCode::CONFLICT, "not_private", "a revealed snapshot's publication is its JSON and root")
    })?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

/// The customers' verifier page (`crates/verify/web/`): a static page that checks a proof in the browser with its own
/// JavaScript implementation of the specification, asking nothing of this service.
const VERIFIER_PAGE: &str = include_str!("../../verify/web/index.html");
const VERIFIER_SCRIPT: &str = include_str!("../../verify/web/verify.js");

/// The proof verifier page (public; it makes no request of its own).
#[utoipa::path(get, path = "/reserves/verify", tag = "reserves", responses(
    (status = 200, content_type = "text/html", body = String)
))]
pub(crate) async fn verifier_page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], VERIFIER_PAGE).into_response()
}

/// The verifier page's script.
#[utoipa::path(get, path = "/reserves/verify.js", tag = "reserves", responses(
    (status = 200, content_type = "text/javascript", body = String)
))]
pub(crate) async fn verifier_script() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], VERIFIER_SCRIPT).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(assets: usize, height: u8) -> Params {
        Params {
            exchange: "E".into(),
            snapshot: "s".into(),
            height,
            assets: (0..assets).map(|i| Asset { code: format!("A{i}"), max: 1 }).collect(),
        }
    }

    #[test]
    fn few_customers_prove_every_level_many_share_the_top() {
        // Two customers in a tree of 2^10: two published levels, nine proven in each proof.
        assert_eq!(proven_levels(&params(3, 10), 2), 9);
        assert_eq!(proven_levels(&params(3, 10), 0), 10);
        // A million customers at one asset: the crate's budget decides (8 at height 20).
        assert_eq!(proven_levels(&params(1, 20), 1_000_000), 8);
        // Never above the height.
        assert!(proven_levels(&params(500, 4), 1) <= 4);
    }
}
