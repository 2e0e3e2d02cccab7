//! Live updates over a real socket, in memory: a subscriber gets the
//! current state and every change; after a disconnect it resumes with
//! `Last-Event-ID` and gets what it missed; a subscriber that stops reading
//! is dropped and no longer counts; bad input and too many subscribers are
//! refused with JSON errors.

use std::time::Duration;

use example_ecommerce::app::{LineRequest, Shop};
use example_ecommerce::http::{serve, QueryState};
use example_ecommerce::live::{Live, LiveConfig};
use futures::StreamExt;
use serde_json::Value;
use strata::prelude::*;
use strata::{
    AnyChangeFeed, CancellationToken, CommandContext, InMemoryEventStore, InMemoryViewStore,
    Position, ReaderConfig, ViewChange, ViewId, ViewReader,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

mod support;

use support::{identity, in_memory, InProcessShop};

struct Env {
    shop: Shop<InMemoryEventStore>,
    views: InMemoryViewStore,
    feed: AnyChangeFeed,
    live: Live<InMemoryViewStore>,
    url: String,
    addr: std::net::SocketAddr,
    shutdown: CancellationToken,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(config: LiveConfig) -> Env {
    start_with(config, true).await
}

/// The shop in memory behind a live-updates server; `listen`: whether the
/// reader is told to follow the feed before live updates start.
async fn start_with(config: LiveConfig, listen: bool) -> Env {
    let (InProcessShop { shop, shutdown, .. }, views, feed) = in_memory();
    let reader = ViewReader::new(views.clone(), ReaderConfig::default());
    if listen {
        reader.listen(&feed, shutdown.clone()).await.unwrap();
    }
    let live = Live::new(
        QueryState {
            reader,
            feed: feed.clone(),
        },
        config,
    )
    .with_shutdown(shutdown.clone())
    .with_auth(identity().auth());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, live.router(), shutdown.clone()));
    shop.register_product("MUG-01", "Mug", 1250, CommandContext::system("test"))
        .await
        .unwrap();
    shop.restock("MUG-01", 10, CommandContext::system("test"))
        .await
        .unwrap();
    Env {
        shop,
        views,
        feed,
        live,
        url: format!("http://{addr}"),
        addr,
        shutdown,
    }
}

/// One server-sent event.
#[derive(Debug)]
struct SseEvent {
    event: String,
    id: Option<u64>,
    data: Value,
}

/// A minimal SSE client over reqwest's byte stream.
struct SseClient {
    body: futures::stream::BoxStream<'static, reqwest::Result<axum::body::Bytes>>,
    buf: String,
}

