//! The scenarios. Each prepares its accounts and rooms once (not measured), then runs its
//! measured phase `--runs` times; every run starts with a warm-up that is left out of the figures.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Args;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::{
    sync::{Semaphore, watch},
    task::JoinSet,
};

use crate::{
    client::{Reply, Result, Server, User, error_chain},
    measure::{ProcMonitor, Progress, for_each_bounded, mean, ms, percentile},
    sliding::{FIRST_RANGE_END, probe_sliding_sync, room_list_request},
};

/// What a run produced: named figures (units in the name's suffix) and a series of
/// (seconds since the measured phase began, value) for the chart.
pub struct RunOutput {
    pub figures: Vec<(String, f64)>,
    pub series: Vec<(f64, f64)>,
}

/// What every scenario needs besides its own options.
pub struct Ctx {
    pub server: Server,
    pub pid: Option<u32>,
    pub setup_concurrency: usize,
    /// Unique per invocation, so a second run against the same server makes new accounts.
    pub prefix: String,
    pub password: String,
}

impl Ctx {
    /// Registers `n` accounts named `<prefix><role><i>`.
    pub(crate) async fn users(&self, role: &str, n: usize) -> Result<Vec<User>> {
        let server = self.server.clone();
        let prefix = format!("{}{role}", self.prefix);
        let password = self.password.clone();
        for_each_bounded(
            &format!("register {role}s"),
            n,
            self.setup_concurrency,
            move |i| {
                let (server, name, password) =
                    (server.clone(), format!("{prefix}{i}"), password.clone());
                async move { server.register(&name, &password).await }
            },
        )
        .await
    }

    /// Every user in `users` joins every room.
    pub(crate) async fn join_all(&self, users: &[User], rooms: &[String]) -> Result<()> {
        let pairs: Arc<Vec<(User, String)>> = Arc::new(
            users
                .iter()
                .flat_map(|u| rooms.iter().map(move |r| (u.clone(), r.clone())))
                .collect(),
        );
        let n = pairs.len();
        for_each_bounded("join", n, self.setup_concurrency, move |i| {
            let pairs = pairs.clone();
            async move { pairs[i].0.join(&pairs[i].1).await }
        })
        .await?;
        Ok(())
    }

    pub(crate) fn monitor(&self) -> Option<ProcMonitor> {
        self.pid.map(ProcMonitor::start)
    }
}

pub(crate) async fn finish_monitor(monitor: Option<ProcMonitor>, figures: &mut Vec<(String, f64)>) {
    if let Some(monitor) = monitor {
        figures.extend(monitor.finish().await.0);
    }
}

pub(crate) fn fig(name: &str, value: f64) -> (String, f64) {
    (name.to_owned(), value)
}

/// Latency figures of one sample set, named `<name>_p50_ms` etc.
pub(crate) fn latency_figures(name: &str, values: &[f64], out: &mut Vec<(String, f64)>) {
    out.push(fig(&format!("{name}_p50_ms"), percentile(values, 50.0)));
    out.push(fig(&format!("{name}_p95_ms"), percentile(values, 95.0)));
    out.push(fig(&format!("{name}_p99_ms"), percentile(values, 99.0)));
    out.push(fig(&format!("{name}_max_ms"), percentile(values, 100.0)));
    out.push(fig(&format!("{name}_mean_ms"), mean(values)));
}

/// A message the scenarios can recognise in a sync or history response.
pub(crate) fn message(run: usize, seq: usize) -> Value {
    json!({
        "msgtype": "m.text",
        "body": format!("culvert-bench run {run} message {seq}"),
        "org.culvert.bench": { "run": run, "seq": seq },
    })
}

/// The (run, seq) tag of a timeline event sent by [`message`].
fn tag(event: &Value) -> Option<(usize, usize)> {
    let t = &event["content"]["org.culvert.bench"];
    Some((t["run"].as_u64()? as usize, t["seq"].as_u64()? as usize))
}

pub(crate) fn check_limits(what: &str, value: usize, max: usize) -> Result<()> {
    if value == 0 || value > max {
        return Err(format!("{what} must be between 1 and {max}").into());
    }
    Ok(())
}

// ---- send ------------------------------------------------------------------------------------

