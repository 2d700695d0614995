//! A room's keys in Redis, the scripts that change them, and the reads: the cluster's op
//! log, one hash tag per room (key layout in the module docs of [`super`]).

use bytes::Bytes;
use redis::Value;

use super::conn::Conn;
use super::{Entry, FromCluster};
use crate::store::{LoggedUpdate, Snapshot, StoreError, now_ms};

/// Appends updates to a room's log, each with the next seq: the counter, the stream and
/// the channel change together (a script runs atomically), and the room's last-write
/// time. `KEYS`: counter, stream, touched, epoch, webhook state. `ARGV`: node, channel,
/// strict, now (ms), the room's epoch as the node knows it, webhooks (`1`: the last seq
/// is marked for delivery, with the entries), then (ticket, author, update) triples (an
/// empty author: none; an entry's `a` field holds it for the history). Returns the
/// seqs, in order. With `strict` (an archive in PostgreSQL), a room without a counter may
/// have left Redis for the archive: the script refuses (`NOCOUNTER`) until the counter is
/// restored from it ([`RESTORE`]), so that no seq is ever given twice. An update of a
/// deleted epoch is refused (`EPOCH number base`): it may build on deleted content.
pub const APPEND: &str = r#"
local epoch = redis.call('HMGET', KEYS[4], 'number', 'base')
if tonumber(epoch[1] or '0') ~= tonumber(ARGV[5]) then
  return redis.error_reply('EPOCH ' .. (epoch[1] or '0') .. ' ' .. (epoch[2] or '0'))
end
if ARGV[3] == '1' and redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('NOCOUNTER the room is not in Redis')
end
local seqs = {}
for i = 7, #ARGV, 3 do
  local seq = redis.call('INCR', KEYS[1])
  local id = string.format('%d-0', seq)
  if ARGV[i + 1] == '' then
    redis.call('XADD', KEYS[2], id, 'u', ARGV[i + 2], 'n', ARGV[1], 't', ARGV[i], 'w', ARGV[4])
  else
    redis.call('XADD', KEYS[2], id, 'u', ARGV[i + 2], 'n', ARGV[1], 't', ARGV[i], 'w', ARGV[4],
      'a', ARGV[i + 1])
  end
  redis.call('PUBLISH', ARGV[2],
    'u' .. string.format('%d', seq) .. ':' .. ARGV[1] .. ':' .. ARGV[i] .. ':' .. ARGV[i + 2])
  seqs[#seqs + 1] = seq
end
redis.call('SET', KEYS[3], ARGV[4])
if ARGV[6] == '1' and #seqs > 0 then
  redis.call('HSET', KEYS[5], 'target', seqs[#seqs])
end
return seqs
"#;

/// Puts a room that left Redis back: its counter (and what is archived) at the newest
/// seq PostgreSQL holds, unless a node did it first. `KEYS`: counter, archived.
/// `ARGV`: seq.
pub const RESTORE: &str = r#"
redis.call('SET', KEYS[1], ARGV[1], 'NX')
redis.call('HSETNX', KEYS[2], 'seq', ARGV[1])
return 1
"#;

/// Takes or renews the room's archive lease for `node`. `KEYS`: lease. `ARGV`: node,
/// milliseconds. Returns 1 if `node` holds it now.
pub const LEASE: &str = r#"
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"#;

/// Records that PostgreSQL holds the room's log up to `seq` (and its snapshot at
/// `snap`), then trims the stream below `keep_from` (never past what is archived), if
/// `node` still holds the lease. `KEYS`: lease, archived, stream. `ARGV`: node, seq,
/// snap, keep_from. Returns 1 if recorded.
pub const ARCHIVED: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local seq = tonumber(redis.call('HGET', KEYS[2], 'seq') or '0')
if tonumber(ARGV[2]) > seq then
  redis.call('HSET', KEYS[2], 'seq', ARGV[2])
  seq = tonumber(ARGV[2])
end
local snap = tonumber(redis.call('HGET', KEYS[2], 'snap') or '0')
if tonumber(ARGV[3]) > snap then
  redis.call('HSET', KEYS[2], 'snap', ARGV[3])
end
local keep = math.min(tonumber(ARGV[4]), seq + 1)
if keep > 1 then
  redis.call('XTRIM', KEYS[3], 'MINID', string.format('%d-0', keep))
end
return 1
"#;

/// Releases the lease if `node` holds it. `KEYS`: lease. `ARGV`: node.
pub const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 1
"#;

/// Removes a room from Redis when PostgreSQL holds all of it (log and snapshot) and
/// nothing was written for `idle` ms; a write meanwhile keeps it. `KEYS`: counter,
/// stream, snapshot, archived, touched, lease. `ARGV`: now, idle. Returns 1 if removed.
pub const LEAVE: &str = r#"
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
local archived = tonumber(redis.call('HGET', KEYS[4], 'seq') or '0')
if seq ~= archived then
  return 0
end
local snap = tonumber(redis.call('HGET', KEYS[3], 'seq') or '0')
local snap_archived = tonumber(redis.call('HGET', KEYS[4], 'snap') or '0')
if snap > snap_archived then
  return 0
end
local touched = tonumber(redis.call('GET', KEYS[5]) or '0')
if tonumber(ARGV[1]) - touched < tonumber(ARGV[2]) then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6])
return 1
"#;

/// Deletes a room's log and starts its next epoch, unless the room changed since the
/// deleting node read it: its epoch is still `number` and its counter below `base`.
/// Removes the stream, snapshot, archive marks and lease; sets the counter to `base`
/// (the next update gets `base + 1`); records the epoch and its graveyard; tells every
/// node (`d<number>:<base>` on the room's channel). `KEYS`: counter, stream, snapshot,
/// archived, touched, lease, epoch, webhook state, webhook lease. `ARGV`: number (the new epoch's), base, graveyard,
/// channel. Returns 1, or the error `CHANGED` when the room changed (not `MOVED`: a Redis Cluster client takes that for a redirection).
pub const DELETE: &str = r#"
local current = tonumber(redis.call('HGET', KEYS[7], 'number') or '0')
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
if current + 1 ~= tonumber(ARGV[1]) or seq >= tonumber(ARGV[2]) then
  return redis.error_reply('CHANGED the room changed during its deletion')
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[8], KEYS[9])
redis.call('SET', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[7], 'number', ARGV[1], 'base', ARGV[2], 'graveyard', ARGV[3])
redis.call('PUBLISH', ARGV[4], 'd' .. ARGV[1] .. ':' .. ARGV[2] .. ':')
return 1
"#;

