//! Orphaned spools. With the default layout every edge's spool is `spool/{edge.id}` (ids may hold
//! `/`, so spools can be nested), and an edge gone for good — a replica scaled away, a container
//! recreated under a new host name — whose drain could not finish leaves its spool there under an id
//! no later edge takes. So an edge looks under `spool/` at start-up, then every [`SCAN_EVERY`] (or
//! `edge.orphan_after_secs`, if shorter), for spools that no process holds (`flock`, never waiting;
//! it works across the containers of one host) and that were untouched for `edge.orphan_after_secs`,
//! and adopts them one at a time: it takes the lock and delivers the spool under the **orphan's own
//! edge id** (its topic, its receipt, a connection of its own: see `Settings::adopting`) with a
//! publisher of its own, which ends once the sink has confirmed everything and removes the directory.
//! A spool with nothing unconfirmed (what an edge that stopped cleanly leaves: its numbering, kept for
//! a restart in place) is removed at once.
//! On shutdown an adoption drains like the edge's own publisher, then stops; what is left stays for
//! the next adopter.
//!
//! The edge's own spool's lock file is touched every [`HEARTBEAT`] (and when it stops, see
//! `Spool::close`), so that a spool is "untouched" only once its edge is gone: an edge restarted in
//! place is back long before `edge.orphan_after_secs`. Should an adopter hold a spool when an edge of
//! its id starts, that edge refuses to start (see `Spool::open`) and compose restarts it until the
//! adopter is done.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::blocking::on_blocking_pool;
use tokio::time::{interval, sleep_until, Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use walkdir::WalkDir;

use crate::configuration::Settings;
use crate::publisher::Publisher;
use crate::spool::{self, Spool};

/// How often the spool root is searched for orphans (unless `edge.orphan_after_secs` is shorter).
pub const SCAN_EVERY: Duration = Duration::from_secs(30);
/// How often the edge's own spool is marked as in use.
pub const HEARTBEAT: Duration = Duration::from_secs(30);

/// The task that keeps the edge's own spool marked as in use and, with `edge.adopt_orphaned_spools`,
/// adopts orphaned spools.
pub struct Orphans {
    settings: Settings,
    /// Where every edge's spool is (`spool`).
    root: PathBuf,
}

/// A spool found under the root, of edge `id`.
struct Orphan {
    id: String,
    dir: PathBuf,
}

impl Orphans {
    /// For an edge whose spool is in the default layout under `root`.
    pub fn new(settings: &Settings, root: PathBuf) -> Self {
        metrics::gauge!("tracker_edge_orphaned_spools").set(0.0);
        metrics::counter!("tracker_edge_orphaned_spools_adopted_total").increment(0);
        Self {
            settings: settings.clone(),
            root,
        }
    }

    pub async fn run(self, stop: CancellationToken) {
        let mut heartbeat = interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let adopt = self.settings.edge.adopt_orphaned_spools;
        let scan_every = SCAN_EVERY.min(self.settings.orphan_after());
        let mut next_scan = Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = heartbeat.tick() => self.mark_own_in_use().await,
                _ = sleep_until(next_scan), if adopt => {
                    let found = self.find().await;
                    metrics::gauge!("tracker_edge_orphaned_spools").set(found.len() as f64);
                    for orphan in found {
                        if stop.is_cancelled() || !self.adopt(orphan, &stop, &mut heartbeat).await {
                            return;
                        }
                    }
                    next_scan = Instant::now() + scan_every;
                }
            }
        }
    }

    async fn mark_own_in_use(&self) {
        let Some(dir) = self.settings.edge.spool_dir.clone() else {
            return;
        };
        let (_, marked) = on_blocking_pool(dir, |dir| spool::mark_in_use(dir)).await;
        if let Err(err) = marked {
            tracing::debug!("could not mark the spool as in use: {err}");
        }
    }

    /// The orphans under the root now, in the order of their paths.
    async fn find(&self) -> Vec<Orphan> {
        let state = (self.root.clone(), self.settings.clone());
        let (_, found) = on_blocking_pool(state, |(root, settings)| find(root, settings)).await;
        found
    }

    /// Delivers one orphan, unless it was taken or touched meanwhile; false once `stop` came.
    async fn adopt(
        &self,
        orphan: Orphan,
        stop: &CancellationToken,
        heartbeat: &mut Interval,
    ) -> bool {
        let Orphan { id, dir } = orphan;
        let state = (dir, self.settings.clone());
        let (_, claimed) = on_blocking_pool(state, |(dir, settings)| claim(dir, settings)).await;
        let spool = match claimed {
            Ok(Some(spool)) => spool,
            Ok(None) => return true,
            Err(err) => {
                tracing::warn!(edge = %id, "could not open an orphaned spool: {err}");
                return true;
            }
        };
        if !spool.holds_unconfirmed() {
            // What an edge that stopped cleanly leaves: only its numbering, for a restart in place.
            let (_, removed) = on_blocking_pool(spool, |spool| spool.remove()).await;
            metrics::gauge!("tracker_edge_orphaned_spools").decrement(1.0);
            match removed {
                Ok(()) => {
                    tracing::info!(edge = %id, "removed the spool edge {id} left: nothing in it was unconfirmed")
                }
                Err(err) => {
                    tracing::warn!(edge = %id, "could not remove the spool edge {id} left: {err}")
                }
            }
            return true;
        }
        let visits = spool.unconfirmed_visits();
        tracing::info!(edge = %id, visits, "adopting the orphaned spool of edge {id}: delivering its {visits} visits under its own edge id");
        let settings = self.settings.adopting(&id);
        let publisher = match Publisher::adopting(&settings, spool) {
            Ok(publisher) => publisher,
            Err(err) => {
                tracing::error!(edge = %id, "could not adopt an orphaned spool: {err}");
                return true;
            }
        };
        let span = tracing::info_span!("adopted", edge = %id);
        let delivery = publisher
            .run(stop.clone(), settings.drain_timeout())
            .instrument(span);
        tokio::pin!(delivery);
        let delivered = loop {
            tokio::select! {
                delivered = &mut delivery => break delivered,
                _ = heartbeat.tick() => self.mark_own_in_use().await,
            }
        };
        if delivered {
            metrics::counter!("tracker_edge_orphaned_spools_adopted_total").increment(1);
            metrics::gauge!("tracker_edge_orphaned_spools").decrement(1.0);
            tracing::info!(edge = %id, visits, "adopted the orphaned spool of edge {id}: every visit confirmed, the spool removed");
        } else {
            tracing::warn!(edge = %id, "stopped delivering the orphaned spool of edge {id}: what is unconfirmed stays there for the next adopter");
        }
        !stop.is_cancelled()
    }
}

