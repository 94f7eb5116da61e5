//! Rooms: events, state and timelines. Being built (see docs/design/rooms.md); so far the PDU
//! builder, which every local event will go through.

pub mod auth;
pub mod event;
pub mod pdu;
pub mod short;
pub mod state_store;