/// Replaces a room's snapshot, only by a newer one (several nodes may write one for the
/// same room). `KEYS`: snapshot. `ARGV`: seq, state, time. Returns 1 if stored.
pub const SNAPSHOT: &str = r#"
local current = redis.call('HGET', KEYS[1], 'seq')
if current and tonumber(current) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'seq', ARGV[1], 'state', ARGV[2], 'at', ARGV[3])
return 1
"#;

/// The hash tag of `room`'s keys. Every key of a room is built the same way, so Redis
/// Cluster puts them in one slot whatever the name holds (a `}` in it ends the tag early,
/// identically for every key of that room).
fn key(room: &str, what: &str) -> String {
    format!("collabd:{{{room}}}:{what}")
}

pub fn seq_key(room: &str) -> String {
    key(room, "seq")
}

pub fn log_key(room: &str) -> String {
    key(room, "log")
}

pub fn snapshot_key(room: &str) -> String {
    key(room, "snap")
}

pub fn touched_key(room: &str) -> String {
    key(room, "touched")
}

pub fn archived_key(room: &str) -> String {
    key(room, "archived")
}

pub fn lease_key(room: &str) -> String {
    key(room, "lease")
}

pub fn epoch_key(room: &str) -> String {
    key(room, "epoch")
}

/// The room's webhook delivery state: `delivered`, `target` (see [`crate::webhooks`]).
pub fn hook_key(room: &str) -> String {
    key(room, "hook")
}

/// The node delivering the room's webhooks (a lease, like the archive's).
pub fn hook_lease_key(room: &str) -> String {
    key(room, "hooklease")
}

