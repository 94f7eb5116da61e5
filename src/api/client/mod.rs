//! Client-server API handlers, one file per spec area.

mod account;
mod account_data;
pub(crate) mod admin;
mod appservice;
mod context;
mod dehydrated;
mod delayed_events;
mod devices;
mod directory;
mod discovery;
mod ephemeral;
mod filter;
mod key_backup;
mod keys;
mod lifecycle;
pub(crate) mod media;
mod membership;
mod mutual_rooms;
mod openid;
mod peeking;
mod presence;
mod profile;
mod push;
mod push_rules;
mod register;
mod relations;
mod report;
pub(crate) mod room;
mod search;
mod session;
mod sliding_sync;
mod space;
mod sync;
mod thread_subscriptions;
mod threepid;
mod to_device;
mod user_directory;
mod voip;

use axum::Router;
use ruma::api::client as c;

use super::ruma::{RouterExt, State};

/// Mounts every client-server endpoint culvert implements. Anything else answers 404
/// `M_UNRECOGNIZED` through the router's fallback.
pub fn routes(router: Router<State>) -> Router<State> {
    discovery::well_known_server(router)
        .ruma_route::<c::discovery::get_supported_versions::Request, _, _>(discovery::versions)
        .ruma_route::<c::discovery::discover_homeserver::Request, _, _>(
            discovery::well_known_client,
        )
        .ruma_route::<c::discovery::get_capabilities::v3::Request, _, _>(discovery::capabilities)
        .ruma_route::<c::discovery::discover_policy_server::Request, _, _>(
            discovery::policy_server,
        )
        .ruma_route::<c::voip::get_turn_server_info::v3::Request, _, _>(voip::turn_server)
        .ruma_route::<c::rtc::transports::v1::Request, _, _>(discovery::rtc_transports)
        .plain_route(
            "/_matrix/client/v1/rtc/transports",
            axum::routing::get(discovery::rtc_transports),
        )
        .ruma_route::<c::sync::sync_events::v5::Request, _, _>(sliding_sync::sliding_sync)
        .ruma_route::<c::account::register::v3::Request, _, _>(register::register)
        .ruma_route::<c::account::get_username_availability::v3::Request, _, _>(register::available)
        .ruma_route::<c::account::check_registration_token_validity::v1::Request, _, _>(
            register::token_validity,
        )
        .ruma_route::<c::session::get_login_types::v3::Request, _, _>(session::login_types)
        .ruma_route::<c::session::login::v3::Request, _, _>(session::login)
        .ruma_route::<c::session::logout::v3::Request, _, _>(session::logout)
        .ruma_route::<c::session::logout_all::v3::Request, _, _>(session::logout_all)
        .ruma_route::<c::session::refresh_token::v3::Request, _, _>(session::refresh)
        .ruma_route::<c::session::get_login_token::v1::Request, _, _>(session::get_login_token)
        // Third-party identifiers: none are verified here (see `threepid`).
        .ruma_route::<c::account::get_3pids::v3::Request, _, _>(threepid::list)
        .ruma_route::<c::account::request_registration_token_via_email::v3::Request, _, _>(
            threepid::register_email,
        )
        .ruma_route::<c::account::request_registration_token_via_msisdn::v3::Request, _, _>(
            threepid::register_msisdn,
        )
        .ruma_route::<c::account::request_3pid_management_token_via_email::v3::Request, _, _>(
            threepid::account_email,
        )
        .ruma_route::<c::account::request_3pid_management_token_via_msisdn::v3::Request, _, _>(
            threepid::account_msisdn,
        )
        .ruma_route::<c::account::request_password_change_token_via_email::v3::Request, _, _>(
            threepid::password_email,
        )
        .ruma_route::<c::account::request_password_change_token_via_msisdn::v3::Request, _, _>(
            threepid::password_msisdn,
        )
        .ruma_route::<c::account::add_3pid::v3::Request, _, _>(threepid::add)
        .ruma_route::<c::account::bind_3pid::v3::Request, _, _>(threepid::bind)
        .ruma_route::<c::account::delete_3pid::v3::Request, _, _>(threepid::delete)
        .ruma_route::<c::account::unbind_3pid::v3::Request, _, _>(threepid::unbind)
        .ruma_route::<c::peeking::listen_to_new_events::v3::Request, _, _>(peeking::events)
        .ruma_route::<c::peeking::get_current_state::v3::Request, _, _>(peeking::initial_sync)
        .ruma_route::<c::admin::get_user_info::v3::Request, _, _>(admin::whois)
        .ruma_route::<c::admin::is_user_locked::v1::Request, _, _>(admin::is_locked)
        .ruma_route::<c::admin::lock_user::v1::Request, _, _>(admin::lock)
        .ruma_route::<c::admin::is_user_suspended::v1::Request, _, _>(admin::is_suspended)
        .ruma_route::<c::admin::suspend_user::v1::Request, _, _>(admin::suspend)
        .ruma_route::<c::membership::get_mutual_rooms::v1::Request, _, _>(
            mutual_rooms::mutual_rooms,
        )
        .ruma_route::<c::membership::get_mutual_rooms::unstable::Request, _, _>(
            mutual_rooms::mutual_rooms_unstable,
        )
        .ruma_route::<c::account::whoami::v3::Request, _, _>(account::whoami)
        .ruma_route::<c::account::change_password::v3::Request, _, _>(account::change_password)
        .ruma_route::<c::account::deactivate::v3::Request, _, _>(account::deactivate)
        .ruma_route::<c::device::get_devices::v3::Request, _, _>(devices::list)
        .ruma_route::<c::device::get_device::v3::Request, _, _>(devices::get)
        .ruma_route::<c::device::update_device::v3::Request, _, _>(devices::update)
        .ruma_route::<c::device::delete_device::v3::Request, _, _>(devices::delete)
        .ruma_route::<c::device::delete_devices::v3::Request, _, _>(devices::delete_many)
        .ruma_route::<c::profile::get_profile::v3::Request, _, _>(profile::get_profile)
        .ruma_route::<c::profile::get_profile_field::v3::Request, _, _>(profile::get_field)
        .ruma_route::<c::profile::set_profile_field::v3::Request, _, _>(profile::set_field)
        .ruma_route::<c::profile::delete_profile_field::v3::Request, _, _>(profile::delete_field)
        .ruma_route::<c::config::get_global_account_data::v3::Request, _, _>(
            account_data::get_global,
        )
        .ruma_route::<c::config::set_global_account_data::v3::Request, _, _>(
            account_data::set_global,
        )
        .ruma_route::<c::room::create_room::v3::Request, _, _>(room::create_room)
        .ruma_route::<c::message::send_message_event::v3::Request, _, _>(room::send_message)
        .ruma_route::<c::state::send_state_event::v3::Request, _, _>(room::send_state)
        .ruma_route::<c::delayed_events::get_all_delayed_events::unstable::Request, _, _>(
            delayed_events::list,
        )
        .ruma_route::<c::delayed_events::get_delayed_event::unstable::Request, _, _>(
            delayed_events::get,
        )
        .ruma_route::<c::delayed_events::update_delayed_event::unstable_v1::Request, _, _>(
            delayed_events::update_with_body,
        )
        .ruma_route::<c::delayed_events::update_delayed_event::unstable_v2::Request, _, _>(
            delayed_events::update_by_path,
        )
        .ruma_route::<c::state::get_state_events::v3::Request, _, _>(room::get_state)
        .ruma_route::<c::state::get_state_event_for_key::v3::Request, _, _>(room::get_state_event)
        .ruma_route::<c::membership::join_room_by_id::v3::Request, _, _>(membership::join_by_id)
        .ruma_route::<c::membership::join_room_by_id_or_alias::v3::Request, _, _>(
            membership::join_by_id_or_alias,
        )
        .ruma_route::<c::membership::leave_room::v3::Request, _, _>(membership::leave)
        .ruma_route::<c::membership::invite_user::v3::Request, _, _>(membership::invite)
        .ruma_route::<c::membership::kick_user::v3::Request, _, _>(membership::kick)
        .ruma_route::<c::membership::ban_user::v3::Request, _, _>(membership::ban)
        .ruma_route::<c::membership::unban_user::v3::Request, _, _>(membership::unban)
        .ruma_route::<c::membership::joined_rooms::v3::Request, _, _>(membership::joined_rooms)
        .ruma_route::<c::membership::joined_members::v3::Request, _, _>(membership::joined_members)
        .ruma_route::<c::sync::sync_events::v3::Request, _, _>(sync::sync)
        .ruma_route::<c::message::get_message_events::v3::Request, _, _>(room::messages)
        .ruma_route::<c::redact::redact_event::v3::Request, _, _>(room::redact)
        .ruma_route::<c::room::get_room_event::v3::Request, _, _>(room::get_event)
        // Relations and threads.
        .ruma_route::<c::relations::get_relating_events::v1::Request, _, _>(
            relations::relating_events,
        )
        .ruma_route::<c::relations::get_relating_events_with_rel_type::v1::Request, _, _>(
            relations::relating_events_by_type,
        )
        .ruma_route::<
            c::relations::get_relating_events_with_rel_type_and_event_type::v1::Request,
            _,
            _,
        >(relations::relating_events_by_type_and_event_type)
        .ruma_route::<c::threads::get_threads::v1::Request, _, _>(relations::threads)
        // Thread subscriptions (MSC4306/MSC4308), when turned on.
        .ruma_route::<c::threads::subscribe_thread::unstable::Request, _, _>(
            thread_subscriptions::subscribe,
        )
        .ruma_route::<c::threads::get_thread_subscription::unstable::Request, _, _>(
            thread_subscriptions::get,
        )
        .ruma_route::<c::threads::unsubscribe_thread::unstable::Request, _, _>(
            thread_subscriptions::unsubscribe,
        )
        .ruma_route::<c::threads::get_thread_subscriptions_changes::unstable::Request, _, _>(
            thread_subscriptions::changes,
        )
        .ruma_route::<c::space::get_hierarchy::v1::Request, _, _>(space::hierarchy)
        .ruma_route::<c::search::search_events::v3::Request, _, _>(search::search)
        // Reporting to the admins.
        .ruma_route::<c::room::report_content::v3::Request, _, _>(report::report_event)
        .ruma_route::<c::room::report_room::v3::Request, _, _>(report::report_room)
        .ruma_route::<c::reporting::report_user::v3::Request, _, _>(report::report_user)
        .ruma_route::<c::membership::get_member_events::v3::Request, _, _>(room::members)
        .ruma_route::<c::alias::create_alias::v3::Request, _, _>(directory::create_alias)
        .ruma_route::<c::alias::get_alias::v3::Request, _, _>(directory::get_alias)
        .ruma_route::<c::alias::delete_alias::v3::Request, _, _>(directory::delete_alias)
        .ruma_route::<c::room::aliases::v3::Request, _, _>(directory::room_aliases)
        .ruma_route::<c::config::get_room_account_data::v3::Request, _, _>(account_data::get_room)
        .ruma_route::<c::config::set_room_account_data::v3::Request, _, _>(account_data::set_room)
        .ruma_route::<c::tag::get_tags::v3::Request, _, _>(account_data::get_tags)
        .ruma_route::<c::tag::create_tag::v3::Request, _, _>(account_data::create_tag)
        .ruma_route::<c::tag::delete_tag::v3::Request, _, _>(account_data::delete_tag)
        .ruma_route::<c::read_marker::set_read_marker::v3::Request, _, _>(
            account_data::read_markers,
        )
        .ruma_route::<c::typing::create_typing_event::v3::Request, _, _>(ephemeral::typing)
        .ruma_route::<c::receipt::create_receipt::v3::Request, _, _>(ephemeral::receipt)
        .ruma_route::<c::filter::create_filter::v3::Request, _, _>(filter::create)
        .ruma_route::<c::filter::get_filter::v3::Request, _, _>(filter::get)
        // Presence and the user directory.
        .ruma_route::<c::presence::set_presence::v3::Request, _, _>(presence::set)
        .ruma_route::<c::presence::get_presence::v3::Request, _, _>(presence::get)
        .ruma_route::<c::user_directory::search_users::v3::Request, _, _>(user_directory::search)
        // Knocking, forgetting, upgrades, timestamp lookups.
        .ruma_route::<c::knock::knock_room::v3::Request, _, _>(lifecycle::knock)
        .ruma_route::<c::membership::forget_room::v3::Request, _, _>(lifecycle::forget)
        .ruma_route::<c::room::upgrade_room::v3::Request, _, _>(lifecycle::upgrade)
        .ruma_route::<c::room::get_event_by_timestamp::v1::Request, _, _>(
            lifecycle::timestamp_to_event,
        )
        .ruma_route::<c::directory::get_room_visibility::v3::Request, _, _>(
            directory::get_visibility,
        )
        .ruma_route::<c::directory::set_room_visibility::v3::Request, _, _>(
            directory::set_visibility,
        )
        .ruma_route::<c::directory::get_public_rooms::v3::Request, _, _>(directory::public_rooms)
        .ruma_route::<c::directory::get_public_rooms_filtered::v3::Request, _, _>(
            directory::public_rooms_filtered,
        )
        .ruma_route::<c::room::get_summary::v1::Request, _, _>(directory::room_summary)
        .ruma_route::<c::context::get_context::v3::Request, _, _>(context::get_context)
        // End-to-end encryption: device, one-time and fallback keys; to-device messages.
        .ruma_route::<c::keys::upload_keys::v3::Request, _, _>(keys::upload)
        .ruma_route::<c::keys::get_keys::v3::Request, _, _>(keys::query)
        .ruma_route::<c::keys::claim_keys::v3::Request, _, _>(keys::claim)
        .ruma_route::<c::to_device::send_event_to_device::v3::Request, _, _>(to_device::send)
        // Cross-signing and device list tracking.
        .ruma_route::<c::keys::upload_signing_keys::v3::Request, _, _>(keys::upload_signing_keys)
        .ruma_route::<c::keys::upload_signatures::v3::Request, _, _>(keys::upload_signatures)
        .ruma_route::<c::keys::get_key_changes::v3::Request, _, _>(keys::changes)
        // Server-side key backup.
        .ruma_route::<c::backup::create_backup_version::v3::Request, _, _>(
            key_backup::create_version,
        )
        .ruma_route::<c::backup::get_latest_backup_info::v3::Request, _, _>(
            key_backup::latest_version,
        )
        .ruma_route::<c::backup::get_backup_info::v3::Request, _, _>(key_backup::get_version)
        .ruma_route::<c::backup::update_backup_version::v3::Request, _, _>(
            key_backup::update_version,
        )
        .ruma_route::<c::backup::delete_backup_version::v3::Request, _, _>(
            key_backup::delete_version,
        )
        .ruma_route::<c::backup::add_backup_keys::v3::Request, _, _>(key_backup::put_keys)
        .ruma_route::<c::backup::add_backup_keys_for_room::v3::Request, _, _>(
            key_backup::put_room_keys,
        )
        .ruma_route::<c::backup::add_backup_keys_for_session::v3::Request, _, _>(
            key_backup::put_session_key,
        )
        .ruma_route::<c::backup::get_backup_keys::v3::Request, _, _>(key_backup::get_keys)
        .ruma_route::<c::backup::get_backup_keys_for_room::v3::Request, _, _>(
            key_backup::get_room_keys,
        )
        .ruma_route::<c::backup::get_backup_keys_for_session::v3::Request, _, _>(
            key_backup::get_session_key,
        )
        .ruma_route::<c::backup::delete_backup_keys::v3::Request, _, _>(key_backup::delete_keys)
        .ruma_route::<c::backup::delete_backup_keys_for_room::v3::Request, _, _>(
            key_backup::delete_room_keys,
        )
        .ruma_route::<c::backup::delete_backup_keys_for_session::v3::Request, _, _>(
            key_backup::delete_session_key,
        )
        // Dehydrated devices (MSC3814).
        .ruma_route::<c::dehydrated_device::put_dehydrated_device::unstable::Request, _, _>(
            dehydrated::put,
        )
        .ruma_route::<c::dehydrated_device::get_dehydrated_device::unstable::Request, _, _>(
            dehydrated::get,
        )
        .ruma_route::<c::dehydrated_device::delete_dehydrated_device::unstable::Request, _, _>(
            dehydrated::delete,
        )
        .ruma_route::<c::dehydrated_device::get_events::unstable::Request, _, _>(dehydrated::events)
        // Push rules.
        .ruma_route::<c::push::get_pushrules_all::v3::Request, _, _>(push_rules::all)
        .ruma_route::<c::push::get_pushrules_global_scope::v3::Request, _, _>(push_rules::global)
        .ruma_route::<c::push::get_pushrule::v3::Request, _, _>(push_rules::get)
        .ruma_route::<c::push::set_pushrule::v3::Request, _, _>(push_rules::set)
        .ruma_route::<c::push::delete_pushrule::v3::Request, _, _>(push_rules::delete)
        .ruma_route::<c::push::get_pushrule_enabled::v3::Request, _, _>(push_rules::get_enabled)
        .ruma_route::<c::push::set_pushrule_enabled::v3::Request, _, _>(push_rules::set_enabled)
        .ruma_route::<c::push::get_pushrule_actions::v3::Request, _, _>(push_rules::get_actions)
        .ruma_route::<c::push::set_pushrule_actions::v3::Request, _, _>(push_rules::set_actions)
        .ruma_route::<c::push::get_pushers::v3::Request, _, _>(push::pushers)
        .ruma_route::<c::push::set_pusher::v3::Request, _, _>(push::set_pusher)
        .ruma_route::<c::push::get_notifications::v3::Request, _, _>(push::notifications)
        // The content repository (plain axum handlers: bodies are files, not JSON).
        .merge(media::routes())
        // Application services (ping, per-network directory) and third-party lookups.
        .ruma_route::<c::appservice::request_ping::v1::Request, _, _>(appservice::ping)
        .ruma_route::<c::appservice::set_room_visibility::v3::Request, _, _>(
            appservice::set_network_visibility,
        )
        .ruma_route::<c::thirdparty::get_protocols::v3::Request, _, _>(appservice::protocols)
        .ruma_route::<c::thirdparty::get_protocol::v3::Request, _, _>(appservice::protocol)
        .ruma_route::<c::thirdparty::get_location_for_protocol::v3::Request, _, _>(
            appservice::location_for_protocol,
        )
        .ruma_route::<c::thirdparty::get_user_for_protocol::v3::Request, _, _>(
            appservice::user_for_protocol,
        )
        .ruma_route::<c::thirdparty::get_location_for_room_alias::v3::Request, _, _>(
            appservice::location_for_alias,
        )
        .ruma_route::<c::thirdparty::get_user_for_user_id::v3::Request, _, _>(
            appservice::user_for_user_id,
        )
        // End of the application-service routes.
        // OpenID tokens for third parties (fedmisc).
        .ruma_route::<c::account::request_openid_token::v3::Request, _, _>(openid::request_token)
}
