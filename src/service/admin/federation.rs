//! What a server admin sees of federation: the other servers this one sends to (those in
//! its rooms and those the sender has dealt with since the start), how sending to each goes,
//! and the rooms shared with one. Reads every `room_servers` entry: an admin's request.

use std::collections::{BTreeMap, BTreeSet};

use ruma::{OwnedRoomId, OwnedServerName, ServerName};

use crate::{
    Result,
    service::{Services, federation::destinations::DestinationState},
    store::{Cf, keys},
};

impl Services {
    /// Every other server this one shares a room with or has sent to, with how sending to it
    /// goes (`None`: nothing sent since the start), by name.
    pub fn admin_destinations(&self) -> Result<Vec<(OwnedServerName, Option<DestinationState>)>> {
        let mut names: BTreeSet<OwnedServerName> = BTreeSet::new();
        for item in self.store.scan_prefix(Cf::RoomServers, &[]) {
            let (key, _) = item?;
            if let Some(server) = keys::split(&key).nth(1)
                && let Ok(server) = ServerName::parse(String::from_utf8_lossy(server).as_ref())
                && server != self.server_name
            {
                names.insert(server);
            }
        }
        let mut states: BTreeMap<OwnedServerName, DestinationState> =
            self.federation.destinations.all().into_iter().collect();
        names.extend(states.keys().cloned());
        Ok(names
            .into_iter()
            .map(|name| {
                let state = states.remove(&name);
                (name, state)
            })
            .collect())
    }

    /// The rooms `server` has joined members in, as this server knows.
    pub fn admin_destination_rooms(&self, server: &ServerName) -> Result<Vec<OwnedRoomId>> {
        let mut rooms = Vec::new();
        for item in self.store.scan_prefix(Cf::RoomServers, &[]) {
            let (key, _) = item?;
            let mut parts = keys::split(&key);
            let (Some(room), Some(name)) = (parts.next(), parts.next()) else {
                continue;
            };
            if name == server.as_bytes()
                && let Ok(room) = OwnedRoomId::try_from(String::from_utf8_lossy(room).as_ref())
            {
                rooms.push(room);
            }
        }
        Ok(rooms)
    }
}
