//! The withdrawal policy engine, in the spirit of Fireblocks' Transaction Authorization Policy: an ordered list of
//! rules; the first whose conditions all hold decides (allow, require approvals, or block); a withdrawal that no rule
//! matches is refused (the implicit catch-all).
//!
//! A rule's conditions are optional and combine with AND: the initiator (a session or an API key), the customer's
//! group and KYC level, the asset, the amount in native units and in USD, the USD summed over a window of the
//! customer's earlier withdrawals plus this one, whether the destination is whitelisted and for how long, and the risk
//! band. Approvals are groups of staff with a threshold each, combined with `all` (AND) and `any` (OR). Each approval
//! is assigned to one group ("layer"), so one person counts once; the initiator never approves, and nobody approves
//! twice.
//!
//! Policies are JSON documents (see [`Policy::default_for`] for the shape); USD figures in a policy are whole dollars,
//! native amounts are in the asset's smallest unit, written as strings.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// Micro-dollars in a dollar (USD values in facts are micro-dollars, as everywhere in the service).
pub const MICRO_USD: u64 = 1_000_000;
/// The longest window a rule may sum over: 31 days.
pub const WINDOW_S_MAX: u64 = 31 * 24 * 3600;
/// The most rules a policy may hold.
pub const RULES_MAX: usize = 256;

/// Who asked for the withdrawal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Initiator {
    /// The customer, signed in, with a fresh second factor.
    Session,
    /// A signed API request.
    ApiKey,
}

/// The kind of destination, as rules name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DestinationKind {
    /// An address on the customer's whitelist, past its cooling-off.
    Whitelisted,
    /// Any other address.
    OneTime,
}

/// Where the withdrawal goes, as the policy sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// A whitelisted address, usable since `age_s` seconds (its cooling-off ended that long ago or more).
    Whitelisted {
        /// Seconds since it was added to the whitelist.
        age_s: u64,
    },
    /// An address given for this withdrawal only.
    OneTime,
}

impl Destination {
    fn kind(self) -> DestinationKind {
        match self {
            Destination::Whitelisted { .. } => DestinationKind::Whitelisted,
            Destination::OneTime => DestinationKind::OneTime,
        }
    }
}

/// The risk band of a withdrawal, from the risk engine's score and the policy's band edges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskBand {
    /// Below the medium edge.
    Low,
    /// From the medium edge.
    Medium,
    /// From the high edge.
    High,
}

/// The risk scores at which the bands begin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bands {
    /// A score at or above this is medium.
    pub medium: u32,
    /// A score at or above this is high.
    pub high: u32,
}

impl Default for Bands {
    fn default() -> Bands {
        Bands { medium: 30, high: 60 }
    }
}

impl Bands {
    /// The band of `score`.
    pub fn of(&self, score: u32) -> RiskBand {
        if score >= self.high {
            RiskBand::High
        } else if score >= self.medium {
            RiskBand::Medium
        } else {
            RiskBand::Low
        }
    }
}

/// An amount in an asset's smallest unit, written as a decimal string in policies (it may exceed JSON's safe
/// integers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Units(pub u128);

impl Serialize for Units {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for Units {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Units, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(serde::de::Error::custom(format!(
                "a native amount is a string of digits in the asset's smallest unit, not {s:?}"
            )));
        }
        s.parse().map(Units).map_err(|_| serde::de::Error::custom(format!("{s:?} is too large an amount")))
    }
}

/// A rule's conditions. Every condition given must hold; an empty `when` matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct When {
    /// Who asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initiators: Option<Vec<Initiator>>,
    /// The customer's group (`retail`, `vip`, `institutional`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
    /// The customer's KYC level (0, 1, 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kyc_levels: Option<Vec<u8>>,
    /// The asset's code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assets: Option<Vec<String>>,
    /// The amount is at least this (native units; meaningful with `assets`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_at_least: Option<Units>,
    /// The amount is below this (native units).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_below: Option<Units>,
    /// The value is at least this many US dollars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usd_at_least: Option<u64>,
    /// The value is below this many US dollars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usd_below: Option<u64>,
    /// The window, in seconds, over which `window_usd_*` sum the customer's withdrawals (this one included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_s: Option<u64>,
    /// The window's sum is at least this many US dollars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_usd_at_least: Option<u64>,
    /// The window's sum is below this many US dollars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_usd_below: Option<u64>,
    /// Whitelisted or one-time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<DestinationKind>,
    /// A whitelisted destination added at least this long ago (a one-time destination never matches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub whitelisted_for_at_least_s: Option<u64>,
    /// A whitelisted destination added less than this long ago (a one-time destination never matches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub whitelisted_for_below_s: Option<u64>,
    /// The risk band.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk_bands: Option<Vec<RiskBand>>,
}

