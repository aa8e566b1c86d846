//! The OFAC SDN snapshot in `testdata/ofac` (the same files as `../shared/data/sanctions/ofac`): import counts checked
//! against counts made independently of the parser, recall of aliases and of damaged names, false positives on
//! ordinary names, and address screening of every listed address.

use std::path::PathBuf;
use std::sync::LazyLock;

use rampart_compliance::{AddressBook, Category, DEFAULT_THRESHOLD, Files, Query, Screener, ofac, sdn_addresses};

fn testdata(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata").join(path)
}

fn read(path: &str) -> Vec<u8> {
    std::fs::read(testdata(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

struct Loaded {
    sdn: Vec<u8>,
    alt: Vec<u8>,
    add: Vec<u8>,
    comments: Vec<u8>,
    parsed: ofac::Parsed,
    screener: Screener,
}

static LIST: LazyLock<Loaded> = LazyLock::new(|| {
    let (sdn, alt, add, comments) =
        (read("ofac/sdn.csv"), read("ofac/alt.csv"), read("ofac/add.csv"), read("ofac/sdn_comments.csv"));
    let parsed = ofac::parse(&Files { sdn: &sdn, alt: &alt, add: &add, comments: &comments });
    let screener = Screener::new(&parsed.entries);
    Loaded { sdn, alt, add, comments, parsed, screener }
});

/// Lines that hold a record, counted without a CSV parser: every line of these files starts with a digit (no field
/// spans lines in this snapshot; the test checks it).
fn records(bytes: &[u8]) -> usize {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().trim_matches('\u{1a}').is_empty()).collect();
    assert!(lines.iter().all(|l| l.as_bytes()[0].is_ascii_digit()), "a record spans lines");
    lines.len()
}

#[test]
fn the_import_holds_every_entry_alias_address_and_digital_currency_address() {
    let l = &*LIST;
    assert!(l.parsed.problems.is_empty(), "{:?}", &l.parsed.problems[..l.parsed.problems.len().min(5)]);
    assert_eq!(l.parsed.entries.len(), records(&l.sdn));
    assert_eq!(l.parsed.entries.iter().map(|e| e.aliases.len()).sum::<usize>(), records(&l.alt));
    assert_eq!(l.parsed.entries.iter().map(|e| e.addresses.len()).sum::<usize>(), records(&l.add));
    // Marks in either file, plus those that a long remark split between its row and its comment row.
    const MARK: &str = "Digital Currency Address - ";
    let (sdn, comments) = (String::from_utf8_lossy(&l.sdn), String::from_utf8_lossy(&l.comments));
    let mut marks = sdn.matches(MARK).count() + comments.matches(MARK).count();
    for line in comments.lines().filter(|l| !l.trim().is_empty()) {
        let (id, rest) = line.split_once(',').unwrap();
        let row = sdn.lines().find(|l| l.starts_with(&format!("{id},"))).unwrap();
        let tail: String =
            row.trim_end().trim_end_matches('"').chars().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
        let head: String = rest.trim_start_matches('"').chars().take(40).collect();
        let seam = format!("{tail}{head}");
        marks += seam.matches(MARK).count() - tail.matches(MARK).count() - head.matches(MARK).count();
    }
    let parsed: usize = l.parsed.entries.iter().map(|e| e.crypto.len()).sum();
    assert_eq!(parsed, marks);
    println!(
        "{} entries, {} aliases, {} addresses, {} digital-currency addresses",
        l.parsed.entries.len(),
        records(&l.alt),
        records(&l.add),
        parsed
    );
    let with_dob = l.parsed.entries.iter().filter(|e| !e.birth_years.is_empty()).count();
    let with_country = l.parsed.entries.iter().filter(|e| !e.countries.is_empty()).count();
    assert!(with_dob > 3_000 && with_country > 5_000, "{with_dob} with a year of birth, {with_country} with a country");
}

#[test]
fn a_damaged_copy_reports_its_bad_lines_and_keeps_the_rest() {
    let l = &*LIST;
    let text = String::from_utf8_lossy(&l.sdn).into_owned();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines[4] = format!("x{}", lines[4]); // line 5: the entry number is not a number
    lines[99] = "12345,\"TRUNCATED".into(); // line 100: an unterminated quote runs to the end of the line
    lines[199] = "777777".into(); // line 200: one field
    let damaged = lines.join("\n");
    let parsed = ofac::parse(&Files { sdn: damaged.as_bytes(), alt: b"", add: b"", comments: b"" });
    let bad: Vec<u64> = parsed.problems.iter().map(|p| p.line).collect();
    assert!(bad.contains(&5) && bad.contains(&200), "{:?}", parsed.problems);
    assert!(parsed.problems.iter().all(|p| p.file == "sdn.csv"));
    assert!(parsed.entries.len() >= l.parsed.entries.len() - 4, "the rest is read: {}", parsed.entries.len());
    assert!(parsed.entries.len() < l.parsed.entries.len());
}

fn rank_of(screener: &Screener, query: &str, entry: u32) -> Option<usize> {
    screener.screen(&Query { name: query, ..Query::default() }, 5).iter().position(|m| m.entry == entry)
}

#[test]
fn every_alias_finds_its_own_entry_in_the_top_five() {
    let l = &*LIST;
    let mut missed = Vec::new();
    let mut total = 0;
    for e in &l.parsed.entries {
        for a in &e.aliases {
            total += 1;
            if rank_of(&l.screener, &a.name, e.id).is_none() {
                missed.push((e.id, a.name.clone()));
            }
        }
    }
    println!("aliases: {} of {total} find their entry in the top 5", total - missed.len());
    assert!(missed.is_empty(), "{} missed, e.g. {:?}", missed.len(), &missed[..missed.len().min(10)]);
}

/// Damages a name: a deterministic choice among the entries.
fn damaged_recall(damage: impl Fn(&[String]) -> Option<String>) -> (usize, usize) {
    let l = &*LIST;
    let (mut found, mut tried) = (0, 0);
    for e in l.parsed.entries.iter().filter(|e| e.kind == ofac::EntryKind::Individual).step_by(7) {
        let words: Vec<String> = e.name.replace(',', " ").split_whitespace().map(str::to_owned).collect();
        let Some(query) = damage(&words) else { continue };
        tried += 1;
        let hit = l.screener.screen(&Query { name: &query, ..Query::default() }, 5);
        if hit.iter().any(|m| m.entry == e.id && m.score >= DEFAULT_THRESHOLD) {
            found += 1;
        }
    }
    (found, tried)
}

fn check(what: &str, (found, tried): (usize, usize), floor_percent: usize) {
    println!("{what}: {found} of {tried} found above the threshold in the top 5 ({} %)", found * 100 / tried.max(1));
    assert!(tried > 100, "{what}: only {tried} names tried");
    assert!(found * 100 >= tried * floor_percent, "{what}: recall {found}/{tried} below {floor_percent} %");
}

#[test]
fn damaged_names_still_match() {
    // A typo: two neighbouring letters of the longest word swapped.
    check(
        "typo",
        damaged_recall(|w| {
            let (i, longest) = w.iter().enumerate().max_by_key(|(_, x)| x.len())?;
            if longest.len() < 5 {
                return None;
            }
            let mut b = longest.clone().into_bytes();
            b.swap(2, 3);
            let mut out = w.to_vec();
            out[i] = String::from_utf8(b).ok()?;
            Some(out.join(" "))
        }),
        90,
    );
    // Word order: first name first, as people write it ("LAST, First" in the list).
    check(
        "word order",
        damaged_recall(|w| {
            (w.len() >= 2).then(|| {
                let mut out = w.to_vec();
                out.rotate_left(1);
                out.join(" ")
            })
        }),
        99,
    );
    // A missing middle name.
    check(
        "missing middle name",
        damaged_recall(|w| {
            (w.len() >= 3).then(|| {
                let mut out = w.to_vec();
                out.remove(2);
                out.join(" ")
            })
        }),
        90,
    );
    // Diacritics and lower case.
    check(
        "diacritics",
        damaged_recall(|w| {
            let accented: String = w
                .join(" ")
                .to_lowercase()
                .chars()
                .map(|c| match c {
                    'a' => 'á',
                    'e' => 'é',
                    'o' => 'ö',
                    'u' => 'ü',
                    'n' => 'ñ',
                    c => c,
                })
                .collect();
            Some(accented)
        }),
        99,
    );
}

#[test]
fn ordinary_names_rarely_match() {
    let l = &*LIST;
    let list = |p: &str| String::from_utf8(read(p)).unwrap().lines().map(str::to_owned).collect::<Vec<_>>();
    let last = list("census/last-names.txt");
    let first: Vec<String> =
        list("census/male-first-names.txt").into_iter().chain(list("census/female-first-names.txt")).collect();
    let mut hits = Vec::new();
    let mut tried = 0;
    for (i, surname) in last.iter().enumerate() {
        let given = &first[(i * 7) % first.len()];
        let name = format!("{given} {surname}");
        tried += 1;
        if let Some(m) = l.screener.screen(&Query { name: &name, ..Query::default() }, 1).first()
            && m.score >= DEFAULT_THRESHOLD
        {
            hits.push((name, m.matched.clone(), m.score));
        }
    }
    println!("ordinary names: {} of {tried} hit at the threshold: {:?}", hits.len(), &hits[..hits.len().min(10)]);
    assert!(hits.len() * 100 <= tried, "more than 1 % of ordinary names hit: {}", hits.len());
}

#[test]
fn every_listed_address_is_caught_in_any_case_its_chain_ignores() {
    let l = &*LIST;
    let mut book = AddressBook::default();
    let from_sdn = sdn_addresses(&l.parsed.entries, &mut book);
    assert!(from_sdn > 50);
    let mut listed = Vec::new();
    for entry in std::fs::read_dir(testdata("crypto-addresses")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let asset = name.trim_start_matches("sanctioned_addresses_").trim_end_matches(".txt").to_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        book.add_list(&asset, &name, &text);
        listed.extend(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned));
    }
    assert!(listed.len() > 600, "{}", listed.len());
    for a in &listed {
        assert_eq!(book.category(a), Some(Category::Sanctioned), "{a}");
        let hex = a.starts_with("0x");
        let bech32 = ["bc1", "ltc1"].iter().any(|p| a.to_lowercase().starts_with(p));
        if hex || bech32 {
            assert_eq!(
                book.category(&a.to_uppercase().replacen("0X", "0x", 1)),
                Some(Category::Sanctioned),
                "{a} in capitals"
            );
            assert_eq!(book.category(&a.to_lowercase()), Some(Category::Sanctioned), "{a} in lower case");
        }
    }
    for e in &l.parsed.entries {
        for c in &e.crypto {
            assert_eq!(book.category(&c.address), Some(Category::Sanctioned), "{}", c.address);
        }
    }
    assert_eq!(book.category("1BoatSLRHtKNngkdXEeobR76b53LETtpyT"), None, "an address on no list");
}
