//! `rampart reserves`: proof-of-reserves snapshots and proofs, as operators and auditors see them, against a running
//! service. Checking a proof is `rampart-verify`'s job (the standalone verifier, which trusts nothing of ours).

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use serde_json::json;

use crate::custodian::Service;
use crate::custodian_cmd::ServiceArgs;

/// What to do with proof-of-reserves snapshots.
#[derive(Subcommand, Debug)]
pub enum ReservesCommand {
    /// Takes a liabilities snapshot of every customer's balances at one ledger point and prints its publication
    /// (root, per-asset liabilities, height) as JSON. Needs `reserves_publish`.
    Snapshot {
        /// The snapshot's name (1 to 64 of `[A-Za-z0-9._-]`); default `ledger-<seq>-<unix seconds>`.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        service: ServiceArgs,
    },
    /// Lists the published snapshots, newest first, as JSON lines.
    List {
        #[command(flatten)]
        service: ServiceArgs,
    },
    /// Writes a customer's inclusion proof (JSON with the proof in hex, the root and the totals, which
    /// `rampart-verify proof` reads). Needs `reserves_read`; audited.
    Proof {
        /// The snapshot.
        #[arg(long)]
        snapshot: String,
        /// The customer's handle (32 hex digits).
        #[arg(long)]
        customer: String,
        /// Reveal every asset's sums along the path, not only the chunks the customer holds.
        #[arg(long)]
        reveal_all: bool,
        /// Where to write it (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        service: ServiceArgs,
    },
    /// Writes a snapshot's full leaf file, which `rampart-verify leaves` recomputes the root and totals from.
    /// Needs `reserves_read`; audited.
    Leaves {
        /// The snapshot.
        #[arg(long)]
        snapshot: String,
        /// Where to write it.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        service: ServiceArgs,
    },
}

fn segment(name: &str, what: &str) -> anyhow::Result<String> {
    anyhow::ensure!(
        !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')),
        "the {what} {name:?} is not a name of [A-Za-z0-9._-]"
    );
    Ok(name.to_owned())
}

pub async fn run(command: ReservesCommand) -> anyhow::Result<()> {
    match command {
        ReservesCommand::Snapshot { name, service } => {
            let service = Service::new(&service.server, &service.token);
            let body = match name {
                Some(n) => json!({"name": n}),
                None => json!({}),
            };
            let publication = service.post("/v1/reserves", &body).await?;
            println!("{}", serde_json::to_string_pretty(&publication)?);
        }
        ReservesCommand::List { service } => {
            let service = Service::new(&service.server, &service.token);
            let list = service.get("/v1/reserves").await?;
            for publication in list.as_array().into_iter().flatten() {
                println!("{publication}");
            }
        }
        ReservesCommand::Proof { snapshot, customer, reveal_all, out, service } => {
            let service = Service::new(&service.server, &service.token);
            let snapshot = segment(&snapshot, "snapshot")?;
            let customer = segment(&customer, "customer")?;
            let query = if reveal_all { "?reveal=all" } else { "" };
            let view = service.get(&format!("/v1/reserves/{snapshot}/proofs/{customer}{query}")).await?;
            let text = serde_json::to_string_pretty(&view)? + "\n";
            match out {
                Some(path) => std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?,
                None => print!("{text}"),
            }
        }
        ReservesCommand::Leaves { snapshot, out, service } => {
            let service = Service::new(&service.server, &service.token);
            let snapshot = segment(&snapshot, "snapshot")?;
            let bytes = service.get_bytes(&format!("/v1/reserves/{snapshot}/leaves")).await?;
            std::fs::write(&out, &bytes).with_context(|| format!("writing {}", out.display()))?;
            println!("{} bytes written to {}", bytes.len(), out.display());
        }
    }
    Ok(())
}
