//! Moving in from another homeserver: `culvert import conduit` reads a Conduit database and
//! writes what it holds into this server's, keeping the server's identity (its signing key),
//! accounts with their passwords and logged-in devices, rooms with their history, and media.
//!
//! The source is opened read-only and never changed. The target must be a new database (no
//! accounts, no rooms) unless `--force`; then what exists here already is kept and reported.
//! `--dry-run` reads everything and reports what would be imported, writing nothing.

pub mod conduit;
pub mod synapse;

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use ruma::{CanonicalJsonObject, EventId, OwnedEventId, RoomId, ServerName, UserId};
use serde_json::Value;

use crate::{
    config::Config,
    service::{
        Services, StartError,
        cross_signing::SigningKeysUpload,
        globals::Globals,
        rooms::{state_res::State, timeline::Appended},
    },
    store::{Cf, Store, StoreOptions},
};

/// Opens the target of an import: `None` for a dry run; else the services on the config's
/// database, refused when it holds accounts or rooms already (unless `force`). A new database
/// first gets the source's signing key (`version`, PKCS#8), so the server stays the same to
/// others.
pub fn open_target(
    config: &Config,
    options: ImportOptions,
    version: &str,
    pkcs8: &[u8],
    report: &mut ImportReport,
) -> Result<Option<Arc<Services>>, StartError> {
    report.counts.insert("signing key", 1);
    if options.dry_run {
        return Ok(None);
    }
    let store = Store::open(&config.database_path, &StoreOptions::default())?;
    let is_new = store.count_keys(Cf::Users, 1) == 0 && store.count_keys(Cf::Rooms, 1) == 0;
    if !is_new && !options.force {
        return Err(StartError::Other(format!(
            "{} already holds accounts or rooms: import into a new database (or pass --force to add to this one)",
            config.database_path.display()
        )));
    }
    if is_new {
        Globals::import_signing_key(&store, version, pkcs8)?;
    } else {
        report.skip("the signing key: this database has its own (--force)".into());
    }
    drop(store);
    // No fsync per write: an import that stops halfway is started again from an empty
    // database anyway, and the end of the import syncs everything (`Store::flush`).
    let mut config = config.clone();
    config.durability = crate::store::durability::Durability::Process;
    Ok(Some(Services::open(config)?))
}

/// Counts or reports what appending an imported event came to; true when it was stored.
pub fn tally(
    report: &mut ImportReport,
    room_id: &RoomId,
    event_id: &EventId,
    outcome: crate::Result<Appended>,
) -> bool {
    match outcome {
        Ok(Appended::New) => {
            report.count("events");
            return true;
        }
        Ok(Appended::Known) => {}
        Ok(Appended::SoftFailed) => report.skip(format!(
            "{event_id} in {room_id}: not allowed by the room's state then (kept hidden)"
        )),
        Ok(Appended::MissingPrevious(missing)) => report.skip(format!(
            "{event_id} in {room_id}: {} earlier events are not in the database",
            missing.len()
        )),
        Err(e) => report.skip(format!("{event_id} in {room_id}: {e}")),
    }
    false
}

/// A user's cross-signing keys (master, self-signing, user-signing) as the source kept them.
pub async fn import_signing_keys(
    services: Option<&Services>,
    user_id: &UserId,
    [master_key, self_signing_key, user_signing_key]: [Option<Value>; 3],
    report: &mut ImportReport,
) -> Result<(), StartError> {
    if let Some(services) = services {
        if services.users.get(user_id)?.is_none() {
            return Ok(());
        }
        let upload = SigningKeysUpload {
            master_key,
            self_signing_key,
            user_signing_key,
        };
        if let Err(e) = services.upload_signing_keys(user_id, upload).await {
            report.skip(format!("{user_id}'s cross-signing keys: {e}"));
            return Ok(());
        }
    }
    report.count("cross-signing keys");
    Ok(())
}

/// What an import is asked to do.
#[derive(Clone, Copy, Debug, Default)]
pub struct ImportOptions {
    /// Read and count, write nothing.
    pub dry_run: bool,
    /// Import into a database that is not new.
    pub force: bool,
}

/// What an import did: counts by kind, and what it left out and why.
#[derive(Debug, Default)]
pub struct ImportReport {
    pub counts: BTreeMap<&'static str, u64>,
    pub skipped: Vec<String>,
}

