//! Support for the end-to-end tests: the real `rampart` binary started on port 0 against a fresh database, and a
//! small HTTP client that checks what every answer must carry.

use std::collections::VecDeque;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rampart_store::testing;
use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// How long the server may take to start: migrate its database and bind its port.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Lines of the server's output kept to explain a failure.
const LOG_LINES_KEPT: usize = 200;

/// The smallest units of one BTC.
pub const BTC_UNITS: u128 = 100_000_000;

/// Where a test's server keeps its ledger: a fresh SQLite file in a temporary data directory, or a fresh
/// PostgreSQL database (the data directory then holds nothing of the ledger).
pub struct Db {
    data_dir: tempfile::TempDir,
    database_url: Option<String>,
}

impl Db {
    /// A fresh, empty SQLite database: the default `rampart.db` inside a new data directory.
    pub fn sqlite() -> Db {
        Db { data_dir: tempfile::tempdir().expect("a temporary directory"), database_url: None }
    }

    /// A fresh, empty PostgreSQL database, or `None` (after a loud notice) when no test server is configured.
    pub async fn postgres(test_name: &str) -> Option<Db> {
        let url = testing::fresh_postgres_url(test_name).await?;
        Some(Db { data_dir: tempfile::tempdir().expect("a temporary directory"), database_url: Some(url) })
    }

    /// `sqlite` or `postgres`, as `/readyz` names it.
    pub fn backend(&self) -> &'static str {
        if self.database_url.is_some() { "postgres" } else { "sqlite" }
    }

    fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }
}

/// Runs an async test body on a fresh SQLite database and, if configured, on a fresh PostgreSQL database:
/// `on_both_backends!(name)` makes `mod name { fn sqlite(); fn postgres(); }` calling `async fn name(db: Db)`.
macro_rules! on_both_backends {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(crate::common::Db::sqlite()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(db) = crate::common::Db::postgres(concat!(stringify!($name), "::postgres")).await else {
                    return;
                };
                super::$name(db).await;
            }
        }
    };
}

/// The last lines the server wrote, on stdout and stderr, to explain a failure.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<VecDeque<String>>>);

impl Log {
    fn push(&self, line: String) {
        let mut lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() == LOG_LINES_KEPT {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// The kept lines, one per line.
    pub fn tail(&self) -> String {
        let lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().map(String::as_str).collect::<Vec<_>>().join("\n")
    }
}

/// Reads `pipe` line by line until it closes, keeping the lines in `log` and handing each to `lines` while anyone
/// listens, so that the child never blocks on a full pipe.
fn drain(pipe: impl AsyncRead + Unpin + Send + 'static, log: Log, lines: Option<mpsc::UnboundedSender<String>>) {
    tokio::spawn(async move {
        let mut reader = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            log.push(line.clone());
            if let Some(tx) = &lines {
                // The receiver goes away once the server has started; the draining goes on.
                let _ = tx.send(line);
            }
        }
    });
}

/// A running `rampart serve --dev` and a client for it (through `Deref`). Dropping it kills the process.
pub struct Server {
    child: Child,
    api: Api,
}

impl std::ops::Deref for Server {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

/// A client of one server, cheap to clone into tasks.
#[derive(Clone)]
pub struct Api {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The development root token the server printed.
    pub token: String,
    /// A client with a connection pool, shared by every clone.
    pub client: reqwest::Client,
    /// The server's recent output.
    pub log: Log,
}

/// An answer: status, headers and the body parsed as JSON (`Value::Null` when it is not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Answer {
    /// The error code of an error answer, after checking the error shape `{"error": {"code", "message"}}`.
    #[track_caller]
    pub fn error_code(&self) -> &str {
        let error = &self.body["error"];
        let code = error["code"].as_str();
        let message = error["message"].as_str();
        assert!(
            code.is_some_and(|c| !c.is_empty()) && message.is_some_and(|m| !m.is_empty()),
            "expected the error shape {{\"error\":{{\"code\",\"message\"}}}}, got {} {:?}",
            self.status,
            self.text
        );
        let content_type = self.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert!(content_type.starts_with("application/json"), "an error answer is JSON, not {content_type:?}");
        code.unwrap_or_default()
    }

    /// Asserts the status and the error code of an error answer.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "expected {status} {code}, got {} {}", self.status, self.text);
        assert_eq!(self.error_code(), code, "expected {status} {code}, got {} {}", self.status, self.text);
    }

    /// Asserts the status and returns the body.
    #[track_caller]
    pub fn expect(&self, status: u16) -> &Value {
        assert_eq!(self.status.as_u16(), status, "expected {status}, got {} {}", self.status, self.text);
        &self.body
    }

