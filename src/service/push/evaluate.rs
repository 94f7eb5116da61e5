//! Push-rule evaluation for each new event, as a consumer of the commit pipeline: who is
//! notified (and highlighted), written into the event's own batch.
//!
//! Who is considered: for a membership event, the local user it is about (an invite is for
//! them; a join or leave concerns nobody else); for any other event, the room's joined local
//! members. Never the sender, never users an application service owns. The rules are ruma's
//! evaluation of each user's rule set against the PDU, with the room's joined member count,
//! the user's display name in the room and the room's power levels.

use std::sync::{Arc, Weak};

use futures_util::FutureExt;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedRoomId, OwnedUserId, RoomId, UInt,
    UserId,
    events::room::power_levels::{RoomPowerLevels, RoomPowerLevelsSource},
    push::{Action, FlattenedJson, PushConditionPowerLevelsCtx, PushConditionRoomCtx, Ruleset},
    serde::Raw,
};
use serde::{Deserialize, Serialize};

use super::counts::{MAIN_THREAD, ReadEntries, unread_key};
use crate::{
    Result,
    service::{
        Services,
        rooms::{
            pdu,
            state_store::StateEntry,
            timeline::pipeline::{Appending, EventConsumer, Origin, Staged},
        },
    },
    store::{Batch, Cf, keys},
    utils,
};

/// How many relations are followed to find the thread of an event that relates to another
/// (the spec's advice).
const THREAD_HOPS: usize = 3;

/// A `notifications` entry: what `/notifications` lists and the pushers send.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NotificationRecord {
    pub room_id: OwnedRoomId,
    pub event_id: ruma::OwnedEventId,
    /// The actions of the rule that matched.
    pub actions: Vec<Action>,
    pub highlight: bool,
    /// The thread root, or `main`.
    pub thread: String,
    /// When it was recorded (ms since the epoch).
    pub ts: u64,
}

/// An `unread_notifications` entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UnreadRecord {
    pub thread: String,
    pub highlight: bool,
}

/// The key of a user's `notifications` entry at stream count `count`.
pub fn notification_key(user_id: &UserId, count: u64) -> Vec<u8> {
    keys::join([user_id.as_bytes(), &keys::u64_be(count)])
}

/// The consumer registered in the commit pipeline.
pub struct PushEvaluator(pub Weak<Services>);

impl EventConsumer for PushEvaluator {
    fn prepare(&self, event: &Appending<'_>) -> Result<Option<Box<dyn Staged>>> {
        if event.origin == Origin::Backfill {
            return Ok(None);
        }
        let Some(services) = self.0.upgrade() else {
            return Ok(None);
        };
        let work = services.evaluate_push(event)?;
        Ok(work.map(|mut work| {
            work.services = self.0.clone();
            Box::new(work) as Box<dyn Staged>
        }))
    }
}

/// One event's notifications, and the sender's notifications its event marks read.
struct Notified {
    room_id: OwnedRoomId,
    notified: Vec<(OwnedUserId, NotificationRecord)>,
    /// `unread_notifications` entries of the sender, read by their own event (and of a member
    /// who left).
    read: ReadEntries,
    services: Weak<Services>,
}

impl Staged for Notified {
    fn write(&mut self, batch: &mut Batch, count: u64) -> Result<()> {
        for (user_id, record) in &self.notified {
            batch.put(
                Cf::Notifications,
                notification_key(user_id, count),
                serde_json::to_vec(record)?,
            );
            batch.put(
                Cf::UnreadNotifications,
                unread_key(user_id, &self.room_id, count),
                serde_json::to_vec(&UnreadRecord {
                    thread: record.thread.clone(),
                    highlight: record.highlight,
                })?,
            );
        }
        for key in &self.read.keys {
            batch.delete(Cf::UnreadNotifications, key.clone());
        }
        Ok(())
    }

    fn committed(self: Box<Self>) {
        if let Some(services) = self.services.upgrade() {
            services.raise_unread_floors(&self.read);
            for (user_id, _) in &self.notified {
                services.push.wake_user(user_id);
            }
        }
    }
}

