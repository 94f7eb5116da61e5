//! Devices and their access tokens (sessions).
//!
//! An access token is 32 random alphanumerics. Only its SHA-256 is stored (as the key of the
//! `access_tokens` column family), so authenticating a request is one point read, and a copy of
//! the database does not hand out working tokens.
//!
//! Refresh tokens (spec v1.3): a session that asked for them gets an access token that expires
//! (`access_token_lifetime_ms`) and a refresh token (`refresh_tokens`, also stored hashed).
//! `/refresh` issues a *next* pair beside the current one; the current pair keeps working until
//! the next access or refresh token is first used, which makes the next pair current and
//! revokes the old one — so a client that lost the answer to `/refresh` is not logged out. An
//! expired access token is refused with `soft_logout: true`: the device stays, and refreshing
//! brings it back.

use std::net::IpAddr;

use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::{
    Error, Result,
    store::{Batch, Cf, Store, keys},
    utils,
};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub display_name: Option<String>,
    pub last_seen_ip: Option<String>,
    pub last_seen_ts: Option<u64>,
    pub created_ts: u64,
    /// Hex SHA-256 of the device's current access token.
    pub token_hash: String,
    /// Hex SHA-256 of the refresh token that goes with it (sessions that asked for one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_hash: Option<String>,
    /// A pair `/refresh` issued and the client has not used yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<TokenPair>,
}

/// An access token and its refresh token, by their hashes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenPair {
    pub access_hash: String,
    pub refresh_hash: String,
}

/// The tokens a login, registration or refresh hands out.
#[derive(Clone, Debug)]
pub struct NewTokens {
    pub access_token: String,
    /// With `refreshable`: the refresh token, and the access token's lifetime.
    pub refresh_token: Option<String>,
    pub expires_in_ms: Option<u64>,
}

/// A fresh access token (and, when `refreshable` names a lifetime, an expiring one with a
/// refresh token): the tokens, their hashes and the access token's expiry time.
struct Minted {
    tokens: NewTokens,
    access_hash: [u8; 32],
    refresh_hash: Option<[u8; 32]>,
    expires_at: Option<u64>,
}

fn mint(refreshable: Option<u64>) -> Minted {
    let access_token = utils::random_string(TOKEN_LEN);
    let access_hash = utils::sha256(access_token.as_bytes());
    let (refresh_token, refresh_hash, expires_at) = match refreshable {
        Some(lifetime) => {
            let refresh = utils::random_string(TOKEN_LEN);
            let hash = utils::sha256(refresh.as_bytes());
            (
                Some(refresh),
                Some(hash),
                Some(utils::now_millis().saturating_add(lifetime)),
            )
        }
        None => (None, None, None),
    };
    Minted {
        tokens: NewTokens {
            access_token,
            refresh_token,
            expires_in_ms: refreshable,
        },
        access_hash,
        refresh_hash,
        expires_at,
    }
}

/// An `access_tokens` or `refresh_tokens` value: `user 0xFF device`, then for an expiring
/// access token `0xFF` its expiry (ms, decimal), and for a pair not used yet `0xFF n`.
fn token_value(device_key: &[u8], expires_at: Option<u64>, next: bool) -> Vec<u8> {
    let mut value = device_key.to_vec();
    if expires_at.is_some() || next {
        value.push(keys::SEP);
        if let Some(at) = expires_at {
            value.extend(at.to_string().into_bytes());
        }
    }
    if next {
        value.extend([keys::SEP, b'n']);
    }
    value
}

/// What a token's value says.
struct TokenOwner {
    session: Session,
    expires_at: Option<u64>,
    next: bool,
}

fn parse_token_value(value: &[u8]) -> Result<TokenOwner> {
    let corrupt = || Error::internal("corrupt token record");
    let mut parts = keys::split(value);
    let (Some(user), Some(device)) = (parts.next(), parts.next()) else {
        return Err(corrupt());
    };
    let user_id = std::str::from_utf8(user)
        .ok()
        .and_then(|s| UserId::parse(s).ok())
        .ok_or_else(corrupt)?;
    let device_id: OwnedDeviceId = String::from_utf8_lossy(device).as_ref().into();
    let expires_at = parts
        .next()
        .and_then(|at| std::str::from_utf8(at).ok()?.parse().ok());
    let next = parts.next() == Some(b"n");
    Ok(TokenOwner {
        session: Session { user_id, device_id },
        expires_at,
        next,
    })
}

