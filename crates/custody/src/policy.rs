//! How much of an asset may sit in the hot wallet, and what the sweeper moves to keep it so. Pure integer arithmetic:
//! satoshis as `u64` (sums in `u128`), shares in basis points.
//!
//! Terms: `total` is everything the exchange holds of the asset (cold, hot, deposit addresses, and both kinds of
//! transfer in flight). Coins on their way to cold storage (a signed sweep not yet confirmed) count as cold; coins on
//! their way to the hot wallet (a refill) count as hot. "Non-cold" is hot plus what still sits in deposit addresses.
//!
//! **The invariant** (checked by `tests/policy.rs`): after a [`plan`] is carried out (fees ignored), whenever
//! `total > 0` and `in_flight_to_hot` is no more than the hot cap,
//! `(hot + in_flight_to_hot + deposit) × 10 000 ≤ max_hot_bps × total`, so the cold share is at least
//! `10 000 − max_hot_bps` basis points (95 % by default). It is stronger than capping the hot wallet alone: coins left
//! in deposit addresses are not cold either.
//!
//! **The floor** (`hot_floor_sat`) is a wish, not a rule: when it is above the cap (`max_hot_bps` of the total, less
//! unswept deposit dust), the cap wins, and the hot wallet is filled to the cap only. Otherwise, after a plan the hot
//! wallet holds at least the floor, unless the cold wallet cannot supply the refill.

use crate::CustodyError;

/// Basis points in a whole.
const BPS: u128 = 10_000;

/// The rebalancing parameters of one asset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebalancePolicy {
    /// The most the hot wallet (with unswept deposits) may hold, in basis points of the total (default 500 = 5 %).
    pub max_hot_bps: u32,
    /// What a sweep or a refill brings the hot wallet to, in basis points of the total (default 300 = 3 %). The gap
    /// up to `max_hot_bps` keeps the sweeper from moving coins back and forth on every event.
    pub target_hot_bps: u32,
    /// Below this the hot wallet asks for a refill from cold storage, in satoshis (default 0: refills only when a
    /// withdrawal needs one).
    pub hot_floor_sat: u64,
    /// Deposits summing to less than this are not swept on their own (the inputs would cost about what they hold);
    /// they go along with the next sweep, in satoshis (default 1 000).
    pub dust_sat: u64,
    /// A hot surplus (above the target, under the cap) smaller than this is left where it is, in satoshis
    /// (default 100 000). Above the cap the surplus is swept whatever its size.
    pub min_sweep_sat: u64,
}

impl Default for RebalancePolicy {
    fn default() -> RebalancePolicy {
        RebalancePolicy {
            max_hot_bps: 500,
            target_hot_bps: 300,
            hot_floor_sat: 0,
            dust_sat: 1_000,
            min_sweep_sat: 100_000,
        }
    }
}

impl RebalancePolicy {
    /// Checks that the parameters agree: `target_hot_bps ≤ max_hot_bps < 10 000`.
    pub fn validate(&self) -> Result<(), CustodyError> {
        if u128::from(self.max_hot_bps) >= BPS {
            return Err(CustodyError::Policy("the hot cap must be below 100 %"));
        }
        if self.target_hot_bps > self.max_hot_bps {
            return Err(CustodyError::Policy("the hot target must not exceed the hot cap"));
        }
        Ok(())
    }
}

/// What the exchange holds of one asset, in satoshis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Balances {
    /// Confirmed in the cold (threshold) wallet.
    pub cold: u64,
    /// Confirmed in the hot wallet.
    pub hot: u64,
    /// In customers' deposit addresses, not yet swept.
    pub deposit: u64,
    /// Sent to the cold wallet, not yet confirmed (counts as cold).
    pub in_flight_to_cold: u64,
    /// Sent to the hot wallet by a refill, not yet confirmed (counts as hot).
    pub in_flight_to_hot: u64,
}

impl Balances {
    /// Everything held.
    pub fn total(&self) -> u128 {
        [self.cold, self.hot, self.deposit, self.in_flight_to_cold, self.in_flight_to_hot]
            .iter()
            .map(|v| u128::from(*v))
            .sum()
    }

