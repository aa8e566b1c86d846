//! The risk engine in the service: one [`Engine`] per process behind a mutex (a decision takes microseconds), the
//! event log it writes and replays, snapshots, the review queue, and the staff API over them.
//!
//! Every scored event gets the next sequence number under the engine's lock, so the log's order is the engine's;
//! a restart restores the newest snapshot and replays the log after it, so nothing the engine learned is lost. A
//! decision other than `allow` is audited; `hold` and `freeze` open a case in the review queue (a freeze freezes the
//! account in the same transaction). One process scores; several processes sharing a database would each learn only
//! their own events, which is what `rampart-riskbus` (partitioned over NATS JetStream) is for.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rampart_audit::{Outcome as AuditOutcome, Permission};
use rampart_risk::{Country, Decision, Engine, Event, EventKind, Outcome, RuleSet, UserId};
use rampart_store::{CaseResolution, CaseResolved, RiskCase, RiskEventRecord};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ErrorBody;
use crate::group::{Batch, GroupCommit};
use crate::handlers::ApiJson;
use crate::{ApiError, AppState, Principal};

/// How the risk engine runs.
#[derive(Clone, Debug)]
pub struct RiskConfig {
    /// The rule file; `None` for the built-in default rules.
    pub rules_path: Option<PathBuf>,
    /// How often the engine's state is snapshotted.
    pub snapshot_interval_s: u64,
    /// The header a trusted proxy puts the client's country in (`cf-ipcountry`); believed only from
    /// `trusted_proxies`.
    pub country_header: Option<String>,
    /// Reference prices in micro-dollars per whole unit, by asset, to value deposits (and withdrawals) for the
    /// rules; an asset without a price is not valued, and its deposits are not scored.
    pub usd_micro_per_unit: std::collections::BTreeMap<String, u64>,
}

impl Default for RiskConfig {
    fn default() -> RiskConfig {
        RiskConfig {
            rules_path: None,
            snapshot_interval_s: 300,
            country_header: None,
            usd_micro_per_unit: std::collections::BTreeMap::new(),
        }
    }
}

/// The value in micro-dollars of `units` of an asset with `decimals`, at `micro_per_unit` micro-dollars per whole
/// unit, rounded down; saturates rather than overflow.
pub fn usd_micro(units: u128, decimals: u8, micro_per_unit: u64) -> u64 {
    let scale = 10u128.checked_pow(u32::from(decimals)).unwrap_or(u128::MAX);
    let value = units.checked_mul(u128::from(micro_per_unit)).map_or(u128::MAX / scale.max(1), |v| v / scale.max(1));
    u64::try_from(value).unwrap_or(u64::MAX)
}

/// Scores a credited deposit of `units` of `asset` for `customer_id`, when the asset has a reference price.
pub async fn assess_deposit(
    state: &AppState,
    customer_id: i64,
    asset: &str,
    units: u128,
    source: Option<String>,
) -> Result<Option<Assessed>, ApiError> {
    let Some(price) = state.risk().and_then(|r| r.config.usd_micro_per_unit.get(asset).copied()) else {
        return Ok(None);
    };
    let decimals = state.assets().lookup(asset).map(|a| a.decimals).unwrap_or(0);
    let event = Event {
        at_ns: state.now_ns(),
        user: UserId(u64::try_from(customer_id).unwrap_or(0)),
        ip: None,
        device: None,
        country: None,
        kind: EventKind::Deposit { amount_micro_usd: usd_micro(units, decimals, price), source },
    };
    assess(state, customer_id, event).await.map(Some)
}

struct Inner {
    engine: Engine,
    /// The sequence number the next event gets.
    next_seq: i64,
}

/// The engine and its bookkeeping.
pub struct Risk {
    inner: Mutex<Inner>,
    /// The configuration.
    pub config: RiskConfig,
}

/// The rule set named by the configuration.
pub fn load_rules(config: &RiskConfig) -> Result<RuleSet, String> {
    match &config.rules_path {
        None => Ok(RuleSet::default_rules()),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the rule file {}: {e}", path.display()))?;
            RuleSet::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
        }
    }
}

