//! HTTP admin API on loopback (hyper 1), JSON, every request but
//! `GET /health` carrying `Authorization: Bearer <[admin] token>`.
//!
//! - `GET /health`: `{"status":"ok"}`
//! - `GET /holds`: held messages (metadata, oldest first)
//! - `GET /holds/{id}`: one held message: metadata and its header section
//!   (never the body)
//! - `POST /holds/{id}/release`: deliver it and remove it from the spool
//! - `POST /holds/{id}/discard`: remove it without delivering
//! - `POST /check` (body: a raw message): the verdict the running daemon
//!   would give it, with its live configuration and graph (nothing is sent,
//!   held or learnt); `misdirectd check` uses it
//! - `POST /forget` (body: `{"address": "..."}`): erase the address from the
//!   running daemon's graph (every tenant) and its store, durably, and
//!   remove the held messages to or from it; answers the counts
//!   `{"tenants": n, "records": n, "held": n}`
//!
//! Errors are JSON `{"error": "..."}` with 400 (bad id), 401 (missing or
//! wrong token; 400 also for a `/forget` body without a valid address), 404, 405, 413 (a `/check` message over [`MAX_CHECK_BODY`]), 502 (the next hop refused a release) or 500.
//!
//! Entry point: [`serve`], given an already bound listener.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use crate::hold::{now, Actor, HoldError, HoldService};
use crate::outbound::spool::SpoolError;
use crate::store::pg_spool::{Erased, ERASE_WAIT};

/// Gives the hold service in force (the daemon's changes on reload).
pub type HoldSource = Arc<dyn Fn() -> HoldService + Send + Sync>;

/// Scores a raw message for `POST /check`.
pub type CheckFn = Arc<
    dyn Fn(Vec<u8>) -> Pin<Box<dyn Future<Output = crate::pipeline::CheckReport> + Send>>
        + Send
        + Sync,
>;

/// Erases an address from the running daemon for `POST /forget`.
pub type ForgetFn = Arc<
    dyn Fn(String) -> Pin<Box<dyn Future<Output = Result<serde_json::Value, ForgetError>> + Send>>
        + Send
        + Sync,
>;

/// Why `POST /forget` failed.
#[derive(Debug, thiserror::Error)]
pub enum ForgetError {
    /// The address does not parse (400).
    #[error("invalid address: {0}")]
    BadAddress(String),
    /// The store or the spool failed, or a held message was still being
    /// released after [`ERASE_WAIT`] (500): nothing is reported as erased,
    /// and repeating the request finishes the erasure.
    #[error("erasure failed: {0}")]
    Failed(String),
}

/// Erase `address` from the daemon running `p`: every held message whose
/// envelope sender or a recipient is the address (each under the release
/// claim, so that a release in progress finishes first; see
/// [`HoldService::erase`]), then every tenant's graph in memory and in its
/// store (committed durably before this returns).
/// Addresses are compared after normalisation (as in `misdirectd forget`).
pub async fn forget_live(
    p: &crate::pipeline::Pipeline,
    address: &str,
) -> Result<serde_json::Value, ForgetError> {
    let norm = crate::address::Normalizer::new(p.config().addresses.clone());
    let addr = norm
        .normalize(address)
        .map_err(|e| ForgetError::BadAddress(e.to_string()))?;
    // Held messages first, each under the release claim: a release in
    // progress finishes before its message is erased, and the learning it
    // queues is then erased with the graph below.
    let mut held = 0usize;
    let mut busy = 0usize;
    let list = p
        .spool()
        .involving(&norm, &addr)
        .await
        .map_err(|e| ForgetError::Failed(e.to_string()))?;
    for (m, _) in list {
        match p.hold().erase(&m.id).await {
            Ok(Erased::Removed) => held += 1,
            Ok(Erased::Gone) => {}
            Ok(Erased::Busy) => busy += 1,
            Err(e) => return Err(ForgetError::Failed(e.to_string())),
        }
    }
    // Queued DSNs to or naming the address (mail in transit for at most
    // `[relay] dsn_lifetime`) go too.
    let dsns = p
        .outbox()
        .erase_naming(&addr)
        .await
        .map_err(|e| ForgetError::Failed(e.to_string()))?;
    let report = p
        .shared()
        .graph
        .forget(&addr)
        .await
        .map_err(|e| ForgetError::Failed(e.to_string()))?;
    if busy > 0 {
        return Err(ForgetError::Failed(format!(
            "{busy} held message(s) involving the address were still being released or discarded after {}s; the graph is erased, repeat the request",
            ERASE_WAIT.as_secs()
        )));
    }
    tracing::info!(
        target: "audit",
        held,
        dsns,
        "Erasure of one address from the running daemon (admin API) performed."
    );
    Ok(json!({ "tenants": report.tenants, "records": report.records, "held": held, "dsns": dsns }))
}

/// Largest message `POST /check` accepts.
pub const MAX_CHECK_BODY: usize = 64 << 20;

