//! The Durable Object that owns the backup: the only writer of the run's cursor and of the
//! rate window. Cron ticks, alarms and `POST /run` all reach it, and it runs one tick at a
//! time: the core decides, this file carries the decisions out.

use std::cell::Cell;

use serde_json::json;
use worker::{
    durable_object, wasm_bindgen, Date, DurableObject, Env, Request, Response, Result, State,
};

use super::fetch::{send, send_all};
use super::setting;
use super::sql::DurableSql;
use crate::api::archive_target;
use crate::config::{Config, ConfigError};
use crate::engine::restores::{
    archive_request, restores_wake, Admission, ArchiveAccess, Restores, RestoresReport,
};
use crate::engine::{
    arrival, cancel, Arrival, Begin, Cancel, Start, Tick, TickReport, REQUEST_TIMEOUT,
};
use crate::http::Method as HttpMethod;
use crate::status::status;
use crate::store::{Store, StoreError};

#[durable_object]
pub struct Coordinator {
    state: State,
    env: Env,
    /// Set while a tick runs: the runtime delivers other events to this object while a tick
    /// awaits a subrequest, and those must not start a second tick.
    ticking: Cell<bool>,
    /// Set once this instance created the schema: later requests skip the CREATE statements.
    schema_ready: Cell<bool>,
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

fn storage_error(e: StoreError) -> worker::Error {
    log(json!({"event": "storage_error", "detail": e.to_string()}));
    worker::Error::RustError(e.to_string())
}

impl DurableObject for Coordinator {
    fn new(state: State, env: Env) -> Self {
        Coordinator {
            state,
            env,
            ticking: Cell::new(false),
            schema_ready: Cell::new(false),
        }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        match req.path().as_str() {
            "/tick" => self.tick(Start::IfDue).await,
            "/run" => self.tick(Start::Now).await,
            "/run/cancel" => {
                let answer = self.cancel()?;
                if answer.status_code() == 200 {
                    // The run's record is written by ticks from now on: the first one at once.
                    let _ = self.tick(Start::IfDue).await;
                }
                Ok(answer)
            }
            "/status" => self.status(),
            "/restore" => self.restore(req).await,
            path => match archive_target(path) {
                Some((id, capability)) => self.archive(&req, id, capability),
                None => Response::error("Not Found", 404),
            },
        }
    }

    async fn alarm(&self) -> Result<Response> {
        // An alarm must end Ok, or the runtime retries it; failures are logged by `tick`.
        let _ = self.tick(Start::IfDue).await;
        Response::ok("ok")
    }
}

impl Coordinator {
    fn config(&self) -> std::result::Result<Config, ConfigError> {
        Config::from_lookup(|name| setting(&self.env, name))
    }

    fn store(&self) -> Result<Store<DurableSql>> {
        let sql = DurableSql::new(self.state.storage());
        if self.schema_ready.get() {
            return Ok(Store::opened(sql));
        }
        let store = Store::open(sql).map_err(storage_error)?;
        self.schema_ready.set(true);
        Ok(store)
    }

    fn status(&self) -> Result<Response> {
        let config = self.config();
        let report = status(&self.store()?, config.as_ref(), now_ms()).map_err(storage_error)?;
        Response::from_json(&report)
    }

    /// Cancels the run that is going; while a tick runs (its answers are recorded first), the
    /// caller is asked to try again in a few seconds.
    fn cancel(&self) -> Result<Response> {
        if self.ticking.get() {
            let mut response = Response::from_json(
                &json!({"error": "a tick is running; try again in a few seconds"}),
            )?
            .with_status(503);
            response.headers_mut().set("Retry-After", "5")?;
            return Ok(response);
        }
        let store = self.store()?;
        match cancel(&store, now_ms()).map_err(storage_error)? {
            Cancel::NoRun => Ok(Response::from_json(&json!({"error": "no run is going"}))?
                .with_status(409)),
            Cancel::AlreadyCancelled(run) => Ok(Response::from_json(
                &json!({"error": "the run is cancelled already and is writing its record", "run": run.id}),
            )?
            .with_status(409)),
            Cancel::Cancelled(run, event) => {
                log(serde_json::to_value(&event)?);
                Response::from_json(&json!({"cancelled": run.id, "run": run}))
            }
        }
    }

