//! The OFAC Specially Designated Nationals list in its legacy CSV form: `sdn.csv` (one row an entry), `alt.csv`
//! (aliases), `add.csv` (addresses) and `sdn_comments.csv` (remarks too long for their row). No header rows; `-0-`
//! means empty. Remarks carry dates of birth, nationalities and the `Digital Currency Address - XBT ...` entries.
//!
//! A bad row (too few fields, an entry number that is not a number or names no entry) is reported with its file and
//! line and skipped; the rest of the import goes on, so one broken line never hides a whole list, and never passes
//! unseen either.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::countries;

/// What an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A person.
    Individual,
    /// A company, organisation or group.
    Entity,
    /// A ship.
    Vessel,
    /// An aircraft.
    Aircraft,
}

/// Another name of an entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alias {
    /// Its number in the list.
    pub id: u32,
    /// `aka`, `fka` (formerly) or `nka` (now).
    pub kind: String,
    /// The name.
    pub name: String,
}

/// A postal address of an entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostalAddress {
    /// Street.
    pub address: String,
    /// City, state, postcode.
    pub city: String,
    /// Country, as the list spells it.
    pub country: String,
}

/// A digital-currency address named in an entry's remarks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CryptoAddress {
    /// The list's asset code (`XBT` is bitcoin, `ETH`, `USDT` ...).
    pub asset: String,
    /// The address as listed.
    pub address: String,
}

/// One entry of the list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Its number (`ent_num`).
    pub id: u32,
    /// The primary name (individuals as `LAST, First`).
    pub name: String,
    /// What it is.
    pub kind: EntryKind,
    /// The sanctions programmes (`CUBA`, `SDGT`, `DPRK3` ...).
    pub programs: Vec<String>,
    /// Remarks, with their continuation from `sdn_comments.csv`.
    pub remarks: String,
    /// Other names.
    pub aliases: Vec<Alias>,
    /// Postal addresses.
    pub addresses: Vec<PostalAddress>,
    /// Years of birth from the remarks (`DOB 12 Oct 1958`, `alt. DOB 1959`, `DOB circa 1960`).
    pub birth_years: Vec<u16>,
    /// ISO codes of the countries tied to it: nationality and citizenship in the remarks, countries of its addresses.
    pub countries: Vec<String>,
    /// Digital-currency addresses from the remarks.
    pub crypto: Vec<CryptoAddress>,
}

/// A problem with one row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// The file (`sdn.csv` ...).
    pub file: String,
    /// The line in it, from 1.
    pub line: u64,
    /// What is wrong.
    pub message: String,
}

/// The outcome of reading the files.
#[derive(Clone, Debug, Default)]
pub struct Parsed {
    /// The entries read, by number.
    pub entries: Vec<Entry>,
    /// The rows that could not be read.
    pub problems: Vec<Problem>,
}

/// The four files' contents (`comments` may be empty).
pub struct Files<'a> {
    /// sdn.csv
    pub sdn: &'a [u8],
    /// alt.csv
    pub alt: &'a [u8],
    /// add.csv
    pub add: &'a [u8],
    /// sdn_comments.csv
    pub comments: &'a [u8],
}

fn field(record: &csv::ByteRecord, i: usize) -> String {
    let raw = record.get(i).map(String::from_utf8_lossy).unwrap_or_default();
    let value = raw.trim();
    if value == "-0-" { String::new() } else { value.to_owned() }
}

/// Reads the rows of one file: each row with its line, or a problem.
fn rows(file: &str, bytes: &[u8], min_fields: usize, problems: &mut Vec<Problem>) -> Vec<(u64, csv::ByteRecord)> {
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(bytes);
    let mut out = Vec::new();
    let mut record = csv::ByteRecord::new();
    loop {
        let line = reader.position().line();
        match reader.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                let line = record.position().map_or(line, |p| p.line());
                // A file ends with a control-Z on some OFAC downloads: an empty last row is not an error.
                if record.len() == 1 && field(&record, 0).trim_matches('\u{1a}').is_empty() {
                    continue;
                }
                if record.len() < min_fields {
                    problems.push(Problem {
                        file: file.to_owned(),
                        line,
                        message: format!("{} fields, at least {min_fields} expected", record.len()),
                    });
                    continue;
                }
                out.push((line, record.clone()));
            }
            Err(e) => {
                let line = e.position().map_or(line, |p| p.line());
                problems.push(Problem { file: file.to_owned(), line, message: format!("not CSV: {e}") });
                // The reader resumes at the next record.
            }
        }
    }
    out
}

