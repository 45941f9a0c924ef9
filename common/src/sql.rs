//! SQLite columns for the ids and statuses (feature `sqlite`), so a store
//! reads a row into typed fields by column name and a bad value in the
//! database is refused by the same checks as a bad value in a message.
//!
//! Each type is stored as the text it has in messages: the id's string, the
//! status's [`as_str`](crate::messages::JobStatus::as_str) name.

use crate::ids::{BranchName, CommitId, ImageRef, JobId, RepoName, RepoUrl, SuitePath, WorkerId};
use crate::messages::{JobStatus, TestStatus};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

/// A status name that is not one of the type's.
#[derive(Debug, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
struct UnknownName {
    kind: &'static str,
    value: String,
}

fn text(value: ValueRef<'_>) -> FromSqlResult<&str> {
    value.as_str()
}

macro_rules! text_column {
    ($($ty:ty),* $(,)?) => {$(
        impl ToSql for $ty {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $ty {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                <$ty>::parse(text(value)?).map_err(|error| FromSqlError::Other(Box::new(error)))
            }
        }
    )*};
}

text_column!(
    BranchName, CommitId, ImageRef, RepoName, RepoUrl, SuitePath, WorkerId
);

impl ToSql for JobId {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.to_string()))
    }
}

impl FromSql for JobId {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        text(value)?
            .parse()
            .map_err(|error: crate::ids::InvalidId| FromSqlError::Other(Box::new(error)))
    }
}

macro_rules! status_column {
    ($($ty:ty => $kind:literal),* $(,)?) => {$(
        impl ToSql for $ty {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $ty {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                let value = text(value)?;
                <$ty>::parse(value).ok_or_else(|| {
                    FromSqlError::Other(Box::new(UnknownName {
                        kind: $kind,
                        value: value.to_owned(),
                    }))
                })
            }
        }
    )*};
}

status_column!(JobStatus => "job status", TestStatus => "test status");

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    fn round_trip<T: ToSql + FromSql>(value: &T) -> rusqlite::Result<T> {
        let conn = Connection::open_in_memory().unwrap();
        conn.query_row("SELECT ?1", [value], |row| row.get(0))
    }

    fn read<T: FromSql>(text: &str) -> rusqlite::Result<T> {
        let conn = Connection::open_in_memory().unwrap();
        conn.query_row("SELECT ?1", [text], |row| row.get(0))
    }

    #[test]
    fn ids_and_statuses_round_trip_as_their_message_text() {
        let sha = CommitId::parse(&"ab".repeat(20)).unwrap();
        assert_eq!(round_trip(&sha).unwrap(), sha);
        let job = JobId::new();
        assert_eq!(round_trip(&job).unwrap(), job);
        assert_eq!(
            round_trip(&JobStatus::TimedOut).unwrap(),
            JobStatus::TimedOut
        );
        assert_eq!(read::<JobStatus>("timed_out").unwrap(), JobStatus::TimedOut);
        assert_eq!(read::<TestStatus>("skipped").unwrap(), TestStatus::Skipped);
        assert_eq!(read::<RepoName>("api").unwrap().as_str(), "api");
    }

    #[test]
    fn a_bad_value_in_the_database_is_refused_with_the_reason() {
        let err = read::<RepoName>("../etc").unwrap_err().to_string();
        assert!(err.contains("repository name"), "{err}");
        let err = read::<JobStatus>("maybe").unwrap_err().to_string();
        assert!(err.contains("unknown job status \"maybe\""), "{err}");
        let err = read::<JobId>("not-a-uuid").unwrap_err().to_string();
        assert!(err.contains("expected a UUID"), "{err}");
        let conn = Connection::open_in_memory().unwrap();
        let err = conn
            .query_row("SELECT 7", [], |row| row.get::<_, CommitId>(0))
            .unwrap_err();
        assert!(
            matches!(err, rusqlite::Error::InvalidColumnType(..)),
            "{err}"
        );
    }
}
