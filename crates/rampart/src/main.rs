//! `rampart`: the security core of a digital-asset exchange. This binary parses the command line and dispatches.

mod audit_cmd;
mod bench;
mod bench_audit;
mod bench_auth;
mod bench_custody;
mod bench_reserves;
mod bench_risk;
mod bench_screening;
mod bench_withdrawals;
mod config;
mod custodian;
mod custodian_cmd;
mod demo;
mod demo_compliance;
mod demo_custody;
mod demo_identity;
mod demo_reserves;
mod demo_risk;
mod demo_withdrawals;
mod init;
mod reserves_cmd;
mod reserves_report;
mod risk_cmd;
mod sanctions_cmd;
mod serve;
mod unseal;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// mimalloc instead of the C library's allocator: a request allocates often and from many threads, and glibc's
/// malloc took about a tenth of the service's CPU under load (BENCHMARKS.md, withdrawals, sixth round).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Rampart: identity, ledger, withdrawals, custody, proof of reserves and audit for a digital-asset exchange.
#[derive(Parser)]
#[command(name = "rampart", version, about)]
struct Cli {
    /// A TOML configuration file; `RAMPART_*` environment variables override it, and flags override both.
    #[arg(long, global = true, env = "RAMPART_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the HTTP service.
    Serve(serve::ServeArgs),
    /// Applies database migrations and exits.
    Migrate(DatabaseArgs),
    /// Creates the root key and splits it into unseal shares for the custodians (once per database).
    Init(init::InitArgs),
    /// Submits one custodian's unseal share to a running service.
    Unseal(unseal::UnsealArgs),
    /// Verifies or exports the audit log.
    #[command(subcommand)]
    Audit(audit_cmd::AuditCommand),
    /// Tells the story of what Rampart does, narrated, on a fresh in-memory database.
    Demo,
    /// Measures performance and prints figures, ending with one JSON line.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// A custodian's side of custody: identity keys and key shares in an encrypted key file, key and signing
    /// ceremonies against the service.
    #[command(subcommand)]
    Custodian(custodian_cmd::CustodianCommand),
    /// Custody as operators see it.
    #[command(subcommand)]
    Custody(custodian_cmd::CustodyCommand),
    /// Risk rules: the features they can read, checking a rule file, back-testing it on recorded events.
    #[command(subcommand)]
    Risk(risk_cmd::RiskCommand),
    /// Sanctions lists: reading the OFAC SDN files, screening a name or a digital-currency address against them.
    #[command(subcommand)]
    Sanctions(sanctions_cmd::SanctionsCommand),
    /// Proof of reserves: liabilities snapshots, customers' inclusion proofs, the auditors' leaf file.
    #[command(subcommand)]
    Reserves(reserves_cmd::ReservesCommand),
}

/// Where the database is.
#[derive(Args, Clone, Debug, Default)]
pub struct DatabaseArgs {
    /// `sqlite://path` or `postgres://…`; defaults to `rampart.db` in the data directory.
    #[arg(long)]
    database_url: Option<String>,
    /// The data directory, for the embedded database.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl DatabaseArgs {
    /// Applies the flags over the loaded configuration.
    pub(crate) fn apply(&self, config: &mut config::Config) {
        if let Some(url) = &self.database_url {
            config.database_url = Some(url.clone());
        }
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = config::Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Serve(args) => serve::serve(args, config).await,
        Command::Migrate(args) => {
            args.apply(&mut config);
            let url = config.database_url();
            let store = serve::open_store(&config, &url).await?;
            store.migrate().await?;
            println!("migrated {}", config::redact_url(&url));
            Ok(())
        }
        Command::Init(args) => init::run(args, config).await,
        Command::Unseal(args) => unseal::run(args).await,
        Command::Audit(command) => audit_cmd::run(command, config).await,
        Command::Demo => demo::run().await,
        Command::Bench(command) => bench::run(command, config).await,
        Command::Custodian(command) => custodian_cmd::run(command).await,
        Command::Custody(command) => custodian_cmd::run_custody(command).await,
        Command::Risk(command) => risk_cmd::run(command),
        Command::Sanctions(command) => sanctions_cmd::run(command).await,
        Command::Reserves(command) => reserves_cmd::run(command).await,
    }
}
