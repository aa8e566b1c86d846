//! Configuration: defaults, then a TOML file, then `RAMPART_*` environment variables, then command-line flags.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use rampart_core::{AssetConfig, AssetRegistry};
use serde::{Deserialize, Serialize};

/// Everything `rampart` reads from its configuration.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The address the server listens on.
    pub listen: SocketAddr,
    /// `sqlite://…` or `postgres://…`; when absent, `rampart.db` in `data_dir`.
    pub database_url: Option<String>,
    /// Where the embedded database and other local state live.
    pub data_dir: PathBuf,
    /// The log filter, in `RUST_LOG` syntax.
    pub log: String,
    /// `text` or `json`.
    pub log_format: String,
    /// How often expired holds are released, in milliseconds.
    pub expiry_interval_ms: u64,
    /// How often the audit log's head is covered by a signed checkpoint if entries were appended, in seconds.
    pub checkpoint_interval_s: u64,
    /// The asset registry; the defaults (BTC, ETH, USDT) when absent.
    pub assets: Option<Vec<AssetConfig>>,
    /// Customer identity: sessions, step-up, lockout, rate limits, links, WebAuthn.
    pub identity: rampart_server::IdentityConfig,
    /// How emails leave: an SMTP relay, or (by default) a Maildir sink in the data directory.
    pub mail: MailConfig,
    /// Custody: the chain, hot/cold rebalancing, ceremonies.
    pub custody: CustodyFileConfig,
    /// The risk engine: its rule file, snapshots, where the client's country comes from.
    pub risk: RiskFileConfig,
    /// Compliance: geofencing.
    pub compliance: ComplianceFileConfig,
    /// Withdrawals: the price table, minimums and fees, the whitelist's cooling-off, waits, the default policy.
    pub withdrawals: WithdrawalsFileConfig,
    /// Proof of reserves: the exchange's name in every tree, the smallest tree, how long a snapshot request waits.
    pub reserves: ReservesFileConfig,
}

/// The `[reserves]` table.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReservesFileConfig {
    /// The exchange's name, bound into every hash of its trees and every reserve address's statement.
    pub exchange: String,
    /// The smallest tree's height (2^height positions), so that a small exchange's user count stays hidden.
    pub height_min: u8,
    /// How long `POST /v1/reserves` waits for the tree before answering `202` and finishing in the background, in
    /// milliseconds.
    pub build_wait_ms: u64,
}

