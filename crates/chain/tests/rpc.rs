//! The Bitcoin Core adapter against recorded answers (`testdata/rpc`, hand-written in Core 26's format: no node is
//! reachable here), served by a small HTTP server that checks each call's method, parameters and credentials.

use std::str::FromStr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bitcoin::consensus::encode::serialize_hex;
use bitcoin::{Block, BlockHash, Network, Transaction};
use rampart_chain::{BitcoinCoreRpc, Chain, ChainError, RpcAuth};
use serde_json::{Value, json};

/// `rampart:s3cret` and `__cookie__:9f2c6a1d0b7e4c3a` in basic authentication (base64 worked out by hand).
const USER_PASS: &str = "Basic cmFtcGFydDpzM2NyZXQ=";
const COOKIE: &str = "Basic X19jb29raWVfXzo5ZjJjNmExZDBiN2U0YzNh";
const PASSWORD: &str = "s3cret";

const TIP_HASH: &str = "6cf01562d2f365a89bc77256411aae92a9ae63d30ab573ca0755cf920db58d03";
const PARENT_HASH: &str = "3ed80d128d895b92de83e0e5e13343eff9feff8467672d50b3f8ab5ddaa3c640";

struct Route {
    method: &'static str,
    params: Value,
    status: u16,
    content_type: &'static str,
    body: String,
}

struct Fake {
    authorization: &'static str,
    routes: Vec<Route>,
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/testdata/rpc/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// A recorded answer sent with Core's status: 200 for a result, 500 for an RPC error.
fn recorded(method: &'static str, params: Value, name: &str) -> Route {
    let body = fixture(name);
    let answer: Value = serde_json::from_str(&body).unwrap();
    let status = if answer["error"].is_null() { 200 } else { 500 };
    Route { method, params, status, content_type: "application/json", body }
}

fn raw(method: &'static str, params: Value, status: u16, body: &str) -> Route {
    Route { method, params, status, content_type: "text/html", body: body.into() }
}

async fn handle(State(fake): State<Arc<Fake>>, headers: HeaderMap, body: String) -> Response {
    if headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) != Some(fake.authorization) {
        // What Core answers to a bad login: 401 and no body.
        return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Basic realm=\"jsonrpc\"")], "").into_response();
    }
    let Ok(request) = serde_json::from_str::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "the request is not JSON").into_response();
    };
    if request["jsonrpc"] != "1.0" || !request["id"].is_u64() || !request["params"].is_array() {
        return (StatusCode::BAD_REQUEST, "not a JSON-RPC 1.0 request with an id and positional parameters")
            .into_response();
    }
    let id = &request["id"];
    let method = request["method"].as_str().unwrap_or_default();
    let params = &request["params"];
    match fake.routes.iter().find(|r| r.method == method && r.params == *params) {
        Some(route) => {
            let body = route.body.trim_end();
            let body = match body.strip_suffix(",\"id\":1}") {
                Some(start) => format!("{start},\"id\":{id}}}"),
                None => body.to_owned(),
            };
            let status = StatusCode::from_u16(route.status).unwrap();
            (status, [(header::CONTENT_TYPE, route.content_type)], body).into_response()
        }
        None => {
            let message = format!("unexpected call {method} {params}");
            let answer = json!({"result": null, "error": {"code": -32601, "message": message}, "id": id});
            (StatusCode::NOT_FOUND, answer.to_string()).into_response()
        }
    }
}

/// Serves `fake` on a free loopback port; answers its URL.
async fn serve(fake: Fake) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let app = Router::new().route("/", post(handle)).with_state(Arc::new(fake));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

fn user_pass(password: &str) -> RpcAuth {
    RpcAuth::UserPass { user: "rampart".into(), password: password.into() }
}

async fn regtest_node(routes: Vec<Route>) -> BitcoinCoreRpc {
    let url = serve(Fake { authorization: USER_PASS, routes }).await;
    BitcoinCoreRpc::new(url, user_pass(PASSWORD), Network::Regtest).unwrap()
}

