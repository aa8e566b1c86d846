//! Proof of reserves end to end (issue 9), over HTTP against the real binary, on SQLite and PostgreSQL: a treasury
//! snapshot of every customer's balances, its public publication, each customer's inclusion proof checked by the
//! standalone verifier's library against the published root and totals, the auditors' leaf file recomputing the
//! same root, a second snapshot (an old proof does not verify against it; the old one's tree is rebuilt from what it
//! stored), and the refusals: a name taken, a bad name or query, an unknown snapshot, a customer who held nothing,
//! and staff without the permission.

#[allow(dead_code)]
#[macro_use]
mod common;

use common::customer::*;
use common::withdrawal::{staff_member, two_administrators};
use common::{Db, Server};
use rampart_verify::{LeafFile, Proof};
use serde_json::{Value, json};

const CONFIG: &str = r#"
[identity]
client_ip_header = "x-forwarded-for"
rate_limit_per_s = 100000
rate_limit_burst = 100000

[mail]
outbox_interval_ms = 100
"#;

/// The custody account that funds customers in this test.
const FUNDING: u128 = 0xf00d;

async fn credit(ctx: &Ctx, customer: &Customer, transfer_id: u128, sat: u128) {
    let to = rampart_server::customer_ledger_account(customer.id, "BTC");
    ctx.api.post("/v1/transfers", &common::transfer(transfer_id, FUNDING, to.get(), sat)).await.expect(201);
}

