//! End-to-end tests of the seal: `rampart init` hands out unseal shares, `rampart serve` starts sealed and refuses
//! everything that needs a secret until enough good shares arrive (by the API or `rampart unseal`), and no secret
//! (share, password, second factor, session, enrolment code) ever reaches the logs. The real binary on a fresh SQLite
//! database and (when `RAMPART_TEST_POSTGRES_URL` is set) a fresh PostgreSQL database.

#[macro_use]
#[allow(dead_code)]
mod common;

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use common::production::{Init, Staff, rampart};
use common::{Api, Db, Server, transfer};
use reqwest::Method;
use serde_json::{Value, json};

/// The fields of a share's text: `rampart-share-v1:<init>:<index>:<threshold>:<data>:<checksum>`.
fn fields(share: &str) -> Vec<String> {
    let fields: Vec<String> = share.split(':').map(str::to_owned).collect();
    assert_eq!((fields.len(), fields[0].as_str()), (6, "rampart-share-v1"), "not a share: {share:?}");
    fields
}

/// The share's secret part: its data.
fn data(share: &str) -> String {
    fields(share).swap_remove(4)
}

/// `hex` with its first digit changed.
fn flip_first_digit(hex: &str) -> String {
    let replacement = if hex.starts_with('0') { "1" } else { "0" };
    format!("{replacement}{}", &hex[1..])
}

/// Runs `rampart unseal --url … --share-file …` against `api`.
async fn unseal_cli(api: &Api, share_file: &Path, env: &[(&str, &str)]) -> common::production::Run {
    let args: Vec<OsString> =
        vec!["unseal".into(), "--url".into(), api.base.clone().into(), "--share-file".into(), share_file.into()];
    rampart(&args, env).await
}

/// Asserts an error answer and that its message says `what`.
#[track_caller]
fn assert_refused(answer: &common::Answer, status: u16, code: &str, what: &str) {
    answer.assert_error(status, code);
    let message = answer.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(what), "expected a message about {what:?}, got {}", answer.text);
}

// ---------------------------------------------------------------------------------------------------------------
// 1. Sealed until three good shares arrive; refused shares change nothing; then open for enrolment.

on_both_backends!(sealed_until_three_good_shares);

async fn sealed_until_three_good_shares(db: Db) {
    let init = db.init().await;
    // Another initialisation, whose shares must not open this one.
    let other_db = Db::sqlite();
    let other: Init = other_db.init().await;
    let (server, _) = Server::start_sealed(&db, &[]).await;
    server.assert_sealed(0).await;

    // Sealed: everything that needs a secret answers 503 `sealed`, with or without a token.
    let token = format!("rst_{}", "0".repeat(64));
    for (method, path) in [
        (Method::GET, "/v1/assets"),
        (Method::GET, "/v1/accounts/1"),
        (Method::POST, "/v1/transfers"),
        (Method::GET, "/v1/staff"),
        (Method::POST, "/v1/staff"),
        (Method::GET, "/v1/audit/entries"),
        (Method::GET, "/v1/audit/verify"),
    ] {
        server.send_raw(server.public(method.clone(), path)).await.assert_error(503, "sealed");
        server.send_raw(server.public(method, path).bearer_auth(&token)).await.assert_error(503, "sealed");
    }
    let sign_in = json!({"username": "admin", "password": "first administrator!", "totp_code": "123456"});
    server.send_raw(server.public(Method::POST, "/v1/staff/sign-in").json(&sign_in)).await.assert_error(503, "sealed");
    let enrol = json!({"username": "admin", "enrolment_code": init.code("admin"), "password": "first administrator!"});
    server.send_raw(server.public(Method::POST, "/v1/staff/enrol").json(&enrol)).await.assert_error(503, "sealed");
    // The process itself is healthy and ready: only its secrets are locked.
    server.get_public("/healthz").await.expect(200);
    server.get_public("/readyz").await.expect(200);
    server.assert_sealed(0).await;

    // Refused shares change nothing: malformed, of another initialisation, repeated.
    assert_refused(&server.submit_share("not a share").await, 400, "invalid_share", "malformed");
    assert_refused(&server.submit_share(&other.share(1)).await, 400, "invalid_share", "another initialisation");
    server.assert_sealed(0).await;
    let first = server.submit_share(&init.share(1)).await;
    assert_eq!(
        first.expect(200),
        &json!({"initialised": true, "sealed": true, "threshold": 3, "shares": 5, "progress": 1})
    );
    assert_refused(&server.submit_share(&init.share(1)).await, 400, "invalid_share", "already submitted");
    assert_refused(&server.submit_share(&other.share(2)).await, 400, "invalid_share", "another initialisation");
    server.assert_sealed(1).await;

    // A custodian submits share 4 with the CLI; the CLI reports a refusal as a failure.
    let cli = unseal_cli(&server, &init.share_files[3], &[]).await;
    assert!(cli.success, "rampart unseal failed:\n{}\n{}", cli.stdout, cli.stderr);
    assert_eq!(cli.stdout.trim(), "share accepted: 2 of 3 received", "{}", cli.stderr);
    server.assert_sealed(2).await;
    let again = unseal_cli(&server, &init.share_files[0], &[]).await;
    assert!(!again.success && again.stderr.contains("already submitted"), "{}\n{}", again.stdout, again.stderr);
    server.assert_sealed(2).await;

    // The third share unseals.
    let last = server.submit_share(&init.share(5)).await;
    let open = json!({"initialised": true, "sealed": false, "threshold": null, "shares": null, "progress": 0});
    assert_eq!(last.expect(200), &open);
    assert_eq!(server.seal_status().await, open);
    assert_refused(&server.submit_share(&init.share(2)).await, 409, "already_unsealed", "already unsealed");
    let late = unseal_cli(&server, &init.share_files[1], &[]).await;
    assert!(!late.success && late.stderr.contains("already unsealed"), "{}\n{}", late.stdout, late.stderr);

    // Open: no token is now 401 rather than 503, and the first administrator enrols with the code init printed.
    server.get_public("/v1/assets").await.assert_error(401, "unauthorized");
    let mut admin =
        Staff::enrol(&server, "admin", init.code("admin"), "first administrator!", &["administrator"]).await;
    admin.sign_in(&server, &["administrator"]).await;
    let staff = admin.api(&server).get("/v1/staff").await.expect(200).clone();
    let summary: Vec<(Value, Value, Value)> = staff
        .as_array()
        .expect("a list")
        .iter()
        .map(|s| (s["username"].clone(), s["roles"].clone(), s["status"].clone()))
        .collect();
    assert_eq!(
        summary,
        [
            (json!("admin"), json!(["administrator"]), json!("active")),
            (json!("admin2"), json!(["administrator"]), json!("enrolling")),
        ]
    );
}

