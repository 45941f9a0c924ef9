//! Reading rows by column name into typed values.
//!
//! [`get`] reads one column and, when its value does not convert (an id
//! that fails its checks, an unknown status, bad JSON), names the column in
//! the error, which becomes [`StoreError::Corrupt`]. The ids and statuses
//! convert themselves (`warren_common::sql`); this file adds the columns
//! whose text has a shape of ours: timestamps, JSON, and a status that is
//! `running`/`queued` until decided.

use super::{QUEUED, RUNNING, StoreError};
use chrono::{DateTime, Utc};
use rusqlite::Row;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ValueRef};
use serde::de::DeserializeOwned;
use warren_common::messages::JobStatus;

/// A column whose value did not convert, and why.
#[derive(Debug, thiserror::Error)]
#[error("{column}: {source}")]
pub(super) struct BadColumn {
    column: &'static str,
    source: Box<dyn std::error::Error + Send + Sync>,
}

/// Column `column` of `row` as a `T`, the column named if it does not convert.
pub(super) fn get<T: FromSql>(row: &Row<'_>, column: &'static str) -> rusqlite::Result<T> {
    row.get(column).map_err(|error| match error {
        rusqlite::Error::FromSqlConversionFailure(index, kind, source) => {
            rusqlite::Error::FromSqlConversionFailure(
                index,
                kind,
                Box::new(BadColumn { column, source }),
            )
        }
        other => other,
    })
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        match error {
            rusqlite::Error::FromSqlConversionFailure(_, _, source) if source.is::<BadColumn>() => {
                let bad = source.downcast::<BadColumn>().expect("checked by is()");
                StoreError::Corrupt {
                    column: bad.column,
                    message: bad.source.to_string(),
                }
            }
            other => StoreError::Sqlite(other),
        }
    }
}

/// A timestamp column (RFC 3339 text, as [`ts`](super::ts) writes it).
pub(super) fn at(row: &Row<'_>, column: &'static str) -> rusqlite::Result<DateTime<Utc>> {
    Ok(get::<At>(row, column)?.0)
}

/// A timestamp column that may be NULL.
pub(super) fn opt_at(
    row: &Row<'_>,
    column: &'static str,
) -> rusqlite::Result<Option<DateTime<Utc>>> {
    Ok(get::<Option<At>>(row, column)?.map(|at| at.0))
}

/// A JSON column.
pub(super) fn json<T: DeserializeOwned>(
    row: &Row<'_>,
    column: &'static str,
) -> rusqlite::Result<T> {
    Ok(get::<Json<T>>(row, column)?.0)
}

/// A JSON column that may be NULL.
pub(super) fn opt_json<T: DeserializeOwned>(
    row: &Row<'_>,
    column: &'static str,
) -> rusqlite::Result<Option<T>> {
    Ok(get::<Option<Json<T>>>(row, column)?.map(|value| value.0))
}

/// A commit's or job's status column: `None` while it runs (`running`,
/// `queued`).
pub(super) fn verdict(row: &Row<'_>, column: &'static str) -> rusqlite::Result<Option<JobStatus>> {
    Ok(get::<Verdict>(row, column)?.0)
}

struct At(DateTime<Utc>);

impl FromSql for At {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        DateTime::parse_from_rfc3339(value.as_str()?)
            .map(|at| At(at.with_timezone(&Utc)))
            .map_err(|error| FromSqlError::Other(Box::new(error)))
    }
}

struct Json<T>(T);

impl<T: DeserializeOwned> FromSql for Json<T> {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        serde_json::from_str(value.as_str()?)
            .map(Json)
            .map_err(|error| FromSqlError::Other(Box::new(error)))
    }
}

struct Verdict(Option<JobStatus>);

impl FromSql for Verdict {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        match value.as_str()? {
            RUNNING | QUEUED => Ok(Verdict(None)),
            _ => JobStatus::column_result(value).map(|status| Verdict(Some(status))),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::SyncMode;
    use crate::store::{Store, StoreError};
    use chrono::Utc;
    use rusqlite::Connection;

    #[test]
    fn a_bad_value_in_the_database_names_its_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("warren.db");
        let mut store = Store::open(&path, SyncMode::Normal).unwrap();
        let event = warren_harness::builders::commit_event("/srv/api.git", &"c".repeat(40))
            .repo("api")
            .build();
        let id = store
            .insert_errored(&event, "bad config", Utc::now())
            .unwrap();
        let conn = Connection::open(&path).unwrap();
        for (set, column, reason) in [
            ("repo = '../etc'", "repo", "invalid repository name"),
            ("status = 'maybe'", "status", "unknown job status \"maybe\""),
            (
                "detected_at = 'yesterday'",
                "detected_at",
                "premature end of input",
            ),
            ("selection = '{'", "selection", "EOF while parsing"),
        ] {
            let before = conn
                .query_row(
                    "SELECT repo, status, detected_at, selection FROM commits",
                    [],
                    |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, String>(2)?,
                            row.get::<_, Option<String>>(3)?,
                        ))
                    },
                )
                .unwrap();
            conn.execute(&format!("UPDATE commits SET {set}"), [])
                .unwrap();
            match store.commit_report(id) {
                Err(StoreError::Corrupt {
                    column: named,
                    message,
                }) => {
                    assert_eq!(named, column, "{set}");
                    assert!(message.contains(reason), "{set}: {message}");
                }
                other => panic!("{set}: expected a corrupt column, got {other:?}"),
            }
            conn.execute(
                "UPDATE commits SET repo = ?1, status = ?2, detected_at = ?3, selection = ?4",
                rusqlite::params![before.0, before.1, before.2, before.3],
            )
            .unwrap();
            store.commit_report(id).expect("restored");
        }
    }
}
