//! The y-websocket wire codec, sans-IO: bytes in, typed messages out, and back.
//!
//! A WebSocket frame carries one or more messages back to back. Each message starts with
//! a lib0 varuint tag (y-protocols):
//!
//! | tag | message | body |
//! |-----|---------|------|
//! | 0 | sync | varuint subtype: 0 step 1 (varbuf state vector), 1 step 2 (varbuf update v1), 2 update (varbuf update v1) |
//! | 1 | awareness | varbuf: varuint count, then per client varuint id, varuint clock, varstring JSON state |
//! | 2 | auth | varuint 0 + varstring reason (permission denied) or 1 (granted) |
//! | 3 | query awareness | nothing |
//! | 100 | collabd write ack (see [`MSG_ACK`]) | varbuf: varuint token (client → server); varuint token, varuint seq, varuint status (server → client; 0 stored, 1 something since the previous request was refused) |
//! | other ≥ 4 | custom, ignored | varbuf payload |
//!
//! Decoding checks every length against what is left of the frame, decodes updates and
//! state vectors fully (so a room only ever sees well-formed ones) and never panics.

pub mod close;
pub mod json;
pub mod sse;

use bytes::Bytes;
use yrs::sync::AwarenessUpdate;
use yrs::sync::awareness::AwarenessUpdateEntry;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{ClientID, StateVector, Update};

pub const MSG_SYNC: u64 = 0;
pub const MSG_AWARENESS: u64 = 1;
pub const MSG_AUTH: u64 = 2;
pub const MSG_QUERY_AWARENESS: u64 = 3;
/// collabd's write acknowledgement, outside y-protocols' 0–3 so stock clients never send
/// it. A writer sends `[100, varbuf(varuint token)]` after its updates; once every update
/// the session sent before it is durable, the server answers `[100, varbuf(varuint
/// token, varuint seq)]`, where `seq` is the room's durable seq covering them.
pub const MSG_ACK: u64 = 100;
/// Ack status: everything sent since the previous ack request is stored.
pub const ACK_STORED: u64 = 0;
/// Ack status: something sent since the previous ack request was refused (invalid, too
/// large, missing dependencies, read-only); what was accepted is stored.
pub const ACK_REFUSED: u64 = 1;

pub const AUTH_PERMISSION_DENIED: u64 = 0;

pub const SYNC_STEP1: u64 = 0;
pub const SYNC_STEP2: u64 = 1;
pub const SYNC_UPDATE: u64 = 2;

/// Yjs client ids are at most 53 bits (JavaScript's safe integers).
const MAX_CLIENT_ID: u64 = (1 << 53) - 1;

/// One decoded message from a client.
#[derive(Debug)]
pub enum ClientMessage {
    /// "Here is what I have; send me what I miss."
    SyncStep1(StateVector),
    /// An answer to our step 1, or (from y-websocket) a plain update: both are applied.
    SyncStep2(Update),
    Update(Update),
    Awareness(AwarenessUpdate),
    QueryAwareness,
    /// Clients do not normally send auth messages; the server ignores them.
    Auth,
    /// "Tell me when what I sent so far is durable" ([`MSG_ACK`]).
    AckRequest {
        token: u64,
    },
    /// A tag this server does not know, with its payload.
    Custom {
        tag: u64,
        payload: Bytes,
    },
}

