//! Server-wide state: the signing key and the first-start registration token.

use ruma::signatures::Ed25519KeyPair;
use serde::{Deserialize, Serialize};

use crate::{
    Error, Result,
    store::{Batch, Cf, Store},
    utils,
};

const SIGNING_KEY: &[u8] = b"signing_key";
const BOOTSTRAP_TOKEN: &[u8] = b"bootstrap_registration_token";
const OLD_SIGNING_KEYS: &[u8] = b"old_signing_keys";

/// A signing key the server used before a rotation, still published (`old_verify_keys`) so
/// others can check what it signed then.
#[derive(Serialize, Deserialize)]
struct OldSigningKey {
    /// `ed25519:<version>`.
    key_id: String,
    /// Unpadded base64 public key.
    public_key: String,
    /// When it stopped being used (ms since the epoch).
    expired_ts: u64,
}

/// The stored form of the server's ed25519 key.
#[derive(Serialize, Deserialize)]
struct StoredSigningKey {
    /// Key version, the part after `ed25519:` in the key ID.
    version: String,
    /// PKCS#8 v2 document, as ruma generates it.
    pkcs8: Vec<u8>,
}

/// How long other servers may cache this server's keys before asking again.
pub const KEY_VALIDITY: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 60 * 60);

pub struct Globals {
    store: Store,
    signing_key: Ed25519KeyPair,
}

impl Globals {
    /// Loads the signing key, generating and persisting one on first start.
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
        Ok(Self { store, signing_key })
    }

    /// Makes `pkcs8` (a PKCS#8 ed25519 key, as ruma reads it) under `version` the server's
    /// signing key, in place of any: another homeserver's identity taken over by an import
    /// (`culvert import`), before the services open. Refuses a key that does not parse.
    pub fn import_signing_key(store: &Store, version: &str, pkcs8: &[u8]) -> Result<()> {
        Ed25519KeyPair::from_der(pkcs8, version.to_owned())
            .map_err(|e| Error::invalid_param(format!("The signing key is unreadable: {e}")))?;
        let stored = StoredSigningKey {
            version: version.to_owned(),
            pkcs8: pkcs8.to_vec(),
        };
        store.put(Cf::Global, SIGNING_KEY, &serde_json::to_vec(&stored)?)?;
        Ok(())
    }

    pub fn signing_key(&self) -> &Ed25519KeyPair {
        &self.signing_key
    }

    /// The key ID under which the server signs: `ed25519:<version>`.
    pub fn signing_key_id(&self) -> String {
        format!("ed25519:{}", self.signing_key.version())
    }

    /// This server's published signing keys (`GET /_matrix/key/v2/server`), valid for `validity`
    /// from now and signed with the key itself, as other servers require.
    pub fn signed_server_keys(
        &self,
        server_name: &ruma::ServerName,
        validity: std::time::Duration,
    ) -> Result<ruma::CanonicalJsonObject> {
        use ruma::{CanonicalJsonValue, serde::Base64};

        let public_key =
            Base64::<ruma::serde::base64::Standard, _>::new(self.signing_key.public_key());
        let valid_until = utils::now_millis() + validity.as_millis() as u64;
        let verify_key = ruma::CanonicalJsonObject::from([(
            "key".to_owned(),
            CanonicalJsonValue::String(public_key.encode()),
        )]);
        let mut old_verify_keys = ruma::CanonicalJsonObject::new();
        for old in self.old_signing_keys()? {
            old_verify_keys.insert(
                old.key_id,
                CanonicalJsonValue::Object(ruma::CanonicalJsonObject::from([
                    ("key".to_owned(), CanonicalJsonValue::String(old.public_key)),
                    (
                        "expired_ts".to_owned(),
                        CanonicalJsonValue::Integer(
                            ruma::Int::try_from(old.expired_ts)
                                .map_err(|e| Error::internal(e.to_string()))?,
                        ),
                    ),
                ])),
            );
        }
        let mut keys = ruma::CanonicalJsonObject::from([
            (
                "server_name".to_owned(),
                CanonicalJsonValue::String(server_name.to_string()),
            ),
            (
                "verify_keys".to_owned(),
                CanonicalJsonValue::Object([(self.signing_key_id(), verify_key.into())].into()),
            ),
            (
                "old_verify_keys".to_owned(),
                CanonicalJsonValue::Object(old_verify_keys),
            ),
            (
                "valid_until_ts".to_owned(),
                CanonicalJsonValue::Integer(
                    ruma::Int::try_from(valid_until).map_err(|e| Error::internal(e.to_string()))?,
                ),
            ),
        ]);
        ruma::signatures::sign_json(server_name.as_str(), &self.signing_key, &mut keys)
            .map_err(|e| Error::internal(format!("signing the server keys failed: {e}")))?;
        Ok(keys)
    }

    fn old_signing_keys(&self) -> Result<Vec<OldSigningKey>> {
        Ok(match self.store.get(Cf::Global, OLD_SIGNING_KEYS)? {
            Some(bytes) => serde_json::from_slice(&bytes)?,
            None => Vec::new(),
        })
    }

    /// Replaces the stored signing key by a new one, keeping the current one as an old key
    /// (published in `old_verify_keys` with the time it expired). The running server keeps
    /// signing with the key it loaded: the new one is used from the next start (the CLI
    /// command runs with the server stopped). Returns the new key's ID.
    pub fn rotate_signing_key(&self) -> Result<String> {
        use ruma::serde::Base64;
        let stored: StoredSigningKey = match self.store.get(Cf::Global, SIGNING_KEY)? {
            Some(bytes) => serde_json::from_slice(&bytes)?,
            None => return Err(Error::internal("no signing key to rotate")),
        };
        let current = Ed25519KeyPair::from_der(&stored.pkcs8, stored.version.clone())
            .map_err(|e| Error::internal(format!("stored signing key unreadable: {e}")))?;
        let mut old = self.old_signing_keys()?;
        old.push(OldSigningKey {
            key_id: format!("ed25519:{}", stored.version),
            public_key: Base64::<ruma::serde::base64::Standard, _>::new(current.public_key())
                .encode(),
            expired_ts: utils::now_millis(),
        });
        let new = StoredSigningKey {
            version: utils::random_string(6),
            pkcs8: Ed25519KeyPair::generate().to_vec(),
        };
        let mut batch = Batch::new();
        batch.put(Cf::Global, SIGNING_KEY, serde_json::to_vec(&new)?);
        batch.put(Cf::Global, OLD_SIGNING_KEYS, serde_json::to_vec(&old)?);
        self.store.write(batch)?;
        Ok(format!("ed25519:{}", new.version))
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
