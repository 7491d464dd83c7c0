//! The `route` label: a request's path reduced to the route it hit, so the label's
//! values are a fixed, short list whatever clients send (a raw path would make a
//! new time series per user name and per scanner's probe).

/// One per route of `api::route`, plus the built-in page or `--static` files, plus
/// everything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Route {
    Register,
    Login,
    Logout,
    History,
    Online,
    User,
    Ws,
    Metrics,
    Healthz,
    /// The built-in page or a `--static` file that was found.
    Static,
    /// Unknown paths (404) and requests too broken to have a path.
    Other,
}

impl Route {
    pub const ALL: [Route; 11] = [
        Route::Register,
        Route::Login,
        Route::Logout,
        Route::History,
        Route::Online,
        Route::User,
        Route::Ws,
        Route::Metrics,
        Route::Healthz,
        Route::Static,
        Route::Other,
    ];

    /// The route `path` (without its query) is served by; the same match as
    /// `api::route`.
    pub fn of(path: &str) -> Route {
        match path {
            "/api/register" => Route::Register,
            "/api/login" => Route::Login,
            "/api/logout" => Route::Logout,
            "/api/history" => Route::History,
            "/api/online" => Route::Online,
            "/ws" => Route::Ws,
            "/metrics" => Route::Metrics,
            "/healthz" => Route::Healthz,
            _ => match path.strip_prefix("/api/user/") {
                Some(name) if !name.is_empty() && !name.contains('/') => Route::User,
                _ if path.starts_with("/api/") => Route::Other,
                _ => Route::Static,
            },
        }
    }

    /// The route once its status is known: a file that was not found is a probe
    /// of an unknown path, not a page.
    pub fn answered(self, status: u16) -> Route {
        if self == Route::Static && status == 404 {
            Route::Other
        } else {
            self
        }
    }

    /// The label value: the route's template.
    pub fn label(self) -> &'static str {
        match self {
            Route::Register => "/api/register",
            Route::Login => "/api/login",
            Route::Logout => "/api/logout",
            Route::History => "/api/history",
            Route::Online => "/api/online",
            Route::User => "/api/user/{name}",
            Route::Ws => "/ws",
            Route::Metrics => "/metrics",
            Route::Healthz => "/healthz",
            Route::Static => "static",
            Route::Other => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_templates_and_unknown_ones_to_other() {
        let table = [
            ("/api/online", "/api/online"),
            ("/api/user/alice", "/api/user/{name}"),
            ("/api/user/@me", "/api/user/{name}"),
            ("/api/user/", "other"),
            ("/api/user/a/b", "other"),
            ("/api/nope", "other"),
            ("/ws", "/ws"),
            ("/", "static"),
            ("/wp-login.php", "static"),
        ];
        for (path, label) in table {
            assert_eq!(Route::of(path).label(), label, "{path}");
        }
        assert_eq!(Route::of("/wp-login.php").answered(404), Route::Other);
        assert_eq!(Route::of("/").answered(200), Route::Static);
        assert_eq!(Route::of("/api/user/zed").answered(404), Route::User, "a user not found is still the route");
        assert!(Route::ALL.iter().enumerate().all(|(i, r)| *r as usize == i), "ALL is in index order");
    }
}
