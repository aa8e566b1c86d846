//! The limit of partitioning by user, without a server: counters kept per address, device, destination or API key
//! see only their partition's users. This is the documented contract, pinned here so that a change to it is noticed.

mod common;

use std::net::IpAddr;

use rampart_risk::{Event, EventKind, Factor, Outcome, UserId};
use rampart_riskbus::{EventId, partition_of};

use common::*;

#[test]
fn an_address_trying_many_accounts_is_counted_within_each_partition_only() {
    // One address tries one wrong password on each of 30 accounts within a minute (credential stuffing).
    let ip: IpAddr = "198.51.100.66".parse().unwrap();
    let events: Vec<(EventId, Event)> = (0..30u64)
        .map(|i| {
            let kind = EventKind::SignIn { success: false, factor: Factor::Password };
            let event = Event {
                at_ns: (1_796_083_200 + i) * 1_000_000_000,
                user: UserId(1_000 + i),
                ip: Some(ip),
                device: None,
                country: None,
                kind,
            };
            (EventId(u128::from(i)), event)
        })
        .collect();
    let bus = fresh_bus("LIMIT", 8);
    let single = single_engine(&events);
    let (partitioned, _) = engine_per_partition(&events, &bus);
    let blocked = |d: &std::collections::HashMap<EventId, rampart_risk::Decision>| {
        d.values().filter(|d| d.outcome == Outcome::Block).count()
    };
    // One engine sees 30 failures from the address and blocks from the 20th on.
    assert_eq!(blocked(&single), 11);
    // Spread over 8 partitions, no partition sees 20 of them.
    let busiest = (0..8).map(|p| events.iter().filter(|(_, e)| partition_of(e.user, 8) == p).count()).max().unwrap();
    assert!(busiest < 20, "{busiest}");
    assert_eq!(blocked(&partitioned), 0);
    // With a single partition the bus decides as one engine does.
    let one = rampart_riskbus::BusConfig::new("LIMIT", "limit", 1).unwrap();
    assert_eq!(engine_per_partition(&events, &one).0, single);
}
