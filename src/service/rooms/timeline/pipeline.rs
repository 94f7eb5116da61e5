//! The commit pipeline: how per-event work joins an event's commit without the append path
//! knowing what that work is.
//!
//! Every event that enters a room's timeline (made here, received from another server, our
//! join to a remote room, or history fetched by backfill) goes through the same steps:
//!
//! 1. the append path authorises it and builds its batch (PDU, state, room record);
//! 2. each registered [`EventConsumer`] looks at it — under the room's lock but before the
//!    global stream lock, so reads and CPU work here hold up only this room — and may return
//!    a [`Staged`] piece of work;
//! 3. under the stream lock, the timeline's own index entries and every staged piece's
//!    entries are added to the *same* batch with the event's stream count, and the batch is
//!    written once: the event and everything derived from it are durable together or not at
//!    all;
//! 4. after the write, still under the room's lock, each staged piece is told
//!    ([`Staged::written`]) so it can update caches the room's next event reads;
//! 5. once the write is on disk — a local send waits for that after releasing the room's
//!    lock, so the room's next event need not wait for this one's fsync — `/sync` long-polls
//!    are woken and each staged piece is told ([`Staged::committed`]) so it can wake whoever
//!    works its queue.
//!
//! The consumers today: the membership index (`rooms::members`), the public-join-rooms set of
//! the user directory, the relation and thread indexes (`rooms::relations`), the federation outbox (`federation::outbox`), the appservice queue
//! (`appservice::queue`), sliding sync's bump stamps, delayed events (`delayed_events`), push
//! evaluation (`push::evaluate`) and the admin room's command queue (`admin::admin_room`); ARCHITECTURE.md says what each adds. They are
//! registered once at start-up (`Services::open`).

use std::sync::{Arc, RwLock};

use ruma::{CanonicalJsonObject, EventId, OwnedEventId, RoomId, UserId};

use crate::{Result, store::Batch};

/// How an event came to be appended. Consumers decide from it what concerns them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Made here for a local user (a send, a state change, a membership, `createRoom`): it
    /// still has to reach the room's other servers.
    Local,
    /// Our own join to a room another server hosts, completed by its `send_join`: that server
    /// has it already and hands it to the rest of the room.
    RemoteJoin,
    /// Received from another server (`/send`, a fetched gap).
    Remote,
    /// History fetched from another server (`/backfill`), placed below the room's oldest
    /// event: not news, so nothing is queued or woken for it.
    Backfill,
    /// Taken from another homeserver's database (`culvert import`): this server's history
    /// as it was, in its order. Indexed like any event (members, relations, search, room
    /// lists) but not news: nothing is sent to other servers, application services or
    /// pushers, and no admin command runs.
    Import,
}

/// An event being committed, as consumers see it.
pub struct Appending<'a> {
    pub room_id: &'a RoomId,
    pub event_id: &'a EventId,
    /// Its short id (what queues and indexes refer to it by).
    pub short: u64,
    /// The PDU as stored.
    pub pdu: &'a CanonicalJsonObject,
    pub origin: Origin,
    pub sender: &'a UserId,
    pub event_type: &'a str,
    pub state_key: Option<&'a str>,
    /// The event this one redacts in the same batch (a redaction whose target is stored and
    /// which the rules let take effect): consumers that index content drop the target's
    /// entries.
    pub redacted: Option<Redacted<'a>>,
}

/// An event redacted in the batch of the redaction being committed.
#[derive(Clone, Copy)]
pub struct Redacted<'a> {
    pub event_id: &'a EventId,
    pub short: u64,
    /// Its PDU as it was before the redaction.
    pub pdu: &'a CanonicalJsonObject,
}

impl Appending<'_> {
    /// Whether this is a state event of `event_type` with state key `state_key`.
    pub fn is_state(&self, event_type: &str, state_key: &str) -> bool {
        self.event_type == event_type && self.state_key == Some(state_key)
    }
}

