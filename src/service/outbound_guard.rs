//! The guard on every connection the server opens on someone else's behalf (URL previews now,
//! federation later): addresses in the operator's deny-list (`ip_range_denylist`, by default
//! every non-public range) are never connected to, so a user cannot make the server reach its
//! own loopback, the LAN or a cloud metadata service (SSRF).
//!
//! Three pieces, all cheap to clone:
//! - [`OutboundGuard::is_denied`]: whether one address may be connected to;
//! - [`OutboundGuard::check_url`]: refuses URLs whose host is a denied IP literal (reqwest does
//!   not ask a resolver for those);
//! - [`OutboundGuard::resolver`]: a [`reqwest::dns::Resolve`] that resolves names and drops the
//!   denied addresses (an error when none is left), for `ClientBuilder::dns_resolver`.
//!
//! A reqwest client is only guarded when it uses the resolver, calls `check_url` for the first
//! URL and every redirect target (see [`OutboundGuard::redirect_policy`]) and has no proxy
//! (`ClientBuilder::no_proxy`): a proxy would resolve names itself. [`OutboundGuard::apply`]
//! does all but the first `check_url` to a `ClientBuilder`.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// The default `ip_range_denylist`: every range that is not the public internet.
pub fn default_denylist() -> Vec<String> {
    [
        // IPv4
        "0.0.0.0/8",       // "this network"
        "10.0.0.0/8",      // private
        "100.64.0.0/10",   // carrier-grade NAT
        "127.0.0.0/8",     // loopback
        "169.254.0.0/16",  // link-local (cloud metadata services live here)
        "172.16.0.0/12",   // private
        "192.0.0.0/24",    // IETF protocol assignments
        "192.0.2.0/24",    // documentation
        "192.88.99.0/24",  // 6to4 relay anycast
        "192.168.0.0/16",  // private
        "198.18.0.0/15",   // benchmarking
        "198.51.100.0/24", // documentation
        "203.0.113.0/24",  // documentation
        "224.0.0.0/4",     // multicast
        "240.0.0.0/4",     // reserved, broadcast
        // IPv6 (IPv4-mapped addresses are checked as the IPv4 address they carry)
        "::/128",         // unspecified
        "::1/128",        // loopback
        "::/96",          // IPv4-compatible (deprecated)
        "64:ff9b:1::/48", // local-use NAT64
        "100::/64",       // discard
        "2001::/23",      // IETF protocol assignments (Teredo, ...)
        "2001:db8::/32",  // documentation
        "2002::/16",      // 6to4: embeds any IPv4 address
        "3fff::/20",      // documentation
        "fc00::/7",       // unique local
        "fe80::/10",      // link-local
        "fec0::/10",      // site-local (deprecated)
        "ff00::/8",       // multicast
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}

/// Parses CIDR strings (a bare address means just that address); the error names the bad one.
pub fn parse_denylist(cidrs: &[String]) -> Result<Vec<IpNet>, String> {
    cidrs
        .iter()
        .map(|cidr| {
            cidr.parse::<IpNet>()
                .or_else(|_| cidr.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{cidr:?} is not an IP range in CIDR notation"))
        })
        .collect()
}

/// Why an outbound request was refused.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("the address {0} is in ip_range_denylist")]
    Denied(IpAddr),
    #[error("{0} resolves only to addresses in ip_range_denylist")]
    AllDenied(String),
    #[error("could not resolve {0}: {1}")]
    Resolve(String, std::io::Error),
    #[error("the URL has no host")]
    NoHost,
}

/// The deny-list, shared.
#[derive(Clone, Debug)]
pub struct OutboundGuard {
    denied: Arc<Vec<IpNet>>,
}

impl OutboundGuard {
    /// From `ip_range_denylist` (validated at config load).
    pub fn new(cidrs: &[String]) -> Result<Self, String> {
        Ok(Self {
            denied: Arc::new(parse_denylist(cidrs)?),
        })
    }

    /// Whether connecting to `ip` is forbidden. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`)
    /// are judged as the IPv4 address, which is where the connection really goes.
    pub fn is_denied(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        self.denied.iter().any(|net| net.contains(&ip))
    }

    /// Refuses a URL whose host is a denied IP literal. Host names pass here: the
    /// [`resolver`](Self::resolver) judges the addresses they resolve to.
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), GuardError> {
        let host = url.host_str().ok_or(GuardError::NoHost)?;
        // IPv6 literals come bracketed.
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        match literal.parse::<IpAddr>() {
            Ok(ip) if self.is_denied(ip) => Err(GuardError::Denied(ip)),
            _ => Ok(()),
        }
    }

    /// A redirect policy that follows at most `max` redirects and none to a denied IP literal
    /// (redirects to names are judged by the resolver when connecting).
    pub fn redirect_policy(&self, max: usize) -> reqwest::redirect::Policy {
        let guard = self.clone();
        reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= max {
                return attempt.error("too many redirects");
            }
            match guard.check_url(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(e) => attempt.error(e),
            }
        })
    }

    /// Puts the whole guard on a reqwest client: the resolver, the redirect policy (at most
    /// `max_redirects`) and no proxy. Callers still [`check_url`](Self::check_url) the first URL.
    pub fn apply(
        &self,
        builder: reqwest::ClientBuilder,
        max_redirects: usize,
    ) -> reqwest::ClientBuilder {
        builder
            .dns_resolver(self.resolver())
            .redirect(self.redirect_policy(max_redirects))
            .no_proxy()
    }

    /// The resolver to give `reqwest::ClientBuilder::dns_resolver`.
    pub fn resolver(&self) -> Arc<GuardedResolver> {
        Arc::new(GuardedResolver {
            guard: self.clone(),
        })
    }

    /// Resolves `host` (the system resolver: hosts file, then DNS) and keeps the allowed
    /// addresses; an error when none is left.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, GuardError> {
        let found: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| GuardError::Resolve(host.to_owned(), e))?
            .collect();
        let allowed: Vec<SocketAddr> = found
            .into_iter()
            .filter(|addr| !self.is_denied(addr.ip()))
            .collect();
        if allowed.is_empty() {
            return Err(GuardError::AllDenied(host.to_owned()));
        }
        Ok(allowed)
    }
}

