//! The MQTT payload between edge and sink: NDJSON, one v1 event per line, so a busy edge can pack
//! several visits into one message.
//!
//! `{"v":1,"id":"<uuid v7>","ts":"2022-12-19T14:16:49.9605280Z","referrer":null,"user_agent":"...","ip":"192.168.1.1","edge":"edge-a"}`
//!
//! `referrer` and `user_agent` are `null` when absent or empty, a JSON string when the header was valid
//! UTF-8, and `{"b64":"<standard base64>"}` when it was not, so any byte a client sent arrives intact.
//! `ip` is an address, or `hash-` and 32 hex digits under the edge's `privacy.ip = hash` (see
//! [`crate::visitor_ip`]); older v1 events, addresses only, read as they always did.
//!
//! An edge with a spool adds `"seq":<n>` as the last field: its own sequence number for the event, which
//! only grows, so the sink can recognise a redelivery exactly (see [`append_with_seq`]). The field is
//! optional: events without it (older edges, an edge without a spool, hand-published) stay valid v1.
//! The first event of each batch the edge spools also carries `"seq_floor":<n>` just before it: every
//! number of that edge below it was either confirmed by the sink or will never be sent, so the sink
//! need not wait for it (a spool started afresh, see `store_sink::sequences`).

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::{timestamp, HeaderText, Visit, VisitorIp};

/// The only event version this build reads and writes.
pub const EVENT_VERSION: u64 = 1;

/// Why one line of a message is not a visit.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("unsupported event version {0}")]
    UnsupportedVersion(String),
    #[error("not a v1 visit event: {0}")]
    Invalid(#[from] serde_json::Error),
    /// JSON text is UTF-8; base64 carries header bytes that are not.
    #[error("not a v1 visit event: not UTF-8")]
    NotUtf8,
    /// Told without parsing: a message of a million junk lines costs a byte test per line.
    #[error("not a v1 visit event: not a JSON object")]
    NotAnObject,
}

/// Appends `visit` to `out` as one JSON line, newline included.
pub fn encode_event(visit: &Visit, out: &mut Vec<u8>) {
    let event = EventOut {
        v: EVENT_VERSION,
        id: &visit.id,
        ts: timestamp::to_string(&visit.ts),
        referrer: visit.referrer.as_ref(),
        user_agent: visit.user_agent.as_ref(),
        ip: &visit.ip,
        edge: &visit.edge,
    };
    serde_json::to_writer(&mut *out, &event).expect("a visit always serialises");
    out.push(b'\n');
}

/// The field [`append_with_seq`] puts before the closing brace.
const SEQ_FIELD: &[u8] = b",\"seq\":";
/// The field [`append_with_seq`] puts before the sequence number when asked to.
const SEQ_FLOOR_FIELD: &[u8] = b",\"seq_floor\":";

/// Appends the event `line` (as [`encode_event`] wrote it, newline included) to `out` with
/// `"seq_floor":floor` (when given) and `"seq":seq` as its last fields, replacing those it carried.
pub fn append_with_seq(line: &[u8], seq: u64, floor: Option<u64>, out: &mut Vec<u8>) {
    let line = line.trim_ascii_end();
    // Without the closing brace, and without an earlier sequence number or floor.
    let mut fields = line.strip_suffix(b"}").unwrap_or(line);
    for field in [SEQ_FIELD, SEQ_FLOOR_FIELD] {
        if let Some(start) = trailing_number_field(fields, field) {
            fields = &fields[..start];
        }
    }
    out.extend_from_slice(fields);
    let mut number = itoa::Buffer::new();
    if let Some(floor) = floor {
        out.extend_from_slice(SEQ_FLOOR_FIELD);
        out.extend_from_slice(number.format(floor).as_bytes());
    }
    out.extend_from_slice(SEQ_FIELD);
    out.extend_from_slice(number.format(seq).as_bytes());
    out.extend_from_slice(b"}\n");
}

/// Appends the events of `lines` (a batch of them, one per line) to `out` numbered from `first` on,
/// the first also carrying `"seq_floor":floor` (as an edge spools them); returns how many there were.
pub fn append_numbered(lines: &[u8], first: u64, floor: u64, out: &mut Vec<u8>) -> u64 {
    let mut seq = first;
    for line in self::lines(lines) {
        append_with_seq(line, seq, (seq == first).then_some(floor), out);
        seq += 1;
    }
    seq - first
}

