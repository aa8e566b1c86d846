//! `rampart init`: creates the root key, splits it into unseal shares for the custodians, and stores the wrapped keys.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use rampart_audit::{AuditRecord, Outcome};
use rampart_core::{Clock, SystemClock};
use rampart_crypto::{Keyring, UnsealShare};
use rampart_store::Auditor;

use crate::DatabaseArgs;
use crate::config::Config;

/// Entries between signed audit checkpoints.
pub const CHECKPOINT_EVERY: u64 = 1000;

/// Flags of `rampart init`.
#[derive(Args, Debug)]
pub struct InitArgs {
    /// How many unseal shares to make, one per custodian.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u8).range(2..=255))]
    shares: u8,
    /// How many shares unseal.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(2..=255))]
    threshold: u8,
    /// A new directory to write one file per share into (`unseal-share-N.txt`, readable by the owner only), for
    /// handing to the custodians. Without it the shares are printed, once.
    #[arg(long)]
    share_dir: Option<PathBuf>,
    #[command(flatten)]
    database: DatabaseArgs,
}

fn write_shares(dir: &Path, shares: &[UnsealShare]) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir(dir)
        .with_context(|| format!("cannot create the share directory {} (it must be new)", dir.display()))?;
    let mut paths = Vec::new();
    for share in shares {
        let path = dir.join(format!("unseal-share-{}.txt", share.index()));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&path).with_context(|| format!("cannot create {}", path.display()))?;
        file.write_all(share.to_text().as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        paths.push(path);
    }
    Ok(paths)
}

/// Runs `rampart init`.
pub async fn run(args: InitArgs, mut config: Config) -> anyhow::Result<()> {
    args.database.apply(&mut config);
    if args.threshold > args.shares {
        bail!("--threshold ({}) cannot exceed --shares ({})", args.threshold, args.shares);
    }
    let url = config.database_url();
    let store = crate::serve::open_store(&config, &url).await?;
    store.migrate().await.context("database migration failed")?;
    if store.seal_config().await?.is_some() {
        bail!("this database is already initialised; its unseal shares were handed out then");
    }
    let (seal, root, shares) = rampart_crypto::initialise(args.shares, args.threshold, &mut rand_core::OsRng)?;
    let (keyring, wrapped) = Keyring::create(root, seal.init_id);
    // The shares are written before the database records the initialisation: if writing fails, nothing is stored.
    let written = match &args.share_dir {
        Some(dir) => Some(write_shares(dir, &shares)?),
        None => None,
    };
    let now = SystemClock.now_ns();
    if !store.initialise_seal(&seal, &wrapped, &keyring.verifying_key(), now).await? {
        bail!("another `rampart init` initialised this database at the same time; discard these shares");
    }
    let record = AuditRecord {
        time_ns: now,
        actor: "cli".into(),
        action: "system.seal.init".into(),
        target: "seal".into(),
        outcome: Outcome::Success,
        details: [("shares", args.shares.to_string()), ("threshold", args.threshold.to_string())]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    };
    store.append_audit(vec![record], &Auditor { signer: &keyring, checkpoint_every: CHECKPOINT_EVERY }).await?;

    println!("Initialised: {} unseal shares, any {} of which unseal.", args.shares, args.threshold);
    match written {
        Some(paths) => {
            for path in paths {
                println!("  {}", path.display());
            }
            println!("Hand each file to a different custodian, then delete it from this machine.");
        }
        None => {
            println!("The shares are shown now and never again. Give each to a different custodian:");
            for share in &shares {
                println!("  {}", share.to_text().as_str());
            }
        }
    }
    println!(
        "Audit public key (pin it to verify the audit log independently): {}",
        hex::encode(keyring.verifying_key())
    );
    Ok(())
}
