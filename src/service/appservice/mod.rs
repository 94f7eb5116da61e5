//! Application services (bridges and bots): their registrations, namespaces and tokens.
//!
//! Registrations come from the YAML files named by `app_service_config_files` (the source of
//! truth, loaded at start-up) and are mirrored into the `appservices` column family; the
//! [`Appservices`] registry keeps them in memory, so that resolving an `as_token` or checking a
//! namespace never reads the database. An admin interface can add and remove registrations at
//! run time through [`Appservices::register`] and [`Appservices::unregister`].
//!
//! Pushing events to appservices lives in [`queue`] (the persistent per-appservice queue and its
//! sender tasks); outbound calls (queries, ping, third-party lookups) in [`outbound`].

pub mod outbound;
pub mod queue;

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
};

use regex::Regex;
use ruma::{
    OwnedRoomId, OwnedUserId, RoomAliasId, RoomId, ServerName, UserId,
    api::appservice::Registration,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::{
    Error, Result,
    store::{Batch, Cf, Store, keys},
    utils,
};

/// A registration file as written by bridges: ruma's [`Registration`] plus the flags bridges
/// use today (ephemeral events under their MSC2409 and stable names, MSC3202's device
/// masquerading). Unknown keys are ignored, as Synapse does, so newer files still load.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RegistrationFile {
    #[serde(flatten)]
    pub registration: Registration,
    /// MSC2409's name for `receive_ephemeral`.
    #[serde(
        default,
        rename = "de.sorunome.msc2409.push_ephemeral",
        skip_serializing_if = "Option::is_none"
    )]
    pub msc2409_push_ephemeral: Option<bool>,
    /// An older stable-looking name for `receive_ephemeral` some bridges still write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_ephemeral: Option<bool>,
    /// MSC3202: device masquerading, device lists and one-time key counts for encrypted bridges.
    #[serde(
        default,
        rename = "org.matrix.msc3202",
        skip_serializing_if = "Option::is_none"
    )]
    pub msc3202: Option<bool>,
    /// MSC4203: to-device messages for the appservice's users in transactions.
    #[serde(
        default,
        rename = "org.matrix.msc4203",
        skip_serializing_if = "Option::is_none"
    )]
    pub msc4203: Option<bool>,
}

/// Where a registration came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A file listed in `app_service_config_files`.
    File,
    /// Registered at run time (the admin interface).
    Api,
}

#[derive(Serialize, Deserialize)]
struct StoredRegistration {
    source: Source,
    registration: RegistrationFile,
}

/// One namespace regex, matched from the start of the ID (as Synapse does).
#[derive(Debug)]
struct NamespaceRegex {
    regex: Regex,
    exclusive: bool,
}

fn compile(
    namespaces: &[ruma::api::appservice::Namespace],
    kind: &str,
) -> Result<Vec<NamespaceRegex>, String> {
    namespaces
        .iter()
        .map(|ns| {
            Regex::new(&format!("^(?:{})", ns.regex))
                .map(|regex| NamespaceRegex {
                    regex,
                    exclusive: ns.exclusive,
                })
                .map_err(|e| format!("invalid regex {:?} in namespaces.{kind}: {e}", ns.regex))
        })
        .collect()
}

/// A registered application service, with its namespaces compiled.
#[derive(Debug)]
pub struct Appservice {
    pub file: RegistrationFile,
    pub source: Source,
    /// `@sender_localpart:server_name`.
    pub sender: OwnedUserId,
    users: Vec<NamespaceRegex>,
    aliases: Vec<NamespaceRegex>,
    rooms: Vec<NamespaceRegex>,
    /// Woken when something is queued for it (see [`queue`]).
    pub(crate) wake: Notify,
    /// Set when it is unregistered: its sender task ends.
    pub(crate) retired: AtomicBool,
}

