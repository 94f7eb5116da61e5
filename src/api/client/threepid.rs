//! Third-party identifiers (e-mail addresses, phone numbers). culvert verifies neither, so an
//! account never has one: the list is empty, asking for a verification token is refused with
//! the spec's error for an identifier the server does not accept, binding one fails its
//! authentication, and removing one finds nothing to remove. Clients read these answers and
//! hide their e-mail and phone settings.

use axum::Json;
use http::StatusCode;
use ruma::api::{
    client::account::{
        add_3pid::v3 as add_v3, bind_3pid::v3 as bind_v3, delete_3pid::v3 as delete_v3,
        get_3pids::v3 as list_v3, request_3pid_management_token_via_email::v3 as account_email_v3,
        request_3pid_management_token_via_msisdn::v3 as account_msisdn_v3,
        request_password_change_token_via_email::v3 as password_email_v3,
        request_password_change_token_via_msisdn::v3 as password_msisdn_v3,
        request_registration_token_via_email::v3 as register_email_v3,
        request_registration_token_via_msisdn::v3 as register_msisdn_v3,
        unbind_3pid::v3 as unbind_v3,
    },
    error::ErrorKind,
};
use serde_json::{Value, json};

use crate::{Error, Result, api::ruma::Ruma};

fn no_verification() -> Error {
    Error::new(
        StatusCode::FORBIDDEN,
        ErrorKind::ThreepidDenied,
        "This server does not verify e-mail addresses or phone numbers.",
    )
}

fn no_account_has_one() -> Error {
    Error::new(
        StatusCode::BAD_REQUEST,
        ErrorKind::ThreepidNotFound,
        "No account on this server has an e-mail address or phone number: reset the password \
         with an administrator's help.",
    )
}

fn never_validated() -> Error {
    Error::new(
        StatusCode::BAD_REQUEST,
        ErrorKind::ThreepidAuthFailed,
        "This server validates no e-mail addresses or phone numbers, so there is none to add.",
    )
}

/// `GET /account/3pid`: none.
pub async fn list(_: Ruma<list_v3::Request>) -> Json<Value> {
    Json(json!({ "threepids": [] }))
}

pub async fn register_email(_: Ruma<register_email_v3::Request>) -> Result<Json<Value>> {
    Err(no_verification())
}

pub async fn register_msisdn(_: Ruma<register_msisdn_v3::Request>) -> Result<Json<Value>> {
    Err(no_verification())
}

pub async fn account_email(_: Ruma<account_email_v3::Request>) -> Result<Json<Value>> {
    Err(no_verification())
}

pub async fn account_msisdn(_: Ruma<account_msisdn_v3::Request>) -> Result<Json<Value>> {
    Err(no_verification())
}

pub async fn password_email(_: Ruma<password_email_v3::Request>) -> Result<Json<Value>> {
    Err(no_account_has_one())
}

pub async fn password_msisdn(_: Ruma<password_msisdn_v3::Request>) -> Result<Json<Value>> {
    Err(no_account_has_one())
}

pub async fn add(_: Ruma<add_v3::Request>) -> Result<Json<Value>> {
    Err(never_validated())
}

pub async fn bind(_: Ruma<bind_v3::Request>) -> Result<Json<Value>> {
    Err(never_validated())
}

/// `POST /account/3pid/delete` and `/unbind`: nothing to remove, and no identity server was
/// ever told of one.
pub async fn delete(_: Ruma<delete_v3::Request>) -> Json<Value> {
    Json(json!({ "id_server_unbind_result": "no-support" }))
}

pub async fn unbind(_: Ruma<unbind_v3::Request>) -> Json<Value> {
    Json(json!({ "id_server_unbind_result": "no-support" }))
}
