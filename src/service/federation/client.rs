//! Outbound federation requests: a ruma request type in, its response out. The request is
//! signed with the server's key (`Authorization: X-Matrix origin=…,destination=…,key=…,sig=…`)
//! and sent to wherever the destination resolves.

use std::net::IpAddr;

use http::StatusCode;
use ruma::{
    ServerName,
    api::{
        IncomingResponseExt, OutgoingRequest, OutgoingRequestExt,
        auth_scheme::NoAuthentication,
        federation::authentication::{ServerSignatures, XMatrixSigningInput},
        path_builder::SinglePath,
    },
};

use crate::{Error, Result, service::Services};

/// Remote answers bigger than this are refused (a `send_join` of a very large room fits).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Why a federation request failed.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    #[error("federation is disabled on this server")]
    Disabled,
    #[error("{destination} is not reachable: {message}")]
    Unreachable {
        destination: String,
        message: String,
    },
    /// The remote server answered with an error.
    #[error("{destination} answered {status}: {body}")]
    Remote {
        destination: String,
        status: StatusCode,
        body: String,
    },
    #[error("{destination} answered something unreadable: {message}")]
    BadResponse {
        destination: String,
        message: String,
    },
}

impl FederationError {
    /// The remote HTTP status, when the remote answered at all.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            FederationError::Remote { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Whether a remote error body says `M_INVITE_BLOCKED` (or its unstable names).
fn invite_blocked(body: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(body).is_ok_and(|error| {
        matches!(
            error["errcode"].as_str(),
            Some(
                "M_INVITE_BLOCKED"
                    | "ORG.MATRIX.MSC4380.INVITE_BLOCKED"
                    | "ORG.MATRIX.MSC4155.INVITE_BLOCKED"
            )
        )
    })
}

impl From<FederationError> for Error {
    fn from(e: FederationError) -> Self {
        match &e {
            FederationError::Disabled => Error::forbidden(e.to_string()),
            FederationError::Remote { status, .. } if *status == StatusCode::NOT_FOUND => {
                Error::not_found(e.to_string())
            }
            // The invitee's server blocks invites (MSC4380): the client hears it as such.
            FederationError::Remote { status, body, .. }
                if *status == StatusCode::FORBIDDEN && invite_blocked(body) =>
            {
                Error::new(
                    StatusCode::FORBIDDEN,
                    ruma::api::error::ErrorKind::InviteBlocked,
                    e.to_string(),
                )
            }
            FederationError::Remote { status, .. } if *status == StatusCode::FORBIDDEN => {
                Error::forbidden(e.to_string())
            }
            _ => Error::new(
                StatusCode::BAD_GATEWAY,
                ruma::api::error::ErrorKind::Unknown,
                e.to_string(),
            ),
        }
    }
}

impl Services {
    /// Sends a signed federation request to `destination` and parses its answer.
    pub async fn send_federation_request<R>(
        &self,
        destination: &ServerName,
        request: R,
    ) -> Result<R::IncomingResponse, FederationError>
    where
        R: OutgoingRequest<Authentication = ServerSignatures, PathBuilder = SinglePath>,
    {
        self.check_destination(destination)?;
        let base = self.federation.resolver.resolve(destination).await;
        let input = XMatrixSigningInput::new(
            self.server_name.clone(),
            destination.to_owned(),
            self.globals.signing_key(),
        );
        let http_request = request
            .try_into_http_request::<Vec<u8>>(&base.base_url(), input, ())
            .map_err(|e| unreachable(destination, format!("request not built: {e}")))?;
        self.execute::<R>(destination, &base.host, http_request)
            .await
    }

    /// Sends an unauthenticated request (the key endpoints) to `destination`.
    pub async fn send_unauthenticated_request<R>(
        &self,
        destination: &ServerName,
        request: R,
    ) -> Result<R::IncomingResponse, FederationError>
    where
        R: OutgoingRequest<Authentication = NoAuthentication, PathBuilder = SinglePath>,
    {
        self.check_destination(destination)?;
        let base = self.federation.resolver.resolve(destination).await;
        let http_request = request
            .try_into_http_request::<Vec<u8>>(&base.base_url(), (), ())
            .map_err(|e| unreachable(destination, format!("request not built: {e}")))?;
        self.execute::<R>(destination, &base.host, http_request)
            .await
    }

    pub(super) fn check_destination(
        &self,
        destination: &ServerName,
    ) -> Result<(), FederationError> {
        if !self.federation.enabled {
            return Err(FederationError::Disabled);
        }
        if destination == self.server_name {
            return Err(unreachable(destination, "that is this server".into()));
        }
        if self.config.is_server_denied(destination) {
            return Err(unreachable(
                destination,
                "federation with it is denied".into(),
            ));
        }
        Ok(())
    }

    async fn execute<R: OutgoingRequest>(
        &self,
        destination: &ServerName,
        host: &str,
        request: http::Request<Vec<u8>>,
    ) -> Result<R::IncomingResponse, FederationError> {
        // IP literals bypass the DNS resolver (and with it the guard): check them here.
        if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>()
            && !(self.federation.ip_allowed)(ip)
        {
            return Err(unreachable(
                destination,
                format!("{ip} is in ip_range_denylist"),
            ));
        }
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let request = reqwest::Request::try_from(request)
            .map_err(|e| unreachable(destination, format!("request not built: {e}")))?;
        let response = self.federation.http().execute(request).await.map_err(|e| {
            self.federation.resolver.forget(destination);
            unreachable(destination, error_chain(&e))
        })?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = read_limited(response, MAX_RESPONSE_BYTES)
            .await
            .map_err(|message| FederationError::BadResponse {
                destination: destination.to_string(),
                message,
            })?;
        tracing::debug!(%destination, %method, %path, status = status.as_u16(), "federation request");
        if !status.is_success() {
            return Err(FederationError::Remote {
                destination: destination.to_string(),
                status,
                body: String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
            });
        }
        let mut http_response = http::Response::new(&body[..]);
        *http_response.status_mut() = status;
        *http_response.headers_mut() = headers;
        R::IncomingResponse::try_from_http_response(http_response).map_err(|e| {
            FederationError::BadResponse {
                destination: destination.to_string(),
                message: e.to_string(),
            }
        })
    }
}

pub(super) fn unreachable(destination: &ServerName, message: String) -> FederationError {
    FederationError::Unreachable {
        destination: destination.to_string(),
        message,
    }
}

/// reqwest's errors hide the cause (TLS, DNS, refused) in their source chain.
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Reads a response body, refusing more than `limit` bytes.
async fn read_limited(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    if response
        .content_length()
        .is_some_and(|l| l as usize > limit)
    {
        return Err(format!("the answer is larger than {limit} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| error_chain(&e))? {
        if body.len() + chunk.len() > limit {
            return Err(format!("the answer is larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
