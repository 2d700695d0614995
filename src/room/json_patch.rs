//! JSON writes for clients that do not speak Yjs (`PATCH /rooms/{room}/json`), sans-IO:
//! a list of operations, each on a path from a root type, applied in one transaction.
//!
//! ```json
//! [
//!   {"op": "set",         "path": ["settings", "title"], "value": "Notes"},
//!   {"op": "delete",      "path": ["settings", "draft"]},
//!   {"op": "insert",      "path": ["items"], "index": 0, "values": [{"done": false}]},
//!   {"op": "remove",      "path": ["items"], "index": 2, "length": 1},
//!   {"op": "insert_text", "path": ["body"], "index": 0, "text": "Hello"},
//!   {"op": "delete_text", "path": ["body"], "index": 0, "length": 5}
//! ]
//! ```
//!
//! `path[0]` names a root type; the rest walks into nested maps (by key) and arrays (by
//! index) to the type the operation changes: a map for `set` / `delete` (the last path
//! element is the key), an array for `insert` / `remove`, a text for `insert_text` /
//! `delete_text`. A root the document does not have yet is created with the type the
//! operation needs. Values are plain JSON (stored as Yjs "any" values, as
//! `Y.Map.set(key, {...})` stores a plain object). Indices count characters (Unicode
//! scalar values) in texts and elements in arrays. The transaction's document must be
//! made by `Doc::new()` (its text offsets are UTF-8 bytes, which this module converts).
//!
//! The operations are checked as they are applied, in a transaction on a copy of the
//! document: the first that fails (a path that leads nowhere, a type that is not the one
//! the operation needs, an index out of range) fails the whole list with its index, and
//! nothing reaches the room. What all of them did is one Yjs update.

use serde::Deserialize;
use serde_json::Value;
use yrs::{
    Any, Array, ArrayRef, GetString, Map, MapRef, Out, Text, TextRef, TransactionMut, WriteTxn,
};

/// One operation of a `PATCH /rooms/{room}/json` body.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    Set {
        path: Vec<Step>,
        value: Value,
    },
    Delete {
        path: Vec<Step>,
    },
    Insert {
        path: Vec<Step>,
        index: u32,
        values: Vec<Value>,
    },
    Remove {
        path: Vec<Step>,
        index: u32,
        #[serde(default = "one")]
        length: u32,
    },
    InsertText {
        path: Vec<Step>,
        index: u32,
        text: String,
    },
    DeleteText {
        path: Vec<Step>,
        index: u32,
        length: u32,
    },
}

fn one() -> u32 {
    1
}

/// A path element: a map key or an array index.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Step {
    Key(String),
    Index(u32),
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Key(k) => write!(f, "{k:?}"),
            Step::Index(i) => write!(f, "{i}"),
        }
    }
}

/// Why an operation failed: its index in the list and what went wrong.
#[derive(Debug, PartialEq)]
pub struct Failed {
    pub op: usize,
    pub reason: String,
}

/// The kind of shared type an operation needs.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Map,
    Array,
    Text,
}

/// A shared type reached by a path.
enum Target {
    Map(MapRef),
    Array(ArrayRef),
    Text(TextRef),
}

/// Applies `ops` in `txn`, in order; the first failure stops it (the caller discards the
/// transaction's document).
pub fn apply(txn: &mut TransactionMut<'_>, ops: &[Op]) -> Result<(), Failed> {
    for (i, op) in ops.iter().enumerate() {
        apply_one(txn, op).map_err(|reason| Failed { op: i, reason })?;
    }
    Ok(())
}