/// The recorded block and the Taproot spend it confirms.
fn recorded_block() -> (Block, Transaction) {
    let answer: Value = serde_json::from_str(&fixture("getblock_raw.json")).unwrap();
    let block: Block = bitcoin::consensus::encode::deserialize_hex(answer["result"].as_str().unwrap()).unwrap();
    let tx = block.txdata[1].clone();
    (block, tx)
}

#[tokio::test]
async fn the_tip_blocks_and_fee_rate_come_from_the_node() {
    let tip = BlockHash::from_str(TIP_HASH).unwrap();
    let node = regtest_node(vec![
        recorded("getblockchaininfo", json!([]), "getblockchaininfo.json"),
        recorded("getblockhash", json!([2]), "getblockhash.json"),
        recorded("getblockhash", json!([3]), "getblockhash_out_of_range.json"),
        recorded("getblock", json!([TIP_HASH, 0]), "getblock_raw.json"),
        // A node that answers with another block than the one asked for.
        recorded("getblock", json!([PARENT_HASH, 0]), "getblock_raw.json"),
        recorded("getblock", json!(["00".repeat(32), 0]), "getblock_not_found.json"),
        recorded("estimatesmartfee", json!([6]), "estimatesmartfee.json"),
    ])
    .await;
    assert_eq!(node.network(), Network::Regtest);
    assert_eq!(node.tip().await, Ok((2, tip)));
    assert_eq!(node.block_hash(2).await, Ok(Some(tip)));
    assert_eq!(node.block_hash(3).await, Ok(None));
    let block = node.block(&tip).await.unwrap();
    assert_eq!(block.block_hash(), tip);
    assert_eq!(block.header.prev_blockhash, BlockHash::from_str(PARENT_HASH).unwrap());
    assert!(block.check_merkle_root() && block.check_witness_commitment());
    assert_eq!(block.txdata.len(), 2);
    assert!(block.txdata[1].input[0].witness.len() == 1, "the Taproot key-path witness survived decoding");
    let parent = BlockHash::from_str(PARENT_HASH).unwrap();
    assert!(matches!(node.block(&parent).await, Err(ChainError::Invalid(m)) if m.contains("asked for")));
    let unknown = BlockHash::from_str(&"00".repeat(32)).unwrap();
    assert_eq!(node.block(&unknown).await, Err(ChainError::UnknownBlock(unknown)));
    // 0.00012345 BTC/kvB = 12.345 sat/vB, rounded up.
    assert_eq!(node.fee_rate().await, Ok(13));
    // A call the node does not know is an RPC error with Core's code.
    assert!(matches!(node.block_hash(4).await, Err(ChainError::Rpc { code: -32601, .. })));
}

#[tokio::test]
async fn broadcasts_and_mempool_checks_are_accepted_or_rejected_with_cores_reason() {
    let (_, tx) = recorded_block();
    let hex = serialize_hex(&tx);
    let accepting = regtest_node(vec![
        recorded("sendrawtransaction", json!([hex]), "sendrawtransaction.json"),
        recorded("testmempoolaccept", json!([[hex]]), "testmempoolaccept_allowed.json"),
    ])
    .await;
    assert_eq!(accepting.broadcast(&tx).await, Ok(tx.compute_txid()));
    assert_eq!(accepting.test_accept(&tx).await, Ok(()));

    let refusing = regtest_node(vec![
        recorded("sendrawtransaction", json!([hex]), "sendrawtransaction_min_relay_fee.json"),
        recorded("testmempoolaccept", json!([[hex]]), "testmempoolaccept_rejected.json"),
    ])
    .await;
    assert_eq!(refusing.broadcast(&tx).await, Err(ChainError::Rejected("min relay fee not met, 100 < 111".into())));
    assert_eq!(refusing.test_accept(&tx).await, Err(ChainError::Rejected("min relay fee not met".into())));

    // An answer about another transaction is not believed.
    let mut other = tx.clone();
    other.lock_time = bitcoin::absolute::LockTime::from_consensus(1);
    let confused = regtest_node(vec![
        recorded("sendrawtransaction", json!([serialize_hex(&other)]), "sendrawtransaction.json"),
        recorded("testmempoolaccept", json!([[serialize_hex(&other)]]), "testmempoolaccept_allowed.json"),
    ])
    .await;
    assert!(matches!(confused.broadcast(&other).await, Err(ChainError::Invalid(_))));
    assert!(matches!(confused.test_accept(&other).await, Err(ChainError::Invalid(_))));
}

