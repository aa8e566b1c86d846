//! End-to-end tests of the staff: accounts created by an administrator, enrolment with a password and a TOTP second
//! factor, sign-in and its audited refusals, four-eyes role changes and the permission matrix. The real binary on a
//! fresh SQLite database and (when `RAMPART_TEST_POSTGRES_URL` is set) a fresh PostgreSQL database, over HTTP only;
//! TOTP codes are computed here as an authenticator app would.

#[macro_use]
#[allow(dead_code)]
mod common;

use std::collections::BTreeSet;

use common::production::{Authenticator, Staff};
use common::{Api, Db, Server, transfer};
use reqwest::{Method, RequestBuilder};
use serde_json::{Value, json};

const ALICE_PASSWORD: &str = "alice's long passphrase";
const BOB_PASSWORD: &str = "bob's even longer passphrase";

/// `(target, actor, outcome, reason)` of audit entries, for comparing them with what a test expects.
fn summary(entries: &[Value]) -> Vec<(String, String, String, Option<String>)> {
    entries
        .iter()
        .map(|e| {
            let field = |name: &str| e[name].as_str().unwrap_or_else(|| panic!("no {name} in {e}")).to_owned();
            (field("target"), field("actor"), field("outcome"), e["details"]["reason"].as_str().map(str::to_owned))
        })
        .collect()
}

/// The summary of an expected entry.
fn entry(target: &str, actor: &str, outcome: &str, reason: Option<&str>) -> (String, String, String, Option<String>) {
    (target.to_owned(), actor.to_owned(), outcome.to_owned(), reason.map(str::to_owned))
}

