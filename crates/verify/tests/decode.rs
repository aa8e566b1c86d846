//! The decoders on hostile input (what the fuzz target `reserves_proof` runs for longer): arbitrary bytes and
//! mutations of valid proofs never panic, and whatever decodes re-encodes to the same bytes; the private form's proof
//! and publication decoders too.

use proptest::prelude::*;
use rampart_verify::private::{PrivateProof, PrivatePublication};
use rampart_verify::{LeafFile, Proof};

fn valid_proofs() -> Vec<Vec<u8>> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/vectors.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["expect"] == "valid")
        .map(|c| hex::decode(c["proof"].as_str().unwrap()).unwrap())
        .collect()
}

fn check(bytes: &[u8]) {
    if let Ok(proof) = Proof::decode(bytes) {
        assert_eq!(proof.encode(), bytes, "a proof's encoding is canonical");
        let _ = proof.verify(&[0; 32]);
    }
    if let Ok(file) = LeafFile::decode(bytes) {
        assert_eq!(file.encode(), bytes);
        let _ = file.recompute();
    }
    if let Ok(proof) = PrivateProof::decode(bytes) {
        assert_eq!(proof.encode(), bytes);
    }
    if let Ok(publication) = PrivatePublication::decode(bytes) {
        assert_eq!(publication.encode(), bytes);
        let _ = publication.verify(&[0; 32]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        check(&bytes);
    }

    #[test]
    fn mutated_proofs_never_panic(which in any::<prop::sample::Index>(), edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4), cut in any::<prop::sample::Index>()) {
        let proofs = valid_proofs();
        let mut bytes = proofs[which.index(proofs.len())].clone();
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        check(&bytes);
        let n = cut.index(bytes.len());
        check(&bytes[..n]);
    }
}
