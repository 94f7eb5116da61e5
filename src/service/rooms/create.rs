//! Creating a room: the initial events, in the order the spec gives for `POST /createRoom`.

use ruma::{OwnedRoomId, OwnedUserId, RoomVersionId, UserId};
use serde_json::{Map, Value, json};

use super::SUPPORTED_ROOM_VERSIONS;
use crate::{Error, Result, service::Services};

/// Which preset a room is created with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    PrivateChat,
    TrustedPrivateChat,
    PublicChat,
}

/// What a client asked `createRoom` for, already parsed.
pub struct CreateRoom {
    pub version: Option<RoomVersionId>,
    pub preset: Preset,
    /// `creation_content`, as the JSON object the client sent.
    pub creation_content: Map<String, Value>,
    /// `power_level_content_override`: top-level keys replace the defaults'.
    pub power_level_override: Map<String, Value>,
    /// `initial_state`: `(type, state_key, content)`.
    pub initial_state: Vec<(String, String, Value)>,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub invite: Vec<OwnedUserId>,
    pub is_direct: bool,
    /// `room_alias_name`, as the full alias on this server.
    pub alias: Option<ruma::OwnedRoomAliasId>,
}

impl Services {
    /// Creates a room for `sender` and sends its initial events. Everything the client supplied is
    /// checked before the first event is written.
    pub async fn create_room(&self, sender: &UserId, request: CreateRoom) -> Result<OwnedRoomId> {
        if !self.config.allow_room_creation {
            return Err(Error::forbidden(
                "Room creation is disabled on this server.",
            ));
        }
        self.create_room_anyway(sender, request).await
    }

