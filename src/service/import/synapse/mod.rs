//! `culvert import synapse`: a Synapse database (≥ 1.100; SQLite or PostgreSQL) into this
//! server's. What Synapse keeps where is written down in `docs/design/synapse-layout.md` (studied from its
//! public source and a schema it built, then checked against databases a real Synapse filled
//! in the tests); this module reads it:
//!
//! - the server's signing keys (`signing_key_path`, the first signs; `old_signing_keys`
//!   are not carried): the server stays the same server to others;
//! - accounts with their bcrypt password hashes (accepted at login with the config's pepper
//!   and replaced by an Argon2 hash on the first success), admins, deactivated accounts,
//!   profiles, devices with their access tokens (clients stay logged in), filters under their
//!   IDs, account data (global and per room, tags), push rules (the user's own rules, and the
//!   actions and switches they changed of the server-default ones);
//! - rooms: each room's events in Synapse's order (depth, then arrival), as their servers
//!   signed them, through the append path as
//!   [`Origin::Import`](crate::service::rooms::timeline::pipeline::Origin); where an event's
//!   earlier events are not in the database (a room joined over federation), the state before
//!   it as Synapse's state groups kept it, its events stored first as outliers. Rejected events
//!   and outliers are not timeline events here either. Aliases, the room directory, read
//!   receipts of local users;
//! - local media and cached remote media (the files checked against their SHA-256 when
//!   Synapse recorded one);
//! - end-to-end encryption: devices' identity, one-time and fallback keys, cross-signing keys
//!   with the signatures users made, key backups with their sessions, to-device messages not
//!   yet delivered.
//!
//! - pushers (on their devices), the application services Synapse's config lists (registered
//!   in the database), other servers' signing keys Synapse had fetched (kept when signed by
//!   their server).
//!
//! Not imported (reported): guests, access tokens that expire (sessions with refresh tokens
//! log in again), rooms Synapse had not finished joining (partial state).

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::Arc,
};

use futures_util::StreamExt;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedRoomAliasId, OwnedRoomId,
    OwnedServerName, OwnedUserId, RoomVersionId, UserId, api::client::filter::FilterDefinition,
};
use serde_json::{Value, json};

use super::{ImportOptions, ImportReport, Progress, import_signing_keys, tally};
use crate::{
    config::Config,
    service::{
        Services, StartError,
        devices::Devices,
        media::MediaRecord,
        push_rules::{ruleset_json, server_default_rules},
        rooms::{state_res::State, timeline::Appended},
        users::Users,
    },
    store::Batch,
};

/// Where a Synapse keeps its data: from its config files, or given one by one.
#[derive(Clone, Debug, Default)]
pub struct SynapseSource {
    /// `homeserver.yaml` and any further config files (later ones win, as in Synapse).
    pub configs: Vec<PathBuf>,
    /// The database instead of the config's `database`: an SQLite file, or a PostgreSQL
    /// connection string (`postgresql://user:password@host/synapse`, or `key=value` words).
    pub database: Option<PathBuf>,
    /// The media store (instead of the config's `media_store_path`).
    pub media_store: Option<PathBuf>,
    /// The signing key file (instead of the config's `signing_key_path`).
    pub signing_key: Option<PathBuf>,
}

mod keys;
mod media;
mod rooms;
mod source;

use source::{Cell, SynapseDb, SynapseSettings, read_settings, seed_to_pkcs8, synapse_pdu, user};