/// Records webhook deliveries: `delivered` as given, `target` only raised (appends raise
/// it too). `KEYS`: webhook state. `ARGV`: delivered, target.
pub const PUT_HOOK: &str = r#"
redis.call('HSET', KEYS[1], 'delivered', ARGV[1])
local target = tonumber(redis.call('HGET', KEYS[1], 'target') or '0')
if tonumber(ARGV[2]) > target then
  redis.call('HSET', KEYS[1], 'target', ARGV[2])
end
return 1
"#;

/// The room's pub/sub channel.
pub fn channel(room: &str) -> String {
    format!("collabd:{{{room}}}")
}

/// Appends `updates` (ticket, bytes) to `room`'s log in one script; each answer is the
/// update's seq.
pub async fn append(
    conn: &Conn,
    room: &str,
    node: u64,
    strict: bool,
    epoch: u64,
    webhooks: bool,
    updates: &[(u64, &str, &[u8])],
) -> Result<Vec<Result<u64, StoreError>>, StoreError> {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(APPEND)
        .arg(5)
        .arg(seq_key(room))
        .arg(log_key(room))
        .arg(touched_key(room))
        .arg(epoch_key(room))
        .arg(hook_key(room))
        .arg(node.to_string())
        .arg(channel(room))
        .arg(if strict { "1" } else { "0" })
        .arg(now_ms())
        .arg(epoch)
        .arg(if webhooks { "1" } else { "0" });
    for (ticket, author, update) in updates {
        cmd.arg(ticket.to_string()).arg(*author).arg(*update);
    }
    let answer = conn.query(&cmd).await?;
    let Value::Array(seqs) = answer else {
        return Err(StoreError::Failed(format!(
            "Redis: the append script answered {answer:?}"
        )));
    };
    if seqs.len() != updates.len() {
        return Err(StoreError::Failed(format!(
            "Redis: {} seqs for {} updates",
            seqs.len(),
            updates.len()
        )));
    }
    Ok(seqs
        .into_iter()
        .map(|v| match v {
            Value::Int(seq) if seq > 0 => Ok(seq as u64),
            other => Err(StoreError::Failed(format!(
                "Redis: the append script answered {other:?}"
            ))),
        })
        .collect())
}

/// Stores `snapshot` unless a newer one is there.
pub async fn put_snapshot(conn: &Conn, room: &str, snapshot: &Snapshot) -> Result<(), StoreError> {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(SNAPSHOT)
        .arg(1)
        .arg(snapshot_key(room))
        .arg(snapshot.seq)
        .arg(&snapshot.state[..])
        .arg(now_ms());
    conn.query(&cmd).await.map(|_| ())
}

/// The room's snapshot, if it has one.
pub async fn snapshot(conn: &Conn, room: &str) -> Result<Option<Snapshot>, StoreError> {
    let mut cmd = redis::cmd("HMGET");
    cmd.arg(snapshot_key(room)).arg("seq").arg("state");
    match conn.query(&cmd).await? {
        Value::Array(values) => match (values.first(), values.get(1)) {
            (Some(seq), Some(Value::BulkString(state))) => Ok(Some(Snapshot {
                seq: int(seq).ok_or_else(|| corrupt(room, 0, "snapshot seq"))?,
                state: state.clone(),
            })),
            _ => Ok(None),
        },
        _ => Ok(None),
    }
}

pub async fn has_snapshot(conn: &Conn, room: &str) -> Result<bool, StoreError> {
    let mut cmd = redis::cmd("HEXISTS");
    cmd.arg(snapshot_key(room)).arg("seq");
    Ok(matches!(conn.query(&cmd).await?, Value::Int(1)))
}

/// The room's newest seq (its counter; 0 for a room never written).
pub async fn last_seq(conn: &Conn, room: &str) -> Result<u64, StoreError> {
    let mut cmd = redis::cmd("GET");
    cmd.arg(seq_key(room));
    Ok(int(&conn.query(&cmd).await?).unwrap_or(0))
}

/// Up to `limit` entries with seq greater than `after`, in order.
pub async fn range(
    conn: &Conn,
    room: &str,
    after: u64,
    limit: usize,
) -> Result<Vec<Entry>, StoreError> {
    let mut cmd = redis::cmd("XRANGE");
    cmd.arg(log_key(room))
        .arg(format!("{}-0", after.saturating_add(1)))
        .arg("+");
    if limit < usize::MAX {
        cmd.arg("COUNT").arg(limit);
    }
    entries(room, conn.query(&cmd).await?)
}

