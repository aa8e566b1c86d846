//! End-to-end tests of customer identity over HTTP: sign-up with a mandatory authenticator, email verification,
//! two-step sign-in bound to a device, step-up, security settings, API keys with signed requests, brute-force
//! defences and recovery, sessions and devices. The real binary on a fresh SQLite database and (when
//! `RAMPART_TEST_POSTGRES_URL` is set) a fresh PostgreSQL database, over HTTP only; TOTP codes are computed here as an
//! authenticator app would, emails are read back from the development Maildir as a mail reader would.
//!
//! One server per backend runs every scenario at once (plus a second one whose sessions idle out after two seconds).
//! The scenarios stay independent: each has its own customers (distinct emails) and its own client addresses (the
//! server trusts `X-Forwarded-For`, so each customer, and each attacker, gets an address of its own and with it its
//! own rate-limit bucket and brute-force counter). A failing scenario does not stop the others: each runs in its own
//! task and the test reports every failure at the end.

#[macro_use]
#[allow(dead_code)]
mod common;

use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::customer::*;
use common::production::Staff;
use common::{Answer, Db, Server};
use reqwest::Method;
use serde_json::{Value, json};

/// How recently a second factor must have been proven for a sensitive action, on the main server: long enough for a
/// step-up, three changes (two Argon2id hashes among them) and their risk scoring on a loaded debug build.
const STEP_UP_WINDOW_S: u64 = 4;
/// Failed sign-ins of one account before each further attempt is delayed, and the count that locks it.
const ACCOUNT_FREE_FAILURES: u32 = 2;
/// The first delay after the free failures: long enough that a loaded CI machine still sends the next attempt
/// inside it (the test asserts that attempt is delayed).
const DELAY_BASE_S: u64 = 4;
const ACCOUNT_LOCK_FAILURES: u32 = 3;
/// Failed sign-ins from one address before each further attempt is delayed.
const IP_FREE_FAILURES: u32 = 3;
/// Requests to the sign-in, sign-up and recovery routes one address may make at once.
const AUTH_RATE_LIMIT_BURST: u32 = 20;
const AUTH_RATE_LIMIT_PER_S: u64 = 2;
/// How long a session may stay unused on the second server.
const SESSION_IDLE_S: u64 = 2;
const HOUR_S: u64 = 3600;

const NEW_PASSWORD: &str = "Quartz-Meadow-Lantern-58-Pebbles";

/// The main server: client addresses from `X-Forwarded-For`, a short step-up window, small brute-force thresholds,
/// a small burst on the authentication routes, and a fast outbox.
fn main_config() -> String {
    format!(
        r#"
[identity]
client_ip_header = "x-forwarded-for"
step_up_window_s = {STEP_UP_WINDOW_S}
account_free_failures = {ACCOUNT_FREE_FAILURES}
account_lock_failures = {ACCOUNT_LOCK_FAILURES}
delay_base_s = {DELAY_BASE_S}
ip_free_failures = {IP_FREE_FAILURES}
ip_block_failures = 10
ip_block_s = 60
auth_rate_limit_per_s = {AUTH_RATE_LIMIT_PER_S}
auth_rate_limit_burst = {AUTH_RATE_LIMIT_BURST}

[mail]
outbox_interval_ms = 100
"#
    )
}

/// The second server: sessions idle out after [`SESSION_IDLE_S`].
fn idle_config() -> String {
    format!(
        r#"
[identity]
client_ip_header = "x-forwarded-for"
session_idle_s = {SESSION_IDLE_S}

[mail]
outbox_interval_ms = 100
"#
    )
}

// ---------------------------------------------------------------------------------------------------------------
// Clients, addresses, time

/// An answer's `Retry-After`, in seconds, which must be there.
#[track_caller]
fn retry_after(answer: &Answer) -> u64 {
    let value = answer.headers.get("retry-after").and_then(|v| v.to_str().ok());
    let seconds = value.and_then(|v| v.parse::<u64>().ok());
    seconds.unwrap_or_else(|| panic!("a 429 carries Retry-After in seconds, not {value:?}: {answer:?}"))
}

/// Asserts a 429 with `code` and a `Retry-After` of at least a second; returns the seconds.
#[track_caller]
fn assert_too_many(answer: &Answer, code: &str) -> u64 {
    answer.assert_error(429, code);
    let seconds = retry_after(answer);
    assert!(seconds >= 1, "Retry-After is at least a second: {answer:?}");
    seconds
}

