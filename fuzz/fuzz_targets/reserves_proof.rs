//! Feeds arbitrary bytes to the proof-of-reserves proof and leaf-file decoders: whatever decodes must encode back to
//! the same bytes (the encoding is canonical) and verify against some root without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_verify::{LeafFile, Proof};

fuzz_target!(|data: &[u8]| {
    if let Ok(proof) = Proof::decode(data) {
        assert_eq!(proof.encode(), data);
        let _ = proof.verify(&[0; 32]);
    }
    if let Ok(file) = LeafFile::decode(data) {
        assert_eq!(file.encode(), data);
        let _ = file.recompute();
    }
});
