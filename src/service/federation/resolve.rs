//! Server name resolution, as the spec's "Resolving server names" says: IP literal, explicit
//! port, `/.well-known/matrix/server` delegation (cached), SRV `_matrix-fed._tcp` then legacy
//! `_matrix._tcp`, and finally port 8448. DNS goes through hickory (async, no blocking
//! `getaddrinfo`); every address is checked against the SSRF guard before a connection.
//!
//! The outcome is a URL host and port: the host is what TLS verifies and what the `Host`
//! header says. When SRV points elsewhere, the host keeps its name and only the addresses it
//! connects to come from the SRV target: [`ConnectResolver`] applies that override.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use hickory_resolver::TokioResolver;
use ruma::{OwnedServerName, ServerName};

use super::IpGuard;

/// The default federation port.
pub const DEFAULT_PORT: u16 = 8448;
/// How long a resolution is kept when `.well-known` answered (the spec suggests 24 hours).
const WELL_KNOWN_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// How long a resolution without `.well-known` is kept (the spec suggests an hour).
const NO_WELL_KNOWN_TTL: Duration = Duration::from_secs(60 * 60);
/// `.well-known` documents are small; a bigger answer is not one.
const WELL_KNOWN_MAX_BYTES: usize = 64 * 1024;

/// Where to send a server's requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// The URL host: a hostname or an IP literal (IPv6 in brackets).
    pub host: String,
    pub port: u16,
}

impl Destination {
    pub fn base_url(&self) -> String {
        format!("https://{}:{}", self.host, self.port)
    }
}

/// Name lookups shared by the resolver and the HTTP connector.
pub struct Dns {
    resolver: Option<TokioResolver>,
    guard: IpGuard,
    /// URL host → host whose addresses to connect to (from SRV records).
    srv_targets: RwLock<HashMap<String, String>>,
}

impl Dns {
    pub fn new(guard: IpGuard) -> Self {
        let resolver = match TokioResolver::builder_tokio() {
            Ok(builder) => Some(builder.build()),
            Err(e) => {
                tracing::warn!("no DNS configuration ({e}): federation reaches only IP literals");
                None
            }
        };
        Self {
            resolver,
            guard,
            srv_targets: RwLock::default(),
        }
    }

    pub fn guard(&self) -> IpGuard {
        self.guard.clone()
    }

    /// The addresses of `host` that the guard allows. An error names why there are none.
    pub async fn lookup(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        let candidates: Vec<IpAddr> = match host.trim_matches(['[', ']']).parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => {
                let resolver = self.resolver.as_ref().ok_or("no DNS resolver")?;
                resolver
                    .lookup_ip(host)
                    .await
                    .map_err(|e| format!("cannot resolve {host}: {e}"))?
                    .iter()
                    .collect()
            }
        };
        let allowed: Vec<IpAddr> = candidates
            .iter()
            .copied()
            .filter(|ip| (self.guard)(*ip))
            .collect();
        if allowed.is_empty() {
            return Err(format!(
                "{host} resolves only to addresses that ip_range_denylist forbids"
            ));
        }
        Ok(allowed)
    }

    /// The best `_service._tcp.host` SRV record: lowest priority, then highest weight.
    async fn srv(&self, name: &str) -> Option<(String, u16)> {
        let resolver = self.resolver.as_ref()?;
        let records = resolver.srv_lookup(name).await.ok()?;
        records
            .iter()
            .min_by_key(|r| (r.priority(), std::cmp::Reverse(r.weight())))
            .map(|r| {
                (
                    r.target().to_utf8().trim_end_matches('.').to_owned(),
                    r.port(),
                )
            })
            .filter(|(target, _)| !target.is_empty())
    }

    fn set_srv_target(&self, host: &str, target: Option<String>) {
        let mut targets = self
            .srv_targets
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match target {
            Some(target) if target != host => {
                targets.insert(host.to_owned(), target);
            }
            _ => {
                targets.remove(host);
            }
        }
    }
}

/// The connector's name resolution: SRV override, DNS, SSRF guard.
#[derive(Clone)]
pub struct ConnectResolver(pub Arc<Dns>);

impl reqwest::dns::Resolve for ConnectResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let dns = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let target = dns
                .srv_targets
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&host)
                .cloned()
                .unwrap_or(host);
            let ips = dns.lookup(&target).await?;
            let addrs: reqwest::dns::Addrs =
                Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// Resolves server names, caching the outcome.
pub struct Resolver {
    dns: Arc<Dns>,
    /// Fetches `.well-known` (ordinary DNS, guarded, no SRV override).
    well_known_client: reqwest::Client,
    cache: Mutex<HashMap<OwnedServerName, (Destination, Instant)>>,
}

