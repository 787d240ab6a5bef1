//! What `privacy.*` costs per visit at the edge: the address (`full`, `truncate`, `hash` with its
//! daily key) and the referrer (`strip_query`, `origin`) of a typical visit, through the same
//! `Privacy::rules` the route uses. `cargo bench -p pixel-edge --bench privacy`; figures in
//! bench/RESULTS.md.

use std::hint::black_box;
use std::net::IpAddr;

use chrono::Utc;
use criterion::{criterion_group, criterion_main, Criterion};
use pixel_edge::configuration::{IpMode, PrivacySettings, ReferrerMode};
use pixel_edge::privacy::Privacy;
use warp::http::HeaderMap;

const REFERRER: &[u8] =
    b"https://blog.example/articles/hello.html?utm_source=news&utm_medium=email";

fn privacy(ip: IpMode, referrer: ReferrerMode) -> Privacy {
    Privacy::new(&PrivacySettings {
        ip,
        referrer,
        ..PrivacySettings::default()
    })
    .expect("privacy settings without a key file")
}

fn per_visit(c: &mut Criterion) {
    let headers = HeaderMap::new();
    let ts = Utc::now();
    let v4: IpAddr = "192.0.2.1".parse().unwrap();
    let v6: IpAddr = "2001:db8:abcd:12::1".parse().unwrap();
    for (name, mode) in [
        ("full", IpMode::Full),
        ("truncate", IpMode::Truncate),
        ("hash", IpMode::Hash),
    ] {
        let privacy = privacy(mode, ReferrerMode::Full);
        for (family, ip) in [("IPv4", v4), ("IPv6", v6)] {
            c.bench_function(&format!("ip = {name} ({family})"), |b| {
                b.iter(|| {
                    let rules = privacy.rules(black_box(&headers)).unwrap();
                    rules.ip(black_box(ip), ts)
                })
            });
        }
    }
    for (name, mode) in [
        ("full", ReferrerMode::Full),
        ("strip_query", ReferrerMode::StripQuery),
        ("origin", ReferrerMode::Origin),
    ] {
        let privacy = privacy(IpMode::Full, mode);
        c.bench_function(&format!("referrer = {name}"), |b| {
            b.iter(|| {
                let rules = privacy.rules(black_box(&headers)).unwrap();
                rules.referrer(black_box(REFERRER)).map(|kept| kept.len())
            })
        });
    }
}

criterion_group!(benches, per_visit);
criterion_main!(benches);
