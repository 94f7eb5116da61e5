//! Accounts: creation, passwords, admin flag, deactivation, profiles, and the restrictions
//! admins put on an account (spec v1.18): *locked* (every request but logging out refused with
//! `M_USER_LOCKED`) and *suspended* (reading allowed, acting on rooms and profile refused with
//! `M_USER_SUSPENDED`). The restricted accounts are also kept in memory, so checking a
//! request costs no read.

use std::collections::{BTreeMap, HashMap};

use argon2::{
    Argon2,
    password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
};
use ruma::{OwnedUserId, ServerName, UserId};
use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;
use tokio::sync::Mutex;

use crate::{
    Error, Result,
    service::devices::Devices,
    store::{Batch, Cf, Store, keys},
    utils,
};

/// What the `users` column family holds for each account.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserRecord {
    /// Argon2id PHC string; `None` for accounts that cannot log in with a password.
    pub password_hash: Option<String>,
    #[serde(default)]
    pub admin: bool,
    #[serde(default)]
    pub deactivated: bool,
    #[serde(default)]
    pub guest: bool,
    pub created_ts: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub locked: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspended: bool,
    /// Deactivated with erasure asked for (Synapse's GDPR flag, shown to admins).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub erased: bool,
    /// `bot` or `support` (set by admins), or none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_type: Option<String>,
    /// Shadow-banned by an admin: what the account sends to others is silently dropped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow_banned: bool,
}

impl UserRecord {
    /// A new account's record: no restriction, made now.
    fn new(password_hash: Option<String>, admin: bool, guest: bool) -> Self {
        Self {
            password_hash,
            admin,
            deactivated: false,
            guest,
            created_ts: utils::now_millis(),
            locked: false,
            suspended: false,
            erased: false,
            user_type: None,
            shadow_banned: false,
        }
    }
}

/// What an account is restricted to: by an admin (locked, suspended), or as a guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Restriction {
    pub locked: bool,
    pub suspended: bool,
    pub guest: bool,
    /// Its messages, state changes, invites and typing reach nobody, and it is not told.
    pub shadow_banned: bool,
}

impl Restriction {
    fn of(record: &UserRecord) -> Self {
        Self {
            locked: record.locked,
            suspended: record.suspended,
            guest: record.guest && !record.deactivated,
            shadow_banned: record.shadow_banned,
        }
    }
}

pub struct Users {
    store: Store,
    /// Serialises read-modify-write of user records (creation, password, deactivation): these are
    /// rare, so one lock is simpler than per-user ones.
    write_lock: Mutex<()>,
    /// The locked or suspended accounts (see [`Users::restriction`]).
    restricted: std::sync::RwLock<HashMap<OwnedUserId, Restriction>>,
}

/// The answer a shadow-banned account gets for an event that is dropped: an event ID like
/// any other, for an event that exists nowhere.
pub fn fake_event_id() -> ruma::OwnedEventId {
    ruma::OwnedEventId::try_from(format!("${}", utils::random_string(43)))
        .expect("a random event ID is valid")
}

/// The localpart of the server's own user (`@culvert:server`), who answers in the admin room
/// and as whom the command line acts: no account, and no one may register it.
pub const SERVER_LOCALPART: &str = "culvert";

/// Longest localpart we accept (the spec caps the whole user ID at 255 bytes).
const MAX_USER_ID_LEN: usize = 255;

impl Users {
    /// Opens the accounts, reading which are locked or suspended (one pass over the
    /// accounts at start-up).
    pub fn new(store: Store) -> Result<Self> {
        let mut restricted = HashMap::new();
        for item in store.scan_prefix(Cf::Users, &[]) {
            let (key, value) = item?;
            let Ok(record) = serde_json::from_slice::<UserRecord>(&value) else {
                continue;
            };
            let restriction = Restriction::of(&record);
            if restriction != Restriction::default()
                && let Ok(user_id) = UserId::parse(String::from_utf8_lossy(&key).as_ref())
            {
                restricted.insert(user_id, restriction);
            }
        }
        Ok(Self {
            store,
            write_lock: Mutex::new(()),
            restricted: std::sync::RwLock::new(restricted),
        })
    }