impl Default for ReservesFileConfig {
    fn default() -> ReservesFileConfig {
        let d = rampart_server::reserves::ReservesConfig::default();
        ReservesFileConfig {
            exchange: d.exchange,
            height_min: d.height_min,
            build_wait_ms: u64::try_from(d.build_wait.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

impl ReservesFileConfig {
    /// The service's form of the table.
    pub fn runtime(&self) -> anyhow::Result<rampart_server::reserves::ReservesConfig> {
        if self.exchange.is_empty() || self.exchange.len() > 255 {
            bail!("[reserves] exchange is 1 to 255 bytes");
        }
        if !(1..=40).contains(&self.height_min) {
            bail!("[reserves] height_min is between 1 and 40");
        }
        Ok(rampart_server::reserves::ReservesConfig {
            exchange: self.exchange.clone(),
            height_min: self.height_min,
            build_wait: std::time::Duration::from_millis(self.build_wait_ms),
        })
    }
}

/// The `[withdrawals]` table.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WithdrawalsFileConfig {
    /// Prices in dollars per whole unit (`BTC = "90000"`): the table KYC limits, the policy's USD conditions and the
    /// Travel Rule read. No price feed is fetched.
    pub usd_prices: std::collections::BTreeMap<String, String>,
    /// The smallest withdrawal per asset, in its unit (`BTC = "0.0001"`).
    pub min_amount: std::collections::BTreeMap<String, String>,
    /// The network fee held with each withdrawal per asset, in its unit: the most a customer pays for it.
    pub fee_held: std::collections::BTreeMap<String, String>,
    /// How long a newly confirmed whitelist address waits before it can be used, in seconds (24 hours by default).
    pub cooling_off_s: u64,
    /// How long a withdrawal may wait for approvals or review before it expires and its funds return, in seconds.
    pub approval_ttl_s: u64,
    /// The default policy (installed on a new database): withdrawals of at least this many dollars need approvals.
    pub large_usd: u64,
    /// The default policy: how many distinct staff approvals a large withdrawal needs.
    pub large_approvals: u8,
    /// A request left unscreened this long after a crash is screened by the worker, in seconds.
    pub resume_after_s: u64,
    /// A paying transaction unconfirmed this long is broadcast again, in seconds.
    pub rebroadcast_after_s: u64,
    /// The most withdrawals one transaction pays.
    pub batch_max: usize,
}

impl Default for WithdrawalsFileConfig {
    fn default() -> WithdrawalsFileConfig {
        let d = rampart_server::withdrawals::WithdrawalsConfig::default();
        WithdrawalsFileConfig {
            usd_prices: [("BTC".to_owned(), "90000".to_owned())].into(),
            min_amount: [("BTC".to_owned(), "0.0001".to_owned())].into(),
            fee_held: [("BTC".to_owned(), "0.0002".to_owned())].into(),
            cooling_off_s: d.cooling_off_s,
            approval_ttl_s: d.approval_ttl_s,
            large_usd: d.large_usd,
            large_approvals: d.large_approvals,
            resume_after_s: d.resume_after_s,
            rebroadcast_after_s: d.rebroadcast_after_s,
            batch_max: d.batch_max,
        }
    }
}

impl WithdrawalsFileConfig {
    /// The service's withdrawals configuration; a price or amount that does not parse is refused by name.
    pub fn runtime(&self, assets: &AssetRegistry) -> anyhow::Result<rampart_server::withdrawals::WithdrawalsConfig> {
        let mut prices = std::collections::BTreeMap::new();
        for (asset, text) in &self.usd_prices {
            let micro = rampart_risk::expr::parse_number(text)
                .ok()
                .and_then(|v| u64::try_from(v).ok())
                .with_context(|| format!("[withdrawals] usd_prices.{asset} = {text:?} is not a price in dollars"))?;
            prices.insert(asset.clone(), micro);
        }
        let units = |table: &std::collections::BTreeMap<String, String>, name: &str| {
            let mut out = std::collections::BTreeMap::new();
            for (asset, text) in table {
                let a = assets.lookup(asset).with_context(|| format!("[withdrawals] {name}.{asset}: unknown asset"))?;
                let amount = a
                    .parse_amount(text)
                    .with_context(|| format!("[withdrawals] {name}.{asset} = {text:?} is not an amount of {asset}"))?;
                out.insert(asset.clone(), amount.units());
            }
            anyhow::Ok(out)
        };
        if self.large_approvals == 0 {
            bail!("[withdrawals] large_approvals is at least 1");
        }
        if self.batch_max == 0 {
            bail!("[withdrawals] batch_max is at least 1");
        }
        Ok(rampart_server::withdrawals::WithdrawalsConfig {
            usd_micro_per_unit: prices,
            min_amount: units(&self.min_amount, "min_amount")?,
            fee_held: units(&self.fee_held, "fee_held")?,
            cooling_off_s: self.cooling_off_s,
            approval_ttl_s: self.approval_ttl_s,
            large_usd: self.large_usd,
            large_approvals: self.large_approvals,
            resume_after_s: self.resume_after_s,
            rebroadcast_after_s: self.rebroadcast_after_s,
            batch_max: self.batch_max,
        })
    }
}

/// The `[compliance]` table.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ComplianceFileConfig {
    /// A directory with the `geoip` and `geoip6` range files of Debian's `tor-geoipdb` package (`/usr/share/tor`), to
    /// locate clients when no trusted proxy gives their country; none by default.
    pub geoip_dir: Option<PathBuf>,
    /// The jurisdictions (ISO 3166-1 alpha-2) from which sign-up and sign-in are refused.
    pub blocked_countries: Vec<String>,
    /// Name-screening score, in parts per million, at or above which a customer matches the sanctions list.
    pub name_threshold: u32,
    /// Withdrawal limits in whole USD per KYC level 0, 1, 2: `[daily, monthly]`.
    pub kyc_limits_usd: [[u64; 2]; 3],
    /// Transfers of at least this many USD carry Travel Rule data.
    pub travel_rule_usd: u64,
    /// Transfers above this many USD pass the three-level compliance review.
    pub review_usd: u64,
}

impl ComplianceFileConfig {
    /// The service's compliance configuration.
    pub fn runtime(&self) -> anyhow::Result<rampart_server::compliance::ComplianceConfig> {
        use rampart_compliance::kyc::{LevelLimits, Limits, USD};
        if !(500_000..=1_000_000).contains(&self.name_threshold) {
            anyhow::bail!("[compliance] name_threshold is between 500000 and 1000000 (parts per million)");
        }
        let usd = |v: u64| v.checked_mul(USD).ok_or_else(|| anyhow::anyhow!("[compliance] an amount is too large"));
        let mut limits = [Limits { daily: 0, monthly: 0 }; 3];
        for (l, [d, m]) in limits.iter_mut().zip(self.kyc_limits_usd) {
            *l = Limits { daily: usd(d)?, monthly: usd(m)? };
        }
        let kyc_limits = LevelLimits(limits);
        kyc_limits.validate().map_err(|e| anyhow::anyhow!("[compliance] kyc_limits_usd: {e}"))?;
        Ok(rampart_server::compliance::ComplianceConfig {
            name_threshold: self.name_threshold,
            kyc_limits,
            travel_rule_usd: usd(self.travel_rule_usd)?,
            review_usd: usd(self.review_usd)?,
        })
    }
}

impl Default for ComplianceFileConfig {
    fn default() -> ComplianceFileConfig {
        ComplianceFileConfig {
            geoip_dir: None,
            blocked_countries: rampart_compliance::geo::DEFAULT_BLOCKED.iter().map(|c| (*c).to_owned()).collect(),
            name_threshold: rampart_compliance::DEFAULT_THRESHOLD,
            kyc_limits_usd: [[1_000, 5_000], [50_000, 500_000], [2_000_000, 20_000_000]],
            travel_rule_usd: 1_000,
            review_usd: 10_000,
        }
    }
}

/// The `[risk]` table.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RiskFileConfig {
    /// Whether sign-ins, security changes and API requests are scored.
    pub enabled: bool,
    /// The rule file (TOML); the built-in default rules when absent. `POST /v1/risk/rules/reload` re-reads it.
    pub rules: Option<PathBuf>,
    /// How often the engine's state is snapshotted into the database, in seconds.
    pub snapshot_interval_s: u64,
    /// The header a trusted proxy puts the client's country in (e.g. `cf-ipcountry`), believed only from
    /// `identity.trusted_proxies`.
    pub country_header: Option<String>,
    /// Reference prices in dollars per whole unit (`BTC = "90000"`), to value deposits for the rules; an asset
    /// without one is not valued and its deposits are not scored.
    pub usd_prices: std::collections::BTreeMap<String, String>,
}

impl Default for RiskFileConfig {
    fn default() -> RiskFileConfig {
        RiskFileConfig {
            enabled: true,
            rules: None,
            snapshot_interval_s: 300,
            country_header: None,
            usd_prices: std::collections::BTreeMap::new(),
        }
    }
}

impl RiskFileConfig {
    /// The service's risk configuration; a price that is not a decimal of at most six places is refused by name.
    pub fn runtime(&self) -> anyhow::Result<rampart_server::risk::RiskConfig> {
        let mut prices = std::collections::BTreeMap::new();
        for (asset, text) in &self.usd_prices {
            let micro = rampart_risk::expr::parse_number(text)
                .ok()
                .and_then(|v| u64::try_from(v).ok())
                .with_context(|| format!("[risk] usd_prices.{asset} = {text:?} is not a price in dollars"))?;
            prices.insert(asset.clone(), micro);
        }
        Ok(rampart_server::risk::RiskConfig {
            rules_path: self.rules.clone(),
            snapshot_interval_s: self.snapshot_interval_s,
            country_header: self.country_header.clone(),
            usd_micro_per_unit: prices,
        })
    }
}

/// The `[custody]` table.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CustodyFileConfig {
    /// Whether custody runs at all.
    pub enabled: bool,
    /// The asset kept in custody (a Bitcoin-family asset of the registry).
    pub asset: String,
    /// `dev` (the built-in development chain, regtest) or `bitcoind` (Bitcoin Core's JSON-RPC).
    pub chain: String,
    /// The network of a `bitcoind` chain: `bitcoin`, `testnet`, `signet` or `regtest`.
    pub network: String,
    /// Bitcoin Core's RPC address (`http://127.0.0.1:8332`).
    pub rpc_url: Option<String>,
    /// RPC user and password, or…
    pub rpc_user: Option<String>,
    /// … its password.
    pub rpc_password: Option<String>,
    /// … the node's cookie file.
    pub rpc_cookie: Option<PathBuf>,
    /// The development chain mines a block this often, in seconds; 0: only on demand.
    pub dev_block_interval_s: u64,
    /// The development chain's minimum fee rate, in sat/vB.
    pub dev_min_fee_rate: u64,
    /// The hot wallet's cap, in basis points of the custody total (500: at least 95 % cold).
    pub max_hot_bps: u32,
    /// What a sweep or refill brings the hot wallet to, in basis points.
    pub target_hot_bps: u32,
    /// Below this the hot wallet asks for a refill, in satoshis.
    pub hot_floor_sat: u64,
    /// A hot surplus smaller than this (under the cap) is not swept, in satoshis.
    pub min_sweep_sat: u64,
    /// Deposits summing to less are not swept on their own, in satoshis.
    pub sweep_dust_sat: u64,
    /// Deposits below this are recorded as dust and not credited, in satoshis.
    pub min_deposit_sat: u64,
    /// Treasury custodians who must approve a refill (the proposer excluded).
    pub refill_quorum: usize,
    /// How long a ceremony stays open, in seconds.
    pub ceremony_ttl_s: u64,
    /// The first block the watcher reads on a new database.
    pub start_height: u64,
    /// How often the watcher and sweeper run, in milliseconds.
    pub interval_ms: u64,
}

