//! `rampart custodian …`: a custodian's side of custody ceremonies, run against the service. The custodian's identity
//! keys and key shares live in their key file, encrypted under their passphrase (Argon2id + XChaCha20-Poly1305); the
//! service only relays messages. Every message is signed with the custodian's Ed25519 identity key, secret packages
//! are encrypted to their recipient's X25519 key, and every message received is checked against its sender's key
//! before it is used: a relay that alters or invents a message is caught here, not trusted.
//!
//! A ceremony runs in one process from start to end, polling the service between rounds, so that secret polynomials
//! and nonces never leave memory.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow, bail, ensure};
use bitcoin::consensus::encode::deserialize;
use bitcoin::{Network, ScriptBuf, Transaction, TxOut};
use rampart_custody::dkg::{CeremonyKind, Confirmation, Participant};
use rampart_custody::envelope::{self, Identity, PublicIdentity};
use rampart_custody::frost::Identifier;
use rampart_custody::frost::keys::dkg::{round1, round2};
use rampart_custody::frost::keys::repairable::{Delta, Sigma};
use rampart_custody::frost::keys::{KeyPackage, PublicKeyPackage};
use rampart_custody::frost::round1::SigningCommitments;
use rampart_custody::refresh::RefreshParticipant;
use rampart_custody::{custodian_commit, custodian_sign, key_spend_sighashes, keyfile, repair, summary};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// One share of a cold key held by this custodian.
#[derive(Serialize, Deserialize, Clone)]
pub struct ShareEntry {
    /// The asset.
    pub asset: String,
    /// The wallet.
    pub wallet_id: i64,
    /// The key's epoch the share belongs to.
    pub epoch: u64,
    /// The share's identifier.
    pub identifier: u16,
    /// The FROST key package (hex).
    pub key_package: String,
    /// The group's public key package (hex).
    pub public_package: String,
}

/// What a key file holds: the identity keys and the shares.
#[derive(Serialize, Deserialize)]
struct Contents {
    version: u32,
    identity: String,
    shares: Vec<ShareEntry>,
}

/// A custodian's secrets, opened.
pub struct Custodian {
    /// The identity keys.
    pub identity: Identity,
    /// The shares.
    pub shares: Vec<ShareEntry>,
}

impl Custodian {
    /// A new custodian with fresh identity keys and no share.
    pub fn generate() -> Custodian {
        Custodian { identity: Identity::generate(), shares: Vec::new() }
    }

    /// Opens a key file.
    pub fn load(path: &Path, passphrase: &str) -> anyhow::Result<Custodian> {
        let sealed = std::fs::read(path).with_context(|| format!("reading the key file {}", path.display()))?;
        let plain = keyfile::open(&sealed, passphrase).map_err(|e| anyhow!("{e} ({})", path.display()))?;
        let contents: Contents = serde_json::from_slice(&plain).context("the key file's contents do not parse")?;
        ensure!(contents.version == 1, "key file version {} is not supported", contents.version);
        let identity_bytes = zeroize::Zeroizing::new(hex::decode(&contents.identity).context("the identity")?);
        let identity = Identity::from_bytes(&identity_bytes).map_err(|e| anyhow!("{e}"))?;
        Ok(Custodian { identity, shares: contents.shares })
    }

    /// Writes the key file (atomically: a temporary file renamed over it).
    pub fn save(&self, path: &Path, passphrase: &str) -> anyhow::Result<()> {
        let contents = Contents {
            version: 1,
            identity: hex::encode(self.identity.to_bytes().as_slice()),
            shares: self.shares.clone(),
        };
        let plain = zeroize::Zeroizing::new(serde_json::to_vec(&contents)?);
        let sealed = keyfile::seal(&plain, passphrase).map_err(|e| anyhow!("{e}"))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, sealed).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
        Ok(())
    }

    /// The share of a wallet, if held.
    pub fn share(&self, wallet_id: i64) -> Option<&ShareEntry> {
        self.shares.iter().find(|s| s.wallet_id == wallet_id)
    }

    fn put_share(&mut self, entry: ShareEntry) {
        self.shares.retain(|s| s.wallet_id != entry.wallet_id);
        self.shares.push(entry);
    }
}

