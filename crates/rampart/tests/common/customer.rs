//! A customer of the end-to-end tests: signs up, enrols an authenticator, verifies the email through the Maildir,
//! signs in and proves second factors, as a person with a browser and an authenticator app would.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mail_parser::MessageParser;
use reqwest::{Method, RequestBuilder};
use serde_json::{Value, json};

use super::{Answer, Api};

/// How long an email may take to arrive (the outbox is delivered every 100 ms).
pub const MAIL_DEADLINE: Duration = Duration::from_secs(20);

/// Seconds per TOTP time step.
pub const TOTP_STEP_S: u64 = 30;

/// The password every customer signs up with, and the one they change to. Neither contains any test email's local
/// part.
pub const PASSWORD: &str = "Violet-Tractor-Juggles-93-Anchovies";

/// A server and the Maildir it delivers into.
#[derive(Clone)]
pub struct Ctx {
    pub api: Api,
    pub maildir: PathBuf,
}

pub static NEXT_IP: AtomicU32 = AtomicU32::new(1);
pub static NEXT_EMAIL: AtomicU32 = AtomicU32::new(1);

/// A client address no other customer or attacker of this test run uses.
pub fn fresh_ip() -> String {
    let n = NEXT_IP.fetch_add(1, Ordering::Relaxed);
    format!("10.{}.{}.{}", (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff)
}

/// An email address no other customer of this test run has.
pub fn fresh_email(label: &str) -> String {
    format!("{label}{}@example.com", NEXT_EMAIL.fetch_add(1, Ordering::Relaxed))
}

pub fn now_ms() -> u64 {
    u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_millis()).expect("u64 ms")
}

pub fn now_s() -> u64 {
    now_ms() / 1000
}

impl Ctx {
    /// A request from client address `ip`, without credentials.
    pub fn request_from(&self, ip: &str, method: Method, path: &str) -> RequestBuilder {
        self.api.public(method, path).header("x-forwarded-for", ip).header("user-agent", "rampart-customers-test/1")
    }

    /// `POST path` from `ip` with a JSON body.
    pub async fn post_from(&self, ip: &str, path: &str, body: &Value) -> Answer {
        self.api.send(self.request_from(ip, Method::POST, path).json(body)).await
    }

    /// The first step of a sign-in from `ip`.
    pub async fn password_step(&self, ip: &str, email: &str, password: &str) -> Answer {
        self.post_from(ip, "/v1/customers/sign-in", &json!({"email": email, "password": password})).await
    }

    /// Every audit entry of `action` (read with the development root token).
    pub async fn audit(&self, action: &str) -> Vec<Value> {
        self.api.audit_entries(&format!("action={action}")).await
    }

    /// The audit entries of `action` about `target`.
    pub async fn audit_about(&self, action: &str, target: &str) -> Vec<Value> {
        self.audit(action).await.into_iter().filter(|e| e["target"] == json!(target)).collect()
    }

    /// The emails delivered so far, in delivery order.
    pub fn mails(&self) -> Vec<Mail> {
        read_maildir(&self.maildir)
    }