    /// Whether the account is locked or suspended (no read: kept in memory).
    pub fn restriction(&self, user_id: &UserId) -> Restriction {
        self.restricted
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(user_id)
            .copied()
            .unwrap_or_default()
    }

    /// Shadow-bans an account or lifts the ban.
    pub async fn set_shadow_banned(&self, user_id: &UserId, banned: bool) -> Result<()> {
        self.update(user_id, |record| record.shadow_banned = banned)
            .await
    }

    /// Locks or unlocks, suspends or unsuspends an account (`None`: unchanged).
    pub async fn set_restriction(
        &self,
        user_id: &UserId,
        locked: Option<bool>,
        suspended: Option<bool>,
    ) -> Result<Restriction> {
        let _guard = self.write_lock.lock().await;
        let mut record = self
            .get(user_id)?
            .ok_or_else(|| Error::not_found("No such user."))?;
        record.locked = locked.unwrap_or(record.locked);
        record.suspended = suspended.unwrap_or(record.suspended);
        self.store
            .put(Cf::Users, user_id.as_bytes(), &serde_json::to_vec(&record)?)?;
        Ok(self.remember_restriction(user_id, &record))
    }

    /// Keeps the in-memory restriction of an account in step with its record.
    fn remember_restriction(&self, user_id: &UserId, record: &UserRecord) -> Restriction {
        let restriction = Restriction::of(record);
        let mut restricted = self
            .restricted
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if restriction == Restriction::default() {
            restricted.remove(user_id);
        } else {
            restricted.insert(user_id.to_owned(), restriction);
        }
        restriction
    }

    /// Makes a guest account a full one (`/register` with the guest's access token): a
    /// password, and no more guest restrictions. `extra` adds to the same batch.
    pub async fn upgrade_guest(
        &self,
        user_id: &UserId,
        password_hash: String,
        extra: impl FnOnce(&mut Batch),
    ) -> Result<UserRecord> {
        let _guard = self.write_lock.lock().await;
        let mut record = self
            .get(user_id)?
            .filter(|r| r.guest && !r.deactivated)
            .ok_or_else(|| Error::forbidden("Only an active guest account can be upgraded."))?;
        record.guest = false;
        record.password_hash = Some(password_hash);
        let mut batch = Batch::new();
        batch.put(Cf::Users, user_id.as_bytes(), serde_json::to_vec(&record)?);
        extra(&mut batch);
        self.store.write(batch)?;
        self.remember_restriction(user_id, &record);
        Ok(record)
    }

