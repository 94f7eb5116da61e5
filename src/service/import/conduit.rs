//! `culvert import conduit`: a Conduit database (0.9–0.11, RocksDB; schema 18 tested) into
//! this server's. How Conduit lays out its trees is written down in
//! `docs/design/conduit-layout.md` (studied from its public source and checked against a
//! database a real Conduit wrote); this module reads them:
//!
//! - the server's signing key (`global` `keypair`): the server stays the same server to
//!   others, and every event it signed still verifies;
//! - accounts (`userid_password`, Argon2 PHC strings as ours), profiles, devices with their
//!   access tokens (clients stay logged in), account data (push rules among it) and filters
//!   under their IDs; admins are the members of Conduit's admin room;
//! - rooms: each room's events in Conduit's timeline order, as their servers signed them,
//!   through the append path as [`Origin::Import`](crate::service::rooms::timeline::pipeline::Origin)
//!   (auth-checked; indexed; sent nowhere); aliases and the room directory;
//! - media: the files (content-addressed by SHA-256, as here) with their names, types and
//!   uploaders.
//!
//! - end-to-end encryption: devices' identity and one-time keys, key backups (under their
//!   version numbers) with their sessions, to-device messages not yet delivered.
//!
//! - public read receipts (each user's latest per room), private read markers (as private
//!   receipts at the last event they reach);
//! - cross-signing keys (with the signatures Conduit merged into them), pushers (on the user's
//!   most recently seen device: Conduit keeps none), application-service registrations, other
//!   servers' signing keys (kept when signed by their server).
//!
//! Conduit's own admin room and its server user are left out on purpose: culvert makes its
//! own (`#admins`, `@culvert`).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use futures_util::StreamExt;
use rocksdb::{DB, IteratorMode, Options};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedRoomAliasId, OwnedRoomId,
    OwnedUserId, ServerName, UserId, api::client::filter::FilterDefinition,
};
use serde_json::Value;

use super::{ImportOptions, ImportReport, Progress};
use crate::{
    config::Config,
    service::{
        Services, StartError,
        devices::Devices,
        media::MediaRecord,
        rooms::{state_res::State, timeline::Appended},
    },
    store::Batch,
};

const SEP: u8 = 0xFF;

/// The schema versions whose layout this reader knows (Conduit 0.9 wrote 13; 0.11, 18).
const KNOWN_VERSIONS: std::ops::RangeInclusive<u64> = 13..=18;

/// A Conduit database, opened read-only (RocksDB replays its write-ahead log into memory and
/// writes nothing: Conduit never flushes, so much of its data may be in the log alone).
pub struct ConduitDb {
    db: DB,
    path: PathBuf,
}

type Row = (Box<[u8]>, Box<[u8]>);

impl ConduitDb {
    pub fn open(path: &Path) -> Result<Self, String> {
        let options = Options::default();
        let trees = DB::list_cf(&options, path)
            .map_err(|e| format!("{} is no RocksDB database: {e}", path.display()))?;
        if !trees.iter().any(|t| t == "userid_password") {
            return Err(format!(
                "{} is a RocksDB database, but not Conduit's (no userid_password tree)",
                path.display()
            ));
        }
        let db = DB::open_cf_for_read_only(&options, path, &trees, false)
            .map_err(|e| format!("cannot open the Conduit database: {e}"))?;
        Ok(Self {
            db,
            path: path.to_owned(),
        })
    }

    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        let Some(cf) = self.db.cf_handle(tree) else {
            return Ok(None);
        };
        self.db
            .get_cf(cf, key)
            .map_err(|e| format!("reading {tree}: {e}"))
    }

    /// The rows of `tree` whose keys start with `prefix`, in key order (none for a tree this
    /// Conduit did not have).
    fn scan<'a>(
        &'a self,
        tree: &str,
        prefix: &'a [u8],
    ) -> Box<dyn Iterator<Item = Result<Row, String>> + 'a> {
        let Some(cf) = self.db.cf_handle(tree) else {
            return Box::new(std::iter::empty());
        };
        let tree = tree.to_owned();
        Box::new(
            self.db
                .iterator_cf(cf, IteratorMode::From(prefix, rocksdb::Direction::Forward))
                .map(move |row| row.map_err(|e| format!("reading {tree}: {e}")))
                .take_while(move |row| row.as_ref().map_or(true, |(k, _)| k.starts_with(prefix))),
        )
    }

    fn count(&self, tree: &str) -> u64 {
        self.scan(tree, &[]).count() as u64
    }
}

fn text(bytes: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(bytes).map_err(|_| "a key or value is not UTF-8".to_owned())
}

fn u64_be(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}

/// Splits at the first 0xFF: `(before, after)`.
fn split_first(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = bytes.iter().position(|b| *b == SEP)?;
    Some((&bytes[..at], &bytes[at + 1..]))
}

