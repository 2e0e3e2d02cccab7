//! Events in and out: `export`, `import`, and `replay jetstream`.

use std::io::{BufRead, Write};
use std::path::Path;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::output::{progress_bar, Out};
use super::{AdminContext, AdminError, EXIT_OK};
use crate::envelope::{EventEnvelope, NewEvent, Position};
use crate::propagation::nats::Relay;
use crate::store::follow::Follower;
use crate::store::{AppendRequest, EventStore, ExpectedVersion};

/// `export`: every event after `after`, one JSON object a line, to `file`
/// (`-`: standard output).
pub(super) async fn export(
    ctx: &AdminContext,
    file: &Path,
    after: u64,
    out: &mut Out<'_>,
    shutdown: &CancellationToken,
) -> Result<i32, AdminError> {
    let head = ctx.store.head().await?;
    let bar = progress_bar(head.0.saturating_sub(after), "exporting");
    let mut writer: Box<dyn Write> = if file.as_os_str() == "-" {
        Box::new(std::io::BufWriter::new(std::io::stdout()))
    } else {
        let f = std::fs::File::create(file).map_err(|source| AdminError::File {
            action: "create",
            path: file.to_owned(),
            source,
        })?;
        Box::new(std::io::BufWriter::new(f))
    };
    let mut follower = Follower::new(ctx.store.clone(), Position(after)).batch_size(5_000);
    let mut count = 0u64;
    while let Some(batch) = follower.try_next_batch().await? {
        if shutdown.is_cancelled() {
            return Err(AdminError::ExportInterrupted { exported: count });
        }
        for e in &batch {
            serde_json::to_writer(&mut writer, e).map_err(std::io::Error::from)?;
            writer.write_all(b"\n")?;
        }
        count += batch.len() as u64;
        if let Some(b) = &bar {
            b.set_position(count);
        }
    }
    writer.flush()?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    out.report(
        json!({ "exported": count, "head": follower.position().0 }),
        &format!("exported {count} events"),
    )?;
    Ok(EXIT_OK)
}

/// The lines of an import file, numbered from 1, blank ones left out.
fn import_lines(
    file: &Path,
) -> Result<impl Iterator<Item = Result<(usize, String), AdminError>> + '_, AdminError> {
    let f = std::fs::File::open(file).map_err(|source| AdminError::File {
        action: "open",
        path: file.to_owned(),
        source,
    })?;
    let lines = std::io::BufReader::new(f).lines().enumerate();
    Ok(lines.filter_map(move |(i, line)| match line {
        Ok(line) if line.trim().is_empty() => None,
        Ok(line) => Some(Ok((i + 1, line))),
        Err(source) => Some(Err(AdminError::File {
            action: "read",
            path: file.to_owned(),
            source,
        })),
    }))
}

/// One line of an import file as an event.
fn parse_event(line_no: usize, line: &str) -> Result<EventEnvelope, AdminError> {
    serde_json::from_str(line).map_err(|err| AdminError::BadImport {
        line: line_no,
        reason: format!("not an event: {err}"),
    })
}

/// Reads an import file once before anything is written: every line must be
/// an event with a stream version from 1 to `i64::MAX` (what the store can
/// hold), so a bad line refuses the whole file instead of a part of it.
fn check_import(file: &Path) -> Result<(), AdminError> {
    for line in import_lines(file)? {
        let (line_no, line) = line?;
        let e = parse_event(line_no, &line)?;
        if e.stream_version == 0 || e.stream_version > i64::MAX as u64 {
            return Err(AdminError::BadImport {
                line: line_no,
                reason: format!(
                    "stream {} has version {}; versions run from 1 to {}",
                    e.stream_id,
                    e.stream_version,
                    i64::MAX
                ),
            });
        }
    }
    Ok(())
}

/// Appends one run of consecutive events of one stream, as exported.
/// Returns (imported, already present).
async fn import_run(ctx: &AdminContext, run: Vec<EventEnvelope>) -> Result<(u64, u64), AdminError> {
    let Some(first) = run.first() else {
        return Ok((0, 0));
    };
    let request = AppendRequest::new(
        first.stream_id.clone(),
        first.stream_type.clone(),
        // `check_import` made sure versions start at 1.
        ExpectedVersion::from_seen(first.stream_version.saturating_sub(1)),
        run.iter()
            .map(|e| NewEvent {
                event_id: e.event_id,
                event_type: e.event_type.clone(),
                schema_version: e.schema_version,
                payload: e.payload.clone(),
                metadata: e.metadata.clone(),
                recorded_at: Some(e.recorded_at),
            })
            .collect(),
    );
    let n = run.len() as u64;
    match ctx.store.append(request).await {
        Ok(o) if o.duplicate => Ok((0, n)),
        Ok(_) => Ok((n, 0)),
        Err(source) => Err(AdminError::ImportRefused {
            stream: first.stream_id.clone(),
            version: first.stream_version,
            source,
        }),
    }
}

/// `import`: appends the events of an export, in order, in runs of one
/// stream's consecutive events. Idempotent: events already present are
/// skipped.
pub(super) async fn import(
    ctx: &AdminContext,
    file: &Path,
    out: &mut Out<'_>,
    shutdown: &CancellationToken,
) -> Result<i32, AdminError> {
    check_import(file)?;
    let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    let bar = progress_bar(size, "importing");
    let mut run: Vec<EventEnvelope> = Vec::new();
    let (mut imported, mut skipped, mut read_bytes) = (0u64, 0u64, 0u64);
    for line in import_lines(file)? {
        if shutdown.is_cancelled() {
            return Err(AdminError::ImportInterrupted { imported });
        }
        let (line_no, line) = line?;
        read_bytes += line.len() as u64 + 1;
        let e = parse_event(line_no, &line)?;
        let same_run = run.last().is_some_and(|l| {
            l.stream_id == e.stream_id && l.stream_version + 1 == e.stream_version
        }) && run.len() < 500;
        if !same_run {
            let (i, s) = import_run(ctx, std::mem::take(&mut run)).await?;
            imported += i;
            skipped += s;
        }
        run.push(e);
        if let Some(b) = &bar {
            b.set_position(read_bytes);
        }
    }
    let (i, s) = import_run(ctx, run).await?;
    imported += i;
    skipped += s;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    out.report(
        json!({ "imported": imported, "already_present": skipped }),
        &format!("imported {imported} events ({skipped} were already present)"),
    )?;
    Ok(EXIT_OK)
}

/// `replay jetstream`: runs a relay until JetStream holds every event up
/// to the store's head.
pub(super) async fn replay_jetstream(
    ctx: &AdminContext,
    out: &mut Out<'_>,
    shutdown: &CancellationToken,
) -> Result<i32, AdminError> {
    let (client, config) = ctx.jetstream("replay jetstream")?;
    let relay = Relay::new(ctx.store.clone(), ctx.views.clone(), client, config);
    let mut status = relay.status();
    let stop = CancellationToken::new();
    let task = tokio::spawn(relay.run(stop.clone()));
    let head = ctx.store.head().await?;
    let done = tokio::select! {
        _ = shutdown.cancelled() => false,
        r = status.wait_for(|s| s.published >= head) => r.is_ok(),
    };
    stop.cancel();
    let _ = task.await;
    if !done {
        return Err(AdminError::ReplayInterrupted);
    }
    out.report(
        json!({ "published_up_to": head.0 }),
        &format!("JetStream holds every event up to position {head}"),
    )?;
    Ok(EXIT_OK)
}