/// A room's state taken whole from another server's description (our join through
/// `send_join`): state events that never passed through the pipeline one by one. Committed
/// together with our join event, which passes through it as [`Origin::RemoteJoin`].
pub struct AdoptedState<'a> {
    pub room_id: &'a RoomId,
    /// The state after our join: each state event's ID and its `type`, `state_key`, `sender`
    /// and `content` (the rest is in the store: a big room's state, held parsed whole, cost
    /// more memory than anything else in a join).
    pub events: &'a [(OwnedEventId, CanonicalJsonObject)],
}

/// One kind of per-event work: an index, a queue, an evaluation.
pub trait EventConsumer: Send + Sync {
    /// Looks at `event` before it is committed and returns the work to add to its batch, or
    /// `None` when the event does not concern this consumer. Runs under the room's lock, not
    /// under the stream lock: reads belong here, not in [`Staged::write`]. An error refuses
    /// the whole event (nothing is written).
    fn prepare(&self, event: &Appending<'_>) -> Result<Option<Box<dyn Staged>>>;

    /// Like [`EventConsumer::prepare`] for a room's whole state adopted from another server.
    /// Consumers that index state (rather than react to news) rebuild their entries for the
    /// room here; the rest ignore it. Its entries are written after those of the join event.
    fn prepare_adopted_state(&self, _state: &AdoptedState<'_>) -> Result<Option<Box<dyn Staged>>> {
        Ok(None)
    }
}

/// A consumer's work for one event.
pub trait Staged: Send {
    /// Adds this work's entries to the event's batch; `count` is the event's stream count.
    fn write(&mut self, batch: &mut Batch, count: u64) -> Result<()>;

    /// Called once the batch is written, the room's lock still held: drop or update caches
    /// that the room's next event must not find stale.
    fn written(&mut self) {}

    /// Called once the batch is durable (the room's lock may be released by then): wake the
    /// senders of queues.
    fn committed(self: Box<Self>) {}
}

/// The registered consumers, in registration order.
#[derive(Default)]
pub struct Pipeline {
    consumers: RwLock<Vec<Arc<dyn EventConsumer>>>,
}

/// What the consumers staged for one event.
pub struct StagedWork(Vec<Box<dyn Staged>>);

impl Pipeline {
    /// Adds a consumer; every event committed from now on passes through it.
    pub fn register(&self, consumer: Arc<dyn EventConsumer>) {
        self.consumers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(consumer);
    }

    /// Every consumer's work for `event` (step 2).
    pub fn prepare(&self, event: &Appending<'_>) -> Result<StagedWork> {
        self.each(|consumer| consumer.prepare(event))
    }

    /// Every consumer's work for a room's adopted state.
    pub fn prepare_adopted_state(&self, state: &AdoptedState<'_>) -> Result<StagedWork> {
        self.each(|consumer| consumer.prepare_adopted_state(state))
    }

    fn each(
        &self,
        mut stage: impl FnMut(&dyn EventConsumer) -> Result<Option<Box<dyn Staged>>>,
    ) -> Result<StagedWork> {
        let consumers = self
            .consumers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut staged = Vec::with_capacity(consumers.len());
        for consumer in consumers {
            if let Some(work) = stage(consumer.as_ref())? {
                staged.push(work);
            }
        }
        Ok(StagedWork(staged))
    }
}

impl StagedWork {
    /// Appends `other`'s work after this one's.
    pub fn then(mut self, other: StagedWork) -> Self {
        self.0.extend(other.0);
        self
    }

    /// Adds every staged entry to `batch` under stream count `count` (step 3).
    pub fn write(&mut self, batch: &mut Batch, count: u64) -> Result<()> {
        for work in &mut self.0 {
            work.write(batch, count)?;
        }
        Ok(())
    }

    /// Tells every staged piece that its entries are written (step 4, under the room's lock).
    pub fn written(&mut self) {
        for work in &mut self.0 {
            work.written();
        }
    }

    /// Tells every staged piece that its entries are durable (step 5).
    pub fn committed(self) {
        for work in self.0 {
            work.committed();
        }
    }
}