/// What the source says about the whole server, read before anything is written.
struct Server {
    key_version: String,
    pkcs8: Vec<u8>,
    /// Conduit's admin room (what `#admins` names) and its server user: not imported.
    admin_room: Option<OwnedRoomId>,
    server_user: OwnedUserId,
    admins: Vec<OwnedUserId>,
}

fn read_server(source: &ConduitDb, server_name: &ServerName) -> Result<Server, String> {
    match source
        .get("global", b"version")?
        .as_deref()
        .and_then(u64_be)
    {
        Some(v) if KNOWN_VERSIONS.contains(&v) => {}
        Some(v) => {
            return Err(format!(
                "the Conduit database has schema version {v}; this import knows versions {}–{} (Conduit 0.9–0.11)",
                KNOWN_VERSIONS.start(),
                KNOWN_VERSIONS.end()
            ));
        }
        None => return Err("the Conduit database has no schema version".into()),
    }
    // Every account is of the server whose database this is.
    for row in source.scan("userid_password", &[]) {
        let (key, _) = row?;
        let user = text(&key)?;
        let user_id = UserId::parse(user).map_err(|e| format!("account {user:?}: {e}"))?;
        if user_id.server_name() != server_name {
            return Err(format!(
                "the Conduit database is {}'s, but the config's server_name is {server_name}: set server_name = \"{}\" (a server's name never changes)",
                user_id.server_name(),
                user_id.server_name()
            ));
        }
    }
    let keypair = source
        .get("global", b"keypair")?
        .ok_or("the Conduit database has no signing key")?;
    let (version, pkcs8) = split_first(&keypair).ok_or("the signing key is unreadable")?;
    let admin_room = match source.get("alias_roomid", b"admins")? {
        Some(room) => Some(
            OwnedRoomId::try_from(text(&room)?).map_err(|e| format!("the admin room's ID: {e}"))?,
        ),
        None => None,
    };
    let server_user = UserId::parse(format!("@conduit:{server_name}"))
        .map_err(|e| format!("the server user: {e}"))?;
    let mut admins = Vec::new();
    if let Some(room) = &admin_room {
        let mut prefix = room.as_bytes().to_vec();
        prefix.push(SEP);
        for row in source.scan("roomuserid_joined", &prefix) {
            let (key, _) = row?;
            let user = text(&key[prefix.len()..])?;
            if let Ok(user_id) = UserId::parse(user)
                && user_id != server_user
            {
                admins.push(user_id);
            }
        }
    }
    Ok(Server {
        key_version: text(version)?.to_owned(),
        pkcs8: pkcs8.to_vec(),
        admin_room,
        server_user,
        admins,
    })
}

/// Imports the Conduit database at `from` into the database `config` names. The server must
/// not run (the database is opened here).
pub async fn import(
    config: Config,
    from: &Path,
    options: ImportOptions,
) -> Result<ImportReport, StartError> {
    let source = ConduitDb::open(from).map_err(StartError::Other)?;
    let server = read_server(&source, &config.server_name).map_err(StartError::Other)?;
    let mut report = ImportReport::default();
    let services = super::open_target(
        &config,
        options,
        &server.key_version,
        &server.pkcs8,
        &mut report,
    )?;
    let services = services.as_deref();
    import_accounts(&source, &server, services, &mut report).map_err(StartError::Other)?;
    import_rooms(&source, &server, services, &mut report).await?;
    import_account_data(&source, &server, services, &mut report).await?;
    import_receipts(&source, &server, services, &mut report).await?;
    import_media(&source, &config, services, &mut report).await?;
    import_e2ee(&source, services, &mut report).await?;
    import_pushers_and_appservices(&source, services, &mut report).await?;
    super::finish(services)?;
    Ok(report)
}