/// Staff approvals a rule requires.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Requirement {
    /// `threshold` distinct members of the staff group `group`.
    Group {
        /// The group (a staff role).
        group: String,
        /// How many of its members.
        threshold: u8,
    },
    /// Every one of these.
    All {
        /// The parts.
        all: Vec<Requirement>,
    },
    /// At least one of these.
    Any {
        /// The parts.
        any: Vec<Requirement>,
    },
}

/// What a matching rule decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Sign without people.
    Allow,
    /// Wait for these approvals.
    RequireApprovals {
        /// Who must approve.
        approvals: Requirement,
    },
    /// Refuse.
    Block {
        /// Why, for the customer and staff.
        reason: String,
    },
}

/// One rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RuleDoc", into = "RuleDoc")]
pub struct Rule {
    /// Its name, unique in the policy.
    pub name: String,
    /// When it matches.
    pub when: When,
    /// What it decides.
    pub action: Action,
}

/// The decisions' names in documents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum DecisionName {
    Allow,
    RequireApprovals,
    Block,
}

/// A rule as written: `{"name", "when", "decision", "approvals" | "reason"}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDoc {
    name: String,
    #[serde(default)]
    when: When,
    decision: DecisionName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    approvals: Option<Requirement>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

impl TryFrom<RuleDoc> for Rule {
    type Error = String;
    fn try_from(d: RuleDoc) -> Result<Rule, String> {
        let action = match (d.decision, d.approvals, d.reason) {
            (DecisionName::Allow, None, None) => Action::Allow,
            (DecisionName::RequireApprovals, Some(approvals), None) => Action::RequireApprovals { approvals },
            (DecisionName::Block, None, Some(reason)) => Action::Block { reason },
            (DecisionName::RequireApprovals, None, _) => {
                return Err(format!("rule {:?}: require_approvals needs `approvals`", d.name));
            }
            (DecisionName::Block, _, None) => return Err(format!("rule {:?}: block needs a `reason`", d.name)),
            _ => {
                return Err(format!(
                    "rule {:?}: `approvals` goes only with require_approvals and `reason` only with block",
                    d.name
                ));
            }
        };
        Ok(Rule { name: d.name, when: d.when, action })
    }
}

impl From<Rule> for RuleDoc {
    fn from(r: Rule) -> RuleDoc {
        let (decision, approvals, reason) = match r.action {
            Action::Allow => (DecisionName::Allow, None, None),
            Action::RequireApprovals { approvals } => (DecisionName::RequireApprovals, Some(approvals), None),
            Action::Block { reason } => (DecisionName::Block, None, Some(reason)),
        };
        RuleDoc { name: r.name, when: r.when, decision, approvals, reason }
    }
}

/// A policy: band edges and ordered rules. Its version is the store's, not part of the document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The version this document was activated as (0 until stored).
    #[serde(default, skip_serializing)]
    pub version: u32,
    /// Where the risk bands begin.
    #[serde(default)]
    pub risk_bands: Bands,
    /// The rules, first match wins.
    pub rules: Vec<Rule>,
}

/// Why a policy document is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Not a policy document.
    #[error("not a policy document: {0}")]
    Syntax(String),
    /// A document that cannot be applied.
    #[error("rule {rule:?}: {message}")]
    Invalid {
        /// The rule's name (or position).
        rule: String,
        /// What is wrong.
        message: String,
    },
}

/// The facts a decision reads, gathered by the service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts<'a> {
    /// The withdrawal's id: a [`PolicyApproved`] is for this withdrawal only.
    pub withdrawal: u128,
    /// Who asked.
    pub initiator: Initiator,
    /// The customer's group.
    pub group: &'a str,
    /// The customer's KYC level.
    pub kyc_level: u8,
    /// The asset's code.
    pub asset: &'a str,
    /// The amount in the asset's smallest unit.
    pub amount: u128,
    /// Its value in micro-dollars.
    pub usd_micro: u64,
    /// For each window the policy names ([`Policy::windows`]), the customer's earlier withdrawals within it in
    /// micro-dollars (this one excluded).
    pub window_usd_micro: &'a [(u64, u64)],
    /// The destination.
    pub destination: Destination,
    /// The risk engine's score.
    pub risk_score: u32,
}

