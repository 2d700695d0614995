//! The WebSocket session actor: one per connection, between an actix-ws socket and a room.
//!
//! Inbound: frames arrive as a stream on the actor, are decoded here (on the HTTP worker
//! thread, in parallel with other sessions) and forwarded to the room as [`FromClient`].
//! Outbound: the room sends [`Outbound`] frames; the actor puts them on a bounded queue
//! that a writer task drains into the socket. A full queue means the client is not
//! reading fast enough: the session is closed with [`close::SLOW_CONSUMER`] rather than
//! left to grow server memory or silently skip updates; the client reconnects and
//! re-syncs by state vector.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix::{
    Actor, ActorContext, ActorFutureExt, Addr, AsyncContext, Context, Handler, StreamHandler,
    WrapFuture,
};
use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, ProtocolError};
use bytes::Bytes;
use log::{debug, info, warn};
use tokio::sync::{mpsc, oneshot};

use crate::config::Settings;
use crate::protocol;
use crate::room::messages::{FromClient, Join, Leave, Outbound, SessionId};
use crate::room::{Registry, Room, ask};

/// WebSocket close codes a session uses (rooms add theirs in `room::actor::close`).
pub mod close {
    /// Text frames: y-websocket is binary.
    pub const UNSUPPORTED: u16 = 1003;
    /// A frame that does not decode as y-websocket messages.
    pub const INVALID_DATA: u16 = 1007;
    /// A frame over `max_frame_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// The room could not be reached.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// Nothing heard (not even a pong) within `client_timeout_ms`.
    pub const TIMEOUT: u16 = 4000;
    /// The outbound queue overflowed: the client reads slower than the room writes.
    pub const SLOW_CONSUMER: u16 = 4008;
}

/// How long the writer waits to deliver a close frame before dropping the connection.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// One WebSocket connection in one room.
pub struct WsSession {
    id: SessionId,
    room_name: Arc<str>,
    /// Set once the room has accepted our [`Join`]; frames are not read before that.
    room: Option<Addr<Room>>,
    registry: Addr<Registry>,
    /// Bounded: `outbound_queue_messages` frames; `try_send` failing means slow consumer.
    outbound: mpsc::Sender<Bytes>,
    /// Tells the writer to send a close frame and end; taken when used.
    close: Option<oneshot::Sender<CloseReason>>,
    /// Last time anything arrived from the client, for the heartbeat timeout.
    last_heard: Instant,
    settings: Arc<Settings>,
}

impl WsSession {
    /// Starts the session actor and its writer task for an upgraded connection.
    pub fn start(
        room_name: Arc<str>,
        registry: Addr<Registry>,
        socket: actix_ws::Session,
        stream: AggregatedMessageStream,
        settings: Arc<Settings>,
    ) -> Addr<WsSession> {
        let (outbound, queue) = mpsc::channel(settings.outbound_queue_messages);
        let (close, close_rx) = oneshot::channel();
        actix_rt::spawn(write_loop(socket, queue, close_rx));
        WsSession::create(|ctx| {
            ctx.add_stream(stream);
            WsSession {
                id: NEXT_SESSION.fetch_add(1, Ordering::Relaxed),
                room_name,
                room: None,
                registry,
                outbound,
                close: Some(close),
                last_heard: Instant::now(),
                settings,
            }
        })
    }

    /// Sends a close frame (if the socket still takes one) and stops the actor.
    fn close(&mut self, ctx: &mut Context<Self>, code: u16, reason: &str) {
        if let Some(close) = self.close.take() {
            let _ = close.send(CloseReason {
                code: CloseCode::from(code),
                description: Some(reason.to_string()),
            });
        }
        ctx.stop();
    }

    fn on_frame(&mut self, frame: Bytes, ctx: &mut Context<Self>) {
        match protocol::decode_frame(&frame) {
            Ok(messages) => {
                if let Some(room) = &self.room {
                    room.do_send(FromClient {
                        session: self.id,
                        messages,
                    });
                }
            }
            Err(e) => {
                warn!(
                    "session {} in room {:?}: malformed frame ({} bytes): {e}",
                    self.id,
                    self.room_name,
                    frame.len()
                );
                self.close(ctx, close::INVALID_DATA, &e.to_string());
            }
        }
    }

    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        if self.last_heard.elapsed() >= self.settings.client_timeout() {
            info!(
                "session {} in room {:?}: client timed out",
                self.id, self.room_name
            );
            self.close(ctx, close::TIMEOUT, "client timeout");
            return;
        }
        // An empty binary frame would be a protocol error for the client; a ping is not.
        // It goes through the same queue so that it never overtakes updates.
        let _ = self.outbound.try_send(Bytes::new());
    }
}

