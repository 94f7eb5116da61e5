//! The federation sender: per-destination queues in the `federation_outbox` column family
//! (written in the same batch as the event they carry, so an acknowledged event is never
//! lost), drained by one task per destination in order, in transactions of at most 50 PDUs
//! and 100 EDUs. A failing destination backs off exponentially (capped) without holding up
//! the others; new items wake its task. Queues survive restarts: at start-up every
//! destination with queued items gets its task back.

use std::{
    collections::HashMap,
    sync::{Arc, Weak},
    time::Duration,
};

use ruma::{
    EventId, MilliSecondsSinceUnixEpoch, OwnedServerName, OwnedTransactionId, RoomId, ServerName,
    api::federation::transactions::send_transaction_message, serde::Raw,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};

use crate::{
    Result,
    service::{Services, metrics::Outcome},
    store::{Batch, Cf, keys},
};

const MAX_PDUS: usize = 50;
const MAX_EDUS: usize = 100;
/// The first retry after a failure waits this long; each further failure doubles it.
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
/// The longest wait between retries of a failing destination.
const MAX_BACKOFF: Duration = Duration::from_secs(10 * 60);

/// One queued item.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
pub enum Queued {
    Pdu { pdu: ruma::OwnedEventId },
    Edu { edu: serde_json::Value },
}

impl Services {
    /// Starts the sender: the dispatcher that gives each destination its task, and tasks for
    /// the destinations that still have queued items from before a restart.
    pub fn start_federation_sender(self: &Arc<Self>) -> Result<()> {
        if !self.federation.enabled {
            return Ok(());
        }
        let (wakeup, mut wakeups) = mpsc::unbounded_channel::<OwnedServerName>();
        let services = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut workers: HashMap<OwnedServerName, Arc<Notify>> = HashMap::new();
            while let Some(destination) = wakeups.recv().await {
                let notify = workers.entry(destination.clone()).or_insert_with(|| {
                    let notify = Arc::new(Notify::new());
                    tokio::spawn(drain(services.clone(), destination, notify.clone()));
                    notify
                });
                notify.notify_one();
            }
        });
        // Destinations with items left over (one pass over the outbox at start-up).
        let mut pending: Vec<OwnedServerName> = Vec::new();
        for item in self.store.scan_prefix(Cf::FederationOutbox, &[]) {
            let (key, _) = item?;
            let name = key.split(|b| *b == keys::SEP).next().unwrap_or_default();
            if let Ok(name) = std::str::from_utf8(name)
                && let Ok(server) = ServerName::parse(name)
                && pending.last() != Some(&server)
            {
                pending.push(server);
            }
        }
        for destination in pending {
            let _ = wakeup.send(destination);
        }
        self.federation.outbox.start(wakeup);
        Ok(())
    }

    /// Queues an event that arrived from `origin` for the room's other servers (the resident
    /// server forwards a `send_join`'s join, which only it received).
    pub async fn forward_to_room_servers(
        &self,
        room_id: &RoomId,
        origin: Option<&ServerName>,
        event_id: &EventId,
    ) -> Result<()> {
        let destinations: Vec<OwnedServerName> = self
            .federation
            .outbox
            .remote_destinations(room_id)?
            .into_iter()
            .filter(|d| Some(&**d) != origin)
            .collect();
        if destinations.is_empty() {
            return Ok(());
        }
        // Queued under a stream count of its own, so it keeps its place among the events
        // queued by the append path.
        self.timeline
            .commit_counted(Batch::new(), |batch, count| {
                super::outbox::queue_pdu(batch, count, &destinations, event_id);
                Ok(())
            })
            .await?;
        self.federation.outbox.wake(&destinations);
        Ok(())
    }
}

impl Services {
    /// Queues an EDU (`{"edu_type": …, "content": …}`) for each of `destinations` (this
    /// server itself is skipped) under a stream count of its own, so it keeps its place among
    /// the PDUs queued for the same destinations, and wakes their senders. Nothing is queued
    /// when federation is off.
    pub async fn queue_edu(
        &self,
        destinations: &[OwnedServerName],
        edu: serde_json::Value,
    ) -> Result<()> {
        if !self.federation.enabled {
            return Ok(());
        }
        let destinations: Vec<OwnedServerName> = destinations
            .iter()
            .filter(|d| **d != self.server_name)
            .cloned()
            .collect();
        if destinations.is_empty() {
            return Ok(());
        }
        let value = serde_json::to_vec(&Queued::Edu { edu })?;
        self.timeline
            .commit_counted(Batch::new(), |batch, count| {
                for destination in &destinations {
                    batch.put(
                        Cf::FederationOutbox,
                        keys::join([destination.as_bytes(), &keys::u64_be(count)]),
                        value.clone(),
                    );
                }
                Ok(())
            })
            .await?;
        self.federation.outbox.wake(&destinations);
        Ok(())
    }
}

