//! The federation outbox's writing side: which other servers a room's new events go to, and
//! their entries in `federation_outbox` (`destination 0xFF stream count` → the item), written in
//! the same batch as what they carry. `sender` drains it.
//!
//! As a consumer of the commit pipeline it queues every event made here for the room's other
//! servers; events from elsewhere are their origin's to distribute.

use std::sync::{Arc, Mutex};

use ruma::{EventId, OwnedEventId, OwnedServerName, RoomId};
use tokio::sync::mpsc::UnboundedSender;

use crate::{
    Result,
    service::rooms::{
        members::Members,
        timeline::pipeline::{Appending, EventConsumer, Origin, Staged},
    },
    store::{Batch, Cf, keys},
};

/// Where a room's events go, and the line to the sender tasks.
pub struct Outbox {
    server_name: OwnedServerName,
    members: Arc<Members>,
    /// Set once the sender runs (federation on): receives each destination with new items.
    wakeup: Mutex<Option<UnboundedSender<OwnedServerName>>>,
}

/// Queues `event_id` for each destination under stream count `count` (which orders each
/// destination's queue).
pub fn queue_pdu(
    batch: &mut Batch,
    count: u64,
    destinations: &[OwnedServerName],
    event_id: &EventId,
) {
    for destination in destinations {
        batch.put(
            Cf::FederationOutbox,
            keys::join([destination.as_bytes(), &keys::u64_be(count)]),
            serde_json::json!({ "pdu": event_id }).to_string(),
        );
    }
}

impl Outbox {
    pub fn new(server_name: OwnedServerName, members: Arc<Members>) -> Self {
        Self {
            server_name,
            members,
            wakeup: Mutex::new(None),
        }
    }

    /// Turns queueing on; `wakeup` receives each destination with new items.
    pub fn start(&self, wakeup: UnboundedSender<OwnedServerName>) {
        *self.wakeup.lock().unwrap_or_else(|p| p.into_inner()) = Some(wakeup);
    }

    fn sender_line(&self) -> Option<UnboundedSender<OwnedServerName>> {
        self.wakeup
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The other servers with joined members in a room: where its new events go. Empty (and
    /// free) while federation is off.
    pub fn remote_destinations(&self, room_id: &RoomId) -> Result<Vec<OwnedServerName>> {
        if self.sender_line().is_none() {
            return Ok(Vec::new());
        }
        let mut servers = self.members.servers_of_room(room_id)?;
        servers.retain(|server| *server != self.server_name);
        Ok(servers)
    }

    /// Tells the sender that these destinations have new items.
    pub fn wake(&self, destinations: &[OwnedServerName]) {
        if destinations.is_empty() {
            return;
        }
        if let Some(wakeup) = self.sender_line() {
            for destination in destinations {
                let _ = wakeup.send(destination.clone());
            }
        }
    }
}

/// One event queued for the room's other servers.
struct Queued {
    destinations: Vec<OwnedServerName>,
    event_id: OwnedEventId,
    wakeup: UnboundedSender<OwnedServerName>,
}

impl EventConsumer for Outbox {
    fn prepare(&self, event: &Appending<'_>) -> Result<Option<Box<dyn Staged>>> {
        if event.origin != Origin::Local {
            return Ok(None);
        }
        let Some(wakeup) = self.sender_line() else {
            return Ok(None);
        };
        // Worked out before the event's own membership change is indexed: a leaving server
        // still gets the leave.
        let destinations = self.remote_destinations(event.room_id)?;
        if destinations.is_empty() {
            return Ok(None);
        }
        Ok(Some(Box::new(Queued {
            destinations,
            event_id: event.event_id.to_owned(),
            wakeup,
        })))
    }
}

impl Staged for Queued {
    fn write(&mut self, batch: &mut Batch, count: u64) -> Result<()> {
        queue_pdu(batch, count, &self.destinations, &self.event_id);
        Ok(())
    }

    fn committed(self: Box<Self>) {
        for destination in self.destinations {
            let _ = self.wakeup.send(destination);
        }
    }
}