fn verify(view: &Value, publication: &Value) -> Proof {
    let proof = Proof::decode(&hex::decode(view["proof"].as_str().unwrap()).unwrap()).unwrap();
    let root: [u8; 32] = hex::decode(publication["root"].as_str().unwrap()).unwrap().try_into().unwrap();
    let verified = proof.verify(&root).unwrap_or_else(|e| panic!("the proof does not verify: {e}"));
    let totals: Vec<u128> = publication["assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["liabilities"].as_str().unwrap().parse().unwrap())
        .collect();
    verified.check_totals(&proof.params, &totals).unwrap();
    proof
}

async fn reserves_end_to_end(db: Db) {
    let server = Server::start_with_config(&db, CONFIG).await;
    let root = server.api();
    let ctx = Ctx { api: root.clone(), maildir: db.maildir() };
    root.post("/v1/accounts", &json!({"id": FUNDING.to_string(), "asset": "BTC", "flags": []})).await.expect(201);

    let mut alice = Customer::register(&ctx, "alice").await;
    let mut bob = Customer::register(&ctx, "bob").await;
    let mut carol = Customer::register(&ctx, "carol").await;
    for c in [&mut alice, &mut bob, &mut carol] {
        c.sign_in().await;
    }
    credit(&ctx, &alice, 1, 150_000_000).await;
    credit(&ctx, &bob, 2, 2_500).await;

    // A snapshot, published.
    let created = root.post("/v1/reserves", &json!({"name": "snap-1"})).await;
    let publication = created.expect(201).clone();
    assert_eq!(publication["snapshot"], json!("snap-1"));
    assert_eq!(publication["form"], json!("revealed_sums"));
    assert!(publication["height"].as_u64().unwrap() >= 10, "{publication}");
    let btc = publication["assets"].as_array().unwrap().iter().find(|a| a["code"] == "BTC").unwrap().clone();
    assert_eq!(btc["liabilities"], json!("150002500"));
    assert!(!publication.to_string().contains("\"users\""), "the number of users is not published");
    let public = server.api().get_public("/v1/reserves/snap-1").await;
    assert_eq!(public.expect(200), &publication);
    assert_eq!(server.api().get_public("/v1/reserves").await.expect(200)[0], publication);

    // The verifier page and its script are served as they are in the repository.
    let page = root.request(reqwest::Method::GET, "/reserves/verify").send().await.unwrap();
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    assert!(page.text().await.unwrap().contains("./verify.js"));
    let script = root.request(reqwest::Method::GET, "/reserves/verify.js").send().await.unwrap();
    assert_eq!(script.headers()["content-type"], "text/javascript; charset=utf-8");
    assert_eq!(script.text().await.unwrap(), include_str!("../../verify/web/verify.js"));

    // Each customer's proof verifies against the published root and totals.
    let proof_a = alice.get("/v1/reserves/snap-1/proof").await.expect(200).clone();
    let proof = verify(&proof_a, &publication);
    assert_eq!(String::from_utf8(proof.user_id.clone()).unwrap(), alice.handle);
    assert_eq!(proof_a["balances"], json!([{"asset": "BTC", "amount": "150000000"}]));
    let proof_b = bob.get("/v1/reserves/snap-1/proof?reveal=all").await.expect(200).clone();
    assert_eq!(verify(&proof_b, &publication).revealed.len(), 1);
    carol.get("/v1/reserves/snap-1/proof").await.assert_error(404, "not_in_snapshot");
    alice.get("/v1/reserves/snap-1/proof?reveal=everything").await.assert_error(400, "invalid_query");
    alice.get("/v1/reserves/nope/proof").await.assert_error(404, "not_found");
    alice.get("/v1/reserves/bad%20name/proof").await.assert_error(400, "invalid_name");

    // Operators see the same proof; auditors recompute the root from the leaf file.
    let by_staff = root.get(&format!("/v1/reserves/snap-1/proofs/{}", alice.handle)).await.expect(200).clone();
    assert_eq!(by_staff["proof"], proof_a["proof"]);
    root.get("/v1/reserves/snap-1/proofs/xyz").await.assert_error(400, "invalid_customer");
    let response = root.request(reqwest::Method::GET, "/v1/reserves/snap-1/leaves").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let leaves = LeafFile::decode(&response.bytes().await.unwrap()).unwrap();
    let recomputed = leaves.recompute().unwrap();
    assert_eq!(hex::encode(recomputed.root), publication["root"].as_str().unwrap());
    assert_eq!(recomputed.users, 2);

    // Refusals: a name taken or malformed; staff without the permission.
    root.post("/v1/reserves", &json!({"name": "snap-1"})).await.assert_error(409, "snapshot_exists");
    root.post("/v1/reserves", &json!({"name": "a/b"})).await.assert_error(400, "invalid_name");
    root.post("/v1/reserves", &json!({"nmae": "x"})).await.assert_error(400, "invalid_request");
    let (admin, admin2) = two_administrators(&server).await;
    let (_, support) = staff_member(&admin, &admin2, &server, "helper", "support").await;
    support.post("/v1/reserves", &json!({})).await.assert_error(403, "forbidden");
    support.get("/v1/reserves/snap-1/leaves").await.assert_error(403, "forbidden");

    // A later snapshot: the old proof does not verify against its root; the old snapshot's proof is rebuilt from
    // what it stored and is the same as before.
    credit(&ctx, &carol, 3, 7).await;
    let later = root.post("/v1/reserves", &json!({})).await.expect(201).clone();
    assert!(later["snapshot"].as_str().unwrap().starts_with("ledger-"), "{later}");
    assert_eq!(
        later["assets"].as_array().unwrap().iter().find(|a| a["code"] == "BTC").unwrap()["liabilities"],
        json!("150002507")
    );
    let old = Proof::decode(&hex::decode(proof_a["proof"].as_str().unwrap()).unwrap()).unwrap();
    let later_root: [u8; 32] = hex::decode(later["root"].as_str().unwrap()).unwrap().try_into().unwrap();
    assert!(old.verify(&later_root).is_err());
    let name = later["snapshot"].as_str().unwrap();
    verify(&carol.get(&format!("/v1/reserves/{name}/proof")).await.expect(200).clone(), &later);
    let again = alice.get("/v1/reserves/snap-1/proof").await.expect(200).clone();
    assert_eq!(again["proof"], proof_a["proof"]);

    // Audited.
    let outcomes =
        |entries: Vec<Value>| entries.iter().map(|e| e["outcome"].as_str().unwrap().to_owned()).collect::<Vec<_>>();
    assert_eq!(outcomes(ctx.audit("reserves.snapshot").await), ["success", "denied", "success"], "two, and a refusal");
    assert_eq!(outcomes(ctx.audit("reserves.leaves.read").await), ["success", "denied"]);

    // The operators' commands.
    let dir = tempfile::tempdir().unwrap();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rampart"))
            .arg("reserves")
            .args(args)
            .args(["--server", &root.base, "--token", &root.token])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let proof_file = dir.path().join("alice.json");
    let (ok, _, err) =
        cli(&["proof", "--snapshot", "snap-1", "--customer", &alice.handle, "--out", proof_file.to_str().unwrap()]);
    assert!(ok, "{err}");
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&proof_file).unwrap()).unwrap();
    assert_eq!(written["proof"], proof_a["proof"]);
    let leaves_file = dir.path().join("leaves.bin");
    let (ok, out, err) = cli(&["leaves", "--snapshot", "snap-1", "--out", leaves_file.to_str().unwrap()]);
    assert!(ok && out.contains("bytes written"), "{out}{err}");
    assert_eq!(LeafFile::decode(&std::fs::read(&leaves_file).unwrap()).unwrap(), leaves);
    let (ok, out, err) = cli(&["snapshot", "--name", "snap-cli"]);
    assert!(ok, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["snapshot"], json!("snap-cli"));
    let (ok, out, _) = cli(&["list"]);
    assert!(ok && out.lines().count() == 3, "{out}");
    let (ok, _, err) = cli(&["proof", "--snapshot", "a/b", "--customer", &alice.handle]);
    assert!(!ok && err.contains("not a name"), "{err}");
    let (ok, _, err) = cli(&["snapshot", "--name", "snap-cli"]);
    assert!(!ok && err.contains("409 snapshot_exists"), "{err}");
}

on_both_backends!(reserves_end_to_end);

on_both_backends!(a_slow_build_finishes_in_the_background);

