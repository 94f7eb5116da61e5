//! The search and threads scenarios: `/search` over a room's history, and `/threads` pages
//! of thread roots with their bundled replies and reactions.

use std::time::Instant;

use clap::Args;
use serde::Serialize;
use serde_json::json;

use crate::{
    client::{Result, User},
    measure::{for_each_bounded, ms, percentile},
    scenarios::{Ctx, RunOutput, check_limits, fig, finish_monitor, message},
};

#[derive(Args, Debug, Clone, Serialize)]
pub struct SearchOpts {
    /// Messages in the room.
    #[arg(long, default_value_t = 100_000)]
    pub events: usize,
    /// Words in the vocabulary the messages draw two words each from: a query for one of
    /// them matches about 2 × events / vocabulary messages.
    #[arg(long, default_value_t = 2000)]
    pub vocabulary: usize,
    /// Queries timed per run (each a different vocabulary word).
    #[arg(long, default_value_t = 200)]
    pub queries: usize,
}

pub struct Search {
    opts: SearchOpts,
    user: User,
}

/// The `i`th word of the vocabulary: letters only, so that no word is a prefix of another
/// of the same length (`wab…`).
fn vocabulary_word(i: usize) -> String {
    let mut word = String::from("w");
    let mut n = i;
    for _ in 0..4 {
        word.push((b'a' + (n % 26) as u8) as char);
        n /= 26;
    }
    word
}

impl Search {
    pub async fn prepare(ctx: &Ctx, opts: SearchOpts) -> Result<Self> {
        check_limits("--events", opts.events, 1_000_000)?;
        check_limits("--vocabulary", opts.vocabulary, 100_000)?;
        check_limits("--queries", opts.queries, 10_000)?;
        let user = ctx.users("searcher", 1).await?.remove(0);
        let room = user.create_room("bench search").await?;
        let (writer, target, vocabulary) = (user.clone(), room.clone(), opts.vocabulary);
        for_each_bounded(
            "fill the room",
            opts.events,
            ctx.setup_concurrency,
            move |i| {
                let (writer, target) = (writer.clone(), target.clone());
                let mut content = message(0, i);
                // Two words of the vocabulary, spread evenly.
                let a = vocabulary_word(i % vocabulary);
                let b = vocabulary_word((i / vocabulary + i * 7) % vocabulary);
                content["body"] = format!("culvert-bench message {i} about {a} and {b}").into();
                async move { writer.send(&target, &content).await.map(drop) }
            },
        )
        .await?;
        Ok(Self { opts, user })
    }

