//! User-interactive authentication (UIA) sessions.
//!
//! A session remembers which stages a client completed and what it is for (the `purpose`: which
//! endpoint and which user), so a session begun for one request cannot authorise another. Sessions
//! live in memory for [`SESSION_TTL`]; a restart only means the client starts the dance again.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use ruma::api::{
    client::uiaa::{AuthFlow, AuthType, UiaaInfo},
    error::{ErrorKind, StandardErrorBody},
};

use crate::{Error, Result, utils};

const SESSION_TTL: Duration = Duration::from_secs(15 * 60);
const MAX_SESSIONS: usize = 10_000;

struct UiaaSession {
    purpose: String,
    flows: Vec<AuthFlow>,
    completed: Vec<AuthType>,
    created: Instant,
    /// The registration token its `m.login.registration_token` stage passed with.
    registration_token: Option<String>,
}

/// The outcome of checking one stage's `auth` dict.
pub enum StageResult {
    Completed,
    /// `m.login.registration_token` passed with this token (counted once the account exists).
    CompletedWithToken(String),
    /// The stage was attempted and failed; the client may retry in the same session.
    Failed(ErrorKind, String),
}

#[derive(Default)]
pub struct Uiaa {
    sessions: Mutex<HashMap<String, UiaaSession>>,
}

impl Uiaa {
    /// Runs one step of UIA for `purpose` with `flows`.
    ///
    /// `attempt` is `None` when the request carried no `auth`; otherwise it is the session the
    /// client named (if any), the stage type it attempted, and the checked result of that stage.
    /// Returns, once a whole flow is complete, the registration token the session passed with
    /// (if any); otherwise the 401 answer to send.
    pub fn step(
        &self,
        purpose: &str,
        flows: &[AuthFlow],
        attempt: Option<(Option<&str>, AuthType, StageResult)>,
    ) -> Result<Option<String>> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|_, s| s.created.elapsed() < SESSION_TTL);

        let Some((session_id, stage, result)) = attempt else {
            let id = Self::new_session(&mut sessions, purpose, flows)?;
            return Err(Self::info(&sessions[&id], &id, None));
        };

        let id = match session_id {
            Some(id) => {
                let session = sessions.get(id).ok_or_else(|| {
                    Error::new(
                        http::StatusCode::BAD_REQUEST,
                        ErrorKind::Unknown,
                        "Unknown or expired user-interactive authentication session.",
                    )
                })?;
                if session.purpose != purpose {
                    return Err(Error::forbidden(
                        "This authentication session was started for a different request.",
                    ));
                }
                id.to_owned()
            }
            // Clients may send a stage in their very first request; start a session for it.
            None => Self::new_session(&mut sessions, purpose, flows)?,
        };

        let session = sessions
            .get_mut(&id)
            .expect("session present: looked up or just made");
        if let StageResult::CompletedWithToken(token) = &result {
            session.registration_token = Some(token.clone());
        }
        match result {
            StageResult::Completed | StageResult::CompletedWithToken(_) => {
                let allowed = session.flows.iter().any(|f| f.stages.contains(&stage));
                if !allowed {
                    let err = StandardErrorBody::new(
                        ErrorKind::Unknown,
                        format!("Stage {stage} is not part of any flow here."),
                    );
                    return Err(Self::info(session, &id, Some(err)));
                }
                if !session.completed.contains(&stage) {
                    session.completed.push(stage);
                }
                let done = session
                    .flows
                    .iter()
                    .any(|f| f.stages.iter().all(|s| session.completed.contains(s)));
                if done {
                    Ok(sessions
                        .remove(&id)
                        .and_then(|session| session.registration_token))
                } else {
                    Err(Self::info(session, &id, None))
                }
            }
            StageResult::Failed(kind, message) => Err(Self::info(
                session,
                &id,
                Some(StandardErrorBody::new(kind, message)),
            )),
        }
    }

    fn new_session(
        sessions: &mut HashMap<String, UiaaSession>,
        purpose: &str,
        flows: &[AuthFlow],
    ) -> Result<String> {
        if sessions.len() >= MAX_SESSIONS {
            return Err(Error::limit_exceeded(Duration::from_secs(60)));
        }
        let id = utils::random_string(24);
        sessions.insert(
            id.clone(),
            UiaaSession {
                purpose: purpose.to_owned(),
                flows: flows.to_vec(),
                completed: Vec::new(),
                created: Instant::now(),
                registration_token: None,
            },
        );
        Ok(id)
    }

    fn info(session: &UiaaSession, id: &str, error: Option<StandardErrorBody>) -> Error {
        let mut info = UiaaInfo::new(session.flows.clone());
        info.completed = session.completed.clone();
        info.session = Some(id.to_owned());
        info.params = serde_json::value::to_raw_value(&serde_json::json!({})).ok();
        info.auth_error = error.map(Box::new);
        Error::Uiaa(Box::new(info))
    }
}