    /// Waits (at most [`MAIL_DEADLINE`]) for an email to `to` whose subject contains `subject` and whose file is
    /// not in `seen`; marks it seen.
    pub async fn wait_mail(&self, to: &str, subject: &str, seen: &mut HashSet<String>) -> Mail {
        let deadline = Instant::now() + MAIL_DEADLINE;
        loop {
            let mails = self.mails();
            if let Some(mail) =
                mails.iter().find(|m| m.to == to && m.subject.contains(subject) && !seen.contains(&m.file))
            {
                seen.insert(mail.file.clone());
                return mail.clone();
            }
            if Instant::now() > deadline {
                let theirs: Vec<&str> = mails.iter().filter(|m| m.to == to).map(|m| m.subject.as_str()).collect();
                panic!("no email {subject:?} to {to} within {MAIL_DEADLINE:?}; it received {theirs:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Asserts a `204 No Content`.
#[track_caller]
pub fn assert_no_content(answer: &Answer) {
    assert_eq!(answer.status.as_u16(), 204, "expected 204, got {} {}", answer.status, answer.text);
}

// ---------------------------------------------------------------------------------------------------------------
// Email, read back from the Maildir

#[derive(Clone, Debug)]
pub struct Mail {
    /// The file name in `new/`, which identifies the message.
    pub file: String,
    pub to: String,
    pub subject: String,
    /// The plain-text part, decoded.
    pub text: String,
}

impl Mail {
    /// The token of the link in the email (`…?token=…`).
    #[track_caller]
    pub fn token(&self) -> String {
        let start = self.text.find("?token=").unwrap_or_else(|| panic!("no link in {:?}: {}", self.subject, self.text));
        self.text[start + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
    }

    /// The link's path (`/verify-email`), before its token.
    #[track_caller]
    pub fn link_path(&self) -> String {
        let end = self.text.find("?token=").unwrap_or_else(|| panic!("no link in {}", self.text));
        let start = self.text[..end].rfind("http").expect("a link starts with http");
        let url = &self.text[start..end];
        url.splitn(4, '/').nth(3).map(|p| format!("/{p}")).unwrap_or_default()
    }

    pub fn first_line(&self) -> &str {
        self.text.lines().next().unwrap_or_default()
    }
}

/// The messages of a Maildir's `new/` folder in delivery order (file names start with the seconds and
/// microseconds of delivery), parsed as a mail reader would (MIME, quoted-printable).
pub fn read_maildir(dir: &Path) -> Vec<Mail> {
    let Ok(entries) = std::fs::read_dir(dir.join("new")) else { return Vec::new() };
    let mut mails: Vec<((u64, u64), Mail)> = Vec::new();
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Ok(raw) = std::fs::read(entry.path()) else { continue };
        let parsed = MessageParser::default().parse(&raw).unwrap_or_else(|| panic!("an unparseable email {file}"));
        let to = parsed.to().and_then(|a| a.first()).and_then(|a| a.address()).unwrap_or_default().to_owned();
        let subject = parsed.subject().unwrap_or_default().to_owned();
        let text = parsed.body_text(0).map(|t| t.replace("\r\n", "\n")).unwrap_or_default();
        let (secs, rest) = file.split_once('.').unwrap_or((&file, ""));
        let micros = rest.strip_prefix('M').and_then(|r| r.split('R').next()).and_then(|m| m.parse().ok());
        let key = (secs.parse().unwrap_or(0), micros.unwrap_or(0));
        mails.push((key, Mail { file, to, subject, text }));
    }
    mails.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.file.cmp(&b.1.file)));
    mails.into_iter().map(|(_, m)| m).collect()
}

// ---------------------------------------------------------------------------------------------------------------
// The customer's authenticator app

/// Computes codes from the secret shown at sign-up and remembers the last time step used: the server accepts each
/// step once per account, and steps from one before to one after its own.
pub struct Totp {
    pub secret: rampart_auth::TotpSecret,
    pub last_step: Option<u64>,
}

impl Totp {
    #[track_caller]
    pub fn from_base32(base32: &str) -> Totp {
        let bytes = totp_rs::Secret::Encoded(base32.to_owned()).to_bytes().expect("the TOTP secret is base32");
        let secret = rampart_auth::TotpSecret::from_bytes(&bytes).expect("a valid TOTP secret");
        Totp { secret, last_step: None }
    }

    pub fn code_at_step(&self, step: u64) -> String {
        self.secret.code_at(step * TOTP_STEP_S)
    }

    /// An unused code the server accepts now, if there is one: the lowest unused step from the previous one (unless
    /// it ends within five seconds) to the next one.
    pub fn take_now(&mut self) -> Option<String> {
        let now = now_ms();
        let step = now / 1000 / TOTP_STEP_S;
        let lowest = if now % (TOTP_STEP_S * 1000) < (TOTP_STEP_S - 5) * 1000 { step - 1 } else { step };
        let candidate = self.last_step.map_or(lowest, |last| (last + 1).max(lowest));
        (candidate <= step + 1).then(|| {
            self.last_step = Some(candidate);
            self.code_at_step(candidate)
        })
    }

    /// An unused code, waiting for the next time step if every acceptable one was used.
    pub async fn next_code(&mut self) -> String {
        loop {
            if let Some(code) = self.take_now() {
                return code;
            }
            let next_step_ms = (now_ms() / (TOTP_STEP_S * 1000) + 1) * TOTP_STEP_S * 1000;
            tokio::time::sleep(Duration::from_millis(next_step_ms - now_ms() + 20)).await;
        }
    }

    /// The codes the server could accept around now (and a little later).
    pub fn near_codes(&self) -> Vec<String> {
        let step = now_s() / TOTP_STEP_S;
        (step - 1..=step + 2).map(|s| self.code_at_step(s)).collect()
    }

    /// A well-formed code of no step near now.
    pub fn wrong_code(&self) -> String {
        let near = self.near_codes();
        (0u32..)
            .map(|n| format!("{:06}", (n * 7919 + 123_457) % 1_000_000))
            .find(|c| !near.contains(c))
            .expect("some code is wrong")
    }

    /// A code of a time step at least three steps ago (outside the drift the server allows).
    pub fn expired_code(&self) -> String {
        let near = self.near_codes();
        let step = now_s() / TOTP_STEP_S;
        (3..).map(|back| self.code_at_step(step - back)).find(|c| !near.contains(c)).expect("an expired code")
    }

    /// A code of a time step at least three steps ahead.
    pub fn future_code(&self) -> String {
        let near = self.near_codes();
        let step = now_s() / TOTP_STEP_S;
        (3..).map(|ahead| self.code_at_step(step + ahead)).find(|c| !near.contains(c)).expect("a future code")
    }
}

// ---------------------------------------------------------------------------------------------------------------
// A customer

pub struct Customer {
    pub ctx: Ctx,
    pub email: String,
    pub password: String,
    /// The client address this customer's requests come from.
    pub ip: String,
    pub totp: Totp,
    /// The backup codes not used yet.
    pub backup_codes: Vec<String>,
    /// This device's token (`X-Rampart-Device`).
    pub device: String,
    /// The session of the last sign-in.
    pub token: Option<String>,
    /// The internal id (`customer:<id>` in audit entries).
    pub id: i64,
    /// The public id (32 hex digits) sign-up answered.
    pub handle: String,
    /// Emails already looked at.
    pub seen_mail: HashSet<String>,
}

/// The backup code format: four groups of four characters of Crockford's base32 alphabet, lowercase.
pub fn is_backup_code(code: &str) -> bool {
    let groups: Vec<&str> = code.split('-').collect();
    groups.len() == 4
        && groups.iter().all(|g| g.len() == 4 && g.bytes().all(|b| b"0123456789abcdefghjkmnpqrstvwxyz".contains(&b)))
}

impl Customer {
    /// Signs up with `email` and [`PASSWORD`] from an address of its own, enrols the authenticator, and verifies
    /// the email address with the emailed link.
    pub async fn register(ctx: &Ctx, label: &str) -> Customer {
        let email = fresh_email(label);
        let ip = fresh_ip();
        let answer = ctx.post_from(&ip, "/v1/customers/sign-up", &json!({"email": email, "password": PASSWORD})).await;
        let body = answer.expect(201).clone();
        let ticket = answer.str("enrolment_ticket").to_owned();
        let mut totp = Totp::from_base32(body["totp"]["secret"].as_str().expect("a TOTP secret"));
        let code = totp.next_code().await;
        let enrolled = ctx
            .post_from(&ip, "/v1/customers/sign-up/totp", &json!({"enrolment_ticket": ticket, "totp_code": code}))
            .await;
        let codes = enrolled.expect(200)["backup_codes"].as_array().expect("backup codes").clone();
        let mut customer = Customer {
            ctx: ctx.clone(),
            email,
            password: PASSWORD.to_owned(),
            ip,
            totp,
            backup_codes: codes.iter().map(|c| c.as_str().expect("a code").to_owned()).collect(),
            device: answer.str("device_token").to_owned(),
            token: None,
            id: 0,
            handle: answer.str("customer").to_owned(),
            seen_mail: HashSet::new(),
        };
        customer.verify_email().await;
        customer.id = customer.lookup_id().await;
        customer
    }

    /// Follows the link of the verification email.
    pub async fn verify_email(&mut self) {
        let mail = self.mail("Confirm your email address").await;
        assert_eq!(mail.link_path(), "/verify-email", "{}", mail.text);
        let verified =
            self.ctx.post_from(&self.ip, "/v1/customers/verify-email", &json!({"token": mail.token()})).await;
        assert_no_content(&verified);
    }

    /// The customer's id, from the audit entry of its sign-up (the only one from its address).
    pub async fn lookup_id(&self) -> i64 {
        let entries = self.ctx.audit("auth.customer.sign_up").await;
        let mine: Vec<&Value> = entries.iter().filter(|e| e["details"]["ip"] == json!(self.ip)).collect();
        assert_eq!(mine.len(), 1, "one sign-up from {}: {mine:?}", self.ip);
        let target = mine[0]["target"].as_str().expect("a target");
        target.strip_prefix("customer:").and_then(|id| id.parse().ok()).unwrap_or_else(|| panic!("target {target}"))
    }

    /// `customer:<id>`, as audit entries name the customer.
    pub fn subject(&self) -> String {
        format!("customer:{}", self.id)
    }

    /// The next second factor: an unused TOTP code if one is acceptable now, else a backup code.
    pub fn factor(&mut self) -> Value {
        match self.totp.take_now() {
            Some(code) => json!({"totp_code": code}),
            None => {
                assert!(!self.backup_codes.is_empty(), "{} ran out of second factors", self.email);
                json!({"backup_code": self.backup_codes.remove(0)})
            }
        }
    }

    /// The first step of a sign-in with the customer's password.
    pub async fn password_step(&self) -> Answer {
        self.ctx.password_step(&self.ip, &self.email, &self.password).await
    }

    /// The second step: `factor` (fields of a second factor) for `ticket`, from `device` if any.
    pub async fn verify(&self, ticket: &str, factor: &Value, device: Option<&str>) -> Answer {
        let mut body = factor.clone();
        body["ticket"] = json!(ticket);
        let mut request = self.ctx.request_from(&self.ip, Method::POST, "/v1/customers/sign-in/verify").json(&body);
        if let Some(device) = device {
            request = request.header("x-rampart-device", device);
        }
        self.ctx.api.send(request).await
    }

    /// A ticket from the first step, which must succeed.
    pub async fn ticket(&self) -> String {
        let answer = self.password_step().await;
        answer.expect(200);
        answer.str("ticket").to_owned()
    }

    /// Signs in from this device with the password and the next second factor; keeps and returns the session.
    pub async fn sign_in(&mut self) -> String {
        let ticket = self.ticket().await;
        let factor = self.factor();
        let device = self.device.clone();
        let answer = self.verify(&ticket, &factor, Some(&device)).await;
        assert_eq!(answer.expect(200)["status"], json!("signed_in"), "{}", answer.text);
        let token = answer.str("token").to_owned();
        assert!(token.starts_with("rcs_"), "a session token starts rcs_: {token}");
        self.token = Some(token.clone());
        token
    }

    /// A request with session `token` from device `device` (either may be absent).
    pub fn with(&self, method: Method, path: &str, token: Option<&str>, device: Option<&str>) -> RequestBuilder {
        let mut request = self.ctx.request_from(&self.ip, method, path);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(device) = device {
            request = request.header("x-rampart-device", device);
        }
        request
    }

    /// A request in the current session from this device.
    pub fn me(&self, method: Method, path: &str) -> RequestBuilder {
        self.with(method, path, self.token.as_deref(), Some(&self.device))
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.ctx.api.send(self.me(Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Answer {
        self.ctx.api.send(self.me(Method::POST, path).json(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Answer {
        self.ctx.api.send(self.me(Method::PUT, path).json(body)).await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        self.ctx.api.send(self.me(Method::DELETE, path)).await
    }

    /// `GET /v1/me` with session `token` from device `device`.
    pub async fn me_with(&self, token: &str, device: Option<&str>) -> Answer {
        self.ctx.api.send(self.with(Method::GET, "/v1/me", Some(token), device)).await
    }

    /// Proves a second factor in the current session (`POST /v1/me/step-up`).
    pub async fn step_up(&mut self) {
        let factor = self.factor();
        assert_no_content(&self.post("/v1/me/step-up", &factor).await);
    }

    /// The kinds of the in-app notifications, newest first.
    pub async fn notifications(&self) -> Vec<String> {
        let answer = self.get("/v1/me/notifications").await;
        let list = answer.expect(200).as_array().unwrap_or_else(|| panic!("a list: {}", answer.text)).clone();
        list.iter().map(|n| n["kind"].as_str().expect("a kind").to_owned()).collect()
    }

    /// Whether a withdrawal is allowed now (`GET /v1/me/withdrawal-status`).
    pub async fn withdrawal_status(&self) -> Value {
        self.get("/v1/me/withdrawal-status").await.expect(200).clone()
    }

    /// Waits for the next email to this customer whose subject contains `subject`.
    pub async fn mail(&mut self, subject: &str) -> Mail {
        let ctx = self.ctx.clone();
        ctx.wait_mail(&self.email, subject, &mut self.seen_mail).await
    }
}

// ---------------------------------------------------------------------------------------------------------------
// API keys: requests signed as CoinEx v2 signs them

/// An API key as its owner's program holds it: the id and the signing secret shown once at creation.
pub struct ApiKey {
    pub id: String,
    pub secret: rampart_auth::ApiKeySecret,
}

impl ApiKey {
    #[track_caller]
    pub fn of(created: &Answer) -> ApiKey {
        let id = created.str("key").to_owned();
        assert!(id.starts_with("rak_"), "{id}");
        let secret = rampart_auth::ApiKeySecret::parse(created.str("secret")).expect("a ras_ secret");
        ApiKey { id, secret }
    }

    /// `request` with this key's headers, signing `method`, `path`, `signed_body` and `timestamp_ms`.
    pub fn sign(
        &self,
        request: RequestBuilder,
        method: &Method,
        path: &str,
        signed_body: &[u8],
        timestamp_ms: u64,
    ) -> RequestBuilder {
        let signature = rampart_auth::sign_hex(&self.secret, method.as_str(), path, signed_body, timestamp_ms);
        request
            .header("x-rampart-key", &self.id)
            .header("x-rampart-timestamp", timestamp_ms.to_string())
            .header("x-rampart-sign", signature)
    }

    /// A request from `ip` carrying `body`, signed at `timestamp_ms`.
    pub fn at(
        &self,
        ctx: &Ctx,
        ip: &str,
        method: Method,
        path: &str,
        body: &[u8],
        timestamp_ms: u64,
    ) -> RequestBuilder {
        let mut request = ctx.request_from(ip, method.clone(), path);
        if !body.is_empty() {
            request = request.header("content-type", "application/json").body(body.to_vec());
        }
        self.sign(request, &method, path, body, timestamp_ms)
    }

    /// A signed request made now.
    pub fn now(&self, ctx: &Ctx, ip: &str, method: Method, path: &str, body: &[u8]) -> RequestBuilder {
        self.at(ctx, ip, method, path, body, now_ms())
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Bitcoin amounts, addresses and balances

/// Satoshis in a bitcoin.
pub const SAT_PER_BTC: u64 = 100_000_000;

/// A regtest address of its own for each `n` (a P2WSH of a small script).
pub fn address(n: u32) -> String {
    let script = bitcoin::ScriptBuf::from_bytes([0x51].iter().chain(&n.to_be_bytes()).copied().collect());
    bitcoin::Address::p2wsh(&script, bitcoin::Network::Regtest).to_string()
}

/// Satoshis as a decimal amount of BTC, in shortest form.
pub fn btc(sat: u64) -> String {
    format!("{}.{:08}", sat / SAT_PER_BTC, sat % SAT_PER_BTC).trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// A decimal amount of BTC in satoshis.
pub fn sat(text: &str) -> u64 {
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    whole.parse::<u64>().expect("whole") * SAT_PER_BTC + format!("{frac:0<8}").parse::<u64>().expect("fraction")
}

/// The customer's BTC balance in satoshis: (available, held by withdrawals in flight).
pub async fn balance(c: &Customer) -> (u64, u64) {
    let answer = c.get("/v1/me/balances").await;
    let list = answer.expect(200).as_array().expect("a list").clone();
    list.iter()
        .find(|b| b["asset"] == json!("BTC"))
        .map(|b| (sat(b["available"].as_str().unwrap_or("0")), sat(b["pending"].as_str().unwrap_or("0"))))
        .unwrap_or((0, 0))
}