impl Appservice {
    /// Compiles and checks one registration. Errors are worded for the operator.
    pub fn new(
        file: RegistrationFile,
        source: Source,
        server_name: &ServerName,
    ) -> Result<Self, String> {
        let reg = &file.registration;
        if reg.id.trim().is_empty() {
            return Err("`id` must not be empty".into());
        }
        if reg.as_token.is_empty() || reg.hs_token.is_empty() {
            return Err("`as_token` and `hs_token` must not be empty".into());
        }
        if reg.as_token == reg.hs_token {
            return Err("`as_token` and `hs_token` must differ".into());
        }
        if let Some(url) = &reg.url {
            let parsed = reqwest::Url::parse(url)
                .map_err(|e| format!("`url` {url:?} is not a valid URL: {e}"))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(format!("`url` {url:?} must be http or https"));
            }
        }
        // The sender is an account of this server like any other: a valid new localpart.
        if reg.sender_localpart.contains(':') {
            return Err(format!(
                "`sender_localpart` {:?} must be a localpart, not a user ID",
                reg.sender_localpart
            ));
        }
        let sender =
            crate::service::users::Users::parse_new_localpart(&reg.sender_localpart, server_name)
                .map_err(|e| {
                format!(
                    "`sender_localpart` {:?} is invalid: {e}",
                    reg.sender_localpart
                )
            })?;
        Ok(Self {
            users: compile(&reg.namespaces.users, "users")?,
            aliases: compile(&reg.namespaces.aliases, "aliases")?,
            rooms: compile(&reg.namespaces.rooms, "rooms")?,
            sender,
            file,
            source,
            wake: Notify::new(),
            retired: AtomicBool::new(false),
        })
    }

    pub fn id(&self) -> &str {
        &self.file.registration.id
    }
    pub fn registration(&self) -> &Registration {
        &self.file.registration
    }
    pub fn url(&self) -> Option<&str> {
        self.file
            .registration
            .url
            .as_deref()
            .filter(|u| !u.is_empty())
    }

    /// Whether it wants typing, receipts and presence (MSC2409 under any of its names).
    pub fn receive_ephemeral(&self) -> bool {
        self.file.registration.receive_ephemeral
            || self.file.msc2409_push_ephemeral == Some(true)
            || self.file.push_ephemeral == Some(true)
    }
    /// Whether its users' to-device messages go into its transactions (MSC4203; MSC3202
    /// bridges need them too).
    pub fn receive_to_device(&self) -> bool {
        self.file.msc4203 == Some(true) || self.file.msc3202 == Some(true)
    }
    /// Whether the spec's rate limits apply to it (`rate_limited`, default true).
    pub fn rate_limited(&self) -> bool {
        self.file.registration.rate_limited != Some(false)
    }

    /// Whether `user_id` is in its user namespace (exclusive or not) or is its sender.
    pub fn is_user_match(&self, user_id: &UserId) -> bool {
        user_id == self.sender
            || self
                .users
                .iter()
                .any(|ns| ns.regex.is_match(user_id.as_str()))
    }
    pub fn is_exclusive_user(&self, user_id: &UserId) -> bool {
        user_id == self.sender
            || self
                .users
                .iter()
                .any(|ns| ns.exclusive && ns.regex.is_match(user_id.as_str()))
    }
    pub fn is_alias_match(&self, alias: &str) -> bool {
        self.aliases.iter().any(|ns| ns.regex.is_match(alias))
    }
    pub fn is_exclusive_alias(&self, alias: &str) -> bool {
        self.aliases
            .iter()
            .any(|ns| ns.exclusive && ns.regex.is_match(alias))
    }
    pub fn is_room_match(&self, room_id: &str) -> bool {
        self.rooms.iter().any(|ns| ns.regex.is_match(room_id))
    }
    /// Whether it declares the third-party protocol `protocol`.
    pub fn has_protocol(&self, protocol: &str) -> bool {
        self.file
            .registration
            .protocols
            .as_ref()
            .is_some_and(|p| p.iter().any(|x| x == protocol))
    }
}

/// Reads and parses one registration file (no cross-file checks).
pub fn parse_file(path: &Path) -> Result<RegistrationFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read appservice registration {}: {e}",
            path.display()
        )
    })?;
    parse_yaml(&text).map_err(|e| format!("appservice registration {}: {e}", path.display()))
}

/// Parses the YAML of a registration.
pub fn parse_yaml(text: &str) -> Result<RegistrationFile, String> {
    serde_yaml_ng::from_str::<RegistrationFile>(text).map_err(|e| format!("invalid YAML: {e}"))
}

