//! Messages the server sends: the encoders only the server uses, and the decoder a client
//! (the tests' client, the load generator) reads them with.

use bytes::Bytes;
use yrs::StateVector;
use yrs::sync::AwarenessUpdate;

use super::from_client::{decode_awareness, decode_state_vector};
use super::lib0::{Reader, write_buf, write_var};
use super::{
    ACK_REFUSED, ACK_STORED, AUTH_PERMISSION_DENIED, MSG_ACK, MSG_AUTH, MSG_AWARENESS,
    MSG_QUERY_AWARENESS, MSG_SYNC, MSG_TOKEN, ProtocolError, SYNC_STEP1, SYNC_STEP2, SYNC_UPDATE,
    TOKEN_ACCEPTED, TOKEN_REFUSED, frame,
};

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

/// The answer to a client's [`MSG_TOKEN`]: accepted (`detail`: `read` or `write`) or
/// refused (`detail`: why).
pub fn encode_token_answer(accepted: bool, detail: &str) -> Bytes {
    let mut payload = Vec::with_capacity(detail.len() + 4);
    write_var(
        &mut payload,
        if accepted {
            TOKEN_ACCEPTED
        } else {
            TOKEN_REFUSED
        },
    );
    write_buf(&mut payload, detail.as_bytes());
    frame(&[MSG_TOKEN], &payload)
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

/// One message from the server, as a client decodes it. Document updates stay encoded,
/// borrowed from the frame: a client decodes one when it applies it (see
/// [`decode_update`](super::decode_update)), and a load generator may never need to.
#[derive(Debug, PartialEq)]
pub enum ServerMessage<'a> {
    /// The server's state vector: answer with sync step 2 (what it lacks).
    SyncStep1(StateVector),
    /// The answer to our step 1 (an update v1): the initial sync is done once applied.
    SyncStep2(&'a [u8]),
    /// A live update v1 from another writer.
    Update(&'a [u8]),
    /// Presence.
    Awareness(AwarenessUpdate),
    /// "Send me your awareness state."
    QueryAwareness,
    /// y-protocols' permission denied, with the server's reason.
    PermissionDenied {
        /// Why.
        reason: &'a str,
    },
    /// collabd's write ack ([`MSG_ACK`]): what the session sent before the request with
    /// `token` is durable up to `seq`; `stored` is false if something sent since the
    /// previous request was refused.
    Ack {
        /// The request's token.
        token: u64,
        /// The room's durable seq covering what the session sent before the request.
        seq: u64,
        /// Everything sent since the previous request was stored (else something was refused).
        stored: bool,
    },
    /// The answer to our access token ([`MSG_TOKEN`]).
    TokenAnswer {
        /// The session runs under the new token now.
        accepted: bool,
        /// `read` or `write` when accepted, else why not.
        detail: &'a str,
    },
    /// A tag this codec does not know, with its payload.
    Custom {
        /// The message tag.
        tag: u64,
        /// Its payload.
        payload: &'a [u8],
    },
}

/// Decodes a frame from the server, message by message. An error ends the frame: the
/// iterator yields it and then nothing more (the messages before it stand). An empty
/// frame holds no messages.
pub fn decode_server_frame(frame: &[u8]) -> ServerMessages<'_> {
    ServerMessages {
        reader: Reader::new(frame),
        failed: false,
    }
}

/// The messages of one frame from the server (see [`decode_server_frame`]).
#[derive(Debug, Clone)]
pub struct ServerMessages<'a> {
    reader: Reader<'a>,
    failed: bool,
}

impl<'a> Iterator for ServerMessages<'a> {
    type Item = Result<ServerMessage<'a>, ProtocolError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.reader.is_empty() {
            return None;
        }
        let message = decode_server_message(&mut self.reader);
        self.failed = message.is_err();
        Some(message)
    }
}

