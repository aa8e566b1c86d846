//! End-to-end tests of `rampart serve`: the real binary, started on port 0 over a fresh SQLite database and (when
//! `RAMPART_TEST_POSTGRES_URL` is set) a fresh PostgreSQL database, spoken to over HTTP only.

#[macro_use]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Balances, Db, Server, btc, hold, resolve, transfer, units};
use reqwest::Method;
use serde_json::{Value, json};

/// The exchange's custody account: no balance constraint, so it can fund customers out of nothing.
const CUSTODY: u128 = 1;
/// A customer's account, which must never go below zero.
const CUSTOMER: u128 = 2;
/// Where withdrawals go: the credit side of holds.
const HOT: u128 = 3;
/// The id of the transfer that funds the customer.
const FUNDING: u128 = 1;

const NO_OVERDRAFT: &[&str] = &["debits_must_not_exceed_credits"];

/// Creates the custody, customer and hot accounts and credits the customer with `units` from custody.
async fn fund_customer(server: &Server, units: u128) {
    server.create_account(CUSTODY, &[]).await;
    server.create_account(CUSTOMER, NO_OVERDRAFT).await;
    server.create_account(HOT, &[]).await;
    server.transfer(FUNDING, CUSTODY, CUSTOMER, units).await.expect(201);
}

/// Polls `probe` every 50 ms until it returns `Some`, or panics naming `what` after `limit`.
async fn eventually<T, F: Future<Output = Option<T>>>(what: &str, limit: Duration, mut probe: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The source of the server's router, read when this test is compiled: the routes the OpenAPI document must list
/// are the ones `router()` registers, so that a route added without an annotation fails this test.
const ROUTER_SOURCE: &str = include_str!("../../server/src/lib.rs");

/// The HTTP methods axum routes here, as OpenAPI names them.
const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// Every (path, method) that `router()` in `source` registers: each `.route("<path>", get(…).post(…))`, however
/// its arguments are laid out.
fn routes_in(source: &str) -> BTreeSet<(String, String)> {
    let start = source.find("pub fn router(").expect("lib.rs defines router()");
    let end = start + source[start..].find("\n}\n").expect("router() ends");
    let mut rest = &source[start..end];
    let mut routes = BTreeSet::new();
    while let Some(at) = rest.find(".route(") {
        let call = &rest[at + ".route(".len()..];
        let mut depth = 1;
        let close = call
            .char_indices()
            .find(|&(_, c)| {
                depth += match c {
                    '(' => 1,
                    ')' => -1,
                    _ => 0,
                };
                depth == 0
            })
            .map(|(i, _)| i)
            .expect("every .route( is closed");
        let args = &call[..close];
        let path = args.split('"').nth(1).expect("a route's path is a string literal");
        for method in METHODS {
            let call = format!("{method}(");
            // `get(handler)` or `.post(handler)`, not the end of a longer name such as `budget(`.
            let found = args.match_indices(&call).any(|(i, _)| {
                !args[..i].chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
            });
            if found {
                routes.insert((path.to_owned(), method.to_owned()));
            }
        }
        rest = &call[close..];
    }
    routes
}

#[test]
fn routes_are_read_from_the_router_source() {
    let source = r#"
fn before() { x.route("/z", get(m::z)) }
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/a/{id}", get(m::budget_get).post(m::create))
        .route(
            "/b",
            get(m::b).put(m::b_put).layer(DefaultBodyLimit::max(LIMIT)),
        )
        .route_layer(middleware::from_fn(m::layer))
}
fn after() { x.route("/c", delete(m::c)) }
"#;
    let found: Vec<(String, String)> = routes_in(source).into_iter().collect();
    let expected = [("/a/{id}", "get"), ("/a/{id}", "post"), ("/b", "get"), ("/b", "put")];
    assert_eq!(found, expected.map(|(p, m)| (p.to_owned(), m.to_owned())));
}

