//! The `--joiners` scenario: many clients join a room holding a large document at once.
//!
//! One writer builds a document of `--doc-mb` MiB in a fresh room (strings pushed onto a
//! `Y.Array`, sent as updates of at most `--doc-chunk-mb` MiB each) and stays connected.
//! A checker client then joins (sync step 1 with an empty state vector) until its sync
//! step 2 holds at least the document's bytes: the server has it all. After a second of
//! quiet, `--joiners` connections open at once; each sends sync step 1 with an empty
//! state vector and reads frames until it has read the last byte of its sync step 2. The
//! figure per joiner is the time from the burst's start until then.
//!
//! Joiners do not apply (or even keep) the document: they speak WebSocket over a plain
//! TCP stream here, parse each frame's header and the y-websocket message headers in its
//! payload (lib0 varuints), and skip the bodies, so that 200 joiners of a 20 MiB document
//! cost the generator a read of the bytes, not 4 GiB of buffers.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use collabd::protocol;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use yrs::{Array, Doc, ReadTxn, StateVector, Transact};

use crate::{Args, CpuFigures, CpuWindow, now_nanos, rss_bytes};

type Error = String;

/// A WebSocket client connection over plain TCP, reading with a buffer it owns.
pub(crate) struct RawWs {
    io: BufReader<TcpStream>,
    /// Bytes left of the current frame's payload.
    remaining: u64,
    /// Whether the current frame is the last of its message.
    fin: bool,
}

const OP_CONTINUATION: u8 = 0;
const OP_BINARY: u8 = 2;
const OP_CLOSE: u8 = 8;
const OP_PING: u8 = 9;
const OP_PONG: u8 = 10;

/// A client frame (clients must mask; the key is fixed, which servers accept).
pub(crate) fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    collabd::protocol::websocket::encode_client_frame(
        true,
        opcode,
        payload,
        [0x37, 0xfa, 0x21, 0x3d],
    )
}

impl RawWs {
    /// TCP connect (TCP_NODELAY, as browsers) and the HTTP upgrade.
    pub(crate) async fn connect(url: &str) -> Result<RawWs, Error> {
        let uri: awc::http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
        let host = uri.host().ok_or("no host")?;
        let port = uri.port_u16().unwrap_or(80);
        let stream = TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut io = BufReader::with_capacity(64 << 10, stream);
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            uri.path()
        );
        io.get_mut()
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("upgrade: {e}"))?;
        let mut line = String::new();
        let mut status = None;
        loop {
            line.clear();
            let n = io
                .read_line(&mut line)
                .await
                .map_err(|e| format!("upgrade: {e}"))?;
            if n == 0 {
                return Err("upgrade: connection ended".into());
            }
            if status.is_none() {
                status = Some(line.trim_end().to_string());
            } else if line == "\r\n" {
                break;
            }
        }
        let status = status.unwrap_or_default();
        if status.split_whitespace().nth(1) != Some("101") {
            return Err(format!("upgrade refused: {status}"));
        }
        Ok(RawWs {
            io,
            remaining: 0,
            fin: true,
        })
    }

    /// The connection's halves, with whatever was read past the handshake already in
    /// front of the read half.
    pub(crate) fn into_split(
        self,
    ) -> (
        impl tokio::io::AsyncRead + Unpin,
        tokio::net::tcp::OwnedWriteHalf,
    ) {
        let buffered = self.io.buffer().to_vec();
        let (read, write) = self.io.into_inner().into_split();
        (std::io::Cursor::new(buffered).chain(read), write)
    }

    async fn send(&mut self, opcode: u8, payload: &[u8]) -> Result<(), Error> {
        self.io
            .get_mut()
            .write_all(&client_frame(opcode, payload))
            .await
            .map_err(|e| format!("send: {e}"))
    }

    async fn send_binary(&mut self, payload: &[u8]) -> Result<(), Error> {
        self.send(OP_BINARY, payload).await
    }

    pub(crate) async fn send_binary_pub(&mut self, payload: &[u8]) -> Result<(), Error> {
        self.send_binary(payload).await
    }

    fn read_err<T>(r: std::io::Result<T>) -> Result<T, Error> {
        r.map_err(|e| format!("read: {e}"))
    }

    /// Reads frame headers until a data frame; answers pings, fails on close. Returns
    /// the data frame's opcode; its payload is then read with `byte`/`skip`.
    async fn next_data_frame(&mut self) -> Result<u8, Error> {
        loop {
            let mut head = [0u8; 2];
            Self::read_err(self.io.read_exact(&mut head).await)?;
            let fin = head[0] & 0x80 != 0;
            let opcode = head[0] & 0x0f;
            if head[1] & 0x80 != 0 {
                return Err("server sent a masked frame".into());
            }
            let len = match head[1] & 0x7f {
                126 => u64::from(Self::read_err(self.io.read_u16().await)?),
                127 => Self::read_err(self.io.read_u64().await)?,
                n => u64::from(n),
            };
            if opcode >= 8 {
                let mut payload = vec![0u8; len as usize];
                Self::read_err(self.io.read_exact(&mut payload).await)?;
                match opcode {
                    OP_PING => self.send(OP_PONG, &payload).await?,
                    OP_CLOSE => return Err(format!("closed by server: {payload:?}")),
                    _ => {}
                }
                continue;
            }
            self.remaining = len;
            self.fin = fin;
            return Ok(opcode);
        }
    }

    /// Whether the current message has bytes left (moving on to continuation frames).
    async fn more(&mut self) -> Result<bool, Error> {
        while self.remaining == 0 {
            if self.fin {
                return Ok(false);
            }
            if self.next_data_frame().await? != OP_CONTINUATION {
                return Err("data frame inside a fragmented message".into());
            }
        }
        Ok(true)
    }

    async fn byte(&mut self) -> Result<u8, Error> {
        if !self.more().await? {
            return Err("message truncated".into());
        }
        self.remaining -= 1;
        Self::read_err(self.io.read_u8().await)
    }

    /// A lib0 varuint from the message.
    async fn var(&mut self) -> Result<u64, Error> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte().await?;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint too long".into())
    }

    /// Skips `n` bytes of the message without copying them anywhere.
    async fn skip(&mut self, mut n: u64) -> Result<(), Error> {
        while n > 0 {
            if !self.more().await? {
                return Err("message truncated".into());
            }
            let buf = Self::read_err(self.io.fill_buf().await)?;
            if buf.is_empty() {
                return Err("connection ended".into());
            }
            let take = (buf.len() as u64).min(n).min(self.remaining);
            self.io.consume(take as usize);
            n -= take;
            self.remaining -= take;
        }
        Ok(())
    }

    /// Reads messages until a whole sync step 2 has been read; returns its update's size.
    async fn until_step2(&mut self) -> Result<u64, Error> {
        loop {
            self.next_data_frame().await?;
            // One frame may carry several y-websocket messages back to back.
            while self.more().await? {
                match self.var().await? {
                    protocol::MSG_SYNC => {
                        let sub = self.var().await?;
                        let len = self.var().await?;
                        self.skip(len).await?;
                        if sub == protocol::SYNC_STEP2 {
                            return Ok(len);
                        }
                    }
                    protocol::MSG_AUTH => {
                        if self.var().await? == protocol::AUTH_PERMISSION_DENIED {
                            let len = self.var().await?;
                            self.skip(len).await?;
                        }
                    }
                    protocol::MSG_QUERY_AWARENESS => {}
                    _ => {
                        let len = self.var().await?;
                        self.skip(len).await?;
                    }
                }
            }
        }
    }

    /// Reads and drops whole messages forever (answering pings), until an error.
    async fn drain(&mut self) -> Error {
        loop {
            if let Err(e) = self.next_data_frame().await {
                return e;
            }
            loop {
                match self.more().await {
                    Ok(false) => break,
                    Ok(true) => {
                        if let Err(e) = self.skip(self.remaining).await {
                            return e;
                        }
                    }
                    Err(e) => return e,
                }
            }
        }
    }
}

