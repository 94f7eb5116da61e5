//! Cross-signing: a user's master key, self-signing key (signs their devices) and user-signing
//! key (signs other users' master keys), and the signatures clients upload afterwards.
//!
//! Keys are stored as uploaded in `cross_signing_keys`; a signature uploaded later is verified
//! against the signer's public key and merged into the stored target's `signatures` (of a
//! device's identity keys in `device_keys`, or of a master key here), so `/keys/query` serves
//! them (a master key's third-party signatures only to their signer). Every change is
//! announced as a device-list change of the key's owner (of the signer, for a signature of
//! another user's master key).

use ruma::{
    CanonicalJsonValue, DeviceId, OwnedUserId, SigningKeyAlgorithm, UserId,
    serde::{Base64, base64::Standard},
    signatures::{to_canonical_json_string_for_signing, verify_canonical_json_bytes},
};
use serde_json::{Map, Value, json};

use crate::{
    Error, Result,
    service::{Services, device_lists},
    store::{Batch, Cf, keys},
};

pub const MASTER: &str = "master";
pub const SELF_SIGNING: &str = "self_signing";
pub const USER_SIGNING: &str = "user_signing";

/// The cross-signing keys of one `/keys/device_signing/upload`, as JSON.
#[derive(Default)]
pub struct SigningKeysUpload {
    pub master_key: Option<Value>,
    pub self_signing_key: Option<Value>,
    pub user_signing_key: Option<Value>,
}

fn key_of(user_id: &UserId, usage: &str) -> Vec<u8> {
    keys::join([user_id.as_bytes(), usage.as_bytes()])
}

/// Whether `signature` (base64) by `public_key` (base64 ed25519) is valid over `object`.
pub fn signature_valid(object: &Value, public_key: &str, signature: &str) -> bool {
    let (Ok(public_key), Ok(signature)) = (
        Base64::<Standard, Vec<u8>>::parse(public_key),
        Base64::<Standard, Vec<u8>>::parse(signature),
    ) else {
        return false;
    };
    let Ok(CanonicalJsonValue::Object(canonical)) = CanonicalJsonValue::try_from(object.clone())
    else {
        return false;
    };
    let Ok(signed) = to_canonical_json_string_for_signing(&canonical) else {
        return false;
    };
    verify_canonical_json_bytes(
        &SigningKeyAlgorithm::Ed25519,
        public_key.as_bytes(),
        signature.as_bytes(),
        signed.as_bytes(),
    )
    .is_ok()
}

/// The single ed25519 public key of a cross-signing key (`keys: {"ed25519:<pub>": "<pub>"}`).
pub fn public_key_of(key: &Value) -> Option<String> {
    let keys = key.get("keys")?.as_object()?;
    if keys.len() != 1 {
        return None;
    }
    let (id, value) = keys.iter().next()?;
    let public = value.as_str()?;
    (id.strip_prefix("ed25519:") == Some(public)).then(|| public.to_owned())
}

/// Checks the shape of an uploaded cross-signing key: owner, usage, exactly one ed25519 key.
fn check_signing_key(user_id: &UserId, usage: &str, key: &Value) -> Result<String> {
    let name = format!("{usage}_key");
    if key.get("user_id").and_then(Value::as_str) != Some(user_id.as_str()) {
        return Err(Error::invalid_param(format!(
            "{name}.user_id is not the user of the access token."
        )));
    }
    let usages = key
        .get("usage")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::bad_json(format!("{name}.usage must be an array.")))?;
    if !usages.iter().any(|u| u.as_str() == Some(usage)) {
        return Err(Error::invalid_param(format!(
            "{name}.usage does not contain {usage}."
        )));
    }
    public_key_of(key).ok_or_else(|| {
        Error::bad_json(format!(
            "{name}.keys must hold exactly one key, \"ed25519:<public key>\": \"<public key>\"."
        ))
    })
}

/// The signature by `signer`'s key `key_id` in `object`, if any.
fn signature_in<'a>(object: &'a Value, signer: &UserId, key_id: &str) -> Option<&'a str> {
    object
        .get("signatures")?
        .get(signer.as_str())?
        .get(key_id)?
        .as_str()
}

