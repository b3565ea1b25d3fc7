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
    /// `POST /restore`: restore a project from a backup (a JSON body).
    Restore,
    /// `GET` or `HEAD /restore/archive/<id>/<capability>`: a restore's archive, for GitLab's
    /// import (the capability is the guard: see [`archive_target`]).
    Archive,
}

impl Route {
    pub const ALL: [Route; 6] = [
        Route::StatusPage,
        Route::Run,
        Route::Cancel,
        Route::Status,
        Route::Restore,
        Route::Archive,
    ];

    pub fn method(self) -> &'static str {
        match self {
            Route::StatusPage | Route::Status | Route::Archive => "GET",
            Route::Run | Route::Cancel | Route::Restore => "POST",
        }
    }

    /// The path (the archive's with its two parameters named).
    pub fn path(self) -> &'static str {
        match self {
            Route::StatusPage => "/",
            Route::Run => "/run",
            Route::Cancel => "/run/cancel",
            Route::Status => "/status",
            Route::Restore => "/restore",
            Route::Archive => "/restore/archive/<id>/<capability>",
        }
    }

    /// Whether the route needs `Authorization: Bearer <ADMIN_TOKEN>`.
    pub fn guarded(self) -> bool {
        !matches!(self, Route::StatusPage | Route::Archive)
    }

    /// The largest body the route takes.
    pub fn max_body(self) -> u64 {
        match self {
            Route::Restore => MAX_RESTORE_BODY_BYTES,
            _ => MAX_BODY_BYTES,
        }
    }

    /// The methods it answers, for `Allow`.
    fn allow(self) -> &'static str {
        match self {
            Route::Archive => "GET, HEAD",
            other => other.method(),
        }
    }
}

/// Only `POST /restore` reads a body; to the other routes, a client that sends more than this
/// is told so.
pub const MAX_BODY_BYTES: u64 = 1024;
/// `POST /restore`'s body: a few fields.
pub const MAX_RESTORE_BODY_BYTES: u64 = 8192;

const ARCHIVE_PREFIX: &str = "/restore/archive/";

/// The restore id and capability of an archive path (`/restore/archive/<id>/<capability>`):
/// a number and 64 lowercase hex digits, nothing else.
pub fn archive_target(path: &str) -> Option<(u64, &str)> {
    let (id, capability) = path.strip_prefix(ARCHIVE_PREFIX)?.split_once('/')?;
    let id = id.parse::<u64>().ok().filter(|&id| id > 0)?;
    let hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
    (capability.len() == 64 && capability.chars().all(hex)).then_some((id, capability))
}

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
    let found = if archive_target(path).is_some() {
        Some(Route::Archive)
    } else {
        Route::ALL
            .into_iter()
            .find(|r| *r != Route::Archive && r.path() == path)
    };
    let Some(route) = found else {
        return Err(refuse(
            404,
            "no such route: the API is GET / (status page), POST /run, POST /run/cancel, \
             GET /status and POST /restore",
        ));
    };
    let head_allowed = route == Route::Archive && method == "HEAD";
    if method != route.method() && !head_allowed {
        return Err(Refusal {
            header: Some(("Allow", route.allow())),
            ..refuse(405, format!("{path} takes {}", route.allow()))
        });
    }
    if let Some(length) = content_length {
        let max = route.max_body();
        match length.trim().parse::<u64>() {
            Ok(length) if length > max && route == Route::Restore => {
                return Err(refuse(
                    413,
                    format!("{path} takes a body of at most {max} bytes"),
                ))
            }
            Ok(length) if length > max => {
                return Err(refuse(
                    413,
                    format!("{path} takes no body (at most {max} bytes are ignored)"),
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
    fn restore_takes_a_small_body_with_the_token_and_the_archive_only_its_capability() {
        let bearer = format!("Bearer {TOKEN}");
        assert_eq!(
            ask("POST", "/restore", Some("8192"), Some(&bearer)),
            Ok(Route::Restore)
        );
        assert_eq!(
            status(ask("POST", "/restore", Some("8193"), Some(&bearer))),
            413
        );
        assert_eq!(status(ask("POST", "/restore", Some("20"), None)), 401);
        let capability = "0123456789abcdef".repeat(4);
        let archive = format!("/restore/archive/12/{capability}");
        assert_eq!(ask("GET", &archive, None, None), Ok(Route::Archive));
        assert_eq!(ask("HEAD", &archive, None, None), Ok(Route::Archive));
        assert_eq!(archive_target(&archive), Some((12, capability.as_str())));
        let refusal = ask("POST", &archive, None, None).unwrap_err();
        assert_eq!(
            (refusal.status, refusal.header),
            (405, Some(("Allow", "GET, HEAD")))
        );
        for path in [
            format!("/restore/archive/0/{capability}"),
            format!("/restore/archive/x/{capability}"),
            format!("/restore/archive/12/{}", &capability[1..]),
            format!("/restore/archive/12/{}", capability.to_uppercase()),
            format!("/restore/archive/12/{capability}/"),
            "/restore/archive/12".to_owned(),
            "/restore/archive/<id>/<capability>".to_owned(),
        ] {
            assert_eq!(status(ask("GET", &path, None, None)), 404, "{path}");
        }
        // HEAD is the archive's alone.
        assert_eq!(status(ask("HEAD", "/status", None, Some(&bearer))), 405);
    }

    #[test]
    fn without_admin_token_the_guarded_routes_stay_closed() {
        let refusal = route("POST", "/run", None, Some("Bearer anything"), None).unwrap_err();
        assert_eq!(refusal.status, 401);
        assert!(refusal.message.contains("ADMIN_TOKEN"));
        assert_eq!(route("GET", "/", None, None, None), Ok(Route::StatusPage));
    }
}