    /// Turns what a user typed (a localpart or a full user ID on this server) into a user ID
    /// valid for a *new* account: lower-case `a-z 0-9 . _ = - / +` only.
    pub fn parse_new_localpart(name: &str, server_name: &ServerName) -> Result<OwnedUserId> {
        let localpart = Self::localpart_of(name, server_name)?;
        let valid_chars = localpart.bytes().all(
            |c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'=' | b'-' | b'/' | b'+'),
        );
        if localpart.is_empty() || !valid_chars {
            return Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                ruma::api::error::ErrorKind::InvalidUsername,
                "User names may only contain a-z, 0-9, '.', '_', '=', '-', '/' and '+'.",
            ));
        }
        if localpart == SERVER_LOCALPART {
            return Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                ruma::api::error::ErrorKind::UserInUse,
                "That name belongs to the server itself.",
            ));
        }
        Self::user_id(localpart, server_name)
    }

    /// Like [`Users::parse_new_localpart`] but accepts any historical user ID (for login).
    pub fn parse_existing(name: &str, server_name: &ServerName) -> Result<OwnedUserId> {
        let localpart = Self::localpart_of(name, server_name)?;
        Self::user_id(&localpart.to_lowercase(), server_name)
    }

    fn localpart_of<'a>(name: &'a str, server_name: &ServerName) -> Result<&'a str> {
        if name.starts_with('@') {
            let user_id = UserId::parse(name).map_err(|e| {
                Error::new(
                    http::StatusCode::BAD_REQUEST,
                    ruma::api::error::ErrorKind::InvalidUsername,
                    format!("Invalid user ID: {e}"),
                )
            })?;
            if user_id.server_name() != server_name {
                return Err(Error::new(
                    http::StatusCode::BAD_REQUEST,
                    ruma::api::error::ErrorKind::InvalidUsername,
                    "That user ID belongs to another server.",
                ));
            }
            // `name` outlives the parsed ID; slice the localpart out of it.
            let end = name.find(':').unwrap_or(name.len());
            Ok(&name[1..end])
        } else {
            Ok(name)
        }
    }

    fn user_id(localpart: &str, server_name: &ServerName) -> Result<OwnedUserId> {
        let full = format!("@{localpart}:{server_name}");
        if full.len() > MAX_USER_ID_LEN {
            return Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                ruma::api::error::ErrorKind::InvalidUsername,
                "User ID too long.",
            ));
        }
        UserId::parse(&full).map_err(|e| {
            Error::new(
                http::StatusCode::BAD_REQUEST,
                ruma::api::error::ErrorKind::InvalidUsername,
                format!("Invalid user name: {e}"),
            )
        })
    }

    pub fn get(&self, user_id: &UserId) -> Result<Option<UserRecord>> {
        match self.store.get(Cf::Users, user_id.as_bytes())? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    pub fn exists(&self, user_id: &UserId) -> Result<bool> {
        Ok(self.store.contains(Cf::Users, user_id.as_bytes())?)
    }

    /// Whether no account has been created yet.
    pub fn none_exist(&self) -> Result<bool> {
        Ok(self.store.is_empty(Cf::Users)?)
    }

    pub fn is_active(&self, user_id: &UserId) -> Result<bool> {
        Ok(self.get(user_id)?.is_some_and(|r| !r.deactivated))
    }

    /// Creates an account. The very first account on the server is always an admin.
    /// `password_hash` comes from [`hash_password`] (run it off the async threads).
    /// Returns the new record, or `M_USER_IN_USE`.
    pub async fn create(
        &self,
        user_id: &UserId,
        password_hash: Option<String>,
        admin: bool,
        guest: bool,
        extra: impl FnOnce(&mut Batch),
    ) -> Result<UserRecord> {
        self.create_inner(user_id, password_hash, admin, guest, true, extra)
            .await
    }

    /// Creates an account for an application service (its sender or a user in its namespace):
    /// no password, and never made admin for being the first account.
    pub async fn create_for_appservice(
        &self,
        user_id: &UserId,
        extra: impl FnOnce(&mut Batch),
    ) -> Result<UserRecord> {
        self.create_inner(user_id, None, false, false, false, extra)
            .await
    }

    async fn create_inner(
        &self,
        user_id: &UserId,
        password_hash: Option<String>,
        admin: bool,
        guest: bool,
        first_may_be_admin: bool,
        extra: impl FnOnce(&mut Batch),
    ) -> Result<UserRecord> {
        let _guard = self.write_lock.lock().await;
        if self.exists(user_id)? {
            return Err(user_in_use());
        }
        let first = first_may_be_admin && self.none_exist()?;
        let record = UserRecord::new(password_hash, admin || first, guest);
        let mut batch = Batch::new();
        batch.put(Cf::Users, user_id.as_bytes(), serde_json::to_vec(&record)?);
        // A new account's display name defaults to its localpart, as clients expect.
        batch.put(
            Cf::Profile,
            keys::join([user_id.as_bytes(), b"displayname"]),
            serde_json::to_vec(&JsonValue::String(user_id.localpart().to_owned()))?,
        );
        extra(&mut batch);
        self.store.write(batch)?;
        self.remember_restriction(user_id, &record);
        Ok(record)
    }

    /// Adds an account another homeserver kept (`culvert import`) to `batch`, as it was there:
    /// its password hash (an Argon2 PHC string), admin and deactivated flags. Its profile
    /// comes separately. Returns false (and adds nothing) when the account exists here.
    pub fn import_into(
        &self,
        batch: &mut Batch,
        user_id: &UserId,
        password_hash: Option<String>,
        admin: bool,
        deactivated: bool,
    ) -> Result<bool> {
        if self.exists(user_id)? {
            return Ok(false);
        }
        let record = UserRecord {
            deactivated,
            ..UserRecord::new(password_hash, admin, false)
        };
        batch.put(Cf::Users, user_id.as_bytes(), serde_json::to_vec(&record)?);
        Ok(true)
    }

    /// Adds a profile field (`displayname`, `avatar_url`, …) to `batch` (an import's).
    pub fn import_profile_field_into(
        batch: &mut Batch,
        user_id: &UserId,
        field: &str,
        value: &JsonValue,
    ) -> Result<()> {
        batch.put(
            Cf::Profile,
            keys::join([user_id.as_bytes(), field.as_bytes()]),
            serde_json::to_vec(value)?,
        );
        Ok(())
    }

    /// The password hash of an active account (`None`: no such account, deactivated, or no
    /// password). Check it with [`password_matches`].
    pub fn active_password_hash(&self, user_id: &UserId) -> Result<Option<String>> {
        Ok(self
            .get(user_id)?
            .filter(|r| !r.deactivated)
            .and_then(|r| r.password_hash))
    }

    /// Replaces the password hash (or removes it with `None`); `extra` adds changes (such as
    /// logging out other devices) to the same atomic batch.
    pub async fn set_password_hash(
        &self,
        user_id: &UserId,
        hash: Option<String>,
        extra: impl FnOnce(&mut Batch) -> Result<()>,
    ) -> Result<()> {
        let _guard = self.write_lock.lock().await;
        let mut record = self
            .get(user_id)?
            .ok_or_else(|| Error::not_found("No such user."))?;
        record.password_hash = hash;
        let mut batch = Batch::new();
        batch.put(Cf::Users, user_id.as_bytes(), serde_json::to_vec(&record)?);
        extra(&mut batch)?;
        self.store.write(batch)?;
        Ok(())
    }

    /// Replaces an imported hash (`old`) by `new` once the password is known, unless the
    /// password changed meanwhile.
    pub async fn upgrade_password_hash(
        &self,
        user_id: &UserId,
        old: &str,
        new: String,
    ) -> Result<()> {
        let _guard = self.write_lock.lock().await;
        let Some(mut record) = self.get(user_id)? else {
            return Ok(());
        };
        if record.password_hash.as_deref() != Some(old) {
            return Ok(());
        }
        record.password_hash = Some(new);
        self.store
            .put(Cf::Users, user_id.as_bytes(), &serde_json::to_vec(&record)?)?;
        Ok(())
    }

    pub async fn set_admin(&self, user_id: &UserId, admin: bool) -> Result<()> {
        self.update(user_id, |record| record.admin = admin).await
    }

    /// Deactivates an account: password, profile, devices and access tokens are removed in one
    /// batch; the record stays (marked deactivated, and `erased` if asked) so the name is never
    /// reused. (`Services::deactivate_account` also takes the account out of its rooms.)
    pub async fn deactivate(&self, user_id: &UserId, devices: &Devices, erase: bool) -> Result<()> {
        let _guard = self.write_lock.lock().await;
        let mut record = self
            .get(user_id)?
            .ok_or_else(|| Error::not_found("No such user."))?;
        record.deactivated = true;
        record.erased |= erase;
        record.password_hash = None;
        let mut batch = Batch::new();
        batch.put(Cf::Users, user_id.as_bytes(), serde_json::to_vec(&record)?);
        let prefix = keys::prefix(user_id.as_bytes());
        for item in self.store.scan_prefix(Cf::Profile, &prefix) {
            let (key, _) = item?;
            batch.delete(Cf::Profile, key.to_vec());
        }
        devices.delete_all_into(&mut batch, user_id, None)?;
        self.store.write(batch)?;
        self.remember_restriction(user_id, &record);
        Ok(())
    }

    /// Makes a deactivated account active again (an admin's decision; it needs a new
    /// password to log in, set beside).
    pub async fn reactivate(&self, user_id: &UserId) -> Result<()> {
        self.update(user_id, |record| {
            record.deactivated = false;
            record.erased = false;
        })
        .await
    }

    /// Sets or clears the user type.
    pub async fn set_user_type(&self, user_id: &UserId, user_type: Option<String>) -> Result<()> {
        self.update(user_id, |record| record.user_type = user_type)
            .await
    }

    /// Changes one account's record (read, change, write under the lock).
    async fn update(&self, user_id: &UserId, change: impl FnOnce(&mut UserRecord)) -> Result<()> {
        let _guard = self.write_lock.lock().await;
        let mut record = self
            .get(user_id)?
            .ok_or_else(|| Error::not_found("No such user."))?;
        change(&mut record);
        self.store
            .put(Cf::Users, user_id.as_bytes(), &serde_json::to_vec(&record)?)?;
        self.remember_restriction(user_id, &record);
        Ok(())
    }

    /// Every account (admin requests and the CLI only: this is a full scan).
    pub fn list(&self) -> Result<Vec<(OwnedUserId, UserRecord)>> {
        let mut users = Vec::new();
        for item in self.store.scan_prefix(Cf::Users, b"") {
            let (key, value) = item?;
            let user_id = std::str::from_utf8(&key)
                .ok()
                .and_then(|s| UserId::parse(s).ok())
                .ok_or_else(|| Error::internal("corrupt key in users column family"))?;
            users.push((user_id, serde_json::from_slice(&value)?));
        }
        Ok(users)
    }

    /// The whole profile: field name → value.
    pub fn profile(&self, user_id: &UserId) -> Result<BTreeMap<String, JsonValue>> {
        let prefix = keys::prefix(user_id.as_bytes());
        let mut fields = BTreeMap::new();
        for item in self.store.scan_prefix(Cf::Profile, &prefix) {
            let (key, value) = item?;
            let field = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            fields.insert(field, serde_json::from_slice(&value)?);
        }
        Ok(fields)
    }

    pub fn profile_field(&self, user_id: &UserId, field: &str) -> Result<Option<JsonValue>> {
        let key = keys::join([user_id.as_bytes(), field.as_bytes()]);
        match self.store.get(Cf::Profile, &key)? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Sets (or with `None` removes) one profile field.
    pub fn set_profile_field(
        &self,
        user_id: &UserId,
        field: &str,
        value: Option<&JsonValue>,
    ) -> Result<()> {
        let key = keys::join([user_id.as_bytes(), field.as_bytes()]);
        let mut batch = Batch::new();
        match value {
            Some(value) => batch.put(Cf::Profile, key, serde_json::to_vec(value)?),
            None => batch.delete(Cf::Profile, key),
        }
        self.store.write(batch)?;
        Ok(())
    }
}

pub fn user_in_use() -> Error {
    Error::new(
        http::StatusCode::BAD_REQUEST,
        ruma::api::error::ErrorKind::UserInUse,
        "That user name is already taken.",
    )
}

/// A real hash of a random password: verifying against it costs what a real check costs.
static DUMMY_HASH: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| hash_password(&utils::random_string(16)).unwrap_or_default());

