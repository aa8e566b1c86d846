//! `rampart sanctions`: reading an OFAC SDN list from its CSV files and screening names and addresses against it from
//! the command line, to check and tune screening.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use rampart_compliance::{AddressBook, DEFAULT_THRESHOLD, Files, Parsed, Query, Screener, ofac, sdn_addresses};
use serde_json::json;

/// The list the repository carries for tests (the OFAC SDN snapshot of `../shared/data`).
pub const DEFAULT_LIST: &str = "crates/compliance/testdata/ofac";
/// The per-asset sanctioned-address lists the repository carries for tests.
pub const DEFAULT_ADDRESSES: &str = "crates/compliance/testdata/crypto-addresses";

/// What to do with sanctions lists.
#[derive(Subcommand, Debug)]
pub enum SanctionsCommand {
    /// Reads a list's CSV files and reports its entries, aliases, addresses and digital-currency addresses, and
    /// every row that cannot be read, with its file and line (exit status 1 if there is one).
    Check(ListArgs),
    /// Screens a name: prints the best matches (entry, matched name, score) as JSON lines, best first.
    Screen(ScreenArgs),
    /// Imports the list's files and the per-asset address lists into the service as a new version: prints what it
    /// holds, what was added, removed and changed, and the rows that could not be read. Every customer is then
    /// re-screened against it.
    Import {
        #[command(flatten)]
        list: ListArgs,
        /// A directory of per-asset lists (`sanctioned_addresses_<ASSET>.txt`).
        #[arg(long, default_value = DEFAULT_ADDRESSES)]
        addresses: PathBuf,
        #[command(flatten)]
        service: crate::custodian_cmd::ServiceArgs,
    },
    /// Screens a digital-currency address: prints its listings as JSON lines (none: not listed).
    Address {
        /// The address.
        address: String,
        #[command(flatten)]
        list: ListArgs,
        /// A directory of per-asset lists (`sanctioned_addresses_<ASSET>.txt`, one address a line).
        #[arg(long, default_value = DEFAULT_ADDRESSES)]
        addresses: PathBuf,
    },
}

/// Where the list is.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// The directory of the OFAC SDN files: `sdn.csv`, `alt.csv`, `add.csv` and (optional) `sdn_comments.csv`.
    #[arg(long, default_value = DEFAULT_LIST)]
    pub list: PathBuf,
}

/// Flags of `rampart sanctions screen`.
#[derive(Args, Debug)]
pub struct ScreenArgs {
    /// The name, in any form.
    name: String,
    #[command(flatten)]
    list: ListArgs,
    /// The person's country (ISO 3166-1 alpha-2): a match on it raises the score, another country lowers it.
    #[arg(long)]
    country: Option<String>,
    /// The person's date of birth (YYYY-MM-DD, or only the year): the same year (±1) raises the score, another
    /// lowers it.
    #[arg(long)]
    dob: Option<String>,
    /// How many matches to print (more when several tie with the last).
    #[arg(long, default_value_t = 5)]
    limit: usize,
}

/// Reads the list's files.
pub fn read_list(dir: &Path) -> anyhow::Result<Parsed> {
    let read = |name: &str, required: bool| -> anyhow::Result<Vec<u8>> {
        let path = dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(bytes),
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    };
    let (sdn, alt, add, comments) =
        (read("sdn.csv", true)?, read("alt.csv", true)?, read("add.csv", true)?, read("sdn_comments.csv", false)?);
    Ok(ofac::parse(&Files { sdn: &sdn, alt: &alt, add: &add, comments: &comments }))
}

/// The body of `POST /v1/compliance/lists/ofac` for the files of `list` and the per-asset lists of `addresses`.
pub fn import_body(list: &Path, addresses: &Path) -> anyhow::Result<serde_json::Value> {
    let mut files = serde_json::Map::new();
    for (name, required) in [("sdn.csv", true), ("alt.csv", true), ("add.csv", true), ("sdn_comments.csv", false)] {
        let path = list.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => {
                files.insert(name.into(), json!(String::from_utf8_lossy(&bytes)));
            }
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }
    let mut assets = serde_json::Map::new();
    let entries = std::fs::read_dir(addresses).with_context(|| format!("cannot read {}", addresses.display()))?;
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if let Some(asset) = name.strip_prefix("sanctioned_addresses_").and_then(|n| n.strip_suffix(".txt")) {
            let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
            assets.insert(asset.to_owned(), json!(text));
        }
    }
    Ok(json!({"files": files, "addresses": assets}))
}

