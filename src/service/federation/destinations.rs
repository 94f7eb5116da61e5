//! How sending to each other server goes, for the admins (Synapse's
//! `/_synapse/admin/v1/federation/destinations`): when it last failed, when the sender last
//! tried and how long it waits before the next try, when it last succeeded. Kept in memory by
//! the sender's tasks (a restart starts them afresh, as it starts the back-off afresh); an
//! admin's reset cuts a destination's wait short.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use ruma::{OwnedServerName, ServerName};
use tokio::sync::Notify;

use crate::utils;

/// One destination's sending, as the sender last saw it.
#[derive(Clone, Debug, Default)]
pub struct DestinationState {
    /// When the current run of failures began (ms since the epoch); none while sending works.
    pub failure_ts: Option<u64>,
    /// When the sender last tried and failed.
    pub retry_last_ts: Option<u64>,
    /// How long it waits after that failure before trying again (ms).
    pub retry_interval_ms: u64,
    /// When a transaction last went through.
    pub last_success_ts: Option<u64>,
}

#[derive(Default)]
pub struct Destinations {
    states: Mutex<HashMap<OwnedServerName, DestinationState>>,
    /// Wakes a destination's task out of its back-off (an admin's reset).
    resets: Mutex<HashMap<OwnedServerName, Arc<Notify>>>,
}

impl Destinations {
    /// A transaction to `destination` failed; the next try is in `wait`.
    pub fn failed(&self, destination: &ServerName, wait: Duration) {
        let now = utils::now_millis();
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let state = states.entry(destination.to_owned()).or_default();
        state.failure_ts.get_or_insert(now);
        state.retry_last_ts = Some(now);
        state.retry_interval_ms = wait.as_millis() as u64;
    }

    /// A transaction to `destination` went through.
    pub fn succeeded(&self, destination: &ServerName) {
        let state = DestinationState {
            last_success_ts: Some(utils::now_millis()),
            ..DestinationState::default()
        };
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        match states.get_mut(destination) {
            Some(known) => *known = state,
            None => {
                states.insert(destination.to_owned(), state);
            }
        }
    }

    pub fn state(&self, destination: &ServerName) -> Option<DestinationState> {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states.get(destination).cloned()
    }

    /// Every destination the sender has dealt with since the start.
    pub fn all(&self) -> Vec<(OwnedServerName, DestinationState)> {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states
            .iter()
            .map(|(name, state)| (name.clone(), state.clone()))
            .collect()
    }

    /// What a destination's task waits on besides its back-off.
    pub fn reset_signal(&self, destination: &ServerName) -> Arc<Notify> {
        let mut resets = self.resets.lock().unwrap_or_else(|p| p.into_inner());
        resets.entry(destination.to_owned()).or_default().clone()
    }

    /// A server that sent us a signed request is up: if sending to it was failing, the
    /// back-off ends now (as Synapse does) rather than up to ten minutes later — after a
    /// restart or a crash, its peers' queued events reach it as soon as it speaks to them.
    pub fn heard_from(&self, origin: &ServerName) {
        if self.reset(origin) {
            tracing::info!(%origin, "heard from a server that sending to had failed: retrying now");
        }
    }

    /// Forgets a destination's failures and has its task try again now. `false` when it
    /// was not failing.
    pub fn reset(&self, destination: &ServerName) -> bool {
        {
            let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
            match states.get_mut(destination) {
                Some(state) if state.failure_ts.is_some() => {
                    state.failure_ts = None;
                    state.retry_last_ts = None;
                    state.retry_interval_ms = 0;
                }
                _ => return false,
            }
        }
        self.reset_signal(destination).notify_one();
        true
    }
}
