//! Messages a client sends: the server's hardened decoder, and the encoders only clients
//! use (the document and awareness encoders, shared by both sides, are in the parent).

use bytes::Bytes;
use yrs::sync::AwarenessUpdate;
use yrs::sync::awareness::AwarenessUpdateEntry;
use yrs::updates::decoder::Decode;
use yrs::{ClientID, StateVector, Update};

use super::lib0::{Reader, write_buf, write_var};
use super::{
    MSG_ACK, MSG_AUTH, MSG_AWARENESS, MSG_QUERY_AWARENESS, MSG_SYNC, MSG_TOKEN, ProtocolError,
    SYNC_STEP1, SYNC_STEP2, SYNC_UPDATE, frame,
};

/// Yjs client ids are at most 53 bits (JavaScript's safe integers).
const MAX_CLIENT_ID: u64 = (1 << 53) - 1;

/// One decoded message from a client.
#[derive(Debug)]
pub enum ClientMessage {
    /// "Here is what I have; send me what I miss."
    SyncStep1(StateVector),
    /// An answer to our step 1, or (from y-websocket) a plain update: both are applied.
    SyncStep2(Update),
    /// A Yjs update (sync step 2 or update).
    Update(Update),
    /// Presence.
    Awareness(AwarenessUpdate),
    /// A request for everyone's presence.
    QueryAwareness,
    /// Clients do not normally send auth messages; the server ignores them.
    Auth,
    /// "Tell me when what I sent so far is durable" ([`MSG_ACK`]).
    AckRequest {
        /// The client's token, echoed in the answer.
        token: u64,
    },
    /// A fresh access token for the session ([`MSG_TOKEN`]).
    Token(String),
    /// A tag this server does not know, with its payload.
    Custom {
        /// The message tag.
        tag: u64,
        /// Its payload, skipped.
        payload: Bytes,
    },
}

/// Decodes every message in `frame` from a client.
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
        MSG_TOKEN => {
            let mut payload = Reader::new(r.buf()?);
            let token = std::str::from_utf8(payload.buf()?)
                .map_err(|_| ProtocolError::NotUtf8("access token"))?;
            Ok(ClientMessage::Token(token.to_string()))
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

/// Decodes a state vector v1, refusing client ids over 53 bits.
pub(super) fn decode_state_vector(bytes: &[u8]) -> Result<StateVector, ProtocolError> {
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
pub fn decode_awareness(bytes: &[u8]) -> Result<AwarenessUpdate, ProtocolError> {
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

/// "Send me every awareness state you know" (y-protocols' query awareness).
pub fn encode_query_awareness() -> Bytes {
    let mut out = Vec::with_capacity(1);
    write_var(&mut out, MSG_QUERY_AWARENESS);
    Bytes::from(out)
}

/// collabd's ack request: "tell me when everything I sent before this is durable"; the
/// server answers with [`encode_ack`](super::encode_ack) carrying the same `token`.
pub fn encode_ack_request(token: u64) -> Bytes {
    let mut payload = Vec::with_capacity(10);
    write_var(&mut payload, token);
    frame(&[MSG_ACK], &payload)
}

/// collabd's access change: run this session under `token` from now on; the server
/// answers with [`encode_token_answer`](super::encode_token_answer).
pub fn encode_token(token: &str) -> Bytes {
    let mut payload = Vec::with_capacity(token.len() + 4);
    write_buf(&mut payload, token.as_bytes());
    frame(&[MSG_TOKEN], &payload)
}

#[cfg(test)]
mod tests {
    use super::super::lib0::write_buf;
    use super::super::{encode_awareness, encode_sync_step1, encode_sync_step2, encode_update};
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
        frame.extend_from_slice(&encode_query_awareness());
        frame.extend_from_slice(&encode_ack_request(300));
        let msgs = decode_frame(&Bytes::from(frame)).unwrap();
        assert!(matches!(msgs[0], ClientMessage::Update(_)));
        assert!(matches!(msgs[1], ClientMessage::SyncStep1(_)));
        assert!(matches!(msgs[2], ClientMessage::QueryAwareness));
        assert!(matches!(msgs[3], ClientMessage::AckRequest { token: 300 }));
        assert_eq!(msgs.len(), 4);
    }

    #[test]
    fn client_encoders_write_the_documented_bytes() {
        assert_eq!(&encode_query_awareness()[..], [3]);
        // [100, varbuf(varuint 300)]: 300 = 0xac 0x02.
        assert_eq!(&encode_ack_request(300)[..], [100, 2, 0xac, 0x02]);
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
        write_buf(&mut huge, b"{}");
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
        for bytes in crate::protocol::lib0::random_frames(0x9e37_79b9_7f4a_7c15) {
            let _ = decode_frame(&Bytes::from(bytes));
        }
    }
}