fn import_accounts(
    source: &ConduitDb,
    server: &Server,
    services: Option<&Services>,
    report: &mut ImportReport,
) -> Result<(), String> {
    let mut progress = Progress::new("accounts", source.count("userid_password"));
    for row in source.scan("userid_password", &[]) {
        let (key, hash) = row?;
        progress.step();
        let user_id = UserId::parse(text(&key)?).map_err(|e| e.to_string())?;
        if user_id == server.server_user {
            report.skip(format!(
                "{user_id}: Conduit's server user (culvert has its own)"
            ));
            continue;
        }
        // An empty hash: no password, which Conduit also takes as deactivated.
        let hash = text(&hash)?;
        let deactivated = hash.is_empty();
        let password_hash = (!hash.is_empty()).then(|| hash.to_owned());
        let admin = server.admins.contains(&user_id);
        let mut batch = Batch::new();
        if let Some(services) = services
            && !services
                .users
                .import_into(&mut batch, &user_id, password_hash, admin, deactivated)
                .map_err(|e| e.to_string())?
        {
            report.skip(format!("{user_id}: an account of that name exists here"));
            continue;
        }
        report.count("accounts");
        for (tree, field) in [
            ("userid_displayname", "displayname"),
            ("userid_avatarurl", "avatar_url"),
        ] {
            if let Some(value) = source.get(tree, key.as_ref())? {
                let value = Value::String(text(&value)?.to_owned());
                crate::service::users::Users::import_profile_field_into(
                    &mut batch, &user_id, field, &value,
                )
                .map_err(|e| e.to_string())?;
            }
        }
        let mut prefix = key.to_vec();
        prefix.push(SEP);
        for row in source.scan("userdeviceid_metadata", &prefix) {
            let (device_key, metadata) = row?;
            let device_id = text(&device_key[prefix.len()..])?;
            let metadata: Value = serde_json::from_slice(&metadata)
                .map_err(|e| format!("{user_id}'s device {device_id}: {e}"))?;
            let token = source.get("userdeviceid_token", &device_key)?;
            let token = token.as_deref().map(text).transpose()?;
            Devices::import_device_into(
                &mut batch,
                &user_id,
                device_id.into(),
                metadata["display_name"].as_str().map(str::to_owned),
                metadata["last_seen_ts"].as_u64(),
                token,
            )
            .map_err(|e| e.to_string())?;
            report.count("devices");
        }
        for row in source.scan("userfilterid_filter", &prefix) {
            let (filter_key, filter) = row?;
            let filter_id = text(&filter_key[prefix.len()..])?;
            match serde_json::from_slice::<FilterDefinition>(&filter) {
                Ok(filter) => {
                    if let Some(services) = services {
                        services
                            .filters
                            .import(&user_id, filter_id, &filter)
                            .map_err(|e| e.to_string())?;
                    }
                    report.count("filters");
                }
                Err(e) => report.skip(format!("{user_id}'s filter {filter_id}: {e}")),
            }
        }
        if let Some(services) = services {
            services.store.write(batch).map_err(|e| e.to_string())?;
        }
    }
    progress.finish();
    Ok(())
}

/// A room's events in Conduit's order: `pduid_pdu` rows under its short ID.
fn room_events<'a>(
    source: &'a ConduitDb,
    short_room: &'a [u8],
) -> impl Iterator<Item = Result<(OwnedEventId, CanonicalJsonObject), String>> + 'a {
    source.scan("pduid_pdu", short_room).map(|row| {
        let (_, value) = row?;
        let mut pdu: CanonicalJsonObject =
            serde_json::from_slice(&value).map_err(|e| format!("a stored event: {e}"))?;
        // Conduit adds the ID and its own `unsigned` (transaction IDs, a redaction's copy,
        // cached thread summaries) to the event as its server signed it.
        let event_id = match pdu.remove("event_id") {
            Some(CanonicalJsonValue::String(id)) => {
                OwnedEventId::try_from(id).map_err(|e| format!("a stored event's ID: {e}"))?
            }
            _ => return Err("a stored event has no event_id".into()),
        };
        pdu.remove("unsigned");
        Ok((event_id, pdu))
    })
}

