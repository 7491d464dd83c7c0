//! Who may ask at all, decided from the request head before any route runs: the
//! `--allowed-host` list (a DNS-rebinding page names its own host, which is not on
//! it) and the cross-site rule for requests that change state (a page of another
//! site must not log a user out, log one in, register, or open a WebSocket with the
//! user's cookie). Headers in, a refusal or nothing out.

use super::ApiConfig;
use crate::http::{Request, Response};

/// The refusal for `req`, if it gets one: 421 for a `Host` not served, 403 for a
/// state-changing request from another site whose origin is not allowed.
pub fn check(req: &Request, cfg: &ApiConfig) -> Option<Response> {
    if !host_allowed(req, cfg) {
        return Some(Response::error(421, "misdirected_request"));
    }
    if changes_state(req) && cross_site(req) && !origin_allowed(req, cfg) {
        return Some(Response::error(403, "cross_site"));
    }
    None
}

/// `host[:port]` (host possibly a bracketed IPv6 literal) split at the port. None
/// for what no `Host` header may hold (an unbracketed colon, a port not numeric).
pub fn split_authority(s: &str) -> Option<(&str, Option<&str>)> {
    let (host, rest) = match s.strip_prefix('[') {
        Some(inner) => {
            let end = inner.find(']')? + 2;
            (&s[..end], &s[end..])
        }
        None => match s.find(':') {
            Some(i) => (&s[..i], &s[i..]),
            None => (s, ""),
        },
    };
    let port = match rest.strip_prefix(':') {
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => Some(p),
        Some(_) => return None,
        None if rest.is_empty() => None,
        None => return None,
    };
    (!host.is_empty()).then_some((host, port))
}

/// With `--allowed-host` set, `Host` must be one of them, or the host of an
/// `--allowed-origin` (the operator's own site, under the name its pages use). An
/// entry without a port matches any port.
fn host_allowed(req: &Request, cfg: &ApiConfig) -> bool {
    if cfg.allowed_hosts.is_empty() {
        return true;
    }
    let Some((host, port)) = req.header_str("host").and_then(|h| split_authority(h.trim())) else {
        return false;
    };
    let origins = cfg.allowed_origins.iter().filter_map(|o| Some(o.split_once("://")?.1));
    cfg.allowed_hosts
        .iter()
        .map(String::as_str)
        .chain(origins)
        .filter_map(split_authority)
        .any(|(h, p)| h.eq_ignore_ascii_case(host) && (p.is_none() || p == port))
}

/// The routes a forged request could abuse. Reads (`/api/online`, `/api/history`,
/// `/api/user/...`) are kept from other sites by CORS already: their answers are
/// not readable there.
fn changes_state(req: &Request) -> bool {
    matches!(
        (req.path(), req.method.as_str()),
        ("/api/logout", "GET" | "POST") | ("/api/login" | "/api/register", "POST") | ("/ws", "GET")
    )
}

/// The request comes from a page of another site. `Sec-Fetch-Site`, which pages
/// cannot set, is the browser's own verdict (with the public-suffix list behind
/// it): when present it decides. Otherwise (older browsers) an `Origin` whose host
/// is not the request's `Host` is another site; this is stricter than "site" (a
/// sibling subdomain counts as another site), which only means such a page must be
/// listed in `--allowed-origin`. `Origin: null` (a sandboxed frame, a file) is
/// another site. An `Origin` that is no origin at all (empty, no scheme: Tsung
/// sends `Origin: ` on its WebSocket connects) comes from no browser, and a
/// cross-site request needs one. A request with neither header is no browser's cross-site request:
/// browsers send `Sec-Fetch-Site` or `Origin` on every cross-site request that
/// changes state, and send neither on a same-origin GET (the original page's logout).
fn cross_site(req: &Request) -> bool {
    if let Some(site) = req.header_str("sec-fetch-site") {
        return site.trim().eq_ignore_ascii_case("cross-site");
    }
    let Some(origin) = req.header_str("origin") else { return false };
    let origin_host = origin.trim().split_once("://").and_then(|(_, a)| split_authority(a)).map(|(h, _)| h);
    let host = req.header_str("host").and_then(|h| split_authority(h.trim())).map(|(h, _)| h);
    match (origin_host, host) {
        (Some(o), Some(h)) => !o.eq_ignore_ascii_case(h),
        (Some(_), None) => true,
        (None, _) => origin.trim().eq_ignore_ascii_case("null"),
    }
}

