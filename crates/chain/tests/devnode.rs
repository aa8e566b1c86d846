//! The development node: the `Chain` trait over the dev chain, a block log that survives a restart (and a torn last
//! record), and the timer that mines.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use bitcoin::absolute::LockTime;
use bitcoin::hashes::Hash;
use bitcoin::key::{Keypair, TapTweak};
use bitcoin::secp256k1::{Message, Secp256k1, SecretKey};
use bitcoin::transaction::Version;
use bitcoin::{Amount, BlockHash, Network, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness};
use rampart_chain::{Chain, ChainError, DevChainNode};
use rampart_custody::devchain::{BlockError, LogRecord};
use rampart_custody::{attach_key_spend_signatures, key_spend_sighashes};

const T0: u32 = 1_700_000_000;

/// A single-key Taproot wallet, enough to make valid spends.
struct Wallet {
    keypair: Keypair,
    script: ScriptBuf,
}

impl Wallet {
    fn new(seed: u8) -> Wallet {
        let secp = Secp256k1::new();
        let keypair = Keypair::from_secret_key(&secp, &SecretKey::from_slice(&[seed; 32]).unwrap());
        let script = ScriptBuf::new_p2tr(&secp, keypair.x_only_public_key().0, None);
        Wallet { keypair, script }
    }

    fn spend(&self, coin: OutPoint, value: u64, pay: u64) -> Transaction {
        let mut tx = Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![TxIn {
                previous_output: coin,
                script_sig: ScriptBuf::new(),
                sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                witness: Witness::new(),
            }],
            output: vec![TxOut { value: Amount::from_sat(pay), script_pubkey: self.script.clone() }],
        };
        let spent = [TxOut { value: Amount::from_sat(value), script_pubkey: self.script.clone() }];
        let secp = Secp256k1::new();
        let tweaked = self.keypair.tap_tweak(&secp, None).to_keypair();
        let signatures: Vec<[u8; 64]> = key_spend_sighashes(&tx, &spent)
            .unwrap()
            .iter()
            .map(|m| secp.sign_schnorr_no_aux_rand(&Message::from_digest(*m), &tweaked).serialize())
            .collect();
        attach_key_spend_signatures(&mut tx, &signatures).unwrap();
        tx
    }
}

fn open(path: &std::path::Path) -> Result<Arc<DevChainNode>, ChainError> {
    DevChainNode::open_with_clock(Some(path.to_path_buf()), 1, || T0)
}

/// What must survive a restart: every block hash of the active chain and the UTXO set.
fn snapshot(node: &DevChainNode) -> (Vec<BlockHash>, BTreeMap<OutPoint, TxOut>) {
    node.with_chain(|chain| {
        let hashes = (0..=chain.height()).map(|h| chain.block_hash(h).unwrap()).collect();
        let utxos = chain.utxos().map(|(o, t)| (*o, t.clone())).collect();
        (hashes, utxos)
    })
}

#[tokio::test]
async fn the_chain_trait_over_the_development_chain() {
    let wallet = Wallet::new(1);
    let node = DevChainNode::open_with_clock(None, 3, || T0).unwrap();
    assert_eq!(node.network(), Network::Regtest);
    assert_eq!(node.fee_rate().await, Ok(3));
    let genesis = bitcoin::blockdata::constants::genesis_block(Network::Regtest).block_hash();
    assert_eq!(node.tip().await, Ok((0, genesis)));
    let coin = node.faucet(wallet.script.clone(), Amount::from_sat(100_000)).unwrap();
    assert_eq!(node.mine(1), Ok(1));
    assert_eq!(node.confirmations(&coin.txid), 1);
    let (height, tip) = node.tip().await.unwrap();
    assert_eq!(node.block_hash(height).await, Ok(Some(tip)));
    assert_eq!(node.block_hash(height + 1).await, Ok(None));
    let block = node.block(&tip).await.unwrap();
    assert_eq!(block.block_hash(), tip);
    assert!(block.txdata.iter().any(|tx| tx.compute_txid() == coin.txid), "the faucet payment is in the block");
    let unknown = BlockHash::from_byte_array([9; 32]);
    assert_eq!(node.block(&unknown).await, Err(ChainError::UnknownBlock(unknown)));

    // Broadcasting twice answers the same txid; a conflicting spend that pays too little to replace it and a cheap
    // one are rejected with the reason; one that pays enough more replaces it (BIP-125).
    let tx = wallet.spend(coin, 100_000, 99_000);
    let first = node.broadcast(&tx).await.unwrap();
    assert_eq!(node.broadcast(&tx).await, Ok(first));
    let conflict = wallet.spend(coin, 100_000, 99_500);
    assert!(matches!(node.broadcast(&conflict).await, Err(ChainError::Rejected(m)) if m.contains("replacement")));
    let bumped = wallet.spend(coin, 100_000, 97_000);
    let txid = node.broadcast(&bumped).await.unwrap();
    node.mine(1).unwrap();
    assert_eq!(node.confirmations(&txid), 1);
    assert_eq!(node.confirmations(&first), 0, "replaced");
    let coin = node.faucet(wallet.script.clone(), Amount::from_sat(10_000)).unwrap();
    node.mine(1).unwrap();
    let cheap = wallet.spend(coin, 10_000, 9_990);
    assert!(matches!(node.broadcast(&cheap).await, Err(ChainError::Rejected(m)) if m.contains("fee")));
    assert!(matches!(node.faucet(wallet.script.clone(), Amount::from_sat(1)), Err(ChainError::Rejected(_))));
    assert_eq!(node.reorg(10, &[]), Err(ChainError::Dev(BlockError::TooDeep { depth: 10, height: 3 })));
}