/// Why a frame was refused. Every variant means "the frame is not y-websocket".
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProtocolError {
    #[error("frame truncated: {0}")]
    Truncated(&'static str),
    #[error("varint too long")]
    VarintOverflow,
    #[error("unknown sync message type {0}")]
    UnknownSyncType(u64),
    #[error("update does not decode: {0}")]
    BadUpdate(String),
    #[error("state vector does not decode: {0}")]
    BadStateVector(String),
    #[error("awareness update invalid: {0}")]
    BadAwareness(String),
    #[error("empty frame")]
    Empty,
}

/// Decodes every message in `frame`.
pub fn decode_frame(frame: &Bytes) -> Result<Vec<ClientMessage>, ProtocolError> {
    if frame.is_empty() {
        return Err(ProtocolError::Empty);
    }
    let mut reader = Reader::new(frame);
    let mut messages = Vec::with_capacity(1);
    while !reader.is_empty() {
        messages.push(decode_message(&mut reader)?);
    }
    Ok(messages)
}

fn decode_message(r: &mut Reader<'_>) -> Result<ClientMessage, ProtocolError> {
    match r.var()? {
        MSG_SYNC => match r.var()? {
            SYNC_STEP1 => Ok(ClientMessage::SyncStep1(decode_state_vector(r.buf()?)?)),
            SYNC_STEP2 => Ok(ClientMessage::SyncStep2(decode_update(r.buf()?)?)),
            SYNC_UPDATE => Ok(ClientMessage::Update(decode_update(r.buf()?)?)),
            other => Err(ProtocolError::UnknownSyncType(other)),
        },
        MSG_AWARENESS => Ok(ClientMessage::Awareness(decode_awareness(r.buf()?)?)),
        MSG_AUTH => {
            if r.var()? == 0 {
                r.buf()?; // the reason string
            }
            Ok(ClientMessage::Auth)
        }
        MSG_QUERY_AWARENESS => Ok(ClientMessage::QueryAwareness),
        MSG_ACK => {
            let mut payload = Reader::new(r.buf()?);
            let token = payload.var()?;
            Ok(ClientMessage::AckRequest { token })
        }
        tag => {
            let payload = r.buf()?;
            Ok(ClientMessage::Custom {
                tag,
                payload: Bytes::copy_from_slice(payload),
            })
        }
    }
}

/// Decodes a Yjs update v1. yrs is trusted to return errors, but a panic on hostile
/// input must not take the session down with it, so it is contained here.
pub fn decode_update(bytes: &[u8]) -> Result<Update, ProtocolError> {
    contain(|| Update::decode_v1(bytes))
        .and_then(|r| r.map_err(|e| e.to_string()))
        .map_err(ProtocolError::BadUpdate)
}

fn decode_state_vector(bytes: &[u8]) -> Result<StateVector, ProtocolError> {
    let sv = contain(|| StateVector::decode_v1(bytes))
        .and_then(|r| r.map_err(|e| e.to_string()))
        .map_err(ProtocolError::BadStateVector)?;
    if sv.iter().any(|(client, _)| client.get() > MAX_CLIENT_ID) {
        return Err(ProtocolError::BadStateVector(
            "client id over 53 bits".into(),
        ));
    }
    Ok(sv)
}

fn contain<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> Result<T, String> {
    std::panic::catch_unwind(f).map_err(|_| "decoder panicked".to_string())
}

/// Parses an awareness update by hand so that client ids and clocks are range-checked
/// before yrs sees them.
fn decode_awareness(bytes: &[u8]) -> Result<AwarenessUpdate, ProtocolError> {
    let bad = |m: &str| ProtocolError::BadAwareness(m.to_string());
    let mut r = Reader::new(bytes);
    let count = r.var()?;
    // Each entry takes at least 3 bytes, which bounds the allocation by the frame size.
    if count > bytes.len() as u64 / 3 {
        return Err(bad("entry count exceeds the payload"));
    }
    let mut clients = std::collections::HashMap::with_capacity(count as usize);
    for _ in 0..count {
        let id = r.var()?;
        if id > MAX_CLIENT_ID {
            return Err(bad("client id over 53 bits"));
        }
        let clock = u32::try_from(r.var()?).map_err(|_| bad("clock over 32 bits"))?;
        let json = std::str::from_utf8(r.buf()?).map_err(|_| bad("state is not UTF-8"))?;
        let entry = AwarenessUpdateEntry {
            clock,
            json: json.into(),
        };
        clients.insert(ClientID::new(id), entry);
    }
    if !r.is_empty() {
        return Err(bad("trailing bytes"));
    }
    Ok(AwarenessUpdate { clients })
}

/// A bounds-checked cursor over lib0-encoded bytes.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// A lib0 varuint: 7 bits per byte, least significant first, high bit = more follows.
    fn var(&mut self) -> Result<u64, ProtocolError> {
        let mut value: u64 = 0;
        for (i, &byte) in self.buf.iter().enumerate() {
            let shift = 7 * i as u32;
            if shift > 63 || (shift == 63 && byte & 0x7f > 1) {
                return Err(ProtocolError::VarintOverflow);
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                self.buf = &self.buf[i + 1..];
                return Ok(value);
            }
        }
        Err(ProtocolError::Truncated("varint"))
    }

    /// A lib0 varbuf: varuint length, then that many bytes.
    fn buf(&mut self) -> Result<&'a [u8], ProtocolError> {
        let len = self.var()?;
        if len > self.buf.len() as u64 {
            return Err(ProtocolError::Truncated("length exceeds frame"));
        }
        let (head, tail) = self.buf.split_at(len as usize);
        self.buf = tail;
        Ok(head)
    }
}

