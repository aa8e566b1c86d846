//! Rule sets: a TOML file of named rules, each a condition in the rule language ([`crate::expr`]) with an outcome
//! and/or a score, enforced or in shadow mode; the weights of the behavioural deviation; and the score thresholds.
//! A rule set carries a version, and every decision names the version that made it.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::event::Kind;
use crate::expr::{Condition, ExprError, parse_number};
use crate::features::SCALE;

/// What a decision asks the service to do, from least to most severe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Go ahead.
    Allow,
    /// Ask for a fresh second factor (or, at sign-in, an emailed confirmation) first.
    Challenge,
    /// Hold the item (a withdrawal) until a person has reviewed it.
    Hold,
    /// Freeze the account until a person has reviewed it.
    Freeze,
    /// Refuse.
    Block,
}

impl Outcome {
    /// The name in rule files and decisions.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Challenge => "challenge",
            Outcome::Hold => "hold",
            Outcome::Freeze => "freeze",
            Outcome::Block => "block",
        }
    }
}

/// Whether a rule's outcome counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Evaluated, recorded and enforced.
    #[default]
    Enforce,
    /// Evaluated and recorded, never enforced: to try a rule on live traffic.
    Shadow,
}

/// An error in a rule file.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The file is not valid TOML of the expected shape.
    #[error("the rule file is not valid: {0}")]
    Syntax(String),
    /// A rule's condition does not compile.
    #[error("rule {rule:?}: {source}")]
    Condition {
        /// The rule.
        rule: String,
        /// The error.
        source: ExprError,
    },
    /// Anything else wrong with the file's content.
    #[error("{0}")]
    Invalid(String),
}

/// A decimal written in quotes (`"0.25"`) or as an integer, in millionths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decimal(pub i64);

impl<'de> Deserialize<'de> for Decimal {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Text(String),
            Float(toml::Value),
        }
        match Raw::deserialize(d)? {
            Raw::Int(i) => i.checked_mul(SCALE).map(Decimal).ok_or_else(|| serde::de::Error::custom("too large")),
            Raw::Text(s) => parse_number(&s).map(Decimal).map_err(serde::de::Error::custom),
            Raw::Float(v) => Err(serde::de::Error::custom(format!(
                "write decimals in quotes so they are exact: \"{v}\" rather than {v}"
            ))),
        }
    }
}

/// The weights of the behavioural deviation: each unfamiliar aspect of an event adds its weight; the sum is capped
/// at 1.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviationFile {
    /// A device the user never used.
    pub new_device: Decimal,
    /// A network (/24, /48) the user never used.
    pub new_network: Decimal,
    /// A new address inside a known network.
    pub new_ip: Decimal,
    /// A country the user was never in.
    pub new_country: Decimal,
    /// An hour the user does not sign in at.
    pub unusual_hour: Decimal,
    /// An amount far from the user's usual amounts.
    pub unusual_amount: Decimal,
    /// How many mean deviations from the mean make an amount unusual.
    pub unusual_amount_deviations: Decimal,
    /// Sign-ins needed before there is a history to deviate from.
    pub min_history: u32,
}

/// The deviation's weights, in millionths.
#[derive(Clone, Copy, Debug)]
pub struct Deviation {
    /// See [`DeviationFile`].
    pub new_device: i64,
    /// See [`DeviationFile`].
    pub new_network: i64,
    /// See [`DeviationFile`].
    pub new_ip: i64,
    /// See [`DeviationFile`].
    pub new_country: i64,
    /// See [`DeviationFile`].
    pub unusual_hour: i64,
    /// See [`DeviationFile`].
    pub unusual_amount: i64,
    /// See [`DeviationFile`].
    pub unusual_amount_deviations: i64,
    /// See [`DeviationFile`].
    pub min_history: u32,
}

