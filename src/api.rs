//! The worker's HTTP API, decided here and carried out by the glue: which route a request
//! takes, or the refusal to answer it with. Nothing a refusal says depends on a secret.

use crate::auth::check_bearer;
use crate::secret::Secret;

/// The routes the worker serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /`: the status page (static; it asks for the token itself).
    StatusPage,
    /// `POST /run`: start a run now.
    Run,
    /// `POST /run/cancel`: end the run that is going.
    Cancel,
    /// `GET /status`: the run's report as JSON.
    Status,
}

impl Route {
    pub const ALL: [Route; 4] = [Route::StatusPage, Route::Run, Route::Cancel, Route::Status];

    pub fn method(self) -> &'static str {
        match self {
            Route::StatusPage | Route::Status => "GET",
            Route::Run | Route::Cancel => "POST",
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            Route::StatusPage => "/",
            Route::Run => "/run",
            Route::Cancel => "/run/cancel",
            Route::Status => "/status",
        }
    }

    /// Whether the route needs `Authorization: Bearer <ADMIN_TOKEN>`.
    pub fn guarded(self) -> bool {
        self != Route::StatusPage
    }
}

/// No route reads a body; a client that sends more than this is told so.
pub const MAX_BODY_BYTES: u64 = 1024;

/// An answer that refuses the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
    /// `Allow` for a 405, `WWW-Authenticate` for a 401.
    pub header: Option<(&'static str, &'static str)>,
}

fn refuse(status: u16, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
        header: None,
    }
}

/// Routes a request: its method, path, `Content-Length` and `Authorization` headers, against
/// the configured `ADMIN_TOKEN`.
pub fn route(
    method: &str,
    path: &str,
    content_length: Option<&str>,
    authorization: Option<&str>,
    admin_token: Option<&Secret>,
) -> Result<Route, Refusal> {
    let Some(route) = Route::ALL.into_iter().find(|r| r.path() == path) else {
        return Err(refuse(
            404,
            "no such route: the API is GET / (status page), POST /run, POST /run/cancel and GET /status",
        ));
    };
    if method != route.method() {
        return Err(Refusal {
            header: Some(("Allow", route.method())),
            ..refuse(405, format!("{path} takes {}", route.method()))
        });
    }
    if let Some(length) = content_length {
        match length.trim().parse::<u64>() {
            Ok(length) if length > MAX_BODY_BYTES => {
                return Err(refuse(
                    413,
                    format!("{path} takes no body (at most {MAX_BODY_BYTES} bytes are ignored)"),
                ))
            }
            Ok(_) => {}
            Err(_) => return Err(refuse(400, "Content-Length is not a number")),
        }
    }
    if route.guarded() {
        check_bearer(authorization, admin_token).map_err(|e| Refusal {
            header: Some(("WWW-Authenticate", "Bearer")),
            ..refuse(401, e.to_string())
        })?;
    }
    Ok(route)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "s3cr3t-admin-token";

    fn ask(
        method: &str,
        path: &str,
        length: Option<&str>,
        auth: Option<&str>,
    ) -> Result<Route, Refusal> {
        route(method, path, length, auth, Some(&Secret::new(TOKEN)))
    }

    fn status(result: Result<Route, Refusal>) -> u16 {
        result.map_or_else(|r| r.status, |_| 200)
    }

    #[test]
    fn each_route_answers_its_method_and_the_guarded_ones_need_the_token() {
        let bearer = format!("Bearer {TOKEN}");
        assert_eq!(ask("GET", "/", None, None), Ok(Route::StatusPage));
        assert_eq!(ask("POST", "/run", None, Some(&bearer)), Ok(Route::Run));
        assert_eq!(
            ask("GET", "/status", Some("0"), Some(&bearer)),
            Ok(Route::Status)
        );
        for path in ["/run", "/status"] {
            let method = if path == "/run" { "POST" } else { "GET" };
            for auth in [
                None,
                Some("Bearer nope"),
                Some("Basic czNjcjN0"),
                Some("Bearer"),
            ] {
                let refusal = ask(method, path, None, auth).unwrap_err();
                assert_eq!(refusal.status, 401, "{auth:?}");
                assert_eq!(refusal.header, Some(("WWW-Authenticate", "Bearer")));
                assert!(!refusal.message.contains(TOKEN));
            }
        }
    }

    #[test]
    fn unknown_routes_are_404_and_wrong_methods_405_with_allow() {
        for path in ["/nope", "/run/", "/status/x", "", "/.env", "//run"] {
            assert_eq!(status(ask("GET", path, None, None)), 404, "{path:?}");
        }
        for (method, path, allow) in [
            ("POST", "/", "GET"),
            ("GET", "/run", "POST"),
            ("DELETE", "/status", "GET"),
            ("PUT", "/run", "POST"),
        ] {
            let refusal = ask(method, path, None, None).unwrap_err();
            assert_eq!(refusal.status, 405);
            assert_eq!(refusal.header, Some(("Allow", allow)));
        }
    }

    #[test]
    fn bodies_over_the_limit_are_413_before_the_token_is_looked_at() {
        let bearer = format!("Bearer {TOKEN}");
        assert_eq!(
            status(ask("POST", "/run", Some("1024"), Some(&bearer))),
            200
        );
        assert_eq!(
            status(ask("POST", "/run", Some("1025"), Some(&bearer))),
            413
        );
        assert_eq!(status(ask("POST", "/run", Some("10000000000"), None)), 413);
        assert_eq!(status(ask("POST", "/run", Some("-1"), None)), 400);
        assert_eq!(status(ask("POST", "/run", Some("lots"), None)), 400);
    }

    #[test]
    fn without_admin_token_the_guarded_routes_stay_closed() {
        let refusal = route("POST", "/run", None, Some("Bearer anything"), None).unwrap_err();
        assert_eq!(refusal.status, 401);
        assert!(refusal.message.contains("ADMIN_TOKEN"));
        assert_eq!(route("GET", "/", None, None, None), Ok(Route::StatusPage));
    }
}
