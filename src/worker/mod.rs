//! The Workers glue, compiled only for wasm32: entry points for cron ticks and HTTP requests,
//! the Durable Object that owns the run, and adapters from the core's plain values to the
//! runtime's `Fetch` and SQLite. It decides nothing itself.

mod coordinator;
mod fetch;
mod sql;

use serde_json::json;
use worker::{
    event, Context, Env, Headers, Method, Request, RequestInit, Response, Result, ScheduleContext,
    ScheduledEvent,
};

use crate::api::{archive_target, route, Route, MAX_RESTORE_BODY_BYTES};
use crate::config::admin_token;

/// The Durable Object binding in wrangler.toml.
const COORDINATOR_BINDING: &str = "COORDINATOR";
/// All state lives in one object: one writer for the cursor and the rate window.
const COORDINATOR_NAME: &str = "backup";

/// A setting from `[vars]`, `.dev.vars` or a secret: all reach the worker as strings.
pub(crate) fn setting(env: &Env, name: &str) -> Option<String> {
    env.var(name).ok().map(|v| v.to_string())
}

/// Tells the coordinator the origin a `POST /restore` came in on (the archive URL's).
const ORIGIN_HEADER: &str = "X-Worker-Origin";
/// Tells the coordinator the method an archive was asked with.
const METHOD_HEADER: &str = "X-Archive-Method";

async fn ask_coordinator(env: &Env, method: Method, path: &str) -> Result<Response> {
    let request = Request::new(&format!("https://coordinator{path}"), method)?;
    coordinator_fetch(env, request).await
}

async fn coordinator_fetch(env: &Env, request: Request) -> Result<Response> {
    let stub = env
        .durable_object(COORDINATOR_BINDING)?
        .id_from_name(COORDINATOR_NAME)?
        .get_stub()?;
    stub.fetch_with_request(request).await
}

/// 32 bytes from the platform's cryptographic source (`crypto.getRandomValues`).
pub(crate) fn random_bytes() -> Result<[u8; 32]> {
    let array = js_sys::Uint8Array::new_with_length(32);
    let crypto = js_sys::Reflect::get(&js_sys::global(), &"crypto".into())?;
    let fill: js_sys::Function = js_sys::Reflect::get(&crypto, &"getRandomValues".into())?.into();
    fill.call1(&crypto, &array)?;
    let mut bytes = [0; 32];
    array.copy_to(&mut bytes);
    Ok(bytes)
}

/// `POST /restore`: the body and the origin it came in on, to the coordinator.
async fn restore(env: &Env, mut req: Request) -> Result<Response> {
    let body = req.bytes().await?;
    if body.len() as u64 > MAX_RESTORE_BODY_BYTES {
        return json_error(
            413,
            &format!("/restore takes a body of at most {MAX_RESTORE_BODY_BYTES} bytes"),
        );
    }
    let headers = Headers::new();
    headers.set(ORIGIN_HEADER, &req.url()?.origin().ascii_serialization())?;
    headers.set("Content-Type", "application/json")?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(body.into()));
    coordinator_fetch(
        env,
        Request::new_with_init("https://coordinator/restore", &init)?,
    )
    .await
}

/// An archive URL: the coordinator checks the capability and signs the object's request; this
/// stateless invocation streams the bucket's answer to GitLab (the object's bytes never pass
/// through the object, nor through this worker's code).
async fn archive(env: &Env, req: &Request, path: &str) -> Result<Response> {
    let head = req.method() == Method::Head;
    let headers = Headers::new();
    headers.set(METHOD_HEADER, if head { "HEAD" } else { "GET" })?;
    let mut init = RequestInit::new();
    init.with_method(Method::Get).with_headers(headers);
    let mut opened = coordinator_fetch(
        env,
        Request::new_with_init(&format!("https://coordinator{path}"), &init)?,
    )
    .await?;
    if opened.status_code() != 200 {
        return Ok(opened);
    }
    #[derive(serde::Deserialize)]
    struct Signed {
        url: String,
        headers: Vec<(String, String)>,
    }
    let signed: Signed = opened.json().await?;
    let mut object = fetch::stream(
        if head { Method::Head } else { Method::Get },
        &signed.url,
        &signed.headers,
    )
    .await?;
    match object.status_code() {
        200 => {}
        404 => return json_error(404, "the backup is no longer in the bucket"),
        status => {
            let detail = object.text().await.unwrap_or_default();
            worker::console_error!(
                "{}",
                json!({"event": "archive_failed", "status": status, "detail": crate::http::excerpt(&detail)})
            );
            return json_error(502, &format!("the bucket answered {status}"));
        }
    }
    let answer = Headers::new();
    let content_type = object.headers().get("Content-Type")?;
    answer.set(
        "Content-Type",
        content_type
            .as_deref()
            .unwrap_or(crate::s3::ARCHIVE_CONTENT_TYPE),
    )?;
    if let Some(length) = object.headers().get("Content-Length")? {
        answer.set("Content-Length", &length)?;
    }
    answer.set("Cache-Control", "no-store")?;
    let body = if head {
        worker::ResponseBody::Empty
    } else {
        object.body().clone()
    };
    Ok(Response::builder()
        .with_status(200)
        .with_headers(answer)
        .body(body))
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
        Ok(Route::Restore) => restore(&env, req).await,
        Ok(Route::Archive) => {
            let path = req.path();
            match archive_target(&path) {
                Some(_) => archive(&env, &req, &path).await,
                None => json_error(404, "no such archive"),
            }
        }
        Err(refusal) => {
            let mut response = json_error(refusal.status, &refusal.message)?;
            if let Some((name, value)) = refusal.header {
                response.headers_mut().set(name, value)?;
            }
            Ok(response)
        }
    }
}
