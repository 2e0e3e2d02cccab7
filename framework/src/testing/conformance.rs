//! The conformance suite every [`EventStore`] implementation must pass.
//!
//! Each function takes a fresh, empty store and panics on a broken rule.
//! [`store_conformance_tests!`](crate::store_conformance_tests) turns the
//! whole suite into `#[tokio::test]`s for one implementation.

use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use crate::{
    AppendRequest, EventFilter, EventStore, ExpectedVersion, InputError, Metadata, NewEvent,
    Position, StoreError, StreamId,
};

fn sid(s: &str) -> StreamId {
    StreamId::new(s).expect("valid stream id")
}

fn events(n: usize, ty: &str) -> Vec<NewEvent> {
    (0..n)
        .map(|i| NewEvent::new(ty, json!({ "n": i })))
        .collect()
}

fn req(stream: &str, expected: ExpectedVersion, evs: Vec<NewEvent>) -> AppendRequest {
    AppendRequest::new(sid(stream), "thing", expected, evs)
}

/// Appends get dense versions and positions and read back unchanged.
pub async fn append_and_read_back<S: EventStore>(store: S) {
    let meta = Metadata::new()
        .with_causation_id(Uuid::new_v4())
        .with_command_id(Uuid::new_v4())
        .with_actor("alice");
    let evs: Vec<NewEvent> = events(3, "Added")
        .into_iter()
        .map(|e| e.with_metadata(meta.clone()))
        .collect();
    let out = store
        .append(req("a-1", ExpectedVersion::NoStream, evs.clone()))
        .await
        .expect("append");
    assert_eq!((out.first_version, out.stream_version), (1, 3));
    assert_eq!(
        (out.first_position, out.position),
        (Position(1), Position(3))
    );
    assert!(!out.duplicate);

    let read = store.read_stream(&sid("a-1"), 1, 100).await.unwrap();
    assert_eq!(read.len(), 3);
    for (i, (stored, sent)) in read.iter().zip(&evs).enumerate() {
        assert_eq!(stored.event_id, sent.event_id);
        assert_eq!(stored.payload, sent.payload);
        assert_eq!(stored.metadata, meta);
        assert_eq!(stored.stream_version, i as u64 + 1);
        assert_eq!(stored.position, Position(i as u64 + 1));
        assert_eq!(stored.stream_type, "thing");
        assert_eq!(stored.event_type, "Added");
        assert_eq!(stored.schema_version, 1);
    }
    assert_eq!(store.head().await.unwrap(), Position(3));
    assert_eq!(store.stream_version(&sid("a-1")).await.unwrap(), 3);
    assert_eq!(store.stream_version(&sid("nope")).await.unwrap(), 0);

    let out = store
        .append(req("b-1", ExpectedVersion::Any, events(2, "Added")))
        .await
        .unwrap();
    assert_eq!((out.first_version, out.stream_version), (1, 2));
    assert_eq!(
        (out.first_position, out.position),
        (Position(4), Position(5))
    );
    let all = store
        .read_all(Position::START, 100, &EventFilter::all())
        .await
        .unwrap();
    let positions: Vec<u64> = all.iter().map(|e| e.position.0).collect();
    assert_eq!(positions, vec![1, 2, 3, 4, 5]);
}

/// Expected versions are enforced; a conflict is typed and writes nothing.
pub async fn expected_version_rules<S: EventStore>(store: S) {
    store
        .append(req("s-1", ExpectedVersion::NoStream, events(2, "E")))
        .await
        .unwrap();
    for expected in [
        ExpectedVersion::NoStream,
        ExpectedVersion::Exact(1),
        ExpectedVersion::Exact(3),
    ] {
        match store.append(req("s-1", expected, events(1, "E"))).await {
            Err(StoreError::Conflict {
                stream_id,
                expected: e,
                actual,
            }) => {
                assert_eq!(stream_id, sid("s-1"));
                assert_eq!(e, expected);
                assert_eq!(actual, 2);
            }
            other => panic!("expected a conflict for {expected}, got {other:?}"),
        }
    }
    match store
        .append(req("s-2", ExpectedVersion::Exact(1), events(1, "E")))
        .await
    {
        Err(StoreError::Conflict { actual: 0, .. }) => {}
        other => panic!("expected a conflict on a missing stream, got {other:?}"),
    }
    assert_eq!(store.head().await.unwrap(), Position(2));
    assert_eq!(store.stream_version(&sid("s-1")).await.unwrap(), 2);

    let out = store
        .append(req("s-1", ExpectedVersion::Exact(2), events(1, "E")))
        .await
        .unwrap();
    assert_eq!(out.stream_version, 3);
    let out = store
        .append(req("s-1", ExpectedVersion::Any, events(1, "E")))
        .await
        .unwrap();
    assert_eq!(out.stream_version, 4);
    assert_eq!(out.position, Position(4));
}

