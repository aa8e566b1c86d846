//! The risk chapters of `rampart demo`: the real service with the risk engine and its default rules, clients behind
//! a trusted proxy that tells their address and country, a customer whose habits the engine learns, a sign-in unlike
//! them challenged, a large withdrawal from a new address right after sign-in frozen with its reasons, and a
//! reviewer who resolves the case; then sign-up and sign-in from a sanctioned jurisdiction refused (geofencing).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, ensure};
use rampart_audit::Role;
use rampart_compliance::geo::DEFAULT_BLOCKED;
use rampart_core::{AssetRegistry, ManualClock};
use rampart_crypto::Keyring;
use rampart_risk::{EventKind, MICRO_USD_PER_USD, Outcome};
use rampart_server::geofence::Geofencing;
use rampart_server::risk::{Risk, RiskConfig};
use rampart_server::{AppState, IdentityConfig, VaultState};
use rampart_store::{AuditFilter, Store};
use serde_json::{Value, json};

use crate::demo_custody::{Http, staff_session};
use crate::demo_identity::{Client, Mailbox, code, token_in, totp_secret};

const SEC: u64 = 1_000_000_000;
const DAY_S: u64 = 86_400;
/// A Monday, 09:00 UTC.
const MONDAY_9AM_S: u64 = 1_800_262_800;

fn chapter(title: &str) {
    println!("\n== {title}");
}

/// Where a request comes from, as the trusted proxy says.
struct From<'a> {
    ip: &'a str,
    country: &'a str,
}

const BERLIN: From<'static> = From { ip: "198.51.100.20", country: "DE" };

struct Finn<'a> {
    c: &'a Client,
    password: &'static str,
    secret: rampart_auth::TotpSecret,
    device: String,
}

impl Finn<'_> {
    /// Signs in with password and TOTP from `from` on his device: the second step's status and body.
    async fn sign_in(&self, from: &From<'_>) -> anyhow::Result<(u16, Value)> {
        let origin = [("x-forwarded-for", from.ip), ("x-country", from.country)];
        let (status, ticket) = self
            .c
            .call(
                "POST",
                "/v1/customers/sign-in",
                Some(&json!({"email": "finn@example.com", "password": self.password})),
                &origin,
            )
            .await;
        ensure!(status == 200, "password step: {ticket}");
        let code = self.secret.code_at(self.c.now_s());
        let headers = [("x-forwarded-for", from.ip), ("x-country", from.country), ("x-rampart-device", &self.device)];
        Ok(self
            .c
            .call(
                "POST",
                "/v1/customers/sign-in/verify",
                Some(&json!({"ticket": ticket["ticket"], "totp_code": code})),
                &headers,
            )
            .await)
    }
}

/// The newest audit entry of `action`: its details.
async fn last_audit(store: &Store, action: &str) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let filter = AuditFilter { action: Some(action.to_owned()), ..AuditFilter::default() };
    let entries = store.audit_entries(&filter, 10_000).await?;
    Ok(entries.last().context("an audit entry")?.record.details.clone())
}

fn print_reasons(reasons: &Value) {
    for r in reasons.as_array().into_iter().flatten() {
        let values: Vec<String> = r["values"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k} = {}", v.as_str().unwrap_or("")))
            .collect();
        println!(
            "     {} → {}: {}",
            r["rule"].as_str().unwrap_or(""),
            r["outcome"].as_str().unwrap_or(""),
            values.join(", ")
        );
    }
}

