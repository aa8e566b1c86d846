//! Distances between countries, for impossible travel: one point per country (its capital, from GeoNames; see
//! `data/README.md`), and the great-circle distance between two countries' points, in whole kilometres.

use std::sync::OnceLock;

use rustc_hash::FxHashMap;

use crate::event::Country;

const POINTS: &str = include_str!("../data/country-points.tsv");

struct Table {
    index: FxHashMap<u16, usize>,
    /// Row-major `n × n` distances in kilometres.
    km: Vec<u16>,
    n: usize,
}

fn parse() -> Vec<(Country, i32, i32)> {
    // Coordinates are kept in hundredths of a degree; the file has two decimals.
    let hundredths = |s: &str| -> Option<i32> {
        let (negative, s) = s.strip_prefix('-').map_or((false, s), |rest| (true, rest));
        let (whole, frac) = s.split_once('.')?;
        let v = whole.parse::<i32>().ok()? * 100 + frac.parse::<i32>().ok()?;
        Some(if negative { -v } else { v })
    };
    POINTS
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let mut f = l.split('\t');
            Some((Country::parse(f.next()?)?, hundredths(f.next()?)?, hundredths(f.next()?)?))
        })
        .collect()
}

/// The haversine distance on a sphere of the Earth's mean radius. Floating point is confined to building this table
/// once; lookups are integers.
#[allow(clippy::float_arithmetic)]
fn haversine_km(a: (i32, i32), b: (i32, i32)) -> u16 {
    const EARTH_RADIUS_KM: f64 = 6_371.0;
    let rad = |h: i32| (f64::from(h) / 100.0).to_radians();
    let (lat1, lon1, lat2, lon2) = (rad(a.0), rad(a.1), rad(b.0), rad(b.1));
    let h = ((lat2 - lat1) / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * ((lon2 - lon1) / 2.0).sin().powi(2);
    let km = 2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin();
    // At most half the Earth's circumference (about 20 015 km): always fits.
    km.round() as u16
}

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        let points = parse();
        let n = points.len();
        let mut km = vec![0u16; n * n];
        for (i, a) in points.iter().enumerate() {
            for (j, b) in points.iter().enumerate() {
                km[i * n + j] = haversine_km((a.1, a.2), (b.1, b.2));
            }
        }
        let index = points.iter().enumerate().map(|(i, p)| (p.0.code(), i)).collect();
        Table { index, km, n }
    })
}

/// The distance between two countries' points in kilometres, or `None` when either is not in the table.
pub fn distance_km(a: Country, b: Country) -> Option<u32> {
    let t = table();
    let (i, j) = (*t.index.get(&a.code())?, *t.index.get(&b.code())?);
    Some(u32::from(t.km[i * t.n + j]))
}

/// How many countries the table knows.
pub fn countries() -> usize {
    table().n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Country {
        Country::parse(s).unwrap()
    }

    #[test]
    fn distances_are_plausible_and_symmetric() {
        assert!(countries() > 240);
        // Berlin–Washington is about 6 700 km; Berlin–Paris about 880 km.
        let de_us = distance_km(c("DE"), c("US")).unwrap();
        assert!((6_500..6_900).contains(&de_us), "{de_us}");
        let de_fr = distance_km(c("DE"), c("FR")).unwrap();
        assert!((850..910).contains(&de_fr), "{de_fr}");
        assert_eq!(distance_km(c("SG"), c("BR")), distance_km(c("BR"), c("SG")));
        assert_eq!(distance_km(c("JP"), c("JP")), Some(0));
        assert_eq!(distance_km(c("ZZ"), c("JP")), None);
    }
}
