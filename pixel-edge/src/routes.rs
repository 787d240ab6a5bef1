//! The HTTP surface: `GET /track` records a visit and returns the pixel; `HEAD /track` returns the
//! same headers and records nothing; other methods on `/track` get 405, other paths 404.

use std::net::SocketAddr;
use std::sync::Arc;

use chrono::Utc;
use common::{wire, HeaderText, Visit};
use warp::http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use warp::Filter;

use crate::queue::VisitQueue;

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

/// All routes of the edge.
pub fn routes(
    queue: VisitQueue,
    edge_id: Arc<str>,
) -> impl Filter<Extract = (Response<&'static [u8]>,), Error = warp::Rejection> + Clone {
    warp::path!("track")
        .and(warp::method())
        .and(warp::header::headers_cloned())
        .and(warp::addr::remote())
        .map(
            move |method: Method, headers: HeaderMap, peer: Option<SocketAddr>| match method {
                Method::GET => {
                    record(&headers, peer, &queue, &edge_id);
                    pixel()
                }
                Method::HEAD => pixel(),
                _ => method_not_allowed(),
            },
        )
}

fn record(headers: &HeaderMap, peer: Option<SocketAddr>, queue: &VisitQueue, edge_id: &str) {
    let ts = Utc::now();
    // Assumption: no proxy sits in front of the edge (task constraint 2), so X-Forwarded-For is never trusted.
    let Some(peer) = peer else {
        tracing::warn!("request without a peer address is not a visit");
        return;
    };
    let header_text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| HeaderText::new(v.as_bytes()))
    };
    let visit = Visit::new(
        ts,
        header_text(header::REFERER),
        header_text(header::USER_AGENT),
        peer.ip(),
        edge_id,
    );
    let mut line = Vec::with_capacity(256);
    wire::encode_event(&visit, &mut line);
    queue.push(line);
}

fn pixel() -> Response<&'static [u8]> {
    Response::builder()
        .header(header::CONTENT_TYPE, "image/gif")
        .header(
            header::CACHE_CONTROL,
            "no-store, no-cache, must-revalidate, max-age=0",
        )
        .header(header::PRAGMA, "no-cache")
        .header(header::EXPIRES, "0")
        .body(&PIXEL_GIF[..])
        .expect("static headers are valid")
}

fn method_not_allowed() -> Response<&'static [u8]> {
    Response::builder()
        .status(StatusCode::METHOD_NOT_ALLOWED)
        .header(header::ALLOW, "GET, HEAD")
        .body(&b""[..])
        .expect("static headers are valid")
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
