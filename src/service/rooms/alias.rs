//! Room aliases (`#name:server`) of this server: the local room directory.

use ruma::{OwnedRoomAliasId, OwnedRoomId, RoomAliasId, RoomId, UserId};
use serde::{Deserialize, Serialize};

use crate::{
    Error, Result,
    service::Services,
    store::{Batch, Cf, keys},
};

#[derive(Serialize, Deserialize)]
struct AliasRecord {
    room_id: OwnedRoomId,
    creator: String,
}

impl Services {
    fn require_local_alias(&self, alias: &RoomAliasId) -> Result<()> {
        if alias.server_name() != self.server_name {
            return Err(Error::invalid_param(
                "Aliases of other servers cannot be managed here (and resolving them needs federation).",
            ));
        }
        Ok(())
    }

    /// The room an alias of this server points to.
    pub fn resolve_alias(&self, alias: &RoomAliasId) -> Result<Option<OwnedRoomId>> {
        self.require_local_alias(alias)?;
        match self.store.get(Cf::Aliases, alias.as_bytes())? {
            Some(bytes) => Ok(Some(serde_json::from_slice::<AliasRecord>(&bytes)?.room_id)),
            None => Ok(None),
        }
    }

    /// Points a new alias at a room; `409 M_UNKNOWN` if the alias is taken.
    pub fn create_alias(
        &self,
        alias: &RoomAliasId,
        room_id: &RoomId,
        creator: &UserId,
    ) -> Result<()> {
        self.require_local_alias(alias)?;
        if self.timeline.room(room_id)?.is_none() {
            return Err(Error::not_found("No such room."));
        }
        let _guard = self.alias_lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.store.contains(Cf::Aliases, alias.as_bytes())? {
            return Err(Error::new(
                http::StatusCode::CONFLICT,
                ruma::api::error::ErrorKind::Unknown,
                "That room alias already exists.",
            ));
        }
        let record = AliasRecord {
            room_id: room_id.to_owned(),
            creator: creator.to_string(),
        };
        let mut batch = Batch::new();
        batch.put(Cf::Aliases, alias.as_bytes(), serde_json::to_vec(&record)?);
        batch.put(
            Cf::RoomAliases,
            keys::join([room_id.as_bytes(), alias.as_bytes()]),
            Vec::new(),
        );
        self.store.write(batch)?;
        // Appservices may now be interested in the room by this alias.
        self.appservices.forget_room_interest(room_id);
        Ok(())
    }

    /// Removes an alias: allowed to its creator, server admins, and room members with the power
    /// to change the room's canonical alias.
    pub fn delete_alias(&self, alias: &RoomAliasId, user_id: &UserId) -> Result<()> {
        self.require_local_alias(alias)?;
        let _guard = self.alias_lock.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = self
            .store
            .get(Cf::Aliases, alias.as_bytes())?
            .ok_or_else(|| Error::not_found("No such room alias."))?;
        let record: AliasRecord = serde_json::from_slice(&bytes)?;
        let allowed = record.creator == user_id.as_str()
            || self.users.get(user_id)?.is_some_and(|u| u.admin)
            || self.power_level(&record.room_id, user_id)? >= 50;
        if !allowed {
            return Err(Error::forbidden("You may not remove this alias."));
        }
        let mut batch = Batch::new();
        batch.delete(Cf::Aliases, alias.as_bytes());
        batch.delete(
            Cf::RoomAliases,
            keys::join([record.room_id.as_bytes(), alias.as_bytes()]),
        );
        self.store.write(batch)?;
        self.appservices.forget_room_interest(&record.room_id);
        Ok(())
    }

    /// A room's local aliases (one prefix scan).
    pub fn room_aliases(&self, room_id: &RoomId) -> Result<Vec<OwnedRoomAliasId>> {
        let prefix = keys::prefix(room_id.as_bytes());
        let mut aliases = Vec::new();
        for item in self.store.scan_prefix(Cf::RoomAliases, &prefix) {
            let (key, _) = item?;
            let alias = std::str::from_utf8(&key[prefix.len()..])
                .ok()
                .and_then(|a| RoomAliasId::parse(a).ok())
                .ok_or_else(|| Error::internal("corrupt alias key"))?;
            aliases.push(alias);
        }
        Ok(aliases)
    }
}

impl Services {
    /// Points every local alias of `from` at `to` (a room upgrade), in one batch.
    pub fn move_aliases(&self, from: &RoomId, to: &RoomId) -> Result<Vec<OwnedRoomAliasId>> {
        let _guard = self.alias_lock.lock().unwrap_or_else(|p| p.into_inner());
        let aliases = self.room_aliases(from)?;
        let mut batch = Batch::new();
        for alias in &aliases {
            let Some(bytes) = self.store.get(Cf::Aliases, alias.as_bytes())? else {
                continue;
            };
            let mut record: AliasRecord = serde_json::from_slice(&bytes)?;
            record.room_id = to.to_owned();
            batch.put(Cf::Aliases, alias.as_bytes(), serde_json::to_vec(&record)?);
            batch.delete(
                Cf::RoomAliases,
                keys::join([from.as_bytes(), alias.as_bytes()]),
            );
            batch.put(
                Cf::RoomAliases,
                keys::join([to.as_bytes(), alias.as_bytes()]),
                Vec::new(),
            );
        }
        self.store.write(batch)?;
        self.appservices.forget_room_interest(from);
        self.appservices.forget_room_interest(to);
        Ok(aliases)
    }
}
