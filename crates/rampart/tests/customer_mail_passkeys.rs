//! End-to-end tests of what customers are told by email and of passkeys over HTTP: the real binary, its `[mail]`
//! pointed at a real SMTP server on loopback (`mailin-embedded`, as in `crates/notify/tests/smtp.rs`), and WebAuthn
//! ceremonies driven by a software authenticator behind a software client (1Password's `passkey` crates, as in
//! `crates/webauthn/tests/ceremonies.rs`), on a fresh SQLite database and (when `RAMPART_TEST_POSTGRES_URL` is set)
//! a fresh PostgreSQL database.
//!
//! One server and one SMTP server per backend run every scenario at once, each with its own customers (the SMTP
//! server keeps mail by recipient). A failing scenario does not stop the others: each runs in its own task and the
//! test reports every failure at the end.

#[macro_use]
#[allow(dead_code)]
mod common;

use std::collections::BTreeMap;
use std::io;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::production::{Authenticator, Staff};
use common::{Answer, Api, Db, Server};
use mail_parser::MessageParser;
use mailin_embedded::{Handler, Response, SslConfig, response};
use passkey_authenticator::{Authenticator as SoftAuthenticator, UiHint, UserCheck, UserValidationMethod};
use passkey_client::{Client, DefaultClientData, DefaultClientDataWithCustomHash};
use passkey_crypto::hash::Sha256Backend;
use passkey_crypto::rust_crypto::{RustCryptoBackend, RustCryptoSha2};
use passkey_types::ctap2::{Aaguid, Ctap2Error};
use passkey_types::webauthn::{CredentialCreationOptions, CredentialRequestOptions};
use passkey_types::{Passkey, encoding};
use reqwest::{Method, RequestBuilder};
use serde_json::{Value, json};
use webauthn_rs::prelude::Url;

/// How often the server's outbox worker delivers.
const OUTBOX_INTERVAL_MS: u64 = 100;
/// How long to keep watching after the expected emails arrived, for a duplicate: several outbox rounds.
const SETTLE: Duration = Duration::from_millis(6 * OUTBOX_INTERVAL_MS);
/// How long an email may take to arrive when nothing stands in its way.
const MAIL_DEADLINE: Duration = Duration::from_secs(20);
/// … and one deferred twice: the outbox waits 5 s, then 10 s, before its retries.
const GREYLIST_DEADLINE: Duration = Duration::from_secs(60);

/// The WebAuthn relying party the server is configured with, and the origin the software client reports. It need not
/// be the address the server listens on: only the browser's word about its page matters.
const RP_ID: &str = "localhost";
const ORIGIN: &str = "http://localhost:9080";
/// A phishing site.
const EVIL_ORIGIN: &str = "https://evil.example";
/// The base of the links in emails.
const PUBLIC_URL: &str = "http://localhost:9080";
/// The envelope sender (the address of the default `email_from`).
const SENDER: &str = "security@rampart.localhost";
/// The user agent every customer request sends; a new-device email names it.
const USER_AGENT: &str = "customer-mail-passkeys-test/1.0";

const PASSWORD: &str = "Tr0ub4dor&3-horse-battery-staple";
const NEW_PASSWORD: &str = "Another-Strong-Passphrase-77!";
const ANTI_PHISHING_CODE: &str = "Blue-Falcon_42";

// Subjects, one per kind of notification.
const VERIFY_EMAIL: &str = "Rampart: Confirm your email address";
const TOTP_ADDED: &str = "Rampart: Two-factor method added: authenticator app";
const PASSKEY_ADDED: &str = "Rampart: Two-factor method added: passkey";
const CODE_CHANGED: &str = "Rampart: Your anti-phishing code was changed";
const API_KEY_CREATED: &str = "Rampart: API key created";
const PASSWORD_CHANGED: &str = "Rampart: Your password was changed";
const NEW_DEVICE: &str = "Rampart: Confirm a sign-in from a new device";

fn config(smtp_port: u16) -> String {
    format!(
        r#"
[identity]
public_url = "{PUBLIC_URL}"
webauthn_rp_id = "{RP_ID}"
webauthn_origin = "{ORIGIN}"
# Every scenario runs at once from 127.0.0.1 and the attacks fail sign-ins on purpose: the per-address rate limits and
# the brute-force delays (not what this file tests) would otherwise slow down or refuse the legitimate requests.
rate_limit_per_s = 10000
rate_limit_burst = 10000
auth_rate_limit_per_s = 10000
auth_rate_limit_burst = 10000
account_free_failures = 100
account_lock_failures = 1000
ip_free_failures = 1000
ip_block_failures = 10000

# For the same reason the risk engine is off here (its own tests cover it): an owner signing in after the attacks on
# their account would, rightly, be asked for an emailed confirmation first.
[risk]
enabled = false

[mail]
smtp_host = "127.0.0.1"
smtp_port = {smtp_port}
smtp_tls = "none"
smtp_timeout_s = 10
outbox_interval_ms = {OUTBOX_INTERVAL_MS}
"#
    )
}

// ---------------------------------------------------------------------------------------------------------------
// The SMTP server

/// Recipients whose address starts with this are refused for good (550) at `RCPT TO`.
const REJECTED_PREFIX: &str = "rejected-";
/// Recipients whose address starts with this are deferred (451) at their first [`GREYLIST_DEFERRALS`] attempts.
const GREYLISTED_PREFIX: &str = "greylisted-";
const GREYLIST_DEFERRALS: usize = 2;

/// One `RCPT TO` and the reply it got.
#[derive(Debug, Clone)]
struct Attempt {
    to: String,
    code: u16,
    at: Instant,
}

/// One message accepted, as the server received it.
#[derive(Debug, Clone)]
struct Delivered {
    from: String,
    rcpt: Vec<String>,
    data: Vec<u8>,
}