async fn import_rooms(
    source: &ConduitDb,
    server: &Server,
    services: Option<&Services>,
    report: &mut ImportReport,
) -> Result<(), StartError> {
    let mut rooms: Vec<(u64, OwnedRoomId)> = Vec::new();
    for row in source.scan("roomid_shortroomid", &[]) {
        let (room, short) = row.map_err(StartError::Other)?;
        let room = text(&room).map_err(StartError::Other)?;
        let (Ok(room_id), Some(short)) = (OwnedRoomId::try_from(room), u64_be(&short)) else {
            report.skip(format!("room {room:?}: unreadable"));
            continue;
        };
        rooms.push((short, room_id));
    }
    // Conduit's order, so that rooms come in the order they were made.
    rooms.sort();
    let mut progress = Progress::new("events", source.count("pduid_pdu"));
    for (short, room_id) in &rooms {
        if server.admin_room.as_ref() == Some(room_id) {
            report.skip(format!(
                "{room_id}: Conduit's admin room (culvert makes its own, #admins)"
            ));
            continue;
        }
        let mut imported = 0;
        let prefix = short.to_be_bytes();
        for event in room_events(source, &prefix) {
            progress.step();
            let (event_id, pdu) = match event {
                Ok(event) => event,
                Err(e) => {
                    report.skip(format!("an event of {room_id}: {e}"));
                    continue;
                }
            };
            let Some(services) = services else {
                imported += 1;
                report.count("events");
                continue;
            };
            let mut outcome = services
                .timeline
                .import_event(room_id, &event_id, pdu.clone(), None)
                .await;
            // Earlier events this database never had (a room joined over federation, history
            // not fetched): the state before the event as Conduit kept it.
            if let Ok(Appended::MissingPrevious(_)) = &outcome {
                match state_before(source, services, &event_id, &pdu) {
                    Ok(Some(state)) => {
                        outcome = services
                            .timeline
                            .import_event(room_id, &event_id, pdu, Some(state))
                            .await;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        report.skip(format!("{event_id} in {room_id}: {e}"));
                        continue;
                    }
                }
            }
            if super::tally(report, room_id, &event_id, outcome) {
                imported += 1;
            }
        }
        if imported > 0 {
            report.count("rooms");
        }
    }
    progress.finish();

    // Aliases (keyed by their localpart) and the room directory.
    for row in source.scan("alias_roomid", &[]) {
        let (localpart, room) = row.map_err(StartError::Other)?;
        let (Ok(localpart), Ok(room)) = (text(&localpart), text(&room)) else {
            continue;
        };
        let Some(services) = services else {
            report.count("aliases");
            continue;
        };
        let (Ok(alias), Ok(room_id)) = (
            OwnedRoomAliasId::try_from(format!("#{localpart}:{}", services.server_name)),
            OwnedRoomId::try_from(room),
        ) else {
            report.skip(format!("alias {localpart:?}: unreadable"));
            continue;
        };
        if server.admin_room.as_ref() == Some(&room_id) {
            continue;
        }
        let creator = source
            .get("alias_userid", localpart.as_bytes())
            .map_err(StartError::Other)?
            .and_then(|c| UserId::parse(String::from_utf8_lossy(&c).as_ref()).ok())
            .unwrap_or_else(|| server.server_user.clone());
        match services.create_alias(&alias, &room_id, &creator) {
            Ok(()) => report.count("aliases"),
            Err(e) => report.skip(format!("{alias}: {e}")),
        }
    }
    for row in source.scan("publicroomids", &[]) {
        let (room, _) = row.map_err(StartError::Other)?;
        let Ok(room_id) = OwnedRoomId::try_from(String::from_utf8_lossy(&room).as_ref()) else {
            continue;
        };
        if let Some(services) = services {
            if services.timeline.room(&room_id)?.is_none() {
                report.skip(format!("{room_id} in the directory: not imported"));
                continue;
            }
            services.publish(&room_id, true)?;
        }
        report.count("rooms in the directory");
    }
    Ok(())
}

async fn import_account_data(
    source: &ConduitDb,
    server: &Server,
    services: Option<&Services>,
    report: &mut ImportReport,
) -> Result<(), StartError> {
    // `roomusertype_roomuserdataid` points at each (room, user, type)'s current row.
    for row in source.scan("roomusertype_roomuserdataid", &[]) {
        let (key, pointer) = row.map_err(StartError::Other)?;
        let mut parts = key.split(|b| *b == SEP);
        let (Some(room), Some(user), Some(kind)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (Ok(user), Ok(kind)) = (text(user), text(kind)) else {
            continue;
        };
        let Ok(user_id) = UserId::parse(user) else {
            continue;
        };
        if user_id == server.server_user {
            continue;
        }
        let room_id = if room.is_empty() {
            None
        } else {
            match OwnedRoomId::try_from(String::from_utf8_lossy(room).as_ref()) {
                Ok(room_id) => Some(room_id),
                Err(_) => continue,
            }
        };
        if room_id.is_some() && room_id == server.admin_room {
            continue;
        }
        let Some(event) = source
            .get("roomuserdataid_accountdata", &pointer)
            .map_err(StartError::Other)?
        else {
            continue;
        };
        let event: Value = match serde_json::from_slice(&event) {
            Ok(event) => event,
            Err(e) => {
                report.skip(format!("{user_id}'s account data {kind}: {e}"));
                continue;
            }
        };
        let content = serde_json::value::to_raw_value(&event["content"])
            .map_err(|e| StartError::Other(e.to_string()))?;
        if let Some(services) = services {
            if let Some(room_id) = &room_id
                && services.timeline.room(room_id)?.is_none()
            {
                report.skip(format!(
                    "{user_id}'s {kind} for {room_id}: the room is not imported"
                ));
                continue;
            }
            services
                .set_account_data(&user_id, room_id.as_deref(), kind, &content)
                .await?;
        }
        report.count("account data");
    }
    Ok(())
}

async fn import_media(
    source: &ConduitDb,
    config: &Config,
    services: Option<&Services>,
    report: &mut ImportReport,
) -> Result<(), StartError> {
    let media_dir = source.path.join("media");
    let mut progress = Progress::new("media", source.count("servernamemediaid_metadata"));
    for row in source.scan("servernamemediaid_metadata", &[]) {
        let (key, value) = row.map_err(StartError::Other)?;
        progress.step();
        let Some((server, media_id)) = split_first(&key) else {
            continue;
        };
        let (Ok(server), Ok(media_id)) = (text(server), text(media_id)) else {
            continue;
        };
        let Ok(server) = <&ServerName>::try_from(server) else {
            continue;
        };
        // 32 bytes of SHA-256, then `filename 0xFF content_type`, and a third, empty part
        // when the legacy endpoints may serve it.
        if value.len() < 32 {
            report.skip(format!("mxc://{server}/{media_id}: unreadable metadata"));
            continue;
        }
        let sha256 = crate::utils::hex(&value[..32]);
        let mut parts = value[32..].split(|b| *b == SEP);
        let filename = parts
            .next()
            .map(String::from_utf8_lossy)
            .filter(|f| !f.is_empty());
        let content_type = parts
            .next()
            .map(String::from_utf8_lossy)
            .filter(|c| !c.is_empty());
        let legacy_allowed = parts.next().is_some();
        let path = media_dir
            .join(&sha256[..2])
            .join(&sha256[2..4])
            .join(&sha256[4..]);
        if !path.is_file() {
            report.skip(format!(
                "mxc://{server}/{media_id}: its file {} is missing",
                path.display()
            ));
            continue;
        }
        let Some(services) = services else {
            report.count("media");
            continue;
        };
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| StartError::Other(format!("{}: {e}", path.display())))?;
        let stream = tokio_util::io::ReaderStream::new(file).map(|chunk| chunk.map_err(Arc::new));
        let received = services.media.receive(stream, u64::MAX).await?;
        if received.sha256() != sha256 {
            report.skip(format!(
                "mxc://{server}/{media_id}: its file does not match its hash"
            ));
            continue;
        }
        let uploader = (server == config.server_name)
            .then(|| source.get("servernamemediaid_userlocalpart", &key))
            .transpose()
            .map_err(StartError::Other)?
            .flatten()
            .and_then(|local| {
                UserId::parse(format!("@{}:{server}", String::from_utf8_lossy(&local))).ok()
            });
        let record = MediaRecord {
            sha256: None,
            content_type: content_type.map(|c| c.into_owned()),
            filename: filename.map(|f| f.into_owned()),
            size: 0,
            uploader: uploader.map(|u| u.to_string()),
            created_ts: crate::utils::now_millis(),
            unused_expires_ts: None,
            authenticated_only: !legacy_allowed,
            quarantined: false,
            quarantined_by: None,
            protected: false,
        };
        if services.media.import(server, media_id, received, record)? {
            report.count("media");
        } else {
            report.skip(format!("mxc://{server}/{media_id}: exists here"));
        }
    }
    progress.finish();
    Ok(())
}

