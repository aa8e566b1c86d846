//! `rampart sanctions`: reading the SDN files (counts; a damaged file's bad lines named), screening a name (JSON
//! lines, best first; date of birth and country move the score), screening an address, and bad input refused.

use std::process::Command;

const LIST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../compliance/testdata/ofac");
const ADDRESSES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../compliance/testdata/crypto-addresses");

fn rampart(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rampart")).args(args).output().expect("rampart runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))).collect()
}

#[test]
fn check_counts_the_list_and_names_bad_lines() {
    let (ok, out, err) = rampart(&["sanctions", "check", "--list", LIST]);
    assert!(ok, "{err}");
    let counts = &json_lines(&out)[0];
    assert_eq!((counts["entries"].as_u64(), counts["aliases"].as_u64()), (Some(8_976), Some(11_910)), "{out}");
    assert_eq!(counts["problems"], 0);

    let dir = tempfile::tempdir().unwrap();
    for f in ["alt.csv", "add.csv"] {
        std::fs::copy(format!("{LIST}/{f}"), dir.path().join(f)).unwrap();
    }
    let sdn = std::fs::read_to_string(format!("{LIST}/sdn.csv")).unwrap();
    let mut lines: Vec<&str> = sdn.lines().collect();
    lines[2] = "not-a-number,\"BROKEN\",-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- ,-0- ";
    std::fs::write(dir.path().join("sdn.csv"), lines.join("\n")).unwrap();
    let (ok, out, err) = rampart(&["sanctions", "check", "--list", dir.path().to_str().unwrap()]);
    assert!(!ok, "a damaged list fails the check");
    assert!(err.contains("sdn.csv:3: the entry number \"not-a-number\" is not a number"), "{err}");
    assert_eq!(json_lines(&out)[0]["entries"], 8_975);
}

#[test]
fn screen_prints_ranked_matches_moved_by_birth_year_and_country() {
    // The list has "EL AYASHI, Radi Abd El Samie Abou El Yazid"; a misspelt surname scores below a perfect match,
    // so that what is known of the person can move it either way.
    let name = "Radi Abd El Samie Abou El Yazid El Ayashy";
    let (ok, out, err) = rampart(&["sanctions", "screen", name, "--list", LIST]);
    assert!(ok, "{err}");
    let matches = json_lines(&out);
    assert!(!matches.is_empty(), "{out}");
    assert_eq!(matches[0]["entry"], 8094, "{out}");
    assert_eq!(matches[0]["hit"], true);
    let plain = matches[0]["score"].as_u64().unwrap();
    let scores = matches.iter().map(|m| m["score"].as_u64().unwrap()).collect::<Vec<_>>();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "best first: {scores:?}");

    let score_with = |extra: &[&str]| {
        let mut args = vec!["sanctions", "screen", name, "--list", LIST];
        args.extend_from_slice(extra);
        let (ok, out, err) = rampart(&args);
        assert!(ok, "{err}");
        let first = &json_lines(&out)[0];
        assert_eq!(first["entry"], 8094);
        first["score"].as_u64().unwrap()
    };
    assert!(score_with(&["--dob", "1972-01-02", "--country", "eg"]) > plain);
    assert!(score_with(&["--dob", "1990-05-05"]) < plain);
    assert!(score_with(&["--country", "JP"]) < plain);
}

#[test]
fn screen_and_address_refuse_bad_input_and_find_listed_addresses() {
    let (ok, _, err) = rampart(&["sanctions", "screen", "Someone", "--list", LIST, "--country", "XX"]);
    assert!(!ok && err.contains("\"XX\" is not an ISO 3166-1 alpha-2 country code"), "{err}");
    let (ok, _, err) = rampart(&["sanctions", "screen", "Someone", "--list", LIST, "--dob", "02/01/1972"]);
    assert!(!ok && err.contains("is not YYYY-MM-DD"), "{err}");
    let (ok, _, err) = rampart(&["sanctions", "screen", "  ", "--list", LIST]);
    assert!(!ok && err.contains("empty"), "{err}");
    let (ok, _, err) = rampart(&["sanctions", "check", "--list", "/nonexistent"]);
    assert!(!ok && err.contains("cannot read /nonexistent/sdn.csv"), "{err}");

    let eth = std::fs::read_to_string(format!("{ADDRESSES}/sanctioned_addresses_ETH.txt")).unwrap();
    let listed = eth.lines().next().unwrap().trim().to_owned();
    let (ok, out, err) = rampart(&[
        "sanctions",
        "address",
        &listed.to_uppercase().replacen("0X", "0x", 1),
        "--list",
        LIST,
        "--addresses",
        ADDRESSES,
    ]);
    assert!(ok, "{err}");
    let listings = json_lines(&out);
    assert!(listings.iter().any(|l| l["category"] == "sanctioned" && l["asset"] == "ETH"), "{out}");
    let (ok, out, _) = rampart(&[
        "sanctions",
        "address",
        "0x0000000000000000000000000000000000000001",
        "--list",
        LIST,
        "--addresses",
        ADDRESSES,
    ]);
    assert!(ok && out.is_empty(), "an unlisted address prints nothing: {out}");
}
