//! The Durable Object's SQLite storage behind the core's [`Sql`] trait.

use std::cell::Cell;

use crate::store::{Row, Sql, StoreError, Value};
use worker::js_sys::{Function, Reflect};
use worker::wasm_bindgen::closure::ScopedClosure;
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::{SqlStorage, SqlStorageValue, Storage};

/// The object's storage: its SQL, the storage API whose `transactionSync` makes a batch of
/// statements atomic (the SQL API refuses `BEGIN` and `COMMIT`), and the rows its cursors
/// reported written.
pub struct DurableSql {
    sql: SqlStorage,
    storage: Storage,
    rows_written: Cell<u64>,
}

impl DurableSql {
    pub fn new(storage: Storage) -> DurableSql {
        DurableSql {
            sql: storage.sql(),
            storage,
            rows_written: Cell::new(0),
        }
    }
}

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
            .sql
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
        self.rows_written
            .set(self.rows_written.get() + cursor.rows_written() as u64);
        rows
    }

    fn rows_written(&self) -> u64 {
        self.rows_written.get()
    }

    /// `ctx.storage.transactionSync(body)`: the runtime rolls back every write of `body` when
    /// it throws, which the closure does when `body` fails.
    fn transaction(
        &self,
        body: &mut dyn FnMut() -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let storage: &JsValue = self.storage.as_raw();
        let transaction_sync = Reflect::get(storage, &JsValue::from_str("transactionSync"))
            .ok()
            .and_then(|f| f.dyn_into::<Function>().ok())
            .ok_or_else(|| StoreError("the storage has no transactionSync".into()))?;
        let mut failure = None;
        let mut run = || -> Result<(), JsValue> {
            body().map_err(|e| {
                let thrown = JsValue::from_str(&e.0);
                failure = Some(e);
                thrown
            })
        };
        // Borrowed, not owned: `transactionSync` calls it before it returns, and the closure
        // is invalidated when dropped here.
        let callback = ScopedClosure::<dyn FnMut() -> Result<(), JsValue>>::borrow_mut(&mut run);
        let outcome = transaction_sync.call1(storage, callback.as_js_value());
        drop(callback);
        match outcome {
            Ok(_) => Ok(()),
            Err(thrown) => Err(failure.unwrap_or_else(|| {
                StoreError(format!(
                    "transactionSync failed: {}",
                    thrown.as_string().unwrap_or_else(|| format!("{thrown:?}"))
                ))
            })),
        }
    }
}
