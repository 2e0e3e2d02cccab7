//! The command handler over both stores, and promises 1 and 2 on Postgres.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::{Counter, CounterCommand, CounterError, CounterEvent, CAP};
use serde_json::json;
use strata::testing::{test_database, wait_until};
use strata::{
    AggregateTest, AppendRequest, CommandContext, CommandError, CommandHandler, DecodeErrorKind,
    DomainEvent, EventStore, ExpectedVersion, InMemoryEventStore, InMemorySnapshotStore, NewEvent,
    PgEventStore, PgSnapshotStore, Position, Principal, SnapshotPolicy, SnapshotStore, StreamId,
    Upcasters,
};
use uuid::Uuid;

fn sid(s: &str) -> StreamId {
    StreamId::new(s).unwrap()
}

// ---- given / when / then ---------------------------------------------------

#[test]
fn harness_given_when_then() {
    AggregateTest::<Counter>::given([CounterEvent::Incremented { by: 2 }])
        .when(CounterCommand::Increment(3))
        .then_expect_events([CounterEvent::Incremented { by: 3 }]);
    AggregateTest::<Counter>::given([CounterEvent::Incremented { by: CAP }])
        .when(CounterCommand::Increment(1))
        .then_expect_error(|e| *e == CounterError::Capped { cap: CAP });
    let encoded = AggregateTest::<Counter>::given_nothing()
        .when(CounterCommand::IncrementTwice(5))
        .then_encoded();
    insta::assert_json_snapshot!("counter_increment_twice", encoded);
}

// ---- who acts ----------------------------------------------------------------

/// A safe deposit box: whoever opens it owns it; only the owner takes from
/// it; anyone may look. Its rule lives in `authorize`, on the state.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
struct Vault {
    owner: Option<String>,
    amount: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", content = "data")]
enum VaultEvent {
    Opened { owner: String },
    Deposited { amount: u64 },
    Taken { amount: u64 },
}

impl DomainEvent for VaultEvent {}

enum VaultCommand {
    Open,
    Deposit(u64),
    Take(u64),
}

#[derive(Debug, thiserror::Error)]
#[error("not enough")]
struct NotEnough;

/// Who opens a vault (the command carries no owner: the principal is it).
fn opener() -> Principal {
    Principal::user("alice", ["customer"])
}

impl strata::Aggregate for Vault {
    const STREAM_TYPE: &'static str = "vault";
    type Command = VaultCommand;
    type Event = VaultEvent;
    type Error = NotEnough;

    fn authorize(&self, command: &VaultCommand, who: &Principal) -> Result<(), strata::Forbidden> {
        match command {
            VaultCommand::Open => strata::Forbidden::unless(who.is_user(), "sign in to open one"),
            VaultCommand::Deposit(_) => Ok(()),
            VaultCommand::Take(_) => strata::Forbidden::unless(
                self.owner.as_deref().is_some_and(|o| who.is_user_named(o)),
                "only the owner takes from a vault",
            ),
        }
    }

    fn decide(&self, command: &VaultCommand) -> Result<Vec<VaultEvent>, NotEnough> {
        Ok(match command {
            VaultCommand::Open => vec![VaultEvent::Opened {
                owner: opener().subject().to_owned(),
            }],
            VaultCommand::Deposit(n) => vec![VaultEvent::Deposited { amount: *n }],
            VaultCommand::Take(n) if *n > self.amount => return Err(NotEnough),
            VaultCommand::Take(n) => vec![VaultEvent::Taken { amount: *n }],
        })
    }