#[tokio::test]
async fn without_enough_data_the_fee_rate_falls_back_to_one_sat_per_vbyte() {
    let node = regtest_node(vec![recorded("estimatesmartfee", json!([6]), "estimatesmartfee_insufficient.json")]).await;
    assert_eq!(node.fee_rate().await, Ok(1));
}

#[tokio::test]
async fn a_node_on_another_network_is_refused() {
    let node = regtest_node(vec![recorded("getblockchaininfo", json!([]), "getblockchaininfo_main.json")]).await;
    assert_eq!(node.tip().await, Err(ChainError::WrongNetwork { expected: Network::Regtest, found: "main".into() }));
}

#[tokio::test]
async fn the_cookie_file_logs_in_and_bad_credentials_are_unauthorised() {
    let routes = || vec![recorded("getblockchaininfo", json!([]), "getblockchaininfo.json")];
    let dir = tempfile::tempdir().unwrap();
    let cookie = dir.path().join(".cookie");
    std::fs::write(&cookie, "__cookie__:9f2c6a1d0b7e4c3a").unwrap();
    let url = serve(Fake { authorization: COOKIE, routes: routes() }).await;
    let node = BitcoinCoreRpc::new(url.clone(), RpcAuth::Cookie(cookie.clone()), Network::Regtest).unwrap();
    assert_eq!(node.tip().await.unwrap().0, 2);
    // A restarted node writes a new cookie; the old one no longer logs in.
    std::fs::write(&cookie, "__cookie__:0000000000000000").unwrap();
    assert_eq!(node.tip().await, Err(ChainError::Unauthorized));
    let missing = BitcoinCoreRpc::new(url.clone(), RpcAuth::Cookie(dir.path().join("none")), Network::Regtest).unwrap();
    assert!(matches!(missing.tip().await, Err(ChainError::Unavailable(m)) if m.contains("cookie")));
    std::fs::write(&cookie, "no colon here").unwrap();
    assert!(matches!(node.tip().await, Err(ChainError::Invalid(_))));

    let url = serve(Fake { authorization: USER_PASS, routes: routes() }).await;
    let wrong = BitcoinCoreRpc::new(url, user_pass("wrong"), Network::Regtest).unwrap();
    let error = wrong.tip().await.unwrap_err();
    assert_eq!(error, ChainError::Unauthorized);
    // The password shows nowhere: not in the client, its credentials, or its errors.
    let auth = user_pass(PASSWORD);
    for text in [format!("{auth:?}"), format!("{wrong:?}"), error.to_string(), format!("{error:?}")] {
        assert!(!text.contains(PASSWORD), "{text}");
    }
}

