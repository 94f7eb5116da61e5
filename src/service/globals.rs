//! Server-wide state: the signing key, the stream counter and the first-start registration token.

use std::sync::atomic::{AtomicU64, Ordering};

use ruma::signatures::Ed25519KeyPair;
use serde::{Deserialize, Serialize};

use crate::{
    Error, Result,
    store::{Batch, Cf, Store, keys},
    utils,
};

const SIGNING_KEY: &[u8] = b"signing_key";
const COUNTER: &[u8] = b"counter";
const BOOTSTRAP_TOKEN: &[u8] = b"bootstrap_registration_token";

/// The stored form of the server's ed25519 key.
#[derive(Serialize, Deserialize)]
struct StoredSigningKey {
    /// Key version, the part after `ed25519:` in the key ID.
    version: String,
    /// PKCS#8 v2 document, as ruma generates it.
    pkcs8: Vec<u8>,
}

pub struct Globals {
    store: Store,
    signing_key: Ed25519KeyPair,
    counter: AtomicU64,
}

impl Globals {
    /// Loads the signing key (generating and persisting one on first start) and the counter.
    pub fn load(store: Store) -> Result<Self> {
        let signing_key = match store.get(Cf::Global, SIGNING_KEY)? {
            Some(bytes) => {
                let stored: StoredSigningKey = serde_json::from_slice(&bytes)?;
                Ed25519KeyPair::from_der(&stored.pkcs8, stored.version)
                    .map_err(|e| Error::internal(format!("stored signing key unreadable: {e}")))?
            }
            None => {
                let pkcs8 = Ed25519KeyPair::generate();
                let stored = StoredSigningKey {
                    version: utils::random_string(6),
                    pkcs8: pkcs8.to_vec(),
                };
                store.put(Cf::Global, SIGNING_KEY, &serde_json::to_vec(&stored)?)?;
                tracing::info!(key_id = %format!("ed25519:{}", stored.version), "generated the server's signing key");
                Ed25519KeyPair::from_der(&stored.pkcs8, stored.version).map_err(|e| {
                    Error::internal(format!("generated signing key unreadable: {e}"))
                })?
            }
        };
        let counter = match store.get(Cf::Global, COUNTER)? {
            Some(bytes) => {
                keys::parse_u64_be(&bytes).ok_or_else(|| Error::internal("corrupt counter"))?
            }
            None => 0,
        };
        Ok(Self {
            store,
            signing_key,
            counter: AtomicU64::new(counter),
        })
    }

    pub fn signing_key(&self) -> &Ed25519KeyPair {
        &self.signing_key
    }

    /// Takes the next value of the server-wide stream counter and records it in `batch`, so the
    /// counter on disk never falls behind a value some stored key uses.
    pub fn next_count(&self, batch: &mut Batch) -> u64 {
        let next = self.counter.fetch_add(1, Ordering::SeqCst) + 1;
        batch.put(Cf::Global, COUNTER, keys::u64_be(next));
        next
    }

    pub fn current_count(&self) -> u64 {
        self.counter.load(Ordering::SeqCst)
    }

    /// The one-time token that lets the owner register the first account while registration is
    /// closed; created on demand and kept until used.
    pub fn bootstrap_token(&self, create: bool) -> Result<Option<String>> {
        if let Some(bytes) = self.store.get(Cf::Global, BOOTSTRAP_TOKEN)? {
            return Ok(Some(String::from_utf8_lossy(&bytes).into_owned()));
        }
        if !create {
            return Ok(None);
        }
        let token = utils::random_string(24);
        self.store
            .put(Cf::Global, BOOTSTRAP_TOKEN, token.as_bytes())?;
        Ok(Some(token))
    }

    /// Adds the removal of the bootstrap token to `batch` (done when the first account exists).
    pub fn remove_bootstrap_token(batch: &mut Batch) {
        batch.delete(Cf::Global, BOOTSTRAP_TOKEN);
    }
}
