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
    events::room::member::MembershipState,
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
        appservice::Appservice,
        rooms::{
            pdu,
            state_store::StateEntry,
            timeline::RoomRecord,
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
        if matches!(event.origin, Origin::Backfill | Origin::Import) {
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

    fn written(&mut self) {
        if let Some(services) = self.services.upgrade() {
            services.unread_entries_deleted(&self.read);
        }
    }

    fn committed(self: Box<Self>) {
        if let Some(services) = self.services.upgrade() {
            for (user_id, _) in &self.notified {
                services.push.wake_user(user_id);
            }
        }
    }
}

/// What evaluating an event needs of its room besides the event itself. It is the same for
/// every event until the room's state changes (or the application services registered do), so
/// it is built once per state snapshot rather than once per event: the members to consider
/// with their display names, the member count and the power levels.
pub(super) struct RoomPushContext {
    /// The room's state snapshot (short state hash) this was built from.
    state: u64,
    /// The registrations it was built with (users an appservice owns are never notified).
    appservices: Arc<Vec<Arc<Appservice>>>,
    /// Joined local members an event may notify (none owned by an appservice), each with their
    /// display name in the room, or their user ID when they have none (an empty name would
    /// match an empty body).
    members: Vec<(OwnedUserId, String)>,
    member_count: UInt,
    power_levels: Option<PushConditionPowerLevelsCtx>,
}

/// Weighs a cached room context by its members, so a few large rooms cannot crowd out memory.
#[derive(Clone)]
pub(super) struct MembersWeighter;

impl quick_cache::Weighter<OwnedRoomId, Arc<RoomPushContext>> for MembersWeighter {
    fn weight(&self, _room: &OwnedRoomId, context: &Arc<RoomPushContext>) -> u64 {
        context.members.len() as u64 + 4
    }
}

impl Services {
    /// Evaluates `event` for the users it may notify (see the module note).
    fn evaluate_push(&self, event: &Appending<'_>) -> Result<Option<Notified>> {
        let room_id = event.room_id;
        let local = |user: &UserId| user.server_name() == self.server_name;
        let room = self.room_push_context(room_id)?;
        let mut candidates: Vec<(OwnedUserId, String)> = match (event.event_type, event.state_key) {
            ("m.room.member", Some(target)) => {
                let target = UserId::parse(target).ok().filter(|t| local(t));
                let invited = pdu::content_str(event.pdu, "membership") == Some("invite");
                match target {
                    Some(target) => match room.members.iter().find(|(m, _)| *m == target) {
                        Some(member) => vec![member.clone()],
                        // An invite the user blocks (MSC4380) is never shown, so it does
                        // not notify either.
                        None if invited
                            && self.appservices.interested_in_user(&target).is_empty()
                            && !self.invites_blocked(&target)? =>
                        {
                            let name = self.display_name_in_room(room_id, &target)?;
                            vec![(target, name)]
                        }
                        None => Vec::new(),
                    },
                    None => Vec::new(),
                }
            }
            _ => room.members.clone(),
        };
        candidates.retain(|(user, _)| user != event.sender);
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
        let Some((first_user, first_name)) = candidates.first().cloned() else {
            return Ok((!read.is_empty()).then(|| Notified {
                room_id: room_id.to_owned(),
                notified: Vec::new(),
                read,
                services: Weak::new(),
            }));
        };

        // The event flattened once, and one condition context whose user is changed from
        // member to member, for every member's rules.
        let raw: Raw<CanonicalJsonObject> =
            Raw::from_json(serde_json::value::to_raw_value(event.pdu)?);
        let flattened = FlattenedJson::from_raw(&raw);
        let mut context = PushConditionRoomCtx::new(
            room_id.to_owned(),
            room.member_count,
            first_user,
            first_name,
        );
        if let Some(power_levels) = &room.power_levels {
            context = context.with_power_levels(power_levels.clone());
        }
        let ts = utils::now_millis();
        let thread_rules = self.thread_subscriptions_enabled();
        let mut notified = Vec::new();
        for (user, display_name) in candidates {
            // Who ignores the sender is not notified (a cache lookup, no read).
            if self.ignored_users(&user)?.contains(event.sender) {
                continue;
            }
            let rules = self.push_ruleset(&user)?;
            // MSC4306's condition: whether this user follows the event's thread (one point
            // read, for thread events only).
            if thread_rules && thread != MAIN_THREAD {
                let subscribed = self.subscribed_to_thread(&user, room_id, &thread)?;
                context = context.with_has_thread_subscription_fn(move |_| {
                    Box::pin(std::future::ready(subscribed))
                });
            }
            context.user_id = user;
            context.user_display_name = display_name;
            // The first rule that applies decides; every condition ruma evaluates completes at
            // once (the thread-subscription answer is ready before).
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
                context.user_id.clone(),
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

    /// The room's push context for its current state: cached, or built (one state load, one
    /// member scan, a display name per member — each remembered by its member event).
    fn room_push_context(&self, room_id: &RoomId) -> Result<Arc<RoomPushContext>> {
        let Some(room) = self.timeline.room(room_id)? else {
            return Ok(Arc::new(RoomPushContext {
                state: 0,
                appservices: self.appservices.list(),
                members: Vec::new(),
                member_count: UInt::MIN,
                power_levels: None,
            }));
        };
        let appservices = self.appservices.list();
        if let Some(context) = self.push.room_contexts.get(room_id)
            && context.state == room.state
            && Arc::ptr_eq(&context.appservices, &appservices)
        {
            return Ok(context);
        }
        let state = self.timeline.current_state_entries(&room)?;
        let local = |user: &UserId| user.server_name() == self.server_name;
        let joined: Vec<OwnedUserId> = self
            .members
            .of_room(room_id)?
            .into_iter()
            .filter(|(_, m)| *m == MembershipState::Join)
            .map(|(user, _)| user)
            .collect();
        let member_count = UInt::try_from(joined.len() as u64).unwrap_or(UInt::MAX);
        let mut members = Vec::new();
        for user in joined {
            if !local(&user) || !self.appservices.interested_in_user(&user).is_empty() {
                continue;
            }
            let name = self.display_name_or_id(&state, &user)?;
            members.push((user, name));
        }
        let context = Arc::new(RoomPushContext {
            state: room.state,
            appservices,
            members,
            member_count,
            power_levels: self.push_power_levels(&room, &state)?,
        });
        self.push
            .room_contexts
            .insert(room_id.to_owned(), context.clone());
        Ok(context)
    }

    /// `user_id`'s display name in the room's current state, or their user ID.
    fn display_name_in_room(&self, room_id: &RoomId, user_id: &UserId) -> Result<String> {
        let state = match self.timeline.room(room_id)? {
            Some(room) => self.timeline.current_state_entries(&room)?,
            None => Vec::new(),
        };
        self.display_name_or_id(&state, user_id)
    }

    /// `user_id`'s display name in `state`; with none (or an empty one), their user ID.
    fn display_name_or_id(&self, state: &[StateEntry], user_id: &UserId) -> Result<String> {
        Ok(self
            .member_display_name(state, user_id)?
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| user_id.to_string()))
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
        room: &RoomRecord,
        state: &[StateEntry],
    ) -> Result<Option<PushConditionPowerLevelsCtx>> {
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
        let mut parent_pdu: Option<CanonicalJsonObject> = None;
        for _ in 0..=THREAD_HOPS {
            let current = parent_pdu.as_ref().unwrap_or(pdu);
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
            parent_pdu = Some(parent);
        }
        Ok(MAIN_THREAD.to_owned())
    }
}
