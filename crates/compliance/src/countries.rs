//! Country names as sanctions lists spell them, to ISO 3166-1 alpha-2 codes (`data/country-names.tsv`).

use std::collections::HashMap;
use std::sync::LazyLock;

static TABLE: &str = include_str!("../data/country-names.tsv");

static BY_NAME: LazyLock<HashMap<String, &'static str>> = LazyLock::new(|| {
    TABLE
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('\t'))
        .map(|(code, name)| (name.trim().to_lowercase(), code))
        .collect()
});

/// The code of a country named `name` (any letter case), if known.
pub fn code(name: &str) -> Option<&'static str> {
    BY_NAME.get(&name.trim().to_lowercase()).copied()
}

/// Whether `code` is a known two-letter code (upper case).
pub fn is_code(code: &str) -> bool {
    BY_NAME.values().any(|c| *c == code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lists_spellings_resolve() {
        assert_eq!(code("Korea, North"), Some("KP"));
        assert_eq!(code("iran"), Some("IR"));
        assert_eq!(code("United Arab Emirates"), Some("AE"));
        assert_eq!(code("Burma"), Some("MM"));
        assert_eq!(code("Atlantis"), None);
        assert!(is_code("SY") && !is_code("XX"));
    }
}
