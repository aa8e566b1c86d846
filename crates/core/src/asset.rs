//! Assets: their codes, their decimal places and the registry of the assets an exchange supports.
//!
//! An [`AssetCode`] is parsed once at the boundary and is `Copy` afterwards, so hot paths such as
//! the ledger compare and hash it without allocating. An [`AssetRegistry`] is built either from
//! the built-in [`AssetRegistry::defaults`] or from [`AssetConfig`] tables read from a config file,
//! and refuses a configuration it cannot serve exactly.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Amount;
use crate::decimal::{AmountParseError, format_amount, parse_amount};

/// Why a string is not an asset code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssetCodeError {
    /// The string was empty.
    #[error("an asset code must not be empty")]
    Empty,
    /// The string was longer than [`AssetCode::LEN_MAX_BYTES`].
    #[error("an asset code must be at most {max} characters long, not {len}", max = AssetCode::LEN_MAX_BYTES)]
    TooLong {
        /// The length of the refused string in characters.
        len: usize,
    },
    /// The string held a lowercase letter. Codes are not uppercased on the caller's behalf, so
    /// that exactly one spelling of each code exists everywhere.
    #[error("an asset code must not contain lowercase letters, found {0:?}")]
    Lowercase(char),
    /// The string held something other than an ASCII uppercase letter or digit.
    #[error("an asset code may only contain A-Z and 0-9, found {0:?}")]
    InvalidCharacter(char),
}

/// The ticker of an asset, such as `BTC`: 1 to 12 ASCII uppercase letters and digits.
///
/// The bytes are stored inline rather than in a `String` so that the code is `Copy` and costs no
/// allocation to clone, compare or hash in hot loops. It serializes as a plain string, and
/// deserializing goes through [`FromStr`], so an invalid code never gets in through JSON or TOML.
//
// The invariant is that `bytes[..len]` holds only A-Z and 0-9 and the rest of `bytes` is zero. The
// derived `Ord` therefore agrees with the order of the strings: a shorter code that is a prefix of
// a longer one is padded with zero, which sorts before every letter and digit. The derived `Eq`
// and `Hash` agree with the strings too, because the padding is always the same.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AssetCode {
    bytes: [u8; AssetCode::LEN_MAX_BYTES],
    len: u8,
}

impl AssetCode {
    /// The longest code accepted, in bytes (which are also characters, since codes are ASCII).
    pub const LEN_MAX_BYTES: usize = 12;

    /// Bitcoin.
    pub const BTC: AssetCode = AssetCode::from_static("BTC");
    /// Ether.
    pub const ETH: AssetCode = AssetCode::from_static("ETH");
    /// Tether USD.
    pub const USDT: AssetCode = AssetCode::from_static("USDT");

    /// Parses an asset code; the same as [`str::parse`].
    pub fn new(s: &str) -> Result<AssetCode, AssetCodeError> {
        s.parse()
    }

    /// The code as a string, such as `"BTC"`.
    pub fn as_str(&self) -> &str {
        // Every constructor admits ASCII only, so this cannot fail; the fallback exists only so
        // that there is no panic path here.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }

    /// Builds a code for a constant. It is evaluated at compile time only (in `const` items), so an
    /// invalid literal fails the build instead of panicking at run time.
    const fn from_static(s: &str) -> AssetCode {
        let src = s.as_bytes();
        assert!(!src.is_empty() && src.len() <= AssetCode::LEN_MAX_BYTES);
        let mut bytes = [0u8; AssetCode::LEN_MAX_BYTES];
        let mut i = 0;
        while i < src.len() {
            assert!(src[i].is_ascii_uppercase() || src[i].is_ascii_digit());
            bytes[i] = src[i];
            i += 1;
        }
        // The length is at most 12, checked above, so it fits in a u8.
        AssetCode { bytes, len: src.len() as u8 }
    }
}

impl FromStr for AssetCode {
    type Err = AssetCodeError;

