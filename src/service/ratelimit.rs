//! Token-bucket rate limits for the endpoints where guessing happens (login, registration,
//! delayed-event updates), reports, and — when configured — the events users send.
//! In memory; a restart forgets them, which is fine for this purpose.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::config::RateLimitConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Login,
    Register,
    /// Restarting, cancelling or sending a delayed event: its delay ID is the credential.
    DelayedEventUpdate,
    /// Reporting an event, a room or a user.
    Report,
    /// Sending an event (when `message_per_minute` is set).
    Message,
}

/// Delayed-event updates per minute and burst, per user or client IP: Element Call restarts
/// a call's delayed leave every few seconds; a guesser of delay IDs gets nowhere.
const DELAYED_EVENT_UPDATES: (u32, u32) = (120, 30);

/// Reports per minute and burst, per user: enough for someone cleaning up after spam, not
/// enough to fill the admins' list.
const REPORTS: (u32, u32) = (10, 20);

struct Bucket {
    tokens: f64,
    updated: Instant,
}

pub struct RateLimiter {
    config: RateLimitConfig,
    buckets: Mutex<HashMap<(Action, String), Bucket>>,
    /// Users whose sending an admin limits otherwise (`override_ratelimit`): events per
    /// second and burst; 0 per second: no limit. Kept in `global` too (`service::admin`).
    overrides: std::sync::RwLock<HashMap<String, MessageLimit>>,
}

/// A user's own limit on sending events (Synapse's `override_ratelimit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MessageLimit {
    pub messages_per_second: u32,
    pub burst_count: u32,
}

/// Forget buckets once this many exist (full ones are dropped first), bounding memory.
const MAX_BUCKETS: usize = 100_000;

impl RateLimiter {
    pub fn new(config: RateLimitConfig) -> Self {
        Self {
            config,
            buckets: Mutex::new(HashMap::new()),
            overrides: Default::default(),
        }
    }

    /// Sets (or with `None` removes) a user's own limit on sending events.
    pub fn set_override(&self, user: &str, limit: Option<MessageLimit>) {
        let mut overrides = self.overrides.write().unwrap_or_else(|p| p.into_inner());
        match limit {
            Some(limit) => overrides.insert(user.to_owned(), limit),
            None => overrides.remove(user),
        };
    }

    pub fn override_of(&self, user: &str) -> Option<MessageLimit> {
        let overrides = self.overrides.read().unwrap_or_else(|p| p.into_inner());
        overrides.get(user).copied()
    }

    /// Takes one token of `user`'s event sending; free (no lock, no lookup) when events are
    /// not limited, which is the default.
    pub fn check_message(&self, user: &str) -> Result<(), Duration> {
        if !self.config.enabled || self.config.message_per_minute == 0 {
            return Ok(());
        }
        match self.override_of(user) {
            Some(limit) if limit.messages_per_second == 0 => Ok(()),
            Some(limit) => self.take(
                Action::Message,
                user,
                f64::from(limit.messages_per_second),
                f64::from(limit.burst_count.max(1)),
            ),
            None => self.check(Action::Message, user),
        }
    }

    fn limits(&self, action: Action) -> (f64, f64) {
        let (per_minute, burst) = match action {
            Action::Login => (self.config.login_per_minute, self.config.login_burst),
            Action::Register => (self.config.register_per_minute, self.config.register_burst),
            Action::DelayedEventUpdate => DELAYED_EVENT_UPDATES,
            Action::Report => REPORTS,
            Action::Message => (self.config.message_per_minute, self.config.message_burst),
        };
        (f64::from(per_minute) / 60.0, f64::from(burst.max(1)))
    }

    /// Takes one token for `key` (an IP address or a user ID); on refusal returns how long
    /// until a token is available.
    pub fn check(&self, action: Action, key: &str) -> Result<(), Duration> {
        if !self.config.enabled {
            return Ok(());
        }
        let (rate, burst) = self.limits(action);
        self.take(action, key, rate, burst)
    }

    /// Takes one token from `key`'s bucket for `action`, refilled at `rate` per second up to
    /// `burst`.
    fn take(&self, action: Action, key: &str, rate: f64, burst: f64) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_BUCKETS {
            buckets.retain(|(a, _), b| {
                let (rate, burst) = self.limits(*a);
                b.tokens + rate * now.duration_since(b.updated).as_secs_f64() < burst
            });
        }
        let bucket = buckets.entry((action, key.to_owned())).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        let elapsed = now.duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else if rate <= 0.0 {
            Err(Duration::from_secs(3600))
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refuse_per_key() {
        let limiter = RateLimiter::new(RateLimitConfig {
            enabled: true,
            login_per_minute: 6,
            login_burst: 3,
            ..RateLimitConfig::default()
        });
        for _ in 0..3 {
            limiter.check(Action::Login, "1.2.3.4").unwrap();
        }
        let wait = limiter.check(Action::Login, "1.2.3.4").unwrap_err();
        assert!(wait > Duration::from_secs(5) && wait <= Duration::from_secs(10));
        // Another key and another action have their own buckets.
        limiter.check(Action::Login, "5.6.7.8").unwrap();
        limiter.check(Action::Register, "1.2.3.4").unwrap();
    }

    #[test]
    fn disabled_never_refuses() {
        let limiter = RateLimiter::new(RateLimitConfig {
            enabled: false,
            ..RateLimitConfig::default()
        });
        for _ in 0..1000 {
            limiter.check(Action::Login, "k").unwrap();
        }
    }
}
