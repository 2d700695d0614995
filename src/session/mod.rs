//! The WebSocket session actor: one per connection, between an actix-ws socket and a room.
//!
//! Inbound: frames arrive as a stream on the actor, are decoded here (on the HTTP worker
//! thread, in parallel with other sessions) and forwarded to the room as [`FromClient`].
//! Outbound: the room pushes encoded frames straight into the session's
//! [`OutboundQueue`] (no actor hop per frame), and a writer task drains it into the socket.
//! The queue is bounded in frames and bytes; a push that does not fit means the client
//! reads slower than the room writes, and the room closes the session with
//! [`close::SLOW_CONSUMER`] rather than grow server memory or silently skip updates; the
//! client reconnects and re-syncs by state vector.
//!
//! The session also enforces what its token allows: a read-only session's writes are
//! dropped here (never reach the room) and answered with y-protocols' permission-denied
//! message; when the token expires the session is closed with [`close::TOKEN_EXPIRED`].
//! Inbound frames (pings included) pass a token bucket; a client that exhausts it is
//! closed with [`close::RATE_LIMIT`]. A client's ping is answered with a pong carrying
//! the same payload (RFC 6455 §5.5.2).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use actix::{
    Actor, ActorContext, ActorFutureExt, Addr, AsyncContext, Context, Handler, StreamHandler,
    WrapFuture,
};
use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, ProtocolError};
use bytes::Bytes;
use log::{debug, info, warn};
use tokio::sync::oneshot;

use crate::auth::{Access, Grant, Sub};
use crate::config::Settings;
use crate::limits::{Permit, TokenBucket};
use crate::metrics::{ConnectionGauge, metrics};
use crate::protocol::{self, ClientMessage};
use crate::room::messages::{CloseSession, FromClient, Join, Leave, SessionId};
use crate::room::{Registry, Room, ask};

/// The close codes, re-exported where sessions have always found them.
pub use crate::protocol::close;

mod outbound;
pub use outbound::{OutboundQueue, Outgoing, QueueError, SessionPeer};

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// One WebSocket connection in one room.
pub struct WsSession {
    id: SessionId,
    room_name: Arc<str>,
    /// Set once the room has accepted our [`Join`]; frames are not read before that.
    room: Option<Addr<Room>>,
    registry: Addr<Registry>,
    /// Shared with the room, which pushes the frames it sends.
    queue: OutboundQueue,
    /// Tells the writer to send a close frame and end; taken when used.
    close: Option<oneshot::Sender<CloseReason>>,
    /// Last time anything arrived from the client, for the heartbeat timeout.
    last_heard: Instant,
    settings: Arc<Settings>,
    access: Access,
    expires: Option<SystemTime>,
    /// The token's `sub`, for the session's log lines.
    subject: Option<String>,
    rate: TokenBucket,
    /// The same over inbound bytes: many frames are cheap, many large ones are not.
    byte_rate: TokenBucket,
    /// `collabd_bytes_in_total{transport="ws"}`, resolved once (a label lookup per frame
    /// takes a lock).
    bytes_in: prometheus::IntCounter,
    /// Holds this connection's admission slot and gauge until the session ends.
    _permit: Permit,
    _gauge: ConnectionGauge,
}

impl WsSession {
    /// Starts the session actor and its writer task for an upgraded connection.
    pub fn start(
        room_name: Arc<str>,
        registry: Addr<Registry>,
        socket: actix_ws::Session,
        stream: AggregatedMessageStream,
        settings: Arc<Settings>,
        grant: Grant,
        permit: Permit,
    ) -> Addr<WsSession> {
        let (queue, frames) = OutboundQueue::new(&settings);
        let (close, close_rx) = oneshot::channel();
        actix_rt::spawn(outbound::write_loop(
            socket,
            frames,
            close_rx,
            queue.bytes.clone(),
        ));
        WsSession::create(|ctx| {
            ctx.add_stream(stream);
            WsSession {
                id: NEXT_SESSION.fetch_add(1, Ordering::Relaxed),
                room_name,
                room: None,
                registry,
                queue,
                close: Some(close),
                last_heard: Instant::now(),
                rate: TokenBucket::new(settings.session_rate, settings.session_burst),
                byte_rate: TokenBucket::new(
                    settings.session_bytes_rate,
                    settings.session_bytes_burst,
                ),
                bytes_in: metrics().bytes_in.with_label_values(&["ws"]),
                settings,
                access: grant.access,
                expires: grant.expires,
                subject: grant.subject,
                _permit: permit,
                _gauge: ConnectionGauge::open("ws"),
            }
        })
    }

    /// Sends a close frame (if the socket still takes one) and stops the actor.
    fn close(&mut self, ctx: &mut Context<Self>, code: u16, reason: &str) {
        if let Some(close) = self.close.take() {
            metrics()
                .sessions_closed
                .with_label_values(&[&code.to_string()])
                .inc();
            let _ = close.send(CloseReason {
                code: CloseCode::from(code),
                description: Some(reason.to_string()),
            });
        }
        ctx.stop();
    }