#[derive(Default)]
struct Mailbox {
    attempts: Vec<Attempt>,
    delivered: Vec<Delivered>,
}

/// The server's handler: one clone per connection, all writing to the same mailbox.
#[derive(Clone, Default)]
struct Recorder {
    mailbox: Arc<Mutex<Mailbox>>,
    current: Option<Delivered>,
}

impl Handler for Recorder {
    fn rcpt(&mut self, to: &str) -> Response {
        let mut mailbox = self.mailbox.lock().unwrap();
        let before = mailbox.attempts.iter().filter(|a| a.to == to).count();
        let (code, reply) = if to.starts_with(REJECTED_PREFIX) {
            (550, response::NO_MAILBOX)
        } else if to.starts_with(GREYLISTED_PREFIX) && before < GREYLIST_DEFERRALS {
            (451, Response::custom(451, "Greylisted, try again later".to_owned()))
        } else {
            (250, response::OK)
        };
        mailbox.attempts.push(Attempt { to: to.to_owned(), code, at: Instant::now() });
        reply
    }

    fn data_start(&mut self, _domain: &str, from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.current = Some(Delivered { from: from.to_owned(), rcpt: to.to_vec(), data: Vec::new() });
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> io::Result<()> {
        if let Some(current) = &mut self.current {
            current.data.extend_from_slice(buf);
        }
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        if let Some(done) = self.current.take() {
            self.mailbox.lock().unwrap().delivered.push(done);
        }
        response::OK
    }
}

/// An email as a mail reader sees it.
#[derive(Debug, Clone)]
struct Mail {
    envelope_from: String,
    rcpt: Vec<String>,
    /// The address of the `To` header.
    to: String,
    subject: String,
    text: String,
    html: String,
}

impl Mail {
    fn parse(delivered: &Delivered) -> Mail {
        let parsed = MessageParser::default().parse(&delivered.data).expect("a parseable message");
        let to = parsed.to().and_then(|a| a.first()).and_then(|a| a.address()).unwrap_or_default().to_owned();
        Mail {
            envelope_from: delivered.from.clone(),
            rcpt: delivered.rcpt.clone(),
            to,
            subject: parsed.subject().unwrap_or_default().to_owned(),
            text: parsed.body_text(0).map(|t| t.replace("\r\n", "\n")).unwrap_or_default(),
            html: parsed.body_html(0).map(|t| t.replace("\r\n", "\n")).unwrap_or_default(),
        }
    }

    /// Checks that it went to `email` only, from Rampart's sender, and carries the anti-phishing code (or, when
    /// none is set, says so in the same place): the first line of the text part and the box at the top of the HTML.
    #[track_caller]
    fn assert_for(&self, email: &str, code: Option<&str>) {
        let what = &self.subject;
        assert_eq!(self.rcpt, [email], "{what}: the envelope recipient");
        assert_eq!(self.to, email, "{what}: the To header");
        assert_eq!(self.envelope_from, SENDER, "{what}: the envelope sender");
        let first = self.text.lines().next().unwrap_or_default();
        let boxed =
            self.html.find("id=\"anti-phishing-code\"").unwrap_or_else(|| panic!("{what}: no box:\n{}", self.html));
        let heading = self.html.find("<h1").unwrap_or_else(|| panic!("{what}: no heading:\n{}", self.html));
        assert!(boxed < heading, "{what}: the anti-phishing box comes first");
        match code {
            Some(code) => {
                assert_eq!(first, format!("Anti-phishing code: {code}"), "{what}: the first line of the text part");
                let shown = self.html.find(&format!(">{code}</strong></div>"));
                assert!(
                    shown.is_some_and(|at| at > boxed && at < heading),
                    "{what}: the code in the box:\n{}",
                    self.html
                );
                assert_eq!(self.html.matches(code).count(), 1, "{what}");
            }
            None => {
                assert!(first.starts_with("Anti-phishing code: not set"), "{what}: {first:?}");
                assert!(!self.text.contains(ANTI_PHISHING_CODE) && !self.html.contains(ANTI_PHISHING_CODE), "{what}");
            }
        }
    }

    /// The token of the link to `path` in the text part.
    #[track_caller]
    fn link_token(&self, path: &str) -> String {
        let prefix = format!("{PUBLIC_URL}{path}?token=");
        let line = self.text.lines().map(str::trim).find(|l| l.starts_with(&prefix));
        let token = line.unwrap_or_else(|| panic!("no {prefix}… link in {:?}:\n{}", self.subject, self.text));
        let token = &token[prefix.len()..];
        assert!(!token.is_empty() && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'), "{token:?}");
        assert!(self.html.contains(&format!("href=\"{prefix}{token}\"")), "the HTML links to it too:\n{}", self.html);
        token.to_owned()
    }
}

/// A real SMTP server on 127.0.0.1 and an ephemeral port, recording every recipient attempt and every message. Its
/// thread lives until the test process ends.
#[derive(Clone)]
struct Smtp {
    port: u16,
    mailbox: Arc<Mutex<Mailbox>>,
}

impl Smtp {
    fn start() -> Smtp {
        let recorder = Recorder::default();
        let mailbox = Arc::clone(&recorder.mailbox);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut server = mailin_embedded::Server::new(recorder);
        // The mailer keeps a pooled connection open, and a connection holds a thread.
        server.with_name("mx.test").with_ssl(SslConfig::None).unwrap().with_num_threads(4).with_tcp_listener(listener);
        std::thread::spawn(move || {
            if let Err(err) = server.serve() {
                eprintln!("the test SMTP server stopped: {err}");
            }
        });
        Smtp { port, mailbox }
    }

