//! Live updates (Server-Sent Events) and the demo's web page.
//!
//! - `GET /live/{view}/{key}`: one document. On connect the current state
//!   (if the document exists), then a new state whenever the change feed
//!   announces the key.
//! - `GET /live/{view}`: every document of a view (at most
//!   [`LiveConfig::snapshot_limit`] on connect, oldest change first), then
//!   every change.
//!
//! Each state is `event: state`, `id: <position>`, data
//! `{"view","key","doc","position"}` (`doc` is `null` once a document is
//! deleted). A client resumes with `Last-Event-ID` (browsers send it when
//! they reconnect) or `?after=<position>`: it gets every document whose
//! position is beyond that at once, so it misses nothing. A stream the
//! server ends says why first: `event: close`, data `{"reason": ...}`.
//!
//! Streams address views by name: they follow the version the
//! [`strata::ViewReader`] serves, and a rebuild's switch makes
//! every stream of the view catch up from the new version (nothing missed,
//! nothing sent twice beyond what the client already has).
//!
//! A whole-view stream sends at most [`LiveConfig::snapshot_limit`]
//! documents on connect, oldest change first; when the view holds more, the
//! stream then ends with `event: close` reason `more`, and the client's
//! reconnect (with the last id) gets the next part.
//!
//! Fan-out: one subscription to the reader's announcements per [`Live`] (the hub task),
//! which reads each announced document once (through the cached
//! [`strata::ViewReader`], with read-your-writes on the
//! announced position) and hands it to every subscriber of the key and of
//! the view through a bounded queue. A subscriber whose queue is full is
//! dropped ("slow consumer"). The number of open streams is capped.
//!
//! Also here: the web page (`GET /`) and a same-origin proxy to the command
//! API (`POST /api/orders`, `POST /api/orders/{id}/pay`) for it.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use strata::{ChangeNotice, Position, QueryError, ViewChange, ViewReader, ViewStore};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::http::{ApiError, Auth, Caller, QueryState, IDEMPOTENCY_HEADER, MAX_BODY_BYTES};
use crate::views::VIEW_NAMES;

/// The env var naming the command API the page's proxy forwards to.
pub const COMMAND_URL_ENV: &str = "ECOMMERCE_COMMAND_URL";
/// The command API's default URL.
pub const DEFAULT_COMMAND_URL: &str = "http://127.0.0.1:8080";
/// The header a reconnecting `EventSource` sends.
pub const LAST_EVENT_ID_HEADER: &str = "last-event-id";

/// The shop's web page.
const INDEX_HTML: &str = include_str!("../static/index.html");
/// The page's script (a file of its own: the content security policy
/// allows no inline script).
const APP_JS: &str = include_str!("../static/app.js");
/// The page's styles (no inline styles either).
const APP_CSS: &str = include_str!("../static/app.css");

/// Why a stream ended (sent as `event: close`).
const OPEN: u8 = 0;
const SLOW: u8 = 1;
const SHUTDOWN: u8 = 2;
const MORE: u8 = 3;

fn close_reason(code: u8) -> &'static str {
    match code {
        SLOW => "slow consumer",
        SHUTDOWN => "shutdown",
        MORE => "more",
        _ => "unavailable",
    }
}

/// Limits of live updates.
#[derive(Debug, Clone, Copy)]
pub struct LiveConfig {
    /// Updates queued per subscriber before it is dropped as a slow
    /// consumer (default 64).
    pub buffer: usize,
    /// Most open streams; beyond, 503 (default 20,000).
    pub max_subscribers: usize,
    /// Most open streams of one client address; beyond, 429 (default 64).
    /// Behind a proxy every client shares its address: raise it there.
    pub max_per_client: usize,
    /// Interval of keep-alive comments (default 15 s).
    pub keep_alive: Duration,
    /// Most documents sent on connect to a whole-view stream (default 1,000).
    pub snapshot_limit: usize,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            buffer: 64,
            max_subscribers: 20_000,
            max_per_client: 64,
            keep_alive: Duration::from_secs(15),
            snapshot_limit: 1_000,
        }
    }
}