impl Risk {
    /// Restores the engine from the newest snapshot and replays the events logged after it. Answers how many
    /// events were replayed too.
    pub async fn load(store: &rampart_store::Store, config: RiskConfig) -> Result<(Risk, u64), String> {
        let rules = Arc::new(load_rules(&config)?);
        let (mut engine, mut last) = match store.latest_risk_snapshot().await.map_err(|e| e.to_string())? {
            Some((seq, bytes)) => match Engine::restore(rules.clone(), &bytes) {
                Ok(engine) => (engine, seq),
                // The log holds every event: a snapshot this build cannot read (an older format) only costs time.
                Err(e) => {
                    tracing::warn!(error = %e, "rebuilding the risk engine from the whole event log");
                    (Engine::new(rules.clone()), 0)
                }
            },
            None => (Engine::new(rules.clone()), 0),
        };
        let mut replayed = 0u64;
        loop {
            let page = store.risk_events_after(last, 10_000).await.map_err(|e| e.to_string())?;
            let Some(end) = page.last().map(|e| e.seq) else { break };
            for record in &page {
                let event: Event = serde_json::from_str(&record.event)
                    .map_err(|e| format!("risk event {} in the log cannot be read: {e}", record.seq))?;
                engine.evaluate(&event);
                replayed += 1;
            }
            last = end;
        }
        Ok((Risk { inner: Mutex::new(Inner { engine, next_seq: last + 1 }), config }, replayed))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while scoring would be a bug in the pure engine; its state is still consistent enough to go on.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Scores an event: answers its sequence number and the decision.
    pub fn score(&self, event: &Event) -> (i64, Decision) {
        let mut inner = self.lock();
        let seq = inner.next_seq;
        inner.next_seq += 1;
        (seq, inner.engine.evaluate(event))
    }

    /// The rule set in force.
    pub fn rules(&self) -> Arc<RuleSet> {
        self.lock().engine.rules().clone()
    }

    /// Puts a new rule set in force; its version must be higher than the current one's.
    pub fn replace_rules(&self, rules: RuleSet) -> Result<(u32, u32), String> {
        let mut inner = self.lock();
        let old = inner.engine.rules().version;
        if rules.version <= old {
            return Err(format!("the rule file's version {} is not above the one in force ({old})", rules.version));
        }
        let new = rules.version;
        inner.engine.set_rules(Arc::new(rules));
        Ok((old, new))
    }

    /// The engine's state and the last event it includes, after forgetting what can no longer count at `now_s`
    /// (idle addresses' and devices' counters, stale rings: nothing a decision could read).
    pub fn snapshot(&self, now_s: u32) -> (i64, Vec<u8>) {
        let mut inner = self.lock();
        inner.engine.prune(now_s);
        (inner.next_seq - 1, inner.engine.snapshot())
    }

    /// How many users have a profile.
    pub fn users(&self) -> usize {
        self.lock().engine.users()
    }
}

/// Writes a snapshot now (the worker does it every `snapshot_interval_s`).
pub async fn snapshot_once(state: &AppState) -> Result<(), ApiError> {
    let Some(risk) = state.risk() else { return Ok(()) };
    let now_s = u32::try_from(state.now_ns() / 1_000_000_000).unwrap_or(u32::MAX);
    let (seq, bytes) = risk.snapshot(now_s);
    state.store().save_risk_snapshot(seq, &bytes, state.now_ns()).await?;
    Ok(())
}

/// Snapshots the engine every `snapshot_interval_s` until `shutdown` resolves, and once more then, so that a restart
/// replays little.
pub async fn run_snapshot_worker(state: AppState, shutdown: impl std::future::Future<Output = ()>) {
    let Some(interval) = state.risk().map(|r| r.config.snapshot_interval_s.max(1)) else { return };
    tokio::pin!(shutdown);
    let mut ticker = tokio::time::interval(Duration::from_secs(interval));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        let last = tokio::select! {
            () = &mut shutdown => true,
            _ = ticker.tick() => false,
        };
        if let Err(e) = snapshot_once(&state).await {
            tracing::warn!(error = %e.message(), "risk snapshot failed");
        }
        if last {
            return;
        }
    }
}

/// The client's country from the configured header, believed only from a trusted proxy.
pub(crate) fn client_country(state: &AppState, headers: &HeaderMap, ext: &axum::http::Extensions) -> Option<Country> {
    let name = state.risk()?.config.country_header.as_ref()?;
    let peer = ext.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0)?;
    let list = rampart_auth::parse_allow_list(&state.identity().trusted_proxies).ok()?;
    if !rampart_auth::ip_allowed(&list, peer.ip()) {
        return None;
    }
    Country::parse(headers.get(name.as_str())?.to_str().ok()?.trim())
}

