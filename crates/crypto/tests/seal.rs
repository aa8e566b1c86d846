//! Initialisation, unsealing and the key hierarchy.

use rampart_crypto::{CryptoError, Keyring, SealConfig, UnsealProgress, UnsealShare, Unsealer, initialise};
use rand_core::OsRng;

fn init() -> (SealConfig, Vec<UnsealShare>, Keyring, Vec<rampart_crypto::WrappedKey>) {
    let (config, root, shares) = initialise(5, 3, &mut OsRng).unwrap();
    let (keyring, wrapped) = Keyring::create(root, config.init_id);
    (config, shares, keyring, wrapped)
}

fn unseal(config: &SealConfig, shares: &[&UnsealShare]) -> Result<UnsealProgress, CryptoError> {
    let mut unsealer = Unsealer::new(config.clone());
    let mut last = None;
    for share in shares {
        last = Some(unsealer.submit((*share).clone())?);
    }
    Ok(last.unwrap())
}

#[test]
fn any_three_of_five_shares_unseal_and_open_the_keyring() {
    let (config, shares, keyring, wrapped) = init();
    let secret = keyring.encrypt(b"JBSWY3DPEHPK3PXP", b"staff:1:totp");
    for combo in [[0, 1, 2], [0, 2, 4], [4, 3, 1], [1, 2, 3]] {
        let texts: Vec<UnsealShare> =
            combo.iter().map(|i| UnsealShare::parse(&shares[*i].to_text()).unwrap()).collect();
        let UnsealProgress::Unsealed(root) = unseal(&config, &texts.iter().collect::<Vec<_>>()).unwrap() else {
            panic!("three shares unseal");
        };
        let reopened = Keyring::open(root, config.init_id, &wrapped).unwrap();
        assert_eq!(&reopened.decrypt(&secret, b"staff:1:totp").unwrap()[..], b"JBSWY3DPEHPK3PXP");
        assert_eq!(reopened.verifying_key(), keyring.verifying_key());
    }
}

#[test]
fn too_few_duplicate_wrong_and_foreign_shares_are_refused_clearly() {
    let (config, shares, _, _) = init();
    let mut unsealer = Unsealer::new(config.clone());
    assert!(matches!(
        unsealer.submit(shares[0].clone()).unwrap(),
        UnsealProgress::Progress { received: 1, threshold: 3 }
    ));
    assert_eq!(unsealer.submit(shares[0].clone()).unwrap_err(), CryptoError::DuplicateShare { index: 1 });
    assert!(matches!(unsealer.submit(shares[1].clone()).unwrap(), UnsealProgress::Progress { received: 2, .. }));

    let (_, foreign, _, _) = init();
    assert_eq!(unsealer.submit(foreign[2].clone()).unwrap_err(), CryptoError::WrongInitialisation { index: 3 });

    // A share whose data was altered but whose checksum was recomputed (a forged share) passes parsing; the
    // reconstructed key then fails the root check and the progress starts over.
    let text = shares[2].to_text();
    let mut parts: Vec<String> = text.split(':').map(str::to_owned).collect();
    let data = &mut parts[4];
    let flipped = if data.starts_with('0') { "1" } else { "0" };
    data.replace_range(0..1, flipped);
    let body = parts[..5].join(":");
    let checksum = hex::encode(&sha2_digest(body.as_bytes())[..4]);
    let forged = UnsealShare::parse(&format!("{body}:{checksum}")).unwrap();
    assert_eq!(unsealer.submit(forged).unwrap_err(), CryptoError::SharesDoNotReconstruct);
    assert_eq!(unsealer.received(), 0);
}

fn sha2_digest(bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).to_vec()
}

#[test]
fn a_mistyped_share_is_caught_by_its_checksum() {
    let (_, shares, _, _) = init();
    let text = shares[0].to_text().to_string();
    let mut typo = text.clone().into_bytes();
    let at = text.len() - 20;
    typo[at] = if typo[at] == b'a' { b'b' } else { b'a' };
    let err = UnsealShare::parse(std::str::from_utf8(&typo).unwrap()).unwrap_err();
    assert_eq!(err, CryptoError::ShareChecksum { index: 1 });
    assert!(matches!(UnsealShare::parse("hello").unwrap_err(), CryptoError::MalformedShare(_)));
    assert!(matches!(
        UnsealShare::parse(&text.replace("rampart-share-v1", "other")),
        Err(CryptoError::MalformedShare(_))
    ));
    assert_eq!(UnsealShare::parse(&format!("  {text}\n")).unwrap(), shares[0]);
}

#[test]
fn impossible_sharings_are_refused() {
    assert!(initialise(5, 1, &mut OsRng).is_err());
    assert!(initialise(3, 4, &mut OsRng).is_err());
    assert!(initialise(2, 2, &mut OsRng).is_ok());
}

#[test]
fn ciphertexts_are_bound_to_their_record_and_name_their_key_version() {
    let (_, _, mut keyring, _) = init();
    let v1 = keyring.encrypt(b"alice@example.com", b"user:7:email");
    assert_eq!(Keyring::ciphertext_version(&v1).unwrap(), 1);
    assert!(keyring.decrypt(&v1, b"user:8:email").is_err(), "moved to another row");
    let mut tampered = v1.clone();
    *tampered.last_mut().unwrap() ^= 1;
    assert!(keyring.decrypt(&tampered, b"user:7:email").is_err());
    // Rotation: new writes use version 2, old ciphertexts still open, rewrap moves them to version 2.
    let wrapped_v2 = keyring.rotate();
    assert_eq!(wrapped_v2.version, 2);
    let v2 = keyring.encrypt(b"bob@example.com", b"user:9:email");
    assert_eq!(Keyring::ciphertext_version(&v2).unwrap(), 2);
    assert_eq!(&keyring.decrypt(&v1, b"user:7:email").unwrap()[..], b"alice@example.com");
    let rewrapped = keyring.rewrap(&v1, b"user:7:email").unwrap();
    assert_eq!(Keyring::ciphertext_version(&rewrapped).unwrap(), 2);
    assert_eq!(&keyring.decrypt(&rewrapped, b"user:7:email").unwrap()[..], b"alice@example.com");
    // A version number swapped into the header does not open either.
    let mut relabelled = v1.clone();
    relabelled[2..6].copy_from_slice(&2u32.to_be_bytes());
    assert!(keyring.decrypt(&relabelled, b"user:7:email").is_err());
}

#[test]
fn a_keyring_opens_only_with_its_root_key() {
    let (config, _, _, wrapped) = init();
    let (_, other_root, _) = initialise(5, 3, &mut OsRng).unwrap();
    assert!(Keyring::open(other_root, config.init_id, &wrapped).is_err());
}

#[test]
fn blind_indexes_are_deterministic_keyed_and_domain_separated() {
    let (_, _, keyring, _) = init();
    let (_, _, other, _) = init();
    let a = keyring.blind_index("email", b"alice@example.com");
    assert_eq!(a, keyring.blind_index("email", b"alice@example.com"));
    assert_ne!(a, keyring.blind_index("phone", b"alice@example.com"));
    assert_ne!(a, other.blind_index("email", b"alice@example.com"));
}

#[test]
fn no_secret_reaches_debug_output() {
    let (config, shares, keyring, wrapped) = init();
    let share_text = shares[0].to_text().to_string();
    let secret_part = share_text.split(':').nth(4).unwrap().to_owned();
    let shown = format!("{config:?} {shares:?} {keyring:?} {wrapped:?} {:?}", Unsealer::new(config.clone()));
    assert!(!shown.contains(&secret_part), "{shown}");
    assert!(shown.contains("redacted"));
}