/// Reads, parses and validates the registration files (also across files: IDs and tokens
/// unique). Errors name the file and the problem.
pub fn check_files(
    server_name: &ServerName,
    files: &[impl AsRef<Path>],
) -> Result<Vec<Arc<Appservice>>, String> {
    let mut loaded: Vec<Arc<Appservice>> = Vec::new();
    for path in files {
        let path = path.as_ref();
        let file = parse_file(path)?;
        let service = Appservice::new(file, Source::File, server_name)
            .map_err(|e| format!("appservice registration {}: {e}", path.display()))?;
        check_unique(&loaded, &service)
            .map_err(|e| format!("appservice registration {}: {e}", path.display()))?;
        loaded.push(Arc::new(service));
    }
    Ok(loaded)
}

/// Every registered appservice, in memory.
pub struct Appservices {
    store: Store,
    server_name: ruma::OwnedServerName,
    list: RwLock<Arc<Vec<Arc<Appservice>>>>,
    /// Which appservices are interested in a room because of its ID, aliases or members
    /// (one flag per appservice of the current list). Filled on demand, dropped for a room
    /// when its members or aliases change, and entirely when the list changes.
    interest: Mutex<HashMap<OwnedRoomId, Arc<Vec<bool>>>>,
    pub(crate) http: reqwest::Client,
    /// Sender tasks to start (registrations made before the server started them, or later).
    pub(crate) spawn_requests: Mutex<Vec<Arc<Appservice>>>,
    pub(crate) started: AtomicBool,
}

const INTEREST_CACHE_MAX: usize = 16 * 1024;