/// Adds every `sanctioned_addresses_<ASSET>.txt` of `dir` to `book`; answers how many addresses.
pub fn read_address_lists(dir: &Path, book: &mut AddressBook) -> anyhow::Result<usize> {
    let mut n = 0;
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot read the directory {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let Some(asset) = name.strip_prefix("sanctioned_addresses_").and_then(|n| n.strip_suffix(".txt")) else {
            continue;
        };
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        n += book.add_list(asset, &name, &text);
    }
    Ok(n)
}

fn birth_year(dob: &str) -> anyhow::Result<u16> {
    let year = dob.split('-').next().unwrap_or_default();
    match year.parse::<u16>() {
        Ok(y) if (1850..=2100).contains(&y) && year.len() == 4 => Ok(y),
        _ => bail!("the date of birth {dob:?} is not YYYY-MM-DD (or YYYY)"),
    }
}

/// Runs a `rampart sanctions` command.
pub async fn run(command: SanctionsCommand) -> anyhow::Result<()> {
    match command {
        SanctionsCommand::Import { list, addresses, service } => {
            let body = import_body(&list.list, &addresses)?;
            let service = crate::custodian::Service::new(&service.server, &service.token);
            let answer = service.post("/v1/compliance/lists/ofac", &body).await?;
            let report = &answer["report"];
            println!(
                "{}",
                json!({
                    "version": answer["version"],
                    "entries": report["entries"],
                    "aliases": report["aliases"],
                    "digital_currency_addresses": report["crypto_addresses"],
                    "asset_list_addresses": report["asset_list_addresses"],
                    "added": report["added"].as_array().map_or(0, Vec::len),
                    "removed": report["removed"].as_array().map_or(0, Vec::len),
                    "changed": report["changed"].as_array().map_or(0, Vec::len),
                    "problems": report["problems"].as_array().map_or(0, Vec::len),
                    "rescreen": answer["rescreen"],
                })
            );
            for p in report["problems"].as_array().into_iter().flatten() {
                eprintln!(
                    "{}:{}: {}",
                    p["file"].as_str().unwrap_or(""),
                    p["line"],
                    p["message"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        SanctionsCommand::Check(args) => {
            let parsed = read_list(&args.list)?;
            let count = |f: fn(&ofac::Entry) -> usize| parsed.entries.iter().map(f).sum::<usize>();
            println!(
                "{}",
                json!({
                    "entries": parsed.entries.len(),
                    "aliases": count(|e| e.aliases.len()),
                    "addresses": count(|e| e.addresses.len()),
                    "digital_currency_addresses": count(|e| e.crypto.len()),
                    "problems": parsed.problems.len(),
                })
            );
            for p in &parsed.problems {
                eprintln!("{}:{}: {}", p.file, p.line, p.message);
            }
            if !parsed.problems.is_empty() {
                bail!("{} rows of {} cannot be read", parsed.problems.len(), args.list.display());
            }
            Ok(())
        }
        SanctionsCommand::Screen(args) => {
            let country = args.country.as_deref().map(str::to_ascii_uppercase);
            if let Some(c) = &country
                && !rampart_compliance::countries::is_code(c)
            {
                bail!("{c:?} is not an ISO 3166-1 alpha-2 country code");
            }
            let birth_year = args.dob.as_deref().map(birth_year).transpose()?;
            if args.name.trim().is_empty() {
                bail!("the name to screen is empty");
            }
            let parsed = read_list(&args.list.list)?;
            let screener = Screener::new(&parsed.entries);
            let query = Query { name: &args.name, country: country.as_deref(), birth_year };
            for m in screener.screen(&query, args.limit) {
                let mut line = serde_json::to_value(&m)?;
                line["hit"] = json!(m.score >= DEFAULT_THRESHOLD);
                println!("{line}");
            }
            Ok(())
        }
        SanctionsCommand::Address { address, list, addresses } => {
            let parsed = read_list(&list.list)?;
            let mut book = AddressBook::default();
            sdn_addresses(&parsed.entries, &mut book);
            read_address_lists(&addresses, &mut book)?;
            for listing in book.lookup(&address) {
                println!("{}", serde_json::to_string(listing)?);
            }
            Ok(())
        }
    }
}
