//! Where bytes hit RocksDB: the engine, the list of column families, atomic batches and the
//! schema version. Nothing above this module names a RocksDB type except [`Batch`].
//!
//! Durability: writes go through the write-ahead log (never disabled). A write that returned is in
//! the operating system's page cache, so it survives the process being killed (`kill -9`); the
//! `durability` setting decides whether it is also fsynced, to survive a power cut
//! ([`durability`]).

pub mod backup;
pub mod durability;
mod figures;
mod files;
pub use figures::StoreFigures;
pub mod keys;
mod migrations;
pub mod quiet_flush;
mod shared;

use std::{
    path::Path,
    sync::{
        Arc, PoisonError, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use durability::{Durability, GroupSync, Pending};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, DBRawIterator, Options, ReadOptions,
    WriteBatch, WriteOptions,
};

/// Declares the column families once: the `Cf` enum (each variant's doc gives its key → value
/// layout), `Cf::ALL` and `Cf::name` all come from this one list.
macro_rules! column_families {
    ($($(#[$doc:meta])* $variant:ident => $name:literal $(in shared $tag:literal)?,)+) => {
        /// Every table, declared once. The comment on each gives its key → value layout
        /// (parts joined by 0xFF, see [`keys`]); ARCHITECTURE.md repeats this table. A table
        /// is a column family of its own, or, marked `in shared TAG`, the keys starting with
        /// that byte in the one family the small tables share ([`shared`]).
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Cf {
            $($(#[$doc])* $variant,)+
        }

        impl Cf {
            pub const ALL: &'static [Cf] = &[$(Cf::$variant,)+];

            /// The table's name: its column family's, or, for a table in the shared family,
            /// the name of the family it had before (what [`shared`] moves from).
            pub fn name(self) -> &'static str {
                match self {
                    $(Cf::$variant => $name,)+
                }
            }

            /// The first byte of this table's keys in the shared family, for a table kept
            /// there; `None` for a table with a column family of its own.
            pub fn shared_tag(self) -> Option<u8> {
                match self {
                    $(Cf::$variant => column_families!(@tag $($tag)?),)+
                }
            }
        }
    };
    (@tag $tag:literal) => { Some($tag) };
    (@tag) => { None };
}

column_families! {
    /// `name` → value: `schema_version` (u64 BE), `signing_key` (JSON),
    /// `bootstrap_registration_token` (UTF-8), `shortid_reserved` (u64 BE), `admin_room`
    /// (the admin room's ID, UTF-8), `purge:<room_id>` (empty: a purge not yet finished),
    /// `server_notices:<user_id>` (the user's server notices room, UTF-8),
    /// `ratelimit_override:<user_id>` (`{messages_per_second, burst_count}` JSON).
    Global => "global",
    /// `user_id` → [`crate::service::users::UserRecord`] (JSON).
    Users => "users" in shared 0x01,
    /// `user_id 0xFF field` → field value (JSON), e.g. `displayname`, `avatar_url`, `m.tz`.
    Profile => "profile" in shared 0x02,
    /// `user_id 0xFF device_id` → [`crate::service::devices::DeviceRecord`] (JSON).
    Devices => "devices" in shared 0x03,
    /// `sha256(access_token)` → `user_id 0xFF device_id`, then for a token that expires `0xFF`
    /// its expiry (ms, decimal) and `0xFF n` while `/refresh` issued it and it was not used
    /// yet. Tokens themselves are never stored.
    AccessTokens => "access_tokens" in shared 0x04,
    /// SHA-256 of a refresh token → `user_id 0xFF device_id` (`0xFF n` while `/refresh` issued
    /// it and it was not used yet): see `service::devices`.
    RefreshTokens => "refresh_tokens" in shared 0x05,
    /// SHA-256 of a login token (`/login/get_token`) → `user_id 0xFF expiry (ms, decimal)`.
    LoginTokens => "login_tokens" in shared 0x06,
    /// `user_id 0xFF room_id-or-empty 0xFF event_type` → content (JSON). Empty room = global.
    AccountData => "account_data" in shared 0x07,
    /// `event_id` → short event id (u64 BE). See `service::rooms::short`.
    EventIdShort => "eventid_shorteventid",
    /// short event id (u64 BE) → `event_id`.
    ShortEventId => "shorteventid_eventid",
    /// `event_type 0xFF state_key` → short state key (u64 BE).
    StateKeyShort => "statekey_shortstatekey",
    /// short state key (u64 BE) → `event_type 0xFF state_key`.
    ShortStateKey => "shortstatekey_statekey",
    /// sha256 of a full compressed state → short state hash (u64 BE): identical states share one.
    StateHashShort => "statehash_shortstatehash",
    /// short state hash (u64 BE) → state delta: parent (u64 BE, 0 = none), chain depth (u32 BE),
    /// number of added entries (u32 BE), added entries, removed entries; an entry is
    /// short state key ++ short event id (16 bytes). See `service::rooms::state_store`.
    StateDiff => "shortstatehash_statediff",
    /// short event id (u64 BE) → `StoredPdu` JSON: event ID and the signed PDU.
    Pdus => "pdus",
    /// short event id (u64 BE) → short state hash (u64 BE) of the state *before* the event.
    EventState => "shorteventid_shortstatehash",
    /// `room_id` → `RoomRecord` JSON: version, current state, forward extremities, depth.
    Rooms => "rooms",
    /// `room_id 0xFF stream count (u64 BE)` → short event id (u64 BE): each room's timeline.
    Timeline => "timeline",
    /// short event id (u64 BE) → stream count (u64 BE): an event's place in its timeline.
    EventCount => "shorteventid_count",
    /// `user_id 0xFF device_id 0xFF room_id 0xFF txn_id` → event ID: `PUT /send` idempotency.
    TxnIds => "txnid_eventid",
    /// `user_id 0xFF room_id` → `Membership` JSON: membership, its event ID, stream count.
    UserRooms => "user_rooms",
    /// `room_id 0xFF user_id` → membership (`join`, `invite`, `leave`, `ban`, `knock`).
    RoomMembers => "room_members",
    /// `user_id 0xFF filter_id` → filter definition (JSON, as uploaded).
    Filters => "filters" in shared 0x08,
    /// `room_id 0xFF user_id 0xFF receipt_type 0xFF thread` → `{event_id, ts, count}` JSON.
    Receipts => "receipts",
    /// `#alias:server` → `{room_id, creator}` JSON: the room directory's aliases.
    Aliases => "alias_roomid" in shared 0x09,
    /// `room_id 0xFF #alias:server` → nothing: a room's aliases (prefix scan).
    RoomAliases => "roomid_aliases" in shared 0x0A,
    /// `user_id 0xFF room_id-or-empty 0xFF event_type` → stream count (u64 BE) of the account
    /// data's last change (what `/sync` sends since a token).
    AccountDataCounts => "account_data_counts",
    /// `user_id 0xFF device_id 0xFF room_id 0xFF member_user_id` → sync position (u64 BE) ++
    /// member event ID: the member events lazy-loading `/sync` already sent to a device.
    LazyLoadedMembers => "lazy_loaded_members" in shared 0x0B,
    /// `user_id` → `PresenceRecord` JSON: state, status message, last active time (ms), stream
    /// count of its last change. See `service::presence`.
    Presence => "presence" in shared 0x0C,
    /// stream count (u64 BE) → `user_id`: presence changes in order, one entry per user (the
    /// previous one is deleted in the same batch), so an incremental `/sync` seeks from its token.
    PresenceStream => "presence_stream",
    /// `room_id` → nothing: rooms whose current join rule is `public` (the user directory's
    /// candidates beyond the searcher's own rooms). Kept by the append path.
    PublicJoinRooms => "public_join_rooms" in shared 0x0D,
    /// `room_id 0xFF stream count (u64 BE)` → `user_id 0xFF receipt_type 0xFF thread`: each
    /// receipt's latest change (the previous entry is deleted in the same batch), so `/sync`
    /// reads only the receipts that changed since its token.
    ReceiptStream => "receipt_stream",
    /// `room_id 0xFF origin_server_ts (u64 BE) ++ stream count (u64 BE)` → short event id
    /// (u64 BE): each room's events by timestamp (`/timestamp_to_event` is one seek).
    TimestampEvents => "roomid_ts_shorteventid",
    /// `room_id` → nothing: the rooms this server publishes in its room directory
    /// (`/publicRooms`).
    PublicRooms => "public_rooms" in shared 0x0E,
    /// short event id (u64 BE) → the short ids (u64 BE each, sorted) of every event in its full
    /// auth chain: a cache for state resolution (`service::rooms::state_res`). An event's auth
    /// chain never changes, so entries are never invalidated.
    AuthChains => "shorteventid_authchain",
    /// `user_id 0xFF device_id` → the device's signed identity keys (JSON, as uploaded minus
    /// `unsigned`). See `service::e2ee`.
    DeviceKeys => "device_keys" in shared 0x0F,
    /// `user_id 0xFF device_id 0xFF algorithm 0xFF key_id` → one-time key (JSON): unclaimed
    /// one-time keys; claiming deletes the entry.
    OneTimeKeys => "one_time_keys",
    /// `user_id 0xFF device_id 0xFF algorithm 0xFF place (u64 BE)` → key ID: the order a
    /// device's one-time keys were uploaded in; claims take the oldest (MSC4225, schema 7).
    OneTimeKeyOrder => "one_time_key_order" in shared 0x10,
    /// `user_id 0xFF device_id 0xFF algorithm` → `{key_id, key, used}` JSON: the device's
    /// fallback key per algorithm (handed out when no one-time key is left, then marked used).
    FallbackKeys => "fallback_keys" in shared 0x11,
    /// `user_id 0xFF device_id 0xFF stream count (u64 BE)` → `{type, sender, content}` JSON: the
    /// device's queue of to-device messages, deleted once a sync acknowledges them.
    ToDevice => "to_device",
    /// `sender_user_id 0xFF sender_device_id 0xFF txn_id` → nothing: `PUT /sendToDevice`
    /// idempotency.
    ToDeviceTxn => "to_device_txn" in shared 0x12,
    /// `user_id 0xFF usage` (`master`, `self_signing`, `user_signing`) → the user's cross-signing
    /// key (JSON as uploaded, with signatures uploaded later merged into `signatures`).
    CrossSigningKeys => "cross_signing_keys" in shared 0x13,
    /// stream count (u64 BE) ++ `user_id` → nothing: device-list changes in order, one entry per
    /// user (the previous one is deleted in the same batch), so `/sync` and `/keys/changes` seek
    /// from a token. See `service::device_lists`.
    DeviceListStream => "device_list_stream",
    /// `user_id` → stream count (u64 BE) of the user's latest device-list change (the entry of
    /// `device_list_stream` to delete at the next change).
    DeviceListCounts => "device_list_counts" in shared 0x14,
    /// `user_id 0xFF version (u64 BE)` → `{algorithm, auth_data, etag, count, deleted}` JSON: the
    /// user's key backup versions (a deleted one stays as a tombstone). See `service::key_backup`.
    BackupVersions => "backup_versions" in shared 0x15,
    /// `user_id 0xFF version (u64 BE) 0xFF room_id 0xFF session_id` → the backed-up session
    /// (`{first_message_index, forwarded_count, is_verified, session_data}` JSON).
    BackupSessions => "backup_sessions" in shared 0x16,
    /// `user_id` → `{device_id, device_data}`: the user's dehydrated device (MSC3814).
    DehydratedDevices => "dehydrated_devices" in shared 0x17,
    /// `server_name` → its signing keys as cached (`service::federation::server_keys`, JSON:
    /// key ID → key and validity, plus the last self-signed key document).
    ServerKeys => "server_keys" in shared 0x18,
    /// `destination 0xFF seq (u64 BE)` → one queued PDU (`{"pdu": event_id}`) or EDU (JSON), to
    /// send to that server in order (`service::federation::sender`).
    FederationOutbox => "federation_outbox",
    /// `origin 0xFF txn_id` → the answer given to that inbound `/send` transaction, so a
    /// repeated transaction is answered the same without being processed again.
    FederationTxns => "federation_txns" in shared 0x19,
    /// `user_id 0xFF room_id` → an invite of a local user to a room on another server that
    /// this server is not in (`service::federation::invite::RemoteInvite`, JSON).
    RemoteInvites => "remote_invites" in shared 0x1A,
    /// `server_name 0xFF media_id` → [`crate::service::media::MediaRecord`] JSON: content hash
    /// (none while a `/create` upload is pending), content type, file name, size, uploader,
    /// created, expiry of a pending ID, legacy-frozen and quarantine flags.
    Media => "media" in shared 0x1B,
    /// hex SHA-256 of a stored file → reference count (u64 BE): media records and thumbnails
    /// using it. The file is removed when the count reaches zero.
    MediaFiles => "media_files" in shared 0x1C,
    /// `server_name 0xFF media_id 0xFF "{width}x{height}-{method}"` →
    /// [`crate::service::media::ThumbnailRecord`] JSON: hash, content type, size, dimensions.
    MediaThumbnails => "media_thumbnails" in shared 0x1D,
    /// URL → `{ts, preview}` JSON: cached `/preview_url` answers.
    UrlPreviews => "url_previews" in shared 0x1E,
    /// `appservice_id` → `{source, registration}` JSON: every registered application service
    /// (registration files are the source of truth; see `service::appservice`).
    Appservices => "appservices" in shared 0x1F,
    /// `appservice_id 0xFF stream count (u64 BE) ++ sequence (u64 BE)` → queued item JSON
    /// (`{"pdu": {room_id, short}}`, `{"edu": event}`, `{"to_device": event}`,
    /// `{"keys": {user_id, device_id}}`, `{"device_list": {user_id}}`): what is still to be
    /// pushed to the appservice, in order. Room events use sequence 0 and are written in the
    /// event's own batch; the others take the current stream count and a start-up-seeded
    /// sequence.
    AppserviceQueue => "appservice_queue" in shared 0x20,
    /// `appservice_id` → `{next_txn_id, pending}` JSON: the next transaction ID, and the
    /// transaction being sent (its ID, the queue keys it covers, its body), so that after a
    /// crash the same transaction is sent again with the same content.
    AppserviceTxns => "appservice_txns" in shared 0x21,
    /// `room_id 0xFF server_name` → how many of the server's users are joined (u64 BE), kept by
    /// the append path with `room_members`: where a room's events go over federation.
    RoomServers => "room_servers",
    /// `token` → `{user_id, expires_at}` JSON (milliseconds since the epoch): OpenID tokens a
    /// client handed to a third party, which other servers check through
    /// `/_matrix/federation/v1/openid/userinfo`; they live an hour and are dropped when found
    /// expired.
    OpenidTokens => "openid_tokens" in shared 0x22,
    /// `user_id 0xFF device_id 0xFF conn_id` →
    /// [`crate::service::rooms::sliding_sync::connection::Record`] JSON: a sliding-sync
    /// connection's positions (the base the client holds, the ones created from it and the
    /// rooms each touched) and when it was last used.
    SlidingConnections => "sliding_connections",
    /// `user_id 0xFF device_id 0xFF conn_id 0xFF room_id` →
    /// [`crate::service::rooms::sliding_sync::connection::RoomVersions`] JSON: what the
    /// connection's positions hold of the room (sent up to which count, with which config).
    SlidingRooms => "sliding_rooms",
    /// `room_id` → stream count (u64 BE) of the room's latest event of a type that moves it
    /// up in clients' lists (sliding sync's `bump_stamp`), kept by the commit pipeline.
    RoomBumps => "room_bumps" in shared 0x23,
    /// `user_id 0xFF stream count` → [`crate::service::push::evaluate::NotificationRecord`]
    /// JSON: an event that notified the user (room, event, the rule's actions, highlight,
    /// thread): `/notifications`, and the queue of the user's pushers. Written in the event's
    /// batch.
    Notifications => "notifications",
    /// `user_id 0xFF room_id 0xFF stream count` → `{thread, highlight}` JSON: the user's unread
    /// notifications (deleted by their read receipts and own events): the counts of `/sync`.
    UnreadNotifications => "unread_notifications",
    /// `user_id 0xFF app_id 0xFF pushkey` → [`crate::service::push::pushers::PusherRecord`]
    /// JSON: a pusher, its device and how far its task has pushed.
    Pushers => "pushers" in shared 0x24,
    /// `app_id 0xFF pushkey 0xFF user_id` → empty: who has a pusher with that pushkey.
    PushkeyUsers => "pushkey_users" in shared 0x25,
    /// `delay_id` → [`crate::service::delayed_events::DelayedEvent`] JSON: a scheduled delayed
    /// event (MSC4140).
    DelayedEvents => "delayed_events" in shared 0x26,
    /// send time (u64 BE) ++ `delay_id` → empty: delayed events in the order they fall due.
    DelayedDue => "delayed_due" in shared 0x27,
    /// `user_id 0xFF delay_id` → empty: a user's delayed events.
    DelayedByUser => "delayed_by_user" in shared 0x28,
    /// `room_id 0xFF event_type 0xFF state_key 0xFF delay_id` → owner's user ID: the delayed
    /// state events a state change by someone else cancels.
    DelayedByState => "delayed_by_state" in shared 0x29,
    /// `user_id 0xFF device_id 0xFF room_id 0xFF txn_id` → `delay_id`: a retried delayed send
    /// gets the same delay ID.
    DelayedTxns => "delayed_txns" in shared 0x2A,
    /// `user_id 0xFF time (u64 BE) ++ delay_id` → [`crate::service::delayed_events::Finalised`]
    /// JSON: what became of a user's latest delayed events.
    DelayedFinalised => "delayed_finalised" in shared 0x2B,
    /// `parent event_id 0xFF stream count (u64 BE)` → child's `origin_server_ts` (u64 BE) ++
    /// `event_id 0xFF rel_type 0xFF type 0xFF sender 0xFF key` (key: an annotation's, else
    /// empty): the events that relate to an event (`m.relates_to`), in timeline order. See
    /// `service::rooms::relations`.
    Relations => "relations",
    /// `room_id 0xFF root event_id` → stream count (u64 BE) of the thread's latest reply in
    /// that room ++ that reply's `relations` value (schema 6; before: keyed by the root alone,
    /// the count only).
    ThreadRoots => "thread_roots",
    /// `room_id 0xFF root event_id` → how many replies the thread has (a counter, i64 BE).
    ThreadCounts => "thread_counts",
    /// `parent event_id 0xFF kind (1 byte) stream count (u64 BE)` → as `relations`: an
    /// event's children by kind (1 edit, 2 reference, 3 thread, 4 annotation, 5 other), so
    /// that bundling reads edits and references without walking reactions and replies; and
    /// `parent event_id 0xFF 0x00` → empty: the parent has (or had) an edit or a reference.
    RelationKinds => "relation_kinds",
    /// `parent event_id 0xFF sender 0xFF type 0xFF key` → stream count: each reaction, for
    /// the one-reaction-per-key rule.
    Annotations => "annotations" in shared 0x2C,
    /// `room_id 0xFF stream count (u64 BE)` → root event ID: each room's threads by latest
    /// activity (an entry counts only while `thread_roots` gives the root that count).
    ThreadActivity => "thread_activity" in shared 0x2D,
    /// `root event_id 0xFF user_id` → nothing: who replied in a thread.
    ThreadParticipants => "thread_participants" in shared 0x2E,
    /// report time (ms, u64 BE) ++ the process's report sequence (u32 BE) ++ 4 random bytes →
    /// `ReportRecord` JSON: reports of events, rooms and users, for the admins
    /// (`service::reports`).
    Reports => "reports" in shared 0x2F,
    /// registration token → `TokenRecord` JSON (`uses_allowed`, `completed`, `expiry_time`):
    /// the tokens admins hand out (`service::registration_tokens`).
    RegistrationTokens => "registration_tokens" in shared 0x30,
    /// `room_id` → the user ID of the admin who blocked it: rooms no local user may join,
    /// knock on or be invited to (`service::admin::rooms`).
    BlockedRooms => "blocked_rooms" in shared 0x31,
    /// stream count (u64 BE) of an admin's `!admin …` message in the admin room →
    /// `{room_id, event_id, sender, line}` JSON: commands still to run and answer, written in
    /// the message's batch (`service::admin::admin_room`).
    AdminCommands => "admin_commands" in shared 0x32,
    /// `room_id 0xFF word 0xFF stream count (u64 BE)` → field (1 body, 2 name, 3 topic) ++
    /// occurrences (u32 BE): the search index (`service::rooms::search`).
    SearchWords => "search_words",
    /// `user_id 0xFF room_id 0xFF root event_id` → state (0 unsubscribed, 1 automatic, 2
    /// manual) ++ stream count of the change (u64 BE): thread subscriptions
    /// (`service::rooms::thread_subscriptions`).
    ThreadSubscriptions => "thread_subscriptions" in shared 0x33,
    /// `user_id 0xFF stream count (u64 BE)` → `room_id 0xFF root event_id`: each user's
    /// subscription changes, the latest per thread.
    ThreadSubscriptionChanges => "thread_subscription_changes",
}

/// A key and its value, as read from a scan.
pub type KeyValue = (Box<[u8]>, Box<[u8]>);

#[derive(Clone, Copy)]
enum Direction {
    Forward,
    Reverse,
}

/// A scan of the keys within a prefix of one table, in key order or reversed, each key as the
/// table knows it (a shared table's tag taken off).
struct Scan<'a> {
    store: &'a Store,
    iter: DBRawIterator<'a>,
    /// The prefix as stored (with the tag).
    prefix: Vec<u8>,
    tag_len: usize,
    direction: Direction,
    started: bool,
    done: bool,
}

impl<'a> Scan<'a> {
    /// `iter` is already at the first key to yield.
    fn new(
        store: &'a Store,
        iter: DBRawIterator<'a>,
        prefix: Vec<u8>,
        cf: Cf,
        direction: Direction,
    ) -> Self {
        Scan {
            store,
            iter,
            prefix,
            tag_len: shared::tag_len(cf),
            direction,
            started: false,
            done: false,
        }
    }
}

impl Iterator for Scan<'_> {
    type Item = Result<KeyValue, rocksdb::Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.started {
            match self.direction {
                Direction::Forward => self.iter.next(),
                Direction::Reverse => self.iter.prev(),
            }
        }
        self.started = true;
        let (Some(key), Some(value)) = (self.iter.key(), self.iter.value()) else {
            self.done = true;
            return self.iter.status().err().map(Err);
        };
        self.store.count_scanned();
        if !key.starts_with(&self.prefix) {
            self.done = true;
            return None;
        }
        Some(Ok((key[self.tag_len..].into(), value.into())))
    }
}

/// Tuning knobs taken from the config.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub cache_capacity_bytes: usize,
    /// All column families' memtables together (RocksDB flushes the largest at this size).
    pub memtable_bytes: usize,
    /// Table files RocksDB keeps open; `None`: half the open-files limit (`files`).
    pub max_open_files: Option<i32>,
    pub durability: Durability,
    /// Keep RocksDB's statistics (block cache hits and misses, compaction bytes) for
    /// [`Store::figures`]: on only when metrics are served.
    pub statistics: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            cache_capacity_bytes: 32 << 20,
            memtable_bytes: 32 << 20,
            max_open_files: None,
            durability: Durability::default(),
            statistics: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database at {0} is in use by another process — is culvert running? Stop it first")]
    Locked(String),
    #[error(
        "the database at {path} has schema version {found}, newer than this culvert understands ({supported}); upgrade culvert"
    )]
    TooNew {
        path: String,
        found: u64,
        supported: u64,
    },
    #[error("database error: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("{0}")]
    Other(String),
}

