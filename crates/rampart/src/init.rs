//! `rampart init`: creates the root key, splits it into unseal shares for the custodians, and stores the wrapped keys.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use rampart_audit::{AuditRecord, Outcome, Role};
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
    /// The first administrators, each created with a one-time enrolment code (repeat the flag). Four-eyes role
    /// changes need at least two.
    #[arg(long = "admin", default_values_t = vec!["admin".to_owned(), "admin2".to_owned()])]
    admins: Vec<String>,
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

/// What an initialisation produced, to hand out once.
pub struct Initialised {
    /// The unseal shares.
    pub shares: Vec<UnsealShare>,
    /// The files they were written to, if a directory was given.
    pub files: Option<Vec<PathBuf>>,
    /// Each first administrator and their one-time enrolment code.
    pub admins: Vec<(String, secrecy::SecretString)>,
    /// The audit public key.
    pub public_key: [u8; 32],
}

/// Initialises `store`: a new root key split into `shares` unseal shares (written to `share_dir` if given), the
/// wrapped keys, and the first administrators with enrolment codes; every step audited.
pub async fn initialise(
    store: &rampart_store::Store,
    shares: u8,
    threshold: u8,
    admins: &[String],
    share_dir: Option<&Path>,
) -> anyhow::Result<Initialised> {
    if threshold > shares {
        bail!("--threshold ({threshold}) cannot exceed --shares ({shares})");
    }
    // Everything that can be refused is checked before anything is stored: a half-done initialisation would leave a
    // database whose shares were never handed out.
    for (i, name) in admins.iter().enumerate() {
        if !rampart_auth::valid_username(name) {
            bail!("administrator name {name:?}: 3 to 64 letters, digits, '.', '_' or '-'");
        }
        if admins[..i].contains(name) {
            bail!("administrator name {name:?} is given twice");
        }
    }
    if store.seal_config().await?.is_some() {
        bail!("this database is already initialised; its unseal shares were handed out then");
    }
    let (seal, root, unseal_shares) = rampart_crypto::initialise(shares, threshold, &mut rand_core::OsRng)?;
    let (keyring, wrapped) = Keyring::create(root, seal.init_id);
    // The shares are written before the database records the initialisation: if writing fails, nothing is stored.
    let files = match share_dir {
        Some(dir) => Some(write_shares(dir, &unseal_shares)?),
        None => None,
    };
    let now = SystemClock.now_ns();
    if !store.initialise_seal(&seal, &wrapped, &keyring.verifying_key(), now).await? {
        bail!("another `rampart init` initialised this database at the same time; discard these shares");
    }
    match after_seal(store, &keyring, now, shares, threshold, admins).await {
        Ok(created) => {
            Ok(Initialised { shares: unseal_shares, files, admins: created, public_key: keyring.verifying_key() })
        }
        Err(e) => {
            // The seal is stored: the shares must not be lost with the error.
            if files.is_none() {
                eprintln!("the database is initialised; these unseal shares are valid and shown only now:");
                for share in &unseal_shares {
                    eprintln!("  {}", share.to_text().as_str());
                }
            }
            Err(e.context("the seal is stored, but creating the first administrators failed"))
        }
    }
}

async fn after_seal(
    store: &rampart_store::Store,
    keyring: &Keyring,
    now: u64,
    shares: u8,
    threshold: u8,
    admins: &[String],
) -> anyhow::Result<Vec<(String, secrecy::SecretString)>> {
    let auditor = Auditor { signer: keyring, checkpoint_every: CHECKPOINT_EVERY };
    let record = AuditRecord {
        time_ns: now,
        actor: "cli".into(),
        action: "system.seal.init".into(),
        target: "seal".into(),
        outcome: Outcome::Success,
        details: [("shares", shares.to_string()), ("threshold", threshold.to_string())]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    };
    store.append_audit(vec![record], &auditor).await?;
    let mut created = Vec::new();
    for name in admins {
        let code = rampart_auth::BearerSecret::generate("enr_");
        let expires = now + ADMIN_ENROLMENT_TTL_S * 1_000_000_000;
        let record = AuditRecord {
            time_ns: now,
            actor: "cli".into(),
            action: "staff.create".into(),
            target: format!("staff:{name}"),
            outcome: Outcome::Success,
            details: [("roles".to_owned(), Role::Administrator.as_str().to_owned())].into_iter().collect(),
        };
        store
            .create_staff(name, &[Role::Administrator], &code.hash, expires, now, &auditor, vec![record])
            .await?
            .with_context(|| format!("the administrator name {name:?} is given twice"))?;
        created.push((name.clone(), code.secret));
    }
    Ok(created)
}

/// How long the first administrators' enrolment codes work: a week, since a ceremony may take a while.
const ADMIN_ENROLMENT_TTL_S: u64 = 7 * 24 * 3600;

/// Runs `rampart init`.
pub async fn run(args: InitArgs, mut config: Config) -> anyhow::Result<()> {
    args.database.apply(&mut config);
    if args.admins.len() < 2 {
        eprintln!("warning: with fewer than two administrators, nobody can approve a role change (four eyes)");
    }
    let url = config.database_url();
    let store = crate::serve::open_store(&config, &url).await?;
    store.migrate().await.context("database migration failed")?;
    let done = initialise(&store, args.shares, args.threshold, &args.admins, args.share_dir.as_deref()).await?;
    println!("Initialised: {} unseal shares, any {} of which unseal.", args.shares, args.threshold);
    match done.files {
        Some(paths) => {
            for path in paths {
                println!("  {}", path.display());
            }
            println!("Hand each file to a different custodian, then delete it from this machine.");
        }
        None => {
            println!("The shares are shown now and never again. Give each to a different custodian:");
            for share in &done.shares {
                println!("  {}", share.to_text().as_str());
            }
        }
    }
    println!("First administrators (enrol with POST /v1/staff/enrol within 7 days; codes are shown once):");
    for (name, code) in &done.admins {
        println!("  {name}: {}", secrecy::ExposeSecret::expose_secret(code));
    }
    println!("Audit public key (pin it to verify the audit log independently): {}", hex::encode(done.public_key));
    Ok(())
}