#[derive(Args, Debug, Clone, Serialize)]
pub struct SendOpts {
    /// Concurrent senders (one account each).
    #[arg(long, default_value_t = 16)]
    pub senders: usize,
    /// Rooms; sender i writes to rooms i, i+1, … in turn. 1 = everyone into one room.
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Length of the measured phase in seconds (an upper bound when --count is given).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Messages per sender in the measured phase (default: until --duration ends).
    #[arg(long)]
    pub count: Option<usize>,
    /// Messages per sender before measuring, not counted.
    #[arg(long, default_value_t = 10)]
    pub warmup: usize,
}

pub struct Send {
    opts: SendOpts,
    senders: Vec<User>,
    rooms: Vec<String>,
}

impl Send {
    pub async fn prepare(ctx: &Ctx, opts: SendOpts) -> Result<Self> {
        check_limits("--senders", opts.senders, 5_000)?;
        check_limits("--rooms", opts.rooms, 5_000)?;
        check_duration(opts.duration)?;
        let senders = ctx.users("sender", opts.senders).await?;
        let creator = senders[0].clone();
        let rooms = for_each_bounded(
            "create rooms",
            opts.rooms,
            ctx.setup_concurrency,
            move |i| {
                let creator = creator.clone();
                async move { creator.create_room(&format!("bench send {i}")).await }
            },
        )
        .await?;
        ctx.join_all(&senders[1..], &rooms).await?;
        Ok(Self {
            opts,
            senders,
            rooms,
        })
    }

    pub async fn run(&self, ctx: &Ctx, run: usize) -> Result<RunOutput> {
        let rooms = Arc::new(self.rooms.clone());
        // Warm-up: connections opened, caches filled; not counted.
        let warm = Instant::now() + Duration::from_secs(60);
        self.phase(
            run,
            rooms.clone(),
            Some(self.opts.warmup),
            warm,
            "warm-up",
            true,
        )
        .await?;

        let monitor = ctx.monitor();
        let started = Instant::now();
        let deadline = started + Duration::from_secs_f64(self.opts.duration);
        let (samples, errors, first_error) = self
            .phase(run, rooms, self.opts.count, deadline, "send", false)
            .await?;
        let elapsed = started.elapsed().as_secs_f64();

        let latencies: Vec<f64> = samples.iter().map(|s| s.1).collect();
        let mut figures = vec![
            fig("senders", self.opts.senders as f64),
            fig("rooms", self.rooms.len() as f64),
            fig("events", latencies.len() as f64),
            fig("errors", errors as f64),
            fig("elapsed_s", elapsed),
            fig("events_per_s", latencies.len() as f64 / elapsed),
        ];
        latency_figures("send", &latencies, &mut figures);
        finish_monitor(monitor, &mut figures).await;
        if let Some(e) = first_error {
            eprintln!("send: {errors} failed requests, the first: {e}");
        }
        Ok(RunOutput {
            figures,
            series: samples,
        })
    }

