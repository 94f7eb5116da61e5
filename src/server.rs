//! Starting and stopping the HTTP server around the services.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, extract::ConnectInfo};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tower::ServiceExt;

use crate::{
    api,
    config::Config,
    service::{Services, StartError},
};

/// A server that is listening. [`RunningServer::stop`] shuts it down gracefully.
pub struct RunningServer {
    /// The address actually bound (useful with port 0).
    pub addr: SocketAddr,
    /// The metrics listener's address, when `[global.metrics]` is set.
    pub metrics_addr: Option<SocketAddr>,
    pub services: Arc<Services>,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
    metrics: Option<Listener>,
}

/// A second listener (the metrics'), stopped with the server.
struct Listener {
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

/// Opens the database, binds the configured address and starts serving.
pub async fn start(config: Config) -> Result<RunningServer, StartError> {
    let addr = SocketAddr::new(config.address, config.port);
    for key in &config.ignored_environment {
        tracing::warn!(
            "an environment variable names `{}`, which is no configuration key: ignored",
            key.to_uppercase()
        );
    }
    for key in config.unused_conduit_keys() {
        tracing::warn!(
            "config key `{key}` is accepted for Conduit compatibility but has no effect in culvert"
        );
    }
    if config.backup.is_some() {
        crate::service::backup::settings(&config).map_err(StartError::Other)?;
    }
    let services = Services::open(config)?;
    services.announce_bootstrap_token()?;
    services.finish_interrupted_purges().await?;
    services.start_federation_sender()?;
    expire_presence_periodically(&services);
    expire_typing_periodically(&services);
    flush_memtables_when_quiet(&services);
    services.start_appservice_senders();
    services.start_push_sender()?;
    services.run_delayed_events();
    if let Err(e) = services.open_admin_room().await {
        tracing::warn!("the admin room could not be opened: {e}");
    }
    services.run_admin_commands();

    let (metrics_addr, metrics) = match services.config.metrics.as_ref() {
        Some(config) => {
            let (addr, listener) = serve_metrics(&services, config.address).await?;
            (Some(addr), Some(listener))
        }
        None => (None, None),
    };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| StartError::Other(format!("cannot listen on {addr}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| StartError::Other(e.to_string()))?;
    let app = api::router(services.clone());
    let header_timeout = Duration::from_secs(services.config.request_header_timeout_secs);
    let (shutdown, shutdown_rx) = oneshot::channel::<()>();
    let stopped = async {
        let _ = shutdown_rx.await;
    };
    let tls = services.config.tls.clone();
    let task = match tls {
        None => tokio::spawn(serve(listener, app, header_timeout, stopped)),
        Some(tls) => {
            let listener =
                crate::tls::TlsListener::new(listener, tls).map_err(StartError::Other)?;
            tokio::spawn(serve(listener, app, header_timeout, stopped))
        }
    };
    let scheme = if services.config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    services.write_cli_access(addr, services.config.tls.is_some())?;
    tracing::info!(%addr, scheme, server_name = %services.server_name, "culvert is listening");
    trim_malloc_periodically();
    Ok(RunningServer {
        addr,
        metrics_addr,
        services,
        shutdown,
        task,
        metrics,
    })
}

/// The metrics listener's time for a request head.
const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `app` on `listener` (HTTP/1.1 and HTTP/2) until `stopped`, then lets the requests
/// under way finish. Written out instead of `axum::serve` to give the connections a timer: a
/// client that sends a request head slower than `header_timeout` (slowloris: a byte now and
/// then, holding the connection open for ever) is cut off.
async fn serve<L>(
    mut listener: L,
    app: Router,
    header_timeout: Duration,
    stopped: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder.http2().timer(TokioTimer::new());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(stopped);
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stopped => break,
        };
        let app = app.clone();
        // Handlers learn the peer's address as `axum::serve` tells it (`ConnectInfo`).
        let service = hyper::service::service_fn(
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                app.clone().oneshot(request)
            },
        );
        let io = FirstByteDeadline {
            inner: io,
            deadline: Some(Box::pin(tokio::time::sleep(header_timeout))),
        };
        let connection = builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::trace!(%peer, "connection ended: {e}");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// A new connection that must send its first bytes within a deadline. hyper's header timeout
/// starts once the connection is known to speak HTTP/1.1, but telling HTTP/1.1 from HTTP/2
/// waits for the first bytes: a client that connects and sends nothing would stay for ever.
struct FirstByteDeadline<I> {
    inner: I,
    /// Dropped once a byte came.
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<I: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for FirstByteDeadline<I> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let filled = buf.filled().len();
        let read = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let Some(deadline) = self.deadline.as_mut() else {
            return read;
        };
        if read.is_pending() {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()));
            }
        } else if buf.filled().len() > filled {
            self.deadline = None;
        }
        read
    }
}