    pub async fn run(&self, ctx: &Ctx, run: usize) -> Result<RunOutput> {
        // Warm-up, not counted: the common word once.
        self.user.search("message").await?;
        let monitor = ctx.monitor();
        let started = Instant::now();
        let mut series = Vec::with_capacity(self.opts.queries);
        let mut found = 0;
        for q in 0..self.opts.queries {
            let word = vocabulary_word((run * self.opts.queries + q * 13) % self.opts.vocabulary);
            let t0 = Instant::now();
            let reply = self.user.search(&word).await?;
            series.push((t0.duration_since(started).as_secs_f64(), ms(t0.elapsed())));
            let count = reply.body["search_categories"]["room_events"]["count"]
                .as_u64()
                .unwrap_or(0);
            if count == 0 {
                return Err(format!("search for {word} found nothing").into());
            }
            found += count;
        }
        // A word every message has: the worst case of one word.
        let mut common = Vec::new();
        for _ in 0..5 {
            let t0 = Instant::now();
            self.user.search("message").await?;
            common.push(ms(t0.elapsed()));
        }
        let latencies: Vec<f64> = series.iter().map(|s| s.1).collect();
        let mut figures = vec![
            fig("events", self.opts.events as f64),
            fig("queries", self.opts.queries as f64),
            fig("matches_per_query", found as f64 / self.opts.queries as f64),
            fig("query_p50_ms", percentile(&latencies, 50.0)),
            fig("query_p99_ms", percentile(&latencies, 99.0)),
            fig("every_message_p50_ms", percentile(&common, 50.0)),
        ];
        finish_monitor(monitor, &mut figures).await;
        Ok(RunOutput { figures, series })
    }
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct ThreadsOpts {
    /// Threads in the room (a root and `--replies` replies each).
    #[arg(long, default_value_t = 1000)]
    pub threads: usize,
    /// Replies in each thread.
    #[arg(long, default_value_t = 1)]
    pub replies: usize,
    /// Reactions on each root (distinct keys), which a root's bundled aggregations must not
    /// cost reading.
    #[arg(long, default_value_t = 0)]
    pub reactions: usize,
    /// Thread roots per `/threads` page.
    #[arg(long, default_value_t = 50)]
    pub page: u32,
    /// First pages timed per run.
    #[arg(long, default_value_t = 50)]
    pub samples: usize,
}

pub struct Threads {
    opts: ThreadsOpts,
    user: User,
    room: String,
}

impl Threads {
    pub async fn prepare(ctx: &Ctx, opts: ThreadsOpts) -> Result<Self> {
        check_limits("--threads", opts.threads, 100_000)?;
        check_limits("--replies", opts.replies.max(1), 10_000)?;
        check_limits("--reactions", opts.reactions.max(1), 10_000)?;
        check_limits("--page", opts.page as usize, 1_000)?;
        check_limits("--samples", opts.samples, 10_000)?;
        let user = ctx.users("threader", 1).await?.remove(0);
        let room = user.create_room("bench threads").await?;
        let (writer, target) = (user.clone(), room.clone());
        let (replies, reactions) = (opts.replies, opts.reactions);
        for_each_bounded(
            "start threads",
            opts.threads,
            ctx.setup_concurrency,
            move |i| {
                let (writer, target) = (writer.clone(), target.clone());
                async move {
                    let root = writer.send(&target, &message(0, i)).await?;
                    for r in 0..replies {
                        let mut reply = message(1 + r, i);
                        reply["m.relates_to"] = json!({
                            "rel_type": "m.thread", "event_id": root, "is_falling_back": true,
                            "m.in_reply_to": { "event_id": root },
                        });
                        writer.send(&target, &reply).await?;
                    }
                    for k in 0..reactions {
                        let reaction = json!({ "m.relates_to": {
                            "rel_type": "m.annotation", "event_id": root, "key": format!("r{k}"),
                        } });
                        writer.send_event(&target, "m.reaction", &reaction).await?;
                    }
                    Ok(())
                }
            },
        )
        .await?;
        Ok(Self { opts, user, room })
    }

    pub async fn run(&self, ctx: &Ctx, _run: usize) -> Result<RunOutput> {
        self.user.threads(&self.room, None, self.opts.page).await?;
        let monitor = ctx.monitor();
        let started = Instant::now();
        let mut series = Vec::with_capacity(self.opts.samples);
        for _ in 0..self.opts.samples {
            let t0 = Instant::now();
            let reply = self.user.threads(&self.room, None, self.opts.page).await?;
            series.push((t0.duration_since(started).as_secs_f64(), ms(t0.elapsed())));
            let roots = reply.body["chunk"].as_array().map_or(0, Vec::len);
            if roots != (self.opts.page as usize).min(self.opts.threads) {
                return Err(format!("/threads gave {roots} roots").into());
            }
        }
        // The whole list, page by page.
        let t0 = Instant::now();
        let (mut seen, mut pages, mut from) = (0, 0, None::<String>);
        loop {
            let reply = self
                .user
                .threads(&self.room, from.as_deref(), self.opts.page)
                .await?;
            seen += reply.body["chunk"].as_array().map_or(0, Vec::len);
            pages += 1;
            match reply.body["next_batch"].as_str() {
                Some(next) if pages <= self.opts.threads => from = Some(next.to_owned()),
                _ => break,
            }
        }
        let whole = ms(t0.elapsed());
        if seen != self.opts.threads {
            return Err(format!("/threads listed {seen} of {} threads", self.opts.threads).into());
        }
        let latencies: Vec<f64> = series.iter().map(|s| s.1).collect();
        let mut figures = vec![
            fig("threads", self.opts.threads as f64),
            fig("first_page_p50_ms", percentile(&latencies, 50.0)),
            fig("first_page_p99_ms", percentile(&latencies, 99.0)),
            fig("whole_list_ms", whole),
            fig("pages", pages as f64),
        ];
        finish_monitor(monitor, &mut figures).await;
        Ok(RunOutput { figures, series })
    }
}