impl Resolver {
    pub fn new(dns: Arc<Dns>, well_known_client: reqwest::Client) -> Self {
        Self {
            dns,
            well_known_client,
            cache: Mutex::default(),
        }
    }

    /// Forgets a server's resolution, e.g. after its requests started failing.
    pub fn forget(&self, server: &ServerName) {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(server);
    }

    pub async fn resolve(&self, server: &ServerName) -> Destination {
        if let Some((destination, expires)) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(server)
            && *expires > Instant::now()
        {
            return destination.clone();
        }
        let (destination, ttl) = self.resolve_uncached(server).await;
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(
            server.to_owned(),
            (destination.clone(), Instant::now() + ttl),
        );
        destination
    }

    async fn resolve_uncached(&self, server: &ServerName) -> (Destination, Duration) {
        let host = server.host().to_owned();
        // 1. and 2.: an IP literal, or an explicit port, is used as it is.
        if server.is_ip_literal() || server.port().is_some() {
            self.dns.set_srv_target(&host, None);
            let port = server.port().unwrap_or(DEFAULT_PORT);
            return (Destination { host, port }, WELL_KNOWN_TTL);
        }
        // 3. Delegation through `.well-known`.
        if let Some(delegated) = self.well_known(&host).await {
            let delegated_host = delegated.host().to_owned();
            if delegated.is_ip_literal() || delegated.port().is_some() {
                self.dns.set_srv_target(&delegated_host, None);
                let port = delegated.port().unwrap_or(DEFAULT_PORT);
                return (
                    Destination {
                        host: delegated_host,
                        port,
                    },
                    WELL_KNOWN_TTL,
                );
            }
            return (self.by_srv(delegated_host).await, WELL_KNOWN_TTL);
        }
        // 4.–6. SRV on the server name itself, then port 8448.
        (self.by_srv(host).await, NO_WELL_KNOWN_TTL)
    }

    /// SRV `_matrix-fed._tcp`, then the deprecated `_matrix._tcp`, then port 8448.
    async fn by_srv(&self, host: String) -> Destination {
        for service in ["_matrix-fed._tcp", "_matrix._tcp"] {
            if let Some((target, port)) = self.dns.srv(&format!("{service}.{host}.")).await {
                self.dns.set_srv_target(&host, Some(target));
                return Destination { host, port };
            }
        }
        self.dns.set_srv_target(&host, None);
        Destination {
            host,
            port: DEFAULT_PORT,
        }
    }

    /// `m.server` from `https://<host>/.well-known/matrix/server`, if it answers with a valid
    /// server name.
    async fn well_known(&self, host: &str) -> Option<OwnedServerName> {
        let url = format!("https://{host}/.well-known/matrix/server");
        let response = self
            .well_known_client
            .get(&url)
            .send()
            .await
            .ok()?
            .error_for_status()
            .ok()?;
        if response
            .content_length()
            .is_some_and(|l| l as usize > WELL_KNOWN_MAX_BYTES)
        {
            return None;
        }
        let body = response.bytes().await.ok()?;
        if body.len() > WELL_KNOWN_MAX_BYTES {
            return None;
        }
        let document: serde_json::Value = serde_json::from_slice(&body).ok()?;
        let delegated = document.get("m.server")?.as_str()?;
        ServerName::parse(delegated).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolver() -> Resolver {
        let dns = Arc::new(Dns::new(Arc::new(|_| true)));
        Resolver::new(dns, reqwest::Client::new())
    }

    #[tokio::test]
    async fn ip_literals_and_explicit_ports_need_no_lookup() {
        let r = resolver();
        let cases = [
            ("1.2.3.4", "1.2.3.4", 8448),
            ("1.2.3.4:8000", "1.2.3.4", 8000),
            ("[::1]", "[::1]", 8448),
            ("[::1]:9000", "[::1]", 9000),
            ("example.invalid:1234", "example.invalid", 1234),
        ];
        for (name, host, port) in cases {
            let server = ServerName::parse(name).unwrap();
            let d = r.resolve(&server).await;
            assert_eq!((d.host.as_str(), d.port), (host, port), "{name}");
        }
        assert_eq!(
            Destination {
                host: "[::1]".into(),
                port: 9000
            }
            .base_url(),
            "https://[::1]:9000"
        );
    }

    #[tokio::test]
    async fn the_guard_filters_resolved_addresses() {
        let dns = Dns::new(Arc::new(|ip: IpAddr| !ip.is_loopback()));
        assert!(dns.lookup("127.0.0.1").await.is_err());
        assert!(dns.lookup("[::1]").await.is_err());
        assert_eq!(
            dns.lookup("192.0.2.7").await.unwrap(),
            vec!["192.0.2.7".parse::<IpAddr>().unwrap()]
        );
    }
}
