//! Screening of digital-currency addresses: the sanctioned addresses of the SDN remarks and of per-asset lists, and
//! the exchange's own block and risk lists.
//!
//! Addresses are compared in their canonical form: where a chain ignores letter case (hexadecimal addresses such as
//! Ethereum's, bech32 and cashaddr addresses) they are lower-cased, so `0xABC…` and `0xabc…` are one address; where
//! it does not (base58: bitcoin's legacy addresses, Tron, Monero …) the case is kept, since another case is another
//! address.

use std::borrow::Cow;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

/// Where a listing comes from and what it means.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    /// The asset code the list gives (`XBT`, `ETH`, `USDT` …).
    pub asset: String,
    /// The list: `ofac-sdn`, `ofac-sdn:<asset file>`, or the name of one of the exchange's own lists.
    pub source: String,
    /// `sanctioned` (refused), `blocked` (the exchange's block list, refused) or `risk` (held for review).
    pub category: Category,
    /// Why it is listed (the SDN entry number, or the reason compliance staff gave).
    pub reason: String,
}

/// What a listed address means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// On a high-risk list: a deposit from it or a withdrawal to it is held for review.
    Risk,
    /// On the exchange's block list: refused.
    Blocked,
    /// On a sanctions list: refused, and a deposit from it held for compliance.
    Sanctioned,
}

/// The canonical form of an address (see the module's documentation).
pub fn canonical(address: &str) -> Cow<'_, str> {
    let a = address.trim();
    let lower_is_same = |s: &str| !s.bytes().any(|b| b.is_ascii_uppercase());
    let hex =
        a.len() > 2 && (a.starts_with("0x") || a.starts_with("0X")) && a[2..].bytes().all(|b| b.is_ascii_hexdigit());
    let lowered = a.to_ascii_lowercase();
    let bech32 = ["bc1", "tb1", "bcrt1", "ltc1", "tltc1"].iter().any(|p| lowered.starts_with(p));
    let cashaddr = lowered.starts_with("bitcoincash:") || lowered.starts_with("bchtest:");
    if (hex || bech32 || cashaddr) && !lower_is_same(a) { Cow::Owned(lowered) } else { Cow::Borrowed(a) }
}

/// Listed addresses, by canonical form.
#[derive(Default)]
pub struct AddressBook {
    by_address: FxHashMap<String, Vec<Listing>>,
}

impl AddressBook {
    /// Adds a listing of `address`.
    pub fn add(&mut self, address: &str, listing: Listing) {
        let list = self.by_address.entry(canonical(address).into_owned()).or_default();
        if !list.contains(&listing) {
            list.push(listing);
        }
    }

    /// Adds every address of a per-asset list file (one address a line; blank lines and `#` comments skipped).
    /// Answers how many lines were added.
    pub fn add_list(&mut self, asset: &str, source: &str, text: &str) -> usize {
        let mut added = 0;
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            self.add(
                line,
                Listing {
                    asset: asset.to_owned(),
                    source: source.to_owned(),
                    category: Category::Sanctioned,
                    reason: format!("listed in {source}"),
                },
            );
            added += 1;
        }
        added
    }

    /// The listings of `address` (empty when it is not listed).
    pub fn lookup(&self, address: &str) -> &[Listing] {
        self.by_address.get(canonical(address).as_ref()).map_or(&[], Vec::as_slice)
    }

    /// The most severe category `address` is listed under.
    pub fn category(&self, address: &str) -> Option<Category> {
        self.lookup(address).iter().map(|l| l.category).max()
    }

    /// How many distinct addresses are listed.
    pub fn len(&self) -> usize {
        self.by_address.len()
    }

    /// Whether nothing is listed.
    pub fn is_empty(&self) -> bool {
        self.by_address.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_matters_only_where_the_chain_says_so() {
        assert_eq!(
            canonical("0xAbCd00000000000000000000000000000000EF01"),
            "0xabcd00000000000000000000000000000000ef01"
        );
        assert_eq!(
            canonical(" BC1QXY2KGDYGJRSQTZQ2N0YRF2493P83KKFJHX0WLH "),
            "bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh"
        );
        assert_eq!(canonical("1Kuf2Rd8mDyAViwBozGTNYnvWL8uYFrkVo"), "1Kuf2Rd8mDyAViwBozGTNYnvWL8uYFrkVo");
        let mut book = AddressBook::default();
        let listing = Listing {
            asset: "XBT".into(),
            source: "test".into(),
            category: Category::Sanctioned,
            reason: String::new(),
        };
        book.add("1Kuf2Rd8mDyAViwBozGTNYnvWL8uYFrkVo", listing.clone());
        book.add("0xAbCd00000000000000000000000000000000EF01", Listing { asset: "ETH".into(), ..listing.clone() });
        assert_eq!(book.category("1Kuf2Rd8mDyAViwBozGTNYnvWL8uYFrkVo"), Some(Category::Sanctioned));
        assert_eq!(book.category("1KUF2RD8MDYAVIWBOZGTNYNVWL8UYFRKVO"), None, "another case is another base58 address");
        assert_eq!(book.category("0xabcd00000000000000000000000000000000ef01"), Some(Category::Sanctioned));
        assert_eq!(book.len(), 2);
    }
}