    /// `POST /restore`: admits the restore (asking GitLab or the bucket what the request
    /// names), records it, and wakes the object at once to send its import.
    async fn restore(&self, mut req: Request) -> Result<Response> {
        let config = match self.config() {
            Ok(config) => config,
            Err(e) => {
                return Ok(Response::from_json(
                    &json!({"error": e.to_string(), "problems": e.problems}),
                )?
                .with_status(503))
            }
        };
        let origin = req
            .headers()
            .get(super::ORIGIN_HEADER)?
            .and_then(|origin| url::Url::parse(&origin).ok());
        let Some(origin) = origin else {
            return json_refusal(500, None, "the worker did not say its origin");
        };
        let body = req.bytes().await?;
        let store = self.store()?;
        let admission =
            Admission::new(&store, &config, &body, &origin, now_ms()).map_err(storage_error)?;
        let mut admission = match admission {
            Ok(admission) => admission,
            Err(refusal) => return json_refusal(refusal.status, refusal.field, &refusal.message),
        };
        loop {
            let request = match admission.next_request(now_ms()) {
                Ok(Some(request)) => request,
                Ok(None) => break,
                Err(refusal) => {
                    return json_refusal(refusal.status, refusal.field, &refusal.message)
                }
            };
            let answer = send(&request, REQUEST_TIMEOUT).await;
            if let Err(refusal) = admission.handle(answer) {
                return json_refusal(refusal.status, refusal.field, &refusal.message);
            }
        }
        let (restore, event) = admission.admit(&store, now_ms()).map_err(storage_error)?;
        log(serde_json::to_value(&event)?);
        // The import goes out from the alarm, at once (a tick may be running now).
        self.state.storage().set_alarm(0).await?;
        Ok(Response::from_json(&json!({"restore": {
            "id": restore.id,
            "project": restore.project_path,
            "key": restore.key,
            "target": restore.target(),
            "state": restore.state,
        }}))?
        .with_status(202))
    }

    /// An archive URL's request: the signed request of the object for the worker to stream,
    /// or the refusal.
    fn archive(&self, req: &Request, id: u64, capability: &str) -> Result<Response> {
        let method = match req.headers().get(super::METHOD_HEADER)?.as_deref() {
            Some("HEAD") => HttpMethod::Head,
            _ => HttpMethod::Get,
        };
        let config = match self.config() {
            Ok(config) => config,
            Err(_) => return json_refusal(503, None, "the worker's configuration has problems"),
        };
        let store = self.store()?;
        match archive_request(&store, &config, id, capability, method, now_ms())
            .map_err(storage_error)?
        {
            ArchiveAccess::Open(request) => Response::from_json(&json!({
                "url": request.url.as_str(),
                "headers": request.headers,
            })),
            ArchiveAccess::Refused(status, reason) => json_refusal(status, None, reason),
        }
    }

    /// Moves the due restores a step, within `budget` subrequests: what they spent, and their
    /// report.
    async fn advance_restores(
        &self,
        store: &Store<DurableSql>,
        config: &Config,
        budget: u32,
    ) -> std::result::Result<RestoresReport, StoreError> {
        let mut restores = Restores::begin(store, config, budget);
        // Random bytes only for the imports that go out.
        let steps = restores.next_steps(now_ms(), &mut || super::random_bytes().ok())?;
        let answers = send_all(steps.iter().map(|step| &step.request), REQUEST_TIMEOUT).await;
        for (step, answer) in steps.into_iter().zip(answers) {
            restores.handle(step, answer, now_ms())?;
        }
        restores.finish(now_ms())
    }