/// The sequence number [`append_with_seq`] gave the event `line`, read from its end without parsing it.
pub fn trailing_seq(line: &[u8]) -> Option<u64> {
    let inner = line.trim_ascii_end().strip_suffix(b"}")?;
    let digits = &inner[trailing_number_field(inner, SEQ_FIELD)? + SEQ_FIELD.len()..];
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Where `<field><digits>` ends `inner` (an event line without its closing brace), if it does. A
/// string value cannot end that way: its quotes would be escaped.
fn trailing_number_field(inner: &[u8], field: &[u8]) -> Option<usize> {
    let digits = inner
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let before_digits = &inner[..inner.len() - digits];
    (digits > 0 && before_digits.ends_with(field)).then(|| before_digits.len() - field.len())
}

/// A decoded event: the visit, and the sending edge's sequence number for it when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub visit: Visit,
    pub seq: Option<u64>,
    /// Every number of the sending edge below it is confirmed or will never be sent.
    pub seq_floor: Option<u64>,
}

/// Splits a message into its event lines (blank lines are skipped) and decodes each one on its own,
/// so one bad line does not cost the good ones.
pub fn decode_message(payload: &[u8]) -> impl Iterator<Item = (&[u8], Result<Event, EventError>)> {
    lines(payload)
        .filter(|line| !line.trim_ascii().is_empty())
        .map(|line| (line, decode_event(line)))
}

/// The lines of an NDJSON payload, without their newline (found with `memchr`, many bytes at a
/// time); a last line without a newline is one too, nothing after a final newline is.
pub fn lines(payload: &[u8]) -> impl Iterator<Item = &[u8]> {
    let unterminated = !payload.is_empty() && !payload.ends_with(b"\n");
    let ends = memchr::memchr_iter(b'\n', payload).chain(unterminated.then_some(payload.len()));
    ends.scan(0, |start, end| {
        let line = &payload[*start..end];
        *start = end + 1;
        Some(line)
    })
}

/// Decodes one JSON event; the visit's IP is canonical (IPv4-mapped IPv6 becomes IPv4).
pub fn decode_event(line: &[u8]) -> Result<Event, EventError> {
    if line.trim_ascii_start().first() != Some(&b'{') {
        return Err(EventError::NotAnObject);
    }
    // One check of the whole line, then serde_json's `str` reader, which takes each string field as
    // it is: `from_slice` would check every string field again (a tenth of decoding's instructions).
    let Ok(text) = std::str::from_utf8(line) else {
        return Err(EventError::NotUtf8);
    };
    match serde_json::from_str::<EventIn>(text) {
        Ok(event) if event.v == EVENT_VERSION => Ok(Event {
            visit: Visit {
                id: event.id,
                ts: event.ts,
                referrer: event.referrer.and_then(WireHeader::into_header),
                user_agent: event.user_agent.and_then(WireHeader::into_header),
                ip: event.ip,
                edge: event.edge,
            },
            seq: event.seq,
            seq_floor: event.seq_floor,
        }),
        Ok(event) => Err(EventError::UnsupportedVersion(event.v.to_string())),
        Err(err) => Err(version_error(text).unwrap_or(EventError::Invalid(err))),
    }
}

/// A newer (or nonsense) version usually fails v1's field checks first; name the version instead.
fn version_error(line: &str) -> Option<EventError> {
    #[derive(Deserialize)]
    struct VersionOnly {
        v: Option<serde_json::Value>,
    }
    let v = serde_json::from_str::<VersionOnly>(line).ok()?.v?;
    (v != EVENT_VERSION).then(|| EventError::UnsupportedVersion(v.to_string()))
}

#[derive(Serialize)]
struct EventOut<'a> {
    v: u64,
    id: &'a Uuid,
    ts: String,
    referrer: Option<&'a HeaderText>,
    user_agent: Option<&'a HeaderText>,
    ip: &'a VisitorIp,
    edge: &'a str,
}

#[derive(Deserialize)]
struct EventIn {
    v: u64,
    id: Uuid,
    #[serde(deserialize_with = "deserialize_ts")]
    ts: DateTime<Utc>,
    #[serde(default)]
    referrer: Option<WireHeader>,
    #[serde(default)]
    user_agent: Option<WireHeader>,
    ip: VisitorIp,
    edge: String,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    seq_floor: Option<u64>,
}