#[tokio::test]
async fn the_block_log_brings_back_the_same_chain_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blocks.log");
    let wallet = Wallet::new(2);
    let (before, spend_id, deposit) = {
        let node = open(&path).unwrap();
        let coin = node.faucet(wallet.script.clone(), Amount::from_sat(200_000)).unwrap();
        node.mine(1).unwrap();
        let spend_id = node.broadcast(&wallet.spend(coin, 200_000, 190_000)).await.unwrap();
        assert_eq!(node.mine(2), Ok(3));
        let deposit = node.faucet(wallet.script.clone(), Amount::from_sat(50_000)).unwrap();
        node.mine(1).unwrap();
        assert_eq!(node.confirmations(&deposit.txid), 1);
        // The deposit is reorganised away for good, and the chain goes on.
        assert_eq!(node.reorg(2, &[deposit.txid]), Ok(vec![deposit.txid]));
        node.mine(1).unwrap();
        (snapshot(&node), spend_id, deposit)
    };
    assert_eq!(before.0.len(), 7, "genesis, two blocks below the fork, three replacements and one more");
    let node = open(&path).unwrap();
    assert_eq!(snapshot(&node), before);
    assert_eq!(node.tip().await, Ok((6, before.0[6])));
    assert_eq!(node.confirmations(&spend_id), 5);
    assert_eq!(node.confirmations(&deposit.txid), 0);
    assert!(node.with_chain(|c| c.utxo(&deposit).is_none()));
    // And it keeps going where it stopped.
    assert_eq!(node.mine(1), Ok(7));
    drop(node);
    assert_eq!(open(&path).unwrap().tip().await.unwrap().0, 7);
}

#[tokio::test]
async fn a_torn_last_record_is_cut_away_when_the_node_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blocks.log");
    let before = {
        let node = open(&path).unwrap();
        node.mine(3).unwrap();
        snapshot(&node)
    };
    let intact = std::fs::metadata(&path).unwrap().len();
    let next_block = {
        let node = DevChainNode::open_with_clock(None, 1, || T0).unwrap();
        node.mine(5).unwrap();
        node.with_chain(|c| c.block_at(4).unwrap().clone())
    };
    let record = LogRecord::Block(next_block).encode();

    // A crash halfway through appending a block.
    std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(&record[..record.len() / 2]).unwrap();
    let node = open(&path).unwrap();
    assert_eq!(snapshot(&node), before);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), intact, "the torn bytes are gone");
    assert_eq!(node.mine(1), Ok(4));
    drop(node);
    let intact = std::fs::metadata(&path).unwrap().len();

    // A last record of full length whose bytes never all reached the disk (its checksum fails).
    let mut garbled = LogRecord::Disconnect.encode();
    garbled[4] = 0;
    std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(&garbled).unwrap();
    assert_eq!(open(&path).unwrap().tip().await.unwrap().0, 4);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), intact);

    // Damage before the end is not a torn write: the node refuses to open rather than lose blocks.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[20] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(open(&path), Err(ChainError::Log(m)) if m.contains("byte 0")));
}

#[tokio::test]
async fn the_timer_mines_a_block_on_every_tick_and_stops_with_the_node() {
    let node = DevChainNode::open(None, 1).unwrap();
    let mut tip = node.subscribe();
    let timer = node.spawn_timer(Duration::from_millis(5));
    tokio::time::timeout(Duration::from_secs(60), tip.wait_for(|height| *height >= 3))
        .await
        .expect("the timer mines")
        .unwrap();
    let (height, hash) = node.tip().await.unwrap();
    assert!(height >= 3);
    let block = node.block(&hash).await.unwrap();
    assert_eq!(block.txdata.len(), 1, "empty blocks are mined too");
    assert!(block.header.time > 1_600_000_000, "blocks carry the system time");
    drop(node);
    tokio::time::timeout(Duration::from_secs(60), timer).await.expect("the timer ends").unwrap();
}