/// Argon2 computations at once: each takes 19 MiB and a core for tens of milliseconds, so more
/// at once (a burst of logins or registrations) would only raise memory, never throughput.
static ARGON2_SLOTS: std::sync::LazyLock<tokio::sync::Semaphore> = std::sync::LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    tokio::sync::Semaphore::new(cores)
});

/// Runs Argon2 work on a blocking thread, at most one per core at a time.
async fn with_argon2_slot<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let _slot = ARGON2_SLOTS
        .acquire()
        .await
        .map_err(|e| Error::internal(format!("argon2 slots closed: {e}")))?;
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::internal(format!("password hashing task failed: {e}")))
}

/// [`hash_password`] off the async threads, bounded (see [`ARGON2_SLOTS`]).
pub async fn hash_password_bounded(password: String) -> Result<String> {
    with_argon2_slot(move || hash_password(&password)).await?
}

/// [`password_matches`] off the async threads, bounded (see [`ARGON2_SLOTS`]).
pub async fn password_matches_bounded(hash: Option<String>, password: String) -> Result<bool> {
    with_argon2_slot(move || password_matches(hash.as_deref(), &password)).await
}

/// Hashes a password with Argon2id and a random salt. CPU-heavy: call from a blocking thread.
pub fn hash_password(password: &str) -> Result<String> {
    let mut salt = [0u8; 16];
    utils::random_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| Error::internal(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| Error::internal(format!("password hashing failed: {e}")))
}

