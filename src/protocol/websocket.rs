//! WebSocket framing (RFC 6455 §5), sans-IO: the server's side of it. Below the
//! y-websocket messages of this module's parent, above the socket of
//! `session::inbound`/`session::outbound`.
//!
//! - Server frames are never masked, so a frame is a 2–10 byte [`Head`] followed by the
//!   payload. A broadcast's payload is one shared buffer; each recipient's frame is that
//!   buffer behind its own few header bytes, written with one vectored write — the
//!   payload is never copied or encoded per recipient.
//! - Client frames must be masked. [`parse`] reads one frame from the front of a buffer
//!   and refuses a frame longer than the limit as soon as its header is in: nothing of an
//!   oversized frame is ever buffered. [`Assembler`] joins fragmented messages under the
//!   same limit.

use bytes::{Buf, Bytes, BytesMut};

/// Opcode: the continuation of a fragmented message.
pub const OP_CONTINUATION: u8 = 0x0;
/// Opcode: a text frame (collabd refuses them: y-websocket is binary).
pub const OP_TEXT: u8 = 0x1;
/// Opcode: a binary frame.
pub const OP_BINARY: u8 = 0x2;
/// Opcode: close.
pub const OP_CLOSE: u8 = 0x8;
/// Opcode: ping.
pub const OP_PING: u8 = 0x9;
/// Opcode: pong.
pub const OP_PONG: u8 = 0xA;

/// Control frames carry at most 125 bytes (§5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// An unmasked frame header: FIN + opcode, then the payload length in 1, 3 or 9 bytes.
#[derive(Clone, Copy)]
pub struct Head {
    bytes: [u8; 10],
    len: u8,
}

impl Head {
    /// The header of a final (unfragmented) frame of `opcode` carrying `payload_len` bytes.
    pub fn new(opcode: u8, payload_len: usize) -> Head {
        let mut bytes = [0u8; 10];
        bytes[0] = 0x80 | opcode;
        let len = if payload_len < 126 {
            bytes[1] = payload_len as u8;
            2
        } else if payload_len <= usize::from(u16::MAX) {
            bytes[1] = 126;
            bytes[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
            4
        } else {
            bytes[1] = 127;
            bytes[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
            10
        };
        Head { bytes, len }
    }

    /// The header's bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// The payload of a close frame: the code, then a UTF-8 reason cut to fit 125 bytes.
pub fn close_payload(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    payload.into()
}

/// A client frame (clients must mask, RFC 6455 §5.3): for clients and tests; the server
/// never sends one.
pub fn encode_client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push((u8::from(fin) << 7) | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// One frame from a client, unmasked.
#[derive(Debug)]
pub struct Frame {
    /// The last frame of its message.
    pub fin: bool,
    /// The opcode.
    pub opcode: u8,
    /// The payload, unmasked.
    pub payload: Bytes,
}

/// Why a client's frames cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A frame or message longer than the limit.
    #[error("frame of {0} bytes over the limit")]
    TooBig(u64),
    /// Anything else RFC 6455 forbids; the text says what.
    #[error("{0}")]
    Protocol(&'static str),
}

/// What [`parse`] found at the front of the buffer.
#[derive(Debug)]
pub enum Parsed {
    /// A whole frame.
    Frame(Frame),
    /// The buffer holds a prefix of a frame of this many bytes in all (header included);
    /// read more. While the header itself is incomplete this is a lower bound.
    Incomplete(usize),
}

/// Takes one client frame off the front of `buf`. A frame whose payload is over
/// `max_payload` is refused from its header alone.
pub fn parse(buf: &mut BytesMut, max_payload: usize) -> Result<Parsed, FrameError> {
    if buf.len() < 2 {
        return Ok(Parsed::Incomplete(2));
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(FrameError::Protocol("reserved bits set"));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    let control = opcode & 0x08 != 0;
    match opcode {
        OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
        _ => return Err(FrameError::Protocol("unknown opcode")),
    }
    if b1 & 0x80 == 0 {
        return Err(FrameError::Protocol("client frames must be masked"));
    }
    let (len, mut at) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(Parsed::Incomplete(8));
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(Parsed::Incomplete(14));
            }
            let mut be = [0u8; 8];
            be.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(be), 10)
        }
        n => (u64::from(n), 2),
    };
    if control && (!fin || len > MAX_CONTROL_PAYLOAD as u64) {
        return Err(FrameError::Protocol(
            "control frames must be final and at most 125 bytes",
        ));
    }
    if len > max_payload as u64 {
        return Err(FrameError::TooBig(len));
    }
    let len = len as usize;
    let total = at + 4 + len;
    if buf.len() < total {
        return Ok(Parsed::Incomplete(total));
    }
    let mut mask = [0u8; 4];
    mask.copy_from_slice(&buf[at..at + 4]);
    at += 4;
    buf.advance(at);
    let mut payload = buf.split_to(len);
    unmask(&mut payload, mask);
    Ok(Parsed::Frame(Frame {
        fin,
        opcode,
        payload: payload.freeze(),
    }))
}

fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = data.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let v = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

/// A whole message from a client: data frames joined, control frames as they come.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    /// A whole binary message.
    Binary(Bytes),
    /// y-websocket is binary; a text message is refused, so its content is not kept.
    Text,
    /// A ping, with its payload (answered with a pong carrying it).
    Ping(Bytes),
    /// A pong (ignored).
    Pong,
    /// The client's close code, if it sent one.
    Close(Option<u16>),
}

