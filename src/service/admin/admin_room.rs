//! The admin room: `#admins:<server>`, a room of this server alone (`m.federate: false`)
//! whose members are the server's admins, where the server's own user (`@culvert:<server>`)
//! answers commands (`!admin help`) — administration from any Matrix client, phones included.
//!
//! The room is made at the first start and its ID kept in `global`; admins are invited when
//! they become admins (and, at each start, those never invited), and removed when they stop
//! being admins. A command is queued (`admin_commands`) in the batch of the message that
//! carries it, through the commit pipeline ([`AdminCommandQueue`]): a command answered with
//! 200 is run even if the server stops right after. One task works the queue in order
//! (`commands` says what each command does) and answers as a notice replying to the command;
//! the entry is deleted after the answer is sent, so a crash in between runs it once more.
//!
//! Config `admin_room = false` turns it off (the room stays, unanswered).
//!
//! Whoever sends a command must be an admin when it runs; anyone else is told so. The server
//! never reads encrypted messages, so commands in an encrypted admin room go unanswered.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use ruma::{
    OwnedEventId, OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomId, UserId,
    events::room::member::MembershipState,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, json};
use tokio::sync::Notify;

use crate::{
    Result,
    service::{
        Services,
        rooms::{
            create::{CreateRoom, Preset},
            timeline::{
                LocalEvent,
                pipeline::{Appending, EventConsumer, Origin, Staged},
            },
        },
    },
    store::{Batch, Cf, keys},
};

/// Where the admin room's ID is kept (`global`).
const ADMIN_ROOM_KEY: &[u8] = b"admin_room";

/// What starts a command in a message's body.
pub const COMMAND_PREFIX: &str = "!admin";

/// The admin room as the server knows it while running.
pub struct AdminRoom {
    room_id: OnceLock<OwnedRoomId>,
    server_user: OwnedUserId,
    /// Wakes the task that works the queue.
    wake: Notify,
}

impl AdminRoom {
    pub fn new(server_user: OwnedUserId) -> Self {
        Self {
            room_id: OnceLock::new(),
            server_user,
            wake: Notify::new(),
        }
    }

    /// The admin room's ID, once it exists.
    pub fn room_id(&self) -> Option<&RoomId> {
        self.room_id.get().map(|r| r.as_ref())
    }
}

/// A command waiting in `admin_commands` (key: the stream count of its message).
#[derive(Serialize, Deserialize)]
struct QueuedCommand {
    room_id: OwnedRoomId,
    event_id: OwnedEventId,
    sender: OwnedUserId,
    /// The message's body.
    line: String,
}

/// The words of a command, if `body` is one (`!admin` and what follows).
fn command_words(body: &str) -> Option<&str> {
    let rest = body.trim_start().strip_prefix(COMMAND_PREFIX)?;
    (rest.is_empty() || rest.starts_with(char::is_whitespace)).then_some(rest)
}

impl Services {
    /// At start-up: finds the admin room or makes it (the first start), and invites the admins
    /// who were never in it. Nothing happens if an account holds the server's own user ID
    /// (it could read and answer the room): that is logged.
    pub async fn open_admin_room(&self) -> Result<()> {
        if !self.config.admin_room {
            return Ok(());
        }
        let server_user = self.admin_room.server_user.clone();
        if self.users.exists(&server_user)? {
            tracing::warn!(
                "an account holds {server_user}, the server's own user ID: no admin room"
            );
            return Ok(());
        }
        let room_id = match self.store.get(Cf::Global, ADMIN_ROOM_KEY)? {
            Some(bytes) => OwnedRoomId::try_from(String::from_utf8_lossy(&bytes).as_ref())
                .map_err(|e| crate::Error::internal(format!("stored admin room ID: {e}")))?,
            None => {
                let room_id = self.make_admin_room(&server_user).await?;
                self.store
                    .put(Cf::Global, ADMIN_ROOM_KEY, room_id.as_bytes())?;
                tracing::info!(room = %room_id, "admin room made");
                room_id
            }
        };
        let _ = self.admin_room.room_id.set(room_id);
        for (user_id, record) in self.users.list()? {
            if record.admin && !record.deactivated {
                self.sync_admin_room_member(&user_id, false).await;
            }
        }
        Ok(())
    }

