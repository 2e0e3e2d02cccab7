//! What a Postgres error means for the store: the SQLSTATE classes the
//! writer and the schema checks tell apart.

/// True when a statement failed on the data it was given: a value or a
/// constraint Postgres refuses (SQLSTATE classes 22 "data exception" and 23
/// "integrity constraint violation"), a backend limit (54), or a trigger
/// that raised (P0001). The statement wrote nothing and the connection is
/// fine; the same data fails again. Connection errors, lock timeouts (55P03)
/// and server trouble are not data errors.
pub(super) fn is_data_error(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| {
            c.starts_with("22") || c.starts_with("23") || c.starts_with("54") || c == "P0001"
        })
}

/// True for a unique violation (another write got there first).
pub(super) fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

/// The unique constraint an error violated, if any.
pub(super) fn violated(e: &sqlx::Error) -> Option<&str> {
    e.as_database_error()
        .filter(|d| d.is_unique_violation())
        .and_then(|d| d.constraint())
}

/// True when a statement named a table that does not exist (SQLSTATE
/// 42P01 "undefined_table"): a schema not migrated yet, or a view version
/// whose table is not created yet.
pub(crate) fn is_undefined_table(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "42P01")
}
