//! The domain: everything the server knows and decides, with no HTTP types. Handlers in
//! `crate::api` call into these; these call into `crate::store`.

pub mod account_data;
pub mod admin;
pub mod appservice;
pub mod backup;
pub mod cache_memory;
pub mod cross_signing;
pub mod dehydrated;
pub mod delayed_events;
pub mod device_lists;
pub mod devices;
pub mod e2ee;
pub mod federation;
pub mod filters;
pub mod globals;
pub mod import;
pub mod key_backup;
pub mod login_tokens;
pub mod media;
pub mod metrics;
pub mod outbound_guard;
pub mod presence;
pub mod push;
pub mod push_rules;
pub mod ratelimit;
pub mod registration;
pub mod registration_tokens;
pub mod reports;
pub mod rooms;
pub mod uiaa;
pub mod user_directory;
pub mod users;
pub mod voip;

use std::sync::Arc;

use ruma::OwnedServerName;

use crate::{
    config::Config,
    store::{Store, StoreError, StoreOptions},
};

/// Every service, built once at start-up and shared by all requests.
pub struct Services {
    pub config: Config,
    pub server_name: OwnedServerName,
    pub store: Store,
    pub globals: globals::Globals,
    pub users: users::Users,
    pub devices: devices::Devices,
    pub account_data: account_data::AccountData,
    pub uiaa: uiaa::Uiaa,
    pub registration_tokens: registration_tokens::RegistrationTokens,
    /// The command line's token for this run (`admin::cli`).
    pub cli_token: admin::cli::CliToken,
    pub rate_limiter: ratelimit::RateLimiter,
    pub short_ids: Arc<rooms::short::ShortIds>,
    pub timeline: rooms::timeline::Timeline,
    /// Who is in which room (the membership index, kept by the commit pipeline).
    pub members: Arc<rooms::members::Members>,
    pub filters: filters::Filters,
    pub typing: rooms::ephemeral::Typing,
    /// Serialises alias creation and removal (check-then-write).
    pub alias_lock: std::sync::Mutex<()>,
    /// Serialises changes of push rules (read, change, write back).
    pub push_rules_lock: tokio::sync::Mutex<()>,
    /// Serialises the use and making of login tokens (`login_tokens`).
    pub login_tokens_lock: tokio::sync::Mutex<()>,
    /// Serialises thread-subscription changes (`rooms::thread_subscriptions`).
    pub thread_subscriptions_lock: tokio::sync::Mutex<()>,
    /// Last-active times of presence refreshes (see `presence`).
    pub presence: presence::Presence,
    /// End-to-end encryption: the lock around one-time key claims (see `e2ee`).
    pub e2ee: e2ee::E2ee,
    /// Server-side key backup: the lock around a version's sessions (see `key_backup`).
    pub key_backup: key_backup::KeyBackup,
    /// Federation's outbound side: resolver, HTTP client, remote key cache.
    pub federation: federation::Federation,
    /// The media repository: files, thumbnails, URL previews (see `media`).
    pub media: media::Media,
    /// Application services: registrations, namespaces, the push queue (see `appservice`).
    pub appservices: Arc<appservice::Appservices>,
    /// Sliding sync: connections in use and users' room lists (see `rooms::sliding_sync`).
    pub sliding: rooms::sliding_sync::Sliding,
    /// Push notifications: rule evaluation, counts, pushers and their senders (see `push`).
    pub push: push::Push,
    /// Delayed events (MSC4140) and their timer (see `delayed_events`).
    pub delayed_events: delayed_events::DelayedEvents,
    /// The admin room and its command queue (see `admin::admin_room`).
    pub admin_room: Arc<admin::admin_room::AdminRoom>,
    /// Room deletions of this run and their progress (see `admin::room_deletion`).
    pub room_deletions: admin::room_deletion::Deletions,
    /// History purges of this run and their status (see `admin::room_deletion`).
    pub history_purges: admin::room_deletion::HistoryPurges,
    /// Counts for the Prometheus metrics (see `metrics`).
    pub metrics: metrics::Metrics,
}

/// Why the server (or an admin command) could not start; worded for the operator.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Service(#[from] crate::Error),
    #[error("{0}")]
    Other(String),
}

