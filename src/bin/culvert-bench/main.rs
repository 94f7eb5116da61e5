//! culvert-bench: a load generator for Matrix homeservers.
//!
//! It speaks only the client-server API over HTTP, so it drives culvert, Synapse or any other
//! homeserver with the same command line but the URL. It creates its own accounts (open
//! registration, a registration token, or Synapse's shared-secret admin registration), rooms and
//! memberships, then runs one scenario `--runs` times and reports medians: a summary on stdout,
//! `--json` for machines and `--svg` for people. With `--pid` it samples the server's RSS and
//! CPU time from /proc during the measured phases.
//!
//! Timings belong here and in BENCHMARKS.md, never as assertions in the test suite.

mod client;
mod measure;
mod push;
mod report;
mod scenarios;
mod search_threads;
mod sliding;

use std::{path::PathBuf, process::ExitCode, sync::LazyLock};

use clap::{Parser, Subcommand};

use crate::{
    client::{AccountAuth, Result, Server},
    push::{Push, PushOpts},
    report::Report,
    scenarios::{
        Ctx, Deliver, DeliverOpts, History, HistoryOpts, Idle, IdleOpts, InitialSync,
        InitialSyncOpts, Receive, RunOutput, Send, SendOpts,
    },
    search_threads::{Search, SearchOpts, Threads, ThreadsOpts},
    sliding::{SlidingDeliverOpts, SlidingInitial, SlidingInitialOpts},
};

/// This invocation's start time in base 36: account names and transaction IDs derive from it, so
/// repeated invocations against one server never collide.
pub static START_NONCE: LazyLock<String> = LazyLock::new(|| {
    let mut n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut s = Vec::new();
    while n > 0 {
        s.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize]);
        n /= 36;
    }
    s.reverse();
    String::from_utf8(s).expect("ASCII")
});

#[derive(Parser, Debug)]
#[command(
    name = "culvert-bench",
    version,
    about = "Load generator and benchmarks for Matrix homeservers (client-server API only)"
)]
struct Cli {
    /// The homeserver's base URL.
    #[arg(long, global = true, default_value = "http://127.0.0.1:6167")]
    url: String,
    /// Registration token, for servers that ask for m.login.registration_token.
    #[arg(long, global = true)]
    registration_token: Option<String>,
    /// Synapse's registration_shared_secret: accounts via /_synapse/admin/v1/register (servers
    /// without that endpoint fall back to /register).
    #[arg(long, global = true)]
    shared_secret: Option<String>,
    /// The server's process ID: sample its RSS and CPU time from /proc while measuring.
    #[arg(long, global = true)]
    pid: Option<u32>,
    /// Write the results as JSON here.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// Write an SVG chart of the measured series (latency over time) here.
    #[arg(long, global = true)]
    svg: Option<PathBuf>,
    /// How many times to repeat the measured phase; figures are the medians.
    #[arg(long, global = true, default_value_t = 3)]
    runs: usize,
    /// Requests in flight while creating accounts, rooms and history.
    #[arg(long, global = true, default_value_t = 8)]
    setup_concurrency: usize,
    /// The server's name in the report (e.g. "culvert", "synapse").
    #[arg(long, global = true, default_value = "server")]
    label: String,

    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Senders write messages as fast as the server takes them: events/s, send latency.
    Send(SendOpts),
    /// Users long-poll /sync; one sends: time from the send's 200 to each member's sync.
    Deliver(DeliverOpts),
    /// A user in many rooms with history: time and bytes of an initial /sync.
    InitialSync(InitialSyncOpts),
    /// Idle long-polling clients: the server's memory and CPU (use --pid).
    Idle(IdleOpts),
    /// Back-pagination with /messages over a room's whole history.
    History(HistoryOpts),
    /// A user in many rooms, simplified sliding sync (MSC4186) as Element X asks: the first
    /// response (rooms 0–19), then the whole list grown in batches of 100.
    SlidingInitial(SlidingInitialOpts),
    /// Like deliver, but the receivers are long-polling simplified sliding sync connections.
    SlidingDeliver(SlidingDeliverOpts),
    /// A room with many messages: `/search` for one word (about a hundred matches each), and
    /// for a word in every message.
    Search(SearchOpts),
    /// A room with many threads: `/threads`' first page, and the whole list page by page.
    Threads(ThreadsOpts),
    /// One room whose members all have pushers to a sink gateway run by the tool: send
    /// throughput and latency, then the time from a send to each gateway request.
    Push(PushOpts),
}

enum Prepared {
    Send(Send),
    Deliver(Deliver),
    InitialSync(InitialSync),
    Idle(Idle),
    History(History),
    SlidingInitial(SlidingInitial),
    Push(Push),
    Search(Search),
    Threads(Threads),
}