/// Joins fragmented data messages (§5.4) under a size limit.
#[derive(Default)]
pub struct Assembler {
    /// The fragments of a binary message so far; `Some` between its first and last frame.
    partial: Option<BytesMut>,
    /// Inside a fragmented text message (its content is dropped).
    in_text: bool,
}

impl Assembler {
    /// Feeds one frame; returns a message once one is complete.
    pub fn push(&mut self, frame: Frame, max: usize) -> Result<Option<Message>, FrameError> {
        let Frame {
            fin,
            opcode,
            payload,
        } = frame;
        let in_message = self.partial.is_some() || self.in_text;
        match opcode {
            OP_PING => Ok(Some(Message::Ping(payload))),
            OP_PONG => Ok(Some(Message::Pong)),
            OP_CLOSE => {
                let code = match payload.len() {
                    0 => None,
                    1 => return Err(FrameError::Protocol("close payload of 1 byte")),
                    _ => Some(u16::from_be_bytes([payload[0], payload[1]])),
                };
                Ok(Some(Message::Close(code)))
            }
            OP_BINARY | OP_TEXT if in_message => Err(FrameError::Protocol(
                "a new message began before the previous one ended",
            )),
            OP_BINARY if fin => Ok(Some(Message::Binary(payload))),
            OP_BINARY => {
                self.partial = Some(BytesMut::from(&payload[..]));
                Ok(None)
            }
            OP_TEXT => {
                self.in_text = !fin;
                Ok(fin.then_some(Message::Text))
            }
            _ if !in_message => Err(FrameError::Protocol("continuation without a message")),
            _ if self.in_text => {
                self.in_text = !fin;
                Ok(fin.then_some(Message::Text))
            }
            _ => {
                let partial = self.partial.as_mut().expect("in a binary message");
                let total = partial.len() + payload.len();
                if total > max {
                    self.partial = None;
                    return Err(FrameError::TooBig(total as u64));
                }
                partial.extend_from_slice(&payload);
                if !fin {
                    return Ok(None);
                }
                Ok(self.partial.take().map(|p| Message::Binary(p.freeze())))
            }
        }
    }

    /// Bytes held for an unfinished message.
    pub fn held(&self) -> usize {
        self.partial.as_ref().map_or(0, BytesMut::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame, as a browser would send it.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        encode_client_frame(fin, opcode, payload, [0x12, 0x34, 0x56, 0x78])
    }

    fn frame(parsed: Parsed) -> Frame {
        match parsed {
            Parsed::Frame(f) => f,
            Parsed::Incomplete(n) => panic!("incomplete, {n} bytes"),
        }
    }

    #[test]
    fn heads_use_the_shortest_length_encoding() {
        assert_eq!(Head::new(OP_BINARY, 5).as_slice(), &[0x82, 5]);
        assert_eq!(Head::new(OP_BINARY, 300).as_slice(), &[0x82, 126, 1, 44]);
        assert_eq!(
            Head::new(OP_PING, 70_000).as_slice(),
            &[0x89, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]
        );
    }

    #[test]
    fn frames_are_unmasked_and_taken_off_the_front_one_at_a_time() {
        let body: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&client_frame(true, OP_BINARY, b"hello"));
        buf.extend_from_slice(&client_frame(true, OP_BINARY, &body));
        let first = frame(parse(&mut buf, 4096).unwrap());
        assert_eq!(&first.payload[..], b"hello");
        let second = frame(parse(&mut buf, 4096).unwrap());
        assert_eq!(&second.payload[..], &body[..]);
        assert!(buf.is_empty());
    }

