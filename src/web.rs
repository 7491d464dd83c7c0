//! The web client: the built-in chat page embedded in the binary, or a user's own
//! directory of files (`--static DIR`). GET and HEAD only, ETags, and no path ever
//! leaves the directory (no `..`, no encoded dots, no symlinks pointing out).
//! Files from `--static` are read on the storage reader thread (`serve_file`), never
//! on the event loop; the built-in page is in memory.

use crate::http::{Request, Response};
use std::borrow::Cow;
use std::path::{Component, Path, PathBuf};

/// No inline script or style anywhere in the built-in page, so the policy can be strict.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Files larger than this are not served from `--static`: a response is built in
/// memory, and a chat client has no business being this big.
const MAX_FILE: u64 = 8 * 1024 * 1024;

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const BUILTIN: &[Asset] = &[
    Asset { path: "/", content_type: "text/html; charset=utf-8", body: include_bytes!("../web/index.html") },
    Asset { path: "/index.html", content_type: "text/html; charset=utf-8", body: include_bytes!("../web/index.html") },
    Asset { path: "/app.js", content_type: "text/javascript; charset=utf-8", body: include_bytes!("../web/app.js") },
    Asset { path: "/style.css", content_type: "text/css; charset=utf-8", body: include_bytes!("../web/style.css") },
    Asset { path: "/page.js", content_type: "text/javascript; charset=utf-8", body: include_bytes!("../web/page.js") },
    Asset {
        path: "/connection.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../web/connection.js"),
    },
    // The page's protocol code is the published JS client, served as it ships.
    Asset {
        path: "/skiff-client.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../clients/js/skiff-client.js"),
    },
];

/// A request for a file under `--static`, everything the reader thread needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRequest {
    pub root: PathBuf,
    pub path: String,
    pub method: String,
    pub if_none_match: Option<String>,
}

impl FileRequest {
    pub fn new(req: &Request, root: &Path) -> Self {
        FileRequest {
            root: root.to_path_buf(),
            path: req.path().to_owned(),
            method: req.method.clone(),
            if_none_match: req.header_str("if-none-match").map(str::to_owned),
        }
    }
}

/// The built-in page: GET/HEAD of a known path; other methods 405, unknown paths 404.
pub fn builtin(req: &Request) -> Response {
    let Some(asset) = BUILTIN.iter().find(|a| a.path == req.path()) else {
        return Response::error(404, "not_found");
    };
    if !matches!(req.method.as_str(), "GET" | "HEAD") {
        return not_allowed();
    }
    let etag = format!("\"{:016x}\"", fnv1a(asset.body));
    respond(req.header_str("if-none-match"), asset.content_type, Cow::Borrowed(asset.body), etag)
        .header("Content-Security-Policy", CSP)
}

/// A file from the `--static` directory (blocking: runs on the reader thread).
pub fn serve_file(f: &FileRequest) -> Response {
    let resp = from_dir(&f.path, f.if_none_match.as_deref(), &f.root);
    match f.method.as_str() {
        "GET" | "HEAD" => resp,
        _ if resp.status == 404 => resp,
        _ => not_allowed(),
    }
}

fn not_allowed() -> Response {
    Response::error(405, "method_not_allowed").header("Allow", "GET, HEAD")
}

fn respond(
    if_none_match: Option<&str>,
    content_type: &'static str,
    body: Cow<'static, [u8]>,
    etag: String,
) -> Response {
    let fresh = if_none_match.is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let r = if fresh { Response::new(304) } else { Response::new(200).with_body(body) };
    r.header("Content-Type", content_type).header("ETag", etag).header("Cache-Control", "no-cache")
}

fn from_dir(req_path: &str, if_none_match: Option<&str>, root: &Path) -> Response {
    let not_found = || Response::error(404, "not_found");
    let Some(rel) = safe_relative(req_path) else { return not_found() };
    let mut path = root.join(rel);
    // Resolve symlinks and make sure the result is still inside the root.
    let Ok(mut real) = path.canonicalize() else { return not_found() };
    if real.is_dir() {
        path = real.join("index.html");
        let Ok(index) = path.canonicalize() else { return not_found() };
        real = index;
    }
    if !real.starts_with(root) {
        return not_found();
    }
    let Ok(meta) = std::fs::metadata(&real) else { return not_found() };
    if !meta.is_file() || meta.len() > MAX_FILE {
        return not_found();
    }
    let Ok(body) = std::fs::read(&real) else { return not_found() };
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).unwrap_or_default();
    let etag = format!("\"{:x}-{:x}\"", meta.len(), mtime.as_nanos());
    respond(if_none_match, content_type(&real), Cow::Owned(body), etag)
}

/// The request path as a relative path of plain components, percent-decoded; None
/// for anything that tries to climb out (`..`, `%2e%2e`), is absolute after
/// decoding, or carries NUL or backslashes.
pub fn safe_relative(path: &str) -> Option<PathBuf> {
    let decoded = percent_decode(path.strip_prefix('/')?)?;
    if decoded.contains('\0') || decoded.contains('\\') {
        return None;
    }
    let mut out = PathBuf::new();
    for part in Path::new(&decoded).components() {
        match part {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            // Exactly two hex digits: `u8::from_str_radix` would also take a sign
            // (`%+f` -> 0x0F), so each digit is checked on its own.
            let (hi, lo) = (bytes.get(i + 1)?, bytes.get(i + 2)?);
            out.push(hex_digit(*hi)? << 4 | hex_digit(*lo)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn hex_digit(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).as_deref() {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("ico") => "image/x-icon",
        Some("txt") => "text/plain; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("woff2") => "font/woff2",
        _ => "application/octet-stream",
    }
}

/// A stable content hash for the built-in assets' ETags (no crypto needed).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_attempts_are_refused() {
        for bad in [
            "/../etc/passwd",
            "/%2e%2e/etc/passwd",
            "/%2E%2E%2fetc",
            "/a/../../b",
            "/%2fetc/passwd",
            "/a%00b",
            "/a\\..\\b",
            "/%zz",
        ] {
            assert_eq!(safe_relative(bad), None, "{bad}");
        }
        assert_eq!(safe_relative("/"), Some(PathBuf::new()));
        assert_eq!(safe_relative("/a/./b%20c.js"), Some(PathBuf::from("a/b c.js")));
    }

    #[test]
    fn percent_escapes_take_exactly_two_hex_digits() {
        assert_eq!(percent_decode("a%41%7e%7E"), Some("aA~~".to_owned()));
        // A sign, a space or a missing digit is no escape at all.
        for bad in ["%+f", "%-1", "% f", "%f", "%", "%0g", "%+0"] {
            assert_eq!(percent_decode(bad), None, "{bad}");
        }
        assert_eq!(safe_relative("/a%+fb"), None);
    }

    #[test]
    fn content_types_by_extension() {
        assert_eq!(content_type(Path::new("x/app.JS")), "text/javascript; charset=utf-8");
        assert_eq!(content_type(Path::new("index.html")), "text/html; charset=utf-8");
        assert_eq!(content_type(Path::new("blob")), "application/octet-stream");
    }
}