/// `object` without `signatures` and `unsigned`: what a signature covers.
fn signed_part(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(map) = object.as_object_mut() {
        map.remove("signatures");
        map.remove("unsigned");
    }
    object
}

fn failure(errcode: &str, error: impl Into<String>) -> Value {
    json!({ "errcode": errcode, "error": error.into() })
}

impl Services {
    /// The stored cross-signing key of `user_id` for `usage`.
    pub fn cross_signing_key(&self, user_id: &UserId, usage: &str) -> Result<Option<Value>> {
        match self
            .store
            .get(Cf::CrossSigningKeys, &key_of(user_id, usage))?
        {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Whether `user_id` has uploaded a master key (then replacing keys needs
    /// user-interactive auth).
    pub fn has_master_key(&self, user_id: &UserId) -> Result<bool> {
        Ok(self
            .store
            .contains(Cf::CrossSigningKeys, &key_of(user_id, MASTER))?)
    }

    /// Whether `upload` names only keys the user has already, the same public keys (a client
    /// retrying an upload whose answer it lost): no user-interactive auth needed then (spec
    /// v1.11, MSC3967). Signatures added since do not count.
    pub fn signing_keys_unchanged(
        &self,
        user_id: &UserId,
        upload: &SigningKeysUpload,
    ) -> Result<bool> {
        let mut any = false;
        for (usage, key) in [
            (MASTER, &upload.master_key),
            (SELF_SIGNING, &upload.self_signing_key),
            (USER_SIGNING, &upload.user_signing_key),
        ] {
            let Some(key) = key else { continue };
            any = true;
            let same = self
                .cross_signing_key(user_id, usage)?
                .is_some_and(|stored| {
                    stored["keys"] == key["keys"] && stored["usage"] == key["usage"]
                });
            if !same {
                return Ok(false);
            }
        }
        Ok(any)
    }

    /// `/keys/device_signing/upload` (after any user-interactive auth): stores the given
    /// cross-signing keys. The self-signing and user-signing keys must carry a valid signature
    /// by the master key (the uploaded one, else the stored one).
    pub async fn upload_signing_keys(
        &self,
        user_id: &UserId,
        upload: SigningKeysUpload,
    ) -> Result<()> {
        let signed_keys = self.e2ee.signed_keys.lock().await;
        let master = match &upload.master_key {
            Some(master) => Some(master.clone()),
            None => self.cross_signing_key(user_id, MASTER)?,
        };
        let mut batch = Batch::new();
        if let Some(key) = &upload.master_key {
            check_signing_key(user_id, MASTER, key)?;
            batch.put(
                Cf::CrossSigningKeys,
                key_of(user_id, MASTER),
                serde_json::to_vec(key)?,
            );
        }
        for (usage, key) in [
            (SELF_SIGNING, &upload.self_signing_key),
            (USER_SIGNING, &upload.user_signing_key),
        ] {
            let Some(key) = key else { continue };
            check_signing_key(user_id, usage, key)?;
            let master_public = master
                .as_ref()
                .and_then(public_key_of)
                .ok_or_else(|| Error::invalid_param("There is no master key to sign with."))?;
            let signature = signature_in(key, user_id, &format!("ed25519:{master_public}"))
                .ok_or_else(|| {
                    Error::invalid_param(format!("{usage}_key is not signed by the master key."))
                })?;
            if !signature_valid(key, &master_public, signature) {
                return Err(Error::invalid_param(format!(
                    "The master key's signature of {usage}_key is invalid."
                )));
            }
            batch.put(
                Cf::CrossSigningKeys,
                key_of(user_id, usage),
                serde_json::to_vec(key)?,
            );
        }
        if batch.is_empty() {
            return Ok(());
        }
        let store = self.store.clone();
        self.timeline
            .commit_counted(batch, |batch, count| {
                device_lists::change_into(&store, batch, count, user_id)
            })
            .await?;
        self.push_device_list_changes(&[user_id])?;
        drop(signed_keys);
        self.federate_signing_keys(user_id).await;
        Ok(())
    }

    /// `/keys/signatures/upload`: verifies and stores signatures by `user_id` of their own
    /// devices (self-signing key), of their own master key (one of their devices or their
    /// master key's own), and of other users' master keys (user-signing key). Answers the
    /// per-key failures: `{user_id: {key_id: {errcode, error}}}`.
    pub async fn upload_signatures(
        &self,
        user_id: &UserId,
        signed: Vec<(OwnedUserId, String, Value)>,
    ) -> Result<Value> {
        let signed_keys = self.e2ee.signed_keys.lock().await;
        let mut failures: Map<String, Value> = Map::new();
        let mut fail = |target: &UserId, key_id: &str, error: Value| {
            failures
                .entry(target.to_string())
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .map(|m| m.insert(key_id.to_owned(), error));
        };
        let self_signing = self
            .cross_signing_key(user_id, SELF_SIGNING)?
            .as_ref()
            .and_then(public_key_of);
        let user_signing = self
            .cross_signing_key(user_id, USER_SIGNING)?
            .as_ref()
            .and_then(public_key_of);
        let mut changed: Vec<OwnedUserId> = Vec::new();
        let mut batch = Batch::new();
        for (target, key_id, object) in signed {
            // Which stored key is signed, and which of the signer's keys may sign it.
            let (cf, store_key, stored, allowed): (Cf, Vec<u8>, Option<Value>, Vec<String>) =
                if target == user_id {
                    let master = self.cross_signing_key(user_id, MASTER)?;
                    if master.as_ref().and_then(public_key_of).as_deref() == Some(&key_id) {
                        // Own master key: signed by one of the user's devices, named by
                        // device ID (looked up below).
                        (
                            Cf::CrossSigningKeys,
                            key_of(user_id, MASTER),
                            master,
                            Vec::new(),
                        )
                    } else {
                        // One of the user's devices: signed by the self-signing key.
                        let store_key = keys::join([user_id.as_bytes(), key_id.as_bytes()]);
                        let stored = match self.store.get(Cf::DeviceKeys, &store_key)? {
                            Some(bytes) => Some(serde_json::from_slice(&bytes)?),
                            None => None,
                        };
                        (
                            Cf::DeviceKeys,
                            store_key,
                            stored,
                            self_signing.iter().cloned().collect(),
                        )
                    }
                } else {
                    // Another user's master key: signed by the user-signing key.
                    let master = if self.is_local_user(&target) {
                        self.cross_signing_key(&target, MASTER)?
                    } else {
                        None
                    };
                    let master = master.filter(|m| public_key_of(m).as_deref() == Some(&key_id));
                    (
                        Cf::CrossSigningKeys,
                        key_of(&target, MASTER),
                        master,
                        user_signing.iter().cloned().collect(),
                    )
                };
            let Some(mut stored) = stored else {
                fail(
                    &target,
                    &key_id,
                    failure("M_NOT_FOUND", "No such key to sign."),
                );
                continue;
            };
            if signed_part(&stored) != signed_part(&object) {
                fail(
                    &target,
                    &key_id,
                    failure(
                        "M_INVALID_SIGNATURE",
                        "The signed object differs from the stored key.",
                    ),
                );
                continue;
            }
            // The uploader's signatures, each on its own: one already stored is left as it
            // is (a client cross-signing its device sends the device's own signature along),
            // a new one must verify and be by a key the uploader may sign this object with.
            let uploaded: Vec<(String, String)> = object
                .get("signatures")
                .and_then(|s| s.get(user_id.as_str()))
                .and_then(Value::as_object)
                .map(|sigs| {
                    sigs.iter()
                        .filter_map(|(id, sig)| Some((id.clone(), sig.as_str()?.to_owned())))
                        .collect()
                })
                .unwrap_or_default();
            let mut accepted = Vec::new();
            let mut already_stored = 0;
            let mut error = None;
            for (signing_key_id, signature) in uploaded {
                if signature_in(&stored, user_id, &signing_key_id) == Some(signature.as_str()) {
                    already_stored += 1;
                    continue;
                }
                let public = signing_key_id.strip_prefix("ed25519:").unwrap_or_default();
                let public = if allowed.iter().any(|a| a == public) {
                    Some(public.to_owned())
                } else if cf == Cf::CrossSigningKeys && target == user_id {
                    // A device signs by its device ID: `ed25519:<device_id>`.
                    self.device_ed25519(user_id, public.into())?
                } else {
                    None
                };
                match public {
                    Some(public) if signature_valid(&object, &public, &signature) => {
                        accepted.push((signing_key_id, signature));
                    }
                    Some(_) => {
                        error = Some(failure(
                            "M_INVALID_SIGNATURE",
                            format!("Invalid signature by {signing_key_id}."),
                        ))
                    }
                    None => {
                        error = Some(failure(
                            "M_INVALID_SIGNATURE",
                            format!("{signing_key_id} may not sign this key."),
                        ))
                    }
                }
            }
            // What is wrong is refused; what is right is kept all the same.
            if let Some(error) = error {
                fail(&target, &key_id, error);
            } else if accepted.is_empty() && already_stored == 0 {
                fail(
                    &target,
                    &key_id,
                    failure("M_INVALID_SIGNATURE", "No signature by the uploader."),
                );
            }
            if accepted.is_empty() {
                continue;
            }
            let signatures = stored
                .as_object_mut()
                .ok_or_else(|| Error::internal("corrupt stored key"))?
                .entry("signatures")
                .or_insert_with(|| json!({}));
            if !signatures.is_object() {
                *signatures = json!({});
            }
            let mine = signatures
                .as_object_mut()
                .and_then(|s| {
                    s.entry(user_id.to_string())
                        .or_insert_with(|| json!({}))
                        .as_object_mut()
                })
                .ok_or_else(|| Error::internal("corrupt stored signatures"))?;
            for (id, signature) in accepted {
                mine.insert(id, Value::String(signature));
            }
            batch.put(cf, store_key, serde_json::to_vec(&stored)?);
            // A signature of another user's master key is shown only to its signer (see
            // `query_signing_keys`), so it is the signer's change.
            let announced = if target == user_id {
                target
            } else {
                user_id.to_owned()
            };
            if !changed.contains(&announced) {
                changed.push(announced);
            }
        }
        if !batch.is_empty() {
            let store = self.store.clone();
            let changed = &changed;
            self.timeline
                .commit_counted(batch, |batch, count| {
                    for user in changed {
                        device_lists::change_into(&store, batch, count, user)?;
                    }
                    Ok(())
                })
                .await?;
            let users: Vec<&UserId> = changed.iter().map(|u| u.as_ref()).collect();
            self.push_device_list_changes(&users)?;
            drop(signed_keys);
            for user in changed {
                self.federate_signing_keys(user).await;
            }
        }
        Ok(json!({ "failures": failures }))
    }

    fn is_local_user(&self, user_id: &UserId) -> bool {
        user_id.server_name() == self.server_name
    }

    /// The ed25519 public key of a device's uploaded identity keys.
    fn device_ed25519(&self, user_id: &UserId, device_id: &DeviceId) -> Result<Option<String>> {
        let key = keys::join([user_id.as_bytes(), device_id.as_bytes()]);
        let Some(bytes) = self.store.get(Cf::DeviceKeys, &key)? else {
            return Ok(None);
        };
        let keys: Value = serde_json::from_slice(&bytes)?;
        Ok(keys
            .get("keys")
            .and_then(|k| k.get(format!("ed25519:{device_id}")))
            .and_then(Value::as_str)
            .map(str::to_owned))
    }

    /// The cross-signing keys `/keys/query` shows `requester` of `user_id`: master and
    /// self-signing keys of anyone, the user-signing key only of themself; on the master key,
    /// only the signatures by its owner and by the requester.
    pub fn query_signing_keys(
        &self,
        requester: &UserId,
        user_id: &UserId,
    ) -> Result<[(&'static str, Option<Value>); 3]> {
        let user_signing = if requester == user_id {
            self.cross_signing_key(user_id, USER_SIGNING)?
        } else {
            None
        };
        // Signatures of someone's master key by third parties (their user-signing keys) are
        // private to each signer: keep only the owner's and the requester's.
        let master = self.cross_signing_key(user_id, MASTER)?.map(|mut key| {
            if let Some(signatures) = key.get_mut("signatures").and_then(Value::as_object_mut) {
                signatures
                    .retain(|signer, _| signer == user_id.as_str() || signer == requester.as_str());
            }
            key
        });
        Ok([
            ("master_keys", master),
            (
                "self_signing_keys",
                self.cross_signing_key(user_id, SELF_SIGNING)?,
            ),
            ("user_signing_keys", user_signing),
        ])
    }
}