    /// [`Services::create_room`] even where users may not create rooms: for the server's own
    /// rooms (the admin room).
    pub(crate) async fn create_room_anyway(
        &self,
        sender: &UserId,
        request: CreateRoom,
    ) -> Result<OwnedRoomId> {
        let version = request
            .version
            .clone()
            .unwrap_or_else(|| self.config.default_room_version.clone());
        if !SUPPORTED_ROOM_VERSIONS.contains(&version) {
            return Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                ruma::api::error::ErrorKind::UnsupportedRoomVersion,
                format!("Room version {version} is not supported."),
            ));
        }
        let rules = version.rules().expect("supported versions have rules");
        for invitee in &request.invite {
            if invitee.server_name() != self.server_name {
                if !self.federation.enabled {
                    return Err(Error::new(
                        http::StatusCode::BAD_REQUEST,
                        ruma::api::error::ErrorKind::Unknown,
                        "Inviting users of other servers needs federation, which is disabled here.",
                    ));
                }
                continue;
            }
            if !self.users.is_active(invitee)? {
                return Err(Error::not_found(format!(
                    "No user {invitee} on this server."
                )));
            }
            // Before anything is created: a local invitee who blocks invites (MSC4380).
            self.check_invite_permitted(invitee)?;
        }
        for (event_type, state_key, content) in &request.initial_state {
            if !content.is_object() {
                return Err(Error::bad_json(
                    "initial_state contents must be JSON objects.",
                ));
            }
            if event_type == "m.room.canonical_alias" && state_key.is_empty() {
                self.check_initial_canonical_alias(content, request.alias.as_deref())?;
            }
        }
        if let Some(alias) = &request.alias
            && self.resolve_alias(alias)?.is_some()
        {
            return Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                ruma::api::error::ErrorKind::RoomInUse,
                "That room alias is already taken.",
            ));
        }
        let privileged_invitees = request.preset == Preset::TrustedPrivateChat;
        let v12_creators = rules.authorization.explicitly_privilege_room_creators;

        // 1. m.room.create
        let mut create = request.creation_content.clone();
        create.insert("room_version".into(), json!(version.as_str()));
        if rules.authorization.use_room_create_sender {
            create.remove("creator");
        } else {
            create.insert("creator".into(), json!(sender));
        }
        if rules.authorization.additional_room_creators && privileged_invitees {
            let mut creators: Vec<Value> = create
                .get("additional_creators")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for invitee in &request.invite {
                if !creators.contains(&json!(invitee)) {
                    creators.push(json!(invitee));
                }
            }
            create.insert("additional_creators".into(), Value::Array(creators));
        }
        let signer = self.signer();
        let (room_id, _) = self
            .timeline
            .create_room(&version, sender, Value::Object(create), &signer)
            .await?;
        let send = |event_type: &'static str, state_key: String, content: Value| {
            let room_id = room_id.clone();
            async move {
                self.send_state_event(&room_id, sender, event_type, &state_key, content)
                    .await
            }
        };

        // 2. The creator joins.
        let mut join = json!({ "membership": "join" });
        for field in ["displayname", "avatar_url"] {
            if let Some(value) = self.users.profile_field(sender, field)? {
                join[field] = value;
            }
        }
        send("m.room.member", sender.to_string(), join).await?;

        // 3. Power levels: defaults, then the client's override.
        let mut users = Map::new();
        if !v12_creators {
            users.insert(sender.to_string(), json!(100));
            if privileged_invitees {
                for invitee in &request.invite {
                    users.insert(invitee.to_string(), json!(100));
                }
            }
        }
        let private = request.preset != Preset::PublicChat;
        let mut power_levels = json!({
            "users": users,
            "users_default": 0,
            "events": {
                "m.room.name": 50,
                "m.room.power_levels": 100,
                "m.room.history_visibility": 100,
                "m.room.canonical_alias": 50,
                "m.room.avatar": 50,
                "m.room.tombstone": if v12_creators { 150 } else { 100 },
                "m.room.server_acl": 100,
                "m.room.encryption": 100,
            },
            "events_default": 0,
            "state_default": 50,
            "ban": 50,
            "kick": 50,
            "redact": 50,
            "invite": if private { 0 } else { 50 },
        });
        for (key, value) in &request.power_level_override {
            power_levels[key] = value.clone();
        }
        send("m.room.power_levels", String::new(), power_levels).await?;

        // 4. The canonical alias.
        if let Some(alias) = &request.alias {
            self.create_alias(alias, &room_id, sender)?;
            send(
                "m.room.canonical_alias",
                String::new(),
                json!({ "alias": alias }),
            )
            .await?;
        }

        // 5. The preset's rules.
        let (join_rule, guest_access) = if private {
            ("invite", "can_join")
        } else {
            ("public", "forbidden")
        };
        send(
            "m.room.join_rules",
            String::new(),
            json!({ "join_rule": join_rule }),
        )
        .await?;
        send(
            "m.room.history_visibility",
            String::new(),
            json!({ "history_visibility": "shared" }),
        )
        .await?;
        send(
            "m.room.guest_access",
            String::new(),
            json!({ "guest_access": guest_access }),
        )
        .await?;

        // 6. initial_state, then name and topic (which win over initial_state).
        for (event_type, state_key, content) in request.initial_state {
            self.send_state_event(&room_id, sender, &event_type, &state_key, content)
                .await?;
        }
        if let Some(name) = request.name {
            send("m.room.name", String::new(), json!({ "name": name })).await?;
        }
        if let Some(topic) = request.topic {
            // The plain topic and, since v1.15 (MSC3765), the same as a text block.
            let content = json!({
                "topic": topic,
                "m.topic": { "m.text": [{ "mimetype": "text/plain", "body": topic }] },
            });
            send("m.room.topic", String::new(), content).await?;
        }

        // 7. Invitations. A remote invitee's server that blocks the invite (MSC4380) makes the
        // request fail with `M_INVITE_BLOCKED` once every invite was tried (the room stays, as
        // a room whose invites failed does, and the invite can be retried).
        let mut blocked = Vec::new();
        for invitee in &request.invite {
            let mut content = json!({ "membership": "invite" });
            for (field, value) in self.member_profile(invitee).await? {
                content[field] = value;
            }
            if request.is_direct {
                content["is_direct"] = json!(true);
            }
            let invite = send("m.room.member", invitee.to_string(), content).await?;
            // The invitee's server hears of it through `/invite`; a refusal there does not undo
            // the room (as with any invite, the room stays and the invite can be retried).
            if invitee.server_name() != self.server_name
                && let Err(e) = self.send_remote_invite(&room_id, &invite).await
            {
                tracing::info!(room = %room_id, %invitee, "the invitee's server refused the invite: {e}");
                if matches!(
                    &e,
                    Error::Matrix {
                        kind: ruma::api::error::ErrorKind::InviteBlocked,
                        ..
                    }
                ) {
                    blocked.push(invitee.to_string());
                }
            }
        }
        if !blocked.is_empty() {
            return Err(Error::new(
                http::StatusCode::FORBIDDEN,
                ruma::api::error::ErrorKind::InviteBlocked,
                format!(
                    "The room {room_id} was created, but these users' servers block invites: {}.",
                    blocked.join(", ")
                ),
            ));
        }
        tracing::info!(room = %room_id, %version, creator = %sender, "room created");
        Ok(room_id)
    }
}