/// The JSON of a decision's reasons, as cases and audit entries keep them.
pub fn reasons_json(decision: &Decision) -> serde_json::Value {
    serde_json::Value::Array(
        decision
            .reasons
            .iter()
            .map(|r| {
                let values: serde_json::Map<String, serde_json::Value> =
                    r.display_values().into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect();
                serde_json::json!({
                    "rule": &*r.rule, "description": &*r.description, "outcome": r.outcome.name(),
                    "score": r.score, "shadow": r.shadow, "values": values,
                })
            })
            .collect(),
    )
}

/// What the service does with a decision.
pub struct Assessed {
    /// The decision.
    pub decision: Decision,
    /// The case it opened, if any.
    pub case: Option<i64>,
}

/// Logging scored events, in groups.
pub(crate) struct RiskLog;

impl Batch for RiskLog {
    type Item = RiskEventRecord;
    type Out = ();
    const MAX: usize = 500;
    const NAME: &'static str = "risk_events";

    fn queue(state: &AppState) -> &GroupCommit<RiskLog> {
        state.risk_log()
    }

    async fn write(state: &AppState, items: Vec<RiskEventRecord>) -> Result<Vec<()>, ApiError> {
        state.store().append_risk_events(&items).await?;
        Ok(vec![(); items.len()])
    }
}

/// Allowed events of a request not yet logged, kept for a transaction the request makes anyway (a withdrawal's
/// recording) and otherwise logged when the request is done ([`Unlogged`]). Shared by the middleware that scored
/// the request and the handler that may take them.
#[derive(Clone, Default)]
pub(crate) struct PendingRisk(Arc<Mutex<Vec<RiskEventRecord>>>);

impl PendingRisk {
    /// Holding `events`.
    pub(crate) fn holding(events: Vec<RiskEventRecord>) -> PendingRisk {
        PendingRisk(Arc::new(Mutex::new(events)))
    }

    /// Keeps `record` for later.
    pub(crate) fn put(&self, record: RiskEventRecord) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(record);
    }

    /// The first kept, left in place.
    fn first(&self) -> Option<RiskEventRecord> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).first().cloned()
    }

    /// Forgets the first kept (written).
    fn drop_first(&self) {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !kept.is_empty() {
            kept.remove(0);
        }
    }

    /// Takes what is kept: the taker logs it now.
    pub(crate) fn take(&self) -> Vec<RiskEventRecord> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Scored events that must reach the log, in a [`PendingRisk`]: [`Unlogged::log`] logs them and waits; dropped
/// while some are still there (the request failed, or its client hung up and the future was dropped), it logs them
/// from a task of its own. [`Unlogged::logged`] says a transaction wrote them (logging one twice is harmless: the
/// log keeps the first).
pub(crate) struct Unlogged {
    state: AppState,
    pending: PendingRisk,
}

impl Unlogged {
    pub(crate) fn new(state: &AppState, pending: PendingRisk) -> Unlogged {
        Unlogged { state: state.clone(), pending }
    }

    /// A transaction that committed wrote them.
    pub(crate) fn logged(&mut self) {
        self.pending.take();
    }

    /// Logs them (in the next group commits) and waits, one at a time, each taken only once written: cut off or
    /// failing, it leaves the rest to the drop guard, whose task tries them again.
    pub(crate) async fn log(self) -> Result<(), ApiError> {
        while let Some(event) = self.pending.first() {
            GroupCommit::<RiskLog>::submit(&self.state, event).await?;
            self.pending.drop_first();
        }
        Ok(())
    }
}

impl Drop for Unlogged {
    fn drop(&mut self) {
        let events = self.pending.take();
        if events.is_empty() {
            return;
        }
        let state = self.state.clone();
        tokio::spawn(async move {
            for event in events {
                if let Err(e) = GroupCommit::<RiskLog>::submit(&state, event).await {
                    tracing::warn!(code = e.code(), error = e.message(), "a risk event was not logged");
                }
            }
        });
    }
}

/// An event scored and not yet logged ([`score`]): log `record`, then [`act`] on it.
pub(crate) struct Scored {
    customer_id: i64,
    event: Event,
    seq: i64,
    decision: Decision,
    /// The event as the log keeps it.
    pub(crate) record: RiskEventRecord,
}