/// The embedded database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: DB,
    write_options: WriteOptions,
    durability: Durability,
    group: GroupSync,
    cache: Cache,
    cache_capacity: usize,
    /// The database's options when it keeps statistics (their tickers are read from here).
    statistics: Option<Options>,
    point_reads: AtomicU64,
    keys_scanned: AtomicU64,
    /// Bytes of the write batches applied (see [`quiet_flush`]).
    written_bytes: AtomicU64,
    watchers: RwLock<Vec<(Cf, WriteWatcher)>>,
}

/// Told each key a write put into or deleted from a column family it watches, once the write
/// is visible to reads: how a cache above the store forgets what a write changed, whichever
/// code wrote it.
pub type WriteWatcher = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// How much reading the store has done since it was opened: what tests use to show that a
/// request costs a few point reads and short scans, whatever the size of the database.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Point lookups (`get`, `contains`).
    pub point_reads: u64,
    /// Keys visited by scans (each seek counts one).
    pub keys_scanned: u64,
}

impl ReadStats {
    /// Everything read, as one number.
    pub fn total(&self) -> u64 {
        self.point_reads + self.keys_scanned
    }
}

impl std::ops::Sub for ReadStats {
    type Output = ReadStats;
    fn sub(self, earlier: ReadStats) -> ReadStats {
        ReadStats {
            point_reads: self.point_reads - earlier.point_reads,
            keys_scanned: self.keys_scanned - earlier.keys_scanned,
        }
    }
}

