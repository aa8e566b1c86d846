//! Where an address is, for geofencing: IP ranges to countries from the text files of Debian's `tor-geoipdb`
//! package (`/usr/share/tor/geoip` and `geoip6`: lines `FROM,TO,CC`, IPv4 bounds as 32-bit integers, IPv6 bounds as
//! addresses, `??` for unknown, `#` comments), and the jurisdictions the exchange refuses.

use std::net::{IpAddr, Ipv6Addr};

/// A country code, two ASCII capitals.
pub type Code = [u8; 2];

/// The jurisdictions refused by default: those under comprehensive sanctions (Cuba, Iran, North Korea, Syria).
pub const DEFAULT_BLOCKED: [&str; 4] = ["CU", "IR", "KP", "SY"];

/// A line of a range file that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeoError {
    /// `geoip` or `geoip6`.
    pub file: &'static str,
    /// The line, from 1.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for GeoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} line {}: {}", self.file, self.line, self.message)
    }
}

impl std::error::Error for GeoError {}

/// Address ranges and their countries, sorted, for lookups by binary search.
#[derive(Default)]
pub struct GeoIp {
    v4: Vec<(u32, u32, Code)>,
    v6: Vec<(u128, u128, Code)>,
}

fn code(text: &str) -> Option<Option<Code>> {
    match text.trim().as_bytes() {
        b"??" => Some(None),
        &[a, b] if a.is_ascii_uppercase() && b.is_ascii_uppercase() => Some(Some([a, b])),
        _ => None,
    }
}

fn ranges<T: Ord + Copy>(
    file: &'static str,
    text: &str,
    bound: impl Fn(&str) -> Option<T>,
) -> Result<Vec<(T, T, Code)>, GeoError> {
    let mut out: Vec<(T, T, Code)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let error = |message: &str| GeoError { file, line: i + 1, message: message.to_owned() };
        let mut parts = line.split(',');
        let (Some(from), Some(to), Some(cc), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(error("not FROM,TO,CC"));
        };
        let (Some(from), Some(to)) = (bound(from.trim()), bound(to.trim())) else {
            return Err(error("a bound is not an address"));
        };
        let Some(cc) = code(cc) else { return Err(error("the country is not two capitals or ??")) };
        if from > to || out.last().is_some_and(|last| last.1 >= from) {
            return Err(error("the ranges are not in order or overlap"));
        }
        if let Some(cc) = cc {
            out.push((from, to, cc));
        }
    }
    Ok(out)
}

fn find<T: Ord + Copy>(table: &[(T, T, Code)], key: T) -> Option<Code> {
    let i = table.partition_point(|r| r.0 <= key);
    let r = table.get(i.checked_sub(1)?)?;
    (key <= r.1).then_some(r.2)
}

impl GeoIp {
    /// Reads the two files' texts (either may be empty).
    pub fn parse(geoip: &str, geoip6: &str) -> Result<GeoIp, GeoError> {
        Ok(GeoIp {
            v4: ranges("geoip", geoip, |s| s.parse::<u32>().ok())?,
            v6: ranges("geoip6", geoip6, |s| s.parse::<Ipv6Addr>().ok().map(u128::from))?,
        })
    }

    /// The country of `ip`, if known.
    pub fn country(&self, ip: IpAddr) -> Option<Code> {
        match ip {
            IpAddr::V4(v4) => find(&self.v4, u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => find(&self.v4, u32::from(v4)),
                None => find(&self.v6, u128::from(v6)),
            },
        }
    }

    /// How many ranges with a country there are (IPv4, IPv6).
    pub fn len(&self) -> (usize, usize) {
        (self.v4.len(), self.v6.len())
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

/// The jurisdictions refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Geofence {
    blocked: Vec<Code>,
}

impl Default for Geofence {
    fn default() -> Self {
        Geofence::new(DEFAULT_BLOCKED.iter().copied()).unwrap_or(Geofence { blocked: Vec::new() })
    }
}

impl Geofence {
    /// A fence refusing `codes` (ISO 3166-1 alpha-2, any case); a code that is not two letters is an error naming it.
    pub fn new<'a>(codes: impl IntoIterator<Item = &'a str>) -> Result<Geofence, String> {
        let mut blocked = Vec::new();
        for c in codes {
            let upper = c.trim().to_ascii_uppercase();
            match code(&upper) {
                Some(Some(cc)) => blocked.push(cc),
                _ => return Err(format!("{c:?} is not a two-letter country code")),
            }
        }
        blocked.sort_unstable();
        blocked.dedup();
        Ok(Geofence { blocked })
    }

    /// Whether `country` is refused.
    pub fn blocks(&self, country: Code) -> bool {
        self.blocked.contains(&country)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: &str = "# comment\n16777216,16777471,AU\n16777472,16778239,??\n16778240,16779263,CN\n";
    const V6: &str = "2001:2::,2001:2:0:ffff:ffff:ffff:ffff:ffff,JP\n";

    #[test]
    fn ranges_answer_their_country_and_gaps_answer_none() {
        let g = GeoIp::parse(V4, V6).unwrap();
        assert_eq!(g.len(), (2, 1));
        let at = |s: &str| g.country(s.parse().unwrap());
        assert_eq!(at("1.0.0.0"), Some(*b"AU"));
        assert_eq!(at("1.0.0.255"), Some(*b"AU"));
        assert_eq!(at("1.0.1.0"), None, "?? is unknown");
        assert_eq!(at("1.0.4.0"), Some(*b"CN"));
        assert_eq!(at("1.0.8.0"), None);
        assert_eq!(at("0.0.0.1"), None);
        assert_eq!(at("::ffff:1.0.0.7"), Some(*b"AU"));
        assert_eq!(at("2001:2::1"), Some(*b"JP"));
        assert_eq!(at("2001:3::1"), None);
    }

    #[test]
    fn bad_lines_are_named() {
        let e = GeoIp::parse("1,2,AU\n5,x,FR\n", "").err().unwrap();
        assert_eq!((e.file, e.line), ("geoip", 2));
        assert_eq!(GeoIp::parse("5,9,AU\n7,12,FR\n", "").err().unwrap().line, 2, "overlap");
        assert_eq!(GeoIp::parse("1,2,Australia\n", "").err().unwrap().line, 1);
        assert_eq!(GeoIp::parse("", "2001::,zz,JP\n").err().unwrap().file, "geoip6");
    }

    #[test]
    fn the_default_fence_blocks_the_comprehensively_sanctioned() {
        let f = Geofence::default();
        assert!(f.blocks(*b"KP") && f.blocks(*b"IR") && f.blocks(*b"CU") && f.blocks(*b"SY"));
        assert!(!f.blocks(*b"DE"));
        assert!(Geofence::new(["ir", "Russia"]).is_err());
    }
}