/// Appends a lib0 varuint.
fn write_var(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn frame(tags: &[u64], payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(payload.len() + 2 + 10);
    for &tag in tags {
        write_var(&mut out, tag);
    }
    write_var(&mut out, payload.len() as u64);
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// Sync step 1: our state vector.
pub fn encode_sync_step1(sv: &StateVector) -> Bytes {
    frame(&[MSG_SYNC, SYNC_STEP1], &sv.encode_v1())
}

/// Sync step 2: everything the peer's state vector lacks.
pub fn encode_sync_step2(update: &[u8]) -> Bytes {
    frame(&[MSG_SYNC, SYNC_STEP2], update)
}

/// A document update for every peer of the room.
pub fn encode_update(update: &[u8]) -> Bytes {
    frame(&[MSG_SYNC, SYNC_UPDATE], update)
}

/// The answer to an ack request: everything the session sent before `token` that the
/// room accepted is durable, covered by `seq`. `ok` is false if something it sent since
/// its previous ack request was refused or dropped (status [`ACK_REFUSED`]): that part is
/// not stored, and the client must not treat it as saved.
pub fn encode_ack(token: u64, seq: u64, ok: bool) -> Bytes {
    let mut payload = Vec::with_capacity(21);
    write_var(&mut payload, token);
    write_var(&mut payload, seq);
    write_var(&mut payload, if ok { ACK_STORED } else { ACK_REFUSED });
    frame(&[MSG_ACK], &payload)
}

/// y-protocols' "permission denied" auth message: a read-only session tried to write, or
/// a write was refused (document size limit). y-websocket reports `reason` through its
/// `permissionDeniedHandler` (which logs it by default).
pub fn encode_permission_denied(reason: &str) -> Bytes {
    let mut out = Vec::with_capacity(reason.len() + 4);
    write_var(&mut out, MSG_AUTH);
    write_var(&mut out, AUTH_PERMISSION_DENIED);
    write_var(&mut out, reason.len() as u64);
    out.extend_from_slice(reason.as_bytes());
    Bytes::from(out)
}

/// An awareness update.
pub fn encode_awareness(update: &AwarenessUpdate) -> Bytes {
    frame(&[MSG_AWARENESS], &update.encode_v1())
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{Doc, GetString, ReadTxn, Text, Transact};

    fn update_bytes() -> Vec<u8> {
        let doc = Doc::with_client_id(7);
        let text = doc.get_or_insert_text("t");
        text.push(&mut doc.transact_mut(), "hello");
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    #[test]
    fn several_messages_in_one_frame_all_decode() {
        let u = update_bytes();
        let mut frame = encode_update(&u).to_vec();
        frame.extend_from_slice(&encode_sync_step1(&StateVector::default()));
        frame.push(MSG_QUERY_AWARENESS as u8);
        let msgs = decode_frame(&Bytes::from(frame)).unwrap();
        assert!(matches!(msgs[0], ClientMessage::Update(_)));
        assert!(matches!(msgs[1], ClientMessage::SyncStep1(_)));
        assert!(matches!(msgs[2], ClientMessage::QueryAwareness));
        assert_eq!(msgs.len(), 3);
    }

    #[test]
    fn decoded_update_applies() {
        let msgs = decode_frame(&encode_sync_step2(&update_bytes())).unwrap();
        let ClientMessage::SyncStep2(update) = msgs.into_iter().next().unwrap() else {
            panic!("not step 2")
        };
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        doc.transact_mut().apply_update(update).unwrap();
        assert_eq!(text.get_string(&doc.transact()), "hello");
    }

    #[test]
    fn truncated_frames_are_errors_not_silence() {
        let full = encode_update(&update_bytes());
        for cut in 1..full.len() {
            let err = decode_frame(&full.slice(..cut));
            assert!(err.is_err(), "cut at {cut} decoded");
        }
        assert_eq!(
            decode_frame(&Bytes::new()).unwrap_err(),
            ProtocolError::Empty
        );
    }

    #[test]
    fn garbage_updates_are_refused() {
        let frame = frame(&[MSG_SYNC, SYNC_UPDATE], &[0xff, 0xff, 0xff, 0x01, 0x02]);
        assert!(matches!(
            decode_frame(&frame),
            Err(ProtocolError::BadUpdate(_))
        ));
        let unknown = frame_of(&[0, 9, 0]);
        assert_eq!(
            decode_frame(&unknown).unwrap_err(),
            ProtocolError::UnknownSyncType(9)
        );
    }

    fn frame_of(bytes: &[u8]) -> Bytes {
        Bytes::copy_from_slice(bytes)
    }

    #[test]
    fn awareness_round_trips_and_rejects_huge_client_ids() {
        let mut clients = std::collections::HashMap::new();
        clients.insert(
            ClientID::new(42),
            AwarenessUpdateEntry {
                clock: 3,
                json: r#"{"user":"ann"}"#.into(),
            },
        );
        let update = AwarenessUpdate { clients };
        let msgs = decode_frame(&encode_awareness(&update)).unwrap();
        let ClientMessage::Awareness(back) = &msgs[0] else {
            panic!("not awareness")
        };
        assert_eq!(back, &update);

        let mut huge = vec![];
        write_var(&mut huge, 1);
        write_var(&mut huge, u64::MAX);
        write_var(&mut huge, 1);
        write_var(&mut huge, 2);
        huge.extend_from_slice(b"{}");
        let err = decode_frame(&frame(&[MSG_AWARENESS], &huge)).unwrap_err();
        assert!(matches!(err, ProtocolError::BadAwareness(_)), "{err}");
    }

    #[test]
    fn overlong_varints_are_refused() {
        let bytes = frame_of(&[0xff; 11]);
        assert_eq!(
            decode_frame(&bytes).unwrap_err(),
            ProtocolError::VarintOverflow
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic sweep over short random frames.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..2000usize {
            let bytes: Vec<u8> = (0..len % 64)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = decode_frame(&Bytes::from(bytes));
        }
    }
}
