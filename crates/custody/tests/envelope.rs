//! Custodians' messages through an untrusted relay: sealed payloads open only for their recipient, from their
//! sender, in their context, unaltered; signatures bind every field of a message.

use rampart_custody::CustodyError;
use rampart_custody::envelope::{Identity, PublicIdentity, open_from, seal_to, sign_message, verify_message};

const CONTEXT: &[u8] = b"ceremony 7f3a/round2";

#[test]
fn a_sealed_payload_opens_for_its_recipient() {
    let alice = Identity::generate();
    let bob = Identity::generate();
    let sealed = seal_to(&bob.public(), &alice, CONTEXT, b"a round-2 package").unwrap();
    assert_eq!(sealed.len(), 32 + 24 + 17 + 16);
    assert!(!sealed.windows(17).any(|w| w == b"a round-2 package"), "the plaintext does not show");
    let opened = open_from(&bob, &alice.public(), CONTEXT, &sealed).unwrap();
    assert_eq!(opened.as_slice(), b"a round-2 package");
    // Two seals of the same payload differ (fresh ephemeral key and nonce).
    assert_ne!(sealed, seal_to(&bob.public(), &alice, CONTEXT, b"a round-2 package").unwrap());
    // An empty payload is fine too.
    let empty = seal_to(&bob.public(), &alice, CONTEXT, b"").unwrap();
    assert!(open_from(&bob, &alice.public(), CONTEXT, &empty).unwrap().is_empty());
}

#[test]
fn the_wrong_recipient_context_sender_or_any_edited_byte_fails() {
    let alice = Identity::generate();
    let bob = Identity::generate();
    let carol = Identity::generate();
    let sealed = seal_to(&bob.public(), &alice, CONTEXT, b"secret share").unwrap();
    let refused = |r: Result<_, CustodyError>| matches!(r, Err(CustodyError::Envelope(_)));
    assert!(refused(open_from(&carol, &alice.public(), CONTEXT, &sealed)), "another recipient");
    assert!(refused(open_from(&bob, &alice.public(), b"ceremony 7f3a/round3", &sealed)), "another context");
    assert!(refused(open_from(&bob, &carol.public(), CONTEXT, &sealed)), "another claimed sender");
    for i in 0..sealed.len() {
        let mut edited = sealed.clone();
        edited[i] ^= 0x01;
        assert!(refused(open_from(&bob, &alice.public(), CONTEXT, &edited)), "byte {i} edited");
    }
    assert!(refused(open_from(&bob, &alice.public(), CONTEXT, &sealed[..sealed.len() - 1])), "truncated");
    assert!(refused(open_from(&bob, &alice.public(), CONTEXT, &sealed[..40])), "too short");
    let mut longer = sealed.clone();
    longer.push(0);
    assert!(refused(open_from(&bob, &alice.public(), CONTEXT, &longer)), "extended");
}

#[test]
fn a_small_order_exchange_key_is_refused() {
    let alice = Identity::generate();
    let mut bad = Identity::generate().public();
    bad.exchange = [0u8; 32];
    assert!(matches!(seal_to(&bad, &alice, CONTEXT, b"x"), Err(CustodyError::Envelope(_))));
    assert!(bad.check().is_err());
    assert!(PublicIdentity::parse(&bad.to_hex()).is_err());
    // The point of order 8 whose u-coordinate is 1 (little-endian): also refused.
    bad.exchange = [0u8; 32];
    bad.exchange[0] = 1;
    assert!(seal_to(&bad, &alice, CONTEXT, b"x").is_err());
}

#[test]
fn signatures_bind_every_field() {
    let alice = Identity::generate();
    let public = alice.public().signing;
    let payload = b"sealed bytes";
    let signature = sign_message(&alice, CONTEXT, "round2", 1, Some(3), payload);
    assert!(verify_message(&public, CONTEXT, "round2", 1, Some(3), payload, &signature));
    assert!(!verify_message(&public, b"ceremony other", "round2", 1, Some(3), payload, &signature), "context");
    assert!(!verify_message(&public, CONTEXT, "round3", 1, Some(3), payload, &signature), "round");
    assert!(!verify_message(&public, CONTEXT, "round2", 2, Some(3), payload, &signature), "sender");
    assert!(!verify_message(&public, CONTEXT, "round2", 1, Some(4), payload, &signature), "recipient");
    assert!(!verify_message(&public, CONTEXT, "round2", 1, None, payload, &signature), "broadcast vs direct");
    assert!(!verify_message(&public, CONTEXT, "round2", 1, Some(3), b"sealed bytez", &signature), "payload");
    let other = Identity::generate().public().signing;
    assert!(!verify_message(&other, CONTEXT, "round2", 1, Some(3), payload, &signature), "signer");
    let mut forged = signature;
    forged[10] ^= 1;
    assert!(!verify_message(&public, CONTEXT, "round2", 1, Some(3), payload, &forged), "signature");
    // Length prefixes keep fields apart: moving a byte from the context into the round is another message.
    let a = sign_message(&alice, b"ab", "c", 1, None, b"");
    assert!(!verify_message(&public, b"a", "bc", 1, None, b"", &a));
    // Broadcasts verify as broadcasts.
    let b = sign_message(&alice, CONTEXT, "round1", 5, None, payload);
    assert!(verify_message(&public, CONTEXT, "round1", 5, None, payload, &b));
    assert!(!verify_message(&[0u8; 32], CONTEXT, "round1", 5, None, payload, &b));
}

#[test]
fn identities_round_trip_and_print_no_secret() {
    let alice = Identity::generate();
    let bytes = alice.to_bytes();
    assert_eq!(bytes.len(), 64);
    let back = Identity::from_bytes(bytes.as_slice()).unwrap();
    assert_eq!(back.public(), alice.public());
    assert!(Identity::from_bytes(&bytes[..63]).is_err());
    // What one sealed, the restored identity opens; what one signed, the public identity verifies.
    let bob = Identity::generate();
    let sealed = seal_to(&alice.public(), &bob, CONTEXT, b"hello").unwrap();
    assert_eq!(open_from(&back, &bob.public(), CONTEXT, &sealed).unwrap().as_slice(), b"hello");
    let text = alice.public().to_hex();
    assert_eq!(text.len(), 128);
    assert_eq!(PublicIdentity::parse(&text).unwrap(), alice.public());
    assert!(PublicIdentity::parse(&text[..126]).is_err());
    assert!(PublicIdentity::parse("zz").is_err());
    let shown = format!("{alice:?} {alice:#?}");
    assert!(shown.contains("redacted"));
    assert!(!shown.contains(&hex::encode(&bytes[..32])) && !shown.contains(&hex::encode(&bytes[32..])));
    assert!(!shown.contains(&format!("{:?}", &bytes[..8])));
}
