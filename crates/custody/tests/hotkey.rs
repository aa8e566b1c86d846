//! The hot wallet's BIP-86 key: the published BIP-86 vectors, watch-only addresses that agree with the private key,
//! spends from several branches accepted by Bitcoin Core's interpreter, and a refusal to sign for coins that are not
//! the key's own.

use std::str::FromStr;

use bitcoin::absolute::LockTime;
use bitcoin::bip32::{ChildNumber, DerivationPath, Xpriv};
use bitcoin::hashes::Hash;
use bitcoin::key::Keypair;
use bitcoin::secp256k1::Secp256k1;
use bitcoin::transaction::Version;
use bitcoin::{Address, Amount, Network, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid, Witness};
use hmac::{Hmac, Mac};
use rampart_custody::hotkey::{DEPOSIT_BRANCH, HOT_BRANCH, HotKey, WatchOnly};
use rampart_custody::{CustodyError, verify_spend};
use sha2::Sha512;

/// BIP-39's seed of a mnemonic with an empty passphrase: PBKDF2-HMAC-SHA512, 2048 iterations, salt "mnemonic". The
/// output is one SHA-512 block long, so one PBKDF2 block is the whole seed.
fn bip39_seed(mnemonic: &str) -> [u8; 64] {
    let mac = |data: &[u8]| -> [u8; 64] {
        let mut m = Hmac::<Sha512>::new_from_slice(mnemonic.as_bytes()).unwrap();
        m.update(data);
        m.finalize().into_bytes().into()
    };
    let mut u = mac(b"mnemonic\x00\x00\x00\x01");
    let mut out = u;
    for _ in 1..2048 {
        u = mac(&u);
        out.iter_mut().zip(u.iter()).for_each(|(o, x)| *o ^= x);
    }
    out
}

const BIP86_MNEMONIC: &str =
    "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about";
const BIP86_XPRV: &str =
    "xprv9s21ZrQH143K3GJpoapnV8SFfukcVBSfeCficPSGfubmSFDxo1kuHnLisriDvSnRRuL2Qrg5ggqHKNVpxR86QEC8w35uxmGoggxtQTPvfUu";
const BIP86_ACCOUNT_XPUB: &str =
    "xpub6BgBgsespWvERF3LHQu6CnqdvfEvtMcQjYrcRzx53QJjSxarj2afYWcLteoGVky7D3UKDP9QyrLprQ3VCECoY49yfdDEHGCtMMj92pReUsQ";

#[test]
fn the_published_bip86_vectors_come_out() {
    let master = Xpriv::new_master(Network::Bitcoin, &bip39_seed(BIP86_MNEMONIC)).unwrap();
    assert_eq!(master.to_string(), BIP86_XPRV, "the BIP-39 seed of the vector mnemonic gives BIP-86's root key");
    let key = HotKey::from_bytes(&Xpriv::from_str(BIP86_XPRV).unwrap().encode()).unwrap();
    assert_eq!(key.account_xpub(), BIP86_ACCOUNT_XPUB);
    let watch = WatchOnly::parse(&key.account_xpub(), Network::Bitcoin).unwrap();
    assert_eq!(
        watch.address(0, 0).unwrap().to_string(),
        "bc1p5cyxnuxmeuwuvkwfem96lqzszd02n6xdcjrs20cac6yqjjwudpxqkedrcr"
    );
    assert_eq!(
        watch.address(0, 1).unwrap().to_string(),
        "bc1p4qhjn9zdvkux4e44uhx8tc55attvtyu358kutcqkudyccelu0was9fqzwh"
    );
    assert_eq!(
        watch.address(1, 0).unwrap().to_string(),
        "bc1p3qkhfews2uk44qtvauqyr2ttdsw7svhkl9nkm9s9c3x4ax5h60wqwruhk7"
    );
    assert_eq!(
        watch.script(0, 0).unwrap().to_hex_string(),
        "5120a60869f0dbcf1dc659c9cecbaf8050135ea9e8cdc487053f1dc6880949dc684c"
    );
}

