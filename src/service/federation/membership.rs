//! Joining rooms across servers, both ways:
//! - as the *resident* server: `make_join` hands a remote user's server an event template,
//!   `send_join` takes the signed join, appends it and answers with the room's state and auth
//!   chain;
//! - as the *joining* server: a local user joins a room that lives elsewhere — `make_join`,
//!   sign, `send_join`, check everything that comes back, and set the room up here.

use std::collections::BTreeSet;

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedRoomId, OwnedServerName,
    RoomAliasId, RoomId, RoomVersionId, ServerName, UserId,
    api::{
        error::ErrorKind,
        federation::{
            membership::{create_join_event, prepare_join_event},
            query::get_room_information,
        },
    },
    events::room::member::MembershipState,
};
use serde_json::value::RawValue;

use super::pdu_check::event_id_of;
use crate::service::rooms::pdu::rules_of;
use crate::{
    Error, Result,
    service::{
        Services,
        rooms::{
            pdu::str_field,
            timeline::{Appended, LocalEvent, ReceivedState, RoomRecord},
        },
    },
};

/// Room versions this server can join.
pub fn supported_versions() -> Vec<RoomVersionId> {
    use RoomVersionId::*;
    vec![V1, V2, V3, V4, V5, V6, V7, V8, V9, V10, V11, V12]
}

fn raw(object: &CanonicalJsonObject) -> Result<Box<RawValue>> {
    serde_json::value::to_raw_value(object).map_err(|e| Error::internal(e.to_string()))
}

fn parse_object(raw: &RawValue) -> Result<CanonicalJsonObject> {
    serde_json::from_str(raw.get()).map_err(|e| Error::bad_json(format!("Not a PDU: {e}")))
}

fn membership_of(pdu: &CanonicalJsonObject) -> Option<MembershipState> {
    match pdu.get("content") {
        Some(CanonicalJsonValue::Object(c)) => match c.get("membership") {
            Some(CanonicalJsonValue::String(m)) => Some(MembershipState::from(m.as_str())),
            _ => None,
        },
        _ => None,
    }
}

impl Services {
    /// Whether this server takes part in a room: it has it, and a local user is joined.
    pub fn is_resident(&self, room_id: &RoomId) -> Result<bool> {
        if self.timeline.room(room_id)?.is_none() {
            return Ok(false);
        }
        self.members.server_in_room(room_id, &self.server_name)
    }