/// The service as a custodian reaches it: a base URL and their staff session token.
pub struct Service {
    http: reqwest::Client,
    base: String,
    token: String,
    /// How often to ask whether the others have answered.
    pub poll: Duration,
    /// How long to wait for the others at most.
    pub patience: Duration,
}

impl Service {
    /// A client of the service at `base` with a staff session token.
    pub fn new(base: &str, token: &str) -> Service {
        Service {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            poll: Duration::from_millis(100),
            patience: Duration::from_secs(600),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let mut request = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.with_context(|| format!("reaching {}", self.base))?;
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!(
                "{path}: {} {}: {}",
                status.as_u16(),
                value["error"]["code"].as_str().unwrap_or("error"),
                value["error"]["message"].as_str().unwrap_or("")
            );
        }
        Ok(value)
    }

    /// GET.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// POST.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// GET of a binary answer.
    pub async fn get_bytes(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let request = self.http.get(format!("{}{path}", self.base)).bearer_auth(&self.token);
        let response = request.send().await.with_context(|| format!("reaching {}", self.base))?;
        let status = response.status();
        if !status.is_success() {
            let value: Value = response.json().await.unwrap_or(Value::Null);
            bail!(
                "{path}: {} {}: {}",
                status.as_u16(),
                value["error"]["code"].as_str().unwrap_or("error"),
                value["error"]["message"].as_str().unwrap_or("")
            );
        }
        Ok(response.bytes().await.with_context(|| format!("reading {path}"))?.to_vec())
    }
}

/// Registers the custodian's identity keys with the service (an administrator then activates them).
pub async fn register(service: &Service, me: &Custodian) -> anyhow::Result<Value> {
    let public = me.identity.public();
    service
        .post(
            "/v1/custody/custodians",
            &json!({"signing_key": hex::encode(public.signing), "exchange_key": hex::encode(public.exchange)}),
        )
        .await
}

struct Ceremony {
    id: i64,
    view: Value,
    me: u16,
    roster: BTreeMap<u16, PublicIdentity>,
    names: BTreeMap<u16, String>,
}

fn context(id: i64) -> Vec<u8> {
    format!("rampart/custody/ceremony/{id}").into_bytes()
}

fn id_of(i: u16) -> anyhow::Result<Identifier> {
    Identifier::try_from(i).map_err(|e| anyhow!("identifier {i}: {e}"))
}

fn number_of(id: &Identifier) -> u16 {
    let bytes = id.serialize();
    let n = bytes.len();
    if n >= 2 { u16::from_be_bytes([bytes[n - 2], bytes[n - 1]]) } else { 0 }
}

impl Ceremony {
    async fn fetch(service: &Service, id: i64) -> anyhow::Result<Ceremony> {
        let view = service.get(&format!("/v1/custody/ceremonies/{id}")).await?;
        let me = view["you"]
            .as_u64()
            .and_then(|v| u16::try_from(v).ok())
            .ok_or_else(|| anyhow!("you are not in ceremony {id}"))?;
        let mut roster = BTreeMap::new();
        let mut names = BTreeMap::new();
        for entry in view["roster"].as_array().into_iter().flatten() {
            let identifier = entry["identifier"]
                .as_u64()
                .and_then(|v| u16::try_from(v).ok())
                .ok_or_else(|| anyhow!("a bad roster"))?;
            let key = PublicIdentity::parse(&format!(
                "{}{}",
                entry["signing_key"].as_str().unwrap_or(""),
                entry["exchange_key"].as_str().unwrap_or("")
            ))
            .map_err(|e| anyhow!("the identity of participant {identifier}: {e}"))?;
            roster.insert(identifier, key);
            names.insert(identifier, entry["name"].as_str().unwrap_or("?").to_owned());
        }
        Ok(Ceremony { id, view, me, roster, names })
    }