// ---------------------------------------------------------------------------------------------------------------
// 2. Damaged and forged shares: a damaged share fails its checksum; a forged share with a good checksum is only found
//    out when three shares do not reconstruct the root key, which resets the progress.

on_both_backends!(damaged_and_forged_shares_are_refused);

async fn damaged_and_forged_shares_are_refused(db: Db) {
    let init = db.init().await;
    let (server, _) = Server::start_sealed(&db, &[]).await;

    // A flipped hex digit in the data, or in the checksum, fails the checksum.
    let damage = |n: usize, field: usize| {
        let mut parts = fields(&init.share(n));
        parts[field] = flip_first_digit(&parts[field]);
        parts.join(":")
    };
    assert_refused(&server.submit_share(&damage(1, 4)).await, 400, "invalid_share", "checksum");
    assert_refused(&server.submit_share(&damage(1, 5)).await, 400, "invalid_share", "checksum");
    server.assert_sealed(0).await;
    server.submit_share(&init.share(1)).await.expect(200);
    assert_refused(&server.submit_share(&damage(2, 4)).await, 400, "invalid_share", "checksum");
    server.assert_sealed(1).await;

    // Share 2 with other data and a recomputed checksum passes every check on its own.
    let mut forged = fields(&init.share(2));
    forged[4] = flip_first_digit(&forged[4]);
    let body = forged[..5].join(":");
    forged[5] = hex::encode(&rampart_auth::hash_bearer(&body)[..4]);
    server.submit_share(&forged.join(":")).await.expect(200);
    server.assert_sealed(2).await;
    assert_refused(&server.submit_share(&init.share(3)).await, 400, "invalid_share", "do not reconstruct");
    server.assert_sealed(0).await;
    server.send_raw(server.public(Method::GET, "/v1/assets")).await.assert_error(503, "sealed");

    // Any three good shares unseal.
    for n in [2, 4] {
        server.submit_share(&init.share(n)).await.expect(200);
    }
    let last = server.submit_share(&init.share(5)).await;
    assert_eq!(last.expect(200)["sealed"], json!(false), "{}", last.text);
    server.get_public("/v1/assets").await.assert_error(401, "unauthorized");
}

// ---------------------------------------------------------------------------------------------------------------
// 3. Planted secrets: a full flow with every log at `trace`, and none of the secrets it handled appears anywhere in
//    the server's output (or the CLI's).

on_both_backends!(secrets_never_reach_the_logs);

