//! TLS served by culvert itself (`[global.tls] certs = "…", key = "…"`), so that client and
//! federation traffic need no reverse proxy. rustls with the ring provider; the certificate is
//! re-read on SIGHUP (certbot renewals) without dropping connections.

use std::{
    io,
    net::SocketAddr,
    path::Path,
    sync::{Arc, RwLock},
    time::Duration,
};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use crate::config::TlsConfig;

/// A handshake that has not finished by then is dropped, so slow or silent peers cannot pile
/// up half-open connections.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// The ring crypto provider, the one culvert uses everywhere (never aws-lc-rs).
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads the PEM certificate chain and private key named in the config.
pub fn load_server_config(config: &TlsConfig) -> Result<rustls::ServerConfig, String> {
    let certs = read_certs(&config.certs)?;
    let key = PrivateKeyDer::from_pem_file(&config.key)
        .map_err(|e| format!("cannot read the TLS key {}: {e}", config.key.display()))?;
    let mut server = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("the TLS certificate and key do not fit together: {e}"))?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(server)
}

/// Every certificate in a PEM file (a chain, or a CA bundle).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate found in {}", path.display()));
    }
    Ok(certs)
}

/// A listener that accepts TCP connections and completes their TLS handshakes off the accept
/// loop (one task per handshake), handing finished streams to axum.
pub struct TlsListener {
    local_addr: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: TlsConfig) -> Result<Self, String> {
        let local_addr = tcp.local_addr().map_err(|e| e.to_string())?;
        let acceptor = Arc::new(RwLock::new(TlsAcceptor::from(Arc::new(
            load_server_config(&config)?,
        ))));
        reload_on_sighup(acceptor.clone(), config);
        let (done, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = tcp.accept() => accepted,
                    // The server stopped: release the port.
                    () = done.closed() => return,
                };
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!("accepting a connection failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor
                    .read()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .clone();
                let done = done.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = done.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { local_addr, ready })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept task only ends when this listener is gone; never reached.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

/// On SIGHUP, re-reads the certificate and key; a broken pair is logged and the old one kept.
fn reload_on_sighup(acceptor: Arc<RwLock<TlsAcceptor>>, config: TlsConfig) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            return;
        };
        while hangups.recv().await.is_some() {
            match load_server_config(&config) {
                Ok(server) => {
                    *acceptor
                        .write()
                        .unwrap_or_else(|poisoned| poisoned.into_inner()) =
                        TlsAcceptor::from(Arc::new(server));
                    tracing::info!("SIGHUP: reloaded the TLS certificate");
                }
                Err(e) => tracing::error!("SIGHUP: keeping the old TLS certificate: {e}"),
            }
        }
    });
    #[cfg(not(unix))]
    let _ = (acceptor, config);
}
