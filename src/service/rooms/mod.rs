//! Rooms: events, state and timelines. Being built (see docs/design/rooms.md): PDUs, auth,
//! short ids, state snapshots and the append path exist; endpoints and sync come next.

pub mod alias;
pub mod auth;
pub mod context;
pub mod create;
pub mod directory;
pub mod ephemeral;
pub mod event;
pub mod history;
pub mod membership;
pub mod pdu;
pub mod profile;
pub mod redaction;
pub mod short;
pub mod state_res;
pub mod state_store;
pub mod sync;
pub mod sync_filter;
pub mod timeline;
pub mod upgrade;

use ruma::RoomVersionId;

/// The room versions culvert understands, oldest first.
pub const SUPPORTED_ROOM_VERSIONS: [RoomVersionId; 12] = [
    RoomVersionId::V1,
    RoomVersionId::V2,
    RoomVersionId::V3,
    RoomVersionId::V4,
    RoomVersionId::V5,
    RoomVersionId::V6,
    RoomVersionId::V7,
    RoomVersionId::V8,
    RoomVersionId::V9,
    RoomVersionId::V10,
    RoomVersionId::V11,
    RoomVersionId::V12,
];