/// Whether `password` matches `hash`. With no hash it still spends the time of a real check, so
/// timing does not tell who has an account. CPU-heavy: call from a blocking thread.
pub fn password_matches(hash: Option<&str>, password: &str) -> bool {
    match hash {
        Some(hash) => verify_password(hash, password),
        None => {
            let _ = verify_password(&DUMMY_HASH, password);
            false
        }
    }
}

/// The mark of a bcrypt hash imported from a Synapse that added a pepper to every password:
/// `bcrypt-pepper:<hex pepper>:<bcrypt hash>` (`culvert import synapse`).
pub const PEPPERED_BCRYPT: &str = "bcrypt-pepper:";

/// Whether a stored hash is one of another server's, to be replaced by an Argon2 hash once the
/// password is known (at the next login).
pub fn is_foreign_hash(hash: &str) -> bool {
    hash.starts_with("$2") || hash.starts_with(PEPPERED_BCRYPT)
}

/// A bcrypt hash imported from Synapse, checked as Synapse checks it: the password in NFKC
/// form, the pepper appended, cut to bcrypt's 72 bytes.
fn verify_bcrypt(hash: &str, pepper: &[u8], password: &str) -> bool {
    use unicode_normalization::UnicodeNormalization;
    let mut input: Vec<u8> = password.nfkc().collect::<String>().into_bytes();
    input.extend_from_slice(pepper);
    input.truncate(72);
    bcrypt::verify(&input, hash).unwrap_or(false)
}