impl SseClient {
    async fn connect(url: &str, last_event_id: Option<u64>) -> SseClient {
        // As Ada, customer and staff: these tests are about streams; who
        // may follow what is tests/access.rs.
        let mut req = reqwest::Client::new()
            .get(url)
            .header("accept", "text/event-stream")
            .header(
                "authorization",
                format!("Bearer {}", identity().token("ada", &["customer", "staff"])),
            );
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200, "GET {url}");
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        SseClient {
            body: resp.bytes_stream().boxed(),
            buf: String::new(),
        }
    }

    /// The next event (comments skipped), or `None` after `wait`.
    async fn next(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut event, mut id, mut data) = ("message".to_owned(), None, None);
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().parse().unwrap());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data = Some(serde_json::from_str(v.trim()).unwrap());
                    }
                }
                if let Some(data) = data {
                    return Some(SseEvent { event, id, data });
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next()).await;
            match chunk {
                Ok(Some(Ok(bytes))) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                Ok(Some(Err(e))) => panic!("the stream failed: {e}"),
                Ok(None) | Err(_) => return None,
            }
        }
    }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn order_status(views: &InMemoryViewStore, id: Uuid) -> Option<String> {
    let read = views
        .get(&ViewId::new("order_details", 1).unwrap(), &id.to_string())
        .await
        .unwrap();
    read.doc
        .and_then(|d| d.doc["status"].as_str().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_gets_every_change_and_resumes_after_a_disconnect() {
    let env = start(LiveConfig {
        keep_alive: Duration::from_millis(200),
        ..LiveConfig::default()
    })
    .await;
    let id = Uuid::new_v4();
    let line = LineRequest {
        sku: "MUG-01".into(),
        quantity: 2,
    };
    env.shop
        .place_order(
            id,
            "ada",
            std::slice::from_ref(&line),
            CommandContext::system("test"),
        )
        .await
        .unwrap();

    // Connect: the current state, then every change, until confirmed.
    let url = format!("{}/live/order_details/{id}", env.url);
    let mut sse = SseClient::connect(&url, None).await;
    let mut seen = 0;
    loop {
        let e = sse
            .next(Duration::from_secs(10))
            .await
            .expect("a state event within 10 s");
        assert_eq!(e.event, "state");
        assert_eq!(e.data["view"], "order_details");
        assert_eq!(e.data["key"], id.to_string());
        let position = e.data["position"].as_u64().unwrap();
        assert_eq!(e.id, Some(position), "the id is the document's position");
        assert!(
            position > seen,
            "positions only grow: {position} after {seen}"
        );
        seen = position;
        if e.data["doc"]["status"] == "confirmed" {
            break;
        }
    }
    assert_eq!(env.live.subscribers(), 1);

    // Disconnect; the order is paid and shipped meanwhile.
    drop(sse);
    eventually("the server notices the disconnect", || {
        env.live.subscribers() == 0 && env.live.connections() == 0
    })
    .await;
    env.shop
        .pay(id, CommandContext::system("test"))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while order_status(&env.views, id).await.as_deref() != Some("shipped") {
        assert!(tokio::time::Instant::now() < deadline, "never shipped");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Resume with Last-Event-ID: the missed state arrives at once.
    let mut sse = SseClient::connect(&url, Some(seen)).await;
    let e = sse
        .next(Duration::from_secs(2))
        .await
        .expect("the missed state at once");
    assert_eq!(e.event, "state");
    let position = e.data["position"].as_u64().unwrap();
    assert!(position > seen, "{position} is beyond {seen}");
    assert_eq!(e.data["doc"]["status"], "shipped");
    let history: Vec<&str> = e.data["doc"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["event_type"].as_str().unwrap())
        .collect();
    assert!(history.contains(&"OrderPaid"), "{history:?}");
    // Nothing stale follows.
    assert!(sse.next(Duration::from_millis(300)).await.is_none());
    drop(sse);

    // Resuming from the latest position (`?after=`): nothing to send.
    let mut sse = SseClient::connect(&format!("{url}?after={position}"), None).await;
    assert!(sse.next(Duration::from_millis(300)).await.is_none());
}

/// Shutting the server down ends open streams with a reason, instead of
/// leaving the graceful shutdown waiting on them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_streams_end_on_shutdown() {
    let env = start(LiveConfig::default()).await;
    let head = env.shop.store.head().await.unwrap();
    let mut sse = SseClient::connect(&format!("{}/live/catalog/MUG-01", env.url), None).await;
    // The stream may start from the product as registered, before the
    // restock is projected: take its states up to the store's head, so
    // that nothing but the close can follow.
    loop {
        let state = sse
            .next(Duration::from_secs(10))
            .await
            .expect("the current state");
        assert_eq!(state.event, "state");
        if state.data["position"].as_u64().unwrap() >= head.0 {
            break;
        }
    }
    assert_eq!(env.live.subscribers(), 1);
    env.shutdown.cancel();
    let last = sse
        .next(Duration::from_secs(10))
        .await
        .expect("a close event");
    assert_eq!(last.event, "close");
    assert_eq!(last.data["reason"], "shutdown");
    assert!(
        sse.next(Duration::from_secs(5)).await.is_none(),
        "the stream ended"
    );
    assert_eq!(env.live.subscribers(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_stream_sends_the_view_then_its_changes() {
    let env = start(LiveConfig::default()).await;
    env.shop
        .register_product("TEE-01", "Tee", 2400, CommandContext::system("test"))
        .await
        .unwrap();
    let url = format!("{}/live/catalog", env.url);
    // The snapshot: every product, oldest change first.
    let mut sse = SseClient::connect(&url, None).await;
    let mut snapshot = Vec::new();
    while snapshot.len() < 2 {
        let e = sse.next(Duration::from_secs(5)).await.expect("snapshot");
        snapshot.push((e.data["key"].as_str().unwrap().to_owned(), e.id.unwrap()));
    }
    assert!(snapshot[0].1 < snapshot[1].1, "{snapshot:?}");
    let mut keys: Vec<&str> = snapshot.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["MUG-01", "TEE-01"]);

    // A change to one document of the view.
    env.shop
        .restock("TEE-01", 7, CommandContext::system("test"))
        .await
        .unwrap();
    let e = sse.next(Duration::from_secs(5)).await.expect("the change");
    assert_eq!(e.data["key"], "TEE-01");
    assert_eq!(e.data["doc"]["available"], 7);
    let last = e.id.unwrap();
    drop(sse);

    // Missed while away: only what changed after the last id.
    env.shop
        .restock("MUG-01", 1, CommandContext::system("test"))
        .await
        .unwrap();
    let mut sse = SseClient::connect(&url, Some(last)).await;
    let e = sse
        .next(Duration::from_secs(5))
        .await
        .expect("the missed change");
    assert_eq!(e.data["key"], "MUG-01");
    assert_eq!(e.data["doc"]["on_hand"], 11);
    assert!(sse.next(Duration::from_millis(300)).await.is_none());
}

/// An announcement can reach a whole-view stream after its catch-up read
/// already showed the change (the projector commits, the stream reads the
/// view, then the announcement arrives): it must not be sent again, or a
/// client sees a document go back to an older state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_stream_skips_announcements_its_snapshot_covered() {
    let env = start(LiveConfig::default()).await;
    let mut sse = SseClient::connect(&format!("{}/live/catalog", env.url), None).await;
    let covered = loop {
        let e = sse
            .next(Duration::from_secs(5))
            .await
            .expect("the snapshot");
        if e.data["key"] == "MUG-01" && e.data["doc"]["on_hand"] == 10 {
            break e.id.unwrap();
        }
    };
    // The late announcement of the change the stream has already sent.
    env.feed
        .publish(ViewChange {
            view: "catalog".into(),
            version: 1,
            keys: vec!["MUG-01".into()],
            position: Position(covered),
            previous: None,
            activated: false,
            docs: None,
        })
        .await;
    let restocked = env
        .shop
        .restock("MUG-01", 1, CommandContext::system("test"))
        .await
        .unwrap()
        .position;
    let e = sse.next(Duration::from_secs(5)).await.expect("the restock");
    assert!(
        e.id.unwrap() >= restocked.0,
        "sent again: {e:?} (covered {covered})"
    );
    assert_eq!(e.data["doc"]["on_hand"], 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_too_many_subscribers_are_refused() {
    let env = start(LiveConfig {
        max_subscribers: 2,
        ..LiveConfig::default()
    })
    .await;
    let http = reqwest::Client::new();
    let cases = [
        ("/live/nope", 404, "unknown_view"),
        ("/live/nope/MUG-01", 404, "unknown_view"),
        ("/live/order_details/not-a-uuid", 400, "bad_request"),
        ("/live/catalog/mug%20one", 400, "bad_request"),
        (
            "/live/sales_dashboard/2024-13-01:MUG-01",
            400,
            "bad_request",
        ),
        ("/live/catalog/MUG-01?after=-1", 400, "bad_request"),
    ];
    for (path, status, code) in cases {
        let resp = http.get(format!("{}{path}", env.url)).send().await.unwrap();
        assert_eq!(resp.status(), status, "{path}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{path}: {body}");
    }
    let url = format!("{}/live/catalog/MUG-01", env.url);
    let _a = SseClient::connect(&url, None).await;
    let _b = SseClient::connect(&url, None).await;
    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_subscribers");
    assert_eq!(env.live.connections(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_is_dropped() {
    let env = start(LiveConfig {
        buffer: 64,
        keep_alive: Duration::from_secs(3600),
        ..LiveConfig::default()
    })
    .await;
    // A client that never reads (until the end).
    let mut stalled = tokio::net::TcpStream::connect(env.addr).await.unwrap();
    stalled
        .write_all(
            b"GET /live/catalog/MUG-01 HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n\r\n",
        )
        .await
        .unwrap();
    eventually("the stalled client subscribes", || {
        env.live.subscribers() == 1
    })
    .await;
    // A healthy subscriber on the same key reads as the changes come.
    let mut healthy = SseClient::connect(&format!("{}/live/catalog/MUG-01", env.url), None).await;
    let (seen_tx, mut seen) = tokio::sync::watch::channel(0u64);
    let reader = tokio::spawn(async move {
        while let Some(e) = healthy.next(Duration::from_secs(30)).await {
            if e.event != "state" {
                return e.event;
            }
            let _ = seen_tx.send(e.data["doc"]["on_hand"].as_u64().unwrap());
        }
        "ended".to_owned()
    });

    // Changes (the healthy subscriber sees them all) until the stalled
    // one's socket buffers and queue are full.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let mut on_hand = 10;
    while env.live.subscribers() > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled subscriber was not dropped after {} changes",
            on_hand - 10
        );
        // A few at a time: well within the healthy subscriber's queue.
        for _ in 0..8 {
            env.shop
                .restock("MUG-01", 1, CommandContext::system("test"))
                .await
                .unwrap();
            on_hand += 1;
        }
        tokio::time::timeout(Duration::from_secs(5), seen.wait_for(|s| *s == on_hand))
            .await
            .expect("the healthy subscriber keeps up")
            .expect("the healthy subscriber is still connected");
    }
    assert_eq!(env.live.subscribers(), 1, "the healthy one is left");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !reader.is_finished(),
        "the healthy subscriber was closed: {:?}",
        reader.await
    );
    let restocks = on_hand - 10;

    // When the stalled client finally reads, the stream ends with a reason.
    // (Only the tail is kept: megabytes of states come first.)
    let mut tail: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    let read_deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !String::from_utf8_lossy(&tail).contains("slow consumer") {
        match tokio::time::timeout_at(read_deadline, stalled.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => {
                tail.extend_from_slice(&buf[..n]);
                let cut = tail.len().saturating_sub(4096);
                tail.drain(..cut);
            }
            Ok(Err(e)) => panic!("read failed: {e}"),
        }
    }
    let text = String::from_utf8_lossy(&tail);
    assert!(
        text.contains("event: close\ndata: {\"reason\":\"slow consumer\"}"),
        "no close event in the last bytes: {:?}",
        &text[text.len().saturating_sub(300)..]
    );
    eventually("the stalled connection is gone", || {
        env.live.connections() == 1
    })
    .await;
    println!("dropped after {restocks} changes");
}

/// One client address may hold only so many streams (429 beyond), beside
/// the global cap; closing one frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_holds_at_most_its_share_of_streams() {
    let env = start(LiveConfig {
        max_per_client: 2,
        ..LiveConfig::default()
    })
    .await;
    let url = format!("{}/live/catalog/MUG-01", env.url);
    let first = SseClient::connect(&url, None).await;
    let _second = SseClient::connect(&url, None).await;
    let resp = reqwest::get(&url).await.unwrap();
    assert_eq!(resp.status(), 429);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_streams");
    drop(first);
    let mut again = None;
    for _ in 0..500 {
        let resp = reqwest::get(&url).await.unwrap();
        if resp.status() == 200 {
            again = Some(resp);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(again.is_some(), "a closed stream frees its place");
}

/// A whole-view stream of a view larger than the snapshot limit sends the
/// oldest part, ends with `close` reason `more`, and a reconnect with the
/// last id gets the rest: every document arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_view_arrives_whole_over_reconnects() {
    let env = start(LiveConfig {
        snapshot_limit: 3,
        ..LiveConfig::default()
    })
    .await;
    let mut last = strata::Position::START;
    for i in 0..7 {
        last = env
            .shop
            .register_product(
                &format!("SKU-{i}"),
                "Thing",
                100,
                CommandContext::system("test"),
            )
            .await
            .unwrap()
            .position;
    }
    let reader_url = format!("{}/live/catalog", env.url);
    // Wait until the view has applied the last registration.
    let views = env.views.clone();
    let mut tries = 0;
    while views.checkpoint("catalog_v1").await.unwrap().position < last {
        tries += 1;
        assert!(tries < 1_000, "the catalog did not catch up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut keys = std::collections::BTreeSet::new();
    let mut resume = None;
    for round in 0..10 {
        let mut sse = SseClient::connect(&reader_url, resume).await;
        let mut ended = false;
        while let Some(e) = sse.next(Duration::from_secs(2)).await {
            match e.event.as_str() {
                "state" => {
                    keys.insert(e.data["key"].as_str().unwrap().to_owned());
                    resume = e.id;
                }
                "close" => {
                    assert_eq!(e.data["reason"], "more", "round {round}");
                    ended = true;
                    break;
                }
                other => panic!("unexpected event {other}"),
            }
        }
        if !ended {
            break;
        }
    }
    assert_eq!(keys.len(), 8, "every product arrived: {keys:?}");
}

/// Live updates follow the feed themselves when the query service's reader
/// was not told to: a stream still carries every change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_updates_start_following_the_feed_when_nobody_did() {
    let env = start_with(LiveConfig::default(), false).await;
    let url = format!("{}/live/catalog/MUG-01", env.url);
    let mut sse = SseClient::connect(&url, None).await;
    let first = sse
        .next(Duration::from_secs(10))
        .await
        .expect("the current state");
    assert_eq!(first.event, "state");
    let restocked = env
        .shop
        .restock("MUG-01", 5, CommandContext::system("test"))
        .await
        .unwrap()
        .position;
    loop {
        let e = sse
            .next(Duration::from_secs(10))
            .await
            .expect("the restock arrives on the stream");
        if e.event == "state" && e.id >= Some(restocked.0) {
            assert_eq!(e.data["doc"]["on_hand"], 15);
            break;
        }
    }
}