/// The task of one destination: sends its queue in order until it is empty, then waits.
async fn drain(services: Weak<Services>, destination: OwnedServerName, notify: Arc<Notify>) {
    let mut backoff: Option<Duration> = None;
    let reset = match services.upgrade() {
        Some(services) => services.federation.destinations.reset_signal(&destination),
        None => return,
    };
    loop {
        let Some(services) = services.upgrade() else {
            return;
        };
        let sent = send_next(&services, &destination).await;
        let destinations = &services.federation.destinations;
        match &sent {
            Ok(true) => {
                destinations.succeeded(&destination);
                services.metrics.federation_transaction(Outcome::sent);
            }
            Ok(false) => {}
            Err(e) => {
                services.metrics.federation_transaction(Outcome::failed);
                let wait = backoff.map_or(FIRST_BACKOFF, |b| (b * 2).min(MAX_BACKOFF));
                tracing::info!(%destination, retry_in_secs = wait.as_secs(), "federation send failed: {e}");
                destinations.failed(&destination, wait);
                backoff = Some(wait);
            }
        }
        drop(services);
        match sent {
            Ok(true) => backoff = None,
            Ok(false) => {
                // Empty: wait for news (or check again now and then).
                let _ = tokio::time::timeout(Duration::from_secs(60), notify.notified()).await;
            }
            Err(_) => {
                // The back-off, unless an admin resets the destination meanwhile.
                let wait = backoff.unwrap_or(FIRST_BACKOFF);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = reset.notified() => backoff = None,
                }
            }
        }
    }
}

/// Sends the next transaction of `destination`'s queue. `Ok(false)`: nothing was queued.
async fn send_next(services: &Services, destination: &ServerName) -> Result<bool, String> {
    let prefix = keys::prefix(destination.as_bytes());
    let mut taken = Vec::new();
    let mut pdus = Vec::new();
    let mut edus = Vec::new();
    for item in services.store.scan_prefix(Cf::FederationOutbox, &prefix) {
        let (key, value) = item.map_err(|e| e.to_string())?;
        match serde_json::from_slice::<Queued>(&value) {
            Ok(Queued::Pdu { pdu }) => {
                if pdus.len() == MAX_PDUS {
                    break;
                }
                if let Some(json) = services
                    .timeline
                    .pdu_json(&pdu)
                    .map_err(|e| e.to_string())?
                {
                    pdus.push(serde_json::value::to_raw_value(&json).map_err(|e| e.to_string())?);
                }
            }
            Ok(Queued::Edu { edu }) => {
                if edus.len() == MAX_EDUS {
                    break;
                }
                edus.push(Raw::from_json(
                    serde_json::value::to_raw_value(&edu).map_err(|e| e.to_string())?,
                ));
            }
            Err(e) => tracing::warn!(%destination, "dropping an unreadable outbox item: {e}"),
        }
        taken.push(key.to_vec());
    }
    if taken.is_empty() {
        return Ok(false);
    }
    if !pdus.is_empty() || !edus.is_empty() {
        // The ID names the first item: a retry (even after a restart) repeats the same
        // transaction, which the receiver recognises.
        let first = taken[0][prefix.len()..].to_vec();
        let txn_id = OwnedTransactionId::from(format!(
            "culvert-{}-{}",
            keys::parse_u64_be(&first).unwrap_or_default(),
            taken.len()
        ));
        let request = send_transaction_message::v1::Request::new(
            txn_id,
            services.server_name.clone(),
            MilliSecondsSinceUnixEpoch::now(),
        );
        let mut request = request;
        request.pdus = pdus;
        request.edus = edus;
        let response = services
            .send_federation_request(destination, request)
            .await
            .map_err(|e| e.to_string())?;
        for (event_id, result) in response.pdus {
            if let Err(e) = result {
                tracing::info!(%destination, %event_id, "the destination refused the event: {e}");
            }
        }
    }
    let mut batch = Batch::new();
    for key in taken {
        batch.delete(Cf::FederationOutbox, key);
    }
    services.store.write(batch).map_err(|e| e.to_string())?;
    Ok(true)
}
