//! `dead-letters`: events subscribers could not apply.

use serde_json::json;

use super::output::{Out, DEAD_LETTERS};
use super::{AdminContext, AdminError, EXIT_OK};
use crate::views::store::Checkpoints;

/// `dead-letters list`: newest first, of one subscriber or all.
pub(super) async fn list(
    ctx: &AdminContext,
    subscriber: Option<&str>,
    out: &mut Out<'_>,
) -> Result<i32, AdminError> {
    let letters = ctx.views.dead_letters(subscriber).await?;
    if out.json {
        out.line(serde_json::to_string(&letters).unwrap_or_default())?;
    } else {
        let titles = [
            "id",
            "subscriber",
            "position",
            "event type",
            "status",
            "error",
        ];
        let rows = letters.iter().map(|d| {
            [
                d.id.to_string(),
                d.subscriber.clone(),
                d.position.to_string(),
                d.event_type.clone(),
                d.status.clone(),
                d.error.clone(),
            ]
        });
        out.table(&DEAD_LETTERS, titles, rows)?;
    }
    Ok(EXIT_OK)
}

/// `dead-letters retry` (`skip: false`) and `dead-letters skip`: resolves
/// parked dead letter `id`; its subscriber resumes before it or after it.
pub(super) async fn resolve(
    ctx: &AdminContext,
    id: i64,
    skip: bool,
    out: &mut Out<'_>,
) -> Result<i32, AdminError> {
    if !ctx.views.resolve_dead_letter(id, skip).await? {
        return Err(AdminError::NoSuchDeadLetter { id });
    }
    let what = if skip {
        "skipped; the subscriber resumes after it"
    } else {
        "will be retried; the subscriber resumes before it"
    };
    out.report(
        json!({ "id": id, "skipped": skip }),
        &format!("dead letter {id} {what}"),
    )?;
    Ok(EXIT_OK)
}