    async fn refresh(&mut self, service: &Service) -> anyhow::Result<()> {
        self.view = service.get(&format!("/v1/custody/ceremonies/{}", self.id)).await?;
        match self.view["state"].as_str() {
            Some("open") | Some("completed") => Ok(()),
            other => bail!(
                "ceremony {} is {}: {}",
                self.id,
                other.unwrap_or("?"),
                self.view["failure"].as_str().unwrap_or("no reason given")
            ),
        }
    }

    async fn post(
        &self,
        service: &Service,
        me: &Custodian,
        round: &str,
        to: Option<u16>,
        payload: &[u8],
    ) -> anyhow::Result<()> {
        let signature = envelope::sign_message(&me.identity, &context(self.id), round, self.me, to, payload);
        service
            .post(
                &format!("/v1/custody/ceremonies/{}/messages", self.id),
                &json!({
                    "round": round, "sender": self.me, "recipient": to.unwrap_or(0),
                    "payload": hex::encode(payload), "signature": hex::encode(signature),
                }),
            )
            .await?;
        Ok(())
    }

    /// The messages of a round, each checked against its sender's identity key; waits until `expected` senders
    /// have posted (to this participant or to everyone).
    async fn wait_for(
        &mut self,
        service: &Service,
        round: &str,
        expected: usize,
    ) -> anyhow::Result<BTreeMap<u16, Vec<u8>>> {
        let started = std::time::Instant::now();
        loop {
            self.refresh(service).await?;
            let mut got = BTreeMap::new();
            for m in self.view["messages"].as_array().into_iter().flatten() {
                if m["round"].as_str() != Some(round) {
                    continue;
                }
                let sender = m["sender"].as_u64().and_then(|v| u16::try_from(v).ok()).unwrap_or(0);
                let recipient = m["recipient"].as_u64().and_then(|v| u16::try_from(v).ok()).unwrap_or(0);
                if recipient != 0 && recipient != self.me {
                    continue;
                }
                let payload = hex::decode(m["payload"].as_str().unwrap_or("")).context("a payload")?;
                let signature: [u8; 64] = hex::decode(m["signature"].as_str().unwrap_or(""))
                    .ok()
                    .and_then(|s| s.try_into().ok())
                    .ok_or_else(|| anyhow!("a message without a signature"))?;
                let key = self.roster.get(&sender).ok_or_else(|| anyhow!("a message from outside the roster"))?;
                let to = (recipient != 0).then_some(recipient);
                ensure!(
                    envelope::verify_message(&key.signing, &context(self.id), round, sender, to, &payload, &signature),
                    "the {round} message of {} is not signed by them: the relay altered it",
                    self.names.get(&sender).map_or("?", String::as_str)
                );
                got.insert(sender, payload);
            }
            if got.len() >= expected {
                return Ok(got);
            }
            ensure!(
                started.elapsed() < service.patience,
                "gave up waiting for the {round} messages of ceremony {}",
                self.id
            );
            tokio::time::sleep(service.poll).await;
        }
    }

    async fn wait_completed(&mut self, service: &Service) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        loop {
            self.refresh(service).await?;
            if self.view["state"] == "completed" {
                return Ok(());
            }
            ensure!(started.elapsed() < service.patience, "gave up waiting for ceremony {} to complete", self.id);
            tokio::time::sleep(service.poll).await;
        }
    }

    fn identities(&self) -> anyhow::Result<BTreeMap<Identifier, ed25519_dalek::VerifyingKey>> {
        self.roster
            .iter()
            .map(|(i, k)| {
                Ok((id_of(*i)?, ed25519_dalek::VerifyingKey::from_bytes(&k.signing).map_err(|e| anyhow!("{e}"))?))
            })
            .collect()
    }
}

fn confirmation_payload(c: &Confirmation, public: &PublicKeyPackage) -> anyhow::Result<Vec<u8>> {
    let mut payload = c.transcript.to_vec();
    payload.extend_from_slice(&c.signature);
    payload.extend_from_slice(&public.serialize().map_err(|e| anyhow!("{e}"))?);
    Ok(payload)
}

