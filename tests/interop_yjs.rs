//! Interoperability with stock Yjs JavaScript clients (yjs + y-websocket), run with node.
//! Needs `npm ci` once (the README's test command does it).

mod common;

use std::path::Path;
use std::process::Command;

/// examples/embed.rs, built: `cargo test` builds examples beside the binaries (a
/// filtered run may not have, so it is built here if missing).
fn embed_example() -> std::path::PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_collabd"));
    let example = bin.with_file_name("examples").join("embed");
    if !example.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--example", "embed"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo runs");
        assert!(status.success(), "cargo build --example embed failed");
    }
    example
}

/// Runs one script from `tests/js` against the real binary; the script asserts.
fn run_node(script: &str) {
    let example = embed_example();
    common::run_node(script, &[("EMBED_EXAMPLE_BIN", example.as_os_str())]);
}

#[test]
fn stock_yjs_clients_converge_share_awareness_and_survive_a_restart() {
    run_node("yjs_clients.mjs");
}

/// collabd's own provider (clients/js): every transport, fallback and back, restarts.
#[test]
fn the_js_provider_falls_back_converges_and_moves_back_up() {
    run_node("provider.mjs");
}

#[test]
fn stock_clients_see_merged_presence_and_removals() {
    run_node("presence.mjs");
}

#[test]
fn a_real_eventsource_resumes_with_last_event_id_after_the_stream_drops() {
    run_node("eventsource.mjs");
}

#[test]
fn stock_clients_with_access_tokens_write_read_only_and_expire() {
    run_node("auth.mjs");
}

/// Needs Debian's Chromium at /usr/bin/chromium (`.ci/run` installs it).
#[test]
fn a_page_on_another_origin_uses_sse_polling_and_post_in_chromium() {
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium missing: apt-get install chromium"
    );
    run_node("cors_browser.mjs");
}

/// The demo at `/` (demo/, bundled by build.rs) in Chromium: two pages share text,
/// shapes and cursors; SSE and polling pages converge with them; a restart mid-edit.
/// The screenshot of the session lands in target/tmp/artifacts/demo-two-pages.png.
#[test]
fn the_demo_works_in_chromium_on_every_transport_and_across_a_restart() {
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium missing: apt-get install chromium"
    );
    run_node("demo_browser.mjs");
}

/// examples/embed.rs as a stock Yjs app sees it: collabd under /collab beside the host's
/// /hello, its authenticate hook, the server-side ticks over SSE and polling, and a
/// kill -9 that loses no tick whose seq the host was given.
#[test]
fn the_embedding_example_serves_stock_clients_under_its_prefix() {
    run_node("embed.mjs");
}