fn verify_password(hash: &str, password: &str) -> bool {
    if let Some(rest) = hash.strip_prefix(PEPPERED_BCRYPT) {
        return rest.split_once(':').is_some_and(|(pepper, hash)| {
            utils::unhex(pepper).is_some_and(|pepper| verify_bcrypt(hash, &pepper, password))
        });
    }
    if hash.starts_with("$2") {
        return verify_bcrypt(hash, b"", password);
    }
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synapse_bcrypt_hashes_verify_as_synapse_checks_them() {
        // Synapse hashes the NFKC form with the pepper appended: "ﬁ" is "fi" in NFKC.
        let plain = bcrypt::hash("password-fi", 4).unwrap();
        assert!(password_matches(Some(&plain), "password-ﬁ"));
        assert!(!password_matches(Some(&plain), "password-fo"));
        let peppered = bcrypt::hash("password-fipepper", 4).unwrap();
        let stored = format!("{PEPPERED_BCRYPT}{}:{peppered}", utils::hex(b"pepper"));
        assert!(password_matches(Some(&stored), "password-fi"));
        assert!(!password_matches(Some(&peppered), "password-fi"));
        assert!(!password_matches(
            Some("bcrypt-pepper:zz:$2b$04$x"),
            "password-fi"
        ));
        assert!(is_foreign_hash(&stored) && is_foreign_hash(&plain));
        assert!(!is_foreign_hash(&hash_password("x").unwrap()));
    }

    #[test]
    fn hashes_verify_and_differ() {
        let a = hash_password("hunter2").unwrap();
        let b = hash_password("hunter2").unwrap();
        assert_ne!(a, b, "salts must differ");
        assert!(a.starts_with("$argon2id$"));
        assert!(verify_password(&a, "hunter2"));
        assert!(!verify_password(&a, "hunter3"));
        assert!(!verify_password("not a hash", "hunter2"));
    }

    #[test]
    fn dummy_hash_parses() {
        assert!(PasswordHash::new(&DUMMY_HASH).is_ok());
    }

    #[test]
    fn localparts_are_validated() {
        let server: &ServerName = "example.org".try_into().unwrap();
        assert_eq!(
            Users::parse_new_localpart("alice", server)
                .unwrap()
                .as_str(),
            "@alice:example.org"
        );
        assert_eq!(
            Users::parse_new_localpart("@bob:example.org", server)
                .unwrap()
                .as_str(),
            "@bob:example.org"
        );
        assert!(Users::parse_new_localpart("Alice", server).is_err());
        assert!(Users::parse_new_localpart("a b", server).is_err());
        assert!(Users::parse_new_localpart("", server).is_err());
        assert!(Users::parse_new_localpart("@bob:other.org", server).is_err());
        assert!(Users::parse_new_localpart(&"x".repeat(300), server).is_err());
        assert_eq!(
            Users::parse_existing("Alice", server).unwrap().as_str(),
            "@alice:example.org"
        );
    }
}
