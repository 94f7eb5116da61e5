//! Who may register, and how: the registration policy.
//!
//! - `allow_registration = true`, no `registration_token`: open, flow `m.login.dummy`.
//! - `allow_registration = true` with a `registration_token`: flow `m.login.registration_token`,
//!   then `m.login.dummy`.
//! - `allow_registration = false`: closed — except while no account exists at all, when a
//!   one-time bootstrap token (logged at start-up) lets the owner create the first, admin, account.

use ruma::api::client::uiaa::{AuthFlow, AuthType};

use super::Services;
use crate::{Result, utils};

/// How registration works right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationPolicy {
    Closed,
    Open,
    /// A token is required; `bootstrap` marks the first-start token rather than the configured one.
    Token {
        bootstrap: bool,
    },
}

impl Services {
    pub fn registration_policy(&self) -> Result<RegistrationPolicy> {
        if self.config.allow_registration {
            return Ok(match self.config.registration_token {
                Some(_) => RegistrationPolicy::Token { bootstrap: false },
                None => RegistrationPolicy::Open,
            });
        }
        if self.users.none_exist()? && self.globals.bootstrap_token(false)?.is_some() {
            return Ok(RegistrationPolicy::Token { bootstrap: true });
        }
        Ok(RegistrationPolicy::Closed)
    }

    /// The UIA flows for `/register`, or `None` when registration is closed.
    pub fn registration_flows(&self) -> Result<Option<Vec<AuthFlow>>> {
        Ok(match self.registration_policy()? {
            RegistrationPolicy::Closed => None,
            RegistrationPolicy::Open => Some(vec![AuthFlow::new(vec![AuthType::Dummy])]),
            // The dummy stage after the token matches what Synapse offers; clients such as
            // matrix-nio expect a stage to follow the token.
            RegistrationPolicy::Token { .. } => Some(vec![AuthFlow::new(vec![
                AuthType::RegistrationToken,
                AuthType::Dummy,
            ])]),
        })
    }

    /// Whether `token` is the registration token in force (compared in constant time).
    pub fn registration_token_valid(&self, token: &str) -> Result<bool> {
        let expected = match self.registration_policy()? {
            RegistrationPolicy::Token { bootstrap: false } => {
                self.config.registration_token.clone()
            }
            RegistrationPolicy::Token { bootstrap: true } => self.globals.bootstrap_token(false)?,
            RegistrationPolicy::Open | RegistrationPolicy::Closed => None,
        };
        Ok(expected.is_some_and(|e| utils::constant_time_eq(e.as_bytes(), token.as_bytes())))
    }

    /// At start-up: when registration is closed and nobody has an account yet, make sure a
    /// bootstrap token exists and tell the operator how to use it. Returns the token if logged.
    pub fn announce_bootstrap_token(&self) -> Result<Option<String>> {
        if self.config.allow_registration || !self.users.none_exist()? {
            return Ok(None);
        }
        let token = self.globals.bootstrap_token(true)?;
        if let Some(token) = &token {
            tracing::warn!(
                "No account exists yet and registration is closed. Register the first account \
                 (it becomes the server admin) from any Matrix client on {} with this one-time \
                 registration token: {token} — or run `culvert user create NAME --admin` while the \
                 server is stopped.",
                self.server_name
            );
        }
        Ok(token)
    }
}
