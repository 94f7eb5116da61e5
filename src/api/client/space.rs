//! Spaces: `GET /rooms/{roomId}/hierarchy`, the rooms under a space.

use axum::{Json, extract};
use ruma::api::client::space::get_hierarchy::v1 as hierarchy_v1;
use serde_json::{Value, json};

use crate::{
    Error, Result,
    api::ruma::{Ruma, State},
    service::rooms::spaces::{HierarchyQuery, MAX_DEPTH},
};

/// Rooms per page when the client names no limit, and the most it may ask for.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 200;

pub async fn hierarchy(
    extract::State(services): extract::State<State>,
    request: Ruma<hierarchy_v1::Request>,
) -> Result<Json<Value>> {
    let body = &request.body;
    let number =
        |n: Option<ruma::UInt>| n.map(|n| usize::try_from(u64::from(n)).unwrap_or(usize::MAX));
    let limit = match number(body.limit) {
        Some(0) => return Err(Error::invalid_param("limit must be greater than zero.")),
        Some(limit) => limit.min(MAX_LIMIT),
        None => DEFAULT_LIMIT,
    };
    let max_depth = number(body.max_depth).map_or(MAX_DEPTH, |d| d.min(MAX_DEPTH));
    // The token: how many rooms of the same walk earlier pages returned, and the walk's
    // settings, which a later page may not change.
    let skip = match body.from.as_deref() {
        None => 0,
        Some(token) => {
            let expected_tail = format!("_{max_depth}_{}", u8::from(body.suggested_only));
            token
                .strip_suffix(&expected_tail)
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| {
                    Error::invalid_param(
                        "Unknown pagination token, or max_depth or suggested_only changed.",
                    )
                })?
        }
    };
    let page = services
        .space_hierarchy(
            request.user(),
            &body.room_id,
            &HierarchyQuery {
                suggested_only: body.suggested_only,
                max_depth,
                limit,
                skip,
            },
        )
        .await?;
    let mut response = json!({ "rooms": page.rooms });
    if let Some(next) = page.next {
        response["next_batch"] =
            format!("{next}_{max_depth}_{}", u8::from(body.suggested_only)).into();
    }
    Ok(Json(response))
}
