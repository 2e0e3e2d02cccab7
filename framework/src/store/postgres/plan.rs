//! How a group's appends are decided, in order, and laid out as the
//! columns one statement writes.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Job, Shared};
use crate::envelope::Position;
use crate::error::{Result, StoreError};
use crate::store::{decide, written, AppendOutcome, Decision, StoredId};

/// What a group's decisions add up to, counted once the group commits.
#[derive(Debug, Default)]
pub(super) struct Tally {
    appends: u64,
    events: u64,
    conflicts: u64,
    duplicates: u64,
    /// The last position written, before adding the base.
    last: u64,
}

impl Shared {
    /// Counts a committed group and moves the head watch.
    pub(super) fn committed(&self, t: &Tally, base: u64) {
        let c = &self.counters;
        c.batches.fetch_add(1, Ordering::Relaxed);
        c.appends.fetch_add(t.appends, Ordering::Relaxed);
        c.events.fetch_add(t.events, Ordering::Relaxed);
        c.conflicts.fetch_add(t.conflicts, Ordering::Relaxed);
        c.duplicates.fetch_add(t.duplicates, Ordering::Relaxed);
        if t.events > 0 {
            self.advance_head(Position(base + t.last));
        }
    }
}

/// A group's decisions and the columns to write.
pub(super) struct Plan<'a> {
    pub(super) cols: Columns<'a>,
    /// Written streams: id → (type, version after the group).
    streams: HashMap<&'a str, (&'a str, u64)>,
    pub(super) results: Vec<Result<AppendOutcome>>,
    pub(super) tally: Tally,
}

impl Plan<'_> {
    /// The written streams as columns: ids, types, versions after the group.
    pub(super) fn stream_columns(&self) -> (Vec<&str>, Vec<&str>, Vec<i64>) {
        let mut ids = Vec::with_capacity(self.streams.len());
        let mut types = Vec::with_capacity(self.streams.len());
        let mut versions = Vec::with_capacity(self.streams.len());
        for (id, (ty, v)) in &self.streams {
            ids.push(*id);
            types.push(*ty);
            versions.push(*v as i64);
        }
        (ids, types, versions)
    }
}

/// What `strata_append_catch_up` found of a group's streams that were not
/// where the group assumed.
#[derive(Debug, Default)]
pub(super) struct Moved {
    /// Each moved stream's version.
    pub(super) versions: HashMap<String, u64>,
    /// The moved streams' appends' event ids already stored.
    pub(super) stored: HashMap<Uuid, StoredId>,
}

impl Plan<'_> {
    /// The group's answers once `strata_append_catch_up` has written it
    /// after `base`: the planned ones, except for the appends of the
    /// streams it found moved, which it did not write. Each of those is
    /// decided again on the stream as found: a duplicate of what is stored
    /// (a retried append), a conflict at the version found, or a reused
    /// id. The written rows close up, in order, over the rows skipped.
    pub(super) fn settle(
        mut self,
        batch: &[Job],
        base: u64,
        moved: &Moved,
    ) -> (Vec<Result<AppendOutcome>>, Tally) {
        // Where each planned row lands: rows are numbered 1.. in the
        // group's order, and a skipped row moves every later one down.
        let mut landed = Vec::with_capacity(self.cols.stream_ids.len());
        let mut kept = 0u64;
        for s in &self.cols.stream_ids {
            if moved.versions.contains_key(*s) {
                landed.push(None);
            } else {
                kept += 1;
                landed.push(Some(kept));
            }
        }
        let place = |p: Position| -> Position {
            match landed.get((p.0 as usize).wrapping_sub(1)) {
                Some(Some(to)) => Position(base + to),
                _ => Position(base + p.0),
            }
        };
        let mut tally = Tally {
            last: kept,
            ..Tally::default()
        };
        for (job, result) in batch.iter().zip(self.results.iter_mut()) {
            let request = &job.append.request;
            if let Some(actual) = moved.versions.get(request.stream_id.as_str()) {
                *result = match decide(request, *actual, &moved.stored) {
                    Ok(Decision::Duplicate(outcome)) => Ok(outcome),
                    Ok(Decision::Write { .. }) => Err(StoreError::Conflict {
                        stream_id: request.stream_id.clone(),
                        expected: request.expected,
                        actual: *actual,
                    }),
                    Err(e) => Err(e),
                };
            } else if let Ok(outcome) = result {
                outcome.first_position = place(outcome.first_position);
                outcome.position = place(outcome.position);
            }
            match result {
                Ok(o) if o.duplicate => tally.duplicates += 1,
                Ok(_) => {
                    tally.appends += 1;
                    tally.events += request.events.len() as u64;
                }
                Err(StoreError::Conflict { .. }) => tally.conflicts += 1,
                Err(_) => {}
            }
        }
        self.tally = tally;
        (self.results, self.tally)
    }
}

