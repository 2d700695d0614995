//! Browser apps on another origin: CORS answers (headers and preflight) on the HTTP
//! transports, and the `Origin` allow-list enforced on every route, writes included.

mod common;

use common::{HttpWriter, TestServer};

const GOOD: &str = "https://app.example";
const BAD: &str = "https://evil.example";

struct Answer {
    status: u16,
    headers: awc::http::header::HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

async fn send(
    server: &TestServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Answer {
    let client = awc::Client::new();
    let method = awc::http::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = client.request(method, server.url(path));
    for (name, value) in headers {
        req = req.insert_header((*name, *value));
    }
    let mut res = req.send_body(body).await.unwrap();
    let body = res.body().limit(1 << 20).await.unwrap();
    Answer {
        status: res.status().as_u16(),
        headers: res.headers().clone(),
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

#[actix_rt::test]
async fn without_an_allow_list_every_origin_gets_cors_answers() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let origin = [("Origin", GOOD)];
    let info = send(&server, "GET", "/rooms/open", &origin, vec![]).await;
    assert_eq!(info.status, 200, "{}", info.body);
    assert_eq!(info.header("access-control-allow-origin"), Some("*"));
    assert!(
        info.header("access-control-expose-headers")
            .unwrap()
            .contains("X-Seq")
    );
    // No Origin, no CORS: nothing changes for non-browser clients.
    let plain = send(&server, "GET", "/rooms/open", &[], vec![]).await;
    assert_eq!(plain.header("access-control-allow-origin"), None);

    let preflight = send(
        &server,
        "OPTIONS",
        "/rooms/open/updates",
        &[
            ("Origin", GOOD),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "content-type,authorization",
            ),
        ],
        vec![],
    )
    .await;
    assert_eq!(preflight.status, 204);
    assert!(
        preflight
            .header("access-control-allow-methods")
            .unwrap()
            .contains("POST")
    );
    let allowed = preflight.header("access-control-allow-headers").unwrap();
    for needed in ["Authorization", "Content-Type", "Last-Event-ID"] {
        assert!(allowed.contains(needed), "{allowed}");
    }
    assert_eq!(preflight.header("access-control-max-age"), Some("600"));
}

#[actix_rt::test]
async fn with_an_allow_list_listed_origins_get_cors_and_others_are_refused_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &["--allowed-origins", GOOD]);
    let writer = HttpWriter::new();

    // A listed origin: its own origin back, Vary, exposed headers, on answers and errors.
    let update = writer.append("t", "from the app");
    let post = send(
        &server,
        "POST",
        "/rooms/listed/updates",
        &[
            ("Origin", GOOD),
            ("Content-Type", "application/octet-stream"),
        ],
        update,
    )
    .await;
    assert_eq!(post.status, 200, "{}", post.body);
    assert_eq!(post.header("access-control-allow-origin"), Some(GOOD));
    assert_eq!(post.header("vary"), Some("Origin"));
    let state = send(
        &server,
        "GET",
        "/rooms/listed/state",
        &[("Origin", GOOD)],
        vec![],
    )
    .await;
    assert_eq!(state.status, 200);
    assert!(
        state
            .header("access-control-expose-headers")
            .unwrap()
            .contains("X-Seq")
    );
    let error = send(
        &server,
        "GET",
        "/rooms/%00/state",
        &[("Origin", GOOD)],
        vec![],
    )
    .await;
    assert_eq!(error.status, 400);
    assert_eq!(error.header("access-control-allow-origin"), Some(GOOD));

    // Another origin: 403 on every route, writes included (a no-cors POST of text/plain
    // is what a foreign page can send without a preflight).
    let foreign = writer.append("t", "from a foreign page");
    let post = send(
        &server,
        "POST",
        "/rooms/listed/updates",
        &[("Origin", BAD), ("Content-Type", "text/plain")],
        foreign,
    )
    .await;
    assert_eq!(post.status, 403, "{}", post.body);
    assert!(post.body.contains("origin_not_allowed"), "{}", post.body);
    assert_eq!(post.header("access-control-allow-origin"), None);
    for path in [
        "/rooms/listed",
        "/rooms/listed/state",
        "/rooms/listed/json",
        "/rooms/listed/updates?since=0",
    ] {
        let answer = send(&server, "GET", path, &[("Origin", BAD)], vec![]).await;
        assert_eq!(answer.status, 403, "{path}: {}", answer.body);
    }
    let preflight = send(
        &server,
        "OPTIONS",
        "/rooms/listed/updates",
        &[("Origin", BAD), ("Access-Control-Request-Method", "POST")],
        vec![],
    )
    .await;
    assert_eq!(preflight.status, 403);
    // Only the listed origin's write is in the room.
    assert_eq!(server.seq("listed").await, 1);
    let (doc, _) = server.state("listed").await;
    assert_eq!(common::text_of(&doc, "t"), "from the app");
}