/// A document's new state, read once and shared by every subscriber.
struct Update {
    key: String,
    /// The position of the announcement that carried it.
    change: Position,
    /// The document's position (the announcement's for a deletion).
    position: Position,
    /// `{"view","key","doc","position"}`.
    data: String,
}

#[derive(Clone)]
enum Msg {
    /// New states of one announcement: one message per announcement, so a
    /// batch of many keys costs a whole-view subscriber one queue slot.
    States(Arc<Vec<Arc<Update>>>),
    /// Announcements may have been missed: read again.
    Reset,
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct Topic {
    view: &'static str,
    key: Option<String>,
}

struct Sub {
    tx: mpsc::Sender<Msg>,
    reason: Arc<AtomicU8>,
}

#[derive(Default)]
struct Topics {
    subs: HashMap<Topic, HashMap<u64, Sub>>,
    /// The latest announced position of each view.
    latest: HashMap<&'static str, Position>,
}

#[derive(Default)]
struct Hub {
    topics: Mutex<Topics>,
    /// Subscribers receiving updates.
    subscribers: AtomicUsize,
    /// Open streams (capped).
    connections: AtomicUsize,
    /// Open streams per client address (capped).
    per_client: Mutex<HashMap<std::net::IpAddr, usize>>,
    next_id: AtomicU64,
    /// Set once the feed has ended: no more updates.
    ended: std::sync::atomic::AtomicBool,
    started: tokio::sync::OnceCell<()>,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, Topics> {
        self.topics.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a subscriber; returns its id, queue and the view's latest
    /// announced position (a read after this sees at least that).
    fn subscribe(
        &self,
        topic: &Topic,
        buffer: usize,
    ) -> (u64, mpsc::Receiver<Msg>, Arc<AtomicU8>, Position) {
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let reason = Arc::new(AtomicU8::new(OPEN));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut t = self.lock();
        let floor = t.latest.get(topic.view).copied().unwrap_or(Position::START);
        if self.ended.load(Ordering::Acquire) {
            reason.store(SHUTDOWN, Ordering::Release);
            // `tx` drops here: the stream closes at once.
        } else {
            t.subs.entry(topic.clone()).or_default().insert(
                id,
                Sub {
                    tx,
                    reason: Arc::clone(&reason),
                },
            );
            self.subscribers.fetch_add(1, Ordering::Relaxed);
        }
        (id, rx, reason, floor)
    }

    fn unsubscribe(&self, topic: &Topic, id: u64) {
        let mut t = self.lock();
        if let Some(subs) = t.subs.get_mut(topic) {
            if subs.remove(&id).is_some() {
                self.subscribers.fetch_sub(1, Ordering::Relaxed);
            }
            if subs.is_empty() {
                t.subs.remove(topic);
            }
        }
    }

    fn latest(&self, view: &str) -> Position {
        self.lock()
            .latest
            .get(view)
            .copied()
            .unwrap_or(Position::START)
    }

    /// Notes an announcement; returns the changed keys somebody follows.
    fn wanted(&self, view: &'static str, change: &ViewChange) -> Vec<String> {
        let mut t = self.lock();
        let latest = t.latest.entry(view).or_insert(Position::START);
        *latest = (*latest).max(change.position);
        let whole = t.subs.contains_key(&Topic { view, key: None });
        change
            .keys
            .iter()
            .filter(|k| {
                whole
                    || t.subs.contains_key(&Topic {
                        view,
                        key: Some((*k).clone()),
                    })
            })
            .cloned()
            .collect()
    }

    /// Hands `msg` to every subscriber of `topic`, dropping full ones.
    fn deliver(&self, t: &mut Topics, topic: &Topic, msg: &Msg) {
        let Some(subs) = t.subs.get_mut(topic) else {
            return;
        };
        let before = subs.len();
        subs.retain(|_, s| match s.tx.try_send(msg.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                s.reason.store(SLOW, Ordering::Release);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        self.subscribers
            .fetch_sub(before - subs.len(), Ordering::Relaxed);
        if subs.is_empty() {
            t.subs.remove(topic);
        }
    }

    fn fan_out(&self, view: &'static str, reads: Vec<Result<Arc<Update>, String>>) {
        let mut t = self.lock();
        let mut all = Vec::with_capacity(reads.len());
        let mut failed = false;
        for read in reads {
            match read {
                Ok(u) => {
                    let one = Topic {
                        view,
                        key: Some(u.key.clone()),
                    };
                    self.deliver(&mut t, &one, &Msg::States(Arc::new(vec![Arc::clone(&u)])));
                    all.push(u);
                }
                Err(key) => {
                    failed = true;
                    let one = Topic {
                        view,
                        key: Some(key),
                    };
                    self.deliver(&mut t, &one, &Msg::Reset);
                }
            }
        }
        let whole = Topic { view, key: None };
        if !all.is_empty() {
            self.deliver(&mut t, &whole, &Msg::States(Arc::new(all)));
        }
        if failed {
            self.deliver(&mut t, &whole, &Msg::Reset);
        }
    }

    fn reset_all(&self) {
        let mut t = self.lock();
        let topics: Vec<Topic> = t.subs.keys().cloned().collect();
        for topic in topics {
            self.deliver(&mut t, &topic, &Msg::Reset);
        }
    }

    /// The feed is gone: end every stream.
    fn end(&self) {
        self.ended.store(true, Ordering::Release);
        let mut t = self.lock();
        for (_, subs) in t.subs.drain() {
            for (_, s) in subs {
                s.reason.store(SHUTDOWN, Ordering::Release);
                self.subscribers.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// The name of a known view, as a `'static` str.
fn known_view(name: &str) -> Option<&'static str> {
    VIEW_NAMES.iter().copied().find(|v| *v == name)
}

fn state_data(view: &str, key: &str, doc: Option<&Value>, position: Position) -> String {
    json!({ "view": view, "key": key, "doc": doc, "position": position.0 }).to_string()
}

fn state_event(id: Position, data: &str) -> Event {
    Event::default()
        .event("state")
        .id(id.0.to_string())
        .data(data)
}

fn close_event(reason: &str) -> Event {
    Event::default()
        .event("close")
        .data(json!({ "reason": reason }).to_string())
}

/// Live updates over a query API's state. Cheap to clone.
pub struct Live<V> {
    reader: ViewReader<V>,
    /// The feed the reader follows (started here if nobody listens yet).
    feed: strata::AnyChangeFeed,
    hub: Arc<Hub>,
    config: LiveConfig,
    http: reqwest::Client,
    shutdown: strata::CancellationToken,
    auth: Auth,
}

impl<V> Clone for Live<V> {
    fn clone(&self) -> Self {
        Live {
            reader: self.reader.clone(),
            feed: self.feed.clone(),
            hub: Arc::clone(&self.hub),
            config: self.config,
            http: self.http.clone(),
            shutdown: self.shutdown.clone(),
            auth: self.auth.clone(),
        }
    }
}

impl<V: ViewStore> Live<V> {
    /// Live updates over `state` (the hub starts with the first stream).
    pub fn new(state: QueryState<V>, config: LiveConfig) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap_or_default();
        Live {
            reader: state.reader,
            feed: state.feed,
            hub: Arc::new(Hub::default()),
            config,
            http,
            shutdown: strata::CancellationToken::new(),
            auth: Auth::anonymous_only(),
        }
    }

    /// Ends every open stream (with `event: close`, reason `shutdown`) and
    /// refuses new ones once `shutdown` is cancelled, so a graceful
    /// shutdown of the server does not wait for its live clients.
    pub fn with_shutdown(mut self, shutdown: strata::CancellationToken) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// Subscribers currently receiving updates.
    pub fn subscribers(&self) -> usize {
        self.hub.subscribers.load(Ordering::Relaxed)
    }

    /// Open streams (a dropped slow consumer counts until its connection
    /// closes).
    pub fn connections(&self) -> usize {
        self.hub.connections.load(Ordering::Relaxed)
    }

    /// Gauges for `/metrics`: subscribers receiving updates and open
    /// streams.
    pub fn samples(&self) -> Vec<crate::metrics::Sample> {
        vec![
            ("strata_live_subscribers", vec![], self.subscribers() as f64),
            ("strata_live_connections", vec![], self.connections() as f64),
        ]
    }

    /// Who may follow what (default: [`Auth::anonymous_only`], which
    /// follows the catalog and nothing else).
    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    /// The routes: `/`, `/live/{view}`, `/live/{view}/{key}`, `/api/...`,
    /// with their callers identified by the [`Auth`] given (a bad token
    /// is answered 401).
    pub fn router(&self) -> Router {
        Router::new()
            .route("/", get(index))
            .route("/app.js", get(app_js))
            .route("/app.css", get(app_css))
            .route("/live/{view}", get(live_view::<V>))
            .route("/live/{view}/{key}", get(live_key::<V>))
            .route("/api/orders", post(proxy_order::<V>))
            .route("/api/orders/{id}/pay", proxy_order_action::<V>("pay"))
            .route("/api/orders/{id}/cancel", proxy_order_action::<V>("cancel"))
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .layer(axum::middleware::from_fn_with_state(
                self.auth.clone(),
                crate::http::auth::identify,
            ))
            .with_state(self.clone())
    }

    /// Follows the reader's announcements once and starts the hub task.
    async fn start(&self) -> Result<(), ApiError> {
        self.hub
            .started
            .get_or_try_init(|| async {
                // The reader passes on the announcements of the versions
                // it serves, so streams follow a rebuild's switch. It must
                // follow the feed for that: start it if nobody did.
                let sub = self.reader.changes();
                if !self.reader.is_listening() {
                    self.reader
                        .listen(&self.feed, self.shutdown.clone())
                        .await
                        .map_err(|e| {
                            tracing::error!(error = %e, "live updates: cannot follow the change feed");
                            ApiError::new(
                                StatusCode::SERVICE_UNAVAILABLE,
                                "unavailable",
                                "live updates are unavailable",
                            )
                        })?;
                }
                let (hub, reader) = (Arc::clone(&self.hub), self.reader.clone());
                let shutdown = self.shutdown.clone();
                tokio::spawn(async move {
                    let notices = futures::stream::unfold(sub, |mut sub| async move {
                        sub.recv().await.map(|n| (n, sub))
                    });
                    // Reads run concurrently, fan-out stays in feed order.
                    let mut resolved = notices
                        .map(|n| resolve(Arc::clone(&hub), reader.clone(), n))
                        .buffered(16)
                        .boxed();
                    loop {
                        let step = tokio::select! {
                            _ = shutdown.cancelled() => break,
                            step = resolved.next() => step,
                        };
                        match step {
                            Some(Step::Deliver(view, reads)) => hub.fan_out(view, reads),
                            Some(Step::Reset) => hub.reset_all(),
                            Some(Step::Skip) => {}
                            None => break,
                        }
                    }
                    hub.end();
                });
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// Opens a stream: registers, reads the current state, then follows.
    async fn open(
        &self,
        view: &'static str,
        key: Option<String>,
        after: Position,
        client: Option<std::net::IpAddr>,
        caller: Caller,
    ) -> Result<Response, ApiError> {
        let open = self.hub.connections.fetch_add(1, Ordering::AcqRel);
        let mut guard = Connection {
            hub: Arc::clone(&self.hub),
            topic: Topic {
                view,
                key: key.clone(),
            },
            id: None,
            client: None,
        };
        if let Some(ip) = client {
            let mut per = self
                .hub
                .per_client
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let n = per.entry(ip).or_insert(0);
            if *n >= self.config.max_per_client {
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_streams",
                    format!(
                        "at most {} live streams per client; close one first",
                        self.config.max_per_client
                    ),
                ));
            }
            *n += 1;
            guard.client = Some(ip);
        }
        if open >= self.config.max_subscribers {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_subscribers",
                format!(
                    "at most {} live subscribers; retry later",
                    self.config.max_subscribers
                ),
            ));
        }
        self.start().await?;
        let (id, rx, reason, floor) = self.hub.subscribe(&guard.topic, self.config.buffer);
        guard.id = Some(id);
        let mut stream = LiveStream {
            reader: self.reader.clone(),
            hub: Arc::clone(&self.hub),
            view,
            key,
            rx,
            reason,
            pending: VecDeque::new(),
            last: after,
            snapshot_limit: self.config.snapshot_limit,
            more: false,
            done: false,
            caller,
            _guard: guard,
        };
        stream.catch_up(floor).await?;
        stream.pending.push_front(
            Event::default()
                .retry(Duration::from_secs(2))
                .comment("subscribed"),
        );
        let events = futures::stream::unfold(stream, |mut s| async move {
            s.next_event()
                .await
                .map(|e| (Ok::<Event, Infallible>(e), s))
        });
        let mut resp = Sse::new(events)
            .keep_alive(KeepAlive::new().interval(self.config.keep_alive))
            .into_response();
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp.headers_mut().insert(
            "x-accel-buffering",
            HeaderValue::from_static("no"), // no proxy buffering
        );
        Ok(resp)
    }
}

enum Step {
    /// The new states, or the keys that could not be read.
    Deliver(&'static str, Vec<Result<Arc<Update>, String>>),
    Reset,
    Skip,
}

/// Reads the announced documents somebody follows.
async fn resolve<V: ViewStore>(hub: Arc<Hub>, reader: ViewReader<V>, notice: ChangeNotice) -> Step {
    let change = match notice {
        ChangeNotice::Change(c) => c,
        ChangeNotice::Reset => return Step::Reset,
    };
    let Some(view) = known_view(&change.view) else {
        return Step::Skip;
    };
    let keys = hub.wanted(view, &change);
    if keys.is_empty() {
        return Step::Skip;
    }
    let reads = futures::future::join_all(keys.into_iter().map(|key| {
        let reader = &reader;
        async move {
            match reader.get(view, &key, Some(change.position)).await {
                Ok(read) => {
                    let (doc, position) = match &read.doc {
                        Some(d) => (Some(&d.doc), d.position),
                        None => (None, change.position),
                    };
                    Ok(Arc::new(Update {
                        data: state_data(view, &key, doc, position),
                        change: change.position,
                        position,
                        key,
                    }))
                }
                Err(e) => {
                    tracing::warn!(error = %e, view, key, "live updates: read failed");
                    Err(key)
                }
            }
        }
    }))
    .await;
    Step::Deliver(view, reads)
}

/// Counts an open stream and unregisters it when it ends.
struct Connection {
    hub: Arc<Hub>,
    topic: Topic,
    id: Option<u64>,
    client: Option<std::net::IpAddr>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.hub.unsubscribe(&self.topic, id);
        }
        self.hub.connections.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.client {
            let mut per = self
                .hub
                .per_client
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(n) = per.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    per.remove(&ip);
                }
            }
        }
    }
}

/// One subscriber's stream of events.
struct LiveStream<V> {
    reader: ViewReader<V>,
    hub: Arc<Hub>,
    view: &'static str,
    /// `None`: the whole view.
    key: Option<String>,
    rx: mpsc::Receiver<Msg>,
    reason: Arc<AtomicU8>,
    pending: VecDeque<Event>,
    /// One key: the position of the last state sent. A whole view: every
    /// change up to here has been sent.
    last: Position,
    snapshot_limit: usize,
    /// The catch-up sent only part of the view: end once it is sent.
    more: bool,
    done: bool,
    /// Who follows: a key's states go out only while the caller may read
    /// them.
    caller: Caller,
    _guard: Connection,
}

impl<V: ViewStore> LiveStream<V> {
    /// Queues what changed beyond `last`, reading at least at `floor`.
    async fn catch_up(&mut self, floor: Position) -> Result<(), QueryError> {
        let min = (floor > Position::START).then_some(floor);
        match &self.key {
            Some(key) => {
                let read = self.reader.get(self.view, key, min).await?;
                match read.doc {
                    Some(d) if !self.caller.sees(self.view, key, Some(&d.doc)) => {}
                    Some(d) if d.position > self.last => {
                        let data = state_data(self.view, key, Some(&d.doc), d.position);
                        self.pending.push_back(state_event(d.position, &data));
                        self.last = d.position;
                    }
                    // Deleted since the client's last state.
                    None if self.last > Position::START && read.checkpoint > self.last => {
                        let data = state_data(self.view, key, None, read.checkpoint);
                        self.pending.push_back(state_event(read.checkpoint, &data));
                        self.last = read.checkpoint;
                    }
                    _ => {}
                }
            }
            None => {
                // Every document changed since `last`, page by page.
                let mut docs = Vec::new();
                let mut after: Option<String> = None;
                let mut first = min;
                loop {
                    let page = self
                        .reader
                        .list(self.view, after.as_deref(), 1_000, first.take())
                        .await?;
                    docs.extend(page.docs.into_iter().filter(|d| d.position > self.last));
                    match page.next {
                        Some(next) => after = Some(next),
                        None => break,
                    }
                }
                // Oldest first: a client that drops mid-way resumes from
                // the last id it got and misses nothing.
                docs.sort_by_key(|d| d.position);
                if docs.len() > self.snapshot_limit {
                    // Send the oldest, cut between two positions, then end
                    // the stream ("more"): the client reconnects with the
                    // last id and gets the next part.
                    let cut = docs[self.snapshot_limit].position;
                    let mut keep = docs.iter().take_while(|d| d.position < cut).count();
                    if keep == 0 {
                        // One position holds more than the limit: send it whole.
                        keep = docs.iter().take_while(|d| d.position == cut).count();
                    }
                    self.more = keep < docs.len();
                    docs.truncate(keep);
                }
                for d in docs {
                    let data = state_data(self.view, &d.key, Some(&d.doc), d.position);
                    self.pending.push_back(state_event(d.position, &data));
                    self.last = self.last.max(d.position);
                }
            }
        }
        Ok(())
    }

