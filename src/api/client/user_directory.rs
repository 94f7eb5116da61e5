//! `POST /user_directory/search`.

use axum::extract;
use ruma::{OwnedMxcUri, api::client::user_directory::search_users::v3 as search_v3};

use crate::{
    Result,
    api::ruma::{Ruma, RumaResponse, State},
};

/// The most results one search returns, whatever `limit` asks.
const MAX_LIMIT: usize = 100;

pub async fn search(
    extract::State(services): extract::State<State>,
    request: Ruma<search_v3::Request>,
) -> Result<RumaResponse<search_v3::Response>> {
    let body = &request.body;
    let limit = usize::try_from(u64::from(body.limit))
        .unwrap_or(MAX_LIMIT)
        .min(MAX_LIMIT);
    let (users, limited) = services.search_users(request.user(), &body.search_term, limit)?;
    let results = users
        .into_iter()
        .map(|user| {
            let mut result = search_v3::User::new(user.user_id);
            result.display_name = user.display_name;
            result.avatar_url = user.avatar_url.map(OwnedMxcUri::from);
            result
        })
        .collect();
    Ok(RumaResponse(search_v3::Response::new(results, limited)))
}
