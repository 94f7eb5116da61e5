//! Who may register, and how: the registration policy.
//!
//! - `allow_registration = true`, no `registration_token`: open, flow `m.login.dummy`.
//! - `allow_registration = true` with a `registration_token`: flow `m.login.registration_token`,
//!   then `m.login.dummy`.
//! - `allow_registration = false`: closed — except while no account exists at all, when a
//!   one-time bootstrap token (logged at start-up) lets the owner create the first, admin,
//!   account; and while an admin-made registration token is valid
//!   (`service::registration_tokens`): then registering takes one of those.
//!
//! Admin-made tokens are accepted wherever a token is asked for.

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
        if self.registration_tokens.any_valid()? {
            return Ok(RegistrationPolicy::Token { bootstrap: false });
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

    /// Whether `token` is a registration token in force: the configured one or the bootstrap
    /// one (compared in constant time), or a valid admin-made one.
    pub fn registration_token_valid(&self, token: &str) -> Result<bool> {
        let policy = self.registration_policy()?;
        let expected = match policy {
            RegistrationPolicy::Token { bootstrap: false } => {
                self.config.registration_token.clone()
            }
            RegistrationPolicy::Token { bootstrap: true } => self.globals.bootstrap_token(false)?,
            RegistrationPolicy::Open | RegistrationPolicy::Closed => None,
        };
        if expected.is_some_and(|e| utils::constant_time_eq(e.as_bytes(), token.as_bytes())) {
            return Ok(true);
        }
        Ok(
            matches!(policy, RegistrationPolicy::Token { bootstrap: false })
                && self.registration_tokens.is_valid(token)?,
        )
    }

    /// The admin-made token a registration passed with, if that is what `token` is (the
    /// configured one is not counted).
    pub fn admin_registration_token(&self, token: Option<String>) -> Result<Option<String>> {
        let Some(token) = token else {
            return Ok(None);
        };
        if self
            .config
            .registration_token
            .as_deref()
            .is_some_and(|c| utils::constant_time_eq(c.as_bytes(), token.as_bytes()))
            || self.registration_tokens.get(&token)?.is_none()
        {
            return Ok(None);
        }
        Ok(Some(token))
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