    /// Whether the caller may see a key's new state (`data`: the state
    /// event's JSON). Parsed only for views whose documents name their
    /// owner, and only for callers who do not read every document.
    fn visible(&self, key: &str, data: &str) -> bool {
        if self.caller.sees_all(self.view) {
            return true;
        }
        let parsed: Value = match serde_json::from_str(data) {
            Ok(v) => v,
            Err(_) => return false,
        };
        let doc = parsed.get("doc").filter(|d| !d.is_null());
        self.caller.sees(self.view, key, doc)
    }

    /// The event for an update, if this subscriber has not seen it;
    /// `seen`: `last` before this announcement's updates (a whole-view
    /// stream has everything up to it, from its catch-up or earlier
    /// announcements, so an announcement that arrives late is dropped).
    fn accept(&mut self, u: &Update, seen: Position) -> Option<Event> {
        match &self.key {
            Some(key) if *key == u.key => {
                if u.position <= self.last || !self.visible(key, &u.data) {
                    return None;
                }
                self.last = u.position;
                Some(state_event(u.position, &u.data))
            }
            Some(_) => None,
            None => {
                if u.change <= seen {
                    return None;
                }
                // The change's position: everything up to it is sent.
                self.last = self.last.max(u.change);
                Some(state_event(u.change, &u.data))
            }
        }
    }

    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            if self.done {
                return None;
            }
            if self.more {
                self.done = true;
                return Some(close_event(close_reason(MORE)));
            }
            match self.rx.recv().await {
                Some(Msg::States(updates)) => {
                    let seen = self.last;
                    for u in updates.iter() {
                        if let Some(e) = self.accept(u, seen) {
                            self.pending.push_back(e);
                        }
                    }
                }
                Some(Msg::Reset) => {
                    let floor = self.hub.latest(self.view);
                    if let Err(e) = self.catch_up(floor).await {
                        tracing::warn!(error = %e, view = self.view, "live updates: catch-up failed");
                        self.done = true;
                        return Some(close_event("unavailable"));
                    }
                }
                None => {
                    self.done = true;
                    return Some(close_event(close_reason(
                        self.reason.load(Ordering::Acquire),
                    )));
                }
            }
        }
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

fn view_name(name: &str) -> Result<&'static str, ApiError> {
    known_view(name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_view",
            format!(
                "no view {:?}; known views: {}",
                name.chars().take(40).collect::<String>(),
                VIEW_NAMES.join(", ")
            ),
        )
    })
}