impl Scored {
    /// What the engine decided.
    pub(crate) fn outcome(&self) -> Outcome {
        self.decision.outcome
    }
}

/// Scores `event` for `customer_id`; `None` without a risk engine (everything is allowed).
pub(crate) fn score(state: &AppState, customer_id: i64, event: Event) -> Result<Option<Scored>, ApiError> {
    let Some(risk) = state.risk() else { return Ok(None) };
    let (seq, decision) = risk.score(&event);
    let json = serde_json::to_string(&event)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let record = RiskEventRecord {
        seq,
        at_ns: event.at_ns,
        customer_id,
        event: json,
        outcome: decision.outcome.name().into(),
        rules_version: decision.rules_version,
    };
    Ok(Some(Scored { customer_id, event, seq, decision, record }))
}

/// Scores `event` for `customer_id`, logs it, audits a decision other than `allow` and opens a case for `hold` and
/// `freeze` (a freeze freezes the account). Without a risk engine, everything is allowed.
pub async fn assess(state: &AppState, customer_id: i64, event: Event) -> Result<Assessed, ApiError> {
    let Some(scored) = score(state, customer_id, event)? else { return Ok(allowed()) };
    // Logged (with the events scored meanwhile) before the decision is acted on: a restart replays it.
    GroupCommit::<RiskLog>::submit(state, scored.record.clone()).await?;
    act(state, scored).await
}

/// What a service without a risk engine decides.
pub(crate) fn allowed() -> Assessed {
    Assessed { decision: Decision { outcome: Outcome::Allow, score: 0, rules_version: 0, reasons: vec![] }, case: None }
}

/// Acts on a decision whose event is logged: audits one other than `allow`, opens a case for `hold` and `freeze`
/// (a freeze freezes the account).
pub(crate) async fn act(state: &AppState, scored: Scored) -> Result<Assessed, ApiError> {
    let Scored { customer_id, event, seq, decision, record: _ } = scored;
    metrics::counter!("risk_decisions_total", "outcome" => decision.outcome.name()).increment(1);
    if decision.outcome == Outcome::Allow {
        return Ok(Assessed { decision, case: None });
    }
    let keyring = state.keyring()?;
    let target = format!("customer:{customer_id}");
    let mut record = state.record("risk", "risk.decision", &target, AuditOutcome::Success);
    record.details.insert("outcome".into(), decision.outcome.name().into());
    record.details.insert("event".into(), event.kind().name().into());
    record.details.insert("seq".into(), seq.to_string());
    record.details.insert("score".into(), decision.score.to_string());
    record.details.insert("rules".into(), decision.enforced().map(|r| &*r.rule).collect::<Vec<_>>().join(","));
    record.details.insert("rules_version".into(), decision.rules_version.to_string());
    record.details.insert("reasons".into(), reasons_json(&decision).to_string());
    if !matches!(decision.outcome, Outcome::Hold | Outcome::Freeze) {
        state.audit(vec![record]).await?;
        return Ok(Assessed { decision, case: None });
    }
    let freeze = decision.outcome == Outcome::Freeze;
    let reasons = reasons_json(&decision).to_string();
    let case = state
        .store()
        .open_risk_case(
            customer_id,
            seq,
            event.kind().name(),
            decision.outcome.name(),
            &reasons,
            freeze,
            state.now_ns(),
            &state.auditor(&keyring),
            vec![record],
        )
        .await?;
    Ok(Assessed { decision, case: Some(case) })
}

/// An event of `customer_id` now, from the request's context.
pub fn event(
    state: &AppState,
    customer_id: i64,
    ip: std::net::IpAddr,
    device: Option<i64>,
    country: Option<Country>,
    kind: EventKind,
) -> Event {
    Event {
        at_ns: state.now_ns(),
        user: UserId(u64::try_from(customer_id).unwrap_or(0)),
        ip: Some(ip),
        device: device.and_then(|d| u64::try_from(d).ok()),
        country,
        kind,
    }
}

