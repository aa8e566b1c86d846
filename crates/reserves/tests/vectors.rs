//! The published test vectors (`crates/verify/testdata/vectors.json`, docs/reserves-spec.md §7): regenerated with
//! `RAMPART_WRITE_VECTORS=1`, otherwise checked to be unchanged, and every case checked against this verifier. The
//! JavaScript verifier's tests read the same file.

mod common;

use common::*;
use rampart_reserves::{Holding, Reveal, Tree, TreeSecret};
use rampart_verify::Proof;
use rampart_verify::hash::{ChunkSet, leaf_hash, sums_digest, user_commitment};
use rampart_verify::params::{Asset, CHUNK_LEN, Params};
use serde_json::{Value, json};

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../verify/testdata/vectors.json");

fn params_json(p: &Params) -> Value {
    json!({
        "exchange": p.exchange,
        "snapshot": p.snapshot,
        "height": p.height,
        "assets": p.assets.iter().map(|a| json!({"code": a.code, "max": a.max.to_string()})).collect::<Vec<_>>(),
    })
}

fn case(name: &str, proof: &[u8], root: &[u8; 32], totals: Option<&[u128]>, valid: bool, why: &str) -> Value {
    json!({
        "name": name,
        "proof": hex::encode(proof),
        "root": hex::encode(root),
        "totals": totals.map(|t| t.iter().map(u128::to_string).collect::<Vec<_>>()),
        "expect": if valid { "valid" } else { "invalid" },
        "why": why,
    })
}

fn build() -> Value {
    // An honest tree of 20 assets (two chunks, so proofs carry hints) and 11 users, one of whom holds nothing.
    let params = Params {
        exchange: "Rampart Vector Exchange".into(),
        snapshot: "2026-12-04T00:00:00Z/ledger-4242".into(),
        height: 4,
        assets: (0..20)
            .map(|i| Asset {
                code: format!("COIN{i}"),
                max: if i == 0 { 21_000_000 * 100_000_000 } else { 1u128 << 96 },
            })
            .collect(),
    };
    let mut holdings: Vec<Holding> = (0..11u128)
        .map(|u| Holding {
            user_id: format!("customer-{u:02}").into_bytes(),
            balances: vec![((u % 20) as u16, 1_000 + u * 7), (((u * 7 + 3) % 20) as u16, 10u128.pow(20) + u)],
        })
        .collect();
    holdings[10].balances.clear();
    holdings[3].balances = vec![(0, 2_100_000_000_000_000), (19, (1u128 << 96) - 1)];
    let tree = Tree::build(params.clone(), holdings, &TreeSecret::new([0x42; 32]), 2).unwrap();
    let root = tree.root();
    let totals = tree.totals().to_vec();
    let p = params.digest();

    let first = tree.proof(0, Reveal::Held);
    let u = user_commitment(&p, &first.user_id, &first.salt);
    let mut leaf = vec![0u128; 20];
    for &(i, b) in &first.balances {
        leaf[usize::from(i)] = b;
    }

    let mut cases = Vec::new();
    for index in [0usize, 3, 5, 10] {
        for reveal in [Reveal::Held, Reveal::All] {
            let proof = tree.proof(index, reveal).encode();
            let name =
                format!("customer-{index:02}, {}", if reveal == Reveal::Held { "held chunks" } else { "all chunks" });
            cases.push(case(&name, &proof, &root, Some(&totals), true, "an honest proof"));
        }
    }
    let good = tree.proof(5, Reveal::Held).encode();
    let mut changed = tree.proof(5, Reveal::Held);
    changed.balances[0].1 += 1;
    cases.push(case("a changed balance", &changed.encode(), &root, None, false, "the leaf's sums digest changes"));
    let mut trailing = good.clone();
    trailing.push(0);
    cases.push(case("a trailing byte", &trailing, &root, None, false, "the encoding is canonical"));
    let mut truncated = good[..good.len() - 16].to_vec();
    truncated.extend_from_slice(&[0; 0]);
    cases.push(case("a truncated hash", &truncated, &root, None, false, "hashes are 32 bytes"));
    let mut wrong_totals = totals.clone();
    wrong_totals[1] -= 1;
    cases.push(case(
        "understated totals",
        &good,
        &root,
        Some(&wrong_totals),
        false,
        "the totals must hash to the top digest",
    ));
    let mut moved = tree.proof(5, Reveal::Held);
    moved.position ^= 1;
    cases.push(case(
        "a leaf moved to its sibling's position",
        &moved.encode(),
        &root,
        None,
        false,
        "the leaf hash binds its position",
    ));

    // Forgeries of one asset, height 2.
    let small = common::params(1, 2, "2026-12-04/ledger-1000");
    let dropped =
        forge(&small, vec![user("alice", vec![700], 0), user("bob", vec![0], 1), padding(2), padding(3)], &add);
    let mut bob = dropped.proof(1, 1);
    bob.balances = vec![(0, 300)];
    bob.levels[0].sibling_sums = vec![400];
    cases.push(case(
        "an account dropped under its parent",
        &bob.encode(),
        &dropped.root(),
        None,
        false,
        "each child's sums are bound in the parent",
    ));
    cases.push(case(
        "the other child of that parent",
        &dropped.proof(0, 0).encode(),
        &dropped.root(),
        Some(&dropped.totals()),
        true,
        "consistent for this user alone",
    ));
    let max = |l: &[u128], r: &[u128]| l.iter().zip(r).map(|(a, b)| *a.max(b)).collect::<Vec<_>>();
    let maxed =
        forge(&small, vec![user("u0", vec![5], 0), user("u1", vec![9], 1), user("u2", vec![2], 2), padding(3)], &max);
    cases.push(case(
        "a maximum instead of a total",
        &maxed.proof(2, 2).encode(),
        &maxed.root(),
        None,
        false,
        "parents sum their children",
    ));
    let negative = 0u128.wrapping_sub(250);
    let neg = forge(
        &small,
        vec![user("u0", vec![100], 0), user("evil", vec![negative], 1), padding(2), padding(3)],
        &|l, r| l.iter().zip(r).map(|(a, b)| a.wrapping_add(*b)).collect(),
    );
    cases.push(case(
        "a negative sibling",
        &neg.proof(0, 0).encode(),
        &neg.root(),
        None,
        false,
        "a sibling's sum is at most max · 2^level",
    ));
    let old = forge(
        &common::params(1, 2, "2026-11-04/ledger-900"),
        vec![user("u0", vec![1], 0), user("u1", vec![2], 1), padding(2), padding(3)],
        &add,
    );
    let new = forge(&small, old.leaves.clone(), &add);
    cases.push(case(
        "a proof of the previous snapshot",
        &old.proof(0, 0).encode(),
        &new.root(),
        None,
        false,
        "P binds the snapshot",
    ));

    json!({
        "spec": "docs/reserves-spec.md, version 1",
        "tree": {
            "params": params_json(&params),
            "params_digest": hex::encode(p),
            "root": hex::encode(root),
            "totals": totals.iter().map(u128::to_string).collect::<Vec<_>>(),
            "users": tree.users(),
            "leaf_file": hex::encode(tree.leaf_file().encode()),
        },
        "intermediate": {
            "user_id": String::from_utf8(first.user_id.clone()).unwrap(),
            "salt": hex::encode(first.salt),
            "position": first.position,
            "user_commitment": hex::encode(u),
            "leaf_hash": hex::encode(leaf_hash(&p, first.position, &u)),
            "leaf_sums_digest": hex::encode(sums_digest(&leaf, CHUNK_LEN, ChunkSet::all(2), None)),
            "empty_chunk": hex::encode(rampart_verify::hash::chunk_digest(&[])),
        },
        "cases": cases,
    })
}