/// Checks a key the way the view keys its documents; returns it normalised.
fn view_key(view: &str, key: &str) -> Result<String, ApiError> {
    let sku = |s: &str| {
        crate::domain::validate_sku(s)
            .map(|()| s.to_owned())
            .map_err(|e| bad_request(e.to_string()))
    };
    match view {
        "catalog" | "low_stock" => sku(key),
        "order_details" => Uuid::parse_str(key)
            .map(|u| u.to_string())
            .map_err(|_| bad_request("an order id must be a UUID")),
        "customer_orders"
            if !key.trim().is_empty()
                && key.chars().count() <= crate::domain::order::MAX_CUSTOMER_ID_LEN =>
        {
            Ok(key.to_owned())
        }
        "customer_orders" => Err(bad_request(format!(
            "a customer id is 1 to {} characters",
            crate::domain::order::MAX_CUSTOMER_ID_LEN
        ))),
        // One placed order: `<escaped customer id>/<position, 20 digits>`.
        "customer_order_history" => match key.rsplit_once('/') {
            Some((customer, position))
                if !customer.is_empty()
                    && position.len() == 20
                    && position.bytes().all(|b| b.is_ascii_digit()) =>
            {
                Ok(key.to_owned())
            }
            _ => Err(bad_request(
                "a history key is <customer id>/<position, 20 digits>; \
                 follow customer_orders/<customer id> for a customer's latest orders",
            )),
        },
        "sales_dashboard" => {
            let (day, s) = key
                .split_once(':')
                .ok_or_else(|| bad_request("a dashboard key is <YYYY-MM-DD>:<sku>"))?;
            chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d")
                .map_err(|_| bad_request("a dashboard key is <YYYY-MM-DD>:<sku>"))?;
            sku(s)?;
            Ok(key.to_owned())
        }
        _ => Err(bad_request("unknown view")),
    }
}

