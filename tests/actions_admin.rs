//! The HTTP admin API over real HTTP on 127.0.0.1:0 (requests written by
//! hand on a TcpStream), releasing into a real SMTP next hop.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod actions_common;

use actions_common::*;
use misdirect::admin::{serve, AdminState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "admin-token-0123456789";

async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8(buf).unwrap();
    let status: u16 = text.split(' ').nth(1).unwrap().parse().unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    if status == 401 {
        assert!(
            head.to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{head}"
        );
    }
    (status, serde_json::from_str(body).unwrap())
}

#[tokio::test]
async fn admin_api_lists_shows_releases_and_discards() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = sink().await;
    let svc = service(hold_config(dir.path(), sink.addr), None).await;
    let a = svc
        .hold("default", &envelope(), ORIGINAL, &verdict(), 1_795_900_000)
        .await
        .unwrap();
    let b = svc
        .hold(
            "default",
            &envelope(),
            b"Subject: b\r\n\r\nsecret body b\r\n",
            &verdict(),
            1_795_900_001,
        )
        .await
        .unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        AdminState::new(svc.clone(), TOKEN.into()),
        async {
            let _ = stop_rx.await;
        },
    ));

    assert_eq!(
        http(addr, "GET", "/health", None).await,
        (200, serde_json::json!({"status": "ok"}))
    );
    // No token, wrong token, token of a different length.
    for t in [None, Some("admin-token-0123456788"), Some("x")] {
        let (st, body) = http(addr, "GET", "/holds", t).await;
        assert_eq!(st, 401, "{t:?}");
        assert_eq!(body["error"], "missing or wrong bearer token");
    }
    let (st, _) = http(
        addr,
        "POST",
        &format!("/holds/{}/release", a.id),
        Some("nope"),
    )
    .await;
    assert_eq!(st, 401);
    sink.assert_empty();

    let (st, list) = http(addr, "GET", "/holds", Some(TOKEN)).await;
    assert_eq!(st, 200);
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![a.id.as_str(), b.id.as_str()]);
    assert_eq!(
        list[0]["verdict"]["recipients"][1]["address"],
        "bob@rival.test"
    );

    let (st, one) = http(addr, "GET", &format!("/holds/{}", b.id), Some(TOKEN)).await;
    assert_eq!(st, 200);
    assert_eq!(one["hold"]["id"], b.id.as_str());
    assert_eq!(one["headers"], "Subject: b\r\n");
    assert!(!one.to_string().contains("secret body"));

    assert_eq!(
        http(addr, "GET", "/holds/0000000000-doesnotexist", Some(TOKEN))
            .await
            .0,
        404
    );
    assert_eq!(
        http(addr, "GET", "/holds/..%2Fetc", Some(TOKEN)).await.0,
        400
    );
    assert_eq!(
        http(addr, "DELETE", &format!("/holds/{}", a.id), Some(TOKEN))
            .await
            .0,
        405
    );
    assert_eq!(http(addr, "GET", "/nothing", Some(TOKEN)).await.0, 404);

    // Release with the next hop refusing: 502 and still held.
    sink.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let (st, body) = http(
        addr,
        "POST",
        &format!("/holds/{}/release", a.id),
        Some(TOKEN),
    )
    .await;
    assert_eq!(st, 502, "{body}");
    assert_eq!(svc.list().await.unwrap().len(), 2);
    sink.fail.store(false, std::sync::atomic::Ordering::SeqCst);

    let (st, body) = http(
        addr,
        "POST",
        &format!("/holds/{}/release", a.id),
        Some(TOKEN),
    )
    .await;
    assert_eq!((st, body), (200, serde_json::json!({"released": a.id})));
    let out = sink.next().await;
    assert!(out.raw.starts_with(b"X-Misdirect-Released: by admin;"));
    assert!(out.raw.ends_with(ORIGINAL));

    let (st, body) = http(
        addr,
        "POST",
        &format!("/holds/{}/discard", b.id),
        Some(TOKEN),
    )
    .await;
    assert_eq!((st, body), (200, serde_json::json!({"discarded": b.id})));
    assert_eq!(
        http(
            addr,
            "POST",
            &format!("/holds/{}/discard", b.id),
            Some(TOKEN)
        )
        .await
        .0,
        404
    );
    let (_, list) = http(addr, "GET", "/holds", Some(TOKEN)).await;
    assert_eq!(list, serde_json::json!([]));
    sink.assert_empty();

    stop_tx.send(()).unwrap();
    server.await.unwrap();
}
