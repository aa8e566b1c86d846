//! The development chain as a watcher and a broadcaster see it: real blocks that chain by hash and commit to their
//! transactions, the mempool's rules (double spends, fee rate, dust, unconfirmed parents), reorganisations that
//! return transactions to the mempool or evict a deposit, and a block log that replays to the same chain.

use std::collections::BTreeMap;

use bitcoin::absolute::LockTime;
use bitcoin::blockdata::constants::genesis_block;
use bitcoin::key::{Keypair, TapTweak};
use bitcoin::pow::{CompactTarget, Target};
use bitcoin::secp256k1::{Message, Secp256k1, SecretKey};
use bitcoin::transaction::Version;
use bitcoin::{Amount, Network, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid, Witness};
use rampart_custody::devchain::{
    BlockError, ChainRejection, DevChain, HALVING_INTERVAL_BLOCKS, INITIAL_SUBSIDY_SAT, LogDecodeError, LogRecord,
    REGTEST_BITS,
};
use rampart_custody::{attach_key_spend_signatures, key_spend_sighashes};

const T0: u32 = 1_700_000_000;

/// A single-key Taproot wallet (BIP-86 style key path), enough to make valid spends.
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

    /// A signed transaction spending `coins` (outpoints and the outputs they hold) to `outputs`.
    fn spend<'a>(&self, coins: impl IntoIterator<Item = &'a (OutPoint, TxOut)>, outputs: Vec<TxOut>) -> Transaction {
        let coins: Vec<&(OutPoint, TxOut)> = coins.into_iter().collect();
        let mut tx = Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: coins
                .iter()
                .map(|(outpoint, _)| TxIn {
                    previous_output: *outpoint,
                    script_sig: ScriptBuf::new(),
                    sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                    witness: Witness::new(),
                })
                .collect(),
            output: outputs,
        };
        let spent: Vec<TxOut> = coins.iter().map(|(_, o)| o.clone()).collect();
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

    /// Like [`Wallet::spend`], but with every input's sequence at `0xffffffff`: the transaction does not signal
    /// replaceability (BIP-125).
    fn spend_final<'a>(
        &self,
        coins: impl IntoIterator<Item = &'a (OutPoint, TxOut)>,
        outputs: Vec<TxOut>,
    ) -> Transaction {
        let coins: Vec<&(OutPoint, TxOut)> = coins.into_iter().collect();
        let mut tx = self.spend(coins.iter().copied(), outputs);
        for input in &mut tx.input {
            input.sequence = Sequence::MAX;
            input.witness = Witness::new();
        }
        let spent: Vec<TxOut> = coins.iter().map(|(_, o)| o.clone()).collect();
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

    fn pay(&self, value: u64) -> TxOut {
        TxOut { value: Amount::from_sat(value), script_pubkey: self.script.clone() }
    }
}

/// A confirmed coin of `value` from the faucet (one block mined).
fn coin(chain: &mut DevChain, wallet: &Wallet, value: u64, time: u32) -> (OutPoint, TxOut) {
    let outpoint = chain.faucet(wallet.script.clone(), Amount::from_sat(value)).unwrap();
    chain.mine(time);
    let output = chain.utxo(&outpoint).expect("the faucet's coin is confirmed").clone();
    (outpoint, output)
}

fn in_any_block(chain: &DevChain, txid: &Txid) -> bool {
    (0..=chain.height()).any(|h| chain.block_at(h).unwrap().txdata.iter().any(|tx| tx.compute_txid() == *txid))
}

/// Finds a nonce that meets regtest's target again after a header was edited.
fn grind(header: &mut bitcoin::block::Header) {
    let target = Target::from_compact(CompactTarget::from_consensus(REGTEST_BITS));
    header.nonce =
        (0..).find(|n| bitcoin::block::Header { nonce: *n, ..*header }.validate_pow(target).is_ok()).unwrap();
}