/// Score thresholds: a decision's score (the sum of its enforced rules' scores) at or above a threshold raises its
/// outcome to that level.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scores {
    /// Challenge at this score.
    pub challenge: u32,
    /// Hold at this score.
    pub hold: u32,
    /// Freeze at this score.
    pub freeze: u32,
    /// Block at this score (absent: scores never block).
    #[serde(default)]
    pub block: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    on: Vec<String>,
    when: String,
    #[serde(default)]
    outcome: Option<Outcome>,
    #[serde(default)]
    score: u32,
    #[serde(default)]
    mode: Mode,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSetFile {
    name: String,
    version: u32,
    deviation: DeviationFile,
    scores: Scores,
    #[serde(default, rename = "rule")]
    rules: Vec<RuleFile>,
}

/// A compiled rule.
#[derive(Clone, Debug)]
pub struct Rule {
    /// Its name (unique in the set).
    pub name: Arc<str>,
    /// What it is for.
    pub description: Arc<str>,
    /// The kinds of event it looks at, as a bit set of [`Kind::bit`].
    pub on: u16,
    /// Its condition.
    pub when: Condition,
    /// Its outcome when it matches (`Allow` when it only scores).
    pub outcome: Outcome,
    /// What it adds to the score when it matches.
    pub score: u32,
    /// Enforced or shadow.
    pub mode: Mode,
}

/// A compiled rule set.
#[derive(Clone, Debug)]
pub struct RuleSet {
    /// Its name.
    pub name: String,
    /// Its version; a reload must not go backwards.
    pub version: u32,
    /// The deviation's weights.
    pub deviation: Deviation,
    /// The score thresholds.
    pub scores: Scores,
    /// The rules, in file order.
    pub rules: Vec<Rule>,
}

/// The default rule set, with the behaviours the exchange's security pages promise.
pub const DEFAULT_RULES: &str = include_str!("../rules/default.toml");

impl RuleSet {
    /// Parses and compiles a rule file.
    pub fn parse(text: &str) -> Result<RuleSet, RulesError> {
        let file: RuleSetFile = toml::from_str(text).map_err(|e| RulesError::Syntax(e.to_string()))?;
        let d = &file.deviation;
        let deviation = Deviation {
            new_device: d.new_device.0,
            new_network: d.new_network.0,
            new_ip: d.new_ip.0,
            new_country: d.new_country.0,
            unusual_hour: d.unusual_hour.0,
            unusual_amount: d.unusual_amount.0,
            unusual_amount_deviations: d.unusual_amount_deviations.0,
            min_history: d.min_history,
        };
        for (name, w) in [
            ("new_device", deviation.new_device),
            ("new_network", deviation.new_network),
            ("new_ip", deviation.new_ip),
            ("new_country", deviation.new_country),
            ("unusual_hour", deviation.unusual_hour),
            ("unusual_amount", deviation.unusual_amount),
        ] {
            if !(0..=SCALE).contains(&w) {
                return Err(RulesError::Invalid(format!("deviation.{name} must be between 0 and 1")));
            }
        }
        let s = file.scores;
        if !(s.challenge <= s.hold && s.hold <= s.freeze && s.block.is_none_or(|b| s.freeze <= b)) {
            return Err(RulesError::Invalid("scores must rise: challenge ≤ hold ≤ freeze ≤ block".into()));
        }
        let mut rules = Vec::with_capacity(file.rules.len());
        for r in file.rules {
            let valid_name = !r.name.is_empty()
                && r.name.len() <= 64
                && r.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
            if !valid_name {
                return Err(RulesError::Invalid(format!(
                    "rule name {:?}: use 1 to 64 lower-case letters, digits, '_' or '-'",
                    r.name
                )));
            }
            if rules.iter().any(|x: &Rule| *x.name == *r.name) {
                return Err(RulesError::Invalid(format!("two rules are named {:?}", r.name)));
            }
            let mut on = 0u16;
            for k in &r.on {
                let kind = Kind::ALL
                    .iter()
                    .find(|x| x.name() == k)
                    .ok_or_else(|| RulesError::Invalid(format!("rule {:?}: {k:?} is not a kind of event", r.name)))?;
                on |= kind.bit();
            }
            if r.on.is_empty() {
                on = u16::MAX;
            }
            let outcome = r.outcome.unwrap_or(Outcome::Allow);
            if outcome == Outcome::Allow && r.score == 0 && r.mode == Mode::Enforce {
                return Err(RulesError::Invalid(format!(
                    "rule {:?} has neither an outcome above allow nor a score: it would never change anything",
                    r.name
                )));
            }
            let when =
                Condition::compile(&r.when).map_err(|source| RulesError::Condition { rule: r.name.clone(), source })?;
            rules.push(Rule {
                name: r.name.into(),
                description: r.description.into(),
                on,
                when,
                outcome,
                score: r.score,
                mode: r.mode,
            });
        }
        Ok(RuleSet { name: file.name, version: file.version, deviation, scores: s, rules })
    }

