//! The pixel's HTTP surface: `GET /track` records a visit and returns the pixel; `HEAD /track` returns
//! the same headers and records nothing; other methods on `/track` get 405. Everything else is 404:
//! `/healthz`, `/readyz` (broker connected, or room left to hold visits) and `/metrics` are on the
//! admin listener ([`common::admin`]), never on the pixel's ports.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chrono::Utc;
use common::admin::Health;
use common::{line, wire, HeaderText, Visit};
use metrics::Counter;
use warp::filters::BoxedFilter;
use warp::http::{header, HeaderMap, HeaderValue, Method, Response as HttpResponse, StatusCode};
use warp::reply::{Reply, Response};
use warp::Filter;

use crate::forwarded::TrustedProxies;
use crate::privacy::{Privacy, Rules};
use crate::queue::VisitQueue;
use crate::server::Peer;

/// The classic 43-byte transparent 1x1 GIF89a: a 2-colour global table and a graphic control
/// extension whose transparency flag makes colour 0, the only pixel, transparent.
pub const PIXEL_GIF: [u8; 43] = [
    b'G', b'I', b'F', b'8', b'9', b'a', // header
    0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, // 1x1, global colour table of 2 entries
    0x00, 0x00, 0x00, 0xff, 0xff, 0xff, // colours 0 and 1
    0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00,
    0x00, // graphic control extension: transparent index 0
    0x2c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, // image descriptor
    0x02, 0x02, 0x44, 0x01, 0x00, // LZW: clear, 0, end
    0x3b, // trailer
];

/// What the routes share with the rest of the edge.
pub struct Tracker {
    pub queue: VisitQueue,
    pub edge_id: String,
    /// Referrer and user-agent are cut to this many bytes before they are queued.
    pub max_field_bytes: usize,
    /// Whose `X-Forwarded-For`/`Forwarded` names the visitor (`http.trusted_proxies`).
    pub trusted_proxies: TrustedProxies,
    /// What is kept of each visit (`privacy.*`).
    pub privacy: Privacy,
    /// Set by the publisher while it has a broker connection.
    pub broker_connected: Arc<AtomicBool>,
    pub requests: RequestCounters,
}

/// `tracker_edge_requests_total` by outcome, registered once: looking a counter up by name and
/// labels on every request cost more than the rest of the bookkeeping.
pub struct RequestCounters {
    visit: Counter,
    /// GETs not recorded because of an opt-out signal (`privacy.opt_out = skip`).
    opted_out: Counter,
    head: Counter,
    method_not_allowed: Counter,
    not_found: Counter,
}

impl RequestCounters {
    /// Call after the metrics recorder is installed.
    pub fn register() -> Self {
        let outcome = |outcome: &'static str| metrics::counter!("tracker_edge_requests_total", "outcome" => outcome);
        Self {
            visit: outcome("visit"),
            opted_out: outcome("opted_out"),
            head: outcome("head"),
            method_not_allowed: outcome("method_not_allowed"),
            not_found: outcome("not_found"),
        }
    }
}

/// The routes of the pixel's ports.
pub fn routes(tracker: Arc<Tracker>) -> BoxedFilter<(Response,)> {
    let with_tracker = warp::any().map(move || tracker.clone());
    let track = warp::path!("track")
        .and(warp::method())
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<Peer>())
        .and(with_tracker.clone())
        .map(
            |method: Method, headers: HeaderMap, peer: Option<Peer>, tracker: Arc<Tracker>| {
                match method {
                    Method::GET => {
                        match tracker.privacy.rules(&headers) {
                            Some(rules) => {
                                tracker.requests.visit.increment(1);
                                tracker.record(&headers, peer, rules);
                            }
                            // An honoured opt-out signal under `privacy.opt_out = skip`.
                            None => tracker.requests.opted_out.increment(1),
                        }
                        pixel()
                    }
                    Method::HEAD => {
                        tracker.requests.head.increment(1);
                        pixel()
                    }
                    _ => {
                        tracker.requests.method_not_allowed.increment(1);
                        method_not_allowed()
                    }
                }
            },
        );
    let not_found = with_tracker.map(|tracker: Arc<Tracker>| {
        tracker.requests.not_found.increment(1);
        StatusCode::NOT_FOUND.into_response()
    });
    track.or(not_found).unify().boxed()
}

impl Tracker {
    fn record(&self, headers: &HeaderMap, peer: Option<Peer>, rules: Rules<'_>) {
        let ts = Utc::now();
        let Some(peer) = peer else {
            tracing::warn!("request without a peer address is not a visit");
            return;
        };
        let capped = |value: &[u8]| HeaderText::new(line::truncate(value, self.max_field_bytes));
        let header = |name| headers.get(name).map(HeaderValue::as_bytes);
        let referrer = header(header::REFERER).and_then(|value| rules.referrer(value));
        let visit = Visit::new(
            ts,
            referrer.and_then(|value| capped(&value)),
            header(header::USER_AGENT).and_then(capped),
            // Privacy applies to the final address, after PROXY protocol and X-Forwarded-For.
            rules.ip(self.visitor_address(peer, headers), ts),
            &self.edge_id,
        );
        let mut encoded = Vec::with_capacity(256);
        wire::encode_event(&visit, &mut encoded);
        self.queue.push(encoded);
    }

    /// The one place that decides whose address a visit records: the connection's client (the TCP
    /// peer, or the source its PROXY header named), or, when that client is a trusted proxy, the
    /// right-most untrusted address of the forwarded header.
    pub fn visitor_address(&self, peer: Peer, headers: &HeaderMap) -> IpAddr {
        self.trusted_proxies.visitor(peer.0.ip(), headers)
    }
}

impl Health for Tracker {
    /// Ready while the broker is connected, or while there is still room to hold visits for it.
    fn readiness(&self) -> Result<(), &'static str> {
        let connected = self.broker_connected.load(Ordering::Relaxed);
        match connected || self.queue.has_room() {
            true => Ok(()),
            false => Err("broker away and the hold is full"),
        }
    }

    fn before_scrape(&self) {
        metrics::gauge!("tracker_edge_queue_depth").set(self.queue.depth() as f64);
        metrics::gauge!("tracker_edge_queue_bytes").set(self.queue.bytes() as f64);
    }
}

/// The GIF with headers that keep every cache from answering in the edge's place. Static values:
/// nothing is parsed or validated per request.
fn pixel() -> Response {
    let mut response = HttpResponse::new(&PIXEL_GIF[..]).into_response();
    let headers = response.headers_mut();
    headers.reserve(4);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/gif"));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache, must-revalidate, max-age=0"),
    );
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers.insert(header::EXPIRES, HeaderValue::from_static("0"));
    response
}

fn method_not_allowed() -> Response {
    HttpResponse::builder()
        .status(StatusCode::METHOD_NOT_ALLOWED)
        .header(header::ALLOW, "GET, HEAD")
        .body(&b""[..])
        .expect("static headers are valid")
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pixel_is_a_transparent_1x1_gif() {
        let mut options = gif::DecodeOptions::new();
        options.set_color_output(gif::ColorOutput::RGBA);
        let mut decoder = options.read_info(&PIXEL_GIF[..]).unwrap();
        assert_eq!((decoder.width(), decoder.height()), (1, 1));
        let frame = decoder.read_next_frame().unwrap().unwrap();
        assert_eq!(frame.transparent, Some(0));
        assert_eq!(frame.buffer.len(), 4);
        assert_eq!(frame.buffer[3], 0, "alpha of the only pixel");
    }
}
