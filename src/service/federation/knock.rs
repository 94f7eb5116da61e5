//! Knocking across servers, restricted joins authorised by this server, and the parts of a
//! room's surroundings other servers ask about (space hierarchy, room directory):
//! - as the *resident* server: `make_knock` hands a remote user's server a knock template,
//!   `send_knock` appends the signed knock and answers with the room's stripped state;
//! - as the *knocking* server: a local user knocks on a room that lives elsewhere (`make_knock`,
//!   sign, `send_knock`); the knock is kept in `remote_invites` like an invite, so `/sync` shows
//!   it under `rooms.knock`, withdrawing it goes through `make_leave`/`send_leave`, and the
//!   invite that may follow replaces it;
//! - `restricted` joins: as resident, `make_join` names a local user who may invite
//!   (`join_authorised_via_users_server`) and `send_join` adds our signature.

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedServerName, OwnedUserId, RoomId,
    RoomVersionId, ServerName, UserId,
    api::{
        error::ErrorKind,
        federation::{
            directory::{get_public_rooms, get_public_rooms_filtered},
            membership::{RawStrippedState, create_knock_event, prepare_knock_event},
        },
    },
    directory::{Filter, RoomNetwork},
    events::room::member::MembershipState,
};
use serde_json::{Value, json};

use super::{invite::RemoteInvite, membership::supported_versions};
use crate::service::rooms::pdu::rules_of;
use crate::{
    Error, Result,
    service::{Services, rooms::timeline::LocalEvent},
};

/// State event types a knocker's server is shown, as for invites.
const KNOCK_STATE: &[&str] = &[
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
];

fn raw(object: &CanonicalJsonObject) -> Result<Box<serde_json::value::RawValue>> {
    serde_json::value::to_raw_value(object).map_err(|e| Error::internal(e.to_string()))
}

/// Room versions before 7 have no knocking at all.
fn no_knocking(version: &RoomVersionId) -> Error {
    Error::forbidden(format!(
        "The room is version {version}, which does not support knocking."
    ))
}

impl Services {
    /// The content of a current state event `(event_type, "")` of a local room.
    pub(crate) fn current_content(&self, room_id: &RoomId, event_type: &str) -> Result<Value> {
        let state = self.timeline.current_state(room_id)?;
        Ok(match state.get(&(event_type.to_owned(), String::new())) {
            Some(id) => self.timeline.event_fields(room_id, id)?["content"].take(),
            None => Value::Null,
        })
    }

    /// The room's join rule (`invite` when it has no join rules event, as the auth rules read
    /// it) and its `allow` list.
    pub fn join_rule_of(&self, room_id: &RoomId) -> Result<(String, Vec<Value>)> {
        let content = self.current_content(room_id, "m.room.join_rules")?;
        let rule = content["join_rule"].as_str().unwrap_or("invite").to_owned();
        let allow = content["allow"].as_array().cloned().unwrap_or_default();
        Ok((rule, allow))
    }

    /// For a `restricted` (or `knock_restricted`) join by `user_id`: a local joined member
    /// who may invite, once the user satisfies one of the `allow` rules (joined to one of
    /// the rooms it names, which this server must know). The errors are the spec's:
    /// 400 `M_UNABLE_TO_AUTHORISE_JOIN` when no allowed room is known here, 403 when the user
    /// is in none of them, 400 `M_UNABLE_TO_GRANT_JOIN` when no local member may invite.
    pub fn restricted_join_authoriser(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        allow: &[Value],
    ) -> Result<OwnedUserId> {
        let mut known_any = false;
        let mut satisfied = false;
        for rule in allow {
            if rule["type"] != "m.room_membership" {
                continue;
            }
            let Some(allowed) = rule["room_id"].as_str().and_then(|r| RoomId::parse(r).ok()) else {
                continue;
            };
            if self.timeline.room(&allowed)?.is_none() {
                continue;
            }
            known_any = true;
            if self.members.member_state(&allowed, user_id)? == Some(MembershipState::Join) {
                satisfied = true;
                break;
            }
        }
        if !satisfied {
            return Err(if known_any {
                Error::forbidden("You are not in any of the rooms this room allows.")
            } else {
                Error::new(
                    http::StatusCode::BAD_REQUEST,
                    ErrorKind::UnableToAuthorizeJoin,
                    "This server cannot tell whether you are in the rooms this room allows.",
                )
            });
        }
        let power = self.current_content(room_id, "m.room.power_levels")?;
        let needed = power["invite"].as_i64().unwrap_or(0);
        for (member, membership) in self.members.of_room(room_id)? {
            if membership == MembershipState::Join
                && member.server_name() == self.server_name
                && self.power_level(room_id, &member)? >= needed
            {
                return Ok(member);
            }
        }
        Err(Error::new(
            http::StatusCode::BAD_REQUEST,
            ErrorKind::UnableToGrantJoin,
            "No user on this server may let you in.",
        ))
    }