    fn from_str(s: &str) -> Result<AssetCode, AssetCodeError> {
        if s.is_empty() {
            return Err(AssetCodeError::Empty);
        }
        // Characters are checked before the length, so that a length is only ever reported for a
        // string of valid characters, where bytes and characters are the same thing.
        for c in s.chars() {
            if c.is_lowercase() {
                return Err(AssetCodeError::Lowercase(c));
            }
            if !(c.is_ascii_uppercase() || c.is_ascii_digit()) {
                return Err(AssetCodeError::InvalidCharacter(c));
            }
        }
        let src = s.as_bytes();
        let Some(len) = u8::try_from(src.len()).ok().filter(|&n| usize::from(n) <= Self::LEN_MAX_BYTES) else {
            return Err(AssetCodeError::TooLong { len: src.len() });
        };
        let mut bytes = [0u8; AssetCode::LEN_MAX_BYTES];
        bytes[..src.len()].copy_from_slice(src);
        Ok(AssetCode { bytes, len })
    }
}

impl TryFrom<&str> for AssetCode {
    type Error = AssetCodeError;

    fn try_from(s: &str) -> Result<AssetCode, AssetCodeError> {
        s.parse()
    }
}

impl fmt::Display for AssetCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for AssetCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AssetCode({:?})", self.as_str())
    }
}

impl AsRef<str> for AssetCode {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Serialize for AssetCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for AssetCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<AssetCode, D::Error> {
        // A visitor rather than `String::deserialize` so that no allocation is made for a code.
        struct V;
        impl Visitor<'_> for V {
            type Value = AssetCode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an asset code: 1 to 12 ASCII uppercase letters and digits")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<AssetCode, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(V)
    }
}

/// An asset the exchange supports, as validated by an [`AssetRegistry`].
///
/// It deliberately has no `Deserialize`: an asset read from outside arrives as an [`AssetConfig`]
/// and becomes an `Asset` only through [`AssetRegistry::from_configs`], which checks it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Asset {
    /// The ticker, such as `BTC`.
    pub code: AssetCode,
    /// How many decimal places the asset's unit has: one unit is `10^decimals` smallest units
    /// (8 for BTC, whose smallest unit is the satoshi). At most 38, so that a unit fits in `u128`.
    pub decimals: u8,
    /// The chain the asset lives on, such as `bitcoin` or `ethereum`.
    pub chain: String,
    /// How many confirmations a deposit needs before it is credited.
    pub confirmations: u32,
}

impl Asset {
    /// Parses a decimal string in this asset's unit into smallest units; see [`parse_amount`].
    pub fn parse_amount(&self, s: &str) -> Result<Amount, AmountParseError> {
        parse_amount(s, self.decimals)
    }

    /// Formats smallest units as an exact decimal string in this asset's unit; see
    /// [`format_amount`].
    pub fn format_amount(&self, amount: Amount) -> String {
        format_amount(amount, self.decimals)
    }
}

/// One asset as written in a configuration file, before validation: an `[[assets]]` table in TOML.
///
/// ```toml
/// [[assets]]
/// code = "BTC"
/// decimals = 8
/// chain = "bitcoin"
/// confirmations = 3
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
// A misspelt key in a security-relevant file should be an error, not a silently ignored line.
#[serde(deny_unknown_fields)]
pub struct AssetConfig {
    /// The ticker, which must be a valid [`AssetCode`].
    pub code: String,
    /// How many decimal places the asset's unit has, at most [`AssetRegistry::DECIMALS_MAX`].
    pub decimals: u8,
    /// The chain the asset lives on.
    pub chain: String,
    /// How many confirmations a deposit needs before it is credited.
    pub confirmations: u32,
}

impl From<&Asset> for AssetConfig {
    fn from(asset: &Asset) -> AssetConfig {
        AssetConfig {
            code: asset.code.to_string(),
            decimals: asset.decimals,
            chain: asset.chain.clone(),
            confirmations: asset.confirmations,
        }
    }
}

