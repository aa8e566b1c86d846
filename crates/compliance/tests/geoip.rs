//! Geofencing with the IP ranges of Debian's `tor-geoipdb` package (`.ci/run` installs it when it is missing): every
//! range of both files answers its own country at both ends, and addresses of the blocked jurisdictions are blocked.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rampart_compliance::geo::{DEFAULT_BLOCKED, GeoIp, Geofence};

const DIR: &str = "/usr/share/tor";

fn read(name: &str) -> String {
    std::fs::read_to_string(format!("{DIR}/{name}"))
        .unwrap_or_else(|e| panic!("{DIR}/{name}: {e} (install Debian's tor-geoipdb package; .ci/run does)"))
}

#[test]
fn every_range_answers_its_country_and_the_sanctioned_are_fenced() {
    let (v4, v6) = (read("geoip"), read("geoip6"));
    let geo = GeoIp::parse(&v4, &v6).unwrap();
    let (n4, n6) = geo.len();
    assert!(n4 > 100_000 && n6 > 50_000, "{n4} IPv4 and {n6} IPv6 ranges");

    let fence = Geofence::default();
    let mut fenced = std::collections::BTreeMap::new();
    let mut checked = 0;
    for (text, v6) in [(&v4, false), (&v6, true)] {
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let f: Vec<&str> = line.split(',').collect();
            let cc = f[2].trim();
            let ends: [IpAddr; 2] = if v6 {
                [f[0].parse::<Ipv6Addr>().unwrap().into(), f[1].parse::<Ipv6Addr>().unwrap().into()]
            } else {
                [
                    Ipv4Addr::from(f[0].parse::<u32>().unwrap()).into(),
                    Ipv4Addr::from(f[1].parse::<u32>().unwrap()).into(),
                ]
            };
            for ip in ends {
                let got = geo.country(ip);
                if cc == "??" {
                    assert_eq!(got, None, "{line}");
                } else {
                    let want = [cc.as_bytes()[0], cc.as_bytes()[1]];
                    assert_eq!(got, Some(want), "{line}");
                    if fence.blocks(want) {
                        *fenced.entry(cc.to_owned()).or_insert(0) += 1;
                    }
                }
                checked += 1;
            }
        }
    }
    println!("{checked} range ends looked up; fenced: {fenced:?}");
    for cc in DEFAULT_BLOCKED {
        assert!(fenced.get(cc).is_some_and(|n| *n > 0), "no address of {cc} is fenced");
    }
    assert_eq!(geo.country("8.8.8.8".parse().unwrap()), Some(*b"US"));
}