impl Services {
    /// Evaluates `event` for the users it may notify (see the module note).
    fn evaluate_push(&self, event: &Appending<'_>) -> Result<Option<Notified>> {
        let room_id = event.room_id;
        let local = |user: &UserId| user.server_name() == self.server_name;
        let members = self.members.of_room(room_id)?;
        let joined = members.iter().filter(|(_, m)| m == "join").count();
        let mut candidates: Vec<OwnedUserId> = match (event.event_type, event.state_key) {
            ("m.room.member", Some(target)) => {
                let target = UserId::parse(target).ok();
                let invited = pdu::content_str(event.pdu, "membership") == Some("invite");
                let joined_now = |user: &UserId| {
                    members
                        .iter()
                        .any(|(member, m)| member == user && m == "join")
                };
                target
                    .filter(|t| local(t) && (invited || joined_now(t)))
                    .into_iter()
                    .collect()
            }
            _ => members
                .iter()
                .filter(|(user, m)| m == "join" && local(user))
                .map(|(user, _)| user.clone())
                .collect(),
        };
        candidates.retain(|user| {
            user != event.sender && self.appservices.interested_in_user(user).is_empty()
        });
        let thread = self.thread_of(event.pdu)?;
        let mut read = if local(event.sender) {
            self.read_by_own_event(event.sender, room_id, &thread)?
        } else {
            ReadEntries::default()
        };
        // A local user out of the room has nothing unread in it any more.
        if event.event_type == "m.room.member"
            && matches!(
                pdu::content_str(event.pdu, "membership"),
                Some("leave" | "ban")
            )
            && let Some(target) = event.state_key.and_then(|t| UserId::parse(t).ok())
            && local(&target)
        {
            read.extend(self.read_by_receipt(&target, room_id, u64::MAX, None)?);
        }
        if candidates.is_empty() {
            return Ok((!read.is_empty()).then(|| Notified {
                room_id: room_id.to_owned(),
                notified: Vec::new(),
                read,
                services: Weak::new(),
            }));
        }

        // The event flattened once for every member's rules.
        let raw: Raw<CanonicalJsonObject> =
            Raw::from_json(serde_json::value::to_raw_value(event.pdu)?);
        let flattened = FlattenedJson::from_raw(&raw);
        let state = match self.timeline.room(room_id)? {
            Some(room) => self.timeline.current_state_entries(&room)?,
            None => Vec::new(),
        };
        let power_levels = self.push_power_levels(room_id, &state)?;
        let member_count = UInt::try_from(joined as u64).unwrap_or(UInt::MAX);
        let ts = utils::now_millis();
        let mut notified = Vec::new();
        for user in candidates {
            let rules = self.push_ruleset(&user)?;
            // The display name in this room; with none, the user ID stands in (an empty name
            // would match an empty body).
            let display_name = self
                .member_display_name(&state, &user)?
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| user.to_string());
            let mut context = PushConditionRoomCtx::new(
                room_id.to_owned(),
                member_count,
                user.clone(),
                display_name,
            );
            if let Some(power_levels) = &power_levels {
                context = context.with_power_levels(power_levels.clone());
            }
            // The first rule that applies decides; every condition ruma evaluates completes at
            // once (no thread subscriptions here).
            let mut actions: &[Action] = &[];
            for rule in rules.iter() {
                if rule.applies(&flattened, &context).now_or_never() == Some(true) {
                    actions = rule.actions();
                    break;
                }
            }
            if !actions.iter().any(Action::should_notify) {
                continue;
            }
            notified.push((
                user,
                NotificationRecord {
                    room_id: room_id.to_owned(),
                    event_id: event.event_id.to_owned(),
                    actions: actions.to_vec(),
                    highlight: actions.iter().any(Action::is_highlight),
                    thread: thread.clone(),
                    ts,
                },
            ));
        }
        if notified.is_empty() && read.is_empty() {
            return Ok(None);
        }
        Ok(Some(Notified {
            room_id: room_id.to_owned(),
            notified,
            read,
            services: Weak::new(),
        }))
    }

    /// A user's push rules, parsed once until they change.
    pub(crate) fn push_ruleset(&self, user_id: &UserId) -> Result<Arc<Ruleset>> {
        if let Some(rules) = self.push.rules.get(user_id) {
            return Ok(rules);
        }
        let rules = Arc::new(self.push_rules(user_id)?);
        self.push.rules.insert(user_id.to_owned(), rules.clone());
        Ok(rules)
    }

    /// `displayname` of `user_id`'s member event in `state`, remembered by the event's short
    /// ID (an event never changes, so neither does the name read from it).
    fn member_display_name(
        &self,
        state: &[StateEntry],
        user_id: &UserId,
    ) -> Result<Option<String>> {
        let Some(short) = self
            .timeline
            .lookup_short(state, "m.room.member", user_id.as_str())?
        else {
            return Ok(None);
        };
        if let Some(name) = self.push.display_names.get(&short) {
            return Ok(name);
        }
        let Some(event_id) = self.short_ids.event_id(short)? else {
            return Ok(None);
        };
        let name = EventId::parse(&event_id)
            .ok()
            .map(|id| self.timeline.pdu_json(&id))
            .transpose()?
            .flatten()
            .and_then(|pdu| pdu::content_str(&pdu, "displayname").map(str::to_owned));
        self.push.display_names.insert(short, name.clone());
        Ok(name)
    }

    /// The room's power levels as push conditions need them (`@room` permission), with the
    /// room version's creators.
    fn push_power_levels(
        &self,
        room_id: &RoomId,
        state: &[StateEntry],
    ) -> Result<Option<PushConditionPowerLevelsCtx>> {
        let Some(room) = self.timeline.room(room_id)? else {
            return Ok(None);
        };
        let Some(rules) = room.version.rules() else {
            return Ok(None);
        };
        let Some(create) = self
            .timeline
            .lookup(state, "m.room.create", "")?
            .and_then(|id| self.timeline.pdu_json(&id).ok().flatten())
        else {
            return Ok(None);
        };
        let mut creators: Vec<OwnedUserId> = Vec::new();
        let creator = if rules.authorization.use_room_create_sender {
            pdu::str_field(&create, "sender")
        } else {
            pdu::content_str(&create, "creator")
        };
        creators.extend(creator.and_then(|c| UserId::parse(c).ok()));
        if rules.authorization.additional_room_creators
            && let Some(CanonicalJsonValue::Object(content)) = create.get("content")
            && let Some(CanonicalJsonValue::Array(more)) = content.get("additional_creators")
        {
            creators.extend(more.iter().filter_map(|c| match c {
                CanonicalJsonValue::String(c) => UserId::parse(c).ok(),
                _ => None,
            }));
        }
        let source = match self.timeline.lookup(state, "m.room.power_levels", "")? {
            Some(id) => match self
                .timeline
                .pdu_json(&id)?
                .and_then(|p| p.get("content").cloned())
            {
                Some(content) => {
                    let content: serde_json::Value = content.into();
                    match serde_json::from_value(content) {
                        Ok(content) => RoomPowerLevelsSource::Original(content),
                        Err(_) => RoomPowerLevelsSource::None,
                    }
                }
                None => RoomPowerLevelsSource::None,
            },
            None => RoomPowerLevelsSource::None,
        };
        let levels = RoomPowerLevels::new(source, &rules.authorization, creators);
        Ok(Some(levels.into()))
    }

    /// The thread an event belongs to: the root a `m.thread` relation names; for another
    /// relation, the thread of the event it relates to (a few hops at most); else `main`.
    pub(crate) fn thread_of(&self, pdu: &CanonicalJsonObject) -> Result<String> {
        let mut current = pdu.clone();
        for _ in 0..=THREAD_HOPS {
            let Some(CanonicalJsonValue::Object(content)) = current.get("content") else {
                break;
            };
            let Some(CanonicalJsonValue::Object(relates)) = content.get("m.relates_to") else {
                break;
            };
            let (Some(CanonicalJsonValue::String(rel)), Some(CanonicalJsonValue::String(parent))) =
                (relates.get("rel_type"), relates.get("event_id"))
            else {
                break;
            };
            if rel == "m.thread" {
                return Ok(parent.clone());
            }
            let Some(parent) = ruma::EventId::parse(parent)
                .ok()
                .and_then(|id| self.timeline.pdu_json(&id).ok().flatten())
            else {
                break;
            };
            current = parent;
        }
        Ok(MAIN_THREAD.to_owned())
    }
}