    /// The balances once `plan` is carried out and everything in flight has arrived (fees ignored).
    pub fn after(&self, plan: &Plan) -> Balances {
        let moved_to_cold = plan.deposit_to_cold + plan.hot_to_cold;
        Balances {
            cold: self.cold + self.in_flight_to_cold + moved_to_cold - plan.refill_to_hot,
            hot: self.hot + self.in_flight_to_hot + plan.deposit_to_hot + plan.refill_to_hot - plan.hot_to_cold,
            deposit: self.deposit - plan.deposit_to_hot - plan.deposit_to_cold,
            in_flight_to_cold: 0,
            in_flight_to_hot: 0,
        }
    }
}

/// What the sweeper should do now. The first three amounts are one transaction signed by the hot key (deposit
/// addresses and the hot wallet share it); a refill spends cold coins and needs a custodians' ceremony, so it is
/// only a proposal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Plan {
    /// From deposit addresses to the hot wallet.
    pub deposit_to_hot: u64,
    /// From deposit addresses to the cold wallet.
    pub deposit_to_cold: u64,
    /// The hot wallet's surplus to the cold wallet.
    pub hot_to_cold: u64,
    /// A proposed refill from the cold wallet to the hot wallet.
    pub refill_to_hot: u64,
}

impl Plan {
    /// Whether the plan has a sweep (a hot-key transaction) in it.
    pub fn sweeps(&self) -> bool {
        self.deposit_to_hot > 0 || self.deposit_to_cold > 0 || self.hot_to_cold > 0
    }
}

/// `part` basis points of `whole`, rounded down.
fn share(whole: u128, part_bps: u32) -> u128 {
    whole * u128::from(part_bps) / BPS
}

/// An amount known to be no larger than some `u64` balance.
fn narrow(amount: u128) -> u64 {
    u64::try_from(amount).expect("an amount bounded by a u64 balance")
}

/// The cold share of the total, in basis points (rounded down); 10 000 when nothing is held.
pub fn cold_share_bps(b: &Balances) -> u32 {
    let total = b.total();
    if total == 0 {
        return 10_000;
    }
    let cold = u128::from(b.cold) + u128::from(b.in_flight_to_cold);
    u32::try_from(cold * BPS / total).expect("a share of at most 10 000 basis points")
}

/// What to move now, given the balances. Deposits first top the hot wallet up to its target (never above the cap);
/// the rest of the deposits, and a hot surplus above the target, go to cold storage; when the hot wallet is below its
/// floor and deposits cannot cover it, a refill from cold storage up to the target is proposed. See the module
/// documentation for the invariant. The policy should have passed [`RebalancePolicy::validate`]; a target above the
/// cap is treated as the cap.
pub fn plan(b: &Balances, p: &RebalancePolicy) -> Plan {
    let total = b.total();
    let hot = u128::from(b.hot) + u128::from(b.in_flight_to_hot);
    let deposit = u128::from(b.deposit);
    let cap = share(total, p.max_hot_bps);
    let target = share(total, p.target_hot_bps.min(p.max_hot_bps));
    // The floor never lifts the hot wallet above the cap; between target and cap, the higher of the two is aimed at.
    let floor = u128::from(p.hot_floor_sat).min(cap);
    let aim = target.max(floor);

    let over_cap = hot + deposit > cap;
    let deposits_worth_a_sweep = deposit > 0 && deposit >= u128::from(p.dust_sat);
    let surplus = hot.saturating_sub(aim);
    let surplus_worth_a_sweep = surplus > 0 && surplus >= u128::from(p.min_sweep_sat);
    let mut plan = Plan::default();
    let mut deposit_left = deposit;
    let mut hot_after = hot;
    let below_floor_with_deposits = hot < floor && deposit > 0;
    if over_cap || deposits_worth_a_sweep || surplus_worth_a_sweep || below_floor_with_deposits {
        // A sweep happens: every deposit goes with it, dust included.
        let to_hot = deposit.min(aim.saturating_sub(hot));
        plan.deposit_to_hot = narrow(to_hot);
        plan.deposit_to_cold = narrow(deposit - to_hot);
        deposit_left = 0;
        hot_after = hot + to_hot;
        if hot > cap || surplus_worth_a_sweep {
            // Only confirmed hot coins can move; a refill still in flight stays where it is going.
            let to_cold = surplus.min(u128::from(b.hot));
            plan.hot_to_cold = narrow(to_cold);
            hot_after -= to_cold;
        }
    }
    let room = cap.saturating_sub(deposit_left);
    if hot_after < floor.min(room) {
        plan.refill_to_hot = narrow((aim.min(room) - hot_after).min(u128::from(b.cold)));
    }
    plan
}