impl Serialize for HeaderText {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Base64 {
            b64: String,
        }
        match std::str::from_utf8(self.as_bytes()) {
            Ok(text) => serializer.serialize_str(text),
            Err(_) => Base64 {
                b64: BASE64.encode(self.as_bytes()),
            }
            .serialize(serializer),
        }
    }
}

/// A header value as it arrives: a JSON string, or `{"b64":"..."}` for bytes that are not UTF-8.
enum WireHeader {
    Text(String),
    Bytes(Vec<u8>),
}

impl WireHeader {
    fn into_header(self) -> Option<HeaderText> {
        match self {
            WireHeader::Text(text) => HeaderText::new(text),
            WireHeader::Bytes(bytes) => HeaderText::new(bytes),
        }
    }
}

/// Told apart by the JSON value's kind, not with `#[serde(untagged)]`, which buffers every value and
/// tries each variant in turn (15% of decoding's instructions for the two headers).
impl<'de> Deserialize<'de> for WireHeader {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct WireHeaderVisitor;

        impl<'de> Visitor<'de> for WireHeaderVisitor {
            type Value = WireHeader;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"a string or {"b64":"<base64>"}"#)
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<WireHeader, E> {
                Ok(WireHeader::Text(text.to_owned()))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<WireHeader, A::Error> {
                #[derive(Deserialize)]
                struct Base64 {
                    #[serde(deserialize_with = "deserialize_base64")]
                    b64: Vec<u8>,
                }
                let Base64 { b64 } = Base64::deserialize(MapAccessDeserializer::new(map))?;
                Ok(WireHeader::Bytes(b64))
            }
        }

        deserializer.deserialize_any(WireHeaderVisitor)
    }
}

fn deserialize_base64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    deserializer.deserialize_str(StrVisitor("base64", |b64: &str| {
        BASE64.decode(b64).map_err(|err| err.to_string())
    }))
}

fn deserialize_ts<'de, D: Deserializer<'de>>(deserializer: D) -> Result<DateTime<Utc>, D::Error> {
    deserializer.deserialize_str(StrVisitor("an RFC 3339 ts", |text: &str| {
        DateTime::parse_from_rfc3339(text)
            .map(|ts| ts.with_timezone(&Utc))
            .map_err(|err| format!("invalid ts {text:?}: {err}"))
    }))
}

