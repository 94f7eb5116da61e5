//! Integration tests: each starts real culvert servers and talks HTTP to them.

mod account;
mod cli;
mod clients;
mod common;
mod context;
mod devices;
mod directory;
mod e2ee;
mod e2ee_backup;
mod ephemeral;
mod history;
mod http_layer;
mod lifecycle;
mod membership;
mod packaging;
mod people;
mod persistence;
mod profile_and_account_data;
mod public_rooms;
mod redaction;
mod registration;
mod rooms;
mod scale;
mod server_keys;
mod session;
mod sync;
