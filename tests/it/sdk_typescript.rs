//! The TypeScript SDK in `clients/typescript/`, installed from its lock file (`npm ci`): its
//! generated code matches `proto/`, it type-checks under `strict`, its unit tests pass, and its
//! integration tests pass against the real `tidings` binary started here.

use crate::harness::*;
use std::path::{Path, PathBuf};

fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/typescript")
}

/// `npm ci` once, if the SDK's dependencies are not there yet.
pub fn install() {
    npm_ci_once(&sdk_dir(), &["@bufbuild/buf", "typescript", "vitest"]);
}

/// Builds the package into `dist/` once: the integration tests (and the process they kill and
/// restart) import it, and the type check covers them. Tests that need it wait for the build.
fn build() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        run_in(
            &sdk_dir(),
            "npx",
            &["tsc", "-p", "tsconfig.build.json"],
            &[],
        );
    });
}

#[test]
fn the_sdks_generated_code_is_current_and_it_type_checks() {
    install();
    let tmp = tempfile::tempdir().unwrap();
    run_in(
        &sdk_dir(),
        "npx",
        &["buf", "generate", "-o", tmp.path().to_str().unwrap()],
        &[],
    );
    let fresh = files_under(&tmp.path().join("src/gen"));
    let committed = files_under(&sdk_dir().join("src/gen"));
    assert!(!fresh.is_empty());
    let stale: std::collections::BTreeSet<_> = fresh
        .keys()
        .chain(committed.keys())
        .filter(|k| fresh.get(*k) != committed.get(*k))
        .collect();
    assert!(
        stale.is_empty(),
        "clients/typescript/src/gen is stale against proto/ ({stale:?}): run `npm run generate` \
         in clients/typescript and commit the result"
    );
    // The integration tests type-check against the built package.
    build();
    run_in(&sdk_dir(), "npx", &["tsc", "--noEmit"], &[]);
}

#[test]
fn the_sdks_unit_tests_pass() {
    install();
    let out = run_in(&sdk_dir(), "npx", &["vitest", "run"], &[]);
    assert!(out.contains("passed"), "{out}");
}

#[test]
fn the_sdk_works_against_the_real_server() {
    install();
    build();
    let dir = tempfile::tempdir().unwrap();
    // No leeway: the token refresh test waits for a token's exp.
    let server = Binary::serve(&dir.path().join("data"), &["jwt_leeway_secs=0"]);
    let url = server.url();
    let result = std::panic::catch_unwind(|| {
        run_in(
            &sdk_dir(),
            "npx",
            &["vitest", "run", "--config", "vitest.integration.config.ts"],
            &[("TIDINGS_URL", &url), ("TIDINGS_SECRET", SECRET)],
        )
    });
    drop(server);
    let out = result.unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert!(out.contains("passed"), "{out}");
}