/// The error a customer sees when a decision stops them: it says what to do, never which rule fired.
pub(crate) fn refusal(assessed: &Assessed) -> Option<ApiError> {
    match assessed.decision.outcome {
        Outcome::Allow | Outcome::Challenge => None,
        Outcome::Hold => Some(ApiError::new(
            StatusCode::FORBIDDEN,
            "under_review",
            "this request needs a review by our security team; we will contact you",
        )),
        Outcome::Freeze => Some(ApiError::new(
            StatusCode::FORBIDDEN,
            "account_frozen",
            "the account is frozen for your protection until our security team has reviewed recent activity",
        )),
        Outcome::Block => Some(ApiError::new(
            StatusCode::FORBIDDEN,
            "risk_blocked",
            "this request was refused by our security checks",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::usd_micro;

    #[test]
    fn values_are_exact_and_saturate() {
        // 0.5 BTC (8 decimals) at 90 000 dollars: 45 000 dollars.
        assert_eq!(usd_micro(50_000_000, 8, 90_000_000_000), 45_000_000_000);
        // 1 USDT (6 decimals) at one dollar; 1 wei of ETH at 3 000 dollars rounds down to nothing.
        assert_eq!(usd_micro(1_000_000, 6, 1_000_000), 1_000_000);
        assert_eq!(usd_micro(1, 18, 3_000_000_000), 0);
        assert_eq!(usd_micro(u128::MAX, 0, u64::MAX), u64::MAX);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The staff API

fn risk_of(state: &AppState) -> Result<&Arc<Risk>, ApiError> {
    state.risk().ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "risk_disabled", "the risk engine is not running"))
}

/// A case in the review queue.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct CaseView {
    /// The id.
    pub id: i64,
    /// The customer's numeric id.
    pub customer_id: i64,
    /// The event that opened it (its sequence number in the risk log).
    pub event_seq: i64,
    /// The kind of that event.
    pub kind: String,
    /// `hold` or `freeze`.
    pub outcome: String,
    /// `open` or `resolved`.
    pub state: String,
    /// The decision's reasons: rules, descriptions, feature values.
    #[schema(value_type = Object)]
    pub reasons: serde_json::Value,
    /// Who works on it.
    pub assigned_to: Option<String>,
    /// `release`, `keep_frozen` or `escalate`.
    pub resolution: Option<String>,
    /// Who resolved it.
    pub resolved_by: Option<String>,
    /// When it was opened (ns).
    pub created_at_ns: String,
    /// Reviewers' notes, oldest first (in the single-case view).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<NoteView>,
}

/// A reviewer's note.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct NoteView {
    /// Who wrote it.
    pub author: String,
    /// What.
    pub body: String,
    /// When (ns).
    pub created_at_ns: String,
}

fn case_view(c: RiskCase, notes: Vec<rampart_store::RiskCaseNote>) -> CaseView {
    CaseView {
        id: c.id,
        customer_id: c.customer_id,
        event_seq: c.event_seq,
        kind: c.kind,
        outcome: c.outcome,
        state: c.state,
        reasons: serde_json::from_str(&c.reasons).unwrap_or(serde_json::Value::Null),
        assigned_to: c.assigned_to,
        resolution: c.resolution,
        resolved_by: c.resolved_by,
        created_at_ns: c.created_at_ns.to_string(),
        notes: notes
            .into_iter()
            .map(|n| NoteView { author: n.author, body: n.body, created_at_ns: n.created_at_ns.to_string() })
            .collect(),
    }
}

/// `?all=true` lists resolved cases too.
#[derive(Deserialize)]
pub struct CasesQuery {
    #[serde(default)]
    all: bool,
}

/// The review queue: open cases (all with `?all=true`), newest first.
#[utoipa::path(get, path = "/v1/risk/cases", security(("bearer" = [])),
    responses((status = 200, body = [CaseView]), (status = 403, body = ErrorBody)))]
pub(crate) async fn cases(
    State(state): State<AppState>,
    principal: Principal,
    query: Result<Query<CasesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<CaseView>>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    state.authorize(&principal, Permission::RiskRead, "risk.cases.list", "-").await?;
    let cases = state.store().risk_cases(query.all, 500).await?;
    Ok(Json(cases.into_iter().map(|c| case_view(c, vec![])).collect()))
}

/// One case with its notes.
#[utoipa::path(get, path = "/v1/risk/cases/{id}", security(("bearer" = [])),
    responses((status = 200, body = CaseView), (status = 404, body = ErrorBody)))]
pub(crate) async fn case(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<CaseView>, ApiError> {
    let id = crate::staff_api::path_i64(path)?;
    state.authorize(&principal, Permission::RiskRead, "risk.cases.read", &format!("risk_case:{id}")).await?;
    let (c, notes) = state.store().risk_case(id).await?.ok_or_else(|| ApiError::not_found(format!("no case {id}")))?;
    Ok(Json(case_view(c, notes)))
}

/// `POST /v1/risk/cases/{id}/assign`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssignRequest {
    /// Who takes it (a staff username or actor); oneself when absent.
    #[serde(default)]
    pub to: Option<String>,
}

