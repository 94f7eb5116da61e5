//! culvert: a lightweight Matrix homeserver on an embedded RocksDB.
//!
//! Layers, outside in (see ARCHITECTURE.md): [`api`] (HTTP, routing, auth extraction) →
//! [`service`] (the domain) → [`store`] (RocksDB). [`server`] starts and stops it all;
//! [`config`] is the one typed configuration; [`Error`] the one error type.

pub mod api;
pub mod cli;
pub mod config;
mod error;
pub mod server;
pub mod service;
pub mod store;
pub mod tls;
pub mod utils;

pub use error::{Error, Result};
