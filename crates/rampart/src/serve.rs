//! `rampart serve`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use rampart_core::SystemClock;
use rampart_crypto::{Keyring, UnsealProgress, UnsealShare, Unsealer};
use rampart_server::{AppState, VaultState};
use rampart_store::{ConnectOptions, Store};
use secrecy::SecretString;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use crate::DatabaseArgs;
use crate::config::{Config, redact_url};

/// Flags of `rampart serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Development mode: embedded database, automatic initialisation and unsealing (the unseal shares are kept in
    /// the data directory, which is exactly what production must never do), a generated root token printed once.
    #[arg(long)]
    dev: bool,
    /// The address to listen on, such as 127.0.0.1:8080 (port 0 picks a free port).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    database: DatabaseArgs,
}

/// Opens the database, creating the data directory for an embedded one.
pub async fn open_store(config: &Config, url: &str) -> anyhow::Result<Store> {
    if url.starts_with("sqlite:") && config.database_url.is_none() {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create the data directory {}", config.data_dir.display()))?;
    }
    Store::connect(url, &ConnectOptions::default())
        .await
        .with_context(|| format!("cannot open the database {}", redact_url(url)))
}

fn init_logging(config: &Config) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log))
        .with_context(|| format!("invalid log filter {:?}", config.log))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.log_format.as_str() {
        "json" => builder.json().init(),
        "text" => builder.init(),
        other => bail!("log_format must be \"text\" or \"json\", not {other:?}"),
    }
    Ok(())
}

/// A fresh random root token for development mode: 32 bytes from the operating system's generator, hex-encoded.
fn generate_token() -> String {
    use rand::TryRngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.try_fill_bytes(&mut bytes).expect("the operating system's random generator works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: finishing in-flight requests");
}

/// Where development mode keeps its unseal shares: on the same machine as the database, which is the point of
/// development mode and the opposite of production.
fn dev_share_dir(config: &Config) -> std::path::PathBuf {
    config.data_dir.join("dev-unseal-shares")
}

/// Development mode: initialises the database if needed (keeping the shares in the data directory) and unseals it
/// with those shares.
async fn dev_unseal(config: &Config, store: &rampart_store::Store) -> anyhow::Result<VaultState> {
    let dir = dev_share_dir(config);
    let seal = match store.seal_config().await? {
        Some(seal) => seal,
        None => {
            let admins = vec!["admin".to_owned(), "admin2".to_owned()];
            let done = crate::init::initialise(store, 5, 3, &admins, Some(&dir)).await?;
            println!("  initialised: 5 unseal shares written to {} (development only!)", dir.display());
            // The first administrators' one-time enrolment codes, printed once as `rampart init` prints them.
            for (name, code) in &done.admins {
                println!("  first administrator {name}: enrolment code {}", secrecy::ExposeSecret::expose_secret(code));
            }
            store.seal_config().await?.context("the seal configuration was just written")?
        }
    };
    let mut unsealer = Unsealer::new(seal.clone());
    for index in 1..=seal.shares {
        let path = dir.join(format!("unseal-share-{index}.txt"));
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        match unsealer.submit(UnsealShare::parse(&text)?)? {
            UnsealProgress::Progress { .. } => {}
            UnsealProgress::Unsealed(root) => {
                let keyring = Keyring::open(root, seal.init_id, &store.crypto_keys().await?)?;
                println!("  unsealed automatically with the shares in {} (development only!)", dir.display());
                return Ok(VaultState::Unsealed(std::sync::Arc::new(keyring)));
            }
        }
    }
    bail!("development mode cannot unseal: too few shares in {}", dir.display())
}

/// The mailer the configuration names: an SMTP relay, or the Maildir sink in the data directory.
pub fn mailer(config: &Config) -> anyhow::Result<Arc<dyn rampart_notify::Mailer>> {
    let mail = &config.mail;
    match &mail.smtp_host {
        Some(host) => {
            let tls = match mail.smtp_tls.as_str() {
                "none" => rampart_notify::SmtpTls::None,
                "starttls" => rampart_notify::SmtpTls::StartTls,
                "tls" => rampart_notify::SmtpTls::Tls,
                other => bail!("[mail] smtp_tls must be none, starttls or tls, not {other:?}"),
            };
            let smtp = rampart_notify::SmtpConfig {
                host: host.clone(),
                port: mail.smtp_port,
                tls,
                username: mail.smtp_username.clone(),
                password: mail.smtp_password.clone().map(SecretString::from),
                timeout_s: mail.smtp_timeout_s,
            };
            Ok(Arc::new(rampart_notify::SmtpMailer::new(&smtp).context("invalid [mail] configuration")?))
        }
        None => {
            let dir = mail.maildir.clone().unwrap_or_else(|| config.data_dir.join("mail"));
            let sink = rampart_notify::MaildirMailer::create(&dir)
                .with_context(|| format!("cannot create the Maildir {}", dir.display()))?;
            println!("  emails:          written to the Maildir {} (no SMTP relay configured)", dir.display());
            Ok(Arc::new(sink))
        }
    }
}

