//! What the admin commands print: JSON with `--json`, else text tables; and
//! progress bars on a terminal.

use std::io::{IsTerminal, Write};

use serde_json::Value;

use super::AdminError;
use crate::envelope::EventEnvelope;

/// Where a command prints, and how.
pub(super) struct Out<'a> {
    w: &'a mut dyn Write,
    /// Print JSON instead of tables.
    pub(super) json: bool,
}

impl<'a> Out<'a> {
    /// Output to `w`, as JSON when `json`.
    pub(super) fn new(w: &'a mut dyn Write, json: bool) -> Self {
        Out { w, json }
    }

    /// Writes one line.
    pub(super) fn line(&mut self, line: impl std::fmt::Display) -> Result<(), AdminError> {
        Ok(writeln!(self.w, "{line}")?)
    }

    /// Flushes what was written (followed output shows at once).
    pub(super) fn flush(&mut self) -> Result<(), AdminError> {
        Ok(self.w.flush()?)
    }

    /// A command's result: `value` with `--json`, else `text`.
    pub(super) fn report(&mut self, value: Value, text: &str) -> Result<(), AdminError> {
        if self.json {
            self.line(value)
        } else {
            self.line(text)
        }
    }

    /// Events: one JSON object a line, or a table (with its header when
    /// `header`; a followed tail prints it once).
    pub(super) fn events(
        &mut self,
        events: &[EventEnvelope],
        header: bool,
    ) -> Result<(), AdminError> {
        if self.json {
            for e in events {
                self.line(serde_json::to_string(e).unwrap_or_default())?;
            }
            return Ok(());
        }
        let mut rows = events.iter().map(|e| {
            [
                e.position.to_string(),
                e.recorded_at.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
                e.stream_id.to_string(),
                e.stream_version.to_string(),
                e.event_type.clone(),
                e.payload.to_string(),
            ]
        });
        if header {
            let titles = [
                "position",
                "recorded at (UTC)",
                "stream",
                "ver",
                "type",
                "payload",
            ];
            self.table(&EVENTS, titles, rows)
        } else {
            rows.try_for_each(|r| self.line(EVENTS.row(r)))
        }
    }

    /// A text table: the header `titles`, then `rows`.
    pub(super) fn table<const N: usize, S: AsRef<str>>(
        &mut self,
        table: &Table<N>,
        titles: [&str; N],
        rows: impl IntoIterator<Item = [S; N]>,
    ) -> Result<(), AdminError> {
        self.line(table.row(titles))?;
        for r in rows {
            self.line(table.row(r))?;
        }
        Ok(())
    }
}

/// The fields `keys` of the JSON object `row`, as table cells: strings
/// as they are, other values as JSON.
pub(super) fn fields<const N: usize>(row: &Value, keys: [&str; N]) -> [String; N] {
    keys.map(|k| match &row[k] {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    })
}

/// A column of a text table.
#[derive(Debug, Clone, Copy)]
pub(super) struct Col {
    /// Spaces before it (none before the first column).
    gap: usize,
    /// Its width; 0 does not pad (a last column).
    width: usize,
    /// Aligned right (numbers) instead of left.
    right: bool,
}

impl Col {
    /// A left-aligned column one space after the previous.
    pub(super) const fn left(width: usize) -> Self {
        Col {
            gap: 1,
            width,
            right: false,
        }
    }

    /// A right-aligned column one space after the previous.
    pub(super) const fn right(width: usize) -> Self {
        Col {
            gap: 1,
            width,
            right: true,
        }
    }

    /// The same column `gap` spaces after the previous.
    pub(super) const fn gap(mut self, gap: usize) -> Self {
        self.gap = gap;
        self
    }
}

/// The columns of a text table.
pub(super) struct Table<const N: usize>(pub(super) [Col; N]);

impl<const N: usize> Table<N> {
    /// One line of the table.
    pub(super) fn row<S: AsRef<str>>(&self, cells: [S; N]) -> String {
        let mut line = String::new();
        for (i, (col, cell)) in self.0.iter().zip(&cells).enumerate() {
            if i > 0 {
                line.extend(std::iter::repeat_n(' ', col.gap));
            }
            let (cell, w) = (cell.as_ref(), col.width);
            line += &if col.right {
                format!("{cell:>w$}")
            } else {
                format!("{cell:<w$}")
            };
        }
        line
    }
}

/// `projections list`.
pub(super) const PROJECTIONS: Table<3> = Table([Col::left(24), Col::right(12), Col::right(14)]);

/// `projections status`.
pub(super) const STATUS: Table<5> = Table([
    Col::left(28),
    Col::right(10),
    Col::right(8),
    Col::left(9),
    Col::right(12),
]);

/// `dead-letters list`.
pub(super) const DEAD_LETTERS: Table<6> = Table([
    Col::right(5),
    Col::left(24).gap(2),
    Col::right(9),
    Col::left(20).gap(2),
    Col::left(8),
    Col::left(0),
]);

/// The events table.
const EVENTS: Table<6> = Table([
    Col::right(8),
    Col::left(23).gap(2),
    Col::left(40).gap(2),
    Col::right(5),
    Col::left(22).gap(2),
    Col::left(0),
]);

/// A progress bar for `len` units of work, on a terminal only.
pub(super) fn progress_bar(len: u64, what: &str) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:40}] {pos}/{len} events, {per_sec}, ETA {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    Some(bar)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tables print exactly what the fixed formats they replaced did.
    #[test]
    fn tables_keep_their_layout() {
        assert_eq!(
            EVENTS.row([
                "position",
                "recorded at (UTC)",
                "stream",
                "ver",
                "type",
                "payload"
            ]),
            format!(
                "{:>8}  {:<23}  {:<40} {:>5}  {:<22} payload",
                "position", "recorded at (UTC)", "stream", "ver", "type"
            )
        );
        let at = "2026-01-02 03:04:05.678";
        assert_eq!(
            EVENTS.row(["12", at, "order-1", "3", "OrderPlaced", r#"{"a":1}"#]),
            format!(
                "{:>8}  {}  {:<40} {:>5}  {:<22} {}",
                12, at, "order-1", 3, "OrderPlaced", r#"{"a":1}"#
            )
        );
        assert_eq!(
            PROJECTIONS.row(["orders", "2", "1"]),
            format!("{:<24} {:>12} {:>14}", "orders", "2", "1")
        );
        assert_eq!(
            STATUS.row(["orders_v1", "19", "0", "running", "0"]),
            format!(
                "{:<28} {:>10} {:>8} {:<9} {:>12}",
                "orders_v1", "19", "0", "running", "0"
            )
        );
        assert_eq!(
            DEAD_LETTERS.row(["7", "orders_v1", "42", "OrderPlaced", "parked", "boom"]),
            format!(
                "{:>5}  {:<24} {:>9}  {:<20} {:<8} {}",
                7, "orders_v1", 42, "OrderPlaced", "parked", "boom"
            )
        );
    }
}