fn entry_number(file: &str, line: u64, record: &csv::ByteRecord, problems: &mut Vec<Problem>) -> Option<u32> {
    let text = field(record, 0);
    match text.parse::<u32>() {
        Ok(n) => Some(n),
        Err(_) => {
            problems.push(Problem {
                file: file.to_owned(),
                line,
                message: format!("the entry number {text:?} is not a number"),
            });
            None
        }
    }
}

/// Reads the list. Never fails: what cannot be read is in [`Parsed::problems`].
pub fn parse(files: &Files<'_>) -> Parsed {
    let mut problems = Vec::new();
    let mut entries: BTreeMap<u32, Entry> = BTreeMap::new();
    for (line, r) in rows("sdn.csv", files.sdn, 12, &mut problems) {
        let Some(id) = entry_number("sdn.csv", line, &r, &mut problems) else { continue };
        let name = field(&r, 1);
        if name.is_empty() {
            problems.push(Problem { file: "sdn.csv".into(), line, message: format!("entry {id} has no name") });
            continue;
        }
        let kind = match field(&r, 2).to_ascii_lowercase().as_str() {
            "individual" => EntryKind::Individual,
            "vessel" => EntryKind::Vessel,
            "aircraft" => EntryKind::Aircraft,
            _ => EntryKind::Entity,
        };
        let programs = field(&r, 3)
            .split(|c: char| c == ']' || c == '[' || c.is_whitespace())
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        if entries.contains_key(&id) {
            problems.push(Problem { file: "sdn.csv".into(), line, message: format!("entry {id} appears twice") });
            continue;
        }
        entries.insert(
            id,
            Entry {
                id,
                name,
                kind,
                programs,
                remarks: field(&r, 11),
                aliases: Vec::new(),
                addresses: Vec::new(),
                birth_years: Vec::new(),
                countries: Vec::new(),
                crypto: Vec::new(),
            },
        );
    }
    let unknown = |file: &str, line: u64, id: u32| Problem {
        file: file.to_owned(),
        line,
        message: format!("entry {id} is not in sdn.csv"),
    };
    for (line, r) in rows("sdn_comments.csv", files.comments, 2, &mut problems) {
        let Some(id) = entry_number("sdn_comments.csv", line, &r, &mut problems) else { continue };
        match entries.get_mut(&id) {
            Some(e) => e.remarks.push_str(&field(&r, 1)),
            None => problems.push(unknown("sdn_comments.csv", line, id)),
        }
    }
    for (line, r) in rows("alt.csv", files.alt, 4, &mut problems) {
        let Some(id) = entry_number("alt.csv", line, &r, &mut problems) else { continue };
        let name = field(&r, 3);
        match entries.get_mut(&id) {
            Some(_) if name.is_empty() => problems.push(Problem {
                file: "alt.csv".into(),
                line,
                message: format!("an alias of entry {id} has no name"),
            }),
            Some(e) => e.aliases.push(Alias { id: field(&r, 1).parse().unwrap_or(0), kind: field(&r, 2), name }),
            None => problems.push(unknown("alt.csv", line, id)),
        }
    }
    for (line, r) in rows("add.csv", files.add, 5, &mut problems) {
        let Some(id) = entry_number("add.csv", line, &r, &mut problems) else { continue };
        match entries.get_mut(&id) {
            Some(e) => {
                e.addresses.push(PostalAddress { address: field(&r, 2), city: field(&r, 3), country: field(&r, 4) })
            }
            None => problems.push(unknown("add.csv", line, id)),
        }
    }
    let mut entries: Vec<Entry> = entries.into_values().collect();
    for e in &mut entries {
        e.birth_years = birth_years(&e.remarks);
        e.crypto = crypto_addresses(&e.remarks);
        let mut countries: Vec<String> = nationalities(&e.remarks)
            .iter()
            .chain(e.addresses.iter().map(|a| &a.country))
            .filter_map(|name| countries::code(name))
            .map(str::to_owned)
            .collect();
        countries.sort();
        countries.dedup();
        e.countries = countries;
    }
    const FILES: [&str; 4] = ["sdn.csv", "sdn_comments.csv", "alt.csv", "add.csv"];
    problems.sort_by_key(|p| (FILES.iter().position(|f| *f == p.file), p.line));
    Parsed { entries, problems }
}