/// Assigns an open case.
#[utoipa::path(post, path = "/v1/risk/cases/{id}/assign", request_body = AssignRequest, security(("bearer" = [])),
    responses((status = 200, body = CaseView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn assign(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    ApiJson(body): ApiJson<AssignRequest>,
) -> Result<Json<CaseView>, ApiError> {
    let id = crate::staff_api::path_i64(path)?;
    let target = format!("risk_case:{id}");
    state.authorize(&principal, Permission::RiskReview, "risk.cases.assign", &target).await?;
    let to = body.to.map(|t| t.trim().to_owned()).unwrap_or_else(|| principal.actor());
    if to.is_empty() || to.chars().count() > 64 || to.chars().any(char::is_control) {
        return Err(ApiError::bad_request("invalid_assignee", "an assignee is 1 to 64 printable characters"));
    }
    let keyring = state.keyring()?;
    let mut record = state.record(&principal.actor(), "risk.case.assigned", &target, AuditOutcome::Success);
    record.details.insert("to".into(), to.clone());
    if !state.store().assign_risk_case(id, &to, &state.auditor(&keyring), vec![record]).await? {
        return Err(match state.store().risk_case(id).await? {
            None => ApiError::not_found(format!("no case {id}")),
            Some(_) => ApiError::new(StatusCode::CONFLICT, "case_resolved", "this case is resolved"),
        });
    }
    case(State(state), principal, Ok(Path(id.to_string()))).await
}

/// `POST /v1/risk/cases/{id}/notes`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NoteRequest {
    /// The note: 1 to 2 000 characters.
    pub body: String,
}

fn valid_note(body: &str) -> Result<&str, ApiError> {
    let body = body.trim();
    if body.is_empty() || body.chars().count() > 2_000 {
        return Err(ApiError::bad_request("invalid_note", "a note is 1 to 2 000 characters"));
    }
    Ok(body)
}

/// Adds a note to a case.
#[utoipa::path(post, path = "/v1/risk/cases/{id}/notes", request_body = NoteRequest, security(("bearer" = [])),
    responses((status = 200, body = CaseView), (status = 404, body = ErrorBody)))]
pub(crate) async fn note(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    ApiJson(body): ApiJson<NoteRequest>,
) -> Result<Json<CaseView>, ApiError> {
    let id = crate::staff_api::path_i64(path)?;
    let target = format!("risk_case:{id}");
    state.authorize(&principal, Permission::RiskReview, "risk.cases.note", &target).await?;
    let text = valid_note(&body.body)?;
    let keyring = state.keyring()?;
    let record = state.record(&principal.actor(), "risk.case.noted", &target, AuditOutcome::Success);
    let now = state.now_ns();
    if !state.store().note_risk_case(id, &principal.actor(), text, now, &state.auditor(&keyring), vec![record]).await? {
        return Err(ApiError::not_found(format!("no case {id}")));
    }
    case(State(state), principal, Ok(Path(id.to_string()))).await
}

/// `POST /v1/risk/cases/{id}/resolve`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    /// `release` (unfreezes the account unless another open freeze holds it), `keep_frozen` or `escalate` (to
    /// compliance).
    pub resolution: String,
    /// Why: kept as a note.
    pub note: String,
}

