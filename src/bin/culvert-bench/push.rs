//! The push scenario (issue #15): what push notifications cost a room's senders, and how soon a
//! notification reaches the push gateway.
//!
//! One room of `--members` users, each with an HTTP pusher to a sink gateway that this tool runs
//! on loopback (the server must be allowed to reach 127.0.0.1: culvert's `ip_range_denylist = []`,
//! Synapse's `ip_range_whitelist`). Each run has three phases:
//! 1. **throughput**: `--senders` members send `--count` messages each as fast as the server
//!    takes them (events/s and send latency; with `--no-pushers` the same room without pushers,
//!    the baseline);
//! 2. **drain**: the gateway waits for every notification of those messages (every member but
//!    the sender gets one per message): how long the backlog takes after the last send;
//! 3. **latency**: one member sends `--messages` at `--rate` per second; for each notification,
//!    the time from the start of its send to its arrival at the gateway.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use clap::Args;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::{
    client::{Result, User},
    measure::{Progress, ms},
    scenarios::{Ctx, RunOutput, check_limits, fig, finish_monitor, latency_figures, message},
};

#[derive(Args, Debug, Clone, Serialize)]
pub struct PushOpts {
    /// Members of the room (the senders among them), each with a pusher.
    #[arg(long, default_value_t = 100)]
    pub members: usize,
    /// Concurrent senders in the throughput phase.
    #[arg(long, default_value_t = 4)]
    pub senders: usize,
    /// Messages per sender in the throughput phase.
    #[arg(long, default_value_t = 100)]
    pub count: usize,
    /// Messages in the latency phase.
    #[arg(long, default_value_t = 50)]
    pub messages: usize,
    /// Messages per second in the latency phase.
    #[arg(long, default_value_t = 5.0)]
    pub rate: f64,
    /// Messages per sender before measuring, not counted.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// The same room without pushers: the throughput phase only (the baseline).
    #[arg(long)]
    pub no_pushers: bool,
    /// How long to wait for the gateway to receive every notification, in seconds.
    #[arg(long, default_value_t = 300.0)]
    pub drain: f64,
}

/// The push gateway: answers every notify request with no rejected pushkeys and records, per
/// event, which members (by the index in their pushkey) it arrived for and when. Badge-only
/// requests (no event) are counted.
#[derive(Clone, Default)]
struct Sink {
    arrivals: Arc<Mutex<SinkLog>>,
}

#[derive(Default)]
struct SinkLog {
    by_event: HashMap<String, Vec<(usize, Instant)>>,
    badges: usize,
}

impl Sink {
    /// Starts the gateway on a free loopback port; returns it and its notify URL.
    async fn start() -> Result<(Self, String)> {
        let sink = Self::default();
        let log = sink.arrivals.clone();
        let app = axum::Router::new().route(
            "/_matrix/push/v1/notify",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                let log = log.clone();
                async move {
                    let now = Instant::now();
                    let notification = &body["notification"];
                    let member = notification["devices"][0]["pushkey"]
                        .as_str()
                        .and_then(|key| key.strip_prefix(PUSHKEY_PREFIX))
                        .and_then(|i| i.parse().ok())
                        .unwrap_or(usize::MAX);
                    let mut log = log.lock().expect("sink log");
                    match notification["event_id"].as_str() {
                        Some(id) => log
                            .by_event
                            .entry(id.to_owned())
                            .or_default()
                            .push((member, now)),
                        None => log.badges += 1,
                    }
                    axum::Json(json!({ "rejected": [] }))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("push: the sink gateway stopped: {e}");
            }
        });
        Ok((sink, format!("http://{addr}/_matrix/push/v1/notify")))
    }

    /// The arrivals for `events` at members from index `from` on.
    fn arrivals(&self, events: &[String], from: usize) -> Vec<(String, usize, Instant)> {
        let log = self.arrivals.lock().expect("sink log");
        events
            .iter()
            .flat_map(|id| {
                log.by_event
                    .get(id)
                    .into_iter()
                    .flatten()
                    .filter(|(member, _)| *member >= from)
                    .map(move |(member, at)| (id.clone(), *member, *at))
            })
            .collect()
    }

    /// Waits until `expected` notifications arrived for `events` at members from index `from`
    /// on, or `limit` passed; returns the instant of the last arrival among them.
    async fn wait_for(
        &self,
        events: &[String],
        from: usize,
        expected: usize,
        limit: Duration,
    ) -> Instant {
        let deadline = Instant::now() + limit;
        while self.arrivals(events, from).len() < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.arrivals(events, from)
            .into_iter()
            .map(|(_, _, at)| at)
            .max()
            .unwrap_or_else(Instant::now)
    }

    /// `(arrivals, distinct (event, member) pairs)` for `events` at members from `from` on.
    fn tally(&self, events: &[String], from: usize) -> (usize, usize) {
        let arrivals = self.arrivals(events, from);
        let distinct: HashSet<(&str, usize)> = arrivals
            .iter()
            .map(|(id, member, _)| (id.as_str(), *member))
            .collect();
        (arrivals.len(), distinct.len())
    }
}