/// One joiner: connect, sync step 1 (empty state vector), read the sync step 2.
struct Joined {
    connected_ns: u64,
    step2_done_ns: u64,
    step2_bytes: u64,
    /// Kept open until every joiner is done.
    _ws: RawWs,
}

async fn join(url: String) -> Result<Joined, Error> {
    let mut ws = RawWs::connect(&url).await?;
    let connected_ns = now_nanos();
    ws.send_binary(&protocol::encode_sync_step1(&StateVector::default()))
        .await?;
    let step2_bytes = ws.until_step2().await?;
    Ok(Joined {
        connected_ns,
        step2_done_ns: now_nanos(),
        step2_bytes,
        _ws: ws,
    })
}

#[derive(Serialize, Debug)]
pub struct JoinReport {
    scenario: &'static str,
    url: String,
    /// Bytes of string content in the document.
    doc_content_bytes: u64,
    /// Bytes of the updates the writer sent (y-websocket payloads).
    doc_update_bytes: u64,
    doc_updates: usize,
    /// From the writer's first update until a checker's sync step 2 held the document.
    load_seconds: f64,
    checker_attempts: usize,
    /// The update in the last checker's sync step 2 (what each joiner reads).
    step2_bytes: u64,
    /// The checker's time from connecting to the end of its sync step 2 (the first full
    /// sync of the room, as a single client).
    single_join_ms: f64,
    joiners: usize,
    joiners_ok: usize,
    /// From the burst's start until a joiner has read the last byte of its step 2.
    all_synced_ms: f64,
    joined_ms_p50: f64,
    joined_ms_p90: f64,
    joined_ms_min: f64,
    /// From the burst's start until every joiner's upgrade completed.
    all_connected_ms: f64,
    /// Bytes of sync step 2 delivered per second over the burst.
    step2_mib_per_sec: f64,
    server_rss_before_bytes: Option<u64>,
    server_rss_after_bytes: Option<u64>,
    /// Over the burst, from its start until the last joiner's step 2.
    #[serde(flatten)]
    cpu: CpuFigures,
    client_errors: usize,
    first_error: Option<String>,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

pub async fn run(args: Rc<Args>, tag: &str) -> Result<JoinReport, Error> {
    let url = format!("{}/{}-{tag}-joiners", args.url, args.room_prefix);
    let doc_bytes = (args.doc_mb * 1048576.0) as u64;
    let chunk_bytes = ((args.doc_chunk_mb * 1048576.0) as u64).max(1);
    const ITEM: u64 = 256 << 10;

    // The writer builds the document and sends it as a few large updates.
    let mut writer = RawWs::connect(&url).await?;
    let doc = Doc::new();
    writer
        .send_binary(&protocol::encode_sync_step1(&doc.transact().state_vector()))
        .await?;
    let array = doc.get_or_insert_array("log");
    let load_started = Instant::now();
    let (mut content, mut sent_bytes, mut updates, mut n) = (0u64, 0u64, 0usize, 0u64);
    while content < doc_bytes {
        let frame: Bytes = {
            let mut txn = doc.transact_mut();
            let mut in_chunk = 0;
            while in_chunk < chunk_bytes && content < doc_bytes {
                let len = ITEM.min(doc_bytes - content).min(chunk_bytes - in_chunk);
                // Varied text, not one repeated byte.
                let mut item = format!("~item {n}~");
                let pattern = "the quick brown fox jumps over the lazy dog 0123456789 ";
                while (item.len() as u64) < len {
                    item.push_str(pattern);
                }
                item.truncate(len as usize);
                array.push_back(&mut txn, item);
                n += 1;
                in_chunk += len;
                content += len;
            }
            protocol::encode_update(&txn.encode_update_v1())
        };
        sent_bytes += frame.len() as u64;
        updates += 1;
        writer.send_binary(&frame).await?;
    }
    // The writer stays connected (and answers pings) so the room stays loaded.
    let writer_task = actix_rt::spawn(async move { writer.drain().await });

    // Wait until a fresh client's sync step 2 holds the whole document.
    let mut attempts = 0;
    let (single_join_ms, step2_bytes) = loop {
        attempts += 1;
        let started = now_nanos();
        let joined = join(url.clone()).await?;
        let ms = (joined.step2_done_ns - started) as f64 / 1e6;
        if joined.step2_bytes >= doc_bytes {
            break (ms, joined.step2_bytes);
        }
        if load_started.elapsed() > Duration::from_secs(120) {
            return Err(format!(
                "the server's sync step 2 still holds {} bytes of {doc_bytes} after 120 s",
                joined.step2_bytes
            ));
        }
        actix_rt::time::sleep(Duration::from_millis(200)).await;
    };
    let load_seconds = load_started.elapsed().as_secs_f64();
    actix_rt::time::sleep(Duration::from_secs_f64(args.settle.max(1.0))).await;

    // The burst.
    let rss_before = args.pid.and_then(rss_bytes);
    let cpu_window = CpuWindow::start(&args);
    let burst_ns = now_nanos();
    let handles: Vec<_> = (0..args.joiners)
        .map(|_| actix_rt::spawn(join(url.clone())))
        .collect();
    let mut joined = Vec::new();
    let mut errors = Vec::new();
    for handle in handles {
        match actix_rt::time::timeout(Duration::from_secs(300), handle).await {
            Ok(Ok(Ok(j))) => joined.push(j),
            Ok(Ok(Err(e))) => errors.push(e),
            Ok(Err(e)) => errors.push(format!("task: {e}")),
            Err(_) => errors.push("no sync step 2 within 300 s".into()),
        }
    }
    let cpu = cpu_window.stop(&args);
    let rss_after = args.pid.and_then(rss_bytes);
    writer_task.abort();

    let mut done: Vec<f64> = joined
        .iter()
        .map(|j| (j.step2_done_ns - burst_ns) as f64 / 1e6)
        .collect();
    done.sort_by(f64::total_cmp);
    let all_connected_ms = joined
        .iter()
        .map(|j| (j.connected_ns - burst_ns) as f64 / 1e6)
        .fold(0.0, f64::max);
    let all_synced_ms = done.last().copied().unwrap_or(f64::NAN);
    let delivered: u64 = joined.iter().map(|j| j.step2_bytes).sum();
    Ok(JoinReport {
        scenario: "joiners",
        url: args.url.clone(),
        doc_content_bytes: content,
        doc_update_bytes: sent_bytes,
        doc_updates: updates,
        load_seconds,
        checker_attempts: attempts,
        step2_bytes,
        single_join_ms,
        joiners: args.joiners,
        joiners_ok: joined.len(),
        all_synced_ms,
        joined_ms_p50: percentile(&done, 0.5),
        joined_ms_p90: percentile(&done, 0.9),
        joined_ms_min: done.first().copied().unwrap_or(f64::NAN),
        all_connected_ms,
        step2_mib_per_sec: delivered as f64 / 1048576.0 / (all_synced_ms / 1e3),
        server_rss_before_bytes: rss_before,
        server_rss_after_bytes: rss_after,
        cpu,
        client_errors: errors.len(),
        first_error: errors.into_iter().next(),
    })
}
