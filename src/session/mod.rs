//! The WebSocket session actor: one per connection, between a socket collabd owns and a
//! room.
//!
//! After the handshake (`http::upgrade`) the connection leaves actix-http: the session
//! reads it through [`Inbound`] (whole messages, decoded here on the connection's HTTP
//! worker thread, in parallel with other sessions) and forwards them to the room as
//! [`FromClient`]. Frames out go through [`Outbound`]: the room writes each broadcast
//! straight into the socket from its own thread, queueing only what the kernel does not
//! take; the queue is bounded in frames and bytes, and a push that does not fit means
//! the client reads slower than the room writes, so the room closes the session with
//! [`close::SLOW_CONSUMER`] rather than grow server memory or silently skip updates; the
//! client reconnects and re-syncs by state vector. The session's mailbox carries control
//! only: join, leave, close.
//!
//! The session also enforces what its token allows: a read-only session's writes are
//! dropped here (never reach the room) and answered with y-protocols' permission-denied
//! message; when the token expires the session is closed with [`close::TOKEN_EXPIRED`].
//! Inbound frames (pings included) pass a token bucket; a client that exhausts it is
//! closed with [`close::RATE_LIMIT`]. A client's ping is answered with a pong carrying
//! the same payload (RFC 6455 §5.5.2).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use actix::{
    Actor, ActorContext, ActorFutureExt, Addr, AsyncContext, Context, Handler, StreamHandler,
    WrapFuture,
};
use bytes::{Bytes, BytesMut};
use log::{debug, info, warn};
use tokio::net::TcpStream;
use yrs::sync::AwarenessUpdate;

use crate::auth::{Access, Grant, Sub};
use crate::config::Settings;
use crate::limits::{Permit, TokenBucket};
use crate::metrics::{ConnectionGauge, metrics};
use crate::protocol::websocket::{FrameError, Message};
use crate::protocol::{self, ClientMessage};
use crate::room::messages::{CloseSession, FromClient, Join, Leave, SessionId};
use crate::room::{Registry, Room, ask};

/// The close codes, re-exported where sessions have always found them.
pub use crate::protocol::close;

mod inbound;
mod outbound;
mod wire;
pub use inbound::{Inbound, ReadError};
pub use outbound::{OPEN_SOCKETS, Outbound, QueueError, SessionPeer};
pub use wire::{Pipe, PipeBody, Source, Wire};

/// Everything a session needs from the handshake, carried from the HTTP handler (which
/// checked origin, token and admission, and loaded the room) to the connection's owner.
pub struct Handoff {
    pub room: Arc<str>,
    pub registry: Addr<Registry>,
    pub settings: Arc<Settings>,
    pub grant: Grant,
    pub permit: Permit,
    pub hooks: Arc<crate::hooks::Hooks>,
    /// How fresh tokens are checked (`MSG_TOKEN`).
    pub auth: crate::auth::Auth,
}

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// One WebSocket connection in one room.
pub struct WsSession {
    id: SessionId,
    room_name: Arc<str>,
    /// Set once the room has accepted our [`Join`]; frames are not read before that.
    room: Option<Addr<Room>>,
    registry: Addr<Registry>,
    /// The socket's write half, shared with the room, which pushes the frames it sends.
    out: Arc<Outbound>,
    /// A close frame was ordered (or the connection was lost): nothing more is sent.
    closed: bool,
    /// Last time anything arrived from the client, for the heartbeat timeout.
    last_heard: Instant,
    settings: Arc<Settings>,
    access: Access,
    expires: Option<SystemTime>,
    /// The token's `sub`, for the session's log lines.
    subject: Option<String>,
    /// When the token was issued and its SHA-256: a revocation covering either closes
    /// the session (4403).
    issued_at: Option<u64>,
    token_hash: Option<[u8; 32]>,
    /// Bumped when a fresh token replaces the current one: an expiry timer of an older
    /// token does nothing.
    token_generation: u64,
    auth: crate::auth::Auth,
    hooks: Arc<crate::hooks::Hooks>,
    rate: TokenBucket,
    /// The same share for frames of presence alone, which are merged beyond it (never
    /// closed for).
    awareness_rate: TokenBucket,
    /// Presence waiting for the share to allow it, merged (latest state per client).
    held_awareness: Option<AwarenessUpdate>,
    awareness_flush_due: bool,
    /// The same over inbound bytes: many frames are cheap, many large ones are not.
    byte_rate: TokenBucket,
    /// Holds this connection's admission slot and gauge until the session ends.
    _permit: Permit,
    _gauge: ConnectionGauge,
    /// Calls the embedding application's disconnect hook when the session ends.
    _hooked: Option<crate::hooks::Hooked>,
}

