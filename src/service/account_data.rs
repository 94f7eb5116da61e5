//! Per-user account data, global (room `None`) or per room.

use ruma::{RoomId, UserId};
use serde_json::value::RawValue;

use crate::{
    Result,
    store::{Batch, Cf, Store, keys},
};

pub struct AccountData {
    store: Store,
}

impl AccountData {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    fn key(user_id: &UserId, room_id: Option<&RoomId>, event_type: &str) -> Vec<u8> {
        let room = room_id.map(|r| r.as_bytes()).unwrap_or_default();
        keys::join([user_id.as_bytes(), room, event_type.as_bytes()])
    }

    /// The stored content, as the JSON the client uploaded.
    pub fn get(
        &self,
        user_id: &UserId,
        room_id: Option<&RoomId>,
        event_type: &str,
    ) -> Result<Option<Box<RawValue>>> {
        match self
            .store
            .get(Cf::AccountData, &Self::key(user_id, room_id, event_type))?
        {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    pub fn set(
        &self,
        user_id: &UserId,
        room_id: Option<&RoomId>,
        event_type: &str,
        content: &RawValue,
    ) -> Result<()> {
        let mut batch = Batch::new();
        batch.put(
            Cf::AccountData,
            Self::key(user_id, room_id, event_type),
            content.get().as_bytes(),
        );
        self.store.write(batch)?;
        Ok(())
    }
}