/// A set of changes applied all at once by [`Store::write`], or not at all.
#[derive(Default)]
pub struct Batch {
    batch: WriteBatch,
    ops: Vec<(Cf, Vec<u8>, Op)>,
}

enum Op {
    Put(Vec<u8>),
    Delete,
    /// Deletes every key from the op's key (included) up to this one (excluded).
    DeleteRange(Vec<u8>),
    /// Adds to a counter of a [`COUNTER_CFS`] column family.
    Add(i64),
}

/// Column families whose values are counters (i64 BE) changed by [`Batch::add`]: RocksDB adds
/// the operands up (a merge operator), so several additions in one batch, or in batches that
/// did not read each other's, all count.
const COUNTER_CFS: &[Cf] = &[Cf::ThreadCounts];

/// Column families written often and read little, whose memtables are kept small: a phone
/// loading its room list rewrites its sliding-sync connection's entry for every room (a
/// thousand rooms, a few hundred kilobytes), and with the usual memtable size every load stayed
/// in memory until a quiet spell (BENCHMARKS.md, "Connection records in small memtables").
const SMALL_MEMTABLE_CFS: &[Cf] = &[Cf::SlidingConnections, Cf::SlidingRooms];
const SMALL_MEMTABLE_BYTES: usize = 1 << 20;

