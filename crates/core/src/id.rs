//! Client-chosen 128-bit identifiers.
//!
//! Ids are chosen by the client, as in TigerBeetle, so that a retried request carries the same id and the ledger can
//! answer `exists` instead of applying it twice. In JSON an id is a decimal string (JavaScript numbers cannot hold
//! 128 bits); a JSON integer is accepted on input too.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdParseError {
    /// The string was empty.
    #[error("an id must not be empty")]
    Empty,
    /// The string held something other than decimal digits.
    #[error("an id must be a decimal integer")]
    NotDecimal,
    /// The number does not fit in 128 bits.
    #[error("an id must fit in 128 bits")]
    Overflow,
}

fn parse_u128(s: &str) -> Result<u128, IdParseError> {
    if s.is_empty() {
        return Err(IdParseError::Empty);
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(IdParseError::NotDecimal);
    }
    s.parse::<u128>().map_err(|_| IdParseError::Overflow)
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub u128);

        impl $name {
            /// The raw 128-bit value.
            pub const fn get(self) -> u128 {
                self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_u128(s).map($name)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("a non-negative 128-bit integer as a decimal string")
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$name, E> {
                        v.parse().map_err(E::custom)
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$name, E> {
                        Ok($name(u128::from(v)))
                    }
                    fn visit_u128<E: de::Error>(self, v: u128) -> Result<$name, E> {
                        Ok($name(v))
                    }
                    fn visit_i64<E: de::Error>(self, _v: i64) -> Result<$name, E> {
                        Err(E::custom("an id must not be negative"))
                    }
                }
                deserializer.deserialize_any(V)
            }
        }
    };
}

id_type!(
    /// Identifies a ledger account.
    AccountId
);
id_type!(
    /// Identifies a ledger transfer; it is also the idempotency key of the request that created it.
    TransferId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_json_at_the_extremes() {
        for v in [0u128, 1, u128::from(u64::MAX) + 1, u128::MAX] {
            let json = serde_json::to_string(&AccountId(v)).unwrap();
            assert_eq!(json, format!("\"{v}\""));
            assert_eq!(serde_json::from_str::<AccountId>(&json).unwrap(), AccountId(v));
        }
        assert_eq!(serde_json::from_str::<TransferId>("42").unwrap(), TransferId(42));
    }

    #[test]
    fn bad_ids_are_refused_with_a_reason() {
        assert_eq!("".parse::<AccountId>(), Err(IdParseError::Empty));
        assert_eq!("-1".parse::<AccountId>(), Err(IdParseError::NotDecimal));
        assert_eq!("1e3".parse::<AccountId>(), Err(IdParseError::NotDecimal));
        assert_eq!("340282366920938463463374607431768211456".parse::<AccountId>(), Err(IdParseError::Overflow));
        assert!(serde_json::from_str::<AccountId>("-1").is_err());
        assert!(serde_json::from_str::<AccountId>("1.5").is_err());
    }
}
