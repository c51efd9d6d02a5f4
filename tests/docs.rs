//! The docs are tested (stub, filled in below).
#[test]
fn stub() {}