impl WsSession {
    /// Starts the session actor on a connection whose handshake is done; `early` holds
    /// what the client sent behind its handshake. Must run on the connection's thread.
    pub fn start(stream: TcpStream, early: BytesMut, handoff: Handoff) -> Addr<WsSession> {
        let stream = Arc::new(stream);
        WsSession::start_on(
            Wire::Socket(stream.clone()),
            Source::Socket(stream),
            early,
            handoff,
        )
    }

    /// Starts the session on a host's HTTP connection (collabd mounted in another
    /// actix-web app): frames come in through the request body and go out through the
    /// pipe that feeds the 101 response's body.
    pub fn start_piped(
        pipe: Arc<Pipe>,
        body: Pin<Box<dyn futures_util::Stream<Item = std::io::Result<Bytes>>>>,
        handoff: Handoff,
    ) -> Addr<WsSession> {
        WsSession::start_on(
            Wire::Pipe(pipe),
            Source::Chunks(body),
            BytesMut::new(),
            handoff,
        )
    }

    fn start_on(wire: Wire, source: Source, early: BytesMut, handoff: Handoff) -> Addr<WsSession> {
        let Handoff {
            room,
            registry,
            settings,
            grant,
            permit,
            hooks,
            auth,
        } = handoff;
        let hooked = crate::hooks::Hooked::enter(&hooks, &room, "websocket", grant.subject.clone());
        let out = Outbound::new(wire, &settings);
        let inbound = Inbound::new(source, early, settings.max_frame_bytes);
        WsSession::create(|ctx| {
            ctx.add_stream(inbound);
            ctx.add_stream(crate::revocation::changes(auth.revocations().watch()));
            WsSession {
                id: NEXT_SESSION.fetch_add(1, Ordering::Relaxed),
                room_name: room,
                room: None,
                registry,
                out,
                closed: false,
                last_heard: Instant::now(),
                rate: TokenBucket::new(settings.session_rate, settings.session_burst),
                awareness_rate: TokenBucket::new(settings.session_rate, settings.session_burst),
                held_awareness: None,
                awareness_flush_due: false,
                byte_rate: TokenBucket::new(
                    settings.session_bytes_rate,
                    settings.session_bytes_burst,
                ),
                settings,
                access: grant.access,
                expires: grant.expires,
                subject: grant.subject,
                issued_at: grant.issued_at,
                token_hash: grant.token_hash,
                token_generation: 0,
                auth,
                hooks,
                _permit: permit,
                _gauge: ConnectionGauge::open("ws"),
                _hooked: hooked,
            }
        })
    }

    /// Sends a close frame (behind what is queued) and stops the actor.
    fn close(&mut self, ctx: &mut Context<Self>, code: u16, reason: &str) {
        if !self.closed {
            self.closed = true;
            metrics()
                .sessions_closed
                .with_label_values(&[&code.to_string()])
                .inc();
            self.out.close(code, reason);
        }
        ctx.stop();
    }

    /// The connection ended without a close frame: 1006 is recorded, never sent (there is
    /// no one to send it to).
    fn lost(&mut self, ctx: &mut Context<Self>) {
        if !self.closed {
            self.closed = true;
            metrics().sessions_closed.with_label_values(&["1006"]).inc();
            self.out.abort();
        }
        ctx.stop();
    }

    /// Takes a frame's tokens from the rate buckets (one frame, `bytes` bytes); closes the
    /// session when either is empty.
    fn within_rate(&mut self, bytes: usize, ctx: &mut Context<Self>) -> bool {
        self.within_byte_rate(bytes, ctx) && self.within_frame_rate(ctx)
    }

    fn within_frame_rate(&mut self, ctx: &mut Context<Self>) -> bool {
        if self.rate.take() {
            return true;
        }
        let s = &self.settings;
        let over = format!("{} frames/s (burst {})", s.session_rate, s.session_burst);
        self.over_rate(&over, ctx)
    }

    fn within_byte_rate(&mut self, bytes: usize, ctx: &mut Context<Self>) -> bool {
        if self.byte_rate.take_n(bytes) {
            return true;
        }
        let s = &self.settings;
        let over = format!(
            "{} bytes/s (burst {})",
            s.session_bytes_rate, s.session_bytes_burst
        );
        self.over_rate(&over, ctx)
    }

    fn over_rate(&mut self, over: &str, ctx: &mut Context<Self>) -> bool {
        warn!(
            "session {} in room {:?}: over {over}, closing",
            self.id, self.room_name
        );
        self.close(ctx, close::RATE_LIMIT, "rate limit");
        false
    }

