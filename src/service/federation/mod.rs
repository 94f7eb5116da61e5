//! Federation: talking to other homeservers.
//!
//! - [`resolve`]: server name → where to connect (well-known, SRV, 8448), through the SSRF guard.
//! - [`client`]: signed (`X-Matrix`) outbound requests over rustls.
//! - [`server_keys`]: other servers' signing keys, fetched directly or through notaries and
//!   cached; the verification of inbound request signatures.

pub mod backfill;
pub mod client;
pub mod destinations;
pub mod edus;
pub mod inbound;
pub mod invite;
pub mod knock;
pub mod media_client;
pub mod membership;
pub mod openid;
pub mod outbox;
pub mod pdu_check;
pub mod profile;
pub mod remote_keys;
pub mod resolve;
pub mod sender;
pub mod serve;
pub mod server_keys;
pub mod user_keys;

use std::{net::IpAddr, sync::Arc, time::Duration};

use crate::{config::Config, tls};

/// Decides whether an outbound connection may go to an address (the SSRF guard).
pub type IpGuard = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// Connections that take longer than this to open are given up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a federation request may take (`send_join` of a big room is the slow one).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// The outbound side's shared parts: DNS, the resolver cache and the HTTP client.
pub struct Federation {
    pub enabled: bool,
    pub resolver: resolve::Resolver,
    /// The SSRF guard, also applied to IP literals (which skip DNS).
    pub ip_allowed: IpGuard,
    http: reqwest::Client,
    pub keys: server_keys::KeyCache,
    /// Where rooms' new events go; a consumer of the commit pipeline.
    pub outbox: Arc<outbox::Outbox>,
    /// How sending to each destination goes (failures, back-off), for the admins.
    pub destinations: destinations::Destinations,
}

impl Federation {
    pub fn new(
        config: &Config,
        store: crate::store::Store,
        members: Arc<crate::service::rooms::members::Members>,
    ) -> Result<Self, String> {
        let guard = config.outbound_ip_guard()?;
        let dns = Arc::new(resolve::Dns::new(guard));
        let tls = client_tls(config)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls.clone())
            .dns_resolver(Arc::new(resolve::ConnectResolver(dns.clone())))
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            // Federation endpoints never redirect; a redirect could lead past the guard.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("culvert/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("federation HTTP client: {e}"))?;
        let well_known_dns = Arc::new(resolve::Dns::new(dns_guard_of(&dns)));
        let well_known = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .dns_resolver(Arc::new(resolve::ConnectResolver(well_known_dns)))
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .map_err(|e| format!("well-known HTTP client: {e}"))?;
        Ok(Self {
            enabled: config.allow_federation,
            ip_allowed: dns.guard(),
            resolver: resolve::Resolver::new(dns, well_known),
            http,
            keys: server_keys::KeyCache::new(store),
            outbox: Arc::new(outbox::Outbox::new(config.server_name.clone(), members)),
            destinations: destinations::Destinations::default(),
        })
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

fn dns_guard_of(dns: &resolve::Dns) -> IpGuard {
    dns.guard()
}

/// The TLS client configuration: the webpki roots plus `federation_extra_ca_certs`, or, only
/// when `allow_invalid_tls_certificates` is set (tests), no verification at all.
fn client_tls(config: &Config) -> Result<rustls::ClientConfig, String> {
    let provider = tls::crypto_provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?;
    let mut client = if config.allow_invalid_tls_certificates {
        tracing::warn!(
            "allow_invalid_tls_certificates = true: federation accepts ANY certificate, so \
             anyone on the network path can impersonate other servers. Use only in tests."
        );
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for path in &config.federation_extra_ca_certs {
            for cert in tls::read_certs(path)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("bad CA certificate in {}: {e}", path.display()))?;
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    client.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(client)
}

/// Accepts every certificate but still checks that the handshake is signed by the key in the
/// certificate presented (`allow_invalid_tls_certificates`, tests only).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
