//! The usage dashboard (`GET /dashboard`) and the `<tollgate-usage>` widget script, built from
//! `dashboard/` (TypeScript) into `assets/dashboard/` and embedded in the binary, so the server
//! serves them with no Node and no network. tests/api/dashboard.rs rebuilds them from source and
//! fails when they differ from the committed files.

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

struct Asset {
    name: &'static str,
    body: &'static [u8],
    content_type: &'static str,
}

const INDEX: Asset = Asset {
    name: "index.html",
    body: include_bytes!("../assets/dashboard/index.html"),
    content_type: "text/html; charset=utf-8",
};

const ASSETS: [Asset; 3] = [
    Asset {
        name: "dashboard.js",
        body: include_bytes!("../assets/dashboard/dashboard.js"),
        content_type: "text/javascript; charset=utf-8",
    },
    Asset {
        name: "dashboard.css",
        body: include_bytes!("../assets/dashboard/dashboard.css"),
        content_type: "text/css; charset=utf-8",
    },
    Asset {
        name: "tollgate-usage.js",
        body: include_bytes!("../assets/dashboard/tollgate-usage.js"),
        content_type: "text/javascript; charset=utf-8",
    },
];

/// The page's policy: its own scripts, styles and GraphQL endpoint (HTTP and WebSocket) only,
/// never framed.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// FNV-1a of the file: the names carry no hash, so browsers revalidate (`no-cache`) and get 304
/// until a new binary serves other bytes.
fn etag(body: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("\"{h:016x}\"")
}

fn serve(asset: &Asset, headers: &HeaderMap) -> Response {
    let tag = etag(asset.body);
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response()
    };
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(v) = HeaderValue::from_str(&tag) {
        h.insert(header::ETAG, v);
    }
    if asset.name == INDEX.name {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(PAGE_CSP),
        );
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    } else {
        // The widget is loaded by other sites' pages, including ones that isolate themselves.
        h.insert(
            "cross-origin-resource-policy",
            HeaderValue::from_static("cross-origin"),
        );
    }
    resp
}

/// GET /dashboard: the single page; the token comes in the fragment (`#token=...`).
pub async fn page(headers: HeaderMap) -> Response {
    serve(&INDEX, &headers)
}

/// GET /dashboard/{name}: the page's script and stylesheet, and the widget's script.
pub async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(a) => serve(a, &headers),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_differ_by_content() {
        assert_ne!(etag(b"a"), etag(b"b"));
        assert_eq!(etag(b"a"), etag(b"a"));
        assert!(etag(INDEX.body).starts_with('"'));
    }
}
