//! Deleting a room, as Synapse's admin API does it (`DELETE /_synapse/admin/v1|v2/rooms/{id}`,
//! and the admin room's `rooms delete`): block it if asked (first, so nobody comes back),
//! make every local member leave, optionally move them to a new room with a message, take
//! its local aliases and directory entry away, then purge it (`rooms::purge`) unless told
//! not to — refused while a local user is still in it, unless forced.
//!
//! The admin API's v2 runs this in the background and answers with a `delete_id` whose
//! progress `delete_status` reports: kept in memory for this run of the server (an
//! interrupted purge is finished at the next start all the same).

use std::sync::{Arc, Mutex};

use ruma::{
    OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomId, UserId,
    events::room::member::MembershipState,
};
use serde::Serialize;
use serde_json::{Map, json};

use crate::{
    Error, Result,
    service::{
        Services,
        rooms::create::{CreateRoom, Preset},
    },
    utils,
};

/// What the admin asked for (Synapse's request body).
#[derive(Clone, Debug, Default)]
pub struct DeleteRoom {
    /// A local user who makes a new room, into which the members are moved.
    pub new_room_user_id: Option<OwnedUserId>,
    pub room_name: Option<String>,
    pub message: Option<String>,
    pub block: bool,
    pub purge: bool,
    pub force_purge: bool,
}

/// What became of the members and aliases (Synapse's `shutdown_room`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Shutdown {
    pub kicked_users: Vec<OwnedUserId>,
    pub failed_to_kick_users: Vec<OwnedUserId>,
    pub local_aliases: Vec<OwnedRoomAliasId>,
    pub new_room_id: Option<OwnedRoomId>,
}

/// Where a deletion is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeletionStatus {
    ShuttingDown,
    Purging,
    Complete,
    Failed,
}

/// One deletion and its progress.
#[derive(Clone, Debug)]
pub struct Deletion {
    pub delete_id: String,
    pub room_id: OwnedRoomId,
    pub status: DeletionStatus,
    pub error: Option<String>,
    pub shutdown: Shutdown,
}

/// The deletions of this run, oldest first.
#[derive(Default)]
pub struct Deletions(Mutex<Vec<Deletion>>);

const DEFAULT_ROOM_NAME: &str = "Content Violation Notification";
const DEFAULT_MESSAGE: &str = "Sharing illegal content on this server is not permitted and rooms in violation will be blocked.";

fn already_deleting(room_id: &RoomId) -> Error {
    Error::invalid_param(format!("{room_id} is being deleted already."))
}

impl Deletion {
    /// Whether it is still under way.
    pub fn running(&self) -> bool {
        matches!(
            self.status,
            DeletionStatus::ShuttingDown | DeletionStatus::Purging
        )
    }
}

impl Deletions {
    fn update(&self, delete_id: &str, change: impl FnOnce(&mut Deletion)) {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(deletion) = all.iter_mut().find(|d| d.delete_id == delete_id) {
            change(deletion);
        }
    }

    /// Every deletion of `room_id` this run.
    pub fn of_room(&self, room_id: &RoomId) -> Vec<Deletion> {
        let all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        all.iter()
            .filter(|d| d.room_id == room_id)
            .cloned()
            .collect()
    }

    /// One deletion by its ID.
    pub fn get(&self, delete_id: &str) -> Option<Deletion> {
        let all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        all.iter().find(|d| d.delete_id == delete_id).cloned()
    }
}

impl Services {
    /// Checks a deletion before it starts: 400 for the admin room, for a new room's user who
    /// is no local account, and while another deletion of the room runs; 404 for a room this
    /// server does not know (unless it is only to be blocked).
    pub fn check_room_deletion(&self, room_id: &RoomId, request: &DeleteRoom) -> Result<()> {
        if self.admin_room.room_id() == Some(room_id) {
            return Err(Error::invalid_param("The admin room cannot be deleted."));
        }
        if let Some(user_id) = &request.new_room_user_id
            && (user_id.server_name() != self.server_name || !self.users.is_active(user_id)?)
        {
            return Err(Error::invalid_param(format!(
                "{user_id} is no active account of this server."
            )));
        }
        if self.timeline.room(room_id)?.is_none() && !request.block {
            return Err(Error::not_found(format!("This server knows no {room_id}.")));
        }
        if self
            .room_deletions
            .of_room(room_id)
            .iter()
            .any(Deletion::running)
        {
            return Err(already_deleting(room_id));
        }
        Ok(())
    }