/// The spools under `root` no process holds and nothing touched for `edge.orphan_after_secs`,
/// except this edge's own and those of ids it may not publish for.
fn find(root: &Path, settings: &Settings) -> Vec<Orphan> {
    let mut found = Vec::new();
    for entry in WalkDir::new(root).min_depth(1).sort_by_file_name() {
        let entry = match entry {
            Ok(entry) => entry,
            Err(err) => {
                tracing::debug!("looking for orphaned spools: {err}");
                continue;
            }
        };
        if !entry.file_type().is_dir() {
            continue;
        }
        let dir = entry.into_path();
        let Some(id) = edge_id(root, &dir) else {
            continue;
        };
        if id == settings.edge.id || settings.check_edge_id(&id).is_err() {
            continue;
        }
        match untouched(&dir, settings.orphan_after()).and_then(|old| match old {
            true => spool::is_unheld(&dir),
            false => Ok(false),
        }) {
            Ok(true) => found.push(Orphan { id, dir }),
            Ok(false) => {}
            Err(err) => tracing::debug!(dir = %dir.display(), "looking for orphaned spools: {err}"),
        }
    }
    found
}

/// Opens an orphan's spool, if it is still one: untouched, and held by nobody.
fn claim(dir: &Path, settings: &Settings) -> std::io::Result<Option<Spool>> {
    if !untouched(dir, settings.orphan_after())? {
        return Ok(None);
    }
    Spool::open_unheld(dir, settings.edge.spool_max_bytes)
}