/// The figures of a [`simulate`] run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimulationReport {
    /// Events simulated (deposits and withdrawals).
    pub events: u64,
    /// Deposits among them.
    pub deposits: u64,
    /// Withdrawals among them.
    pub withdrawals: u64,
    /// Sweeper runs that moved coins.
    pub sweeps: u64,
    /// Refills from cold storage: proposed by a plan (hot below its floor) or needed by a withdrawal.
    pub refills: u64,
    /// Withdrawals the hot wallet could not pay at once (paid after a refill).
    pub unpaid_at_once: u64,
    /// The lowest cold share seen after a sweeper run while anything was held, in basis points.
    pub min_cold_share_bps: u32,
    /// Sweeper runs after which the invariant of the module documentation did not hold (0 expected).
    pub violations: u64,
}

/// The sweeper runs after every this many events in [`simulate`] (as on a timer, so deposits accumulate between
/// runs and withdrawals drain the hot wallet in the meantime).
pub const SIMULATION_SWEEP_EVERY_EVENTS: usize = 10;

/// SplitMix64: a small, fast, seeded generator for the simulation's randomness. Not for secrets.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), by rejection so that no value is favoured.
    fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next();
            if x < zone {
                return x % n;
            }
        }
    }

    /// An amount spread evenly over the decades from 10^3 to 10^9 satoshis (0.00001 to 10 BTC): the decade is
    /// uniform, and the amount uniform within it, which approximates a log-uniform draw without floats.
    fn amount(&mut self) -> u64 {
        let low = 10u64.pow(3 + u32::try_from(self.below(6)).expect("below 6"));
        low + self.below(9 * low)
    }
}

/// Runs `events` random deposits (55 %) and withdrawals (45 %) against an exchange starting with 97 BTC cold and
/// 3 BTC hot, with the sweeper applying [`plan`] every [`SIMULATION_SWEEP_EVERY_EVENTS`] events as if its
/// transactions (and any refill it proposes) confirmed at once. A withdrawal is paid from the hot wallet when it
/// holds enough; otherwise it counts as not paid at once, and is paid after a refill of the shortfall from cold
/// storage. A withdrawal never asks for more than the hot and cold wallets hold together. Deterministic in `seed`.
pub fn simulate(events: usize, seed: u64, policy: &RebalancePolicy) -> SimulationReport {
    let mut rng = SplitMix64(seed);
    let mut b = Balances { cold: 9_700_000_000, hot: 300_000_000, ..Balances::default() };
    let mut report = SimulationReport { min_cold_share_bps: 10_000, ..SimulationReport::default() };
    let floor_bps = 10_000 - policy.max_hot_bps.min(10_000);
    for event in 1..=events {
        report.events += 1;
        let amount = rng.amount();
        if rng.below(100) < 55 {
            report.deposits += 1;
            b.deposit += amount;
        } else {
            report.withdrawals += 1;
            let amount = amount.min(b.hot + b.cold);
            if amount > b.hot {
                report.unpaid_at_once += 1;
                report.refills += 1;
                let shortfall = amount - b.hot;
                b.cold -= shortfall;
                b.hot = 0;
            } else {
                b.hot -= amount;
            }
        }
        if event % SIMULATION_SWEEP_EVERY_EVENTS == 0 {
            let plan = plan(&b, policy);
            if plan.sweeps() {
                report.sweeps += 1;
            }
            if plan.refill_to_hot > 0 {
                report.refills += 1;
            }
            b = b.after(&plan);
            if b.total() > 0 {
                let cold_share = cold_share_bps(&b);
                report.min_cold_share_bps = report.min_cold_share_bps.min(cold_share);
                if cold_share < floor_bps {
                    report.violations += 1;
                }
            }
        }
    }
    report
}
