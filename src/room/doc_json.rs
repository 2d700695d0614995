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
}
