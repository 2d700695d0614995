//! A minimal EventSource: Server-Sent Events parsed from a real HTTP response.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;

use super::{PATIENCE, TestServer};

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub kind: String,
    pub id: Option<u64>,
    pub data: String,
}

type SseBody =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Bytes, awc::error::PayloadError>>>>;

/// A minimal EventSource: parses `text/event-stream` from a real HTTP response.
pub struct SseClient {
    body: SseBody,
    buf: String,
    pub retry: Option<u64>,
    pub heartbeats: usize,
    /// The seq of each `synced` event seen (the end of the catch-up).
    pub synced: Vec<u64>,
}

impl SseClient {
    /// Connects to `/rooms/{room}/events`, with `Last-Event-ID` if given.
    pub async fn connect(
        server: &TestServer,
        room: &str,
        last_event_id: Option<&str>,
    ) -> SseClient {
        SseClient::open(server, &format!("/rooms/{room}/events"), last_event_id).await
    }

    /// Connects to any path (e.g. with `?since=`).
    pub async fn open(server: &TestServer, path: &str, last_event_id: Option<&str>) -> SseClient {
        let mut req = awc::Client::builder()
            .timeout(Duration::from_secs(3600))
            .finish()
            .get(server.url(path));
        if let Some(id) = last_event_id {
            req = req.insert_header(("Last-Event-ID", id));
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status().as_u16(), 200);
        assert_eq!(
            res.headers().get("content-type").unwrap(),
            "text/event-stream"
        );
        SseClient {
            body: Box::pin(res),
            buf: String::new(),
            retry: None,
            heartbeats: 0,
            synced: Vec::new(),
        }
    }

    /// The next event (comments and `retry:` are recorded, not returned).
    pub async fn next(&mut self) -> SseEvent {
        let deadline = Instant::now() + PATIENCE;
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut event = SseEvent {
                    kind: "message".into(),
                    id: None,
                    data: String::new(),
                };
                let mut is_event = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        event.kind = v.to_string();
                        is_event = true;
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        event.id = Some(v.parse().unwrap());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        event.data.push_str(v);
                        is_event = true;
                    } else if let Some(v) = line.strip_prefix("retry: ") {
                        self.retry = Some(v.parse().unwrap());
                    } else if line.starts_with(':') {
                        self.heartbeats += 1;
                    }
                }
                // The heartbeat's `ping` event (for EventSource clients) counts with it;
                // `synced` marks the end of the catch-up and is recorded.
                if event.kind == "synced" {
                    let seq = event
                        .data
                        .strip_prefix("{\"seq\":")
                        .and_then(|v| v.strip_suffix('}'));
                    self.synced
                        .push(seq.and_then(|v| v.parse().ok()).expect("synced data"));
                } else if is_event && event.kind != "ping" {
                    return event;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = actix_rt::time::timeout(left, self.body.next())
                .await
                .expect("timed out waiting for an SSE event")
                .expect("SSE stream ended")
                .unwrap();
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Waits until the server ends the stream; panics if it sends another document event
    /// first, or does not end within [`PATIENCE`].
    pub async fn until_ended(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = actix_rt::time::timeout(left, self.body.next())
                .await
                .expect("timed out waiting for the SSE stream to end");
            match chunk {
                None | Some(Err(_)) => break,
                Some(Ok(chunk)) => self.buf.push_str(std::str::from_utf8(&chunk).unwrap()),
            }
        }
        assert!(
            !self.buf.contains("event: update") && !self.buf.contains("event: snapshot"),
            "more document events before the end: {:?}",
            self.buf
        );
    }

    /// The next event that is not awareness.
    pub async fn next_doc_event(&mut self) -> SseEvent {
        loop {
            let event = self.next().await;
            if event.kind != "awareness" {
                return event;
            }
        }
    }
}