/// Drains the outbound queue into the socket. An empty `Bytes` means "ping".
async fn write_loop(
    mut socket: actix_ws::Session,
    mut queue: mpsc::Receiver<Bytes>,
    mut close: oneshot::Receiver<CloseReason>,
) {
    // Both waits watch `close`, so a writer stuck on a client that stopped reading still
    // gets the order to close.
    let reason = loop {
        let frame = tokio::select! {
            biased;
            reason = &mut close => break reason.ok(),
            frame = queue.recv() => match frame {
                Some(frame) => frame,
                None => break None,
            },
        };
        let sent = tokio::select! {
            biased;
            reason = &mut close => break reason.ok(),
            sent = async {
                if frame.is_empty() {
                    socket.ping(b"").await
                } else {
                    socket.binary(frame).await
                }
            } => sent,
        };
        if sent.is_err() {
            return;
        }
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, socket.close(reason)).await;
}

impl Actor for WsSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let join = Join {
            session: self.id,
            outbox: ctx.address().recipient(),
        };
        let registry = self.registry.clone();
        let name = self.room_name.clone();
        // `wait`: no frame is read until the room knows us, so nothing overtakes the join.
        ctx.wait(
            async move { ask(&registry, &name, join).await }
                .into_actor(self)
                .map(|joined, act, ctx| match joined {
                    Ok((room, ())) => act.room = Some(room),
                    Err(e) => {
                        warn!("session {}: {e}", act.id);
                        act.close(ctx, close::INTERNAL_ERROR, "room unavailable");
                    }
                }),
        );
        ctx.run_interval(self.settings.heartbeat_interval(), WsSession::heartbeat);
        debug!("session {} opened in room {:?}", self.id, self.room_name);
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        if let Some(room) = &self.room {
            room.do_send(Leave { session: self.id });
        }
        debug!("session {} closed in room {:?}", self.id, self.room_name);
    }
}

impl StreamHandler<Result<AggregatedMessage, ProtocolError>> for WsSession {
    fn handle(&mut self, item: Result<AggregatedMessage, ProtocolError>, ctx: &mut Context<Self>) {
        self.last_heard = Instant::now();
        match item {
            Ok(AggregatedMessage::Binary(frame)) => self.on_frame(frame, ctx),
            Ok(AggregatedMessage::Text(_)) => {
                warn!("session {}: text frame refused", self.id);
                self.close(ctx, close::UNSUPPORTED, "text frames are not supported");
            }
            Ok(AggregatedMessage::Ping(_)) | Ok(AggregatedMessage::Pong(_)) => {}
            Ok(AggregatedMessage::Close(reason)) => {
                debug!("session {}: client closed: {reason:?}", self.id);
                self.close(ctx, 1000, "");
            }
            Err(ProtocolError::Overflow) => {
                warn!(
                    "session {}: frame over {} bytes refused",
                    self.id, self.settings.max_frame_bytes
                );
                self.close(ctx, close::TOO_BIG, "frame too large");
            }
            Err(e) => {
                warn!("session {}: WebSocket protocol error: {e}", self.id);
                self.close(ctx, 1002, "protocol error");
            }
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<Outbound> for WsSession {
    type Result = ();

    fn handle(&mut self, msg: Outbound, ctx: &mut Context<Self>) {
        match msg {
            Outbound::Frame(frame) => match self.outbound.try_send(frame) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    warn!(
                        "session {} in room {:?}: {} frames queued, closing slow consumer",
                        self.id, self.room_name, self.settings.outbound_queue_messages
                    );
                    self.close(ctx, close::SLOW_CONSUMER, "slow consumer");
                }
                Err(mpsc::error::TrySendError::Closed(_)) => ctx.stop(),
            },
            Outbound::Close { code, reason } => self.close(ctx, code, &reason),
        }
    }
}
