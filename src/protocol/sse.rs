//! Server-Sent Events framing: one event as the bytes a stream sends. Rooms encode each
//! live event once and share the bytes with every subscriber.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;

/// One SSE event of `kind` with an optional `id`; `data` goes base64 so it fits one line.
pub fn event(kind: &str, id: Option<u64>, data: &[u8]) -> Bytes {
    let data = BASE64.encode(data);
    let mut out = String::with_capacity(data.len() + 40);
    out.push_str("event: ");
    out.push_str(kind);
    out.push('\n');
    if let Some(id) = id {
        out.push_str(&format!("id: {id}\n"));
    }
    out.push_str("data: ");
    out.push_str(&data);
    out.push_str("\n\n");
    Bytes::from(out)
}

/// `event: synced` with `data: {"seq":D}`: the stream has delivered everything up to
/// the room's durable seq D as of its start (replay or snapshot done); live updates follow.
/// It carries no `id`, so the client's resume point stays the last update's.
pub fn synced(seq: u64) -> Bytes {
    Bytes::from(format!("event: synced\ndata: {{\"seq\":{seq}}}\n\n"))
}

/// `event: reset` with `data: {"epoch":E,"seq":S}`: the room was deleted and epoch E
/// began at seq S. The client drops its document: a snapshot of the new epoch follows
/// (a live stream ends after it instead; reconnecting resumes in the new epoch).
pub fn reset(epoch: u64, seq: u64) -> Bytes {
    Bytes::from(format!(
        "event: reset\ndata: {{\"epoch\":{epoch},\"seq\":{seq}}}\n\n"
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn events_are_framed_as_sse() {
        assert_eq!(
            &super::event("update", Some(7), b"hi")[..],
            b"event: update\nid: 7\ndata: aGk=\n\n"
        );
        assert_eq!(
            &super::event("awareness", None, b"")[..],
            b"event: awareness\ndata: \n\n"
        );
        assert_eq!(
            &super::synced(12)[..],
            b"event: synced\ndata: {\"seq\":12}\n\n"
        );
    }
}