impl Default for CustodyFileConfig {
    fn default() -> CustodyFileConfig {
        let policy = rampart_custody::policy::RebalancePolicy::default();
        CustodyFileConfig {
            enabled: true,
            asset: "BTC".into(),
            chain: "dev".into(),
            network: "regtest".into(),
            rpc_url: None,
            rpc_user: None,
            rpc_password: None,
            rpc_cookie: None,
            dev_block_interval_s: 10,
            dev_min_fee_rate: 1,
            max_hot_bps: policy.max_hot_bps,
            target_hot_bps: policy.target_hot_bps,
            hot_floor_sat: policy.hot_floor_sat,
            min_sweep_sat: policy.min_sweep_sat,
            sweep_dust_sat: policy.dust_sat,
            min_deposit_sat: 1_000,
            refill_quorum: 2,
            ceremony_ttl_s: 3600,
            start_height: 1,
            interval_ms: 2000,
        }
    }
}

/// The RPC password never appears in `Debug` output.
impl fmt::Debug for CustodyFileConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CustodyFileConfig")
            .field("enabled", &self.enabled)
            .field("asset", &self.asset)
            .field("chain", &self.chain)
            .field("network", &self.network)
            .field("rpc_url", &self.rpc_url.as_deref().map(redact_url))
            .field("rpc_user", &self.rpc_user)
            .field("max_hot_bps", &self.max_hot_bps)
            .field("target_hot_bps", &self.target_hot_bps)
            .finish_non_exhaustive()
    }
}