/// Proof that the policy allows signing this withdrawal: made only by [`Policy::evaluate`] when the first matching
/// rule allows it, and by [`Policy::approved`] when its approvals meet the rule's requirement. The signer requires
/// one.
///
/// ```compile_fail
/// // Outside this module nobody can make one by hand.
/// let forged = rampart_withdrawal::PolicyApproved { withdrawal: 1, version: 1, rule: String::new() };
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyApproved {
    withdrawal: u128,
    version: u32,
    rule: String,
}

impl PolicyApproved {
    /// The withdrawal it approves.
    pub fn withdrawal(&self) -> u128 {
        self.withdrawal
    }
    /// The policy version that approved it.
    pub fn version(&self) -> u32 {
        self.version
    }
    /// The rule that decided.
    pub fn rule(&self) -> &str {
        &self.rule
    }
}

/// A decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Sign.
    Allow(PolicyApproved),
    /// Wait for approvals.
    Approvals {
        /// The rule that matched.
        rule: String,
        /// Who must approve.
        requirement: Requirement,
    },
    /// Refuse.
    Block {
        /// The rule that matched, or `None` for the catch-all.
        rule: Option<String>,
        /// Why.
        reason: String,
    },
}

/// One staff approval, assigned to a layer: the index of a group in the requirement, in document order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Who approved (`staff:<id>`).
    pub approver: String,
    /// The group (layer) it counts for.
    pub layer: u32,
}

/// Why an approval is not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalRefused {
    /// The person who asked for the withdrawal cannot approve it.
    #[error("the initiator cannot approve their own withdrawal")]
    Initiator,
    /// One person approves once.
    #[error("this person has already approved this withdrawal")]
    AlreadyApproved,
    /// The approvals are complete.
    #[error("the withdrawal already has the approvals it needs")]
    AlreadyMet,
    /// None of the groups still needing approvals has this person as a member.
    #[error("no group still needing approvals has this person as a member")]
    NotInNeededGroup,
}

impl Requirement {
    /// The groups with their thresholds, in document order; a group's index is its layer.
    pub fn layers(&self) -> Vec<(&str, u8)> {
        let mut out = Vec::new();
        self.collect(&mut out);
        out
    }

    fn collect<'a>(&'a self, out: &mut Vec<(&'a str, u8)>) {
        match self {
            Requirement::Group { group, threshold } => out.push((group, *threshold)),
            Requirement::All { all: parts } | Requirement::Any { any: parts } => {
                for p in parts {
                    p.collect(out);
                }
            }
        }
    }

    /// Whether `approvals` meet it.
    pub fn is_met(&self, approvals: &[Approval]) -> bool {
        let counts = self.counts(approvals);
        self.met_from(&counts, &mut 0)
    }

    fn counts(&self, approvals: &[Approval]) -> Vec<u32> {
        let mut counts = vec![0u32; self.layers().len()];
        for a in approvals {
            if let Some(c) = counts.get_mut(a.layer as usize) {
                *c += 1;
            }
        }
        counts
    }

    /// Walks the tree in document order, `next` the index of the next group.
    fn met_from(&self, counts: &[u32], next: &mut usize) -> bool {
        match self {
            Requirement::Group { threshold, .. } => {
                let met = counts[*next] >= u32::from(*threshold);
                *next += 1;
                met
            }
            // Every part is visited (no short circuit): each advances `next` past its groups.
            Requirement::All { all } => {
                let mut met = true;
                for p in all {
                    met &= p.met_from(counts, next);
                }
                met
            }
            Requirement::Any { any } => {
                let mut met = false;
                for p in any {
                    met |= p.met_from(counts, next);
                }
                met
            }
        }
    }

    /// The layers that still need approvals and can still matter: a group short of its threshold, not inside an
    /// `any` that another branch already met.
    fn open_layers(&self, counts: &[u32], next: &mut usize, out: &mut Vec<usize>) -> bool {
        match self {
            Requirement::Group { threshold, .. } => {
                let met = counts[*next] >= u32::from(*threshold);
                if !met {
                    out.push(*next);
                }
                *next += 1;
                met
            }
            Requirement::All { all } => {
                let mut met = true;
                for p in all {
                    met &= p.open_layers(counts, next, out);
                }
                met
            }
            Requirement::Any { any } => {
                let mut inner = Vec::new();
                let mut met = false;
                for p in any {
                    met |= p.open_layers(counts, next, &mut inner);
                }
                if !met {
                    out.extend(inner);
                }
                met
            }
        }
    }