fn utxo_set(chain: &DevChain) -> BTreeMap<OutPoint, TxOut> {
    chain.utxos().map(|(o, t)| (*o, t.clone())).collect()
}

#[test]
fn a_double_spend_is_refused_in_the_mempool_and_in_a_block() {
    let wallet = Wallet::new(1);
    let mut chain = DevChain::new(1);
    let c = coin(&mut chain, &wallet, 100_000, T0);
    let first = wallet.spend([&c], vec![wallet.pay(99_000)]);
    // Paying less than the first, it cannot replace it (`a_higher_fee_replaces_a_mempool_transaction`).
    let second = wallet.spend([&c], vec![wallet.pay(99_500)]);
    // One transaction spending the same coin twice.
    let twice = wallet.spend([&c, &c], vec![wallet.pay(150_000)]);
    assert_eq!(chain.submit(twice), Err(ChainRejection::DuplicateInput(1)));
    let first_id = chain.submit(first.clone()).unwrap();
    assert!(matches!(chain.submit(second.clone()), Err(ChainRejection::ReplacementFeeTooLow { fee: 500, .. })));
    chain.mine(T0 + 1);
    assert_eq!(chain.confirmations(&first_id), 1);
    assert_eq!(chain.submit(second.clone()), Err(ChainRejection::MissingInput(0)));

    // A block that spends a spent coin is refused and changes nothing.
    let tip = chain.tip();
    let utxos = utxo_set(&chain);
    let block = chain.template(vec![second], T0 + 2);
    assert_eq!(
        chain.submit_block(block),
        Err(BlockError::Transaction { index: 1, reason: ChainRejection::MissingInput(0) })
    );
    // So is a block that spends a fresh coin twice (the mempool never saw either spend).
    let d = coin(&mut chain, &wallet, 50_000, T0 + 3);
    let a = wallet.spend([&d], vec![wallet.pay(49_000)]);
    let b = wallet.spend([&d], vec![wallet.pay(48_000)]);
    let tip_before = chain.tip();
    assert_eq!(
        chain.submit_block(chain.template(vec![a.clone(), b], T0 + 4)),
        Err(BlockError::Transaction { index: 2, reason: ChainRejection::MissingInput(0) })
    );
    assert_eq!(chain.tip(), tip_before);
    assert_ne!(chain.tip(), tip);
    assert!(utxo_set(&chain).len() > utxos.len(), "only the new coin was added");
    // The honest block alone is accepted, and takes its transaction out of the mempool.
    chain.submit(a.clone()).unwrap();
    let height = chain.submit_block(chain.template(vec![a.clone()], T0 + 5)).unwrap();
    assert_eq!(height, tip_before.0 + 1);
    assert!(!chain.in_mempool(&a.compute_txid()) && chain.confirmations(&a.compute_txid()) == 1);
}

