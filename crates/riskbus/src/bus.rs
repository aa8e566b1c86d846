//! What publishers and workers agree on: the streams and their subjects, the partition of a user, event ids, and the
//! JSON of an event envelope and of a decision.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::stream::{Config as StreamConfig, StorageType};
use rampart_risk::{Decision, Event, Outcome, UserId};
use serde::{Deserialize, Serialize};

use crate::error::{Error, nats};

/// The most partitions a bus may have: each is a durable consumer and an engine, and a checkpoint file.
pub const MAX_PARTITIONS: u32 = 1_024;

/// An event's identity, chosen by whoever first publishes it and kept across that publisher's retries: JetStream drops
/// a second message with the same id (`Nats-Msg-Id`) within the stream's duplicate window, and decisions name their
/// event by it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(pub u128);

impl EventId {
    /// A fresh id (a UUIDv7: time-ordered, and random enough that two publishers never collide).
    pub fn random() -> EventId {
        EventId(uuid::Uuid::now_v7().as_u128())
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for EventId {
    type Err = String;

    /// Reads the 32 lower-case or upper-case hexadecimal digits that [`EventId`]'s `Display` writes.
    fn from_str(s: &str) -> Result<EventId, String> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{s:?} is not an event id (32 hexadecimal digits)"));
        }
        u128::from_str_radix(s, 16).map(EventId).map_err(|e| e.to_string())
    }
}

// As a string: JSON numbers above 2^53 are not read exactly by every consumer of the decisions.
impl Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<EventId, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The partition of `user` among `partitions` (at least 1).
///
/// Every event of a user goes to one partition, so one engine sees all of them, in the order they were published.
/// The function is part of the data format: every publisher and worker, in every process and version, must compute
/// the same value, so it is spelled out here (SplitMix64's finaliser, which spreads sequential ids evenly) rather than
/// borrowed from a hasher whose output may change.
pub fn partition_of(user: UserId, partitions: u32) -> u32 {
    let mut z = user.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    // The remainder is below `partitions`, itself a u32.
    u32::try_from(z % u64::from(partitions.max(1))).unwrap_or(0)
}

/// The names of a bus: its two streams, its subjects and its partition count.
///
/// Events go to `<prefix>.events.<partition>` in the stream `<stream>`; decisions to
/// `<prefix>.decisions.<partition>` in the stream `<stream>_DECISIONS`. The partition count is fixed for the life of
/// the stream: changing it moves users between partitions, whose engines hold their history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BusConfig {
    stream: String,
    prefix: String,
    partitions: u32,
    duplicate_window: Duration,
    max_age: Duration,
    storage: StorageType,
}

impl BusConfig {
    /// A bus named `stream` (a JetStream stream name: letters, digits, `-` and `_`) whose subjects begin with
    /// `prefix` (dot-separated tokens without wildcards), with `partitions` partitions (1 to [`MAX_PARTITIONS`]).
    /// Events are kept on disk without age limit and de-duplicated within two minutes.
    pub fn new(stream: &str, prefix: &str, partitions: u32) -> Result<BusConfig, Error> {
        let name_ok = |s: &str| {
            !s.is_empty() && s.len() <= 200 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !name_ok(stream) {
            return Err(Error::Config(format!("{stream:?} is not a stream name (letters, digits, '-' and '_')")));
        }
        let token_ok =
            |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic() && b != b'*' && b != b'>' && b != b'.');
        if prefix.len() > 200 || !prefix.split('.').all(token_ok) {
            return Err(Error::Config(format!(
                "{prefix:?} is not a subject prefix (dot-separated tokens, no wildcards)"
            )));
        }
        if partitions == 0 || partitions > MAX_PARTITIONS {
            return Err(Error::Config(format!("{partitions} partitions (1 to {MAX_PARTITIONS})")));
        }
        Ok(BusConfig {
            stream: stream.to_owned(),
            prefix: prefix.to_owned(),
            partitions,
            duplicate_window: Duration::from_secs(120),
            max_age: Duration::ZERO,
            storage: StorageType::File,
        })
    }

    /// How long JetStream remembers event ids to drop re-published events (and re-published decisions). A publisher
    /// that retries later than this creates a second event.
    pub fn with_duplicate_window(mut self, window: Duration) -> BusConfig {
        self.duplicate_window = window;
        self
    }

    /// How long the streams keep messages (zero: no limit). It must exceed the age of the oldest checkpoint a worker
    /// may resume from, or the worker refuses to resume ([`Error::CheckpointBehindStream`]).
    pub fn with_max_age(mut self, max_age: Duration) -> BusConfig {
        self.max_age = max_age;
        self
    }

    /// Keeps the streams in memory rather than in files (for tests and benchmarks: a server restart loses them).
    pub fn in_memory(mut self) -> BusConfig {
        self.storage = StorageType::Memory;
        self
    }

    /// The events stream's name.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The decisions stream's name.
    pub fn decisions_stream(&self) -> String {
        format!("{}_DECISIONS", self.stream)
    }

    /// The subject prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The partition count.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The partition of `user`.
    pub fn partition_of(&self, user: UserId) -> u32 {
        partition_of(user, self.partitions)
    }

    /// The subject of a partition's events.
    pub fn events_subject(&self, partition: u32) -> String {
        format!("{}.events.{partition}", self.prefix)
    }