/// Decides each append of a group in order, as if they ran one after
/// another from `versions` and `existing`; positions start after `head`.
pub(super) fn plan<'a>(
    batch: &'a [Job],
    mut versions: HashMap<String, u64>,
    mut existing: HashMap<Uuid, StoredId>,
    head: u64,
) -> Plan<'a> {
    let mut cols = Columns::default();
    let mut streams: HashMap<&str, (&str, u64)> = HashMap::new();
    let mut next = head;
    let mut results = Vec::with_capacity(batch.len());
    let mut tally = Tally::default();
    for job in batch {
        let request = &job.append.request;
        let current = versions
            .get(request.stream_id.as_str())
            .copied()
            .unwrap_or(0);
        let result = match decide(request, current, &existing) {
            Ok(Decision::Duplicate(outcome)) => {
                tally.duplicates += 1;
                Ok(outcome)
            }
            Err(e) => {
                if matches!(e, StoreError::Conflict { .. }) {
                    tally.conflicts += 1;
                }
                Err(e)
            }
            Ok(Decision::Write { current }) => {
                let first_position = Position(next + 1);
                for (i, e) in request.events.iter().enumerate() {
                    next += 1;
                    let version = current + 1 + i as u64;
                    cols.positions.push(next as i64);
                    cols.event_ids.push(e.event_id);
                    cols.stream_ids.push(request.stream_id.as_str());
                    cols.stream_types.push(&request.stream_type);
                    cols.versions.push(version as i64);
                    cols.event_types.push(&e.event_type);
                    cols.schema_versions.push(e.schema_version as i32);
                    cols.payloads.push(&job.append.payloads[i]);
                    cols.metadata.push(&job.append.metadata[i]);
                    cols.recorded_at.push(e.recorded_at);
                    existing.insert(
                        e.event_id,
                        StoredId {
                            stream_id: request.stream_id.clone(),
                            stream_version: version,
                            position: Position(next),
                        },
                    );
                }
                let count = request.events.len() as u64;
                versions.insert(request.stream_id.to_string(), current + count);
                streams.insert(
                    request.stream_id.as_str(),
                    (request.stream_type.as_str(), current + count),
                );
                tally.appends += 1;
                tally.events += count;
                Ok(written(
                    request.stream_id.clone(),
                    current,
                    count,
                    first_position,
                ))
            }
        };
        results.push(result);
    }
    tally.last = next;
    Plan {
        cols,
        streams,
        results,
        tally,
    }
}

/// The events to write, one vector a column (bound as arrays).
#[derive(Default)]
pub(super) struct Columns<'a> {
    pub(super) positions: Vec<i64>,
    pub(super) event_ids: Vec<Uuid>,
    pub(super) stream_ids: Vec<&'a str>,
    pub(super) stream_types: Vec<&'a str>,
    pub(super) versions: Vec<i64>,
    pub(super) event_types: Vec<&'a str>,
    pub(super) schema_versions: Vec<i32>,
    pub(super) payloads: Vec<&'a str>,
    pub(super) metadata: Vec<&'a str>,
    pub(super) recorded_at: Vec<Option<DateTime<Utc>>>,
}
