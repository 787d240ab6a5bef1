//! A fixed workload for instruction counts of the sink's per-visit work (decode, dedup, format):
//! 100,000 visits, 40 per message, with the benchmark's Referer and User-Agent, fed through
//! [`Storage::add_message`] into a temporary log (no fsync). Wall-clock timings on a shared VM swing
//! by tens of percent; callgrind's counts do not:
//!
//! ```sh
//! cargo build --release -p store-sink --example format_visits
//! valgrind --tool=callgrind --collect-atstart=no \
//!   --toggle-collect=store_sink::storage::Storage::add_message target/release/examples/format_visits
//! ```
//! `I refs` divided by 100,000 is the count per visit (`bench/RESULTS.md`). With `SEQ=1` the events
//! carry an edge's sequence numbers, in order, each message's first one its `seq_floor`, as a
//! spooling edge sends them.

use chrono::Utc;
use common::{wire, HeaderText, Visit};
use store_sink::configuration::StorageSettings;
use store_sink::storage::Storage;

const MESSAGES: usize = 2_500;
const VISITS_PER_MESSAGE: usize = 40;
const MESSAGES_PER_FLUSH: usize = 100;

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let settings = StorageSettings {
        path: dir.path().join("visits.log"),
        fsync: false,
        ..StorageSettings::default()
    };
    let mut storage = Storage::open(&settings)?;
    let numbered = std::env::var("SEQ").is_ok_and(|value| value == "1");
    let messages: Vec<Vec<u8>> = (0..MESSAGES)
        .map(|n| message(numbered.then_some((n * VISITS_PER_MESSAGE) as u64 + 1)))
        .collect();
    let mut written = 0;
    for batch in messages.chunks(MESSAGES_PER_FLUSH) {
        for payload in batch {
            written += storage
                .add_message("tracker/visits/edge/bench", payload)
                .written;
        }
        storage.flush()?;
    }
    println!("{written} visits formatted");
    Ok(())
}

/// A message of visits, numbered from `first_seq` when given.
fn message(first_seq: Option<u64>) -> Vec<u8> {
    let mut payload = Vec::new();
    for n in 0..VISITS_PER_MESSAGE {
        let visit = Visit::new(
            Utc::now(),
            HeaderText::new("https://blog.example/articles/hello.html"),
            HeaderText::new("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0 Safari/537.36"),
            "127.0.0.1".parse().expect("a valid address"),
            "edge/bench",
        );
        let mut line = Vec::new();
        wire::encode_event(&visit, &mut line);
        match first_seq {
            Some(first) => {
                let floor = (n == 0).then_some(first);
                wire::append_with_seq(&line, first + n as u64, floor, &mut payload);
            }
            None => payload.extend_from_slice(&line),
        }
    }
    payload
}