/// Runs the service until SIGINT or SIGTERM.
/// Custody's runtime from the configuration: the chain it follows (the built-in development chain, persisted in the
/// data directory and mining on a timer, or Bitcoin Core over JSON-RPC).
pub fn custody(config: &Config) -> anyhow::Result<Option<Arc<rampart_server::custody::Custody>>> {
    let c = &config.custody;
    if !c.enabled {
        return Ok(None);
    }
    let runtime = c.runtime();
    runtime.policy.validate().map_err(|e| anyhow::anyhow!("invalid [custody] policy: {e}"))?;
    let (chain, dev): (Arc<dyn rampart_chain::Chain>, _) = match c.chain.as_str() {
        "dev" => {
            std::fs::create_dir_all(&config.data_dir)
                .with_context(|| format!("cannot create the data directory {}", config.data_dir.display()))?;
            let path = config.data_dir.join("devchain.blocks");
            let node = rampart_chain::DevChainNode::open(Some(path.clone()), c.dev_min_fee_rate.max(1))
                .with_context(|| format!("cannot open the development chain {}", path.display()))?;
            if c.dev_block_interval_s > 0 {
                node.spawn_timer(Duration::from_secs(c.dev_block_interval_s));
            }
            println!(
                "  custody:         {} on the built-in development chain (regtest, {}), a block every {}",
                c.asset,
                path.display(),
                if c.dev_block_interval_s > 0 { format!("{} s", c.dev_block_interval_s) } else { "request".into() }
            );
            (node.clone() as Arc<dyn rampart_chain::Chain>, Some(node))
        }
        "bitcoind" => {
            let url = c.rpc_url.clone().context("[custody] chain = \"bitcoind\" needs rpc_url")?;
            let network: bitcoin::Network =
                c.network.parse().map_err(|_| anyhow::anyhow!("[custody] network {:?} is unknown", c.network))?;
            let auth = match (&c.rpc_cookie, &c.rpc_user, &c.rpc_password) {
                (Some(cookie), _, _) => rampart_chain::RpcAuth::Cookie(cookie.clone()),
                (None, Some(user), Some(password)) => rampart_chain::RpcAuth::UserPass {
                    user: user.clone(),
                    password: SecretString::from(password.clone()),
                },
                _ => bail!("[custody] chain = \"bitcoind\" needs rpc_cookie or rpc_user and rpc_password"),
            };
            let rpc =
                rampart_chain::BitcoinCoreRpc::new(url, auth, network).context("invalid [custody] RPC settings")?;
            (Arc::new(rpc), None)
        }
        other => bail!("[custody] chain must be \"dev\" or \"bitcoind\", not {other:?}"),
    };
    Ok(Some(Arc::new(rampart_server::custody::Custody { config: runtime, chain, dev })))
}