    async fn make_admin_room(&self, server_user: &UserId) -> Result<OwnedRoomId> {
        let alias = OwnedRoomAliasId::try_from(format!("#admins:{}", self.server_name)).ok();
        let alias = match alias {
            Some(alias) if self.resolve_alias(&alias)?.is_none() => Some(alias),
            _ => None,
        };
        let mut creation_content = Map::new();
        creation_content.insert("m.federate".into(), json!(false));
        // The server's own user shows as "culvert" in clients (its member events carry it).
        if self
            .users
            .profile_field(server_user, "displayname")?
            .is_none()
        {
            self.users
                .set_profile_field(server_user, "displayname", Some(&json!("culvert")))?;
        }
        self.create_room_anyway(
            server_user,
            CreateRoom {
                version: None,
                preset: Preset::PrivateChat,
                creation_content,
                power_level_override: Map::new(),
                // The private preset lets guests join by invite; nobody but admins here.
                initial_state: vec![(
                    "m.room.guest_access".to_owned(),
                    String::new(),
                    json!({ "guest_access": "forbidden" }),
                )],
                name: Some("Admins".to_owned()),
                topic: Some(format!(
                    "This server's admins. Send `{COMMAND_PREFIX} help` for the commands."
                )),
                invite: Vec::new(),
                is_direct: false,
                alias,
            },
        )
        .await
    }

    /// Puts `user_id` in or out of the admin room as their admin flag says: an admin not in it
    /// is invited (one who left only with `reinvite`), anyone else in it is removed. Failures
    /// are logged: the admin flag is what counts, the room follows it.
    pub async fn sync_admin_room_member(&self, user_id: &UserId, reinvite: bool) {
        let Some(room_id) = self.admin_room.room_id() else {
            return;
        };
        if let Err(e) = self
            .try_sync_admin_room_member(room_id, user_id, reinvite)
            .await
        {
            tracing::warn!(user = %user_id, "the admin room's members could not follow: {e}");
        }
    }

    async fn try_sync_admin_room_member(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        reinvite: bool,
    ) -> Result<()> {
        let server_user = &self.admin_room.server_user;
        let admin = self
            .users
            .get(user_id)?
            .is_some_and(|r| r.admin && !r.deactivated && !r.guest);
        let membership = self
            .members
            .membership(room_id, user_id)?
            .map(|m| m.membership);
        match (admin, membership) {
            (true, None) => {
                self.set_membership(room_id, server_user, user_id, MembershipState::Invite, None)
                    .await?;
            }
            (true, Some(MembershipState::Leave)) if reinvite => {
                self.set_membership(room_id, server_user, user_id, MembershipState::Invite, None)
                    .await?;
            }
            (
                false,
                Some(MembershipState::Join | MembershipState::Invite | MembershipState::Knock),
            ) => {
                self.set_membership(
                    room_id,
                    server_user,
                    user_id,
                    MembershipState::Leave,
                    Some("No longer a server admin."),
                )
                .await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Starts the task that runs queued commands, now and whenever one is queued. It holds the
    /// services weakly, so it ends with the server.
    pub fn run_admin_commands(self: &Arc<Self>) {
        let services = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(strong) = services.upgrade() else {
                    return;
                };
                if let Err(e) = strong.run_queued_admin_commands().await {
                    tracing::warn!("running admin commands failed: {e}");
                }
                let room = Arc::clone(&strong.admin_room);
                drop(strong);
                // A command queued meanwhile left a permit: this returns at once.
                let _ = tokio::time::timeout(Duration::from_secs(60), room.wake.notified()).await;
            }
        });
    }

