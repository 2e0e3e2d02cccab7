//! The server's limits over a real socket: idle and slow connections are
//! closed after the header timeout, and requests beyond the bound are
//! answered 503 with Retry-After instead of queueing (but for health and
//! metrics, which are always answered).

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use example_ecommerce::server::{serve_with, ServerLimits};
use strata::CancellationToken;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

async fn start(router: Router, limits: ServerLimits) -> (std::net::SocketAddr, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(serve_with(listener, router, limits, shutdown.clone()));
    (addr, shutdown)
}

/// Reads until the server closes the connection; `None` if it is still
/// open after `bound`.
async fn closed_within(conn: &mut tokio::net::TcpStream, bound: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn silent_and_idle_connections_are_closed() {
    let limits = ServerLimits {
        header_timeout: Duration::from_millis(300),
        ..ServerLimits::default()
    };
    let (addr, shutdown) = start(Router::new().route("/", get(|| async { "hi" })), limits).await;
    // Says nothing.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(
        closed_within(&mut silent, Duration::from_secs(5))
            .await
            .is_some(),
        "a silent connection stays open"
    );
    // Sends half a request and stalls.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert!(closed_within(&mut slow, Duration::from_secs(5))
        .await
        .is_some());
    // A served keep-alive connection that then idles.
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = closed_within(&mut idle, Duration::from_secs(5))
        .await
        .expect("an idle keep-alive connection stays open");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_bound_get_503_with_retry_after() {
    // Each request holds one of these until the test lets it go.
    let gate = Arc::new(Semaphore::new(0));
    let entered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (g, e) = (Arc::clone(&gate), Arc::clone(&entered));
    let router = Router::new()
        .route(
            "/slow",
            get(move || {
                let (g, e) = (Arc::clone(&g), Arc::clone(&e));
                async move {
                    e.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    g.acquire().await.unwrap().forget();
                    "done"
                }
            }),
        )
        .route("/health", get(|| async { "ok" }))
        .route("/metrics", get(|| async { "up 1" }));
    let limits = ServerLimits {
        max_requests: 2,
        ..ServerLimits::default()
    };
    let (addr, shutdown) = start(router, limits).await;
    let url = format!("http://{addr}/slow");
    let http = reqwest::Client::new();
    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(http.get(&url).send()))
        .collect();
    let mut waited = 0;
    while entered.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        waited += 1;
        assert!(waited < 1_000, "the two requests never got in");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Both are in flight: a third is refused at once.
    let refused = Some(http.get(&url).send().await.unwrap()).filter(|r| r.status() == 503);
    let refused = refused.expect("a request beyond the bound is refused with 503");
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded");
    // Operators still see the service: health and metrics are answered.
    for path in ["/health", "/metrics"] {
        let r = http
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path} while overloaded");
    }
    gate.add_permits(2);
    for h in held {
        assert_eq!(h.await.unwrap().unwrap().status(), 200);
    }
    // With room again, requests are served.
    gate.add_permits(1);
    assert_eq!(http.get(&url).send().await.unwrap().status(), 200);
    shutdown.cancel();
}
