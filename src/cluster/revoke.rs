//! Revocations in cluster mode: kept in one Redis hash, and every change published on one
//! channel that every node subscribes, so a revocation reaches every node's list (and
//! closes the sessions it covers there) as soon as Redis relays it. A node that was cut
//! off reads the whole hash again when it reconnects: a lost message costs nothing.

use redis::Value;

use super::conn::Conn;
use crate::store::StoreError;

/// The hash (entries as in [`crate::revocation`]) and, in pub/sub's own namespace, the
/// channel. Room channels are `collabd:{ROOM}`; this name has no braces.
pub const KEY: &str = "collabd:revocations";

/// Keeps one revocation and tells every node, in one transaction.
pub async fn put(conn: &Conn, key: &str, value: u64) -> Result<(), StoreError> {
    let mut pipe = redis::pipe();
    pipe.atomic()
        .cmd("HSET")
        .arg(KEY)
        .arg(key)
        .arg(value)
        .ignore()
        .cmd("PUBLISH")
        .arg(KEY)
        .arg(format!("{value} {key}"))
        .ignore();
    conn.pipeline(&pipe).await.map(|_| ())
}

/// Every revocation kept.
pub async fn all(conn: &Conn) -> Result<Vec<(String, u64)>, StoreError> {
    let mut cmd = redis::cmd("HGETALL");
    cmd.arg(KEY);
    let Value::Array(values) = conn.query(&cmd).await? else {
        return Ok(Vec::new());
    };
    let text = |v: &Value| match v {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        _ => None,
    };
    Ok(values
        .chunks(2)
        .filter_map(|pair| {
            let key = text(pair.first()?)?;
            let value = text(pair.get(1)?)?.parse().ok()?;
            Some((key, value))
        })
        .collect())
}

/// A message of the channel: (key, value).
pub fn decode(payload: &[u8]) -> Option<(String, u64)> {
    let text = std::str::from_utf8(payload).ok()?;
    let (value, key) = text.split_once(' ')?;
    Some((key.to_string(), value.parse().ok()?))
}
