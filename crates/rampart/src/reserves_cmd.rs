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
        /// The private form: Pedersen commitments and range proofs, so that no proof shows another customer's
        /// balance (slower to build; verifying needs the publication, `rampart reserves publication`).
        #[arg(long)]
        private: bool,
        #[command(flatten)]
        service: ServiceArgs,
    },
    /// Writes a private snapshot's publication (the totals with their blindings, the top nodes' commitments and
    /// their range proofs), which `rampart-verify publication` checks and `rampart-verify proof --publication` uses.
    Publication {
        /// The snapshot.
        #[arg(long)]
        snapshot: String,
        /// Where to write it.
        #[arg(long)]
        out: PathBuf,
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
    /// Opens the cold wallet's signing sessions a snapshot still needs for its reserves' side (one expired, say), and
    /// prints them; each custodian signs with `rampart custodian sign --session N`. Needs `reserves_publish`.
    Attest {
        /// The snapshot.
        #[arg(long)]
        snapshot: String,
        #[command(flatten)]
        service: ServiceArgs,
    },
    /// Writes a snapshot's report, once every reserve address is signed: `report.json` (root, per-asset liabilities
    /// and reserves with every address, its outputs and BIP-340 signature, the ratio and the cold share) as the
    /// service signed it, `report.json.sig` (its Ed25519 signature, hex) and `report.html` (a readable page with a
    /// chart). The report is checked with `rampart-verify`'s code before anything is written.
    Publish {
        /// The snapshot.
        #[arg(long)]
        snapshot: String,
        /// The directory to write to (created if missing).
        #[arg(long)]
        out: PathBuf,
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

/// Writes a snapshot's binary `what` (`leaves`, `publication`) to `out`.
async fn download(service: &ServiceArgs, snapshot: &str, what: &str, out: &std::path::Path) -> anyhow::Result<()> {
    let service = Service::new(&service.server, &service.token);
    let snapshot = segment(snapshot, "snapshot")?;
    let bytes = service.get_bytes(&format!("/v1/reserves/{snapshot}/{what}")).await?;
    std::fs::write(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    println!("{} bytes written to {}", bytes.len(), out.display());
    Ok(())
}

pub async fn run(command: ReservesCommand) -> anyhow::Result<()> {
    match command {
        ReservesCommand::Snapshot { name, private, service } => {
            let service = Service::new(&service.server, &service.token);
            let mut body = json!({"form": if private { "private" } else { "revealed" }});
            if let Some(n) = name {
                body["name"] = json!(n);
            }
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
        ReservesCommand::Attest { snapshot, service } => {
            let service = Service::new(&service.server, &service.token);
            let snapshot = segment(&snapshot, "snapshot")?;
            let publication = service.post(&format!("/v1/reserves/{snapshot}/attestations"), &json!({})).await?;
            let sessions = publication["signing_sessions"].as_array().cloned().unwrap_or_default();
            if sessions.is_empty() {
                println!("no signing session is needed: every reserve address of {snapshot} is signed");
            }
            for s in sessions {
                println!("signing session {s}: each custodian runs `rampart custodian sign --session {s}`");
            }
        }
        ReservesCommand::Publish { snapshot, out, service } => {
            let service = Service::new(&service.server, &service.token);
            let snapshot = segment(&snapshot, "snapshot")?;
            let signed = service.get(&format!("/v1/reserves/{snapshot}/report")).await?;
            let (written, summary) = publish(&signed, &out)?;
            for a in &summary.assets {
                println!(
                    "{}: liabilities {}, reserves {}, ratio {}, cold share {}",
                    a.code,
                    crate::reserves_report::units(a.liabilities, a.decimals),
                    a.reserves.map_or_else(|| "not attested".into(), |r| crate::reserves_report::units(r, a.decimals)),
                    crate::reserves_report::percent(a.ratio_bps),
                    crate::reserves_report::percent(a.cold_share_bps),
                );
            }
            println!("root {}", summary.root);
            for path in written {
                println!("wrote {}", path.display());
            }
        }
        ReservesCommand::Publication { snapshot, out, service } => {
            download(&service, &snapshot, "publication", &out).await?
        }
        ReservesCommand::Leaves { snapshot, out, service } => download(&service, &snapshot, "leaves", &out).await?,
    }
    Ok(())
}

/// Checks a signed report as the service answered it (`GET /v1/reserves/{snapshot}/report`) with the standalone
/// verifier's code and writes `report.json`, `report.json.sig` and `report.html` into `dir`.
pub fn publish(
    signed: &serde_json::Value,
    dir: &std::path::Path,
) -> anyhow::Result<(Vec<PathBuf>, rampart_verify::report::ReportSummary)> {
    let text = signed["report"].as_str().context("the answer has no report")?;
    let signature = signed["signature"].as_str().context("the answer has no signature")?;
    let key = signed["public_key"].as_str().context("the answer has no public key")?;
    let summary = rampart_verify::report::verify_report(
        text.as_bytes(),
        &hex::decode(signature).context("the signature is not hex")?,
        &hex::decode(key).context("the key is not hex")?,
    )
    .map_err(|e| anyhow::anyhow!("the service's report does not verify: {e}"))?;
    let report: serde_json::Value = serde_json::from_str(text)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let files = [
        ("report.json", text.to_owned()),
        ("report.json.sig", format!("{signature}\n")),
        ("report.html", crate::reserves_report::render(&summary, &report, signature, key)),
    ];
    let mut written = Vec::new();
    for (name, content) in files {
        let path = dir.join(name);
        std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok((written, summary))
}