pub async fn serve(args: ServeArgs, mut config: Config) -> anyhow::Result<()> {
    args.database.apply(&mut config);
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    init_logging(&config)?;
    if args.dev && !config.listen.ip().is_loopback() {
        bail!("development mode prints a root token with every permission: it listens on loopback only");
    }
    // The dummy hash that unknown accounts are checked against is made now, not on the first refusal.
    tokio::task::spawn_blocking(rampart_auth::warm_up).await.context("warming up")?;
    let assets = config.asset_registry()?;
    let url = config.database_url();
    let store = open_store(&config, &url).await?;
    store.migrate().await.context("database migration failed")?;
    let listener =
        TcpListener::bind(config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr()?;

    let (vault, dev_root) = if args.dev {
        println!("==================== RAMPART DEVELOPMENT MODE ====================");
        println!("  NOT FOR PRODUCTION. The root token below has every permission and is shown once.");
        println!("  database:        {}", redact_url(&url));
        let vault = dev_unseal(&config, &store).await?;
        let token = generate_token();
        println!("  root token:      {token}");
        println!("  try:  curl -H 'Authorization: Bearer <token>' http://{address}/v1/assets");
        println!("===================================================================");
        (vault, Some(SecretString::from(token)))
    } else {
        let vault = VaultState::for_config(store.seal_config().await?);
        match &vault {
            VaultState::Uninitialised => println!("not initialised: run `rampart init` against this database"),
            VaultState::Sealed(u) => println!(
                "sealed: {} of {} custodians must run `rampart unseal --share-file …`",
                u.config().threshold,
                u.config().shares
            ),
            VaultState::Unsealed(_) => {}
        }
        (vault, None)
    };
    // Tests and scripts read this line to learn the port when listening on port 0.
    println!("listening on http://{address}");
    tracing::info!(%address, backend = store.backend().as_str(), database = %redact_url(&url), "rampart serving");

    let state = AppState::new(store, assets, Arc::new(SystemClock), vault, dev_root)
        .with_identity(config.identity.clone())
        .map_err(|e| anyhow::anyhow!("invalid [identity] configuration: {e}"))?;
    let writer = rampart_server::writer::WriterThread::start_for(state.store(), &url)
        .await
        .with_context(|| format!("cannot open the writer thread's connections to {}", redact_url(&url)))?;
    let state = match writer {
        Some(writer) => state.with_writer_thread(writer).map_err(|e| anyhow::anyhow!(e))?,
        None => state,
    };
    let state = match custody(&config)? {
        Some(c) => state.with_custody(c).map_err(|e| anyhow::anyhow!("invalid [custody] configuration: {e}"))?,
        None => state,
    };
    let state = if config.risk.enabled {
        let (risk, replayed) = rampart_server::risk::Risk::load(state.store(), config.risk.runtime()?)
            .await
            .map_err(|e| anyhow::anyhow!("the risk engine cannot start: {e}"))?;
        let rules = risk.rules();
        println!(
            "  risk:            rule set {:?} version {} ({} rules); {} profiles restored, {replayed} events replayed",
            rules.name,
            rules.version,
            rules.rules.len(),
            risk.users()
        );
        state.with_risk(Arc::new(risk)).map_err(|e| anyhow::anyhow!("invalid [risk] configuration: {e}"))?
    } else {
        state
    };
    let geo = match &config.compliance.geoip_dir {
        Some(dir) => Some(rampart_server::geofence::Geofencing::read_ranges(dir).map_err(|e| anyhow::anyhow!("{e}"))?),
        None => None,
    };
    let fencing = rampart_server::geofence::Geofencing::new(geo, &config.compliance.blocked_countries)
        .map_err(|e| anyhow::anyhow!("invalid [compliance] blocked_countries: {e}"))?;
    let (v4, v6) = fencing.ranges();
    println!(
        "  geofencing:      sign-up and sign-in refused from {}; {v4} IPv4 and {v6} IPv6 ranges locate clients",
        config.compliance.blocked_countries.join(", ")
    );
    let state = state.with_geofencing(Arc::new(fencing)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let compliance = rampart_server::compliance::Compliance::new(config.compliance.runtime()?);
    let state = state.with_compliance(compliance).map_err(|e| anyhow::anyhow!("invalid [compliance]: {e}"))?;
    state.compliance().load(state.store()).await.map_err(|e| anyhow::anyhow!("loading the sanctions lists: {e}"))?;
    let withdrawals = config.withdrawals.runtime(state.assets())?;
    let state = state.with_withdrawals(withdrawals).map_err(|e| anyhow::anyhow!("invalid [withdrawals]: {e}"))?;
    let state =
        state.with_reserves(config.reserves.runtime()?).map_err(|e| anyhow::anyhow!("invalid [reserves]: {e}"))?;
    let lists = state.compliance().lists();
    match lists.version {
        Some(v) => println!("  sanctions:       OFAC SDN version {v}, {} entries", lists.entries()),
        None => println!("  sanctions:       no list imported yet (rampart sanctions import)"),
    }
    let mailer = mailer(&config)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let expiry = tokio::spawn(rampart_server::run_expiry_worker(
        state.clone(),
        Duration::from_millis(config.expiry_interval_ms.max(10)),
        stopped(stop_rx.clone()),
    ));
    let checkpoints = tokio::spawn(rampart_server::run_checkpoint_worker(
        state.clone(),
        Duration::from_secs(config.checkpoint_interval_s.max(1)),
        stopped(stop_rx.clone()),
    ));
    let outbox = tokio::spawn(rampart_server::run_outbox_worker(
        state.clone(),
        mailer,
        Duration::from_millis(config.mail.outbox_interval_ms.max(10)),
        stopped(stop_rx.clone()),
    ));
    let risk_snapshots =
        tokio::spawn(rampart_server::risk::run_snapshot_worker(state.clone(), stopped(stop_rx.clone())));
    let custody_worker = state
        .custody_handle()
        .map(|c| tokio::spawn(rampart_server::custody::run_custody_worker(state.clone(), c, stopped(stop_rx))));
    rampart_server::serve(listener, state, shutdown_signal()).await.context("server failed")?;
    let _ = stop_tx.send(true);
    let _ = expiry.await;
    let _ = checkpoints.await;
    let _ = outbox.await;
    let _ = risk_snapshots.await;
    if let Some(worker) = custody_worker {
        let _ = worker.await;
    }
    tracing::info!("stopped");
    Ok(())
}