async fn import_e2ee(
    source: &ConduitDb,
    services: Option<&Services>,
    report: &mut ImportReport,
) -> Result<(), StartError> {
    // Devices' identity keys (`user 0xFF device`; cross-signing keys sit in the same tree
    // under `user 0xFF public key` and are not device keys) with their one-time keys.
    for row in source.scan("keyid_key", &[]) {
        let (key, value) = row.map_err(StartError::Other)?;
        let Some((user, device)) = split_first(&key) else {
            continue;
        };
        let (Ok(user), Ok(device)) = (text(user), text(device)) else {
            continue;
        };
        let Ok(user_id) = UserId::parse(user) else {
            continue;
        };
        if source
            .get("userdeviceid_metadata", &key)
            .map_err(StartError::Other)?
            .is_none()
        {
            continue;
        }
        let device_keys: Value = match serde_json::from_slice(&value) {
            Ok(keys) => keys,
            Err(e) => {
                report.skip(format!("{user_id}'s device {device} keys: {e}"));
                continue;
            }
        };
        let mut prefix = key.to_vec();
        prefix.push(SEP);
        let mut one_time_keys = Vec::new();
        for row in source.scan("onetimekeyid_onetimekeys", &prefix) {
            let (otk_key, otk) = row.map_err(StartError::Other)?;
            // The key ID is stored as JSON: in quotes.
            let id = String::from_utf8_lossy(&otk_key[prefix.len()..])
                .trim_matches('"')
                .to_owned();
            match serde_json::from_slice::<Value>(&otk) {
                Ok(otk) => one_time_keys.push((id, otk)),
                Err(e) => report.skip(format!("{user_id}'s one-time key {id}: {e}")),
            }
        }
        let count = one_time_keys.len() as u64;
        if let Some(services) = services {
            let upload = crate::service::e2ee::KeyUpload {
                device_keys: Some(device_keys),
                one_time_keys,
                fallback_keys: Vec::new(),
            };
            if let Err(e) = services.upload_keys(&user_id, device.into(), upload).await {
                report.skip(format!("{user_id}'s device {device} keys: {e}"));
                continue;
            }
        }
        report.count("device keys");
        *report.counts.entry("one-time keys").or_default() += count;
    }
    import_cross_signing(source, services, report).await?;

    // Key backups: versions are decimal text here as there.
    for row in source.scan("backupid_algorithm", &[]) {
        let (key, body) = row.map_err(StartError::Other)?;
        let Some((user, version)) = split_first(&key) else {
            continue;
        };
        let (Ok(user), Ok(version)) = (text(user), text(version)) else {
            continue;
        };
        let Ok(user_id) = UserId::parse(user) else {
            continue;
        };
        let body: Value = match serde_json::from_slice(&body) {
            Ok(body) => body,
            Err(e) => {
                report.skip(format!("{user_id}'s key backup {version}: {e}"));
                continue;
            }
        };
        let mut prefix = key.to_vec();
        prefix.push(SEP);
        let mut sessions = Vec::new();
        for row in source.scan("backupkeyid_backup", &prefix) {
            let (session_key, data) = row.map_err(StartError::Other)?;
            let Some((room, session)) = split_first(&session_key[prefix.len()..]) else {
                continue;
            };
            if let (Ok(room), Ok(session), Ok(data)) = (
                text(room),
                text(session),
                serde_json::from_slice::<Value>(&data),
            ) {
                sessions.push((room.to_owned(), session.to_owned(), data));
            }
        }
        let count = sessions.len() as u64;
        if let Some(services) = services {
            let imported = services
                .import_backup_version(&user_id, version, &body)
                .and_then(|()| {
                    if sessions.is_empty() {
                        Ok(Value::Null)
                    } else {
                        services.put_backup_keys(&user_id, version, sessions)
                    }
                });
            if let Err(e) = imported {
                report.skip(format!("{user_id}'s key backup {version}: {e}"));
                continue;
            }
        }
        report.count("key backups");
        *report.counts.entry("key backup sessions").or_default() += count;
    }

    // To-device messages not yet delivered (`target 0xFF device 0xFF count`; the sending
    // device is not kept).
    for row in source.scan("todeviceid_events", &[]) {
        let (key, event) = row.map_err(StartError::Other)?;
        let mut parts = key.split(|b| *b == SEP);
        let (Some(user), Some(device)) = (parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(user), Ok(device)) = (text(user), text(device)) else {
            continue;
        };
        let (Ok(user_id), Ok(event)) =
            (UserId::parse(user), serde_json::from_slice::<Value>(&event))
        else {
            continue;
        };
        let (Some(sender), Some(kind)) = (
            event["sender"].as_str().and_then(|s| UserId::parse(s).ok()),
            event["type"].as_str(),
        ) else {
            continue;
        };
        if let Some(services) = services {
            let message = crate::service::e2ee::ToDeviceMessage {
                user_id: user_id.clone(),
                device_id: Some(device.into()),
                content: event["content"].clone(),
            };
            let txn_id = format!("culvert-import-{}", crate::utils::hex(&key));
            services
                .send_to_device(&sender, "IMPORTED".into(), kind, &txn_id, vec![message])
                .await?;
        }
        report.count("to-device messages");
    }
    Ok(())
}