impl CustodyFileConfig {
    /// The service's custody configuration.
    pub fn runtime(&self) -> rampart_server::custody::CustodyConfig {
        rampart_server::custody::CustodyConfig {
            asset: self.asset.clone(),
            policy: rampart_custody::policy::RebalancePolicy {
                max_hot_bps: self.max_hot_bps,
                target_hot_bps: self.target_hot_bps,
                hot_floor_sat: self.hot_floor_sat,
                dust_sat: self.sweep_dust_sat,
                min_sweep_sat: self.min_sweep_sat,
            },
            refill_quorum: self.refill_quorum.max(1),
            ceremony_ttl_s: self.ceremony_ttl_s.max(60),
            min_deposit_sat: self.min_deposit_sat,
            start_height: self.start_height,
            interval: std::time::Duration::from_millis(self.interval_ms.max(50)),
        }
    }
}

/// The `[mail]` table.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MailConfig {
    /// The SMTP relay's host; without it, emails are written to the Maildir sink.
    pub smtp_host: Option<String>,
    /// Its port.
    pub smtp_port: u16,
    /// `none` (loopback only), `starttls` or `tls`.
    pub smtp_tls: String,
    /// The user to authenticate as.
    pub smtp_username: Option<String>,
    /// Its password.
    pub smtp_password: Option<String>,
    /// Seconds to wait for the relay.
    pub smtp_timeout_s: u64,
    /// The Maildir sink; `mail` in the data directory when absent.
    pub maildir: Option<PathBuf>,
    /// How often the outbox is delivered, in milliseconds.
    pub outbox_interval_ms: u64,
}

impl Default for MailConfig {
    fn default() -> MailConfig {
        MailConfig {
            smtp_host: None,
            smtp_port: 25,
            smtp_tls: "none".into(),
            smtp_username: None,
            smtp_password: None,
            smtp_timeout_s: 30,
            maildir: None,
            outbox_interval_ms: 1000,
        }
    }
}

