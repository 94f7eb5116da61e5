//! Server-server (federation) API handlers: where other homeservers' requests enter. Signed
//! requests go through the [`auth::Fed`] extractor, which checks the `X-Matrix` signature.

pub mod auth;
mod discovery;
mod event;
mod keys;
mod media;
mod membership;
mod openid;
mod query;
mod read;
mod send;
mod space;
mod user;

use axum::Router;
use ruma::api::federation as f;

use super::ruma::{RouterExt, State};

pub fn routes(router: Router<State>) -> Router<State> {
    router
        .ruma_route::<f::discovery::get_server_keys::v2::Request, _, _>(keys::server_keys)
        .ruma_route::<f::discovery::get_server_version::v1::Request, _, _>(discovery::version)
        .ruma_route::<f::discovery::get_remote_server_keys::v2::Request, _, _>(discovery::query_one)
        .ruma_route::<f::discovery::get_remote_server_keys_batch::v2::Request, _, _>(
            discovery::query_batch,
        )
        .ruma_route::<f::query::get_profile_information::v1::Request, _, _>(query::profile)
        .ruma_route::<f::query::get_room_information::v1::Request, _, _>(query::directory)
        .ruma_route::<f::membership::prepare_join_event::v1::Request, _, _>(membership::make_join)
        .ruma_route::<f::membership::create_join_event::v2::Request, _, _>(membership::send_join)
        .ruma_route::<f::membership::prepare_leave_event::v1::Request, _, _>(membership::make_leave)
        .ruma_route::<f::membership::create_leave_event::v2::Request, _, _>(membership::send_leave)
        .ruma_route::<f::membership::create_invite::v2::Request, _, _>(membership::invite)
        .ruma_route::<f::transactions::send_transaction_message::v1::Request, _, _>(send::send)
        .ruma_route::<f::event::get_event::v1::Request, _, _>(event::event)
        .ruma_route::<f::event::get_missing_events::v1::Request, _, _>(event::missing_events)
        // Reads of rooms, devices, keys and the directory (fedread).
        .ruma_route::<f::event::get_room_state::v1::Request, _, _>(read::state)
        .ruma_route::<f::event::get_room_state_ids::v1::Request, _, _>(read::state_ids)
        .ruma_route::<f::backfill::get_backfill::v1::Request, _, _>(read::backfill)
        .ruma_route::<f::authorization::get_event_authorization::v1::Request, _, _>(
            read::event_auth,
        )
        .ruma_route::<f::event::get_event_by_timestamp::v1::Request, _, _>(read::timestamp_to_event)
        .ruma_route::<f::device::get_devices::v1::Request, _, _>(user::devices)
        .ruma_route::<f::keys::get_keys::v1::Request, _, _>(user::keys_query)
        .ruma_route::<f::keys::claim_keys::v1::Request, _, _>(user::keys_claim)
        .ruma_route::<f::directory::get_public_rooms::v1::Request, _, _>(user::public_rooms)
        .ruma_route::<f::directory::get_public_rooms_filtered::v1::Request, _, _>(
            user::public_rooms_filtered,
        )
        // Media (fedmedia): this server's media for other servers, multipart/mixed.
        .ruma_route::<f::authenticated_media::get_content::v1::Request, _, _>(media::download)
        .ruma_route::<f::authenticated_media::get_content_thumbnail::v1::Request, _, _>(
            media::thumbnail,
        )
        // Knocking and the space hierarchy (fedmisc).
        .ruma_route::<f::membership::prepare_knock_event::v1::Request, _, _>(membership::make_knock)
        .ruma_route::<f::membership::create_knock_event::v1::Request, _, _>(membership::send_knock)
        .ruma_route::<f::space::get_hierarchy::v1::Request, _, _>(space::hierarchy)
        .ruma_route::<f::openid::get_openid_userinfo::v1::Request, _, _>(openid::userinfo)
}
