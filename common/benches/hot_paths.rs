//! Micro-benchmarks of the pure functions every visit goes through: the edge encodes the event and
//! numbers it into its spool, the sink decodes it and writes the log line (escaping the header values). `cargo bench -p common`;
//! figures in bench/RESULTS.md.

use std::hint::black_box;

use chrono::TimeZone;
use common::line::{escape_into, write_line};
use common::visit::{HeaderText, Visit};
use common::wire::{append_numbered, decode_event, encode_event};
use criterion::{criterion_group, criterion_main, Criterion};

const UA: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0 Safari/537.36";
const REFERRER: &str = "https://blog.example/articles/hello.html?utm_source=news&utm_medium=email";
/// What a hostile visitor might send: separators, line breaks, control and non-UTF-8 bytes.
const HOSTILE: &[u8] = b"a|b\\c\nd\r\x1b[31m\xff\xfe e\xe2\x80\xa8f|||\\\\ null";

fn typical_visit() -> Visit {
    Visit::new(
        chrono::Utc
            .with_ymd_and_hms(2022, 12, 19, 14, 16, 49)
            .unwrap()
            + chrono::Duration::nanoseconds(960_528_099),
        HeaderText::new(REFERRER),
        HeaderText::new(UA),
        "192.168.1.1".parse().unwrap(),
        "edge/bench",
    )
}

fn hot_paths(c: &mut Criterion) {
    let visit = typical_visit();
    let mut out = Vec::with_capacity(1024);
    c.bench_function("write_line (typical visit)", |b| {
        b.iter(|| {
            out.clear();
            write_line(black_box(&visit), 4096, &mut out);
        })
    });
    c.bench_function("escape_into (typical user-agent)", |b| {
        b.iter(|| {
            out.clear();
            escape_into(black_box(UA.as_bytes()), &mut out);
        })
    });
    c.bench_function("escape_into (hostile value)", |b| {
        b.iter(|| {
            out.clear();
            escape_into(black_box(HOSTILE), &mut out);
        })
    });
    c.bench_function("encode_event (typical visit)", |b| {
        b.iter(|| {
            out.clear();
            encode_event(black_box(&visit), &mut out);
        })
    });
    let mut event = Vec::new();
    encode_event(&visit, &mut event);
    c.bench_function("decode_event (typical visit)", |b| {
        b.iter(|| decode_event(black_box(&event[..event.len() - 1])).unwrap())
    });
    let batch = event.repeat(40);
    let mut numbered = Vec::with_capacity(batch.len() * 2);
    c.bench_function(
        "append_numbered (40 typical visits, as the edge spools them)",
        |b| {
            b.iter(|| {
                numbered.clear();
                append_numbered(black_box(&batch), 1_000_000, 999_990, &mut numbered)
            })
        },
    );
}

criterion_group!(benches, hot_paths);
criterion_main!(benches);
