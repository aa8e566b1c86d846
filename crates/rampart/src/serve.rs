//! `rampart serve`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use rampart_core::SystemClock;
use rampart_server::AppState;
use rampart_store::{ConnectOptions, Store};
use secrecy::SecretString;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use crate::DatabaseArgs;
use crate::config::{Config, OPERATOR_TOKEN_LEN_MIN, redact_url};

/// Flags of `rampart serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Development mode: embedded database, a generated operator token printed once, loud warnings.
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

/// A fresh random token for development mode: 32 bytes from the operating system's generator, hex-encoded.
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

/// Runs the service until SIGINT or SIGTERM.
pub async fn serve(args: ServeArgs, mut config: Config) -> anyhow::Result<()> {
    args.database.apply(&mut config);
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    init_logging(&config)?;
    let assets = config.asset_registry()?;
    let token = match (&config.operator_token, args.dev) {
        (Some(token), _) if token.len() >= OPERATOR_TOKEN_LEN_MIN => token.clone(),
        (Some(_), _) => bail!("operator_token must be at least {OPERATOR_TOKEN_LEN_MIN} characters"),
        (None, true) => generate_token(),
        (None, false) => bail!(
            "no operator token: set RAMPART_OPERATOR_TOKEN (at least {OPERATOR_TOKEN_LEN_MIN} characters) or run \
             `rampart serve --dev`"
        ),
    };
    let url = config.database_url();
    let store = open_store(&config, &url).await?;
    store.migrate().await.context("database migration failed")?;
    let listener =
        TcpListener::bind(config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr()?;

    if args.dev {
        println!("==================== RAMPART DEVELOPMENT MODE ====================");
        println!("  NOT FOR PRODUCTION. The token below was generated and is shown only once.");
        println!("  database:        {}", redact_url(&url));
        if config.operator_token.is_none() {
            println!("  operator token:  {token}");
        }
        println!("  try:  curl -H 'Authorization: Bearer <token>' http://{address}/v1/assets");
        println!("===================================================================");
    }
    // Tests and scripts read this line to learn the port when listening on port 0.
    println!("listening on http://{address}");
    tracing::info!(%address, backend = store.backend().as_str(), database = %redact_url(&url), "rampart serving");

    let state = AppState::new(store, assets, Arc::new(SystemClock), SecretString::from(token));
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(rampart_server::run_expiry_worker(
        state.clone(),
        Duration::from_millis(config.expiry_interval_ms.max(10)),
        async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        },
    ));
    rampart_server::serve(listener, state, shutdown_signal()).await.context("server failed")?;
    let _ = stop_tx.send(true);
    let _ = worker.await;
    tracing::info!("stopped");
    Ok(())
}
