//! Synapse's registration token admin API: tokens admins hand out so that people may register
//! (`service::registration_tokens`).

use axum::{
    Json,
    extract::{self, Path},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Admin, AdminJson, AdminQuery, present};
use crate::{
    Error, Result,
    api::ruma::State,
    service::registration_tokens::{DEFAULT_LEN, TokenRecord},
    utils,
};

fn token_json(token: &str, record: &TokenRecord) -> Value {
    json!({
        "token": token,
        "uses_allowed": record.uses_allowed,
        // Registrations between the token stage and the account: not tracked here.
        "pending": 0,
        "completed": record.completed,
        "expiry_time": record.expiry_time,
    })
}

fn no_such(token: &str) -> Error {
    Error::not_found(format!("No such registration token: {token}"))
}

/// An expiry time must lie ahead.
fn check_expiry(expiry_time: Option<u64>) -> Result<()> {
    if expiry_time.is_some_and(|t| t <= utils::now_millis()) {
        return Err(Error::invalid_param("expiry_time must not be in the past"));
    }
    Ok(())
}

#[derive(Deserialize)]
pub struct ListQuery {
    valid: Option<String>,
}

/// `GET /v1/registration_tokens` (`valid=true|false` to filter).
pub async fn list(
    extract::State(services): extract::State<State>,
    _: Admin,
    AdminQuery(query): AdminQuery<ListQuery>,
) -> Result<Json<Value>> {
    let valid = match query.valid.as_deref() {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => return Err(Error::invalid_param("`valid` must be true or false.")),
    };
    let now = utils::now_millis();
    let tokens: Vec<Value> = services
        .registration_tokens
        .list()?
        .iter()
        .filter(|(_, record)| valid.is_none_or(|v| record.valid(now) == v))
        .map(|(token, record)| token_json(token, record))
        .collect();
    Ok(Json(json!({ "registration_tokens": tokens })))
}

/// `GET /v1/registration_tokens/{token}`.
pub async fn get(
    extract::State(services): extract::State<State>,
    _: Admin,
    Path(token): Path<String>,
) -> Result<Json<Value>> {
    let record = services
        .registration_tokens
        .get(&token)?
        .ok_or_else(|| no_such(&token))?;
    Ok(Json(token_json(&token, &record)))
}

#[derive(Deserialize)]
pub struct NewToken {
    token: Option<String>,
    uses_allowed: Option<u64>,
    expiry_time: Option<u64>,
    length: Option<usize>,
}

/// `POST /v1/registration_tokens/new`: the token given, or a random one.
pub async fn create(
    extract::State(services): extract::State<State>,
    admin: Admin,
    AdminJson(body): AdminJson<NewToken>,
) -> Result<Json<Value>> {
    check_expiry(body.expiry_time)?;
    let (token, record) = services
        .registration_tokens
        .create(
            body.token,
            body.length.unwrap_or(DEFAULT_LEN),
            body.uses_allowed,
            body.expiry_time,
        )
        .await?;
    admin.audit("create registration token", &token);
    Ok(Json(token_json(&token, &record)))
}

#[derive(Deserialize)]
pub struct UpdateToken {
    #[serde(default, deserialize_with = "present")]
    uses_allowed: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    expiry_time: Option<Option<u64>>,
}

/// `PUT /v1/registration_tokens/{token}`: new limits (`null`: none).
pub async fn update(
    extract::State(services): extract::State<State>,
    admin: Admin,
    Path(token): Path<String>,
    AdminJson(body): AdminJson<UpdateToken>,
) -> Result<Json<Value>> {
    check_expiry(body.expiry_time.flatten())?;
    let record = services
        .registration_tokens
        .update(&token, body.uses_allowed, body.expiry_time)
        .await?
        .ok_or_else(|| no_such(&token))?;
    admin.audit("change registration token", &token);
    Ok(Json(token_json(&token, &record)))
}

/// `DELETE /v1/registration_tokens/{token}`.
pub async fn delete(
    extract::State(services): extract::State<State>,
    admin: Admin,
    Path(token): Path<String>,
) -> Result<Json<Value>> {
    if !services.registration_tokens.delete(&token).await? {
        return Err(no_such(&token));
    }
    admin.audit("delete registration token", &token);
    Ok(Json(json!({})))
}
