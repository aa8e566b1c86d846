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

    /// The database's URL, for tests that open the store themselves.
    #[allow(dead_code)]
    pub fn database_url_or_sqlite(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| testing::sqlite_url(self.data_dir.path()))
    }

    /// `sqlite` or `postgres`, as `/readyz` names it.
    pub fn backend(&self) -> &'static str {
        if self.database_url.is_some() { "postgres" } else { "sqlite" }
    }

    fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// The Maildir a `--dev` server delivers its emails into when no `[mail]` table says otherwise: `mail` in the
    /// data directory (messages appear in its `new` folder).
    #[allow(dead_code)]
    pub fn maildir(&self) -> std::path::PathBuf {
        self.data_dir().join("mail")
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
        Server::start_with_config_file(db, None).await
    }

    /// Like [`Server::start`], with `toml` as the configuration file (`--config`), written into the data directory:
    /// `[identity]` limits, `[mail]` delivery and so on.
    #[allow(dead_code)]
    pub async fn start_with_config(db: &Db, toml: &str) -> Server {
        let path = db.data_dir().join("rampart.toml");
        std::fs::write(&path, toml).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        Server::start_with_config_file(db, Some(&path)).await
    }

    async fn start_with_config_file(db: &Db, config: Option<&Path>) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_rampart"));
        if let Some(path) = config {
            command.arg("--config").arg(path);
        }
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

    /// `PUT path` with the token and a JSON body.
    #[allow(dead_code)] // Not every test binary that includes this module puts.
    pub async fn put(&self, path: &str, body: &Value) -> Answer {
        self.send(self.request(Method::PUT, path).json(body)).await
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

// ---------------------------------------------------------------------------------------------------------------
// Production mode: `rampart init`, a server that starts sealed, unseal shares, and staff who enrol and sign in with a
// second factor computed as their authenticator app would. Not every test binary uses every helper.

#[allow(dead_code)]
pub mod customer;
pub mod withdrawal;

#[allow(dead_code)]
pub mod production {
    use std::collections::BTreeMap;
    use std::ffi::OsString;
    use std::path::PathBuf;
    use std::time::{SystemTime, UNIX_EPOCH};

    use serde_json::json;
    use tokio::sync::watch;
    use totp_rs::{Algorithm, Secret, TOTP};

    use super::*;

    /// Seconds per TOTP time step.
    pub const TOTP_STEP_S: u64 = 30;

    /// The shares `rampart init` makes by default, and how many of them unseal.
    pub const SHARES: usize = 5;
    pub const THRESHOLD: usize = 3;

    /// Removes from `command` everything of the test run's environment that would configure `rampart`.
    fn clean_env(command: &mut Command) {
        for key in ["RUST_LOG", "RAMPART_CONFIG"] {
            command.env_remove(key);
        }
        for (key, _) in std::env::vars() {
            if key.starts_with("RAMPART_") {
                command.env_remove(key);
            }
        }
    }

    /// The output of a finished `rampart` command.
    pub struct Run {
        pub success: bool,
        pub stdout: String,
        pub stderr: String,
    }

    /// Runs the `rampart` binary with `args` and `env` (and nothing of the test run's configuration) to its end.
    pub async fn rampart(args: &[OsString], env: &[(&str, &str)]) -> Run {
        let mut command = Command::new(env!("CARGO_BIN_EXE_rampart"));
        command.args(args);
        clean_env(&mut command);
        command.envs(env.iter().copied()).stdin(Stdio::null()).kill_on_drop(true);
        let output = tokio::time::timeout(START_TIMEOUT, command.output())
            .await
            .unwrap_or_else(|_| panic!("rampart {args:?} did not finish within {START_TIMEOUT:?}"))
            .expect("cannot run the rampart binary");
        Run {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// What `rampart init` printed and wrote.
    pub struct Init {
        /// Each first administrator's one-time enrolment code, by username.
        pub admin_codes: BTreeMap<String, String>,
        /// The share files, share N at index N - 1.
        pub share_files: Vec<PathBuf>,
        /// Everything it printed.
        pub stdout: String,
    }

    impl Init {
        /// The text of share `n` (1-based) as its file holds it, without the final newline.
        pub fn share(&self, n: usize) -> String {
            let path = &self.share_files[n - 1];
            let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            text.trim_end().to_owned()
        }

        /// The one-time enrolment code `rampart init` printed for administrator `name`.
        #[track_caller]
        pub fn code(&self, name: &str) -> &str {
            self.admin_codes.get(name).unwrap_or_else(|| panic!("init printed no code for {name}:\n{}", self.stdout))
        }
    }

    impl Db {
        /// The flags naming this database: `--data-dir D [--database-url U]`.
        pub fn flags(&self) -> Vec<OsString> {
            let mut flags = vec![OsString::from("--data-dir"), self.data_dir().as_os_str().to_owned()];
            if let Some(url) = &self.database_url {
                flags.extend([OsString::from("--database-url"), OsString::from(url)]);
            }
            flags
        }

        /// Runs `rampart init` on this database with the default shares (5, threshold 3) and administrators
        /// (`admin`, `admin2`), writing the shares into a new directory of the data directory.
        pub async fn init(&self) -> Init {
            let share_dir = self.data_dir().join("custodian-shares");
            let mut args = vec![OsString::from("init"), OsString::from("--share-dir"), share_dir.clone().into()];
            args.extend(self.flags());
            let run = rampart(&args, &[]).await;
            assert!(run.success, "rampart init failed:\n{}\n{}", run.stdout, run.stderr);
            let admin_codes: BTreeMap<String, String> = run
                .stdout
                .lines()
                .filter_map(|line| line.trim().split_once(": "))
                .filter(|(_, code)| code.starts_with("enr_"))
                .map(|(name, code)| (name.to_owned(), code.to_owned()))
                .collect();
            assert_eq!(
                admin_codes.keys().map(String::as_str).collect::<Vec<_>>(),
                ["admin", "admin2"],
                "rampart init prints one enrolment code per first administrator:\n{}",
                run.stdout
            );
            let share_files: Vec<PathBuf> =
                (1..=SHARES).map(|n| share_dir.join(format!("unseal-share-{n}.txt"))).collect();
            for path in &share_files {
                assert!(path.is_file(), "rampart init wrote no {}:\n{}", path.display(), run.stdout);
                assert!(run.stdout.contains(&path.display().to_string()), "init names {}", path.display());
            }
            Init { admin_codes, share_files, stdout: run.stdout }
        }
    }

    /// Everything a server wrote on stdout and stderr, kept whole (the [`Log`] keeps only the tail).
    #[derive(Clone)]
    pub struct Transcript {
        text: Arc<Mutex<String>>,
        /// How many of the two pipes have closed.
        closed: watch::Receiver<usize>,
    }

    impl Transcript {
        /// The whole output, once the process has exited and both pipes are read to their end.
        pub async fn whole(mut self) -> String {
            tokio::time::timeout(START_TIMEOUT, self.closed.wait_for(|closed| *closed == 2))
                .await
                .expect("the server's output did not end")
                .expect("the readers are alive");
            self.text.lock().unwrap_or_else(|e| e.into_inner()).clone()
        }
    }

    /// Like [`drain`], also keeping every line in `text` and counting the pipe in `closed` when it ends.
    fn drain_whole(
        pipe: impl AsyncRead + Unpin + Send + 'static,
        log: Log,
        text: Arc<Mutex<String>>,
        closed: Arc<watch::Sender<usize>>,
        lines: Option<mpsc::UnboundedSender<String>>,
    ) {
        tokio::spawn(async move {
            let mut reader = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                {
                    let mut text = text.lock().unwrap_or_else(|e| e.into_inner());
                    text.push_str(&line);
                    text.push('\n');
                }
                log.push(line.clone());
                if let Some(tx) = &lines {
                    let _ = tx.send(line);
                }
            }
            closed.send_modify(|n| *n += 1);
        });
    }

    impl Server {
        /// Starts `rampart serve` in production mode (no `--dev`) on port 0 over an initialised `db`, with `env`
        /// added to a clean environment, and waits for it to listen. It must announce that it is sealed, and has
        /// no root token: its client's token is empty (use [`Api::with_token`]).
        pub async fn start_sealed(db: &Db, env: &[(&str, &str)]) -> (Server, Transcript) {
            let mut command = Command::new(env!("CARGO_BIN_EXE_rampart"));
            command.args(["serve", "--listen", "127.0.0.1:0"]).args(db.flags());
            clean_env(&mut command);
            command.env("RAMPART_LOG", "info").envs(env.iter().copied());
            command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
            let mut child = command.spawn().expect("cannot start the rampart binary");

            let log = Log::default();
            let text = Arc::new(Mutex::new(String::new()));
            let (closed_tx, closed) = watch::channel(0);
            let closed_tx = Arc::new(closed_tx);
            let (tx, mut lines) = mpsc::unbounded_channel();
            let stdout = child.stdout.take().expect("piped stdout");
            drain_whole(stdout, log.clone(), text.clone(), closed_tx.clone(), Some(tx));
            drain_whole(child.stderr.take().expect("piped stderr"), log.clone(), text.clone(), closed_tx, None);

            let started = tokio::time::timeout(START_TIMEOUT, async {
                let mut sealed = false;
                while let Some(line) = lines.recv().await {
                    assert!(!line.contains("root token"), "a production server has no root token: {line}");
                    sealed |= line.starts_with("sealed: 3 of 5 custodians must run");
                    if let Some(address) = line.strip_prefix("listening on ") {
                        return Some((address.trim().to_owned(), sealed));
                    }
                }
                None
            })
            .await;
            let base = match started {
                Ok(Some((base, true))) => base,
                Ok(Some((_, false))) => panic!("the server did not say it is sealed:\n{}", log.tail()),
                Ok(None) => {
                    let status = child.wait().await;
                    panic!("the server exited before listening ({status:?}):\n{}", log.tail())
                }
                Err(_) => panic!("the server did not listen within {START_TIMEOUT:?}:\n{}", log.tail()),
            };
            assert!(base.starts_with("http://127.0.0.1:"), "unexpected address {base:?}");
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(60))
                .build()
                .expect("an HTTP client");
            let server = Server { child, api: Api { base, token: String::new(), client, log } };
            (server, Transcript { text, closed })
        }
    }

    impl Api {
        /// The same client acting with `token` (a staff session).
        pub fn with_token(&self, token: &str) -> Api {
            Api { token: token.to_owned(), ..self.clone() }
        }

        /// A request to `path` without any token.
        pub fn public(&self, method: Method, path: &str) -> RequestBuilder {
            self.client.request(method, format!("{}{path}", self.base))
        }

        /// Sends a request and reads the answer, checking only that it carries an `x-request-id` (a sealed
        /// server answers 503 by design).
        pub async fn send_raw(&self, request: RequestBuilder) -> Answer {
            let response = request.send().await.unwrap_or_else(|e| panic!("request failed: {e}\n{}", self.log.tail()));
            let answer = read(response).await.unwrap_or_else(|e| panic!("reading an answer failed: {e}"));
            assert!(
                answer.headers.get("x-request-id").is_some_and(|v| !v.is_empty()),
                "every answer carries an x-request-id: {answer:?}"
            );
            answer
        }

        /// `GET path` without a token.
        pub async fn get_public(&self, path: &str) -> Answer {
            self.send(self.public(Method::GET, path)).await
        }

        /// `POST path` without a token, with a JSON body.
        pub async fn post_public(&self, path: &str, body: &Value) -> Answer {
            self.send(self.public(Method::POST, path).json(body)).await
        }

        /// `GET /v1/sys/seal-status`.
        pub async fn seal_status(&self) -> Value {
            self.get_public("/v1/sys/seal-status").await.expect(200).clone()
        }

        /// Submits an unseal share.
        pub async fn submit_share(&self, share: &str) -> Answer {
            self.post_public("/v1/sys/unseal", &json!({ "share": share })).await
        }

        /// Asserts that the server is sealed with `progress` shares of 3 received.
        pub async fn assert_sealed(&self, progress: u8) {
            assert_eq!(
                self.seal_status().await,
                json!({"initialised": true, "sealed": true, "threshold": 3, "shares": 5, "progress": progress})
            );
        }

        /// Unseals with the first three shares of `init`, asserting the progress after each.
        pub async fn unseal(&self, init: &Init) {
            for n in 1..=THRESHOLD {
                let answer = self.submit_share(&init.share(n)).await;
                assert_eq!(answer.expect(200)["sealed"], json!(n != THRESHOLD), "share {n}: {}", answer.text);
            }
            assert_eq!(self.seal_status().await["sealed"], json!(false));
        }

        /// Audit entries (`GET /v1/audit/entries?query`), which the caller must be allowed to read.
        pub async fn audit_entries(&self, query: &str) -> Vec<Value> {
            let answer = self.get(&format!("/v1/audit/entries?limit=10000&{query}")).await;
            answer.expect(200).as_array().unwrap_or_else(|| panic!("not a list: {}", answer.text)).clone()
        }

        /// Asserts that `GET /v1/audit/verify` finds the log intact, and returns the report.
        pub async fn assert_audit_intact(&self) -> Value {
            let report = self.get("/v1/audit/verify").await.expect(200).clone();
            assert_eq!(report["intact"], json!(true), "the audit log is not intact: {report}");
            assert!(report["entries"].as_u64().is_some_and(|n| n > 0), "{report}");
            report
        }

        /// Creates a staff account (the caller needs `staff_manage`); returns its id and enrolment code.
        pub async fn create_staff(&self, username: &str) -> (i64, String) {
            let answer = self.post("/v1/staff", &json!({ "username": username })).await;
            let created = answer.expect(201);
            assert_eq!(created["username"], json!(username), "{}", answer.text);
            let id = created["id"].as_i64().unwrap_or_else(|| panic!("no id: {}", answer.text));
            let code = answer.str("enrolment_code");
            assert!(
                code.strip_prefix("enr_")
                    .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())),
                "an enrolment code is enr_ and 64 hex digits, not {code:?}"
            );
            (id, code.to_owned())
        }

        /// Asks for `role` to be granted to staff `id` (the caller needs `staff_manage`); returns the request id.
        pub async fn request_role(&self, id: i64, role: &str) -> i64 {
            let answer =
                self.post(&format!("/v1/staff/{id}/role-requests"), &json!({"role": role, "grant": true})).await;
            let request = answer.expect(201);
            assert_eq!(
                (&request["staff_id"], &request["role"], &request["status"]),
                (&json!(id), &json!(role), &json!("pending")),
                "{}",
                answer.text
            );
            request["id"].as_i64().unwrap_or_else(|| panic!("no id: {}", answer.text))
        }

        /// Approves a role request (the caller needs `staff_approve` and must not have asked for it).
        pub async fn approve(&self, request: i64) -> Value {
            let answer = self.post(&format!("/v1/staff/role-requests/{request}/approve"), &json!({})).await;
            let decided = answer.expect(200).clone();
            assert_eq!(decided["status"], json!("approved"), "{}", answer.text);
            decided
        }
    }

    /// The current TOTP time step of the system clock, which the server under test shares.
    pub fn current_step() -> u64 {
        unix_s() / TOTP_STEP_S
    }

    fn unix_s() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs()
    }

    /// A staff member's authenticator app: computes their codes from the secret shown at enrolment, and remembers
    /// the last time step it used, since the server accepts each step once per account (and a step of ±1).
    pub struct Authenticator {
        totp: TOTP,
        last_step: Option<u64>,
    }

    impl Authenticator {
        /// The app loaded with a base32 secret.
        #[track_caller]
        pub fn new(base32: &str) -> Authenticator {
            let bytes = Secret::Encoded(base32.to_owned()).to_bytes().expect("the TOTP secret is base32");
            let totp = TOTP::new(Algorithm::SHA1, 6, 0, TOTP_STEP_S, bytes, Some("Rampart".into()), "x".into())
                .expect("a valid TOTP secret");
            Authenticator { totp, last_step: None }
        }

        /// The code of time step `step`.
        pub fn code_at_step(&self, step: u64) -> String {
            self.totp.generate(step * TOTP_STEP_S)
        }

        /// The last step [`Authenticator::next_code`] used.
        pub fn last_step(&self) -> Option<u64> {
            self.last_step
        }

        /// A code the server accepts now and that was never used: the current step's, or the next step's when the
        /// current one was used (both within the server's drift), waiting for the next step to begin only when
        /// both were used.
        pub async fn next_code(&mut self) -> String {
            loop {
                let now = current_step();
                let step = self.last_step.map_or(now, |last| (last + 1).max(now));
                // A code of step `now` or `now + 1` stays valid even if the clock enters the next step meanwhile.
                if step <= now + 1 {
                    self.last_step = Some(step);
                    return self.code_at_step(step);
                }
                // Wait, exactly, for step `step - 1` to begin.
                let start_ms = u128::from((step - 1) * TOTP_STEP_S) * 1000;
                let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_millis();
                let wait_ms = start_ms.saturating_sub(now_ms) + 10;
                tokio::time::sleep(Duration::from_millis(u64::try_from(wait_ms).unwrap_or(u64::MAX))).await;
            }
        }

        /// A well-formed code that matches no step anywhere near now.
        pub fn wrong_code(&self) -> String {
            let now = current_step();
            let near: Vec<String> = (now.saturating_sub(3)..=now + 3).map(|s| self.code_at_step(s)).collect();
            (0..)
                .map(|n: u32| format!("{:06}", (n * 7919 + 123_456) % 1_000_000))
                .find(|code| !near.contains(code))
                .expect("some code is wrong")
        }
    }

    /// A staff member who enrolled: their credentials and, once signed in, their session.
    pub struct Staff {
        pub id: i64,
        pub username: String,
        pub password: String,
        /// The TOTP secret, base32, as enrolment showed it.
        pub totp_secret: String,
        pub authenticator: Authenticator,
        /// The session token of the last sign-in.
        pub token: Option<String>,
    }

    impl Staff {
        /// Enrols `username` with its one-time `code` and `password` (`POST /v1/staff/enrol`), then confirms with a
        /// fresh code (`POST /v1/staff/enrol/confirm`); the account must then be active with `roles`.
        pub async fn enrol(api: &Api, username: &str, code: &str, password: &str, roles: &[&str]) -> Staff {
            let enrol = json!({"username": username, "enrolment_code": code, "password": password});
            let answer = api.post_public("/v1/staff/enrol", &enrol).await;
            let totp_secret = answer.str("totp_secret").to_owned();
            assert!(answer.str("otpauth_uri").starts_with("otpauth://totp/"), "{}", answer.text);
            let mut authenticator = Authenticator::new(&totp_secret);
            let confirm =
                json!({"username": username, "enrolment_code": code, "totp_code": authenticator.next_code().await});
            let answer = api.post_public("/v1/staff/enrol/confirm", &confirm).await;
            let view = answer.expect(200);
            assert_eq!(
                (&view["username"], &view["roles"], &view["status"]),
                (&json!(username), &json!(roles), &json!("active")),
                "{}",
                answer.text
            );
            let id = view["id"].as_i64().unwrap_or_else(|| panic!("no id: {}", answer.text));
            Staff {
                id,
                username: username.to_owned(),
                password: password.to_owned(),
                totp_secret,
                authenticator,
                token: None,
            }
        }

        /// `staff:<id>`, as audit entries name the staff member.
        pub fn actor(&self) -> String {
            format!("staff:{}", self.id)
        }

        /// A sign-in request with this password and this code.
        pub fn sign_in_body(&self, password: &str, code: &str) -> Value {
            json!({"username": self.username, "password": password, "totp_code": code})
        }

        /// Signs in with the password and a fresh code; keeps and returns the session token.
        pub async fn sign_in(&mut self, api: &Api, roles: &[&str]) -> String {
            let code = self.authenticator.next_code().await;
            let body = self.sign_in_body(&self.password, &code);
            let answer = api.post_public("/v1/staff/sign-in", &body).await;
            let session = answer.expect(200);
            assert_eq!(session["roles"], json!(roles), "{}", answer.text);
            let token = answer.str("token").to_owned();
            assert!(
                token
                    .strip_prefix("rst_")
                    .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())),
                "a session token is rst_ and 64 hex digits, not {token:?}"
            );
            self.token = Some(token.clone());
            token
        }

        /// A client acting with this staff member's session.
        #[track_caller]
        pub fn api(&self, api: &Api) -> Api {
            api.with_token(self.token.as_deref().expect("signed in"))
        }
    }
}

/// The first address of the first IPv4 range of `country` in the tor-geoipdb file.
#[allow(dead_code)] // the geofencing tests use it; http.rs, which uses everything else here, does not
pub fn address_in(country: &str) -> String {
    let text = std::fs::read_to_string("/usr/share/tor/geoip").expect("Debian's tor-geoipdb is installed");
    let from = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f.len() == 3 && f[2].trim() == country).then(|| f[0].parse::<u32>().ok()).flatten()
        })
        .unwrap_or_else(|| panic!("no range of {country}"));
    std::net::Ipv4Addr::from(from).to_string()
}