fn decode_server_message<'a>(r: &mut Reader<'a>) -> Result<ServerMessage<'a>, ProtocolError> {
    match r.var()? {
        MSG_SYNC => match r.var()? {
            SYNC_STEP1 => Ok(ServerMessage::SyncStep1(decode_state_vector(r.buf()?)?)),
            SYNC_STEP2 => Ok(ServerMessage::SyncStep2(r.buf()?)),
            SYNC_UPDATE => Ok(ServerMessage::Update(r.buf()?)),
            other => Err(ProtocolError::UnknownSyncType(other)),
        },
        MSG_AWARENESS => Ok(ServerMessage::Awareness(decode_awareness(r.buf()?)?)),
        MSG_AUTH => match r.var()? {
            AUTH_PERMISSION_DENIED => {
                let reason = std::str::from_utf8(r.buf()?)
                    .map_err(|_| ProtocolError::NotUtf8("permission denied reason"))?;
                Ok(ServerMessage::PermissionDenied { reason })
            }
            other => Err(ProtocolError::UnknownAuthType(other)),
        },
        MSG_QUERY_AWARENESS => Ok(ServerMessage::QueryAwareness),
        MSG_ACK => {
            // Later fields, if a future server adds any, are skipped.
            let mut payload = Reader::new(r.buf()?);
            let token = payload.var()?;
            let seq = payload.var()?;
            let stored = match payload.var()? {
                ACK_STORED => true,
                ACK_REFUSED => false,
                other => return Err(ProtocolError::UnknownAckStatus(other)),
            };
            Ok(ServerMessage::Ack { token, seq, stored })
        }
        MSG_TOKEN => {
            let mut payload = Reader::new(r.buf()?);
            let accepted = payload.var()? == TOKEN_ACCEPTED;
            let detail = std::str::from_utf8(payload.buf()?)
                .map_err(|_| ProtocolError::NotUtf8("token answer"))?;
            Ok(ServerMessage::TokenAnswer { accepted, detail })
        }
        tag => Ok(ServerMessage::Custom {
            tag,
            payload: r.buf()?,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::super::lib0::write_buf;
    use super::super::{encode_awareness, encode_sync_step1, encode_sync_step2, encode_update};
    use super::*;
    use yrs::sync::awareness::AwarenessUpdateEntry;
    use yrs::{ClientID, Doc, ReadTxn, Text, Transact};

    fn decode_all(frame: &[u8]) -> Result<Vec<ServerMessage<'_>>, ProtocolError> {
        decode_server_frame(frame).collect()
    }

    #[test]
    fn everything_the_server_sends_decodes_back() {
        let doc = Doc::with_client_id(7);
        doc.get_or_insert_text("t")
            .push(&mut doc.transact_mut(), "hello");
        let sv = doc.transact().state_vector();
        let update = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let mut clients = std::collections::HashMap::new();
        let entry = AwarenessUpdateEntry {
            clock: 1,
            json: "null".into(),
        };
        clients.insert(ClientID::new(9), entry);
        let awareness = AwarenessUpdate { clients };

        let mut frame = Vec::new();
        for part in [
            encode_sync_step1(&sv),
            encode_sync_step2(&update),
            encode_update(&update),
            encode_awareness(&awareness),
            encode_permission_denied("read-only access"),
            encode_ack(5, 1_000_000, true),
            encode_ack(6, 0, false),
        ] {
            frame.extend_from_slice(&part);
        }
        frame.push(MSG_QUERY_AWARENESS as u8);
        assert_eq!(
            decode_all(&frame).unwrap(),
            [
                ServerMessage::SyncStep1(sv),
                ServerMessage::SyncStep2(&update),
                ServerMessage::Update(&update),
                ServerMessage::Awareness(awareness),
                ServerMessage::PermissionDenied {
                    reason: "read-only access"
                },
                ServerMessage::Ack {
                    token: 5,
                    seq: 1_000_000,
                    stored: true
                },
                ServerMessage::Ack {
                    token: 6,
                    seq: 0,
                    stored: false
                },
                ServerMessage::QueryAwareness,
            ]
        );
        assert_eq!(decode_all(&[]).unwrap(), []);
    }

    #[test]
    fn an_error_ends_the_frame_after_the_messages_before_it() {
        let mut frame = encode_update(b"u").to_vec();
        frame.extend_from_slice(&[MSG_SYNC as u8, 9, 0]);
        frame.extend_from_slice(&encode_update(b"never read"));
        let messages: Vec<_> = decode_server_frame(&frame).collect();
        assert_eq!(
            messages,
            [
                Ok(ServerMessage::Update(b"u")),
                Err(ProtocolError::UnknownSyncType(9))
            ]
        );
        let full = encode_ack(1, 2, true);
        for cut in 1..full.len() {
            assert!(decode_all(&full[..cut]).is_err(), "cut at {cut} decoded");
        }
    }

    #[test]
    fn unknown_acks_and_auth_types_are_errors_and_custom_tags_pass_through() {
        let mut ack = Vec::new();
        for field in [1, 2, 7] {
            write_var(&mut ack, field);
        }
        let frame = frame(&[MSG_ACK], &ack);
        assert_eq!(
            decode_all(&frame).unwrap_err(),
            ProtocolError::UnknownAckStatus(7)
        );
        assert_eq!(
            decode_all(&[MSG_AUTH as u8, 1]).unwrap_err(),
            ProtocolError::UnknownAuthType(1)
        );
        let mut custom = vec![42];
        write_buf(&mut custom, b"payload");
        assert_eq!(
            decode_all(&custom).unwrap(),
            [ServerMessage::Custom {
                tag: 42,
                payload: b"payload"
            }]
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        for bytes in crate::protocol::lib0::random_frames(0x2545_f491_4f6c_dd1d) {
            let _ = decode_all(&bytes);
        }
    }
}
