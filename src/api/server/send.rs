//! `PUT /_matrix/federation/v1/send/{txnId}`: PDUs and EDUs from another server.

use axum::extract;
use ruma::api::federation::transactions::send_transaction_message;

use crate::{
    Error, Result,
    api::{
        ruma::{RumaResponse, State},
        server::auth::Fed,
    },
    service::federation::inbound::MAX_TXN_EDUS,
};

pub async fn send(
    extract::State(services): extract::State<State>,
    request: Fed<send_transaction_message::v1::Request>,
) -> Result<RumaResponse<send_transaction_message::v1::Response>> {
    let body = &request.body;
    if body.origin != request.origin {
        return Err(Error::forbidden(
            "The transaction's origin is not the server that signed it.",
        ));
    }
    if body.edus.len() > MAX_TXN_EDUS {
        return Err(Error::bad_json(format!(
            "A transaction carries at most {MAX_TXN_EDUS} EDUs."
        )));
    }
    let pdus = services
        .handle_transaction_pdus(&request.origin, body.transaction_id.as_str(), &body.pdus)
        .await?;
    services
        .handle_transaction_edus(&request.origin, &body.edus)
        .await;
    Ok(RumaResponse(send_transaction_message::v1::Response::new(
        pdus,
    )))
}