    fn evolve(&mut self, event: &VaultEvent) {
        match event {
            VaultEvent::Opened { owner } => self.owner = Some(owner.clone()),
            VaultEvent::Deposited { amount } => self.amount += amount,
            VaultEvent::Taken { amount } => self.amount -= amount,
        }
    }
}

#[tokio::test]
async fn commands_are_authorised_on_the_state_and_record_their_actor() {
    let store = InMemoryEventStore::new();
    let vaults = CommandHandler::<Vault, _>::new(store.clone());
    let v = sid("vault-1");
    let as_user = |name: &str| CommandContext::new().principal(Principal::user(name, ["customer"]));
    vaults
        .handle(v.clone(), VaultCommand::Open, as_user("alice"))
        .await
        .unwrap();
    vaults
        .handle(v.clone(), VaultCommand::Deposit(10), as_user("bob"))
        .await
        .unwrap();
    let head = store.head().await.unwrap();

    // Bob may deposit but not take; an anonymous visitor may not open one.
    let err = vaults
        .handle(v.clone(), VaultCommand::Take(5), as_user("bob"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CommandError::Forbidden(f) if f.reason.contains("owner")),
        "{err:?}"
    );
    let err = vaults
        .handle(
            sid("vault-2"),
            VaultCommand::Open,
            CommandContext::new().principal(Principal::anonymous()),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::Forbidden(_)), "{err:?}");
    // A command naming nobody is refused before anything is decided.
    let err = vaults
        .handle(v.clone(), VaultCommand::Deposit(1), CommandContext::new())
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::NoActor), "{err:?}");
    assert_eq!(store.head().await.unwrap(), head, "refusals record nothing");
    assert_eq!(vaults.stats().forbidden, 2);

    // In one group, a refused command does not stop the others: Alice's
    // take and Bob's take arrive together; only Alice's is recorded.
    let (a, b) = tokio::join!(
        vaults.handle(v.clone(), VaultCommand::Take(4), as_user("alice")),
        vaults.handle(v.clone(), VaultCommand::Take(4), as_user("bob")),
    );
    assert!(a.is_ok(), "{a:?}");
    assert!(matches!(b, Err(CommandError::Forbidden(_))), "{b:?}");
    assert_eq!(vaults.load(&v).await.unwrap().0.amount, 6);

    // Every event names who did it.
    let actors: Vec<String> = store
        .read_stream(&v, 1, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.metadata.actor.unwrap())
        .collect();
    assert_eq!(actors, ["user:alice", "user:bob", "user:alice"]);
}

// ---- the same behaviour over both stores ------------------------------------

async fn decides_appends_and_records_metadata<S: EventStore>(store: S) {
    let handler = CommandHandler::<Counter, _>::new(store.clone());
    let ctx = CommandContext::new()
        .correlation_id(Uuid::new_v4())
        .principal(Principal::user("alice", ["clerk"]));
    let out = handler
        .handle(
            sid("counter-1"),
            CounterCommand::IncrementTwice(4),
            ctx.clone(),
        )
        .await
        .unwrap();
    assert_eq!(out.stream_version, 2);
    assert_eq!(out.position, Position(2));
    assert_eq!(out.events, 2);
    assert!(!out.duplicate);
    let events = store.read_stream(&sid("counter-1"), 1, 10).await.unwrap();
    for e in &events {
        assert_eq!(e.metadata.command_id, Some(ctx.command_id));
        assert_eq!(e.metadata.correlation_id, ctx.correlation_id.unwrap());
        assert_eq!(e.metadata.causation_id, Some(ctx.command_id));
        assert_eq!(e.metadata.actor.as_deref(), Some("user:alice"));
        assert_eq!(e.stream_type, "counter");
        assert_eq!(e.event_type, "CounterIncremented");
    }
    let (state, version) = handler.load(&sid("counter-1")).await.unwrap();
    assert_eq!((state.value, version), (8, 2));

    // A refused command writes nothing.
    let err = handler
        .handle(
            sid("counter-1"),
            CounterCommand::Increment(0),
            CommandContext::system("test"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::Domain(CounterError::Zero)));
    // A command that decides nothing writes nothing and reports where the stream is.
    let out = handler
        .handle(
            sid("counter-1"),
            CounterCommand::Nothing,
            CommandContext::system("test"),
        )
        .await
        .unwrap();
    assert_eq!(
        (out.events, out.stream_version, out.position),
        (0, 2, Position(2))
    );
    assert_eq!(store.head().await.unwrap(), Position(2));
}

async fn a_repeated_command_id_appends_once<S: EventStore>(store: S) {
    let handler = CommandHandler::<Counter, _>::new(store.clone());
    let ctx = CommandContext::system("test");
    let first = handler
        .handle(sid("counter-2"), CounterCommand::Increment(1), ctx.clone())
        .await
        .unwrap();
    handler
        .handle(
            sid("counter-2"),
            CounterCommand::Increment(5),
            CommandContext::system("test"),
        )
        .await
        .unwrap();
    // Sent again after the stream moved on: the first outcome, nothing appended.
    let again = handler
        .handle(sid("counter-2"), CounterCommand::Increment(1), ctx.clone())
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(
        (again.stream_version, again.position, again.events),
        (first.stream_version, first.position, first.events)
    );
    assert_eq!(store.head().await.unwrap(), Position(2));
    // A repeat that the aggregate would now refuse still gets the first outcome.
    let fill = CommandContext::system("test");
    let filled = handler
        .handle(
            sid("counter-2"),
            CounterCommand::Increment(CAP - 6),
            fill.clone(),
        )
        .await
        .unwrap();
    let again = handler
        .handle(sid("counter-2"), CounterCommand::Increment(CAP - 6), fill)
        .await
        .expect("the first outcome, not a refusal");
    assert!(again.duplicate);
    assert_eq!(again.position, filled.position);
    assert_eq!(store.head().await.unwrap(), Position(3));
    // The same command id on another aggregate is refused.
    let err = handler
        .handle(sid("counter-3"), CounterCommand::Increment(1), ctx)
        .await
        .unwrap_err();
    assert!(
        matches!(err, CommandError::CommandIdReused { .. }),
        "{err:?}"
    );
}

