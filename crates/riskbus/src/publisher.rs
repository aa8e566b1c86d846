//! Publishing events onto the bus.

use async_nats::HeaderMap;
use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream;
use rampart_risk::Event;
use serde::Serialize;

use crate::bus::{BusConfig, EventId};
use crate::error::{Error, nats};

/// Publishes events to their user's partition and waits for JetStream to have stored them.
#[derive(Clone)]
pub struct Publisher {
    js: jetstream::Context,
    bus: BusConfig,
}

/// Where a published event was stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    /// Its partition.
    pub partition: u32,
    /// Its sequence in the events stream (for a duplicate, the first copy's).
    pub stream_seq: u64,
    /// Whether JetStream had already stored an event with this id (within the duplicate window) and dropped this one.
    pub duplicate: bool,
}

/// The envelope as written, borrowing the event.
#[derive(Serialize)]
struct EnvelopeRef<'a> {
    id: EventId,
    event: &'a Event,
}

impl Publisher {
    /// A publisher on `bus`, creating its streams if they do not exist.
    pub async fn new(js: jetstream::Context, bus: BusConfig) -> Result<Publisher, Error> {
        bus.ensure_streams(&js).await?;
        Ok(Publisher { js, bus })
    }

    /// The bus.
    pub fn bus(&self) -> &BusConfig {
        &self.bus
    }

    /// Publishes `event` as `id` and waits for the stream's acknowledgement.
    ///
    /// Safe to retry with the same id after an error: within the duplicate window JetStream stores it once. The
    /// events of one user must be published in their order, by one publisher at a time (the engine's decisions
    /// depend on it); events of different users need no order.
    pub async fn publish(&self, id: EventId, event: &Event) -> Result<Published, Error> {
        let partition = self.bus.partition_of(event.user);
        let payload = serde_json::to_vec(&EnvelopeRef { id, event })?;
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MESSAGE_ID, id.to_string());
        let subject = self.bus.events_subject(partition);
        let ack = self
            .js
            .publish_with_headers(subject, headers, payload.into())
            .await
            .map_err(nats("publishing an event"))?
            .await
            .map_err(nats("waiting for an event's acknowledgement"))?;
        // Another stream taking the same subjects would receive events no worker reads.
        if ack.stream != self.bus.stream() {
            return Err(Error::Config(format!(
                "the event was stored in the stream {}, not {}",
                ack.stream,
                self.bus.stream()
            )));
        }
        Ok(Published { partition, stream_seq: ack.sequence, duplicate: ack.duplicate })
    }
}