impl Appservices {
    /// Loads the registration files named in the config (refusing start-up on any problem) and
    /// mirrors them into the database; registrations made through the API are kept.
    pub fn load(
        store: Store,
        server_name: &ServerName,
        files: &[impl AsRef<Path>],
    ) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(rustls::RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                })
                .with_no_client_auth(),
            )
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot build the appservice HTTP client: {e}"))?;
        let this = Self {
            store,
            server_name: server_name.to_owned(),
            list: RwLock::new(Arc::new(Vec::new())),
            interest: Mutex::new(HashMap::new()),
            http,
            spawn_requests: Mutex::new(Vec::new()),
            started: AtomicBool::new(false),
        };
        let mut loaded = check_files(server_name, files)?;
        // Registrations from the API survive restarts; file ones are replaced by the files.
        let mut batch = Batch::new();
        let stored: Vec<_> = this
            .store
            .scan_prefix(Cf::Appservices, b"")
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        for (key, value) in stored {
            let Ok(record) = serde_json::from_slice::<StoredRegistration>(&value) else {
                continue;
            };
            match record.source {
                Source::File => {
                    if !loaded.iter().any(|s| s.id().as_bytes() == &key[..]) {
                        batch.delete(Cf::Appservices, key.to_vec());
                    }
                }
                Source::Api => {
                    let Ok(service) =
                        Appservice::new(record.registration, Source::Api, server_name)
                    else {
                        continue;
                    };
                    if check_unique(&loaded, &service).is_ok() {
                        loaded.push(Arc::new(service));
                    }
                }
            }
        }
        for service in &loaded {
            if service.source == Source::File {
                batch.put(
                    Cf::Appservices,
                    service.id().as_bytes(),
                    serde_json::to_vec(&StoredRegistration {
                        source: Source::File,
                        registration: service.file.clone(),
                    })
                    .map_err(|e| e.to_string())?,
                );
            }
            tracing::info!(id = service.id(), "application service registered");
        }
        this.store.write(batch).map_err(|e| e.to_string())?;
        *this
            .spawn_requests
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = loaded.clone();
        *this.list.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
        Ok(this)
    }

    /// The current registrations.
    pub fn list(&self) -> Arc<Vec<Arc<Appservice>>> {
        self.list.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn get(&self, id: &str) -> Option<Arc<Appservice>> {
        self.list().iter().find(|s| s.id() == id).cloned()
    }

    /// The appservice whose `as_token` this is.
    pub fn by_as_token(&self, token: &str) -> Option<Arc<Appservice>> {
        let list = self.list();
        if list.is_empty() {
            return None;
        }
        list.iter()
            .find(|s| {
                utils::constant_time_eq(s.registration().as_token.as_bytes(), token.as_bytes())
            })
            .cloned()
    }

    /// Adds (or replaces, same ID) a registration at run time, persisted as an API one.
    pub fn register(&self, file: RegistrationFile) -> Result<Arc<Appservice>> {
        let service =
            Appservice::new(file, Source::Api, &self.server_name).map_err(Error::invalid_param)?;
        let mut list = self.list.write().unwrap_or_else(|p| p.into_inner());
        let others: Vec<_> = list
            .iter()
            .filter(|s| s.id() != service.id())
            .cloned()
            .collect();
        check_unique(&others, &service).map_err(Error::invalid_param)?;
        self.store.put(
            Cf::Appservices,
            service.id().as_bytes(),
            &serde_json::to_vec(&StoredRegistration {
                source: Source::Api,
                registration: service.file.clone(),
            })?,
        )?;
        let service = Arc::new(service);
        for old in list.iter().filter(|s| s.id() == service.id()) {
            old.retired.store(true, Ordering::SeqCst);
            old.wake.notify_one();
        }
        let mut new = others;
        new.push(service.clone());
        *list = Arc::new(new);
        drop(list);
        self.clear_interest();
        self.spawn_requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(service.clone());
        Ok(service)
    }

    /// Removes a registration (its queue is dropped too). `false` if there was none.
    pub fn unregister(&self, id: &str) -> Result<bool> {
        let mut list = self.list.write().unwrap_or_else(|p| p.into_inner());
        let Some(old) = list.iter().find(|s| s.id() == id).cloned() else {
            return Ok(false);
        };
        let mut batch = Batch::new();
        batch.delete(Cf::Appservices, id.as_bytes());
        batch.delete(Cf::AppserviceTxns, id.as_bytes());
        for item in self
            .store
            .scan_prefix(Cf::AppserviceQueue, &keys::prefix(id.as_bytes()))
        {
            batch.delete(Cf::AppserviceQueue, item?.0.to_vec());
        }
        self.store.write(batch)?;
        old.retired.store(true, Ordering::SeqCst);
        old.wake.notify_one();
        *list = Arc::new(list.iter().filter(|s| s.id() != id).cloned().collect());
        drop(list);
        self.clear_interest();
        Ok(true)
    }

    /// The appservice that holds `user_id` in an exclusive namespace.
    pub fn exclusive_user_owner(&self, user_id: &UserId) -> Option<Arc<Appservice>> {
        self.list()
            .iter()
            .find(|s| s.is_exclusive_user(user_id))
            .cloned()
    }
    /// The appservice that holds `alias` in an exclusive namespace.
    pub fn exclusive_alias_owner(&self, alias: &RoomAliasId) -> Option<Arc<Appservice>> {
        self.list()
            .iter()
            .find(|s| s.is_exclusive_alias(alias.as_str()))
            .cloned()
    }

    /// `M_EXCLUSIVE` unless `actor` (an appservice or nobody) may take `user_id`.
    pub fn check_user_exclusive(&self, user_id: &UserId, actor: Option<&Appservice>) -> Result<()> {
        match actor {
            Some(service) if !service.is_user_match(user_id) => Err(exclusive(
                "This user ID is not in the application service's namespace.",
            )),
            Some(_) => Ok(()),
            None if self.exclusive_user_owner(user_id).is_some() => Err(exclusive(
                "This user ID is reserved by an application service.",
            )),
            None => Ok(()),
        }
    }

    /// `M_EXCLUSIVE` unless `actor` may create `alias`: an appservice only in its own alias
    /// namespace, anyone else only outside exclusive ones.
    pub fn check_alias_exclusive(
        &self,
        alias: &RoomAliasId,
        actor: Option<&Appservice>,
    ) -> Result<()> {
        if let Some(service) = actor
            && !service.is_alias_match(alias.as_str())
        {
            return Err(exclusive(
                "This room alias is not in the application service's namespace.",
            ));
        }
        match self.exclusive_alias_owner(alias) {
            Some(owner) if actor.is_none_or(|a| a.id() != owner.id()) => Err(exclusive(
                "This room alias is reserved by an application service.",
            )),
            _ => Ok(()),
        }
    }

    pub(crate) fn forget_room_interest(&self, room_id: &RoomId) {
        self.interest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(room_id);
    }

    fn clear_interest(&self) {
        self.interest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Per appservice of `list`: whether it is interested in every event of the room, by the
    /// room's ID, one of its aliases, or a joined or invited member in its user namespace.
    pub(crate) fn room_interest(
        &self,
        list: &[Arc<Appservice>],
        room_id: &RoomId,
    ) -> Result<Arc<Vec<bool>>> {
        if let Some(hit) = self
            .interest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(room_id)
            .filter(|v| v.len() == list.len())
        {
            return Ok(hit.clone());
        }
        let mut flags: Vec<bool> = list
            .iter()
            .map(|s| s.is_room_match(room_id.as_str()))
            .collect();
        if flags.iter().any(|f| !f) && list.iter().any(|s| !s.aliases.is_empty()) {
            for item in self
                .store
                .scan_prefix(Cf::RoomAliases, &keys::prefix(room_id.as_bytes()))
            {
                let (key, _) = item?;
                let alias = String::from_utf8_lossy(keys::split(&key).nth(1).unwrap_or_default());
                for (i, service) in list.iter().enumerate() {
                    flags[i] |= service.is_alias_match(&alias);
                }
            }
        }
        if flags.iter().any(|f| !f) {
            let prefix = keys::prefix(room_id.as_bytes());
            for item in self.store.scan_prefix(Cf::RoomMembers, &prefix) {
                let (key, value) = item?;
                if !matches!(&value[..], b"join" | b"invite") {
                    continue;
                }
                let Ok(user) =
                    UserId::parse(String::from_utf8_lossy(&key[prefix.len()..]).as_ref())
                else {
                    continue;
                };
                for (i, service) in list.iter().enumerate() {
                    flags[i] |= service.is_user_match(&user);
                }
                if flags.iter().all(|f| *f) {
                    break;
                }
            }
        }
        let flags = Arc::new(flags);
        let mut cache = self.interest.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= INTEREST_CACHE_MAX {
            cache.clear();
        }
        cache.insert(room_id.to_owned(), flags.clone());
        Ok(flags)
    }

    /// The appservices (with a URL to push to) interested in an event: by its room, its
    /// sender, or (for membership events) its target.
    pub fn interested_in_event(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        event_type: &str,
        state_key: Option<&str>,
    ) -> Result<Vec<Arc<Appservice>>> {
        let list = self.list();
        if list.is_empty() {
            return Ok(Vec::new());
        }
        let target = (event_type == "m.room.member")
            .then_some(state_key)
            .flatten()
            .and_then(|k| UserId::parse(k).ok());
        let mut out = Vec::new();
        let mut room_flags = None;
        for (i, service) in list.iter().enumerate() {
            if service.url().is_none() {
                continue;
            }
            let direct = service.is_user_match(sender)
                || target.as_deref().is_some_and(|t| service.is_user_match(t));
            let interested = direct || {
                if room_flags.is_none() {
                    room_flags = Some(self.room_interest(&list, room_id)?);
                }
                room_flags
                    .as_ref()
                    .is_some_and(|f| f.get(i).copied().unwrap_or(false))
            };
            if interested {
                out.push(service.clone());
            }
        }
        // A membership change can change who is interested in the room from now on.
        if target.is_some() {
            self.forget_room_interest(room_id);
        }
        Ok(out)
    }

    /// The appservices (with a URL) interested in a room as a whole, for its ephemeral events.
    pub fn interested_in_room(&self, room_id: &RoomId) -> Result<Vec<Arc<Appservice>>> {
        let list = self.list();
        if !list
            .iter()
            .any(|s| s.receive_ephemeral() && s.url().is_some())
        {
            return Ok(Vec::new());
        }
        let flags = self.room_interest(&list, room_id)?;
        Ok(list
            .iter()
            .enumerate()
            .filter(|(i, s)| s.receive_ephemeral() && s.url().is_some() && flags[*i])
            .map(|(_, s)| s.clone())
            .collect())
    }

    /// Whether any appservice (with a URL) asked for ephemeral events.
    pub fn any_receive_ephemeral(&self) -> bool {
        self.list()
            .iter()
            .any(|s| s.receive_ephemeral() && s.url().is_some())
    }

    /// The appservices (with a URL) owning `user_id`, for its to-device messages and presence.
    pub fn interested_in_user(&self, user_id: &UserId) -> Vec<Arc<Appservice>> {
        self.list()
            .iter()
            .filter(|s| s.url().is_some() && s.is_user_match(user_id))
            .cloned()
            .collect()
    }
}

/// Whom an appservice request acts as.
pub struct AppserviceIdentity {
    pub user_id: OwnedUserId,
    pub device_id: ruma::OwnedDeviceId,
}

impl crate::service::Services {
    /// Resolves an appservice request: the user it masquerades as (`user_id`, which must be in
    /// its user namespace, else 403 `M_EXCLUSIVE`; and registered, else 403 `M_FORBIDDEN`,
    /// unless `registering`), or its sender (created on first use); and the device it acts
    /// from (`device_id`, spec v1.17's MSC4326: one of that user's devices, which the
    /// appservice may create through `PUT /devices/{id}`), else a fixed one per appservice.
    pub async fn appservice_identity(
        &self,
        service: &Appservice,
        user_id: Option<&str>,
        device_id: Option<&str>,
        registering: bool,
    ) -> Result<AppserviceIdentity> {
        let user_id = match user_id {
            None => service.sender.clone(),
            Some(raw) => {
                let user_id = UserId::parse(raw)
                    .map_err(|e| Error::invalid_param(format!("Invalid user_id: {e}")))?;
                if !service.is_user_match(&user_id) || user_id.server_name() != self.server_name {
                    return Err(Error::new(
                        http::StatusCode::FORBIDDEN,
                        ruma::api::error::ErrorKind::Exclusive,
                        "The application service may not masquerade as this user.",
                    ));
                }
                user_id
            }
        };
        let record = if registering {
            None
        } else {
            self.users.get(&user_id)?
        };
        if record.as_ref().is_some_and(|r| r.deactivated) {
            return Err(Error::new(
                http::StatusCode::FORBIDDEN,
                ruma::api::error::ErrorKind::UserDeactivated,
                format!("{user_id} is deactivated."),
            ));
        }
        if !registering && record.is_none() {
            if user_id == service.sender {
                match self.users.create_for_appservice(&user_id, |_| {}).await {
                    Ok(_) => tracing::info!(user = %user_id, "created an appservice sender"),
                    Err(Error::Matrix { .. }) => {} // created meanwhile
                    Err(e) => return Err(e),
                }
            } else {
                // Bridges (mautrix) recognise this wording and register their bot then.
                return Err(Error::forbidden(format!(
                    "Application service has not registered this user ({user_id})."
                )));
            }
        }
        let device_id = match device_id {
            Some(raw) => {
                let device_id = ruma::OwnedDeviceId::from(raw);
                // Spec v1.17 (MSC4326): 400 `M_UNKNOWN_DEVICE`.
                if !registering && self.devices.get(&user_id, &device_id)?.is_none() {
                    return Err(Error::new(
                        http::StatusCode::BAD_REQUEST,
                        ruma::api::error::ErrorKind::UnknownDevice,
                        format!("{user_id} has no device {device_id}."),
                    ));
                }
                device_id
            }
            None => ruma::OwnedDeviceId::from(format!("AS_{}", service.id())),
        };
        Ok(AppserviceIdentity { user_id, device_id })
    }
}

/// IDs and tokens must be unique across registrations; a token must never be both an
/// `as_token` and an `hs_token`, or one service could act as the other.
fn check_unique(existing: &[Arc<Appservice>], new: &Appservice) -> Result<(), String> {
    let reg = new.registration();
    for other in existing {
        let o = other.registration();
        if o.id == reg.id {
            return Err(format!("duplicate appservice id {:?}", reg.id));
        }
        let tokens: HashSet<&str> = [o.as_token.as_str(), o.hs_token.as_str()].into();
        if tokens.contains(reg.as_token.as_str()) {
            return Err(format!(
                "`as_token` is already used by appservice {:?}",
                o.id
            ));
        }
        if tokens.contains(reg.hs_token.as_str()) {
            return Err(format!(
                "`hs_token` is already used by appservice {:?}",
                o.id
            ));
        }
    }
    Ok(())
}

/// 400 `M_EXCLUSIVE`.
pub fn exclusive(message: &str) -> Error {
    Error::new(
        http::StatusCode::BAD_REQUEST,
        ruma::api::error::ErrorKind::Exclusive,
        message,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
id: irc
url: http://127.0.0.1:9999
as_token: as-secret
hs_token: hs-secret
sender_localpart: ircbot
namespaces:
  users:
    - exclusive: true
      regex: '@irc_.*:example\.org'
  aliases:
    - exclusive: false
      regex: '#irc_.*'
  rooms: []
rate_limited: false
protocols: [irc]
de.sorunome.msc2409.push_ephemeral: true
org.matrix.msc3202: true
"#;

    fn server() -> ruma::OwnedServerName {
        "example.org".try_into().unwrap()
    }

    #[test]
    fn a_good_registration_compiles_and_matches() {
        let file = parse_yaml(GOOD).unwrap();
        let service = Appservice::new(file, Source::File, &server()).unwrap();
        assert_eq!(service.sender, "@ircbot:example.org");
        assert!(service.receive_ephemeral());
        assert!(service.receive_to_device());
        assert!(!service.rate_limited());
        assert!(service.has_protocol("irc"));
        let ghost = UserId::parse("@irc_bob:example.org").unwrap();
        let human = UserId::parse("@bob:example.org").unwrap();
        assert!(service.is_exclusive_user(&ghost));
        assert!(!service.is_user_match(&human));
        assert!(service.is_exclusive_user(&service.sender.clone()));
        assert!(service.is_alias_match("#irc_chan:example.org"));
        assert!(!service.is_exclusive_alias("#irc_chan:example.org"));
        assert!(!service.is_room_match("!x:example.org"));
    }

    #[test]
    fn url_may_be_null_but_not_missing() {
        let null = GOOD.replace("url: http://127.0.0.1:9999", "url: null");
        let service = Appservice::new(parse_yaml(&null).unwrap(), Source::File, &server()).unwrap();
        assert!(service.url().is_none());
        let missing = GOOD.replace("url: http://127.0.0.1:9999\n", "");
        assert!(parse_yaml(&missing).unwrap_err().contains("url"));
    }

    #[test]
    fn bad_registrations_are_refused_with_the_reason() {
        for (from, to, expect) in [
            ("as_token: as-secret", "as_token: hs-secret", "must differ"),
            ("'@irc_.*:example\\.org'", "'@irc_(:'", "invalid regex"),
            (
                "sender_localpart: ircbot",
                "sender_localpart: 'a b'",
                "sender_localpart",
            ),
            (
                "url: http://127.0.0.1:9999",
                "url: 'ftp://x'",
                "http or https",
            ),
        ] {
            let text = GOOD.replace(from, to);
            let err = parse_yaml(&text)
                .and_then(|f| Appservice::new(f, Source::File, &server()))
                .unwrap_err();
            assert!(err.contains(expect), "{to}: {err}");
        }
        assert!(parse_yaml("id: [").unwrap_err().contains("invalid YAML"));
        let no_token = GOOD.replace("hs_token: hs-secret\n", "");
        assert!(parse_yaml(&no_token).unwrap_err().contains("hs_token"));
    }

    #[test]
    fn the_registry_registers_lists_and_unregisters_and_files_win_over_the_database() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = Store::open(
            &dir.path().join("db"),
            &crate::store::StoreOptions::default(),
        )
        .unwrap();
        let file = dir.path().join("irc.yaml");
        std::fs::write(&file, GOOD).unwrap();
        let registry = Appservices::load(store.clone(), &server(), &[&file]).unwrap();
        assert_eq!(registry.list().len(), 1);
        assert!(registry.by_as_token("as-secret").is_some());
        assert!(registry.by_as_token("hs-secret").is_none());
        let ghost = UserId::parse("@irc_x:example.org").unwrap();
        assert!(registry.check_user_exclusive(&ghost, None).is_err());

        // A second one at run time; its tokens must not clash with the first one's.
        let clash = parse_yaml(&GOOD.replace("id: irc", "id: other")).unwrap();
        assert!(registry.register(clash).is_err());
        let other = parse_yaml(
            &GOOD
                .replace("id: irc", "id: other")
                .replace("as-secret", "as-2")
                .replace("hs-secret", "hs-2")
                .replace("sender_localpart: ircbot", "sender_localpart: otherbot"),
        )
        .unwrap();
        registry.register(other).unwrap();
        assert_eq!(registry.list().len(), 2);
        drop(registry);

        // After a restart: the API registration is back, the file one read from the file.
        let registry = Appservices::load(store.clone(), &server(), &[&file]).unwrap();
        let mut ids: Vec<String> = registry.list().iter().map(|s| s.id().to_owned()).collect();
        ids.sort();
        assert_eq!(ids, ["irc", "other"]);
        assert!(registry.unregister("other").unwrap());
        assert!(!registry.unregister("other").unwrap());
        drop(registry);
        // A file no longer listed is gone from the database too.
        let registry = Appservices::load(store, &server(), &[] as &[&Path]).unwrap();
        assert!(registry.list().is_empty());
    }
}
