//! Server-side key backup (`/room_keys`): a user's backup versions (algorithm and opaque
//! `auth_data`) and, per version, the encrypted megolm sessions clients upload. The server never
//! reads `session_data`; it only compares the plaintext metadata to keep the better copy of a
//! session, as the spec says: `is_verified` beats not verified, then the lower
//! `first_message_index`, then the lower `forwarded_count` (a tie keeps the stored one).
//!
//! Versions are numbers, stored big-endian so the latest is one reverse seek. A deleted version
//! stays as a tombstone (its sessions are deleted), so its number is never handed out again and
//! deleting it twice succeeds, as the spec asks; the current version is the newest one left. Each version record carries its session `count`
//! and an `etag` (bumped by every change of its sessions), updated in the same batch as the
//! sessions under one lock.

use std::sync::{Mutex, MutexGuard};

use http::StatusCode;
use ruma::{
    UserId,
    api::error::{ErrorKind, WrongRoomKeysVersionErrorData},
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::{
    Error, Result,
    service::Services,
    store::{Batch, Cf, keys},
};

/// Serialises the read-modify-write of a version's sessions, count and etag.
#[derive(Default)]
pub struct KeyBackup {
    lock: Mutex<()>,
}

impl KeyBackup {
    fn lock(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What `backup_versions` holds per version.
#[derive(Clone, Serialize, Deserialize)]
struct VersionRecord {
    algorithm: String,
    auth_data: Value,
    etag: u64,
    count: u64,
    #[serde(default)]
    deleted: bool,
}

/// Which sessions a read or delete is about.
pub enum Scope<'a> {
    All,
    Room(&'a str),
    Session(&'a str, &'a str),
}

impl VersionRecord {
    /// A new version: no sessions yet.
    fn new(algorithm: String, auth_data: Value) -> Self {
        Self {
            algorithm,
            auth_data,
            etag: 0,
            count: 0,
            deleted: false,
        }
    }
}

fn version_key(user_id: &UserId, version: u64) -> Vec<u8> {
    keys::join([user_id.as_bytes(), &keys::u64_be(version)])
}

fn parse_version(version: &str) -> Option<u64> {
    // Only the canonical decimal form names a version ("01" is not "1").
    version
        .parse::<u64>()
        .ok()
        .filter(|v| v.to_string() == version)
}

fn no_backup() -> Error {
    Error::not_found("Unknown backup version.")
}

/// Checks the body of a version create/update: `algorithm` a string, `auth_data` an object.
fn check_version_body(body: &Value) -> Result<(String, Value)> {
    let algorithm = body
        .get("algorithm")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::bad_json("algorithm is missing or not a string."))?;
    let auth_data = body
        .get("auth_data")
        .filter(|a| a.is_object())
        .ok_or_else(|| Error::bad_json("auth_data is missing or not an object."))?;
    Ok((algorithm.to_owned(), auth_data.clone()))
}

/// Checks one uploaded session's metadata.
fn check_session(data: &Value) -> Result<()> {
    let ok = data.get("first_message_index").is_some_and(Value::is_u64)
        && data.get("forwarded_count").is_some_and(Value::is_u64)
        && data.get("is_verified").is_some_and(Value::is_boolean)
        && data.get("session_data").is_some_and(Value::is_object);
    if ok {
        Ok(())
    } else {
        Err(Error::bad_json(
            "A session needs first_message_index, forwarded_count, is_verified and session_data.",
        ))
    }
}

/// Whether `new` is a better copy of a session than `old` (the spec's order).
pub fn is_better(new: &Value, old: &Value) -> bool {
    let rank = |v: &Value| {
        (
            // Verified first, then the lowest indexes: compare as "smaller is better".
            !v["is_verified"].as_bool().unwrap_or(false),
            v["first_message_index"].as_u64().unwrap_or(u64::MAX),
            v["forwarded_count"].as_u64().unwrap_or(u64::MAX),
        )
    };
    rank(new) < rank(old)
}

impl Services {
    fn backup_version(&self, user_id: &UserId, version: u64) -> Result<Option<VersionRecord>> {
        match self
            .store
            .get(Cf::BackupVersions, &version_key(user_id, version))?
        {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    /// The newest version of the user, deleted or not (`live_only`: the newest not deleted),
    /// by one reverse seek (past tombstones when `live_only`).
    fn newest_backup_version(
        &self,
        user_id: &UserId,
        live_only: bool,
    ) -> Result<Option<(u64, VersionRecord)>> {
        let prefix = keys::prefix(user_id.as_bytes());
        let start = keys::join([user_id.as_bytes(), &keys::u64_be(u64::MAX)]);
        for item in self
            .store
            .scan_prefix_rev_from(Cf::BackupVersions, &prefix, &start)
        {
            let (key, value) = item?;
            let version = keys::parse_u64_be(&key[prefix.len()..])
                .ok_or_else(|| Error::internal("corrupt backup_versions key"))?;
            let record: VersionRecord = serde_json::from_slice(&value)?;
            if live_only && record.deleted {
                continue;
            }
            return Ok(Some((version, record)));
        }
        Ok(None)
    }

    /// The current backup version: the newest one not deleted.
    fn current_backup(&self, user_id: &UserId) -> Result<Option<(u64, VersionRecord)>> {
        self.newest_backup_version(user_id, true)
    }

    /// `POST /room_keys/version`: a new version, which becomes the current one.
    pub fn create_backup_version(&self, user_id: &UserId, body: &Value) -> Result<String> {
        let (algorithm, auth_data) = check_version_body(body)?;
        let _guard = self.key_backup.lock();
        let version = self
            .newest_backup_version(user_id, false)?
            .map_or(1, |(v, _)| v + 1);
        let record = VersionRecord::new(algorithm, auth_data);
        self.store.put(
            Cf::BackupVersions,
            &version_key(user_id, version),
            &serde_json::to_vec(&record)?,
        )?;
        Ok(version.to_string())
    }

    /// A backup version another homeserver kept (`culvert import`), under its number there,
    /// so that clients that know it find it. Refused when the version exists here.
    pub fn import_backup_version(
        &self,
        user_id: &UserId,
        version: &str,
        body: &Value,
    ) -> Result<()> {
        let (algorithm, auth_data) = check_version_body(body)?;
        let number = parse_version(version).ok_or_else(|| {
            Error::invalid_param(format!("Backup version {version:?} is no number."))
        })?;
        let _guard = self.key_backup.lock();
        let key = version_key(user_id, number);
        if self.store.contains(Cf::BackupVersions, &key)? {
            return Err(Error::invalid_param(format!(
                "Backup version {version} exists here."
            )));
        }
        let record = VersionRecord::new(algorithm, auth_data);
        self.store
            .put(Cf::BackupVersions, &key, &serde_json::to_vec(&record)?)?;
        Ok(())
    }

    /// `GET /room_keys/version[/{version}]`: the version's information (the current one when
    /// `version` is `None`).
    pub fn backup_info(&self, user_id: &UserId, version: Option<&str>) -> Result<Value> {
        let (version, record) = match version {
            None => self
                .current_backup(user_id)?
                .ok_or_else(|| Error::not_found("No current backup version."))?,
            Some(version) => {
                let number = parse_version(version).ok_or_else(no_backup)?;
                let record = self
                    .backup_version(user_id, number)?
                    .filter(|r| !r.deleted)
                    .ok_or_else(no_backup)?;
                (number, record)
            }
        };
        Ok(json!({
            "algorithm": record.algorithm,
            "auth_data": record.auth_data,
            "count": record.count,
            "etag": record.etag.to_string(),
            "version": version.to_string(),
        }))
    }

    /// `PUT /room_keys/version/{version}`: replaces `auth_data` (the algorithm must stay).
    pub fn update_backup_version(
        &self,
        user_id: &UserId,
        version: &str,
        body: &Value,
    ) -> Result<()> {
        let (algorithm, auth_data) = check_version_body(body)?;
        if let Some(named) = body.get("version")
            && named.as_str() != Some(version)
        {
            return Err(Error::invalid_param(
                "The version in the body is not the one in the path.",
            ));
        }
        let number = parse_version(version).ok_or_else(no_backup)?;
        let _guard = self.key_backup.lock();
        let mut record = self
            .backup_version(user_id, number)?
            .filter(|r| !r.deleted)
            .ok_or_else(no_backup)?;
        if record.algorithm != algorithm {
            return Err(Error::invalid_param(
                "The algorithm of a backup version cannot change.",
            ));
        }
        record.auth_data = auth_data;
        self.store.put(
            Cf::BackupVersions,
            &version_key(user_id, number),
            &serde_json::to_vec(&record)?,
        )?;
        Ok(())
    }

    /// `DELETE /room_keys/version/{version}`: deletes the version's sessions and leaves a
    /// tombstone. Deleting a deleted version succeeds.
    pub fn delete_backup_version(&self, user_id: &UserId, version: &str) -> Result<()> {
        let number = parse_version(version).ok_or_else(no_backup)?;
        let _guard = self.key_backup.lock();
        let mut record = self
            .backup_version(user_id, number)?
            .ok_or_else(no_backup)?;
        if record.deleted {
            return Ok(());
        }
        let mut batch = Batch::new();
        let prefix = keys::prefix(&version_key(user_id, number));
        for item in self.store.scan_prefix(Cf::BackupSessions, &prefix) {
            batch.delete(Cf::BackupSessions, item?.0.to_vec());
        }
        record.deleted = true;
        record.count = 0;
        record.auth_data = json!({});
        batch.put(
            Cf::BackupVersions,
            version_key(user_id, number),
            serde_json::to_vec(&record)?,
        );
        self.store.write(batch)?;
        Ok(())
    }

    /// `PUT /room_keys/keys…`: stores `sessions` (room, session ID, data) in the current
    /// version, keeping the better copy of each session. Answers `{etag, count}`; a version
    /// other than the current one is refused with `M_WRONG_ROOM_KEYS_VERSION`.
    pub fn put_backup_keys(
        &self,
        user_id: &UserId,
        version: &str,
        sessions: Vec<(String, String, Value)>,
    ) -> Result<Value> {
        for (_, _, data) in &sessions {
            check_session(data)?;
        }
        let _guard = self.key_backup.lock();
        let (current, mut record) = self.current_backup(user_id)?.ok_or_else(no_backup)?;
        if parse_version(version) != Some(current) {
            return Err(Error::new(
                StatusCode::FORBIDDEN,
                ErrorKind::WrongRoomKeysVersion(WrongRoomKeysVersionErrorData::new(
                    current.to_string(),
                )),
                "That is not the current backup version.",
            ));
        }
        let mut batch = Batch::new();
        let mut changed = false;
        // The same session twice in one request: the later is compared with the earlier.
        let mut pending: std::collections::HashMap<Vec<u8>, Value> = Default::default();
        for (room_id, session_id, data) in sessions {
            let key = keys::join([
                user_id.as_bytes(),
                &keys::u64_be(current),
                room_id.as_bytes(),
                session_id.as_bytes(),
            ]);
            let old = match pending.get(&key) {
                Some(value) => Some(value.clone()),
                None => match self.store.get(Cf::BackupSessions, &key)? {
                    Some(bytes) => Some(serde_json::from_slice::<Value>(&bytes)?),
                    None => None,
                },
            };
            match &old {
                Some(old) if !is_better(&data, old) => continue,
                Some(_) => {}
                None => record.count += 1,
            }
            changed = true;
            batch.put(Cf::BackupSessions, key.clone(), serde_json::to_vec(&data)?);
            pending.insert(key, data);
        }
        if changed {
            record.etag += 1;
            batch.put(
                Cf::BackupVersions,
                version_key(user_id, current),
                serde_json::to_vec(&record)?,
            );
            self.store.write(batch)?;
        }
        Ok(json!({ "etag": record.etag.to_string(), "count": record.count }))
    }

    fn sessions_prefix(user_id: &UserId, version: u64, scope: &Scope<'_>) -> Vec<u8> {
        let version = keys::u64_be(version);
        match scope {
            Scope::All => keys::prefix(&keys::join([user_id.as_bytes(), &version])),
            Scope::Room(room) => {
                keys::prefix(&keys::join([user_id.as_bytes(), &version, room.as_bytes()]))
            }
            Scope::Session(room, session) => keys::join([
                user_id.as_bytes(),
                &version,
                room.as_bytes(),
                session.as_bytes(),
            ]),
        }
    }

    /// `GET /room_keys/keys…`: the stored sessions of a version, shaped by `scope`
    /// (`{rooms: {room: {sessions: …}}}`, `{sessions: …}`, or one session's data).
    pub fn get_backup_keys(
        &self,
        user_id: &UserId,
        version: &str,
        scope: Scope<'_>,
    ) -> Result<Value> {
        let number = parse_version(version).ok_or_else(no_backup)?;
        self.backup_version(user_id, number)?
            .filter(|r| !r.deleted)
            .ok_or_else(no_backup)?;
        let prefix = Self::sessions_prefix(user_id, number, &scope);
        if let Scope::Session(..) = scope {
            return match self.store.get(Cf::BackupSessions, &prefix)? {
                Some(bytes) => Ok(serde_json::from_slice(&bytes)?),
                None => Err(Error::not_found("No such session in the backup.")),
            };
        }
        let base = keys::prefix(&keys::join([user_id.as_bytes(), &keys::u64_be(number)]));
        let mut rooms: Map<String, Value> = Map::new();
        for item in self.store.scan_prefix(Cf::BackupSessions, &prefix) {
            let (key, value) = item?;
            let mut parts = keys::split(&key[base.len()..]);
            let room = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            let session = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            let room = rooms
                .entry(room)
                .or_insert_with(|| json!({ "sessions": {} }));
            room["sessions"][session] = serde_json::from_slice(&value)?;
        }
        Ok(match scope {
            Scope::Room(room) => rooms
                .remove(room)
                .unwrap_or_else(|| json!({ "sessions": {} })),
            _ => json!({ "rooms": rooms }),
        })
    }

    /// `DELETE /room_keys/keys…`: deletes the sessions `scope` names; answers `{etag, count}`.
    pub fn delete_backup_keys(
        &self,
        user_id: &UserId,
        version: &str,
        scope: Scope<'_>,
    ) -> Result<Value> {
        let number = parse_version(version).ok_or_else(no_backup)?;
        let _guard = self.key_backup.lock();
        let mut record = self
            .backup_version(user_id, number)?
            .filter(|r| !r.deleted)
            .ok_or_else(no_backup)?;
        let prefix = Self::sessions_prefix(user_id, number, &scope);
        let mut batch = Batch::new();
        let mut deleted = 0;
        if let Scope::Session(..) = scope {
            if self.store.contains(Cf::BackupSessions, &prefix)? {
                batch.delete(Cf::BackupSessions, prefix.clone());
                deleted = 1;
            }
        } else {
            for item in self.store.scan_prefix(Cf::BackupSessions, &prefix) {
                batch.delete(Cf::BackupSessions, item?.0.to_vec());
                deleted += 1;
            }
        }
        if deleted > 0 {
            record.count = record.count.saturating_sub(deleted);
            record.etag += 1;
            batch.put(
                Cf::BackupVersions,
                version_key(user_id, number),
                serde_json::to_vec(&record)?,
            );
            self.store.write(batch)?;
        }
        Ok(json!({ "etag": record.etag.to_string(), "count": record.count }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(verified: bool, index: u64, forwards: u64) -> Value {
        json!({
            "is_verified": verified,
            "first_message_index": index,
            "forwarded_count": forwards,
            "session_data": {},
        })
    }

    #[test]
    fn the_better_session_follows_the_spec_order() {
        // Verified beats everything else.
        assert!(is_better(&copy(true, 9, 9), &copy(false, 0, 0)));
        assert!(!is_better(&copy(false, 0, 0), &copy(true, 9, 9)));
        // Then the lower first message index, then the fewer forwards.
        assert!(is_better(&copy(false, 1, 9), &copy(false, 2, 0)));
        assert!(is_better(&copy(true, 2, 0), &copy(true, 2, 1)));
        // A tie keeps the stored copy.
        assert!(!is_better(&copy(false, 2, 1), &copy(false, 2, 1)));
    }

    #[test]
    fn only_canonical_version_numbers_name_a_version() {
        assert_eq!(parse_version("12"), Some(12));
        assert_eq!(parse_version("012"), None);
        assert_eq!(parse_version("x"), None);
        assert_eq!(parse_version(""), None);
    }
}
