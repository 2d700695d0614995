//! Bundles the demo served at `/` (`demo/`: a collaborative editor and whiteboard on the
//! JS provider in `clients/js`) into `OUT_DIR/demo`, which `src/http/demo.rs` embeds in
//! the binary. This runs `npm ci` in `demo/` when its lockfile is newer than what is
//! installed, then `node demo/build.mjs` (esbuild). Bundles are never committed.
//!
//! Without Node.js and npm, or with the `demo` feature off, the server still builds and
//! `/` explains how to get the demo; a missing toolchain is a warning, not an error.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

fn main() {
    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("demo");
    fs::create_dir_all(&out).expect("OUT_DIR is writable");
    for input in [
        "demo/src",
        "demo/index.html",
        "demo/style.css",
        "demo/build.mjs",
        "demo/package-lock.json",
        "clients/js/src",
    ] {
        println!("cargo:rerun-if-changed={input}");
    }
    if env::var_os("CARGO_FEATURE_DEMO").is_none() {
        placeholder(&out, "this build has the `demo` feature off");
        return;
    }
    if let Err(why) = bundle(&root.join("demo"), &out) {
        println!("cargo:warning=the demo at / is not built: {why}");
        placeholder(&out, &why);
    }
}

fn bundle(demo: &Path, out: &Path) -> Result<(), String> {
    let lock = demo.join("package-lock.json");
    let installed = demo.join("node_modules/.package-lock.json");
    if modified(&installed) < modified(&lock) {
        run(Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(demo))?;
    }
    run(Command::new("node")
        .arg("build.mjs")
        .arg(out)
        .current_dir(demo))
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn run(command: &mut Command) -> Result<(), String> {
    let name = format!("{:?}", command.get_program());
    let output = command
        .output()
        .map_err(|e| format!("{name} could not run ({e}); install Node.js 18+ and npm"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "{name} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    ))
}

/// A page that says why there is no demo, so `/` still answers.
fn placeholder(out: &Path, why: &str) {
    let why = why.replace('&', "&amp;").replace('<', "&lt;");
    let page = format!(
        "<!doctype html><meta charset=\"utf-8\"><title>collabd</title>\
         <h1>collabd</h1><p>The demo was not built into this binary: {why}.</p>\
         <p>Install Node.js 18+ with npm and build again (<code>cargo build --release</code>).</p>\
         <p>Yjs clients connect to <code>/ws/{{room}}</code>; see <code>/healthz</code>.</p>"
    );
    for (name, body) in [
        ("index.html", page.as_str()),
        ("demo.js", ""),
        ("demo.css", ""),
    ] {
        fs::write(out.join(name), body).expect("OUT_DIR is writable");
    }
}