/// A command id repeated with another request fingerprint is a different
/// request: refused, nothing appended, whether the two arrive one after
/// the other or at once. A repeat with the same fingerprint is looked up
/// before any decision (`repeat_of`), so it answers the first outcome
/// whatever the state is now.
async fn a_repeat_with_another_fingerprint_is_refused<S: EventStore>(store: S) {
    let handler = CommandHandler::<Counter, _>::new(store.clone());
    let id = Uuid::new_v4();
    let first = handler
        .handle(
            sid("counter-fp"),
            CounterCommand::Increment(1),
            CommandContext::with_command_id(id)
                .actor("test")
                .fingerprint("a"),
        )
        .await
        .unwrap();
    let err = handler
        .handle(
            sid("counter-fp"),
            CounterCommand::Increment(2),
            CommandContext::with_command_id(id)
                .actor("test")
                .fingerprint("b"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, CommandError::CommandMismatch { command_id } if command_id == id),
        "{err:?}"
    );
    let head = store.head().await.unwrap();
    assert_eq!(head, first.position);
    // Looked up before deciding: the first outcome, or the refusal.
    let again = handler
        .repeat_of(
            &sid("counter-fp"),
            &CommandContext::with_command_id(id)
                .actor("test")
                .fingerprint("a"),
        )
        .await
        .unwrap()
        .expect("a repeat");
    assert!(again.duplicate);
    assert_eq!(
        (again.position, again.stream_version),
        (first.position, first.stream_version)
    );
    assert!(matches!(
        handler
            .repeat_of(
                &sid("counter-fp"),
                &CommandContext::with_command_id(id)
                    .actor("test")
                    .fingerprint("b")
            )
            .await,
        Err(CommandError::CommandMismatch { .. })
    ));
    assert!(handler
        .repeat_of(
            &sid("counter-fp"),
            &CommandContext::system("test").fingerprint("a")
        )
        .await
        .unwrap()
        .is_none());
    // At once: one is handled, the other refused.
    let id = Uuid::new_v4();
    let (x, y) = tokio::join!(
        handler.handle(
            sid("counter-fp"),
            CounterCommand::Increment(3),
            CommandContext::with_command_id(id)
                .actor("test")
                .fingerprint("x"),
        ),
        handler.handle(
            sid("counter-fp"),
            CounterCommand::Increment(4),
            CommandContext::with_command_id(id)
                .actor("test")
                .fingerprint("y"),
        ),
    );
    let refused = [&x, &y]
        .iter()
        .filter(|r| matches!(r, Err(CommandError::CommandMismatch { .. })))
        .count();
    assert_eq!(refused, 1, "{x:?} {y:?}");
    assert_eq!(store.head().await.unwrap(), Position(head.0 + 1));
}

/// Command ids from client keys live in a namespace of their own, per
/// principal: never the key itself, never an id a process manager derives.
#[test]
fn client_keys_are_scoped() {
    let key = Uuid::new_v4();
    let id = strata::client_command_id("http", &key.to_string());
    assert_eq!(id, strata::client_command_id("http", &key.to_string()));
    assert_ne!(id, key);
    assert_ne!(id, strata::client_command_id("other", &key.to_string()));
    // The ids a process manager would derive from events the key caused.
    for index in 0..4 {
        let event = strata::derived_event_id(key, index);
        assert_ne!(id, strata::caused_command_id("fulfilment", event, 0));
        let event = strata::derived_event_id(id, index);
        assert_ne!(
            strata::client_command_id(
                "http",
                &strata::caused_command_id("fulfilment", event, 0).to_string()
            ),
            strata::caused_command_id("fulfilment", event, 0)
        );
    }
}

async fn concurrent_duplicates_append_once<S: EventStore>(store: S) {
    let handler = CommandHandler::<Counter, _>::new(store.clone());
    let ctx = CommandContext::system("test");
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let h = handler.clone();
            let ctx = ctx.clone();
            tokio::spawn(async move {
                h.handle(sid("counter-dup"), CounterCommand::Increment(7), ctx)
                    .await
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap().unwrap());
    }
    assert_eq!(outcomes.iter().filter(|o| !o.duplicate).count(), 1);
    assert!(outcomes.iter().all(|o| o.position == Position(1)));
    let events = store.read_stream(&sid("counter-dup"), 1, 10).await.unwrap();
    assert_eq!(events.len(), 1, "appended once");
}