    /// Runs every queued command in order, answering each.
    async fn run_queued_admin_commands(&self) -> Result<()> {
        let queued: Vec<_> = self
            .store
            .scan_prefix(Cf::AdminCommands, &[])
            .collect::<std::result::Result<_, _>>()?;
        for (key, value) in queued {
            match serde_json::from_slice::<QueuedCommand>(&value) {
                Ok(command) => self.answer_admin_command(command).await,
                Err(e) => tracing::warn!("an unreadable queued admin command is dropped: {e}"),
            }
            let mut batch = Batch::new();
            batch.delete(Cf::AdminCommands, key.to_vec());
            self.store.write(batch)?;
        }
        Ok(())
    }

    async fn answer_admin_command(&self, command: QueuedCommand) {
        let is_admin = self
            .users
            .get(&command.sender)
            .ok()
            .flatten()
            .is_some_and(|r| r.admin && !r.deactivated);
        let answer = if is_admin {
            tracing::info!(admin = %command.sender, "admin room command");
            let words = command_words(&command.line).unwrap_or_default();
            self.admin_command(&command.sender, words).await
        } else {
            super::commands::Answer::text("Only the server's admins may give commands here.")
        };
        let content = json!({
            "msgtype": "m.notice",
            "body": answer.plain,
            "format": "org.matrix.custom.html",
            "formatted_body": answer.html,
            "m.relates_to": { "m.in_reply_to": { "event_id": command.event_id } },
        });
        let event = LocalEvent {
            event_type: "m.room.message",
            state_key: None,
            content,
            redacts: None,
        };
        if let Err(e) = self
            .timeline
            .append(
                &command.room_id,
                &self.admin_room.server_user,
                event,
                &self.signer(),
            )
            .await
        {
            tracing::warn!(room = %command.room_id, "an admin command's answer could not be sent: {e}");
        }
    }
}

/// The commit pipeline's part: a local admin's `!admin …` message in the admin room queues
/// its command in the message's own batch.
pub struct AdminCommandQueue(pub Arc<AdminRoom>);

struct Queue {
    command: Vec<u8>,
    room: Arc<AdminRoom>,
}

impl EventConsumer for AdminCommandQueue {
    fn prepare(&self, event: &Appending<'_>) -> Result<Option<Box<dyn Staged>>> {
        let room = &self.0;
        if room.room_id() != Some(event.room_id)
            || event.origin != Origin::Local
            || event.event_type != "m.room.message"
            || event.state_key.is_some()
            || event.sender == room.server_user
        {
            return Ok(None);
        }
        let body = event
            .pdu
            .get("content")
            .and_then(|c| c.as_object())
            .and_then(|c| c.get("body"))
            .and_then(|b| b.as_str());
        let Some(body) = body.filter(|b| command_words(b).is_some()) else {
            return Ok(None);
        };
        let command = QueuedCommand {
            room_id: event.room_id.to_owned(),
            event_id: event.event_id.to_owned(),
            sender: event.sender.to_owned(),
            line: body.to_owned(),
        };
        Ok(Some(Box::new(Queue {
            command: serde_json::to_vec(&command)?,
            room: Arc::clone(room),
        })))
    }
}

impl Staged for Queue {
    fn write(&mut self, batch: &mut Batch, count: u64) -> Result<()> {
        batch.put(
            Cf::AdminCommands,
            keys::u64_be(count).to_vec(),
            std::mem::take(&mut self.command),
        );
        Ok(())
    }

    fn committed(self: Box<Self>) {
        self.room.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::command_words;

    #[test]
    fn only_the_prefix_as_a_word_starts_a_command() {
        assert_eq!(command_words("!admin users list"), Some(" users list"));
        assert_eq!(command_words("  !admin"), Some(""));
        assert_eq!(command_words("!administrators"), None);
        assert_eq!(command_words("hello !admin help"), None);
    }
}