/// The state before `event_id` as Conduit kept it (`shorteventid_shortstatehash`, then the
/// layers of `shortstatehash_statediff`), its events — and the auth events `pdu` cites —
/// stored here first as outliers when they are not. `None` when Conduit has no state for it.
fn state_before(
    source: &ConduitDb,
    services: &Services,
    event_id: &ruma::EventId,
    pdu: &CanonicalJsonObject,
) -> Result<Option<State>, String> {
    let Some(short) = source.get("eventid_shorteventid", event_id.as_bytes())? else {
        return Ok(None);
    };
    let Some(hash) = source
        .get("shorteventid_shortstatehash", &short)?
        .as_deref()
        .and_then(u64_be)
    else {
        return Ok(None);
    };
    let mut state = State::new();
    for (short_key, short_event) in state_entries(source, hash)? {
        let key = source
            .get("shortstatekey_statekey", &short_key.to_be_bytes())?
            .ok_or("a state key of the state before it is unknown")?;
        let (kind, state_key) = split_first(&key).ok_or("a state key is unreadable")?;
        let id = source
            .get("shorteventid_eventid", &short_event.to_be_bytes())?
            .ok_or("an event of the state before it is unknown")?;
        let id = OwnedEventId::try_from(text(&id)?).map_err(|e| e.to_string())?;
        state.insert((text(kind)?.to_owned(), text(state_key)?.to_owned()), id);
    }
    super::store_state_events(services, &state, pdu, |id| conduit_pdu(source, id))?;
    Ok(Some(state))
}

/// An event as its server signed it, from Conduit's timeline or its outliers.
fn conduit_pdu(
    source: &ConduitDb,
    event_id: &ruma::EventId,
) -> Result<Option<CanonicalJsonObject>, String> {
    let json = match source.get("eventid_pduid", event_id.as_bytes())? {
        Some(pdu_id) => source.get("pduid_pdu", &pdu_id)?,
        None => source.get("eventid_outlierpdu", event_id.as_bytes())?,
    };
    let Some(json) = json else {
        return Ok(None);
    };
    let mut pdu: CanonicalJsonObject =
        serde_json::from_slice(&json).map_err(|e| format!("event {event_id}: {e}"))?;
    pdu.remove("event_id");
    pdu.remove("unsigned");
    Ok(Some(pdu))
}