    /// Every sender sends until `count` messages or `deadline`; returns (t, latency ms) samples,
    /// the error count and the first error.
    async fn phase(
        &self,
        run: usize,
        rooms: Arc<Vec<String>>,
        count: Option<usize>,
        deadline: Instant,
        label: &str,
        warmup: bool,
    ) -> Result<(Vec<(f64, f64)>, usize, Option<String>)> {
        let counted = count.is_some();
        // A hard cap so that a very fast server cannot make the tool run out of memory.
        let count = count.unwrap_or(2_000_000 / self.senders.len().max(1));
        let progress = Progress::start(
            label,
            counted.then_some((count * self.senders.len()) as u64),
            (!counted).then_some(self.opts.duration),
        );
        let started = Instant::now();
        let mut set = JoinSet::new();
        for (i, sender) in self.senders.iter().enumerate() {
            let (sender, rooms, counter) = (sender.clone(), rooms.clone(), progress.count.clone());
            set.spawn(async move {
                let mut samples = Vec::new();
                let (mut errors, mut first_error) = (0usize, None);
                for k in 0..count {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let room = &rooms[(i + k) % rooms.len()];
                    // seq: unique per (run, sender, k) within a run; warm-up uses high numbers.
                    let seq = if warmup { 1_000_000_000 } else { 0 } + i * 10_000_000 + k;
                    let t0 = Instant::now();
                    match sender.send(room, &message(run, seq)).await {
                        Ok(_) => {
                            samples
                                .push((t0.duration_since(started).as_secs_f64(), ms(t0.elapsed())));
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert(e.to_string());
                            // A failing server is not hammered in a tight loop.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                (samples, errors, first_error)
            });
        }
        let mut all = Vec::new();
        let (mut errors, mut first_error) = (0, None);
        while let Some(done) = set.join_next().await {
            let (samples, e, first) = done.map_err(|e| e.to_string())?;
            all.extend(samples);
            errors += e;
            if first_error.is_none() {
                first_error = first;
            }
        }
        progress.finish().await;
        all.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok((all, errors, first_error))
    }
}

fn check_duration(d: f64) -> Result<()> {
    if !(d > 0.0 && d <= 3600.0) {
        return Err("--duration must be between 0 and 3600 seconds".into());
    }
    Ok(())
}

// ---- deliver ---------------------------------------------------------------------------------

#[derive(Args, Debug, Clone, Serialize)]
pub struct DeliverOpts {
    /// Receiving users, each long-polling (the sender comes on top).
    #[arg(long, default_value_t = 10)]
    pub users: usize,
    /// Measured messages per run.
    #[arg(long, default_value_t = 100)]
    pub messages: usize,
    /// Messages sent before measuring, not counted.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// Messages per second (0: each send as soon as the previous one returned).
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// The long-poll timeout the receivers ask for, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub poll_timeout: u64,
    /// How long to wait for late deliveries after the last send, in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub grace: f64,
}

pub struct Deliver {
    opts: DeliverOpts,
    receive: Receive,
    sender: User,
    receivers: Vec<User>,
    room: String,
}

/// How the receivers of a delivery scenario sync.
#[derive(Clone, Copy, Debug)]
pub enum Receive {
    /// `/sync` with [`DELIVER_FILTER`].
    Sync,
    /// A simplified sliding sync connection with Element X's room list request (see
    /// [`room_list_request`]): one pos-less request, then long-polls with its `pos`.
    Sliding { timeline_limit: u32 },
}

impl Receive {
    fn name(self) -> &'static str {
        match self {
            Receive::Sync => "deliver",
            Receive::Sliding { .. } => "sliding-deliver",
        }
    }

    /// One request from `token` (none: the first); `timeout_ms` 0 answers at once.
    async fn request(self, user: &User, token: Option<&str>, timeout_ms: u64) -> Result<Reply> {
        match self {
            Receive::Sync => user.sync(token, timeout_ms, Some(DELIVER_FILTER)).await,
            Receive::Sliding { timeline_limit } => {
                let body = room_list_request("room-list", FIRST_RANGE_END, timeline_limit);
                user.sliding_sync(token, timeout_ms, &body).await
            }
        }
    }

    /// From a response: the next token, `room`'s timeline events and whether the server left
    /// events out (`limited`).
    fn read(self, body: &Value, room: &str) -> (Option<String>, Vec<Value>, bool) {
        let (token, room) = match self {
            Receive::Sync => (
                &body["next_batch"],
                &body["rooms"]["join"][room]["timeline"],
            ),
            Receive::Sliding { .. } => (&body["pos"], &body["rooms"][room]),
        };
        let events = match self {
            Receive::Sync => &room["events"],
            Receive::Sliding { .. } => &room["timeline"],
        };
        (
            token.as_str().map(str::to_owned),
            events.as_array().cloned().unwrap_or_default(),
            room["limited"].as_bool().unwrap_or(false),
        )
    }
}

/// Sync filter of the long-polling clients: the timeline limit is high so that a burst of
/// messages between two polls does not become a gap (a gap would count as lost deliveries).
const DELIVER_FILTER: &str = r#"{"room":{"timeline":{"limit":1000}}}"#;

/// Arrival instants per receiver: seq → first arrival; duplicates counted; the gaps the server
/// announced (a `limited` timeline: messages between the last one seen before and the first one
/// in the response were left out on purpose, because the timeline limit was exceeded).
#[derive(Default)]
struct Arrivals {
    first: HashMap<usize, Instant>,
    duplicates: usize,
    last_seen: Option<usize>,
    gaps: Vec<(Option<usize>, usize)>,
}

impl Arrivals {
    /// Records one response's messages of this run.
    fn response(&mut self, seqs: &[usize], limited: bool, now: Instant) -> u64 {
        let mut new = 0;
        for &seq in seqs {
            if self.first.insert(seq, now).is_some() {
                self.duplicates += 1;
            } else {
                new += 1;
            }
        }
        if let (Some(&lowest), Some(&highest)) = (seqs.iter().min(), seqs.iter().max()) {
            if limited {
                self.gaps.push((self.last_seen, lowest));
            }
            self.last_seen = Some(self.last_seen.map_or(highest, |s| s.max(highest)));
        }
        new
    }

    /// Whether `seq`, never delivered, fell into an announced gap.
    fn skipped(&self, seq: usize) -> bool {
        self.gaps
            .iter()
            .any(|&(after, before)| after.is_none_or(|a| seq > a) && seq < before)
    }
}

/// A receiver's first sync, for its since token (or `pos`). Set-up, not measured: bounded by
/// `--setup-concurrency` and retried, because a thousand receivers connecting at once can
/// overflow the server's listen backlog (the connection then times out on the tool's side).
async fn first_since(user: &User, setup: &Semaphore, receive: Receive) -> Result<String> {
    let _permit = setup.acquire().await?;
    let mut failures = 0;
    loop {
        match receive.request(user, None, 0).await {
            Ok(reply) => {
                return receive.read(&reply.body, "").0.ok_or_else(|| {
                    format!("{}: no next_batch or pos in the first sync", receive.name()).into()
                });
            }
            Err(e) if failures < 20 => {
                failures += 1;
                eprintln!(
                    "{}: initial sync failed ({}); retrying",
                    receive.name(),
                    error_chain(&*e)
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

impl Deliver {
    pub async fn prepare(ctx: &Ctx, opts: DeliverOpts, receive: Receive) -> Result<Self> {
        check_limits("--users", opts.users, 20_000)?;
        check_limits("--messages", opts.messages, 100_000)?;
        if !(0.0..=100_000.0).contains(&opts.rate) || !(0.0..=600.0).contains(&opts.grace) {
            return Err("--rate must be within 0..100000, --grace within 0..600".into());
        }
        let sender = ctx.users("dsender", 1).await?.remove(0);
        if let Receive::Sliding { .. } = receive {
            probe_sliding_sync(&sender).await?;
        }
        let room = sender.create_room("bench deliver").await?;
        let receivers = ctx.users("receiver", opts.users).await?;
        ctx.join_all(&receivers, std::slice::from_ref(&room))
            .await?;
        Ok(Self {
            opts,
            receive,
            sender,
            receivers,
            room,
        })
    }

    pub async fn run(&self, ctx: &Ctx, run: usize) -> Result<RunOutput> {
        let total = self.opts.warmup + self.opts.messages;
        let expected_all = (total * self.receivers.len()) as u64;
        let name = self.receive.name();
        let delivered = Arc::new(AtomicU64::new(0));
        // Receivers that have the last message: with a server that keeps events in order,
        // nothing older can come after it.
        let finished = Arc::new(AtomicUsize::new(0));
        let ready = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = watch::channel(false);

        // Every receiver: an initial sync (its since token), then long-polls until told to stop.
        let setup = Arc::new(Semaphore::new(ctx.setup_concurrency));
        let mut set = JoinSet::new();
        for user in &self.receivers {
            let (user, room, delivered, finished, ready, mut stopped, setup) = (
                user.clone(),
                self.room.clone(),
                delivered.clone(),
                finished.clone(),
                ready.clone(),
                stopped.clone(),
                setup.clone(),
            );
            let (poll_timeout, receive) = (self.opts.poll_timeout, self.receive);
            set.spawn(async move {
                let mut arrivals = Arrivals::default();
                let mut since = first_since(&user, &setup, receive).await?;
                ready.fetch_add(1, Ordering::Relaxed);
                let (mut failures, mut has_last) = (0, false);
                loop {
                    let reply = tokio::select! {
                        _ = stopped.changed() => return Ok::<_, crate::client::Error>(arrivals),
                        r = receive.request(&user, Some(&since), poll_timeout) => r,
                    };
                    let now = Instant::now();
                    let reply = match reply {
                        Ok(reply) => reply,
                        Err(e) if failures < 20 => {
                            failures += 1;
                            eprintln!(
                                "{}: sync failed ({}); retrying",
                                receive.name(),
                                error_chain(&*e)
                            );
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    let (next, events, limited) = receive.read(&reply.body, &room);
                    if let Some(next) = next {
                        since = next;
                    }
                    let seqs: Vec<usize> = events
                        .iter()
                        .filter_map(|event| tag(event).filter(|(r, _)| *r == run))
                        .map(|(_, seq)| seq)
                        .collect();
                    let new = arrivals.response(&seqs, limited, now);
                    delivered.fetch_add(new, Ordering::Relaxed);
                    if !has_last && seqs.contains(&(total - 1)) {
                        has_last = true;
                        finished.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        // Sending starts once every receiver has its since token and has had time to park
        // its first long-poll.
        let wait_ready = Instant::now() + Duration::from_secs(600);
        while ready.load(Ordering::Relaxed) < self.receivers.len() {
            // A receiver that ended already failed (they run until told to stop).
            if let Some(ended) = set.try_join_next() {
                let why = match ended {
                    Ok(Err(e)) => error_chain(&*e),
                    Ok(Ok(_)) => "ended early".into(),
                    Err(e) => e.to_string(),
                };
                return Err(format!("{name}: a receiver's sync failed: {why}").into());
            }
            if Instant::now() > wait_ready {
                return Err(
                    format!("{name}: the receivers' initial syncs took over 10 minutes").into(),
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(500 + self.receivers.len() as u64)).await;

        let monitor = ctx.monitor();
        let progress = Progress::start(&format!("{name}: sent"), Some(total as u64), None);
        let started = Instant::now();
        let mut sent = Vec::with_capacity(total);
        for seq in 0..total {
            if self.opts.rate > 0.0 {
                let at = started + Duration::from_secs_f64(seq as f64 / self.opts.rate);
                tokio::time::sleep_until(at.into()).await;
            }
            let t0 = Instant::now();
            self.sender.send(&self.room, &message(run, seq)).await?;
            sent.push((t0, Instant::now()));
            progress.inc();
        }
        progress.finish().await;
        let grace = Instant::now() + Duration::from_secs_f64(self.opts.grace);
        while delivered.load(Ordering::Relaxed) < expected_all
            && finished.load(Ordering::Relaxed) < self.receivers.len()
            && Instant::now() < grace
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = stop.send(true);
        let mut per_user = Vec::new();
        while let Some(done) = set.join_next().await {
            per_user.push(done.map_err(|e| e.to_string())??);
        }
        let mut figures = Vec::new();
        finish_monitor(monitor, &mut figures).await;

        // Measured messages only: seq ≥ warmup.
        let (mut from_200, mut from_request, mut series) = (Vec::new(), Vec::new(), Vec::new());
        let (mut duplicates, mut skipped) = (0, 0);
        for arrivals in &per_user {
            duplicates += arrivals.duplicates;
            for (seq, (t0, t200)) in sent.iter().enumerate().skip(self.opts.warmup) {
                let Some(at) = arrivals.first.get(&seq) else {
                    skipped += usize::from(arrivals.skipped(seq));
                    continue;
                };
                // Signed: a sync may return before the sender has read its own 200.
                let d = if at >= t200 {
                    ms(at.duration_since(*t200))
                } else {
                    -ms(t200.duration_since(*at))
                };
                from_200.push(d);
                from_request.push(ms(at.duration_since(*t0)));
                series.push((t0.duration_since(started).as_secs_f64(), d));
            }
        }
        let send_latency: Vec<f64> = sent
            .iter()
            .skip(self.opts.warmup)
            .map(|(a, b)| ms(b.duration_since(*a)))
            .collect();
        let expected = self.opts.messages * self.receivers.len();
        let mut head = vec![
            fig("receivers", self.receivers.len() as f64),
            fig("messages", self.opts.messages as f64),
            fig("expected_deliveries", expected as f64),
            fig("delivered", from_200.len() as f64),
            fig("lost", (expected - from_200.len() - skipped) as f64),
            // Left out on purpose: the timeline limit was exceeded and the response said so.
            fig("skipped", skipped as f64),
            fig("duplicates", duplicates as f64),
        ];
        latency_figures("deliver", &from_200, &mut head);
        head.push(fig("deliver_min_ms", percentile(&from_200, 0.0)));
        head.push(fig(
            "deliver_from_request_p50_ms",
            percentile(&from_request, 50.0),
        ));
        head.push(fig(
            "deliver_from_request_p99_ms",
            percentile(&from_request, 99.0),
        ));
        head.push(fig("send_p50_ms", percentile(&send_latency, 50.0)));
        head.extend(figures);
        series.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(RunOutput {
            figures: head,
            series,
        })
    }
}

// ---- initial-sync ----------------------------------------------------------------------------

#[derive(Args, Debug, Clone, Serialize)]
pub struct InitialSyncOpts {
    /// Rooms the user is in.
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Messages in each room.
    #[arg(long, default_value_t = 20)]
    pub history: usize,
    /// Measured initial syncs per run (each from a new device, after one warm-up sync).
    #[arg(long, default_value_t = 5)]
    pub samples: usize,
}

/// `user` creates `rooms` rooms and sends `history` messages into each (round robin, so that
/// every room has some recent activity).
pub(crate) async fn fill_rooms(ctx: &Ctx, user: &User, rooms: usize, history: usize) -> Result<()> {
    let creator = user.clone();
    let rooms = for_each_bounded("create rooms", rooms, ctx.setup_concurrency, move |i| {
        let creator = creator.clone();
        async move { creator.create_room(&format!("bench sync {i}")).await }
    })
    .await?;
    let rooms = Arc::new(rooms);
    let writer = user.clone();
    for_each_bounded(
        "fill history",
        rooms.len() * history,
        ctx.setup_concurrency,
        move |i| {
            let (writer, rooms) = (writer.clone(), rooms.clone());
            async move {
                writer
                    .send(&rooms[i % rooms.len()], &message(0, i))
                    .await
                    .map(drop)
            }
        },
    )
    .await?;
    Ok(())
}

pub struct InitialSync {
    opts: InitialSyncOpts,
    user: User,
    localpart_password: String,
}

impl InitialSync {
    pub async fn prepare(ctx: &Ctx, opts: InitialSyncOpts) -> Result<Self> {
        check_limits("--rooms", opts.rooms, 10_000)?;
        check_limits("--samples", opts.samples, 1_000)?;
        if opts.history > 10_000 {
            return Err("--history must be at most 10000".into());
        }
        let user = ctx.users("syncer", 1).await?.remove(0);
        fill_rooms(ctx, &user, opts.rooms, opts.history).await?;
        Ok(Self {
            opts,
            user,
            localpart_password: ctx.password.clone(),
        })
    }

    pub async fn run(&self, ctx: &Ctx, _run: usize) -> Result<RunOutput> {
        // A new device per sync: servers may cache a device's sync response (Synapse does for
        // identical requests), and a new client's first sync is what this scenario is about.
        let server = &self.user.server;
        let warm = server
            .login(&self.user.user_id, &self.localpart_password)
            .await?;
        warm.sync(None, 0, None).await?;

        let monitor = ctx.monitor();
        let started = Instant::now();
        let (mut times, mut bytes, mut series, mut rooms_seen) = (vec![], vec![], vec![], 0);
        let progress = Progress::start("initial syncs", Some(self.opts.samples as u64), None);
        for _ in 0..self.opts.samples {
            let device = server
                .login(&self.user.user_id, &self.localpart_password)
                .await?;
            let t0 = Instant::now();
            let reply = device.sync(None, 0, None).await?;
            let took = ms(t0.elapsed());
            times.push(took);
            bytes.push(reply.bytes as f64);
            series.push((t0.duration_since(started).as_secs_f64(), took));
            rooms_seen = reply.body["rooms"]["join"]
                .as_object()
                .map_or(0, |rooms| rooms.len());
            progress.inc();
        }
        progress.finish().await;
        let mut figures = vec![
            fig("rooms", self.opts.rooms as f64),
            fig("rooms_seen", rooms_seen as f64),
            fig("history_per_room", self.opts.history as f64),
            fig("samples", times.len() as f64),
            fig("sync_p50_ms", percentile(&times, 50.0)),
            fig("sync_min_ms", percentile(&times, 0.0)),
            fig("sync_max_ms", percentile(&times, 100.0)),
            fig("sync_bytes", percentile(&bytes, 50.0)),
        ];
        finish_monitor(monitor, &mut figures).await;
        Ok(RunOutput { figures, series })
    }
}

// ---- idle ------------------------------------------------------------------------------------

#[derive(Args, Debug, Clone, Serialize)]
pub struct IdleOpts {
    /// Idle clients, each long-polling /sync with nothing to receive.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// The long-poll timeout given to /sync, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub poll_timeout: u64,
}

pub struct Idle {
    opts: IdleOpts,
    clients: Vec<User>,
}

impl Idle {
    pub async fn prepare(ctx: &Ctx, opts: IdleOpts) -> Result<Self> {
        check_limits("--clients", opts.clients, 20_000)?;
        check_duration(opts.duration)?;
        let clients = ctx.users("idler", opts.clients).await?;
        Ok(Self { opts, clients })
    }

    pub async fn run(&self, ctx: &Ctx, _run: usize) -> Result<RunOutput> {
        let baseline = ctx.pid.and_then(crate::measure::read_proc);
        let connected = Arc::new(AtomicUsize::new(0));
        let responses = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = watch::channel(false);
        let mut set = JoinSet::new();
        for user in &self.clients {
            let (user, connected, responses, errors, mut stopped) = (
                user.clone(),
                connected.clone(),
                responses.clone(),
                errors.clone(),
                stopped.clone(),
            );
            let poll_timeout = self.opts.poll_timeout;
            set.spawn(async move {
                let mut since = None::<String>;
                let mut first = true;
                loop {
                    // The first sync is an initial one (timeout 0); then long-polls.
                    let timeout = if since.is_some() { poll_timeout } else { 0 };
                    let reply = tokio::select! {
                        _ = stopped.changed() => return,
                        r = user.sync(since.as_deref(), timeout, None) => r,
                    };
                    match reply {
                        Ok(reply) => {
                            if since.is_some() {
                                responses.fetch_add(1, Ordering::Relaxed);
                            }
                            since = reply.body["next_batch"].as_str().map(str::to_owned);
                            if first {
                                first = false;
                                connected.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            });
        }
        let progress = Progress::start("idle: connected", Some(self.clients.len() as u64), None);
        let wait = Instant::now() + Duration::from_secs(300);
        while connected.load(Ordering::Relaxed) < self.clients.len() && Instant::now() < wait {
            progress
                .count
                .store(connected.load(Ordering::Relaxed) as u64, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        progress
            .count
            .store(connected.load(Ordering::Relaxed) as u64, Ordering::Relaxed);
        progress.finish().await;
        // Warm-up: let every client park its long-poll before measuring.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let responses_before = responses.load(Ordering::Relaxed);

        let monitor = ctx.monitor();
        let started = Instant::now();
        let progress = Progress::start("idle", None, Some(self.opts.duration));
        let mut series = Vec::new();
        while started.elapsed().as_secs_f64() < self.opts.duration {
            tokio::time::sleep(Duration::from_millis(250)).await;
            progress.count.store(
                responses.load(Ordering::Relaxed) - responses_before,
                Ordering::Relaxed,
            );
            if let Some(sample) = ctx.pid.and_then(crate::measure::read_proc) {
                series.push((
                    started.elapsed().as_secs_f64(),
                    sample.rss_kib as f64 / 1024.0,
                ));
            }
        }
        progress.finish().await;
        let mut figures = vec![
            fig("clients", self.clients.len() as f64),
            fig("connected", connected.load(Ordering::Relaxed) as f64),
            fig("duration_s", started.elapsed().as_secs_f64()),
            fig(
                "sync_responses",
                (responses.load(Ordering::Relaxed) - responses_before) as f64,
            ),
            fig("errors", errors.load(Ordering::Relaxed) as f64),
        ];
        if let Some(before) = baseline {
            figures.push(fig(
                "server_rss_before_clients_mib",
                before.rss_kib as f64 / 1024.0,
            ));
            if let Some(anon) = before.rss_anon_kib {
                figures.push(fig(
                    "server_rss_anon_before_clients_mib",
                    anon as f64 / 1024.0,
                ));
            }
        }
        finish_monitor(monitor, &mut figures).await;
        let _ = stop.send(true);
        while set.join_next().await.is_some() {}
        Ok(RunOutput { figures, series })
    }
}

// ---- history ---------------------------------------------------------------------------------

#[derive(Args, Debug, Clone, Serialize)]
pub struct HistoryOpts {
    /// Messages in the room.
    #[arg(long, default_value_t = 1000)]
    pub events: usize,
    /// Events per /messages page.
    #[arg(long, default_value_t = 100)]
    pub page: u32,
}

pub struct History {
    opts: HistoryOpts,
    user: User,
    room: String,
}

impl History {
    pub async fn prepare(ctx: &Ctx, opts: HistoryOpts) -> Result<Self> {
        check_limits("--events", opts.events, 1_000_000)?;
        check_limits("--page", opts.page as usize, 1_000)?;
        let user = ctx.users("historian", 1).await?.remove(0);
        let room = user.create_room("bench history").await?;
        let (writer, target) = (user.clone(), room.clone());
        for_each_bounded(
            "fill history",
            opts.events,
            ctx.setup_concurrency,
            move |i| {
                let (writer, target) = (writer.clone(), target.clone());
                async move { writer.send(&target, &message(0, i)).await.map(drop) }
            },
        )
        .await?;
        Ok(Self { opts, user, room })
    }

    pub async fn run(&self, ctx: &Ctx, _run: usize) -> Result<RunOutput> {
        // Warm-up: one full pass, not counted.
        self.pass("history warm-up").await?;
        let monitor = ctx.monitor();
        let (pages, messages, bytes, elapsed) = self.pass("history").await?;
        let latencies: Vec<f64> = pages.iter().map(|p| p.1).collect();
        let mut figures = vec![
            fig("events", self.opts.events as f64),
            fig("messages_seen", messages as f64),
            fig("pages", pages.len() as f64),
            fig("total_ms", elapsed),
            fig("events_per_s", messages as f64 / (elapsed / 1000.0)),
            fig("bytes", bytes as f64),
            fig("page_p50_ms", percentile(&latencies, 50.0)),
            fig("page_p99_ms", percentile(&latencies, 99.0)),
        ];
        finish_monitor(monitor, &mut figures).await;
        Ok(RunOutput {
            figures,
            series: pages,
        })
    }

    /// Pages backwards from the newest event to the room's creation. Returns (t, page ms)
    /// per page, the m.room.message events seen, the bytes read and the total ms.
    async fn pass(&self, label: &str) -> Result<(Vec<(f64, f64)>, usize, usize, f64)> {
        let progress = Progress::start(label, Some(self.opts.events as u64), None);
        let started = Instant::now();
        let (mut pages, mut messages, mut bytes) = (Vec::new(), 0, 0);
        let mut from: Option<String> = None;
        // Bounded: twice the pages the room needs, plus its state events' pages.
        let max_pages = 2 * self.opts.events / self.opts.page as usize + 20;
        for _ in 0..max_pages {
            let t0 = Instant::now();
            let reply = self
                .user
                .messages_back(&self.room, from.as_deref(), self.opts.page)
                .await?;
            pages.push((t0.duration_since(started).as_secs_f64(), ms(t0.elapsed())));
            bytes += reply.bytes;
            let chunk = reply.body["chunk"].as_array().cloned().unwrap_or_default();
            let n = chunk
                .iter()
                .filter(|e| e["type"] == "m.room.message")
                .count();
            messages += n;
            progress.count.fetch_add(n as u64, Ordering::Relaxed);
            match reply.body["end"].as_str() {
                Some(end) if !chunk.is_empty() => from = Some(end.to_owned()),
                _ => break,
            }
        }
        let elapsed = ms(started.elapsed());
        progress.finish().await;
        Ok((pages, messages, bytes, elapsed))
    }
}
