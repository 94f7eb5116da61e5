//! Measuring: percentiles, the server's RSS and CPU time from /proc, a progress line on stderr,
//! and a bounded worker pool for setup phases.

use std::{
    future::Future,
    io::{IsTerminal, Write},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{sync::watch, task::JoinSet};

use crate::client::Result;

/// The `p`-th percentile (0–100) of `values`, nearest-rank on a sorted copy; NaN when empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median (mean of the two middle values for an even count); NaN when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        f64::NAN
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Samples a process's resident memory and CPU time (user + system) every 100 ms while a
/// measured phase runs. Linux only; without `--pid` nothing is sampled.
pub struct ProcMonitor {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<ProcSample>>,
    started: Instant,
    /// The tool's own CPU ticks at the start: on a small machine it competes with the server.
    own_ticks: Option<u64>,
}

#[derive(Clone, Copy, Debug)]
pub struct ProcSample {
    pub rss_kib: u64,
    /// The anonymous part of the RSS (heap, stacks): what the server allocated, as opposed to
    /// the file-backed pages of its executable and libraries, which the kernel shares and can
    /// drop. `None` on kernels without `RssAnon` (before 4.5).
    pub rss_anon_kib: Option<u64>,
    /// utime + stime in clock ticks (USER_HZ, 100 on Linux).
    pub cpu_ticks: u64,
}

/// Clock ticks per second in /proc/PID/stat: USER_HZ, fixed at 100 in Linux's ABI.
const USER_HZ: f64 = 100.0;

pub fn read_proc(pid: u32) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let rss_kib = kib("VmRSS:")?;
    let rss_anon_kib = kib("RssAnon:");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields are counted after its closing parenthesis,
    // where field 3 (state) comes first; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(ProcSample {
        rss_kib,
        rss_anon_kib,
        cpu_ticks: utime + stime,
    })
}

impl ProcMonitor {
    pub fn start(pid: u32) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => {}
                }
                if let Some(sample) = read_proc(pid) {
                    samples.push(sample);
                }
                if *stopped.borrow() {
                    return samples;
                }
            }
        });
        Self {
            stop,
            task,
            started,
            own_ticks: read_proc(std::process::id()).map(|p| p.cpu_ticks),
        }
    }

    /// Stops sampling; figures: peak and mean RSS (MiB), CPU seconds and CPU % of one core.
    pub async fn finish(self) -> (Vec<(String, f64)>, Vec<ProcSample>) {
        let _ = self.stop.send(true);
        let wall = self.started.elapsed().as_secs_f64();
        let own = self
            .own_ticks
            .zip(read_proc(std::process::id()))
            .map(|(before, now)| (now.cpu_ticks - before) as f64 / USER_HZ);
        let samples = self.task.await.unwrap_or_default();
        let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
            return (Vec::new(), samples);
        };
        let rss: Vec<f64> = samples.iter().map(|s| s.rss_kib as f64 / 1024.0).collect();
        let cpu = (last.cpu_ticks - first.cpu_ticks) as f64 / USER_HZ;
        let mut figures = vec![
            (
                "server_rss_peak_mib".into(),
                rss.iter().copied().fold(0.0, f64::max),
            ),
            ("server_rss_mean_mib".into(), mean(&rss)),
        ];
        let anon: Vec<f64> = samples
            .iter()
            .filter_map(|s| s.rss_anon_kib)
            .map(|kib| kib as f64 / 1024.0)
            .collect();
        if !anon.is_empty() {
            figures.push((
                "server_rss_anon_peak_mib".into(),
                anon.iter().copied().fold(0.0, f64::max),
            ));
        }
        figures.extend([
            ("server_cpu_seconds".into(), cpu),
            ("server_cpu_percent".into(), 100.0 * cpu / wall.max(1e-9)),
        ]);
        if let Some(own) = own {
            figures.push(("bench_tool_cpu_seconds".into(), own));
        }
        (figures, samples)
    }
}

/// A one-line progress indicator on stderr: redrawn in place on a terminal, a line every
/// five seconds otherwise (logs stay readable).
pub struct Progress {
    pub count: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    /// `total` in units; `deadline_s` for phases bounded by time instead.
    pub fn start(label: &str, total: Option<u64>, deadline_s: Option<f64>) -> Self {
        let count = Arc::new(AtomicU64::new(0));
        let (stop, mut stopped) = watch::channel(false);
        let tty = std::io::stderr().is_terminal();
        let label = label.to_owned();
        let counter = count.clone();
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let every = Duration::from_millis(if tty { 250 } else { 5000 });
            let line = |done: bool| {
                let n = counter.load(Ordering::Relaxed);
                let t = started.elapsed().as_secs_f64();
                let mut s = format!("{label}: {n}");
                if let Some(total) = total {
                    s.push_str(&format!("/{total}"));
                }
                s.push_str(&format!(" in {t:.1}s"));
                if let Some(d) = deadline_s.filter(|_| !done) {
                    s.push_str(&format!(" of {d:.0}s"));
                }
                s
            };
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stopped.changed() => {
                        let mut err = std::io::stderr();
                        let _ = if tty {
                            writeln!(err, "\r\x1b[2K{}", line(true))
                        } else {
                            writeln!(err, "{}", line(true))
                        };
                        return;
                    }
                }
                let mut err = std::io::stderr();
                let _ = if tty {
                    write!(err, "\r\x1b[2K{}", line(false))
                } else {
                    writeln!(err, "{}", line(false))
                };
                let _ = err.flush();
            }
        });
        Self { count, stop, task }
    }

    pub fn inc(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub async fn finish(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Runs `f(0..n)` with at most `concurrency` in flight, in order of index; the first error
/// aborts the rest. A progress line counts completions.
pub async fn for_each_bounded<T, F, Fut>(
    label: &str,
    n: usize,
    concurrency: usize,
    f: F,
) -> Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    let progress = Progress::start(label, Some(n as u64), None);
    let f = Arc::new(f);
    let next = Arc::new(AtomicUsize::new(0));
    let results = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let mut set = JoinSet::new();
    for _ in 0..concurrency.clamp(1, n.max(1)) {
        let (f, next, results, count) = (
            f.clone(),
            next.clone(),
            results.clone(),
            progress.count.clone(),
        );
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<(), crate::client::Error>(());
                }
                let value = f(i).await?;
                results.lock().expect("not poisoned").push((i, value));
                count.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let mut failure = None;
    while let Some(done) = set.join_next().await {
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failure.get_or_insert(e);
                set.abort_all();
            }
            Err(e) if e.is_cancelled() => {}
            Err(e) => {
                failure.get_or_insert(e.to_string().into());
            }
        }
    }
    progress.finish().await;
    if let Some(e) = failure {
        return Err(e);
    }
    let mut results = std::mem::take(&mut *results.lock().expect("not poisoned"));
    results.sort_by_key(|(i, _)| *i);
    Ok(results.into_iter().map(|(_, v)| v).collect())
}