/// Appending the same events again returns the first outcome and writes
/// nothing; reusing ids in another shape is refused.
pub async fn idempotent_retries<S: EventStore>(store: S) {
    let evs = events(2, "E");
    let first = store
        .append(req("i-1", ExpectedVersion::NoStream, evs.clone()))
        .await
        .unwrap();
    store
        .append(req("i-2", ExpectedVersion::NoStream, events(1, "E")))
        .await
        .unwrap();
    // The retry carries a stale expected version: still the original outcome.
    let again = store
        .append(req("i-1", ExpectedVersion::NoStream, evs.clone()))
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.position, first.position);
    assert_eq!(again.first_position, first.first_position);
    assert_eq!(again.stream_version, first.stream_version);
    assert_eq!(store.head().await.unwrap(), Position(3));

    // Same ids on another stream, or only part of the batch: refused.
    match store
        .append(req("i-3", ExpectedVersion::Any, evs.clone()))
        .await
    {
        Err(StoreError::EventIdReused { event_id }) => assert_eq!(event_id, evs[0].event_id),
        other => panic!("expected EventIdReused, got {other:?}"),
    }
    let mut mixed = events(1, "E");
    mixed.push(evs[1].clone());
    match store.append(req("i-1", ExpectedVersion::Any, mixed)).await {
        Err(StoreError::EventIdReused { event_id }) => assert_eq!(event_id, evs[1].event_id),
        other => panic!("expected EventIdReused, got {other:?}"),
    }
    assert_eq!(store.head().await.unwrap(), Position(3));
    assert_eq!(store.stream_version(&sid("i-3")).await.unwrap(), 0);
}

/// Bad input is refused with a typed error and writes nothing.
pub async fn bad_input_changes_nothing<S: EventStore>(store: S) {
    assert!(StreamId::new("").is_err());
    assert!(StreamId::new("has space").is_err());
    assert!(StreamId::new("dot.ted").is_err());
    assert!(StreamId::new("x".repeat(201)).is_err());

    type Case = (AppendRequest, fn(&StoreError) -> bool);
    let cases: Vec<Case> = vec![
        (req("b-1", ExpectedVersion::Any, vec![]), |e| {
            matches!(e, StoreError::Input(InputError::EmptyAppend))
        }),
        (
            AppendRequest::new(sid("b-1"), "bad type", ExpectedVersion::Any, events(1, "E")),
            |e| matches!(e, StoreError::Input(InputError::InvalidTypeName { .. })),
        ),
        (
            req("b-1", ExpectedVersion::Any, events(1, "no.dots")),
            |e| matches!(e, StoreError::Input(InputError::InvalidTypeName { .. })),
        ),
        (req("b-1", ExpectedVersion::Any, events(1_001, "E")), |e| {
            matches!(
                e,
                StoreError::Input(InputError::TooManyEvents {
                    count: 1_001,
                    max: 1_000
                })
            )
        }),
        (
            req(
                "b-1",
                ExpectedVersion::Any,
                vec![NewEvent::new(
                    "E",
                    json!({ "blob": "x".repeat(300 * 1024) }),
                )],
            ),
            |e| matches!(e, StoreError::Input(InputError::PayloadTooLarge { .. })),
        ),
        (
            {
                let e = NewEvent::new("E", json!({}));
                req("b-1", ExpectedVersion::Any, vec![e.clone(), e])
            },
            |e| matches!(e, StoreError::Input(InputError::RepeatedEventId { .. })),
        ),
        (
            req(
                "b-1",
                ExpectedVersion::Any,
                vec![NewEvent::new("E", json!({})).with_schema_version(0)],
            ),
            |e| matches!(e, StoreError::Input(InputError::InvalidSchemaVersion)),
        ),
    ];
    for (request, is_expected) in cases {
        let err = store
            .append(request.clone())
            .await
            .expect_err("bad input must be refused");
        assert!(is_expected(&err), "wrong error {err:?} for {request:?}");
    }
    assert_eq!(store.head().await.unwrap(), Position::START);
    assert!(store
        .read_all(Position::START, 10, &EventFilter::all())
        .await
        .unwrap()
        .is_empty());
}

