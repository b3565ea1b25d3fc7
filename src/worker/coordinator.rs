//! The Durable Object that owns the backup: the only writer of the run's cursor and of the
//! rate window. Cron ticks, alarms and manual calls all reach it, and it runs one tick at a
//! time: the core decides, this file carries the decisions out.

use std::cell::Cell;

use serde_json::json;
use worker::{
    durable_object, wasm_bindgen, Date, DurableObject, Env, Request, Response, Result, State,
};

use super::fetch::send;
use super::sql::DurableSql;
use crate::config::Config;
use crate::engine::{Tick, TickReport, REQUEST_TIMEOUT};
use crate::store::Store;

#[durable_object]
pub struct Coordinator {
    state: State,
    env: Env,
    /// Set while a tick runs: the runtime delivers other events to this object while a tick
    /// awaits a subrequest, and those must not start a second tick.
    ticking: Cell<bool>,
}

/// Clears the tick flag however the tick ends.
struct TickGuard<'a>(&'a Cell<bool>);

impl Drop for TickGuard<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

fn now_ms() -> u64 {
    Date::now().as_millis()
}

fn log(value: serde_json::Value) {
    worker::console_log!("{value}");
}

impl DurableObject for Coordinator {
    fn new(state: State, env: Env) -> Self {
        Coordinator {
            state,
            env,
            ticking: Cell::new(false),
        }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        match req.path().as_str() {
            "/tick" => self.tick().await,
            _ => Response::error("Not Found", 404),
        }
    }

    async fn alarm(&self) -> Result<Response> {
        // An alarm must end Ok, or the runtime retries it; failures are logged by `tick`.
        let _ = self.tick().await;
        Response::ok("ok")
    }
}

impl Coordinator {
    /// A setting from `[vars]` or a secret; wrangler hands both over as strings.
    fn setting(&self, name: &str) -> Option<String> {
        self.env.var(name).ok().map(|v| v.to_string())
    }

    async fn tick(&self) -> Result<Response> {
        if self.ticking.replace(true) {
            return Response::from_json(
                &json!({"tick": "skipped", "reason": "a tick is already running"}),
            );
        }
        let _guard = TickGuard(&self.ticking);

        let config = match Config::from_lookup(|name| self.setting(name)) {
            Ok(config) => config,
            Err(e) => {
                log(json!({"event": "config_error", "problems": e.problems}));
                return Response::from_json(
                    &json!({"tick": "config_error", "problems": e.problems}),
                );
            }
        };
        let store =
            Store::open(DurableSql(self.state.storage().sql())).map_err(|e| e.to_string())?;
        let Some(mut tick) = Tick::begin(&store, &config, now_ms()).map_err(|e| e.to_string())?
        else {
            return Response::from_json(&json!({"tick": "idle"}));
        };
        let result = async {
            while let Some(step) = tick.next_step(now_ms())? {
                let answer = send(&step.request, REQUEST_TIMEOUT).await;
                tick.handle(step, answer, now_ms())?;
            }
            Ok::<(), crate::store::StoreError>(())
        }
        .await;
        let run = tick.run().clone();
        let report = tick.finish(now_ms());
        self.report(&report).await?;
        if let Err(e) = result {
            log(json!({"event": "storage_error", "detail": e.to_string()}));
            return Response::error(e.to_string(), 500);
        }
        Response::from_json(&json!({
            "tick": "done",
            "run": run,
            "subrequests": report.subrequests,
            "exports": report.exports,
            "wake_at_ms": report.wake_at_ms,
        }))
    }

    /// Logs the tick's events and sets the alarm for when work can go on.
    async fn report(&self, report: &TickReport) -> Result<()> {
        for event in &report.events {
            log(serde_json::to_value(event)?);
        }
        if let Some(at) = report.wake_at_ms {
            let offset = at.saturating_sub(now_ms()) as i64;
            self.state.storage().set_alarm(offset).await?;
        }
        Ok(())
    }
}
