//! Other servers' signing keys: fetched from the server itself (`/_matrix/key/v2/server`) or,
//! failing that, from the `trusted_servers` notaries (`/_matrix/key/v2/query`), checked (the
//! server's self-signature, the notary's signature) and cached in `server_keys` until their
//! `valid_until_ts`. Everything that verifies a remote signature — request authentication,
//! event signatures — asks here.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::{Duration, Instant},
};

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, MilliSecondsSinceUnixEpoch, OwnedServerName,
    ServerName,
    api::federation::discovery::{get_remote_server_keys_batch, get_server_keys},
    serde::{Base64, Raw},
    signatures::PublicKeySet,
};
use serde::{Deserialize, Serialize};

use crate::{
    Error, Result,
    service::Services,
    store::{Cf, Store},
    utils,
};

/// A server whose keys could not be had is not asked again sooner than this.
const REFETCH_BACKOFF: Duration = Duration::from_secs(30);
/// Remote keys are not trusted for longer than this, whatever they claim.
const MAX_CACHE: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// One server's keys as cached (`server_keys` column family, JSON).
#[derive(Default, Serialize, Deserialize)]
pub struct CachedKeys {
    /// Key ID → key (unpadded base64) and until when it may be used.
    pub keys: BTreeMap<String, CachedKey>,
    /// The server's last self-signed key document, as fetched (notaries hand it on).
    pub document: Option<CanonicalJsonObject>,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct CachedKey {
    pub key: String,
    /// Current keys: their `valid_until_ts`; old keys: their `expired_ts`.
    pub valid_until_ts: u64,
}

pub struct KeyCache {
    store: Store,
    /// When each server was last asked in vain (back-off).
    failures: Mutex<HashMap<OwnedServerName, Instant>>,
}

impl KeyCache {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            failures: Mutex::default(),
        }
    }

    pub fn cached(&self, server: &ServerName) -> Result<CachedKeys> {
        Ok(match self.store.get(Cf::ServerKeys, server.as_bytes())? {
            Some(bytes) => serde_json::from_slice(&bytes)?,
            None => CachedKeys::default(),
        })
    }

    /// Merges a verified key document into the cache.
    fn remember(&self, server: &ServerName, document: &CanonicalJsonObject) -> Result<()> {
        let mut cached = self.cached(server)?;
        let cap = utils::now_millis() + MAX_CACHE.as_millis() as u64;
        let valid_until = int_field(document, "valid_until_ts").unwrap_or(0).min(cap);
        if let Some(CanonicalJsonValue::Object(keys)) = document.get("verify_keys") {
            for (id, key) in keys {
                if let Some(key) = string_field(key, "key") {
                    cached.keys.insert(
                        id.clone(),
                        CachedKey {
                            key,
                            valid_until_ts: valid_until,
                        },
                    );
                }
            }
        }
        if let Some(CanonicalJsonValue::Object(keys)) = document.get("old_verify_keys") {
            for (id, key) in keys {
                if let (Some(k), CanonicalJsonValue::Object(fields)) =
                    (string_field(key, "key"), key)
                {
                    let expired = int_field(fields, "expired_ts").unwrap_or(0);
                    cached.keys.insert(
                        id.clone(),
                        CachedKey {
                            key: k,
                            valid_until_ts: expired,
                        },
                    );
                }
            }
        }
        cached.document = Some(document.clone());
        self.store.put(
            Cf::ServerKeys,
            server.as_bytes(),
            &serde_json::to_vec(&cached)?,
        )?;
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(server);
        Ok(())
    }

    /// A key document another homeserver had cached (`culvert import`), kept only when it is
    /// the server's own and signed by it. Returns whether it was kept.
    pub fn import_document(
        &self,
        server: &ServerName,
        document: &CanonicalJsonObject,
    ) -> Result<bool> {
        if verify_self_signed(server, document).is_err() {
            return Ok(false);
        }
        self.remember(server, document)?;
        Ok(true)
    }

    fn recently_failed(&self, server: &ServerName) -> bool {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(server)
            .is_some_and(|at| at.elapsed() < REFETCH_BACKOFF)
    }

    fn failed(&self, server: &ServerName) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(server.to_owned(), Instant::now());
    }
}