    /// Checks and starts a deletion in the background; returns its ID.
    pub fn start_room_deletion(
        self: &Arc<Self>,
        room_id: &RoomId,
        admin: &UserId,
        request: DeleteRoom,
    ) -> Result<String> {
        let delete_id = self.register_room_deletion(room_id, &request)?;
        let services = Arc::clone(self);
        let (room_id, admin, id) = (room_id.to_owned(), admin.to_owned(), delete_id.clone());
        tokio::spawn(async move {
            services
                .run_room_deletion(&id, &room_id, &admin, request)
                .await;
        });
        Ok(delete_id)
    }

    /// Checks and runs a deletion to its end.
    pub async fn delete_room(
        &self,
        room_id: &RoomId,
        admin: &UserId,
        request: DeleteRoom,
    ) -> Result<Deletion> {
        let delete_id = self.register_room_deletion(room_id, &request)?;
        self.run_room_deletion(&delete_id, room_id, admin, request)
            .await;
        self.room_deletions
            .get(&delete_id)
            .ok_or_else(|| Error::internal("a deletion went missing"))
    }

    fn register_room_deletion(&self, room_id: &RoomId, request: &DeleteRoom) -> Result<String> {
        self.check_room_deletion(room_id, request)?;
        // Checked again and registered under the list's lock: two requests cannot both start.
        let mut all = self
            .room_deletions
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if all.iter().any(|d| d.room_id == room_id && d.running()) {
            return Err(already_deleting(room_id));
        }
        let delete_id = utils::random_string(16);
        all.push(Deletion {
            delete_id: delete_id.clone(),
            room_id: room_id.to_owned(),
            status: DeletionStatus::ShuttingDown,
            error: None,
            shutdown: Shutdown::default(),
        });
        Ok(delete_id)
    }