    /// The layer a new approval by `approver`, a member of `groups`, counts for: the first group (in document order)
    /// still needing approvals of which they are a member.
    pub fn assign(
        &self,
        initiator: &str,
        approvals: &[Approval],
        approver: &str,
        groups: &[&str],
    ) -> Result<u32, ApprovalRefused> {
        if approver == initiator {
            return Err(ApprovalRefused::Initiator);
        }
        if approvals.iter().any(|a| a.approver == approver) {
            return Err(ApprovalRefused::AlreadyApproved);
        }
        let counts = self.counts(approvals);
        let mut open = Vec::new();
        if self.open_layers(&counts, &mut 0, &mut open) {
            return Err(ApprovalRefused::AlreadyMet);
        }
        let layers = self.layers();
        open.into_iter()
            .find(|&i| groups.contains(&layers[i].0))
            .map(|i| u32::try_from(i).expect("a requirement has fewer than 2^32 groups"))
            .ok_or(ApprovalRefused::NotInNeededGroup)
    }

    fn validate(&self, rule: &str) -> Result<(), PolicyError> {
        let invalid = |message: &str| PolicyError::Invalid { rule: rule.to_owned(), message: message.to_owned() };
        match self {
            Requirement::Group { group, threshold } => {
                if group.trim().is_empty() {
                    return Err(invalid("an approval group needs a name"));
                }
                if *threshold == 0 {
                    return Err(invalid("an approval threshold is at least 1"));
                }
            }
            Requirement::All { all: parts } | Requirement::Any { any: parts } => {
                if parts.is_empty() {
                    return Err(invalid("`all` and `any` need at least one part"));
                }
                for p in parts {
                    p.validate(rule)?;
                }
            }
        }
        Ok(())
    }
}

fn within<T: PartialOrd>(value: T, at_least: Option<T>, below: Option<T>) -> bool {
    at_least.is_none_or(|m| value >= m) && below.is_none_or(|m| value < m)
}

fn usd(dollars: Option<u64>) -> Option<u64> {
    // Validated policies never overflow here; a saturated bound still compares correctly.
    dollars.map(|d| d.saturating_mul(MICRO_USD))
}

impl When {
    fn matches(&self, facts: &Facts<'_>, bands: &Bands) -> bool {
        let listed = |list: &Option<Vec<String>>, v: &str| list.as_ref().is_none_or(|l| l.iter().any(|x| x == v));
        if !self.initiators.as_ref().is_none_or(|l| l.contains(&facts.initiator))
            || !listed(&self.groups, facts.group)
            || !self.kyc_levels.as_ref().is_none_or(|l| l.contains(&facts.kyc_level))
            || !listed(&self.assets, facts.asset)
            || !within(Units(facts.amount), self.amount_at_least, self.amount_below)
            || !within(facts.usd_micro, usd(self.usd_at_least), usd(self.usd_below))
            || !self.destination.is_none_or(|d| d == facts.destination.kind())
            || !self.risk_bands.as_ref().is_none_or(|l| l.contains(&bands.of(facts.risk_score)))
        {
            return false;
        }
        if self.whitelisted_for_at_least_s.is_some() || self.whitelisted_for_below_s.is_some() {
            match facts.destination {
                Destination::Whitelisted { age_s } => {
                    if !within(age_s, self.whitelisted_for_at_least_s, self.whitelisted_for_below_s) {
                        return false;
                    }
                }
                Destination::OneTime => return false,
            }
        }
        if let Some(window_s) = self.window_s {
            let earlier = facts.window_usd_micro.iter().find(|(w, _)| *w == window_s).map(|&(_, v)| v);
            // A window the service did not sum cannot be judged: the rule does not match, and the catch-all refuses.
            let Some(earlier) = earlier else { return false };
            let total = earlier.saturating_add(facts.usd_micro);
            if !within(total, usd(self.window_usd_at_least), usd(self.window_usd_below)) {
                return false;
            }
        }
        true
    }
}