fn outcome(case: &Value) -> bool {
    let bytes = hex::decode(case["proof"].as_str().unwrap()).unwrap();
    let root: [u8; 32] = hex::decode(case["root"].as_str().unwrap()).unwrap().try_into().unwrap();
    let Ok(proof) = Proof::decode(&bytes) else { return false };
    let Ok(verified) = proof.verify(&root) else { return false };
    match case["totals"].as_array() {
        Some(t) => {
            let totals: Vec<u128> = t.iter().map(|v| v.as_str().unwrap().parse().unwrap()).collect();
            verified.check_totals(&proof.params, &totals).is_ok()
        }
        None => true,
    }
}

#[test]
fn vectors_are_current() {
    let vectors = build();
    let text = serde_json::to_string_pretty(&vectors).unwrap() + "\n";
    for case in vectors["cases"].as_array().unwrap() {
        assert_eq!(outcome(case), case["expect"] == "valid", "{}", case["name"]);
    }
    if std::env::var_os("RAMPART_WRITE_VECTORS").is_some() {
        std::fs::write(PATH, &text).unwrap();
    }
    let stored = std::fs::read_to_string(PATH).expect("vectors.json exists (RAMPART_WRITE_VECTORS=1 writes it)");
    // Compared as JSON values, not text: whether serde_json keeps keys in insertion order depends on the features
    // other crates of the workspace enable (`preserve_order`), so the same vectors may print in another key order.
    let stored: Value = serde_json::from_str(&stored).expect("vectors.json is JSON");
    assert!(stored == vectors, "vectors.json is stale: run with RAMPART_WRITE_VECTORS=1 and review the diff");
}