    /// The messages delivered to `email`, in order.
    fn mails_to(&self, email: &str) -> Vec<Mail> {
        let mailbox = self.mailbox.lock().unwrap();
        mailbox.delivered.iter().filter(|d| d.rcpt.iter().any(|r| r == email)).map(Mail::parse).collect()
    }

    /// The `RCPT TO` attempts for `email`, in order.
    fn attempts_to(&self, email: &str) -> Vec<Attempt> {
        self.mailbox.lock().unwrap().attempts.iter().filter(|a| a.to == email).cloned().collect()
    }

    /// Waits (at most `deadline`) for a message to `email` with `subject`, and returns the first.
    async fn wait_for_within(&self, email: &str, subject: &str, deadline: Duration) -> Mail {
        let start = Instant::now();
        loop {
            if let Some(mail) = self.mails_to(email).into_iter().find(|m| m.subject == subject) {
                return mail;
            }
            if start.elapsed() > deadline {
                let arrived: Vec<String> = self.mails_to(email).into_iter().map(|m| m.subject).collect();
                panic!("no {subject:?} to {email} within {deadline:?}; arrived: {arrived:?}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn wait_for(&self, email: &str, subject: &str) -> Mail {
        self.wait_for_within(email, subject, MAIL_DEADLINE).await
    }

    /// Asserts that `email` got each of `subjects` exactly once and nothing else: waits for them all, then a few
    /// more outbox rounds, in which a duplicate would arrive.
    async fn assert_each_once(&self, email: &str, subjects: &[&str]) {
        for subject in subjects {
            self.wait_for(email, subject).await;
        }
        tokio::time::sleep(SETTLE).await;
        let mut got: BTreeMap<String, usize> = BTreeMap::new();
        for mail in self.mails_to(email) {
            *got.entry(mail.subject).or_default() += 1;
        }
        let expected: BTreeMap<String, usize> = subjects.iter().map(|s| ((*s).to_owned(), 1)).collect();
        assert_eq!(got, expected, "the emails to {email}: each expected one exactly once, and nothing else");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// A software authenticator and browser

/// A user who is present and passes the authenticator's PIN or biometric check.
struct VerifyingUser;

#[async_trait::async_trait]
impl UserValidationMethod for VerifyingUser {
    type PasskeyItem = Passkey;

    async fn check_user<'a>(
        &self,
        hint: UiHint<'a, Passkey>,
        presence: bool,
        verification: bool,
    ) -> Result<UserCheck, Ctap2Error> {
        if let UiHint::InformExcludedCredentialFound(_) = hint {
            return Err(Ctap2Error::CredentialExcluded);
        }
        Ok(UserCheck { presence, verification })
    }

    fn is_presence_enabled(&self) -> bool {
        true
    }

    fn is_verification_enabled(&self) -> Option<bool> {
        Some(true)
    }
}

/// A software authenticator holding one credential, behind a browser on `origin`. Its whole state is `store`, so
/// cloning a `SoftKey` clones the authenticator, private key and signature counter included. It keeps a signature
/// counter, as a hardware security key does.
#[derive(Clone)]
struct SoftKey {
    store: Option<Passkey>,
    origin: Url,
}

/// The browser and authenticator for one operation, built from the key's state.
macro_rules! client {
    ($key:expr) => {{
        let mut authenticator =
            SoftAuthenticator::new(Aaguid::new_empty(), $key.store.clone(), VerifyingUser, RustCryptoBackend);
        authenticator.set_make_credentials_with_signature_counter(true);
        Client::new(authenticator).allows_insecure_localhost(true)
    }};
}

impl SoftKey {
    fn new() -> SoftKey {
        SoftKey { store: None, origin: Url::parse(ORIGIN).unwrap() }
    }

    /// `navigator.credentials.create(options)`.
    async fn create(&mut self, options: &Value) -> Value {
        let request: CredentialCreationOptions =
            serde_json::from_value(options.clone()).unwrap_or_else(|e| panic!("creation options {options}: {e}"));
        let mut client = client!(self);
        let created = client.register(&self.origin, request, DefaultClientData).await;
        self.store = client.authenticator().store().clone();
        serde_json::to_value(created.unwrap_or_else(|e| panic!("the authenticator refused to register: {e:?}")))
            .unwrap()
    }

    /// `navigator.credentials.get(options)`.
    async fn get(&mut self, options: &Value) -> Value {
        let request: CredentialRequestOptions =
            serde_json::from_value(options.clone()).unwrap_or_else(|e| panic!("request options {options}: {e}"));
        let mut client = client!(self);
        let assertion = client.authenticate(&self.origin, request, DefaultClientData).await;
        self.store = client.authenticator().store().clone();
        serde_json::to_value(assertion.unwrap_or_else(|e| panic!("the authenticator refused to sign: {e:?}"))).unwrap()
    }

    /// An assertion whose signed `clientDataJSON` names `origin` instead of the page's: what a phishing proxy driving
    /// a real browser's authenticator, or a compromised browser, would send. (A well-behaved client on another site
    /// refuses to use this relying party id at all.)
    async fn get_as(&mut self, options: &Value, origin: &str) -> Value {
        let client_data = json!({
            "type": "webauthn.get",
            "challenge": options["publicKey"]["challenge"],
            "origin": origin,
            "crossOrigin": false,
        })
        .to_string();
        let hash = RustCryptoSha2::sha256(client_data.as_bytes()).to_vec();
        let request: CredentialRequestOptions = serde_json::from_value(options.clone()).unwrap();
        let mut client = client!(self);
        let assertion = client.authenticate(&self.origin, request, DefaultClientDataWithCustomHash(hash)).await;
        self.store = client.authenticator().store().clone();
        let mut assertion = serde_json::to_value(assertion.expect("the authenticator signs")).unwrap();
        assertion["response"]["clientDataJSON"] = json!(encoding::base64url(client_data.as_bytes()));
        assertion
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Customers

/// A request to `path` without credentials, from the test's user agent.
fn public(api: &Api, method: Method, path: &str) -> RequestBuilder {
    api.public(method, path).header("user-agent", USER_AGENT)
}

async fn post_public(api: &Api, path: &str, body: &Value) -> Answer {
    api.send(public(api, Method::POST, path).json(body)).await
}

/// A customer on one device: the device token it sends, and its session once signed in.
struct Customer {
    api: Api,
    email: String,
    password: String,
    device: Option<String>,
    session: Option<String>,
    /// The authenticator app's secret (base32), and the app.
    totp_secret: String,
    totp: Authenticator,
    backup_codes: Vec<String>,
}

impl Customer {
    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let mut request = public(&self.api, method, path);
        if let Some(device) = &self.device {
            request = request.header("x-rampart-device", device);
        }
        if let Some(session) = &self.session {
            request = request.bearer_auth(session);
        }
        request
    }

    async fn get(&self, path: &str) -> Answer {
        self.api.send(self.request(Method::GET, path)).await
    }

    async fn post(&self, path: &str, body: &Value) -> Answer {
        self.api.send(self.request(Method::POST, path).json(body)).await
    }

    async fn put(&self, path: &str, body: &Value) -> Answer {
        self.api.send(self.request(Method::PUT, path).json(body)).await
    }

    /// The first step of a sign-in, the password: answers the ticket.
    async fn sign_in_ticket(&self) -> String {
        let answer = self.post("/v1/customers/sign-in", &json!({"email": self.email, "password": self.password})).await;
        answer.expect(200);
        answer.str("ticket").to_owned()
    }

    /// The second step with `factor` (`{"totp_code": …}`, `{"webauthn": …}`) from this device.
    async fn verify(&self, ticket: &str, factor: Value) -> Answer {
        let mut body = factor;
        body["ticket"] = json!(ticket);
        self.post("/v1/customers/sign-in/verify", &body).await
    }

    /// Both steps with `factor`, from a confirmed device: keeps the new session.
    async fn sign_in_with(&mut self, factor: Value) {
        let ticket = self.sign_in_ticket().await;
        let answer = self.verify(&ticket, factor).await;
        assert_eq!(answer.expect(200)["status"], json!("signed_in"), "{}", answer.text);
        self.session = Some(answer.str("token").to_owned());
    }

    /// Finishes a sign-in whose options were already fetched, with `key`; keeps the session.
    async fn sign_in_with_options(&mut self, ticket: &str, options: &Value, key: &mut SoftKey) {
        let assertion = key.get(options).await;
        let answer = self.verify(ticket, json!({ "webauthn": assertion })).await;
        assert_eq!(answer.expect(200)["status"], json!("signed_in"), "{}", answer.text);
        self.session = Some(answer.str("token").to_owned());
    }

    /// The WebAuthn options of a sign-in ticket.
    async fn sign_in_options(&self, ticket: &str) -> Value {
        let answer = self.post("/v1/customers/sign-in/webauthn/options", &json!({ "ticket": ticket })).await;
        answer.expect(200).clone()
    }

    /// Registers `key` as a passkey named `name` (the session's step-up must be fresh); answers its id.
    async fn register_passkey(&self, key: &mut SoftKey, name: &str) -> String {
        let answer = self.post("/v1/me/webauthn/register/options", &json!({})).await;
        let options = answer.expect(200).clone();
        assert_eq!(options["publicKey"]["rp"]["id"], json!(RP_ID), "{}", answer.text);
        assert_eq!(options["publicKey"]["authenticatorSelection"]["userVerification"], json!("required"));
        let response = key.create(&options).await;
        let answer = self.post("/v1/me/webauthn/register", &json!({"name": name, "response": response})).await;
        assert_eq!(answer.expect(201)["id"], response["id"], "{}", answer.text);
        assert_eq!(answer.body["name"], json!(name));
        answer.str("id").to_owned()
    }
}

/// Signs `email` up (the TOTP factor enrolled, the address verified from the link that arrives by SMTP) and signs
/// in from the sign-up device with a TOTP code. The session's step-up is fresh.
async fn signed_up(api: &Api, smtp: &Smtp, email: &str) -> Customer {
    let answer = post_public(api, "/v1/customers/sign-up", &json!({"email": email, "password": PASSWORD})).await;
    answer.expect(201);
    let totp_secret = answer.body["totp"]["secret"].as_str().expect("a TOTP secret").to_owned();
    let mut customer = Customer {
        api: api.clone(),
        email: email.to_owned(),
        password: PASSWORD.to_owned(),
        device: Some(answer.str("device_token").to_owned()),
        session: None,
        totp: Authenticator::new(&totp_secret),
        totp_secret,
        backup_codes: Vec::new(),
    };
    let enrol = json!({
        "enrolment_ticket": answer.str("enrolment_ticket"),
        "totp_code": customer.totp.next_code().await,
    });
    let answer = post_public(api, "/v1/customers/sign-up/totp", &enrol).await;
    let codes = answer.expect(200)["backup_codes"].as_array().unwrap_or_else(|| panic!("{}", answer.text));
    customer.backup_codes = codes.iter().map(|c| c.as_str().expect("a code").to_owned()).collect();
    assert_eq!(customer.backup_codes.len(), 10, "{}", answer.text);

    // The address is verified from the link, which comes by SMTP; until then no sign-in.
    let body = json!({"email": email, "password": PASSWORD});
    customer.post("/v1/customers/sign-in", &body).await.assert_error(403, "email_unverified");
    let mail = smtp.wait_for(email, VERIFY_EMAIL).await;
    let token = mail.link_token("/verify-email");
    post_public(api, "/v1/customers/verify-email", &json!({ "token": token })).await.expect(204);
    // The link works once.
    post_public(api, "/v1/customers/verify-email", &json!({ "token": token }))
        .await
        .assert_error(401, "invalid_ticket");

    let code = customer.totp.next_code().await;
    customer.sign_in_with(json!({ "totp_code": code })).await;
    let me = customer.get("/v1/me").await;
    assert_eq!(me.expect(200)["email"], json!(email), "{}", me.text);
    assert_eq!(me.body["email_verified"], json!(true));
    customer
}

/// A value of the server's Prometheus metrics (0 when the series does not exist yet).
async fn metric(api: &Api, series: &str) -> u64 {
    let answer = api.send(api.public(Method::GET, "/metrics")).await;
    assert_eq!(answer.status.as_u16(), 200);
    answer
        .text
        .lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0, |value| value.trim().parse().unwrap_or_else(|_| panic!("{series} is not a count: {value}")))
}

// ---------------------------------------------------------------------------------------------------------------
// 1. Emails through the outbox and a real SMTP server: each security event tells the customer once, with the
//    anti-phishing code once it is set.

async fn every_notification_arrives_once_with_the_code(api: Api, smtp: Smtp) {
    let email = "alice@example.com";
    let mut alice = signed_up(&api, &smtp, email).await;

    // What was sent before the code was set says how to set one, in the same place.
    smtp.wait_for(email, VERIFY_EMAIL).await.assert_for(email, None);
    smtp.wait_for(email, TOTP_ADDED).await.assert_for(email, None);

    let bad = json!({"code": "<b>x</b>"});
    alice.put("/v1/me/anti-phishing-code", &bad).await.assert_error(400, "invalid_anti_phishing_code");
    alice.put("/v1/me/anti-phishing-code", &json!({ "code": ANTI_PHISHING_CODE })).await.expect(204);
    assert_eq!(alice.get("/v1/me").await.body["anti_phishing_code_set"], json!(true));
    smtp.wait_for(email, CODE_CHANGED).await.assert_for(email, Some(ANTI_PHISHING_CODE));

    let answer = alice.post("/v1/me/api-keys", &json!({"label": "trading bot", "scopes": ["read"]})).await;
    answer.expect(201);
    let key_id = answer.str("key").to_owned();
    let mail = smtp.wait_for(email, API_KEY_CREATED).await;
    mail.assert_for(email, Some(ANTI_PHISHING_CODE));
    assert!(mail.text.contains(&key_id), "the email names the key:\n{}", mail.text);
    assert!(!mail.text.contains(answer.str("secret")), "never its secret");

    let change = json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD});
    alice.post("/v1/me/password", &change).await.expect(204);
    alice.password = NEW_PASSWORD.to_owned();
    smtp.wait_for(email, PASSWORD_CHANGED).await.assert_for(email, Some(ANTI_PHISHING_CODE));

    // A sign-in from a new device (no device token) with the right password and a backup code waits for the
    // customer to follow the emailed link.
    let mut phone = Customer {
        api: api.clone(),
        email: email.to_owned(),
        password: NEW_PASSWORD.to_owned(),
        device: None,
        session: None,
        totp_secret: alice.totp_secret.clone(),
        totp: Authenticator::new(&alice.totp_secret),
        backup_codes: Vec::new(),
    };
    let ticket = phone.sign_in_ticket().await;
    let answer = phone.verify(&ticket, json!({"backup_code": alice.backup_codes[0]})).await;
    assert_eq!(answer.expect(202)["status"], json!("device_confirmation_required"), "{}", answer.text);
    assert!(answer.body.get("token").is_none(), "no session before the device is confirmed: {}", answer.text);
    phone.device = Some(answer.str("device_token").to_owned());
    let mail = smtp.wait_for(email, NEW_DEVICE).await;
    mail.assert_for(email, Some(ANTI_PHISHING_CODE));
    assert!(mail.text.contains(&format!("Device: {USER_AGENT}")), "{}", mail.text);
    assert!(mail.text.contains("IP address: 127.0.0.1"), "{}", mail.text);
    let token = mail.link_token("/confirm-device");
    post_public(&api, "/v1/customers/devices/confirm", &json!({ "token": token })).await.expect(204);
    phone.sign_in_with(json!({"backup_code": alice.backup_codes[1]})).await;
    assert_eq!(phone.get("/v1/me").await.expect(200)["email"], json!(email));

    smtp.assert_each_once(
        email,
        &[VERIFY_EMAIL, TOTP_ADDED, CODE_CHANGED, API_KEY_CREATED, PASSWORD_CHANGED, NEW_DEVICE],
    )
    .await;
    // Every email after the code was set carries it (checked one by one above; again for the whole mailbox).
    for mail in smtp.mails_to(email) {
        let code = (![VERIFY_EMAIL, TOTP_ADDED].contains(&mail.subject.as_str())).then_some(ANTI_PHISHING_CODE);
        mail.assert_for(email, code);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 2. A relay that defers a message (451) gets it again later, once; one that refuses it (550) does not get it again.

async fn deferred_email_is_retried_and_refused_email_is_given_up(api: Api, smtp: Smtp) {
    let rejected = "rejected-bob@example.com";
    let greylisted = "greylisted-carol@example.com";
    for email in [rejected, greylisted] {
        post_public(&api, "/v1/customers/sign-up", &json!({"email": email, "password": PASSWORD})).await.expect(201);
    }

    let mail = smtp.wait_for_within(greylisted, VERIFY_EMAIL, GREYLIST_DEADLINE).await;
    mail.assert_for(greylisted, None);
    let attempts = smtp.attempts_to(greylisted);
    let codes: Vec<u16> = attempts.iter().map(|a| a.code).collect();
    assert_eq!(codes, [451, 451, 250], "deferred twice, then accepted");
    // The outbox backs off between attempts (5 s, then 10 s), rather than hammering the relay every round.
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1].at.duration_since(w[0].at)).collect();
    assert!(gaps[0] >= Duration::from_millis(4500) && gaps[1] >= Duration::from_millis(9500), "{gaps:?}");

    // By now (15 s on), a retry of the refused message would have come at least once: it was tried once, and
    // given up.
    let attempts: Vec<u16> = smtp.attempts_to(rejected).iter().map(|a| a.code).collect();
    assert_eq!(attempts, [550], "a permanent refusal is not retried");
    assert!(smtp.mails_to(rejected).is_empty());
    assert_eq!(
        metric(&api, "email_outbox_failed_total{kind=\"email_verification\"}").await,
        1,
        "the outbox counts the message it gave up"
    );
    assert!(metric(&api, "email_outbox_retried_total").await >= 2, "and the deferrals it will retry");

    smtp.assert_each_once(greylisted, &[VERIFY_EMAIL]).await;
    assert_eq!(smtp.attempts_to(greylisted).len(), 3, "nothing after the delivery");
    assert_eq!(smtp.attempts_to(rejected).len(), 1);
}

// ---------------------------------------------------------------------------------------------------------------
// 3. A customer's passkey over HTTP: registered after step-up (an email tells them), then the second factor of a
//    sign-in and of a step-up.

async fn a_customer_passkey_signs_in_and_steps_up(api: Api, smtp: Smtp) {
    let email = "dave@example.com";
    let mut dave = signed_up(&api, &smtp, email).await;
    let mut key = SoftKey::new();
    let id = dave.register_passkey(&mut key, "laptop").await;
    let mail = smtp.wait_for(email, PASSKEY_ADDED).await;
    mail.assert_for(email, None);
    let list = dave.get("/v1/me/webauthn").await;
    let list = list.expect(200).as_array().unwrap_or_else(|| panic!("{}", list.text)).clone();
    assert_eq!(list.len(), 1);
    assert_eq!((&list[0]["id"], &list[0]["name"]), (&json!(id), &json!("laptop")));
    let kinds = dave.get("/v1/me/notifications").await;
    assert!(
        kinds.expect(200).as_array().unwrap().iter().any(|n| n["title"] == json!("Two-factor method added: passkey")),
        "{}",
        kinds.text
    );

    // Sign-in: password, then the passkey.
    let answer = dave.post("/v1/customers/sign-in", &json!({"email": email, "password": PASSWORD})).await;
    assert_eq!(answer.expect(200)["second_factors"], json!(["totp", "webauthn", "backup_code"]), "{}", answer.text);
    let ticket = answer.str("ticket").to_owned();
    let options = dave.sign_in_options(&ticket).await;
    assert_eq!(options["publicKey"]["allowCredentials"][0]["id"], json!(id), "{options}");
    assert_eq!(options["publicKey"]["rpId"], json!(RP_ID), "{options}");
    let assertion = key.get(&options).await;
    let answer = dave.verify(&ticket, json!({ "webauthn": assertion })).await;
    assert_eq!(answer.expect(200)["status"], json!("signed_in"), "{}", answer.text);
    dave.session = Some(answer.str("token").to_owned());
    dave.get("/v1/me").await.expect(200);
    // The same answer again: the ticket is gone.
    dave.verify(&ticket, json!({ "webauthn": assertion })).await.assert_error(401, "invalid_ticket");

    // Step-up in the session.
    let options = dave.post("/v1/me/webauthn/options", &json!({})).await.expect(200).clone();
    let assertion = key.get(&options).await;
    dave.post("/v1/me/step-up", &json!({ "webauthn": assertion })).await.expect(204);
    // The same response again is refused: its challenge was spent.
    let again = dave.post("/v1/me/step-up", &json!({ "webauthn": assertion })).await;
    assert_eq!(again.status.as_u16(), 401, "{}", again.text);
    assert!(["invalid_second_factor", "webauthn_challenge_mismatch"].contains(&again.error_code()), "{}", again.text);
    // … and against a new challenge it answers the wrong one.
    dave.post("/v1/me/webauthn/options", &json!({})).await.expect(200);
    let stale = dave.post("/v1/me/step-up", &json!({ "webauthn": assertion })).await;
    stale.assert_error(401, "webauthn_challenge_mismatch");
    // A step-up the server records with its factor.
    let entries = api.get("/v1/audit/entries?action=auth.customer.step_up&limit=10000").await;
    let entries = entries.expect(200).as_array().unwrap_or_else(|| panic!("{}", entries.text)).clone();
    assert!(
        entries.iter().any(|e| e["outcome"] == json!("success") && e["details"]["factor"] == json!("webauthn")),
        "{entries:?}"
    );

    smtp.assert_each_once(email, &[VERIFY_EMAIL, TOTP_ADDED, PASSKEY_ADDED]).await;
}

// ---------------------------------------------------------------------------------------------------------------
// 4. Attacks on the customer's passkey sign-in: an answer to another challenge, an answer made for a phishing site,
//    a replayed answer and a cloned authenticator are each refused, and the owner still signs in.

async fn passkey_attacks_are_refused(api: Api, smtp: Smtp) {
    let mut erin = signed_up(&api, &smtp, "erin@example.com").await;
    let mut key = SoftKey::new();
    erin.register_passkey(&mut key, "security key").await;
    // The attacker copies the authenticator, private key and signature counter, right after registration.
    let mut clone = key.clone();

    // An answer to an earlier challenge of the same ticket: the later options replaced it.
    let ticket = erin.sign_in_ticket().await;
    let earlier = erin.sign_in_options(&ticket).await;
    let later = erin.sign_in_options(&ticket).await;
    assert_ne!(earlier["publicKey"]["challenge"], later["publicKey"]["challenge"]);
    let stale = key.get(&earlier).await;
    erin.verify(&ticket, json!({ "webauthn": stale })).await.assert_error(401, "webauthn_challenge_mismatch");
    // A challenge is answered once, whatever the outcome: the refused answer spent the later challenge too.
    let spent = key.get(&later).await;
    erin.verify(&ticket, json!({ "webauthn": spent })).await.assert_error(401, "invalid_second_factor");
    let fresh = erin.sign_in_options(&ticket).await;
    let good = key.get(&fresh).await;
    let answer = erin.verify(&ticket, json!({ "webauthn": good })).await;
    assert_eq!(answer.expect(200)["status"], json!("signed_in"), "{}", answer.text);

    // An answer whose client data names a phishing site.
    let ticket = erin.sign_in_ticket().await;
    let options = erin.sign_in_options(&ticket).await;
    let phished = key.get_as(&options, EVIL_ORIGIN).await;
    erin.verify(&ticket, json!({ "webauthn": phished })).await.assert_error(401, "webauthn_origin_mismatch");

    // A replayed answer: the one that signed in, with a new ticket and challenge.
    let ticket = erin.sign_in_ticket().await;
    erin.sign_in_options(&ticket).await;
    erin.verify(&ticket, json!({ "webauthn": good })).await.assert_error(401, "webauthn_challenge_mismatch");
    // … and with a ticket that never asked for a challenge.
    let ticket = erin.sign_in_ticket().await;
    let answer = erin.verify(&ticket, json!({ "webauthn": good })).await;
    assert_eq!(answer.status.as_u16(), 401, "{}", answer.text);
    assert!(["invalid_second_factor", "webauthn_challenge_mismatch"].contains(&answer.error_code()), "{}", answer.text);

    // The clone answers a fresh challenge correctly, but its counter is behind the one stored.
    let ticket = erin.sign_in_ticket().await;
    let options = erin.sign_in_options(&ticket).await;
    let cloned = clone.get(&options).await;
    erin.verify(&ticket, json!({ "webauthn": cloned })).await.assert_error(401, "webauthn_counter_regressed");

    // The same attacks on a step-up, in a session signed in with the passkey.
    let ticket = erin.sign_in_ticket().await;
    let options = erin.sign_in_options(&ticket).await;
    erin.sign_in_with_options(&ticket, &options, &mut key).await;
    let options = erin.post("/v1/me/webauthn/options", &json!({})).await.expect(200).clone();
    let phished = key.get_as(&options, EVIL_ORIGIN).await;
    erin.post("/v1/me/step-up", &json!({ "webauthn": phished })).await.assert_error(401, "webauthn_origin_mismatch");
    let options = erin.post("/v1/me/webauthn/options", &json!({})).await.expect(200).clone();
    let cloned = clone.get(&options).await;
    erin.post("/v1/me/step-up", &json!({ "webauthn": cloned })).await.assert_error(401, "webauthn_counter_regressed");

    // The owner is not locked out.
    let options = erin.post("/v1/me/webauthn/options", &json!({})).await.expect(200).clone();
    let assertion = key.get(&options).await;
    erin.post("/v1/me/step-up", &json!({ "webauthn": assertion })).await.expect(204);
}

// ---------------------------------------------------------------------------------------------------------------
// 5. A challenge is answered once: after a refused answer, the same challenge does not take a second one. The
//    WebAuthn crate's contract ("use [the state] at most once: delete it when finish_* is called, whatever the
//    outcome"), and what the staff sign-in, the step-up and registration do.

async fn a_refused_answer_spends_its_challenge(api: Api, smtp: Smtp) {
    let fay = signed_up(&api, &smtp, "fay@example.com").await;
    let mut key = SoftKey::new();
    fay.register_passkey(&mut key, "phone").await;

    // Sign-in.
    let ticket = fay.sign_in_ticket().await;
    let options = fay.sign_in_options(&ticket).await;
    let phished = key.get_as(&options, EVIL_ORIGIN).await;
    fay.verify(&ticket, json!({ "webauthn": phished })).await.assert_error(401, "webauthn_origin_mismatch");
    let second = key.get(&options).await;
    let answer = fay.verify(&ticket, json!({ "webauthn": second })).await;
    assert!(
        answer.status.as_u16() == 401
            && ["invalid_second_factor", "webauthn_challenge_mismatch", "invalid_ticket"]
                .contains(&answer.error_code()),
        "POST /v1/customers/sign-in/verify accepted a second answer to a challenge whose first answer it refused: \
         {} {}",
        answer.status,
        answer.text
    );

    // Step-up (for comparison: the ceremony is taken whatever the outcome).
    let options = fay.post("/v1/me/webauthn/options", &json!({})).await.expect(200).clone();
    let phished = key.get_as(&options, EVIL_ORIGIN).await;
    fay.post("/v1/me/step-up", &json!({ "webauthn": phished })).await.assert_error(401, "webauthn_origin_mismatch");
    let second = key.get(&options).await;
    let answer = fay.post("/v1/me/step-up", &json!({ "webauthn": second })).await;
    assert_eq!(answer.status.as_u16(), 401, "{}", answer.text);
    assert!(["invalid_second_factor", "webauthn_challenge_mismatch"].contains(&answer.error_code()), "{}", answer.text);
}

// ---------------------------------------------------------------------------------------------------------------
// 6. Staff passkeys: only a staff member registers one (not the development root), then signs in with password and
//    passkey into a working staff session.

async fn a_staff_member_signs_in_with_password_and_passkey(api: Api) {
    let root = &api;
    root.post("/v1/staff/webauthn/register/options", &json!({})).await.assert_error(403, "staff_only");
    let body = json!({"name": "root key", "response": {}});
    root.post("/v1/staff/webauthn/register", &body).await.assert_error(403, "staff_only");

    let (_, code) = root.create_staff("grace").await;
    let mut grace = Staff::enrol(root, "grace", &code, "grace's long passphrase", &[]).await;
    grace.sign_in(root, &[]).await;
    let staff = grace.api(root);
    let start = |password: &str| {
        let body = json!({"username": "grace", "password": password});
        async move { post_public(root, "/v1/staff/sign-in/webauthn/options", &body).await }
    };
    // No passkey yet.
    start("grace's long passphrase").await.assert_error(401, "invalid_credentials");

    let mut key = SoftKey::new();
    let answer = staff.post("/v1/staff/webauthn/register/options", &json!({})).await;
    let options = answer.expect(200).clone();
    assert_eq!(options["publicKey"]["rp"]["id"], json!(RP_ID), "{}", answer.text);
    assert_eq!(options["publicKey"]["user"]["name"], json!("grace"), "{}", answer.text);
    let response = key.create(&options).await;
    let answer = staff.post("/v1/staff/webauthn/register", &json!({"name": "yubikey", "response": response})).await;
    assert_eq!(answer.expect(201)["id"], response["id"], "{}", answer.text);
    // The registration's challenge works once.
    let again = staff.post("/v1/staff/webauthn/register", &json!({"name": "yubikey", "response": response})).await;
    again.assert_error(401, "webauthn_challenge_mismatch");

    // A wrong password gets no challenge.
    start("not grace's passphrase").await.assert_error(401, "invalid_credentials");
    // An answer made for a phishing site.
    let first = start("grace's long passphrase").await;
    first.expect(200);
    let phished = key.get_as(&first.body["options"], EVIL_ORIGIN).await;
    let body = json!({"ticket": first.str("ticket"), "response": phished});
    post_public(root, "/v1/staff/sign-in/webauthn", &body).await.assert_error(401, "webauthn_origin_mismatch");

    // Password and passkey.
    let second = start("grace's long passphrase").await;
    second.expect(200);
    assert_eq!(second.body["options"]["publicKey"]["allowCredentials"][0]["id"], response["id"]);
    let assertion = key.get(&second.body["options"]).await;
    let body = json!({"ticket": second.str("ticket"), "response": assertion});
    let session = post_public(root, "/v1/staff/sign-in/webauthn", &body).await;
    assert_eq!(session.expect(200)["roles"], json!([]), "{}", session.text);
    let token = session.str("token").to_owned();
    assert!(token.starts_with("rst_") && token != grace.token.clone().unwrap_or_default(), "{token}");
    // The ticket and its challenge work once.
    post_public(root, "/v1/staff/sign-in/webauthn", &body).await.assert_error(401, "invalid_ticket");
    // The first ticket was spent by its refused answer.
    let body = json!({"ticket": first.str("ticket"), "response": assertion});
    post_public(root, "/v1/staff/sign-in/webauthn", &body).await.assert_error(401, "invalid_ticket");

    // The session is grace's: it may do what a staff member without roles may (start a registration), is refused
    // what needs a role (403, not 401), and ends at sign-out.
    let by_passkey = root.with_token(&token);
    by_passkey.post("/v1/staff/webauthn/register/options", &json!({})).await.expect(200);
    by_passkey.get("/v1/staff").await.assert_error(403, "forbidden");
    let entries = root.audit_entries("action=auth.staff.sign_in").await;
    assert!(
        entries.iter().any(|e| e["actor"] == json!(grace.actor())
            && e["outcome"] == json!("success")
            && e["details"]["factor"] == json!("webauthn")),
        "the passkey sign-in is audited with its factor: {entries:?}"
    );
    by_passkey.post("/v1/staff/sign-out", &json!({})).await.expect(204);
    by_passkey.get("/v1/staff").await.assert_error(401, "unauthorized");
}

// ---------------------------------------------------------------------------------------------------------------

/// What a scenario's panic said.
fn panic_message(error: tokio::task::JoinError) -> String {
    match error.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "a panic without a message".to_owned()),
        Err(error) => error.to_string(),
    }
}

on_both_backends!(customer_mail_and_passkeys);

async fn customer_mail_and_passkeys(db: Db) {
    let smtp = Smtp::start();
    let server = Server::start_with_config(&db, &config(smtp.port)).await;
    let api = server.api();
    let started = Instant::now();
    let scenarios = vec![
        ("emails", tokio::spawn(every_notification_arrives_once_with_the_code(api.clone(), smtp.clone()))),
        ("retries", tokio::spawn(deferred_email_is_retried_and_refused_email_is_given_up(api.clone(), smtp.clone()))),
        ("customer passkey", tokio::spawn(a_customer_passkey_signs_in_and_steps_up(api.clone(), smtp.clone()))),
        ("passkey attacks", tokio::spawn(passkey_attacks_are_refused(api.clone(), smtp.clone()))),
        ("spent challenge", tokio::spawn(a_refused_answer_spends_its_challenge(api.clone(), smtp.clone()))),
        ("staff passkey", tokio::spawn(a_staff_member_signs_in_with_password_and_passkey(api.clone()))),
    ];
    let mut failures = Vec::new();
    for (name, task) in scenarios {
        if let Err(error) = task.await {
            failures.push(format!("{name}: {}", panic_message(error)));
        }
    }
    eprintln!("{} on {}: {:?}", module_path!(), db.backend(), started.elapsed());
    assert!(failures.is_empty(), "{} scenario(s) failed:\n\n{}", failures.len(), failures.join("\n\n"));
}