    /// The local user who vouches for a local user's join of a local `restricted` room, when
    /// one is needed and can be found; otherwise the auth rules have the last word.
    pub fn local_join_authoriser(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<Option<OwnedUserId>> {
        let Some(room) = self.timeline.room(room_id)? else {
            return Ok(None);
        };
        let rules = rules_of(&room.version)?;
        let (rule, allow) = self.join_rule_of(room_id)?;
        let restricted = (rule == "restricted" && rules.authorization.restricted_join_rule)
            || (rule == "knock_restricted" && rules.authorization.knock_restricted_join_rule);
        if !restricted
            || matches!(
                self.members.member_state(room_id, user_id)?,
                Some(MembershipState::Invite | MembershipState::Join)
            )
        {
            return Ok(None);
        }
        Ok(self
            .restricted_join_authoriser(room_id, user_id, &allow)
            .ok())
    }

    /// A restricted join authorised by one of our users carries our signature too (the auth
    /// rules require it): added to the PDU before it is checked and appended.
    pub(super) fn countersign_authorised_join(
        &self,
        version: &RoomVersionId,
        pdu: &mut CanonicalJsonObject,
    ) -> Result<()> {
        let authoriser = match pdu.get("content") {
            Some(CanonicalJsonValue::Object(c)) => {
                match c.get("join_authorised_via_users_server") {
                    Some(CanonicalJsonValue::String(u)) => UserId::parse(u).ok(),
                    _ => None,
                }
            }
            _ => None,
        };
        let Some(authoriser) = authoriser else {
            return Ok(());
        };
        if authoriser.server_name() != self.server_name {
            return Ok(());
        }
        let rules = rules_of(version)?;
        if !rules.authorization.restricted_join_rule {
            return Ok(());
        }
        ruma::signatures::sign_event(
            self.server_name.as_str(),
            self.globals.signing_key(),
            pdu,
            &rules.redaction,
        )
        .map_err(|e| Error::bad_json(format!("Cannot sign the join: {e}")))
    }

    /// `make_knock` as the resident server.
    pub fn make_knock_template(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        user_id: &UserId,
        versions: &[RoomVersionId],
    ) -> Result<(RoomVersionId, CanonicalJsonObject)> {
        let room = self.room_for_template(
            origin,
            room_id,
            user_id,
            versions,
            "You can only knock for your own users.",
        )?;
        let rules = rules_of(&room.version)?;
        if !rules.authorization.knocking {
            return Err(no_knocking(&room.version));
        }
        // Refuse early what the auth rules would refuse at send_knock.
        let (rule, _) = self.join_rule_of(room_id)?;
        let knockable = rule == "knock"
            || (rule == "knock_restricted" && rules.authorization.knock_restricted_join_rule);
        if !knockable {
            return Err(Error::forbidden("This room does not accept knocks."));
        }
        if matches!(
            self.members.member_state(room_id, user_id)?,
            Some(MembershipState::Join | MembershipState::Ban | MembershipState::Invite)
        ) {
            return Err(Error::forbidden(
                "You cannot knock on a room you are in, banned from or invited to.",
            ));
        }
        self.timeline.event_template(
            room_id,
            user_id,
            LocalEvent::state(
                "m.room.member",
                user_id.as_str(),
                json!({ "membership": "knock" }),
            ),
        )
    }

    /// `send_knock` as the resident server: appends the knock and answers with the room's
    /// stripped state (full PDUs, as the spec asks since v1.16).
    pub async fn accept_send_knock(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
        pdu: &serde_json::value::RawValue,
    ) -> Result<Vec<RawStrippedState>> {
        let room = self
            .timeline
            .room(room_id)?
            .ok_or_else(|| Error::not_found("Unknown room."))?;
        if !rules_of(&room.version)?.authorization.knocking {
            return Err(no_knocking(&room.version));
        }
        self.accept_membership_event(origin, room_id, event_id, pdu, MembershipState::Knock)
            .await?;
        self.knock_state_pdus(room_id)
    }

    fn knock_state_pdus(&self, room_id: &RoomId) -> Result<Vec<RawStrippedState>> {
        let room = self
            .timeline
            .room(room_id)?
            .ok_or_else(|| Error::not_found("Unknown room."))?;
        let entries = self.timeline.current_state_entries(&room)?;
        let mut state = Vec::new();
        for kind in KNOCK_STATE {
            if let Some(id) = self.timeline.lookup(&entries, kind, "")?
                && let Some(pdu) = self.timeline.pdu_json(&id)?
            {
                state.push(RawStrippedState::Pdu(raw(&pdu)?));
            }
        }
        Ok(state)
    }

    /// `POST /knock` by a local user: locally when this server takes part in the room (or
    /// nobody else can be asked), else through `via` and the room ID's server.
    pub async fn knock_anywhere(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        via: &[OwnedServerName],
        reason: Option<&str>,
    ) -> Result<()> {
        self.check_room_not_blocked(room_id)?;
        if self.is_resident(room_id)? || !self.federation.enabled {
            self.knock(room_id, user_id, reason).await?;
            return Ok(());
        }
        let mut candidates: Vec<OwnedServerName> = Vec::new();
        for server in via
            .iter()
            .cloned()
            .chain(room_id.server_name().map(ToOwned::to_owned))
        {
            if server != self.server_name && !candidates.contains(&server) {
                candidates.push(server);
            }
        }
        if candidates.is_empty() {
            // Nobody to ask: a local room nobody here is in, or nothing at all.
            self.knock(room_id, user_id, reason).await?;
            return Ok(());
        }
        let mut last_error = Error::not_found("No server could take your knock.");
        for server in candidates {
            match self.knock_through(&server, room_id, user_id, reason).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::info!(%room_id, %server, "knocking through this server failed: {e}");
                    // A refusal by the room itself is the answer; other servers would agree.
                    if e.to_status_and_body().0 == http::StatusCode::FORBIDDEN {
                        return Err(e);
                    }
                    last_error = e;
                }
            }
        }
        Err(last_error)
    }

    async fn knock_through(
        &self,
        server: &ServerName,
        room_id: &RoomId,
        user_id: &UserId,
        reason: Option<&str>,
    ) -> Result<()> {
        let mut request =
            prepare_knock_event::v1::Request::new(room_id.to_owned(), user_id.to_owned());
        request.ver = supported_versions();
        let response = self.send_federation_request(server, request).await?;
        let version = response.room_version;
        let rules = rules_of(&version)?;
        if !rules.authorization.knocking {
            return Err(no_knocking(&version));
        }
        let signed = self.sign_membership_template(
            server,
            &response.event,
            room_id,
            user_id,
            &rules,
            "knock",
            reason,
        )?;
        let response = self
            .send_federation_request(
                server,
                create_knock_event::v1::Request::new(
                    room_id.to_owned(),
                    signed.event_id.clone(),
                    raw(&signed.json)?,
                ),
            )
            .await?;
        let room_state = response
            .knock_room_state
            .iter()
            .filter_map(|state| match state {
                #[allow(deprecated)]
                RawStrippedState::Stripped(raw) => serde_json::from_str(raw.json().get()).ok(),
                RawStrippedState::Pdu(raw) => serde_json::from_str(raw.get()).ok(),
                #[allow(unreachable_patterns)]
                _ => None,
            })
            .collect();
        let mut servers = vec![server.to_owned()];
        if let Some(room_server) = room_id.server_name()
            && room_server != server
        {
            servers.push(room_server.to_owned());
        }
        self.keep_remote_membership(
            user_id,
            room_id,
            MembershipState::Knock,
            RemoteInvite {
                event_id: signed.event_id.clone(),
                room_version: version,
                event: signed.json,
                room_state,
                servers,
            },
        )
        .await
    }

    /// `GET /hierarchy/{roomId}` for another server: the room and its `m.space.child`
    /// children this server knows, as summaries; children it cannot show are listed as
    /// inaccessible. Only rooms anyone may see (public, knockable, world readable), or that
    /// `origin` takes part in, are shown; restricted rooms too (the requester filters them).
    pub fn hierarchy_for_server(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        suggested_only: bool,
    ) -> Result<Value> {
        let accessible = |room_id: &RoomId| -> Result<bool> {
            if self.timeline.room(room_id)?.is_none() {
                return Ok(false);
            }
            let (rule, _) = self.join_rule_of(room_id)?;
            let world_readable = self.current_content(room_id, "m.room.history_visibility")?["history_visibility"]
                == "world_readable";
            Ok(world_readable
                || matches!(
                    rule.as_str(),
                    "public" | "knock" | "knock_restricted" | "restricted"
                )
                || self.server_in_room(origin, room_id)?)
        };
        if !accessible(room_id)? {
            return Err(Error::not_found(
                "This server knows no such room, or you may not see it.",
            ));
        }
        let summary = |room_id: &RoomId, with_children: bool| -> Result<Value> {
            let mut summary = self.describe_room(room_id)?.summary_json()?;
            if with_children {
                summary["children_state"] =
                    Value::Array(self.space_children(room_id, suggested_only)?);
            }
            Ok(summary)
        };
        let parent = summary(room_id, true)?;
        let mut children = Vec::new();
        let mut inaccessible = Vec::new();
        for child in parent["children_state"].as_array().into_iter().flatten() {
            let Some(child_id) = child["state_key"]
                .as_str()
                .and_then(|r| RoomId::parse(r).ok())
            else {
                continue;
            };
            if self.timeline.room(&child_id)?.is_none() {
                // Not ours to describe: the requester asks the child's servers.
                continue;
            }
            if accessible(&child_id)? {
                children.push(summary(&child_id, false)?);
            } else {
                inaccessible.push(child_id.to_string());
            }
        }
        Ok(json!({
            "room": parent,
            "children": children,
            "inaccessible_children": inaccessible,
        }))
    }

    /// Another server's public room directory, for a local client (`/publicRooms?server=`).
    pub async fn remote_public_rooms(
        &self,
        server: &ServerName,
        limit: Option<ruma::UInt>,
        since: Option<String>,
        filter: Option<Filter>,
        room_network: RoomNetwork,
    ) -> Result<Value> {
        if !self.federation.enabled {
            return Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                ErrorKind::Unknown,
                "Other servers' room directories need federation, which is disabled here.",
            ));
        }
        let (chunk, next_batch, prev_batch, total) = match filter {
            None => {
                let mut request = get_public_rooms::v1::Request::new();
                request.limit = limit;
                request.since = since;
                request.room_network = room_network;
                let r = self.send_federation_request(server, request).await?;
                (
                    r.chunk,
                    r.next_batch,
                    r.prev_batch,
                    r.total_room_count_estimate,
                )
            }
            Some(filter) => {
                let mut request = get_public_rooms_filtered::v1::Request::new();
                request.limit = limit;
                request.since = since;
                request.filter = filter;
                request.room_network = room_network;
                let r = self.send_federation_request(server, request).await?;
                (
                    r.chunk,
                    r.next_batch,
                    r.prev_batch,
                    r.total_room_count_estimate,
                )
            }
        };
        let mut response = json!({ "chunk": serde_json::to_value(&chunk)? });
        if let Some(total) = total {
            response["total_room_count_estimate"] = json!(total);
        }
        if let Some(next) = next_batch {
            response["next_batch"] = json!(next);
        }
        if let Some(prev) = prev_batch {
            response["prev_batch"] = json!(prev);
        }
        Ok(response)
    }
}
