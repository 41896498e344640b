//! The broker's durable queue: every accepted, undelivered delivery and every dead letter, on
//! disk, so that a `202` from the ingress means "will be delivered", not "while the process
//! runs" (the semantics of a Knative Kafka-backed broker).
//!
//! One small JSON file per delivery (`pending/{id}.json`: the trigger's name and the event in
//! structured mode) is written, to a temporary name then renamed, before the broker answers, and
//! removed once the delivery succeeded or became a dead letter (`dead/{id}.json`, removed when
//! replayed). After a restart the broker delivers what is pending again, oldest first, and lists
//! the dead letters it had. Files are not synced to the disk: they survive the process being
//! killed at any moment, not the machine losing power (a local stack's trade-off; production
//! uses a real broker).

use std::path::{Path, PathBuf};

use cloudevents::Event;
use serde::{Deserialize, Serialize};

use crate::broker::DeadLetter;

/// A delivery waiting in the journal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingDelivery {
    /// The journal entry's id (time-ordered).
    pub id: String,
    /// The trigger it is for.
    pub trigger: String,
    /// The event, structured mode.
    pub event: Event,
}

/// A dead letter kept in the journal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadEntry {
    /// The dead letter as listed.
    pub letter: DeadLetter,
    /// The event as it was delivered (without the error extensions), for replay.
    pub event: Event,
}

/// The on-disk journal of one broker.
#[derive(Debug, Clone)]
pub struct Journal {
    pending: PathBuf,
    dead: PathBuf,
}

impl Journal {
    /// Opens (creating if needed) the journal under `dir`.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        let journal = Self {
            pending: dir.join("pending"),
            dead: dir.join("dead"),
        };
        std::fs::create_dir_all(&journal.pending)?;
        std::fs::create_dir_all(&journal.dead)?;
        Ok(journal)
    }

    /// Records a delivery of `event` to `trigger`; returns its id.
    pub fn add_pending(&self, trigger: &str, event: &Event) -> std::io::Result<String> {
        let id = uuid::Uuid::now_v7().to_string();
        let entry = PendingDelivery {
            id: id.clone(),
            trigger: trigger.to_string(),
            event: event.clone(),
        };
        write_atomically(&self.pending, &id, &entry)?;
        Ok(id)
    }

    /// The delivery `id` is over (delivered, or dead-lettered).
    pub fn remove_pending(&self, id: &str) {
        remove(&self.pending, id);
    }

    /// Keeps a dead letter.
    pub fn add_dead(&self, letter: &DeadLetter, event: &Event) -> std::io::Result<()> {
        let entry = DeadEntry {
            letter: letter.clone(),
            event: event.clone(),
        };
        write_atomically(&self.dead, &letter.id, &entry)
    }

    /// Forgets dead letter `id` (replayed).
    pub fn remove_dead(&self, id: &str) {
        remove(&self.dead, id);
    }

    /// Every pending delivery, oldest first. Unreadable files are reported and skipped.
    pub fn pending(&self) -> Vec<PendingDelivery> {
        read_all(&self.pending)
    }

    /// Every dead letter, oldest first.
    pub fn dead(&self) -> Vec<DeadEntry> {
        read_all(&self.dead)
    }
}

fn write_atomically(dir: &Path, id: &str, value: &impl Serialize) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    let temporary = dir.join(format!(".{id}.tmp"));
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, dir.join(format!("{id}.json")))
}

fn remove(dir: &Path, id: &str) {
    let path = dir.join(format!("{id}.json"));
    if let Err(e) = std::fs::remove_file(&path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "broker journal: cannot remove an entry");
    }
}

fn read_all<T: for<'de> Deserialize<'de>>(dir: &Path) -> Vec<T> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    // Ids are UUIDv7: their names sort by time.
    paths.sort();
    paths
        .into_iter()
        .filter_map(|path| {
            let read = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()));
            match read {
                Ok(entry) => Some(entry),
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "broker journal: unreadable entry skipped");
                    None
                }
            }
        })
        .collect()
}