async fn secrets_never_reach_the_logs(db: Db) {
    const WRONG_PASSWORD: &str = "a wrong password, planted";
    let trace = [("RUST_LOG", "trace"), ("RAMPART_LOG", "trace")];
    let init = db.init().await;
    let (server, transcript) = Server::start_sealed(&db, &trace).await;

    // Unseal: share 1 by the CLI, a repeated share refused, shares 2 and 3 by the API, one more refused.
    let cli = unseal_cli(&server, &init.share_files[0], &trace).await;
    assert!(cli.success, "rampart unseal failed:\n{}\n{}", cli.stdout, cli.stderr);
    server.submit_share(&init.share(2)).await.expect(200);
    server.submit_share(&init.share(2)).await.assert_error(400, "invalid_share");
    server.submit_share(&init.share(3)).await.expect(200);
    server.submit_share(&init.share(4)).await.assert_error(409, "already_unsealed");

    // Both administrators enrol and sign in; a sign-in with a wrong password and an enrolment with a wrong code fail.
    let mut admin =
        Staff::enrol(&server, "admin", init.code("admin"), "admin's planted password", &["administrator"]).await;
    let mut admin2 =
        Staff::enrol(&server, "admin2", init.code("admin2"), "admin2's planted password", &["administrator"]).await;
    admin.sign_in(&server, &["administrator"]).await;
    admin2.sign_in(&server, &["administrator"]).await;
    let wrong = admin.sign_in_body(WRONG_PASSWORD, &admin.authenticator.wrong_code());
    server.post_public("/v1/staff/sign-in", &wrong).await.assert_error(401, "invalid_credentials");
    let (admin_api, admin2_api) = (admin.api(&server), admin2.api(&server));

    // A treasurer, created by one administrator and approved by the other, moves money and signs out.
    let (treasurer_id, treasurer_code) = admin_api.create_staff("treasurer").await;
    admin2_api.approve(admin_api.request_role(treasurer_id, "treasury_custodian").await).await;
    let bad_enrol = json!({"username": "treasurer", "enrolment_code": format!("enr_{}", "ab".repeat(32)),
                           "password": "treasurer's planted password"});
    server.post_public("/v1/staff/enrol", &bad_enrol).await.assert_error(401, "invalid_enrolment");
    let mut treasurer =
        Staff::enrol(&server, "treasurer", &treasurer_code, "treasurer's planted password", &["treasury_custodian"])
            .await;
    treasurer.sign_in(&server, &["treasury_custodian"]).await;
    let treasury = treasurer.api(&server);
    treasury.create_account(1, &[]).await;
    treasury.create_account(2, &["debits_must_not_exceed_credits"]).await;
    treasury.transfer(1, 1, 2, 1_000).await.expect(201);
    treasury.transfer(2, 2, 1, 5_000).await.assert_error(422, "exceeds_credits");
    let batch = json!([transfer(3, 1, 2, 10), transfer(4, 2, 1, 10)]);
    treasury.post("/v1/transfers/batch", &batch).await.expect(200);
    assert_eq!(treasury.post("/v1/staff/sign-out", &json!({})).await.status, 204);
    treasury.get("/v1/assets").await.assert_error(401, "unauthorized");

    // Everything the server (and the CLI) wrote, to its last line.
    let status = server.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "the server must stop cleanly on SIGTERM, not {status}");
    let output = without_colours(&format!("{}{}{}", transcript.whole().await, cli.stdout, cli.stderr));
    // The logs were on, at trace, and followed the requests: otherwise this test could not fail.
    for sign in [" TRACE ", "/v1/staff/sign-in", "/v1/staff/enrol", "/v1/sys/unseal", "/v1/transfers"] {
        assert!(output.contains(sign), "no {sign:?} in the server's output: is trace logging on?");
    }
    assert!(output.lines().count() > 100, "too little output for trace logging:\n{output}");

    let mut secrets: Vec<(String, String)> = Vec::new();
    for n in 1..=5 {
        let data = data(&init.share(n));
        let bytes = hex::decode(&data).expect("share data is hex");
        secrets.push((format!("share {n}'s data"), data));
        secrets.push((format!("share {n}'s data as bytes"), debug_prefix(&bytes)));
    }
    for staff in [&admin, &admin2, &treasurer] {
        let who = &staff.username;
        secrets.push((format!("{who}'s password"), staff.password.clone()));
        secrets.push((format!("{who}'s TOTP secret"), staff.totp_secret.clone()));
        let bytes = totp_rs::Secret::Encoded(staff.totp_secret.clone()).to_bytes().expect("base32");
        secrets.push((format!("{who}'s TOTP secret in hex"), hex::encode(&bytes)));
        secrets.push((format!("{who}'s TOTP secret as bytes"), debug_prefix(&bytes)));
        let token = staff.token.as_deref().expect("signed in");
        secrets.push((format!("{who}'s session token"), token.strip_prefix("rst_").expect("rst_").to_owned()));
    }
    for (who, code) in
        [("admin", init.code("admin")), ("admin2", init.code("admin2")), ("treasurer", treasurer_code.as_str())]
    {
        secrets.push((format!("{who}'s enrolment code"), code.strip_prefix("enr_").expect("enr_").to_owned()));
    }
    secrets.push(("the wrong password".into(), WRONG_PASSWORD.into()));
    let haystack = output.to_lowercase();
    let leaked: Vec<&str> = secrets
        .iter()
        .filter(|(_, secret)| haystack.contains(&secret.to_lowercase()))
        .map(|(what, _)| what.as_str())
        .collect();
    assert!(leaked.is_empty(), "secrets in the logs: {leaked:?}");
}

/// The start of `bytes` as `Debug` prints a byte slice (`12, 200, 3, …`), as a careless log line would show them.
fn debug_prefix(bytes: &[u8]) -> String {
    let debug = format!("{:?}", &bytes[..8]);
    debug.trim_start_matches('[').trim_end_matches(']').to_owned()
}

/// `text` without its ANSI colour sequences (`ESC [ … m`), which the log formatter puts around levels and fields.
fn without_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
