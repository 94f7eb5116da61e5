//! Calls from the homeserver to appservices other than transactions: user and alias queries,
//! the ping, and the third-party lookups. Each is authenticated with the appservice's
//! `hs_token` and bounded by a timeout.

use std::time::{Duration, Instant};

use http::StatusCode;
use ruma::{
    OwnedRoomId, RoomAliasId, UserId,
    api::error::{BadStatusErrorData, ErrorKind},
};
use serde_json::Value;

use super::Appservice;
use crate::{Error, Result, service::Services};

const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(30);
const QUERY_ATTEMPTS: u32 = 3;

enum QueryOutcome {
    /// The appservice answered 200: the entity should exist now.
    Yes,
    /// It answered, but does not know the entity.
    No,
    /// It did not answer (connection failure or timeout), several times.
    Unreachable,
}

/// 408: the appservice that might provide the user or alias did not answer.
fn query_timeout() -> Error {
    Error::new(
        StatusCode::REQUEST_TIMEOUT,
        ErrorKind::Unknown,
        "The application service responsible for this did not answer.",
    )
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn endpoint(service: &Appservice, path: &str) -> Option<String> {
    Some(format!("{}{path}", service.url()?.trim_end_matches('/')))
}

impl Services {
    /// One user or alias query (`path` under `/_matrix/app/v1/`), tried a few times when the
    /// appservice does not answer at all, as the spec asks.
    async fn query_appservice(&self, service: &Appservice, path: &str) -> QueryOutcome {
        let Some(url) = endpoint(service, path) else {
            return QueryOutcome::No;
        };
        for attempt in 0..QUERY_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 * attempt as u64)).await;
            }
            let answer = self
                .appservices
                .http
                .get(&url)
                .bearer_auth(&service.registration().hs_token)
                .timeout(QUERY_TIMEOUT)
                .send()
                .await;
            match answer {
                Ok(r) if r.status().is_success() => return QueryOutcome::Yes,
                Ok(_) => return QueryOutcome::No,
                Err(e) => tracing::warn!(appservice = service.id(), "query {path} failed: {e}"),
            }
        }
        QueryOutcome::Unreachable
    }

    /// Asks the appservices whose user namespace holds `user_id` whether it exists (they create
    /// it, as a bridge does for a ghost, before answering). True when the user exists here now;
    /// 408 when no appservice that might know it answered.
    pub async fn query_appservices_for_user(&self, user_id: &UserId) -> Result<bool> {
        if user_id.server_name() != self.server_name {
            return Ok(false);
        }
        if self.users.exists(user_id)? {
            return Ok(true);
        }
        let candidates: Vec<_> = self
            .appservices
            .list()
            .iter()
            .filter(|s| s.is_user_match(user_id) && s.url().is_some())
            .cloned()
            .collect();
        let mut answered = candidates.is_empty();
        for service in candidates {
            let path = format!("/_matrix/app/v1/users/{}", percent_encode(user_id.as_str()));
            match self.query_appservice(&service, &path).await {
                QueryOutcome::Yes => {
                    answered = true;
                    if self.users.exists(user_id)? {
                        return Ok(true);
                    }
                }
                QueryOutcome::No => answered = true,
                QueryOutcome::Unreachable => {}
            }
        }
        if !answered {
            return Err(query_timeout());
        }
        Ok(false)
    }

    /// The room `alias` points to, asking the appservices whose alias namespace holds it when
    /// it is unknown (they create the room and the alias before answering); 408 when none of
    /// them answered.
    pub async fn resolve_alias_with_appservices(
        &self,
        alias: &RoomAliasId,
    ) -> Result<Option<OwnedRoomId>> {
        if let Some(room) = self.resolve_alias(alias)? {
            return Ok(Some(room));
        }
        let candidates: Vec<_> = self
            .appservices
            .list()
            .iter()
            .filter(|s| s.is_alias_match(alias.as_str()) && s.url().is_some())
            .cloned()
            .collect();
        let mut answered = candidates.is_empty();
        for service in candidates {
            let path = format!("/_matrix/app/v1/rooms/{}", percent_encode(alias.as_str()));
            match self.query_appservice(&service, &path).await {
                QueryOutcome::Yes => {
                    answered = true;
                    if let Some(room) = self.resolve_alias(alias)? {
                        return Ok(Some(room));
                    }
                }
                QueryOutcome::No => answered = true,
                QueryOutcome::Unreachable => {}
            }
        }
        if !answered {
            return Err(query_timeout());
        }
        Ok(None)
    }

    /// `POST /appservice/{id}/ping`: calls the appservice's `/_matrix/app/v1/ping` and returns
    /// how long it took, or the spec's errors.
    pub async fn ping_appservice(
        &self,
        service: &Appservice,
        transaction_id: Option<&str>,
    ) -> Result<Duration> {
        let Some(url) = endpoint(service, "/_matrix/app/v1/ping") else {
            return Err(Error::new(
                StatusCode::BAD_REQUEST,
                ErrorKind::UrlNotSet,
                "The application service has no URL configured.",
            ));
        };
        let mut body = serde_json::Map::new();
        if let Some(txn) = transaction_id {
            body.insert("transaction_id".into(), txn.into());
        }
        let started = Instant::now();
        let answer = self
            .appservices
            .http
            .post(url)
            .bearer_auth(&service.registration().hs_token)
            .timeout(PING_TIMEOUT)
            .json(&body)
            .send()
            .await;
        let response = match answer {
            Ok(response) => response,
            Err(e) if e.is_timeout() => {
                return Err(Error::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    ErrorKind::ConnectionTimeout,
                    "The connection to the application service timed out.",
                ));
            }
            Err(e) => {
                return Err(Error::new(
                    StatusCode::BAD_GATEWAY,
                    ErrorKind::ConnectionFailed,
                    format!("Could not reach the application service: {e}"),
                ));
            }
        };
        let status = response.status();
        if status.is_success() {
            return Ok(started.elapsed());
        }
        let text = response.text().await.unwrap_or_default();
        let mut data = BadStatusErrorData::new();
        data.status = Some(status);
        data.body = Some(text);
        Err(Error::new(
            StatusCode::BAD_GATEWAY,
            ErrorKind::BadStatus(data),
            "The application service answered the ping with an error.",
        ))
    }

    /// A third-party lookup (`path` under `/_matrix/app/v1/thirdparty/`, with its query) sent to
    /// every appservice for which `wanted` holds; the JSON answers with the appservice's ID, in
    /// registration order. Appservices that fail are left out (and logged).
    pub async fn third_party_query(
        &self,
        wanted: impl Fn(&Appservice) -> bool,
        path: &str,
        query: &[(String, String)],
    ) -> Vec<(String, Value)> {
        let candidates: Vec<_> = self
            .appservices
            .list()
            .iter()
            .filter(|s| wanted(s))
            .cloned()
            .collect();
        let mut answers = Vec::new();
        for service in candidates {
            let Some(url) = endpoint(&service, &format!("/_matrix/app/v1/thirdparty/{path}"))
            else {
                continue;
            };
            let answer = self
                .appservices
                .http
                .get(url)
                .query(query)
                .bearer_auth(&service.registration().hs_token)
                .timeout(QUERY_TIMEOUT)
                .send()
                .await;
            match answer {
                Ok(r) if r.status().is_success() => match r.json::<Value>().await {
                    Ok(value) => answers.push((service.id().to_owned(), value)),
                    Err(e) => {
                        tracing::warn!(appservice = service.id(), "bad third-party answer: {e}")
                    }
                },
                Ok(r) => {
                    tracing::debug!(appservice = service.id(), status = %r.status(), "third-party lookup refused")
                }
                Err(e) => {
                    tracing::warn!(appservice = service.id(), "third-party lookup failed: {e}")
                }
            }
        }
        answers
    }
}

/// For the path of a third-party lookup.
pub fn encode_segment(text: &str) -> String {
    percent_encode(text)
}