/// `(outcome, reason)` of audit entries.
fn reasons(entries: &[Value]) -> Vec<(String, String)> {
    entries
        .iter()
        .map(|e| {
            (
                e["outcome"].as_str().unwrap_or_default().to_owned(),
                e["details"]["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// An expected `(outcome, reason)`.
fn r(outcome: &str, reason: &str) -> (String, String) {
    (outcome.to_owned(), reason.to_owned())
}

/// Seconds since the Unix epoch of an RFC 3339 UTC time `YYYY-MM-DDThh:mm:ssZ`.
#[track_caller]
fn parse_rfc3339(text: &str) -> u64 {
    let b = text.as_bytes();
    let shape = b.len() == 20
        && [4, 7].iter().all(|&i| b[i] == b'-')
        && b[10] == b'T'
        && [13, 16].iter().all(|&i| b[i] == b':')
        && b[19] == b'Z';
    assert!(shape, "not an RFC 3339 UTC time: {text:?}");
    let n = |r: std::ops::Range<usize>| text[r].parse::<u64>().unwrap_or_else(|_| panic!("not a time: {text:?}"));
    let (year, month, day) = (n(0..4), n(5..7), n(8..10));
    // Days from civil (Howard Hinnant), for dates from 1970 on.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19)
}

/// The first RFC 3339 UTC time in `text`.
#[track_caller]
fn find_rfc3339(text: &str) -> u64 {
    let b = text.as_bytes();
    (0..b.len().saturating_sub(19))
        .find(|&i| b[i + 10] == b'T' && b[i + 19] == b'Z' && b[i..i + 4].iter().all(u8::is_ascii_digit))
        .map(|i| parse_rfc3339(&text[i..i + 20]))
        .unwrap_or_else(|| panic!("no date in {text:?}"))
}

/// Asserts that `at` (seconds) is `hours` after some moment between `from` and `to` (seconds), give or take a few
/// seconds of rounding.
#[track_caller]
fn assert_hours_after(at: u64, hours: u64, from: u64, to: u64) {
    let (low, high) = (from + hours * HOUR_S - 2, to + hours * HOUR_S + 2);
    assert!((low..=high).contains(&at), "expected {hours} h after [{from}, {to}], i.e. in [{low}, {high}], got {at}");
}

/// Asserts that withdrawals are refused with `security_lock` for about `hours` from a moment between `from` and
/// `to` (Unix seconds), for the reason `why`.
#[track_caller]
fn assert_security_lock(status: &Value, hours: u64, from: u64, to: u64, why: &str) {
    assert_eq!((&status["allowed"], &status["code"]), (&json!(false), &json!("security_lock")), "{status}");
    let message = status["message"].as_str().unwrap_or_else(|| panic!("a message: {status}"));
    assert_hours_after(find_rfc3339(message), hours, from, to);
    assert!(message.contains(why), "the message says why ({why}): {message}");
}

// ---------------------------------------------------------------------------------------------------------------
// 1. Sign-up → authenticator enrolment (otpauth URI and QR code) → ten backup codes → email verification by the
//    emailed link → two-step sign-in from the sign-up device → a working session; one ledger account per asset.

async fn sign_up_enrol_verify_and_sign_in(ctx: Ctx) {
    let ip = fresh_ip();
    let email = fresh_email("newcomer");
    let signed_up = ctx.post_from(&ip, "/v1/customers/sign-up", &json!({"email": email, "password": PASSWORD})).await;
    let body = signed_up.expect(201).clone();
    let handle = signed_up.str("customer").to_owned();
    assert!(handle.len() == 32 && handle.bytes().all(|b| b.is_ascii_hexdigit()), "a 16-byte public id: {handle}");
    let device = signed_up.str("device_token").to_owned();
    assert!(device.starts_with("rdv_"), "{device}");
    let enrolment_ticket = signed_up.str("enrolment_ticket").to_owned();
    assert!(enrolment_ticket.starts_with("ren_"), "{enrolment_ticket}");
    // The authenticator to set up: the secret, the otpauth URI carrying the same secret, and the URI as a QR code.
    let secret = body["totp"]["secret"].as_str().expect("a base32 secret").to_owned();
    let uri = body["totp"]["otpauth_uri"].as_str().expect("an otpauth URI");
    assert!(uri.starts_with("otpauth://totp/"), "{uri}");
    let from_uri = totp_rs::TOTP::from_url(uri).expect("a valid otpauth URI");
    assert_eq!(from_uri.get_secret_base32(), secret, "{uri}");
    assert_eq!(from_uri.issuer.as_deref(), Some("Rampart"), "{uri}");
    assert_eq!(from_uri.account_name, email, "{uri}");
    let svg = body["totp"]["qr_svg"].as_str().expect("an SVG QR code");
    assert!(svg.contains("<svg") && svg.contains("</svg>"), "{svg}");

    // Nobody signs in before verifying the address.
    ctx.password_step(&ip, &email, PASSWORD).await.assert_error(403, "email_unverified");

    // Enrolment needs a right code; it answers ten distinct backup codes once; the ticket then stops working.
    let mut totp = Totp::from_base32(&secret);
    let enrol = |code: String| json!({"enrolment_ticket": enrolment_ticket, "totp_code": code});
    ctx.post_from(&ip, "/v1/customers/sign-up/totp", &enrol(totp.wrong_code())).await.assert_error(401, "invalid_code");
    let enrolled = ctx.post_from(&ip, "/v1/customers/sign-up/totp", &enrol(totp.next_code().await)).await;
    let codes: Vec<String> = enrolled.expect(200)["backup_codes"]
        .as_array()
        .unwrap_or_else(|| panic!("backup codes: {}", enrolled.text))
        .iter()
        .map(|c| c.as_str().expect("a code").to_owned())
        .collect();
    assert_eq!(codes.len(), 10, "{codes:?}");
    assert_eq!(codes.iter().collect::<BTreeSet<_>>().len(), 10, "distinct: {codes:?}");
    assert!(codes.iter().all(|c| is_backup_code(c)), "xxxx-xxxx-xxxx-xxxx: {codes:?}");
    ctx.post_from(&ip, "/v1/customers/sign-up/totp", &enrol(totp.wrong_code()))
        .await
        .assert_error(401, "invalid_ticket");

    let mut customer = Customer {
        ctx: ctx.clone(),
        email: email.clone(),
        password: PASSWORD.to_owned(),
        ip: ip.clone(),
        totp,
        backup_codes: codes,
        device: device.clone(),
        token: None,
        id: 0,
        handle: handle.clone(),
        seen_mail: HashSet::new(),
    };
    // The verification link works once.
    let mail = customer.mail("Confirm your email address").await;
    assert_eq!(mail.link_path(), "/verify-email", "{}", mail.text);
    let token = mail.token();
    assert!(token.starts_with("rve_"), "{token}");
    assert_no_content(&ctx.post_from(&ip, "/v1/customers/verify-email", &json!({"token": token})).await);
    ctx.post_from(&ip, "/v1/customers/verify-email", &json!({"token": token}))
        .await
        .assert_error(401, "invalid_ticket");
    customer.id = customer.lookup_id().await;

    // Two steps: the password gives a ticket and the factors on offer; the code from the sign-up device, a session.
    let first = customer.password_step().await;
    assert_eq!(first.expect(200)["second_factors"], json!(["totp", "backup_code"]), "{}", first.text);
    let ticket = first.str("ticket").to_owned();
    assert!(ticket.starts_with("rsi_"), "{ticket}");
    let factor = json!({"totp_code": customer.totp.next_code().await});
    let session = customer.verify(&ticket, &factor, Some(&device)).await;
    assert_eq!(session.expect(200)["status"], json!("signed_in"), "{}", session.text);
    assert_eq!(session.str("device_token"), device);
    let token = session.str("token").to_owned();
    assert!(token.starts_with("rcs_"), "{token}");
    customer.token = Some(token);
    // The ticket was spent.
    customer
        .verify(&ticket, &json!({"backup_code": customer.backup_codes[0]}), Some(&device))
        .await
        .assert_error(401, "invalid_ticket");

    let me = customer.get("/v1/me").await;
    assert_eq!(
        me.expect(200),
        &json!({
            "customer": handle, "email": email, "email_verified": true, "status": "active",
            "second_factors": ["totp", "backup_code"], "backup_codes_left": 10, "anti_phishing_code_set": false,
            "withdrawals_locked_until": null
        }),
        "{}",
        me.text
    );
    let status = customer.withdrawal_status().await;
    assert_eq!(status, json!({"allowed": true, "code": null, "message": null}));

    // One ledger account per asset, empty, that cannot go negative.
    let assets: Vec<String> = ctx
        .api
        .get("/v1/assets")
        .await
        .expect(200)
        .as_array()
        .expect("assets")
        .iter()
        .map(|a| a["code"].as_str().expect("a code").to_owned())
        .collect();
    assert!(!assets.is_empty());
    let balances = customer.get("/v1/me/balances").await;
    let list = balances.expect(200).as_array().unwrap_or_else(|| panic!("a list: {}", balances.text)).clone();
    let listed: Vec<String> = list.iter().map(|b| b["asset"].as_str().expect("an asset").to_owned()).collect();
    assert_eq!(listed, assets, "{}", balances.text);
    for balance in &list {
        assert_eq!((&balance["available"], &balance["pending"]), (&json!("0"), &json!("0")), "{balance}");
    }
    for asset in &assets {
        let id = rampart_server::customer_ledger_account(customer.id, asset);
        let account = ctx.api.get(&format!("/v1/accounts/{id}")).await;
        let view = account.expect(200);
        assert_eq!(view["asset"], json!(asset), "{}", account.text);
        assert_eq!(view["flags"], json!(["debits_must_not_exceed_credits"]), "{}", account.text);
        assert_eq!(view["credits_posted"], json!("0"), "{}", account.text);
    }

    // The address is taken now, and a second sign-up with it changes nothing.
    ctx.post_from(&fresh_ip(), "/v1/customers/sign-up", &json!({"email": email, "password": NEW_PASSWORD}))
        .await
        .assert_error(409, "email_taken");
    customer.password_step().await.expect(200);

    // The audit log tells the story.
    let subject = customer.subject();
    assert_eq!(reasons(&ctx.audit_about("auth.customer.sign_up", &subject).await), [r("success", "")]);
    assert_eq!(
        reasons(&ctx.audit_about("auth.customer.totp_enrol", &subject).await),
        [r("failure", "wrong_code"), r("success", "")]
    );
    assert_eq!(ctx.audit_about("auth.customer.email_verified", &subject).await.len(), 1);
    let sign_ins = ctx.audit_about("auth.customer.sign_in", &subject).await;
    assert_eq!(sign_ins.len(), 1, "{sign_ins:?}");
    assert_eq!(
        (
            &sign_ins[0]["actor"],
            &sign_ins[0]["outcome"],
            &sign_ins[0]["details"]["factor"],
            &sign_ins[0]["details"]["ip"]
        ),
        (&json!(subject), &json!("success"), &json!("totp"), &json!(ip)),
        "{sign_ins:?}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// 2. Passwords: too short, too long, common, or containing the email's local part are refused and change nothing;
//    an unknown email is answered exactly like a wrong password.

async fn weak_passwords_and_unknown_emails(ctx: Ctx) {
    let ip = fresh_ip();
    let email = fresh_email("zanzibar.");
    let local = email.split('@').next().expect("a local part").to_owned();
    let too_long: String = PASSWORD.chars().cycle().take(129).collect();
    for password in [
        "Sh0rt-pw!".to_owned(),
        too_long,
        "password1234".to_owned(),
        "qwertyuiop123".to_owned(),
        format!("Quokka-{local}-Violin"),
        format!("{}-Harbour-Lantern", local.to_uppercase()),
    ] {
        let answer = ctx.post_from(&ip, "/v1/customers/sign-up", &json!({"email": email, "password": password})).await;
        answer.assert_error(400, "weak_password");
    }
    // None of them created the account: the address is still free, and nothing was emailed to it.
    ctx.password_step(&ip, &email, PASSWORD).await.assert_error(401, "invalid_credentials");
    assert!(ctx.mails().iter().all(|m| m.to != email), "a refused sign-up sends nothing");
    let signed_up = ctx.post_from(&ip, "/v1/customers/sign-up", &json!({"email": email, "password": PASSWORD})).await;
    signed_up.expect(201);

    // A verified customer: a wrong password and an unknown email get the very same answer.
    let customer = Customer::register(&ctx, "pat").await;
    let attacker = fresh_ip();
    let wrong = ctx.password_step(&attacker, &customer.email, NEW_PASSWORD).await;
    let unknown = ctx.password_step(&attacker, &fresh_email("nobody"), NEW_PASSWORD).await;
    wrong.assert_error(401, "invalid_credentials");
    unknown.assert_error(401, "invalid_credentials");
    assert_eq!((wrong.status, &wrong.body), (unknown.status, &unknown.body), "an unknown email must not show");
    // So does something that is not an email at all.
    let garbage = ctx.password_step(&fresh_ip(), "not an email", NEW_PASSWORD).await;
    assert_eq!((garbage.status, &garbage.body), (wrong.status, &wrong.body));
    customer.password_step().await.expect(200);

    // Both refusals are audited; the unknown email only as a keyed hash.
    let failures: Vec<Value> = ctx
        .audit("auth.customer.sign_in")
        .await
        .into_iter()
        .filter(|e| e["details"]["ip"] == json!(attacker))
        .collect();
    assert_eq!(reasons(&failures), vec![r("failure", "credentials"); 2], "{failures:?}");
    assert_eq!(failures[0]["target"], json!(customer.subject()), "{failures:?}");
    let unknown_target = failures[1]["target"].as_str().unwrap_or_default();
    assert!(unknown_target.starts_with("unknown_customer:") && !unknown_target.contains("nobody"), "{unknown_target}");
}

// ---------------------------------------------------------------------------------------------------------------
// 3. TOTP: a wrong, an expired (three steps ago) and a future (three steps ahead) code are refused, and each time
//    step is accepted once per account: the code that signed in is refused for a step-up. Every refused code counts
//    against the account like a wrong password (two are free here, the third locks), so two customers share the
//    refusals.

async fn totp_codes_work_once_and_only_near_now(ctx: Ctx) {
    // At sign-in, a wrong code and one from three steps ago; after two failures even the right code waits.
    let mut early = Customer::register(&ctx, "timekeeper").await;
    let device = early.device.clone();
    let ticket = early.ticket().await;
    let wrong = json!({"totp_code": early.totp.wrong_code()});
    early.verify(&ticket, &wrong, Some(&device)).await.assert_error(401, "invalid_second_factor");
    let expired = json!({"totp_code": early.totp.expired_code()});
    early.verify(&ticket, &expired, Some(&device)).await.assert_error(401, "invalid_second_factor");
    let right = json!({"totp_code": early.totp.next_code().await});
    let wait = assert_too_many(&early.verify(&ticket, &right, Some(&device)).await, "too_many_attempts");
    tokio::time::sleep(Duration::from_secs(wait)).await;
    early.verify(&ticket, &right, Some(&device)).await.expect(200);
    assert_eq!(
        reasons(&ctx.audit_about("auth.customer.sign_in", &early.subject()).await),
        [r("failure", "wrong_totp"), r("failure", "wrong_totp"), r("denied", "throttled_account"), r("success", "")]
    );

    // A code from three steps ahead; then the code that signed in is spent for a step-up, and each step works once.
    let mut late = Customer::register(&ctx, "clockwatcher").await;
    let device = late.device.clone();
    let ticket = late.ticket().await;
    let future = json!({"totp_code": late.totp.future_code()});
    late.verify(&ticket, &future, Some(&device)).await.assert_error(401, "invalid_second_factor");
    let sign_in_code = late.totp.next_code().await;
    let session = late.verify(&ticket, &json!({"totp_code": sign_in_code}), Some(&device)).await;
    late.token = Some(session.expect(200)["token"].as_str().expect("a session").to_owned());
    let step_up = |code: &str| json!({"totp_code": code});
    late.post("/v1/me/step-up", &step_up(&sign_in_code)).await.assert_error(401, "invalid_second_factor");
    let fresh = late.totp.next_code().await;
    assert_no_content(&late.post("/v1/me/step-up", &step_up(&fresh)).await);
    late.post("/v1/me/step-up", &step_up(&fresh)).await.assert_error(401, "invalid_second_factor");

    let subject = late.subject();
    assert_eq!(
        reasons(&ctx.audit_about("auth.customer.sign_in", &subject).await),
        [r("failure", "wrong_totp"), r("success", "")]
    );
    assert_eq!(
        reasons(&ctx.audit_about("auth.customer.step_up", &subject).await),
        [r("failure", "replayed_totp"), r("success", ""), r("failure", "replayed_totp")]
    );
}

// ---------------------------------------------------------------------------------------------------------------
// 4. A backup code works once.

async fn backup_codes_work_once(ctx: Ctx) {
    let mut customer = Customer::register(&ctx, "spare").await;
    let device = customer.device.clone();
    let first = customer.backup_codes.remove(0);
    let second = customer.backup_codes.remove(0);
    let ticket = customer.ticket().await;
    let session = customer.verify(&ticket, &json!({"backup_code": first}), Some(&device)).await;
    customer.token = Some(session.expect(200)["token"].as_str().expect("a session").to_owned());
    assert_eq!(customer.get("/v1/me").await.expect(200)["backup_codes_left"], json!(9));

    // Reused: refused, at sign-in and at step-up; another code, typed loosely, works.
    let ticket = customer.ticket().await;
    customer
        .verify(&ticket, &json!({"backup_code": first}), Some(&device))
        .await
        .assert_error(401, "invalid_second_factor");
    let loosely = second.replace('-', " ").to_uppercase();
    let session = customer.verify(&ticket, &json!({"backup_code": loosely}), Some(&device)).await;
    customer.token = Some(session.expect(200)["token"].as_str().expect("a session").to_owned());
    customer.post("/v1/me/step-up", &json!({"backup_code": first})).await.assert_error(401, "invalid_second_factor");
    customer.post("/v1/me/step-up", &json!({"backup_code": second})).await.assert_error(401, "invalid_second_factor");
    assert_eq!(customer.get("/v1/me").await.expect(200)["backup_codes_left"], json!(8));

    let subject = customer.subject();
    let sign_ins = ctx.audit_about("auth.customer.sign_in", &subject).await;
    assert_eq!(reasons(&sign_ins), [r("success", ""), r("failure", "wrong_backup_code"), r("success", "")]);
    assert_eq!(sign_ins[0]["details"]["factor"], json!("backup_code"));
    assert_eq!(
        reasons(&ctx.audit_about("auth.customer.step_up", &subject).await),
        vec![r("failure", "wrong_backup_code"); 2]
    );
}

// ---------------------------------------------------------------------------------------------------------------
// 5. Device binding: a session works only with its device's token; a sign-in from an unrecognised device needs the
//    emailed confirmation first.

async fn sessions_are_bound_to_devices(ctx: Ctx) {
    let mut customer = Customer::register(&ctx, "gadget").await;
    let first_session = customer.sign_in().await;
    let first_device = customer.device.clone();
    customer.me_with(&first_session, Some(&first_device)).await.expect(200);
    // Without the device header, or with a token that is no device of this customer: refused, audited.
    customer.me_with(&first_session, None).await.assert_error(401, "device_mismatch");
    let stranger = format!("rdv_{}", "ab".repeat(32));
    customer.me_with(&first_session, Some(&stranger)).await.assert_error(401, "device_mismatch");

    // A sign-in without a known device: the factor is right, but the device must be confirmed from the email.
    let ticket = customer.ticket().await;
    let factor = customer.factor();
    let pending = customer.verify(&ticket, &factor, None).await;
    assert_eq!(pending.expect(202)["status"], json!("device_confirmation_required"), "{}", pending.text);
    assert!(pending.body.get("token").is_none(), "no session before the device is confirmed: {}", pending.text);
    let new_device = pending.str("device_token").to_owned();
    assert!(new_device.starts_with("rdv_") && new_device != first_device, "{new_device}");
    let mail = customer.mail("Confirm a sign-in from a new device").await;
    assert_eq!(mail.link_path(), "/confirm-device", "{}", mail.text);
    assert!(mail.text.contains(&customer.ip), "the email names the address: {}", mail.text);
    let confirmation = mail.token();
    assert!(customer.notifications().await.contains(&"new_device_confirmation".to_owned()));
    // Until confirmed, the new device gets no session (and a new link).
    let ticket = customer.ticket().await;
    let factor = customer.factor();
    customer.verify(&ticket, &factor, Some(&new_device)).await.expect(202);
    customer.mail("Confirm a sign-in from a new device").await;

    assert_no_content(
        &ctx.post_from(&customer.ip, "/v1/customers/devices/confirm", &json!({"token": confirmation})).await,
    );
    ctx.post_from(&customer.ip, "/v1/customers/devices/confirm", &json!({"token": confirmation}))
        .await
        .assert_error(401, "invalid_ticket");
    customer.device = new_device.clone();
    let second_session = customer.sign_in().await;
    customer.me_with(&second_session, Some(&new_device)).await.expect(200);
    // Each session works only with its own device's token.
    customer.me_with(&first_session, Some(&new_device)).await.assert_error(401, "device_mismatch");
    customer.me_with(&second_session, Some(&first_device)).await.assert_error(401, "device_mismatch");
    customer.me_with(&first_session, Some(&first_device)).await.expect(200);
    let devices = customer.get("/v1/me/devices").await;
    let list = devices.expect(200).as_array().expect("devices").clone();
    assert_eq!(list.len(), 2, "{}", devices.text);
    assert!(list.iter().all(|d| d["confirmed"] == json!(true) && d["revoked"] == json!(false)), "{}", devices.text);

    let subject = customer.subject();
    let refused = ctx.audit_about("auth.customer.session_refused", &subject).await;
    assert_eq!(reasons(&refused), vec![r("denied", "device_mismatch"); 4], "{refused:?}");
    assert_eq!(ctx.audit_about("auth.customer.new_device", &subject).await.len(), 1);
    assert_eq!(ctx.audit_about("auth.customer.device_confirmed", &subject).await.len(), 1);
}

// ---------------------------------------------------------------------------------------------------------------
// 6. Step-up: sensitive actions outside the window are refused and change nothing; after a step-up they work.

async fn sensitive_actions_need_a_recent_second_factor(ctx: Ctx) {
    let mut customer = Customer::register(&ctx, "stepper").await;
    customer.sign_in().await;
    // The sign-in proved a factor; once the window has passed, it no longer counts.
    tokio::time::sleep(Duration::from_millis(STEP_UP_WINDOW_S * 1000 + 500)).await;
    let anti_phishing = json!({"code": "GREEN-77"});
    let api_key = json!({"label": "bot", "scopes": ["read"]});
    let password = json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD});
    customer.put("/v1/me/anti-phishing-code", &anti_phishing).await.assert_error(403, "step_up_required");
    customer.post("/v1/me/api-keys", &api_key).await.assert_error(403, "step_up_required");
    customer.post("/v1/me/password", &password).await.assert_error(403, "step_up_required");
    customer
        .post("/v1/me/email", &json!({"new_email": fresh_email("elsewhere")}))
        .await
        .assert_error(403, "step_up_required");
    customer.post("/v1/me/backup-codes", &json!({})).await.assert_error(403, "step_up_required");
    // A failed step-up does not open the window.
    let wrong = json!({"totp_code": customer.totp.wrong_code()});
    customer.post("/v1/me/step-up", &wrong).await.assert_error(401, "invalid_second_factor");
    customer.put("/v1/me/anti-phishing-code", &anti_phishing).await.assert_error(403, "step_up_required");
    // Nothing changed.
    assert_eq!(customer.get("/v1/me").await.expect(200)["anti_phishing_code_set"], json!(false));
    assert_eq!(customer.get("/v1/me/api-keys").await.expect(200), &json!([]));
    customer.password_step().await.expect(200);
    assert_eq!(customer.withdrawal_status().await["allowed"], json!(true));

    customer.step_up().await;
    assert_no_content(&customer.put("/v1/me/anti-phishing-code", &anti_phishing).await);
    customer.post("/v1/me/api-keys", &api_key).await.expect(201);
    assert_no_content(&customer.post("/v1/me/password", &password).await);
    assert_eq!(customer.get("/v1/me").await.expect(200)["anti_phishing_code_set"], json!(true));
    assert_eq!(customer.get("/v1/me/api-keys").await.expect(200).as_array().map(Vec::len), Some(1));
    assert_eq!(
        reasons(&ctx.audit_about("auth.customer.step_up", &customer.subject()).await),
        [r("failure", "wrong_totp"), r("success", "")]
    );
    // Each refusal is audited, with its route.
    let refused = ctx.audit_about("auth.customer.refused", &customer.subject()).await;
    let routes: Vec<(String, String)> = refused
        .iter()
        .map(|e| {
            assert_eq!((&e["actor"], &e["outcome"]), (&json!(customer.subject()), &json!("denied")), "{e}");
            (
                e["details"]["reason"].as_str().unwrap_or_default().to_owned(),
                e["details"]["route"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        "/v1/me/anti-phishing-code",
        "/v1/me/api-keys",
        "/v1/me/password",
        "/v1/me/email",
        "/v1/me/backup-codes",
        "/v1/me/anti-phishing-code",
    ]
    .iter()
    .map(|route| r("step_up_required", route))
    .collect();
    assert_eq!(routes, expected, "{refused:?}");
}

// ---------------------------------------------------------------------------------------------------------------
// 7. A password change ends the other sessions, locks withdrawals for 24 hours and tells the owner.

async fn a_password_change_ends_other_sessions_and_locks_withdrawals(ctx: Ctx) {
    let mut customer = Customer::register(&ctx, "rotator").await;
    let other = customer.sign_in().await;
    let current = customer.sign_in().await;
    let device = customer.device.clone();
    customer.me_with(&other, Some(&device)).await.expect(200);

    // Refused changes change nothing: a wrong current password (audited), a weak new one.
    customer.step_up().await;
    let wrong = json!({"current_password": NEW_PASSWORD, "new_password": NEW_PASSWORD});
    customer.post("/v1/me/password", &wrong).await.assert_error(401, "invalid_credentials");
    let weak = json!({"current_password": PASSWORD, "new_password": "password1234"});
    customer.post("/v1/me/password", &weak).await.assert_error(400, "weak_password");
    customer.me_with(&other, Some(&device)).await.expect(200);
    assert_eq!(customer.withdrawal_status().await["allowed"], json!(true));

    customer.step_up().await;
    let before = now_s();
    let change = json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD});
    assert_no_content(&customer.post("/v1/me/password", &change).await);
    let after = now_s();
    customer.me_with(&other, Some(&device)).await.assert_error(401, "unauthorized");
    customer.me_with(&current, Some(&device)).await.expect(200);

    assert_security_lock(&customer.withdrawal_status().await, 24, before, after, "password change");
    let me = customer.get("/v1/me").await.expect(200).clone();
    assert_hours_after(parse_rfc3339(me["withdrawals_locked_until"].as_str().expect("a lock")), 24, before, after);
    assert!(customer.notifications().await.contains(&"password_changed".to_owned()));
    customer.mail("Your password was changed").await;

    ctx.password_step(&customer.ip, &customer.email, PASSWORD).await.assert_error(401, "invalid_credentials");
    customer.password = NEW_PASSWORD.to_owned();
    customer.password_step().await.expect(200);

    let changes = ctx.audit_about("auth.customer.password_change", &customer.subject()).await;
    assert_eq!(reasons(&changes), [r("failure", "wrong_current_password"), r("success", "")]);
    assert!(changes[1]["details"]["withdrawals_locked_until"].is_string(), "{changes:?}");
}

// ---------------------------------------------------------------------------------------------------------------
// 8. The anti-phishing code, set with a step-up, heads every email from then on.

async fn the_anti_phishing_code_heads_every_email(ctx: Ctx) {
    let mut customer = Customer::register(&ctx, "fisher").await;
    let mails = customer.ctx.mails();
    let verification = mails
        .iter()
        .find(|m| m.to == customer.email && m.subject.contains("Confirm your email address"))
        .expect("the verification email");
    assert!(verification.first_line().starts_with("Anti-phishing code: not set"), "{}", verification.text);
    customer.sign_in().await;
    customer.step_up().await;
    customer
        .put("/v1/me/anti-phishing-code", &json!({"code": "x"}))
        .await
        .assert_error(400, "invalid_anti_phishing_code");
    customer
        .put("/v1/me/anti-phishing-code", &json!({"code": "<b>"}))
        .await
        .assert_error(400, "invalid_anti_phishing_code");
    assert_eq!(customer.get("/v1/me").await.expect(200)["anti_phishing_code_set"], json!(false));
    assert_no_content(&customer.put("/v1/me/anti-phishing-code", &json!({"code": "BLUE-42"})).await);
    assert_eq!(customer.get("/v1/me").await.expect(200)["anti_phishing_code_set"], json!(true));
    assert!(customer.notifications().await.contains(&"anti_phishing_code_changed".to_owned()));

    let changed = customer.mail("Your anti-phishing code was changed").await;
    assert_eq!(changed.first_line(), "Anti-phishing code: BLUE-42", "{}", changed.text);
    // The next email, of another kind, carries it too.
    let started = ctx.post_from(&customer.ip, "/v1/customers/recovery/start", &json!({"email": customer.email})).await;
    assert_eq!(started.status.as_u16(), 202, "{}", started.text);
    let recovery = customer.mail("Account recovery started").await;
    assert_eq!(recovery.first_line(), "Anti-phishing code: BLUE-42", "{}", recovery.text);
    assert_eq!(
        reasons(&ctx.audit_about("auth.customer.anti_phishing_code", &customer.subject()).await),
        [r("success", "")]
    );
}

// ---------------------------------------------------------------------------------------------------------------
// 9. API keys: created with a step-up; signed requests work once, within the window, unaltered, from the
//    allow-list, within the key's scopes and never on security routes; a revoked key stops working; every refusal
//    is audited.

async fn api_keys_sign_requests_that_work_once(ctx: Ctx) {
    let mut customer = Customer::register(&ctx, "robot").await;
    customer.sign_in().await;
    customer.step_up().await;
    customer
        .post("/v1/me/api-keys", &json!({"label": "payout", "scopes": ["withdraw"]}))
        .await
        .assert_error(400, "allow_list_required");
    assert_eq!(customer.get("/v1/me/api-keys").await.expect(200), &json!([]));
    let created = customer
        .post("/v1/me/api-keys", &json!({"label": "reader", "scopes": ["read"], "allow_list": [customer.ip]}))
        .await;
    assert_eq!(created.expect(201)["scopes"], json!(["read"]), "{}", created.text);
    let reader = ApiKey::of(&created);
    let created = customer.post("/v1/me/api-keys", &json!({"label": "trader", "scopes": ["trade"]})).await;
    created.expect(201);
    let trader = ApiKey::of(&created);
    let api = &ctx.api;
    let ip = customer.ip.clone();

    // A signed GET works; the same signature again does not.
    let t = now_ms();
    let balances = api.send(reader.at(&ctx, &ip, Method::GET, "/v1/me/balances", b"", t)).await;
    assert_eq!(balances.expect(200).as_array().map(Vec::len), Some(3), "{}", balances.text);
    api.send(reader.at(&ctx, &ip, Method::GET, "/v1/me/balances", b"", t))
        .await
        .assert_error(401, "replayed_signature");
    // Outside the five-second window, either way.
    api.send(reader.at(&ctx, &ip, Method::GET, "/v1/me/balances", b"", now_ms() - 10_000))
        .await
        .assert_error(401, "timestamp_expired");
    api.send(reader.at(&ctx, &ip, Method::GET, "/v1/me/balances", b"", now_ms() + 10_000))
        .await
        .assert_error(401, "timestamp_in_future");
    // A body other than the one signed.
    let signed = br#"{"backup_code":"aaaa-bbbb-cccc-dddd"}"#;
    let sent = br#"{"backup_code":"zzzz-bbbb-cccc-dddd"}"#;
    let tampered = ctx
        .request_from(&ip, Method::POST, "/v1/me/step-up")
        .header("content-type", "application/json")
        .body(sent.to_vec());
    api.send(reader.sign(tampered, &Method::POST, "/v1/me/step-up", signed, now_ms()))
        .await
        .assert_error(401, "bad_signature");
    // From an address off the allow-list.
    api.send(reader.now(&ctx, &fresh_ip(), Method::GET, "/v1/me/balances", b""))
        .await
        .assert_error(403, "ip_not_allowed");
    // A scope the key lacks.
    api.send(trader.now(&ctx, &ip, Method::GET, "/v1/me/balances", b"")).await.assert_error(403, "scope_missing");
    // A security route, even with a valid signature: only a session may change the password.
    let change = serde_json::to_vec(&json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD})).unwrap();
    api.send(reader.now(&ctx, &ip, Method::POST, "/v1/me/password", &change))
        .await
        .assert_error(403, "session_required");
    customer.password_step().await.expect(200);
    // Still working, then revoked.
    api.send(reader.now(&ctx, &ip, Method::GET, "/v1/me", b"")).await.expect(200);
    assert_no_content(&customer.delete(&format!("/v1/me/api-keys/{}", reader.id)).await);
    api.send(reader.now(&ctx, &ip, Method::GET, "/v1/me/balances", b"")).await.assert_error(401, "invalid_api_key");
    customer.delete(&format!("/v1/me/api-keys/{}", reader.id)).await.assert_error(404, "not_found");
    let keys = customer.get("/v1/me/api-keys").await;
    let listed = keys.expect(200).as_array().expect("keys").clone();
    let revoked = listed.iter().find(|k| k["key"] == json!(reader.id)).unwrap_or_else(|| panic!("{}", keys.text));
    assert!(revoked["revoked"].is_string() && revoked["allow_list"] == json!([ip]), "{revoked}");
    let kinds = customer.notifications().await;
    assert!(
        kinds.contains(&"api_key_created".to_owned()) && kinds.contains(&"api_key_revoked".to_owned()),
        "{kinds:?}"
    );

    // Every refusal of a presented key is audited, with its reason: those of the authentication layer as
    // `auth.api_key.refused` naming the key, those decided by the route as `auth.customer.refused` by the key's actor.
    let refused = ctx.audit("auth.api_key.refused").await;
    let of = |key: &str| -> BTreeSet<String> {
        refused
            .iter()
            .filter(|e| e["details"]["key"] == json!(key))
            .map(|e| {
                assert_eq!(e["outcome"], json!("denied"), "{e}");
                e["details"]["reason"].as_str().unwrap_or_default().to_owned()
            })
            .collect()
    };
    let expected: BTreeSet<String> = [
        "replayed_signature",
        "timestamp_expired",
        "timestamp_in_future",
        "bad_signature",
        "ip_not_allowed",
        "unknown_key",
    ]
    .map(str::to_owned)
    .into();
    assert_eq!(of(&reader.id), expected, "the refusals of {} in the audit log", reader.id);
    assert!(of(&trader.id).is_empty(), "the trade key was never refused before its route");
    let by_routes = ctx.audit_about("auth.customer.refused", &customer.subject()).await;
    let by_route = |key: &str| -> Vec<(String, String)> {
        by_routes
            .iter()
            .filter(|e| e["actor"] == json!(format!("{}/{key}", customer.subject())))
            .map(|e| {
                assert_eq!(e["outcome"], json!("denied"), "{e}");
                let field = |name: &str| e["details"][name].as_str().unwrap_or_default().to_owned();
                (field("reason"), field("route"))
            })
            .collect()
    };
    assert_eq!(by_route(&reader.id), [r("session_required", "/v1/me/password")], "{by_routes:?}");
    assert_eq!(by_route(&trader.id), [r("scope_missing", "/v1/me/balances")], "{by_routes:?}");
}

// ---------------------------------------------------------------------------------------------------------------
// 10. Brute force: spraying from one address, stuffing from many against one account, the lock, recovery by the
//     owner and by support; the rate limit of the authentication routes.

async fn password_spraying_blocks_the_address(ctx: Ctx) {
    let victim = Customer::register(&ctx, "sprayed").await;
    let sprayer = fresh_ip();
    // Three accounts, one wrong password each (unknown emails count too): the address is then slowed down.
    for email in [fresh_email("ghost"), victim.email.clone(), fresh_email("phantom")] {
        ctx.password_step(&sprayer, &email, "Spring2026!Spring2026!").await.assert_error(401, "invalid_credentials");
    }
    let wait =
        assert_too_many(&ctx.password_step(&sprayer, &fresh_email("wraith"), "Spring2026!").await, "too_many_attempts");
    // Even the right password waits, from that address; from another, the account is fine.
    assert_too_many(&ctx.password_step(&sprayer, &victim.email, PASSWORD).await, "too_many_attempts");
    victim.password_step().await.expect(200);
    tokio::time::sleep(Duration::from_secs(wait)).await;
    ctx.password_step(&sprayer, &victim.email, PASSWORD).await.expect(200);

    let entries: Vec<Value> =
        ctx.audit("auth.customer.sign_in").await.into_iter().filter(|e| e["details"]["ip"] == json!(sprayer)).collect();
    assert_eq!(
        reasons(&entries),
        [
            r("failure", "credentials"),
            r("failure", "credentials"),
            r("failure", "credentials"),
            r("denied", "throttled_ip"),
            r("denied", "throttled_ip"),
        ],
        "{entries:?}"
    );
    assert_eq!(entries[1]["target"], json!(victim.subject()));
    assert_eq!(entries[3]["target"], json!(format!("ip:{sprayer}")));
}

/// Locks `customer` with wrong passwords from as many addresses, waiting out the delays; checks each 429 it meets
/// (and that a right password waits too). A wrong password sent to see the delay may arrive after it ended on a slow
/// machine, and then counts as one more failure (and no delay is seen): the failures are counted as the server
/// answers them, not assumed. Other scenarios show the delay itself.
async fn lock_out(ctx: &Ctx, customer: &Customer) {
    let mut failures = 0;
    for _ in 0..4 * ACCOUNT_LOCK_FAILURES {
        if failures == ACCOUNT_LOCK_FAILURES {
            return;
        }
        let answer = ctx.password_step(&fresh_ip(), &customer.email, NEW_PASSWORD).await;
        if answer.status.as_u16() == 429 {
            // Delayed: every attempt, right or wrong, from any address, waits.
            assert!(failures >= ACCOUNT_FREE_FAILURES, "delayed after {failures} failures: {}", answer.text);
            let wait = assert_too_many(&answer, "too_many_attempts");
            assert_too_many(&ctx.password_step(&fresh_ip(), &customer.email, PASSWORD).await, "too_many_attempts");
            tokio::time::sleep(Duration::from_secs(wait)).await;
            continue;
        }
        failures += 1;
        if failures < ACCOUNT_LOCK_FAILURES {
            answer.assert_error(401, "invalid_credentials");
        } else {
            answer.assert_error(403, "account_locked");
        }
    }
    assert_eq!(failures, ACCOUNT_LOCK_FAILURES, "still not locked after {} attempts", 4 * ACCOUNT_LOCK_FAILURES);
}

/// Signs in with the right password from fresh addresses, waiting out any delay, until an answer other than 429.
async fn password_step_after_delays(ctx: &Ctx, customer: &Customer) -> Answer {
    for _ in 0..5 {
        let answer = ctx.password_step(&fresh_ip(), &customer.email, &customer.password).await;
        if answer.status.as_u16() != 429 {
            return answer;
        }
        tokio::time::sleep(Duration::from_secs(assert_too_many(&answer, "too_many_attempts"))).await;
    }
    panic!("still delayed after five waits")
}

/// Thirty wrong passwords at once, each from its own address: every attempt is counted before its password is checked,
/// so no more than the lock's worth are checked at all; the rest wait or find the account locked.
async fn a_burst_of_guesses_gets_no_more_tries_than_the_limit(ctx: Ctx) {
    let customer = Customer::register(&ctx, "burst").await;
    let guesses = (0..30).map(|_| {
        let (ctx, email) = (ctx.clone(), customer.email.clone());
        tokio::spawn(async move { ctx.password_step(&fresh_ip(), &email, NEW_PASSWORD).await })
    });
    let mut statuses = Vec::new();
    for guess in guesses.collect::<Vec<_>>() {
        let answer = guess.await.expect("the guess ran");
        let code = answer.error_code().to_owned();
        statuses.push((answer.status.as_u16(), code));
    }
    let checked = statuses.iter().filter(|(s, _)| *s == 401).count();
    assert!(checked <= ACCOUNT_LOCK_FAILURES as usize, "{checked} passwords checked: {statuses:?}");
    assert!(
        statuses.iter().all(|(s, c)| matches!(
            (*s, c.as_str()),
            (401, "invalid_credentials") | (429, "too_many_attempts") | (403, "account_locked")
        )),
        "{statuses:?}"
    );
    // Whether the burst also reaches the lock depends on how many guesses pass the delay check before the first
    // failures are recorded: on a loaded machine the requests trickle in, the first failures impose a delay, and the
    // rest wait (429) without being counted. Either way no more than the lock's worth are checked, which is the point;
    // the lock itself is shown by `credential_stuffing_locks_the_account_and_the_owner_recovers`.
}

async fn credential_stuffing_locks_the_account_and_the_owner_recovers(ctx: Ctx) {
    let mut customer = Customer::register(&ctx, "stuffed").await;
    let old_session = customer.sign_in().await;
    let device = customer.device.clone();
    lock_out(&ctx, &customer).await;
    // Even the right password is refused now; the owner's own session goes on, and shows the lock.
    password_step_after_delays(&ctx, &customer).await.assert_error(403, "account_locked");
    let me = customer.me_with(&old_session, Some(&device)).await;
    assert_eq!(me.expect(200)["status"], json!("locked"), "{}", me.text);
    customer.mail("Your account is locked").await;
    let subject = customer.subject();
    let locked = ctx.audit_about("auth.customer.locked", &subject).await;
    assert_eq!(reasons(&locked), [r("success", "")], "{locked:?}");
    let throttled: Vec<(String, String)> = reasons(&ctx.audit_about("auth.customer.sign_in", &subject).await)
        .into_iter()
        .filter(|(outcome, _)| outcome == "denied")
        .collect();
    // Delayed attempts, then (once locked) attempts refused without their password even being checked.
    assert!(
        throttled.iter().all(|(_, r)| r == "throttled_account" || r == "locked")
            && throttled.iter().filter(|(_, r)| r == "throttled_account").count() >= 2
            && throttled.last().is_some_and(|(_, r)| r == "locked"),
        "{throttled:?}"
    );

    // The owner recovers with the emailed link and a second factor. The same answer for an unknown address.
    let unknown =
        ctx.post_from(&fresh_ip(), "/v1/customers/recovery/start", &json!({"email": fresh_email("void")})).await;
    assert_eq!(unknown.status.as_u16(), 202, "{}", unknown.text);
    let started = ctx.post_from(&customer.ip, "/v1/customers/recovery/start", &json!({"email": customer.email})).await;
    assert_eq!(started.status.as_u16(), 202, "{}", started.text);
    let mail = customer.mail("Account recovery started").await;
    assert_eq!(mail.link_path(), "/recover", "{}", mail.text);
    let token = mail.token();
    let finish = |factor: Value, password: &str| {
        let mut body = factor;
        body["token"] = json!(token);
        body["new_password"] = json!(password);
        body
    };
    // A wrong second factor: refused, audited, nothing changed (and one more failure for the account).
    let wrong = finish(json!({"totp_code": customer.totp.wrong_code()}), NEW_PASSWORD);
    ctx.post_from(&customer.ip, "/v1/customers/recovery/finish", &wrong)
        .await
        .assert_error(401, "invalid_second_factor");
    let me = customer.me_with(&old_session, Some(&device)).await;
    assert_eq!(me.expect(200)["status"], json!("locked"), "{}", me.text);
    // The right one, once the delay that failure set has passed (a delayed attempt spends nothing).
    let factor = finish(json!({"backup_code": customer.backup_codes.remove(0)}), NEW_PASSWORD);
    let (recovered, before, after) = loop {
        let before = now_s();
        let answer = ctx.post_from(&customer.ip, "/v1/customers/recovery/finish", &factor).await;
        if answer.status.as_u16() != 429 {
            break (answer, before, now_s());
        }
        tokio::time::sleep(Duration::from_secs(assert_too_many(&answer, "too_many_attempts"))).await;
    };
    let until =
        recovered.expect(200)["withdrawals_locked_until"].as_str().unwrap_or_else(|| panic!("{}", recovered.text));
    assert_hours_after(parse_rfc3339(until), 48, before, after);
    let again = finish(json!({"backup_code": customer.backup_codes[0]}), NEW_PASSWORD);
    ctx.post_from(&customer.ip, "/v1/customers/recovery/finish", &again).await.assert_error(401, "invalid_ticket");

    // Active again with the new password only; the old session stays gone; withdrawals wait 48 hours.
    ctx.password_step(&fresh_ip(), &customer.email, PASSWORD).await.assert_error(401, "invalid_credentials");
    customer.password = NEW_PASSWORD.to_owned();
    customer.sign_in().await;
    assert_eq!(customer.get("/v1/me").await.expect(200)["status"], json!("active"));
    customer.me_with(&old_session, Some(&device)).await.assert_error(401, "unauthorized");
    assert_security_lock(&customer.withdrawal_status().await, 48, before, after, "account recovery");
    let kinds = customer.notifications().await;
    assert!(
        kinds.contains(&"account_locked".to_owned()) && kinds.contains(&"recovery_completed".to_owned()),
        "{kinds:?}"
    );
    let recoveries = reasons(&ctx.audit_about("auth.customer.recovery", &subject).await);
    let delayed = &recoveries[1..recoveries.len().saturating_sub(1)];
    assert!(
        recoveries.len() >= 2
            && recoveries[0] == r("failure", "wrong_totp")
            && recoveries[recoveries.len() - 1] == r("success", "")
            && delayed.iter().all(|d| *d == r("denied", "throttled_account")),
        "{recoveries:?}"
    );
}

async fn support_recovers_a_locked_account(ctx: Ctx) {
    let mut customer = Customer::register(&ctx, "helpdesk").await;
    lock_out(&ctx, &customer).await;
    let path = format!("/v1/support/customers/{}/recover", customer.handle);
    let root = &ctx.api;
    let checks = json!(["passport checked against the KYC record", "video call with the account holder"]);
    let reason = "ticket 4711: locked out by a credential-stuffing attack";
    // A reason and at least two identity checks are required; an unknown customer is 404; a customer session or a
    // staff member without the permission cannot do it.
    root.post(&path, &json!({"reason": " ", "identity_checks": checks})).await.assert_error(400, "invalid_reason");
    root.post(&path, &json!({"reason": reason, "identity_checks": ["passport"]}))
        .await
        .assert_error(400, "identity_checks_required");
    let unknown = format!("/v1/support/customers/{}/recover", "0".repeat(32));
    root.post(&unknown, &json!({"reason": reason, "identity_checks": checks})).await.assert_error(404, "not_found");
    root.post(
        &format!("/v1/support/customers/{}/recover", customer.id),
        &json!({"reason": reason, "identity_checks": checks}),
    )
    .await
    .assert_error(400, "invalid_id");
    let username = format!("clerk{}", NEXT_EMAIL.fetch_add(1, Ordering::Relaxed));
    let (_, code) = root.create_staff(&username).await;
    let mut clerk = Staff::enrol(root, &username, &code, "a clerk's long passphrase", &[]).await;
    clerk.sign_in(root, &[]).await;
    clerk
        .api(root)
        .post(&path, &json!({"reason": reason, "identity_checks": checks}))
        .await
        .assert_error(403, "forbidden");
    password_step_after_delays(&ctx, &customer).await.assert_error(403, "account_locked");

    let before = now_s();
    assert_no_content(&root.post(&path, &json!({"reason": reason, "identity_checks": checks})).await);
    let after = now_s();
    // Active again with the same password (the failures are forgotten); withdrawals wait 48 hours.
    customer.sign_in().await;
    assert_security_lock(&customer.withdrawal_status().await, 48, before, after, "account recovery");
    assert!(customer.notifications().await.contains(&"recovery_completed".to_owned()));

    // The refusal and the recovery both name the customer by internal id, as every entry about a customer does.
    let targets = [json!(customer.subject())];
    let entries: Vec<Value> = ctx
        .audit("auth.customer.support_recovery")
        .await
        .into_iter()
        .filter(|e| targets.contains(&e["target"]))
        .collect();
    let denied: Vec<&Value> = entries.iter().filter(|e| e["outcome"] == json!("denied")).collect();
    assert_eq!(denied.len(), 1, "{entries:?}");
    assert_eq!(
        (&denied[0]["actor"], &denied[0]["details"]["missing_permission"]),
        (&json!(clerk.actor()), &json!("customer_recover")),
        "{entries:?}"
    );
    let done: Vec<&Value> = entries.iter().filter(|e| e["outcome"] == json!("success")).collect();
    assert_eq!(done.len(), 1, "{entries:?}");
    assert_eq!(done[0]["actor"], json!("dev-root"), "{entries:?}");
    assert_eq!(done[0]["details"]["reason"], json!(reason), "{entries:?}");
    let logged_checks = done[0]["details"]["identity_checks"].as_str().unwrap_or_default();
    assert!(
        logged_checks.contains("passport checked against the KYC record")
            && logged_checks.contains("video call with the account holder"),
        "{logged_checks}"
    );
}

async fn the_authentication_routes_are_rate_limited(ctx: Ctx) {
    let ip = fresh_ip();
    let body = json!({"email": "not an email"});
    let mut answers = Vec::new();
    let started = Instant::now();
    for _ in 0..AUTH_RATE_LIMIT_BURST + 10 {
        let request = ctx.request_from(&ip, Method::POST, "/v1/customers/recovery/start").json(&body);
        answers.push(ctx.api.send(request).await);
    }
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).expect("u64 ms");
    // The whole burst passes; beyond it, only what the bucket refilled meanwhile (2 per second), and the rest is
    // refused with a Retry-After.
    let (burst, beyond) = answers.split_at(AUTH_RATE_LIMIT_BURST as usize);
    assert!(burst.iter().all(|a| a.status.as_u16() == 202), "the burst is allowed: {burst:?}");
    let refused: Vec<&Answer> = beyond.iter().filter(|a| a.status.as_u16() != 202).collect();
    let refilled = usize::try_from((elapsed_ms * AUTH_RATE_LIMIT_PER_S).div_ceil(1000)).expect("small");
    assert!(
        !refused.is_empty() && beyond.len() - refused.len() <= refilled + 1,
        "beyond the burst, at most {refilled} (+1) of {} requests in {elapsed_ms} ms pass: {beyond:?}",
        beyond.len()
    );
    for answer in refused {
        assert_too_many(answer, "rate_limited");
    }
    // Another address has its own bucket.
    let other =
        ctx.api.send(ctx.request_from(&fresh_ip(), Method::POST, "/v1/customers/recovery/start").json(&body)).await;
    assert_eq!(other.status.as_u16(), 202, "{}", other.text);
}

// ---------------------------------------------------------------------------------------------------------------
// 11. Sessions and devices: listed, revoked one by one, signed out; an idle session ends.

async fn sessions_and_devices_can_be_listed_and_revoked(ctx: Ctx) {
    let mut customer = Customer::register(&ctx, "juggler").await;
    let first_device = customer.device.clone();
    let second = customer.sign_in().await;
    let first = customer.sign_in().await;
    // A second device, confirmed from the email.
    let ticket = customer.ticket().await;
    let factor = customer.factor();
    let pending = customer.verify(&ticket, &factor, None).await;
    let other_device = pending.expect(202)["device_token"].as_str().expect("a device token").to_owned();
    let mail = customer.mail("Confirm a sign-in from a new device").await;
    assert_no_content(
        &ctx.post_from(&customer.ip, "/v1/customers/devices/confirm", &json!({"token": mail.token()})).await,
    );
    customer.device = other_device.clone();
    let third = customer.sign_in().await;
    customer.device = first_device.clone();
    customer.token = Some(first.clone());

    let hash = |token: &str| hex::encode(rampart_auth::hash_bearer(token));
    let listed = customer.get("/v1/me/sessions").await;
    let sessions = listed.expect(200).as_array().expect("sessions").clone();
    let ids: BTreeSet<String> = sessions.iter().map(|s| s["id"].as_str().expect("an id").to_owned()).collect();
    assert_eq!(ids, BTreeSet::from([hash(&first), hash(&second), hash(&third)]), "{}", listed.text);
    let current: Vec<&Value> = sessions.iter().filter(|s| s["current"] == json!(true)).collect();
    assert_eq!(current.len(), 1, "{}", listed.text);
    assert_eq!(current[0]["id"], json!(hash(&first)), "{}", listed.text);
    let third_view = sessions.iter().find(|s| s["id"] == json!(hash(&third))).expect("listed");
    let other_device_id = third_view["device_id"].as_i64().expect("a device id");
    assert_ne!(Some(other_device_id), current[0]["device_id"].as_i64(), "{}", listed.text);

    // One session revoked: it stops working, the others go on.
    assert_no_content(&customer.delete(&format!("/v1/me/sessions/{}", hash(&second))).await);
    customer.me_with(&second, Some(&first_device)).await.assert_error(401, "unauthorized");
    customer.delete(&format!("/v1/me/sessions/{}", hash(&second))).await.assert_error(404, "not_found");
    customer.me_with(&third, Some(&other_device)).await.expect(200);

    // A device revoked: its sessions end, and it must be confirmed again.
    assert_no_content(&customer.delete(&format!("/v1/me/devices/{other_device_id}")).await);
    customer.me_with(&third, Some(&other_device)).await.assert_error(401, "unauthorized");
    let devices = customer.get("/v1/me/devices").await;
    let list = devices.expect(200).as_array().expect("devices").clone();
    let revoked = list.iter().find(|d| d["id"] == json!(other_device_id)).expect("the revoked device is listed");
    assert_eq!(revoked["revoked"], json!(true), "{}", devices.text);
    let ids: Vec<String> = customer
        .get("/v1/me/sessions")
        .await
        .expect(200)
        .as_array()
        .expect("sessions")
        .iter()
        .map(|s| s["id"].as_str().expect("an id").to_owned())
        .collect();
    assert_eq!(ids, [hash(&first)], "only the current session is left");
    let ticket = customer.ticket().await;
    let factor = customer.factor();
    customer.verify(&ticket, &factor, Some(&other_device)).await.expect(202);

    // Signing out ends the session.
    assert_no_content(&customer.post("/v1/me/sign-out", &json!({})).await);
    customer.me_with(&first, Some(&first_device)).await.assert_error(401, "unauthorized");
    let subject = customer.subject();
    assert_eq!(ctx.audit_about("auth.customer.session_revoked", &subject).await.len(), 1);
    assert_eq!(ctx.audit_about("auth.customer.device_revoked", &subject).await.len(), 1);
    assert_eq!(ctx.audit_about("auth.customer.sign_out", &subject).await.len(), 1);
}

/// On the server whose sessions idle out after [`SESSION_IDLE_S`].
async fn idle_sessions_end(ctx: Ctx) {
    let mut customer = Customer::register(&ctx, "sleeper").await;
    let idle = customer.sign_in().await;
    let device = customer.device.clone();
    customer.me_with(&idle, Some(&device)).await.expect(200);
    tokio::time::sleep(Duration::from_secs(SESSION_IDLE_S + 1)).await;
    customer.me_with(&idle, Some(&device)).await.assert_error(401, "unauthorized");
    // A session in use does not idle out, however long it lasts.
    let busy = customer.sign_in().await;
    for second in 1..=3 {
        tokio::time::sleep(Duration::from_millis(SESSION_IDLE_S * 1000 / 2)).await;
        let answer = customer.me_with(&busy, Some(&device)).await;
        assert_eq!(
            answer.status.as_u16(),
            200,
            "a session used every {} ms must stay alive past the {SESSION_IDLE_S} s idle limit (use {second}): {}",
            SESSION_IDLE_S * 1000 / 2,
            answer.text
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 12. Email change: a step-up, a link to the new address, confirmed; the old address is told; withdrawals lock.

async fn an_email_change_is_confirmed_from_the_new_address(ctx: Ctx) {
    let mut customer = Customer::register(&ctx, "mover").await;
    customer.sign_in().await;
    customer.step_up().await;
    let old = customer.email.clone();
    let new = fresh_email("settled");
    customer.post("/v1/me/email", &json!({"new_email": "nowhere"})).await.assert_error(400, "invalid_email");
    customer.post("/v1/me/email", &json!({"new_email": old})).await.assert_error(409, "email_taken");
    assert_eq!(customer.post("/v1/me/email", &json!({"new_email": new})).await.status.as_u16(), 202);

    let mut seen = HashSet::new();
    let mail = ctx.wait_mail(&new, "Confirm your email address", &mut seen).await;
    assert_eq!(mail.link_path(), "/confirm-email", "{}", mail.text);
    // Until confirmed, nothing changed.
    assert_eq!(customer.get("/v1/me").await.expect(200)["email"], json!(old));
    assert_eq!(customer.withdrawal_status().await["allowed"], json!(true));
    let before = now_s();
    assert_no_content(
        &ctx.post_from(&customer.ip, "/v1/customers/email/confirm", &json!({"token": mail.token()})).await,
    );
    let after = now_s();
    ctx.post_from(&customer.ip, "/v1/customers/email/confirm", &json!({"token": mail.token()}))
        .await
        .assert_error(401, "invalid_ticket");

    let told = customer.mail("Your email address was changed").await;
    assert!(told.text.contains(&format!("{}***@example.com", &new[..1])), "the new address, masked: {}", told.text);
    assert!(!told.text.contains(&new), "never the new address in full: {}", told.text);
    assert_eq!(customer.get("/v1/me").await.expect(200)["email"], json!(new));
    assert_security_lock(&customer.withdrawal_status().await, 24, before, after, "email change");
    assert!(customer.notifications().await.contains(&"email_changed".to_owned()));
    ctx.password_step(&customer.ip, &old, PASSWORD).await.assert_error(401, "invalid_credentials");
    customer.email = new;
    customer.password_step().await.expect(200);
    let subject = customer.subject();
    assert_eq!(ctx.audit_about("auth.customer.email_change_start", &subject).await.len(), 1);
    let changed = ctx.audit_about("auth.customer.email_changed", &subject).await;
    assert_eq!(reasons(&changed), [r("success", "")]);
}

// ---------------------------------------------------------------------------------------------------------------
// The test: every scenario at once, on each backend.

type Scenario = Pin<Box<dyn Future<Output = ()> + Send>>;

fn panic_message(error: tokio::task::JoinError) -> String {
    match error.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "a panic without a message".to_owned()),
        Err(e) => e.to_string(),
    }
}

on_both_backends!(customer_identity);

async fn customer_identity(db: Db) {
    let backend = db.backend();
    let idle_db = if backend == "postgres" {
        Db::postgres("customer_identity::postgres (idle sessions)").await.expect("PostgreSQL is configured")
    } else {
        Db::sqlite()
    };
    let started = Instant::now();
    let (main_config, idle_config) = (main_config(), idle_config());
    let (server, idle_server) =
        tokio::join!(Server::start_with_config(&db, &main_config), Server::start_with_config(&idle_db, &idle_config));
    let ctx = Ctx { api: server.api(), maildir: db.maildir() };
    let idle_ctx = Ctx { api: idle_server.api(), maildir: idle_db.maildir() };
    let scenarios: Vec<(&str, Scenario)> = vec![
        ("1 sign-up, enrolment, verification, sign-in", Box::pin(sign_up_enrol_verify_and_sign_in(ctx.clone()))),
        ("2 weak passwords, unknown emails", Box::pin(weak_passwords_and_unknown_emails(ctx.clone()))),
        ("3 TOTP codes", Box::pin(totp_codes_work_once_and_only_near_now(ctx.clone()))),
        ("4 backup codes", Box::pin(backup_codes_work_once(ctx.clone()))),
        ("5 device binding", Box::pin(sessions_are_bound_to_devices(ctx.clone()))),
        ("6 step-up", Box::pin(sensitive_actions_need_a_recent_second_factor(ctx.clone()))),
        ("7 password change", Box::pin(a_password_change_ends_other_sessions_and_locks_withdrawals(ctx.clone()))),
        ("8 anti-phishing code", Box::pin(the_anti_phishing_code_heads_every_email(ctx.clone()))),
        ("9 API keys", Box::pin(api_keys_sign_requests_that_work_once(ctx.clone()))),
        ("10a password spraying", Box::pin(password_spraying_blocks_the_address(ctx.clone()))),
        (
            "10b credential stuffing, owner recovery",
            Box::pin(credential_stuffing_locks_the_account_and_the_owner_recovers(ctx.clone())),
        ),
        ("10c support recovery", Box::pin(support_recovers_a_locked_account(ctx.clone()))),
        ("10e concurrent guesses", Box::pin(a_burst_of_guesses_gets_no_more_tries_than_the_limit(ctx.clone()))),
        ("10d rate limit", Box::pin(the_authentication_routes_are_rate_limited(ctx.clone()))),
        ("11a sessions and devices", Box::pin(sessions_and_devices_can_be_listed_and_revoked(ctx.clone()))),
        ("11b idle timeout", Box::pin(idle_sessions_end(idle_ctx.clone()))),
        ("12 email change", Box::pin(an_email_change_is_confirmed_from_the_new_address(ctx.clone()))),
    ];
    let count = scenarios.len();
    let tasks: Vec<(&str, tokio::task::JoinHandle<Duration>)> = scenarios
        .into_iter()
        .map(|(name, scenario)| {
            let task = tokio::spawn(async move {
                let started = Instant::now();
                scenario.await;
                started.elapsed()
            });
            (name, task)
        })
        .collect();
    let mut failures = Vec::new();
    for (name, task) in tasks {
        match task.await {
            Ok(elapsed) => eprintln!("[{backend}] ok     {name} ({elapsed:.1?})"),
            Err(e) => {
                eprintln!("[{backend}] FAILED {name}");
                failures.push(format!("--- {name}:\n{}", panic_message(e)));
            }
        }
    }
    // Whatever happened, the audit log is intact.
    server.assert_audit_intact().await;
    idle_server.assert_audit_intact().await;
    eprintln!("[{backend}] {count} scenarios in {:.1?}", started.elapsed());
    assert!(
        failures.is_empty(),
        "{} of {count} scenarios failed on {backend}:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