    /// What `make_join` and `make_knock` check first, as the resident server: the user is the
    /// asking server's (`not_yours` otherwise), this server takes part in the room, and the
    /// asking server supports the room's version. Returns the room.
    pub(super) fn room_for_template(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        user_id: &UserId,
        versions: &[RoomVersionId],
        not_yours: &'static str,
    ) -> Result<RoomRecord> {
        if user_id.server_name() != origin {
            return Err(Error::forbidden(not_yours));
        }
        let room = match self.timeline.room(room_id)? {
            Some(room) if self.members.server_in_room(room_id, &self.server_name)? => room,
            _ => return Err(Error::not_found("This server is not in that room.")),
        };
        if !versions.contains(&room.version) {
            return Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                ErrorKind::IncompatibleRoomVersion(
                    ruma::api::error::IncompatibleRoomVersionErrorData::new(room.version.clone()),
                ),
                format!(
                    "The room is version {}, which your server does not support.",
                    room.version
                ),
            ));
        }
        Ok(room)
    }

    /// `make_join` as the resident server.
    pub fn make_join_template(
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
            "You can only join your own users.",
        )?;
        // Refuse early what the auth rules would refuse at send_join: a join needs a public
        // room, an invite, an existing membership, or (restricted rooms) one of our users to
        // vouch for the joiner.
        let rules = rules_of(&room.version)?;
        let (join_rule, allow) = self.join_rule_of(room_id)?;
        let membership = self.members.member_state(room_id, user_id)?;
        let mut content = serde_json::json!({ "membership": "join" });
        let restricted = (join_rule == "restricted" && rules.authorization.restricted_join_rule)
            || (join_rule == "knock_restricted" && rules.authorization.knock_restricted_join_rule);
        if join_rule != "public"
            && !matches!(
                membership,
                Some(MembershipState::Invite | MembershipState::Join)
            )
        {
            if !restricted {
                return Err(Error::forbidden("You are not invited to this room."));
            }
            let authoriser = self.restricted_join_authoriser(room_id, user_id, &allow)?;
            content["join_authorised_via_users_server"] = serde_json::json!(authoriser);
        }
        let (version, template) = self.timeline.event_template(
            room_id,
            user_id,
            LocalEvent::state("m.room.member", user_id.as_str(), content),
        )?;
        Ok((version, template))
    }

    /// `send_join` (v2) as the resident server: checks and appends the join, then answers with
    /// the state before it and the auth chain.
    pub async fn accept_send_join(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
        pdu: &RawValue,
    ) -> Result<create_join_event::v2::RoomState> {
        let room = self
            .timeline
            .room(room_id)?
            .ok_or_else(|| Error::not_found("Unknown room."))?;
        let pdu = self
            .accept_membership_event(origin, room_id, event_id, pdu, MembershipState::Join)
            .await?;
        let state_ids: Vec<OwnedEventId> = self
            .timeline
            .expand_entries(&self.timeline.state_entries_before(event_id)?)?
            .into_values()
            .collect();
        let chain = self.timeline.auth_chain(
            &room.version,
            state_ids
                .iter()
                .map(|id| &**id)
                .chain(std::iter::once(event_id)),
        )?;
        let mut response = create_join_event::v2::RoomState::new();
        for id in &state_ids {
            if let Some(pdu) = self.timeline.pdu_json(id)? {
                response.state.push(raw(&pdu)?);
            }
        }
        for id in &chain {
            if let Some(pdu) = self.timeline.pdu_json(id)? {
                response.auth_chain.push(raw(&pdu)?);
            }
        }
        response.event = Some(raw(&pdu)?);
        response.servers_in_room = Some(
            self.servers_in_room(room_id)?
                .into_iter()
                .map(|s| s.to_string())
                .collect(),
        );
        Ok(response)
    }

    /// A remote user's signed `membership` event (`send_join`, `send_leave`) as the resident
    /// server: checked like any PDU, appended, and passed on to the room's other servers.
    pub async fn accept_membership_event(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
        pdu: &RawValue,
        membership: MembershipState,
    ) -> Result<CanonicalJsonObject> {
        if !self.is_resident(room_id)? {
            return Err(Error::not_found("This server is not in that room."));
        }
        let room = self
            .timeline
            .room(room_id)?
            .ok_or_else(|| Error::not_found("Unknown room."))?;
        let mut pdu = parse_object(pdu)?;
        if membership == MembershipState::Join {
            self.countersign_authorised_join(&room.version, &mut pdu)?;
        }
        let (checked_id, pdu) = self.check_incoming_pdu(&room.version, pdu).await?;
        if checked_id != event_id {
            return Err(Error::bad_json("The event ID does not match the event."));
        }
        let sender = str_field(&pdu, "sender")
            .and_then(|s| UserId::parse(s).ok())
            .ok_or_else(|| Error::bad_json("The event has no valid sender."))?;
        if str_field(&pdu, "type") != Some("m.room.member")
            || str_field(&pdu, "state_key") != Some(sender.as_str())
            || membership_of(&pdu).as_ref() != Some(&membership)
            || str_field(&pdu, "room_id") != Some(room_id.as_str())
        {
            return Err(Error::bad_json(format!(
                "That is not a {membership} event for this room."
            )));
        }
        if sender.server_name() != origin {
            return Err(Error::forbidden("Only your own users' membership."));
        }
        match self
            .timeline
            .append_remote(room_id, event_id, pdu.clone())
            .await?
        {
            Appended::New | Appended::Known => {}
            Appended::SoftFailed => {
                return Err(Error::forbidden(
                    "The event is not allowed by the room's state.",
                ));
            }
            Appended::MissingPrevious(_) => {
                return Err(Error::bad_json(
                    "The event refers to events this server does not have.",
                ));
            }
        }
        self.forward_to_room_servers(room_id, Some(origin), event_id)
            .await?;
        Ok(pdu)
    }

    /// `make_leave` as the resident server: the template of a remote user's leave (to refuse an
    /// invite, or leave).
    pub fn make_leave_template(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<(RoomVersionId, CanonicalJsonObject)> {
        if user_id.server_name() != origin {
            return Err(Error::forbidden("Only your own users can leave."));
        }
        if !self.is_resident(room_id)? {
            return Err(Error::not_found("This server is not in that room."));
        }
        self.timeline.event_template(
            room_id,
            user_id,
            LocalEvent::state(
                "m.room.member",
                user_id.as_str(),
                serde_json::json!({ "membership": "leave" }),
            ),
        )
    }

    /// A local user joins `room_id`: locally when this server takes part in the room, else
    /// through one of `via` (then the room ID's own server, for rooms before v12).
    pub async fn join_room(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        via: &[OwnedServerName],
        reason: Option<&str>,
    ) -> Result<()> {
        self.check_room_not_blocked(room_id)?;
        // Guests join only rooms of this server that let guests in.
        if self.users.restriction(user_id).guest
            && !(self.is_resident(room_id)?
                && self.current_content(room_id, "m.room.guest_access")?["guest_access"]
                    == "can_join")
        {
            return Err(Error::forbidden("This room does not let guests join."));
        }
        if self.is_resident(room_id)? || !self.federation.enabled {
            self.set_membership(room_id, user_id, user_id, MembershipState::Join, reason)
                .await?;
            return Ok(());
        }
        let mut candidates: Vec<OwnedServerName> = Vec::new();
        let invited_through = self
            .remote_invite(user_id, room_id)?
            .map(|invite| invite.servers)
            .unwrap_or_default();
        for server in via
            .iter()
            .cloned()
            .chain(invited_through)
            .chain(room_id.server_name().map(ToOwned::to_owned))
        {
            if server != self.server_name && !candidates.contains(&server) {
                candidates.push(server);
            }
        }
        if candidates.is_empty() {
            // Nobody to ask: it is a local room we are not in (or nothing at all).
            self.set_membership(room_id, user_id, user_id, MembershipState::Join, reason)
                .await?;
            return Ok(());
        }
        let mut last_error = Error::not_found("No server could let you join that room.");
        for server in candidates {
            match self.join_through(&server, room_id, user_id, reason).await {
                Ok(()) => return self.drop_remote_invite(user_id, room_id),
                Err(e) => {
                    tracing::info!(%room_id, %server, "joining through this server failed: {e}");
                    last_error = e;
                }
            }
        }
        Err(last_error)
    }

    async fn join_through(
        &self,
        server: &ServerName,
        room_id: &RoomId,
        user_id: &UserId,
        reason: Option<&str>,
    ) -> Result<()> {
        let mut request =
            prepare_join_event::v1::Request::new(room_id.to_owned(), user_id.to_owned());
        request.ver = supported_versions();
        let response = self.send_federation_request(server, request).await?;
        let version = response.room_version.unwrap_or(RoomVersionId::V1);
        let rules = rules_of(&version)?;
        let signed = self.sign_membership_template(
            server,
            &response.event,
            room_id,
            user_id,
            &rules,
            "join",
            reason,
        )?;
        let request = create_join_event::v2::Request::new(
            room_id.to_owned(),
            signed.event_id.clone(),
            raw(&signed.json)?,
        );
        let response = self.send_federation_request(server, request).await?;
        let room_state = response.room_state;

        // The join as the resident server has it (it may have added its signature).
        let join = match &room_state.event {
            Some(event) => {
                let event = parse_object(event)?;
                if event_id_of(&event, &rules)? == signed.event_id {
                    event
                } else {
                    signed.json
                }
            }
            None => signed.json,
        };
        // Each raw event is dropped once parsed: a big room's answer is tens of megabytes,
        // and holding it whole beside its parsed form doubled the join's peak.
        // An event that fails the receipt checks (most often: signed by a server that is
        // gone, whose key nobody can fetch any more) is left out, as Synapse does, rather than
        // failing the whole join: a big, old room always holds some. The state events that
        // cite it are then refused by their own auth events (`start_room_at`), and our join
        // still has to pass the auth rules against what is left.
        let mut left_out = 0usize;
        let mut received = ReceivedState::default();
        let mut seen = BTreeSet::new();
        for pdu in room_state.state {
            let Some((id, pdu)) = self
                .received_state_event(&version, &pdu, &mut left_out)
                .await
            else {
                continue;
            };
            if str_field(&pdu, "room_id").is_some_and(|r| r != room_id.as_str()) {
                return Err(Error::forbidden(format!("{id} belongs to another room")));
            }
            if seen.insert(id.clone()) {
                received.add_state_event(id, &pdu)?;
            }
        }
        for pdu in room_state.auth_chain {
            let Some((id, pdu)) = self
                .received_state_event(&version, &pdu, &mut left_out)
                .await
            else {
                continue;
            };
            if seen.insert(id.clone()) {
                received.add_auth_event(id, &pdu)?;
            }
        }
        if left_out > 0 {
            tracing::warn!(%room_id, %server, left_out, "events of the room's state failed their checks and were left out");
        }
        self.timeline
            .join_remote_room(room_id, &version, received, (signed.event_id, join))
            .await
    }

    /// One event of a `send_join` answer, parsed and checked (`check_incoming_pdu`), or
    /// `None` (counted in `left_out`) when it fails.
    async fn received_state_event(
        &self,
        version: &RoomVersionId,
        pdu: &RawValue,
        left_out: &mut usize,
    ) -> Option<(OwnedEventId, CanonicalJsonObject)> {
        let checked = match parse_object(pdu) {
            Ok(object) => self.check_incoming_pdu(version, object).await,
            Err(e) => Err(e),
        };
        match checked {
            Ok(event) => Some(event),
            Err(e) => {
                tracing::debug!("a state event of a send_join answer left out: {e}");
                *left_out += 1;
                None
            }
        }
    }

    /// Our user's membership event made from another server's `make_join` / `make_leave` /
    /// `make_knock` template: checked to be the user's own member event in the room; its
    /// content the template's plus `membership`, the reason and (joining or knocking) the
    /// profile; stamped now, given a fresh event ID where the room version carries one, hashed
    /// and signed by this server.
    // The template's context: where it came from, for whom, and what it is to become.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn sign_membership_template(
        &self,
        server: &ServerName,
        template: &RawValue,
        room_id: &RoomId,
        user_id: &UserId,
        rules: &ruma::room_version_rules::RoomVersionRules,
        membership: &str,
        reason: Option<&str>,
    ) -> Result<crate::service::rooms::pdu::SignedPdu> {
        let bad_template =
            |what: String| Error::new(http::StatusCode::BAD_GATEWAY, ErrorKind::Unknown, what);
        let mut template: CanonicalJsonObject = serde_json::from_str(template.get())
            .map_err(|e| bad_template(format!("{server} sent no {membership} template: {e}")))?;
        if str_field(&template, "sender") != Some(user_id.as_str())
            || str_field(&template, "state_key") != Some(user_id.as_str())
            || str_field(&template, "type") != Some("m.room.member")
            || str_field(&template, "room_id") != Some(room_id.as_str())
        {
            return Err(bad_template(format!(
                "{server} sent a {membership} template for something else"
            )));
        }
        let mut content = match template.remove("content") {
            Some(CanonicalJsonValue::Object(c)) => c,
            _ => CanonicalJsonObject::new(),
        };
        content.insert(
            "membership".into(),
            CanonicalJsonValue::String(membership.into()),
        );
        if let Some(reason) = reason {
            content.insert("reason".into(), CanonicalJsonValue::String(reason.into()));
        }
        if membership != "leave" {
            for (name, value) in self.users.profile(user_id)? {
                if (name == "displayname" || name == "avatar_url")
                    && let Ok(v) = CanonicalJsonValue::try_from(value)
                {
                    content.insert(name, v);
                }
            }
        }
        template.insert("content".into(), CanonicalJsonValue::Object(content));
        template.insert(
            "origin_server_ts".into(),
            CanonicalJsonValue::Integer(
                ruma::Int::try_from(crate::utils::now_millis()).unwrap_or_default(),
            ),
        );
        for stray in ["signatures", "hashes", "unsigned", "event_id"] {
            template.remove(stray);
        }
        if rules.event_id_format == ruma::room_version_rules::EventIdFormatVersion::V1 {
            template.insert(
                "event_id".into(),
                CanonicalJsonValue::String(EventId::new_v1(&self.server_name).to_string()),
            );
        }
        crate::service::rooms::pdu::finish(
            template,
            Some(room_id),
            rules,
            &self.server_name,
            self.globals.signing_key(),
        )
    }

    /// The room an alias names: ours from the store, another server's by asking it.
    pub async fn resolve_alias_anywhere(
        &self,
        alias: &RoomAliasId,
    ) -> Result<(OwnedRoomId, Vec<OwnedServerName>)> {
        if alias.server_name() == self.server_name {
            let room_id = self
                .resolve_alias(alias)?
                .ok_or_else(|| Error::not_found("No room has that alias."))?;
            let servers = self.servers_in_room(&room_id)?;
            return Ok((room_id, servers));
        }
        let response = self
            .send_federation_request(
                alias.server_name(),
                get_room_information::v1::Request::new(alias.to_owned()),
            )
            .await?;
        Ok((response.room_id, response.servers))
    }
}