impl Prepared {
    async fn run(&self, ctx: &Ctx, run: usize) -> Result<RunOutput> {
        match self {
            Prepared::Send(s) => s.run(ctx, run).await,
            Prepared::Deliver(s) => s.run(ctx, run).await,
            Prepared::InitialSync(s) => s.run(ctx, run).await,
            Prepared::Idle(s) => s.run(ctx, run).await,
            Prepared::History(s) => s.run(ctx, run).await,
            Prepared::SlidingInitial(s) => s.run(ctx, run).await,
            Prepared::Push(s) => s.run(ctx, run).await,
            Prepared::Search(s) => s.run(ctx, run).await,
            Prepared::Threads(s) => s.run(ctx, run).await,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("culvert-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("culvert-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    if !(cli.url.starts_with("http://") || cli.url.starts_with("https://")) {
        return Err("--url must start with http:// or https://".into());
    }
    if !(1..=20).contains(&cli.runs) || !(1..=256).contains(&cli.setup_concurrency) {
        return Err("--runs must be 1..=20 and --setup-concurrency 1..=256".into());
    }
    if let Some(pid) = cli.pid
        && measure::read_proc(pid).is_none()
    {
        return Err(format!("--pid {pid}: cannot read /proc/{pid}/status and stat").into());
    }
    let server = Server::new(
        &cli.url,
        AccountAuth {
            registration_token: cli.registration_token.clone(),
            shared_secret: cli.shared_secret.clone(),
        },
    )?;
    // Fail early and clearly when nothing Matrix-like answers.
    server
        .call_ok(reqwest::Method::GET, "/_matrix/client/versions", None, None)
        .await
        .map_err(|e| format!("{}: not a Matrix homeserver? {e}", cli.url))?;
    let ctx = Ctx {
        server,
        pid: cli.pid,
        setup_concurrency: cli.setup_concurrency,
        prefix: format!("cb{}", START_NONCE.as_str()),
        password: format!("culvert-bench-{}", START_NONCE.as_str()),
    };

    let (name, params, series_label, prepared) = match &cli.scenario {
        Scenario::Send(o) => (
            "send",
            serde_json::to_value(o)?,
            "send latency (ms)",
            Prepared::Send(Send::prepare(&ctx, o.clone()).await?),
        ),
        Scenario::Deliver(o) => (
            "deliver",
            serde_json::to_value(o)?,
            "delivery: send's 200 → in sync (ms)",
            Prepared::Deliver(Deliver::prepare(&ctx, o.clone(), Receive::Sync).await?),
        ),
        Scenario::InitialSync(o) => (
            "initial-sync",
            serde_json::to_value(o)?,
            "initial sync (ms)",
            Prepared::InitialSync(InitialSync::prepare(&ctx, o.clone()).await?),
        ),
        Scenario::Idle(o) => (
            "idle",
            serde_json::to_value(o)?,
            "server RSS (MiB)",
            Prepared::Idle(Idle::prepare(&ctx, o.clone()).await?),
        ),
        Scenario::History(o) => (
            "history",
            serde_json::to_value(o)?,
            "/messages page (ms)",
            Prepared::History(History::prepare(&ctx, o.clone()).await?),
        ),
        Scenario::SlidingInitial(o) => (
            "sliding-initial",
            serde_json::to_value(o)?,
            "first sliding sync response, rooms 0–19 (ms)",
            Prepared::SlidingInitial(SlidingInitial::prepare(&ctx, o.clone()).await?),
        ),
        Scenario::SlidingDeliver(o) => (
            "sliding-deliver",
            serde_json::to_value(o)?,
            "delivery: send's 200 → in sliding sync (ms)",
            Prepared::Deliver(o.clone().prepare(&ctx).await?),
        ),
        Scenario::Search(o) => (
            "search",
            serde_json::to_value(o)?,
            "/search for one word (ms)",
            Prepared::Search(Search::prepare(&ctx, o.clone()).await?),
        ),
        Scenario::Threads(o) => (
            "threads",
            serde_json::to_value(o)?,
            "/threads, first page (ms)",
            Prepared::Threads(Threads::prepare(&ctx, o.clone()).await?),
        ),
        Scenario::Push(o) => (
            "push",
            serde_json::to_value(o)?,
            "send → push gateway (ms)",
            Prepared::Push(Push::prepare(&ctx, o.clone()).await?),
        ),
    };

    let mut runs = Vec::with_capacity(cli.runs);
    for run in 0..cli.runs {
        eprintln!("{name}: run {}/{}", run + 1, cli.runs);
        runs.push(prepared.run(&ctx, run).await?);
    }

    let report = Report {
        scenario: name,
        label: &cli.label,
        url: &cli.url,
        params,
        series_label,
        runs: &runs,
    };
    print!("{}", report.summary());
    if let Some(path) = &cli.json {
        // Compact: the figures are read by scripts (bench-table.py), people read the summary.
        let mut json = serde_json::to_vec(&report.json())?;
        json.push(b'\n');
        std::fs::write(path, json).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &cli.svg {
        std::fs::write(path, report.svg()).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}
