//! `projections` (and `replay projection`): list, status, rebuild, reset.

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::output::{fields, progress_bar, Out, PROJECTIONS, STATUS};
use super::{AdminContext, AdminError, EXIT_OK};
use crate::envelope::Position;
use crate::store::EventStore;
use crate::views::rebuild::RebuildProgress;
use crate::views::store::{Checkpoints, ViewId};

/// `projections rebuild` (and `replay projection`): rebuilds `name` online
/// into a new version and switches to it.
pub(super) async fn rebuild(
    ctx: &AdminContext,
    name: &str,
    out: &mut Out<'_>,
    shutdown: &CancellationToken,
) -> Result<i32, AdminError> {
    let p = ctx.find(name)?;
    let head = ctx.store.head().await?;
    let bar = progress_bar(head.0, &format!("rebuilding {name}"));
    let b2 = bar.clone();
    let progress = Box::new(move |p: RebuildProgress| {
        if let Some(b) = &b2 {
            b.set_length(p.head.0);
            b.set_position(p.position.0);
        }
    });
    let result = p
        .rebuild(
            ctx.store.clone(),
            ctx.views.clone(),
            ctx.feed.clone(),
            progress,
            shutdown.clone(),
        )
        .await;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let r = result?;
    let rate = r.events as f64 / r.seconds.max(1e-9);
    out.report(
        serde_json::to_value(&r).unwrap_or_default(),
        &format!(
            "rebuilt {} into version {} ({} events, {:.0} events/s); version {} is active, \
             version {} was dropped",
            r.view, r.to_version, r.events, rate, r.to_version, r.from_version
        ),
    )?;
    Ok(EXIT_OK)
}

/// `projections list`: registered projections with their versions.
pub(super) async fn list(ctx: &AdminContext, out: &mut Out<'_>) -> Result<i32, AdminError> {
    let mut rows = Vec::new();
    for (name, p) in ctx.registered() {
        let active = ctx.active_version(name, p).await?;
        rows.push(json!({ "name": name, "code_version": p.version(), "active_version": active }));
    }
    if out.json {
        out.line(Value::Array(rows))?;
    } else {
        let keys = ["name", "code_version", "active_version"];
        let titles = ["projection", "code version", "active version"];
        out.table(&PROJECTIONS, titles, rows.iter().map(|r| fields(r, keys)))?;
    }
    Ok(EXIT_OK)
}

/// `projections status`: every subscriber's checkpoint, lag, state and
/// parked dead letters.
pub(super) async fn status(ctx: &AdminContext, out: &mut Out<'_>) -> Result<i32, AdminError> {
    let head = ctx.store.head().await?;
    let letters = ctx.views.dead_letters(None).await?;
    let mut subscribers = Vec::new();
    for (name, p) in ctx.registered() {
        let version = ctx.active_version(name, p).await?;
        subscribers.push(ViewId::new(name, version)?.subscriber());
    }
    subscribers.extend(ctx.subscribers.iter().cloned());
    let mut rows = Vec::new();
    for s in subscribers {
        let cp = ctx.views.checkpoint(&s).await?;
        let parked = letters
            .iter()
            .filter(|d| d.subscriber == s && d.status == "parked")
            .count();
        rows.push(json!({
            "subscriber": s,
            "position": cp.position.0,
            "lag": head.0.saturating_sub(cp.position.0),
            "state": cp.state,
            "dead_letters": parked,
            "error": cp.error,
        }));
    }
    if out.json {
        out.line(json!({ "head": head.0, "subscribers": rows }))?;
    } else {
        out.line(format_args!("store head: {head}"))?;
        let keys = ["subscriber", "position", "lag", "state", "dead_letters"];
        let titles = ["subscriber", "position", "lag", "state", "dead letters"];
        out.table(&STATUS, titles, rows.iter().map(|r| fields(r, keys)))?;
    }
    Ok(EXIT_OK)
}

/// `projections reset`: moves a subscriber's checkpoint.
pub(super) async fn reset(
    ctx: &AdminContext,
    subscriber: &str,
    to: u64,
    out: &mut Out<'_>,
) -> Result<i32, AdminError> {
    ctx.views.reset(subscriber, Position(to)).await?;
    out.report(
        json!({ "subscriber": subscriber, "position": to }),
        &format!("{subscriber} will resume after position {to}"),
    )?;
    Ok(EXIT_OK)
}
