//! Follow-up requests that handlers record instead of building: `next_steps` sends them first,
//! each within the budget. What the budget cuts is kept in `meta` and sent first by the next
//! tick, so no follow-up is ever lost (and GitLab is not asked the same thing again).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::gitlab::ExportStatus;
use crate::store::{ClaimedProject, MetaKey, Sql, Store, StoreError};

/// A request a handler wants sent next.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "intent", rename_all = "snake_case")]
pub(crate) enum Intent {
    /// GET the first bytes of the project's object in the bucket, after GitLab's answer about
    /// its export (stored as `head` by the versions that sent a HEAD).
    #[serde(alias = "head")]
    FirstBytes {
        project: ClaimedProject,
        gitlab_said: GitLabSaid,
    },
    /// HEAD the preflight's own object: the key must read back what it writes, or no backup
    /// can ever be proven.
    ReadBackProbe,
    /// Write the marker of this deployment's `S3_PREFIX`: the bucket has none yet.
    PutMarker,
    /// Ask GitLab how big the project is before reporting that its upload never arrived
    /// after every attempt: above S3's single-PUT limit, that is the likely cause.
    SizeHint {
        project: ClaimedProject,
        reason: String,
    },
}

impl Intent {
    /// Whether the request is to the bucket (signed for its region).
    pub fn needs_region(&self) -> bool {
        match self {
            Intent::FirstBytes { .. } | Intent::ReadBackProbe | Intent::PutMarker => true,
            Intent::SizeHint { .. } => false,
        }
    }
}

/// What GitLab's export status said before a ranged `GET` looks in the bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum GitLabSaid {
    /// An export status (`finished`, `none`, or still in progress past the deadline).
    Status(ExportStatus),
    /// No usable answer (5xx, 401, 429, a timeout) until past the deadline.
    Unanswered(String),
    /// An answer that did not read as GitLab documents it, past the deadline.
    Unreadable(String),
}

/// The intents as stored: those of one run.
#[derive(Serialize, Deserialize)]
struct Stored {
    run: u64,
    intents: Vec<Intent>,
}

/// The tick's intents, in the order they were recorded.
#[derive(Debug, Default)]
pub(crate) struct Intents {
    queue: VecDeque<Intent>,
    /// A `meta` row holds intents (read at the start of the tick, or written by it).
    stored: bool,
    /// The queue changed since it was read or written.
    changed: bool,
}

impl Intents {
    /// The intents an earlier tick of `run` left (`stored`: the `meta` row, if any). Intents of
    /// another run are dropped (the row goes at the next save).
    pub fn read(stored: Option<&str>, run: u64) -> Result<Intents, StoreError> {
        let Some(json) = stored else {
            return Ok(Intents::default());
        };
        let stored: Stored = serde_json::from_str(json).map_err(|e| {
            StoreError(format!("the stored follow-up requests are unreadable: {e}"))
        })?;
        let queue = if stored.run == run {
            stored.intents.into()
        } else {
            VecDeque::new()
        };
        Ok(Intents {
            queue,
            stored: true,
            changed: true,
        })
    }

    pub fn push(&mut self, intent: Intent) {
        self.queue.push_back(intent);
        self.changed = true;
    }

    pub fn peek(&self) -> Option<&Intent> {
        self.queue.front()
    }

    pub fn pop(&mut self) -> Option<Intent> {
        let intent = self.queue.pop_front()?;
        self.changed = true;
        Some(intent)
    }

    /// Keeps what is left for the next tick, or removes the row once nothing is: a write only
    /// when a budget cut intents short, and once when they are drained.
    pub fn save<S: Sql>(&mut self, store: &Store<S>, run: u64) -> Result<(), StoreError> {
        if !self.changed {
            return Ok(());
        }
        if self.queue.is_empty() {
            if self.stored {
                store.delete_meta(MetaKey::Intents)?;
                self.stored = false;
            }
        } else {
            let json = serde_json::to_string(&Stored {
                run,
                intents: self.queue.iter().cloned().collect(),
            })
            .map_err(|e| StoreError(format!("encoding follow-up requests: {e}")))?;
            store.set_meta(MetaKey::Intents, json)?;
            self.stored = true;
        }
        self.changed = false;
        Ok(())
    }
}