#[test]
fn addresses_from_the_private_key_and_from_the_xpub_agree() {
    let secp = Secp256k1::new();
    for network in [Network::Regtest, Network::Testnet, Network::Bitcoin] {
        let key = HotKey::generate(network);
        let xpub = key.account_xpub();
        assert!(xpub.starts_with(if network == Network::Bitcoin { "xpub" } else { "tpub" }));
        let watch = WatchOnly::parse(&xpub, network).unwrap();
        let master = Xpriv::decode(&key.to_bytes()).unwrap();
        let coin = if network == Network::Bitcoin { 0 } else { 1 };
        for (branch, index) in [(HOT_BRANCH, 0), (HOT_BRANCH, 5), (DEPOSIT_BRANCH, 0), (DEPOSIT_BRANCH, 123_456)] {
            let path = DerivationPath::from_str(&format!("m/86'/{coin}'/0'/{branch}/{index}")).unwrap();
            let child = master.derive_priv(&secp, &path).unwrap();
            let (internal, _) = Keypair::from_secret_key(&secp, &child.private_key).x_only_public_key();
            let expected = Address::p2tr(&secp, internal, None, network);
            assert_eq!(watch.address(branch, index).unwrap(), expected);
            assert_eq!(watch.script(branch, index).unwrap(), expected.script_pubkey());
        }
        // Deposit and hot addresses never coincide.
        assert_ne!(watch.address(HOT_BRANCH, 0).unwrap(), watch.address(DEPOSIT_BRANCH, 0).unwrap());
    }
}

#[test]
fn watch_only_refuses_other_networks_other_depths_and_hardened_indices() {
    let key = HotKey::generate(Network::Regtest);
    assert!(matches!(WatchOnly::parse(&key.account_xpub(), Network::Bitcoin), Err(CustodyError::HotKey(_))));
    assert!(matches!(WatchOnly::parse("xpub-nonsense", Network::Bitcoin), Err(CustodyError::HotKey(_))));
    // The master's xpub is not an account xpub: its addresses would be at the wrong path.
    let master = Xpriv::decode(&key.to_bytes()).unwrap();
    let master_xpub = bitcoin::bip32::Xpub::from_priv(&Secp256k1::new(), &master).to_string();
    assert!(WatchOnly::parse(&master_xpub, Network::Regtest).is_err());
    let watch = WatchOnly::parse(&key.account_xpub(), Network::Regtest).unwrap();
    assert!(watch.address(0, 1 << 31).is_err(), "indices at or above 2^31 are hardened: not derivable from an xpub");
    assert!(watch.address(0, (1 << 31) - 1).is_ok());
}

/// An unsigned transaction spending one fake output per script, to one output elsewhere.
fn spending(scripts: &[ScriptBuf]) -> (Transaction, Vec<TxOut>) {
    let spent: Vec<TxOut> = scripts
        .iter()
        .enumerate()
        .map(|(i, s)| TxOut { value: Amount::from_sat(50_000 + 1_000 * i as u64), script_pubkey: s.clone() })
        .collect();
    let input = (0..scripts.len())
        .map(|i| TxIn {
            previous_output: OutPoint { txid: Txid::from_byte_array([i as u8 + 1; 32]), vout: i as u32 },
            script_sig: ScriptBuf::new(),
            sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
            witness: Witness::new(),
        })
        .collect();
    let output = vec![TxOut {
        value: Amount::from_sat(140_000),
        script_pubkey: ScriptBuf::new_p2wpkh(&bitcoin::WPubkeyHash::from_byte_array([4; 20])),
    }];
    (Transaction { version: Version::TWO, lock_time: LockTime::ZERO, input, output }, spent)
}

#[test]
fn a_spend_from_several_branches_and_indices_passes_bitcoin_cores_interpreter() {
    let key = HotKey::generate(Network::Regtest);
    let watch = WatchOnly::parse(&key.account_xpub(), Network::Regtest).unwrap();
    let paths = [(HOT_BRANCH, 3), (DEPOSIT_BRANCH, 0), (DEPOSIT_BRANCH, 70_000)];
    let scripts: Vec<ScriptBuf> = paths.iter().map(|(b, i)| watch.script(*b, *i).unwrap()).collect();
    let (mut tx, spent) = spending(&scripts);
    key.sign_key_spends(&mut tx, &spent, &paths).unwrap();
    verify_spend(&tx, &spent).unwrap();
    assert!(tx.input.iter().all(|i| i.witness.len() == 1 && i.witness.nth(0).unwrap().len() == 64));
    // The signatures commit to the spent amounts: another amount fails the interpreter.
    let mut lying = spent.clone();
    lying[2].value = Amount::from_sat(1);
    assert!(matches!(verify_spend(&tx, &lying), Err(CustodyError::Consensus { .. })));
    // A key from the stored bytes signs the same coins.
    let again = HotKey::from_bytes(&key.to_bytes()).unwrap();
    let (mut tx2, spent2) = spending(&scripts);
    again.sign_key_spends(&mut tx2, &spent2, &paths).unwrap();
    verify_spend(&tx2, &spent2).unwrap();
}

