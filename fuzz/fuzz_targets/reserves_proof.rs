//! Feeds arbitrary bytes to the proof-of-reserves decoders — the revealed form's proof and leaf file, the private
//! form's proof and publication, and the reserves report's checker: whatever decodes must encode back to the same
//! bytes (the encodings are canonical) and verify against some root without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_verify::private::PrivateProof;
use rampart_verify::publication::PrivatePublication;
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
    if let Ok(proof) = PrivateProof::decode(data) {
        assert_eq!(proof.encode(), data);
    }
    if let Ok(publication) = PrivatePublication::decode(data) {
        assert_eq!(publication.encode(), data);
        let _ = publication.verify(&[0; 32]);
    }
    if let Ok(report) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = rampart_verify::report::check_report(&report);
        let _ = rampart_verify::report::verify_report(data, &[0; 64], &[0; 32]);
    }
});