/// Runs the risk chapters against the service on `store`, unsealed with `keyring`.
pub async fn run(store: Store, keyring: Arc<Keyring>) -> anyhow::Result<()> {
    let clock = Arc::new(ManualClock::new(MONDAY_9AM_S * SEC));
    let identity = IdentityConfig {
        public_url: "https://exchange.example".into(),
        client_ip_header: Some("x-forwarded-for".into()),
        ..IdentityConfig::default()
    };
    let config = RiskConfig { country_header: Some("x-country".into()), ..RiskConfig::default() };
    let (risk, _) = Risk::load(&store, config).await.map_err(|e| anyhow!(e))?;
    let blocked: Vec<String> = DEFAULT_BLOCKED.iter().map(|c| (*c).to_owned()).collect();
    let root = "demo-root-token-risk";
    let state = AppState::new(
        store,
        AssetRegistry::defaults(),
        clock.clone(),
        VaultState::Unsealed(keyring.clone()),
        Some(secrecy::SecretString::from(root.to_owned())),
    )
    .with_identity(identity)
    .map_err(|e| anyhow!(e))?
    .with_risk(Arc::new(risk))
    .map_err(|e| anyhow!(e))?
    .with_geofencing(Arc::new(Geofencing::new(None, &blocked).map_err(|e| anyhow!(e))?))
    .map_err(|e| anyhow!(e))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(rampart_server::serve(listener, state.clone(), async {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let c = Client {
        http: http.clone(),
        base: base.clone(),
        clock: clock.clone(),
        state: state.clone(),
        mailbox: Arc::new(Mailbox::default()),
    };
    let staff = Http { http, base };
    let result = story(&c, &staff, &keyring, root).await;
    let _ = stop.send(());
    let _ = server.await;
    result
}

async fn story(c: &Client, staff: &Http, keyring: &Keyring, root: &str) -> anyhow::Result<()> {
    let store = c.state.store().clone();
    chapter("31. The risk engine learns a customer's habits, and challenges a sign-in unlike them");
    let password = "Copper-Heron-Marmalade-61";
    let berlin = [("x-forwarded-for", BERLIN.ip), ("x-country", BERLIN.country)];
    let (status, signup) = c
        .call(
            "POST",
            "/v1/customers/sign-up",
            Some(&json!({"email": "finn@example.com", "password": password})),
            &berlin,
        )
        .await;
    ensure!(status == 201, "sign-up: {signup}");
    let secret = totp_secret(signup["totp"]["secret"].as_str().context("a TOTP secret")?)?;
    let (status, enrolled) = c
        .call(
            "POST",
            "/v1/customers/sign-up/totp",
            Some(&json!({"enrolment_ticket": signup["enrolment_ticket"], "totp_code": secret.code_at(c.now_s())})),
            &berlin,
        )
        .await;
    ensure!(status == 200, "enrolment: {enrolled}");
    let mail = c.email("Confirm your email").await?;
    let (status, _) =
        c.call("POST", "/v1/customers/verify-email", Some(&json!({"token": token_in(&mail.text_body)?})), &[]).await;
    ensure!(status == 204, "email verified");
    let finn =
        Finn { c, password, secret, device: signup["device_token"].as_str().context("a device token")?.to_owned() };
    for day in 0..5 {
        c.clock.set_ns((MONDAY_9AM_S + day * DAY_S + 60 + 60 * day) * SEC);
        let (status, body) = finn.sign_in(&BERLIN).await?;
        ensure!(status == 200, "an ordinary morning sign-in is allowed (day {day}): {body}");
    }
    println!("   Finn signs up, then signs in five mornings running from Berlin (198.51.100.20, DE) on his laptop:");
    println!("   each allowed, and the engine learns his address, its /24, his device, his country and his hours.");
    c.clock.set_ns((MONDAY_9AM_S + 5 * DAY_S + 18 * 3600) * SEC);
    let sao_paulo = From { ip: "203.0.113.9", country: "BR" };
    let (status, body) = finn.sign_in(&sao_paulo).await?;
    ensure!(
        status == 202 && body["status"] == "sign_in_confirmation_required",
        "a sign-in unlike his history is challenged: {status} {body}"
    );
    let details = last_audit(&store, "risk.decision").await?;
    ensure!(details.get("rules").is_some_and(|r| r.contains("login_deviation")), "{details:?}");
    println!("   Saturday 03:00 UTC, a sign-in with his password, his code and his laptop's token, but from");
    println!(
        "   203.0.113.9 in Brazil: answered {status} {}, and the risk log says why:",
        body["status"].as_str().unwrap_or("")
    );
    print_reasons(&serde_json::from_str(details.get("reasons").map_or("[]", String::as_str))?);
    let mail = c.email("Confirm a sign-in").await?;
    let (status, _) =
        c.call("POST", "/v1/customers/devices/confirm", Some(&json!({"token": token_in(&mail.text_body)?})), &[]).await;
    ensure!(status == 204, "the confirmation link works");
    c.clock.advance_ns(60 * SEC);
    let (status, body) = finn.sign_in(&sao_paulo).await?;
    ensure!(status == 200, "after the emailed confirmation the same context is his: {body}");
    println!("   The emailed link (a second, out-of-band verification) is followed: the engine learns Brazil as his,");
    println!("   and signing in again from there is allowed. A known device at home was never challenged.");

    chapter("32. A large withdrawal from a new address right after sign-in is frozen, with its reasons");
    c.clock.set_ns((MONDAY_9AM_S + 7 * DAY_S) * SEC);
    let cafe = From { ip: "198.51.100.99", country: "DE" };
    let (status, session) = finn.sign_in(&cafe).await?;
    ensure!(status == 200, "a new address in his own network is fine: {session}");
    let token = format!("Bearer {}", session["token"].as_str().context("a session token")?);
    let in_session =
        [("authorization", token.as_str()), ("x-rampart-device", &finn.device), ("x-forwarded-for", cafe.ip)];
    c.clock.advance_ns(120 * SEC);
    let handle: [u8; 16] = hex::decode(signup["customer"].as_str().context("a customer")?)?
        .try_into()
        .map_err(|_| anyhow!("a 16-byte handle"))?;
    let customer = store.customer_by_handle(&handle).await?.context("the customer")?;
    let device = store.devices(customer.id).await?.first().map(|d| d.id);
    // What the withdrawal route asks the engine (chapter 26 goes through the route; a request frozen there and
    // released by a reviewer is tested end to end in crates/rampart/tests/withdrawals.rs).
    let event = rampart_server::risk::event(
        &c.state,
        customer.id,
        cafe.ip.parse()?,
        device,
        rampart_risk::Country::parse(cafe.country),
        EventKind::Withdrawal { amount_micro_usd: 25_000 * MICRO_USD_PER_USD, destination: "bc1qdemo7x4".into() },
    );
    let assessed =
        rampart_server::risk::assess(&c.state, customer.id, event).await.map_err(|e| anyhow!("{}", e.message()))?;
    ensure!(assessed.decision.outcome == Outcome::Freeze, "frozen: {:?}", assessed.decision);
    let case_id = assessed.case.context("a case")?;
    println!("   Monday, Finn signs in from a café (198.51.100.99: a new address in his usual network, allowed)");
    println!(
        "   and two minutes later asks to withdraw 25 000 USD worth: {} (case {case_id}).",
        assessed.decision.summary()
    );
    let (status, frozen) = c.call("GET", "/v1/me", None, &in_session).await;
    ensure!(status == 403 && code(&frozen) == "account_frozen", "the account is frozen: {frozen}");
    println!(
        "   His account is frozen at once, sessions and API keys included: GET /v1/me answers {status} {}.",
        code(&frozen)
    );

    chapter("33. A reviewer works the case and releases the account");
    let rita = staff_session(staff, &c.state, &c.clock, keyring, "rita", Role::RiskAnalyst).await?;
    let (status, cases) = staff.call(reqwest::Method::GET, "/v1/risk/cases", Some(&rita), None).await;
    ensure!(status == 200, "cases: {cases}");
    let open = cases.as_array().context("a list")?;
    let case = open.iter().find(|x| x["id"] == case_id).context("the case is in the queue")?;
    println!(
        "   Rita (risk analyst) opens the review queue: case {case_id}, {} after a {}, because:",
        case["outcome"], case["kind"]
    );
    print_reasons(&case["reasons"]);
    let path = |what: &str| format!("/v1/risk/cases/{case_id}/{what}");
    let (status, body) = staff.call(reqwest::Method::POST, &path("assign"), Some(&rita), Some(&json!({}))).await;
    ensure!(status == 200, "assign: {body}");
    let (status, body) = staff
        .call(
            reqwest::Method::POST,
            &path("resolve"),
            Some(&rita),
            Some(
                &json!({"resolution": "release", "note": "Called Finn on his registered number: he is buying a car."}),
            ),
        )
        .await;
    ensure!(status == 200 && body["resolution"] == "release", "resolve: {body}");
    let (status, me) = c.call("GET", "/v1/me", None, &in_session).await;
    ensure!(status == 200 && me["status"] == "active", "released: {me}");
    let (status, body) = staff
        .call(
            reqwest::Method::POST,
            &path("resolve"),
            Some(root),
            Some(&json!({"resolution": "keep_frozen", "note": "again"})),
        )
        .await;
    ensure!(status == 409, "a resolved case stays resolved: {body}");
    println!(
        "   She takes the case, calls Finn, and resolves it: release. His account is active again (GET /v1/me: 200);"
    );
    println!("   a second resolution is refused (409 case_resolved). Assignment, resolution and note are audited,");
    println!(
        "   as is every decision other than allow ({} risk.decision entries so far).",
        store
            .audit_entries(&AuditFilter { action: Some("risk.decision".into()), ..AuditFilter::default() }, 10_000)
            .await?
            .len()
    );

    chapter("34. Geofencing: sign-up and sign-in from a sanctioned jurisdiction are refused");
    let (status, body) = c
        .call(
            "POST",
            "/v1/customers/sign-in",
            Some(&json!({"email": "finn@example.com", "password": finn.password})),
            &[("x-forwarded-for", "192.0.2.77"), ("x-country", "IR")],
        )
        .await;
    ensure!(status == 403 && body["error"]["code"] == "jurisdiction_blocked", "from Iran: {status} {body}");
    println!("   Finn's password, but the proxy says the client is in Iran: {status} {}:", body["error"]["code"]);
    println!("   \"{}\"", body["error"]["message"].as_str().unwrap_or(""));
    let (status, body) = c
        .call(
            "POST",
            "/v1/customers/sign-up",
            Some(&json!({"email": "kim@example.com", "password": "Slate-Orchid-Pylon-47"})),
            &[("x-forwarded-for", "192.0.2.78"), ("x-country", "KP")],
        )
        .await;
    ensure!(status == 403 && body["error"]["code"] == "jurisdiction_blocked", "from North Korea: {status} {body}");
    let details = last_audit(&store, "auth.customer.sign_up").await?;
    ensure!(details.get("country").is_some_and(|c| c == "KP"), "{details:?}");
    println!(
        "   A sign-up from North Korea: {status} {}, and the refusal is in the audit log with",
        body["error"]["code"]
    );
    println!(
        "   the address and the country. Blocked by default: {} (`[compliance] blocked_countries`); without a",
        DEFAULT_BLOCKED.join(", ")
    );
    println!("   proxy's header the country comes from IP ranges (`[compliance] geoip_dir`, Debian's tor-geoipdb).");
    println!(
        "   Finn's account exists, so the attempt from Iran also opens a case flagging it for off-boarding review."
    );
    crate::demo_compliance::story(c, staff, keyring, &in_session).await
}