    /// Takes a frame's tokens from the rate buckets (one frame, `bytes` bytes); closes the
    /// session when either is empty.
    fn within_rate(&mut self, bytes: usize, ctx: &mut Context<Self>) -> bool {
        let s = &self.settings;
        let over = if !self.rate.take() {
            format!("{} frames/s (burst {})", s.session_rate, s.session_burst)
        } else if !self.byte_rate.take_n(bytes) {
            format!(
                "{} bytes/s (burst {})",
                s.session_bytes_rate, s.session_bytes_burst
            )
        } else {
            return true;
        };
        warn!(
            "session {} in room {:?}: over {over}, closing",
            self.id, self.room_name
        );
        self.close(ctx, close::RATE_LIMIT, "rate limit");
        false
    }

    fn on_frame(&mut self, frame: Bytes, ctx: &mut Context<Self>) {
        self.bytes_in.inc_by(frame.len() as u64);
        if !self.within_rate(frame.len(), ctx) {
            return;
        }
        match protocol::decode_frame(&frame) {
            Ok(mut messages) => {
                let dropped = if self.access < Access::Write {
                    self.drop_writes(&mut messages)
                } else {
                    0
                };
                if messages.is_empty() && dropped == 0 {
                    return;
                }
                if let Some(room) = &self.room {
                    let from_client = FromClient {
                        session: self.id,
                        messages,
                        dropped,
                        bytes: frame.len(),
                    };
                    // `wait`: no further frame is read from this socket until the room has
                    // taken this one, so a client that writes faster than its room works
                    // is held back by TCP instead of queueing in the room's mailbox.
                    ctx.wait(
                        room.send(from_client)
                            .into_actor(self)
                            .map(|taken, act, ctx| {
                                if taken.is_err() {
                                    act.room_gone(ctx);
                                }
                            }),
                    );
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

    /// A read-only session: removes its updates and answers each with permission denied.
    /// Everything else (sync step 1, awareness, acks) still goes to the room. Returns how
    /// many non-empty updates it dropped.
    fn drop_writes(&mut self, messages: &mut Vec<ClientMessage>) -> usize {
        let mut dropped = 0;
        messages.retain(|m| match m {
            ClientMessage::SyncStep2(update) | ClientMessage::Update(update) => {
                // Every client answers our sync step 1, usually with an empty update;
                // only a write that carries something is denied.
                dropped += usize::from(!update.is_empty());
                false
            }
            _ => true,
        });
        if dropped > 0 {
            debug!(
                "session {} in room {:?}: read-only, {dropped} updates dropped",
                self.id, self.room_name
            );
            metrics()
                .updates_rejected
                .with_label_values(&["read_only"])
                .inc_by(dropped as u64);
            let denied = protocol::encode_permission_denied("read-only access");
            // A full queue is caught by the room's next push (slow consumer).
            let _ = self.queue.push(denied);
        }
        dropped
    }

    /// The room stopped under us (a failure, or it died): the client must reconnect, which
    /// reloads the room from the store and re-syncs, rather than edit into nothing.
    fn room_gone(&mut self, ctx: &mut Context<Self>) {
        warn!(
            "session {} in room {:?}: the room stopped; closing so the client reconnects",
            self.id, self.room_name
        );
        self.room = None;
        self.close(ctx, close::INTERNAL_ERROR, "room unavailable");
    }

    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        if self.room.as_ref().is_some_and(|room| !room.connected()) {
            self.room_gone(ctx);
            return;
        }
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
        let _ = self.queue.push(Bytes::new());
    }
}

impl Actor for WsSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let join = Join {
            session: self.id,
            peer: Arc::new(SessionPeer {
                queue: self.queue.clone(),
                outbox: ctx.address().recipient(),
            }),
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
        if let Some(expires) = self.expires {
            let left = expires
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            ctx.run_later(left, |act, ctx| {
                info!(
                    "session {} in room {:?}: token expired{}",
                    act.id,
                    act.room_name,
                    Sub(act.subject.as_deref())
                );
                act.close(ctx, close::TOKEN_EXPIRED, "token expired");
            });
        }
        debug!(
            "session {} opened in room {:?}{}",
            self.id,
            self.room_name,
            Sub(self.subject.as_deref())
        );
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        if let Some(room) = &self.room {
            room.do_send(Leave { session: self.id });
        }
        debug!(
            "session {} closed in room {:?}{}",
            self.id,
            self.room_name,
            Sub(self.subject.as_deref())
        );
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
            Ok(AggregatedMessage::Ping(payload)) => {
                // Behind what is already queued; a full queue drops the pong, and the
                // room's next push closes the slow consumer.
                if self.within_rate(payload.len(), ctx) {
                    let _ = self.queue.send(Outgoing::Pong(payload));
                }
            }
            Ok(AggregatedMessage::Pong(_)) => {}
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
            // The client went away without a close frame (tab closed, network lost):
            // ordinary, not worth a warning.
            Err(ProtocolError::Io(e)) => {
                debug!("session {}: connection lost: {e}", self.id);
                // 1006 is never sent, only recorded: there is no one to send it to.
                self.close.take();
                metrics().sessions_closed.with_label_values(&["1006"]).inc();
                ctx.stop();
            }
            Err(e) => {
                warn!("session {}: WebSocket protocol error: {e}", self.id);
                self.close(ctx, 1002, "protocol error");
            }
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        if self.close.is_some() {
            // The connection ended without a close frame.
            metrics().sessions_closed.with_label_values(&["1006"]).inc();
        }
        ctx.stop();
    }
}

impl Handler<CloseSession> for WsSession {
    type Result = ();

    fn handle(&mut self, msg: CloseSession, ctx: &mut Context<Self>) {
        self.close(ctx, msg.code, &msg.reason);
    }
}