/// Imports the Synapse whose config (or files) `source` names into the database `config`
/// names. Neither server may run.
pub async fn import(
    config: Config,
    source: &SynapseSource,
    options: ImportOptions,
) -> Result<ImportReport, StartError> {
    let settings = read_settings(source, &config.server_name).map_err(StartError::Other)?;
    if settings.server_name != config.server_name {
        return Err(StartError::Other(format!(
            "the Synapse database is {}'s, but the config's server_name is {}: set server_name = \"{}\" (a server's name never changes)",
            settings.server_name, config.server_name, settings.server_name
        )));
    }
    let db = SynapseDb::open(&settings.database).map_err(StartError::Other)?;
    let mut report = ImportReport::default();
    let (version, seed) = &settings.signing_key;
    let services =
        super::open_target(&config, options, version, &seed_to_pkcs8(seed), &mut report)?;
    let services = services.as_deref();
    let run = Import {
        full_user_ids: db.has_column("profiles", "full_user_id")
            && db.has_column("user_filters", "full_user_id"),
        db: &db,
        settings: &settings,
        services,
    };
    run.accounts(&mut report).map_err(StartError::Other)?;
    run.rooms(&mut report).await?;
    run.account_data(&mut report).await?;
    run.receipts(&mut report).await?;
    run.media(&mut report).await?;
    run.e2ee(&mut report).await?;
    run.pushers(&mut report).await?;
    run.appservices(&mut report)?;
    run.server_keys(&mut report)?;
    super::finish(services)?;
    Ok(report)
}

struct Import<'a> {
    db: &'a SynapseDb,
    settings: &'a SynapseSettings,
    services: Option<&'a Services>,
    /// Whether `profiles` and `user_filters` name users by full ID (schema 76 on), asked once.
    full_user_ids: bool,
}

/// The hash an imported bcrypt hash is kept as: as it is, or with the pepper Synapse added to
/// every password (`bcrypt-pepper:<hex pepper>:<hash>`), for `users::password_matches`.
fn imported_hash(hash: &str, pepper: &str) -> String {
    if pepper.is_empty() {
        hash.to_owned()
    } else {
        format!(
            "{}{}:{hash}",
            crate::service::users::PEPPERED_BCRYPT,
            crate::utils::hex(pepper.as_bytes())
        )
    }
}