/// Checks a key document that claims to come from `server`: the name matches and it is signed
/// by one of its own keys. Extra signatures (a notary's) are checked by the caller.
fn verify_self_signed(server: &ServerName, document: &CanonicalJsonObject) -> Result<(), String> {
    if document.get("server_name") != Some(&CanonicalJsonValue::String(server.to_string())) {
        return Err("the key document names another server".into());
    }
    let Some(CanonicalJsonValue::Object(keys)) = document.get("verify_keys") else {
        return Err("the key document has no verify_keys".into());
    };
    let signed_by: Vec<String> = match document.get("signatures") {
        Some(CanonicalJsonValue::Object(signatures)) => match signatures.get(server.as_str()) {
            Some(CanonicalJsonValue::Object(by_server)) => by_server.keys().cloned().collect(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    let mut public = PublicKeySet::new();
    for id in &signed_by {
        if let Some(key) = keys.get(id).and_then(|k| string_field(k, "key")) {
            let key = Base64::parse(&key).map_err(|e| format!("bad key {id}: {e}"))?;
            public.insert(id.clone(), key);
        }
    }
    if public.is_empty() {
        return Err("the key document is not signed by any of its keys".into());
    }
    // Only the server's own signatures are checked here.
    let mut own = document.clone();
    if let Some(CanonicalJsonValue::Object(signatures)) = own.get_mut("signatures") {
        signatures.retain(|name, _| name == server.as_str());
    }
    let map = BTreeMap::from([(server.to_string(), public)]);
    ruma::signatures::verify_json(&map, &own).map_err(|e| format!("bad self-signature: {e}"))
}

fn string_field(value: &CanonicalJsonValue, field: &str) -> Option<String> {
    match value {
        CanonicalJsonValue::Object(o) => match o.get(field) {
            Some(CanonicalJsonValue::String(s)) => Some(s.clone()),
            _ => None,
        },
        _ => None,
    }
}

fn int_field(object: &CanonicalJsonObject, field: &str) -> Option<u64> {
    match object.get(field) {
        Some(CanonicalJsonValue::Integer(i)) => u64::try_from(i64::from(*i)).ok(),
        _ => None,
    }
}

fn to_canonical(raw: &Raw<impl Sized>) -> Result<CanonicalJsonObject, String> {
    serde_json::from_str(raw.json().get()).map_err(|e| format!("not a JSON object: {e}"))
}

impl Services {
    /// The public keys of `server` with the given IDs that were valid at `at_ms`, fetching them
    /// when they are not cached. Keys that cannot be had are missing from the answer.
    pub async fn server_public_keys(
        &self,
        server: &ServerName,
        key_ids: &[String],
        at_ms: u64,
    ) -> Result<PublicKeySet> {
        if server == self.server_name {
            let mut own = PublicKeySet::new();
            own.insert(
                self.globals.signing_key_id(),
                Base64::new(self.globals.signing_key().public_key().to_vec()),
            );
            return Ok(own);
        }
        let usable = |cached: &CachedKeys| -> PublicKeySet {
            key_ids
                .iter()
                .filter_map(|id| {
                    let key = cached.keys.get(id)?;
                    (key.valid_until_ts >= at_ms)
                        .then(|| Base64::parse(&key.key).ok())
                        .flatten()
                        .map(|k| (id.clone(), k))
                })
                .collect()
        };
        let cached = self.federation.keys.cached(server)?;
        let found = usable(&cached);
        if found.len() == key_ids.len() || self.federation.keys.recently_failed(server) {
            return Ok(found);
        }
        self.fetch_server_keys(server).await;
        Ok(usable(&self.federation.keys.cached(server)?))
    }

    /// Fetches `server`'s keys, directly first, then through each trusted notary, and caches
    /// what verifies.
    pub async fn fetch_server_keys(&self, server: &ServerName) {
        match self.fetch_keys_directly(server).await {
            Ok(()) => return,
            Err(e) => tracing::debug!(%server, "fetching keys directly failed: {e}"),
        }
        for notary in &self.config.trusted_servers {
            if notary == server || *notary == self.server_name {
                continue;
            }
            match self.fetch_keys_from_notary(server, notary).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::debug!(%server, %notary, "fetching keys from a notary failed: {e}")
                }
            }
        }
        tracing::warn!(%server, "could not get the server's signing keys");
        self.federation.keys.failed(server);
    }

    async fn fetch_keys_directly(&self, server: &ServerName) -> Result<(), String> {
        let response = self
            .send_unauthenticated_request(server, get_server_keys::v2::Request::new())
            .await
            .map_err(|e| e.to_string())?;
        let document = to_canonical(&response.server_key)?;
        verify_self_signed(server, &document)?;
        self.federation
            .keys
            .remember(server, &document)
            .map_err(|e| e.to_string())
    }

    async fn fetch_keys_from_notary(
        &self,
        server: &ServerName,
        notary: &ServerName,
    ) -> Result<(), String> {
        // The notary's own keys, to check its signature on what it hands on.
        let notary_keys = self
            .federation
            .keys
            .cached(notary)
            .map_err(|e| e.to_string())?;
        if notary_keys.keys.is_empty() {
            self.fetch_keys_directly(notary).await?;
        }
        let notary_keys = self
            .federation
            .keys
            .cached(notary)
            .map_err(|e| e.to_string())?;
        let now = utils::now_millis();
        let notary_public: PublicKeySet = notary_keys
            .keys
            .iter()
            .filter(|(_, k)| k.valid_until_ts >= now)
            .filter_map(|(id, k)| Some((id.clone(), Base64::parse(&k.key).ok()?)))
            .collect();
        let request = get_remote_server_keys_batch::v2::Request::new(BTreeMap::from([(
            server.to_owned(),
            BTreeMap::new(),
        )]));
        let response = self
            .send_unauthenticated_request(notary, request)
            .await
            .map_err(|e| e.to_string())?;
        let mut stored = false;
        for raw in &response.server_keys {
            let document = to_canonical(raw)?;
            if verify_self_signed(server, &document).is_err() {
                continue;
            }
            let mut by_notary = document.clone();
            if let Some(CanonicalJsonValue::Object(signatures)) = by_notary.get_mut("signatures") {
                signatures.retain(|name, _| name == notary.as_str());
            }
            let map = BTreeMap::from([(notary.to_string(), notary_public.clone())]);
            if ruma::signatures::verify_json(&map, &by_notary).is_err() {
                continue;
            }
            self.federation
                .keys
                .remember(server, &document)
                .map_err(|e| e.to_string())?;
            stored = true;
        }
        if stored {
            Ok(())
        } else {
            Err("the notary had no verifiable keys".into())
        }
    }

    /// Notary service (`/_matrix/key/v2/query`): `server`'s key documents, each countersigned
    /// by this server. Our own keys come fresh; others' from the cache, fetched when missing or
    /// no longer valid at `minimum_valid_until_ts`.
    pub async fn notary_keys(
        &self,
        server: &ServerName,
        minimum_valid_until: Option<MilliSecondsSinceUnixEpoch>,
    ) -> Result<Vec<CanonicalJsonObject>> {
        if server == self.server_name {
            let keys = self
                .globals
                .signed_server_keys(&self.server_name, crate::service::globals::KEY_VALIDITY)?;
            return Ok(vec![keys]);
        }
        let wanted = minimum_valid_until
            .map(|t| u64::from(t.get()))
            .unwrap_or_else(utils::now_millis);
        let valid = |cached: &CachedKeys| {
            cached
                .document
                .as_ref()
                .is_some_and(|d| int_field(d, "valid_until_ts").unwrap_or(0) >= wanted)
        };
        let mut cached = self.federation.keys.cached(server)?;
        if !valid(&cached)
            && self.federation.enabled
            && !self.federation.keys.recently_failed(server)
        {
            self.fetch_server_keys(server).await;
            cached = self.federation.keys.cached(server)?;
        }
        let Some(mut document) = cached.document else {
            return Ok(Vec::new());
        };
        ruma::signatures::sign_json(
            self.server_name.as_str(),
            self.globals.signing_key(),
            &mut document,
        )
        .map_err(|e| Error::internal(format!("countersigning keys failed: {e}")))?;
        Ok(vec![document])
    }
}

#[cfg(test)]
mod tests {
    use ruma::signatures::Ed25519KeyPair;

    use super::*;

    fn document(name: &str, key: &Ed25519KeyPair) -> CanonicalJsonObject {
        let public = Base64::<ruma::serde::base64::Standard, _>::new(key.public_key());
        let mut doc: CanonicalJsonObject = serde_json::from_value(serde_json::json!({
            "server_name": name,
            "verify_keys": { format!("ed25519:{}", key.version()): { "key": public.encode() } },
            "old_verify_keys": {},
            "valid_until_ts": 4_000_000_000_000u64,
        }))
        .unwrap();
        ruma::signatures::sign_json(name, key, &mut doc).unwrap();
        doc
    }

    fn key(version: &str) -> Ed25519KeyPair {
        Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), version.into()).unwrap()
    }

    #[test]
    fn self_signed_documents_verify_and_forgeries_do_not() {
        let server = <&ServerName>::try_from("remote.example").unwrap();
        let k = key("a");
        assert!(verify_self_signed(server, &document("remote.example", &k)).is_ok());
        // Claims another name.
        assert!(verify_self_signed(server, &document("other.example", &k)).is_err());
        // Tampered after signing.
        let mut tampered = document("remote.example", &k);
        tampered.insert(
            "valid_until_ts".into(),
            CanonicalJsonValue::Integer(1u32.into()),
        );
        assert!(verify_self_signed(server, &tampered).is_err());
        // Signed by a key that is not in the document.
        let mut foreign = document("remote.example", &k);
        let intruder = key("a");
        foreign.remove("signatures");
        ruma::signatures::sign_json("remote.example", &intruder, &mut foreign).unwrap();
        assert!(verify_self_signed(server, &foreign).is_err());
    }
}