/// The oldest entry's seq, if the stream holds any.
pub async fn first_seq(conn: &Conn, room: &str) -> Result<Option<u64>, StoreError> {
    let mut cmd = redis::cmd("XRANGE");
    cmd.arg(log_key(room)).arg("-").arg("+").arg("COUNT").arg(1);
    Ok(entries(room, conn.query(&cmd).await?)?
        .first()
        .map(|e| e.seq))
}

/// Deletes the entries below `seq` (compaction, after a snapshot covering them).
pub async fn delete_before(conn: &Conn, room: &str, seq: u64) -> Result<usize, StoreError> {
    let mut cmd = redis::cmd("XTRIM");
    cmd.arg(log_key(room)).arg("MINID").arg(format!("{seq}-0"));
    Ok(int(&conn.query(&cmd).await?).unwrap_or(0) as usize)
}

/// What follows `after`: the entries, or — when the stream no longer reaches back to
/// `after + 1` (compacted) — the snapshot and the entries after it.
pub async fn catch_up(
    conn: &Conn,
    room: &str,
    after: u64,
) -> Result<(Option<Snapshot>, Vec<Entry>), StoreError> {
    /// At most this many entries per read; a room further behind reads again.
    const LIMIT: usize = 10_000;
    let entries = range(conn, room, after, LIMIT).await?;
    if entries.first().is_some_and(|e| e.seq == after + 1) {
        return Ok((None, entries));
    }
    if last_seq(conn, room).await? <= after {
        return Ok((None, Vec::new()));
    }
    match snapshot(conn, room).await? {
        Some(snapshot) if snapshot.seq > after => {
            let entries = range(conn, room, snapshot.seq, LIMIT).await?;
            Ok((Some(snapshot), entries))
        }
        // Entries written meanwhile: the caller sees the gap and asks again.
        _ => Ok((None, entries)),
    }
}

/// The room's epoch ([`crate::store::Epoch::default`] for one never deleted).
pub async fn epoch(conn: &Conn, room: &str) -> Result<crate::store::Epoch, StoreError> {
    let mut cmd = redis::cmd("HMGET");
    cmd.arg(epoch_key(room))
        .arg("number")
        .arg("base")
        .arg("graveyard");
    let Value::Array(values) = conn.query(&cmd).await? else {
        return Ok(Default::default());
    };
    Ok(crate::store::Epoch {
        number: values.first().and_then(int).unwrap_or(0),
        base: values.get(1).and_then(int).unwrap_or(0),
        graveyard: match values.get(2) {
            Some(Value::BulkString(bytes)) => bytes.clone(),
            _ => Vec::new(),
        },
        deleting: false,
    })
}

/// Records webhook deliveries ([`PUT_HOOK`]).
pub async fn put_hook(
    conn: &Conn,
    room: &str,
    delivered: u64,
    target: u64,
) -> Result<(), StoreError> {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(PUT_HOOK)
        .arg(1)
        .arg(hook_key(room))
        .arg(delivered)
        .arg(target);
    conn.query(&cmd).await.map(|_| ())
}

/// The room's webhook delivery state: (delivered, target).
pub async fn hook(conn: &Conn, room: &str) -> Result<Option<(u64, u64)>, StoreError> {
    let mut cmd = redis::cmd("HMGET");
    cmd.arg(hook_key(room)).arg("delivered").arg("target");
    let Value::Array(values) = conn.query(&cmd).await? else {
        return Ok(None);
    };
    let delivered = values.first().and_then(int);
    let target = values.get(1).and_then(int);
    Ok(match (delivered, target) {
        (None, None) => None,
        (d, t) => Some((d.unwrap_or(0), t.unwrap_or(0))),
    })
}

/// Every room with webhook delivery state (a scan of every master).
pub async fn hooks(conn: &Conn) -> Result<Vec<(String, u64, u64)>, StoreError> {
    let mut out = Vec::new();
    for room in scan(conn, "collabd:{*}:hook", "}:hook").await? {
        if let Some((delivered, target)) = hook(conn, &room).await? {
            out.push((room, delivered, target));
        }
    }
    Ok(out)
}

