//! A document's root types as JSON, for dashboards and debugging.
//!
//! The server never declares root types, so a root it learned from updates has no type
//! yet; its content says what it is: map entries make a map, string content makes a
//! text, anything else in sequence makes an array.

use serde_json::{Map, Value};
use yrs::types::ToJson;
use yrs::{ArrayRef, Doc, GetString, Map as _, MapRef, Out, ReadTxn, TextRef, Transact};

/// `{ root name: value }`: texts as strings, maps as objects, arrays as arrays.
pub fn to_json(doc: &Doc) -> Value {
    let txn = doc.transact();
    let mut roots = Map::new();
    for (name, root) in txn.root_refs() {
        let value = match root {
            Out::UndefinedRef(branch) => {
                let map = MapRef::from(branch);
                let text = TextRef::from(branch);
                let array = ArrayRef::from(branch);
                if map.len(&txn) > 0 {
                    any_to_json(map.to_json(&txn))
                } else if !text.get_string(&txn).is_empty() || yrs::Array::len(&array, &txn) == 0 {
                    Value::String(text.get_string(&txn))
                } else {
                    any_to_json(array.to_json(&txn))
                }
            }
            other => any_to_json(other.to_json(&txn)),
        };
        roots.insert(name.to_string(), value);
    }
    Value::Object(roots)
}

fn any_to_json(any: yrs::Any) -> Value {
    serde_json::to_value(any).unwrap_or(Value::Null)
}

/// A document followed as JSON: each update applied gives the changes it made (see
/// [`changes`]). For streams and polls in JSON form.
pub struct JsonView {
    doc: Doc,
    json: Value,
}

impl JsonView {
    /// Follows `doc` from its current state.
    pub fn of(doc: Doc) -> JsonView {
        let json = to_json(&doc);
        JsonView { doc, json }
    }

    /// Applies a Yjs update v1; the changes it made (none if it does not decode).
    pub fn apply(&mut self, update: &[u8]) -> Vec<Value> {
        use yrs::updates::decoder::Decode;
        if let Ok(u) = yrs::Update::decode_v1(update) {
            let _ = self.doc.transact_mut().apply_update(u);
        }
        let after = to_json(&self.doc);
        let changes = changes(&self.json, &after);
        self.json = after;
        changes
    }

    /// Starts over from a full state (a snapshot); its JSON.
    pub fn reset(&mut self, state: &[u8]) -> &Value {
        *self = JsonView::of(Doc::new());
        self.apply(state);
        &self.json
    }
}

/// What changed between two JSON forms of a document (`to_json` before and after an
/// update), for clients that do not speak Yjs (`events?format=json`). Each change has a
/// `path` (root name, then keys and indices) and a `kind`:
///
/// - `set` with `value`: a key (or a root) that is new or whose value was replaced;
/// - `delete`: a key that is gone;
/// - `text` with `index`, `delete`, `insert`: characters removed at `index` and the
///   string inserted there;
/// - `splice` with `index`, `delete`, `insert`: array elements removed at `index` and
///   the elements inserted there.
///
/// Texts and arrays are compared by their common prefix and suffix: one change per text
/// or array per update, which is what one update from one editor usually is.
pub fn changes(before: &Value, after: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    diff(&mut Vec::new(), before, after, &mut out);
    out
}

fn diff(path: &mut Vec<Value>, a: &Value, b: &Value, out: &mut Vec<Value>) {
    if a == b {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (key, vb) in y {
                path.push(Value::String(key.clone()));
                match x.get(key) {
                    Some(va) => diff(path, va, vb, out),
                    None => out.push(serde_json::json!({"path": path, "kind": "set", "value": vb})),
                }
                path.pop();
            }
            for key in x.keys().filter(|k| !y.contains_key(*k)) {
                path.push(Value::String(key.clone()));
                out.push(serde_json::json!({"path": path, "kind": "delete"}));
                path.pop();
            }
        }
        (Value::String(s), Value::String(t)) => {
            let (s, t): (Vec<char>, Vec<char>) = (s.chars().collect(), t.chars().collect());
            let (p, q) = common_ends(&s, &t);
            out.push(serde_json::json!({
                "path": path,
                "kind": "text",
                "index": p,
                "delete": s.len() - p - q,
                "insert": t[p..t.len() - q].iter().collect::<String>(),
            }));
        }
        (Value::Array(x), Value::Array(y)) => {
            let (p, q) = common_ends(x, y);
            out.push(serde_json::json!({
                "path": path,
                "kind": "splice",
                "index": p,
                "delete": x.len() - p - q,
                "insert": &y[p..y.len() - q],
            }));
        }
        _ => out.push(serde_json::json!({"path": path, "kind": "set", "value": b})),
    }
}

/// The lengths of the common prefix and (not overlapping it) common suffix.
fn common_ends<T: PartialEq>(a: &[T], b: &[T]) -> (usize, usize) {
    let p = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let q = a[p..]
        .iter()
        .rev()
        .zip(b[p..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    (p, q)
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::updates::decoder::Decode;
    use yrs::{Array, Map, StateVector, Text, Update};

    #[test]
    fn roots_learned_from_updates_render_by_their_content() {
        let source = Doc::new();
        let (text, map, list) = (
            source.get_or_insert_text("text"),
            source.get_or_insert_map("map"),
            source.get_or_insert_array("list"),
        );
        {
            let mut txn = source.transact_mut();
            text.push(&mut txn, "hello");
            map.insert(&mut txn, "k", 1.5);
            list.push_back(&mut txn, "a");
        }
        let update = source
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let server = Doc::new();
        server
            .transact_mut()
            .apply_update(Update::decode_v1(&update).unwrap())
            .unwrap();
        let json = to_json(&server);
        assert_eq!(json["text"], "hello");
        assert_eq!(json["map"]["k"], 1.5);
        assert_eq!(json["list"], serde_json::json!(["a"]));
    }

    #[test]
    fn changes_name_path_kind_and_delta() {
        let before = serde_json::json!({"t": "héllo", "m": {"a": 1, "b": 2}, "l": [1, 2, 3]});
        let after =
            serde_json::json!({"t": "hé, llo", "m": {"a": 1, "c": 3}, "l": [1, 9, 3], "n": "x"});
        let got = super::changes(&before, &after);
        let expect = serde_json::json!([
            {"path": ["l"], "kind": "splice", "index": 1, "delete": 1, "insert": [9]},
            {"path": ["m", "c"], "kind": "set", "value": 3},
            {"path": ["m", "b"], "kind": "delete"},
            {"path": ["n"], "kind": "set", "value": "x"},
            {"path": ["t"], "kind": "text", "index": 2, "delete": 0, "insert": ", "},
        ]);
        let mut got_sorted = got.clone();
        let key = |v: &serde_json::Value| v["path"].to_string() + &v["kind"].to_string();
        got_sorted.sort_by_key(key);
        let mut expect_sorted = expect.as_array().unwrap().clone();
        expect_sorted.sort_by_key(key);
        assert_eq!(got_sorted, expect_sorted);
    }
}
