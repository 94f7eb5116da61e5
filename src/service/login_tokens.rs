//! Login tokens (`POST /login/get_token`, spec v1.7): a signed-in user, after confirming their
//! password, gets a short-lived token that signs one other device in with `m.login.token`
//! (e.g. scanned from a QR code). Stored hashed like access tokens, used once, valid two
//! minutes.

use ruma::{OwnedUserId, UserId};

use crate::{
    Error, Result,
    service::Services,
    store::{Batch, Cf, keys},
    utils,
};

/// How long a login token may be used.
pub const LIFETIME_MS: u64 = 2 * 60 * 1000;
const TOKEN_LEN: usize = 32;

/// `user_id 0xFF expiry (ms, decimal)`.
fn parse(value: &[u8]) -> Option<(OwnedUserId, u64)> {
    let mut parts = keys::split(value);
    let user = UserId::parse(std::str::from_utf8(parts.next()?).ok()?).ok()?;
    let expires_at = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    Some((user, expires_at))
}

impl Services {
    /// A new login token for `user_id` (expired ones left by others are dropped meanwhile:
    /// the column family holds a handful at most).
    pub async fn create_login_token(&self, user_id: &UserId) -> Result<String> {
        let _guard = self.login_tokens_lock.lock().await;
        let now = utils::now_millis();
        let mut batch = Batch::new();
        for item in self.store.scan_prefix(Cf::LoginTokens, &[]) {
            let (key, value) = item?;
            if parse(&value).is_none_or(|(_, at)| at <= now) {
                batch.delete(Cf::LoginTokens, key.to_vec());
            }
        }
        let token = utils::random_string(TOKEN_LEN);
        let expires_at = now.saturating_add(LIFETIME_MS);
        batch.put(
            Cf::LoginTokens,
            utils::sha256(token.as_bytes()).to_vec(),
            keys::join([user_id.as_bytes(), expires_at.to_string().as_bytes()]),
        );
        self.store.write(batch)?;
        Ok(token)
    }

    /// Uses a login token up: whose it was, or 403 when it is unknown, used or expired.
    pub async fn redeem_login_token(&self, token: &str) -> Result<OwnedUserId> {
        let invalid = || Error::forbidden("Invalid, used or expired login token.");
        let _guard = self.login_tokens_lock.lock().await;
        let key = utils::sha256(token.as_bytes());
        let Some(value) = self.store.get(Cf::LoginTokens, &key)? else {
            return Err(invalid());
        };
        let mut batch = Batch::new();
        batch.delete(Cf::LoginTokens, key.to_vec());
        self.store.write(batch)?;
        match parse(&value) {
            Some((user_id, expires_at)) if utils::now_millis() < expires_at => Ok(user_id),
            _ => Err(invalid()),
        }
    }
}