#[test]
fn the_fee_rate_the_dust_limit_and_unconfirmed_parents_are_enforced() {
    let wallet = Wallet::new(2);
    let mut chain = DevChain::new(5);
    assert_eq!(chain.min_fee_rate_sat_vb(), 5);
    let c = coin(&mut chain, &wallet, 100_000, T0);
    // A one-input, one-output key-path spend weighs about 111 vbytes: below 5 sat/vB is refused with the minimum.
    let low = wallet.spend([&c], vec![wallet.pay(100_000 - 500)]);
    let vsize = low.vsize() as u64;
    assert!((100..120).contains(&vsize), "{vsize}");
    assert_eq!(chain.submit(low), Err(ChainRejection::FeeTooLow { fee: 500, min: 5 * vsize }));
    // Dust: 329 sat is refused, 330 is not; a zero-value OP_RETURN output is not dust.
    let dust = wallet.spend([&c], vec![wallet.pay(329), wallet.pay(90_000)]);
    assert_eq!(chain.submit(dust), Err(ChainRejection::Dust { output: 0, value: 329 }));
    let memo = TxOut { value: Amount::ZERO, script_pubkey: ScriptBuf::new_op_return(b"memo") };
    let exact = wallet.spend([&c], vec![wallet.pay(330), memo]);
    let fee = 100_000 - 330;
    assert!(fee >= 5 * exact.vsize() as u64);
    let exact_id = chain.submit(exact).unwrap();
    // Exactly the minimum is enough.
    let d = coin(&mut chain, &wallet, 100_000, T0 + 1);
    let probe = wallet.spend([&d], vec![wallet.pay(90_000)]);
    let at_min = wallet.spend([&d], vec![wallet.pay(100_000 - 5 * probe.vsize() as u64)]);
    assert_eq!(at_min.vsize(), probe.vsize());
    chain.submit(at_min).unwrap();
    assert_eq!(chain.confirmations(&exact_id), 1, "mined with the second faucet block");

    // The faucet refuses dust too, and its coin cannot be spent before a block confirms it.
    assert_eq!(
        chain.faucet(wallet.script.clone(), Amount::from_sat(329)),
        Err(ChainRejection::Dust { output: 0, value: 329 })
    );
    let pending = chain.faucet(wallet.script.clone(), Amount::from_sat(10_000)).unwrap();
    let early = wallet.spend([&(pending, wallet.pay(10_000))], vec![wallet.pay(9_000)]);
    assert_eq!(chain.submit(early.clone()), Err(ChainRejection::UnconfirmedInput(0)));
    chain.mine(T0 + 2);
    chain.submit(early).unwrap();
    // Nobody but the faucet makes coins from nothing; a transaction without outputs is malformed.
    let mut mint = chain.block_at(1).unwrap().txdata[1].clone();
    mint.output[0].value = Amount::from_sat(1_000_000);
    assert!(matches!(chain.submit(mint), Err(ChainRejection::Malformed(_))));
    let mut empty = wallet.spend([&d], vec![wallet.pay(50_000)]);
    empty.output.clear();
    assert!(matches!(chain.submit(empty), Err(ChainRejection::Malformed(_))));

    // The faucet can mint 21 million bitcoin twice, but no transaction spends more than 21 million at once, and a
    // fee that large still makes a valid block (the coinbase claims at most 21 million).
    let all = Amount::MAX_MONEY.to_sat();
    let whale = coin(&mut chain, &wallet, all, T0 + 3);
    let twin = coin(&mut chain, &wallet, all, T0 + 4);
    let both = wallet.spend([&whale, &twin], vec![wallet.pay(all)]);
    assert_eq!(chain.submit(both), Err(ChainRejection::ValueOutOfRange));
    let burn = chain.submit(wallet.spend([&whale], vec![wallet.pay(330)])).unwrap();
    let height = chain.mine(T0 + 5);
    assert_eq!(chain.confirmations(&burn), 1);
    assert_eq!(chain.block_at(height).unwrap().txdata[0].output[0].value, Amount::MAX_MONEY);
}

