//! The Workers glue, compiled only for wasm32: entry points for cron ticks and HTTP requests,
//! the Durable Object that owns the run, and adapters from the core's plain values to the
//! runtime's `Fetch` and SQLite. It decides nothing itself.

mod coordinator;
mod fetch;
mod sql;

use worker::{
    event, Context, Env, Method, Request, Response, Result, ScheduleContext, ScheduledEvent,
};

/// The Durable Object binding in wrangler.toml.
const COORDINATOR_BINDING: &str = "COORDINATOR";
/// All state lives in one object: one writer for the cursor and the rate window.
const COORDINATOR_NAME: &str = "backup";

async fn ask_coordinator(env: &Env, path: &str) -> Result<Response> {
    let stub = env
        .durable_object(COORDINATOR_BINDING)?
        .id_from_name(COORDINATOR_NAME)?
        .get_stub()?;
    let request = Request::new(&format!("https://coordinator{path}"), Method::Post)?;
    stub.fetch_with_request(request).await
}

/// Each cron tick asks the coordinator to advance the run.
#[event(scheduled)]
async fn scheduled(_event: ScheduledEvent, env: Env, _ctx: ScheduleContext) {
    match ask_coordinator(&env, "/tick").await {
        Ok(response) if response.status_code() == 200 => {}
        Ok(mut response) => {
            let body = response.text().await.unwrap_or_default();
            worker::console_error!(
                "{}",
                serde_json::json!({"event": "tick_failed", "status": response.status_code(), "detail": body})
            );
        }
        Err(e) => worker::console_error!(
            "{}",
            serde_json::json!({"event": "tick_failed", "detail": e.to_string()})
        ),
    }
}

#[event(fetch)]
async fn fetch(req: Request, _env: Env, _ctx: Context) -> Result<Response> {
    match (req.method(), req.path().as_str()) {
        (Method::Get, "/") => Response::ok("gitlab-backup: backups run on the cron trigger\n"),
        _ => Response::error("Not Found", 404),
    }
}