/// What the admin API works on.
#[derive(Clone)]
pub struct AdminState {
    hold: HoldSource,
    check: Option<CheckFn>,
    forget: Option<ForgetFn>,
    token: Arc<String>,
}

impl AdminState {
    /// One fixed hold service, no `/check`.
    pub fn new(hold: HoldService, token: String) -> Self {
        AdminState {
            hold: Arc::new(move || hold.clone()),
            check: None,
            forget: None,
            token: Arc::new(token),
        }
    }

    /// The daemon's state: the current hold service and `/check`.
    pub fn live(hold: HoldSource, check: CheckFn, token: String) -> Self {
        AdminState {
            hold,
            check: Some(check),
            forget: None,
            token: Arc::new(token),
        }
    }

    /// Serve `POST /forget` with `f` (without it the endpoint is 404).
    pub fn with_forget(mut self, f: ForgetFn) -> Self {
        self.forget = Some(f);
        self
    }
}

type Resp = Response<Full<Bytes>>;

fn json_resp(status: StatusCode, v: serde_json::Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, msg: &str) -> Resp {
    json_resp(status, json!({ "error": msg }))
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorized(req: &Request<Incoming>, token: &str) -> bool {
    req.headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| ct_eq(t.trim().as_bytes(), token.as_bytes()))
}

fn hold_error(e: HoldError) -> Resp {
    match e {
        HoldError::NotFound(_) => error(StatusCode::NOT_FOUND, "no such hold"),
        HoldError::Busy(_) => error(
            StatusCode::CONFLICT,
            "this hold is being released or discarded by another request",
        ),
        HoldError::Spool(SpoolError::BadId) => error(StatusCode::BAD_REQUEST, "invalid hold id"),
        HoldError::Deliver(d) => error(StatusCode::BAD_GATEWAY, &d.to_string()),
        HoldError::Spool(s) => {
            tracing::error!(error = %s, "Admin API spool error.");
            error(StatusCode::INTERNAL_SERVER_ERROR, "spool error")
        }
    }
}

/// The header section of a raw message (up to the first empty line).
pub fn header_section(raw: &[u8]) -> String {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 2)
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|i| i + 1))
        .unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

async fn handle(state: AdminState, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if path == "/health" {
        return json_resp(StatusCode::OK, json!({ "status": "ok" }));
    }
    if !authorized(&req, &state.token) {
        let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        r.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    let body = match http_body_util::Limited::new(req.into_body(), MAX_CHECK_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return error(StatusCode::PAYLOAD_TOO_LARGE, "message too large")
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let h = &(state.hold)();
    match (parts.as_slice(), &method) {
        (["check"], &Method::POST) => match &state.check {
            Some(check) if !body.is_empty() => {
                json_resp(StatusCode::OK, json!(check(body.to_vec()).await))
            }
            Some(_) => error(StatusCode::BAD_REQUEST, "empty message"),
            None => error(StatusCode::NOT_FOUND, "not found"),
        },
        (["check"], _) => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        (["forget"], &Method::POST) => {
            let Some(forget) = &state.forget else {
                return error(StatusCode::NOT_FOUND, "not found");
            };
            let address = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("address")?.as_str().map(str::to_string));
            let Some(address) = address else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "body must be JSON {\"address\": \"...\"}",
                );
            };
            match forget(address).await {
                Ok(v) => json_resp(StatusCode::OK, v),
                Err(e @ ForgetError::BadAddress(_)) => {
                    error(StatusCode::BAD_REQUEST, &e.to_string())
                }
                Err(e) => {
                    tracing::error!(error = %e, "Admin API erasure failed.");
                    error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
                }
            }
        }
        (["forget"], _) => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        (["holds"], &Method::GET) => match h.list().await {
            Ok(list) => json_resp(StatusCode::OK, json!(list)),
            Err(e) => hold_error(e),
        },
        (["holds", id], &Method::GET) => match h.show(id).await {
            Ok((meta, raw)) => json_resp(
                StatusCode::OK,
                json!({ "hold": meta, "headers": header_section(&raw), "size": raw.len() }),
            ),
            Err(e) => hold_error(e),
        },
        (["holds", id, "release"], &Method::POST) => {
            match h.release(id, Actor::Admin, now()).await {
                Ok(()) => json_resp(StatusCode::OK, json!({ "released": id })),
                Err(e) => hold_error(e),
            }
        }
        (["holds", id, "discard"], &Method::POST) => match h.discard(id, Actor::Admin).await {
            Ok(()) => json_resp(StatusCode::OK, json!({ "discarded": id })),
            Err(e) => hold_error(e),
        },
        (["holds"] | ["holds", _] | ["holds", _, "release" | "discard"], _) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Serve the admin API on `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, state: AdminState, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "Admin API accept failed.");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let st = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let st = st.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(st, req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(%peer, error = %e, "Admin API connection ended with an error.");
            }
        });
    }
}