#[derive(Deserialize, Default)]
struct After {
    after: Option<String>,
}

/// The position the client has seen: the larger of `?after=` and
/// `Last-Event-ID` (a reconnecting browser repeats the URL's `after`).
fn after(q: &After, headers: &HeaderMap) -> Result<Position, ApiError> {
    let parse = |what: &str, s: &str| {
        s.trim()
            .parse::<u64>()
            .map(Position)
            .map_err(|_| bad_request(format!("{what} must be a non-negative integer")))
    };
    let mut p = Position::START;
    if let Some(a) = &q.after {
        p = p.max(parse("after", a)?);
    }
    if let Some(h) = headers.get(LAST_EVENT_ID_HEADER) {
        let s = h
            .to_str()
            .map_err(|_| bad_request("Last-Event-ID must be a position"))?;
        if !s.trim().is_empty() {
            p = p.max(parse("Last-Event-ID", s)?);
        }
    }
    Ok(p)
}

async fn live_view<V: ViewStore>(
    State(live): State<Live<V>>,
    caller: Caller,
    Path(view): Path<String>,
    Query(q): Query<After>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
) -> Result<Response, ApiError> {
    let view = view_name(&view)?;
    // A whole view: everything in it, so only for those who may list it.
    caller.may_list(view)?;
    let after = after(&q, &headers)?;
    let client = crate::server::peer(&extensions).map(|a| a.ip());
    live.open(view, None, after, client, caller).await
}