fn apply_one(txn: &mut TransactionMut<'_>, op: &Op) -> Result<(), String> {
    match op {
        Op::Set { path, value } => {
            let (parent, key) = split_key(path)?;
            let Target::Map(map) = resolve(txn, parent, Kind::Map)? else {
                unreachable!("resolve returns the kind asked for")
            };
            map.insert(txn, key, to_any(value)?);
        }
        Op::Delete { path } => {
            let (parent, key) = split_key(path)?;
            let Target::Map(map) = resolve(txn, parent, Kind::Map)? else {
                unreachable!("resolve returns the kind asked for")
            };
            if map.remove(txn, key).is_none() {
                return Err(format!("no key {key:?} to delete"));
            }
        }
        Op::Insert {
            path,
            index,
            values,
        } => {
            let Target::Array(array) = resolve(txn, path, Kind::Array)? else {
                unreachable!("resolve returns the kind asked for")
            };
            let len = array.len(txn);
            if *index > len {
                return Err(format!("index {index} is past the array's end ({len})"));
            }
            let values = values.iter().map(to_any).collect::<Result<Vec<_>, _>>()?;
            for (offset, value) in values.into_iter().enumerate() {
                array.insert(txn, index + offset as u32, value);
            }
        }
        Op::Remove {
            path,
            index,
            length,
        } => {
            let Target::Array(array) = resolve(txn, path, Kind::Array)? else {
                unreachable!("resolve returns the kind asked for")
            };
            let len = array.len(txn);
            if index.checked_add(*length).is_none_or(|end| end > len) {
                return Err(format!(
                    "{length} elements from {index} are past the array's end ({len})"
                ));
            }
            array.remove_range(txn, *index, *length);
        }
        Op::InsertText { path, index, text } => {
            let Target::Text(t) = resolve(txn, path, Kind::Text)? else {
                unreachable!("resolve returns the kind asked for")
            };
            let chars = t.get_string(txn).chars().count() as u32;
            if *index > chars {
                return Err(format!("index {index} is past the text's end ({chars})"));
            }
            let at = byte_offset(&t.get_string(txn), *index);
            t.insert(txn, at, text);
        }
        Op::DeleteText {
            path,
            index,
            length,
        } => {
            let Target::Text(t) = resolve(txn, path, Kind::Text)? else {
                unreachable!("resolve returns the kind asked for")
            };
            let content = t.get_string(txn);
            let chars = content.chars().count() as u32;
            if index.checked_add(*length).is_none_or(|end| end > chars) {
                return Err(format!(
                    "{length} characters from {index} are past the text's end ({chars})"
                ));
            }
            let from = byte_offset(&content, *index);
            let to = byte_offset(&content, index + length);
            t.remove_range(txn, from, to - from);
        }
    }
    Ok(())
}

/// A document made by `Doc::new()` counts text offsets in UTF-8 bytes; the API counts
/// characters.
fn byte_offset(s: &str, chars: u32) -> u32 {
    s.char_indices()
        .nth(chars as usize)
        .map_or(s.len(), |(i, _)| i) as u32
}

fn split_key(path: &[Step]) -> Result<(&[Step], &str), String> {
    match path.split_last() {
        Some((Step::Key(key), parent)) if !parent.is_empty() => Ok((parent, key)),
        Some((Step::Key(_), _)) => Err("the path names a root, not a key in a map".into()),
        Some((Step::Index(i), _)) => Err(format!("the path ends with index {i}, not a map key")),
        None => Err("empty path".into()),
    }
}

