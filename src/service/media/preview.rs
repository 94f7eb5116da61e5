//! URL previews (`/preview_url`): the server fetches a page for a client, through the
//! [`OutboundGuard`](crate::service::outbound_guard), with a size limit and a timeout, and
//! answers its Open Graph data; the page's `og:image` (or the URL itself, when it is an image)
//! is stored as local media and named by its `mxc://` URI. Results are cached in
//! `url_previews` for [`CACHE_FOR`].

use std::{sync::LazyLock, time::Duration};

use http::StatusCode;
use regex::Regex;
use ruma::{UserId, api::error::ErrorKind};
use serde_json::{Map, Value, json};

use super::Media;
use crate::{
    Error, Result,
    config::Config,
    service::outbound_guard::{GuardError, OutboundGuard},
    store::{Cf, keys},
    utils,
};

/// How long a cached preview is answered instead of fetching again.
pub const CACHE_FOR: Duration = Duration::from_secs(60 * 60);
/// The whole fetch (connect, redirects, body) must finish within this.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_REDIRECTS: usize = 5;

pub struct Previewer {
    pub enabled: bool,
    client: reqwest::Client,
    guard: OutboundGuard,
    max_size: u64,
}

impl Previewer {
    pub fn new(config: &Config) -> Result<Self, String> {
        let guard = OutboundGuard::new(&config.ip_range_denylist)?;
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let client = guard
            .apply(reqwest::Client::builder(), MAX_REDIRECTS)
            .use_preconfigured_tls(tls)
            .timeout(FETCH_TIMEOUT)
            .user_agent(concat!(
                "culvert/",
                env!("CARGO_PKG_VERSION"),
                " (URL preview)"
            ))
            .build()
            .map_err(|e| format!("URL preview HTTP client: {e}"))?;
        Ok(Self {
            enabled: config.url_preview_enabled,
            client,
            guard,
            max_size: config.url_preview_max_size,
        })
    }

    /// The preview of `url`, from the cache when fresh.
    pub async fn preview(&self, media: &Media, url: &str, user: &UserId) -> Result<Value> {
        let parsed: reqwest::Url = url
            .parse()
            .map_err(|_| Error::invalid_param("The url parameter is not a valid URL."))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Error::invalid_param(
                "Only http and https URLs are previewed.",
            ));
        }
        let key = keys::join([parsed.as_str().as_bytes()]);
        if let Some(cached) = media.store.get(Cf::UrlPreviews, &key)? {
            let cached: Value = serde_json::from_slice(&cached)?;
            let fresh = cached["ts"]
                .as_u64()
                .is_some_and(|ts| ts + CACHE_FOR.as_millis() as u64 > utils::now_millis());
            if fresh {
                return Ok(cached["preview"].clone());
            }
        }
        tracing::debug!(%user, "URL preview fetch");
        let preview = self.fetch_preview(media, &parsed).await?;
        media.store.put(
            Cf::UrlPreviews,
            &key,
            &serde_json::to_vec(&json!({ "ts": utils::now_millis(), "preview": preview }))?,
        )?;
        Ok(preview)
    }

    async fn fetch_preview(&self, media: &Media, url: &reqwest::Url) -> Result<Value> {
        let fetched = self.fetch(url, true).await?;
        let mut preview = Map::new();
        if fetched.content_type.starts_with("image/") {
            self.store_image(media, fetched, &mut preview).await?;
        } else if fetched.content_type.starts_with("text/html")
            || fetched.content_type.starts_with("application/xhtml")
        {
            let html = String::from_utf8_lossy(&fetched.body);
            let og = parse_open_graph(&html);
            for (k, v) in &og {
                if k != "og:image" {
                    preview.insert(k.clone(), Value::String(v.clone()));
                }
            }
            // Width and height are numbers in the spec's example.
            for k in ["og:image:width", "og:image:height"] {
                if let Some(n) = og.get(k).and_then(|v| v.trim().parse::<u64>().ok()) {
                    preview.insert(k.to_owned(), json!(n));
                }
            }
            if let Some(image_url) = og.get("og:image").and_then(|i| url.join(i).ok()) {
                // A missing or refused image still leaves a useful text preview.
                match self.fetch(&image_url, false).await {
                    Ok(image) if image.content_type.starts_with("image/") => {
                        if let Err(e) = self.store_image(media, image, &mut preview).await {
                            tracing::debug!(error = %e, "URL preview image not stored");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "URL preview image not fetched"),
                }
            }
        }
        Ok(Value::Object(preview))
    }

    async fn store_image(
        &self,
        media: &Media,
        image: Fetched,
        preview: &mut Map<String, Value>,
    ) -> Result<()> {
        // Only the header is read: dimensions without decoding the pixels.
        let dimensions = image::ImageReader::new(std::io::Cursor::new(&image.body))
            .with_guessed_format()
            .ok()
            .and_then(|r| r.into_dimensions().ok());
        let size = image.body.len() as u64;
        let content_type = image.content_type.clone();
        let file = media.receive_bytes(image.body).await?;
        let mxc = media.create_local(None, file, Some(content_type.clone()), None)?;
        preview.insert("og:image".into(), json!(mxc));
        preview.insert("og:image:type".into(), json!(content_type));
        preview.insert("matrix:image:size".into(), json!(size));
        if let Some((w, h)) = dimensions {
            preview.insert("og:image:width".into(), json!(w));
            preview.insert("og:image:height".into(), json!(h));
        }
        Ok(())
    }

    /// GETs `url` through the guard; at most `max_size` bytes (a longer HTML page is cut
    /// there, since the head is what matters; a longer image is refused).
    async fn fetch(&self, url: &reqwest::Url, truncate_html: bool) -> Result<Fetched> {
        self.guard.check_url(url).map_err(guard_refused)?;
        let mut response = self
            .client
            .get(url.clone())
            .send()
            .await
            .map_err(fetch_error)?;
        if !response.status().is_success() {
            return Err(Error::new(
                StatusCode::BAD_GATEWAY,
                ErrorKind::Unknown,
                format!("The URL answered {}.", response.status()),
            ));
        }
        let content_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(fetch_error)? {
            body.extend_from_slice(&chunk);
            if body.len() as u64 > self.max_size {
                if truncate_html && content_type.starts_with("text/html") {
                    body.truncate(self.max_size as usize);
                    break;
                }
                return Err(Error::too_large("The previewed content is too large."));
            }
        }
        Ok(Fetched { content_type, body })
    }
}