    /// A frame: its bytes always count; a frame of presence alone never counts against
    /// the frame rate (a cursor sent on every pointer event must not cost a disconnect):
    /// beyond the session's share it is merged instead (see [`WsSession::on_awareness`]).
    fn on_frame(&mut self, frame: Bytes, ctx: &mut Context<Self>) {
        if !self.within_byte_rate(frame.len(), ctx) {
            return;
        }
        let mut messages = match protocol::decode_frame(&frame) {
            Ok(messages) => messages,
            Err(e) => {
                warn!(
                    "session {} in room {:?}: malformed frame ({} bytes): {e}",
                    self.id,
                    self.room_name,
                    frame.len()
                );
                self.close(ctx, close::INVALID_DATA, &e.to_string());
                return;
            }
        };
        if let [ClientMessage::Awareness(_)] = messages.as_slice() {
            if let Some(ClientMessage::Awareness(update)) = messages.pop() {
                self.on_awareness(update, frame.len(), ctx);
            }
            return;
        }
        if !self.within_frame_rate(ctx) {
            return;
        }
        // A fresh token applies to what follows it in the same frame.
        if messages
            .iter()
            .any(|m| matches!(m, ClientMessage::Token(_)))
        {
            let mut rest = Vec::with_capacity(messages.len());
            for message in messages {
                match message {
                    ClientMessage::Token(token) => self.on_token(&token, ctx),
                    other => rest.push(other),
                }
            }
            messages = rest;
        }
        let dropped = if self.access < Access::Write {
            self.drop_writes(&mut messages)
        } else {
            0
        };
        if messages.is_empty() && dropped == 0 {
            return;
        }
        self.forward(messages, dropped, frame.len(), ctx);
    }