impl Policy {
    /// Parses and validates a policy document (JSON).
    pub fn from_json(text: &str) -> Result<Policy, PolicyError> {
        let policy: Policy = serde_json::from_str(text).map_err(|e| PolicyError::Syntax(e.to_string()))?;
        policy.validate()?;
        Ok(policy)
    }

    /// The document, as stored and shown.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a policy serialises")
    }

    /// Checks what the types cannot: names, ranges, thresholds, windows.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.rules.is_empty() {
            return Err(PolicyError::Invalid { rule: "-".into(), message: "a policy needs at least one rule".into() });
        }
        if self.rules.len() > RULES_MAX {
            return Err(PolicyError::Invalid {
                rule: "-".into(),
                message: format!("a policy holds at most {RULES_MAX} rules"),
            });
        }
        if self.risk_bands.medium > self.risk_bands.high {
            return Err(PolicyError::Invalid {
                rule: "-".into(),
                message: "the medium risk band must begin at or below the high one".into(),
            });
        }
        let mut names = BTreeSet::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let name = if rule.name.trim().is_empty() { format!("#{}", i + 1) } else { rule.name.clone() };
            let invalid = |message: &str| PolicyError::Invalid { rule: name.clone(), message: message.to_owned() };
            if rule.name.trim().is_empty() {
                return Err(invalid("every rule needs a name"));
            }
            if !names.insert(rule.name.as_str()) {
                return Err(invalid("two rules have this name"));
            }
            let w = &rule.when;
            let empty_list = [
                w.initiators.as_ref().map(Vec::len),
                w.groups.as_ref().map(Vec::len),
                w.kyc_levels.as_ref().map(Vec::len),
                w.assets.as_ref().map(Vec::len),
                w.risk_bands.as_ref().map(Vec::len),
            ]
            .contains(&Some(0));
            if empty_list {
                return Err(invalid("a condition's list is empty, so the rule could never match"));
            }
            if w.kyc_levels.as_ref().is_some_and(|l| l.iter().any(|&k| k > 2)) {
                return Err(invalid("KYC levels are 0, 1 and 2"));
            }
            let usd_max = u64::MAX / MICRO_USD;
            let bounds = [w.usd_at_least, w.usd_below, w.window_usd_at_least, w.window_usd_below];
            if bounds.iter().flatten().any(|&d| d > usd_max) {
                return Err(invalid("a USD bound is too large"));
            }
            let empty = |lo: Option<u64>, hi: Option<u64>| matches!((lo, hi), (Some(l), Some(h)) if l >= h);
            if empty(w.usd_at_least, w.usd_below)
                || empty(w.window_usd_at_least, w.window_usd_below)
                || empty(w.whitelisted_for_at_least_s, w.whitelisted_for_below_s)
                || matches!((w.amount_at_least, w.amount_below), (Some(l), Some(h)) if l >= h)
            {
                return Err(invalid("a range's lower bound is not below its upper bound"));
            }
            let window_bound = w.window_usd_at_least.is_some() || w.window_usd_below.is_some();
            match w.window_s {
                Some(s) if s == 0 || s > WINDOW_S_MAX => {
                    return Err(invalid(&format!("a window is 1 to {WINDOW_S_MAX} seconds")));
                }
                Some(_) if !window_bound => return Err(invalid("a window needs a USD bound")),
                None if window_bound => return Err(invalid("a window's USD bound needs window_s")),
                _ => {}
            }
            match &rule.action {
                Action::RequireApprovals { approvals } => approvals.validate(&rule.name)?,
                Action::Block { reason } if reason.trim().is_empty() => {
                    return Err(invalid("a blocking rule needs a reason"));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The windows (seconds) the rules sum over, for the service to compute [`Facts::window_usd_micro`].
    pub fn windows(&self) -> Vec<u64> {
        let set: BTreeSet<u64> = self.rules.iter().filter_map(|r| r.when.window_s).collect();
        set.into_iter().collect()
    }

    /// The first matching rule, or `None` (the catch-all).
    pub fn matching(&self, facts: &Facts<'_>) -> Option<&Rule> {
        self.rules.iter().find(|r| r.when.matches(facts, &self.risk_bands))
    }

    /// Decides.
    pub fn evaluate(&self, facts: &Facts<'_>) -> Decision {
        match self.matching(facts) {
            None => {
                Decision::Block { rule: None, reason: "no rule of the withdrawal policy allows this withdrawal".into() }
            }
            Some(rule) => match &rule.action {
                Action::Allow => Decision::Allow(PolicyApproved {
                    withdrawal: facts.withdrawal,
                    version: self.version,
                    rule: rule.name.clone(),
                }),
                Action::RequireApprovals { approvals } => {
                    Decision::Approvals { rule: rule.name.clone(), requirement: approvals.clone() }
                }
                Action::Block { reason } => Decision::Block { rule: Some(rule.name.clone()), reason: reason.clone() },
            },
        }
    }

    /// Decides again, with the approvals given so far by people other than `initiator`: the proof to sign when the
    /// matching rule allows or its requirement is met, `None` otherwise. Approvals by the initiator, repeated
    /// approvers and layers the requirement does not have are not counted.
    pub fn approved(&self, facts: &Facts<'_>, initiator: &str, approvals: &[Approval]) -> Option<PolicyApproved> {
        match self.evaluate(facts) {
            Decision::Allow(approved) => Some(approved),
            Decision::Block { .. } => None,
            Decision::Approvals { rule, requirement } => {
                let mut seen = BTreeSet::new();
                let layers = requirement.layers().len();
                let counted: Vec<Approval> = approvals
                    .iter()
                    .filter(|a| a.approver != initiator && (a.layer as usize) < layers)
                    .filter(|a| seen.insert(a.approver.as_str()))
                    .cloned()
                    .collect();
                requirement.is_met(&counted).then_some(PolicyApproved {
                    withdrawal: facts.withdrawal,
                    version: self.version,
                    rule,
                })
            }
        }
    }

    /// The default policy: withdrawals at or above `large_usd` dollars wait for `approvals` distinct members of
    /// the staff group `approver_group`; high-risk withdrawals wait for one; everything else is allowed; an API key
    /// may withdraw only to a whitelisted address.
    pub fn default_for(large_usd: u64, approver_group: &str, approvals: u8) -> Policy {
        let group = |threshold: u8| Action::RequireApprovals {
            approvals: Requirement::Group { group: approver_group.to_owned(), threshold },
        };
        Policy {
            version: 0,
            risk_bands: Bands::default(),
            rules: vec![
                Rule {
                    name: "api-keys-whitelisted-only".into(),
                    when: When {
                        initiators: Some(vec![Initiator::ApiKey]),
                        destination: Some(DestinationKind::OneTime),
                        ..When::default()
                    },
                    action: Action::Block { reason: "an API key may withdraw only to a whitelisted address".into() },
                },
                Rule {
                    name: "large".into(),
                    when: When { usd_at_least: Some(large_usd), ..When::default() },
                    action: group(approvals),
                },
                Rule {
                    name: "high-risk".into(),
                    when: When { risk_bands: Some(vec![RiskBand::High]), ..When::default() },
                    action: group(1),
                },
                Rule { name: "standard".into(), when: When::default(), action: Action::Allow },
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(usd: u64) -> Facts<'static> {
        Facts {
            withdrawal: 7,
            initiator: Initiator::Session,
            group: "retail",
            kyc_level: 1,
            asset: "BTC",
            amount: 1_000_000,
            usd_micro: usd * MICRO_USD,
            window_usd_micro: &[],
            destination: Destination::OneTime,
            risk_score: 0,
        }
    }

    fn approval(who: &str, layer: u32) -> Approval {
        Approval { approver: who.into(), layer }
    }

    #[test]
    fn the_first_matching_rule_decides_and_nothing_matched_is_refused() {
        let policy = Policy::default_for(50_000, "withdrawal_approver", 3);
        policy.validate().unwrap();
        match policy.evaluate(&facts(100)) {
            Decision::Allow(ok) => {
                assert_eq!(ok.rule(), "standard");
                assert_eq!(ok.withdrawal(), 7);
            }
            other => panic!("{other:?}"),
        }
        match policy.evaluate(&facts(50_000)) {
            Decision::Approvals { rule, requirement } => {
                assert_eq!(rule, "large");
                assert_eq!(requirement.layers(), [("withdrawal_approver", 3)]);
            }
            other => panic!("{other:?}"),
        }
        let api = Facts { initiator: Initiator::ApiKey, ..facts(10) };
        assert!(
            matches!(policy.evaluate(&api), Decision::Block { rule: Some(r), .. } if r == "api-keys-whitelisted-only")
        );
        let whitelisted = Facts { destination: Destination::Whitelisted { age_s: 100_000 }, ..api };
        assert!(matches!(policy.evaluate(&whitelisted), Decision::Allow(_)));

        let narrow = Policy::from_json(
            r#"{"rules":[{"name":"small btc","when":{"assets":["BTC"],"usd_below":10},"decision":"allow"}]}"#,
        )
        .unwrap();
        assert!(matches!(narrow.evaluate(&facts(5)), Decision::Allow(_)));
        assert!(matches!(narrow.evaluate(&facts(10)), Decision::Block { rule: None, .. }));
        assert!(matches!(narrow.evaluate(&Facts { asset: "ETH", ..facts(5) }), Decision::Block { rule: None, .. }));
    }

    #[test]
    fn every_condition_narrows() {
        let doc = r#"{"risk_bands":{"medium":10,"high":20},"rules":[{"name":"r","when":{
            "initiators":["session"],"groups":["retail"],"kyc_levels":[1],"assets":["BTC"],
            "amount_at_least":"1000","amount_below":"2000000","usd_at_least":100,"usd_below":1000,
            "window_s":86400,"window_usd_below":5000,"destination":"whitelisted",
            "whitelisted_for_at_least_s":86400,"whitelisted_for_below_s":864000,"risk_bands":["low","medium"]},
            "decision":"allow"}]}"#;
        let policy = Policy::from_json(doc).unwrap();
        assert_eq!(policy.windows(), [86_400]);
        let sums = [(86_400u64, 4_000 * MICRO_USD)];
        let base = Facts {
            window_usd_micro: &sums,
            destination: Destination::Whitelisted { age_s: 100_000 },
            risk_score: 15,
            ..facts(500)
        };
        assert!(matches!(policy.evaluate(&base), Decision::Allow(_)));
        let misses: Vec<Facts<'_>> = vec![
            Facts { initiator: Initiator::ApiKey, ..base.clone() },
            Facts { group: "vip", ..base.clone() },
            Facts { kyc_level: 2, ..base.clone() },
            Facts { asset: "ETH", ..base.clone() },
            Facts { amount: 999, ..base.clone() },
            Facts { amount: 2_000_000, ..base.clone() },
            Facts { usd_micro: 99 * MICRO_USD, ..base.clone() },
            Facts { usd_micro: 1_000 * MICRO_USD, ..base.clone() },
            // 4,600 earlier and 500 now reach the window's 5,000.
            Facts { window_usd_micro: &[(86_400, 4_600 * MICRO_USD)], ..base.clone() },
            Facts { window_usd_micro: &[], ..base.clone() },
            Facts { destination: Destination::OneTime, ..base.clone() },
            Facts { destination: Destination::Whitelisted { age_s: 86_399 }, ..base.clone() },
            Facts { destination: Destination::Whitelisted { age_s: 864_000 }, ..base.clone() },
            Facts { risk_score: 20, ..base.clone() },
        ];
        for (i, f) in misses.iter().enumerate() {
            assert!(matches!(policy.evaluate(f), Decision::Block { rule: None, .. }), "case {i}: {f:?}");
        }
    }

    #[test]
    fn three_distinct_approvers_and_never_the_initiator() {
        let policy = Policy::default_for(50_000, "withdrawal_approver", 3);
        let f = facts(60_000);
        let Decision::Approvals { requirement, .. } = policy.evaluate(&f) else { panic!() };
        let me = "customer:1";
        let mut approvals = Vec::new();
        for who in ["staff:1", "staff:2"] {
            let layer = requirement.assign(me, &approvals, who, &["withdrawal_approver"]).unwrap();
            approvals.push(approval(who, layer));
            assert!(policy.approved(&f, me, &approvals).is_none());
        }
        assert_eq!(
            requirement.assign(me, &approvals, "staff:1", &["withdrawal_approver"]),
            Err(ApprovalRefused::AlreadyApproved)
        );
        assert_eq!(requirement.assign(me, &approvals, me, &["withdrawal_approver"]), Err(ApprovalRefused::Initiator));
        assert_eq!(requirement.assign(me, &approvals, "staff:9", &["support"]), Err(ApprovalRefused::NotInNeededGroup));
        let layer = requirement.assign(me, &approvals, "staff:3", &["withdrawal_approver"]).unwrap();
        approvals.push(approval("staff:3", layer));
        let ok = policy.approved(&f, me, &approvals).expect("three approvals meet the quorum");
        assert_eq!(ok.rule(), "large");
        assert_eq!(
            requirement.assign(me, &approvals, "staff:4", &["withdrawal_approver"]),
            Err(ApprovalRefused::AlreadyMet)
        );

        // Stored approvals are counted again, never trusted: a repeated approver, the initiator or an unknown layer
        // adds nothing.
        let forged = vec![approval("staff:1", 0), approval("staff:1", 0), approval(me, 0), approval("staff:2", 5)];
        assert!(policy.approved(&f, me, &forged).is_none());
    }

    #[test]
    fn and_or_layers_count_each_person_once() {
        let doc = r#"{"rules":[{"name":"two layers","decision":"require_approvals","approvals":
            {"all":[{"group":"ops","threshold":2},{"any":[{"group":"compliance","threshold":1},{"group":"cfo","threshold":1}]}]}}]}"#;
        let policy = Policy::from_json(doc).unwrap();
        let f = facts(10);
        let Decision::Approvals { requirement, .. } = policy.evaluate(&f) else { panic!() };
        assert_eq!(requirement.layers(), [("ops", 2), ("compliance", 1), ("cfo", 1)]);
        let mut a = Vec::new();
        // A person in both ops and compliance fills the first open layer only.
        let l = requirement.assign("c", &a, "s1", &["ops", "compliance"]).unwrap();
        assert_eq!(l, 0);
        a.push(approval("s1", l));
        let l = requirement.assign("c", &a, "s2", &["cfo"]).unwrap();
        assert_eq!(l, 2);
        a.push(approval("s2", l));
        // The `any` is met by the CFO: a compliance officer is not needed any more, only a second ops member.
        assert_eq!(requirement.assign("c", &a, "s3", &["compliance"]), Err(ApprovalRefused::NotInNeededGroup));
        assert!(policy.approved(&f, "c", &a).is_none());
        let l = requirement.assign("c", &a, "s4", &["ops"]).unwrap();
        a.push(approval("s4", l));
        assert!(policy.approved(&f, "c", &a).is_some());
    }

    #[test]
    fn bad_documents_are_refused_with_the_rule_named() {
        let cases = [
            (r#"{"rules":[]}"#, "at least one rule"),
            (r#"{"rules":[{"name":"a","decision":"allow"},{"name":"a","decision":"allow"}]}"#, "two rules"),
            (r#"{"rules":[{"name":"a","when":{"usd_at_least":10,"usd_below":5},"decision":"allow"}]}"#, "lower bound"),
            (r#"{"rules":[{"name":"a","when":{"window_s":60},"decision":"allow"}]}"#, "needs a USD bound"),
            (r#"{"rules":[{"name":"a","when":{"window_usd_below":60},"decision":"allow"}]}"#, "needs window_s"),
            (r#"{"rules":[{"name":"a","when":{"kyc_levels":[3]},"decision":"allow"}]}"#, "levels are 0"),
            (r#"{"rules":[{"name":"a","when":{"assets":[]},"decision":"allow"}]}"#, "could never match"),
            (r#"{"rules":[{"name":"a","decision":"block","reason":" "}]}"#, "needs a reason"),
            (
                r#"{"rules":[{"name":"a","decision":"require_approvals","approvals":{"group":"ops","threshold":0}}]}"#,
                "at least 1",
            ),
            (r#"{"rules":[{"name":"a","decision":"require_approvals","approvals":{"all":[]}}]}"#, "at least one part"),
            (r#"{"rules":[{"name":"a","when":{"amount_at_least":"1.5"},"decision":"allow"}]}"#, "string of digits"),
            (r#"{"rules":[{"name":"a","when":{"colour":"red"},"decision":"allow"}]}"#, "unknown field"),
            (r#"{"rules":[{"name":"a","decision":"maybe"}]}"#, "unknown variant"),
            (r#"{"rules":[{"name":"a","decision":"allow","reason":"x"}]}"#, "only with block"),
            (r#"{"rules":[{"name":"a","decision":"block"}]}"#, "needs a `reason`"),
        ];
        for (doc, expected) in cases {
            let err = Policy::from_json(doc).unwrap_err().to_string();
            assert!(err.contains(expected), "{doc}: {err}");
        }
    }

    #[test]
    fn a_document_round_trips() {
        let policy = Policy::default_for(50_000, "withdrawal_approver", 3);
        let again = Policy::from_json(&policy.to_json()).unwrap();
        assert_eq!(again, policy);
    }
}
