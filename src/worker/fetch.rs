//! Sends the core's [`HttpRequest`]s with the runtime's `fetch`, with one timeout for the headers
//! and the whole body, and hands the answers back as [`HttpResponse`]s. Redirects are not
//! followed, so no header (the GitLab token) is ever carried to another address.

use std::time::Duration;

use futures_util::future::{select, Either};
use worker::{AbortController, Delay, Fetch, Headers, Request, RequestInit, RequestRedirect};

use crate::http::{HttpRequest, HttpResponse, HttpResult, Method};

/// Sends `requests` together (they are independent), each with `timeout`; the answers in order.
pub async fn send_all<'r>(
    requests: impl Iterator<Item = &'r HttpRequest>,
    timeout: Duration,
) -> Vec<HttpResult> {
    futures_util::future::join_all(requests.map(|request| send(request, timeout))).await
}

pub async fn send(request: &HttpRequest, timeout: Duration) -> HttpResult {
    let describe = |e: worker::Error| {
        format!(
            "{} {}: {e}",
            request.method.as_str(),
            request.url.host_str().unwrap_or("")
        )
    };
    let headers = Headers::new();
    for (name, value) in &request.headers {
        headers.set(name, value).map_err(describe)?;
    }
    let mut init = RequestInit::new();
    init.with_method(match request.method {
        Method::Get => worker::Method::Get,
        Method::Head => worker::Method::Head,
        Method::Post => worker::Method::Post,
        Method::Put => worker::Method::Put,
        Method::Delete => worker::Method::Delete,
    })
    .with_headers(headers)
    .with_redirect(RequestRedirect::Manual)
    .with_body(request.body.as_deref().map(Into::into));
    let outgoing = Request::new_with_init(request.url.as_str(), &init).map_err(describe)?;

    let controller = AbortController::default();
    let signal = controller.signal();
    let fetch = Fetch::Request(outgoing);
    let sending = Box::pin(fetch.send_with_signal(&signal));
    // One deadline for the headers and the whole body: a body that stalls half-way must not
    // hold the tick (and the object's tick flag) forever.
    let deadline = Delay::from(timeout);
    let (mut response, deadline) = match select(sending, deadline).await {
        Either::Left((answer, deadline)) => (answer.map_err(describe)?, deadline),
        Either::Right(_) => {
            controller.abort();
            return Err(format!(
                "{} {}: no answer within {} s",
                request.method.as_str(),
                request.url.host_str().unwrap_or(""),
                timeout.as_secs()
            ));
        }
    };
    let status = response.status_code();
    let headers = response
        .headers()
        .entries()
        .map(|(name, value)| (name.to_ascii_lowercase(), value))
        .collect();
    let body = match select(Box::pin(response.bytes()), deadline).await {
        Either::Left((body, _)) => body.map_err(describe)?,
        Either::Right(_) => {
            // Aborting also cancels the body's stream, and with it the connection.
            controller.abort();
            return Err(format!(
                "{} {}: the answer's body stalled: status {status} and headers came, the whole \
                 body not within {} s",
                request.method.as_str(),
                request.url.host_str().unwrap_or(""),
                timeout.as_secs()
            ));
        }
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// Sends a signed request as it is and hands back the answer unread, its body a stream (an
/// archive for GitLab). Redirects are not followed.
pub async fn stream(
    method: worker::Method,
    url: &str,
    headers: &[(String, String)],
) -> worker::Result<worker::Response> {
    let sent = Headers::new();
    for (name, value) in headers {
        sent.set(name, value)?;
    }
    let mut init = RequestInit::new();
    init.with_method(method)
        .with_headers(sent)
        .with_redirect(RequestRedirect::Manual);
    Fetch::Request(Request::new_with_init(url, &init)?)
        .send()
        .await
}