    /// The subject of a partition's decisions.
    pub fn decisions_subject(&self, partition: u32) -> String {
        format!("{}.decisions.{partition}", self.prefix)
    }

    /// Creates both streams if they do not exist; an existing stream must already take this bus's subjects.
    pub async fn ensure_streams(&self, js: &jetstream::Context) -> Result<(), Error> {
        for (name, subject) in [
            (self.stream.clone(), format!("{}.events.*", self.prefix)),
            (self.decisions_stream(), format!("{}.decisions.*", self.prefix)),
        ] {
            let config = StreamConfig {
                name: name.clone(),
                subjects: vec![subject.clone()],
                duplicate_window: self.duplicate_window,
                max_age: self.max_age,
                storage: self.storage,
                ..StreamConfig::default()
            };
            let stream = js.get_or_create_stream(config).await.map_err(nats(format!("creating the stream {name}")))?;
            let subjects = &stream.cached_info().config.subjects;
            if !subjects.contains(&subject) {
                return Err(Error::Config(format!(
                    "the stream {name} exists with subjects {subjects:?}, not {subject}"
                )));
            }
        }
        Ok(())
    }

    /// Deletes both streams with their messages and consumers (tests, and tearing a bus down).
    pub async fn delete_streams(&self, js: &jetstream::Context) -> Result<(), Error> {
        for name in [self.stream.clone(), self.decisions_stream()] {
            js.delete_stream(&name).await.map_err(nats(format!("deleting the stream {name}")))?;
        }
        Ok(())
    }
}

/// An event as it travels on the bus: its id and the event's own flat JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The event's id (also its `Nats-Msg-Id`).
    pub id: EventId,
    /// The event.
    pub event: Event,
}

/// A decision as workers publish it to `<prefix>.decisions.<partition>`: enough for the service to enforce it and for
/// people to see why, and nothing that differs between a first evaluation and a re-evaluation after a crash, so that
/// the two are the same bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// The event decided.
    pub event: EventId,
    /// Whose event.
    pub user: UserId,
    /// The event's time (nanoseconds since the Unix epoch).
    pub at_ns: u64,
    /// The partition that decided.
    pub partition: u32,
    /// The event's sequence in the events stream.
    pub stream_seq: u64,
    /// What to do.
    pub outcome: Outcome,
    /// The sum of the enforced matching rules' scores.
    pub score: u32,
    /// The rule set's version.
    pub rules_version: u32,
    /// The enforced rules that matched, in rule-file order.
    pub rules: Vec<String>,
    /// The shadow rules that matched (recorded, not enforced).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shadow_rules: Vec<String>,
}

impl DecisionRecord {
    /// The record of `decision` on the event `id`, applied at `stream_seq` in `partition`.
    pub fn new(id: EventId, event: &Event, partition: u32, stream_seq: u64, decision: &Decision) -> DecisionRecord {
        let names = |shadow: bool| {
            decision.reasons.iter().filter(|r| r.shadow == shadow).map(|r| r.rule.to_string()).collect::<Vec<_>>()
        };
        DecisionRecord {
            event: id,
            user: event.user,
            at_ns: event.at_ns,
            partition,
            stream_seq,
            outcome: decision.outcome,
            score: decision.score,
            rules_version: decision.rules_version,
            rules: names(false),
            shadow_rules: names(true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_read_back_and_refuse_junk() {
        let id = EventId(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        assert_eq!(id.to_string(), "0123456789abcdef0011223344556677");
        assert_eq!(id.to_string().parse::<EventId>(), Ok(id));
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"0123456789abcdef0011223344556677\"");
        assert!("123".parse::<EventId>().is_err() && "0123456789abcdef001122334455667g".parse::<EventId>().is_err());
        assert_ne!(EventId::random(), EventId::random());
    }

    #[test]
    fn partitions_are_stable_and_spread() {
        // Fixed values: this function is a data format, and a change would move users between partitions.
        let got: Vec<u32> = (0..8).map(|u| partition_of(UserId(u), 8)).collect();
        assert_eq!(got, [7, 1, 6, 5, 2, 2, 0, 7]);
        let mut counts = [0u32; 8];
        for u in 0..8_000 {
            counts[partition_of(UserId(u), 8) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (900..1_100).contains(&c)), "{counts:?}");
        assert!((0..1_000).all(|u| partition_of(UserId(u), 1) == 0));
    }

    #[test]
    fn names_are_checked() {
        assert!(BusConfig::new("RISK_EVENTS", "rampart.risk", 8).is_ok());
        for (stream, prefix, p) in [
            ("", "a", 1),
            ("A.B", "a", 1),
            ("A", "", 1),
            ("A", "a.*", 1),
            ("A", "a..b", 1),
            ("A", "a", 0),
            ("A", "a", 5_000),
        ] {
            assert!(BusConfig::new(stream, prefix, p).is_err(), "{stream:?} {prefix:?} {p}");
        }
        let bus = BusConfig::new("RISK_EVENTS", "rampart.risk", 8).unwrap();
        assert_eq!(bus.events_subject(3), "rampart.risk.events.3");
        assert_eq!(bus.decisions_subject(3), "rampart.risk.decisions.3");
        assert_eq!(bus.decisions_stream(), "RISK_EVENTS_DECISIONS");
    }
}
