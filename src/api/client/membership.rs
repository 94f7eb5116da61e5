//! Membership: join, leave, invite, kick, ban, unban; `/joined_rooms`, `/joined_members`.

use std::collections::BTreeMap;

use axum::extract;
use ruma::{
    OwnedRoomId,
    api::client::membership::{
        ban_user::v3 as ban_v3, invite_user::v3 as invite_v3, join_room_by_id::v3 as join_v3,
        join_room_by_id_or_alias::v3 as join_or_alias_v3, joined_members::v3 as joined_members_v3,
        joined_rooms::v3 as joined_rooms_v3, kick_user::v3 as kick_v3, leave_room::v3 as leave_v3,
        unban_user::v3 as unban_v3,
    },
    events::room::member::MembershipState,
};

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse, State},
};

pub async fn join_by_id(
    extract::State(services): extract::State<State>,
    request: Ruma<join_v3::Request>,
) -> Result<RumaResponse<join_v3::Response>> {
    let room_id = &request.body.room_id;
    let user = request.user();
    services
        .join_room(room_id, user, &[], request.body.reason.as_deref())
        .await?;
    Ok(RumaResponse(join_v3::Response::new(room_id.clone())))
}

pub async fn join_by_id_or_alias(
    extract::State(services): extract::State<State>,
    request: Ruma<join_or_alias_v3::Request>,
) -> Result<RumaResponse<join_or_alias_v3::Response>> {
    let (room_id, via) = match OwnedRoomId::try_from(request.body.room_id_or_alias.clone()) {
        Ok(room_id) => (room_id, request.body.via.clone()),
        // Ours (asking the appservices whose namespace it is in, when unknown), or another
        // server's (asking that server).
        Err(alias) if alias.server_name() == services.server_name => {
            let room_id = services
                .resolve_alias_with_appservices(&alias)
                .await?
                .ok_or_else(|| Error::not_found("No room has that alias."))?;
            (room_id, request.body.via.clone())
        }
        Err(alias) => {
            let (room_id, servers) = services.resolve_alias_anywhere(&alias).await?;
            let via = request.body.via.iter().cloned().chain(servers).collect();
            (room_id, via)
        }
    };
    let user = request.user();
    services
        .join_room(&room_id, user, &via, request.body.reason.as_deref())
        .await?;
    Ok(RumaResponse(join_or_alias_v3::Response::new(room_id)))
}

pub async fn leave(
    extract::State(services): extract::State<State>,
    request: Ruma<leave_v3::Request>,
) -> Result<RumaResponse<leave_v3::Response>> {
    let user = request.user();
    let room_id = &request.body.room_id;
    services
        .set_membership(
            room_id,
            user,
            user,
            MembershipState::Leave,
            request.body.reason.as_deref(),
        )
        .await?;
    Ok(RumaResponse(leave_v3::Response::new()))
}

pub async fn invite(
    extract::State(services): extract::State<State>,
    request: Ruma<invite_v3::Request>,
) -> Result<RumaResponse<invite_v3::Response>> {
    let invite_v3::InvitationRecipient::UserId(recipient) = &request.body.recipient else {
        return Err(Error::new(
            http::StatusCode::BAD_REQUEST,
            ruma::api::error::ErrorKind::Unknown,
            "Third-party invites are not supported.",
        ));
    };
    let room_id = &request.body.room_id;
    let reason = recipient.reason.as_deref();
    if request.shadow_banned() {
        return Ok(RumaResponse(invite_v3::Response::new()));
    }
    // A bridged user the bridge has not created yet: ask it first.
    services
        .query_appservices_for_user(&recipient.user_id)
        .await?;
    services
        .set_membership(
            room_id,
            request.user(),
            &recipient.user_id,
            MembershipState::Invite,
            reason,
        )
        .await?;
    Ok(RumaResponse(invite_v3::Response::new()))
}

pub async fn kick(
    extract::State(services): extract::State<State>,
    request: Ruma<kick_v3::Request>,
) -> Result<RumaResponse<kick_v3::Response>> {
    let body = &request.body;
    // The room's view (`room_members`): the target may have forgotten the room.
    let current = services
        .members
        .member_state(&body.room_id, &body.user_id)?;
    if !current.is_some_and(|m| {
        m == MembershipState::Join || m == MembershipState::Invite || m == MembershipState::Knock
    }) {
        return Err(Error::forbidden("That user is not in the room."));
    }
    services
        .set_membership(
            &body.room_id,
            request.user(),
            &body.user_id,
            MembershipState::Leave,
            body.reason.as_deref(),
        )
        .await?;
    Ok(RumaResponse(kick_v3::Response::new()))
}

pub async fn ban(
    extract::State(services): extract::State<State>,
    request: Ruma<ban_v3::Request>,
) -> Result<RumaResponse<ban_v3::Response>> {
    let body = &request.body;
    services
        .set_membership(
            &body.room_id,
            request.user(),
            &body.user_id,
            MembershipState::Ban,
            body.reason.as_deref(),
        )
        .await?;
    Ok(RumaResponse(ban_v3::Response::new()))
}

pub async fn unban(
    extract::State(services): extract::State<State>,
    request: Ruma<unban_v3::Request>,
) -> Result<RumaResponse<unban_v3::Response>> {
    let body = &request.body;
    let current = services
        .members
        .member_state(&body.room_id, &body.user_id)?;
    if current.is_none_or(|m| m != MembershipState::Ban) {
        return Err(Error::forbidden("That user is not banned."));
    }
    services
        .set_membership(
            &body.room_id,
            request.user(),
            &body.user_id,
            MembershipState::Leave,
            body.reason.as_deref(),
        )
        .await?;
    Ok(RumaResponse(unban_v3::Response::new()))
}

pub async fn joined_rooms(
    extract::State(services): extract::State<State>,
    request: Ruma<joined_rooms_v3::Request>,
) -> Result<RumaResponse<joined_rooms_v3::Response>> {
    let rooms = services
        .members
        .rooms_of(request.user())?
        .into_iter()
        .filter(|(_, m)| m.membership == MembershipState::Join)
        .map(|(room_id, _)| room_id)
        .collect();
    Ok(RumaResponse(joined_rooms_v3::Response::new(rooms)))
}

pub async fn joined_members(
    extract::State(services): extract::State<State>,
    request: Ruma<joined_members_v3::Request>,
) -> Result<RumaResponse<joined_members_v3::Response>> {
    let room_id = &request.body.room_id;
    let mine = services.members.membership(room_id, request.user())?;
    if mine.is_none_or(|m| m.membership != MembershipState::Join) {
        return Err(Error::forbidden("You are not in this room."));
    }
    let mut joined = BTreeMap::new();
    for (user_id, membership) in services.members.of_room(room_id)? {
        if membership != MembershipState::Join {
            continue;
        }
        let mut member = joined_members_v3::RoomMember::new();
        if let Some(record) = services.members.membership(room_id, &user_id)? {
            let event = services.timeline.event_fields(room_id, &record.event_id)?;
            member.display_name = event["content"]["displayname"].as_str().map(str::to_owned);
            member.avatar_url = event["content"]["avatar_url"]
                .as_str()
                .map(ruma::OwnedMxcUri::from);
        }
        joined.insert(user_id, member);
    }
    Ok(RumaResponse(joined_members_v3::Response::new(joined)))
}
