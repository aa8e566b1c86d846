//! `rampart unseal`: a custodian submits their share to a running, sealed service.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use zeroize::Zeroizing;

/// Flags of `rampart unseal`.
#[derive(Args, Debug)]
pub struct UnsealArgs {
    /// The service's address.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The file `rampart init` wrote this custodian's share to; without it, the share is read from standard input.
    #[arg(long)]
    share_file: Option<PathBuf>,
}

/// Runs `rampart unseal`.
pub async fn run(args: UnsealArgs) -> anyhow::Result<()> {
    let share = Zeroizing::new(match &args.share_file {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?,
        None => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).context("cannot read the share from standard input")?;
            line
        }
    });
    let body = serde_json::json!({ "share": share.trim() });
    let url = format!("{}/v1/sys/unseal", args.url.trim_end_matches('/'));
    let response =
        reqwest::Client::new().post(&url).json(&body).send().await.with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let answer: serde_json::Value = response.json().await.context("the service's answer is not JSON")?;
    if !status.is_success() {
        bail!("{}", answer["error"]["message"].as_str().unwrap_or("the share was refused"));
    }
    if answer["sealed"] == serde_json::json!(false) {
        println!("unsealed");
    } else {
        println!("share accepted: {} of {} received", answer["progress"], answer["threshold"]);
    }
    Ok(())
}
