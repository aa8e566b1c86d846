//! The customer-identity chapters of `rampart demo`: the real HTTP service, in this process, on the demo's database,
//! with the demo's hand-moved clock and an in-memory mailbox standing in for SMTP.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, ensure};
use rampart_core::{AssetRegistry, Clock, ManualClock};
use rampart_crypto::Keyring;
use rampart_notify::{EmailMessage, MailFuture, Mailer};
use rampart_server::{AppState, IdentityConfig, VaultState};
use rampart_store::Store;
use serde_json::{Value, json};

const SEC: u64 = 1_000_000_000;

/// Keeps every email it is given.
#[derive(Default)]
pub(crate) struct Mailbox(Mutex<Vec<EmailMessage>>);

impl Mailer for Mailbox {
    fn send<'a>(&'a self, _from: &'a str, msg: &'a EmailMessage) -> MailFuture<'a> {
        self.0.lock().expect("the mailbox lock is never poisoned").push(msg.clone());
        Box::pin(async { Ok(()) })
    }
}

pub(crate) struct Client {
    pub(crate) http: reqwest::Client,
    pub(crate) base: String,
    pub(crate) clock: Arc<ManualClock>,
    pub(crate) state: AppState,
    pub(crate) mailbox: Arc<Mailbox>,
}