/// Resolves a case.
#[utoipa::path(post, path = "/v1/risk/cases/{id}/resolve", request_body = ResolveRequest, security(("bearer" = [])),
    responses((status = 200, body = CaseView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn resolve(
    State(state): State<AppState>,
    principal: Principal,
    path: Result<Path<String>, PathRejection>,
    ApiJson(body): ApiJson<ResolveRequest>,
) -> Result<Json<CaseView>, ApiError> {
    let id = crate::staff_api::path_i64(path)?;
    let target = format!("risk_case:{id}");
    state.authorize(&principal, Permission::RiskReview, "risk.cases.resolve", &target).await?;
    let resolution = CaseResolution::parse(&body.resolution).ok_or_else(|| {
        ApiError::bad_request("invalid_resolution", "resolution is one of release, keep_frozen, escalate")
    })?;
    let text = valid_note(&body.note)?;
    let keyring = state.keyring()?;
    let now = state.now_ns();
    let mut record = state.record(&principal.actor(), "risk.case.resolved", &target, AuditOutcome::Success);
    record.details.insert("resolution".into(), resolution.as_str().into());
    match state
        .store()
        .resolve_risk_case(id, resolution, &principal.actor(), now, &state.auditor(&keyring), vec![record])
        .await?
    {
        CaseResolved::NotFound => return Err(ApiError::not_found(format!("no case {id}"))),
        CaseResolved::AlreadyResolved => {
            return Err(ApiError::new(StatusCode::CONFLICT, "case_resolved", "this case is resolved already"));
        }
        CaseResolved::Done { .. } => {}
    }
    let note_record = state.record(&principal.actor(), "risk.case.noted", &target, AuditOutcome::Success);
    state
        .store()
        .note_risk_case(id, &principal.actor(), text, now, &state.auditor(&keyring), vec![note_record])
        .await?;
    case(State(state), principal, Ok(Path(id.to_string()))).await
}

/// The rule set in force.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct RulesView {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: u32,
    /// Its rules.
    pub rules: Vec<RuleView>,
}

/// One rule.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct RuleView {
    /// Name.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// Its condition.
    pub when: String,
    /// Its outcome.
    pub outcome: String,
    /// Its score.
    pub score: u32,
    /// `enforce` or `shadow`.
    pub mode: String,
}

fn rules_view(rules: &RuleSet) -> RulesView {
    RulesView {
        name: rules.name.clone(),
        version: rules.version,
        rules: rules
            .rules
            .iter()
            .map(|r| RuleView {
                name: r.name.to_string(),
                description: r.description.to_string(),
                when: r.when.source().to_owned(),
                outcome: r.outcome.name().into(),
                score: r.score,
                mode: if r.mode == rampart_risk::Mode::Shadow { "shadow" } else { "enforce" }.into(),
            })
            .collect(),
    }
}

/// The rule set in force.
#[utoipa::path(get, path = "/v1/risk/rules", security(("bearer" = [])), responses((status = 200, body = RulesView)))]
pub(crate) async fn rules(State(state): State<AppState>, principal: Principal) -> Result<Json<RulesView>, ApiError> {
    state.authorize(&principal, Permission::RiskRead, "risk.rules.read", "-").await?;
    Ok(Json(rules_view(&risk_of(&state)?.rules())))
}

/// Re-reads the rule file and puts it in force without a restart; its version must be higher. A file that does not
/// compile changes nothing and is answered 400 with the reason.
#[utoipa::path(post, path = "/v1/risk/rules/reload", security(("bearer" = [])),
    responses((status = 200, body = RulesView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn reload(State(state): State<AppState>, principal: Principal) -> Result<Json<RulesView>, ApiError> {
    state.authorize(&principal, Permission::RiskRules, "risk.rules.reload", "-").await?;
    let risk = risk_of(&state)?;
    let rules = load_rules(&risk.config).map_err(|e| ApiError::bad_request("invalid_rules", e))?;
    let (old, new) = risk.replace_rules(rules).map_err(|e| ApiError::new(StatusCode::CONFLICT, "stale_rules", e))?;
    let mut record = state.record(&principal.actor(), "risk.rules.reloaded", "-", AuditOutcome::Success);
    record.details.insert("from_version".into(), old.to_string());
    record.details.insert("to_version".into(), new.to_string());
    state.audit(vec![record]).await?;
    Ok(Json(rules_view(&risk.rules())))
}

/// `?after=SEQ&limit=N`.
#[derive(Deserialize)]
pub struct EventsQuery {
    #[serde(default)]
    after: i64,
    #[serde(default)]
    limit: Option<u32>,
}

/// The scored events after a sequence number, as JSON lines (`rampart risk backtest --events` reads them).
#[utoipa::path(get, path = "/v1/risk/events", security(("bearer" = [])), responses((status = 200, body = String)))]
pub(crate) async fn events(
    State(state): State<AppState>,
    principal: Principal,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    state.authorize(&principal, Permission::RiskRead, "risk.events.export", "-").await?;
    let limit = query.limit.unwrap_or(10_000).clamp(1, 100_000);
    let events = state.store().risk_events_after(query.after.max(0), limit).await?;
    let mut body = String::new();
    for e in events {
        body.push_str(&e.event);
        body.push('\n');
    }
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}
