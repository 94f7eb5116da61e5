//! Thread subscriptions (MSC4306) and the feed of their changes (MSC4308): which threads a
//! user wants to hear about. Clients subscribe by hand (and when their user replies) or
//! automatically (when their user is mentioned, naming the event that caused it); the two
//! postcontent push rules then notify for every event of a subscribed thread and for none of
//! an unsubscribed one (mentions aside). Off unless `thread_subscriptions` is set: clients
//! that never subscribe would otherwise stop notifying about threads.
//!
//! One record per (user, room, root): subscribed by hand, automatically, or unsubscribed, with
//! the stream count of its last change as `bump_stamp`. An unsubscription is kept: its count
//! is the position up to which the user had seen events, so an automatic subscription caused
//! by an event at or before it is refused (`M_CONFLICTING_UNSUBSCRIPTION`) and a dormant
//! device cannot undo the user's choice. Changes are listed per user by stamp (one entry per
//! thread, the latest), which the sliding-sync extension and `/thread_subscriptions` page.

use ruma::{EventId, OwnedEventId, RoomId, UserId, api::error::ErrorKind};
use serde_json::{Map, Value, json};

use super::{client_event::Viewer, relations::relation_of};
use crate::{
    Error, Result,
    service::Services,
    store::{Batch, Cf, keys},
};

/// Changes one page or one sliding-sync answer gives at most.
pub const MAX_CHANGES: usize = 100;

/// A thread's subscription as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Unsubscribed,
    Automatic,
    Manual,
}

#[derive(Clone, Copy, Debug)]
struct Record {
    state: State,
    /// The stream count of the change (for an unsubscription: the position it acknowledged).
    stamp: u64,
}

impl Record {
    fn encode(self) -> Vec<u8> {
        let state = match self.state {
            State::Unsubscribed => 0,
            State::Automatic => 1,
            State::Manual => 2,
        };
        let mut value = vec![state];
        value.extend(keys::u64_be(self.stamp));
        value
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let (&state, stamp) = bytes.split_first()?;
        let state = match state {
            0 => State::Unsubscribed,
            1 => State::Automatic,
            2 => State::Manual,
            _ => return None,
        };
        Some(Self {
            state,
            stamp: keys::parse_u64_be(stamp)?,
        })
    }
}

fn record_key(user_id: &UserId, room_id: &RoomId, root: &str) -> Vec<u8> {
    keys::join([user_id.as_bytes(), room_id.as_bytes(), root.as_bytes()])
}

fn change_key(user_id: &UserId, stamp: u64) -> Vec<u8> {
    keys::join([user_id.as_bytes(), &keys::u64_be(stamp)])
}

/// What a subscription request asks for.
#[derive(Clone, Debug)]
pub enum Subscribe {
    Manual,
    /// Automatic, caused by this event of the thread.
    Automatic(OwnedEventId),
}

/// One page of subscription changes, newest first.
#[derive(Debug, Default)]
pub struct Changes {
    /// `{room: {root: {automatic, bump_stamp}}}`.
    pub subscribed: Map<String, Value>,
    /// `{room: {root: {bump_stamp}}}`.
    pub unsubscribed: Map<String, Value>,
    /// The stamp below which older changes remain, when the page is full.
    pub more_before: Option<u64>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.subscribed.is_empty() && self.unsubscribed.is_empty()
    }
}

fn not_found() -> Error {
    Error::not_found("No such thread, or you may not see it.")
}

impl Services {
    /// The feature switch: the endpoints answer `M_UNRECOGNIZED` without it.
    pub fn thread_subscriptions_enabled(&self) -> bool {
        self.config.thread_subscriptions
    }

    /// Checks that `root` is an event of the room the user may see that starts a thread (is
    /// not itself a thread's reply); `M_NOT_FOUND` otherwise.
    fn visible_thread_root(
        &self,
        room_id: &RoomId,
        viewer: Viewer<'_>,
        root: &EventId,
    ) -> Result<()> {
        self.visible_event(room_id, viewer, root)
            .map_err(|_| not_found())?;
        let pdu = self.timeline.pdu_json(root)?.ok_or_else(not_found)?;
        if relation_of(&pdu).is_some_and(|r| r.rel_type == "m.thread") {
            return Err(not_found());
        }
        Ok(())
    }

    fn thread_subscription_record(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        root: &str,
    ) -> Result<Option<Record>> {
        Ok(self
            .store
            .get(Cf::ThreadSubscriptions, &record_key(user_id, room_id, root))?
            .and_then(|bytes| Record::decode(&bytes)))
    }

    /// Whether the user is subscribed to the thread (one point read; push evaluation).
    pub fn subscribed_to_thread(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        root: &str,
    ) -> Result<bool> {
        Ok(self
            .thread_subscription_record(user_id, room_id, root)?
            .is_some_and(|r| r.state != State::Unsubscribed))
    }

    /// `GET .../thread/{root}/subscription`: whether the subscription is automatic, or
    /// `M_NOT_FOUND` when there is none.
    pub fn thread_subscription(
        &self,
        viewer: Viewer<'_>,
        room_id: &RoomId,
        root: &EventId,
    ) -> Result<bool> {
        self.visible_thread_root(room_id, viewer, root)?;
        match self.thread_subscription_record(viewer.user_id, room_id, root.as_str())? {
            Some(Record {
                state: State::Automatic,
                ..
            }) => Ok(true),
            Some(Record {
                state: State::Manual,
                ..
            }) => Ok(false),
            _ => Err(Error::not_found("You are not subscribed to this thread.")),
        }
    }

