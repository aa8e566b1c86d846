//! The features rules can read: the event's own fields, what the user's profile says about it, and the velocity
//! counters. Every feature is an `i64` in a flat vector: numbers in millionths (so `amount_usd > 10000` and
//! `deviation > 0.5` compare exactly, without floating point), booleans as 0 or 1, names as small codes.

use std::sync::OnceLock;

use rustc_hash::FxHashMap;

use crate::event::{Change, Country, Factor, Kind};
use crate::window::WINDOW_NAMES;

/// The fixed-point scale of numbers: 1.0 is `SCALE`.
pub const SCALE: i64 = 1_000_000;

/// "Never" for the `since_*_s` features: about 31 700 years, in seconds.
pub const NEVER_S: i64 = 1_000_000_000_000;

/// The names a string feature may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Domain {
    /// Event kinds (`"withdrawal"`).
    Kind,
    /// Sign-in factors (`"totp"`).
    Factor,
    /// Security changes (`"password"`).
    Change,
    /// Two-letter country codes (`"DE"`).
    Country,
}

impl Domain {
    /// The code of `name` in this domain, or `None` when it is not one of its names.
    pub fn code(self, name: &str) -> Option<i64> {
        match self {
            Domain::Kind => Kind::ALL.iter().position(|k| k.name() == name).map(|i| i as i64 + 1),
            Domain::Factor => Factor::ALL.iter().position(|f| f.name() == name).map(|i| i as i64 + 1),
            Domain::Change => Change::ALL.iter().position(|c| c.name() == name).map(|i| i as i64 + 1),
            Domain::Country => (name.len() == 2 && name.bytes().all(|b| b.is_ascii_uppercase()))
                .then(|| Country::parse(name).map(|c| i64::from(c.code())))
                .flatten(),
        }
    }

    /// The name of `code` in this domain (`"none"` for 0).
    pub fn name(self, code: i64) -> String {
        let pick = |names: &[&'static str]| {
            usize::try_from(code - 1).ok().and_then(|i| names.get(i).copied()).unwrap_or("none").to_owned()
        };
        match self {
            Domain::Kind => pick(&Kind::ALL.map(Kind::name)),
            Domain::Factor => pick(&Factor::ALL.map(Factor::name)),
            Domain::Change => pick(&Change::ALL.map(Change::name)),
            Domain::Country => u16::try_from(code)
                .ok()
                .filter(|c| *c != 0)
                .map(|c| String::from_utf8_lossy(&c.to_be_bytes()).into_owned())
                .unwrap_or_else(|| "none".to_owned()),
        }
    }
}

/// A feature's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    /// A number in millionths.
    Num,
    /// 0 or 1.
    Bool,
    /// A code of a domain.
    Str(Domain),
}

/// The features of an event, by index.
macro_rules! base_features {
    ($( $id:ident = $name:literal : $ty:expr, $doc:literal; )*) => {
        /// Indices of the event and profile features.
        #[allow(missing_docs)]
        pub mod f {
            base_features!(@idx 0usize; $($id)*);
        }
        const BASE: &[(&str, Type, &str)] = &[$(($name, $ty, $doc)),*];
    };
    (@idx $n:expr; $id:ident $($rest:ident)*) => {
        pub const $id: usize = $n;
        base_features!(@idx $n + 1usize; $($rest)*);
    };
    (@idx $n:expr;) => {
        pub const COUNT: usize = $n;
    };
}

base_features! {
    KIND = "kind": Type::Str(Domain::Kind), "the event's kind";
    SUCCESS = "success": Type::Bool, "whether a sign-in step succeeded";
    FACTOR = "factor": Type::Str(Domain::Factor), "the sign-in step's factor";
    CHANGE = "change": Type::Str(Domain::Change), "which security setting changed";
    COUNTRY = "country": Type::Str(Domain::Country), "the client's country (\"none\" when unknown)";
    AMOUNT_USD = "amount_usd": Type::Num, "the value moved, in dollars";
    HOUR = "hour": Type::Num, "the hour of the day (UTC)";
    HISTORY = "history": Type::Num, "sign-ins learned from: how much history there is to compare with";
    EVENTS_SEEN = "events_seen": Type::Num, "events seen for this user before this one";
    HAS_IP = "has_ip": Type::Bool, "whether the client's address is known";
    HAS_DEVICE = "has_device": Type::Bool, "whether the client's device is known to the service";
    HAS_COUNTRY = "has_country": Type::Bool, "whether the client's country is known";
    IP_KNOWN = "ip_known": Type::Bool, "the address is one this user has used";
    NETWORK_KNOWN = "network_known": Type::Bool, "the address's /24 (/48) is one this user has used";
    DEVICE_KNOWN = "device_known": Type::Bool, "the device is one this user has used";
    COUNTRY_KNOWN = "country_known": Type::Bool, "the country is one this user has been in";
    IP_NEW_SINCE_SIGN_IN = "ip_new_since_sign_in": Type::Bool, "the address was unknown before the last sign-in";
    HOUR_USUAL = "hour_usual": Type::Bool, "the user signs in around this hour";
    DESTINATION_KNOWN = "destination_known": Type::Bool, "the withdrawal's destination was used before";
    AMOUNT_DEVIATIONS = "amount_deviations": Type::Num, "how many mean deviations the amount lies from the user's mean";
    AMOUNT_MEAN_USD = "amount_mean_usd": Type::Num, "the user's running mean amount for this kind";
    DEVIATION = "deviation": Type::Num, "behavioural deviation from the user's history, 0 to 1";
    SINCE_SIGN_IN_S = "since_sign_in_s": Type::Num, "seconds since the last sign-in";
    SINCE_SECURITY_CHANGE_S = "since_security_change_s": Type::Num, "seconds since the last security change";
    SINCE_NEW_DEVICE_ABROAD_S = "since_new_device_abroad_s": Type::Num,
        "seconds since a sign-in from a new device in a new country";
    TRAVEL_KMH = "travel_kmh": Type::Num, "speed implied by the last event's country and this one's";
    ACCOUNT_AGE_S = "account_age_s": Type::Num, "seconds since the user's first event";
}