impl super::Services {
    /// Runs one step of user-interactive authentication for `purpose`, checking the stage the
    /// client attempted in `auth`. `user` is the account the request acts on (password stages
    /// must prove they are that account). Returns, when a flow is complete, the registration
    /// token it passed with (if any).
    pub async fn user_interactive_auth(
        &self,
        purpose: &str,
        flows: &[AuthFlow],
        auth: Option<&ruma::api::client::uiaa::AuthData>,
        user: Option<&ruma::UserId>,
    ) -> Result<Option<String>> {
        use ruma::api::client::uiaa::{AuthData, UserIdentifier};

        let Some(auth) = auth else {
            return self.uiaa.step(purpose, flows, None);
        };
        let session = auth.session();
        let (stage, result) = match auth {
            AuthData::Dummy(_) => (AuthType::Dummy, StageResult::Completed),
            AuthData::RegistrationToken(t) => {
                let result = if self.registration_token_valid(&t.token)? {
                    StageResult::CompletedWithToken(t.token.clone())
                } else {
                    StageResult::Failed(ErrorKind::Forbidden, "Invalid registration token.".into())
                };
                (AuthType::RegistrationToken, result)
            }
            AuthData::Password(p) => {
                let claimed = match &p.identifier {
                    UserIdentifier::Matrix(id) => {
                        super::users::Users::parse_existing(&id.user, &self.server_name).ok()
                    }
                    _ => None,
                };
                let result = match (claimed, user) {
                    (Some(claimed), Some(user)) if claimed == user => {
                        let password = p.password.clone();
                        let ok = self.check_password_blocking(claimed, password).await?;
                        if ok {
                            StageResult::Completed
                        } else {
                            StageResult::Failed(ErrorKind::Forbidden, "Invalid password.".into())
                        }
                    }
                    _ => StageResult::Failed(
                        ErrorKind::Forbidden,
                        "The password must be that of the account making this request.".into(),
                    ),
                };
                (AuthType::Password, result)
            }
            other => {
                let stage = other
                    .auth_type()
                    .unwrap_or_else(|| AuthType::from("unknown"));
                let message = format!("Authentication stage {stage} is not supported here.");
                (stage, StageResult::Failed(ErrorKind::Unrecognized, message))
            }
        };
        self.uiaa
            .step(purpose, flows, Some((session, stage, result)))
    }

    /// User-interactive auth that asks for the account's current password again (password
    /// change, deactivation, device deletion). `purpose` binds the session to this request.
    pub async fn confirm_password(
        &self,
        purpose: &str,
        auth: Option<&ruma::api::client::uiaa::AuthData>,
        user: &ruma::UserId,
    ) -> Result<()> {
        let flows = [AuthFlow::new(vec![AuthType::Password])];
        self.user_interactive_auth(purpose, &flows, auth, Some(user))
            .await
            .map(|_| ())
    }

    /// Checks a password on a blocking thread (Argon2 takes tens of milliseconds of CPU).
    pub async fn check_password_blocking(
        &self,
        user_id: ruma::OwnedUserId,
        password: String,
    ) -> Result<bool> {
        let hash = self.users.active_password_hash(&user_id)?;
        let foreign = hash.clone().filter(|h| super::users::is_foreign_hash(h));
        let matches = super::users::password_matches_bounded(hash, password.clone()).await?;
        if matches && let Some(old) = foreign {
            // An imported hash (Synapse's bcrypt): replaced by our own now that the password
            // is known.
            let argon2 = super::users::hash_password_bounded(password).await?;
            self.users
                .upgrade_password_hash(&user_id, &old, argon2)
                .await?;
        }
        Ok(matches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session_of(err: Error) -> String {
        match err {
            Error::Uiaa(info) => info.session.unwrap(),
            other => panic!("expected UIA 401, got {other:?}"),
        }
    }

    #[test]
    fn dance_completes_and_session_is_single_use() {
        let uiaa = Uiaa::default();
        let flows = vec![AuthFlow::new(vec![AuthType::Dummy])];
        let session = session_of(uiaa.step("register", &flows, None).unwrap_err());
        uiaa.step(
            "register",
            &flows,
            Some((Some(&session), AuthType::Dummy, StageResult::Completed)),
        )
        .unwrap();
        // Used up: the same session is no longer known.
        assert!(matches!(
            uiaa.step(
                "register",
                &flows,
                Some((Some(&session), AuthType::Dummy, StageResult::Completed))
            ),
            Err(Error::Matrix { .. })
        ));
    }

    #[test]
    fn session_cannot_change_purpose() {
        let uiaa = Uiaa::default();
        let flows = vec![AuthFlow::new(vec![AuthType::Password])];
        let session = session_of(uiaa.step("deactivate:@a:x", &flows, None).unwrap_err());
        let other = uiaa.step(
            "deactivate:@b:x",
            &flows,
            Some((Some(&session), AuthType::Password, StageResult::Completed)),
        );
        assert!(matches!(other, Err(Error::Matrix { .. })));
    }

    #[test]
    fn stage_outside_flows_is_refused() {
        let uiaa = Uiaa::default();
        let flows = vec![AuthFlow::new(vec![AuthType::Password])];
        let r = uiaa.step(
            "x",
            &flows,
            Some((None, AuthType::Dummy, StageResult::Completed)),
        );
        assert!(matches!(r, Err(Error::Uiaa(_))));
    }
}