async fn snapshots_are_taken_and_used<S: EventStore>(store: S, snapshots: Arc<dyn SnapshotStore>) {
    let handler = CommandHandler::<Counter, _>::new(store.clone())
        .with_snapshots(Arc::clone(&snapshots), SnapshotPolicy::Every(10));
    for _ in 0..25 {
        handler
            .handle(
                sid("counter-snap"),
                CounterCommand::Increment(1),
                CommandContext::system("test"),
            )
            .await
            .unwrap();
    }
    wait_until(Duration::from_secs(10), "a snapshot at version 20", || {
        let s = Arc::clone(&snapshots);
        async move {
            s.load(&sid("counter-snap"))
                .await
                .unwrap()
                .is_some_and(|s| s.version == 20)
        }
    })
    .await;
    // A fresh handler loads snapshot + 5 events. (Each load below is a
    // fresh handler's: a handler keeps what it loaded.)
    let fresh = || {
        CommandHandler::<Counter, _>::new(store.clone())
            .with_snapshots(Arc::clone(&snapshots), SnapshotPolicy::Every(10))
    };
    let (state, version) = fresh().load(&sid("counter-snap")).await.unwrap();
    assert_eq!((state.value, state.increments, version), (25, 25, 25));

    // A snapshot that lies proves it is used; one that does not
    // deserialise is ignored.
    let mut s = snapshots.load(&sid("counter-snap")).await.unwrap().unwrap();
    s.version = 21;
    s.state = json!({ "value": 1000, "increments": 20 });
    snapshots.save(s.clone()).await.unwrap();
    let (state, _) = fresh().load(&sid("counter-snap")).await.unwrap();
    assert_eq!(state.value, 1004, "loaded from the snapshot, then 4 events");
    s.version = 22;
    s.state = json!({ "value": "not a number" });
    snapshots.save(s).await.unwrap();
    let (state, version) = fresh().load(&sid("counter-snap")).await.unwrap();
    assert_eq!((state.value, version), (25, 25), "rebuilt from events");
}

async fn upcasts_old_events_and_names_bad_ones<S: EventStore>(store: S) {
    // Version 1 of CounterIncremented was `{"amount": n}`.
    store
        .append(AppendRequest::new(
            sid("counter-old"),
            "counter",
            ExpectedVersion::NoStream,
            vec![NewEvent::new("CounterIncremented", json!({ "amount": 3 }))],
        ))
        .await
        .unwrap();
    let upcasters = Upcasters::new().register("CounterIncremented", 1, |mut p| {
        let n = p["amount"].take();
        if n.is_null() {
            return Err("no amount".into());
        }
        Ok(json!({ "by": n }))
    });
    let handler = CommandHandler::<CounterV2, _>::new(store.clone()).with_upcasters(upcasters);
    let (state, _) = handler.load(&sid("counter-old")).await.unwrap();
    assert_eq!(state.0.value, 3);
    // Without the upcaster: a typed error that names the event.
    let plain = CommandHandler::<CounterV2, _>::new(store.clone());
    match plain.load(&sid("counter-old")).await {
        Err(CommandError::Decode(d)) => {
            assert_eq!(d.kind, DecodeErrorKind::MissingUpcaster { from_version: 1 });
            assert_eq!(d.event_type, "CounterIncremented");
            assert_eq!(d.position, Position(1));
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
    // Unknown event types and broken payloads are typed errors too.
    store
        .append(AppendRequest::new(
            sid("counter-bad"),
            "counter",
            ExpectedVersion::NoStream,
            vec![NewEvent::new("CounterExploded", json!({}))],
        ))
        .await
        .unwrap();
    match CommandHandler::<Counter, _>::new(store.clone())
        .load(&sid("counter-bad"))
        .await
    {
        Err(CommandError::Decode(d)) => {
            assert_eq!(d.kind, DecodeErrorKind::UnknownEventType);
            assert_eq!(d.stream_id, "counter-bad");
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
    store
        .append(AppendRequest::new(
            sid("counter-bad2"),
            "counter",
            ExpectedVersion::NoStream,
            vec![NewEvent::new(
                "CounterIncremented",
                json!({ "by": "three" }),
            )],
        ))
        .await
        .unwrap();
    let err = CommandHandler::<Counter, _>::new(store.clone())
        .handle(
            sid("counter-bad2"),
            CounterCommand::Increment(1),
            CommandContext::system("test"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CommandError::Decode(d) if matches!(d.kind, DecodeErrorKind::InvalidPayload(_))),
        "{err:?}"
    );
}

/// The same counter with CounterIncremented at schema version 2.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
struct CounterV2(Counter);

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
struct EventV2(CounterEvent);

impl DomainEvent for EventV2 {
    fn schema_version(event_type: &str) -> u32 {
        if event_type == "CounterIncremented" {
            2
        } else {
            1
        }
    }
}

impl strata::Aggregate for CounterV2 {
    const STREAM_TYPE: &'static str = "counter";
    type Command = CounterCommand;
    type Event = EventV2;
    type Error = CounterError;
    fn decide(&self, c: &CounterCommand) -> Result<Vec<EventV2>, CounterError> {
        Ok(self.0.decide(c)?.into_iter().map(EventV2).collect())
    }
    fn evolve(&mut self, e: &EventV2) {
        self.0.evolve(&e.0);
    }
}

macro_rules! over_both_stores {
    ($($name:ident),*) => {
        mod memory {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name(InMemoryEventStore::new()).await }
            )*
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn snapshots_are_taken_and_used() {
                super::snapshots_are_taken_and_used(
                    InMemoryEventStore::new(),
                    Arc::new(InMemorySnapshotStore::new()),
                ).await
            }
        }
        mod postgres {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = test_database().await;
                    super::$name(PgEventStore::new(db.pool)).await
                }
            )*
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn snapshots_are_taken_and_used() {
                let db = test_database().await;
                super::snapshots_are_taken_and_used(
                    PgEventStore::new(db.pool.clone()),
                    Arc::new(PgSnapshotStore::new(db.pool)),
                ).await
            }
        }
    };
}

