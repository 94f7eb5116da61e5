//! The sliding-sync scenarios (issue #16): a first response and the whole room list of a user
//! in many rooms, as Element X asks for them, and delivery through long-polling sliding-sync
//! connections (the receive side of `deliver`).

use std::time::Instant;

use clap::Args;
use serde::Serialize;
use serde_json::{Value, json};

use crate::{
    client::{Result, User},
    measure::{Progress, median, ms, percentile},
    scenarios::{
        Ctx, Deliver, DeliverOpts, Receive, RunOutput, check_limits, fig, fill_rooms,
        finish_monitor, latency_figures,
    },
};

/// The room list's `required_state` in Element X's sliding sync requests (matrix-sdk-ui 0.18,
/// `RoomListService`).
const ROOM_LIST_REQUIRED_STATE: [(&str, &str); 17] = [
    ("m.room.name", ""),
    ("m.room.encryption", ""),
    ("m.room.member", "$LAZY"),
    ("m.room.member", "$ME"),
    ("m.room.topic", ""),
    ("m.room.avatar", ""),
    ("m.room.canonical_alias", ""),
    ("m.room.power_levels", ""),
    ("org.matrix.msc3401.call.member", "*"),
    ("m.room.join_rules", ""),
    ("m.room.tombstone", ""),
    ("m.room.create", ""),
    ("m.room.history_visibility", ""),
    ("io.element.functional_members", ""),
    ("m.space.parent", "*"),
    ("m.space.child", "*"),
    ("org.matrix.msc3672.beacon_info", "*"),
];

/// The end of the room list's first range, and the batch the list then grows by, as
/// matrix-sdk-ui 0.18 has them (`ALL_ROOMS_DEFAULT_SELECTIVE_RANGE` 0..=19,
/// `ALL_ROOMS_DEFAULT_GROWING_BATCH_SIZE` 100).
pub(crate) const FIRST_RANGE_END: u64 = 19;
const GROWING_BATCH: u64 = 100;

/// Element X's room-list request (matrix-sdk-ui 0.18's `RoomListService`): one list `all_rooms`
/// over `0..=end` without filters, and the account data, receipts and typing extensions.
pub(crate) fn room_list_request(conn_id: &str, end: u64, timeline_limit: u32) -> Value {
    let required_state: Vec<[&str; 2]> = ROOM_LIST_REQUIRED_STATE
        .iter()
        .map(|&(kind, key)| [kind, key])
        .collect();
    json!({
        "conn_id": conn_id,
        "lists": {
            "all_rooms": {
                "ranges": [[0, end]],
                "timeline_limit": timeline_limit,
                "filters": {},
                "required_state": required_state,
            },
        },
        "extensions": {
            "account_data": { "enabled": true },
            "receipts": { "enabled": true, "rooms": ["*"] },
            "typing": { "enabled": true },
        },
    })
}

/// `lists.all_rooms.count` of a sliding sync response: without it no client can page.
fn list_count(body: &Value) -> Result<u64> {
    body["lists"]["all_rooms"]["count"].as_u64().ok_or_else(|| {
        format!(
            "sliding sync: no lists.all_rooms.count in {}",
            crate::client::short(body)
        )
        .into()
    })
}

fn rooms_in(body: &Value) -> impl Iterator<Item = &String> {
    body["rooms"].as_object().into_iter().flat_map(|r| r.keys())
}