#[test]
fn a_reorganisation_returns_transactions_to_the_mempool() {
    let wallet = Wallet::new(3);
    let mut chain = DevChain::new(1);
    let c = coin(&mut chain, &wallet, 100_000, T0);
    let spend = wallet.spend([&c], vec![wallet.pay(99_000)]);
    let spend_id = chain.submit(spend).unwrap();
    // A deposit and its sweep confirmed in two consecutive blocks.
    let deposit = chain.faucet(wallet.script.clone(), Amount::from_sat(20_000)).unwrap();
    chain.mine(T0 + 1); // height 2: the spend and the deposit
    let sweep = wallet.spend([&(deposit, wallet.pay(20_000))], vec![wallet.pay(19_000)]);
    let sweep_id = chain.submit(sweep).unwrap();
    chain.mine(T0 + 2); // height 3: the sweep
    let (old_height, old_tip) = chain.tip();
    assert_eq!(old_height, 3);
    let fork = chain.block_hash(1).unwrap();
    let disconnected: Vec<_> = (2..=3).map(|h| chain.block_hash(h).unwrap()).collect();

    assert_eq!(chain.reorg(2, &[], T0 + 3).unwrap(), Vec::<Txid>::new());
    // The new branch is one block longer, forks at height 1, and the old blocks are gone.
    assert_eq!(chain.height(), 4);
    assert_eq!(chain.block_hash(1), Some(fork));
    assert_ne!(chain.tip().1, old_tip);
    for hash in &disconnected {
        assert_eq!(chain.height_of(hash), None);
    }
    for h in 2..=4 {
        assert_eq!(chain.block_at(h).unwrap().txdata.len(), 1, "replacement blocks hold only their coinbase");
        assert!(!disconnected.contains(&chain.block_hash(h).unwrap()), "a replacement differs from what it replaces");
    }
    // Everything is unconfirmed again and waits in order: the spend, the deposit, then the sweep that spends it.
    assert_eq!(chain.mempool_txids(), vec![spend_id, deposit.txid, sweep_id]);
    for txid in [spend_id, deposit.txid, sweep_id] {
        assert_eq!(chain.confirmations(&txid), 0);
    }
    assert!(chain.utxo(&c.0).is_some(), "the coin the spend used is unspent again");
    assert!(chain.utxo(&deposit).is_none());
    // The next block confirms all three, parent before child.
    chain.mine(T0 + 4);
    let block = chain.block_at(5).unwrap();
    let order: Vec<Txid> = block.txdata.iter().skip(1).map(Transaction::compute_txid).collect();
    assert_eq!(order, vec![spend_id, deposit.txid, sweep_id]);
    assert!(chain.mempool_txids().is_empty());
    assert_eq!(chain.reorg(6, &[], T0), Err(BlockError::TooDeep { depth: 6, height: 5 }));
}

#[test]
fn a_reorganisation_can_evict_a_faucet_deposit_and_what_spends_it() {
    let wallet = Wallet::new(4);
    let mut chain = DevChain::new(1);
    let keep = coin(&mut chain, &wallet, 70_000, T0);
    let deposit = chain.faucet(wallet.script.clone(), Amount::from_sat(40_000)).unwrap();
    chain.mine(T0 + 1);
    assert_eq!(chain.confirmations(&deposit.txid), 1);
    let sweep = wallet.spend([&(deposit, wallet.pay(40_000))], vec![wallet.pay(39_000)]);
    let sweep_id = chain.submit(sweep).unwrap();
    let other = wallet.spend([&keep], vec![wallet.pay(69_000)]);
    let other_id = chain.submit(other).unwrap();
    chain.mine(T0 + 2);

    let dropped = chain.reorg(2, &[deposit.txid], T0 + 3).unwrap();
    assert_eq!(dropped, vec![deposit.txid, sweep_id], "the deposit and the sweep that spent it");
    assert!(!in_any_block(&chain, &deposit.txid) && !in_any_block(&chain, &sweep_id));
    assert!(!chain.in_mempool(&deposit.txid) && !chain.in_mempool(&sweep_id));
    assert_eq!(chain.confirmations(&deposit.txid), 0);
    assert!(chain.utxo(&deposit).is_none());
    // What did not depend on the deposit comes back and confirms; the deposit never does.
    assert_eq!(chain.mempool_txids(), vec![other_id]);
    chain.mine(T0 + 4);
    chain.mine(T0 + 5);
    assert_eq!(chain.confirmations(&other_id), 2);
    assert!(!in_any_block(&chain, &deposit.txid));
}

