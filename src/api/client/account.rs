//! The account itself: `/account/whoami`, `/account/password`, `/account/deactivate`.

use axum::extract;
use ruma::api::client::account::{
    ThirdPartyIdRemovalStatus, change_password::v3 as password_v3, deactivate::v3 as deactivate_v3,
    whoami::v3 as whoami_v3,
};

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse, State},
    service::users,
};

pub async fn whoami(
    extract::State(services): extract::State<State>,
    request: Ruma<whoami_v3::Request>,
) -> Result<RumaResponse<whoami_v3::Response>> {
    let is_guest = services.users.get(request.user())?.is_some_and(|r| r.guest);
    let mut response = whoami_v3::Response::new(request.user().to_owned(), is_guest);
    response.device_id = Some(request.device().to_owned());
    Ok(RumaResponse(response))
}

pub async fn change_password(
    extract::State(services): extract::State<State>,
    request: Ruma<password_v3::Request>,
) -> Result<RumaResponse<password_v3::Response>> {
    // Password reset by e-mail is not offered, so the caller must be logged in.
    let (Some(user_id), Some(device_id)) = (&request.sender_user, &request.sender_device) else {
        return Err(Error::missing_token());
    };
    let purpose = format!("password:{user_id}");
    services
        .confirm_password(&purpose, request.body.auth.as_ref(), user_id)
        .await?;

    let new_password = request.body.new_password.clone();
    let hash = users::hash_password_bounded(new_password).await?;
    let logout_devices = request.body.logout_devices;
    services
        .users
        .set_password_hash(user_id, Some(hash), |batch| {
            if logout_devices {
                services
                    .devices
                    .delete_all_into(batch, user_id, Some(&**device_id))
            } else {
                Ok(())
            }
        })
        .await?;
    if logout_devices {
        // The other devices are gone: a device-list change (see `Services::delete_devices`).
        services.announce_device_list_change(&[user_id]).await?;
    }
    tracing::info!(user = %user_id, logout_devices, "password changed");
    Ok(RumaResponse(password_v3::Response::new()))
}

pub async fn deactivate(
    extract::State(services): extract::State<State>,
    request: Ruma<deactivate_v3::Request>,
) -> Result<RumaResponse<deactivate_v3::Response>> {
    let Some(user_id) = &request.sender_user else {
        return Err(Error::missing_token());
    };
    let purpose = format!("deactivate:{user_id}");
    services
        .confirm_password(&purpose, request.body.auth.as_ref(), user_id)
        .await?;
    services
        .deactivate_account(user_id, request.body.erase)
        .await?;
    Ok(RumaResponse(deactivate_v3::Response::new(
        ThirdPartyIdRemovalStatus::NoSupport,
    )))
}