/// Text the backend cannot hold (U+0000 in any string of a payload, as a
/// value or an object key at any depth, or in metadata) and payloads nested
/// too deep to read back are refused with a typed error naming the field,
/// before anything is written. Look-alikes (a backslash followed by `u0000`, the
/// deepest nesting allowed) are stored and read back unchanged.
pub async fn unstorable_text_is_refused<S: EventStore>(store: S) {
    fn nested(levels: usize) -> serde_json::Value {
        let mut v = json!([]);
        for _ in 1..levels {
            v = json!([v]);
        }
        v
    }
    let cases: Vec<(NewEvent, &str)> = vec![
        (
            NewEvent::new("E", json!({ "customer_id": "a\u{0}b", "n": 1 })),
            "payload.customer_id",
        ),
        (
            NewEvent::new(
                "E",
                json!({ "lines": [{ "name": "mug" }, { "name": "\u{0}" }] }),
            ),
            "payload.lines[1].name",
        ),
        (
            NewEvent::new("E", json!({ "ok": { "bad\u{0}key": 1 } })),
            "payload.ok[\"bad\\u0000key\"]",
        ),
        (
            NewEvent::new("E", json!({ "odd key": ["x", ["\u{0}"]] })),
            "payload[\"odd key\"][1][0]",
        ),
        (NewEvent::new("E", json!("\u{0}")), "payload"),
        (
            NewEvent::new("E", json!({})).with_metadata(Metadata::new().with_actor("al\u{0}ice")),
            "metadata.actor",
        ),
    ];
    for (event, expected_field) in cases {
        // The bad event second in its append: the whole append is refused.
        let id = event.event_id;
        let request = req(
            "nul-1",
            ExpectedVersion::Any,
            vec![NewEvent::new("E", json!({ "fine": true })), event],
        );
        match store.append(request).await {
            Err(StoreError::Input(InputError::NulCharacter { event_id, field })) => {
                assert_eq!(event_id, id);
                assert_eq!(field, expected_field);
            }
            other => panic!("expected NulCharacter at {expected_field}, got {other:?}"),
        }
    }
    match store
        .append(req(
            "deep-1",
            ExpectedVersion::Any,
            vec![NewEvent::new(
                "E",
                json!({ "a": nested(crate::MAX_JSON_DEPTH) }),
            )],
        ))
        .await
    {
        Err(StoreError::Input(InputError::JsonTooDeep {
            field, depth, max, ..
        })) => {
            assert_eq!(
                (depth, max),
                (crate::MAX_JSON_DEPTH + 1, crate::MAX_JSON_DEPTH)
            );
            let expected = format!("payload.a{}", "[0]".repeat(crate::MAX_JSON_DEPTH - 1));
            assert_eq!(field, expected);
        }
        other => panic!("expected JsonTooDeep, got {other:?}"),
    }
    assert_eq!(store.head().await.unwrap(), Position::START);

    // Look-alikes are fine and read back unchanged.
    let fine = vec![
        NewEvent::new("E", json!({ "text": "a\\u0000b", "k\\u0000": 1 })),
        NewEvent::new("E", nested(crate::MAX_JSON_DEPTH)),
    ];
    store
        .append(req("nul-2", ExpectedVersion::NoStream, fine.clone()))
        .await
        .expect("look-alikes and the deepest allowed payload are stored");
    let read = store.read_stream(&sid("nul-2"), 1, 10).await.unwrap();
    let payloads: Vec<_> = read.iter().map(|e| e.payload.clone()).collect();
    assert_eq!(
        payloads,
        vec![fine[0].payload.clone(), fine[1].payload.clone()]
    );
    let raw = store.read_stream_raw(&sid("nul-2"), 1, 10).await.unwrap();
    let decoded: serde_json::Value = serde_json::from_str(&raw[1].payload).unwrap();
    assert_eq!(decoded, fine[1].payload);
}