/// Why a list of [`AssetConfig`]s is not a valid registry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssetRegistryError {
    /// The list was empty: an exchange without assets cannot do anything.
    #[error("no assets are configured")]
    Empty,
    /// A code was not a valid [`AssetCode`].
    #[error("invalid asset code {code:?}: {reason}")]
    InvalidCode {
        /// The code as configured.
        code: String,
        /// What is wrong with it.
        reason: AssetCodeError,
    },
    /// An asset had more decimals than a `u128` can represent a whole unit of.
    #[error("asset {code} has {decimals} decimals, at most {max} are supported", max = AssetRegistry::DECIMALS_MAX)]
    TooManyDecimals {
        /// The asset.
        code: AssetCode,
        /// The decimals as configured.
        decimals: u8,
    },
    /// The same code was configured twice.
    #[error("asset {code} is configured more than once")]
    DuplicateCode {
        /// The repeated code.
        code: AssetCode,
    },
}

/// A requested asset code that the registry does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown asset {code:?}")]
pub struct UnknownAsset {
    /// The code as requested, which may not even be a valid code.
    pub code: String,
}

/// The assets the exchange supports, keyed and iterated by code.
///
/// A registry is never empty and every asset in it has at most [`AssetRegistry::DECIMALS_MAX`]
/// decimals; both are checked when it is built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssetRegistry {
    // A sorted map, so that iteration order is stable across runs and processes.
    assets: BTreeMap<AssetCode, Asset>,
}

impl AssetRegistry {
    /// The most decimals an asset may have: 10^38 is the largest power of ten in a `u128`, so
    /// beyond that not even one whole unit could be held in an [`Amount`].
    pub const DECIMALS_MAX: u8 = 38;

    /// The built-in assets: BTC (8 decimals, `bitcoin`, 3 confirmations), ETH (18, `ethereum`, 12)
    /// and USDT (6, `ethereum`, 12).
    pub fn defaults() -> AssetRegistry {
        let assets = [
            (AssetCode::BTC, 8, "bitcoin", 3),
            (AssetCode::ETH, 18, "ethereum", 12),
            (AssetCode::USDT, 6, "ethereum", 12),
        ]
        .into_iter()
        .map(|(code, decimals, chain, confirmations)| {
            let chain = chain.to_owned();
            (code, Asset { code, decimals, chain, confirmations })
        })
        .collect();
        AssetRegistry { assets }
    }

    /// Builds a registry from configuration, refusing an empty list, an invalid code, more than
    /// [`AssetRegistry::DECIMALS_MAX`] decimals, or a code that appears twice. The first problem
    /// found, in the order of the list, is reported.
    pub fn from_configs(configs: &[AssetConfig]) -> Result<AssetRegistry, AssetRegistryError> {
        if configs.is_empty() {
            return Err(AssetRegistryError::Empty);
        }
        let mut assets = BTreeMap::new();
        for config in configs {
            let code = config
                .code
                .parse::<AssetCode>()
                .map_err(|reason| AssetRegistryError::InvalidCode { code: config.code.clone(), reason })?;
            if config.decimals > Self::DECIMALS_MAX {
                return Err(AssetRegistryError::TooManyDecimals { code, decimals: config.decimals });
            }
            let asset = Asset {
                code,
                decimals: config.decimals,
                chain: config.chain.clone(),
                confirmations: config.confirmations,
            };
            if assets.insert(code, asset).is_some() {
                return Err(AssetRegistryError::DuplicateCode { code });
            }
        }
        Ok(AssetRegistry { assets })
    }

    /// The asset with this code, if the registry has it.
    pub fn get(&self, code: AssetCode) -> Option<&Asset> {
        self.assets.get(&code)
    }

