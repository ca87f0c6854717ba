//! The gateway's HTTP/1.1 client side on the wire, with a raw TCP client: request bodies that come
//! after their head (`Expect: 100-continue`, chunked in pieces), pipelined requests with bodies, and a
//! body over the limit refused before the client sends it.

use std::time::Duration;

use crate::common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn body_bytes(body: &[u8]) -> u64 {
    let v: Value = serde_json::from_slice(body).unwrap();
    v["bodyBytes"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_after_their_head_chunked_and_pipelined() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(&cfg, "server:\n  maxBodyBytes: 100000\n").unwrap();
    let s = Server::start(&dir.path().join("data"), &["--config", cfg.to_str().unwrap()], &[]);
    let c = client();
    let prod = Backend::start("production", Behaviour::Echo).await;
    let canary = Backend::start("canary", Behaviour::Echo).await;
    setup_split(&c, &s, prod.addr, canary.addr, 0.0, serde_json::json!({})).await;
    let addr = s.gateway.trim_start_matches("http://").to_string();
    let mut conn = TcpStream::connect(&addr).await.unwrap();
    let mut buf = Vec::new();

    // Expect: 100-continue: the gateway asks for the body, then forwards it.
    conn.write_all(b"POST /orders/prod/up HTTP/1.1\r\nhost: a\r\ncontent-length: 50000\r\nexpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let (status, _, _) = read_response(&mut conn, &mut buf).await;
    assert_eq!(status, 100);
    conn.write_all(&vec![b'x'; 50000]).await.unwrap();
    let (status, head, body) = read_response(&mut conn, &mut buf).await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(body_bytes(&body), 50000);

    // A chunked body in pieces, slowly, on the same connection: forwarded whole, and the connection
    // goes on to the next request.
    conn.write_all(b"POST /orders/prod/up HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    for piece in [
        &b"5\r\nhel"[..],
        b"lo\r\n",
        b"6;ext=1\r\n world\r\n",
        b"0\r\n",
        b"x-trailer: t\r\n\r\n",
    ] {
        tokio::time::sleep(Duration::from_millis(20)).await;
        conn.write_all(piece).await.unwrap();
    }
    let (status, head, body) = read_response(&mut conn, &mut buf).await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(body_bytes(&body), 11);

    // Pipelined: a POST whose body follows its head in the same write, then a GET, answered in order.
    conn.write_all(
        b"POST /orders/prod/one HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n\r\nabcGET /orders/prod/two HTTP/1.1\r\nhost: a\r\n\r\n",
    )
    .await
    .unwrap();
    let (status, _, body) = read_response(&mut conn, &mut buf).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((v["path"].as_str(), v["bodyBytes"].as_u64()), (Some("/one"), Some(3)));
    let (status, _, body) = read_response(&mut conn, &mut buf).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((v["path"].as_str(), v["bodyBytes"].as_u64()), (Some("/two"), Some(0)));

    // Over the limit with Expect: 100-continue: refused at once, no 100, and the connection closes.
    conn.write_all(b"POST /orders/prod/up HTTP/1.1\r\nhost: a\r\ncontent-length: 200000\r\nexpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let (status, head, _) = read_response(&mut conn, &mut buf).await;
    assert_eq!(status, 413, "no 100 Continue first: {head}");
    assert!(head.contains("connection: close"), "{head}");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut rest)).await;
    assert!(closed.is_ok() && rest.is_empty(), "closed after the 413: {rest:?}");

    // A body sent without waiting, larger than the limit: the 413 arrives intact (the gateway reads
    // and drops the rest before closing instead of resetting the connection).
    let mut conn = TcpStream::connect(&addr).await.unwrap();
    let mut buf = Vec::new();
    let mut req = b"POST /orders/prod/up HTTP/1.1\r\nhost: a\r\ncontent-length: 300000\r\n\r\n".to_vec();
    req.extend(vec![b'y'; 300000]);
    let (mut rd, mut wr) = conn.split();
    let (sent, (status, _, body)) = tokio::join!(wr.write_all(&req), read_response(&mut rd, &mut buf));
    // The gateway may stop reading once it has answered; whether all of the body went out is not the point.
    let _ = sent;
    assert_eq!(status, 413);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "PayloadTooLarge");

    // A broken chunked body is the client's fault: 400, counted as the variant's 4XXError, not as an
    // upstream failure.
    let mut conn = TcpStream::connect(&addr).await.unwrap();
    let mut buf = Vec::new();
    conn.write_all(b"POST /orders/prod/up HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n")
        .await
        .unwrap();
    let (status, head, body) = read_response(&mut conn, &mut buf).await;
    assert_eq!(status, 400, "{head}");
    assert!(head.contains("connection: close"), "{head}");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "BadRequest");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("invalid chunked request body"),
        "{v}"
    );
    assert_eq!(v1_sum(&c, &s, "production", "5XXError").await, 0.0);
    assert_eq!(v1_sum(&c, &s, "production", "4XXError").await, 3.0, "two 413s and the 400");
}