/// The SMTP password never appears in `Debug` output.
impl fmt::Debug for MailConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MailConfig")
            .field("smtp_host", &self.smtp_host)
            .field("smtp_port", &self.smtp_port)
            .field("smtp_tls", &self.smtp_tls)
            .field("smtp_username", &self.smtp_username)
            .field("maildir", &self.maildir)
            .field("outbox_interval_ms", &self.outbox_interval_ms)
            .finish_non_exhaustive()
    }
}

/// Database passwords never appear in `Debug` output (and so never in logs).
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("database_url", &self.database_url.as_deref().map(redact_url))
            .field("data_dir", &self.data_dir)
            .field("log", &self.log)
            .field("log_format", &self.log_format)
            .field("expiry_interval_ms", &self.expiry_interval_ms)
            .field("checkpoint_interval_s", &self.checkpoint_interval_s)
            .field("assets", &self.assets)
            .field("identity", &self.identity)
            .field("mail", &self.mail)
            .field("custody", &self.custody)
            .field("risk", &self.risk)
            .field("compliance", &self.compliance)
            .field("withdrawals", &self.withdrawals)
            .finish()
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: None,
            data_dir: PathBuf::from("data"),
            log: "info".to_owned(),
            log_format: "text".to_owned(),
            expiry_interval_ms: 1000,
            checkpoint_interval_s: 10,
            assets: None,
            identity: rampart_server::IdentityConfig::default(),
            mail: MailConfig::default(),
            custody: CustodyFileConfig::default(),
            risk: RiskFileConfig::default(),
            compliance: ComplianceFileConfig::default(),
            withdrawals: WithdrawalsFileConfig::default(),
            reserves: ReservesFileConfig::default(),
        }
    }
}

/// The environment variables read, each `RAMPART_` and the upper-cased key.
const ENV_KEYS: &[&str] = &["listen", "database_url", "data_dir", "log", "log_format", "expiry_interval_ms"];

impl Config {
    /// Loads defaults, then `file` if given, then the environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                bail!("configuration file {} does not exist", path.display());
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let config: Config =
            figment.merge(Env::prefixed("RAMPART_").only(ENV_KEYS)).extract().context("invalid configuration")?;
        config.asset_registry()?;
        Ok(config)
    }

    /// The database URL: the configured one, or the embedded SQLite file in the data directory.
    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| rampart_store::Store::sqlite_url_in(&self.data_dir))
    }

    /// The asset registry.
    pub fn asset_registry(&self) -> anyhow::Result<AssetRegistry> {
        match &self.assets {
            None => Ok(AssetRegistry::defaults()),
            Some(configs) => AssetRegistry::from_configs(configs).context("invalid [[assets]] configuration"),
        }
    }
}

/// A database URL with any password replaced, for logs and messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let Some((userinfo, host)) = rest.split_once('@') else { return url.to_owned() };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
// figment's test jail returns figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn a_file_and_the_environment_override_the_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "rampart.toml",
                r#"
                    listen = "127.0.0.1:9000"
                    log = "debug"
                    [[assets]]
                    code = "BTC"
                    decimals = 8
                    chain = "bitcoin"
                    confirmations = 2
                "#,
            )?;
            jail.set_env("RAMPART_LOG", "warn");
            jail.set_env("RAMPART_TEST_POSTGRES_URL", "ignored");
            let config = Config::load(Some(Path::new("rampart.toml"))).unwrap();
            assert_eq!(config.listen.port(), 9000);
            assert_eq!(config.log, "warn");
            let assets = config.asset_registry().unwrap();
            assert_eq!(assets.lookup("BTC").unwrap().confirmations, 2);
            assert!(assets.lookup("ETH").is_err());
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_bad_assets_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("typo.toml", "listne = \"127.0.0.1:1\"")?;
            assert!(Config::load(Some(Path::new("typo.toml"))).is_err());
            jail.create_file("bad.toml", "[[assets]]\ncode = \"btc\"\ndecimals = 8\nchain = \"x\"\nconfirmations = 1")?;
            assert!(Config::load(Some(Path::new("bad.toml"))).is_err());
            assert!(Config::load(Some(Path::new("missing.toml"))).is_err());
            Ok(())
        });
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let config = Config { database_url: Some("postgres://rampart:hunter2@db/rampart".into()), ..Config::default() };
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