impl Import<'_> {
    fn accounts(&self, report: &mut ImportReport) -> Result<(), String> {
        let users = self.db.rows(
            "SELECT name, password_hash, admin, deactivated, is_guest FROM users ORDER BY name",
            &[],
        )?;
        let mut progress = Progress::new("accounts", users.len() as u64);
        for row in users {
            progress.step();
            let Some(user_id) = user(&row[0]) else {
                report.skip(format!("account {:?}: not a user ID", row[0].text()));
                continue;
            };
            if user_id.server_name() != self.settings.server_name {
                report.skip(format!("{user_id}: not of this server"));
                continue;
            }
            if row[4].flag() {
                report.skip(format!("{user_id}: a guest account"));
                continue;
            }
            let password_hash = row[1]
                .text()
                .filter(|h| !h.is_empty())
                .map(|h| imported_hash(&h, &self.settings.pepper));
            let mut batch = Batch::new();
            if let Some(services) = self.services
                && !services
                    .users
                    .import_into(
                        &mut batch,
                        &user_id,
                        password_hash,
                        row[2].flag(),
                        row[3].flag(),
                    )
                    .map_err(|e| e.to_string())?
            {
                report.skip(format!("{user_id}: an account of that name exists here"));
                continue;
            }
            report.count("accounts");
            self.profile(&mut batch, &user_id)?;
            self.devices(&mut batch, &user_id, report)?;
            self.filters(&user_id, report)?;
            if let Some(services) = self.services {
                services.store.write(batch).map_err(|e| e.to_string())?;
            }
        }
        progress.finish();
        Ok(())
    }

    fn profile(&self, batch: &mut Batch, user_id: &UserId) -> Result<(), String> {
        let sql = if self.full_user_ids {
            "SELECT displayname, avatar_url FROM profiles WHERE full_user_id = $1 OR (full_user_id IS NULL AND user_id = $2)"
        } else {
            "SELECT displayname, avatar_url FROM profiles WHERE user_id = $2 OR user_id = $1"
        };
        let rows = self
            .db
            .rows(sql, &[user_id.as_str(), user_id.localpart()])?;
        if let Some(row) = rows.first() {
            for (field, cell) in [("displayname", &row[0]), ("avatar_url", &row[1])] {
                if let Some(value) = cell.text().filter(|v| !v.is_empty()) {
                    Users::import_profile_field_into(batch, user_id, field, &Value::String(value))
                        .map_err(|e| e.to_string())?;
                }
            }
        }
        Ok(())
    }

    fn devices(
        &self,
        batch: &mut Batch,
        user_id: &UserId,
        report: &mut ImportReport,
    ) -> Result<(), String> {
        // Cross-signing keys have hidden devices of their own there.
        let devices = self.db.rows(
            "SELECT device_id, display_name, last_seen FROM devices WHERE user_id = $1 AND COALESCE(hidden, FALSE) = FALSE",
            &[user_id.as_str()],
        )?;
        for device in devices {
            let Some(device_id) = device[0].text() else {
                continue;
            };
            // The device's newest token that does not expire and acts as the user
            // themselves (not an admin's "login as").
            let tokens = self.db.rows(
                "SELECT token, valid_until_ms FROM access_tokens WHERE user_id = $1 AND device_id = $2 AND puppets_user_id IS NULL ORDER BY id DESC",
                &[user_id.as_str(), &device_id],
            )?;
            let token = tokens
                .iter()
                .find(|t| matches!(t[1], Cell::Null))
                .and_then(|t| t[0].text());
            if token.is_none() && !tokens.is_empty() {
                report.skip(format!(
                    "{user_id}'s device {device_id}: its access token expires (a refresh-token session): it logs in again"
                ));
            }
            Devices::import_device_into(
                batch,
                user_id,
                device_id.as_str().into(),
                device[1].text(),
                device[2].int().map(|t| t.max(0) as u64),
                token.as_deref(),
            )
            .map_err(|e| e.to_string())?;
            report.count("devices");
        }
        Ok(())
    }

    fn filters(&self, user_id: &UserId, report: &mut ImportReport) -> Result<(), String> {
        let sql = if self.full_user_ids {
            "SELECT filter_id, filter_json FROM user_filters WHERE full_user_id = $1 OR (full_user_id IS NULL AND user_id = $2)"
        } else {
            "SELECT filter_id, filter_json FROM user_filters WHERE user_id = $2 OR user_id = $1"
        };
        for row in self
            .db
            .rows(sql, &[user_id.as_str(), user_id.localpart()])?
        {
            let Some(filter_id) = row[0].text() else {
                continue;
            };
            match row[1]
                .json()
                .and_then(|f| serde_json::from_value::<FilterDefinition>(f).ok())
            {
                Some(filter) => {
                    if let Some(services) = self.services {
                        services
                            .filters
                            .import(user_id, &filter_id, &filter)
                            .map_err(|e| e.to_string())?;
                    }
                    report.count("filters");
                }
                None => report.skip(format!("{user_id}'s filter {filter_id}: unreadable")),
            }
        }
        Ok(())
    }

    async fn account_data(&self, report: &mut ImportReport) -> Result<(), StartError> {
        let local = format!("%:{}", self.settings.server_name);
        let mut items: Vec<(OwnedUserId, Option<OwnedRoomId>, String, Value)> = Vec::new();
        for row in self
            .db
            .rows(
                "SELECT user_id, NULL, account_data_type, content FROM account_data WHERE content != '{}' AND user_id LIKE $1 \
                 UNION ALL SELECT user_id, room_id, account_data_type, content FROM room_account_data WHERE content != '{}' AND user_id LIKE $1",
                &[&local],
            )
            .map_err(StartError::Other)?
        {
            let (Some(user_id), Some(kind), Some(content)) = (user(&row[0]), row[2].text(), row[3].json())
            else {
                continue;
            };
            let room = row[1].text().and_then(|r| OwnedRoomId::try_from(r).ok());
            items.push((user_id, room, kind, content));
        }
        // Tags: one `m.tag` per room.
        let mut tags: BTreeMap<(OwnedUserId, OwnedRoomId), serde_json::Map<String, Value>> =
            BTreeMap::new();
        for row in self
            .db
            .rows(
                "SELECT user_id, room_id, tag, content FROM room_tags WHERE user_id LIKE $1",
                &[&local],
            )
            .map_err(StartError::Other)?
        {
            let (Some(user_id), Some(room), Some(tag)) = (
                user(&row[0]),
                row[1].text().and_then(|r| OwnedRoomId::try_from(r).ok()),
                row[2].text(),
            ) else {
                continue;
            };
            tags.entry((user_id, room))
                .or_default()
                .insert(tag, row[3].json().unwrap_or_else(|| json!({})));
        }
        for ((user_id, room), tags) in tags {
            items.push((user_id, Some(room), "m.tag".into(), json!({ "tags": tags })));
        }
        for user_id in self.push_rule_users().map_err(StartError::Other)? {
            match self.push_rules(&user_id) {
                Ok(rules) => items.push((user_id, None, "m.push_rules".into(), rules)),
                Err(e) => report.skip(format!("{user_id}'s push rules: {e}")),
            }
        }
        for (user_id, room, kind, content) in items {
            let Some(services) = self.services else {
                report.count("account data");
                continue;
            };
            if services.users.get(&user_id)?.is_none() {
                continue;
            }
            if let Some(room_id) = &room
                && services.timeline.room(room_id)?.is_none()
            {
                report.skip(format!(
                    "{user_id}'s {kind} for {room_id}: the room is not imported"
                ));
                continue;
            }
            let content = serde_json::value::to_raw_value(&content)
                .map_err(|e| StartError::Other(e.to_string()))?;
            services
                .set_account_data(&user_id, room.as_deref(), &kind, &content)
                .await?;
            report.count("account data");
        }
        Ok(())
    }

    fn push_rule_users(&self) -> Result<Vec<OwnedUserId>, String> {
        let local = format!("%:{}", self.settings.server_name);
        Ok(self
            .db
            .rows(
                "SELECT user_name FROM push_rules WHERE user_name LIKE $1 UNION SELECT user_name FROM push_rules_enable WHERE user_name LIKE $1",
                &[&local],
            )?
            .iter()
            .filter_map(|r| user(&r[0]))
            .collect())
    }

    /// A user's push rules: the server defaults with the user's own rules in Synapse's order
    /// (by priority class, then priority), the actions they gave default rules, and their
    /// switches.
    fn push_rules(&self, user_id: &UserId) -> Result<Value, String> {
        let legacy = self
            .services
            .is_none_or(|s| s.config.legacy_mention_push_rules);
        let mut rules = ruleset_json(&server_default_rules(user_id, legacy));
        let rows = self.db.rows(
            "SELECT rule_id, priority_class, conditions, actions FROM push_rules WHERE user_name = $1 ORDER BY priority_class DESC, priority DESC",
            &[user_id.as_str()],
        )?;
        let mut added: HashMap<&'static str, usize> = HashMap::new();
        for row in &rows {
            let Some(rule_id) = row[0].text() else {
                continue;
            };
            let mut parts = rule_id.splitn(3, '/');
            let (Some(_scope), Some(kind), Some(id)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let actions = row[3].json().unwrap_or_else(|| json!([]));
            let kind: &'static str = match kind {
                "override" => "override",
                "content" => "content",
                "room" => "room",
                "sender" => "sender",
                "underride" => "underride",
                _ => continue,
            };
            let Some(list) = rules[kind].as_array_mut() else {
                continue;
            };
            if id.starts_with('.') {
                // A default rule's actions, changed by the user.
                if let Some(rule) = list.iter_mut().find(|r| r["rule_id"] == id) {
                    rule["actions"] = actions;
                }
                continue;
            }
            let conditions = row[2].json().unwrap_or_else(|| json!([]));
            let mut rule = json!({
                "rule_id": id,
                "default": false,
                "enabled": true,
                "actions": actions,
            });
            match kind {
                "override" | "underride" => rule["conditions"] = conditions,
                "content" => {
                    rule["pattern"] = conditions[0]["pattern"].clone();
                }
                _ => {}
            }
            // The user's rules of a kind come before the server's, except that the master
            // rule stays first.
            let start = if kind == "override" {
                usize::from(
                    list.first()
                        .is_some_and(|r| r["rule_id"] == ".m.rule.master"),
                )
            } else {
                0
            };
            let at = start + added.get(kind).copied().unwrap_or(0);
            list.insert(at.min(list.len()), rule);
            *added.entry(kind).or_default() += 1;
        }
        for row in self.db.rows(
            "SELECT rule_id, enabled FROM push_rules_enable WHERE user_name = $1",
            &[user_id.as_str()],
        )? {
            let Some(rule_id) = row[0].text() else {
                continue;
            };
            let mut parts = rule_id.splitn(3, '/');
            let (Some(_), Some(kind), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            if !matches!(
                kind,
                "override" | "content" | "room" | "sender" | "underride"
            ) {
                continue;
            }
            if let Some(rule) = rules[kind]
                .as_array_mut()
                .and_then(|list| list.iter_mut().find(|r| r["rule_id"] == id))
            {
                rule["enabled"] = Value::Bool(row[1].flag());
            }
        }
        Ok(json!({ "global": rules }))
    }

    async fn receipts(&self, report: &mut ImportReport) -> Result<(), StartError> {
        let local = format!("%:{}", self.settings.server_name);
        for row in self
            .db
            .rows(
                "SELECT room_id, receipt_type, user_id, event_id, thread_id FROM receipts_linearized WHERE user_id LIKE $1 ORDER BY stream_id",
                &[&local],
            )
            .map_err(StartError::Other)?
        {
            let (Some(room_id), Some(kind), Some(user_id), Some(event_id)) = (
                row[0].text().and_then(|r| OwnedRoomId::try_from(r).ok()),
                row[1].text(),
                user(&row[2]),
                row[3].text().and_then(|e| OwnedEventId::try_from(e).ok()),
            ) else {
                continue;
            };
            if !matches!(kind.as_str(), "m.read" | "m.read.private") {
                continue;
            }
            if let Some(services) = self.services {
                let thread = row[4].text();
                if let Err(e) = services
                    .set_receipt(&room_id, &user_id, &kind, &event_id, thread.as_deref())
                    .await
                {
                    report.skip(format!("{user_id}'s receipt in {room_id}: {e}"));
                    continue;
                }
            }
            report.count("read receipts");
        }
        Ok(())
    }

    /// Pushers (on the devices imported with them), so that phones are woken as before.
    async fn pushers(&self, report: &mut ImportReport) -> Result<(), StartError> {
        let local = format!("%:{}", self.settings.server_name);
        let device = if self.db.has_column("pushers", "device_id") {
            "COALESCE(p.device_id, t.device_id)"
        } else {
            "t.device_id"
        };
        let enabled = if self.db.has_column("pushers", "enabled") {
            "COALESCE(p.enabled, TRUE)"
        } else {
            "TRUE"
        };
        let rows = self
            .db
            .rows(
                &format!(
                    "SELECT p.user_name, {device}, p.kind, p.app_id, p.app_display_name, p.device_display_name, p.pushkey, p.lang, p.data, p.profile_tag \
                     FROM pushers p LEFT JOIN access_tokens t ON t.id = p.access_token \
                     WHERE p.user_name LIKE $1 AND {enabled}"
                ),
                &[&local],
            )
            .map_err(StartError::Other)?;
        for row in rows {
            let (Some(user_id), Some(device_id), Some(app_id), Some(pushkey)) =
                (user(&row[0]), row[1].text(), row[3].text(), row[6].text())
            else {
                report.skip(format!(
                    "a pusher of {:?}: no device of its own",
                    row[0].text()
                ));
                continue;
            };
            let pusher = json!({
                "kind": row[2].text(),
                "app_id": app_id,
                "app_display_name": row[4].text().unwrap_or_default(),
                "device_display_name": row[5].text().unwrap_or_default(),
                "pushkey": pushkey,
                "lang": row[7].text().unwrap_or_else(|| "en".into()),
                "data": row[8].json().unwrap_or_else(|| json!({})),
                "profile_tag": row[9].text().filter(|t| !t.is_empty()),
            });
            let pusher: ruma::api::client::push::Pusher = match serde_json::from_value(pusher) {
                Ok(pusher) => pusher,
                Err(e) => {
                    report.skip(format!("{user_id}'s pusher {app_id}: {e}"));
                    continue;
                }
            };
            if let Some(services) = self.services {
                if services
                    .devices
                    .get(&user_id, device_id.as_str().into())?
                    .is_none()
                {
                    report.skip(format!(
                        "{user_id}'s pusher {app_id}: its device {device_id} is not imported"
                    ));
                    continue;
                }
                let action = ruma::api::client::push::set_pusher::v3::Request::post(pusher).action;
                if let Err(e) = services
                    .set_pusher(&user_id, device_id.as_str().into(), action)
                    .await
                {
                    report.skip(format!("{user_id}'s pusher {app_id}: {e}"));
                    continue;
                }
            }
            report.count("pushers");
        }
        Ok(())
    }

    /// Other servers' signing keys Synapse had fetched (each document kept only when signed
    /// by its server), so that their events verify before their servers are asked again.
    fn server_keys(&self, report: &mut ImportReport) -> Result<(), StartError> {
        for row in self
            .db
            .rows(
                "SELECT server_name, key_json FROM server_keys_json ORDER BY ts_added_ms",
                &[],
            )
            .map_err(StartError::Other)?
        {
            let (Some(server), Some(document)) = (
                row[0]
                    .text()
                    .and_then(|s| OwnedServerName::try_from(s).ok()),
                row[1]
                    .json()
                    .and_then(|d| serde_json::from_value::<CanonicalJsonObject>(d).ok()),
            ) else {
                continue;
            };
            if server == self.settings.server_name {
                continue;
            }
            super::import_server_keys(self.services, &server, &document, report)?;
        }
        Ok(())
    }

    /// The application services Synapse's config names: registered here as if through the
    /// admin API (kept in the database), so that bridges go on without a config change.
    fn appservices(&self, report: &mut ImportReport) -> Result<(), StartError> {
        for file in &self.settings.appservice_files {
            let path = self.settings.resolve(file);
            let registration = std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|text| crate::service::appservice::parse_yaml(&text));
            let registration = match registration {
                Ok(registration) => registration,
                Err(e) => {
                    report.skip(format!(
                        "the application service registration {}: {e}",
                        path.display()
                    ));
                    continue;
                }
            };
            if let Some(services) = self.services
                && let Err(e) = services.appservices.register(registration)
            {
                report.skip(format!(
                    "the application service registration {}: {e}",
                    path.display()
                ));
                continue;
            }
            report.count("application services");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{source::parse_signing_key, *};

    #[test]
    fn signing_keys_read_as_synapse_writes_them() {
        // A seed of 32 zero bytes, unpadded (as Synapse writes it) and padded.
        let line = format!("ed25519 a_AbCd {}\n", "A".repeat(43));
        let (version, seed) = parse_signing_key(&line).unwrap();
        assert_eq!(version, "a_AbCd");
        assert_eq!(seed, vec![0; 32]);
        assert!(parse_signing_key(&format!("ed25519 a_x {}=", "A".repeat(43))).is_ok());
        assert!(parse_signing_key("ed25519 a_x AAAA").is_err());
        assert!(parse_signing_key("").is_err());
        let pkcs8 = seed_to_pkcs8(&seed);
        assert!(ruma::signatures::Ed25519KeyPair::from_der(&pkcs8, version).is_ok());
    }

    #[test]
    fn peppered_hashes_name_their_pepper() {
        assert_eq!(imported_hash("$2b$04$x", ""), "$2b$04$x");
        assert_eq!(
            imported_hash("$2b$04$x", "ab"),
            format!("{}6162:$2b$04$x", crate::service::users::PEPPERED_BCRYPT)
        );
    }
}
