//! Compliance for Rampart: sanctions lists (the OFAC SDN list in its CSV form, per-asset lists of sanctioned
//! addresses), screening of names with fuzzy matching, screening of digital-currency addresses, the country names the
//! lists use, and geofencing (IP ranges to countries, blocked jurisdictions).
//!
//! Pure: nothing here reads a clock or does I/O beyond the bytes it is given. The service stores lists, screens
//! customers and keeps the cases.

pub mod addresses;
pub mod countries;
pub mod geo;
pub mod kyc;
pub mod names;
pub mod ofac;
pub mod review;
pub mod screen;
pub mod similarity;
pub mod travel;

pub use addresses::{AddressBook, Category, Listing, canonical};
pub use ofac::{Entry, EntryKind, Files, Parsed, Problem};
pub use screen::{DEFAULT_THRESHOLD, Match, Query, Screener};

/// What changed between two versions of a list, by entry number.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Diff {
    /// Entries only in the new version.
    pub added: Vec<u32>,
    /// Entries only in the old one.
    pub removed: Vec<u32>,
    /// Entries in both whose content differs.
    pub changed: Vec<u32>,
}

/// Compares two versions of a list (each sorted by entry number, as [`ofac::parse`] gives them).
pub fn diff(old: &[Entry], new: &[Entry]) -> Diff {
    let mut d = Diff::default();
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) if a.id == b.id => {
                if a != b {
                    d.changed.push(a.id);
                }
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a.id < b.id => {
                d.removed.push(a.id);
                i += 1;
            }
            (Some(a), None) => {
                d.removed.push(a.id);
                i += 1;
            }
            (_, Some(b)) => {
                d.added.push(b.id);
                j += 1;
            }
            (None, None) => break,
        }
    }
    d
}

/// Every sanctioned address of a parsed SDN list, as listings.
pub fn sdn_addresses(entries: &[Entry], book: &mut AddressBook) -> usize {
    let mut n = 0;
    for e in entries {
        for c in &e.crypto {
            book.add(
                &c.address,
                Listing {
                    asset: c.asset.clone(),
                    source: "ofac-sdn".into(),
                    category: Category::Sanctioned,
                    reason: format!("SDN entry {}", e.id),
                },
            );
            n += 1;
        }
    }
    n
}