/// Takes or renews the room's webhook lease for `node` ([`LEASE`]).
pub async fn hook_lease(conn: &Conn, room: &str, node: u64, ms: u64) -> Result<bool, StoreError> {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(LEASE)
        .arg(1)
        .arg(hook_lease_key(room))
        .arg(node.to_string())
        .arg(ms);
    Ok(matches!(conn.query(&cmd).await?, Value::Int(1)))
}

/// Every room with a counter in Redis whose name starts with `prefix` (a scan of every
/// master of a Redis Cluster), in no order.
pub async fn rooms(conn: &Conn, prefix: &str) -> Result<Vec<String>, StoreError> {
    let mut escaped = String::with_capacity(prefix.len());
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    scan(conn, &format!("collabd:{{{escaped}*}}:seq"), "}:seq").await
}

/// The rooms of the keys matching `pattern` (which end in `suffix`), on every master.
async fn scan(conn: &Conn, pattern: &str, suffix: &str) -> Result<Vec<String>, StoreError> {
    let mut rooms = Vec::new();
    for client in conn.masters().await? {
        let mut c = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| StoreError::Unavailable(format!("Redis: {e}")))?;
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut c)
                .await
                .map_err(|e| StoreError::Unavailable(format!("Redis: {e}")))?;
            rooms.extend(keys.iter().filter_map(|k| {
                k.strip_prefix("collabd:{")
                    .and_then(|k| k.strip_suffix(suffix))
                    .map(str::to_string)
            }));
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(rooms)
}

/// Runs [`DELETE`]: `Ok(false)` when the room changed since it was read.
pub async fn delete(
    conn: &Conn,
    room: &str,
    next: &crate::store::Epoch,
) -> Result<bool, StoreError> {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(DELETE)
        .arg(9)
        .arg(seq_key(room))
        .arg(log_key(room))
        .arg(snapshot_key(room))
        .arg(archived_key(room))
        .arg(touched_key(room))
        .arg(lease_key(room))
        .arg(epoch_key(room))
        .arg(hook_key(room))
        .arg(hook_lease_key(room))
        .arg(next.number)
        .arg(next.base)
        .arg(&next.graveyard[..])
        .arg(channel(room));
    match conn.query(&cmd).await {
        Ok(Value::Int(1)) => Ok(true),
        Err(StoreError::Failed(why)) if why.contains("CHANGED") => Ok(false),
        Ok(other) => Err(StoreError::Failed(format!(
            "Redis: the delete script answered {other:?}"
        ))),
        Err(e) => Err(e),
    }
}

/// Publishes a presence update of `session` on `node` to the room's channel.
pub async fn publish_awareness(
    conn: &Conn,
    room: &str,
    node: u64,
    session: u64,
    update: &[u8],
) -> Result<(), StoreError> {
    let mut payload = format!("a{node}:{session}:").into_bytes();
    payload.extend_from_slice(update);
    let mut cmd = redis::cmd("PUBLISH");
    cmd.arg(channel(room)).arg(payload);
    conn.query(&cmd).await.map(|_| ())
}

/// A message of a room channel: the room's name and what it says.
pub fn decode_message<'a>(channel: &'a str, payload: &[u8]) -> Option<(&'a str, FromCluster)> {
    let room = channel.strip_prefix("collabd:{")?.strip_suffix('}')?;
    let (&kind, rest) = payload.split_first()?;
    match kind {
        b'u' => {
            let (fields, update) = split_fields::<3>(rest)?;
            let entry = Entry {
                seq: fields[0],
                node: fields[1],
                ticket: fields[2],
                update: Bytes::copy_from_slice(update),
                at_ms: now_ms(),
                author: None,
            };
            Some((room, FromCluster::Entries(vec![entry])))
        }
        b'd' => {
            let (fields, _) = split_fields::<2>(rest)?;
            Some((
                room,
                FromCluster::Deleted {
                    number: fields[0],
                    base: fields[1],
                },
            ))
        }
        b'a' => {
            let (fields, update) = split_fields::<2>(rest)?;
            Some((
                room,
                FromCluster::Awareness {
                    node: fields[0],
                    session: fields[1],
                    update: Bytes::copy_from_slice(update),
                },
            ))
        }
        _ => None,
    }
}