fn parse_confirmations(kind: CeremonyKind, got: &BTreeMap<u16, Vec<u8>>) -> anyhow::Result<Vec<Confirmation>> {
    got.iter()
        .map(|(sender, p)| {
            ensure!(p.len() > 96, "a malformed confirmation");
            let public = PublicKeyPackage::deserialize(&p[96..]).map_err(|e| anyhow!("{e}"))?;
            Ok(Confirmation {
                kind,
                id: id_of(*sender)?,
                transcript: p[..32].try_into().expect("32 bytes"),
                group_key: public.verifying_key().serialize().map_err(|e| anyhow!("{e}"))?,
                signature: p[32..96].try_into().expect("64 bytes"),
            })
        })
        .collect()
}

/// What a key ceremony left this custodian with.
pub struct KeyResult {
    /// The wallet.
    pub wallet_id: i64,
    /// The epoch.
    pub epoch: u64,
    /// The wallet's address.
    pub address: String,
}

fn entry(
    asset: &str,
    wallet_id: i64,
    epoch: u64,
    me: u16,
    key: &KeyPackage,
    public: &PublicKeyPackage,
) -> anyhow::Result<ShareEntry> {
    Ok(ShareEntry {
        asset: asset.to_owned(),
        wallet_id,
        epoch,
        identifier: me,
        key_package: hex::encode(key.serialize().map_err(|e| anyhow!("{e}"))?),
        public_package: hex::encode(public.serialize().map_err(|e| anyhow!("{e}"))?),
    })
}

fn address_of(public: &PublicKeyPackage, network: &str) -> anyhow::Result<String> {
    let network: Network = network.parse().unwrap_or(Network::Regtest);
    let script = rampart_custody::output_script(public).map_err(|e| anyhow!("{e}"))?;
    Ok(bitcoin::Address::from_script(&script, network).map(|a| a.to_string()).unwrap_or_default())
}