    /// The built-in default rule set.
    pub fn default_rules() -> RuleSet {
        // The default file is part of the binary and tested; failing to compile it is a bug.
        RuleSet::parse(DEFAULT_RULES).unwrap_or_else(|e| panic!("the default rule set does not compile: {e}"))
    }

    /// The outcome a score reaches.
    pub fn outcome_of_score(&self, score: u32) -> Outcome {
        let s = &self.scores;
        if s.block.is_some_and(|b| score >= b) {
            Outcome::Block
        } else if score >= s.freeze {
            Outcome::Freeze
        } else if score >= s.hold {
            Outcome::Hold
        } else if score >= s.challenge {
            Outcome::Challenge
        } else {
            Outcome::Allow
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = r#"
name = "t"
version = 2
[deviation]
new_device = "0.25"
new_network = "0.2"
new_ip = "0.05"
new_country = "0.3"
unusual_hour = "0.1"
unusual_amount = "0.2"
unusual_amount_deviations = 3
min_history = 3
[scores]
challenge = 50
hold = 80
freeze = 100
"#;

    #[test]
    fn the_default_rules_compile() {
        let r = RuleSet::default_rules();
        assert!(r.rules.len() >= 6, "{}", r.rules.len());
        assert_eq!(r.deviation.new_device, 250_000);
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        for (extra, needle) in [
            ("[[rule]]\nname = \"x\"\nwhen = \"deviaton > 1\"\noutcome = \"block\"\n", "rule \"x\": at column 1"),
            ("[[rule]]\nname = \"x\"\nwhen = \"true\"\noutcome = \"explode\"\n", "unknown variant"),
            ("[[rule]]\nname = \"x\"\nwhen = \"true\"\n", "neither an outcome"),
            ("[[rule]]\nname = \"X Y\"\nwhen = \"true\"\noutcome = \"block\"\n", "rule name"),
            ("[[rule]]\nname = \"x\"\non = [\"lunch\"]\nwhen = \"true\"\noutcome = \"block\"\n", "not a kind"),
            (
                "[[rule]]\nname = \"x\"\nwhen = \"true\"\noutcome = \"block\"\n[[rule]]\nname = \"x\"\nwhen = \"true\"\noutcome = \"block\"\n",
                "two rules",
            ),
            ("[[rule]]\nname = \"x\"\nwhen = \"true\"\noutcome = \"block\"\ntypo = 1\n", "unknown field"),
        ] {
            let e = RuleSet::parse(&format!("{HEAD}{extra}")).expect_err(extra);
            assert!(e.to_string().contains(needle), "{extra}: {e}");
        }
        let floats = HEAD.replace("\"0.25\"", "0.25");
        assert!(RuleSet::parse(&floats).unwrap_err().to_string().contains("quotes"));
        let falling = HEAD.replace("hold = 80", "hold = 10");
        assert!(RuleSet::parse(&falling).unwrap_err().to_string().contains("scores must rise"));
    }

    #[test]
    fn scores_map_to_outcomes() {
        let r = RuleSet::parse(HEAD).unwrap();
        assert_eq!(r.outcome_of_score(49), Outcome::Allow);
        assert_eq!(r.outcome_of_score(50), Outcome::Challenge);
        assert_eq!(r.outcome_of_score(99), Outcome::Hold);
        assert_eq!(r.outcome_of_score(1000), Outcome::Freeze);
    }
}
