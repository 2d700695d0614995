//! Running the server in the places it gets deployed: environment variables injected by
//! orchestrators, startup validation of settings, WebSocket pings from non-browser
//! clients, and tokens from identity providers that set `aud` and `iss`.

mod common;

use std::time::Instant;

use awc::ws::{Frame, Message};
use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};

#[actix_rt::test]
async fn a_client_ping_is_answered_with_a_pong_carrying_its_payload() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let (_, mut socket) = awc::Client::new()
        .ws(server.ws_url("ping"))
        .connect()
        .await
        .unwrap();
    let payload = Bytes::from_static(b"are you there? \x00\xff");
    socket.send(Message::Ping(payload.clone())).await.unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = actix_rt::time::timeout(left, socket.next())
            .await
            .expect("no pong")
            .expect("connection closed")
            .unwrap();
        match frame {
            Frame::Pong(got) => {
                assert_eq!(got, payload);
                break;
            }
            // The room's sync step 1, the server's own heartbeat.
            Frame::Binary(_) | Frame::Ping(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // The session carries on as usual.
    let mut client = YClient::connect(&server, "ping").await;
    client.until("synced", |c| c.synced).await;
}