over_both_stores!(
    decides_appends_and_records_metadata,
    a_repeated_command_id_appends_once,
    concurrent_duplicates_append_once,
    a_repeat_with_another_fingerprint_is_refused,
    upcasts_old_events_and_names_bad_ones
);

// ---- promise 1 on Postgres: a hot aggregate ----------------------------------

/// 32 tasks in two "processes" (stores with their own writers and handlers
/// with their own lanes) increment one counter. Conflicts between the two
/// are retried; the final state equals the successful commands; versions
/// are contiguous.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_aggregate_from_two_processes() {
    let db = test_database().await;
    let handlers: Vec<_> = (0..2)
        .map(|_| {
            CommandHandler::<Counter, _>::new(PgEventStore::new(db.pool.clone())).with_retry(
                strata::RetryPolicy {
                    max_attempts: 20,
                    ..Default::default()
                },
            )
        })
        .collect();
    let stream = sid("counter-hot");
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let h = handlers[i % 2].clone();
            let stream = stream.clone();
            tokio::spawn(async move {
                let mut ok = 0u64;
                let mut conflicts = 0u64;
                let mut positions = Vec::new();
                for _ in 0..25 {
                    match h
                        .handle(
                            stream.clone(),
                            CounterCommand::Increment(1),
                            CommandContext::system("test"),
                        )
                        .await
                    {
                        Ok(o) => {
                            ok += 1;
                            positions.push(o.position);
                        }
                        Err(CommandError::Conflict { .. }) => conflicts += 1,
                        Err(e) => panic!("unexpected error: {e}"),
                    }
                }
                (ok, conflicts, positions)
            })
        })
        .collect();
    let (mut ok, mut conflicts, mut positions) = (0, 0, Vec::new());
    for t in tasks {
        let (o, c, p) = t.await.unwrap();
        ok += o;
        conflicts += c;
        positions.extend(p);
    }
    let (state, version) = handlers[0].load(&stream).await.unwrap();
    assert_eq!(state.value, ok, "final state equals successful commands");
    assert_eq!(version, ok);
    assert_eq!(ok + conflicts, 32 * 25);
    let unique: HashSet<_> = positions.iter().collect();
    assert_eq!(
        unique.len(),
        positions.len(),
        "each command has its own position"
    );
    let store = handlers[0].store();
    let versions: Vec<u64> = store
        .read_stream(&stream, 1, 10_000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(
        versions,
        (1..=ok).collect::<Vec<_>>(),
        "contiguous versions"
    );
    let retried: u64 = handlers.iter().map(|h| h.stats().conflicts_retried).sum();
    println!("{ok} succeeded, {conflicts} returned as conflicts, {retried} conflicts retried");
}