    /// The asset with this code, given as untrusted text such as a URL segment. Matching is exact:
    /// `btc` is not `BTC`, and a string that is not even a valid code is simply unknown.
    pub fn lookup(&self, code: &str) -> Result<&Asset, UnknownAsset> {
        code.parse::<AssetCode>().ok().and_then(|c| self.get(c)).ok_or_else(|| UnknownAsset { code: code.to_owned() })
    }

    /// Every asset, in order of code.
    pub fn iter(&self) -> impl Iterator<Item = &Asset> {
        self.assets.values()
    }
}

impl Default for AssetRegistry {
    /// The same as [`AssetRegistry::defaults`].
    fn default() -> AssetRegistry {
        AssetRegistry::defaults()
    }
}

impl<'a> IntoIterator for &'a AssetRegistry {
    type Item = &'a Asset;
    type IntoIter = std::collections::btree_map::Values<'a, AssetCode, Asset>;

    fn into_iter(self) -> Self::IntoIter {
        self.assets.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn code(s: &str) -> AssetCode {
        s.parse().unwrap()
    }

    fn config(code: &str, decimals: u8) -> AssetConfig {
        AssetConfig { code: code.to_owned(), decimals, chain: "testchain".to_owned(), confirmations: 1 }
    }

    #[test]
    fn codes_parse_and_display() {
        for s in ["BTC", "ETH", "USDT", "1INCH", "A", "ABCDEFGHIJ12", "0"] {
            let c = code(s);
            assert_eq!(c.as_str(), s);
            assert_eq!(c.to_string(), s);
            assert_eq!(AssetCode::new(s), Ok(c));
            assert_eq!(AssetCode::try_from(s), Ok(c));
        }
        assert_eq!(format!("{:?}", code("BTC")), "AssetCode(\"BTC\")");
        assert_eq!(AssetCode::BTC, code("BTC"));
        assert_eq!(AssetCode::ETH, code("ETH"));
        assert_eq!(AssetCode::USDT, code("USDT"));
    }

    #[test]
    fn bad_codes_are_refused_with_a_reason() {
        assert_eq!(AssetCode::new(""), Err(AssetCodeError::Empty));
        assert_eq!(AssetCode::new("ABCDEFGHIJKLM"), Err(AssetCodeError::TooLong { len: 13 }));
        assert_eq!(AssetCode::new("btc"), Err(AssetCodeError::Lowercase('b')));
        assert_eq!(AssetCode::new("Btc"), Err(AssetCodeError::Lowercase('t')));
        assert_eq!(AssetCode::new("É"), Err(AssetCodeError::InvalidCharacter('É')));
        assert_eq!(AssetCode::new("é"), Err(AssetCodeError::Lowercase('é')));
        assert_eq!(AssetCode::new("BT C"), Err(AssetCodeError::InvalidCharacter(' ')));
        assert_eq!(AssetCode::new("BTC-X"), Err(AssetCodeError::InvalidCharacter('-')));
        assert_eq!(AssetCode::new(" BTC"), Err(AssetCodeError::InvalidCharacter(' ')));
        assert_eq!(AssetCode::new("ＢＴＣ"), Err(AssetCodeError::InvalidCharacter('Ｂ')));
        assert_eq!(
            AssetCodeError::TooLong { len: 13 }.to_string(),
            "an asset code must be at most 12 characters long, not 13"
        );
    }

    #[test]
    fn codes_round_trip_through_json_as_strings() {
        let json = serde_json::to_string(&AssetCode::BTC).unwrap();
        assert_eq!(json, "\"BTC\"");
        assert_eq!(serde_json::from_str::<AssetCode>(&json).unwrap(), AssetCode::BTC);
        for bad in ["\"btc\"", "\"\"", "\"ABCDEFGHIJKLM\"", "42", "null", "[\"BTC\"]"] {
            assert!(serde_json::from_str::<AssetCode>(bad).is_err(), "{bad}");
        }
        let err = serde_json::from_str::<AssetCode>("\"btc\"").unwrap_err().to_string();
        assert!(err.contains("lowercase"), "{err}");
    }

    #[test]
    fn codes_order_like_their_strings() {
        let mut codes = ["BTC", "BT", "B", "USDT", "ETH", "1INCH", "BTCB", "Z"].map(code);
        codes.sort();
        let strings: Vec<&str> = codes.iter().map(AssetCode::as_str).collect();
        assert_eq!(strings, ["1INCH", "B", "BT", "BTC", "BTCB", "ETH", "USDT", "Z"]);
    }

    #[test]
    fn assets_parse_and_format_in_their_own_unit() {
        let registry = AssetRegistry::defaults();
        let btc = registry.get(AssetCode::BTC).unwrap();
        assert_eq!(btc.parse_amount("0.00012345"), Ok(Amount::new(12345)));
        assert_eq!(btc.format_amount(Amount::new(150_000_000)), "1.5");
        assert_eq!(btc.parse_amount("1.000000000"), Err(AmountParseError::TooManyDecimals { decimals: 8 }));
        let eth = registry.get(AssetCode::ETH).unwrap();
        assert_eq!(eth.parse_amount("1"), Ok(Amount::new(1_000_000_000_000_000_000)));
        let usdt = registry.get(AssetCode::USDT).unwrap();
        assert_eq!(usdt.format_amount(Amount::new(1_234_500)), "1.2345");
    }

    #[test]
    fn defaults_hold_btc_eth_and_usdt() {
        let registry = AssetRegistry::defaults();
        let btc = registry.get(AssetCode::BTC).unwrap();
        assert_eq!((btc.decimals, btc.chain.as_str(), btc.confirmations), (8, "bitcoin", 3));
        let eth = registry.get(AssetCode::ETH).unwrap();
        assert_eq!((eth.decimals, eth.chain.as_str(), eth.confirmations), (18, "ethereum", 12));
        let usdt = registry.get(AssetCode::USDT).unwrap();
        assert_eq!((usdt.decimals, usdt.chain.as_str(), usdt.confirmations), (6, "ethereum", 12));
        assert_eq!(registry.iter().count(), 3);
        assert_eq!(AssetRegistry::default(), registry);
    }

    #[test]
    fn defaults_survive_a_round_trip_through_configs() {
        let registry = AssetRegistry::defaults();
        let configs: Vec<AssetConfig> = registry.iter().map(AssetConfig::from).collect();
        assert_eq!(AssetRegistry::from_configs(&configs), Ok(registry));
    }

    #[test]
    fn iteration_is_sorted_by_code() {
        let registry = AssetRegistry::from_configs(&[config("USDT", 6), config("BTC", 8), config("ETH", 18)]).unwrap();
        let codes: Vec<&str> = registry.iter().map(|a| a.code.as_str()).collect();
        assert_eq!(codes, ["BTC", "ETH", "USDT"]);
        let codes: Vec<&str> = (&registry).into_iter().map(|a| a.code.as_str()).collect();
        assert_eq!(codes, ["BTC", "ETH", "USDT"]);
    }

    #[test]
    fn from_configs_keeps_what_was_configured() {
        let configs =
            [AssetConfig { code: "SOL".to_owned(), decimals: 9, chain: "solana".to_owned(), confirmations: 32 }];
        let registry = AssetRegistry::from_configs(&configs).unwrap();
        let sol = registry.lookup("SOL").unwrap();
        assert_eq!(sol, &Asset { code: code("SOL"), decimals: 9, chain: "solana".to_owned(), confirmations: 32 });
        assert_eq!(registry.get(AssetCode::BTC), None);
        assert!(AssetRegistry::from_configs(&[config("MAX", 38)]).is_ok());
    }

    #[test]
    fn from_configs_refuses_an_empty_list() {
        assert_eq!(AssetRegistry::from_configs(&[]), Err(AssetRegistryError::Empty));
    }

    #[test]
    fn from_configs_refuses_a_bad_code_and_names_it() {
        let err = AssetRegistry::from_configs(&[config("BTC", 8), config("btc", 8)]).unwrap_err();
        assert_eq!(
            err,
            AssetRegistryError::InvalidCode { code: "btc".to_owned(), reason: AssetCodeError::Lowercase('b') }
        );
        assert!(err.to_string().contains("\"btc\""), "{err}");
    }

    #[test]
    fn from_configs_refuses_too_many_decimals_and_names_the_asset() {
        let err = AssetRegistry::from_configs(&[config("BIG", 39)]).unwrap_err();
        assert_eq!(err, AssetRegistryError::TooManyDecimals { code: code("BIG"), decimals: 39 });
        assert_eq!(err.to_string(), "asset BIG has 39 decimals, at most 38 are supported");
    }

    #[test]
    fn from_configs_refuses_duplicates_and_names_them() {
        let err = AssetRegistry::from_configs(&[config("BTC", 8), config("ETH", 18), config("BTC", 8)]).unwrap_err();
        assert_eq!(err, AssetRegistryError::DuplicateCode { code: AssetCode::BTC });
        assert_eq!(err.to_string(), "asset BTC is configured more than once");
    }

    #[test]
    fn lookup_finds_known_assets_and_names_unknown_ones() {
        let registry = AssetRegistry::defaults();
        assert_eq!(registry.lookup("BTC").unwrap().code, AssetCode::BTC);
        let err = registry.lookup("XYZ").unwrap_err();
        assert_eq!(err, UnknownAsset { code: "XYZ".to_owned() });
        assert_eq!(err.to_string(), "unknown asset \"XYZ\"");
        // Matching is exact, and strings that are not codes at all are just unknown.
        for s in ["btc", "", " BTC", "BTCBTCBTCBTCBTC", "\u{0}"] {
            assert_eq!(registry.lookup(s), Err(UnknownAsset { code: s.to_owned() }), "{s:?}");
        }
    }

    #[test]
    fn asset_configs_deserialize_and_refuse_unknown_keys() {
        let json = r#"{"code":"BTC","decimals":8,"chain":"bitcoin","confirmations":3}"#;
        let config: AssetConfig = serde_json::from_str(json).unwrap();
        assert_eq!(config, AssetConfig::from(AssetRegistry::defaults().get(AssetCode::BTC).unwrap()));
        let typo = r#"{"code":"BTC","decimals":8,"chain":"bitcoin","confirmations":3,"confirmation":6}"#;
        assert!(serde_json::from_str::<AssetConfig>(typo).is_err());
    }

    #[test]
    fn assets_serialize_with_their_code_as_a_string() {
        let registry = AssetRegistry::defaults();
        let json = serde_json::to_value(registry.get(AssetCode::BTC).unwrap()).unwrap();
        assert_eq!(json, serde_json::json!({"code": "BTC", "decimals": 8, "chain": "bitcoin", "confirmations": 3}));
    }

    proptest! {
        #[test]
        fn valid_codes_round_trip(s in "[A-Z0-9]{1,12}") {
            let c: AssetCode = s.parse().unwrap();
            prop_assert_eq!(c.as_str(), s.as_str());
            let json = serde_json::to_string(&c).unwrap();
            prop_assert_eq!(serde_json::from_str::<AssetCode>(&json).unwrap(), c);
        }

        #[test]
        fn code_order_matches_string_order(a in "[A-Z0-9]{1,12}", b in "[A-Z0-9]{1,12}") {
            prop_assert_eq!(code(&a).cmp(&code(&b)), a.cmp(&b));
            prop_assert_eq!(code(&a) == code(&b), a == b);
        }

        #[test]
        fn parsing_arbitrary_codes_never_panics(s in any::<String>()) {
            if let Ok(c) = s.parse::<AssetCode>() {
                prop_assert_eq!(c.as_str(), s.as_str());
            }
        }
    }
}
