//! What a session reads from and writes to: the TCP socket itself (collabd's own listener
//! hands it over after the handshake), or, when collabd is mounted in a host's actix-web
//! app, the HTTP/1 connection the host's server keeps: the request's body carries the
//! client's frames in, and a [`Pipe`] feeds the 101 response's body out.
//!
//! Both offer what [`super::Outbound`] and [`super::Inbound`] need: a non-blocking
//! vectored write that may take part of what it is given, a way to wait until more can be
//! written, shutting the write side, and a stream of bytes in.

use std::io::{self, IoSlice};
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::net::TcpStream;

/// Bytes a pipe holds for its reader before writes see `WouldBlock`; about what a
/// socket's send buffer holds, so that the slow-consumer rule (the outbound queue's
/// bounds) applies the same way on both wires.
const PIPE_CAPACITY: usize = 256 * 1024;

/// The write side of a session's connection.
pub enum Wire {
    /// A socket collabd owns.
    Socket(Arc<TcpStream>),
    /// A host's connection: frames go into the pipe, the 101 response's body takes them.
    Pipe(Arc<Pipe>),
}

impl Wire {
    /// Writes what it can of `bufs` now; `WouldBlock` when nothing fits.
    pub fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Wire::Socket(stream) => stream.try_write_vectored(bufs),
            Wire::Pipe(pipe) => pipe.try_write_vectored(bufs),
        }
    }

    /// Resolves once a write may take something again.
    pub async fn writable(&self) -> io::Result<()> {
        match self {
            Wire::Socket(stream) => stream.writable().await,
            Wire::Pipe(pipe) => std::future::poll_fn(|cx| pipe.poll_writable(cx)).await,
        }
    }

    /// Nothing more will be written: the peer reads to the end of what was sent.
    pub fn shutdown_write(&self) {
        match self {
            Wire::Socket(stream) => {
                let _ = socket2::SockRef::from(&**stream).shutdown(Shutdown::Write);
            }
            Wire::Pipe(pipe) => pipe.finish(),
        }
    }

    /// The connection is over: what was not written is dropped.
    pub fn shutdown(&self) {
        match self {
            Wire::Socket(stream) => {
                let _ = socket2::SockRef::from(&**stream).shutdown(Shutdown::Both);
            }
            Wire::Pipe(pipe) => pipe.abort(),
        }
    }

    /// After the close frame went out: waits (the caller bounds it) for the client to
    /// close its side. A pipe's read side belongs to the host's server, which ends the
    /// connection when the response body ends: nothing to wait for.
    pub async fn await_peer_close(&self) -> io::Result<()> {
        let Wire::Socket(stream) = self else {
            return Ok(());
        };
        let mut scratch = [0u8; 256];
        loop {
            stream.readable().await?;
            match stream.try_read(&mut scratch) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// A bounded byte pipe from a session (any thread) to the body of its 101 response
/// (polled by the host's HTTP worker).
pub struct Pipe {
    state: Mutex<PipeState>,
}

#[derive(Default)]
struct PipeState {
    buf: BytesMut,
    /// The writer is done: the body ends once `buf` is empty.
    finished: bool,
    /// The body was dropped (the client went away): writes fail.
    gone: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

impl Pipe {
    /// A new pipe and the response body that drains it.
    pub fn new() -> (Arc<Pipe>, PipeBody) {
        let pipe = Arc::new(Pipe {
            state: Mutex::new(PipeState::default()),
        });
        (pipe.clone(), PipeBody(pipe))
    }

    fn lock(&self) -> MutexGuard<'_, PipeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut state = self.lock();
        if state.gone || state.finished {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let room = PIPE_CAPACITY.saturating_sub(state.buf.len());
        if room == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut written = 0;
        for buf in bufs {
            let take = buf.len().min(room - written);
            state.buf.extend_from_slice(&buf[..take]);
            written += take;
            if written == room {
                break;
            }
        }
        if written > 0
            && let Some(reader) = state.reader.take()
        {
            reader.wake();
        }
        Ok(written)
    }

    fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.lock();
        if state.gone {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if state.buf.len() < PIPE_CAPACITY {
            return Poll::Ready(Ok(()));
        }
        state.writer = Some(cx.waker().clone());
        Poll::Pending
    }

    fn finish(&self) {
        let mut state = self.lock();
        state.finished = true;
        if let Some(reader) = state.reader.take() {
            reader.wake();
        }
    }

    fn abort(&self) {
        let mut state = self.lock();
        state.finished = true;
        state.buf = BytesMut::new();
        if let Some(reader) = state.reader.take() {
            reader.wake();
        }
    }
}

/// The body of a session's 101 response on a host's connection: everything written into
/// its pipe, in order, as it comes.
pub struct PipeBody(Arc<Pipe>);

impl Stream for PipeBody {
    type Item = Result<Bytes, io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut state = self.0.lock();
        if !state.buf.is_empty() {
            let chunk = state.buf.split().freeze();
            if state.buf.capacity() > PIPE_CAPACITY {
                state.buf = BytesMut::new();
            }
            if let Some(writer) = state.writer.take() {
                writer.wake();
            }
            return Poll::Ready(Some(Ok(chunk)));
        }
        if state.finished {
            return Poll::Ready(None);
        }
        state.reader = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for PipeBody {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.gone = true;
        state.buf = BytesMut::new();
        if let Some(writer) = state.writer.take() {
            writer.wake();
        }
    }
}

/// The read side: bytes from the client, as the wire delivers them.
pub enum Source {
    /// A socket collabd owns (read in place, into the session's frame buffer).
    Socket(Arc<TcpStream>),
    /// The request body of the upgrade on a host's connection.
    Chunks(Pin<Box<dyn Stream<Item = io::Result<Bytes>>>>),
}