    /// A string field of the body.
    #[track_caller]
    pub fn str(&self, field: &str) -> &str {
        self.body[field].as_str().unwrap_or_else(|| panic!("no string field {field:?} in {}", self.text))
    }
}

impl Server {
    /// Starts `rampart serve --dev` on port 0 over `db`, and waits (at most [`START_TIMEOUT`]) for it to listen.
    pub async fn start(db: &Db) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_rampart"));
        command.args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"]).arg(db.data_dir());
        if let Some(url) = &db.database_url {
            command.arg("--database-url").arg(url);
        }
        // Nothing from the environment of the test run may change the server under test.
        for key in ["RUST_LOG", "RAMPART_CONFIG"] {
            command.env_remove(key);
        }
        for (key, _) in std::env::vars() {
            if key.starts_with("RAMPART_") {
                command.env_remove(key);
            }
        }
        command.env("RAMPART_LOG", "info").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        command.kill_on_drop(true);
        let mut child = command.spawn().expect("cannot start the rampart binary");

        let log = Log::default();
        let (tx, mut lines) = mpsc::unbounded_channel();
        drain(child.stdout.take().expect("piped stdout"), log.clone(), Some(tx));
        drain(child.stderr.take().expect("piped stderr"), log.clone(), None);

        let started = tokio::time::timeout(START_TIMEOUT, async {
            let mut token = None;
            while let Some(line) = lines.recv().await {
                if let Some(t) = line.trim().strip_prefix("root token:") {
                    token = Some(t.trim().to_owned());
                }
                if let Some(address) = line.strip_prefix("listening on ") {
                    return Some((address.trim().to_owned(), token));
                }
            }
            None
        })
        .await;
        let (base, token) = match started {
            Ok(Some((base, Some(token)))) => (base, token),
            Ok(Some((_, None))) => panic!("the server printed no root token:\n{}", log.tail()),
            Ok(None) => {
                let status = child.wait().await;
                panic!("the server exited before listening ({status:?}):\n{}", log.tail())
            }
            Err(_) => panic!("the server did not listen within {START_TIMEOUT:?}:\n{}", log.tail()),
        };
        assert!(
            token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()),
            "the root token is 64 hex digits, not {token:?}"
        );
        assert!(base.starts_with("http://127.0.0.1:"), "unexpected address {base:?}");
        // No connection reuse: the server closes a connection after refusing a request whose body it did not read
        // (a 401, a wrong content-type), and a pooled client could race that close with its next request.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(60))
            .build()
            .expect("an HTTP client");
        Server { child, api: Api { base, token, client, log } }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the server is running")
    }

    /// Kills the process with SIGKILL, as a crash or a power cut would, and waits for it to die.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("SIGKILL the server");
    }

    /// Sends SIGTERM and waits at most `limit` for the process to exit.
    pub async fn terminate(mut self, limit: Duration) -> ExitStatus {
        let status =
            std::process::Command::new("kill").arg("-TERM").arg(self.pid().to_string()).status().expect("run kill(1)");
        assert!(status.success(), "kill -TERM failed: {status}");
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.expect("wait for the server"),
            Err(_) => panic!("the server did not exit within {limit:?} of SIGTERM:\n{}", self.log.tail()),
        }
    }

    /// A clone of the client, for tasks.
    pub fn api(&self) -> Api {
        self.api.clone()
    }
}