/// Promise 2 on Postgres across processes: the same command id from 8 tasks
/// in two processes appends once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_command_from_two_processes_appends_once() {
    let db = test_database().await;
    let handlers: Vec<_> = (0..2)
        .map(|_| CommandHandler::<Counter, _>::new(PgEventStore::new(db.pool.clone())))
        .collect();
    for round in 0..10 {
        let ctx = CommandContext::system("test");
        let stream = sid(&format!("counter-d{round}"));
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let h = handlers[i % 2].clone();
                let (ctx, stream) = (ctx.clone(), stream.clone());
                tokio::spawn(async move {
                    h.handle(stream, CounterCommand::IncrementTwice(1), ctx)
                        .await
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for t in tasks {
            outcomes.push(t.await.unwrap().unwrap());
        }
        assert_eq!(outcomes.iter().filter(|o| !o.duplicate).count(), 1);
        assert!(outcomes
            .iter()
            .all(|o| o.stream_version == 2 && o.events == 2));
        let stored = handlers[0]
            .store()
            .read_stream(&stream, 1, 10)
            .await
            .unwrap();
        assert_eq!(stored.len(), 2, "appended once");
    }
}

/// A handler's cached state may be stale when another process wrote: a
/// refusal decided on it is checked against the stored stream first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_cached_state_never_causes_a_wrong_refusal() {
    let db = test_database().await;
    let one = CommandHandler::<Counter, _>::new(PgEventStore::new(db.pool.clone()));
    let two = CommandHandler::<Counter, _>::new(PgEventStore::new(db.pool.clone()));
    let stream = sid("counter-stale");
    one.handle(
        stream.clone(),
        CounterCommand::Increment(CAP),
        CommandContext::system("test"),
    )
    .await
    .unwrap();
    // `one` now caches value == CAP; `two` resets the counter.
    two.handle(
        stream.clone(),
        CounterCommand::Reset,
        CommandContext::system("test"),
    )
    .await
    .unwrap();
    let out = one
        .handle(
            stream.clone(),
            CounterCommand::Increment(1),
            CommandContext::system("test"),
        )
        .await
        .expect("decided on the stored state, not the stale cache");
    assert_eq!(out.stream_version, 3);
    let (state, _) = one.load(&stream).await.unwrap();
    assert_eq!(state.value, 1);
    // A command that produces events on a stale state conflicts and is
    // retried on the stored state.
    two.handle(
        stream.clone(),
        CounterCommand::Increment(5),
        CommandContext::system("test"),
    )
    .await
    .unwrap();
    let out = one
        .handle(
            stream.clone(),
            CounterCommand::Increment(1),
            CommandContext::system("test"),
        )
        .await
        .unwrap();
    assert_eq!(out.stream_version, 5);
    assert_eq!(one.load(&stream).await.unwrap().0.value, 7);
    assert!(one.stats().conflicts_retried >= 1);
}

// ---- a command the store cannot hold fails alone ------------------------------

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", content = "data")]
enum NoteEvent {
    #[serde(rename = "NoteWritten")]
    Written { text: String },
}

impl DomainEvent for NoteEvent {}

#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
struct Notebook {
    notes: u64,
}

impl strata::Aggregate for Notebook {
    const STREAM_TYPE: &'static str = "notebook";
    type Command = String;
    type Event = NoteEvent;
    type Error = std::convert::Infallible;

    fn decide(&self, text: &String) -> Result<Vec<NoteEvent>, Self::Error> {
        Ok(vec![NoteEvent::Written { text: text.clone() }])
    }

    fn evolve(&mut self, _: &NoteEvent) {
        self.notes += 1;
    }
}

/// Commands of one stream are decided and appended together; one whose
/// events hold text Postgres cannot store (U+0000) is refused as bad input
/// and the commands beside it still land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unstorable_command_fails_alone_in_its_lane() {
    let db = test_database().await;
    let handler = strata::PgCommandHandler::<Notebook>::new(PgEventStore::new(db.pool.clone()));
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let h = handler.clone();
            tokio::spawn(async move {
                let text = if i % 4 == 0 {
                    format!("bad \u{0} {i}")
                } else {
                    format!("good {i}")
                };
                (
                    i,
                    h.handle(sid("notebook-1"), text, CommandContext::system("test"))
                        .await,
                )
            })
        })
        .collect();
    for t in tasks {
        let (i, r) = t.await.unwrap();
        if i % 4 == 0 {
            assert!(
                matches!(r, Err(CommandError::Input(_))),
                "command {i}: {r:?}"
            );
        } else {
            assert!(r.is_ok(), "command {i} failed beside a bad one: {r:?}");
        }
    }
    let (state, version) = handler.load(&sid("notebook-1")).await.unwrap();
    assert_eq!((state.notes, version), (30, 30));
}

// ---- a stale state catches up instead of reloading ---------------------------

/// Forwards to a store and records where each aggregate load's read of a
/// stream started.
#[derive(Clone)]
struct RecordingReads<S> {
    inner: S,
    reads: Arc<std::sync::Mutex<Vec<u64>>>,
}

impl<S> RecordingReads<S> {
    fn take(&self) -> Vec<u64> {
        std::mem::take(&mut *self.reads.lock().unwrap())
    }
}

