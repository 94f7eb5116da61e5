//! Push notifications: the user's push rules evaluated on every event they can see, the
//! unread notification counts `/sync` and sliding sync carry, `/notifications`, and pushers
//! that take notifications to push gateways (so that phones ring).
//!
//! - [`evaluate`]: a consumer of the commit pipeline. For each new event (made here or received,
//!   not backfilled history) it evaluates the push rules of the room's local members (ruma's
//!   `Ruleset`) and writes, in the event's own batch, a `notifications` entry (history for
//!   `/notifications`, and the pushers' queue) and an `unread_notifications` entry per member it
//!   notifies. A user's own event marks their earlier notifications in that thread read.
//! - [`counts`]: unread counts per room and thread (one prefix scan of the user's unread entries
//!   in the room); read receipts delete entries up to their event, in the receipt's batch.
//! - [`pushers`]: `/pushers`, `/pushers/set`; pushers go with their device.
//! - [`sender`]: one task per pusher takes its user's notifications after its recorded
//!   position to the gateway, in order, with back-off; the position is stored after each
//!   success, so nothing is lost across a crash (a notification in flight may be sent again:
//!   gateways de-duplicate by event ID). A read receipt that lowers the badge sends the new
//!   count.

pub mod counts;
pub mod evaluate;
pub mod pushers;
pub mod sender;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use ruma::{OwnedUserId, UserId, push::Ruleset};
use tokio::sync::Notify;

use crate::{config::Config, service::outbound_guard::OutboundGuard};

/// How long a gateway may take to answer.
const GATEWAY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What the cached room push contexts weigh at most, over all rooms: a member each, and a
/// room's own part (its power levels) as much as four (about a megabyte in all).
const ROOM_CONTEXT_MEMBERS: u64 = 8 * 1024;

/// A user's running pusher tasks: each one's wake-up, by pusher key.
type PusherTasks = HashMap<Vec<u8>, Arc<Notify>>;

/// The push state shared by all requests and the sender tasks.
pub struct Push {
    /// Parsed push rules per user (dropped when they change).
    rules: quick_cache::sync::Cache<OwnedUserId, Arc<Ruleset>>,
    /// What each recent notification says of its event, shared by the event's pushers.
    event_summaries: quick_cache::sync::Cache<ruma::OwnedEventId, Arc<sender::EventSummary>>,
    /// Each user's floor in a room: no unread entry below it is live (see `counts`).
    unread_floors: quick_cache::sync::Cache<(OwnedUserId, ruma::OwnedRoomId), u64>,
    /// Each user's unread counts in a room, as far as they were read (see `counts`).
    unread_counts: counts::UnreadCountsCache,
    /// Each room's push context for its current state (see `evaluate`).
    room_contexts: quick_cache::sync::Cache<
        ruma::OwnedRoomId,
        Arc<evaluate::RoomPushContext>,
        evaluate::MembersWeighter,
    >,
    /// `displayname` of member events by short event ID, for the display-name rule.
    display_names: quick_cache::sync::Cache<u64, Option<String>>,
    /// The HTTP client for gateways: rustls, the SSRF guard, no redirects.
    client: reqwest::Client,
    guard: OutboundGuard,
    /// Each running pusher task's wake-up, by user and pusher key.
    tasks: Mutex<HashMap<OwnedUserId, PusherTasks>>,
    /// Serialises changes of pusher records (definitions from clients, progress from tasks).
    pub(crate) records: tokio::sync::Mutex<()>,
    /// The services, for the sender tasks (set when the sender starts).
    services: std::sync::OnceLock<std::sync::Weak<crate::service::Services>>,
    /// The runtime of the sender tasks: their own thread, at a lower priority (see
    /// `sender::start_sender_thread`).
    runtime: std::sync::OnceLock<tokio::runtime::Handle>,
}

impl Push {
    /// What the caches of display names, unread floors and unread counts take (see
    /// [`crate::service::cache_memory`]; the parsed rules and room contexts are left out).
    pub fn cache_bytes(&self) -> u64 {
        use crate::service::cache_memory::cache_bytes;
        cache_bytes(&self.display_names)
            + cache_bytes(&self.unread_floors)
            + self.unread_counts.cache_bytes()
    }

    /// Forgets every remembered unread count, when this is dropped: for a purge, which deletes
    /// many users' entries, in several batches, and may stop half-way.
    pub(crate) fn forget_unread_counts_after(&self) -> impl Drop + '_ {
        struct Forget<'a>(&'a Push);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                self.0.unread_counts.forget_all();
            }
        }
        Forget(self)
    }

    pub fn new(config: &Config) -> Result<Self, String> {
        let guard = OutboundGuard::new(&config.ip_range_denylist)?;
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let client = guard
            .apply(reqwest::Client::builder(), 0)
            .use_preconfigured_tls(tls)
            .timeout(GATEWAY_TIMEOUT)
            .user_agent(concat!("culvert/", env!("CARGO_PKG_VERSION"), " (push)"))
            .build()
            .map_err(|e| format!("push HTTP client: {e}"))?;
        Ok(Self {
            rules: quick_cache::sync::Cache::new(1024),
            room_contexts: quick_cache::sync::Cache::with_weighter(
                256,
                ROOM_CONTEXT_MEMBERS,
                evaluate::MembersWeighter,
            ),
            display_names: quick_cache::sync::Cache::new(4096),
            unread_floors: quick_cache::sync::Cache::new(16_384),
            unread_counts: counts::UnreadCountsCache::new(16_384),
            event_summaries: quick_cache::sync::Cache::new(256),
            client,
            guard,
            tasks: Mutex::new(HashMap::new()),
            records: tokio::sync::Mutex::new(()),
            services: std::sync::OnceLock::new(),
            runtime: std::sync::OnceLock::new(),
        })
    }

    /// Forgets the parsed rules of `user_id` (they changed).
    pub fn rules_changed(&self, user_id: &UserId) {
        self.rules.remove(user_id);
    }

    /// Wakes the sender tasks of `user_id`'s pushers (new notifications, or a badge to send).
    pub(crate) fn wake_user(&self, user_id: &UserId) {
        let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        for notify in tasks.get(user_id).into_iter().flat_map(|t| t.values()) {
            notify.notify_one();
        }
    }
}