impl ImportReport {
    pub fn count(&mut self, kind: &'static str) {
        *self.counts.entry(kind).or_default() += 1;
    }

    pub fn skip(&mut self, why: String) {
        tracing::warn!("not imported: {why}");
        self.skipped.push(why);
    }

    /// The report as the command line prints it.
    pub fn render(&self, dry_run: bool) -> String {
        let mut text = String::new();
        text.push_str(if dry_run {
            "dry run: nothing was written; would import\n"
        } else {
            "imported\n"
        });
        for (kind, count) in &self.counts {
            text.push_str(&format!("  {kind}: {count}\n"));
        }
        if self.skipped.is_empty() {
            text.push_str("nothing was left out\n");
        } else {
            text.push_str(&format!("left out ({}):\n", self.skipped.len()));
            for why in &self.skipped {
                text.push_str(&format!("  {why}\n"));
            }
        }
        text
    }
}

/// Progress lines for a long step: at most one every two seconds, then one at the end.
pub struct Progress {
    what: &'static str,
    total: u64,
    done: u64,
    started: Instant,
    last: Instant,
}

impl Progress {
    pub fn new(what: &'static str, total: u64) -> Self {
        let now = Instant::now();
        Self {
            what,
            total,
            done: 0,
            started: now,
            last: now,
        }
    }

    pub fn step(&mut self) {
        self.done += 1;
        if self.last.elapsed() >= Duration::from_secs(2) {
            self.last = Instant::now();
            let elapsed = self.started.elapsed().as_secs_f64();
            let rate = self.done as f64 / elapsed.max(0.001);
            let left = self.total.saturating_sub(self.done) as f64 / rate.max(0.001);
            eprintln!(
                "{}: {}/{} ({rate:.0}/s, about {left:.0} s left)",
                self.what, self.done, self.total
            );
        }
    }

    pub fn finish(self) {
        eprintln!(
            "{}: {} in {:.1} s",
            self.what,
            self.done,
            self.started.elapsed().as_secs_f64()
        );
    }
}

/// Stores as outliers the events a state names and the auth events `pdu` cites, with their
/// own auth events in turn (the auth chain, so that each can be checked), where they are not
/// here yet; `fetch` reads one from the source.
pub fn store_state_events(
    services: &Services,
    state: &State,
    pdu: &CanonicalJsonObject,
    fetch: impl Fn(&EventId) -> Result<Option<CanonicalJsonObject>, String>,
) -> Result<(), String> {
    use crate::service::rooms::timeline::referenced_ids;
    let missing = |id: &EventId| -> Result<bool, String> {
        Ok(services
            .timeline
            .pdu_json(id)
            .map_err(|e| e.to_string())?
            .is_none())
    };
    let mut outliers: Vec<(OwnedEventId, CanonicalJsonObject)> = Vec::new();
    let mut wanted: Vec<OwnedEventId> = state
        .values()
        .cloned()
        .chain(referenced_ids(pdu, "auth_events"))
        .collect();
    while let Some(id) = wanted.pop() {
        if outliers.iter().any(|(known, _)| *known == id) || !missing(&id)? {
            continue;
        }
        if let Some(pdu) = fetch(&id)? {
            wanted.extend(referenced_ids(&pdu, "auth_events"));
            outliers.push((id, pdu));
        }
    }
    services
        .timeline
        .store_outliers(&outliers)
        .map_err(|e| e.to_string())
}

/// Another server's signing keys as the source had cached them: kept when signed by it.
pub fn import_server_keys(
    services: Option<&Services>,
    server: &ServerName,
    document: &CanonicalJsonObject,
    report: &mut ImportReport,
) -> Result<(), StartError> {
    if let Some(services) = services
        && !services.federation.keys.import_document(server, document)?
    {
        report.skip(format!("{server}'s signing keys: not signed by {server}"));
        return Ok(());
    }
    report.count("known server keys");
    Ok(())
}

/// The end of an import: everything written is synced to disk.
pub fn finish(services: Option<&Services>) -> Result<(), StartError> {
    if let Some(services) = services {
        services
            .store
            .flush()
            .map_err(|e| StartError::Other(e.to_string()))?;
    }
    Ok(())
}