/// A state of Conduit's compressed form: `shortstatekey → shorteventid`. Each layer
/// (`shortstatehash_statediff`) is `parent ‖ added entries ‖ [0 ‖ removed entries]`, entries
/// being two big-endian u64s; a parent of 0 ends the chain.
fn state_entries(source: &ConduitDb, hash: u64) -> Result<HashMap<u64, u64>, String> {
    let mut layers = Vec::new();
    let mut next = hash;
    loop {
        if layers.len() > 1_000 {
            return Err("a state's layers do not end".into());
        }
        let diff = source
            .get("shortstatehash_statediff", &next.to_be_bytes())?
            .ok_or("a state layer is missing")?;
        let parent = u64_be(&diff).ok_or("a state layer is unreadable")?;
        let mut added = Vec::new();
        let mut removed = Vec::new();
        let mut rest = &diff[8..];
        let mut removing = false;
        while rest.len() >= 8 {
            let first = u64_be(rest).ok_or("a state layer is unreadable")?;
            if first == 0 {
                removing = true;
                rest = &rest[8..];
                continue;
            }
            let second = rest
                .get(8..16)
                .and_then(u64_be)
                .ok_or("a state layer is unreadable")?;
            if removing {
                removed.push((first, second));
            } else {
                added.push((first, second));
            }
            rest = &rest[16..];
        }
        layers.push((added, removed));
        if parent == 0 {
            break;
        }
        next = parent;
    }
    let mut state = HashMap::new();
    for (added, removed) in layers.into_iter().rev() {
        for (key, event) in removed {
            if state.get(&key) == Some(&event) {
                state.remove(&key);
            }
        }
        state.extend(added);
    }
    Ok(state)
}

/// Each user's latest public read receipt per room (`readreceiptid_readreceipt`: the receipt
/// EDU as Conduit sent it), set again here: it also marks what the user has read.
async fn import_receipts(
    source: &ConduitDb,
    server: &Server,
    services: Option<&Services>,
    report: &mut ImportReport,
) -> Result<(), StartError> {
    for row in source.scan("readreceiptid_readreceipt", &[]) {
        let (_, edu) = row.map_err(StartError::Other)?;
        let Ok(edu) = serde_json::from_slice::<Value>(&edu) else {
            report.skip("a read receipt: unreadable".into());
            continue;
        };
        let Some(room_id) = edu["room_id"]
            .as_str()
            .and_then(|r| OwnedRoomId::try_from(r).ok())
        else {
            continue;
        };
        if Some(&room_id) == server.admin_room.as_ref() {
            continue;
        }
        let Some(events) = edu["content"].as_object() else {
            continue;
        };
        for (event_id, kinds) in events {
            let Ok(event_id) = OwnedEventId::try_from(event_id.as_str()) else {
                continue;
            };
            let Some(readers) = kinds["m.read"].as_object() else {
                continue;
            };
            for (user, receipt) in readers {
                let Ok(user_id) = UserId::parse(user.as_str()) else {
                    continue;
                };
                if let Some(services) = services {
                    let thread = receipt["thread_id"].as_str();
                    if let Err(e) = services
                        .set_receipt(&room_id, &user_id, "m.read", &event_id, thread)
                        .await
                    {
                        report.skip(format!("{user_id}'s receipt in {room_id}: {e}"));
                        continue;
                    }
                }
                report.count("read receipts");
            }
        }
    }
    Ok(())
}

/// Each user's cross-signing keys: `userid_{master,selfsigning,usersigning}keyid` point at
/// their `keyid_key` rows (the key as uploaded, signatures made later merged in).
async fn import_cross_signing(
    source: &ConduitDb,
    services: Option<&Services>,
    report: &mut ImportReport,
) -> Result<(), StartError> {
    let mut keys: std::collections::BTreeMap<OwnedUserId, [Option<Value>; 3]> =
        std::collections::BTreeMap::new();
    for (at, tree) in [
        "userid_masterkeyid",
        "userid_selfsigningkeyid",
        "userid_usersigningkeyid",
    ]
    .into_iter()
    .enumerate()
    {
        for row in source.scan(tree, &[]) {
            let (user, pointer) = row.map_err(StartError::Other)?;
            let Ok(user_id) = UserId::parse(String::from_utf8_lossy(&user).as_ref()) else {
                continue;
            };
            let key = source
                .get("keyid_key", &pointer)
                .map_err(StartError::Other)?
                .and_then(|json| serde_json::from_slice::<Value>(&json).ok());
            match key {
                Some(key) => keys.entry(user_id).or_default()[at] = Some(key),
                None => report.skip(format!("{user_id}'s {tree}: the key is missing")),
            }
        }
    }
    for (user_id, keys) in keys {
        super::import_signing_keys(services, &user_id, keys, report).await?;
    }
    Ok(())
}

