//! `GET /_matrix/federation/v1/version` and the notary endpoints `/_matrix/key/v2/query`.

use axum::extract;
use ruma::{
    api::federation::discovery::{
        get_remote_server_keys, get_remote_server_keys_batch, get_server_version,
    },
    serde::Raw,
};

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse, State},
};

pub async fn version(
    _: Ruma<get_server_version::v1::Request>,
) -> Result<RumaResponse<get_server_version::v1::Response>> {
    let mut server = get_server_version::v1::Server::new();
    server.name = Some("culvert".to_owned());
    server.version = Some(env!("CARGO_PKG_VERSION").to_owned());
    let mut response = get_server_version::v1::Response::new();
    response.server = Some(server);
    Ok(RumaResponse(response))
}

fn raw_documents<T>(documents: Vec<ruma::CanonicalJsonObject>) -> Result<Vec<Raw<T>>> {
    documents
        .into_iter()
        .map(|d| {
            serde_json::value::to_raw_value(&d)
                .map(Raw::from_json)
                .map_err(|e| Error::internal(e.to_string()))
        })
        .collect()
}

pub async fn query_one(
    extract::State(services): extract::State<State>,
    request: Ruma<get_remote_server_keys::v2::Request>,
) -> Result<RumaResponse<get_remote_server_keys::v2::Response>> {
    let documents = services
        .notary_keys(
            &request.body.server_name,
            Some(request.body.minimum_valid_until_ts),
        )
        .await?;
    Ok(RumaResponse(get_remote_server_keys::v2::Response::new(
        raw_documents(documents)?,
    )))
}

/// At most this many servers per batch query: each may need a fetch.
const MAX_BATCH: usize = 50;

pub async fn query_batch(
    extract::State(services): extract::State<State>,
    request: Ruma<get_remote_server_keys_batch::v2::Request>,
) -> Result<RumaResponse<get_remote_server_keys_batch::v2::Response>> {
    if request.body.server_keys.len() > MAX_BATCH {
        return Err(Error::invalid_param(format!(
            "At most {MAX_BATCH} servers per query."
        )));
    }
    let mut documents = Vec::new();
    for (server, criteria) in &request.body.server_keys {
        let minimum = criteria
            .values()
            .filter_map(|c| c.minimum_valid_until_ts)
            .max();
        documents.extend(services.notary_keys(server, minimum).await?);
    }
    Ok(RumaResponse(
        get_remote_server_keys_batch::v2::Response::new(raw_documents(documents)?),
    ))
}