    async fn run_room_deletion(
        &self,
        delete_id: &str,
        room_id: &RoomId,
        admin: &UserId,
        request: DeleteRoom,
    ) {
        tracing::info!(admin = %admin, room = %room_id, block = request.block, purge = request.purge, "deleting a room");
        let result = self
            .shut_room_down(delete_id, room_id, admin, &request)
            .await;
        let result = match result {
            Ok(shutdown) if request.purge => {
                if !shutdown.failed_to_kick_users.is_empty() && !request.force_purge {
                    Err(Error::invalid_param(
                        "Local users are still in the room: not purged (force_purge purges anyway).",
                    ))
                } else {
                    self.room_deletions.update(delete_id, |d| {
                        d.status = DeletionStatus::Purging;
                    });
                    self.purge_room(room_id).await.map(|_| ())
                }
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        self.room_deletions.update(delete_id, |d| match result {
            Ok(()) => d.status = DeletionStatus::Complete,
            Err(e) => {
                tracing::warn!(room = %d.room_id, "deleting a room failed: {e}");
                d.status = DeletionStatus::Failed;
                d.error = Some(e.to_string());
            }
        });
    }

    async fn shut_room_down(
        &self,
        delete_id: &str,
        room_id: &RoomId,
        admin: &UserId,
        request: &DeleteRoom,
    ) -> Result<Shutdown> {
        if request.block {
            self.set_room_blocked(room_id, admin, true)?;
        }
        let mut shutdown = Shutdown::default();
        if self.timeline.room(room_id)?.is_none() {
            return Ok(shutdown);
        }
        if let Some(creator) = &request.new_room_user_id {
            let new_room = self.make_notice_room(creator, request).await?;
            shutdown.new_room_id = Some(new_room);
        }
        for (user_id, membership) in self.members.of_room(room_id)? {
            if user_id.server_name() != self.server_name
                || !matches!(
                    membership,
                    MembershipState::Join | MembershipState::Invite | MembershipState::Knock
                )
            {
                continue;
            }
            match self
                .set_membership(room_id, &user_id, &user_id, MembershipState::Leave, None)
                .await
            {
                Ok(_) => {
                    if membership == MembershipState::Join
                        && let Some(new_room) = &shutdown.new_room_id
                        && let Err(e) = self.join_room(new_room, &user_id, &[], None).await
                    {
                        tracing::info!(user = %user_id, "could not join the notice room: {e}");
                    }
                    shutdown.kicked_users.push(user_id);
                }
                Err(e) => {
                    tracing::info!(user = %user_id, room = %room_id, "could not leave: {e}");
                    shutdown.failed_to_kick_users.push(user_id);
                }
            }
        }
        shutdown.local_aliases = match &shutdown.new_room_id {
            Some(new_room) => self.move_aliases(room_id, new_room)?,
            None => {
                let aliases = self.room_aliases(room_id)?;
                for alias in &aliases {
                    self.delete_alias(alias, admin)?;
                }
                aliases
            }
        };
        self.publish(room_id, false)?;
        let recorded = shutdown.clone();
        self.room_deletions
            .update(delete_id, |d| d.shutdown = recorded);
        Ok(shutdown)
    }

    /// The room the members of a deleted room are moved to: public, where they may not speak,
    /// with the admin's message.
    async fn make_notice_room(
        &self,
        creator: &UserId,
        request: &DeleteRoom,
    ) -> Result<OwnedRoomId> {
        let mut power = Map::new();
        power.insert("users_default".into(), json!(-10));
        let room_id = self
            .create_room_anyway(
                creator,
                CreateRoom {
                    version: None,
                    preset: Preset::PublicChat,
                    creation_content: Map::new(),
                    power_level_override: power,
                    initial_state: Vec::new(),
                    name: Some(
                        request
                            .room_name
                            .clone()
                            .unwrap_or_else(|| DEFAULT_ROOM_NAME.to_owned()),
                    ),
                    topic: None,
                    invite: Vec::new(),
                    is_direct: false,
                    alias: None,
                },
            )
            .await?;
        let message = request
            .message
            .clone()
            .unwrap_or_else(|| DEFAULT_MESSAGE.to_owned());
        let event = crate::service::rooms::timeline::LocalEvent {
            event_type: "m.room.message",
            state_key: None,
            content: json!({ "msgtype": "m.text", "body": message }),
            redacts: None,
        };
        self.timeline
            .append(&room_id, creator, event, &self.signer())
            .await?;
        Ok(room_id)
    }
}

/// Where a history purge is (Synapse's `purge_history_status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PurgeStatus {
    Active,
    Complete,
    Failed,
}

/// The history purges of this run: purge ID → status and error.
#[derive(Default)]
pub struct HistoryPurges(Mutex<std::collections::HashMap<String, (PurgeStatus, Option<String>)>>);

impl HistoryPurges {
    pub fn get(&self, purge_id: &str) -> Option<(PurgeStatus, Option<String>)> {
        let all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        all.get(purge_id).cloned()
    }

    fn set(&self, purge_id: &str, status: PurgeStatus, error: Option<String>) {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        all.insert(purge_id.to_owned(), (status, error));
    }
}

impl Services {
    /// Starts purging a room's history in the background (`rooms::purge::purge_history`);
    /// returns the purge's ID. 404 for a room this server does not know.
    pub fn start_history_purge(
        self: &Arc<Self>,
        room_id: &RoomId,
        point: crate::service::rooms::purge::HistoryPoint,
        delete_local: bool,
    ) -> Result<String> {
        if self.timeline.room(room_id)?.is_none() {
            return Err(Error::not_found("Room not found"));
        }
        let purge_id = utils::random_string(16);
        self.history_purges
            .set(&purge_id, PurgeStatus::Active, None);
        let services = Arc::clone(self);
        let (room_id, id) = (room_id.to_owned(), purge_id.clone());
        tokio::spawn(async move {
            let result = services.purge_history(&room_id, point, delete_local).await;
            match result {
                Ok(_) => services
                    .history_purges
                    .set(&id, PurgeStatus::Complete, None),
                Err(e) => {
                    tracing::warn!(room = %room_id, "purging history failed: {e}");
                    services
                        .history_purges
                        .set(&id, PurgeStatus::Failed, Some(e.to_string()));
                }
            }
        });
        Ok(purge_id)
    }
}