#[tokio::test]
async fn broken_answers_and_an_absent_node_are_clear_errors() {
    let node = regtest_node(vec![
        raw("getblockchaininfo", json!([]), 200, "<html><body>It works!</body></html>"),
        raw("getblockhash", json!([1]), 503, "Work queue depth exceeded"),
        raw("getblockhash", json!([2]), 200, "{\"result\":\"not a hash\",\"error\":null,\"id\":1}"),
        raw("getblock", json!([TIP_HASH, 0]), 200, "{\"result\":\"00ff\",\"error\":null,\"id\":1}"),
        raw("estimatesmartfee", json!([6]), 200, "{\"result\":{\"feerate\":-1,\"blocks\":6},\"error\":null,\"id\":1}"),
        // An answer to some other request.
        raw("getblockhash", json!([5]), 200, &format!("{{\"result\":\"{TIP_HASH}\",\"error\":null,\"id\":999}}")),
    ])
    .await;
    assert!(matches!(node.tip().await, Err(ChainError::Invalid(m)) if m.contains("not JSON-RPC")));
    assert!(matches!(node.block_hash(1).await, Err(ChainError::Unavailable(m)) if m.contains("503")));
    assert!(matches!(node.block_hash(2).await, Err(ChainError::Invalid(_))));
    let tip = BlockHash::from_str(TIP_HASH).unwrap();
    assert!(matches!(node.block(&tip).await, Err(ChainError::Invalid(m)) if m.contains("does not decode")));
    assert!(matches!(node.fee_rate().await, Err(ChainError::Invalid(_))));
    assert!(matches!(node.block_hash(5).await, Err(ChainError::Invalid(m)) if m.contains("999")));

    // Nobody listening: unavailable, not a panic.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    drop(listener);
    let absent = BitcoinCoreRpc::new(url, user_pass(PASSWORD), Network::Regtest).unwrap();
    assert!(matches!(absent.tip().await, Err(ChainError::Unavailable(_))));
}

/// An answer made in the test: a result, or Core's RPC error with its code and status 500.
fn answer(method: &'static str, params: Value, result: Result<Value, (i64, &str)>) -> Route {
    let (status, body) = match result {
        Ok(result) => (200, json!({"result": result, "error": null, "id": 1})),
        Err((code, message)) => (500, json!({"result": null, "error": {"code": code, "message": message}, "id": 1})),
    };
    Route { method, params, status, content_type: "application/json", body: body.to_string() }
}

#[tokio::test]
async fn a_transactions_funding_outputs_come_from_getrawtransaction() {
    let (block, funding) = recorded_block();
    let unknown = bitcoin::Txid::from_str(&"11".repeat(32)).unwrap();
    let input = |txid: bitcoin::Txid, vout: u32| bitcoin::TxIn {
        previous_output: bitcoin::OutPoint { txid, vout },
        ..bitcoin::TxIn::default()
    };
    // A deposit paid from the recorded spend's output, from an output the node cannot find, and the coinbase's
    // kind of input that spends nothing.
    let deposit = Transaction {
        version: bitcoin::transaction::Version::TWO,
        lock_time: bitcoin::absolute::LockTime::ZERO,
        input: vec![
            input(funding.compute_txid(), 0),
            input(unknown, 3),
            bitcoin::TxIn { previous_output: bitcoin::OutPoint::null(), ..bitcoin::TxIn::default() },
            input(funding.compute_txid(), 7),
        ],
        output: vec![],
    };
    let node = regtest_node(vec![
        answer(
            "getrawtransaction",
            json!([funding.compute_txid().to_string(), false]),
            Ok(json!(serialize_hex(&funding))),
        ),
        answer(
            "getrawtransaction",
            json!([unknown.to_string(), false]),
            Err((-5, "No such mempool or blockchain transaction. Use gettransaction for wallet transactions.")),
        ),
    ])
    .await;
    let outputs = node.previous_outputs(&deposit).await.unwrap();
    assert_eq!(outputs, vec![Some(funding.output[0].clone()), None, None, None], "output 7 does not exist");

    // An answer about another transaction is not believed.
    let coinbase = block.txdata[0].clone();
    let confused = regtest_node(vec![answer(
        "getrawtransaction",
        json!([funding.compute_txid().to_string(), false]),
        Ok(json!(serialize_hex(&coinbase))),
    )])
    .await;
    let only_funding = Transaction { input: vec![input(funding.compute_txid(), 0)], ..deposit.clone() };
    assert!(
        matches!(confused.previous_outputs(&only_funding).await, Err(ChainError::Invalid(m)) if m.contains("asked for"))
    );
}
