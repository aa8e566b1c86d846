//! The private form's test vectors (`crates/verify/testdata/private-vectors.json`, docs/reserves-spec.md §8): a small
//! tree's publication, honest proofs and forgeries, each with the outcome any correct verifier must reach. Written
//! with `RAMPART_WRITE_VECTORS=1`. Range proofs are randomised, so a rewrite changes their bytes; the check is that
//! the stored file's root is the tree's (hashes and commitments are deterministic) and that every stored case still
//! verifies, or fails, as stated.

use rampart_reserves::private::PrivateTree;
use rampart_reserves::{Holding, Reveal, TreeSecret};
use rampart_verify::params::{Asset, Params};
use rampart_verify::private::PrivateProof;
use rampart_verify::publication::PrivatePublication;
use serde_json::{Value, json};

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../verify/testdata/private-vectors.json");

fn params(snapshot: &str) -> Params {
    Params {
        exchange: "Rampart Vector Exchange".into(),
        snapshot: snapshot.into(),
        height: 5,
        assets: ["BTC", "ETH", "USDT"]
            .iter()
            .map(|c| Asset { code: (*c).into(), max: u128::from(u64::MAX >> 5) })
            .collect(),
    }
}

fn tree(snapshot: &str) -> PrivateTree {
    let holdings: Vec<Holding> = (0..9u128)
        .map(|u| Holding {
            user_id: format!("customer-{u}").into_bytes(),
            balances: match u % 3 {
                0 => vec![(0, 100_000 + u)],
                1 => vec![(1, 7_000_000 * (u + 1))],
                _ => vec![(0, 5 + u), (2, 1_000_000_000 + u)],
            },
        })
        .collect();
    // Proven levels 3 of 5: the publication range-proves the 2 top levels' 6 nodes of each asset.
    PrivateTree::build_with_proven_levels(params(snapshot), holdings, &TreeSecret::new([0x17; 32]), 2, 3).unwrap()
}

fn write() -> Value {
    let t = tree("2026-12-04/private-1");
    let other = tree("2026-12-04/private-2");
    let publication = t.publication().encode();
    let mut cases = Vec::new();
    for (i, reveal) in [(0, Reveal::Held), (1, Reveal::Held), (2, Reveal::Held), (4, Reveal::All)] {
        let proof = t.proof(i, reveal).unwrap().encode();
        cases.push(json!({"name": format!("user {i}, {reveal:?}"), "proof": hex::encode(&proof), "expect": "valid"}));
        if i == 2 {
            let mut flipped = proof.clone();
            let at = flipped.len() - 40;
            flipped[at] ^= 1;
            cases.push(json!({"name": "a changed byte in a range proof", "proof": hex::encode(flipped),
                "expect": "invalid"}));
        }
    }
    let stranger = other.proof(0, Reveal::Held).unwrap().encode();
    cases.push(json!({"name": "a proof of another snapshot", "proof": hex::encode(stranger), "expect": "invalid"}));
    let mut forged = publication.clone();
    let at = forged.len() / 2;
    forged[at] ^= 1;
    json!({
        "spec": "docs/reserves-spec.md §8; randomised range proofs: regenerating changes their bytes, not the root",
        "root": hex::encode(t.root()),
        "totals": t.totals().iter().map(u64::to_string).collect::<Vec<_>>(),
        "publication": hex::encode(&publication),
        "forged_publication": hex::encode(&forged),
        "cases": cases,
    })
}

#[test]
fn the_private_vectors_verify_as_stated() {
    if std::env::var_os("RAMPART_WRITE_VECTORS").is_some() {
        std::fs::write(PATH, serde_json::to_string_pretty(&write()).unwrap() + "\n").unwrap();
    }
    let v: Value = serde_json::from_str(&std::fs::read_to_string(PATH).unwrap()).unwrap();
    let root: [u8; 32] = hex::decode(v["root"].as_str().unwrap()).unwrap().try_into().unwrap();
    assert_eq!(root, tree("2026-12-04/private-1").root(), "the stored root is the tree's");
    let bytes = hex::decode(v["publication"].as_str().unwrap()).unwrap();
    let publication = PrivatePublication::decode(&bytes).unwrap();
    assert_eq!(publication.encode(), bytes, "canonical");
    let totals: Vec<String> = publication.totals.iter().map(u64::to_string).collect();
    assert_eq!(json!(totals), v["totals"]);
    let verified = publication.verify(&root).expect("the publication verifies");
    let forged = hex::decode(v["forged_publication"].as_str().unwrap()).unwrap();
    assert!(PrivatePublication::decode(&forged).map_or(true, |p| p.verify(&root).is_err()));
    let cases = v["cases"].as_array().unwrap();
    assert!(cases.len() >= 6);
    for case in cases {
        let proof = hex::decode(case["proof"].as_str().unwrap()).unwrap();
        let outcome = PrivateProof::decode(&proof).map_err(|e| e.to_string()).and_then(|p| {
            assert_eq!(p.encode(), proof, "canonical");
            p.verify(&verified).map_err(|e| e.to_string())
        });
        let valid = case["expect"] == "valid";
        assert_eq!(outcome.is_ok(), valid, "{}: {outcome:?}", case["name"]);
    }
}
