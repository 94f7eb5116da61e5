//! Registration tokens that admins hand out (Synapse's admin API `registration_tokens`): each
//! lets people register (`m.login.registration_token`) while it is valid — before its
//! `expiry_time`, at most `uses_allowed` times — even where registration is otherwise closed.
//! A use counts when the account is created, in the account's own batch and under this
//! service's lock, so two registrations cannot both take a token's last use.

use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, MutexGuard};

use crate::{
    Error, Result,
    store::{Batch, Cf, Store},
    utils,
};

/// A token's limits and uses (`registration_tokens`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenRecord {
    /// How many registrations it allows; `None`: any number.
    pub uses_allowed: Option<u64>,
    /// Registrations completed with it.
    pub completed: u64,
    /// When it stops working (ms since the epoch); `None`: never.
    pub expiry_time: Option<u64>,
}

impl TokenRecord {
    pub fn valid(&self, now: u64) -> bool {
        self.uses_allowed
            .is_none_or(|allowed| self.completed < allowed)
            && self.expiry_time.is_none_or(|expiry| expiry > now)
    }
}

/// Longest token accepted, and the length of a generated one by default.
const MAX_LEN: usize = 64;
pub const DEFAULT_LEN: usize = 16;

/// Whether `token` may be a registration token: 1–64 of `A–Z a–z 0–9 . _ ~ -`.
pub fn well_formed(token: &str) -> bool {
    (1..=MAX_LEN).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
}

pub struct RegistrationTokens {
    store: Store,
    /// Held from checking a token to writing its use (and around admins' changes).
    lock: Mutex<()>,
}

impl RegistrationTokens {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            lock: Mutex::new(()),
        }
    }

    /// Serialises uses and changes of tokens (see the module note).
    pub async fn lock(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().await
    }

    /// Every token, in token order (one scan: there are few).
    pub fn list(&self) -> Result<Vec<(String, TokenRecord)>> {
        let mut tokens = Vec::new();
        for item in self.store.scan_prefix(Cf::RegistrationTokens, b"") {
            let (key, value) = item?;
            if let Ok(record) = serde_json::from_slice(&value) {
                tokens.push((String::from_utf8_lossy(&key).into_owned(), record));
            }
        }
        Ok(tokens)
    }

    pub fn get(&self, token: &str) -> Result<Option<TokenRecord>> {
        Ok(
            match self.store.get(Cf::RegistrationTokens, token.as_bytes())? {
                Some(value) => serde_json::from_slice(&value).ok(),
                None => None,
            },
        )
    }

    /// Whether `token` is a valid admin-made token now.
    pub fn is_valid(&self, token: &str) -> Result<bool> {
        let now = utils::now_millis();
        Ok(self.get(token)?.is_some_and(|r| r.valid(now)))
    }

    /// Whether any token is valid now (then registration with a token is open).
    pub fn any_valid(&self) -> Result<bool> {
        let now = utils::now_millis();
        Ok(self.list()?.iter().any(|(_, r)| r.valid(now)))
    }

    /// Creates a token: the one given, or a random one of `length` characters. 400
    /// `M_INVALID_PARAM` when the given one exists or is malformed.
    pub async fn create(
        &self,
        token: Option<String>,
        length: usize,
        uses_allowed: Option<u64>,
        expiry_time: Option<u64>,
    ) -> Result<(String, TokenRecord)> {
        let _guard = self.lock().await;
        let token = match token {
            Some(token) => {
                if !well_formed(&token) {
                    return Err(Error::invalid_param(
                        "A token is 1 to 64 of the characters A-Z, a-z, 0-9, '.', '_', '~', '-'.",
                    ));
                }
                if self.get(&token)?.is_some() {
                    return Err(Error::invalid_param(format!(
                        "Token already exists: {token}"
                    )));
                }
                token
            }
            None => {
                if !(1..=MAX_LEN).contains(&length) {
                    return Err(Error::invalid_param("`length` must be between 1 and 64."));
                }
                loop {
                    let token = utils::random_string(length);
                    if self.get(&token)?.is_none() {
                        break token;
                    }
                }
            }
        };
        let record = TokenRecord {
            uses_allowed,
            completed: 0,
            expiry_time,
        };
        self.put(&token, &record)?;
        Ok((token, record))
    }

    /// Changes a token's limits (`None`: unchanged; `Some(None)`: no limit). `None` when
    /// there is no such token.
    pub async fn update(
        &self,
        token: &str,
        uses_allowed: Option<Option<u64>>,
        expiry_time: Option<Option<u64>>,
    ) -> Result<Option<TokenRecord>> {
        let _guard = self.lock().await;
        let Some(mut record) = self.get(token)? else {
            return Ok(None);
        };
        if let Some(uses_allowed) = uses_allowed {
            record.uses_allowed = uses_allowed;
        }
        if let Some(expiry_time) = expiry_time {
            record.expiry_time = expiry_time;
        }
        self.put(token, &record)?;
        Ok(Some(record))
    }

    /// Deletes a token; false when there was none.
    pub async fn delete(&self, token: &str) -> Result<bool> {
        let _guard = self.lock().await;
        if self.get(token)?.is_none() {
            return Ok(false);
        }
        let mut batch = Batch::new();
        batch.delete(Cf::RegistrationTokens, token.as_bytes().to_vec());
        self.store.write(batch)?;
        Ok(true)
    }

    /// Adds one use of `token` to `batch` (the new account's), if the token is valid now;
    /// `Ok(false)` otherwise. Call with [`RegistrationTokens::lock`] held until the batch is
    /// written.
    pub fn use_into(&self, batch: &mut Batch, token: &str) -> Result<bool> {
        let Some(mut record) = self.get(token)? else {
            return Ok(false);
        };
        if !record.valid(utils::now_millis()) {
            return Ok(false);
        }
        record.completed += 1;
        batch.put(
            Cf::RegistrationTokens,
            token.as_bytes().to_vec(),
            serde_json::to_vec(&record)?,
        );
        Ok(true)
    }

    fn put(&self, token: &str, record: &TokenRecord) -> Result<()> {
        self.store.put(
            Cf::RegistrationTokens,
            token.as_bytes(),
            &serde_json::to_vec(record)?,
        )?;
        Ok(())
    }
}
