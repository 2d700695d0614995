//! The read half of a WebSocket connection: a stream of whole client messages.
//!
//! It reads with a buffer that exists only while a frame is in flight: an idle
//! connection holds none, a small frame costs one small allocation, and a large frame
//! grows the buffer to exactly its size once its header is in (never beyond
//! `max_frame_bytes`, refused from the header alone), after which it is freed again.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use futures_util::Stream;

use super::wire::Source;
use crate::protocol::websocket::{self, Assembler, FrameError, Message, Parsed};

/// What a read takes from the socket at least (most y-websocket frames fit).
const READ_CHUNK: usize = 2048;

/// Why the connection cannot be read further.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("connection lost: {0}")]
    Io(#[from] io::Error),
}

/// Client messages from the connection, in order. Ends at EOF.
pub struct Inbound {
    source: Source,
    buf: BytesMut,
    assembler: Assembler,
    max: usize,
    ended: bool,
}

impl Inbound {
    /// `early`: bytes the client sent right behind its handshake, already read.
    pub fn new(source: Source, early: BytesMut, max_frame_bytes: usize) -> Inbound {
        Inbound {
            source,
            buf: early,
            assembler: Assembler::default(),
            max: max_frame_bytes,
            ended: false,
        }
    }

    /// The next whole message already in the buffer, or how many bytes the frame at the
    /// front needs in all.
    fn parse(&mut self) -> Result<Result<Message, usize>, FrameError> {
        loop {
            match websocket::parse(&mut self.buf, self.max)? {
                Parsed::Frame(frame) => {
                    if let Some(message) = self.assembler.push(frame, self.max)? {
                        return Ok(Ok(message));
                    }
                }
                Parsed::Incomplete(need) => return Ok(Err(need)),
            }
        }
    }
}

impl Stream for Inbound {
    type Item = Result<Message, ReadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            let need = match this.parse() {
                Ok(Ok(message)) => return Poll::Ready(Some(Ok(message))),
                Ok(Err(need)) => need,
                Err(e) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
            };
            if this.buf.is_empty() {
                // Nothing in flight: hold no memory while waiting.
                this.buf = BytesMut::new();
            }
            let stream = match &mut this.source {
                Source::Socket(stream) => stream,
                Source::Chunks(chunks) => match ready!(chunks.as_mut().poll_next(cx)) {
                    Some(Ok(chunk)) => {
                        this.buf.extend_from_slice(&chunk);
                        continue;
                    }
                    Some(Err(e)) => {
                        this.ended = true;
                        return Poll::Ready(Some(Err(e.into())));
                    }
                    None => {
                        this.ended = true;
                        return Poll::Ready(None);
                    }
                },
            };
            if let Err(e) = ready!(stream.poll_read_ready(cx)) {
                this.ended = true;
                return Poll::Ready(Some(Err(e.into())));
            }
            let want = need.max(this.buf.len() + READ_CHUNK) - this.buf.len();
            this.buf.reserve(want);
            match stream.try_read_buf(&mut this.buf) {
                Ok(0) => {
                    this.ended = true;
                    return Poll::Ready(None);
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }
}