    async fn tick(&self, start: Start) -> Result<Response> {
        let config = match self.config() {
            Ok(config) => config,
            Err(e) => {
                log(json!({"event": "config_error", "problems": e.problems}));
                return Ok(Response::from_json(
                    &json!({"error": e.to_string(), "problems": e.problems}),
                )?
                .with_status(503));
            }
        };
        let store = self.store()?;
        let busy = self.ticking.get();
        // Only a manual start while busy needs to know whether a run is going.
        let active = if busy && start == Start::Now {
            store.active_run().map_err(storage_error)?.map(|run| run.id)
        } else {
            None
        };
        match arrival(busy, start, active) {
            Arrival::Tick | Arrival::StartOnly => {}
            Arrival::Skip => {
                return Response::from_json(
                    &json!({"tick": "skipped", "reason": "a tick is running"}),
                )
            }
            Arrival::AlreadyRunning(run) => {
                return Ok(Response::from_json(
                    &json!({"error": "a run is already going", "run": run}),
                )?
                .with_status(409))
            }
        }
        self.ticking.set(true);
        let _guard = (!busy).then(|| TickGuard(&self.ticking));
        // The restores go first, with a few of the invocation's subrequests: a long listing
        // never starves them.
        let restores = if busy {
            RestoresReport::default()
        } else {
            let budget = config.subrequests_per_invocation / 4;
            self.advance_restores(&store, &config, budget)
                .await
                .map_err(storage_error)?
        };
        for event in &restores.events {
            log(serde_json::to_value(event)?);
        }
        let mut tick = match Tick::begin(&store, &config, now_ms(), start).map_err(storage_error)? {
            Begin::Idle => {
                let due = restores_wake(&store, &restores).map_err(storage_error)?;
                self.wake_at(due).await?;
                return Response::from_json(&json!({"tick": "idle"}));
            }
            Begin::Paused(event) => {
                log(serde_json::to_value(&event)?);
                let due = restores_wake(&store, &restores).map_err(storage_error)?;
                self.wake_at(due).await?;
                return Response::from_json(&json!({"tick": "paused", "why": event}));
            }
            Begin::AlreadyRunning(run) => {
                return Ok(Response::from_json(
                    &json!({"error": "a run is already going", "run": run}),
                )?
                .with_status(409))
            }
            Begin::Tick(tick) => tick,
        };
        tick.reserve(restores.subrequests);
        if busy {
            let run = tick.run().clone();
            let report = tick.finish_busy(now_ms()).map_err(storage_error)?;
            self.report(&report, None).await?;
            return Ok(
                Response::from_json(&json!({"run": run, "advanced": false}))?.with_status(202),
            );
        }
        let result = async {
            loop {
                let steps = tick.next_steps(now_ms())?;
                if steps.is_empty() {
                    break;
                }
                let answers =
                    send_all(steps.iter().map(|step| &step.request), REQUEST_TIMEOUT).await;
                for (step, answer) in steps.into_iter().zip(answers) {
                    tick.handle(step, answer, now_ms())?;
                }
            }
            Ok::<(), StoreError>(())
        }
        .await;
        let run = tick.run().clone();
        let finished = tick.finish(now_ms());
        if let Ok(report) = &finished {
            let due = restores_wake(&store, &restores).map_err(storage_error)?;
            self.report(report, due).await?;
        }
        // A failed step's error comes first: it came first.
        result.map_err(storage_error)?;
        let report = finished.map_err(storage_error)?;
        let body = json!({
            "run": run,
            "subrequests": report.subrequests,
            "exports": report.exports,
            "wake_at_ms": report.wake_at_ms,
            "wake_for": report.wake_for,
        });
        let status = if start == Start::Now { 202 } else { 200 };
        Ok(Response::from_json(&body)?.with_status(status))
    }

    /// Logs the tick's events and sets the alarm for when work can go on: the run's or a
    /// restore's, whichever comes first.
    async fn report(&self, report: &TickReport, restore_due: Option<u64>) -> Result<()> {
        for event in &report.events {
            log(serde_json::to_value(event)?);
        }
        let wake = match (report.wake_at_ms, restore_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.wake_at(wake).await
    }

    async fn wake_at(&self, at: Option<u64>) -> Result<()> {
        if let Some(at) = at {
            let offset = at.saturating_sub(now_ms()) as i64;
            self.state.storage().set_alarm(offset).await?;
        }
        Ok(())
    }
}

fn json_refusal(status: u16, field: Option<&str>, message: &str) -> Result<Response> {
    Ok(Response::from_json(&json!({"error": message, "field": field}))?.with_status(status))
}