/// Parses a string field where it lies (in the line, or in serde_json's scratch buffer when it held
/// escapes): `Cow<str>` would allocate for each, since serde only borrows when told to.
struct StrVisitor<F>(&'static str, F);

impl<T, F: FnOnce(&str) -> Result<T, String>> Visitor<'_> for StrVisitor<F> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        (self.1)(text).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn visit(referrer: Option<&[u8]>, user_agent: Option<&[u8]>) -> Visit {
        Visit::new(
            Utc::now(),
            referrer.and_then(HeaderText::new),
            user_agent.and_then(HeaderText::new),
            "192.168.1.1".parse().unwrap(),
            "edge-a",
        )
    }

    fn encoded(visit: &Visit) -> Vec<u8> {
        let mut out = Vec::new();
        encode_event(visit, &mut out);
        out
    }

    #[test]
    fn event_round_trips_with_the_documented_shape() {
        let original = visit(Some(b"https://google.com"), None);
        let line = encoded(&original);
        let json: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(json["v"], 1);
        assert_eq!(json["referrer"], "https://google.com");
        assert_eq!(json["user_agent"], serde_json::Value::Null);
        assert_eq!(json["ip"], "192.168.1.1");
        assert_eq!(json["edge"], "edge-a");
        assert_eq!(
            json["ts"].as_str().unwrap().len(),
            "2022-12-19T14:16:49.9605280Z".len()
        );
        assert_eq!(line.last(), Some(&b'\n'));

        let decoded = decode_event(line.trim_ascii_end()).unwrap();
        assert_eq!(decoded.seq, None);
        let decoded = decoded.visit;
        let cut_to_100ns = original.ts.timestamp_nanos_opt().unwrap() / 100 * 100;
        assert_eq!(decoded.ts.timestamp_nanos_opt().unwrap(), cut_to_100ns);
        assert_eq!(
            Visit {
                ts: original.ts,
                ..decoded
            },
            original
        );
    }

    #[test]
    fn bytes_that_are_not_utf8_travel_as_base64() {
        let ua: &[u8] = b"Bot \xff\xfe|\n";
        let original = visit(None, Some(ua));
        let line = encoded(&original);
        let json: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(json["user_agent"]["b64"], BASE64.encode(ua));
        let decoded = decode_event(&line).unwrap().visit;
        assert_eq!(decoded.user_agent.unwrap().as_bytes(), ua);
    }

    #[test]
    fn fields_with_escapes_decode_like_plain_ones_and_other_shapes_are_errors() {
        let line =
            String::from_utf8(encoded(&visit(Some(b"https://a.example/"), Some(b"UA")))).unwrap();
        let plain = decode_event(line.as_bytes()).unwrap();
        // The same text with JSON escapes: parsed from serde_json's scratch buffer, not the line.
        let escaped = line
            .replacen("\"ts\":\"2", "\"ts\":\"\\u0032", 1)
            .replace("https://a.example/", "https:\\/\\/a.example\\/")
            .replace("\"UA\"", "{\"b64\":\"VUE=\",\"other\":1}");
        assert_ne!(escaped, line);
        assert_eq!(decode_event(escaped.as_bytes()).unwrap(), plain);
        for (from, to) in [
            ("\"UA\"", "42"),
            ("\"UA\"", "{\"b64\":\"not base64!\"}"),
            ("\"UA\"", "{\"text\":\"UA\"}"),
        ] {
            let wrong = line.replace(from, to);
            assert!(
                matches!(decode_event(wrong.as_bytes()), Err(EventError::Invalid(_))),
                "{wrong}"
            );
        }
        let mut not_utf8 = line.clone().into_bytes();
        not_utf8.splice(10..10, [0xff]);
        assert!(matches!(decode_event(&not_utf8), Err(EventError::NotUtf8)));
    }

    #[test]
    fn a_batch_is_numbered_in_order_with_the_floor_on_its_first_event() {
        let mut out = Vec::new();
        assert_eq!(
            append_numbered(b"{\"v\":1}\n{\"v\":1}\n", 5, 3, &mut out),
            2
        );
        assert_eq!(
            out,
            b"{\"v\":1,\"seq_floor\":3,\"seq\":5}\n{\"v\":1,\"seq\":6}\n"
        );
        assert_eq!(append_numbered(b"", 7, 3, &mut out), 0);
    }

    #[test]
    fn lines_are_split_at_newlines_and_a_last_one_may_lack_it() {
        fn split(payload: &[u8]) -> Vec<&[u8]> {
            lines(payload).collect()
        }
        assert_eq!(split(b"a\n\nb\n"), [&b"a"[..], b"", b"b"]);
        assert_eq!(split(b"a\nb"), [&b"a"[..], b"b"]);
        assert!(split(b"").is_empty());
        assert_eq!(split(b"\n"), [&b""[..]]);
    }

    #[test]
    fn several_events_per_message_and_bad_lines_fail_alone() {
        let mut payload = encoded(&visit(None, None));
        payload.extend_from_slice(b"{not json}\n\n");
        payload.extend(encoded(&visit(Some(b"r"), None)));
        let results: Vec<_> = decode_message(&payload).collect();
        assert_eq!(results.len(), 3);
        assert!(results[0].1.is_ok());
        assert_eq!(results[1].0, b"{not json}");
        assert!(matches!(results[1].1, Err(EventError::Invalid(_))));
        assert!(results[2].1.is_ok());
    }

    #[test]
    fn unknown_version_is_named() {
        let line = br#"{"v":2,"something":"else"}"#;
        let err = decode_event(line).unwrap_err();
        assert_eq!(err.to_string(), "unsupported event version 2");
        let v2_shaped_like_v1 = String::from_utf8(encoded(&visit(None, None)))
            .unwrap()
            .replace(r#""v":1"#, r#""v":7"#);
        assert!(matches!(
            decode_event(v2_shaped_like_v1.as_bytes()),
            Err(EventError::UnsupportedVersion(v)) if v == "7"
        ));
    }

    #[test]
    fn an_event_without_a_valid_ip_is_not_a_visit() {
        let id = Uuid::now_v7();
        let missing =
            format!(r#"{{"v":1,"id":"{id}","ts":"2022-12-19T14:16:49.9605280Z","edge":"e"}}"#);
        let err = decode_event(missing.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("missing field `ip`"), "{err}");
        let bad = missing.replace(r#""edge""#, r#""ip":"999.1.1.1","edge""#);
        assert!(decode_event(bad.as_bytes()).is_err());
        let ok = missing.replace(r#""edge""#, r#""ip":"::ffff:8.8.8.8","edge""#);
        assert_eq!(
            decode_event(ok.as_bytes()).unwrap().visit.ip.to_string(),
            "8.8.8.8"
        );
        let forged = missing.replace(r#""edge""#, r#""ip":"hash-1|2.2.2.2\n","edge""#);
        assert!(decode_event(forged.as_bytes()).is_err());
    }

    #[test]
    fn a_hashed_ip_travels_as_written() {
        let hash = "hash-00112233445566778899aabbccddeeff";
        let mut original = visit(None, None);
        original.ip = hash.parse().unwrap();
        let line = encoded(&original);
        let json: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(json["ip"], hash);
        assert_eq!(decode_event(&line).unwrap().visit.ip, original.ip);
    }

    #[test]
    fn empty_strings_are_absent_and_bad_base64_is_rejected() {
        let id = Uuid::now_v7();
        let base = format!(
            r#"{{"v":1,"id":"{id}","ts":"2022-12-19T14:16:49Z","ip":"8.8.8.8","edge":"e","referrer":"""#
        );
        let visit = decode_event(format!(r#"{base}}}"#).as_bytes())
            .unwrap()
            .visit;
        assert_eq!(visit.referrer, None);
        let bad = base.replace(r#""referrer":"""#, r#""referrer":{"b64":"%%%"}"#);
        assert!(decode_event(format!("{bad}}}").as_bytes()).is_err());
    }

    #[test]
    fn a_header_is_a_string_or_base64_bytes_and_nothing_else() {
        let id = Uuid::now_v7();
        let with_referrer = |referrer: &str| {
            decode_event(
                format!(
                    r#"{{"v":1,"id":"{id}","ts":"2022-12-19T14:16:49Z","ip":"8.8.8.8","edge":"e","referrer":{referrer}}}"#
                )
                .as_bytes(),
            )
        };
        let bytes = with_referrer(r#"{"later":1,"b64":"/w=="}"#).unwrap();
        assert_eq!(bytes.visit.referrer.unwrap().as_bytes(), b"\xff");
        assert_eq!(with_referrer("null").unwrap().visit.referrer, None);
        for bad in ["42", "[]", r#"{"b46":"/w=="}"#, r#"{"b64":7}"#] {
            let err = with_referrer(bad).unwrap_err().to_string();
            assert!(err.contains("not a v1 visit event"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_sequence_number_is_added_replaced_and_read_back() {
        let original = visit(None, Some(br#"ends like a field ,"seq":5}"#));
        let line = encoded(&original);
        assert_eq!(
            trailing_seq(&line),
            None,
            "a string cannot pass for the field"
        );
        let mut once = Vec::new();
        append_with_seq(&line, 41, None, &mut once);
        assert!(
            once.ends_with(b",\"seq\":41}\n"),
            "{}",
            String::from_utf8_lossy(&once)
        );
        assert_eq!(trailing_seq(&once), Some(41));
        assert_eq!(decode_event(&once).unwrap().seq_floor, None);
        let mut again = Vec::new();
        append_with_seq(&once, 18446744073709551615, Some(7), &mut again);
        assert_eq!(trailing_seq(&again), Some(u64::MAX));
        let decoded = decode_event(&again).unwrap();
        assert_eq!(decoded.seq, Some(u64::MAX));
        assert_eq!(decoded.seq_floor, Some(7));
        assert_eq!(decoded.visit.user_agent, original.user_agent);
        // Numbered again: both fields replaced, none repeated (a JSON object with one twice is refused).
        let mut thrice = Vec::new();
        append_with_seq(&again, 9, Some(8), &mut thrice);
        let decoded = decode_event(&thrice).unwrap();
        assert_eq!((decoded.seq, decoded.seq_floor), (Some(9), Some(8)));
        let mut without_floor = Vec::new();
        append_with_seq(&thrice, 10, None, &mut without_floor);
        assert_eq!(decode_event(&without_floor).unwrap().seq_floor, None);
    }
}
