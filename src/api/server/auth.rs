//! [`Fed<T>`]: the extractor of server-server requests. It checks the `X-Matrix` signature
//! against the origin's published key before the handler sees anything; a missing or bad
//! signature is 401 `M_UNAUTHORIZED`.

use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use http::StatusCode;
use ruma::{
    OwnedServerName,
    api::{
        IncomingRequest, IncomingRequestExt, error::ErrorKind, federation::authentication::XMatrix,
    },
};

use crate::{
    Error,
    api::ruma::{State, read_body, request_error},
    utils,
};

/// A parsed server-server request of type `T` whose signature verified.
pub struct Fed<T> {
    pub body: T,
    /// The server that signed the request.
    pub origin: OwnedServerName,
}

fn unauthorized(message: impl Into<String>) -> Error {
    Error::new(StatusCode::UNAUTHORIZED, ErrorKind::Unauthorized, message)
}

impl<T> FromRequest<State> for Fed<T>
where
    T: IncomingRequest + Send,
{
    type Rejection = Error;

    async fn from_request(req: Request, services: &State) -> Result<Self, Error> {
        if !services.federation.enabled {
            return Err(Error::forbidden("Federation is disabled on this server."));
        }
        let (mut parts, body) = req.into_parts();
        let path_args: Vec<String> = Path::<Vec<String>>::from_request_parts(&mut parts, services)
            .await
            .map(|Path(args)| args)
            .unwrap_or_default();
        let x_matrix = XMatrix::extract_from_http_headers(&parts.headers).map_err(|e| {
            unauthorized(format!("Missing or malformed X-Matrix authorization: {e}"))
        })?;
        if x_matrix
            .destination
            .as_ref()
            .is_some_and(|d| *d != services.server_name)
        {
            return Err(unauthorized("The request is addressed to another server."));
        }
        if services.config.is_server_denied(&x_matrix.origin) {
            return Err(Error::forbidden("Federation with your server is denied."));
        }
        let bytes = read_body(&parts, body, services.config.max_request_size as usize).await?;
        if !bytes.is_empty() && serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_err() {
            return Err(Error::not_json("The request body is not valid JSON."));
        }
        let key_id = x_matrix.key.to_string();
        let keys = services
            .server_public_keys(
                &x_matrix.origin,
                std::slice::from_ref(&key_id),
                utils::now_millis(),
            )
            .await?;
        if keys.is_empty() {
            return Err(unauthorized(format!(
                "Could not get the key {key_id} of {}.",
                x_matrix.origin
            )));
        }
        let key_map = [(x_matrix.origin.to_string(), keys)].into();
        let http_request = http::Request::from_parts(parts, &bytes[..]);
        x_matrix
            .verify_http_request(&http_request, &services.server_name, &key_map)
            .map_err(|e| unauthorized(format!("Bad X-Matrix signature: {e}")))?;
        let args: Vec<&str> = path_args.iter().map(String::as_str).collect();
        let body = T::try_from_http_request(http_request, &args).map_err(request_error)?;
        Ok(Fed {
            body,
            origin: x_matrix.origin,
        })
    }
}
