//! OpenID tokens: a client proves its identity to a third party (an integration manager, a
//! widget) with a short-lived token the third party checks against this server's
//! `/_matrix/federation/v1/openid/userinfo`. The token proves nothing else: it is not an
//! access token and is stored apart from them.

use ruma::{OwnedUserId, UserId};
use serde::{Deserialize, Serialize};

use crate::{
    Error, Result,
    service::Services,
    store::{Batch, Cf},
    utils,
};

/// How long a token lives.
pub const OPENID_TOKEN_LIFETIME_MS: u64 = 60 * 60 * 1000;

#[derive(Serialize, Deserialize)]
struct OpenidToken {
    user_id: OwnedUserId,
    expires_at: u64,
}

fn unknown_token() -> Error {
    Error::new(
        http::StatusCode::UNAUTHORIZED,
        ruma::api::error::ErrorKind::UnknownToken(ruma::api::error::UnknownTokenErrorData::new()),
        "Unknown or expired OpenID token.",
    )
}

impl Services {
    /// A new OpenID token for `user_id`; returns it and its lifetime in milliseconds.
    pub fn create_openid_token(&self, user_id: &UserId) -> Result<(String, u64)> {
        let token = utils::random_string(32);
        let record = OpenidToken {
            user_id: user_id.to_owned(),
            expires_at: utils::now_millis() + OPENID_TOKEN_LIFETIME_MS,
        };
        let mut batch = Batch::new();
        batch.put(
            Cf::OpenidTokens,
            token.as_bytes(),
            serde_json::to_vec(&record)?,
        );
        self.store.write(batch)?;
        Ok((token, OPENID_TOKEN_LIFETIME_MS))
    }

    /// The user an unexpired OpenID token belongs to; 401 `M_UNKNOWN_TOKEN` otherwise (an
    /// expired token is deleted on the way).
    pub fn openid_token_user(&self, token: &str) -> Result<OwnedUserId> {
        let Some(bytes) = self.store.get(Cf::OpenidTokens, token.as_bytes())? else {
            return Err(unknown_token());
        };
        let record: OpenidToken = serde_json::from_slice(&bytes)?;
        if record.expires_at <= utils::now_millis() {
            let mut batch = Batch::new();
            batch.delete(Cf::OpenidTokens, token.as_bytes());
            self.store.write(batch)?;
            return Err(unknown_token());
        }
        Ok(record.user_id)
    }
}