#[test]
fn an_input_that_is_not_the_keys_own_is_refused_and_nothing_is_signed() {
    let key = HotKey::generate(Network::Regtest);
    let other = HotKey::generate(Network::Regtest);
    let ours = WatchOnly::parse(&key.account_xpub(), Network::Regtest).unwrap();
    let theirs = WatchOnly::parse(&other.account_xpub(), Network::Regtest).unwrap();
    let scripts = [ours.script(0, 0).unwrap(), theirs.script(0, 1).unwrap(), ours.script(1, 2).unwrap()];
    let (mut tx, spent) = spending(&scripts);
    let before = tx.clone();
    assert_eq!(key.sign_key_spends(&mut tx, &spent, &[(0, 0), (0, 1), (1, 2)]), Err(CustodyError::ForeignInput(1)));
    assert_eq!(tx, before, "no input was signed");
    // Our own script, but the path given for it names another key: refused as well.
    let (mut tx, spent) = spending(&[ours.script(0, 0).unwrap()]);
    assert_eq!(key.sign_key_spends(&mut tx, &spent, &[(0, 1)]), Err(CustodyError::ForeignInput(0)));
    assert_eq!(key.sign_key_spends(&mut tx, &spent, &[(1, 0)]), Err(CustodyError::ForeignInput(0)));
    // A path per input, a spent output per input.
    assert!(matches!(key.sign_key_spends(&mut tx, &spent, &[]), Err(CustodyError::Sighash(_))));
    assert!(matches!(key.sign_key_spends(&mut tx, &[], &[(0, 0)]), Err(CustodyError::Sighash(_))));
}

#[test]
fn the_stored_form_round_trips_and_nothing_else_is_accepted() {
    let key = HotKey::generate(Network::Bitcoin);
    let bytes = key.to_bytes();
    assert_eq!(bytes.len(), 78);
    let back = HotKey::from_bytes(&bytes).unwrap();
    assert_eq!(back.account_xpub(), key.account_xpub());
    assert_eq!(back.to_bytes().as_slice(), bytes.as_slice());
    assert!(HotKey::from_bytes(&bytes[..77]).is_err());
    assert!(HotKey::from_bytes(&[0u8; 78]).is_err());
    // A derived (non-master) private key is not a hot key: its paths would be off by its depth.
    let master = Xpriv::decode(&bytes).unwrap();
    let child = master.derive_priv(&Secp256k1::new(), &[ChildNumber::from_hardened_idx(86).unwrap()]).unwrap();
    assert!(matches!(HotKey::from_bytes(&child.encode()), Err(CustodyError::HotKey(_))));
}

#[test]
fn debug_output_shows_no_key() {
    let key = HotKey::generate(Network::Bitcoin);
    let shown = format!("{key:?} {key:#?}");
    assert!(shown.contains("redacted"));
    let xprv = Xpriv::decode(&key.to_bytes()).unwrap();
    assert!(!shown.contains(&xprv.to_string()));
    assert!(!shown.contains(&hex::encode(xprv.private_key.secret_bytes())));
    assert!(!shown.contains(&hex::encode(key.to_bytes().as_slice())));
}

#[test]
fn a_statement_is_signed_under_the_output_key_of_the_address_and_only_of_its_own() {
    let secp = Secp256k1::verification_only();
    let key = HotKey::generate(Network::Regtest);
    let watch = WatchOnly::parse(&key.account_xpub(), Network::Regtest).unwrap();
    let message = [7u8; 32];
    for (branch, index) in [(HOT_BRANCH, 0), (DEPOSIT_BRANCH, 42)] {
        let script = watch.script(branch, index).unwrap();
        let signature = key.sign_message(branch, index, &script, &message).unwrap();
        // The output key is the script's program: a verifier needs nothing but the address.
        let output_key = bitcoin::XOnlyPublicKey::from_slice(&script.as_bytes()[2..]).unwrap();
        let signature = bitcoin::secp256k1::schnorr::Signature::from_slice(&signature).unwrap();
        let digest = bitcoin::secp256k1::Message::from_digest(message);
        secp.verify_schnorr(&signature, &digest, &output_key).expect("BIP-340 under the output key");
        let other = bitcoin::secp256k1::Message::from_digest([8u8; 32]);
        assert!(secp.verify_schnorr(&signature, &other, &output_key).is_err());
    }
    // Asked to attest for another path's address (or anyone else's), it refuses and signs nothing.
    let someone_else = watch.script(DEPOSIT_BRANCH, 43).unwrap();
    assert!(matches!(key.sign_message(DEPOSIT_BRANCH, 42, &someone_else, &message), Err(CustodyError::HotKey(_))));
}