async fn live_key<V: ViewStore>(
    State(live): State<Live<V>>,
    caller: Caller,
    Path((view, key)): Path<(String, String)>,
    Query(q): Query<After>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
) -> Result<Response, ApiError> {
    let view = view_name(&view)?;
    let key = view_key(view, &key)?;
    // What the rule alone refuses (someone else's order list, a staff
    // view); the owner of a document that names it is checked on its
    // current state here and on every state sent.
    caller.may_read(view, &key, None)?;
    let current = live.reader.get(view, &key, None).await?;
    caller.may_read(view, &key, current.doc.as_ref().map(|d| &d.doc))?;
    let after = after(&q, &headers)?;
    let client = crate::server::peer(&extensions).map(|a| a.ip());
    live.open(view, Some(key), after, client, caller).await
}

async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        INDEX_HTML,
    )
        .into_response()
}

async fn app_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        APP_JS,
    )
        .into_response()
}

async fn app_css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        APP_CSS,
    )
        .into_response()
}

/// The command API's URL, read at each request.
fn command_url() -> String {
    std::env::var(COMMAND_URL_ENV)
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_COMMAND_URL.to_owned())
        .trim_end_matches('/')
        .to_owned()
}

/// Forwards a POST to the command API and answers what it answered.
async fn forward<V>(
    live: &Live<V>,
    path: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut req = live
        .http
        .post(format!("{}{path}", command_url()))
        .header(header::CONTENT_TYPE, "application/json")
        .body(body);
    if let Some(v) = headers.get(IDEMPOTENCY_HEADER) {
        req = req.header(IDEMPOTENCY_HEADER, v.clone());
    }
    // The caller's own credentials: the command API checks them again.
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        req = req.header(header::AUTHORIZATION, v.clone());
    }
    let resp = req.send().await.map_err(|e| {
        tracing::warn!(error = %e, "the command API is unreachable");
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "bad_gateway",
            "the command API is unreachable",
        )
    })?;
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let challenge = resp
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok());
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_owned();
    let body = resp.bytes().await.map_err(|_| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "bad_gateway",
            "the command API's answer was cut off",
        )
    })?;
    let mut out = (status, [(header::CONTENT_TYPE, content_type)], body).into_response();
    if let Some(c) = challenge {
        out.headers_mut().insert(header::WWW_AUTHENTICATE, c);
    }
    Ok(out)
}

async fn proxy_order<V: ViewStore>(
    State(live): State<Live<V>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    forward(&live, "/orders", &headers, body).await
}

/// `POST` forwarded to the command API's `/orders/{id}/<action>` (no
/// body), the order id checked first.
fn proxy_order_action<V: ViewStore>(action: &'static str) -> MethodRouter<Live<V>> {
    post(
        move |State(live): State<Live<V>>, Path(id): Path<String>, headers: HeaderMap| async move {
            let id = Uuid::parse_str(&id).map_err(|_| bad_request("an order id must be a UUID"))?;
            let path = format!("/orders/{id}/{action}");
            forward(&live, &path, &headers, Bytes::new()).await
        },
    )
}
