//! Presence at display rate: a cursor sent on every pointer event never costs its client a
//! disconnect and its last state always arrives; renewals reach everyone merged per tick;
//! a reader that stops reading holds one pending state per client, not a growing queue;
//! an HTTP reader that goes away is noticed at once. Document updates stay rate-limited.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use collabd::protocol::{self, ServerMessage};
use common::*;

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[actix_rt::test]
async fn a_cursor_far_above_the_session_rate_is_never_closed_and_its_last_state_arrives() {
    let dir = tempdir();
    // A share of 20 frames/s: 1,000 cursor moves as fast as the client can send would
    // have closed it with 1008 within a few dozen frames.
    let server = TestServer::start(
        dir.path(),
        &["--session-rate", "20", "--session-burst", "20"],
    );
    let mut watcher = YClient::connect(&server, "board").await;
    let mut mover = YClient::connect(&server, "board").await;
    watcher.until("synced", |c| c.synced).await;
    mover.until("synced", |c| c.synced).await;
    for x in 0..1000 {
        mover.set_awareness(&format!(r#"{{"x":{x}}}"#)).await;
    }
    let last = r#"{"x":999}"#.to_string();
    let id = mover.client_id();
    watcher
        .until("the mover's last state", |c| {
            c.awareness_state(id).as_deref() == Some(&last)
        })
        .await;
    // The watcher got far fewer frames than moves: merged, not relayed one by one.
    let states_heard = watcher
        .awareness_json_heard
        .iter()
        .filter(|j| j.contains("\"x\""))
        .count();
    assert!(
        states_heard < 500,
        "{states_heard} states relayed for 1,000 moves"
    );
    // The mover is still connected and may still write (and be acked).
    mover.append("t", "still here").await;
    mover.request_ack(1).await;
    mover.until("ack", |c| !c.acks.is_empty()).await;
    assert!(mover.closed.is_none());

    // Document updates keep their limit: a flood of them is closed with 1008.
    let mut flooder = YClient::connect(&server, "board").await;
    flooder.until("synced", |c| c.synced).await;
    for i in 0..200 {
        if !flooder.try_send(sync_frame(2, &[0, 0])).await {
            break;
        }
        if i % 50 == 0 {
            flooder.drain_for(Duration::from_millis(1)).await;
        }
    }
    assert_eq!(flooder.until_closed().await, Some(1008));
}

#[actix_rt::test]
async fn a_reader_that_stops_reading_is_not_closed_for_presence_and_gets_every_latest_state() {
    let dir = tempdir();
    // A 256 KiB outbound queue; 20 cursors × 60 moves of 6 KB states send ~7 MB of
    // presence to a reader that reads nothing, more than the kernel's buffers take (up
    // to 4 MB here): relayed frame by frame, its queue would overflow and close it with
    // 4008.
    let server = TestServer::start(
        dir.path(),
        &[
            "--outbound-queue-bytes",
            "262144",
            "--max-frame-bytes",
            "262144",
        ],
    );
    // A small receive buffer, so that the kernel does not absorb the test.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&server.addr.into()).unwrap();
    let mut stalled = RawClient {
        stream: socket.into(),
    };
    stalled.send_raw(handshake(&server, "stall").as_bytes());
    let head = read_head(&mut stalled.stream);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");

    let mut movers = Vec::new();
    for _ in 0..20 {
        let mut mover = YClient::connect(&server, "stall").await;
        mover.until("synced", |c| c.synced).await;
        movers.push(mover);
    }
    let pad = "p".repeat(6000);
    for round in 0..60 {
        for mover in &mut movers {
            mover
                .set_awareness(&format!(r#"{{"round":{round},"pad":"{pad}"}}"#))
                .await;
        }
        // One round per tick or so (pacing only; nothing asserts on time), so that the
        // rounds go out as separate merged frames; the movers read theirs meanwhile.
        for mover in &mut movers {
            mover.drain_for(Duration::from_millis(2)).await;
        }
    }
    let finals: HashMap<u64, String> = movers
        .iter()
        .map(|m| (m.client_id(), format!(r#"{{"round":59,"pad":"{pad}"}}"#)))
        .collect();
    // Someone who reads sees every final state (so the room has sent them all).
    let mut reader = YClient::connect(&server, "stall").await;
    reader
        .until("every final state", |c| {
            finals
                .iter()
                .all(|(id, s)| c.awareness_state(*id).as_deref() == Some(s))
        })
        .await;

    // The stalled reader now reads: no close frame, and it ends with every latest state.
    let mut latest: HashMap<u64, (u32, String)> = HashMap::new();
    let deadline = Instant::now() + PATIENCE;
    while !finals
        .iter()
        .all(|(id, s)| latest.get(id).map(|(_, j)| j) == Some(s))
    {
        assert!(
            Instant::now() < deadline,
            "the stalled reader never caught up"
        );
        let (opcode, payload) = stalled.read_frame();
        assert_ne!(opcode, 0x8, "the stalled reader was closed");
        if opcode != 0x2 {
            continue;
        }
        for message in protocol::decode_server_frame(&payload) {
            if let Ok(ServerMessage::Awareness(update)) = message {
                for (id, entry) in update.clients {
                    let newer = latest.get(&id.get()).is_none_or(|(c, _)| entry.clock >= *c);
                    if newer {
                        latest.insert(id.get(), (entry.clock, entry.json.to_string()));
                    }
                }
            }
        }
    }
}

#[actix_rt::test]
async fn an_sse_reader_that_goes_away_is_noticed_without_waiting_for_a_heartbeat() {
    let dir = tempdir();
    // Heartbeats every 10 minutes: only noticing the closed socket can end the stream.
    let server = TestServer::start(dir.path(), &["--sse-heartbeat-ms", "600000"]);
    let mut streams = Vec::new();
    for _ in 0..5 {
        let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
        write!(
            stream,
            "GET /rooms/gone/events HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
            server.addr
        )
        .unwrap();
        let head = read_head(&mut stream);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        streams.push(stream);
    }
    let deadline = Instant::now() + PATIENCE;
    while server
        .metric("collabd_connections{transport=\"sse\"}")
        .await
        != 5.0
    {
        assert!(Instant::now() < deadline, "the streams never counted");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    // The readers close their side (a FIN, as a closed tab sends once it has read
    // everything); their sockets stay open here, so that no reset tells the server.
    for stream in &streams {
        stream.shutdown(std::net::Shutdown::Write).unwrap();
    }
    while server
        .metric("collabd_connections{transport=\"sse\"}")
        .await
        != 0.0
    {
        assert!(
            Instant::now() < deadline,
            "closed SSE readers still counted"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}
