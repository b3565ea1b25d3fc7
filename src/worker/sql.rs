//! The Durable Object's SQLite storage behind the core's [`Sql`] trait.

use crate::store::{Row, Sql, StoreError, Value};
use worker::{SqlStorage, SqlStorageValue};

pub struct DurableSql(pub SqlStorage);

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
        cursor
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
            .collect()
    }
}