/// The type at `path`, which must be of `kind`.
fn resolve(txn: &mut TransactionMut<'_>, path: &[Step], kind: Kind) -> Result<Target, String> {
    let Some((Step::Key(root), rest)) = path.split_first() else {
        return Err("a path starts with a root type's name".into());
    };
    // The kind the root must have: the operation's, or the first step's container.
    let root_kind = match rest.first() {
        None => kind,
        Some(Step::Key(_)) => Kind::Map,
        Some(Step::Index(_)) => Kind::Array,
    };
    let mut current = root_target(txn, root, root_kind)?;
    let mut walked = root.clone();
    for step in rest {
        let next = match (&current, step) {
            (Target::Map(map), Step::Key(key)) => map.get(txn, key),
            (Target::Array(array), Step::Index(i)) => array.get(txn, *i),
            _ => return Err(format!("{walked} has no {step}")),
        };
        current = match next {
            Some(Out::YMap(m)) => Target::Map(m),
            Some(Out::YArray(a)) => Target::Array(a),
            Some(Out::YText(t)) => Target::Text(t),
            Some(_) => {
                return Err(format!(
                    "{walked}[{step}] is a plain value, not a shared map, array or text"
                ));
            }
            None => return Err(format!("{walked} has no {step}")),
        };
        walked = format!("{walked}[{step}]");
    }
    let found = match current {
        Target::Map(_) => Kind::Map,
        Target::Array(_) => Kind::Array,
        Target::Text(_) => Kind::Text,
    };
    if found != kind {
        return Err(format!("{walked} is a {found:?}, not a {kind:?}").to_lowercase());
    }
    Ok(current)
}

/// A root type: the one the document has (checked against `kind` by its content), or a
/// new one of `kind`.
fn root_target(txn: &mut TransactionMut<'_>, name: &str, kind: Kind) -> Result<Target, String> {
    if let Some(existing) = existing_kind(txn, name)
        && existing != kind
    {
        return Err(format!("root {name:?} is a {existing:?}, not a {kind:?}").to_lowercase());
    }
    Ok(match kind {
        Kind::Map => Target::Map(txn.get_or_insert_map(name)),
        Kind::Array => Target::Array(txn.get_or_insert_array(name)),
        Kind::Text => Target::Text(txn.get_or_insert_text(name)),
    })
}

/// What a root's content says it is (see `doc_json`): `None` if it is empty or absent.
fn existing_kind(txn: &TransactionMut<'_>, name: &str) -> Option<Kind> {
    use yrs::ReadTxn;
    let root = txn.root_refs().find(|(n, _)| *n == name).map(|(_, v)| v)?;
    match root {
        Out::YMap(_) => Some(Kind::Map),
        Out::YArray(_) => Some(Kind::Array),
        Out::YText(_) => Some(Kind::Text),
        Out::UndefinedRef(branch) => {
            let map = MapRef::from(branch);
            let array = ArrayRef::from(branch);
            let text = TextRef::from(branch);
            if map.len(txn) > 0 {
                Some(Kind::Map)
            } else if !text.get_string(txn).is_empty() {
                Some(Kind::Text)
            } else if array.len(txn) > 0 {
                Some(Kind::Array)
            } else {
                None
            }
        }
        _ => None,
    }
}

fn to_any(value: &Value) -> Result<Any, String> {
    serde_json::from_value::<Any>(value.clone()).map_err(|e| format!("value: {e}"))
}

