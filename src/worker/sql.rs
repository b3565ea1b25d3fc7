//! The Durable Object's SQLite storage behind the core's [`Sql`] trait.

use std::cell::Cell;

use crate::store::{Row, Sql, StoreError, Value};
use worker::{SqlStorage, SqlStorageValue};

/// The object's SQL storage, and the rows its cursors reported written.
pub struct DurableSql(pub SqlStorage, pub Cell<u64>);

impl Sql for DurableSql {
    fn exec(&self, query: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        let bindings: Vec<SqlStorageValue> = params
            .iter()
            .map(|value| match value {
                Value::Null => SqlStorageValue::Null,
                Value::Int(i) => SqlStorageValue::Integer(*i),
                Value::Real(f) => SqlStorageValue::Float(*f),
                Value::Text(s) => SqlStorageValue::String(s.clone()),
            })
            .collect();
        let cursor = self
            .0
            .exec(query, bindings)
            .map_err(|e| StoreError(e.to_string()))?;
        let rows: Result<Vec<Row>, StoreError> = cursor
            .raw()
            .map(|row| {
                row.map_err(|e| StoreError(e.to_string()))?
                    .into_iter()
                    .map(|value| match value {
                        SqlStorageValue::Null => Ok(Value::Null),
                        SqlStorageValue::Boolean(b) => Ok(Value::Int(i64::from(b))),
                        SqlStorageValue::Integer(i) => Ok(Value::Int(i)),
                        SqlStorageValue::Float(f) => Ok(Value::Real(f)),
                        SqlStorageValue::String(s) => Ok(Value::Text(s)),
                        SqlStorageValue::Blob(_) => {
                            Err(StoreError("blobs are not used by this schema".into()))
                        }
                    })
                    .collect()
            })
            .collect();
        // Counted once the cursor is read to its end.
        self.1.set(self.1.get() + cursor.rows_written() as u64);
        rows
    }

    fn rows_written(&self) -> u64 {
        self.1.get()
    }
}