impl Client {
    pub(crate) async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a valid method");
        let mut request =
            self.http.request(method, format!("{}{path}", self.base)).header("user-agent", "demo-browser/1.0");
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("the in-process server answers");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Delivers the outbox and answers the newest email whose subject contains `subject`, waiting (up to five
    /// seconds) for events the service records after answering, such as a recovery link.
    pub(crate) async fn email(&self, subject: &str) -> anyhow::Result<EmailMessage> {
        for _ in 0..250 {
            // Everything due is delivered first (earlier chapters leave mail for others in the shared outbox), so
            // that the newest message with the subject is the one this step caused.
            while rampart_server::deliver_outbox_once(&self.state, self.mailbox.as_ref())
                .await
                .map_err(|e| anyhow::anyhow!("outbox: {e}"))?
                > 0
            {}
            let found = {
                let mails = self.mailbox.0.lock().expect("the mailbox lock is never poisoned");
                mails.iter().rev().find(|m| m.subject.contains(subject)).cloned()
            };
            if let Some(mail) = found {
                return Ok(mail);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::bail!("no {subject:?} email")
    }

    pub(crate) fn now_s(&self) -> u64 {
        self.clock.now_ns() / SEC
    }
}

pub(crate) fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

pub(crate) fn token_in(text: &str) -> anyhow::Result<String> {
    let at = text.find("token=").context("a link with a token")?;
    Ok(text[at + 6..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect())
}

pub(crate) fn totp_secret(base32: &str) -> anyhow::Result<rampart_auth::TotpSecret> {
    let bytes = totp_rs::Secret::Encoded(base32.to_owned()).to_bytes().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(rampart_auth::TotpSecret::from_bytes(&bytes)?)
}

fn chapter(title: &str) {
    println!("\n== {title}");
}

/// Runs the identity chapters against the service on `store`, unsealed with `keyring`.
pub async fn run(store: Store, keyring: Arc<Keyring>) -> anyhow::Result<()> {
    let clock = Arc::new(ManualClock::new(1_800_001_000 * SEC));
    let identity = IdentityConfig { public_url: "https://exchange.example".into(), ..IdentityConfig::default() };
    let state = AppState::new(store, AssetRegistry::defaults(), clock.clone(), VaultState::Unsealed(keyring), None)
        .with_identity(identity)
        .map_err(|e| anyhow::anyhow!(e))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(rampart_server::serve(listener, state.clone(), async {
        let _ = stopped.await;
    }));
    let c = Client {
        http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?,
        base,
        clock,
        state,
        mailbox: Arc::new(Mailbox::default()),
    };
    let result = story(&c).await;
    let _ = stop.send(());
    let _ = server.await;
    result
}

async fn story(c: &Client) -> anyhow::Result<()> {
    chapter("14. Sign-up: a strong password, and a second factor before anything else");
    let email = "dana@example.com";
    let (status, body) =
        c.call("POST", "/v1/customers/sign-up", Some(&json!({"email": email, "password": "password1234"})), &[]).await;
    ensure!(status == 400, "a common password is refused");
    println!("   \"password1234\" is refused: {}", body["error"]["message"].as_str().unwrap_or(""));
    let password = "Violet-Anchor-Quartz-1987";
    let (status, signup) =
        c.call("POST", "/v1/customers/sign-up", Some(&json!({"email": email, "password": password})), &[]).await;
    ensure!(status == 201, "sign-up: {signup}");
    let device = signup["device_token"].as_str().context("device token")?.to_owned();
    let otpauth = signup["totp"]["otpauth_uri"].as_str().context("otpauth uri")?;
    let svg = signup["totp"]["qr_svg"].as_str().context("qr code")?;
    println!(
        "   Dana signs up (Argon2id m=19 MiB, t=2, p=1). Her authenticator app scans a QR code ({} bytes of SVG)",
        svg.len()
    );
    println!("   for {}…", &otpauth[..otpauth.find("secret=").unwrap_or(otpauth.len()).min(otpauth.len())]);
    let secret = totp_secret(signup["totp"]["secret"].as_str().context("secret")?)?;
    let (status, codes) = c
        .call(
            "POST",
            "/v1/customers/sign-up/totp",
            Some(&json!({"enrolment_ticket": signup["enrolment_ticket"], "totp_code": secret.code_at(c.now_s())})),
            &[],
        )
        .await;
    ensure!(status == 200, "enrolment: {codes}");
    let backup = codes["backup_codes"].as_array().context("backup codes")?;
    println!("   She proves it with a code; she gets {} one-time backup codes, shown once.", backup.len());
    let mail = c.email("Confirm your email").await?;
    println!("   The verification email arrives; its first line: \"{}\"", mail.text_body.lines().next().unwrap_or(""));
    let (status, _) =
        c.call("POST", "/v1/customers/verify-email", Some(&json!({"token": token_in(&mail.text_body)?})), &[]).await;
    ensure!(status == 204, "email verified");
    println!("   She follows the link: email verified. Ledger accounts for BTC, ETH and USDT were opened at sign-up.");

    chapter("15. Sign-in: password, then a second factor; each code works once");
    c.clock.advance_ns(30 * SEC);
    let (status, ticket) =
        c.call("POST", "/v1/customers/sign-in", Some(&json!({"email": email, "password": password})), &[]).await;
    ensure!(status == 200, "sign-in: {ticket}");
    let totp = secret.code_at(c.now_s());
    let (status, session) = c
        .call(
            "POST",
            "/v1/customers/sign-in/verify",
            Some(&json!({"ticket": ticket["ticket"], "totp_code": totp})),
            &[("x-rampart-device", &device)],
        )
        .await;
    ensure!(status == 200, "second factor: {session}");
    let token = format!("Bearer {}", session["token"].as_str().context("session token")?);
    let me = [("authorization", token.as_str()), ("x-rampart-device", device.as_str())];
    println!("   Password right, then the code {totp}: signed in on her known device.");
    let (status, again) =
        c.call("POST", "/v1/customers/sign-in", Some(&json!({"email": email, "password": password})), &[]).await;
    ensure!(status == 200, "second sign-in ticket: {again}");
    let (status, replay) = c
        .call(
            "POST",
            "/v1/customers/sign-in/verify",
            Some(&json!({"ticket": again["ticket"], "totp_code": totp})),
            &[("x-rampart-device", &device)],
        )
        .await;
    ensure!(status == 401 && code(&replay) == "invalid_second_factor", "a replayed code is refused: {replay}");
    println!("   Someone replays the same code a moment later: refused ({}), because its time step was", code(&replay));
    println!("   already used; the database accepts each step once per account, on every node.");
    let (status, stolen) = c.call("GET", "/v1/me", None, &[("authorization", token.as_str())]).await;
    ensure!(status == 401, "a session without its device is refused");
    println!("   Her session token alone, without her device's token, is refused too: {}.", code(&stolen));

    chapter("16. The anti-phishing code, in every email from now on");
    let (status, _) = c.call("PUT", "/v1/me/anti-phishing-code", Some(&json!({"code": "LIGHTHOUSE-7"})), &me).await;
    ensure!(status == 204, "anti-phishing code set");
    let mail = c.email("anti-phishing").await?;
    println!("   She sets LIGHTHOUSE-7 (she signed in with a second factor under 5 minutes ago: step-up holds).");
    println!("   The confirmation email's first line: \"{}\"", mail.text_body.lines().next().unwrap_or(""));

    chapter("17. An API key, and a signed request");
    let (status, key) = c
        .call(
            "POST",
            "/v1/me/api-keys",
            Some(&json!({"label": "portfolio bot", "scopes": ["read"], "allow_list": ["127.0.0.1"]})),
            &me,
        )
        .await;
    ensure!(status == 201, "api key: {key}");
    let key_id = key["key"].as_str().context("key id")?.to_owned();
    let secret = rampart_auth::ApiKeySecret::parse(key["secret"].as_str().context("secret")?)?;
    let ts = (c.clock.now_ns() / 1_000_000).to_string();
    let sign = rampart_auth::sign_hex(&secret, "GET", "/v1/me/balances", b"", ts.parse()?);
    let signed =
        [("x-rampart-key", key_id.as_str()), ("x-rampart-timestamp", ts.as_str()), ("x-rampart-sign", sign.as_str())];
    let (status, balances) = c.call("GET", "/v1/me/balances", None, &signed).await;
    ensure!(status == 200, "a signed request: {balances}");
    println!("   A read-only key {key_id}, usable from 127.0.0.1 only; the secret is shown once and stored encrypted.");
    println!(
        "   GET /v1/me/balances signed with HMAC-SHA256(secret, method + path + body + timestamp): {status}, {} balances.",
        balances.as_array().map_or(0, Vec::len)
    );
    let (status, replay) = c.call("GET", "/v1/me/balances", None, &signed).await;
    ensure!(status == 401 && code(&replay) == "replayed_signature", "a replayed signature: {replay}");
    println!("   The same signed request again: {status} {}.", code(&replay));
    c.clock.advance_ns(6 * SEC);
    let ts = (c.clock.now_ns() / 1_000_000 - 6_000).to_string();
    let sign = rampart_auth::sign_hex(&secret, "GET", "/v1/me/balances", b"", ts.parse()?);
    let (status, late) = c
        .call(
            "GET",
            "/v1/me/balances",
            None,
            &[
                ("x-rampart-key", key_id.as_str()),
                ("x-rampart-timestamp", ts.as_str()),
                ("x-rampart-sign", sign.as_str()),
            ],
        )
        .await;
    ensure!(status == 401, "an old timestamp is refused");
    println!("   One signed 6 s ago (the window is 5 s): {status} {}.", code(&late));

    chapter("18. A password change locks withdrawals for 24 hours");
    c.clock.advance_ns(10 * 60 * SEC);
    let change = json!({"current_password": password, "new_password": "Copper-Meadow-Lantern-2044"});
    let (status, refused) = c.call("POST", "/v1/me/password", Some(&change), &me).await;
    ensure!(status == 403 && code(&refused) == "step_up_required", "step-up after 10 minutes: {refused}");
    println!("   Ten minutes later the change needs a fresh second factor: {}.", code(&refused));
    let (status, _) = c.call("POST", "/v1/me/step-up", Some(&json!({"backup_code": backup[0]})), &me).await;
    ensure!(status == 204, "step-up with a backup code");
    let (status, _) = c.call("POST", "/v1/me/password", Some(&change), &me).await;
    ensure!(status == 204, "password changed");
    let (_, gate) = c.call("GET", "/v1/me/withdrawal-status", None, &me).await;
    ensure!(gate["allowed"] == json!(false), "withdrawals locked: {gate}");
    println!("   After a step-up with a backup code, the password changes; every other session ends, and:");
    println!("   {}", gate["message"].as_str().unwrap_or(""));
    let mail = c.email("password was changed").await?;
    println!("   Email \"{}\" ({}).", mail.subject, mail.text_body.lines().next().unwrap_or(""));

    chapter("19. Guessing passwords gets slower, then locks the account");
    let (mut failures, mut slowed) = (0, 0);
    for _ in 0..40 {
        let (status, body) = c
            .call("POST", "/v1/customers/sign-in", Some(&json!({"email": email, "password": "wrong guess 123"})), &[])
            .await;
        match status {
            401 => failures += 1,
            429 => {
                slowed += 1;
                c.clock.advance_ns(16 * 60 * SEC);
            }
            403 if code(&body) == "account_locked" => break,
            _ => anyhow::bail!("unexpected answer to a wrong password: {status} {body}"),
        }
    }
    println!(
        "   {failures} wrong passwords answered 401 (the replayed code of chapter 15 counted too), {slowed} attempts"
    );
    println!(
        "   were told to wait (429 with Retry-After, doubling each time), and the 10th failure locked the account."
    );
    c.clock.advance_ns(16 * 60 * SEC);
    let (status, locked) = c
        .call(
            "POST",
            "/v1/customers/sign-in",
            Some(&json!({"email": email, "password": "Copper-Meadow-Lantern-2044"})),
            &[],
        )
        .await;
    ensure!(status == 403 && code(&locked) == "account_locked", "locked: {locked}");
    println!("   The counters live in the database, shared by every node. Even the right password now gets");
    println!("   {}: only Dana with a second factor, or support after identity checks, can unlock it.", code(&locked));

    chapter("20. Recovery: the emailed link and a second factor; withdrawals wait 48 hours");
    let (status, _) = c.call("POST", "/v1/customers/recovery/start", Some(&json!({"email": email})), &[]).await;
    ensure!(status == 202, "recovery started");
    let mail = c.email("recovery").await?;
    let finish = json!({"token": token_in(&mail.text_body)?, "new_password": "Granite-Harbor-Willow-3310", "backup_code": backup[1]});
    let (status, recovered) = c.call("POST", "/v1/customers/recovery/finish", Some(&finish), &[]).await;
    ensure!(status == 200, "recovered: {recovered}");
    println!("   The recovery link arrives (with LIGHTHOUSE-7 on top); with it and a backup code Dana sets a new");
    println!(
        "   password. The account is unlocked, every session ended, and withdrawals wait until {}.",
        recovered["withdrawals_locked_until"].as_str().unwrap_or("?")
    );
    let (status, reused) = c.call("POST", "/v1/customers/recovery/finish", Some(&finish), &[]).await;
    ensure!(status == 401, "a used link is refused: {reused}");
    println!("   The same link again: {status} {}.", code(&reused));
    Ok(())
}