#[test]
fn blocks_chain_by_hash_and_commit_to_their_transactions() {
    let wallet = Wallet::new(5);
    let mut chain = DevChain::new(1);
    let genesis = genesis_block(Network::Regtest);
    assert_eq!(chain.tip(), (0, genesis.block_hash()));
    assert_eq!(chain.block_at(0), Some(&genesis));
    let c = coin(&mut chain, &wallet, 1_000_000, T0);
    let tx = wallet.spend([&c], vec![wallet.pay(400_000), wallet.pay(590_000)]);
    chain.submit(tx).unwrap();
    for i in 1..=HALVING_INTERVAL_BLOCKS as u32 + 2 {
        chain.mine(T0 + i);
    }
    let target = Target::from_compact(CompactTarget::from_consensus(REGTEST_BITS));
    let (tip_height, tip_hash) = chain.tip();
    assert_eq!(tip_height, HALVING_INTERVAL_BLOCKS + 3);
    assert_eq!(chain.block_hash(tip_height), Some(tip_hash));
    assert_eq!(chain.block_hash(tip_height + 1), None);
    for h in 1..=tip_height {
        let block = chain.block_at(h).unwrap();
        let hash = block.block_hash();
        assert_eq!(chain.block_hash(h), Some(hash));
        assert_eq!(chain.height_of(&hash), Some(h));
        assert_eq!(Some(block.header.prev_blockhash), chain.block_hash(h - 1), "block {h} builds on its parent");
        assert!(block.check_merkle_root(), "block {h}");
        assert!(block.check_witness_commitment(), "block {h}");
        assert_eq!(block.header.validate_pow(target), Ok(hash));
        assert!(block.header.time >= T0);
        let coinbase = &block.txdata[0];
        assert!(coinbase.is_coinbase());
        // BIP-34 as rust-bitcoin reads it (heights 1 to 16 are pushed as OP_1..OP_16, which it does not read).
        if h > 16 {
            assert_eq!(block.bip34_block_height(), Ok(h));
        }
        // The coinbase burns the subsidy (halved after 150 blocks) and the fees.
        let subsidy = INITIAL_SUBSIDY_SAT >> (h / HALVING_INTERVAL_BLOCKS);
        let fees = if h == 2 { 10_000 } else { 0 };
        assert_eq!(coinbase.output[0].value.to_sat(), subsidy + fees, "block {h}");
        assert!(coinbase.output.iter().all(|o| o.script_pubkey.is_op_return()));
    }
    assert_eq!(chain.block_at(2).unwrap().txdata.len(), 2);
    // Tampering with a block breaks what commits to it.
    let mut block = chain.template(Vec::new(), T0 + 1_000);
    assert_eq!(block.header.prev_blockhash, tip_hash);
    block.header.merkle_root = chain.block_at(1).unwrap().header.merkle_root;
    grind(&mut block.header);
    assert_eq!(chain.clone().submit_block(block), Err(BlockError::BadMerkleRoot));
    let mut block = chain.template(Vec::new(), T0 + 1_000);
    block.header.prev_blockhash = chain.block_hash(1).unwrap();
    grind(&mut block.header);
    assert_eq!(chain.clone().submit_block(block), Err(BlockError::NotOnTip));
    let mut block = chain.template(Vec::new(), T0 + 1_000);
    block.header.bits = CompactTarget::from_consensus(0x1d00_ffff);
    assert_eq!(chain.clone().submit_block(block), Err(BlockError::BadProofOfWork));
    // A coinbase that claims a satoshi more than the subsidy (the block pays no fees).
    let mut block = chain.template(Vec::new(), T0 + 1_000);
    block.txdata[0].output[0].value = Amount::from_sat((INITIAL_SUBSIDY_SAT >> 1) + 1);
    block.header.merkle_root = block.compute_merkle_root().unwrap();
    grind(&mut block.header);
    assert!(matches!(chain.clone().submit_block(block), Err(BlockError::BadCoinbase(_))));
    let block = chain.template(Vec::new(), T0 + 1_000);
    assert_eq!(chain.submit_block(block), Ok(tip_height + 1));
}

