//! Taking a WebSocket connection out of actix-http once its handshake is done.
//!
//! actix-http hands every request that asks for an upgrade to the server's upgrade
//! service together with the connection itself. [`service`] runs such a request through
//! the same actix-web app as any other (routes, CORS, origin, token, admission, the
//! room's load, JSON errors), then:
//! - an answer of 101 carrying a [`Handoff`] is written to the socket, and the socket —
//!   with whatever the client already sent behind its handshake — goes to a new
//!   [`WsSession`]: from here on collabd reads and writes it itself, and the HTTP/1
//!   dispatcher and its per-connection buffers are gone;
//! - any other answer (403, 503 …) is written as it is and the connection closed.

use std::rc::Rc;

use actix_codec::Framed;
use actix_http::body::{BodySize, MessageBody};
use actix_http::h1;
use actix_http::{ConnectionType, Request};
use actix_web::dev::{Service, ServiceFactory, ServiceResponse, fn_factory, fn_service};
use actix_web::http::StatusCode;
use actix_web::{HttpMessage, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::SinkExt;
use log::{debug, warn};
use tokio::net::TcpStream;

use crate::session::{Handoff, WsSession};

/// Set on requests that came through [`service`]: their socket can be taken over.
#[derive(Clone, Copy)]
struct OwnedSocket;

/// Whether this request's connection can become a session (it came through collabd's
/// own listener, which routes upgrades through [`service`]).
pub fn owns_socket(req: &HttpRequest) -> bool {
    req.extensions().contains::<OwnedSocket>()
}

/// The upgrade service for actix-http: `app` builds the actix-web app that answers the
/// handshake (one per worker thread).
pub fn service<F, S, B>(
    app: impl Fn() -> F + Clone + 'static,
) -> impl ServiceFactory<
    (Request, Framed<TcpStream, h1::Codec>),
    Config = (),
    Response = (),
    Error = actix_web::Error,
    InitError = (),
>
where
    F: ServiceFactory<
            Request,
            Config = actix_web::dev::AppConfig,
            Response = ServiceResponse<B>,
            Error = actix_web::Error,
            Service = S,
        >,
    F::InitError: std::fmt::Debug,
    S: Service<Request, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    fn_factory(move || {
        let app = app();
        async move {
            let app = app
                .new_service(actix_web::dev::AppConfig::default())
                .await
                .map_err(|e| warn!("cannot build the upgrade app: {e:?}"))?;
            let app = Rc::new(app);
            Ok(fn_service(move |(req, framed)| {
                handshake(app.clone(), req, framed)
            }))
        }
    })
}

async fn handshake<S, B>(
    app: Rc<S>,
    req: Request,
    mut framed: Framed<TcpStream, h1::Codec>,
) -> Result<(), actix_web::Error>
where
    S: Service<Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody + 'static,
{
    req.extensions_mut().insert(OwnedSocket);
    let mut response: HttpResponse = match app.call(req).await {
        Ok(response) => response.into_parts().1.map_into_boxed_body(),
        Err(e) => e.error_response(),
    };
    let handoff = if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        response.extensions_mut().remove::<Handoff>()
    } else {
        None
    };
    let (head, body) = response.into_parts();
    let mut head: actix_http::Response<()> = head.into();
    match handoff {
        Some(handoff) => {
            framed
                .send(h1::Message::Item((head, BodySize::None)))
                .await?;
            let parts = framed.into_parts();
            WsSession::start(parts.io, parts.read_buf, handoff);
        }
        None => {
            let body = actix_http::body::to_bytes(body).await.unwrap_or_else(|e| {
                debug!("upgrade answer: body failed: {e}");
                Bytes::new()
            });
            head.head_mut().set_connection_type(ConnectionType::Close);
            let size = BodySize::Sized(body.len() as u64);
            framed.send(h1::Message::Item((head, size))).await?;
            framed.send(h1::Message::Chunk(Some(body))).await?;
            framed.send(h1::Message::Chunk(None)).await?;
        }
    }
    Ok(())
}
