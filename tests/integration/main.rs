//! Integration tests: each starts real culvert servers and talks HTTP to them.

mod account;
mod bench_tool;
mod cli;
mod clients;
mod common;
mod devices;
mod directory;
mod ephemeral;
mod history;
mod http_layer;
mod membership;
mod people;
mod persistence;
mod profile_and_account_data;
mod redaction;
mod registration;
mod rooms;
mod scale;
mod server_keys;
mod session;
mod sync;
