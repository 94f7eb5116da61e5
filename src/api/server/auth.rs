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
        services
            .federation
            .destinations
            .heard_from(&x_matrix.origin);
        let args: Vec<&str> = path_args.iter().map(String::as_str).collect();
        let body = T::try_from_http_request(http_request, &args).map_err(request_error)?;
        Ok(Fed {
            body,
            origin: x_matrix.origin,
        })
    }
}

#[cfg(test)]
mod tests {
    mod properties {
        use std::sync::LazyLock;

        use proptest::prelude::*;
        use ruma::{
            OwnedServerName,
            api::federation::authentication::{XMatrix, XMatrixSigningInput},
            serde::Base64,
            signatures::{Ed25519KeyPair, PublicKeyMap},
        };

        static KEY: LazyLock<Ed25519KeyPair> = LazyLock::new(|| {
            Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "k1".into()).unwrap()
        });

        fn server_name() -> impl Strategy<Value = OwnedServerName> {
            "[a-z]{1,10}\\.(org|example)(:[1-9][0-9]{1,3})?"
                .prop_map(|name| OwnedServerName::try_from(name).unwrap())
        }

        fn request(path: &str, body: &[u8]) -> http::Request<Vec<u8>> {
            http::Request::builder()
                .method(if body.is_empty() { "GET" } else { "PUT" })
                .uri(format!("https://x{path}"))
                .body(body.to_vec())
                .unwrap()
        }

        proptest! {
            /// A request signed by a server for a destination: its `Authorization` header
            /// read back the way `Fed` reads it verifies for that destination with the
            /// origin's key — and not for another destination, nor with its body changed.
            #[test]
            fn signed_requests_verify_for_their_destination_only(
                origin in server_name(),
                destination in server_name(),
                other in server_name(),
                path in "/_matrix/federation/v1/[a-z]{1,10}(/[A-Za-z0-9._~!$:@-]{1,12})?(\\?[a-z]{1,5}=[A-Za-z0-9]{0,8})?",
                body in proptest::collection::btree_map("\\PC{1,8}", "\\PC{0,16}", 0..4),
            ) {
                let body = if body.is_empty() { Vec::new() } else { serde_json::to_vec(&body).unwrap() };
                let signed = request(&path, &body);
                let x_matrix = XMatrix::sign_http_request(
                    &signed,
                    XMatrixSigningInput::new(origin.clone(), destination.clone(), &KEY),
                )
                .unwrap();
                let mut headers = http::HeaderMap::new();
                headers.insert(
                    http::header::AUTHORIZATION,
                    http::HeaderValue::from_str(&x_matrix.to_string()).unwrap(),
                );
                let read = XMatrix::extract_from_http_headers(&headers).unwrap();
                prop_assert_eq!(&read.origin, &origin);
                let keys: PublicKeyMap = [(
                    origin.to_string(),
                    [("ed25519:k1".to_owned(), Base64::new(KEY.public_key().to_vec()))].into(),
                )]
                .into();
                prop_assert!(read.verify_http_request(&signed, &destination, &keys).is_ok());
                if other != destination {
                    prop_assert!(read.verify_http_request(&signed, &other, &keys).is_err());
                }
                if !body.is_empty() {
                    let mut object: serde_json::Map<String, serde_json::Value> =
                        serde_json::from_slice(&body).unwrap();
                    object.insert("added".into(), true.into());
                    let altered = request(&path, &serde_json::to_vec(&object).unwrap());
                    prop_assert!(read.verify_http_request(&altered, &destination, &keys).is_err());
                }
            }

            /// Any `Authorization` value is parsed or refused, never a panic.
            #[test]
            fn any_authorization_header_is_parsed_or_refused(
                value in "(X-Matrix )?[ -~]{0,120}",
            ) {
                let _ = XMatrix::parse(&value);
            }
        }
    }
}