/// Private read markers (`roomuserid_privateread`: a position in the room's timeline), pushers
/// (`senderkey_pusher`: `@user 0xFF pushkey` → the pusher) and application-service
/// registrations (`id_appserviceregistrations`: YAML).
async fn import_pushers_and_appservices(
    source: &ConduitDb,
    services: Option<&Services>,
    report: &mut ImportReport,
) -> Result<(), StartError> {
    for row in source.scan("roomuserid_privateread", &[]) {
        let (key, count) = row.map_err(StartError::Other)?;
        let (Some((room, user)), Some(count)) = (split_first(&key), u64_be(&count)) else {
            continue;
        };
        let (Ok(room_id), Ok(user_id)) = (
            OwnedRoomId::try_from(String::from_utf8_lossy(room).as_ref()),
            UserId::parse(String::from_utf8_lossy(user).as_ref()),
        ) else {
            continue;
        };
        let Some(short) = source
            .get("roomid_shortroomid", room)
            .map_err(StartError::Other)?
        else {
            continue;
        };
        // The last event at or before the position.
        let mut at = short.clone();
        at.extend_from_slice(&count.to_be_bytes());
        let Some(cf) = source.db.cf_handle("pduid_pdu") else {
            continue;
        };
        let event = source
            .db
            .iterator_cf(cf, IteratorMode::From(&at, rocksdb::Direction::Reverse))
            .next()
            .and_then(|row| row.ok())
            .filter(|(key, _)| key.starts_with(&short))
            .and_then(|(_, pdu)| serde_json::from_slice::<Value>(&pdu).ok())
            .and_then(|pdu| pdu["event_id"].as_str().map(str::to_owned))
            .and_then(|id| OwnedEventId::try_from(id).ok());
        let Some(event_id) = event else { continue };
        if let Some(services) = services {
            if services.timeline.room(&room_id)?.is_none() {
                continue;
            }
            if let Err(e) = services
                .set_receipt(&room_id, &user_id, "m.read.private", &event_id, None)
                .await
            {
                report.skip(format!("{user_id}'s private read marker in {room_id}: {e}"));
                continue;
            }
        }
        report.count("private read markers");
    }
    for row in source.scan("senderkey_pusher", &[]) {
        let (key, pusher) = row.map_err(StartError::Other)?;
        let Some((user, _)) = split_first(&key) else {
            continue;
        };
        let Ok(user_id) = UserId::parse(String::from_utf8_lossy(user).as_ref()) else {
            continue;
        };
        let pusher = match serde_json::from_slice::<ruma::api::client::push::Pusher>(&pusher) {
            Ok(pusher) => pusher,
            Err(e) => {
                report.skip(format!("a pusher of {user_id}: {e}"));
                continue;
            }
        };
        if let Some(services) = services {
            // Conduit ties a pusher to no device: the one seen last carries it here.
            let device = services
                .devices
                .list(&user_id)?
                .into_iter()
                .max_by_key(|(_, d)| d.last_seen_ts.unwrap_or(0));
            let Some((device_id, _)) = device else {
                report.skip(format!("a pusher of {user_id}: the user has no device"));
                continue;
            };
            let action = ruma::api::client::push::set_pusher::v3::Request::post(pusher).action;
            if let Err(e) = services.set_pusher(&user_id, &device_id, action).await {
                report.skip(format!("a pusher of {user_id}: {e}"));
                continue;
            }
        }
        report.count("pushers");
    }
    // Other servers' signing keys Conduit had fetched, kept when signed by their server.
    for row in source.scan("server_signingkeys", &[]) {
        let (server, document) = row.map_err(StartError::Other)?;
        let (Ok(server), Ok(document)) = (
            ruma::OwnedServerName::try_from(String::from_utf8_lossy(&server).as_ref()),
            serde_json::from_slice::<CanonicalJsonObject>(&document),
        ) else {
            continue;
        };
        super::import_server_keys(services, &server, &document, report)?;
    }
    for row in source.scan("id_appserviceregistrations", &[]) {
        let (id, yaml) = row.map_err(StartError::Other)?;
        let id = String::from_utf8_lossy(&id).into_owned();
        let registration = std::str::from_utf8(&yaml)
            .map_err(|e| e.to_string())
            .and_then(crate::service::appservice::parse_yaml);
        let registration = match registration {
            Ok(registration) => registration,
            Err(e) => {
                report.skip(format!("the application service {id:?}: {e}"));
                continue;
            }
        };
        if let Some(services) = services
            && let Err(e) = services.appservices.register(registration)
        {
            report.skip(format!("the application service {id:?}: {e}"));
            continue;
        }
        report.count("application services");
    }
    Ok(())
}
