//! Rooms: events, state and timelines. Being built (see docs/design/rooms.md): PDUs, auth,
//! short ids, state snapshots and the append path exist; endpoints and sync come next.

pub mod auth;
pub mod event;
pub mod pdu;
pub mod short;
pub mod state_store;
pub mod timeline;