/// Takes part in a distributed key generation (`kind = dkg`) or a share refresh or removal (`refresh`, `remove`) to
/// its end; the new share is added to `me` (the caller saves the key file).
pub async fn key_ceremony(service: &Service, me: &mut Custodian, ceremony: i64) -> anyhow::Result<KeyResult> {
    let mut c = Ceremony::fetch(service, ceremony).await?;
    let kind = c.view["kind"].as_str().unwrap_or("").to_owned();
    let asset = c.view["asset"].as_str().unwrap_or("").to_owned();
    let network = c.view["network"].as_str().unwrap_or("regtest").to_owned();
    let n = c.roster.len();
    let total = u16::try_from(n)?;
    let threshold = u16::try_from(c.view["threshold"].as_u64().unwrap_or(0))?;
    let confirm_kind = if kind == "dkg" { CeremonyKind::Dkg } else { CeremonyKind::Refresh };
    let my_id = id_of(c.me)?;
    enum Either {
        Dkg(Box<Participant>),
        Refresh(Box<RefreshParticipant>),
    }
    let (mut participant, package, old_wallet, epoch) = match kind.as_str() {
        "dkg" => {
            let (p, pkg) = Participant::start(my_id, total, threshold).map_err(|e| anyhow!("{e}"))?;
            (Either::Dkg(Box::new(p)), pkg, None, 1)
        }
        "refresh" | "remove" => {
            let wallet_id = c.view["wallet_id"].as_i64().ok_or_else(|| anyhow!("a refresh without a wallet"))?;
            let held =
                me.share(wallet_id).ok_or_else(|| anyhow!("this key file holds no share of wallet {wallet_id}"))?;
            let current = c.view["epoch"].as_u64().unwrap_or(0);
            ensure!(
                held.epoch == current,
                "this key file's share is of epoch {}, the wallet is at {current}",
                held.epoch
            );
            let key = KeyPackage::deserialize(&hex::decode(&held.key_package)?).map_err(|e| anyhow!("{e}"))?;
            let public =
                PublicKeyPackage::deserialize(&hex::decode(&held.public_package)?).map_err(|e| anyhow!("{e}"))?;
            let epoch = current + 1;
            let (p, pkg) =
                RefreshParticipant::start(my_id, total, threshold, epoch, key, public).map_err(|e| anyhow!("{e}"))?;
            (Either::Refresh(Box::new(p)), pkg, Some(wallet_id), epoch)
        }
        other => bail!("ceremony {ceremony} is a {other} ceremony, not a key generation or refresh"),
    };
    c.post(service, me, "round1", None, &package.serialize().map_err(|e| anyhow!("{e}"))?).await?;
    let got = c.wait_for(service, "round1", n).await?;
    let mut broadcast = BTreeMap::new();
    for (sender, bytes) in &got {
        if *sender != c.me {
            broadcast.insert(id_of(*sender)?, round1::Package::deserialize(bytes).map_err(|e| anyhow!("{e}"))?);
        }
    }
    let outgoing = match &mut participant {
        Either::Dkg(p) => p.round2(broadcast).map_err(|e| anyhow!("{e}"))?,
        Either::Refresh(p) => p.round2(broadcast).map_err(|e| anyhow!("{e}"))?,
    };
    for (to, pkg) in outgoing {
        let to = number_of(&to);
        let recipient = c.roster.get(&to).ok_or_else(|| anyhow!("a package for someone outside the roster"))?;
        let plain = zeroize::Zeroizing::new(pkg.serialize().map_err(|e| anyhow!("{e}"))?);
        let sealed =
            envelope::seal_to(recipient, &me.identity, &context(ceremony), &plain).map_err(|e| anyhow!("{e}"))?;
        c.post(service, me, "round2", Some(to), &sealed).await?;
    }
    let got = c.wait_for(service, "round2", n - 1).await?;
    let mut received = BTreeMap::new();
    for (sender, sealed) in &got {
        let from = c.roster.get(sender).ok_or_else(|| anyhow!("a package from outside the roster"))?;
        let plain = envelope::open_from(&me.identity, from, &context(ceremony), sealed).map_err(|e| anyhow!("{e}"))?;
        received.insert(id_of(*sender)?, round2::Package::deserialize(&plain).map_err(|e| anyhow!("{e}"))?);
    }
    let (confirmation, public) = match &mut participant {
        Either::Dkg(p) => {
            let c = p.round3(&received, me.identity.signing_key()).map_err(|e| anyhow!("{e}"))?;
            (c, p.public_package().cloned().ok_or_else(|| anyhow!("no key package"))?)
        }
        Either::Refresh(p) => {
            let c = p.round3(&received, me.identity.signing_key()).map_err(|e| anyhow!("{e}"))?;
            (c, p.public_package().cloned().ok_or_else(|| anyhow!("no key package"))?)
        }
    };
    c.post(service, me, "confirm", None, &confirmation_payload(&confirmation, &public)?).await?;
    let got = c.wait_for(service, "confirm", n).await?;
    let confirmations = parse_confirmations(confirm_kind, &got)?;
    let identities = c.identities()?;
    let (key, public) = match participant {
        Either::Dkg(p) => p.finish(&confirmations, &identities).map_err(|e| anyhow!("{e}"))?,
        Either::Refresh(p) => p.finish(&confirmations, &identities).map_err(|e| anyhow!("{e}"))?,
    };
    c.wait_completed(service).await?;
    let wallet_id =
        c.view["wallet_id"].as_i64().or(old_wallet).ok_or_else(|| anyhow!("the service named no wallet"))?;
    me.put_share(entry(&asset, wallet_id, epoch, c.me, &key, &public)?);
    Ok(KeyResult { wallet_id, epoch, address: address_of(&public, &network)? })
}