    /// `PUT .../thread/{root}/subscription`. A manual subscription always wins over an
    /// automatic one; an automatic one needs its cause to be in the thread (else
    /// `M_NOT_IN_THREAD`) and to be newer than the user's last unsubscription (else 409
    /// `M_CONFLICTING_UNSUBSCRIPTION`). Read, decided and written under the stream lock, so
    /// that two devices' requests at once are applied one after the other.
    pub async fn subscribe_thread(
        &self,
        viewer: Viewer<'_>,
        room_id: &RoomId,
        root: &EventId,
        how: Subscribe,
    ) -> Result<()> {
        self.visible_thread_root(room_id, viewer, root)?;
        let cause_count = match &how {
            Subscribe::Manual => None,
            Subscribe::Automatic(cause) => {
                let not_in_thread = || {
                    Error::new(
                        http::StatusCode::BAD_REQUEST,
                        ErrorKind::NotInThread,
                        "The event that caused the subscription is not in this thread.",
                    )
                };
                let pdu = match self.timeline.pdu_json(cause)? {
                    Some(pdu) if self.event_in_room(room_id, cause)? => pdu,
                    _ => return Err(not_in_thread()),
                };
                let in_thread = cause == root
                    || relation_of(&pdu)
                        .is_some_and(|r| r.rel_type == "m.thread" && r.parent == root.as_str());
                if !in_thread {
                    return Err(not_in_thread());
                }
                Some(self.timeline.count_of(cause)?.ok_or_else(not_in_thread)?)
            }
        };
        self.change_thread_subscription(viewer.user_id, room_id, root, |current| {
            Ok(match (current.map(|r| r.state), cause_count) {
                (Some(State::Manual), _) | (Some(State::Automatic), Some(_)) => None,
                (Some(State::Unsubscribed), Some(cause))
                    if current.is_some_and(|r| cause <= r.stamp) =>
                {
                    return Err(Error::new(
                        http::StatusCode::CONFLICT,
                        ErrorKind::ConflictingUnsubscription,
                        "You unsubscribed from this thread after that event: not subscribing \
                         again.",
                    ));
                }
                (_, Some(_)) => Some(State::Automatic),
                (_, None) => Some(State::Manual),
            })
        })
        .await
    }

    /// `DELETE .../thread/{root}/subscription`: idempotent; the unsubscription remembers the
    /// position it was made at.
    pub async fn unsubscribe_thread(
        &self,
        viewer: Viewer<'_>,
        room_id: &RoomId,
        root: &EventId,
    ) -> Result<()> {
        self.visible_thread_root(room_id, viewer, root)?;
        self.change_thread_subscription(viewer.user_id, room_id, root, |current| {
            Ok(current
                .is_some_and(|r| r.state != State::Unsubscribed)
                .then_some(State::Unsubscribed))
        })
        .await
    }

    /// Reads a thread's record, lets `decide` choose its new state (`None`: unchanged) and
    /// writes it with a new stream count: under one lock, so that requests of several devices
    /// at once are applied one after the other.
    async fn change_thread_subscription(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        root: &EventId,
        decide: impl FnOnce(Option<Record>) -> Result<Option<State>>,
    ) -> Result<()> {
        let _guard = self.thread_subscriptions_lock.lock().await;
        let root = root.as_str();
        let current = self.thread_subscription_record(user_id, room_id, root)?;
        let Some(state) = decide(current)? else {
            return Ok(());
        };
        let key = record_key(user_id, room_id, root);
        self.timeline
            .commit_counted(Batch::new(), |batch, count| {
                if let Some(previous) = current {
                    batch.delete(
                        Cf::ThreadSubscriptionChanges,
                        change_key(user_id, previous.stamp),
                    );
                }
                batch.put(
                    Cf::ThreadSubscriptions,
                    key,
                    Record {
                        state,
                        stamp: count,
                    }
                    .encode(),
                );
                batch.put(
                    Cf::ThreadSubscriptionChanges,
                    change_key(user_id, count),
                    keys::join([room_id.as_bytes(), root.as_bytes()]),
                );
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// The user's subscription changes with a stamp in `(after, before)`, newest first, at
    /// most `limit` of them (one reverse prefix scan).
    pub fn thread_subscription_changes(
        &self,
        user_id: &UserId,
        after: u64,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Changes> {
        let prefix = keys::prefix(user_id.as_bytes());
        let start = match before {
            Some(0) => return Ok(Changes::default()),
            Some(before) => change_key(user_id, before - 1),
            None => change_key(user_id, u64::MAX),
        };
        let mut changes = Changes::default();
        let mut taken = 0;
        for item in self
            .store
            .scan_prefix_rev_from(Cf::ThreadSubscriptionChanges, &prefix, &start)
        {
            let (key, value) = item?;
            let Some(stamp) = keys::parse_u64_be(&key[prefix.len()..]) else {
                continue;
            };
            if stamp <= after {
                break;
            }
            if taken == limit {
                changes.more_before = Some(stamp + 1);
                break;
            }
            let mut parts = keys::split(&value);
            let (Some(room), Some(root)) = (parts.next(), parts.next()) else {
                continue;
            };
            let (Ok(room_id), Ok(root)) = (
                RoomId::parse(String::from_utf8_lossy(room).as_ref()),
                EventId::parse(String::from_utf8_lossy(root).as_ref()),
            ) else {
                continue;
            };
            let Some(record) = self.thread_subscription_record(user_id, &room_id, root.as_str())?
            else {
                continue;
            };
            taken += 1;
            let (map, entry) = match record.state {
                State::Unsubscribed => (&mut changes.unsubscribed, json!({ "bump_stamp": stamp })),
                state => (
                    &mut changes.subscribed,
                    json!({ "automatic": state == State::Automatic, "bump_stamp": stamp }),
                ),
            };
            map.entry(room_id.to_string())
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
                .map(|threads| threads.insert(root.to_string(), entry));
        }
        Ok(changes)
    }
}