impl Services {
    /// Opens the database named in `config` and loads the server's state.
    pub fn open(config: Config) -> Result<Arc<Self>, StartError> {
        let memory = config.memory_plan();
        let options = StoreOptions {
            cache_capacity_bytes: memory.block_cache_bytes,
            memtable_bytes: memory.memtable_bytes,
            max_open_files: config.rocksdb_max_open_files,
            durability: config.durability,
            statistics: config.metrics.is_some(),
        };
        let store = Store::open(&config.database_path, &options)?;
        let globals = globals::Globals::load(store.clone())?;
        let short_ids = Arc::new(rooms::short::ShortIds::load(store.clone())?);
        let timeline = rooms::timeline::Timeline::load(
            store.clone(),
            short_ids.clone(),
            Some(memory.parsed_events),
        )?;
        let members = Arc::new(rooms::members::Members::new(store.clone()));
        let federation = federation::Federation::new(&config, store.clone(), members.clone())
            .map_err(StartError::Other)?;
        let media = media::Media::open(&config, store.clone()).map_err(StartError::Other)?;
        let appservices = Arc::new(
            appservice::Appservices::load(
                store.clone(),
                &config.server_name,
                &config.app_service_config_files,
            )
            .map_err(StartError::Other)?,
        );
        // The commit pipeline: every event's per-event work (see `rooms::timeline::pipeline`).
        timeline.register_consumer(members.clone());
        timeline.register_consumer(Arc::new(user_directory::PublicJoinRooms));
        timeline.register_consumer(federation.outbox.clone());
        timeline.register_consumer(Arc::new(appservice::queue::RoomEventQueue(
            appservices.clone(),
        )));
        timeline.register_consumer(Arc::new(rooms::sliding_sync::room_list::BumpStamps));
        timeline.register_consumer(Arc::new(delayed_events::DelayedEventCommits(store.clone())));
        let admin_room = Arc::new(admin::admin_room::AdminRoom::new(admin::cli::server_user(
            &config.server_name,
        )));
        timeline.register_consumer(Arc::new(admin::admin_room::AdminCommandQueue(
            admin_room.clone(),
        )));
        let metrics = metrics::Metrics::default();
        timeline.register_consumer(metrics.event_counter());
        let services = Arc::new(Self {
            server_name: config.server_name.clone(),
            users: users::Users::new(store.clone())?,
            devices: devices::Devices::new(store.clone()),
            account_data: account_data::AccountData::new(store.clone()),
            uiaa: uiaa::Uiaa::default(),
            registration_tokens: registration_tokens::RegistrationTokens::new(store.clone()),
            cli_token: admin::cli::CliToken::default(),
            rate_limiter: ratelimit::RateLimiter::new(config.rate_limits.clone()),
            globals,
            short_ids,
            timeline,
            members,
            filters: filters::Filters::new(store.clone()),
            typing: rooms::ephemeral::Typing::default(),
            alias_lock: std::sync::Mutex::new(()),
            push_rules_lock: tokio::sync::Mutex::new(()),
            thread_subscriptions_lock: tokio::sync::Mutex::new(()),
            login_tokens_lock: tokio::sync::Mutex::new(()),
            presence: presence::Presence::default(),
            e2ee: e2ee::E2ee::default(),
            key_backup: key_backup::KeyBackup::default(),
            federation,
            media,
            appservices,
            sliding: rooms::sliding_sync::Sliding::default(),
            push: push::Push::new(&config).map_err(StartError::Other)?,
            delayed_events: delayed_events::DelayedEvents::new(
                store.clone(),
                config.max_event_delay_duration.as_millis(),
            ),
            admin_room,
            room_deletions: admin::room_deletion::Deletions::default(),
            history_purges: admin::room_deletion::HistoryPurges::default(),
            metrics,
            store,
            config,
        });
        // Relations and push evaluation read much of the services: registered once they
        // exist.
        services
            .timeline
            .register_consumer(Arc::new(rooms::relations::RelationIndex(Arc::downgrade(
                &services,
            ))));
        services
            .timeline
            .register_consumer(Arc::new(rooms::search::SearchIndex(Arc::downgrade(
                &services,
            ))));
        services
            .timeline
            .register_consumer(Arc::new(push::evaluate::PushEvaluator(Arc::downgrade(
                &services,
            ))));
        services.index_public_join_rooms()?;
        services.load_message_limits()?;
        Ok(services)
    }
}