    #[test]
    fn a_prefix_asks_for_the_whole_frame() {
        let bytes = client_frame(true, OP_BINARY, &[7; 300]);
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            match parse(&mut buf, 4096).unwrap() {
                Parsed::Incomplete(n) => assert!(n > cut && n <= bytes.len(), "cut {cut}: {n}"),
                Parsed::Frame(_) => panic!("a frame from {cut} bytes"),
            }
            assert_eq!(buf.len(), cut, "nothing consumed");
        }
    }

    #[test]
    fn an_oversized_frame_is_refused_from_its_header() {
        let mut header = BytesMut::from(&client_frame(true, OP_BINARY, &[0; 5000])[..14]);
        assert_eq!(
            parse(&mut header, 4096).unwrap_err(),
            FrameError::TooBig(5000)
        );
        let mut huge = BytesMut::from(&[0x82u8, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0][..]);
        assert!(matches!(parse(&mut huge, 4096), Err(FrameError::TooBig(_))));
    }

    #[test]
    fn protocol_violations_are_refused() {
        let unmasked = [0x82u8, 1, 0];
        let reserved = client_frame(true, OP_BINARY | 0x40, b"x");
        let opcode = client_frame(true, 0x3, b"x");
        let long_ping = client_frame(true, OP_PING, &[0; 126]);
        let fragmented_ping = client_frame(false, OP_PING, b"x");
        for bytes in [
            &unmasked[..],
            &reserved[..],
            &opcode[..],
            &long_ping[..],
            &fragmented_ping[..],
        ] {
            let mut buf = BytesMut::from(bytes);
            assert!(matches!(
                parse(&mut buf, 4096),
                Err(FrameError::Protocol(_))
            ));
        }
    }

    #[test]
    fn fragments_are_joined_under_the_limit_and_control_frames_interleave() {
        let mut asm = Assembler::default();
        let f = |fin, opcode, payload: &[u8]| Frame {
            fin,
            opcode,
            payload: Bytes::copy_from_slice(payload),
        };
        assert_eq!(asm.push(f(false, OP_BINARY, b"ab"), 10).unwrap(), None);
        assert_eq!(
            asm.push(f(true, OP_PING, b"p"), 10).unwrap(),
            Some(Message::Ping(Bytes::from_static(b"p")))
        );
        assert_eq!(
            asm.push(f(false, OP_CONTINUATION, b"cd"), 10).unwrap(),
            None
        );
        assert_eq!(asm.held(), 4);
        assert_eq!(
            asm.push(f(true, OP_CONTINUATION, b"e"), 10).unwrap(),
            Some(Message::Binary(Bytes::from_static(b"abcde")))
        );
        assert_eq!(asm.held(), 0);
        asm.push(f(false, OP_BINARY, b"123456"), 10).unwrap();
        assert_eq!(
            asm.push(f(true, OP_CONTINUATION, b"78901"), 10),
            Err(FrameError::TooBig(11))
        );
        assert!(asm.push(f(true, OP_CONTINUATION, b"x"), 10).is_err());
        assert_eq!(
            asm.push(f(true, OP_CLOSE, &[0x03, 0xE8, b'b']), 10)
                .unwrap(),
            Some(Message::Close(Some(1000)))
        );
    }

    #[test]
    fn close_reasons_are_cut_on_a_character_boundary() {
        let payload = close_payload(4008, &"é".repeat(100));
        assert!(payload.len() <= MAX_CONTROL_PAYLOAD);
        assert_eq!(&payload[..2], &4008u16.to_be_bytes());
        assert!(std::str::from_utf8(&payload[2..]).is_ok());
    }
}