impl<S: EventStore> EventStore for RecordingReads<S> {
    async fn append(
        &self,
        request: AppendRequest,
    ) -> Result<strata::AppendOutcome, strata::StoreError> {
        self.inner.append(request).await
    }
    async fn append_or_missed(
        &self,
        request: AppendRequest,
    ) -> Result<strata::AppendOutcome, strata::AppendRefused> {
        self.inner.append_or_missed(request).await
    }
    async fn read_stream(
        &self,
        stream_id: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<strata::EventEnvelope>, strata::StoreError> {
        self.inner.read_stream(stream_id, from_version, limit).await
    }
    async fn read_stream_raw(
        &self,
        stream_id: &StreamId,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<strata::StreamEvent>, strata::StoreError> {
        self.reads.lock().unwrap().push(from_version);
        self.inner
            .read_stream_raw(stream_id, from_version, limit)
            .await
    }
    async fn read_all(
        &self,
        after: Position,
        limit: usize,
        filter: &strata::EventFilter,
    ) -> Result<Vec<strata::EventEnvelope>, strata::StoreError> {
        self.inner.read_all(after, limit, filter).await
    }
    async fn head(&self) -> Result<Position, strata::StoreError> {
        self.inner.head().await
    }
    async fn wait_for_head(
        &self,
        after: Position,
        max_wait: Duration,
    ) -> Result<Position, strata::StoreError> {
        self.inner.wait_for_head(after, max_wait).await
    }
    async fn events_by_id(
        &self,
        ids: &[Uuid],
    ) -> Result<Vec<strata::EventEnvelope>, strata::StoreError> {
        self.inner.events_by_id(ids).await
    }
    async fn stream_version(&self, stream_id: &StreamId) -> Result<u64, strata::StoreError> {
        self.inner.stream_version(stream_id).await
    }
}

/// A handler whose store records where each stream read starts.
type Recorded = CommandHandler<Counter, RecordingReads<PgEventStore>>;

/// Two command handlers over one database, as two processes: the first's
/// store records the version each stream read starts from.
fn two_processes(
    pool: &sqlx::PgPool,
) -> (
    RecordingReads<PgEventStore>,
    Recorded,
    CommandHandler<Counter, PgEventStore>,
) {
    let recording = RecordingReads {
        inner: PgEventStore::new(pool.clone()),
        reads: Arc::default(),
    };
    let one = CommandHandler::<Counter, _>::new(recording.clone());
    let two = CommandHandler::<Counter, _>::new(PgEventStore::new(pool.clone()));
    (recording, one, two)
}

/// Another process appends to a stream this handler holds: the refused
/// append brings back what the other process appended, and the retry is
/// decided on the stored state with no read of the stream. When the
/// stream moved further than the store brings back, the handler reads
/// only what was appended (from the held version on), not the whole
/// stream. `load` catches up from the cache the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_takes_in_only_what_the_other_process_appended() {
    let db = test_database().await;
    let (recording, one, two) = two_processes(&db.pool);
    let stream = sid("counter-catch-up");
    for _ in 0..10 {
        increment(&one, &stream).await.unwrap();
    }
    assert_eq!(recording.take(), vec![1], "one read: the stream was new");
    two.handle(
        stream.clone(),
        CounterCommand::Increment(5),
        CommandContext::system("test"),
    )
    .await
    .unwrap();

    let out = increment(&one, &stream).await.unwrap();
    assert_eq!(out.stream_version, 12);
    assert_eq!(
        recording.take(),
        Vec::<u64>::new(),
        "the conflict brought the other process's event: no read"
    );
    assert_eq!(one.stats().conflicts_retried, 1);
    assert_eq!(one.stats().conflicts_caught_up, 1);
    let (state, _) = two.load(&stream).await.unwrap();
    assert_eq!(state.value, 16, "decided on the stored state, counted once");

    // More than the store brings back (64 events): read from the held
    // version on.
    for _ in 0..70 {
        increment(&two, &stream).await.unwrap();
    }
    let out = increment(&one, &stream).await.unwrap();
    assert_eq!(out.stream_version, 13 + 70);
    assert_eq!(recording.take(), vec![13], "read from the held version on");
    assert_eq!(one.stats().conflicts_retried, 2);
    assert_eq!(one.stats().conflicts_caught_up, 1);

    two.handle(
        stream.clone(),
        CounterCommand::Increment(100),
        CommandContext::system("test"),
    )
    .await
    .unwrap();
    let (state, version) = one.load(&stream).await.unwrap();
    assert_eq!((state.value, version), (187, 84));
    assert_eq!(recording.take(), vec![84], "load started from the cache");
}

/// `handle_new` decides a stream's first command without reading the
/// stream. Presumed wrongly (the stream has events), the append conflicts
/// and the command is decided on the stream as stored, as `handle` would
/// have. A state `load` read is kept for the next command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_stream_is_decided_without_a_read_and_a_wrong_guess_is_decided_again() {
    let db = test_database().await;
    let (recording, one, two) = two_processes(&db.pool);
    let ctx = || CommandContext::system("test");