#[test]
fn replaying_the_records_gives_the_same_chain() {
    let wallet = Wallet::new(6);
    let mut chain = DevChain::new(2);
    let a = coin(&mut chain, &wallet, 500_000, T0);
    let b = coin(&mut chain, &wallet, 300_000, T0 + 1);
    let pay = chain.submit(wallet.spend([&a], vec![wallet.pay(200_000), wallet.pay(290_000)])).unwrap();
    let deposit = chain.faucet(wallet.script.clone(), Amount::from_sat(80_000)).unwrap();
    chain.mine(T0 + 2);
    chain.submit(wallet.spend([&b], vec![wallet.pay(290_000)])).unwrap();
    chain.mine(T0 + 3);
    let dropped = chain.reorg(2, &[deposit.txid], T0 + 4).unwrap();
    assert_eq!(dropped, vec![deposit.txid]);
    chain.mine(T0 + 5);
    let late = chain.faucet(wallet.script.clone(), Amount::from_sat(1_000)).unwrap();
    chain.submit_block(chain.template(Vec::new(), T0 + 6)).unwrap();
    chain.mine(T0 + 7);

    let records = chain.drain_log();
    assert!(chain.drain_log().is_empty(), "drained");
    let disconnects = records.iter().filter(|r| matches!(r, LogRecord::Disconnect)).count();
    assert_eq!(disconnects, 2);
    let mut file = Vec::new();
    for record in &records {
        file.extend(record.encode());
    }
    let mut replayed = DevChain::new(2);
    let mut offset = 0;
    while offset < file.len() {
        let (record, used) = LogRecord::decode(&file[offset..]).unwrap();
        replayed.apply(&record).unwrap();
        offset += used;
    }
    assert!(replayed.drain_log().is_empty(), "replaying records nothing new");
    assert_eq!(replayed.tip(), chain.tip());
    for h in 0..=chain.height() {
        assert_eq!(replayed.block_hash(h), chain.block_hash(h));
    }
    assert_eq!(utxo_set(&replayed), utxo_set(&chain));
    for txid in [pay, deposit.txid, late.txid] {
        assert_eq!(replayed.confirmations(&txid), chain.confirmations(&txid));
    }
    assert!(chain.confirmations(&late.txid) == 1 && chain.confirmations(&deposit.txid) == 0);
    // Both go on alike: the next faucet coin and the next block are the same on each.
    let next = chain.faucet(wallet.script.clone(), Amount::from_sat(5_000)).unwrap();
    assert_eq!(replayed.faucet(wallet.script.clone(), Amount::from_sat(5_000)).unwrap(), next);
    chain.mine(T0 + 8);
    replayed.mine(T0 + 8);
    assert_eq!(replayed.tip(), chain.tip());

    // A record cut short is incomplete; a damaged one is corrupt; an out-of-place one is refused.
    let encoded = records[0].encode();
    assert_eq!(LogRecord::decode(&encoded[..encoded.len() - 1]), Err(LogDecodeError::Incomplete));
    assert_eq!(LogRecord::decode(&encoded[..3]), Err(LogDecodeError::Incomplete));
    let mut damaged = encoded.clone();
    damaged[40] ^= 1;
    assert!(matches!(LogRecord::decode(&damaged), Err(LogDecodeError::Corrupt(_))));
    assert_eq!(LogRecord::decode(&LogRecord::Disconnect.encode()), Ok((LogRecord::Disconnect, 9)));
    assert_eq!(replayed.apply(&records[0]), Err(BlockError::NotOnTip));
    let mut fresh = DevChain::new(2);
    assert_eq!(fresh.apply(&LogRecord::Disconnect), Err(BlockError::NothingToDisconnect));
}