impl Api {
    /// A request to `path` with the root token.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token)
    }

    /// Sends a request and reads the answer, checking what every answer carries: an `x-request-id`, and never a
    /// 500.
    pub async fn send(&self, request: RequestBuilder) -> Answer {
        let response = request.send().await.unwrap_or_else(|e| panic!("request failed: {e}\n{}", self.log.tail()));
        let answer = read(response).await.unwrap_or_else(|e| panic!("reading an answer failed: {e}"));
        assert!(
            answer.headers.get("x-request-id").is_some_and(|v| !v.is_empty()),
            "every answer carries an x-request-id: {answer:?}"
        );
        assert!(!answer.status.is_server_error(), "server error: {answer:?}\n{}", self.log.tail());
        answer
    }

    /// Sends a request whose answer may never come (the server being killed meanwhile): `None` then.
    pub async fn try_send(&self, request: RequestBuilder) -> Option<Answer> {
        read(request.send().await.ok()?).await.ok()
    }

    /// `GET path` with the token.
    pub async fn get(&self, path: &str) -> Answer {
        self.send(self.request(Method::GET, path)).await
    }

    /// `POST path` with the token and a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Answer {
        self.send(self.request(Method::POST, path).json(body)).await
    }

    /// Creates an account of BTC, asserting that it was created.
    pub async fn create_account(&self, id: u128, flags: &[&str]) -> Value {
        let answer =
            self.post("/v1/accounts", &serde_json::json!({"id": id.to_string(), "asset": "BTC", "flags": flags})).await;
        answer.expect(201).clone()
    }

    /// Posts a transfer of BTC.
    pub async fn transfer(&self, id: u128, debit: u128, credit: u128, units: u128) -> Answer {
        self.post("/v1/transfers", &transfer(id, debit, credit, units)).await
    }

    /// An account, which must exist.
    pub async fn account(&self, id: u128) -> Value {
        self.get(&format!("/v1/accounts/{id}")).await.expect(200).clone()
    }

    /// Asserts an account's balances, each in smallest units.
    pub async fn assert_balances(&self, id: u128, expected: Balances) {
        let account = self.account(id).await;
        assert_eq!(Balances::of(&account), expected, "balances of account {id}: {account}");
    }

    /// Asserts that `GET /v1/ledger/check` finds the ledger balanced, and returns the report.
    pub async fn assert_balanced(&self) -> Value {
        let check = self.get("/v1/ledger/check").await;
        let report = check.expect(200).clone();
        assert_eq!(report["balanced"], Value::Bool(true), "the ledger is not balanced: {report}");
        assert!(report["violation"].is_null(), "{report}");
        report
    }

    /// Asserts that no transfer has this id.
    pub async fn assert_no_transfer(&self, id: u128) {
        self.get(&format!("/v1/transfers/{id}")).await.assert_error(404, "not_found");
    }
}

async fn read(response: reqwest::Response) -> reqwest::Result<Answer> {
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await?;
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Ok(Answer { status, headers, body, text })
}

/// The balances of an account in smallest units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Balances {
    pub debits_pending: u128,
    pub debits_posted: u128,
    pub credits_pending: u128,
    pub credits_posted: u128,
    pub available: u128,
}

impl Balances {
    /// The balances of an account view.
    #[track_caller]
    pub fn of(account: &Value) -> Balances {
        let field = |name: &str| units(account[name].as_str().unwrap_or_else(|| panic!("no {name} in {account}")));
        Balances {
            debits_pending: field("debits_pending"),
            debits_posted: field("debits_posted"),
            credits_pending: field("credits_pending"),
            credits_posted: field("credits_posted"),
            available: field("available"),
        }
    }
}

/// A BTC amount in smallest units as the decimal string the API takes, written with all eight decimals
/// ("0.00000150"), which the API must accept as well as the shortest form.
pub fn btc(units: u128) -> String {
    format!("{}.{:08}", units / BTC_UNITS, units % BTC_UNITS)
}

/// A BTC decimal string of the API ("0.0000015") in smallest units; panics on anything else.
#[track_caller]
pub fn units(s: &str) -> u128 {
    let (integer, fraction) = s.split_once('.').unwrap_or((s, ""));
    assert!(
        !integer.is_empty()
            && fraction.len() <= 8
            && integer.bytes().chain(fraction.bytes()).all(|b| b.is_ascii_digit()),
        "not a BTC amount: {s:?}"
    );
    let integer: u128 = integer.parse().unwrap();
    let fraction: u128 = format!("{fraction:0<8}").parse().unwrap();
    integer * BTC_UNITS + fraction
}

/// A posted transfer of BTC.
pub fn transfer(id: u128, debit: u128, credit: u128, units: u128) -> Value {
    serde_json::json!({
        "id": id.to_string(),
        "debit_account_id": debit.to_string(),
        "credit_account_id": credit.to_string(),
        "asset": "BTC",
        "amount": btc(units),
    })
}

/// A pending transfer (a hold) of BTC, expiring after `timeout_s` seconds (0: never).
pub fn hold(id: u128, debit: u128, credit: u128, units: u128, timeout_s: u32) -> Value {
    serde_json::json!({
        "id": id.to_string(),
        "debit_account_id": debit.to_string(),
        "credit_account_id": credit.to_string(),
        "asset": "BTC",
        "amount": btc(units),
        "flags": ["pending"],
        "timeout_s": timeout_s,
    })
}

/// Posts (`post`) or voids a hold; `units` of `None` posts or voids the whole hold.
pub fn resolve(id: u128, pending_id: u128, units: Option<u128>, post: bool) -> Value {
    let mut body = serde_json::json!({
        "id": id.to_string(),
        "pending_id": pending_id.to_string(),
        "asset": "BTC",
        "flags": [if post { "post_pending_transfer" } else { "void_pending_transfer" }],
    });
    if let Some(units) = units {
        body["amount"] = Value::String(btc(units));
    }
    body
}
