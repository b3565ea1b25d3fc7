//! The Workers glue, compiled only for wasm32: entry points for cron ticks and HTTP requests,
//! the Durable Object that owns the run, and adapters from the core's plain values to the
//! runtime's `Fetch` and SQLite. It decides nothing itself.

mod coordinator;
mod fetch;
mod sql;

use serde_json::json;
use worker::{
    event, Context, Env, Method, Request, Response, Result, ScheduleContext, ScheduledEvent,
};

use crate::api::{route, Route};
use crate::config::admin_token;

/// The Durable Object binding in wrangler.toml.
const COORDINATOR_BINDING: &str = "COORDINATOR";
/// All state lives in one object: one writer for the cursor and the rate window.
const COORDINATOR_NAME: &str = "backup";

/// A setting from `[vars]`, `.dev.vars` or a secret: all reach the worker as strings.
pub(crate) fn setting(env: &Env, name: &str) -> Option<String> {
    env.var(name).ok().map(|v| v.to_string())
}

async fn ask_coordinator(env: &Env, method: Method, path: &str) -> Result<Response> {
    let stub = env
        .durable_object(COORDINATOR_BINDING)?
        .id_from_name(COORDINATOR_NAME)?
        .get_stub()?;
    let request = Request::new(&format!("https://coordinator{path}"), method)?;
    stub.fetch_with_request(request).await
}

/// Each cron tick asks the coordinator to advance the run.
#[event(scheduled)]
async fn scheduled(_event: ScheduledEvent, env: Env, _ctx: ScheduleContext) {
    match ask_coordinator(&env, Method::Post, "/tick").await {
        Ok(response) if response.status_code() < 300 => {}
        Ok(mut response) => {
            let body = response.text().await.unwrap_or_default();
            worker::console_error!(
                "{}",
                json!({"event": "tick_failed", "status": response.status_code(), "detail": body})
            );
        }
        Err(e) => worker::console_error!(
            "{}",
            json!({"event": "tick_failed", "detail": e.to_string()})
        ),
    }
}

/// The status page: static HTML that asks for ADMIN_TOKEN, keeps it in the tab's
/// sessionStorage, and reads `GET /status` with it.
fn status_page() -> Result<Response> {
    let mut response = Response::from_html(include_str!("status_page.html"))?;
    let headers = response.headers_mut();
    headers.set(
        "Content-Security-Policy",
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
         connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    )?;
    headers.set("Cache-Control", "no-store")?;
    headers.set("X-Content-Type-Options", "nosniff")?;
    headers.set("Referrer-Policy", "no-referrer")?;
    Ok(response)
}

fn json_error(status: u16, message: &str) -> Result<Response> {
    Ok(Response::from_json(&json!({ "error": message }))?.with_status(status))
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    // A blank one closes the API here; the coordinator reports it as a configuration problem.
    let admin_token = admin_token(setting(&env, "ADMIN_TOKEN").as_deref())
        .ok()
        .flatten();
    let headers = req.headers();
    let decision = route(
        req.method().as_ref(),
        &req.path(),
        headers.get("Content-Length")?.as_deref(),
        headers.get("Authorization")?.as_deref(),
        admin_token.as_ref(),
    );
    match decision {
        Ok(Route::StatusPage) => status_page(),
        Ok(route @ (Route::Run | Route::Cancel)) => {
            ask_coordinator(&env, Method::Post, route.path()).await
        }
        Ok(route @ Route::Status) => ask_coordinator(&env, Method::Get, route.path()).await,
        Err(refusal) => {
            let mut response = json_error(refusal.status, &refusal.message)?;
            if let Some((name, value)) = refusal.header {
                response.headers_mut().set(name, value)?;
            }
            Ok(response)
        }
    }
}
