//! TURN credentials for calls (`GET /voip/turnServer`). With a shared secret, coturn's scheme
//! (its `use-auth-secret`): the username is `<expiry>:<user ID>` and the password the base64 of
//! its HMAC-SHA1 under the secret, so the TURN server can check them without asking us. Or one
//! static username and password for everyone. Nothing configured: no TURN server.

use ruma::{
    UserId,
    serde::{Base64, base64::Standard},
};
use serde::Serialize;

use crate::{Error, Result, service::Services, utils};

/// One day, as Synapse and Conduit default to.
const DEFAULT_TTL_SECS: u64 = 86_400;

/// What `/voip/turnServer` answers when TURN is configured.
#[derive(Debug, Serialize)]
pub struct TurnCredentials {
    pub username: String,
    pub password: String,
    pub uris: Vec<String>,
    /// Seconds the credentials stay valid.
    pub ttl: u64,
}

/// coturn's password for `username`: base64(HMAC-SHA1(secret, username)).
pub fn turn_password(secret: &[u8], username: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let tag = ring::hmac::sign(&key, username.as_bytes());
    // Padded, as coturn (and Synapse) write it; ruma's encoder leaves the padding out.
    let mut password = Base64::<Standard, &[u8]>::new(tag.as_ref()).encode();
    while !password.len().is_multiple_of(4) {
        password.push('=');
    }
    password
}

impl Services {
    /// Credentials for `user_id` (`guest`: a guest account), or `None` when no TURN server is
    /// configured or it is not for guests.
    pub fn turn_credentials(
        &self,
        user_id: &UserId,
        guest: bool,
    ) -> Result<Option<TurnCredentials>> {
        let config = &self.config;
        let uris = config.turn_uris.clone().unwrap_or_default();
        if uris.is_empty() || (guest && !config.turn_allow_guests) {
            return Ok(None);
        }
        let ttl = config.turn_ttl.unwrap_or(DEFAULT_TTL_SECS);
        let secret = match (&config.turn_secret, &config.turn_secret_file) {
            (Some(secret), _) if !secret.is_empty() => Some(secret.clone()),
            (_, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        Error::internal(format!("turn_secret_file {}: {e}", path.display()))
                    })?
                    .trim()
                    .to_owned(),
            ),
            _ => None,
        };
        let credentials = match secret {
            Some(secret) => {
                let expiry = utils::now_millis() / 1000 + ttl;
                let username = format!("{expiry}:{user_id}");
                TurnCredentials {
                    password: turn_password(secret.as_bytes(), &username),
                    username,
                    uris,
                    ttl,
                }
            }
            None => match (&config.turn_username, &config.turn_password) {
                (Some(username), Some(password)) if !username.is_empty() => TurnCredentials {
                    username: username.clone(),
                    password: password.clone(),
                    uris,
                    ttl,
                },
                _ => return Ok(None),
            },
        };
        Ok(Some(credentials))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_coturns_hmac_sha1_in_base64() {
        // Worked out with: printf '%s' '1700000000:@a:x' | openssl dgst -sha1 -hmac s3cret -binary | base64
        assert_eq!(
            turn_password(b"s3cret", "1700000000:@a:x"),
            "gAzqOGIQRDm9J8tW5L+mZsISRH8="
        );
    }
}
