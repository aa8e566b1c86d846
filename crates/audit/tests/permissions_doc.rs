//! docs/PERMISSIONS.md prints the permission matrix from the code; this keeps the two the same.

#[test]
fn the_documented_matrix_is_the_one_in_the_code() {
    let doc = include_str!("../../../docs/PERMISSIONS.md");
    let matrix = rampart_audit::Permission::matrix_markdown();
    assert!(doc.contains(&matrix), "docs/PERMISSIONS.md is stale; replace its table with:\n{matrix}");
}
