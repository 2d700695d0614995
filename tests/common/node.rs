//! The JavaScript tests: one script from `tests/js`, run with node against the real
//! binary (`YJS_INTEROP_SERVER_BIN`), with extra environment; the script asserts.

use std::path::Path;
use std::process::Command;

pub fn run_node(script: &str, env: &[(&str, &std::ffi::OsStr)]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(
        root.join("node_modules/y-websocket").exists(),
        "node_modules missing: run `npm ci` in {}",
        root.display()
    );
    let status = Command::new("node")
        .arg(root.join("tests/js").join(script))
        .env("YJS_INTEROP_SERVER_BIN", env!("CARGO_BIN_EXE_collabd"))
        // Screenshots and the like, kept after the run (not committed).
        .env(
            "ARTIFACT_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("artifacts"),
        )
        .envs(env.iter().copied())
        .current_dir(root)
        .status()
        .expect("node must be installed");
    assert!(status.success(), "{script} failed: {status}");
}