struct Fetched {
    content_type: String,
    body: Vec<u8>,
}

fn guard_refused(e: GuardError) -> Error {
    Error::forbidden(format!("This URL may not be previewed: {e}"))
}

/// A guard refusal somewhere in reqwest's error chain is 403; anything else (a name that
/// does not resolve, a refused connection) 502, a timeout 504.
fn fetch_error(e: reqwest::Error) -> Error {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(err) = source {
        if let Some(guard) = err.downcast_ref::<GuardError>()
            && matches!(guard, GuardError::Denied(_) | GuardError::AllDenied(_))
        {
            return Error::forbidden(format!("This URL may not be previewed: {guard}"));
        }
        source = err.source();
    }
    if e.is_timeout() {
        return Error::new(
            StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Unknown,
            "Fetching the URL timed out.",
        );
    }
    Error::new(
        StatusCode::BAD_GATEWAY,
        ErrorKind::Unknown,
        format!("Could not fetch the URL: {e}"),
    )
}

static META_TAG: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?is)<meta\s[^>]*>").expect("valid regex"));
static ATTRIBUTE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?is)([a-z:_-]+)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>/]+))"#)
        .expect("valid regex")
});
static TITLE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?is)<title[^>]*>(.*?)</title>").expect("valid regex"));

/// Open Graph properties (`<meta property="og:…" content="…">`, also with `name=`) of a page;
/// `og:title` falls back to `<title>`, `og:description` to `<meta name="description">`.
pub fn parse_open_graph(html: &str) -> std::collections::BTreeMap<String, String> {
    let mut og = std::collections::BTreeMap::new();
    let mut description = None;
    for tag in META_TAG.find_iter(html) {
        let mut name = None;
        let mut content = None;
        for attr in ATTRIBUTE.captures_iter(tag.as_str()) {
            let value = attr
                .get(2)
                .or(attr.get(3))
                .or(attr.get(4))
                .map_or("", |m| m.as_str());
            match attr[1].to_ascii_lowercase().as_str() {
                "property" | "name" => name = Some(value.to_ascii_lowercase()),
                "content" => content = Some(decode_entities(value)),
                _ => {}
            }
        }
        let (Some(name), Some(content)) = (name, content) else {
            continue;
        };
        if name.starts_with("og:") {
            // The first of repeated properties (several og:image) is the main one.
            og.entry(name).or_insert(content);
        } else if name == "description" {
            description.get_or_insert(content);
        }
    }
    if !og.contains_key("og:title")
        && let Some(title) = TITLE.captures(html)
    {
        let title = decode_entities(title[1].trim());
        if !title.is_empty() {
            og.insert("og:title".into(), title);
        }
    }
    if let Some(description) = description {
        og.entry("og:description".into()).or_insert(description);
    }
    og
}

/// The HTML character references pages commonly use in attribute values.
fn decode_entities(text: &str) -> String {
    if !text.contains('&') {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('&') {
        out.push_str(&rest[..pos]);
        rest = &rest[pos..];
        let Some(end) = rest[..rest.len().min(12)].find(';') else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..end];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" | "#39" => Some('\''),
            "nbsp" => Some('\u{a0}'),
            _ => entity
                .strip_prefix("#x")
                .or_else(|| entity.strip_prefix("#X"))
                .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_graph_is_parsed() {
        let html = r#"<html><head><title>Plain title</title>
            <meta property="og:title" content="Tom &amp; Jerry">
            <meta content='A "quoted" description' property='og:description' />
            <meta property="og:image" content="/img.png"><meta property="og:image" content="/second.png">
            <meta name="og:image:width" content="48">
            </head></html>"#;
        let og = parse_open_graph(html);
        assert_eq!(og["og:title"], "Tom & Jerry");
        assert_eq!(og["og:description"], "A \"quoted\" description");
        assert_eq!(og["og:image"], "/img.png");
        assert_eq!(og["og:image:width"], "48");
    }

    #[test]
    fn title_and_description_fall_back() {
        let html = r#"<title> Just a page &#8212; x </title><meta name="description" content="d">"#;
        let og = parse_open_graph(html);
        assert_eq!(og["og:title"], "Just a page \u{2014} x");
        assert_eq!(og["og:description"], "d");
    }

    #[test]
    fn entities_decode_safely() {
        assert_eq!(
            decode_entities("a &lt;b&gt; &#x41; & &bogus; &"),
            "a <b> A & &bogus; &"
        );
    }
}