/// Member `i`'s pushkey is this prefix and `i`.
const PUSHKEY_PREFIX: &str = "bench-pushkey-";

pub struct Push {
    opts: PushOpts,
    members: Vec<User>,
    room: String,
    sink: Option<Sink>,
}

impl Push {
    pub async fn prepare(ctx: &Ctx, opts: PushOpts) -> Result<Self> {
        check_limits("--members", opts.members, 5_000)?;
        check_limits("--count", opts.count, 100_000)?;
        check_limits("--messages", opts.messages, 100_000)?;
        if opts.senders == 0 || opts.senders > opts.members {
            return Err("--senders must be between 1 and --members".into());
        }
        if !(opts.rate > 0.0 && opts.rate <= 1_000.0 && (0.0..=3_600.0).contains(&opts.drain)) {
            return Err("--rate must be within 0..1000, --drain within 0..3600".into());
        }
        let members = ctx.users("member", opts.members).await?;
        let room = members[0].create_room("bench push").await?;
        ctx.join_all(&members[1..], std::slice::from_ref(&room))
            .await?;
        let sink = if opts.no_pushers {
            None
        } else {
            let (sink, url) = Sink::start().await?;
            let members = Arc::new(members.clone());
            crate::measure::for_each_bounded(
                "set pushers",
                members.len(),
                ctx.setup_concurrency,
                move |i| {
                    let (members, url) = (members.clone(), url.clone());
                    async move {
                        members[i]
                            .set_pusher(&url, &format!("{PUSHKEY_PREFIX}{i}"))
                            .await
                    }
                },
            )
            .await?;
            Some(sink)
        };
        Ok(Self {
            opts,
            members,
            room,
            sink,
        })
    }

    /// Members who are notified of every message of the throughput phase, and whose
    /// notifications are counted there: all but the senders. (A sender's own message marks
    /// the room read for them, and a server need not push a notification that was read before
    /// its turn came — Synapse does not; so the senders' notifications depend on timing.)
    fn listeners(&self) -> usize {
        self.members.len() - self.opts.senders
    }