/// A tree that takes longer than `[reserves] build_wait_ms` is answered `202` with its name and recorded when built
/// (here the wait is zero, so every snapshot is); the exchange's name comes from the configuration.
async fn a_slow_build_finishes_in_the_background(db: Db) {
    let config = format!("{CONFIG}\n[reserves]\nexchange = \"Example Exchange\"\nbuild_wait_ms = 0\nheight_min = 12\n");
    let server = Server::start_with_config(&db, &config).await;
    let root = server.api();
    let ctx = Ctx { api: root.clone(), maildir: db.maildir() };
    root.post("/v1/accounts", &json!({"id": FUNDING.to_string(), "asset": "BTC", "flags": []})).await.expect(201);
    let mut alice = Customer::register(&ctx, "alice").await;
    alice.sign_in().await;
    credit(&ctx, &alice, 1, 70_000).await;
    let accepted = root.post("/v1/reserves", &json!({"name": "later"})).await;
    assert_eq!(accepted.expect(202).clone(), json!({"snapshot": "later", "state": "building"}));
    let mut published = None;
    for _ in 0..200 {
        let answer = root.get_public("/v1/reserves/later").await;
        if answer.status == 200 {
            published = Some(answer.body.clone());
            break;
        }
        answer.assert_error(404, "not_found");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let published = published.expect("the snapshot recorded");
    assert_eq!((published["exchange"].clone(), published["height"].clone()), (json!("Example Exchange"), json!(12)));
    assert_eq!(published["assets"][0]["liabilities"], json!("70000"));
    let proof = alice.get("/v1/reserves/later/proof").await.expect(200).clone();
    assert_eq!(verify(&proof, &published).params.exchange, "Example Exchange");
    // The name is taken, whether the tree is built or not.
    root.post("/v1/reserves", &json!({"name": "later"})).await.assert_error(409, "snapshot_exists");
}

on_both_backends!(a_private_snapshot_proves_without_showing_anyone_else);

/// The private form through the service: published totals, a publication anyone checks once, each customer's proof
/// checked with it, no other customer's balance in any proof, no leaf file.
async fn a_private_snapshot_proves_without_showing_anyone_else(db: Db) {
    use rampart_verify::private::PrivateProof;
    use rampart_verify::publication::PrivatePublication;
    let server = Server::start_with_config(&db, CONFIG).await;
    let root = server.api();
    let ctx = Ctx { api: root.clone(), maildir: db.maildir() };
    root.post("/v1/accounts", &json!({"id": FUNDING.to_string(), "asset": "BTC", "flags": []})).await.expect(201);
    let mut alice = Customer::register(&ctx, "alice").await;
    let mut bob = Customer::register(&ctx, "bob").await;
    for c in [&mut alice, &mut bob] {
        c.sign_in().await;
    }
    // Bob's balance is a number that would stand out in any byte string.
    const BOB: u64 = 0x0123_4567_89ab;
    credit(&ctx, &alice, 1, 150_000_000).await;
    credit(&ctx, &bob, 2, u128::from(BOB)).await;
    root.post("/v1/reserves", &json!({"name": "p1", "form": "sideways"})).await.assert_error(400, "invalid_form");
    let published = root.post("/v1/reserves", &json!({"name": "p1", "form": "private"})).await.expect(201).clone();
    assert_eq!(published["form"], json!("private"));
    assert_eq!(published["assets"][0]["liabilities"], json!((150_000_000 + BOB).to_string()));
    let publication = PrivatePublication::decode(&public_bytes(&root.base, "/v1/reserves/p1/publication").await)
        .expect("a publication");
    let root_hash: [u8; 32] = hex::decode(published["root"].as_str().unwrap()).unwrap().try_into().unwrap();
    let checked = publication.verify(&root_hash).expect("the publication verifies once");
    assert_eq!(publication.totals[0], 150_000_000 + BOB);

    let view = alice.get("/v1/reserves/p1/proof").await.expect(200).clone();
    let proof_bytes = hex::decode(view["proof"].as_str().unwrap()).unwrap();
    let proof = PrivateProof::decode(&proof_bytes).expect("a private proof");
    proof.verify(&checked).expect("alice's proof verifies with the publication");
    assert_eq!(proof.balances, vec![(0, 150_000_000)]);
    assert!(!proof_bytes.windows(8).any(|w| w == BOB.to_le_bytes() || w == BOB.to_be_bytes()));
    // Another snapshot's publication does not serve it.
    root.post("/v1/reserves", &json!({"name": "p2", "form": "private"})).await.expect(201);
    let other = PrivatePublication::decode(&public_bytes(&root.base, "/v1/reserves/p2/publication").await).unwrap();
    let other_root = other.root;
    assert!(proof.verify(&other.verify(&other_root).unwrap()).is_err());
    // No leaf file (it would show every balance); a revealed snapshot has no binary publication.
    root.get("/v1/reserves/p1/leaves").await.assert_error(409, "no_leaf_file");
    root.post("/v1/reserves", &json!({"name": "r1"})).await.expect(201);
    root.get_public("/v1/reserves/r1/publication").await.assert_error(409, "not_private");
}

/// The bytes of a public binary answer (`200` expected).
async fn public_bytes(base: &str, path: &str) -> Vec<u8> {
    let answer = reqwest::get(format!("{base}{path}")).await.expect("the service answers");
    assert_eq!(answer.status(), 200, "{path}");
    answer.bytes().await.expect("a body").to_vec()
}
