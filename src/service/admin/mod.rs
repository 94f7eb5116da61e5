//! Server administration: what a server admin does to accounts (`accounts`) and rooms
//! (`rooms`). The Synapse-compatible admin API (`api::admin`) calls these, and so will the
//! admin room and the command line against a running server: every admin path does the same
//! thing; the admin room (`admin_room`, `commands`) too. These are admins' requests, not hot paths: listings read every account or room.

pub mod accounts;
pub mod admin_room;
pub mod cli;
pub mod commands;
pub mod federation;
pub mod media;
pub mod room_deletion;
pub mod rooms;
pub mod server_notices;

pub use accounts::{Account, AccountChanges, AccountFilter, AccountOrder};
pub use rooms::{RoomOrder, RoomOverview};
