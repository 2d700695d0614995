//! Shared by the benchmarks: realistic update payloads.

use yrs::{Doc, Text, Transact};

/// `n` keystroke updates as a Yjs editor emits them: one character appended per
/// transaction (a space every seventh), each encoded by yrs as an update v1.
pub fn keystrokes(n: usize) -> Vec<Vec<u8>> {
    let doc = Doc::new();
    let text = doc.get_or_insert_text("t");
    (0..n)
        .map(|i| {
            let mut txn = doc.transact_mut();
            let len = text.len(&txn);
            text.insert(&mut txn, len, if i % 7 == 0 { " " } else { "x" });
            txn.encode_update_v1()
        })
        .collect()
}