/// `(actor, action, missing_permission)` of the denied entries among `entries`.
fn denials(entries: &[Value]) -> Vec<(String, String, String)> {
    entries
        .iter()
        .filter(|e| e["outcome"] == json!("denied"))
        .map(|e| {
            let field = |v: &Value| v.as_str().unwrap_or_else(|| panic!("a denied entry without it: {e}")).to_owned();
            (field(&e["actor"]), field(&e["action"]), field(&e["details"]["missing_permission"]))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------------
// 1. The life of a staff account: created with a one-time code, enrolled with a password and a second factor, signed
//    in, refused (wrong password, wrong code, replayed code), signed out; every step and refusal audited.

on_both_backends!(staff_enrol_sign_in_and_audited_refusals);

async fn staff_enrol_sign_in_and_audited_refusals(db: Db) {
    let server = Server::start(&db).await;
    let root: &Api = &server;

    // The root creates two staff members, who have no roles yet; each gets a one-time enrolment code.
    let (alice_id, alice_code) = root.create_staff("alice").await;
    let (bob_id, bob_code) = root.create_staff("bob").await;
    assert_ne!(alice_id, bob_id);
    assert_ne!(alice_code, bob_code);
    root.post("/v1/staff", &json!({"username": "alice"})).await.assert_error(409, "username_taken");
    root.post("/v1/staff", &json!({"username": "no spaces"})).await.assert_error(400, "invalid_username");

    // Nobody signs in before enrolling.
    let early = json!({"username": "alice", "password": ALICE_PASSWORD, "totp_code": "123456"});
    root.post_public("/v1/staff/sign-in", &early).await.assert_error(401, "invalid_credentials");

    // Enrolment takes the account's own code and a password of at least 12 characters; confirming needs the
    // second factor set up first.
    let enrol = |code: &str, password: &str| json!({"username": "alice", "enrolment_code": code, "password": password});
    let confirm = |totp_code: &str| json!({"username": "alice", "enrolment_code": alice_code, "totp_code": totp_code});
    root.post_public("/v1/staff/enrol", &enrol(&bob_code, ALICE_PASSWORD)).await.assert_error(401, "invalid_enrolment");
    root.post_public("/v1/staff/enrol", &enrol(&alice_code, "too short")).await.assert_error(400, "weak_password");
    root.post_public("/v1/staff/enrol/confirm", &confirm("123456")).await.assert_error(401, "invalid_credentials");

    // Enrolment shows the TOTP secret once, as base32 and as an otpauth URI for a QR code.
    let enrolled = root.post_public("/v1/staff/enrol", &enrol(&alice_code, ALICE_PASSWORD)).await;
    let secret = enrolled.str("totp_secret").to_owned();
    let from_uri = totp_rs::TOTP::from_url(enrolled.str("otpauth_uri")).expect("a valid otpauth URI");
    assert_eq!(from_uri.get_secret_base32(), secret, "{}", enrolled.text);
    assert_eq!(from_uri.issuer.as_deref(), Some("Rampart"), "{}", enrolled.text);
    let mut app = Authenticator::new(&secret);
    root.post_public("/v1/staff/enrol/confirm", &confirm(&app.wrong_code()))
        .await
        .assert_error(401, "invalid_credentials");
    let confirmed = root.post_public("/v1/staff/enrol/confirm", &confirm(&app.next_code().await)).await;
    assert_eq!(
        confirmed.expect(200),
        &json!({"id": alice_id, "username": "alice", "roles": [], "status": "active"}),
        "{}",
        confirmed.text
    );
    // The enrolment code works once.
    root.post_public("/v1/staff/enrol", &enrol(&alice_code, ALICE_PASSWORD))
        .await
        .assert_error(401, "invalid_enrolment");
    let mut alice = Staff {
        id: alice_id,
        username: "alice".into(),
        password: ALICE_PASSWORD.into(),
        totp_secret: secret,
        authenticator: app,
        token: None,
    };
    let mut bob = Staff::enrol(root, "bob", &bob_code, BOB_PASSWORD, &[]).await;
    assert_eq!(bob.id, bob_id);

    // Sign-in refusals, all alike to the caller: a wrong password (even with a good, unused code), an unknown
    // user, a wrong code.
    let sign_in = |body: Value| async move { root.post_public("/v1/staff/sign-in", &body).await };
    let unused = alice.authenticator.code_at_step(alice.authenticator.last_step().expect("confirmed") + 1);
    sign_in(alice.sign_in_body("alice's wrong passphrase", &unused)).await.assert_error(401, "invalid_credentials");
    let nobody = json!({"username": "nobody", "password": ALICE_PASSWORD, "totp_code": unused});
    sign_in(nobody).await.assert_error(401, "invalid_credentials");
    sign_in(alice.sign_in_body(ALICE_PASSWORD, &alice.authenticator.wrong_code()))
        .await
        .assert_error(401, "invalid_credentials");
    // Three failures on alice's name (before enrolment, a wrong password, a wrong code): the next attempt waits, its
    // password and code unchecked, and the answer says for how long (brute-force protection, kept in the database).
    let waited = sign_in(alice.sign_in_body(ALICE_PASSWORD, &unused)).await;
    waited.assert_error(429, "too_many_attempts");
    let retry_after: u64 = waited.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after), "the first delay is about a second: {retry_after}");
    tokio::time::sleep(std::time::Duration::from_secs(retry_after)).await;
    // The good password and an unused code sign in (the wrong password did not spend that code's step).
    let alice_token = alice.sign_in(root, &[]).await;
    let used = alice.authenticator.last_step().expect("signed in");
    assert_eq!(alice.authenticator.code_at_step(used), unused, "the sign-in used the code of the refused attempt");
    // A code is accepted once: replaying it, or an older one (the step spent by the enrolment), is refused.
    sign_in(alice.sign_in_body(ALICE_PASSWORD, &unused)).await.assert_error(401, "invalid_credentials");
    let older = alice.authenticator.code_at_step(used - 1);
    sign_in(alice.sign_in_body(ALICE_PASSWORD, &older)).await.assert_error(401, "invalid_credentials");
    let bob_token = bob.sign_in(root, &[]).await;
    assert_ne!(alice_token, bob_token);

    // A session without roles is authenticated but permitted nothing.
    let alice_api = alice.api(root);
    let bob_api = bob.api(root);
    alice_api.get("/v1/assets").await.assert_error(403, "forbidden");
    alice_api.get("/v1/staff").await.assert_error(403, "forbidden");
    bob_api.get("/v1/assets").await.assert_error(403, "forbidden");
    let staff = root.get("/v1/staff").await.expect(200).clone();
    let listed: BTreeSet<String> = staff.as_array().expect("a list").iter().map(Value::to_string).collect();
    let expected: BTreeSet<String> = [
        json!({"id": alice.id, "username": "alice", "roles": [], "status": "active"}),
        json!({"id": bob.id, "username": "bob", "roles": [], "status": "active"}),
    ]
    .iter()
    .map(Value::to_string)
    .collect();
    assert!(listed.is_superset(&expected), "{staff}");
    for admin in ["admin", "admin2"] {
        let view = staff.as_array().unwrap().iter().find(|s| s["username"] == json!(admin));
        let view = view.unwrap_or_else(|| panic!("no {admin} in {staff}"));
        assert_eq!((&view["roles"], &view["status"]), (&json!(["administrator"]), &json!("enrolling")), "{view}");
    }

    // Signing out ends that session only.
    assert_eq!(alice_api.post("/v1/staff/sign-out", &json!({})).await.status, 204);
    alice_api.get("/v1/assets").await.assert_error(401, "unauthorized");
    bob_api.get("/v1/assets").await.assert_error(403, "forbidden");
    root.get_public("/v1/assets").await.assert_error(401, "unauthorized");

    // The development root is one actor: it cannot approve (or reject) its own role request.
    let request = root.request_role(bob.id, "support").await;
    let approve = format!("/v1/staff/role-requests/{request}/approve");
    let reject = format!("/v1/staff/role-requests/{request}/reject");
    root.post(&approve, &json!({})).await.assert_error(403, "four_eyes");
    root.post(&reject, &json!({})).await.assert_error(403, "four_eyes");
    let pending = root.get("/v1/staff/role-requests").await.expect(200).clone();
    assert_eq!(
        pending,
        json!([{"id": request, "staff_id": bob.id, "role": "support", "grant": true, "requested_by": "dev-root",
                "status": "pending", "decided_by": null}])
    );

    // The audit log tells all of it, in order.
    let alice_actor = alice.actor();
    let bob_actor = bob.actor();
    let sign_ins = root.audit_entries("action=auth.staff.sign_in").await;
    // An unknown name is logged only as a keyed hash: people type passwords into username fields.
    let unknown = sign_ins[2]["target"].as_str().unwrap_or_default().to_owned();
    assert!(unknown.starts_with("unknown_staff:") && !unknown.contains("nobody"), "{unknown}");
    assert_eq!(
        summary(&sign_ins),
        [
            entry("staff:alice", "anonymous", "failure", Some("credentials")),
            entry("staff:alice", "anonymous", "failure", Some("credentials")),
            entry(&unknown, "anonymous", "failure", Some("credentials")),
            entry("staff:alice", "anonymous", "failure", Some("second_factor")),
            entry("staff:alice", "anonymous", "denied", Some("throttled_account")),
            entry("staff:alice", &alice_actor, "success", None),
            entry("staff:alice", "anonymous", "failure", Some("replayed_code")),
            entry("staff:alice", "anonymous", "failure", Some("replayed_code")),
            entry("staff:bob", &bob_actor, "success", None),
        ],
        "{sign_ins:#?}"
    );
    let enrolments = root.audit_entries("action=auth.staff.enrol").await;
    assert_eq!(
        summary(&enrolments),
        [
            entry("staff:alice", "anonymous", "failure", None),
            entry(&alice_actor, &alice_actor, "success", None),
            entry("staff:alice", "anonymous", "failure", None),
            entry(&bob_actor, &bob_actor, "success", None),
        ],
        "{enrolments:#?}"
    );
    let confirmations = root.audit_entries("action=auth.staff.enrol_confirm").await;
    assert_eq!(
        summary(&confirmations),
        [
            entry(&alice_actor, &alice_actor, "failure", None),
            entry(&alice_actor, &alice_actor, "failure", None),
            entry(&alice_actor, &alice_actor, "success", None),
            entry(&bob_actor, &bob_actor, "success", None),
        ],
        "{confirmations:#?}"
    );
    let sign_outs = root.audit_entries("action=auth.staff.sign_out").await;
    assert_eq!(summary(&sign_outs), [entry(&alice_actor, &alice_actor, "success", None)], "{sign_outs:#?}");
    let assets = root.audit_entries("action=ledger.assets.read").await;
    let denied = |actor: &str, permission: &str| (actor.to_owned(), "ledger.assets.read".to_owned(), permission.into());
    assert_eq!(
        denials(&assets),
        [denied(&alice_actor, "ledger_read"), denied(&bob_actor, "ledger_read"), denied(&bob_actor, "ledger_read")],
        "{assets:#?}"
    );
    for action in ["staff.role.approve", "staff.role.reject"] {
        let decisions = root.audit_entries(&format!("action={action}")).await;
        let target = format!("role_request:{request}");
        assert_eq!(summary(&decisions), [entry(&target, "dev-root", "denied", Some("own_request"))], "{decisions:#?}");
    }
    root.assert_audit_intact().await;
}

// ---------------------------------------------------------------------------------------------------------------
// 2. Four eyes: a role change needs a second administrator; the requester can neither approve nor reject it.

on_both_backends!(role_changes_need_four_eyes);

async fn role_changes_need_four_eyes(db: Db) {
    let init = db.init().await;
    let (server, _) = Server::start_sealed(&db, &[]).await;
    server.unseal(&init).await;
    // The first administrators, whom `rampart init` created.
    let mut a = Staff::enrol(&server, "admin", init.code("admin"), "first administrator!", &["administrator"]).await;
    let mut b = Staff::enrol(&server, "admin2", init.code("admin2"), "second administrator", &["administrator"]).await;
    a.sign_in(&server, &["administrator"]).await;
    b.sign_in(&server, &["administrator"]).await;
    let (a_api, b_api) = (a.api(&server), b.api(&server));

    let (carol_id, carol_code) = a_api.create_staff("carol").await;
    let granted = a_api.request_role(carol_id, "auditor").await;
    let path = |request: i64, decision: &str| format!("/v1/staff/role-requests/{request}/{decision}");

    // The requester cannot decide its own request, either way; it stays pending.
    a_api.post(&path(granted, "approve"), &json!({})).await.assert_error(403, "four_eyes");
    a_api.post(&path(granted, "reject"), &json!({})).await.assert_error(403, "four_eyes");
    let pending = b_api.get("/v1/staff/role-requests").await.expect(200).clone();
    let view = json!({"id": granted, "staff_id": carol_id, "role": "auditor", "grant": true,
                      "requested_by": a.actor(), "status": "pending", "decided_by": null});
    assert_eq!(pending, json!([view]));

    // The other administrator approves: the role is granted, and the request is decided for good.
    let decided = b_api.approve(granted).await;
    let mut approved = view.clone();
    approved["status"] = json!("approved");
    approved["decided_by"] = json!(b.actor());
    assert_eq!(decided, approved);
    b_api.post(&path(granted, "approve"), &json!({})).await.assert_error(409, "already_decided");
    b_api.post(&path(granted, "reject"), &json!({})).await.assert_error(409, "already_decided");
    let roles_of_carol = |staff: Value| {
        let carol = staff.as_array().expect("a list").iter().find(|s| s["id"] == json!(carol_id)).cloned();
        carol.map(|c| c["roles"].clone())
    };
    assert_eq!(roles_of_carol(a_api.get("/v1/staff").await.expect(200).clone()), Some(json!(["auditor"])));

    // A rejected request changes nothing.
    let refused = a_api.request_role(carol_id, "treasury_custodian").await;
    let rejected = b_api.post(&path(refused, "reject"), &json!({})).await;
    assert_eq!(
        (&rejected.expect(200)["status"], &rejected.body["decided_by"]),
        (&json!("rejected"), &json!(b.actor())),
        "{}",
        rejected.text
    );
    assert_eq!(roles_of_carol(b_api.get("/v1/staff").await.expect(200).clone()), Some(json!(["auditor"])));
    // Requests name an existing staff member and a known role.
    let grant = |role: &str| json!({"role": role, "grant": true});
    a_api.post("/v1/staff/999999/role-requests", &grant("support")).await.assert_error(404, "not_found");
    a_api.post(&format!("/v1/staff/{carol_id}/role-requests"), &grant("root")).await.assert_error(400, "invalid_role");

    // Carol, now an auditor, signs in with that role; she may read the log but not decide role changes.
    let mut carol = Staff::enrol(&server, "carol", &carol_code, "carol the auditor", &["auditor"]).await;
    carol.sign_in(&server, &["auditor"]).await;
    let carol_api = carol.api(&server);
    let third = a_api.request_role(carol_id, "support").await;
    carol_api.post(&path(third, "approve"), &json!({})).await.assert_error(403, "forbidden");
    let pending = carol_api.get("/v1/staff/role-requests").await.expect(200).clone();
    assert_eq!(pending.as_array().map(|p| p.iter().map(|r| r["id"].clone()).collect()), Some(vec![json!(third)]));

    // The log shows who asked, who decided and who was refused.
    let target = |request: i64| format!("role_request:{request}");
    let approvals = carol_api.audit_entries("action=staff.role.approve").await;
    assert_eq!(
        summary(&approvals),
        [
            entry(&target(granted), &a.actor(), "denied", Some("own_request")),
            entry(&target(granted), &b.actor(), "success", None),
            entry(&target(third), &carol.actor(), "denied", None),
        ],
        "{approvals:#?}"
    );
    assert_eq!(approvals[2]["details"]["missing_permission"], json!("staff_approve"), "{approvals:#?}");
    let rejections = carol_api.audit_entries("action=staff.role.reject").await;
    assert_eq!(
        summary(&rejections),
        [
            entry(&target(granted), &a.actor(), "denied", Some("own_request")),
            entry(&target(refused), &b.actor(), "success", None),
        ],
        "{rejections:#?}"
    );
    let requests = carol_api.audit_entries("action=staff.role.request").await;
    let asked: Vec<(Value, Value, Value, Value)> = requests
        .iter()
        .map(|e| (e["actor"].clone(), e["target"].clone(), e["details"]["role"].clone(), e["details"]["grant"].clone()))
        .collect();
    let carol_target = json!(format!("staff:{carol_id}"));
    let asked_for = |role: &str| (json!(a.actor()), carol_target.clone(), json!(role), json!("true"));
    assert_eq!(asked, [asked_for("auditor"), asked_for("treasury_custodian"), asked_for("support")], "{requests:#?}");
    carol_api.assert_audit_intact().await;

    // A revocation goes through the same four eyes, and takes effect on the sessions already open.
    b_api.post(&path(999_999, "approve"), &json!({})).await.assert_error(404, "not_found");
    let revoke_path = format!("/v1/staff/{carol_id}/role-requests");
    let revoke = a_api.post(&revoke_path, &json!({"role": "auditor", "grant": false})).await;
    let revocation = revoke.expect(201)["id"].as_i64().unwrap_or_else(|| panic!("no id: {}", revoke.text));
    a_api.post(&path(revocation, "approve"), &json!({})).await.assert_error(403, "four_eyes");
    carol_api.get("/v1/audit/entries").await.expect(200);
    b_api.approve(revocation).await;
    carol_api.get("/v1/audit/entries").await.assert_error(403, "forbidden");
    assert_eq!(roles_of_carol(b_api.get("/v1/staff").await.expect(200).clone()), Some(json!([])));
}

// ---------------------------------------------------------------------------------------------------------------
// 3. The permission matrix: one staff member per role calls every protected endpoint; what the role permits works,
//    everything else is refused 403 and audited as denied, and nobody without a session gets anywhere.

/// The matrix as the issue states it (independent of `Role::permits`, which it checks): each role's permissions.
const MATRIX: [(&str, &[&str]); 8] = [
    ("support", &["ledger_read", "customer_recover"]),
    (
        "risk_analyst",
        &["ledger_read", "risk_read", "risk_review", "risk_rules", "withdrawal_read", "withdrawal_approve"],
    ),
    (
        "compliance_l1",
        &["ledger_read", "risk_read", "compliance_read", "compliance_review", "personal_data", "withdrawal_read"],
    ),
    (
        "compliance_l2",
        &[
            "ledger_read",
            "risk_read",
            "compliance_read",
            "compliance_review",
            "compliance_lists",
            "personal_data",
            "withdrawal_read",
        ],
    ),
    (
        "compliance_l3",
        &[
            "ledger_read",
            "risk_read",
            "compliance_read",
            "compliance_review",
            "compliance_lists",
            "personal_data",
            "withdrawal_read",
        ],
    ),
    (
        "treasury_custodian",
        &[
            "ledger_read",
            "ledger_write",
            "custody_read",
            "custody_ceremony",
            "withdrawal_read",
            "withdrawal_approve",
            "reserves_publish",
            "reserves_read",
        ],
    ),
    (
        "administrator",
        &["staff_read", "staff_manage", "staff_approve", "keys_manage", "custody_read", "withdrawal_policy"],
    ),
    (
        "auditor",
        &[
            "ledger_read",
            "staff_read",
            "audit_read",
            "audit_verify",
            "custody_read",
            "risk_read",
            "compliance_read",
            "withdrawal_read",
            "reserves_read",
        ],
    ),
];

/// A protected endpoint, called with a valid request that succeeds when permitted.
struct Endpoint {
    method: Method,
    path: String,
    body: Option<Value>,
    /// The permission it needs.
    permission: &'static str,
    /// The action its audit entries name.
    action: &'static str,
    /// The status of a permitted call.
    ok: u16,
}

impl Endpoint {
    fn new(method: Method, path: impl Into<String>, permission: &'static str, action: &'static str) -> Endpoint {
        let ok = if method == Method::POST { 201 } else { 200 };
        Endpoint { method, path: path.into(), body: None, permission, action, ok }
    }

    fn body(mut self, body: Value) -> Endpoint {
        self.body = Some(body);
        self
    }

    fn ok(mut self, status: u16) -> Endpoint {
        self.ok = status;
        self
    }

    fn with(&self, request: RequestBuilder) -> RequestBuilder {
        match &self.body {
            Some(body) => request.json(body),
            None => request,
        }
    }

    fn name(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

on_both_backends!(every_role_may_do_exactly_what_the_matrix_says);

async fn every_role_may_do_exactly_what_the_matrix_says(db: Db) {
    let init = db.init().await;
    let (server, _) = Server::start_sealed(&db, &[]).await;
    server.unseal(&init).await;
    let mut admin =
        Staff::enrol(&server, "admin", init.code("admin"), "first administrator!", &["administrator"]).await;
    let mut admin2 =
        Staff::enrol(&server, "admin2", init.code("admin2"), "second administrator", &["administrator"]).await;
    admin.sign_in(&server, &["administrator"]).await;
    admin2.sign_in(&server, &["administrator"]).await;
    let (admin, admin2) = (admin.api(&server), admin2.api(&server));

    // One staff member per role, holding that role alone: one administrator asks, the other approves.
    let mut members = Vec::new();
    for (role, _) in MATRIX {
        let username = format!("m-{role}");
        let (id, code) = admin.create_staff(&username).await;
        admin2.approve(admin.request_role(id, role).await).await;
        let mut member = Staff::enrol(&server, &username, &code, &format!("{role} passphrase"), &[role]).await;
        member.sign_in(&server, &[role]).await;
        members.push((role, member));
    }
    let member = |role: &str| members.iter().find(|(r, _)| *r == role).map(|(_, m)| m.api(&server)).unwrap();

    // What the endpoints act on: a ledger with a transfer, and role requests about someone outside the matrix, asked
    // by the first administrator so that the matrix's administrator may decide them.
    let custodian = member("treasury_custodian");
    custodian.create_account(1, &[]).await;
    custodian.create_account(2, &[]).await;
    custodian.transfer(1, 1, 2, 100).await.expect(201);
    let (bystander, _) = admin.create_staff("bystander").await;
    let to_approve = admin.request_role(bystander, "support").await;
    let to_reject = admin.request_role(bystander, "auditor").await;
    // A customer for support to recover.
    let signed_up = admin
        .post_public(
            "/v1/customers/sign-up",
            &json!({"email": "matrix@example.com", "password": "Quartz-Meadow-Lantern-51"}),
        )
        .await;
    let customer = signed_up.expect(201)["customer"].as_str().unwrap().to_owned();

    use Method as M;
    let account = |id: &str| json!({"id": id, "asset": "BTC", "flags": []});
    let endpoints = [
        Endpoint::new(M::GET, "/v1/assets", "ledger_read", "ledger.assets.read"),
        Endpoint::new(M::GET, "/v1/accounts/1", "ledger_read", "ledger.accounts.read"),
        Endpoint::new(M::GET, "/v1/accounts/1/transfers", "ledger_read", "ledger.transfers.read"),
        Endpoint::new(M::GET, "/v1/transfers/1", "ledger_read", "ledger.transfers.read"),
        Endpoint::new(M::GET, "/v1/ledger/check", "ledger_read", "ledger.check"),
        Endpoint::new(M::POST, "/v1/accounts", "ledger_write", "ledger.accounts.create").body(account("100")),
        Endpoint::new(M::POST, "/v1/accounts/batch", "ledger_write", "ledger.accounts.create")
            .body(json!([account("101")]))
            .ok(200),
        Endpoint::new(M::POST, "/v1/transfers", "ledger_write", "ledger.transfers.create").body(transfer(100, 1, 2, 5)),
        Endpoint::new(M::POST, "/v1/transfers/batch", "ledger_write", "ledger.transfers.create")
            .body(json!([transfer(101, 1, 2, 5)]))
            .ok(200),
        Endpoint::new(M::GET, "/v1/staff", "staff_read", "staff.list"),
        Endpoint::new(M::GET, "/v1/staff/role-requests", "staff_read", "staff.role.list"),
        Endpoint::new(M::POST, "/v1/staff", "staff_manage", "staff.create").body(json!({"username": "made-by-matrix"})),
        Endpoint::new(M::POST, format!("/v1/staff/{bystander}/role-requests"), "staff_manage", "staff.role.request")
            .body(json!({"role": "compliance_l1", "grant": true})),
        Endpoint::new(
            M::POST,
            format!("/v1/staff/role-requests/{to_approve}/approve"),
            "staff_approve",
            "staff.role.approve",
        )
        .ok(200),
        Endpoint::new(
            M::POST,
            format!("/v1/staff/role-requests/{to_reject}/reject"),
            "staff_approve",
            "staff.role.reject",
        )
        .ok(200),
        Endpoint::new(M::POST, "/v1/sys/keys/rotate", "keys_manage", "system.keys.rotate").ok(200),
        Endpoint::new(M::GET, "/v1/audit/entries", "audit_read", "audit.read"),
        Endpoint::new(M::GET, "/v1/audit/verify", "audit_verify", "audit.verify"),
        Endpoint::new(
            M::POST,
            format!("/v1/support/customers/{customer}/recover"),
            "customer_recover",
            "auth.customer.support_recovery",
        )
        .body(json!({"reason": "ticket 4711: locked out", "identity_checks": ["passport seen", "video call"]}))
        .ok(204),
        Endpoint::new(M::GET, "/v1/custody/status", "custody_read", "custody.status"),
        Endpoint::new(M::GET, "/v1/custody/custodians", "custody_read", "custody.custodian.list"),
        Endpoint::new(M::GET, "/v1/risk/cases", "risk_read", "risk.cases.list"),
        Endpoint::new(M::GET, "/v1/risk/rules", "risk_read", "risk.rules.read"),
        // Permitted, the call reaches the queue and finds no such case.
        Endpoint::new(M::POST, "/v1/risk/cases/999999/resolve", "risk_review", "risk.cases.resolve")
            .body(json!({"resolution": "release", "note": "checked"}))
            .ok(404),
        Endpoint::new(M::GET, "/v1/compliance/cases", "compliance_read", "compliance.cases.list"),
        Endpoint::new(M::POST, "/v1/compliance/cases/999999/resolve", "compliance_review", "compliance.cases.resolve")
            .body(json!({"resolution": "release", "note": "checked"}))
            .ok(404),
        Endpoint::new(M::DELETE, "/v1/compliance/addresses/999999", "compliance_lists", "compliance.addresses.remove")
            .ok(404),
        Endpoint::new(M::GET, "/v1/compliance/kyc/documents/999999", "personal_data", "compliance.kyc.document")
            .ok(404),
    ];

    // Every role calls every endpoint with its own session.
    let mut expected = Vec::new();
    for (role, staff) in &members {
        let permissions = MATRIX.iter().find(|(r, _)| r == role).map(|(_, p)| *p).unwrap();
        let api = staff.api(&server);
        for endpoint in &endpoints {
            let answer = api.send(endpoint.with(api.request(endpoint.method.clone(), &endpoint.path))).await;
            if permissions.contains(&endpoint.permission) {
                assert_eq!(answer.status, endpoint.ok, "{role} may {}: {}", endpoint.name(), answer.text);
            } else {
                assert_eq!(
                    (answer.status.as_u16(), answer.error_code()),
                    (403, "forbidden"),
                    "{role} may not {}: {}",
                    endpoint.name(),
                    answer.text
                );
                expected.push((staff.actor(), endpoint.action.to_owned(), endpoint.permission.to_owned()));
            }
        }
    }
    // Of 28 endpoints: support is refused 22, the risk analyst 20, compliance level 1 18 and levels 2 and 3 17 each,
    // the custodian 17, the administrator 19, the auditor 14.
    assert_eq!(expected.len(), 22 + 20 + 18 + 2 * 17 + 17 + 19 + 14, "the matrix differs from the issue's");
    // The matrix above is the one the server enforces.
    for (role, permissions) in MATRIX {
        let role = rampart_audit::Role::parse(role).expect("a role");
        for permission in rampart_audit::Permission::ALL {
            assert_eq!(role.permits(permission), permissions.contains(&permission.as_str()), "{role:?} {permission:?}");
        }
    }

    // Without a session, or with a forged one, every endpoint answers 401 (and nothing is audited).
    let forged = server.with_token(&format!("rst_{}", "0".repeat(64)));
    for endpoint in &endpoints {
        let anonymous = server.send(endpoint.with(server.public(endpoint.method.clone(), &endpoint.path))).await;
        anonymous.assert_error(401, "unauthorized");
        let answer = forged.send(endpoint.with(forged.request(endpoint.method.clone(), &endpoint.path))).await;
        answer.assert_error(401, "unauthorized");
    }

    // The auditor finds exactly one denied entry per refused call, naming the caller and the missing permission.
    let auditor = member("auditor");
    let actions: BTreeSet<&str> = endpoints.iter().map(|e| e.action).collect();
    let mut found = Vec::new();
    for action in actions {
        let entries = auditor.audit_entries(&format!("action={action}")).await;
        assert!(entries.iter().all(|e| e["action"] == json!(action)), "the filter by action: {entries:#?}");
        found.extend(denials(&entries));
    }
    found.sort();
    expected.sort();
    assert_eq!(found, expected);
    let verified = auditor.assert_audit_intact().await;
    assert!(verified["entries"].as_u64().unwrap() > expected.len() as u64, "{verified}");
}

on_both_backends!(separation_of_duties_and_single_use_enrolment);

/// Nobody ends up both moving money and managing staff, nobody decides a change of their own roles, and an
/// enrolment code sets credentials once (an eavesdropper cannot replace what the owner set).
async fn separation_of_duties_and_single_use_enrolment(db: Db) {
    let init = db.init().await;
    let (server, _) = Server::start_sealed(&db, &[]).await;
    server.unseal(&init).await;
    let mut a = Staff::enrol(&server, "admin", init.code("admin"), "first administrator!", &["administrator"]).await;
    let mut b = Staff::enrol(&server, "admin2", init.code("admin2"), "second administrator", &["administrator"]).await;
    a.sign_in(&server, &["administrator"]).await;
    b.sign_in(&server, &["administrator"]).await;
    let (a_api, b_api) = (a.api(&server), b.api(&server));
    let path = |request: i64| format!("/v1/staff/role-requests/{request}/approve");

    // Single-use enrolment: a second enrol call with the same code is refused.
    let (dave_id, dave_code) = a_api.create_staff("dave").await;
    let enrol = json!({"username": "dave", "enrolment_code": dave_code, "password": "daves own password"});
    let first = server.post_public("/v1/staff/enrol", &enrol).await;
    first.expect(200);
    assert_eq!(first.headers.get("cache-control").and_then(|v| v.to_str().ok()), Some("no-store"));
    let hijack = json!({"username": "dave", "enrolment_code": dave_code, "password": "an attackers password"});
    server.post_public("/v1/staff/enrol", &hijack).await.assert_error(409, "already_enrolled");

    // Dave becomes an administrator (four eyes); then treasury on top would combine money and staff: refused.
    let admin = a_api.request_role(dave_id, "administrator").await;
    b_api.approve(admin).await;
    let treasury = a_api.request_role(dave_id, "treasury_custodian").await;
    b_api.post(&path(treasury), &json!({})).await.assert_error(403, "separation_of_duties");
    let staff = a_api.get("/v1/staff").await.expect(200).clone();
    let dave = staff.as_array().unwrap().iter().find(|s| s["id"] == json!(dave_id)).cloned().unwrap();
    assert_eq!(dave["roles"], json!(["administrator"]), "the refused grant changed nothing");

    // An administrator may not decide a request about their own roles, even one someone else filed.
    let for_b = a_api.request_role(b.id, "support").await;
    b_api.post(&path(for_b), &json!({})).await.assert_error(403, "four_eyes");

    // Both refusals are in the audit log.
    let mut auditor_code = a_api.create_staff("eve").await;
    let eve_role = a_api.request_role(auditor_code.0, "auditor").await;
    b_api.approve(eve_role).await;
    let mut eve =
        Staff::enrol(&server, "eve", &std::mem::take(&mut auditor_code.1), "eve the auditor!", &["auditor"]).await;
    eve.sign_in(&server, &["auditor"]).await;
    let denied: Vec<Value> = eve
        .api(&server)
        .audit_entries("action=staff.role.approve")
        .await
        .into_iter()
        .filter(|e| e["outcome"] == json!("denied"))
        .map(|e| e["details"]["reason"].clone())
        .collect();
    assert_eq!(denied, [json!("separation_of_duties"), json!("own_request")]);
}

on_both_backends!(a_disabled_account_loses_its_sessions_at_once);

/// A leaver: one administrator disables the account, its open session stops working on the next request, it can
/// no longer sign in, and the act is in the audit log.
async fn a_disabled_account_loses_its_sessions_at_once(db: Db) {
    let server = Server::start(&db).await;
    let root: &Api = &server;
    let (id, code) = root.create_staff("leaver").await;
    let mut leaver = Staff::enrol(&server, "leaver", &code, "a long enough password", &[]).await;
    leaver.sign_in(&server, &[]).await;
    let session = leaver.api(&server);
    // Signed in without roles: refused for lack of permission, not for lack of a session.
    session.get("/v1/staff").await.assert_error(403, "forbidden");

    let disabled = root.post(&format!("/v1/staff/{id}/disable"), &json!({})).await;
    assert_eq!(disabled.expect(200)["status"], json!("disabled"));
    session.get("/v1/staff").await.assert_error(401, "unauthorized");
    let code = leaver.authenticator.next_code().await;
    let body = leaver.sign_in_body("a long enough password", &code);
    root.post_public("/v1/staff/sign-in", &body).await.assert_error(401, "invalid_credentials");
    root.post("/v1/staff/999999/disable", &json!({})).await.assert_error(404, "not_found");
    let entries = root.get("/v1/audit/entries?action=staff.disable").await;
    let targets: Vec<Value> = entries.expect(200).as_array().unwrap().iter().map(|e| e["target"].clone()).collect();
    assert_eq!(targets, [json!(format!("staff:{id}"))]);
}