impl<I: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for FirstByteDeadline<I> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Binds the metrics listener (`GET /metrics`) and serves it.
async fn serve_metrics(
    services: &Arc<Services>,
    addr: SocketAddr,
) -> Result<(SocketAddr, Listener), StartError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| StartError::Other(format!("cannot listen on {addr} for the metrics: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| StartError::Other(e.to_string()))?;
    let app = api::metrics::router(Arc::downgrade(services));
    let (shutdown, shutdown_rx) = oneshot::channel::<()>();
    let stopped = async {
        let _ = shutdown_rx.await;
    };
    let task = tokio::spawn(serve(listener, app, DEFAULT_HEADER_TIMEOUT, stopped));
    tracing::info!(%addr, "metrics are served at /metrics");
    Ok((addr, Listener { shutdown, task }))
}

/// Every 30 seconds, users whose clients stopped syncing go offline. The task holds the
/// services weakly, so it ends with the server.
fn expire_presence_periodically(services: &Arc<Services>) {
    let services = Arc::downgrade(services);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(std::time::Duration::from_secs(30));
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let Some(services) = services.upgrade() else {
                return;
            };
            if let Err(e) = services.expire_presence(crate::utils::now_millis()).await {
                tracing::warn!("expiring presence failed: {e}");
            }
        }
    });
}

/// Every second, typing notifications past their timeout end, and clients hear of it. The task
/// holds the services weakly, so it ends with the server.
fn expire_typing_periodically(services: &Arc<Services>) {
    let services = Arc::downgrade(services);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            ticks.tick().await;
            let Some(services) = services.upgrade() else {
                return;
            };
            if let Err(e) = services.expire_typing().await {
                tracing::warn!("expiring typing notifications failed: {e}");
            }
        }
    });
}

/// Once the server is up, and then every minute, glibc's malloc (which serves RocksDB: block
/// cache, memtables) gives the free pages inside its heaps back to the system. Left to itself it
/// returns only the free memory at a heap's top: the block cache, evicting and loading blocks of
/// every size from several threads' heaps, left more and more free memory held, and a soak grew
/// past its caches' bounds (RELIABILITY.md, "A long run: the soak"); and what opening the
/// database used and freed (its options file parsed, start-up reads) stayed for the first
/// minute.
fn trim_malloc_periodically() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::spawn(async {
        let mut ticks = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            ticks.tick().await;
            let trimmed = tokio::task::spawn_blocking(|| {
                let started = std::time::Instant::now();
                // SAFETY: malloc_trim only releases free memory; any thread may call it.
                unsafe { libc::malloc_trim(0) };
                started.elapsed()
            })
            .await;
            if let Ok(took) = trimmed {
                tracing::debug!(?took, "malloc's free pages returned");
            }
        }
    });
}

/// Once the writes have gone quiet, the memtables that hold a burst's writes are written out and
/// their memory given back (`store::quiet_flush`). The task holds the services weakly, so it
/// ends with the server.
fn flush_memtables_when_quiet(services: &Arc<Services>) {
    use crate::store::quiet_flush::{FLUSH_FROM_BYTES, QuietSpells, TICK};
    let mut spells = QuietSpells::new(&services.store);
    let services = Arc::downgrade(services);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(TICK);
        loop {
            ticks.tick().await;
            let Some(services) = services.upgrade() else {
                return;
            };
            if !spells.tick(services.store.written_bytes()) {
                continue;
            }
            let store = services.store.clone();
            drop(services);
            let flushed =
                tokio::task::spawn_blocking(move || store.flush_memtables(FLUSH_FROM_BYTES))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|flushed| flushed.map_err(|e| e.to_string()));
            match flushed {
                Ok(Some(bytes)) => tracing::debug!(bytes, "memtables flushed: writes went quiet"),
                Ok(None) => {}
                Err(e) => tracing::warn!("flushing the memtables failed: {e}"),
            }
        }
    });
}

/// Tells systemd (when started as a `Type=notify` service) that start-up is done, and keeps its
/// watchdog fed. Does nothing when not run by systemd.
fn notify_systemd_ready() {
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!("could not notify systemd of readiness: {e}");
    }
    if let Some(interval) = sd_notify::watchdog_enabled() {
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval / 2);
            loop {
                ticker.tick().await;
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
        });
    }
}

impl RunningServer {
    /// Stops accepting requests, lets in-flight ones finish, then flushes the database.
    pub async fn stop(self) -> Result<(), StartError> {
        let _ = self.shutdown.send(());
        if let Some(metrics) = self.metrics {
            let _ = metrics.shutdown.send(());
            let _ = metrics.task.await;
        }
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(StartError::Other(format!("server error: {e}"))),
            Err(e) => return Err(StartError::Other(format!("server task failed: {e}"))),
        }
        self.services
            .store
            .flush()
            .map_err(|e| StartError::Other(e.to_string()))?;
        // Background tasks hold the services weakly, and strongly only for a moment at a
        // time (a tick, a queue's turn): let them finish that moment, so that the database is
        // closed — and its lock free for the next process — once this returns.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while Arc::strong_count(&self.services) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        if Arc::strong_count(&self.services) > 1 {
            tracing::warn!("a background task still holds the database after 5 s");
        }
        drop(self.services);
        tracing::info!("culvert stopped");
        Ok(())
    }

    /// Serves until SIGINT or SIGTERM, then stops gracefully. Reports readiness and shutdown to
    /// systemd when run as a notify service.
    pub async fn run_until_signal(self) -> Result<(), StartError> {
        notify_systemd_ready();
        wait_for_signal().await;
        tracing::info!("shutting down");
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        self.stop().await
    }
}

async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