/// A [`Resolve`] that never hands reqwest a denied address.
pub struct GuardedResolver {
    guard: OutboundGuard,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.guard.clone();
        Box::pin(async move {
            // reqwest puts the URL's port on the addresses itself; 0 here.
            let addrs = guard.resolve(name.as_str(), 0).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_guard() -> OutboundGuard {
        OutboundGuard::new(&default_denylist()).unwrap()
    }

    #[test]
    fn default_denies_non_public_ranges() {
        let guard = default_guard();
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.20.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "2001:db8::1",
        ] {
            assert!(guard.is_denied(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "1.1.1.1",
            "93.184.216.34",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(!guard.is_denied(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn empty_list_allows_everything() {
        let guard = OutboundGuard::new(&[]).unwrap();
        assert!(!guard.is_denied("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn bad_cidr_is_named() {
        let err = parse_denylist(&["10.0.0.0/33".into()]).unwrap_err();
        assert!(err.contains("10.0.0.0/33"), "{err}");
        assert_eq!(parse_denylist(&["10.0.0.1".into()]).unwrap().len(), 1);
    }

    #[test]
    fn ip_literal_urls_are_checked() {
        let guard = default_guard();
        for url in [
            "http://127.0.0.1:8080/",
            "http://[::1]/",
            "http://[::ffff:7f00:1]/",
            "http://169.254.169.254/latest",
        ] {
            assert!(guard.check_url(&url.parse().unwrap()).is_err(), "{url}");
        }
        assert!(guard.check_url(&"http://1.1.1.1/".parse().unwrap()).is_ok());
        assert!(
            guard
                .check_url(&"http://example.org/".parse().unwrap())
                .is_ok()
        );
    }

    #[tokio::test]
    async fn resolver_drops_denied_addresses() {
        let guard = default_guard();
        assert!(matches!(
            guard.resolve("localhost", 80).await,
            Err(GuardError::AllDenied(_) | GuardError::Resolve(..))
        ));
        let open = OutboundGuard::new(&[]).unwrap();
        assert!(!open.resolve("127.0.0.1", 80).await.unwrap().is_empty());
    }
}