/// The counters' merge operator: the base value plus every operand.
fn add_counters(
    _key: &[u8],
    existing: Option<&[u8]>,
    operands: &rocksdb::MergeOperands,
) -> Option<Vec<u8>> {
    let sum = existing
        .into_iter()
        .chain(operands)
        .map(parse_counter)
        .fold(0i64, i64::wrapping_add);
    Some(sum.to_be_bytes().to_vec())
}

/// A counter's value (0 for anything that is not one).
pub fn parse_counter(bytes: &[u8]) -> i64 {
    bytes.try_into().map(i64::from_be_bytes).unwrap_or(0)
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn put(&mut self, cf: Cf, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push((cf, key.into(), Op::Put(value.into())));
    }
    pub fn delete(&mut self, cf: Cf, key: impl Into<Vec<u8>>) {
        self.ops.push((cf, key.into(), Op::Delete));
    }
    /// Deletes every key that starts with `prefix` (one range tombstone, however many keys).
    /// Not for column families someone watches ([`Store::watch_writes`]): they are told of
    /// single keys only.
    pub fn delete_prefix(&mut self, cf: Cf, prefix: impl Into<Vec<u8>>) {
        let start = prefix.into();
        // A prefix of 0xFF bytes only (no key of ours) has no end: everything from it.
        let end = keys::prefix_end(&start).unwrap_or_else(|| vec![0xFF; start.len() + 256]);
        self.ops.push((cf, start, Op::DeleteRange(end)));
    }
    /// Adds `delta` to a counter (see [`COUNTER_CFS`]); `put` sets one outright.
    pub fn add(&mut self, cf: Cf, key: impl Into<Vec<u8>>, delta: i64) {
        debug_assert!(COUNTER_CFS.contains(&cf), "{} holds no counters", cf.name());
        self.ops.push((cf, key.into(), Op::Add(delta)));
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    /// Whether the batch puts, deletes or adds anything in `cf`.
    pub fn writes_to(&self, cf: Cf) -> bool {
        self.ops.iter().any(|(op_cf, _, _)| *op_cf == cf)
    }
}

impl Store {
    /// Opens (creating if needed) the database in `path`, then brings its schema up to date.
    pub fn open(path: &Path, options: &StoreOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(path).map_err(|e| {
            StoreError::Other(format!(
                "cannot create database directory {}: {e}",
                path.display()
            ))
        })?;

        let cache = Cache::new_lru_cache(options.cache_capacity_bytes);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        table.set_cache_index_and_filter_blocks(true);
        // Index and filter in 4 KiB partitions under a small top-level block that stays
        // pinned: a point read loads only the partitions it needs. Whole per-file blocks
        // (a large table's filter is over a megabyte) were evicted from a small block cache
        // and read again for nearly every lookup once the database outgrew it: 1.8 GB/s of
        // reads at half a million events (BENCHMARKS.md, "1,000,000 events").
        table.set_index_type(rocksdb::BlockBasedIndexType::TwoLevelIndexSearch);
        table.set_partition_filters(true);
        table.set_metadata_block_size(4096);
        table.set_pin_top_level_index_and_filter(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);

        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        let max_open_files = files::max_open_files(options.max_open_files, files::raise_limit());
        db_opts.set_max_open_files(max_open_files);
        db_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        db_opts.set_block_based_table_factory(&table);
        db_opts.set_keep_log_file_num(4);
        db_opts.set_max_background_jobs(2);
        // Memtables: small per column family (at most 8 MiB, a quarter of the total), and
        // capped for all of them together (RocksDB flushes when the total reaches it;
        // `memory_budget_mb`). Uncapped, 50-odd column families under a write burst kept well
        // over 100 MiB (BENCHMARKS.md).
        let memtable_bytes = options.memtable_bytes.max(4 << 20);
        db_opts.set_write_buffer_size((memtable_bytes / 4).min(8 << 20));
        db_opts.set_db_write_buffer_size(memtable_bytes);
        if options.statistics {
            // Tickers only: histograms and timers cost time on every read.
            db_opts.enable_statistics();
            db_opts.set_statistics_level(rocksdb::statistics::StatsLevel::ExceptHistogramOrTimers);
        }

        // Every family the database has must be opened, or RocksDB refuses: those of tables
        // still to be moved into the shared family, and those a newer culvert created.
        let mut names: Vec<String> = shared::families().map(str::to_owned).collect();
        let existing = DB::list_cf(&db_opts, path).unwrap_or_default();
        for name in &existing {
            if name != "default" && !names.contains(name) {
                names.push(name.clone());
            }
        }
        let descriptors = names.iter().map(|name| {
            let mut cf_opts = db_opts.clone();
            if COUNTER_CFS.iter().any(|cf| cf.name() == name) {
                cf_opts.set_merge_operator_associative("add_i64", add_counters);
            }
            if SMALL_MEMTABLE_CFS.iter().any(|cf| cf.name() == name) {
                cf_opts.set_write_buffer_size(SMALL_MEMTABLE_BYTES);
            }
            ColumnFamilyDescriptor::new(name, cf_opts)
        });

        let mut db = DB::open_cf_descriptors(&db_opts, path, descriptors).map_err(|e| {
            let text = e.to_string();
            if text.contains("LOCK") && (text.contains("lock") || text.contains("unavailable")) {
                StoreError::Locked(path.display().to_string())
            } else {
                StoreError::Rocks(e)
            }
        })?;
        shared::move_old_families(&mut db, &existing)?;

        if max_open_files >= 0 {
            let tables = db.live_files().map(|files| files.len()).unwrap_or(0);
            if tables > max_open_files as usize {
                tracing::warn!(
                    tables,
                    max_open_files,
                    "the database has more table files than rocksdb_max_open_files: reads will \
                     close and reopen tables, which is slow; raise it or leave it unset"
                );
            }
        }

        let mut write_options = WriteOptions::default();
        write_options.set_sync(options.durability == Durability::Each);

        let store = Store {
            inner: Arc::new(Inner {
                db,
                write_options,
                durability: options.durability,
                group: GroupSync::default(),
                cache,
                cache_capacity: options.cache_capacity_bytes,
                statistics: options.statistics.then(|| db_opts.clone()),
                point_reads: AtomicU64::new(0),
                keys_scanned: AtomicU64::new(0),
                written_bytes: AtomicU64::new(0),
                watchers: RwLock::new(Vec::new()),
            }),
        };
        migrations::run(&store, path)?;
        Ok(store)
    }

    /// The column family that holds `cf` (its own, or the shared one).
    fn handle(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        self.family(shared::family_of(cf))
    }

    fn family(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.inner
            .db
            .cf_handle(name)
            .expect("every family of shared::families is opened in Store::open")
    }

    /// Every column family of the database (each table's own and the shared one).
    fn families(&self) -> impl Iterator<Item = &rocksdb::ColumnFamily> {
        shared::families().map(|name| self.family(name))
    }

    /// Calls `watcher` with every key written to `cf` from now on (see [`WriteWatcher`]).
    pub fn watch_writes(&self, cf: Cf, watcher: WriteWatcher) {
        self.inner
            .watchers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push((cf, watcher));
    }

    /// Reads done so far (see [`ReadStats`]).
    pub fn read_stats(&self) -> ReadStats {
        ReadStats {
            point_reads: self.inner.point_reads.load(Ordering::Relaxed),
            keys_scanned: self.inner.keys_scanned.load(Ordering::Relaxed),
        }
    }

    fn count_scanned(&self) {
        self.inner.keys_scanned.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, rocksdb::Error> {
        self.inner.point_reads.fetch_add(1, Ordering::Relaxed);
        self.inner
            .db
            .get_cf(self.handle(cf), shared::stored_key(cf, key))
    }

    pub fn contains(&self, cf: Cf, key: &[u8]) -> Result<bool, rocksdb::Error> {
        self.inner.point_reads.fetch_add(1, Ordering::Relaxed);
        Ok(self
            .inner
            .db
            .get_pinned_cf(self.handle(cf), shared::stored_key(cf, key))?
            .is_some())
    }

    /// Applies every change in `batch` atomically; returns once the write is as safe as the
    /// `durability` setting asks.
    pub fn write(&self, batch: Batch) -> Result<(), rocksdb::Error> {
        let pending = self.write_pending(batch)?;
        self.make_durable(pending)
    }

    /// Applies `batch` atomically, but with [`Durability::Group`] does not wait for the fsync:
    /// for a writer holding a lock others wait for, which releases it and then calls
    /// [`Store::make_durable`] before acknowledging the write.
    pub fn write_pending(&self, batch: Batch) -> Result<Pending, rocksdb::Error> {
        let Batch { mut batch, ops } = batch;
        let watchers = self
            .inner
            .watchers
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let mut watched = Vec::new();
        let (mut stored, mut stored_end) = (Vec::new(), Vec::new());
        for (cf, key, value) in ops {
            for (i, _) in watchers.iter().enumerate().filter(|(_, (w, _))| *w == cf) {
                debug_assert!(
                    !matches!(value, Op::DeleteRange(_)),
                    "range deletions in watched {}",
                    cf.name()
                );
                watched.push((i, key.clone()));
            }
            let family = self.handle(cf);
            let stored_key = shared::stored_key_in(cf, &key, &mut stored);
            match value {
                Op::Put(value) => batch.put_cf(family, stored_key, value),
                Op::Delete => batch.delete_cf(family, stored_key),
                Op::DeleteRange(end) => batch.delete_range_cf(
                    family,
                    stored_key,
                    shared::stored_key_in(cf, &end, &mut stored_end),
                ),
                Op::Add(delta) => batch.merge_cf(family, stored_key, delta.to_be_bytes()),
            }
        }
        let size = batch.size_in_bytes() as u64;
        self.inner.db.write_opt(batch, &self.inner.write_options)?;
        self.inner.written_bytes.fetch_add(size, Ordering::Relaxed);
        for (i, key) in watched {
            (watchers[i].1)(&key);
        }
        Ok(Pending(
            (self.inner.durability == Durability::Group).then(|| self.inner.group.ticket()),
        ))
    }

    /// Applies `batch` atomically and returns without waiting for any fsync, whatever the
    /// `durability` setting: only for writes whose loss in a power cut is harmless and which
    /// are too frequent to wait for the disk (a pusher's position: at worst a notification is
    /// sent again, and gateways de-duplicate by event ID; a sliding-sync connection's record:
    /// the client's position becomes unknown and it starts again) — or that matter only through a
    /// later write that *is* waited for (an event's short ID, a state snapshot it refers to):
    /// every column family shares one write-ahead log, recovered as a prefix, so the fsync the
    /// later write waits for makes this one durable too.
    pub fn write_without_waiting(&self, batch: Batch) -> Result<(), rocksdb::Error> {
        // Not waited for: a later fsync (anyone's) covers it.
        let _unsynced = self.write_pending(batch)?;
        Ok(())
    }

    /// Waits until a pending write is on disk (with [`Durability::Group`]; at once otherwise).
    /// On a runtime worker this blocks the worker for the fsync (about a millisecond here; the
    /// other workers steal its queued tasks). Handing its tasks to a new thread meanwhile
    /// (`block_in_place`) was tried and measured: the threads it created each took a heap of
    /// their own, and a 1,000-room sliding sync peaked 16 MiB higher. Requests on hot paths
    /// wait asynchronously instead ([`Store::make_durable_async`]).
    pub fn make_durable(&self, pending: Pending) -> Result<(), rocksdb::Error> {
        match pending.0 {
            Some(ticket) => self.inner.group.wait(&self.inner.db, ticket),
            None => Ok(()),
        }
    }

    /// [`Store::make_durable`] for async callers: no worker thread is held while waiting.
    pub async fn make_durable_async(&self, pending: Pending) -> Result<(), rocksdb::Error> {
        match pending.0 {
            Some(ticket) => self.inner.group.wait_async(self, ticket).await,
            None => Ok(()),
        }
    }

    /// Returns once every write made before this call is on disk (with
    /// [`Durability::Group`]; at once otherwise).
    pub async fn wait_durable_async(&self) -> Result<(), rocksdb::Error> {
        let pending = Pending(
            (self.inner.durability == Durability::Group).then(|| self.inner.group.ticket()),
        );
        self.make_durable_async(pending).await
    }

    /// One-key convenience around [`Store::write`].
    pub fn put(&self, cf: Cf, key: &[u8], value: &[u8]) -> Result<(), rocksdb::Error> {
        let mut batch = Batch::new();
        batch.put(cf, key, value);
        self.write(batch)
    }

    /// Every key/value whose key starts with `prefix`, in key order.
    pub fn scan_prefix<'a>(
        &'a self,
        cf: Cf,
        prefix: &'a [u8],
    ) -> impl Iterator<Item = Result<KeyValue, rocksdb::Error>> + 'a {
        self.scan_prefix_from(cf, prefix, prefix)
    }

    /// Like [`Store::scan_prefix`], but starting at `start` (a key within the prefix).
    pub fn scan_prefix_from<'a>(
        &'a self,
        cf: Cf,
        prefix: &'a [u8],
        start: &[u8],
    ) -> impl Iterator<Item = Result<KeyValue, rocksdb::Error>> + 'a {
        let prefix = shared::stored_key(cf, prefix).into_owned();
        // Bounded: past its last key, an unbounded iterator would walk on through whatever
        // follows (the tombstones of other prefixes too) looking for one more live key.
        let mut options = ReadOptions::default();
        if let Some(end) = keys::prefix_end(&prefix) {
            options.set_iterate_upper_bound(end);
        }
        let mut iter = self.inner.db.raw_iterator_cf_opt(self.handle(cf), options);
        iter.seek(shared::stored_key(cf, start));
        Scan::new(self, iter, prefix, cf, Direction::Forward)
    }

    /// Keys within `prefix` at or before `start`, newest first (a reverse scan).
    pub fn scan_prefix_rev_from<'a>(
        &'a self,
        cf: Cf,
        prefix: &'a [u8],
        start: &[u8],
    ) -> impl Iterator<Item = Result<KeyValue, rocksdb::Error>> + 'a {
        let prefix = shared::stored_key(cf, prefix).into_owned();
        let mut options = ReadOptions::default();
        options.set_iterate_lower_bound(prefix.clone());
        let mut iter = self.inner.db.raw_iterator_cf_opt(self.handle(cf), options);
        iter.seek_for_prev(shared::stored_key(cf, start));
        Scan::new(self, iter, prefix, cf, Direction::Reverse)
    }

    /// Whether the table holds no key at all (one seek, not a scan).
    pub fn is_empty(&self, cf: Cf) -> Result<bool, rocksdb::Error> {
        let table = shared::stored_key(cf, &[]);
        let mut iter = self.inner.db.raw_iterator_cf(self.handle(cf));
        iter.seek(&table);
        match iter.key() {
            Some(key) => Ok(!key.starts_with(&table)),
            None => iter.status().map(|()| true),
        }
    }

    /// Syncs the write-ahead log to disk (everything written is then durable) and writes out
    /// the default column family's memtable; called when a server, an import or a command ends.
    /// The other column families' memtables are left to the log (`flush_memtables` writes them).
    pub fn flush(&self) -> Result<(), rocksdb::Error> {
        self.inner.db.flush_wal(true)?;
        self.inner.db.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_up_within_a_batch_across_batches_and_restarts() {
        let dir = tempfile::TempDir::new().unwrap();
        let read = |store: &Store| {
            store
                .get(Cf::ThreadCounts, b"k")
                .unwrap()
                .map(|v| parse_counter(&v))
        };
        {
            let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
            let mut batch = Batch::new();
            batch.add(Cf::ThreadCounts, b"k".to_vec(), 1);
            batch.add(Cf::ThreadCounts, b"k".to_vec(), 1);
            store.write(batch).unwrap();
            let mut batch = Batch::new();
            batch.add(Cf::ThreadCounts, b"k".to_vec(), -1);
            batch.add(Cf::ThreadCounts, b"k".to_vec(), 5);
            store.write(batch).unwrap();
            assert_eq!(read(&store), Some(6));
        }
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        assert_eq!(read(&store), Some(6));
        let mut batch = Batch::new();
        batch.put(Cf::ThreadCounts, b"k".to_vec(), 10i64.to_be_bytes());
        batch.add(Cf::ThreadCounts, b"k".to_vec(), 2);
        store.write(batch).unwrap();
        assert_eq!(read(&store), Some(12));
    }

    #[test]
    fn batches_persist_and_prefix_scans_stay_inside_their_prefix() {
        let dir = tempfile::TempDir::new().unwrap();
        {
            let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
            let mut batch = Batch::new();
            batch.put(Cf::Devices, keys::join([b"@a:x", b"D1"]), b"1".to_vec());
            batch.put(Cf::Devices, keys::join([b"@a:x", b"D2"]), b"2".to_vec());
            batch.put(Cf::Devices, keys::join([b"@a:xy", b"D3"]), b"3".to_vec());
            store.write(batch).unwrap();
            store.flush().unwrap();
        }
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let prefix = keys::prefix(b"@a:x");
        let values: Vec<Vec<u8>> = store
            .scan_prefix(Cf::Devices, &prefix)
            .map(|item| item.unwrap().1.to_vec())
            .collect();
        assert_eq!(values, vec![b"1".to_vec(), b"2".to_vec()]);
        assert!(!store.is_empty(Cf::Devices).unwrap());
        assert!(store.is_empty(Cf::Users).unwrap());
    }

    #[test]
    fn shared_tables_keep_to_their_own_keys() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        // The same keys in two shared tables and in a table of its own, and keys at the ends
        // of the byte range.
        let keys_written: [&[u8]; 5] = [b"", b"\x00", b"a", b"a\xff", b"\xff\xff"];
        let mut batch = Batch::new();
        for (n, cf) in [Cf::Users, Cf::Profile, Cf::Pdus].into_iter().enumerate() {
            for key in keys_written {
                batch.put(cf, key, vec![n as u8]);
            }
        }
        store.write(batch).unwrap();
        for (n, cf) in [Cf::Users, Cf::Profile, Cf::Pdus].into_iter().enumerate() {
            let all: Vec<_> = store
                .scan_prefix(cf, b"")
                .map(|item| item.unwrap())
                .collect();
            assert_eq!(all.len(), keys_written.len(), "{}", cf.name());
            for ((key, value), written) in all.iter().zip(keys_written) {
                assert_eq!(
                    (&**key, &**value),
                    (written, &[n as u8][..]),
                    "{}",
                    cf.name()
                );
            }
            let backwards: Vec<_> = store
                .scan_prefix_rev_from(cf, b"", &[0xFF; 8])
                .map(|item| item.unwrap().0)
                .collect();
            assert_eq!(backwards.len(), keys_written.len(), "{}", cf.name());
            assert_eq!(&*backwards[0], b"\xff\xff");
            let under_a: Vec<_> = store
                .scan_prefix(cf, b"a")
                .map(|item| item.unwrap().0)
                .collect();
            assert_eq!(under_a, [&b"a"[..], b"a\xff"].map(Box::from));
            let from: Vec<_> = store
                .scan_prefix_from(cf, b"a", b"a\x01")
                .map(|item| item.unwrap().0)
                .collect();
            assert_eq!(from, [Box::from(&b"a\xff"[..])]);
            assert_eq!(store.get(cf, b"a").unwrap(), Some(vec![n as u8]));
            assert!(store.contains(cf, b"\xff\xff").unwrap());
            assert!(!store.contains(cf, b"b").unwrap());
            assert_eq!(store.count_keys(cf, 100), keys_written.len());
            assert!(!store.is_empty(cf).unwrap());
        }
        // Deleting a prefix (a range) and a key in one shared table leaves the others alone.
        let mut batch = Batch::new();
        batch.delete_prefix(Cf::Profile, b"a".to_vec());
        batch.delete_prefix(Cf::Profile, b"\xff".to_vec());
        batch.delete(Cf::Profile, b"".to_vec());
        store.write(batch).unwrap();
        let left: Vec<_> = store
            .scan_prefix(Cf::Profile, b"")
            .map(|item| item.unwrap().0)
            .collect();
        assert_eq!(left, [Box::from(&b"\x00"[..])]);
        assert_eq!(store.count_keys(Cf::Users, 100), keys_written.len());
        assert_eq!(store.count_keys(Cf::Pdus, 100), keys_written.len());
        assert!(store.is_empty(Cf::Pushers).unwrap());
        assert_eq!(store.count_keys(Cf::Pushers, 100), 0);
        assert_eq!(store.scan_prefix(Cf::Pushers, b"").count(), 0);
    }

    #[test]
    fn a_database_with_a_family_per_table_is_moved_into_the_shared_family() {
        let dir = tempfile::TempDir::new().unwrap();
        let old_tables = [Cf::Users, Cf::Profile, Cf::ToDevice];
        {
            // The layout of schema 8: every table a family of its own.
            let mut options = Options::default();
            options.create_if_missing(true);
            options.create_missing_column_families(true);
            let names = Cf::ALL.iter().map(|cf| cf.name());
            let db = DB::open_cf(&options, dir.path(), names).unwrap();
            db.put_cf(
                db.cf_handle("global").unwrap(),
                b"schema_version",
                keys::u64_be(8),
            )
            .unwrap();
            for (n, cf) in old_tables.iter().enumerate() {
                let family = db.cf_handle(cf.name()).unwrap();
                for i in 0..1000u32 {
                    db.put_cf(family, i.to_be_bytes(), [n as u8; 100]).unwrap();
                }
            }
            db.put_cf(db.cf_handle("pdus").unwrap(), b"p", b"kept")
                .unwrap();
        }
        for _ in 0..2 {
            let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
            for (n, cf) in old_tables.iter().enumerate() {
                assert_eq!(store.count_keys(*cf, 10_000), 1000, "{}", cf.name());
                assert_eq!(
                    store.get(*cf, &999u32.to_be_bytes()).unwrap(),
                    Some(vec![n as u8; 100])
                );
            }
            assert_eq!(store.get(Cf::Pdus, b"p").unwrap(), Some(b"kept".to_vec()));
            let version = store.get(Cf::Global, b"schema_version").unwrap().unwrap();
            assert_eq!(keys::parse_u64_be(&version), Some(migrations::CURRENT));
            drop(store);
            let families = DB::list_cf(&Options::default(), dir.path()).unwrap();
            let mut expected: Vec<String> = shared::families().map(str::to_owned).collect();
            expected.push("default".to_owned());
            expected.sort();
            let mut found = families.clone();
            found.sort();
            assert_eq!(found, expected);
        }
    }

    #[test]
    fn a_database_from_a_newer_culvert_is_refused() {
        let dir = tempfile::TempDir::new().unwrap();
        {
            let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
            let found = store.get(Cf::Global, b"schema_version").unwrap().unwrap();
            assert_eq!(keys::parse_u64_be(&found), Some(migrations::CURRENT));
            store
                .put(
                    Cf::Global,
                    b"schema_version",
                    &keys::u64_be(migrations::CURRENT + 1),
                )
                .unwrap();
        }
        match Store::open(dir.path(), &StoreOptions::default()) {
            Err(StoreError::TooNew {
                found, supported, ..
            }) => {
                assert_eq!(
                    (found, supported),
                    (migrations::CURRENT + 1, migrations::CURRENT)
                );
            }
            Err(other) => panic!("expected TooNew, got {other}"),
            Ok(_) => panic!("expected TooNew, but the database opened"),
        }
    }

    #[test]
    fn a_second_open_reports_the_lock() {
        let dir = tempfile::TempDir::new().unwrap();
        let _first = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        match Store::open(dir.path(), &StoreOptions::default()) {
            Err(StoreError::Locked(path)) => assert!(path.contains(&*dir.path().to_string_lossy())),
            Err(other) => panic!("expected Locked, got {other}"),
            Ok(_) => panic!("a second open must fail"),
        }
    }
}
