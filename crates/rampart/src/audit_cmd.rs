//! `rampart audit verify|export`.

use std::io::Write;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use rampart_store::AuditFilter;

use crate::DatabaseArgs;
use crate::config::Config;

/// What to do with the audit log.
#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Checks the whole chain, its signed checkpoints and head; exits 1 and names the first bad entry if tampered.
    Verify(VerifyArgs),
    /// Writes entries as JSON lines (for a SIEM), optionally filtered.
    Export(ExportArgs),
}

/// Flags of `rampart audit verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The audit public key printed by `rampart init`, in hex. Without it, the key recorded in the database is used,
    /// which proves nothing against someone who could rewrite the database.
    #[arg(long)]
    public_key: Option<String>,
    #[command(flatten)]
    database: DatabaseArgs,
}

/// Flags of `rampart audit export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Entries at or after this time, in nanoseconds since the Unix epoch.
    #[arg(long)]
    from_ns: Option<u64>,
    /// Entries before this time, in nanoseconds since the Unix epoch.
    #[arg(long)]
    until_ns: Option<u64>,
    /// Only this actor, such as `staff:3`.
    #[arg(long)]
    actor: Option<String>,
    /// Only this action, such as `ledger.transfers.create`.
    #[arg(long)]
    action: Option<String>,
    #[command(flatten)]
    database: DatabaseArgs,
}

fn parse_key(hex_key: &str) -> anyhow::Result<[u8; 32]> {
    hex::decode(hex_key.trim())
        .ok()
        .and_then(|v| v.try_into().ok())
        .context("--public-key must be 64 hexadecimal digits (the key `rampart init` printed)")
}

/// Runs an audit command.
pub async fn run(command: AuditCommand, mut config: Config) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify(args) => {
            args.database.apply(&mut config);
            let store = crate::serve::open_store(&config, &config.database_url()).await?;
            let key = match &args.public_key {
                Some(k) => parse_key(k)?,
                None => {
                    let key = store.audit_public_key().await?.context("this database was never initialised")?;
                    eprintln!(
                        "note: trusting the audit public key stored in the database; pass --public-key to pin yours"
                    );
                    key
                }
            };
            let started = Instant::now();
            let report = store.verify_audit(&key).await?;
            let elapsed = started.elapsed();
            println!(
                "{} entries and {} checkpoints checked in {} ms",
                report.entries,
                report.checkpoints,
                elapsed.as_millis()
            );
            match report.finding {
                None => {
                    println!("the audit log is intact");
                    Ok(())
                }
                Some(f) => {
                    println!("TAMPERED: {f} ({:?})", f.kind);
                    bail!("the audit log failed verification at entry {}", f.seq)
                }
            }
        }
        AuditCommand::Export(args) => {
            args.database.apply(&mut config);
            let store = crate::serve::open_store(&config, &config.database_url()).await?;
            let mut filter = AuditFilter {
                after_seq: 0,
                through_seq: None,
                from_ns: args.from_ns,
                until_ns: args.until_ns,
                actor: args.actor,
                action: args.action,
            };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            loop {
                let page = store.audit_entries(&filter, 10_000).await?;
                let Some(last) = page.last() else { break };
                filter.after_seq = last.seq;
                for entry in &page {
                    serde_json::to_writer(&mut out, entry)?;
                    out.write_all(b"\n")?;
                }
            }
            out.flush()?;
            Ok(())
        }
    }
}
