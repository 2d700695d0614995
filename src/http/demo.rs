//! The browser demo at `/`: a collaborative editor and whiteboard (sources in `demo/`),
//! bundled by `build.rs` and embedded here, so the binary serves it with no files beside
//! it. `/assets/demo.js` and `/assets/demo.css` are its script and style.

use actix_web::http::header;
use actix_web::{HttpResponse, web};

const INDEX: &str = include_str!(concat!(env!("OUT_DIR"), "/demo/index.html"));
const SCRIPT: &str = include_str!(concat!(env!("OUT_DIR"), "/demo/demo.js"));
const STYLE: &str = include_str!(concat!(env!("OUT_DIR"), "/demo/demo.css"));

/// Registers `/` and the demo's assets.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/",
        web::get().to(|| serve("text/html; charset=utf-8", INDEX)),
    )
    .route(
        "/assets/demo.js",
        web::get().to(|| serve("text/javascript; charset=utf-8", SCRIPT)),
    )
    .route(
        "/assets/demo.css",
        web::get().to(|| serve("text/css; charset=utf-8", STYLE)),
    );
}

async fn serve(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        // The assets change with the binary, not with their URL.
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}