/// Global reads filter by stream type and event type and page by position.
pub async fn read_all_filters_and_pages<S: EventStore>(store: S) {
    store
        .append(AppendRequest::new(
            sid("o-1"),
            "order",
            ExpectedVersion::Any,
            vec![
                NewEvent::new("Placed", json!({})),
                NewEvent::new("Paid", json!({})),
            ],
        ))
        .await
        .unwrap();
    store
        .append(AppendRequest::new(
            sid("p-1"),
            "product",
            ExpectedVersion::Any,
            vec![NewEvent::new("Registered", json!({}))],
        ))
        .await
        .unwrap();
    store
        .append(AppendRequest::new(
            sid("o-2"),
            "order",
            ExpectedVersion::Any,
            vec![NewEvent::new("Placed", json!({}))],
        ))
        .await
        .unwrap();
    let pos = |v: Vec<crate::EventEnvelope>| v.iter().map(|e| e.position.0).collect::<Vec<_>>();
    let orders = store
        .read_all(Position::START, 10, &EventFilter::stream_types(["order"]))
        .await
        .unwrap();
    assert_eq!(pos(orders), vec![1, 2, 4]);
    let placed = store
        .read_all(Position::START, 10, &EventFilter::event_types(["Placed"]))
        .await
        .unwrap();
    assert_eq!(pos(placed), vec![1, 4]);
    let both = EventFilter {
        stream_types: vec!["order".into()],
        event_types: vec!["Paid".into(), "Registered".into()],
    };
    assert_eq!(
        pos(store.read_all(Position::START, 10, &both).await.unwrap()),
        vec![2]
    );
    assert_eq!(
        pos(store
            .read_all(Position(1), 2, &EventFilter::all())
            .await
            .unwrap()),
        vec![2, 3]
    );
    assert_eq!(
        pos(store.read_stream(&sid("o-1"), 2, 10).await.unwrap()),
        vec![2]
    );
    assert_eq!(
        pos(store.read_stream(&sid("o-1"), 1, 1).await.unwrap()),
        vec![1]
    );
    let found = store.events_by_id(&[Uuid::new_v4()]).await.unwrap();
    assert!(found.is_empty());
    let all = store
        .read_all(Position::START, 10, &EventFilter::all())
        .await
        .unwrap();
    let ids: Vec<Uuid> = vec![all[3].event_id, all[0].event_id];
    assert_eq!(pos(store.events_by_id(&ids).await.unwrap()), vec![1, 4]);

    // A filtered follower moves past events it does not want.
    let mut follower = crate::Follower::new(store.clone(), Position::START)
        .filter(EventFilter::stream_types(["product"]));
    let batch = follower.try_next_batch().await.unwrap().unwrap();
    assert_eq!(pos(batch), vec![3]);
    assert_eq!(follower.try_next_batch().await.unwrap(), None);
    assert_eq!(follower.position(), Position(4));
}

/// Waiting for the head wakes on an append, and times out otherwise.
pub async fn wait_for_head_wakes<S: EventStore>(store: S) {
    let head = store
        .wait_for_head(Position::START, Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(head, Position::START);
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .wait_for_head(Position::START, Duration::from_secs(30))
                .await
        })
    };
    // Give the waiter a chance to start waiting before the append; the
    // result does not depend on it (the head is read before waiting).
    tokio::task::yield_now().await;
    store
        .append(req("w-1", ExpectedVersion::Any, events(1, "E")))
        .await
        .unwrap();
    let woke = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("waiter woke within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(woke, Position(1));
}

/// Concurrent writers at the same expected version: exactly one wins.
pub async fn concurrent_writers_one_wins<S: EventStore>(store: S) {
    store
        .append(req("c-1", ExpectedVersion::NoStream, events(1, "E")))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append(req("c-1", ExpectedVersion::Exact(1), events(2, "E")))
                    .await
            })
        })
        .collect();
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(o) => {
                wins += 1;
                assert_eq!(o.stream_version, 3);
            }
            Err(StoreError::Conflict { actual: 3, .. }) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(wins, 1);
    let versions: Vec<u64> = store
        .read_stream(&sid("c-1"), 1, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(versions, vec![1, 2, 3]);
}

/// Generates one `#[tokio::test]` per conformance check for a store.
///
/// `$make` is an expression evaluating to a future of a fresh, empty store;
/// it is evaluated once per test.
#[macro_export]
macro_rules! store_conformance_tests {
    ($make:expr) => {
        $crate::store_conformance_tests!(@each $make;
            append_and_read_back,
            expected_version_rules,
            idempotent_retries,
            bad_input_changes_nothing,
            unstorable_text_is_refused,
            read_all_filters_and_pages,
            wait_for_head_wakes,
            concurrent_writers_one_wins);
    };
    (@each $make:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::testing::conformance::$name($make.await).await;
            }
        )*
    };
}
