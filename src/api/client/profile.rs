//! Profiles: the whole profile and single fields (`displayname`, `avatar_url`, custom keys).

use axum::extract;
use ruma::{
    UserId,
    api::client::profile::{
        delete_profile_field::v3 as delete_field_v3, get_profile::v3 as get_profile_v3,
        get_profile_field::v3 as get_field_v3, set_profile_field::v3 as set_field_v3,
    },
    profile::{ProfileFieldValue, UserProfile},
};

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse, State},
    service::{Services, rooms::profile::MEMBER_PROFILE_FIELDS},
};

/// The spec's limit on a whole profile, in bytes of JSON.
const MAX_PROFILE_SIZE: usize = 64 * 1024;
/// The spec's limit on a profile key name, in bytes.
const MAX_KEY_SIZE: usize = 255;

/// Other servers' users' profiles come from their servers (when federating).
fn is_remote(services: &Services, user_id: &UserId) -> bool {
    user_id.server_name() != services.server_name && services.federation.enabled
}

/// Profiles of local, active accounts; other local names are 404.
fn require_known_user(services: &Services, user_id: &UserId) -> Result<()> {
    if user_id.server_name() != services.server_name || !services.users.is_active(user_id)? {
        return Err(Error::not_found("No profile for that user."));
    }
    Ok(())
}

fn require_own(sender: &UserId, target: &UserId) -> Result<()> {
    if sender != target {
        return Err(Error::forbidden("You may only change your own profile."));
    }
    Ok(())
}

/// A new display name or avatar goes to the user's rooms as a new member event.
async fn propagate_if_member_field(services: &Services, user_id: &UserId, field: &str) {
    if MEMBER_PROFILE_FIELDS.contains(&field) {
        services.propagate_profile(user_id).await;
    }
}

pub async fn get_profile(
    extract::State(services): extract::State<State>,
    request: Ruma<get_profile_v3::Request>,
) -> Result<RumaResponse<get_profile_v3::Response>> {
    let user_id = &request.body.user_id;
    let fields = if is_remote(&services, user_id) {
        services.remote_profile(user_id, None).await?
    } else {
        services.query_appservices_for_user(user_id).await?;
        require_known_user(&services, user_id)?;
        services.users.profile(user_id)?
    };
    let mut profile = UserProfile::new();
    for (field, value) in fields {
        profile.set(field, value);
    }
    let mut response = get_profile_v3::Response::new();
    response.data = profile;
    Ok(RumaResponse(response))
}

pub async fn get_field(
    extract::State(services): extract::State<State>,
    request: Ruma<get_field_v3::Request>,
) -> Result<RumaResponse<get_field_v3::Response>> {
    let user_id = &request.body.user_id;
    let field = request.body.field.as_str();
    let value = if is_remote(&services, user_id) {
        services
            .remote_profile(user_id, Some(field))
            .await?
            .remove(field)
    } else {
        services.query_appservices_for_user(user_id).await?;
        require_known_user(&services, user_id)?;
        services.users.profile_field(user_id, field)?
    };
    let value = value.ok_or_else(|| Error::not_found("That profile field is not set."))?;
    let value = ProfileFieldValue::new(field, value)
        .map_err(|e| Error::internal(format!("stored profile field unreadable: {e}")))?;
    Ok(RumaResponse(get_field_v3::Response::new(value)))
}

pub async fn set_field(
    extract::State(services): extract::State<State>,
    request: Ruma<set_field_v3::Request>,
) -> Result<RumaResponse<set_field_v3::Response>> {
    let user_id = &request.body.user_id;
    require_own(request.user(), user_id)?;
    let field = request.body.value.field_name();
    let value = request.body.value.value().into_owned();
    if field.as_str().len() > MAX_KEY_SIZE {
        return Err(Error::new(
            http::StatusCode::BAD_REQUEST,
            ruma::api::error::ErrorKind::KeyTooLarge,
            "Profile key names are limited to 255 bytes.",
        ));
    }
    let mut profile = services.users.profile(user_id)?;
    profile.insert(field.as_str().to_owned(), value.clone());
    if serde_json::to_vec(&profile)?.len() > MAX_PROFILE_SIZE {
        return Err(Error::new(
            http::StatusCode::BAD_REQUEST,
            ruma::api::error::ErrorKind::ProfileTooLarge,
            "The profile would exceed 64 KiB.",
        ));
    }
    services
        .users
        .set_profile_field(user_id, field.as_str(), Some(&value))?;
    propagate_if_member_field(&services, user_id, field.as_str()).await;
    Ok(RumaResponse(set_field_v3::Response::new()))
}

pub async fn delete_field(
    extract::State(services): extract::State<State>,
    request: Ruma<delete_field_v3::Request>,
) -> Result<RumaResponse<delete_field_v3::Response>> {
    let user_id = &request.body.user_id;
    require_own(request.user(), user_id)?;
    services
        .users
        .set_profile_field(user_id, request.body.field.as_str(), None)?;
    propagate_if_member_field(&services, user_id, request.body.field.as_str()).await;
    Ok(RumaResponse(delete_field_v3::Response::new()))
}