#[test]
fn a_higher_fee_replaces_a_mempool_transaction() {
    let wallet = Wallet::new(7);
    let other = Wallet::new(8);
    let mut chain = DevChain::new(1);
    let c = coin(&mut chain, &wallet, 100_000, T0);
    let original = wallet.spend([&c], vec![other.pay(60_000), wallet.pay(39_000)]);
    let original_id = chain.submit(original.clone()).unwrap();
    let vsize = original.vsize() as u64;

    // The same payment with a little more fee: a higher rate, but not enough to pay for the relay of both.
    let timid = wallet.spend([&c], vec![other.pay(60_000), wallet.pay(38_950)]);
    assert_eq!(timid.vsize() as u64, vsize);
    assert_eq!(chain.submit(timid), Err(ChainRejection::ReplacementFeeTooLow { fee: 1_050, min: 1_000 + vsize }));
    // The same fee is no higher rate either.
    let same = wallet.spend([&c], vec![other.pay(59_000), wallet.pay(40_000)]);
    assert!(matches!(chain.submit(same), Err(ChainRejection::ReplacementFeeTooLow { fee: 1_000, .. })));
    assert_eq!(chain.mempool_txids(), [original_id]);

    // A fee bump: same input, same payment, the change gives up 4,000 sat. It replaces the original.
    let bumped = wallet.spend([&c], vec![other.pay(60_000), wallet.pay(35_000)]);
    let bumped_id = chain.submit(bumped.clone()).unwrap();
    assert_eq!(chain.mempool_txids(), [bumped_id]);
    assert!(!chain.in_mempool(&original_id));
    // The original cannot come back: it now pays less than what replaced it.
    assert!(matches!(chain.submit(original.clone()), Err(ChainRejection::ReplacementFeeTooLow { .. })));
    chain.mine(T0 + 1);
    assert_eq!(chain.confirmations(&bumped_id), 1);
    assert!(!in_any_block(&chain, &original_id));
    assert_eq!(chain.submit(original), Err(ChainRejection::MissingInput(0)));

    // A transaction that does not signal replaceability is never replaced, whatever the fee.
    let d = coin(&mut chain, &wallet, 100_000, T0 + 2);
    let final_one = wallet.spend_final([&d], vec![wallet.pay(99_000)]);
    let final_id = chain.submit(final_one).unwrap();
    let generous = wallet.spend([&d], vec![wallet.pay(50_000)]);
    assert_eq!(chain.submit(generous), Err(ChainRejection::Conflict(0)));
    assert_eq!(chain.mempool_txids(), [final_id]);
}

#[test]
fn a_replacement_evicts_the_descendants_it_invalidates() {
    let wallet = Wallet::new(9);
    let mut chain = DevChain::new(1);
    let c = coin(&mut chain, &wallet, 100_000, T0);
    let parent = wallet.spend([&c], vec![wallet.pay(99_000)]);
    let parent_id = chain.submit(parent.clone()).unwrap();
    chain.mine(T0 + 1);
    // A reorganisation returns the parent to the mempool, where a child may follow it once the parent is mined
    // again: mine the parent, spend it, then reorganise both back into the mempool.
    let child_coin = (bitcoin::OutPoint { txid: parent_id, vout: 0 }, wallet.pay(99_000));
    let child = wallet.spend([&child_coin], vec![wallet.pay(98_000)]);
    let child_id = chain.submit(child).unwrap();
    chain.mine(T0 + 2);
    chain.reorg(2, &[], T0 + 3).unwrap();
    assert_eq!(chain.mempool_txids(), [parent_id, child_id]);
    // Replacing the parent must pay for the child too: 2,000 sat plus its own relay.
    let cheap = wallet.spend([&c], vec![wallet.pay(97_950)]);
    assert!(matches!(chain.submit(cheap), Err(ChainRejection::ReplacementFeeTooLow { fee: 2_050, .. })));
    let replacement = wallet.spend([&c], vec![wallet.pay(95_000)]);
    let replacement_id = chain.submit(replacement).unwrap();
    assert_eq!(chain.mempool_txids(), [replacement_id], "the parent and its child are gone");
}
