//! The second, independent verifier — the JavaScript of the customers' page (`crates/verify/web/`) — checked against
//! the same vectors by its own tests on Node's built-in test runner, so that `cargo test` runs both verifiers.

use std::process::Command;

#[test]
fn the_javascript_verifier_passes_its_tests_on_the_same_vectors() {
    let web = concat!(env!("CARGO_MANIFEST_DIR"), "/web/");
    let out = Command::new("node").args(["--test", web]).output().unwrap_or_else(|e| {
        panic!("node (18 or later) is needed to test the JavaScript verifier: {e}; Debian's package is nodejs")
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "node --test {web} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("# fail 0"), "{stdout}");
}
