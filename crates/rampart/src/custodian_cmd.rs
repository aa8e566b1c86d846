//! `rampart custodian …` and `rampart custody …`: the command-line faces of [`crate::custodian`].

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use crate::custodian::{self, Custodian, Service};

/// Where the key file is and how to reach the service.
#[derive(Args, Debug, Clone)]
pub struct KeyFileArgs {
    /// The custodian's key file.
    #[arg(long, env = "RAMPART_KEY_FILE")]
    key_file: PathBuf,
}

/// The service and the custodian's staff session.
#[derive(Args, Debug, Clone)]
pub struct ServiceArgs {
    /// The service's base URL.
    #[arg(long, env = "RAMPART_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// A staff session token (from `POST /v1/staff/sign-in`).
    #[arg(long, env = "RAMPART_TOKEN", hide_env_values = true)]
    pub token: String,
}

#[derive(Subcommand, Debug)]
pub enum CustodianCommand {
    /// Creates a key file with fresh identity keys (Ed25519 to sign ceremony messages, X25519 to receive secret
    /// packages); the passphrase comes from RAMPART_CUSTODIAN_PASSPHRASE or is read from the terminal.
    Init(KeyFileArgs),
    /// Shows the identity keys and the shares a key file holds (never the secrets).
    Show(KeyFileArgs),
    /// Registers the key file's identity keys with the service as the signed-in treasury custodian.
    Register {
        #[command(flatten)]
        key: KeyFileArgs,
        #[command(flatten)]
        service: ServiceArgs,
    },
    /// Takes part in a key ceremony to its end: a key generation, a share refresh, a removal or a repair.
    Ceremony {
        #[command(flatten)]
        key: KeyFileArgs,
        #[command(flatten)]
        service: ServiceArgs,
        /// The ceremony's id.
        #[arg(long)]
        ceremony: i64,
    },
    /// Takes part in a signing session: shows what is being signed, asks, then commits and signs.
    Sign {
        #[command(flatten)]
        key: KeyFileArgs,
        #[command(flatten)]
        service: ServiceArgs,
        /// The session's id.
        #[arg(long)]
        session: i64,
        /// Sign without asking (scripts; the summary is still printed).
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum CustodyCommand {
    /// Per asset: cold, hot and deposit balances, the cold share, pending sweeps, refills and deposits.
    Status {
        #[command(flatten)]
        service: ServiceArgs,
    },
}

fn passphrase(confirm: bool) -> anyhow::Result<String> {
    if let Ok(p) = std::env::var("RAMPART_CUSTODIAN_PASSPHRASE") {
        return Ok(p);
    }
    let read = |prompt: &str| -> anyhow::Result<String> {
        eprint!("{prompt}");
        std::io::stderr().flush().ok();
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).context("reading the passphrase")?;
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    };
    let p = read("key file passphrase: ")?;
    if confirm && read("again: ")? != p {
        bail!("the two passphrases differ");
    }
    if p.chars().count() < 12 {
        bail!("a key file passphrase has at least 12 characters");
    }
    Ok(p)
}

fn open(args: &KeyFileArgs) -> anyhow::Result<(Custodian, String)> {
    let p = passphrase(false)?;
    Ok((Custodian::load(&args.key_file, &p)?, p))
}

pub async fn run(command: CustodianCommand) -> anyhow::Result<()> {
    match command {
        CustodianCommand::Init(args) => {
            if args.key_file.exists() {
                bail!("{} exists already: a key file is never overwritten", args.key_file.display());
            }
            let p = passphrase(true)?;
            let me = Custodian::generate();
            me.save(&args.key_file, &p)?;
            let public = me.identity.public();
            println!("created {}", args.key_file.display());
            println!("signing key:  {}", hex::encode(public.signing));
            println!("exchange key: {}", hex::encode(public.exchange));
            Ok(())
        }
        CustodianCommand::Show(args) => {
            let (me, _) = open(&args)?;
            let public = me.identity.public();
            println!("signing key:  {}", hex::encode(public.signing));
            println!("exchange key: {}", hex::encode(public.exchange));
            for s in &me.shares {
                println!("share: {} wallet {} epoch {} identifier {}", s.asset, s.wallet_id, s.epoch, s.identifier);
            }
            Ok(())
        }
        CustodianCommand::Register { key, service } => {
            let (me, _) = open(&key)?;
            let answer = custodian::register(&Service::new(&service.server, &service.token), &me).await?;
            println!("{}", serde_json::to_string_pretty(&answer)?);
            Ok(())
        }
        CustodianCommand::Ceremony { key, service, ceremony } => {
            let (mut me, p) = open(&key)?;
            let client = Service::new(&service.server, &service.token);
            let view = client.get(&format!("/v1/custody/ceremonies/{ceremony}")).await?;
            if view["kind"] == "repair" {
                let done = custodian::repair_ceremony(&client, &mut me, ceremony).await?;
                me.save(&key.key_file, &p)?;
                println!("{done}");
            } else {
                let result = custodian::key_ceremony(&client, &mut me, ceremony).await?;
                me.save(&key.key_file, &p)?;
                println!(
                    "ceremony {ceremony} completed: wallet {} epoch {} at {}; the new share is in {}",
                    result.wallet_id,
                    result.epoch,
                    result.address,
                    key.key_file.display()
                );
            }
            Ok(())
        }
        CustodianCommand::Sign { key, service, session, yes } => {
            let (me, _) = open(&key)?;
            let client = Service::new(&service.server, &service.token);
            let result = custodian::sign_session(&client, &me, session, |summary| {
                println!("{summary}");
                if yes {
                    return true;
                }
                eprint!("type \"sign\" to sign this: ");
                std::io::stderr().flush().ok();
                let mut line = String::new();
                std::io::stdin().lock().read_line(&mut line).is_ok() && line.trim() == "sign"
            })
            .await?;
            if !yes && !result.signed {
                eprintln!("{}", result.summary.lines().next().unwrap_or(""));
            }
            match (result.signed, result.txid) {
                (true, Some(txid)) => println!("signed; the session completed: transaction {txid}"),
                (true, None) => println!("signed"),
                (false, _) => println!("not signed"),
            }
            Ok(())
        }
    }
}

pub async fn run_custody(command: CustodyCommand) -> anyhow::Result<()> {
    match command {
        CustodyCommand::Status { service } => {
            let status = Service::new(&service.server, &service.token).get("/v1/custody/status").await?;
            println!("{}", serde_json::to_string_pretty(&status)?);
            Ok(())
        }
    }
}