fn origin_allowed(req: &Request, cfg: &ApiConfig) -> bool {
    super::cors_origin(req, cfg).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, target: &str, headers: &[(&str, &str)]) -> Request {
        Request {
            method: method.into(),
            target: target.into(),
            minor_version: 1,
            headers: headers.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect(),
            body: vec![],
        }
    }

    fn code(r: Option<Response>) -> Option<u16> {
        r.map(|r| r.status)
    }

    #[test]
    fn authorities_split_at_the_port() {
        assert_eq!(split_authority("chat.example"), Some(("chat.example", None)));
        assert_eq!(split_authority("chat.example:8080"), Some(("chat.example", Some("8080"))));
        assert_eq!(split_authority("[::1]:7777"), Some(("[::1]", Some("7777"))));
        assert_eq!(split_authority("[::1]"), Some(("[::1]", None)));
        for bad in ["", ":80", "::1", "a:b", "a:", "[::1", "[::1]x", "[::1]:", "a:1:2"] {
            assert_eq!(split_authority(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn cross_site_state_changes_are_refused_unless_allowed() {
        let cfg = ApiConfig { allowed_origins: vec!["https://friend.example".into()], ..ApiConfig::default() };
        let host = ("Host", "chat.example");
        type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], Option<u16>);
        let cases: &[Case] = &[
            ("GET", "/api/logout", &[host, ("Sec-Fetch-Site", "cross-site")], Some(403)),
            ("POST", "/api/logout", &[host, ("Origin", "https://evil.example")], Some(403)),
            ("POST", "/api/login", &[host, ("Origin", "null")], Some(403)),
            ("POST", "/api/register", &[host, ("Origin", "http://chat.example.evil")], Some(403)),
            (
                "GET",
                "/ws?v=2",
                &[host, ("Origin", "https://evil.example"), ("Sec-Fetch-Site", "cross-site")],
                Some(403),
            ),
            // The same site, however the browser says it.
            ("GET", "/api/logout", &[host], None),
            ("GET", "/api/logout", &[host, ("Sec-Fetch-Site", "same-origin")], None),
            ("GET", "/ws", &[host, ("Origin", "")], None),
            ("POST", "/api/login", &[host, ("Origin", "127.0.0.1:7777")], None),
            ("POST", "/api/login", &[host, ("Origin", "http://chat.example")], None),
            ("POST", "/api/login", &[("Host", "chat.example:7777"), ("Origin", "http://CHAT.example:7777")], None),
            ("POST", "/api/login", &[host, ("Origin", "https://www.example"), ("Sec-Fetch-Site", "same-site")], None),
            ("GET", "/ws", &[host, ("Sec-Fetch-Site", "none")], None),
            // An allowed origin may, whatever its site.
            (
                "POST",
                "/api/login",
                &[host, ("Origin", "https://friend.example"), ("Sec-Fetch-Site", "cross-site")],
                None,
            ),
            // Reads, and wrong methods (405 later), are not this check's.
            ("GET", "/api/online", &[host, ("Sec-Fetch-Site", "cross-site")], None),
            ("GET", "/api/login", &[host, ("Sec-Fetch-Site", "cross-site")], None),
        ];
        for (method, target, headers, want) in cases {
            let got = check(&req(method, target, headers), &cfg);
            assert_eq!(code(got), *want, "{method} {target} {headers:?}");
        }
        let r = check(&req("GET", "/api/logout", &[host, ("Sec-Fetch-Site", "cross-site")]), &cfg).unwrap();
        assert_eq!(String::from_utf8_lossy(&r.body).trim_end(), r#"{"error":"cross_site"}"#);
    }

    #[test]
    fn host_allow_list() {
        let mut cfg = ApiConfig::default();
        let at = |cfg: &ApiConfig, host: Option<&str>| {
            let headers: Vec<(&str, &str)> = host.map(|h| ("Host", h)).into_iter().collect();
            code(check(&req("GET", "/metrics", &headers), cfg))
        };
        assert_eq!(at(&cfg, Some("rebound.evil.example:7777")), None, "no list: any Host");
        cfg.allowed_hosts = vec!["localhost".into(), "127.0.0.1:7777".into(), "[::1]".into()];
        cfg.allowed_origins = vec!["https://chat.example".into(), "http://alt.example:8080".into()];
        for ok in ["localhost", "LOCALHOST:7777", "127.0.0.1:7777", "[::1]:9", "chat.example", "alt.example:8080"] {
            assert_eq!(at(&cfg, Some(ok)), None, "{ok}");
        }
        for bad in ["rebound.evil.example:7777", "127.0.0.1:7778", "127.0.0.1", "alt.example:9", "x:y", ""] {
            assert_eq!(at(&cfg, Some(bad)), Some(421), "{bad}");
        }
        assert_eq!(at(&cfg, None), Some(421), "no Host at all (HTTP/1.0)");
    }
}