/// The scopes of velocity counters and what each counts; the features are `<scope>.<metric>_<window>`.
pub const VELOCITY: &[(&str, &[&str])] = &[
    (
        "user",
        &[
            "events",
            "sign_ins",
            "failed_sign_ins",
            "api_requests",
            "security_changes",
            "withdrawals",
            "withdrawal_usd",
            "deposits",
            "deposit_usd",
        ],
    ),
    ("ip", &["events", "sign_ins", "failed_sign_ins", "api_requests", "accounts"]),
    ("device", &["events", "failed_sign_ins", "accounts"]),
    ("destination", &["withdrawals", "withdrawal_usd", "accounts"]),
    ("api_key", &["requests"]),
];

/// The index of the first velocity feature.
pub const VELOCITY_BASE: usize = f::COUNT;

/// The index of velocity feature (scope, metric, window).
pub const fn velocity_index(scope: usize, metric: usize, window: usize) -> usize {
    let mut before = 0;
    let mut s = 0;
    while s < scope {
        before += VELOCITY[s].1.len();
        s += 1;
    }
    VELOCITY_BASE + (before + metric) * WINDOW_NAMES.len() + window
}

/// How many features there are.
pub const COUNT: usize = velocity_index(VELOCITY.len(), 0, 0);

/// One feature's description.
#[derive(Clone, Debug)]
pub struct FeatureDef {
    /// The name rules use.
    pub name: String,
    /// Its type.
    pub ty: Type,
    /// What it means.
    pub doc: String,
}

struct Catalogue {
    defs: Vec<FeatureDef>,
    by_name: FxHashMap<String, usize>,
}

fn catalogue() -> &'static Catalogue {
    static CATALOGUE: OnceLock<Catalogue> = OnceLock::new();
    CATALOGUE.get_or_init(|| {
        let mut defs: Vec<FeatureDef> = BASE
            .iter()
            .map(|(name, ty, doc)| FeatureDef { name: (*name).to_owned(), ty: *ty, doc: (*doc).to_owned() })
            .collect();
        for (scope, metrics) in VELOCITY {
            for metric in *metrics {
                for (w, window) in WINDOW_NAMES.iter().enumerate() {
                    let what = if metric.ends_with("_usd") { "dollars" } else { "count" };
                    defs.push(FeatureDef {
                        name: format!("{scope}.{metric}_{window}"),
                        ty: Type::Num,
                        doc: format!("{what} of {metric} by this {scope} in the last {}", WINDOW_NAMES[w]),
                    });
                }
            }
        }
        debug_assert_eq!(defs.len(), COUNT);
        let by_name = defs.iter().enumerate().map(|(i, d)| (d.name.clone(), i)).collect();
        Catalogue { defs, by_name }
    })
}

/// Looks a feature up by name.
pub fn lookup(name: &str) -> Option<(usize, Type)> {
    let c = catalogue();
    c.by_name.get(name).map(|&i| (i, c.defs[i].ty))
}

/// Every feature, in index order.
pub fn all() -> &'static [FeatureDef] {
    &catalogue().defs
}

/// Formats a feature's value for people: numbers as decimals, booleans as `true`/`false`, codes as their names.
pub fn display(index: usize, value: i64) -> String {
    match all().get(index).map(|d| d.ty) {
        Some(Type::Bool) => (value != 0).to_string(),
        Some(Type::Str(domain)) => domain.name(value),
        _ => display_num(value),
    }
}

/// A number in millionths as a shortest decimal (`0.5`, `10000`, `-3.25`).
pub fn display_num(value: i64) -> String {
    if value >= NEVER_S * SCALE {
        return "never".to_owned();
    }
    let sign = if value < 0 { "-" } else { "" };
    let v = value.unsigned_abs();
    let (whole, frac) = (v / SCALE as u64, v % SCALE as u64);
    if frac == 0 {
        format!("{sign}{whole}")
    } else {
        let digits = format!("{frac:06}");
        format!("{sign}{whole}.{}", digits.trim_end_matches('0'))
    }
}

/// A feature vector.
pub type Features = [i64; COUNT];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_to_their_indices() {
        assert_eq!(lookup("deviation"), Some((f::DEVIATION, Type::Num)));
        assert_eq!(lookup("kind"), Some((f::KIND, Type::Str(Domain::Kind))));
        let (i, _) = lookup("ip.failed_sign_ins_1m").unwrap();
        assert_eq!(i, velocity_index(1, 2, 0));
        let (last, _) = lookup("api_key.requests_24h").unwrap();
        assert_eq!(last, COUNT - 1);
        assert!(lookup("ip.failed_sign_ins_2m").is_none());
    }

    #[test]
    fn codes_round_trip() {
        for d in [Domain::Kind, Domain::Factor, Domain::Change] {
            let code = d.code(match d {
                Domain::Kind => "withdrawal",
                Domain::Factor => "passkey",
                _ => "email",
            });
            assert!(code.is_some());
            assert_ne!(d.name(code.unwrap()), "none");
        }
        assert_eq!(Domain::Country.name(Domain::Country.code("DE").unwrap()), "DE");
        assert_eq!(Domain::Country.code("de"), None, "country codes in rules are upper case");
        assert_eq!(display_num(500_000), "0.5");
        assert_eq!(display_num(10_000 * SCALE), "10000");
        assert_eq!(display_num(-3_250_000), "-3.25");
    }
}