/// Makes the document's root types equal, as JSON, to `old` (the document's JSON at an
/// earlier seq): texts get the old text back, maps the old keys and values, arrays the
/// old elements; a root created since is emptied (Yjs never removes a root). Values come
/// back as plain JSON: a nested shared type becomes a plain value of the same JSON.
pub fn restore(txn: &mut TransactionMut<'_>, old: &Value) -> Result<(), String> {
    use yrs::ReadTxn;
    let Value::Object(old) = old else {
        return Err("the old document is not an object of roots".into());
    };
    let names: Vec<String> = txn.root_refs().map(|(name, _)| name.to_string()).collect();
    for name in names.iter().chain(old.keys()) {
        let was = old.get(name);
        let kind = match (was, existing_kind(txn, name)) {
            (Some(Value::String(_)), _) => Kind::Text,
            (Some(Value::Object(_)), _) => Kind::Map,
            (Some(Value::Array(_)), _) => Kind::Array,
            (None, Some(kind)) => kind,
            (None, None) | (Some(_), _) => continue,
        };
        match root_target(txn, name, kind)? {
            Target::Text(text) => {
                let now = text.get_string(txn);
                let then = was.and_then(Value::as_str).unwrap_or("");
                if now != then {
                    text.remove_range(txn, 0, now.len() as u32);
                    text.insert(txn, 0, then);
                }
            }
            Target::Map(map) => {
                let empty = serde_json::Map::new();
                let then = was.and_then(Value::as_object).unwrap_or(&empty);
                let keys: Vec<String> = map.keys(txn).map(str::to_string).collect();
                for key in keys.iter().filter(|k| !then.contains_key(*k)) {
                    map.remove(txn, key);
                }
                for (key, value) in then {
                    let same = map
                        .get(txn, key)
                        .map(|v| {
                            use yrs::types::ToJson;
                            serde_json::to_value(v.to_json(txn)).unwrap_or(Value::Null)
                        })
                        .is_some_and(|now| &now == value);
                    if !same {
                        map.insert(txn, key.as_str(), to_any(value)?);
                    }
                }
            }
            Target::Array(array) => {
                let then = was.and_then(Value::as_array).cloned().unwrap_or_default();
                let now = {
                    use yrs::types::ToJson;
                    serde_json::to_value(array.to_json(txn)).unwrap_or(Value::Null)
                };
                if now != Value::Array(then.clone()) {
                    let len = array.len(txn);
                    array.remove_range(txn, 0, len);
                    for (i, value) in then.iter().enumerate() {
                        array.insert(txn, i as u32, to_any(value)?);
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::doc_json::to_json;
    use yrs::{Doc, Transact};

    fn run(doc: &Doc, ops: Value) -> Result<(), Failed> {
        let ops: Vec<Op> = serde_json::from_value(ops).unwrap();
        let mut txn = doc.transact_mut();
        apply(&mut txn, &ops)
    }

    #[test]
    fn every_operation_on_fresh_roots() {
        let doc = Doc::new();
        run(
            &doc,
            serde_json::json!([
                {"op": "set", "path": ["settings", "title"], "value": "Notes"},
                {"op": "set", "path": ["settings", "n"], "value": {"a": [1, 2]}},
                {"op": "insert", "path": ["items"], "index": 0, "values": ["x", "z"]},
                {"op": "insert", "path": ["items"], "index": 1, "values": ["y"]},
                {"op": "insert_text", "path": ["body"], "index": 0, "text": "héllo wörld"},
                {"op": "delete_text", "path": ["body"], "index": 5, "length": 6},
                {"op": "remove", "path": ["items"], "index": 0},
                {"op": "delete", "path": ["settings", "n"]}
            ]),
        )
        .unwrap();
        assert_eq!(
            to_json(&doc),
            serde_json::json!({
                "settings": {"title": "Notes"},
                "items": ["y", "z"],
                "body": "héllo"
            })
        );
    }

    #[test]
    fn a_failure_names_its_operation() {
        let doc = Doc::new();
        run(
            &doc,
            serde_json::json!([{"op": "insert_text", "path": ["body"], "index": 0, "text": "hi"}]),
        )
        .unwrap();
        let failed = run(
            &doc,
            serde_json::json!([
                {"op": "set", "path": ["m", "k"], "value": 1},
                {"op": "set", "path": ["body", "k"], "value": 1}
            ]),
        )
        .unwrap_err();
        assert_eq!(failed.op, 1);
        assert!(failed.reason.contains("text"), "{}", failed.reason);
        for (ops, index) in [
            (
                serde_json::json!([{"op": "insert_text", "path": ["body"], "index": 9, "text": "x"}]),
                0,
            ),
            (
                serde_json::json!([{"op": "delete", "path": ["m", "nope"]}]),
                0,
            ),
            (
                serde_json::json!([{"op": "set", "path": ["m"], "value": 1}]),
                0,
            ),
            (
                serde_json::json!([{"op": "remove", "path": ["list"], "index": 0}]),
                0,
            ),
            (
                serde_json::json!([{"op": "set", "path": ["m", "a", "b"], "value": 1}]),
                0,
            ),
        ] {
            assert_eq!(run(&Doc::new(), ops).unwrap_err().op, index);
        }
    }
}