/// Takes part in the repair of a lost share: a helper sends its deltas and sigma; the custodian who lost the share
/// rebuilds it, checks it against the group's verifying share and keeps it.
pub async fn repair_ceremony(service: &Service, me: &mut Custodian, ceremony: i64) -> anyhow::Result<String> {
    let mut c = Ceremony::fetch(service, ceremony).await?;
    ensure!(c.view["kind"] == "repair", "ceremony {ceremony} is not a repair");
    let lost = u16::try_from(c.view["params"]["lost"].as_u64().unwrap_or(0))?;
    let helpers: Vec<u16> = c.view["params"]["helpers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_u64().and_then(|v| u16::try_from(v).ok()))
        .collect();
    let wallet_id = c.view["wallet_id"].as_i64().ok_or_else(|| anyhow!("a repair without a wallet"))?;
    let public_hex = c.view["public_package"].as_str().ok_or_else(|| anyhow!("no public key package"))?.to_owned();
    let public = PublicKeyPackage::deserialize(&hex::decode(&public_hex)?).map_err(|e| anyhow!("{e}"))?;
    let helper_ids: Vec<Identifier> = helpers.iter().map(|h| id_of(*h)).collect::<Result<_, _>>()?;
    if c.me == lost {
        let got = c.wait_for(service, "sigma", helpers.len()).await?;
        let mut sigmas = Vec::new();
        for (sender, sealed) in &got {
            let from = c.roster.get(sender).ok_or_else(|| anyhow!("a sigma from outside the roster"))?;
            let plain =
                envelope::open_from(&me.identity, from, &context(ceremony), sealed).map_err(|e| anyhow!("{e}"))?;
            sigmas.push(Sigma::deserialize(&plain).map_err(|e| anyhow!("{e}"))?);
        }
        let key = repair::rebuild(&sigmas, id_of(lost)?, &public).map_err(|e| anyhow!("{e}"))?;
        let share = key.verifying_share().serialize().map_err(|e| anyhow!("{e}"))?;
        c.post(service, me, "confirm", None, &share).await?;
        c.wait_completed(service).await?;
        let epoch = c.view["epoch"].as_u64().unwrap_or(1);
        let asset = c.view["asset"].as_str().unwrap_or("").to_owned();
        me.put_share(entry(&asset, wallet_id, epoch, lost, &key, &public)?);
        return Ok(format!("share {lost} rebuilt and checked against the group's verifying share"));
    }
    ensure!(helpers.contains(&c.me), "you are neither a helper nor the owner of the lost share");
    let held = me.share(wallet_id).ok_or_else(|| anyhow!("this key file holds no share of wallet {wallet_id}"))?;
    let key = KeyPackage::deserialize(&hex::decode(&held.key_package)?).map_err(|e| anyhow!("{e}"))?;
    let deltas = repair::helper_deltas(&helper_ids, &key, id_of(lost)?).map_err(|e| anyhow!("{e}"))?;
    let mut own_delta = None;
    for (to, delta) in deltas {
        let to = number_of(&to);
        let plain = zeroize::Zeroizing::new(delta.serialize());
        if to == c.me {
            own_delta = Some(delta);
            continue;
        }
        let recipient = c.roster.get(&to).ok_or_else(|| anyhow!("a delta for someone outside the roster"))?;
        let sealed =
            envelope::seal_to(recipient, &me.identity, &context(ceremony), &plain).map_err(|e| anyhow!("{e}"))?;
        c.post(service, me, "delta", Some(to), &sealed).await?;
    }
    let got = c.wait_for(service, "delta", helpers.len() - 1).await?;
    let mut received: Vec<Delta> = own_delta.into_iter().collect();
    for (sender, sealed) in &got {
        let from = c.roster.get(sender).ok_or_else(|| anyhow!("a delta from outside the roster"))?;
        let plain = envelope::open_from(&me.identity, from, &context(ceremony), sealed).map_err(|e| anyhow!("{e}"))?;
        received.push(Delta::deserialize(&plain).map_err(|e| anyhow!("{e}"))?);
    }
    let sigma = repair::helper_sigma(&received);
    let owner = c.roster.get(&lost).ok_or_else(|| anyhow!("the owner is outside the roster"))?;
    let sealed =
        envelope::seal_to(owner, &me.identity, &context(ceremony), &sigma.serialize()).map_err(|e| anyhow!("{e}"))?;
    c.post(service, me, "sigma", Some(lost), &sealed).await?;
    c.wait_completed(service).await?;
    Ok(format!("helped rebuild share {lost}"))
}

/// What a custodian is shown before signing, and what came of it.
pub struct SignResult {
    /// The summary shown.
    pub summary: String,
    /// Whether this custodian was among the signers.
    pub signed: bool,
    /// The transaction id, once the service completed the session.
    pub txid: Option<String>,
}

/// Takes part in a signing session: recomputes every signature hash from the transaction and the outputs it spends
/// (never trusting the service's description), shows what is being signed, asks `approve` and only then commits and
/// signs. Answers what was shown and whether this custodian signed (the first `threshold` to commit sign).
pub async fn sign_session(
    service: &Service,
    me: &Custodian,
    session: i64,
    approve: impl FnOnce(&str) -> bool,
) -> anyhow::Result<SignResult> {
    let mut c = Ceremony::fetch(service, session).await?;
    ensure!(c.view["kind"] == "sign", "ceremony {session} is not a signing session");
    let wallet_id = c.view["wallet_id"].as_i64().ok_or_else(|| anyhow!("a session without a wallet"))?;
    let held = me.share(wallet_id).ok_or_else(|| anyhow!("this key file holds no share of wallet {wallet_id}"))?;
    let current = c.view["epoch"].as_u64().unwrap_or(0);
    ensure!(
        held.epoch == current,
        "this key file's share is of epoch {} but the wallet is at {current}: it was refreshed",
        held.epoch
    );
    let key = KeyPackage::deserialize(&hex::decode(&held.key_package)?).map_err(|e| anyhow!("{e}"))?;
    let public = PublicKeyPackage::deserialize(&hex::decode(&held.public_package)?).map_err(|e| anyhow!("{e}"))?;
    let network: Network = c.view["network"].as_str().unwrap_or("regtest").parse().unwrap_or(Network::Regtest);
    // The wallet's script comes from this custodian's own key package, not from the service.
    let wallet: ScriptBuf = rampart_custody::output_script(&public).map_err(|e| anyhow!("{e}"))?;
    if let Some(attest) = c.view["params"].get("attest").cloned() {
        return attest_session(&mut c, service, me, &key, &wallet, network, &attest, approve).await;
    }
    let tx: Transaction = deserialize(&hex::decode(c.view["tx"].as_str().unwrap_or(""))?).context("the transaction")?;
    let spent: Vec<TxOut> =
        deserialize(&hex::decode(c.view["prevouts"].as_str().unwrap_or(""))?).context("the spent outputs")?;
    let facts = summary::describe(&tx, &spent, &wallet, network).map_err(|e| anyhow!("{e}"))?;
    let mut text = format!(
        "session {session}: spend {} sat from the cold wallet in {} input(s)\n",
        facts.inputs_sat,
        tx.input.len()
    );
    for d in &facts.destinations {
        text.push_str(&format!(
            "  {} sat to {}{}\n",
            d.amount_sat,
            d.address,
            if d.change { " (change, back to the cold wallet)" } else { "" }
        ));
    }
    text.push_str(&format!("  fee {} sat ({} sat/vB)", facts.fee_sat, facts.fee_rate_sat_vb));
    if !approve(&text) {
        return Ok(SignResult { summary: text, signed: false, txid: None });
    }
    let sighashes = key_spend_sighashes(&tx, &spent).map_err(|e| anyhow!("{e}"))?;
    if !frost_sign(&mut c, service, me, &key, &sighashes).await? {
        return Ok(SignResult { summary: text, signed: false, txid: None });
    }
    let txid = tx.compute_txid().to_string();
    Ok(SignResult { summary: text, signed: true, txid: Some(txid) })
}

/// A proof-of-reserves session: the cold key signs a statement that it controls the cold wallet's address for one
/// snapshot of one exchange at one block (docs/reserves-spec.md §9.1). The message is recomputed here from the
/// statement shown, and the address must be this custodian's own wallet's.
#[allow(clippy::too_many_arguments)]
async fn attest_session(
    c: &mut Ceremony,
    service: &Service,
    me: &Custodian,
    key: &KeyPackage,
    wallet: &ScriptBuf,
    network: Network,
    attest: &Value,
    approve: impl FnOnce(&str) -> bool,
) -> anyhow::Result<SignResult> {
    let field = |name: &str| attest[name].as_str().ok_or_else(|| anyhow!("the statement has no {name}"));
    let (exchange, snapshot, asset) = (field("exchange")?, field("snapshot")?, field("asset")?);
    let height = attest["height"].as_u64().ok_or_else(|| anyhow!("the statement has no height"))?;
    let shown_hash = field("block_hash")?;
    let block_hash: [u8; 32] = hex::decode(shown_hash)?.try_into().map_err(|_| anyhow!("a block hash is 32 bytes"))?;
    let script = hex::decode(field("script_pubkey")?)?;
    ensure!(script == wallet.as_bytes(), "the statement names an address that is not this custodian's cold wallet");
    let address = bitcoin::Address::from_script(wallet, network).map_err(|e| anyhow!("{e}"))?;
    let message = rampart_verify::report::control_message(&rampart_verify::report::Statement {
        exchange,
        snapshot,
        asset,
        height,
        block_hash,
        script_pubkey: &script,
    });
    let text = format!(
        "session {}: state, for {exchange}'s proof of reserves {snapshot}, that the cold wallet controls {address} \
         ({asset}) at block {height} ({shown_hash}); no coins move",
        c.id
    );
    if !approve(&text) {
        return Ok(SignResult { summary: text, signed: false, txid: None });
    }
    let signed = frost_sign(c, service, me, key, &[message]).await?;
    Ok(SignResult { summary: text, signed, txid: None })
}

/// The FROST rounds of a signing session, one signature per message: commits (`false` if the session already had
/// its signers), waits for the others' commitments, signs each message's package, and waits for the session to
/// complete.
async fn frost_sign(
    c: &mut Ceremony,
    service: &Service,
    me: &Custodian,
    key: &KeyPackage,
    messages: &[[u8; 32]],
) -> anyhow::Result<bool> {
    let mut nonces = Vec::new();
    let mut commitments = Vec::new();
    for _ in messages {
        let (n, cm) = custodian_commit(key);
        commitments.push(hex::encode(cm.serialize().map_err(|e| anyhow!("{e}"))?));
        nonces.push(n);
    }
    let payload = serde_json::to_vec(&commitments)?;
    if let Err(e) = c.post(service, me, "commit", None, &payload).await {
        if e.to_string().contains("signers_complete") {
            return Ok(false);
        }
        return Err(e);
    }
    let threshold = usize::try_from(c.view["threshold"].as_u64().unwrap_or(0))?;
    let got = c.wait_for(service, "commit", threshold).await?;
    let mut per_message: Vec<BTreeMap<Identifier, SigningCommitments>> = vec![BTreeMap::new(); messages.len()];
    for (sender, bytes) in &got {
        let list: Vec<String> = serde_json::from_slice(bytes).context("commitments")?;
        ensure!(list.len() == messages.len(), "commitments of {sender} do not cover every message");
        for (i, h) in list.iter().enumerate() {
            per_message[i].insert(
                id_of(*sender)?,
                SigningCommitments::deserialize(&hex::decode(h)?).map_err(|e| anyhow!("{e}"))?,
            );
        }
    }
    let mut shares = Vec::new();
    for ((message, commits), nonce) in messages.iter().zip(per_message).zip(nonces) {
        ensure!(commits.contains_key(&id_of(c.me)?), "the session left out this custodian's commitments");
        let package = rampart_custody::frost::SigningPackage::new(commits, message);
        let share = custodian_sign(&package, nonce, key).map_err(|e| anyhow!("{e}"))?;
        shares.push(hex::encode(share.serialize()));
    }
    c.post(service, me, "share", None, &serde_json::to_vec(&shares)?).await?;
    c.wait_completed(service).await?;
    Ok(true)
}