/// `N` decimal numbers, each followed by `:`, then the rest.
fn split_fields<const N: usize>(mut rest: &[u8]) -> Option<([u64; N], &[u8])> {
    let mut fields = [0u64; N];
    for field in &mut fields {
        let end = rest.iter().position(|&b| b == b':')?;
        *field = std::str::from_utf8(&rest[..end]).ok()?.parse().ok()?;
        rest = &rest[end + 1..];
    }
    Some((fields, rest))
}

/// Stream entries (`XRANGE`'s answer) as the log's.
fn entries(room: &str, answer: Value) -> Result<Vec<Entry>, StoreError> {
    let Value::Array(items) = answer else {
        return Ok(Vec::new());
    };
    items
        .into_iter()
        .map(|item| {
            let Value::Array(mut parts) = item else {
                return Err(corrupt(room, 0, "stream entry is not an array"));
            };
            let fields = parts.pop();
            let id = parts.pop().and_then(|v| string(&v));
            let seq = id
                .as_deref()
                .and_then(|id| id.strip_suffix("-0"))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| corrupt(room, 0, "stream entry id"))?;
            let mut entry = Entry {
                seq,
                node: 0,
                ticket: 0,
                update: Bytes::new(),
                at_ms: 0,
                author: None,
            };
            let Some(Value::Array(fields)) = fields else {
                return Err(corrupt(room, seq, "stream entry fields"));
            };
            for pair in fields.chunks(2) {
                let [name, value] = pair else { break };
                match string(name).as_deref() {
                    Some("u") => {
                        let Value::BulkString(bytes) = value else {
                            return Err(corrupt(room, seq, "update"));
                        };
                        entry.update = Bytes::copy_from_slice(bytes);
                    }
                    Some("n") => entry.node = int(value).unwrap_or(0),
                    Some("w") => entry.at_ms = int(value).unwrap_or(0),
                    Some("t") => entry.ticket = int(value).unwrap_or(0),
                    Some("a") => entry.author = string(value),
                    _ => {}
                }
            }
            Ok(entry)
        })
        .collect()
}

/// Entries as the store's records.
pub fn logged(entries: Vec<Entry>) -> Vec<LoggedUpdate> {
    entries
        .into_iter()
        .map(|e| LoggedUpdate {
            seq: e.seq,
            update: e.update.to_vec(),
            at_ms: e.at_ms,
        })
        .collect()
}

fn string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => string(other)?.parse().ok(),
    }
}

fn corrupt(room: &str, seq: u64, what: &str) -> StoreError {
    StoreError::Corrupt {
        room: room.to_string(),
        seq,
        reason: format!("unreadable {what} in Redis"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_messages_decode() {
        let (room, msg) = decode_message("collabd:{a:b}", b"u12:7:3:\x01\x02:").unwrap();
        assert_eq!(room, "a:b");
        let FromCluster::Entries(entries) = msg else {
            panic!("not entries")
        };
        assert_eq!(
            (entries[0].seq, entries[0].node, entries[0].ticket),
            (12, 7, 3)
        );
        assert_eq!(&entries[0].update[..], b"\x01\x02:");
        let (_, msg) = decode_message("collabd:{r}", b"a5:9:xyz").unwrap();
        assert!(matches!(
            msg,
            FromCluster::Awareness {
                node: 5,
                session: 9,
                ..
            }
        ));
        assert!(decode_message("collabd:{r}", b"u1:2").is_none());
        assert!(decode_message("other", b"u1:2:3:").is_none());
    }

    #[test]
    fn keys_share_a_hash_tag() {
        for room in ["plain", "a}b", "{x}", "ä/ö"] {
            let tag = |k: &str| {
                let open = k.find('{').unwrap();
                let close = open + k[open..].find('}').unwrap();
                k[open + 1..close].to_string()
            };
            assert_eq!(tag(&seq_key(room)), tag(&log_key(room)));
            assert_eq!(tag(&seq_key(room)), tag(&snapshot_key(room)));
        }
    }
}
