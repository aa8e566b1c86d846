//! What a custodian is asked to sign, in words they can check before they contribute a signature share: every
//! destination with its amount, which outputs return to the wallet itself, the total spent and the fee (and its
//! rate). A custodian's tool computes this from the unsigned transaction and the spent outputs themselves, never
//! from what the server says about them.

use bitcoin::{Address, Network, ScriptBuf, Transaction, TxOut};

use crate::CustodyError;

/// One output of the transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The address (or the script in hex when it has no address form).
    pub address: String,
    /// The amount, in satoshis.
    pub amount_sat: u64,
    /// Whether it pays back to the wallet that spends (change).
    pub change: bool,
}

/// The facts of a spend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendSummary {
    /// What the inputs hold, in satoshis.
    pub inputs_sat: u64,
    /// Every output.
    pub destinations: Vec<Destination>,
    /// Inputs minus outputs, in satoshis.
    pub fee_sat: u64,
    /// The fee per virtual byte, rounded up, of the transaction once signed (64-byte key-path signatures).
    pub fee_rate_sat_vb: u64,
}

/// Describes `tx`, which spends `spent` (in order); outputs paying to `wallet` are change.
pub fn describe(
    tx: &Transaction,
    spent: &[TxOut],
    wallet: &ScriptBuf,
    network: Network,
) -> Result<SpendSummary, CustodyError> {
    if spent.len() != tx.input.len() {
        return Err(CustodyError::Sighash(format!("{} inputs but {} spent outputs", tx.input.len(), spent.len())));
    }
    fn sum(outputs: &[TxOut]) -> Option<u64> {
        outputs.iter().try_fold(0u64, |acc, o| acc.checked_add(o.value.to_sat()))
    }
    let inputs_sat = sum(spent).ok_or_else(|| CustodyError::Sighash("input amounts overflow".into()))?;
    let outputs_sat = sum(&tx.output).ok_or_else(|| CustodyError::Sighash("output amounts overflow".into()))?;
    let fee_sat = inputs_sat
        .checked_sub(outputs_sat)
        .ok_or_else(|| CustodyError::Sighash("the outputs are worth more than the inputs".into()))?;
    let destinations = tx
        .output
        .iter()
        .map(|o| Destination {
            address: Address::from_script(&o.script_pubkey, network)
                .map_or_else(|_| o.script_pubkey.to_hex_string(), |a| a.to_string()),
            amount_sat: o.value.to_sat(),
            change: &o.script_pubkey == wallet,
        })
        .collect();
    // The signed size: each key-path input gains a witness of one 64-byte element (1 count + 1 length + 64 bytes).
    let mut signed = tx.clone();
    for input in &mut signed.input {
        input.witness = bitcoin::Witness::from_slice(&[[0u8; 64].as_slice()]);
    }
    let vsize = u64::try_from(signed.vsize()).unwrap_or(u64::MAX).max(1);
    Ok(SpendSummary { inputs_sat, destinations, fee_sat, fee_rate_sat_vb: fee_sat.div_ceil(vsize) })
}