    /// Sends messages to the room. `wait`: no further frame is read from this socket
    /// until the room has taken them, so a client that writes faster than its room works
    /// is held back by TCP instead of queueing in the room's mailbox.
    fn forward(
        &mut self,
        messages: Vec<ClientMessage>,
        dropped: usize,
        bytes: usize,
        ctx: &mut Context<Self>,
    ) {
        let Some(room) = &self.room else { return };
        let from_client = FromClient {
            session: self.id,
            messages,
            dropped,
            bytes,
        };
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

    /// Presence within the session's share (the frame rate's bucket, counted apart) goes
    /// to the room at once; beyond it, updates are merged here — each client's latest
    /// state wins — and the merge goes when the share allows, so a fast cursor costs
    /// neither a disconnect nor the room's CPU, and its last state always arrives.
    fn on_awareness(&mut self, update: AwarenessUpdate, bytes: usize, ctx: &mut Context<Self>) {
        let update = match self.held_awareness.take() {
            Some(mut held) => {
                merge_awareness(&mut held, update, self.settings.awareness_max_entries);
                held
            }
            None => update,
        };
        if !self.awareness_flush_due && self.awareness_rate.take() {
            self.forward(vec![ClientMessage::Awareness(update)], 0, bytes, ctx);
            return;
        }
        self.held_awareness = Some(update);
        if !self.awareness_flush_due {
            self.awareness_flush_due = true;
            let wait = Duration::from_secs_f64(1.0 / self.settings.session_rate.max(1) as f64);
            ctx.run_later(wait, |act, ctx| {
                act.awareness_flush_due = false;
                if let Some(held) = act.held_awareness.take() {
                    act.on_awareness(held, 0, ctx);
                }
            });
        }
    }

    /// Closes the session with 4401 when its current token expires (unless a fresh one
    /// replaced it by then).
    fn schedule_expiry(&mut self, ctx: &mut Context<Self>) {
        let Some(expires) = self.expires else { return };
        let generation = self.token_generation;
        let left = expires
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        ctx.run_later(left, move |act, ctx| {
            if act.token_generation != generation {
                return;
            }
            act.end_access(ctx, close::TOKEN_EXPIRED, "token expired");
        });
    }

    /// Closes the session because its access ended (`why`: expired, revoked), logged.
    fn end_access(&mut self, ctx: &mut Context<Self>, code: u16, why: &str) {
        info!(
            "session {} in room {:?}: {why}{}",
            self.id,
            self.room_name,
            Sub(self.subject.as_deref())
        );
        self.close(ctx, code, why);
    }

    /// A fresh token ([`protocol::MSG_TOKEN`]): checked as a connection's token is; if
    /// valid for this room, the session runs under it from now on (access, expiry,
    /// subject). Refused, the session keeps its current token. An embedding application's
    /// authenticate hook judges requests, which a message is not: with one, tokens are
    /// refused (the client reconnects with the new token instead).
    fn on_token(&mut self, token: &str, ctx: &mut Context<Self>) {
        if self.hooks.authenticate.is_some() {
            let _ = self.out.push(protocol::encode_token_answer(
                false,
                "this server authenticates connections with its own hook: reconnect with the new token",
            ));
            return;
        }
        match self.auth.check(Some(token), &self.room_name, Access::Read) {
            Ok(grant) => {
                let access = match grant.access {
                    Access::Admin => "admin",
                    Access::Write => "write",
                    Access::Read => "read",
                };
                info!(
                    "session {} in room {:?}: fresh token, {access} access{}",
                    self.id,
                    self.room_name,
                    Sub(grant.subject.as_deref())
                );
                self.access = grant.access;
                self.expires = grant.expires;
                self.subject = grant.subject;
                self.issued_at = grant.issued_at;
                self.token_hash = grant.token_hash;
                self.token_generation += 1;
                self.schedule_expiry(ctx);
                let _ = self.out.push(protocol::encode_token_answer(true, access));
            }
            Err(denied) => {
                warn!(
                    "session {} in room {:?}: fresh token refused: {}",
                    self.id, self.room_name, denied.error
                );
                let reason = format!("{}: {}", denied.error.code(), denied.error);
                let _ = self.out.push(protocol::encode_token_answer(false, &reason));
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
            let _ = self.out.push(denied);
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
        // Behind what is queued, so that it never overtakes updates.
        let _ = self.out.ping();
    }
}

impl Actor for WsSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let join = Join {
            subject: self.subject.as_deref().map(Arc::from),
            session: self.id,
            peer: Arc::new(SessionPeer {
                out: self.out.clone(),
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
        self.schedule_expiry(ctx);
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
        if !self.closed {
            self.out.abort();
        }
        debug!(
            "session {} closed in room {:?}{}",
            self.id,
            self.room_name,
            Sub(self.subject.as_deref())
        );
    }
}

impl StreamHandler<Result<Message, ReadError>> for WsSession {
    fn handle(&mut self, item: Result<Message, ReadError>, ctx: &mut Context<Self>) {
        self.last_heard = Instant::now();
        match item {
            Ok(Message::Binary(frame)) => {
                metrics().ws_bytes_in.inc_by(frame.len() as u64);
                self.on_frame(frame, ctx)
            }
            Ok(Message::Text) => {
                warn!("session {}: text frame refused", self.id);
                self.close(ctx, close::UNSUPPORTED, "text frames are not supported");
            }
            Ok(Message::Ping(payload)) => {
                // Behind what is already queued; a full queue drops the pong, and the
                // room's next push closes the slow consumer.
                if self.within_rate(payload.len(), ctx) {
                    let _ = self.out.pong(payload);
                }
            }
            Ok(Message::Pong) => {}
            Ok(Message::Close(code)) => {
                debug!("session {}: client closed: {code:?}", self.id);
                self.close(ctx, 1000, "");
            }
            Err(ReadError::Frame(FrameError::TooBig(len))) => {
                warn!(
                    "session {}: frame of {len} bytes over {} refused",
                    self.id, self.settings.max_frame_bytes
                );
                self.close(ctx, close::TOO_BIG, "frame too large");
            }
            Err(ReadError::Frame(FrameError::Protocol(why))) => {
                warn!("session {}: WebSocket protocol error: {why}", self.id);
                self.close(ctx, 1002, "protocol error");
            }
            // The client went away without a close frame (tab closed, network lost):
            // ordinary, not worth a warning.
            Err(ReadError::Io(e)) => {
                debug!("session {}: connection lost: {e}", self.id);
                self.lost(ctx);
            }
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        self.lost(ctx);
    }
}

impl StreamHandler<crate::revocation::RevocationsChanged> for WsSession {
    /// The revocation list changed: a session whose token it covers is closed (4403).
    fn handle(&mut self, _: crate::revocation::RevocationsChanged, ctx: &mut Context<Self>) {
        let revoked = self.auth.revocations().is_revoked(
            self.subject.as_deref(),
            self.issued_at,
            self.token_hash.as_ref(),
        );
        if revoked && !self.closed {
            self.end_access(ctx, close::REVOKED, "access revoked");
        }
    }

    fn finished(&mut self, _ctx: &mut Context<Self>) {}
}

impl Handler<CloseSession> for WsSession {
    type Result = ();

    fn handle(&mut self, msg: CloseSession, ctx: &mut Context<Self>) {
        self.close(ctx, msg.code, &msg.reason);
    }
}

/// Merges `newer` into `held`: per client, the entry with the later clock wins (at the
/// same clock the newer one, so that a removal is never lost). At most `max_entries`
/// clients are held (the room refuses larger updates anyway): the merge never grows.
fn merge_awareness(held: &mut AwarenessUpdate, newer: AwarenessUpdate, max_entries: usize) {
    for (client, entry) in newer.clients {
        match held.clients.get(&client) {
            Some(old) if old.clock > entry.clock => {}
            None if held.clients.len() >= max_entries => {}
            _ => {
                held.clients.insert(client, entry);
            }
        }
    }
}
