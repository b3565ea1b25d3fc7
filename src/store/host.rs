//! The store on the host: rusqlite, for the tests and the benchmark.

use super::{Row, Sql, StoreError, Value};
use rusqlite::types::{ToSqlOutput, ValueRef};

/// A rusqlite connection; `.1` counts the steps statements spent walking a whole table or
/// index without a search (SQLite's `FULLSCAN_STEP`), for benchmarks.
pub struct HostSql(pub rusqlite::Connection, pub std::cell::Cell<u64>);

impl HostSql {
    pub fn in_memory() -> HostSql {
        let connection = rusqlite::Connection::open_in_memory().expect("an in-memory SQLite opens");
        // Room for every statement of the store, so none is compiled twice.
        connection.set_prepared_statement_cache_capacity(64);
        HostSql(connection, std::cell::Cell::new(0))
    }

    /// An in-memory database holding `dump`: SQL statements (a store's schema and its rows, as
    /// the fixtures of `store/fixtures/` have them).
    pub fn from_dump(dump: &str) -> Result<HostSql, StoreError> {
        let db = HostSql::in_memory();
        db.0.execute_batch(dump)
            .map_err(|e| StoreError(e.to_string()))?;
        Ok(db)
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Value::Real(f) => ToSqlOutput::Borrowed(ValueRef::Real(*f)),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}

impl Sql for &HostSql {
    fn exec(&self, query: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        let err = |e: rusqlite::Error| StoreError(e.to_string());
        let mut statement = self.0.prepare_cached(query).map_err(err)?;
        let width = statement.column_count();
        let mut rows = statement
            .query(rusqlite::params_from_iter(params.iter()))
            .map_err(err)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(err)? {
            let mut values = Vec::with_capacity(width);
            for i in 0..width {
                values.push(match row.get_ref(i).map_err(err)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(i) => Value::Int(i),
                    ValueRef::Real(f) => Value::Real(f),
                    ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Blob(_) => {
                        return Err(StoreError("blobs are not used by this schema".into()))
                    }
                });
            }
            out.push(values);
        }
        drop(rows);
        let scanned = statement.get_status(rusqlite::StatementStatus::FullscanStep);
        statement.reset_status(rusqlite::StatementStatus::FullscanStep);
        self.1.set(self.1.get() + scanned as u64);
        Ok(out)
    }

    fn rows_written(&self) -> u64 {
        self.0.total_changes()
    }

    fn transaction(
        &self,
        body: &mut dyn FnMut() -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let err = |e: rusqlite::Error| StoreError(e.to_string());
        self.0
            .execute_batch("SAVEPOINT store_transaction")
            .map_err(err)?;
        match body() {
            Ok(()) => self
                .0
                .execute_batch("RELEASE store_transaction")
                .map_err(err),
            Err(e) => {
                self.0
                    .execute_batch("ROLLBACK TO store_transaction; RELEASE store_transaction")
                    .map_err(err)?;
                Err(e)
            }
        }
    }
}