/// Asserts that the OpenAPI document lists exactly the routes of the router, method by method, and that every
/// schema and security scheme it refers to is defined.
#[track_caller]
fn assert_documents_every_route(doc: &Value) {
    let routed = routes_in(ROUTER_SOURCE);
    // The reading of the source is itself checked: a route with two methods and one spread over several lines.
    for (path, method) in [("/v1/me/withdrawals", "post"), ("/v1/me/withdrawals", "get"), ("/v1/me/kyc", "post")] {
        assert!(routed.contains(&(path.to_owned(), method.to_owned())), "{method} {path} was not read: {routed:?}");
    }
    let paths = doc["paths"].as_object().expect("the document has paths");
    let documented: BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(path, item)| {
            let methods = item.as_object().expect("a path item is an object");
            methods.keys().filter(|m| METHODS.contains(&m.as_str())).map(|m| (path.clone(), m.clone()))
        })
        .collect();
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    assert!(undocumented.is_empty(), "routes the OpenAPI document does not list: {undocumented:?}");
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(unrouted.is_empty(), "operations in the OpenAPI document that no route serves: {unrouted:?}");

    let schemas = &doc["components"]["schemas"];
    let schemes = &doc["components"]["securitySchemes"];
    let mut stack = vec![doc];
    while let Some(value) = stack.pop() {
        match value {
            Value::Object(map) => {
                if let Some(reference) = map.get("$ref").and_then(Value::as_str) {
                    let name = reference.strip_prefix("#/components/schemas/").unwrap_or(reference);
                    assert!(schemas[name].is_object(), "{reference} is not defined");
                }
                stack.extend(map.values());
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    let mut operation_ids = BTreeMap::new();
    for ((path, method), operation) in documented.iter().map(|(p, m)| ((p, m), &doc["paths"][p][m])) {
        let responses = operation["responses"].as_object().map_or(0, |r| r.len());
        assert!(responses > 0, "{method} {path} documents no response");
        // Clients generated from the document name their methods after these: two alike would collide.
        let id = operation["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path} has no operationId"));
        if let Some(other) = operation_ids.insert(id.to_owned(), format!("{method} {path}")) {
            panic!("{method} {path} and {other} share the operationId {id}");
        }
        for requirement in operation["security"].as_array().into_iter().flatten() {
            for scheme in requirement.as_object().expect("a security requirement").keys() {
                assert!(schemes[scheme].is_object(), "{method} {path} names an undefined security scheme {scheme}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 1. Concurrency: holds racing for the last units of an account never overdraw it.

on_both_backends!(concurrent_holds_never_overdraw);

async fn concurrent_holds_never_overdraw(db: Db) {
    const FUNDED: u128 = 100;
    const HOLDS: usize = 200;
    let server = Server::start(&db).await;
    fund_customer(&server, FUNDED).await;

    // Every task builds its request, then all wait at a barrier and send at once.
    let barrier = Arc::new(tokio::sync::Barrier::new(HOLDS));
    let tasks: Vec<_> = (0..HOLDS as u128)
        .map(|i| {
            let api = server.api();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let id = 1000 + i;
                let request = api.request(Method::POST, "/v1/transfers").json(&hold(id, CUSTOMER, HOT, 1, 0));
                barrier.wait().await;
                (id, api.send(request).await)
            })
        })
        .collect();
    let mut held = BTreeSet::new();
    let mut refused = BTreeSet::new();
    for task in tasks {
        let (id, answer) = task.await.expect("a request task panicked");
        match answer.status.as_u16() {
            201 => {
                assert_eq!(answer.str("pending_status"), "pending", "{answer:?}");
                assert_eq!(answer.str("amount"), "0.00000001", "{answer:?}");
                held.insert(id);
            }
            422 => {
                assert_eq!(answer.error_code(), "exceeds_credits", "{answer:?}");
                refused.insert(id);
            }
            _ => panic!("a hold must answer 201 or 422 exceeds_credits, not {answer:?}"),
        }
    }
    assert_eq!((held.len(), refused.len()), (100, 100), "holds granted and refused");

    server
        .assert_balances(
            CUSTOMER,
            Balances { debits_pending: FUNDED, credits_posted: FUNDED, available: 0, ..Balances::default() },
        )
        .await;
    let customer = server.account(CUSTOMER).await;
    assert_eq!((customer["debits_pending"].as_str(), customer["available"].as_str()), (Some("0.000001"), Some("0")));
    server.assert_balances(HOT, Balances { credits_pending: FUNDED, ..Balances::default() }).await;
    let report = server.assert_balanced().await;
    assert_eq!(report["pending"], json!(100), "{report}");
    assert_eq!(report["accounts"], json!(3), "{report}");

    // What was granted exists as a live hold; what was refused left no trace.
    for id in &held {
        let answer = server.get(&format!("/v1/transfers/{id}")).await;
        assert_eq!(answer.expect(200)["pending_status"], json!("pending"), "{answer:?}");
    }
    for id in &refused {
        server.assert_no_transfer(*id).await;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 2. Durability: whatever was acknowledged survives SIGKILL.

/// A configuration whose per-address rate limit lets a test read back hundreds of records at full speed.
const BULK_READS: &str = "[identity]\nrate_limit_per_s = 100000\nrate_limit_burst = 100000\n";

on_both_backends!(acknowledged_transfers_survive_sigkill);

/// A request of the stream whose answer may or may not have come before the kill.
struct Attempt {
    /// Each transfer: id, credit account, amount in units.
    transfers: Vec<(u128, u128, u128)>,
    /// Whether it went as a batch (and so must be all there or all absent).
    batch: bool,
    /// Whether it was acknowledged.
    acked: bool,
}

/// The body of one attempt.
fn attempt_body(attempt: &Attempt) -> Value {
    let bodies: Vec<Value> =
        attempt.transfers.iter().map(|&(id, credit, u)| transfer(id, CUSTODY, credit, u)).collect();
    if attempt.batch { Value::Array(bodies) } else { bodies.into_iter().next().expect("one transfer") }
}

/// The accounts the durability test credits, from custody.
const CREDITED: [u128; 4] = [10, 11, 12, 13];

/// The account credited by a transfer of the durability test.
fn credit(id: u128) -> u128 {
    CREDITED[(id % 4) as usize]
}

/// The amount of a transfer of the durability test, in units.
fn amount(id: u128) -> u128 {
    id % 13 + 1
}

async fn acknowledged_transfers_survive_sigkill(db: Db) {
    const SEQUENTIAL: u128 = 300;
    const BATCHES: u128 = 4;
    const BATCH_LEN: u128 = 50;
    const STREAM_SINGLE_WRITERS: u128 = 6;
    const STREAM_BATCH_WRITERS: u128 = 2;
    const STREAM_BATCH_LEN: u128 = 20;
    /// Acknowledgements of the concurrent stream before the kill.
    const STREAM_ACKS_BEFORE_KILL: usize = 60;
    let credits = CREDITED;

    let server = Server::start_with_config(&db, BULK_READS).await;
    server.create_account(CUSTODY, &[]).await;
    for id in credits {
        server.create_account(id, NO_OVERDRAFT).await;
    }

    // Acknowledged transfers: id → (credit account, units).
    let mut acked: BTreeMap<u128, (u128, u128)> = BTreeMap::new();
    for id in 10_000..10_000 + SEQUENTIAL {
        let answer = server.transfer(id, CUSTODY, credit(id), amount(id)).await;
        answer.expect(201);
        acked.insert(id, (credit(id), amount(id)));
    }
    for b in 0..BATCHES {
        let ids: Vec<u128> = (0..BATCH_LEN).map(|j| 20_000 + b * BATCH_LEN + j).collect();
        let body: Vec<Value> = ids.iter().map(|&id| transfer(id, CUSTODY, credit(id), amount(id))).collect();
        let answer = server.post("/v1/transfers/batch", &Value::Array(body)).await;
        let results = answer.expect(200)["results"].as_array().expect("results").clone();
        assert_eq!(results.len(), ids.len(), "{answer:?}");
        for (j, (result, id)) in results.iter().zip(&ids).enumerate() {
            assert_eq!(result, &json!({"index": j, "id": id.to_string(), "result": "ok"}), "{answer:?}");
            acked.insert(*id, (credit(*id), amount(*id)));
        }
    }

    // A concurrent stream of single transfers and batches, killed in the middle.
    let attempts: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    let stream_acks = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..STREAM_SINGLE_WRITERS + STREAM_BATCH_WRITERS)
        .map(|w| {
            let api = server.api();
            let attempts = attempts.clone();
            let stream_acks = stream_acks.clone();
            let batch = w >= STREAM_SINGLE_WRITERS;
            tokio::spawn(async move {
                let first = 1_000_000 * (w + 1);
                for k in 0..100_000u128 {
                    let ids = if batch {
                        (0..STREAM_BATCH_LEN).map(|j| first + k * STREAM_BATCH_LEN + j).collect()
                    } else {
                        vec![first + k]
                    };
                    let attempt = Attempt {
                        transfers: ids.iter().map(|&id| (id, credit(id), amount(id))).collect(),
                        batch,
                        acked: false,
                    };
                    let path = if batch { "/v1/transfers/batch" } else { "/v1/transfers" };
                    let request = api.request(Method::POST, path).json(&attempt_body(&attempt));
                    let index = {
                        let mut attempts = attempts.lock().unwrap();
                        attempts.push(attempt);
                        attempts.len() - 1
                    };
                    let Some(answer) = api.try_send(request).await else { return };
                    let acked = if batch {
                        answer.status == 200
                            && answer.body["results"].as_array().is_some_and(|r| {
                                r.len() == ids.len() && r.iter().all(|item| item["result"] == json!("ok"))
                            })
                    } else {
                        answer.status == 201
                    };
                    // Until the kill every request must succeed; after it, nothing can answer.
                    assert!(acked, "a stream request failed before the kill: {answer:?}");
                    attempts.lock().unwrap()[index].acked = true;
                    stream_acks.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    eventually("the concurrent stream to get going", Duration::from_secs(30), || {
        let n = stream_acks.load(Ordering::SeqCst);
        async move { (n >= STREAM_ACKS_BEFORE_KILL).then_some(()) }
    })
    .await;
    server.kill().await;
    for writer in writers {
        writer.await.expect("a stream writer panicked");
    }
    let attempts = std::mem::take(&mut *attempts.lock().unwrap());
    // Each writer ends with one request unanswered: in flight at the kill, or sent after it.
    let in_flight = attempts.iter().filter(|a| !a.acked).count();
    assert_eq!(in_flight as u128, STREAM_SINGLE_WRITERS + STREAM_BATCH_WRITERS, "requests unanswered");
    for attempt in attempts.iter().filter(|a| a.acked) {
        for &(id, credit, units) in &attempt.transfers {
            acked.insert(id, (credit, units));
        }
    }

    // Restarted on the same database, every acknowledged transfer is there, unchanged. The check reads hundreds of
    // transfers at full speed from one address, beyond the default per-address rate limit.
    let server = Server::start_with_config(&db, BULK_READS).await;
    let check = |id: u128, credit: u128, amount: u128, view: &Value| {
        assert_eq!(view["id"], json!(id.to_string()), "{view}");
        assert_eq!(view["debit_account_id"], json!(CUSTODY.to_string()), "{view}");
        assert_eq!(view["credit_account_id"], json!(credit.to_string()), "{view}");
        assert_eq!(units(view["amount"].as_str().expect("an amount")), amount, "{view}");
    };
    for (&id, &(credit, units)) in &acked {
        let answer = server.get(&format!("/v1/transfers/{id}")).await;
        check(id, credit, units, answer.expect(200));
    }
    // Of the requests in flight, each single transfer is there or not; each batch is there entirely or not at all.
    let mut existing = acked.clone();
    let mut lost = Vec::new();
    for attempt in attempts.iter().filter(|a| !a.acked) {
        let mut found = Vec::new();
        for &(id, credit, units) in &attempt.transfers {
            let answer = server.get(&format!("/v1/transfers/{id}")).await;
            match answer.status.as_u16() {
                200 => {
                    check(id, credit, units, &answer.body);
                    found.push(id);
                    existing.insert(id, (credit, units));
                }
                404 => assert_eq!(answer.error_code(), "not_found"),
                _ => panic!("unexpected answer {answer:?}"),
            }
        }
        assert!(
            found.is_empty() || found.len() == attempt.transfers.len(),
            "a batch was applied in part: {found:?} of {:?}",
            attempt.transfers
        );
        if found.is_empty() {
            lost.push(attempt);
        }
    }

    // The balances are the sums of the transfers that exist, and no less than the sums of those acknowledged.
    let sums = |transfers: &BTreeMap<u128, (u128, u128)>| {
        let mut sums: BTreeMap<u128, u128> = BTreeMap::new();
        for &(credit, units) in transfers.values() {
            *sums.entry(credit).or_default() += units;
        }
        sums
    };
    let (acked_sums, existing_sums) = (sums(&acked), sums(&existing));
    for id in credits {
        let balances = Balances::of(&server.account(id).await);
        assert!(balances.credits_posted >= acked_sums[&id], "account {id} lost acknowledged credits");
        assert_eq!(
            balances,
            Balances { credits_posted: existing_sums[&id], available: existing_sums[&id], ..Balances::default() },
            "account {id}"
        );
    }
    let total: u128 = existing_sums.values().sum();
    server.assert_balances(CUSTODY, Balances { debits_posted: total, ..Balances::default() }).await;
    server.assert_balanced().await;

    // Retrying what was in flight is safe: what was applied answers that it exists, the rest is applied now.
    for attempt in attempts.iter().filter(|a| !a.acked) {
        let was_lost = lost.iter().any(|l| std::ptr::eq(*l, attempt));
        let path = if attempt.batch { "/v1/transfers/batch" } else { "/v1/transfers" };
        let answer = server.post(path, &attempt_body(attempt)).await;
        if attempt.batch {
            let expected = if was_lost { "ok" } else { "exists" };
            let results = answer.expect(200)["results"].as_array().expect("results");
            assert!(results.iter().all(|r| r["result"] == json!(expected)), "retry: {answer:?}");
        } else {
            answer.expect(if was_lost { 201 } else { 200 });
        }
        for &(id, credit, units) in &attempt.transfers {
            existing.insert(id, (credit, units));
        }
    }
    let existing_sums = sums(&existing);
    for id in credits {
        server
            .assert_balances(
                id,
                Balances { credits_posted: existing_sums[&id], available: existing_sums[&id], ..Balances::default() },
            )
            .await;
    }
    server.assert_balanced().await;
    eprintln!(
        "durability: {} acknowledged, {in_flight} in flight at the kill, {} of them lost and retried",
        acked.len(),
        lost.len()
    );
}

// ---------------------------------------------------------------------------------------------------------------
// 3. Bad input: a 4xx with the error shape, never a 500, and nothing written.

on_both_backends!(bad_input_is_refused_and_writes_nothing);

async fn bad_input_is_refused_and_writes_nothing(db: Db) {
    let server = Server::start(&db).await;
    fund_customer(&server, 100).await;
    let customer_before = server.account(CUSTOMER).await;
    let hot_before = server.account(HOT).await;
    let transfers = |content_type: Option<&str>, body: String| {
        let request = server.request(Method::POST, "/v1/transfers").body(body);
        match content_type {
            Some(value) => request.header("content-type", value),
            None => request,
        }
    };
    let post = |body: &str| transfers(Some("application/json"), body.to_owned());
    let valid = |id: u128| hold(id, CUSTOMER, HOT, 1, 0);
    let with = |id: u128, field: &str, value: Value| {
        let mut body = valid(id);
        body[field] = value;
        server.request(Method::POST, "/v1/transfers").json(&body)
    };
    let amount = |id: u128, amount: &str| with(id, "amount", json!(amount));
    let authorized = |id: u128, authorization: Option<String>| {
        let request = server.client.post(format!("{}/v1/transfers", server.base)).json(&valid(id));
        match authorization {
            Some(value) => request.header("authorization", value),
            None => request,
        }
    };
    let batch = |items: Value| server.request(Method::POST, "/v1/transfers/batch").json(&items);
    let account = |body: Value| server.request(Method::POST, "/v1/accounts").json(&body);
    let get = |path: &str| server.request(Method::GET, path);
    let too_big = "340282366920938463463374607431768211456";
    let mut bad_item = valid(9033);
    bad_item["amount"] = json!("1.000000001");
    let oversized = server
        .request(Method::POST, "/v1/transfers/batch")
        .header("content-type", "application/json")
        .body(format!("[{}]", " ".repeat(5 << 20)));
    let token = &server.token;

    let cases = vec![
        ("malformed JSON", post(r#"{"id": "9001", "asset": "#), 400, "malformed_json"),
        ("an empty body", post(""), 400, "malformed_json"),
        ("a JSON body of the wrong shape", post(&json!([valid(9002)]).to_string()), 400, "invalid_request"),
        ("a JSON string", post(r#""9003""#), 400, "invalid_request"),
        ("a missing field", post(r#"{"id": "9004"}"#), 400, "invalid_request"),
        ("a missing content-type", transfers(None, valid(9005).to_string()), 415, "unsupported_media_type"),
        ("a wrong content-type", transfers(Some("text/plain"), valid(9006).to_string()), 415, "unsupported_media_type"),
        ("an unknown field", with(9007, "memo", json!("hello")), 400, "invalid_request"),
        ("an unknown asset", with(9008, "asset", json!("DOGE")), 400, "unknown_asset"),
        ("a lower-case asset", with(9009, "asset", json!("btc")), 400, "unknown_asset"),
        ("too many decimals", amount(9010, "0.000000001"), 400, "invalid_amount"),
        ("a negative amount", amount(9011, "-1"), 400, "invalid_amount"),
        ("an exponent", amount(9012, "1e3"), 400, "invalid_amount"),
        ("an empty amount", amount(9013, ""), 400, "invalid_amount"),
        ("an overflowing amount", amount(9014, "1234567890123456789012345678901234567890"), 400, "invalid_amount"),
        ("an amount as a JSON number", with(9015, "amount", json!(0.00000001)), 400, "invalid_request"),
        ("an amount with whitespace", amount(9016, " 1"), 400, "invalid_amount"),
        ("an id that is not a number", with(9017, "id", json!("abc")), 400, "invalid_request"),
        ("a negative id", with(9018, "id", json!("-9018")), 400, "invalid_request"),
        ("an id beyond 128 bits", with(9019, "id", json!(too_big)), 400, "invalid_request"),
        ("an account id that is not a number", with(9020, "debit_account_id", json!("two")), 400, "invalid_request"),
        ("an unknown flag", with(9021, "flags", json!(["pending", "urgent"])), 400, "invalid_flag"),
        ("a negative timeout", with(9022, "timeout_s", json!(-1)), 400, "invalid_request"),
        ("a zero id", with(0, "id", json!("0")), 422, "id_must_not_be_zero"),
        ("a zero amount", amount(9023, "0"), 422, "amount_must_not_be_zero"),
        ("an unknown debit account", with(9024, "debit_account_id", json!("77")), 422, "debit_account_not_found"),
        ("the same account twice", with(9025, "credit_account_id", json!("2")), 422, "accounts_must_be_different"),
        ("more than the balance", amount(9026, "0.00000101"), 422, "exceeds_credits"),
        ("a missing token", authorized(9027, None), 401, "unauthorized"),
        ("a wrong token", authorized(9028, Some(format!("Bearer {}", "0".repeat(64)))), 401, "unauthorized"),
        ("a token prefix", authorized(9029, Some(format!("Bearer {}", &token[..63]))), 401, "unauthorized"),
        ("an empty token", authorized(9030, Some("Bearer ".to_owned())), 401, "unauthorized"),
        ("the token as basic auth", authorized(9031, Some(format!("Basic {token}"))), 401, "unauthorized"),
        ("a batch with one bad item", batch(json!([valid(9032), bad_item, valid(9034)])), 400, "invalid_amount"),
        (
            "a batch of 8191 items",
            batch(Value::Array((0..8191).map(|i| valid(100_000 + i)).collect())),
            413,
            "batch_too_large",
        ),
        ("a batch that is not an array", batch(valid(9035)), 400, "invalid_request"),
        ("a GET of an unknown account", get("/v1/accounts/404"), 404, "not_found"),
        ("a GET of an unknown transfer", get("/v1/transfers/404"), 404, "not_found"),
        ("a malformed account id in the path", get("/v1/accounts/abc"), 400, "invalid_id"),
        ("a malformed transfer id in the path", get("/v1/transfers/1.5"), 400, "invalid_id"),
        ("an id beyond 128 bits in the path", get(&format!("/v1/accounts/{too_big}")), 400, "invalid_id"),
        ("a bad history limit", get("/v1/accounts/2/transfers?limit=0"), 400, "invalid_query"),
        ("an unknown history parameter", get("/v1/accounts/2/transfers?offset=3"), 400, "invalid_query"),
        ("an unknown route", get("/v1/nothing-here"), 404, "not_found"),
        (
            "an unknown route without a token",
            server.client.get(format!("{}/no/such/route", server.base)),
            404,
            "not_found",
        ),
        (
            "an unknown account field",
            account(json!({"id": "50", "asset": "BTC", "owner": "x"})),
            400,
            "invalid_request",
        ),
        (
            "an unknown account flag",
            account(json!({"id": "51", "asset": "BTC", "flags": ["frozen"]})),
            400,
            "invalid_flag",
        ),
        ("an account of an unknown asset", account(json!({"id": "52", "asset": "XYZ"})), 400, "unknown_asset"),
        (
            "an account with both balance constraints",
            account(json!({"id": "53", "asset": "BTC", "flags": [NO_OVERDRAFT[0], "credits_must_not_exceed_debits"]})),
            422,
            "flags_are_mutually_exclusive",
        ),
        ("a wrong method", server.request(Method::DELETE, "/v1/accounts/2"), 405, "method_not_allowed"),
        ("a body over the 4 MiB limit", oversized, 413, "unreadable_body"),
    ];
    let mut failures = Vec::new();
    for (what, request, status, code) in cases {
        let answer = server.send(request).await;
        let error = &answer.body["error"];
        let shaped = error["code"].is_string() && error["message"].as_str().is_some_and(|m| !m.is_empty());
        if answer.status.as_u16() != status || !shaped || error["code"] != json!(code) {
            failures.push(format!("{what}: expected {status} {code}, got {} {:?}", answer.status, answer.text));
        }
        if status == 401 {
            let challenge = answer.headers.get("www-authenticate").and_then(|v| v.to_str().ok());
            if challenge != Some("Bearer") {
                failures.push(format!("{what}: a 401 must carry WWW-Authenticate: Bearer, not {challenge:?}"));
            }
        }
    }
    // Nothing was written (checked before reporting the wrong answers, so that one does not hide the other).
    assert_eq!(server.account(CUSTOMER).await, customer_before);
    assert_eq!(server.account(HOT).await, hot_before);
    for id in (9001..=9035).chain([100_000, 108_190]) {
        server.assert_no_transfer(id).await;
    }
    for id in [404, 50, 51, 52, 53] {
        server.get(&format!("/v1/accounts/{id}")).await.assert_error(404, "not_found");
    }
    let report = server.assert_balanced().await;
    assert_eq!((report["accounts"].clone(), report["pending"].clone()), (json!(3), json!(0)), "{report}");
    assert!(failures.is_empty(), "bad input answered wrongly:\n{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------------------------
// 4. Idempotency: a retry is answered, never applied twice.

on_both_backends!(retries_are_idempotent);

async fn retries_are_idempotent(db: Db) {
    let server = Server::start(&db).await;

    let account = json!({"id": "7", "asset": "BTC", "code": 3, "flags": NO_OVERDRAFT, "user_data": "99"});
    let created = server.post("/v1/accounts", &account).await;
    let again = server.post("/v1/accounts", &account).await;
    assert_eq!(created.expect(201), again.expect(200), "an account retry answers the same account");
    let mut other = account.clone();
    other["code"] = json!(4);
    server.post("/v1/accounts", &other).await.assert_error(409, "exists_with_different_fields");
    server.create_account(CUSTODY, &[]).await;
    server.create_account(8, &[]).await;

    let body = transfer(500, CUSTODY, 7, 1234);
    let first = server.post("/v1/transfers", &body).await;
    let second = server.post("/v1/transfers", &body).await;
    assert_eq!(first.expect(201), second.expect(200), "a transfer retry answers the same transfer");
    assert_eq!(first.str("amount"), "0.00001234");
    // The shortest form of the same amount is the same transfer.
    let mut shortest = body.clone();
    shortest["amount"] = json!("0.00001234");
    assert_eq!(server.post("/v1/transfers", &shortest).await.expect(200), first.expect(201));

    for (field, value) in [("amount", json!(btc(1235))), ("credit_account_id", json!("8")), ("code", json!(9))] {
        let mut different = body.clone();
        different[field] = value;
        server.post("/v1/transfers", &different).await.assert_error(409, "exists_with_different_fields");
    }
    // In a batch, a retry is `exists` next to a new transfer that is `ok`.
    let batch = server.post("/v1/transfers/batch", &json!([body, transfer(501, CUSTODY, 7, 1)])).await;
    assert_eq!(
        batch.expect(200)["results"],
        json!([{"index": 0, "id": "500", "result": "exists"}, {"index": 1, "id": "501", "result": "ok"}])
    );

    server.assert_balances(7, Balances { credits_posted: 1235, available: 1235, ..Balances::default() }).await;
    server.assert_balances(CUSTODY, Balances { debits_posted: 1235, ..Balances::default() }).await;
    let history = server.get("/v1/accounts/7/transfers").await;
    let ids: Vec<&str> =
        history.expect(200).as_array().expect("a list").iter().filter_map(|t| t["id"].as_str()).collect();
    assert_eq!(ids, ["501", "500"], "each transfer recorded once, newest first");

    // Retries racing each other: exactly one creates, every other answers that it exists, with the same body.
    const RACERS: usize = 32;
    for (path, body) in [
        ("/v1/accounts", json!({"id": "9", "asset": "BTC", "flags": NO_OVERDRAFT})),
        ("/v1/transfers", transfer(600, CUSTODY, 9, 77)),
    ] {
        let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
        let racers: Vec<_> = (0..RACERS)
            .map(|_| {
                let (api, barrier) = (server.api(), barrier.clone());
                let request = api.request(Method::POST, path).json(&body);
                tokio::spawn(async move {
                    barrier.wait().await;
                    api.send(request).await
                })
            })
            .collect();
        let mut created = Vec::new();
        let mut existed = Vec::new();
        for racer in racers {
            let answer = racer.await.expect("a racer panicked");
            match answer.status.as_u16() {
                201 => created.push(answer.body),
                200 => existed.push(answer.body),
                _ => panic!("a racing retry of {path} must answer 201 or 200, not {answer:?}"),
            }
        }
        assert_eq!((created.len(), existed.len()), (1, RACERS - 1), "racing retries of {path}");
        assert!(existed.iter().all(|b| *b == created[0]), "every retry answers the same: {existed:?}");
    }
    server.assert_balances(9, Balances { credits_posted: 77, available: 77, ..Balances::default() }).await;
    server.assert_balances(CUSTODY, Balances { debits_posted: 1235 + 77, ..Balances::default() }).await;
    server.assert_balanced().await;
}

// ---------------------------------------------------------------------------------------------------------------
// 4b. Batches: applied in order, linked chains all or nothing, up to the limit of 8190 items.

on_both_backends!(batches_apply_in_order_up_to_the_limit);

/// A posted transfer of BTC with flags.
fn flagged(id: u128, debit: u128, credit: u128, units: u128, flags: &[&str]) -> Value {
    let mut body = transfer(id, debit, credit, units);
    body["flags"] = json!(flags);
    body
}

/// The result codes of a batch answer, in order.
fn results(answer: &common::Answer) -> Vec<String> {
    let results = answer.expect(200)["results"].as_array().expect("results");
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["index"], json!(i), "{r}");
    }
    results.iter().map(|r| r["result"].as_str().expect("a result").to_owned()).collect()
}

async fn batches_apply_in_order_up_to_the_limit(db: Db) {
    const FULL: u128 = 8190;
    let server = Server::start(&db).await;
    fund_customer(&server, 100).await;

    // A full batch is applied, and retrying it applies nothing.
    let full = Value::Array((0..FULL).map(|i| transfer(1_000_000 + i, CUSTODY, HOT, 1)).collect());
    let answer = server.post("/v1/transfers/batch", &full).await;
    assert!(results(&answer).iter().all(|r| r == "ok"), "{}", answer.text);
    let answer = server.post("/v1/transfers/batch", &full).await;
    assert!(results(&answer).iter().all(|r| r == "exists"), "{}", answer.text);
    server.assert_balances(HOT, Balances { credits_posted: FULL, available: FULL, ..Balances::default() }).await;

    // In order: the second transfer finds the balance the first left.
    let pair = json!([transfer(10, CUSTOMER, HOT, 60), transfer(11, CUSTOMER, HOT, 41)]);
    assert_eq!(results(&server.post("/v1/transfers/batch", &pair).await), ["ok", "exceeds_credits"]);
    // A linked chain (ended by its first transfer without `linked`) fails as a whole when one of its transfers
    // fails; the transfers after it stand alone.
    let chain = json!([
        flagged(20, CUSTODY, HOT, 5, &["linked"]),
        flagged(21, CUSTOMER, HOT, 30, &["linked"]),
        transfer(22, CUSTOMER, HOT, 41),
        transfer(23, CUSTOMER, HOT, 40),
    ]);
    assert_eq!(
        results(&server.post("/v1/transfers/batch", &chain).await),
        ["linked_event_failed", "linked_event_failed", "exceeds_credits", "ok"]
    );
    let open = json!([transfer(30, CUSTODY, HOT, 1), flagged(31, CUSTODY, HOT, 1, &["linked"])]);
    assert_eq!(results(&server.post("/v1/transfers/batch", &open).await), ["ok", "linked_event_chain_open"]);

    for id in [11, 20, 21, 22, 31] {
        server.assert_no_transfer(id).await;
    }
    server.assert_balances(CUSTOMER, Balances { debits_posted: 100, credits_posted: 100, ..Balances::default() }).await;
    let hot = FULL + 100 + 1;
    server.assert_balances(HOT, Balances { credits_posted: hot, available: hot, ..Balances::default() }).await;
    server.assert_balanced().await;
}

// ---------------------------------------------------------------------------------------------------------------
// 5. Holds: posted in part, voided, and expired by the server's worker.

on_both_backends!(holds_post_void_and_expire);

async fn holds_post_void_and_expire(db: Db) {
    let server = Server::start(&db).await;
    fund_customer(&server, 1000).await;
    let customer = |debits_pending, debits_posted| Balances {
        debits_pending,
        debits_posted,
        credits_posted: 1000,
        available: 1000 - debits_pending - debits_posted,
        ..Balances::default()
    };

    // A hold of 400, posted for 150: the rest goes back.
    let held = server.post("/v1/transfers", &hold(10, CUSTOMER, HOT, 400, 0)).await;
    assert_eq!(held.expect(201)["pending_status"], json!("pending"));
    assert!(held.body["expires_at_ns"].is_null(), "a hold without timeout never expires: {held:?}");
    server.assert_balances(CUSTOMER, customer(400, 0)).await;
    server.assert_balances(HOT, Balances { credits_pending: 400, ..Balances::default() }).await;
    server
        .post("/v1/transfers", &resolve(11, 10, Some(401), true))
        .await
        .assert_error(422, "exceeds_pending_transfer_amount");
    let posted = server.post("/v1/transfers", &resolve(12, 10, Some(150), true)).await;
    let posted = posted.expect(201);
    assert_eq!((posted["amount"].as_str(), posted["pending_id"].as_str()), (Some("0.0000015"), Some("10")), "{posted}");
    assert_eq!(server.get("/v1/transfers/10").await.expect(200)["pending_status"], json!("posted"));
    server.assert_balances(CUSTOMER, customer(0, 150)).await;
    server.assert_balances(HOT, Balances { credits_posted: 150, available: 150, ..Balances::default() }).await;
    server
        .post("/v1/transfers", &resolve(13, 10, None, true))
        .await
        .assert_error(422, "pending_transfer_already_posted");
    server
        .post("/v1/transfers", &resolve(14, 10, None, false))
        .await
        .assert_error(422, "pending_transfer_already_posted");

    // A hold of 200, voided: all of it goes back.
    server.post("/v1/transfers", &hold(20, CUSTOMER, HOT, 200, 0)).await.expect(201);
    server.assert_balances(CUSTOMER, customer(200, 150)).await;
    server
        .post("/v1/transfers", &resolve(21, 20, Some(199), false))
        .await
        .assert_error(422, "pending_transfer_has_different_amount");
    let voided = server.post("/v1/transfers", &resolve(22, 20, None, false)).await;
    assert_eq!(voided.expect(201)["amount"], json!("0.000002"));
    assert_eq!(server.get("/v1/transfers/20").await.expect(200)["pending_status"], json!("voided"));
    server.assert_balances(CUSTOMER, customer(0, 150)).await;
    server
        .post("/v1/transfers", &resolve(23, 20, None, true))
        .await
        .assert_error(422, "pending_transfer_already_voided");

    // A hold of 100 for one second: the expiry worker releases it, and it can no longer be posted.
    let expiring = server.post("/v1/transfers", &hold(30, CUSTOMER, HOT, 100, 1)).await;
    let expiring = expiring.expect(201);
    assert_eq!(expiring["timeout_s"], json!(1));
    let applied: u128 = expiring["timestamp_ns"].as_str().expect("a timestamp").parse().unwrap();
    let expires: u128 = expiring["expires_at_ns"].as_str().expect("an expiry").parse().unwrap();
    assert_eq!(expires - applied, 1_000_000_000, "{expiring}");
    server.assert_balances(CUSTOMER, customer(100, 150)).await;
    let started = Instant::now();
    let expired = eventually("the hold to expire", Duration::from_secs(20), || async {
        let view = server.get("/v1/transfers/30").await.expect(200).clone();
        match view["pending_status"].as_str() {
            Some("expired") => Some(view),
            Some("pending") => None,
            other => panic!("a hold left alone is pending or expired, not {other:?}"),
        }
    })
    .await;
    assert!(started.elapsed() >= Duration::from_millis(500), "expired too early: {expired}");
    server.assert_balances(CUSTOMER, customer(0, 150)).await;
    server.assert_balances(HOT, Balances { credits_posted: 150, available: 150, ..Balances::default() }).await;
    server.post("/v1/transfers", &resolve(31, 30, None, true)).await.assert_error(422, "pending_transfer_expired");
    server.post("/v1/transfers", &resolve(32, 30, None, false)).await.assert_error(422, "pending_transfer_expired");
    server.assert_balances(CUSTOMER, customer(0, 150)).await;

    let metrics = server.send(server.client.get(format!("{}/metrics", server.base))).await;
    assert!(metrics.text.contains("ledger_pending_expired_total"), "{}", metrics.text);

    for id in [11, 13, 14, 21, 23, 31, 32] {
        server.assert_no_transfer(id).await;
    }
    let report = server.assert_balanced().await;
    assert_eq!(report["pending"], json!(0), "{report}");
}

// ---------------------------------------------------------------------------------------------------------------
// 6. Operability: health, readiness, metrics, the OpenAPI document, request ids and a clean stop on SIGTERM.

on_both_backends!(operability);

async fn operability(db: Db) {
    let server = Server::start(&db).await;
    let public = |path: &str| server.client.get(format!("{}{path}", server.base));

    let health = server.send(public("/healthz")).await;
    assert_eq!(health.expect(200), &json!({"status": "ok"}));
    let ready = server.send(public("/readyz")).await;
    assert_eq!(ready.expect(200), &json!({"status": "ready", "backend": db.backend()}));

    let assets = server.get("/v1/assets").await;
    let btc_asset = assets.expect(200).as_array().expect("a list").iter().find(|a| a["code"] == json!("BTC")).cloned();
    assert_eq!(btc_asset.map(|a| a["decimals"].clone()), Some(json!(8)), "{}", assets.text);

    server.create_account(CUSTODY, &[]).await;
    server.get("/v1/accounts/1").await.expect(200);
    server.get("/v1/accounts/2").await.assert_error(404, "not_found");
    let metrics = server.send(public("/metrics")).await;
    assert_eq!(metrics.status, 200, "{metrics:?}");
    let content_type = metrics.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    assert!(metrics.text.contains("http_requests_total"), "{}", metrics.text);
    // Requests are counted by route template, never by raw path.
    assert!(metrics.text.contains(r#"route="/v1/accounts/{id}""#), "{}", metrics.text);
    assert!(!metrics.text.contains(r#"route="/v1/accounts/1""#), "{}", metrics.text);
    assert!(metrics.text.contains("ledger_accounts_total"), "{}", metrics.text);

    let openapi = server.send(public("/openapi.json")).await;
    let doc = openapi.expect(200);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "not OpenAPI 3: {}", doc["openapi"]);
    assert_documents_every_route(doc);

    // Every answer carries a request id (checked in `send`); a caller's own id is kept, and each answer gets its own.
    let echoed = server.send(public("/healthz").header("x-request-id", "e2e-request-42")).await;
    assert_eq!(echoed.headers["x-request-id"], "e2e-request-42");
    let a = server.send(public("/healthz")).await;
    let b = server.send(public("/healthz")).await;
    assert_ne!(a.headers["x-request-id"], b.headers["x-request-id"], "request ids are unique");

    // SIGTERM stops the server cleanly and promptly, with the client's keep-alive connections open and writers
    // busy: requests are answered until the server stops answering, and what was answered is durable.
    const WRITERS: u128 = 4;
    const TO: u128 = 10;
    server.create_account(TO, &[]).await;
    let answered: Arc<Mutex<Vec<u128>>> = Arc::default();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (api, answered) = (server.api(), answered.clone());
            tokio::spawn(async move {
                for id in (100_000 * (w + 1)..).take(100_000) {
                    let request = api.request(Method::POST, "/v1/transfers").json(&transfer(id, CUSTODY, TO, 1));
                    let Some(answer) = api.try_send(request).await else { return };
                    assert_eq!(answer.status, 201, "a request answered while stopping: {answer:?}");
                    answered.lock().unwrap().push(id);
                }
            })
        })
        .collect();
    eventually("the writers to get going", Duration::from_secs(30), || {
        let n = answered.lock().unwrap().len();
        async move { (n >= 20).then_some(()) }
    })
    .await;
    let status = server.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "SIGTERM must end the server with status 0, not {status}");
    for writer in writers {
        writer.await.expect("a writer panicked");
    }
    let answered = std::mem::take(&mut *answered.lock().unwrap());

    let server = Server::start(&db).await;
    for id in &answered {
        server.get(&format!("/v1/transfers/{id}")).await.expect(200);
    }
    let to = Balances::of(&server.account(TO).await);
    assert!(to.credits_posted >= answered.len() as u128, "answered transfers were lost: {to:?}");
    server.assert_balanced().await;
}

// The amount helpers agree with the API's format.
#[test]
fn amounts_round_trip() {
    assert_eq!(btc(150), "0.00000150");
    assert_eq!(btc(123_456_789_012), "1234.56789012");
    assert_eq!(units("0.0000015"), 150);
    assert_eq!(units("0"), 0);
    assert_eq!(units("1234.56789012"), 123_456_789_012);
}
