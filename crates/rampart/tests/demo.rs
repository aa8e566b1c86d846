//! `rampart demo` tells its story to the end: every step checks its own outcome, so a broken capability fails here.

use std::process::Command;

#[test]
fn the_demo_runs_to_the_end_and_the_books_balance() {
    let output = Command::new(env!("CARGO_BIN_EXE_rampart")).arg("demo").output().expect("rampart runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    for line in [
        "exceeds_credits",
        "pending_transfer_expired",
        "exists_with_different_fields",
        "Every invariant holds",
        "unsealed",
        "was already submitted",
        "refused, and the refusal is in the audit log",
        "signed head: intact",
        "all five agree",
        "credited 0.5 BTC",
        "reverses the credit",
        "above_hot_cap",
        "Bitcoin Core's interpreter accepts the spend",
        "and holds the deposit: case",
        "credits the deposit held",
        "rule \"standard\", approved",
        "the same withdrawal, not a second one",
        "Three blocks later it is confirmed",
        "tries again: refused (already_approved)",
        "With the third approval it is approved",
        "sign_in_confirmation_required",
        "large_withdrawal_new_ip_after_sign_in",
        "resolves it: release",
        "409 list_unchanged",
        "his account is frozen",
        "His account is frozen: GET /v1/me 403",
        "403 destination_refused",
        "approve in order: \"approved\"",
        "are included in the published BTC liabilities",
        "Totals understated by one satoshi: totals:",
        "the proof leads to root",
        "recomputes the",
        "The report waits (409 attestations_pending)",
        "that the cold wallet controls",
        "The signed report, checked with rampart-verify's code",
        "An address's balance doubled: malformed:",
        "The same signatures offered for another snapshot: signature:",
        "report.json, report.json.sig, report.html",
        "is checked once by anyone",
        "a range proof that it hides a non-negative amount: verified",
        "403 address_cooling_off",
        "cancelled, the hold voided",
        "below the dust limit",
        "44. At the close: the books balance",
        "the cold share is",
        "under a signed head: intact.",
    ] {
        assert!(stdout.contains(line), "the demo no longer tells of {line:?}:\n{stdout}");
    }
}