/// One request with Element X's room list, to fail early and clearly on a server without
/// simplified sliding sync (before setting up hundreds of rooms).
pub(crate) async fn probe_sliding_sync(user: &User) -> Result<()> {
    let body = room_list_request("culvert-bench-probe", FIRST_RANGE_END, 1);
    let reply = user.sliding_sync(None, 0, &body).await.map_err(|e| {
        format!("the server does not answer simplified sliding sync (MSC4186): {e}")
    })?;
    list_count(&reply.body).map(drop)
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct SlidingInitialOpts {
    /// Rooms the user is in.
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Messages in each room.
    #[arg(long, default_value_t = 5)]
    pub history: usize,
    /// Measured first requests per run (each on a new connection, after one warm-up).
    #[arg(long, default_value_t = 20)]
    pub samples: usize,
    /// Measured whole-list loads per run (each on a new connection, after one warm-up).
    #[arg(long, default_value_t = 3)]
    pub loads: usize,
    /// Seconds to wait after setting up before measuring: a phone opens its room list on a
    /// server that has been quiet for a while, not one still busy with the set-up's thousands
    /// of writes (culvert writes its memtables out after a few quiet seconds).
    #[arg(long, default_value_t = 0.0)]
    pub settle: f64,
}

pub struct SlidingInitial {
    opts: SlidingInitialOpts,
    user: User,
}

/// One whole room list, loaded the way matrix-sdk-ui grows it.
struct ListLoad {
    ms: f64,
    requests: usize,
    /// Distinct rooms received over all responses: the user's rooms, if the server is right.
    rooms: usize,
    /// Rooms in all responses, a room sent twice counted twice.
    room_entries: usize,
    bytes: usize,
    count: u64,
}

impl SlidingInitial {
    pub async fn prepare(ctx: &Ctx, opts: SlidingInitialOpts) -> Result<Self> {
        check_limits("--rooms", opts.rooms, 10_000)?;
        check_limits("--samples", opts.samples, 1_000)?;
        check_limits("--loads", opts.loads, 100)?;
        if opts.history > 10_000 {
            return Err("--history must be at most 10000".into());
        }
        if !(0.0..=600.0).contains(&opts.settle) {
            return Err("--settle must be between 0 and 600 seconds".into());
        }
        let user = ctx.users("slider", 1).await?.remove(0);
        probe_sliding_sync(&user).await?;
        fill_rooms(ctx, &user, opts.rooms, opts.history).await?;
        if opts.settle > 0.0 {
            tokio::time::sleep(std::time::Duration::from_secs_f64(opts.settle)).await;
        }
        Ok(Self { opts, user })
    }

    /// Element X's first request on a new connection (range 0–19, timeline limit 1, no `pos`,
    /// `timeout=0`): milliseconds, bytes, rooms in it and the list's count.
    async fn first(&self, conn_id: &str) -> Result<(f64, usize, usize, u64)> {
        let body = room_list_request(conn_id, FIRST_RANGE_END, 1);
        let t0 = Instant::now();
        let reply = self.user.sliding_sync(None, 0, &body).await?;
        let took = ms(t0.elapsed());
        let count = list_count(&reply.body)?;
        Ok((took, reply.bytes, rooms_in(&reply.body).count(), count))
    }

    /// The whole list on a new connection, as matrix-sdk-ui 0.18 loads it: 0–19, then (growing
    /// mode, which starts counting afresh) 0–99, 0–199, … until the range covers the count,
    /// each request with the previous `pos` and `timeout=0` (the SDK long-polls only once the
    /// list is fully loaded).
    async fn load_list(&self, conn_id: &str) -> Result<ListLoad> {
        let started = Instant::now();
        let (mut pos, mut end, mut fetched) = (None::<String>, FIRST_RANGE_END, 0);
        let mut load = ListLoad {
            ms: 0.0,
            requests: 0,
            rooms: 0,
            room_entries: 0,
            bytes: 0,
            count: 0,
        };
        let mut seen = std::collections::HashSet::new();
        loop {
            let body = room_list_request(conn_id, end, 1);
            let reply = self.user.sliding_sync(pos.as_deref(), 0, &body).await?;
            load.requests += 1;
            load.bytes += reply.bytes;
            load.count = list_count(&reply.body)?;
            for room in rooms_in(&reply.body) {
                load.room_entries += 1;
                seen.insert(room.clone());
            }
            pos = Some(
                reply.body["pos"]
                    .as_str()
                    .ok_or("sliding sync: no pos")?
                    .to_owned(),
            );
            if end + 1 >= load.count {
                break;
            }
            if load.requests > 1 {
                fetched = end + 1;
            }
            end = (fetched + GROWING_BATCH).min(load.count) - 1;
            if load.requests > 10_000 {
                return Err("sliding sync: the list did not end after 10,000 requests".into());
            }
        }
        load.ms = ms(started.elapsed());
        load.rooms = seen.len();
        Ok(load)
    }

    pub async fn run(&self, ctx: &Ctx, run: usize) -> Result<RunOutput> {
        // Warm-up: one first request and one whole list, not counted.
        self.first(&format!("w{run}")).await?;
        self.load_list(&format!("wl{run}")).await?;

        let monitor = ctx.monitor();
        let started = Instant::now();
        let (mut times, mut bytes, mut series) = (vec![], vec![], vec![]);
        let (mut first_rooms, mut count) = (usize::MAX, 0);
        let progress = Progress::start("first requests", Some(self.opts.samples as u64), None);
        for i in 0..self.opts.samples {
            let t = started.elapsed().as_secs_f64();
            let (took, size, rooms, n) = self.first(&format!("f{run}.{i}")).await?;
            times.push(took);
            bytes.push(size as f64);
            series.push((t, took));
            first_rooms = first_rooms.min(rooms);
            count = n;
            progress.inc();
        }
        progress.finish().await;
        let progress = Progress::start("whole-list loads", Some(self.opts.loads as u64), None);
        let mut loads = Vec::with_capacity(self.opts.loads);
        for i in 0..self.opts.loads {
            loads.push(self.load_list(&format!("l{run}.{i}")).await?);
            progress.inc();
        }
        progress.finish().await;
        let list = |f: fn(&ListLoad) -> f64| -> Vec<f64> { loads.iter().map(f).collect() };
        let received = loads.iter().map(|l| l.rooms).min().unwrap_or(0);
        if received != self.opts.rooms || count != self.opts.rooms as u64 {
            eprintln!(
                "sliding-initial: the user is in {} rooms; the server counted {count} and sent \
                 {received} over a whole list",
                self.opts.rooms
            );
        }
        let total = list(|l| l.ms);
        let mut figures = vec![
            fig("rooms", self.opts.rooms as f64),
            fig("history_per_room", self.opts.history as f64),
            fig("samples", times.len() as f64),
        ];
        latency_figures("first", &times, &mut figures);
        figures.extend([
            fig("first_bytes", percentile(&bytes, 50.0)),
            fig("first_rooms", first_rooms as f64),
            fig("list_count", count as f64),
            fig("list_loads", loads.len() as f64),
            fig("list_total_ms", median(&total)),
            fig("list_total_max_ms", percentile(&total, 100.0)),
            fig("list_requests", median(&list(|l| l.requests as f64))),
            fig("list_rooms_received", received as f64),
            fig(
                "list_room_entries",
                median(&list(|l| l.room_entries as f64)),
            ),
            fig("list_bytes", median(&list(|l| l.bytes as f64))),
        ]);
        finish_monitor(monitor, &mut figures).await;
        Ok(RunOutput { figures, series })
    }
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct SlidingDeliverOpts {
    #[command(flatten)]
    #[serde(flatten)]
    pub deliver: DeliverOpts,
    /// The list's timeline limit (Element X's room list: 1). When more messages than this come
    /// between two responses, the server leaves the older ones out and says so (`limited`):
    /// they count as skipped, not lost.
    #[arg(long, default_value_t = 1)]
    pub timeline_limit: u32,
}

impl SlidingDeliverOpts {
    pub async fn prepare(self, ctx: &Ctx) -> Result<Deliver> {
        check_limits("--timeline-limit", self.timeline_limit as usize, 1_000)?;
        Deliver::prepare(
            ctx,
            self.deliver,
            Receive::Sliding {
                timeline_limit: self.timeline_limit,
            },
        )
        .await
    }
}
