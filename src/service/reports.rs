//! Reports of events, rooms and users (`/report`): kept for the server's admins, who read them
//! through the admin API. Nothing is sent anywhere; the reporter learns only that the report
//! was taken.

use std::sync::atomic::{AtomicU32, Ordering};

use ruma::{EventId, RoomId, UserId};
use serde::{Deserialize, Serialize};

use crate::{
    Error, Result,
    service::{Services, rooms::client_event::Viewer},
    store::{Cf, keys},
    utils,
};

/// Orders the reports one process keeps within one millisecond.
static REPORT_SEQUENCE: AtomicU32 = AtomicU32::new(0);

/// Longest reason kept; longer ones are cut (at a character boundary).
const MAX_REASON: usize = 4096;

/// What a report is about.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reported {
    Event { room_id: String, event_id: String },
    Room { room_id: String },
    User { user_id: String },
}

/// A `reports` entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReportRecord {
    #[serde(flatten)]
    pub reported: Reported,
    pub reporter: String,
    pub reason: String,
    /// When it was made (ms since the epoch).
    pub ts: u64,
}

impl Services {
    /// Reports an event the reporter may see (else 404, as for `/event`).
    pub fn report_event(
        &self,
        viewer: Viewer<'_>,
        room_id: &RoomId,
        event_id: &EventId,
        reason: &str,
    ) -> Result<()> {
        self.visible_event(room_id, viewer, event_id)?;
        self.keep_report(
            viewer.user_id,
            Reported::Event {
                room_id: room_id.to_string(),
                event_id: event_id.to_string(),
            },
            reason,
        )
    }

    /// Reports a room this server knows (else 404).
    pub fn report_room(&self, reporter: &UserId, room_id: &RoomId, reason: &str) -> Result<()> {
        if self.timeline.room(room_id)?.is_none() {
            return Err(Error::not_found("No such room."));
        }
        self.keep_report(
            reporter,
            Reported::Room {
                room_id: room_id.to_string(),
            },
            reason,
        )
    }

    /// Reports a user: a local one must exist (else 404); another server's cannot be checked.
    pub fn report_user(&self, reporter: &UserId, user_id: &UserId, reason: &str) -> Result<()> {
        if user_id.server_name() == self.server_name && !self.users.exists(user_id)? {
            return Err(Error::not_found("No such user."));
        }
        self.keep_report(
            reporter,
            Reported::User {
                user_id: user_id.to_string(),
            },
            reason,
        )
    }

    fn keep_report(&self, reporter: &UserId, reported: Reported, reason: &str) -> Result<()> {
        let mut cut = reason.len().min(MAX_REASON);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        let record = ReportRecord {
            reported,
            reporter: reporter.to_string(),
            reason: reason[..cut].to_owned(),
            ts: utils::now_millis(),
        };
        tracing::info!(reporter = %reporter, reported = ?record.reported, "report received");
        // Time first (the admins read them in order); within one millisecond this process's
        // sequence keeps them in the order they came, and random bytes keep apart reports of
        // one millisecond from two runs of the server.
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&keys::u64_be(record.ts));
        key[8..12].copy_from_slice(
            &REPORT_SEQUENCE
                .fetch_add(1, Ordering::Relaxed)
                .to_be_bytes(),
        );
        utils::random_bytes(&mut key[12..]);
        self.store
            .put(Cf::Reports, &key, &serde_json::to_vec(&record)?)?;
        Ok(())
    }

    /// Every report kept, oldest first.
    pub fn reports(&self) -> Result<Vec<ReportRecord>> {
        Ok(self
            .reports_with_ids()?
            .into_iter()
            .map(|(_, record)| record)
            .collect())
    }

    /// Every report kept with its ID (the hex of its key), oldest first. One scan.
    pub fn reports_with_ids(&self) -> Result<Vec<(String, ReportRecord)>> {
        let mut reports = Vec::new();
        for item in self.store.scan_prefix(Cf::Reports, &[]) {
            let (key, value) = item?;
            if let Ok(record) = serde_json::from_slice(&value) {
                reports.push((utils::hex(&key), record));
            }
        }
        Ok(reports)
    }

    /// One report by its ID; `None` for an ID that names none.
    pub fn report(&self, id: &str) -> Result<Option<ReportRecord>> {
        let Some(key) = report_key(id) else {
            return Ok(None);
        };
        Ok(match self.store.get(Cf::Reports, &key)? {
            Some(value) => serde_json::from_slice(&value).ok(),
            None => None,
        })
    }

    /// Deletes a report; false when the ID names none.
    pub fn delete_report(&self, id: &str) -> Result<bool> {
        let Some(key) = report_key(id) else {
            return Ok(false);
        };
        if !self.store.contains(Cf::Reports, &key)? {
            return Ok(false);
        }
        let mut batch = crate::store::Batch::new();
        batch.delete(Cf::Reports, key);
        self.store.write(batch)?;
        Ok(true)
    }
}

/// The key a report ID (32 hex digits) stands for.
fn report_key(id: &str) -> Option<Vec<u8>> {
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..32)
        .step_by(2)
        .map(|i| u8::from_str_radix(&id[i..i + 2], 16).ok())
        .collect()
}