/// The clauses of remarks (they are separated by `;`).
fn clauses(remarks: &str) -> impl Iterator<Item = &str> {
    remarks.split(';').map(|c| c.trim().trim_end_matches('.').trim())
}

/// Years of birth: every four-digit year in a `DOB` clause.
pub fn birth_years(remarks: &str) -> Vec<u16> {
    let mut years: Vec<u16> = clauses(remarks)
        .filter_map(|c| c.strip_prefix("alt. ").unwrap_or(c).strip_prefix("DOB "))
        .flat_map(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .filter(|w| w.len() == 4)
                .filter_map(|w| w.parse::<u16>().ok())
                .filter(|y| (1850..=2100).contains(y))
        })
        .collect();
    years.sort_unstable();
    years.dedup();
    years
}

fn nationalities(remarks: &str) -> Vec<String> {
    clauses(remarks)
        .filter_map(|c| {
            let c = c.strip_prefix("alt. ").unwrap_or(c);
            c.strip_prefix("nationality ").or_else(|| c.strip_prefix("citizen "))
        })
        .map(str::to_owned)
        .collect()
}

/// The `Digital Currency Address - ASSET ADDRESS` clauses.
pub fn crypto_addresses(remarks: &str) -> Vec<CryptoAddress> {
    const MARK: &str = "Digital Currency Address - ";
    let mut out = Vec::new();
    let mut rest = remarks;
    while let Some(at) = rest.find(MARK) {
        rest = &rest[at + MARK.len()..];
        let mut words = rest.split_whitespace();
        let (Some(asset), Some(address)) = (words.next(), words.next()) else { break };
        let address = address.trim_end_matches([';', '.', ',']);
        if !address.is_empty() && address.chars().all(|c| c.is_ascii_alphanumeric() || c == ':') {
            out.push(CryptoAddress { asset: asset.to_owned(), address: address.to_owned() });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remarks_give_years_countries_and_addresses() {
        let r = "DOB 12 Oct 1958; alt. DOB 1959; POB Tehran, Iran; nationality Iran; alt. Digital Currency Address - \
                 XBT 1Kuf2Rd8mDyAViwBozGTNYnvWL8uYFrkVo; Digital Currency Address - ETH 0xAbC0000000000000000000000000000000000001.";
        assert_eq!(birth_years(r), [1958, 1959]);
        assert_eq!(nationalities(r), ["Iran"]);
        let c = crypto_addresses(r);
        assert_eq!(c.len(), 2);
        assert_eq!((c[0].asset.as_str(), c[0].address.as_str()), ("XBT", "1Kuf2Rd8mDyAViwBozGTNYnvWL8uYFrkVo"));
        assert_eq!(c[1].address, "0xAbC0000000000000000000000000000000000001");
    }

    #[test]
    fn bad_rows_are_reported_with_their_lines_and_the_rest_is_read() {
        let sdn = b"1,\"ONE, Person\",\"individual\",\"SDGT\",-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,\"DOB 1970; nationality Syria.\"\n\
                    x,\"BAD\",-0- ,\"CUBA\",-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- \n\
                    2,\"SHORT\"\n\
                    3,\"THREE TRADING CO., LTD.\",-0- ,\"[IRAN]\",-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- \n";
        let alt = b"1,10,\"aka\",\"UNO, Persona\",-0- \n9,11,\"aka\",\"NOBODY\",-0- \n";
        let add = b"3,20,\"Street 1\",\"Dubai\",\"United Arab Emirates\",-0- \n";
        let parsed = parse(&Files { sdn, alt, add, comments: b"" });
        assert_eq!(parsed.entries.iter().map(|e| e.id).collect::<Vec<_>>(), [1, 3]);
        let lines: Vec<(&str, u64)> = parsed.problems.iter().map(|p| (p.file.as_str(), p.line)).collect();
        assert_eq!(lines, [("sdn.csv", 2), ("sdn.csv", 3), ("alt.csv", 2)]);
        let one = &parsed.entries[0];
        assert_eq!(
            (one.kind, one.birth_years.as_slice(), one.countries.as_slice()),
            (EntryKind::Individual, &[1970][..], &["SY".to_owned()][..])
        );
        assert_eq!(one.aliases[0].name, "UNO, Persona");
        assert_eq!(parsed.entries[1].programs, ["IRAN"]);
        assert_eq!(parsed.entries[1].countries, ["AE"]);
    }
}