/// The edge id a spool directory below `root` belongs to: its path below the root.
fn edge_id(root: &Path, dir: &Path) -> Option<String> {
    let levels: Option<Vec<&str>> = dir
        .strip_prefix(root)
        .ok()?
        .iter()
        .map(|level| level.to_str())
        .collect();
    Some(levels?.join("/"))
}

/// Whether neither `dir` nor any file in it changed for `after`.
fn untouched(dir: &Path, after: Duration) -> std::io::Result<bool> {
    let mut newest = std::fs::metadata(dir)?.modified()?;
    for entry in std::fs::read_dir(dir)? {
        let metadata = entry?.metadata()?;
        if metadata.is_file() {
            newest = newest.max(metadata.modified()?);
        }
    }
    let age = SystemTime::now().duration_since(newest).unwrap_or_default();
    Ok(age >= after)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(root: &Path, id: &str, orphan_after_secs: u64) -> Settings {
        let mut settings = Settings::default();
        settings.mqtt.username = Some("edge".into());
        settings.edge.id = id.into();
        settings.edge.spool_dir = Some(root.join(id));
        settings.edge.orphan_after_secs = orphan_after_secs.try_into().unwrap();
        settings
    }

    /// Makes the spool in `dir` look untouched for an hour.
    fn age(dir: &Path) {
        let then = SystemTime::now() - Duration::from_secs(3600);
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                let file = std::fs::File::options().write(true).open(path).unwrap();
                file.set_modified(then).unwrap();
            }
        }
        std::fs::File::open(dir)
            .unwrap()
            .set_modified(then)
            .unwrap();
    }

    fn ids(found: &[Orphan]) -> Vec<&str> {
        found.iter().map(|orphan| orphan.id.as_str()).collect()
    }

    #[test]
    fn only_old_unheld_spools_of_other_edges_it_may_publish_for_are_orphans() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        let open = |id: &str| Spool::open(&root.join(id), 1 << 20).unwrap();
        let own = open("edge/self");
        let running = open("edge/running");
        // Nested: an edge id that is a prefix of another's.
        for id in [
            "edge/gone",
            "edge",
            "edge/gone/deeper",
            "paris/gone",
            "edge/young",
        ] {
            drop(open(id));
        }
        std::fs::create_dir_all(root.join("edge/not-a-spool")).unwrap();
        for id in [
            "edge/self",
            "edge/running",
            "edge/gone",
            "edge",
            "edge/gone/deeper",
            "paris/gone",
            "edge/not-a-spool",
        ] {
            age(&root.join(id));
        }
        let found = find(root, &settings(root, "edge/self", 300));
        assert_eq!(ids(&found), ["edge", "edge/gone", "edge/gone/deeper"]);
        assert_eq!(found[1].dir, root.join("edge/gone"));
        drop((own, running));
    }

    #[test]
    fn a_claimed_orphan_is_locked_and_one_touched_meanwhile_is_left() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        let dir = root.join("edge/gone");
        drop(Spool::open(&dir, 1 << 20).unwrap());
        let adopter = settings(root, "edge/self", 300);
        assert!(claim(&dir, &adopter).unwrap().is_none(), "touched just now");
        age(&dir);
        let claimed = claim(&dir, &adopter).unwrap().unwrap();
        age(&dir);
        assert!(find(root, &adopter).is_empty(), "held by its adopter");
        assert!(claim(&dir, &adopter).unwrap().is_none());
        drop(claimed);
        assert_eq!(ids(&find(root, &adopter)), ["edge/gone"]);
        assert!(claim(&root.join("edge/missing"), &adopter).is_err());
    }
}
