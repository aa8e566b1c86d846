//! Feeds arbitrary text, one entry per line, to the IP allow-list parser, and checks that whatever parses also
//! answers `ip_allowed` for addresses of both families without panicking.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use rampart_auth::{ip_allowed, parse_allow_list};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let entries: Vec<String> = text.lines().map(str::to_owned).collect();
    let Ok(list) = parse_allow_list(&entries) else { return };
    assert_eq!(list.len(), entries.len());
    for ip in [IpAddr::from([203, 0, 113, 7]), IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1])] {
        let _ = ip_allowed(&list, ip);
    }
});