    let fresh = sid("counter-fresh");
    let out = one
        .handle_new(fresh.clone(), CounterCommand::Increment(2), ctx())
        .await
        .unwrap();
    assert_eq!(out.stream_version, 1);
    assert_eq!(
        recording.take(),
        Vec::<u64>::new(),
        "no read of a new stream"
    );

    // Another process has written the stream this handler presumes new.
    let taken = sid("counter-taken");
    for _ in 0..3 {
        two.handle(taken.clone(), CounterCommand::Increment(10), ctx())
            .await
            .unwrap();
    }
    let out = one
        .handle_new(taken.clone(), CounterCommand::Increment(1), ctx())
        .await
        .unwrap();
    assert_eq!(out.stream_version, 4);
    assert_eq!(
        recording.take(),
        Vec::<u64>::new(),
        "the conflict brought the stream's events: no read"
    );
    assert_eq!(one.stats().conflicts_retried, 1);
    assert_eq!(one.stats().conflicts_caught_up, 1);
    let (state, _) = two.load(&taken).await.unwrap();
    assert_eq!(
        state.value, 31,
        "decided on the stored stream, counted once"
    );

    // What the empty stream would accept, the stored one refuses: the
    // answer is the stored stream's (here the counter is capped).
    let capped = sid("counter-capped");
    two.handle(capped.clone(), CounterCommand::Increment(CAP), ctx())
        .await
        .unwrap();
    let refused = one
        .handle_new(capped.clone(), CounterCommand::Increment(1), ctx())
        .await;
    assert!(
        matches!(
            refused,
            Err(CommandError::Domain(CounterError::Capped { .. }))
        ),
        "{refused:?}"
    );

    // `load` keeps what it read: the next command appends without a read.
    two.handle(taken.clone(), CounterCommand::Increment(100), ctx())
        .await
        .unwrap();
    recording.take();
    let (state, version) = one.load(&taken).await.unwrap();
    assert_eq!((state.value, version), (131, 5));
    assert_eq!(recording.take(), vec![5]);
    let out = increment(&one, &taken).await.unwrap();
    assert_eq!(out.stream_version, 6);
    assert_eq!(
        recording.take(),
        Vec::<u64>::new(),
        "decided on the loaded state"
    );
}

/// A handler that is shown the events another process appends (as a
/// process manager's subscription shows them) keeps its state up with
/// them: its next command is decided and appended with no read and no
/// conflict. A stream's first event starts a state; an event out of turn
/// (a gap, an old one, another aggregate's stream) changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observed_events_keep_a_state_current_without_reads() {
    let db = test_database().await;
    let (recording, one, two) = two_processes(&db.pool);
    let ctx = || CommandContext::system("test");
    let stream = sid("counter-observed");
    let events = |from: u64| {
        let store = recording.inner.clone();
        let stream = stream.clone();
        async move { store.read_stream(&stream, from, 100).await.unwrap() }
    };

    // The other process starts the stream; this one sees its first event.
    two.handle(stream.clone(), CounterCommand::Increment(5), ctx())
        .await
        .unwrap();
    let seen = events(1).await;
    assert!(one.observe(&seen[0]), "the first event starts a state");
    assert!(
        !one.observe(&seen[0]),
        "the same event again changes nothing"
    );
    let out = increment(&one, &stream).await.unwrap();
    assert_eq!(out.stream_version, 2);
    assert_eq!(recording.take(), Vec::<u64>::new(), "no read");

    // The other process appends twice; shown in order, the state follows.
    for _ in 0..2 {
        two.handle(stream.clone(), CounterCommand::Increment(10), ctx())
            .await
            .unwrap();
    }
    let later = events(3).await;
    assert_eq!(later.len(), 2);
    assert!(!one.observe(&later[1]), "a gap: version 4 after 2");
    assert!(one.observe(&later[0]));
    assert!(one.observe(&later[1]));
    let out = increment(&one, &stream).await.unwrap();
    assert_eq!(out.stream_version, 5);
    assert_eq!(recording.take(), Vec::<u64>::new(), "no read");
    assert_eq!(one.stats().conflicts_retried, 0, "no conflict");
    assert_eq!(one.stats().observed, 3);
    let (state, _) = two.load(&stream).await.unwrap();
    assert_eq!(
        state.value,
        5 + 1 + 10 + 10 + 1,
        "every command counted once"
    );

    // Another aggregate's stream is not this handler's.
    let mut foreign = later[0].clone();
    foreign.stream_type = "wallet".into();
    foreign.stream_version = 6;
    assert!(!one.observe(&foreign));
}

async fn increment<S: EventStore>(
    handler: &CommandHandler<Counter, S>,
    stream: &StreamId,
) -> Result<strata::CommandOutcome, CommandError<CounterError>> {
    handler
        .handle(
            stream.clone(),
            CounterCommand::Increment(1),
            CommandContext::system("test"),
        )
        .await
}