    pub async fn run(&self, ctx: &Ctx, run: usize) -> Result<RunOutput> {
        let drain_limit = Duration::from_secs_f64(self.opts.drain);
        // Warm-up: connections to the server and the gateway opened; not counted.
        let (_, warm_ids) = self.burst(run, self.opts.warmup, true).await?;
        if let Some(sink) = &self.sink {
            let (from, expected) = (self.opts.senders, warm_ids.len() * self.listeners());
            sink.wait_for(&warm_ids, from, expected, drain_limit).await;
        }

        let monitor = ctx.monitor();
        let started = Instant::now();
        let (samples, ids) = self.burst(run, self.opts.count, false).await?;
        let sent = Instant::now();
        let elapsed = sent.duration_since(started).as_secs_f64();
        let latencies: Vec<f64> = samples.iter().map(|s| s.1).collect();
        let mut figures = vec![
            fig("members", self.members.len() as f64),
            fig("senders", self.opts.senders as f64),
            fig(
                "pushers",
                if self.sink.is_some() {
                    self.members.len() as f64
                } else {
                    0.0
                },
            ),
            fig("events", latencies.len() as f64),
            fig("events_per_s", latencies.len() as f64 / elapsed),
        ];
        latency_figures("send", &latencies, &mut figures);
        let mut series = samples;

        if let Some(sink) = &self.sink {
            let from = self.opts.senders;
            let expected = ids.len() * self.listeners();
            let last = sink.wait_for(&ids, from, expected, drain_limit).await;
            figures.push(fig(
                "drain_s",
                last.saturating_duration_since(sent).as_secs_f64(),
            ));
            figures.push(fig(
                "pushes_per_s",
                sink.arrivals(&ids, 0).len() as f64 / last.duration_since(started).as_secs_f64(),
            ));
            let (total, distinct) = sink.tally(&ids, from);

            // Latency: one sender at a steady rate, each send's start remembered.
            let (pushed, latency_ids) = self.steady(run, sink, drain_limit).await?;
            // Everyone but the one sender of this phase is notified of each message.
            let (latency_total, latency_distinct) = sink.tally(&latency_ids, 1);
            let latency_expected = latency_ids.len() * (self.members.len() - 1);
            let push_ms: Vec<f64> = pushed.iter().map(|p| p.1).collect();
            latency_figures("push", &push_ms, &mut figures);
            figures.push(fig(
                "lost",
                (expected + latency_expected).saturating_sub(distinct + latency_distinct) as f64,
            ));
            figures.push(fig(
                "duplicates",
                (total - distinct + latency_total - latency_distinct) as f64,
            ));
            series = pushed
                .iter()
                .map(|(at, latency)| {
                    (
                        at.saturating_duration_since(started).as_secs_f64(),
                        *latency,
                    )
                })
                .collect();
            series.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        finish_monitor(monitor, &mut figures).await;
        Ok(RunOutput { figures, series })
    }

    /// `--senders` members send `count` messages each, as fast as the server answers; returns
    /// (seconds since the start, send latency ms) samples and the event IDs.
    async fn burst(
        &self,
        run: usize,
        count: usize,
        warmup: bool,
    ) -> Result<(Vec<(f64, f64)>, Vec<String>)> {
        let label = if warmup { "warm-up" } else { "send" };
        let progress = Progress::start(label, Some((count * self.opts.senders) as u64), None);
        let started = Instant::now();
        let mut set = JoinSet::new();
        for (i, sender) in self.members[..self.opts.senders].iter().enumerate() {
            let (sender, room, counter) =
                (sender.clone(), self.room.clone(), progress.count.clone());
            set.spawn(async move {
                let mut out = Vec::with_capacity(count);
                for k in 0..count {
                    let seq = if warmup { 1_000_000_000 } else { 0 } + i * 10_000_000 + k;
                    let t0 = Instant::now();
                    let id = sender.send(&room, &message(run, seq)).await?;
                    out.push((
                        t0.duration_since(started).as_secs_f64(),
                        ms(t0.elapsed()),
                        id,
                    ));
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Ok::<_, crate::client::Error>(out)
            });
        }
        let mut samples = Vec::new();
        let mut ids = Vec::new();
        while let Some(done) = set.join_next().await {
            for (t, latency, id) in done.map_err(|e| e.to_string())?? {
                samples.push((t, latency));
                ids.push(id);
            }
        }
        progress.finish().await;
        samples.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok((samples, ids))
    }

    /// The latency phase: returns each notification's arrival and its time from its send's
    /// start (ms), and the events sent.
    async fn steady(
        &self,
        run: usize,
        sink: &Sink,
        limit: Duration,
    ) -> Result<(Vec<(Instant, f64)>, Vec<String>)> {
        let sender = &self.members[0];
        let every = Duration::from_secs_f64(1.0 / self.opts.rate);
        let progress = Progress::start("latency", Some(self.opts.messages as u64), None);
        let mut sent_at = HashMap::new();
        let mut ids = Vec::new();
        let mut next = Instant::now();
        for k in 0..self.opts.messages {
            tokio::time::sleep_until(next.into()).await;
            next += every;
            let t0 = Instant::now();
            let id = sender
                .send(&self.room, &message(run, 500_000_000 + k))
                .await?;
            sent_at.insert(id.clone(), t0);
            ids.push(id);
            progress.inc();
        }
        progress.finish().await;
        sink.wait_for(&ids, 1, ids.len() * (self.members.len() - 1), limit)
            .await;
        let pushed = sink
            .arrivals(&ids, 1)
            .into_iter()
            .map(|(id, _, at)| (at, ms(at.saturating_duration_since(sent_at[&id]))))
            .collect();
        Ok((pushed, ids))
    }
}