/// Who a valid access token belongs to.
#[derive(Clone, Debug)]
pub struct Session {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
}

pub struct Devices {
    store: Store,
    /// Serialises token rotation on one device (login with an existing `device_id`).
    write_lock: Mutex<()>,
}

const TOKEN_LEN: usize = 32;
const DEVICE_ID_LEN: usize = 10;

impl Devices {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            write_lock: Mutex::new(()),
        }
    }

    fn device_key(user_id: &UserId, device_id: &DeviceId) -> Vec<u8> {
        keys::join([user_id.as_bytes(), device_id.as_bytes()])
    }

    /// Looks up the session an access token belongs to: one point read. An expired token is
    /// refused with `soft_logout`; the first use of a token `/refresh` issued makes its pair
    /// the device's current one.
    pub async fn authenticate(&self, token: &str) -> Result<Option<Session>> {
        let hash = utils::sha256(token.as_bytes());
        let Some(value) = self.store.get(Cf::AccessTokens, &hash)? else {
            return Ok(None);
        };
        let owner = parse_token_value(&value)?;
        if owner.expires_at.is_some_and(|at| utils::now_millis() >= at) {
            return Err(Error::soft_logout(
                "The access token has expired: refresh it.",
            ));
        }
        if owner.next {
            self.promote(&owner.session, &utils::hex(&hash), None)
                .await?;
        }
        Ok(Some(owner.session))
    }

    /// Makes the device's next pair (the one holding `access_hash` or `refresh_hash`) current,
    /// revoking the pair it replaces. Nothing happens if it is current already.
    async fn promote(
        &self,
        session: &Session,
        access_hash: &str,
        refresh_hash: Option<&str>,
    ) -> Result<()> {
        let _guard = self.write_lock.lock().await;
        let (user_id, device_id) = (&session.user_id, &session.device_id);
        let Some(mut record) = self.get(user_id, device_id)? else {
            return Ok(());
        };
        let Some(next) = record.next.take().filter(|next| {
            next.access_hash == access_hash || Some(next.refresh_hash.as_str()) == refresh_hash
        }) else {
            return Ok(());
        };
        let key = Self::device_key(user_id, device_id);
        let mut batch = Batch::new();
        batch.delete(Cf::AccessTokens, decode_hex(&record.token_hash)?);
        if let Some(old) = &record.refresh_hash {
            batch.delete(Cf::RefreshTokens, decode_hex(old)?);
        }
        // The pair loses its "next" mark (its access token keeps its expiry).
        let access_key = decode_hex(&next.access_hash)?;
        if let Some(value) = self.store.get(Cf::AccessTokens, &access_key)? {
            let owner = parse_token_value(&value)?;
            batch.put(
                Cf::AccessTokens,
                access_key,
                token_value(&key, owner.expires_at, false),
            );
        }
        batch.put(
            Cf::RefreshTokens,
            decode_hex(&next.refresh_hash)?,
            token_value(&key, None, false),
        );
        record.token_hash = next.access_hash;
        record.refresh_hash = Some(next.refresh_hash);
        batch.put(Cf::Devices, key, serde_json::to_vec(&record)?);
        self.store.write(batch)?;
        Ok(())
    }

    /// `/refresh`: a new pair for the device the refresh token belongs to. Using a refresh
    /// token `/refresh` issued makes its pair current first; a next pair never used is
    /// replaced. `None` for an unknown or revoked refresh token.
    pub async fn refresh(&self, refresh_token: &str, lifetime: u64) -> Result<Option<NewTokens>> {
        let hash = utils::sha256(refresh_token.as_bytes());
        let Some(value) = self.store.get(Cf::RefreshTokens, &hash)? else {
            return Ok(None);
        };
        let owner = parse_token_value(&value)?;
        let hex = utils::hex(&hash);
        if owner.next {
            self.promote(&owner.session, "", Some(&hex)).await?;
        }
        let _guard = self.write_lock.lock().await;
        let (user_id, device_id) = (&owner.session.user_id, &owner.session.device_id);
        let Some(mut record) = self.get(user_id, device_id)? else {
            return Ok(None);
        };
        if record.refresh_hash.as_deref() != Some(hex.as_str()) {
            // Revoked meanwhile (a concurrent refresh, or a logout).
            return Ok(None);
        }
        let key = Self::device_key(user_id, device_id);
        let mut batch = Batch::new();
        if let Some(unused) = record.next.take() {
            batch.delete(Cf::AccessTokens, decode_hex(&unused.access_hash)?);
            batch.delete(Cf::RefreshTokens, decode_hex(&unused.refresh_hash)?);
        }
        let minted = mint(Some(lifetime));
        let refresh_hash = minted.refresh_hash.unwrap_or_default();
        batch.put(
            Cf::AccessTokens,
            minted.access_hash.to_vec(),
            token_value(&key, minted.expires_at, true),
        );
        batch.put(
            Cf::RefreshTokens,
            refresh_hash.to_vec(),
            token_value(&key, None, true),
        );
        record.next = Some(TokenPair {
            access_hash: utils::hex(&minted.access_hash),
            refresh_hash: utils::hex(&refresh_hash),
        });
        batch.put(Cf::Devices, key, serde_json::to_vec(&record)?);
        self.store.write(batch)?;
        Ok(Some(minted.tokens))
    }

    /// Logs a device in: creates it (with a random ID unless one is given) or, for an existing
    /// device, replaces its tokens (the old ones stop working). With `refreshable` (a lifetime
    /// in ms), the access token expires and comes with a refresh token. Returns the device ID
    /// and the new tokens.
    pub async fn create_session(
        &self,
        user_id: &UserId,
        device_id: Option<OwnedDeviceId>,
        display_name: Option<String>,
        ip: Option<IpAddr>,
        refreshable: Option<u64>,
    ) -> Result<(OwnedDeviceId, NewTokens)> {
        let _guard = self.write_lock.lock().await;
        let mut batch = Batch::new();
        let existing = match &device_id {
            Some(device_id) => self.get(user_id, device_id)?,
            None => None,
        };
        let session = match existing {
            Some(mut record) => {
                let device_id = device_id.expect("an existing device was looked up by its ID");
                revoke_tokens_into(&mut batch, &record)?;
                let minted = mint(refreshable);
                let key = Self::device_key(user_id, &device_id);
                record.token_hash = utils::hex(&minted.access_hash);
                record.refresh_hash = minted.refresh_hash.map(|h| utils::hex(&h));
                record.next = None;
                if display_name.is_some() {
                    record.display_name = display_name;
                }
                record.last_seen_ip = ip.map(|ip| ip.to_string());
                record.last_seen_ts = Some(utils::now_millis());
                batch.put(Cf::Devices, key.clone(), serde_json::to_vec(&record)?);
                put_tokens_into(&mut batch, &key, &minted);
                (device_id, minted.tokens)
            }
            None => Self::new_device_into(
                &mut batch,
                user_id,
                device_id,
                display_name,
                ip,
                refreshable,
            )?,
        };
        self.store.write(batch)?;
        Ok(session)
    }

    /// Adds a brand-new device with fresh tokens to `batch` (for a device that does not exist
    /// yet, e.g. during registration; `refreshable` as for [`Devices::create_session`]).
    /// Returns the device ID and the tokens.
    pub fn new_device_into(
        batch: &mut Batch,
        user_id: &UserId,
        device_id: Option<OwnedDeviceId>,
        display_name: Option<String>,
        ip: Option<IpAddr>,
        refreshable: Option<u64>,
    ) -> Result<(OwnedDeviceId, NewTokens)> {
        let device_id =
            device_id.unwrap_or_else(|| utils::random_string(DEVICE_ID_LEN).to_uppercase().into());
        let minted = mint(refreshable);
        let now = utils::now_millis();
        let record = DeviceRecord {
            display_name,
            last_seen_ip: ip.map(|ip| ip.to_string()),
            last_seen_ts: Some(now),
            created_ts: now,
            token_hash: utils::hex(&minted.access_hash),
            refresh_hash: minted.refresh_hash.map(|h| utils::hex(&h)),
            next: None,
        };
        let key = Self::device_key(user_id, &device_id);
        batch.put(Cf::Devices, key.clone(), serde_json::to_vec(&record)?);
        put_tokens_into(batch, &key, &minted);
        Ok((device_id, minted.tokens))
    }

    /// A device an admin acts as the user from (Synapse's `users/{id}/login`): listed among
    /// the user's devices under `display_name`, its token expiring at `valid_until` (ms since
    /// the epoch) if given, with no refresh token. Returns the access token.
    pub async fn create_admin_login(
        &self,
        user_id: &UserId,
        display_name: String,
        valid_until: Option<u64>,
    ) -> Result<String> {
        let _guard = self.write_lock.lock().await;
        let mut minted = mint(None);
        minted.expires_at = valid_until;
        let now = utils::now_millis();
        let device_id: OwnedDeviceId = utils::random_string(DEVICE_ID_LEN).to_uppercase().into();
        let record = DeviceRecord {
            display_name: Some(display_name),
            last_seen_ip: None,
            last_seen_ts: Some(now),
            created_ts: now,
            token_hash: utils::hex(&minted.access_hash),
            refresh_hash: None,
            next: None,
        };
        let key = Self::device_key(user_id, &device_id);
        let mut batch = Batch::new();
        batch.put(Cf::Devices, key.clone(), serde_json::to_vec(&record)?);
        put_tokens_into(&mut batch, &key, &minted);
        self.store.write(batch)?;
        Ok(minted.tokens.access_token)
    }

    /// Adds a device another homeserver made (`culvert import`) to `batch`, with the access
    /// token its client holds, so that the client stays logged in.
    pub fn import_device_into(
        batch: &mut Batch,
        user_id: &UserId,
        device_id: &DeviceId,
        display_name: Option<String>,
        last_seen_ts: Option<u64>,
        access_token: Option<&str>,
    ) -> Result<()> {
        let key = Self::device_key(user_id, device_id);
        let token_hash = match access_token {
            Some(token) => {
                let hash = utils::sha256(token.as_bytes());
                batch.put(
                    Cf::AccessTokens,
                    hash.to_vec(),
                    token_value(&key, None, false),
                );
                utils::hex(&hash)
            }
            None => String::new(),
        };
        let record = DeviceRecord {
            display_name,
            last_seen_ip: None,
            last_seen_ts,
            created_ts: last_seen_ts.unwrap_or_else(utils::now_millis),
            token_hash,
            refresh_hash: None,
            next: None,
        };
        batch.put(Cf::Devices, key, serde_json::to_vec(&record)?);
        Ok(())
    }

    /// Adds a device without tokens: an appservice's (MSC4190), which it acts from with its
    /// own token and the `device_id` query parameter. Returns false when the device exists.
    pub async fn create_tokenless(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        display_name: Option<String>,
    ) -> Result<bool> {
        let _guard = self.write_lock.lock().await;
        if self.get(user_id, device_id)?.is_some() {
            return Ok(false);
        }
        let record = DeviceRecord {
            display_name,
            last_seen_ip: None,
            last_seen_ts: None,
            created_ts: utils::now_millis(),
            token_hash: String::new(),
            refresh_hash: None,
            next: None,
        };
        self.store.put(
            Cf::Devices,
            &Self::device_key(user_id, device_id),
            &serde_json::to_vec(&record)?,
        )?;
        Ok(true)
    }

    pub fn get(&self, user_id: &UserId, device_id: &DeviceId) -> Result<Option<DeviceRecord>> {
        match self
            .store
            .get(Cf::Devices, &Self::device_key(user_id, device_id))?
        {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    /// All of a user's devices, in device ID order: one prefix scan.
    pub fn list(&self, user_id: &UserId) -> Result<Vec<(OwnedDeviceId, DeviceRecord)>> {
        let prefix = keys::prefix(user_id.as_bytes());
        let mut devices = Vec::new();
        for item in self.store.scan_prefix(Cf::Devices, &prefix) {
            let (key, value) = item?;
            let device_id: OwnedDeviceId = String::from_utf8_lossy(&key[prefix.len()..])
                .as_ref()
                .into();
            devices.push((device_id, serde_json::from_slice(&value)?));
        }
        Ok(devices)
    }

    pub async fn set_display_name(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        display_name: Option<String>,
    ) -> Result<()> {
        let _guard = self.write_lock.lock().await;
        let mut record = self
            .get(user_id, device_id)?
            .ok_or_else(|| Error::not_found("No such device."))?;
        record.display_name = display_name;
        self.store.put(
            Cf::Devices,
            &Self::device_key(user_id, device_id),
            &serde_json::to_vec(&record)?,
        )?;
        Ok(())
    }

    /// Deletes the given devices and their access tokens in one batch. Missing ones are skipped.
    ///
    /// Returns whether any device was deleted: the caller announces that as a device-list
    /// change (see `Services::delete_devices`), which needs a stream count this service
    /// does not own.
    pub async fn delete_many(
        &self,
        user_id: &UserId,
        device_ids: &[OwnedDeviceId],
    ) -> Result<bool> {
        let _guard = self.write_lock.lock().await;
        let mut batch = Batch::new();
        for device_id in device_ids {
            if let Some(record) = self.get(user_id, device_id)? {
                self.delete_device_into(&mut batch, user_id, device_id, &record)?;
            }
        }
        let deleted = !batch.is_empty();
        self.store.write(batch)?;
        Ok(deleted)
    }

    /// Deletes one device (the one a request came from, for `/logout`).
    pub async fn delete(&self, user_id: &UserId, device_id: &DeviceId) -> Result<bool> {
        self.delete_many(user_id, &[device_id.to_owned()]).await
    }

    /// Deletes all of a user's devices except `keep`.
    /// Returns whether any device was deleted (see [`Devices::delete_many`]).
    pub async fn delete_all(&self, user_id: &UserId, keep: Option<&DeviceId>) -> Result<bool> {
        let _guard = self.write_lock.lock().await;
        let mut batch = Batch::new();
        self.delete_all_into(&mut batch, user_id, keep)?;
        let deleted = !batch.is_empty();
        self.store.write(batch)?;
        Ok(deleted)
    }

    /// Adds the deletion of all of a user's devices (except `keep`) to `batch`.
    pub fn delete_all_into(
        &self,
        batch: &mut Batch,
        user_id: &UserId,
        keep: Option<&DeviceId>,
    ) -> Result<()> {
        for (device_id, record) in self.list(user_id)? {
            if Some(device_id.as_ref()) == keep {
                continue;
            }
            self.delete_device_into(batch, user_id, &device_id, &record)?;
        }
        Ok(())
    }

    /// Adds the deletion of one device, its token and what is kept per device (the member
    /// events lazy-loading `/sync` sent it, its sliding-sync connections, its encryption keys
    /// and to-device queue) to `batch`.
    fn delete_device_into(
        &self,
        batch: &mut Batch,
        user_id: &UserId,
        device_id: &DeviceId,
        record: &DeviceRecord,
    ) -> Result<()> {
        revoke_tokens_into(batch, record)?;
        let device_key = Self::device_key(user_id, device_id);
        let prefix = keys::prefix(&device_key);
        // The member events lazy-loading `/sync` sent it, and its sliding-sync connections.
        for cf in [
            Cf::LazyLoadedMembers,
            Cf::SlidingConnections,
            Cf::SlidingRooms,
        ] {
            for item in self.store.scan_prefix(cf, &prefix) {
                batch.delete(cf, item?.0.to_vec());
            }
        }
        // Its keys and to-device queue go with it (E2EE), and the pushers it set.
        crate::service::e2ee::delete_device_into(&self.store, batch, user_id, device_id)?;
        crate::service::push::pushers::delete_device_pushers_into(
            &self.store,
            batch,
            user_id,
            device_id,
        )?;
        batch.delete(Cf::Devices, device_key);
        Ok(())
    }
}

/// Adds a fresh session's tokens (current, not "next") to `batch`.
fn put_tokens_into(batch: &mut Batch, device_key: &[u8], minted: &Minted) {
    batch.put(
        Cf::AccessTokens,
        minted.access_hash.to_vec(),
        token_value(device_key, minted.expires_at, false),
    );
    if let Some(refresh) = minted.refresh_hash {
        batch.put(
            Cf::RefreshTokens,
            refresh.to_vec(),
            token_value(device_key, None, false),
        );
    }
}

/// Adds the removal of every token a device holds (current and next pair) to `batch`.
fn revoke_tokens_into(batch: &mut Batch, record: &DeviceRecord) -> Result<()> {
    batch.delete(Cf::AccessTokens, decode_hex(&record.token_hash)?);
    if let Some(refresh) = &record.refresh_hash {
        batch.delete(Cf::RefreshTokens, decode_hex(refresh)?);
    }
    if let Some(next) = &record.next {
        batch.delete(Cf::AccessTokens, decode_hex(&next.access_hash)?);
        batch.delete(Cf::RefreshTokens, decode_hex(&next.refresh_hash)?);
    }
    Ok(())
}

fn decode_hex(hex: &str) -> Result<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return Err(Error::internal("corrupt token hash"));
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&hex[i..i + 2], 16)
                .map_err(|_| Error::internal("corrupt token hash"))
        })
        .collect()
}

impl crate::service::Services {
    /// The lifetime of a session's access token when the client asked for a refresh token
    /// (`refresh_token: true`) and the server hands them out; `None` otherwise (the token
    /// never expires).
    pub fn refreshable(&self, asked: bool) -> Option<u64> {
        let lifetime = self.config.access_token_lifetime_ms;
        (asked && lifetime > 0).then_some(lifetime)
    }
}
