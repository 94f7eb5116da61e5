//! Thread subscriptions (MSC4306, unstable paths): subscribe, read and unsubscribe one thread;
//! and MSC4308's `/thread_subscriptions`, which pages back through a user's subscription
//! changes. Without `thread_subscriptions` in the config they answer 404 `M_UNRECOGNIZED`.

use axum::{Json, extract};
use http::StatusCode;
use ruma::api::client::threads::{
    get_thread_subscription::unstable as get_v1,
    get_thread_subscriptions_changes::unstable as changes_v1,
    subscribe_thread::unstable as subscribe_v1, unsubscribe_thread::unstable as unsubscribe_v1,
};
use serde_json::{Value, json};

use crate::{
    Error, Result,
    api::ruma::{Ruma, State},
    service::rooms::{
        sliding_sync::connection::parse_pos,
        thread_subscriptions::{Changes, MAX_CHANGES, Subscribe},
    },
};

fn require_enabled(services: &State) -> Result<()> {
    if services.thread_subscriptions_enabled() {
        Ok(())
    } else {
        Err(Error::unrecognized(
            StatusCode::NOT_FOUND,
            "Thread subscriptions are not enabled on this server.",
        ))
    }
}

pub async fn subscribe(
    extract::State(services): extract::State<State>,
    request: Ruma<subscribe_v1::Request>,
) -> Result<Json<Value>> {
    require_enabled(&services)?;
    let body = &request.body;
    let how = match &body.automatic {
        Some(cause) => Subscribe::Automatic(cause.clone()),
        None => Subscribe::Manual,
    };
    services
        .subscribe_thread(request.viewer(), &body.room_id, &body.thread_root, how)
        .await?;
    Ok(Json(json!({})))
}

pub async fn get(
    extract::State(services): extract::State<State>,
    request: Ruma<get_v1::Request>,
) -> Result<Json<Value>> {
    require_enabled(&services)?;
    let body = &request.body;
    let automatic =
        services.thread_subscription(request.viewer(), &body.room_id, &body.thread_root)?;
    Ok(Json(json!({ "automatic": automatic })))
}

pub async fn unsubscribe(
    extract::State(services): extract::State<State>,
    request: Ruma<unsubscribe_v1::Request>,
) -> Result<Json<Value>> {
    require_enabled(&services)?;
    let body = &request.body;
    services
        .unsubscribe_thread(request.viewer(), &body.room_id, &body.thread_root)
        .await?;
    Ok(Json(json!({})))
}

/// A `from`/`to` token: a change's stamp as given in `end`/`prev_batch`, or (for `to`) a
/// sliding-sync `pos`.
fn token(value: Option<&str>, name: &str) -> Result<Option<u64>> {
    value
        .map(|token| {
            token
                .parse::<u64>()
                .ok()
                .or_else(|| parse_pos(token).map(|(_, count)| count))
                .ok_or_else(|| {
                    Error::invalid_param(format!("`{name}` is not a token of this server."))
                })
        })
        .transpose()
}

/// `GET /thread_subscriptions?dir=b` (MSC4308): the changes before `from` (the newest without
/// it) and after `to`, newest first; `end` when more remain.
pub async fn changes(
    extract::State(services): extract::State<State>,
    extract::RawQuery(query): extract::RawQuery,
    request: Ruma<changes_v1::Request>,
) -> Result<Json<Value>> {
    require_enabled(&services)?;
    // Only backward paging exists (ruma keeps `dir` to itself).
    let forward = query.as_deref().unwrap_or_default().split('&').any(|pair| {
        pair.split_once('=')
            .is_some_and(|(k, v)| k == "dir" && v != "b")
    });
    if forward {
        return Err(Error::invalid_param("Only `dir=b` is supported."));
    }
    let body = &request.body;
    let limit = match body.limit.map(u64::from) {
        Some(0) => return Err(Error::invalid_param("`limit` must be above zero.")),
        Some(limit) => usize::try_from(limit)
            .unwrap_or(MAX_CHANGES)
            .min(MAX_CHANGES),
        None => MAX_CHANGES,
    };
    let before = token(body.from.as_deref(), "from")?;
    let after = token(body.to.as_deref(), "to")?.unwrap_or(0);
    let Changes {
        subscribed,
        unsubscribed,
        more_before,
    } = services.thread_subscription_changes(request.user(), after, before, limit)?;
    let mut answer = json!({});
    if !subscribed.is_empty() {
        answer["subscribed"] = Value::Object(subscribed);
    }
    if !unsubscribed.is_empty() {
        answer["unsubscribed"] = Value::Object(unsubscribed);
    }
    if let Some(end) = more_before {
        answer["end"] = json!(end.to_string());
    }
    Ok(Json(answer))
}
