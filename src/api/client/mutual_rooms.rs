//! `GET /mutual_rooms` (spec v1.19, MSC2666; also at its unstable path): the rooms the user and
//! another user are both joined to, in room ID order, a page at a time.

use axum::{Json, extract};
use ruma::{
    OwnedRoomId, RoomId, UserId,
    api::client::membership::get_mutual_rooms::{unstable as unstable_v1, v1 as mutual_v1},
};
use serde_json::{Value, json};

use crate::{
    Error, Result,
    api::ruma::{Ruma, State},
};

/// Rooms per page.
const PAGE: usize = 100;

pub async fn mutual_rooms(
    extract::State(services): extract::State<State>,
    request: Ruma<mutual_v1::Request>,
) -> Result<Json<Value>> {
    let body = &request.body;
    let (joined, count, next) = page(
        &services,
        request.user(),
        &body.user_id,
        body.from.as_deref(),
    )?;
    let mut answer = json!({ "joined": joined, "count": count });
    if let Some(next) = next {
        answer["next_batch"] = json!(next);
    }
    Ok(Json(answer))
}

/// The unstable path (Element and Synapse's first form): no `count`.
pub async fn mutual_rooms_unstable(
    extract::State(services): extract::State<State>,
    request: Ruma<unstable_v1::Request>,
) -> Result<Json<Value>> {
    let body = &request.body;
    let (joined, _, next) = page(
        &services,
        request.user(),
        &body.user_id,
        body.from.as_deref(),
    )?;
    let mut answer = json!({ "joined": joined });
    if let Some(next) = next {
        answer["next_batch"] = json!(next);
    }
    Ok(Json(answer))
}

/// One page after `from` (a room ID the previous page ended with), the total, and the token
/// of the next page.
fn page(
    services: &State,
    asker: &UserId,
    other: &UserId,
    from: Option<&str>,
) -> Result<(Vec<OwnedRoomId>, usize, Option<String>)> {
    if asker == other {
        return Err(Error::invalid_param(
            "Ask about another user: every room you are in is shared with yourself.",
        ));
    }
    let from = from
        .map(|token| {
            RoomId::parse(token)
                .map_err(|_| Error::invalid_param("`from` is not a token of this server."))
        })
        .transpose()?;
    let all = services.mutual_rooms(asker, other)?;
    let count = all.len();
    let rest: Vec<OwnedRoomId> = all
        .into_iter()
        .filter(|room| from.as_ref().is_none_or(|from| room > from))
        .collect();
    let next = (rest.len() > PAGE).then(|| rest[PAGE - 1].to_string());
    Ok((rest.into_iter().take(PAGE).collect(), count, next))
}
