//! Outbound requests whose answers are not JSON: media downloads (a `multipart/mixed`
//! federation answer, or raw bytes from the legacy endpoint or a `Location`). Same signing,
//! resolver, HTTP client and SSRF guard as [`super::client`]; the caller gets the status,
//! the headers and the body, which it reads with a size limit.

use std::net::IpAddr;

use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};
use http::{HeaderMap, StatusCode};
use ruma::{
    ServerName,
    api::{
        OutgoingRequest, OutgoingRequestExt, federation::authentication::ServerSignatures,
        path_builder::SinglePath,
    },
};

use super::client::{FederationError, error_chain, unreachable};
use crate::service::Services;

/// A remote answer whose body has not been read yet.
pub struct RawResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    destination: String,
    response: reqwest::Response,
}

impl RawResponse {
    /// The whole body, refusing more than `limit` bytes (before reading, when the length is
    /// declared).
    pub async fn bytes_limited(mut self, limit: u64) -> Result<Vec<u8>, FederationError> {
        let too_large = |destination: &str| FederationError::BadResponse {
            destination: destination.to_owned(),
            message: format!("the answer is larger than {limit} bytes"),
        };
        if self.response.content_length().is_some_and(|l| l > limit) {
            return Err(too_large(&self.destination));
        }
        let mut body = Vec::new();
        while let Some(chunk) = self
            .response
            .chunk()
            .await
            .map_err(|e| self.read_error(&e))?
        {
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(too_large(&self.destination));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// The body as a stream (the media repository's `receive` enforces the size limit).
    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, String>> + Unpin {
        self.response.bytes_stream().map_err(|e| error_chain(&e))
    }

    /// The start of an error body, for messages and error codes.
    pub async fn error_body(self) -> String {
        let body = self.bytes_limited(64 * 1024).await.unwrap_or_default();
        String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned()
    }

    fn read_error(&self, e: &reqwest::Error) -> FederationError {
        if e.is_timeout() {
            return timed_out(&self.destination);
        }
        FederationError::BadResponse {
            destination: self.destination.clone(),
            message: error_chain(e),
        }
    }
}

/// The message [`FederationError::Unreachable`] carries when the remote was too slow; the
/// media layer turns it into 504.
pub const TIMED_OUT: &str = "timed out";

fn timed_out(destination: &str) -> FederationError {
    FederationError::Unreachable {
        destination: destination.to_owned(),
        message: TIMED_OUT.to_owned(),
    }
}

impl Services {
    /// Sends a signed federation request and returns the answer unread, whatever its status.
    pub async fn send_federation_request_raw<R>(
        &self,
        destination: &ServerName,
        request: R,
    ) -> Result<RawResponse, FederationError>
    where
        R: OutgoingRequest<Authentication = ServerSignatures, PathBuilder = SinglePath>,
    {
        self.check_destination(destination)?;
        let base = self.federation.resolver.resolve(destination).await;
        let input = ruma::api::federation::authentication::XMatrixSigningInput::new(
            self.server_name.clone(),
            destination.to_owned(),
            self.globals.signing_key(),
        );
        let http_request = request
            .try_into_http_request::<Vec<u8>>(&base.base_url(), input, ())
            .map_err(|e| unreachable(destination, format!("request not built: {e}")))?;
        let request = reqwest::Request::try_from(http_request)
            .map_err(|e| unreachable(destination, format!("request not built: {e}")))?;
        self.execute_raw(destination, &base.host, request).await
    }

    /// An unauthenticated `GET` of `path_and_query` on `destination` (the legacy media
    /// endpoints of servers without the federation ones).
    pub async fn get_unauthenticated_raw(
        &self,
        destination: &ServerName,
        path_and_query: &str,
    ) -> Result<RawResponse, FederationError> {
        self.check_destination(destination)?;
        let base = self.federation.resolver.resolve(destination).await;
        let url = format!("{}{path_and_query}", base.base_url());
        let request = self
            .federation
            .http()
            .get(&url)
            .build()
            .map_err(|e| unreachable(destination, format!("request not built: {e}")))?;
        self.execute_raw(destination, &base.host, request).await
    }

    /// A `GET` of a URL a remote server named (a `Location` in a media answer): through the
    /// same client, so the SSRF guard applies to wherever it points.
    pub async fn get_url_raw(
        &self,
        destination: &ServerName,
        url: &str,
    ) -> Result<RawResponse, FederationError> {
        self.check_destination(destination)?;
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| unreachable(destination, format!("bad location {url}: {e}")))?;
        if !matches!(parsed.scheme(), "https" | "http") {
            return Err(unreachable(destination, format!("bad location {url}")));
        }
        let host = parsed.host_str().unwrap_or_default().to_owned();
        let request = self
            .federation
            .http()
            .get(parsed)
            .build()
            .map_err(|e| unreachable(destination, format!("request not built: {e}")))?;
        self.execute_raw(destination, &host, request).await
    }

    async fn execute_raw(
        &self,
        destination: &ServerName,
        host: &str,
        request: reqwest::Request,
    ) -> Result<RawResponse, FederationError> {
        // IP literals bypass the DNS resolver (and with it the guard): check them here.
        if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>()
            && !(self.federation.ip_allowed)(ip)
        {
            return Err(unreachable(
                destination,
                format!("{ip} is in ip_range_denylist"),
            ));
        }
        let path = request.url().path().to_owned();
        let response = self.federation.http().execute(request).await.map_err(|e| {
            self.federation.resolver.forget(destination);
            if e.is_timeout() {
                timed_out(destination.as_str())
            } else {
                unreachable(destination, error_chain(&e))
            }
        })?;
        let status = response.status();
        tracing::debug!(%destination, %path, status = status.as_u16(), "federation media request");
        Ok(RawResponse {
            status,
            headers: response.headers().clone(),
            destination: destination.to_string(),
            response,
        })
    }
}
