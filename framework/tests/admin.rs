//! The admin building blocks against real Postgres and NATS: `verify`
//! checks up to one fixed position and can run while the system writes;
//! `import` refuses a file it cannot hold before writing anything.

mod common;

use std::time::Duration;

use common::{CounterEvent, Totals};
use strata::admin::{execute, AdminArgs, AdminCommand, AdminContext, AdminError, EXIT_OK};
use strata::testing::{nats_client, test_database, unique_stream, wait_until};
use strata::{
    AppendRequest, CancellationToken, Checkpoints, EventEnvelope, EventFilter, EventStore,
    ExpectedVersion, InProcessBus, NewEvent, PgEventStore, PgViewStore, Position, Projector, Relay,
    StreamId,
};

fn inc(stream: &str, by: u64) -> AppendRequest {
    let (ty, payload) = strata::encode(&CounterEvent::Incremented { by }).unwrap();
    AppendRequest::new(
        StreamId::new(stream).unwrap(),
        "counter",
        ExpectedVersion::Any,
        vec![NewEvent::new(ty, payload)],
    )
}

async fn run(ctx: &AdminContext, command: AdminCommand) -> (Result<i32, AdminError>, String) {
    let mut out = Vec::new();
    let r = execute(
        AdminArgs {
            json: false,
            command,
        },
        ctx,
        &mut out,
        CancellationToken::new(),
    )
    .await;
    (r, String::from_utf8(out).unwrap())
}

fn verify_all() -> AdminCommand {
    AdminCommand::Verify {
        jetstream: true,
        projections: Vec::new(),
        no_projections: false,
    }
}

/// Verify while writers append, the relay publishes and a projector
/// applies: every run checks up to the head it read first, reports a view
/// that has not reached it (here one with no projector at all) as behind,
/// and finds no failure. Once quiet, everything but the idle view is ok.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_runs_under_load_up_to_one_position() {
    let db = test_database().await;
    let store = PgEventStore::new(db.pool.clone());
    let views = PgViewStore::new(db.pool.clone());
    let client = nats_client().await;
    let cfg = unique_stream();
    let shutdown = CancellationToken::new();

    let relay = Relay::new(store.clone(), views.clone(), client.clone(), cfg.clone());
    let relay_status = relay.status();
    let mut tasks = vec![tokio::spawn(relay.run(shutdown.clone()))];
    let projector = Projector::new(
        Totals::named("admin_totals"),
        InProcessBus::new(store.clone()),
        views.clone(),
    );
    let subscriber = projector.view().subscriber();
    tasks.push(tokio::spawn(projector.run(shutdown.clone())));
    let writing = CancellationToken::new();
    for w in 0..2u64 {
        let (store, writing) = (store.clone(), writing.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !writing.is_cancelled() {
                store
                    .append(inc(&format!("counter-{}", (i + w) % 7), i % 5 + 1))
                    .await
                    .unwrap();
                i += 1;
            }
        }));
    }
    let ctx = AdminContext::new(store.clone(), views.clone())
        .projection(|| Totals::named("admin_totals"))
        .projection(|| Totals::named("admin_idle"))
        .nats(client.clone(), cfg.clone());
    wait_until(
        Duration::from_secs(30),
        "events written, applied and published",
        || async {
            views.checkpoint(&subscriber).await.unwrap().position.0 > 20
                && relay_status.borrow().published.0 > 20
        },
    )
    .await;

    let mut moved = 0;
    for _ in 0..5 {
        let before = store.head().await.unwrap();
        let (code, out) = run(&ctx, verify_all()).await;
        let after = store.head().await.unwrap();
        assert_eq!(code.unwrap(), EXIT_OK, "{out}");
        assert!(!out.contains("FAIL"), "{out}");
        // A verify can be quicker than an append on a busy machine; the
        // writers must have moved the store during some of them.
        moved += usize::from(after > before);
        assert!(
            out.lines()
                .any(|l| l.starts_with("behind") && l.contains("admin_idle v1")),
            "{out}"
        );
        let upto: u64 = out
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("verified up to position "))
            .and_then(|l| l.split(' ').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no position in {out}"));
        assert!(before.0 <= upto && upto <= after.0, "{out}");
    }
    assert!(moved > 0, "the store never moved during a verify");

    writing.cancel();
    let head = loop {
        let head = store.head().await.unwrap();
        // The writers have stopped once the head stops moving for a wait.
        if store
            .wait_for_head(head, Duration::from_millis(300))
            .await
            .unwrap()
            == head
        {
            break head;
        }
    };
    wait_until(
        Duration::from_secs(30),
        "all applied and published",
        || async {
            views.checkpoint(&subscriber).await.unwrap().position == head
                && relay_status.borrow().published == head
        },
    )
    .await;
    let (code, out) = run(&ctx, verify_all()).await;
    assert_eq!(code.unwrap(), EXIT_OK, "{out}");
    let marks: Vec<&str> = out.lines().skip(1).map(|l| &l[..6]).collect();
    assert_eq!(
        marks,
        vec!["ok    ", "ok    ", "ok    ", "ok    ", "ok    ", "behind"],
        "{out}"
    );
    shutdown.cancel();
    for t in tasks {
        let _ = t.await;
    }
    let _ = async_nats::jetstream::new(client)
        .delete_stream(&cfg.stream)
        .await;
}

/// A stream version of 0 (or beyond what Postgres holds) in an import
/// file is a typed error naming the line, and nothing of the file is
/// imported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_refuses_a_version_zero_and_imports_nothing() {
    let source = test_database().await;
    let store = PgEventStore::new(source.pool.clone());
    store.append(inc("counter-1", 1)).await.unwrap();
    store.append(inc("counter-1", 2)).await.unwrap();
    let events: Vec<EventEnvelope> = store
        .read_all(Position::START, 10, &EventFilter::all())
        .await
        .unwrap();

    let target = test_database().await;
    let ctx = AdminContext::new(
        PgEventStore::new(target.pool.clone()),
        PgViewStore::new(target.pool.clone()),
    );
    for bad_version in [0, u64::MAX] {
        let mut bad = events[1].clone();
        bad.stream_id = StreamId::new("counter-2").unwrap();
        bad.event_id = uuid::Uuid::new_v4();
        bad.stream_version = bad_version;
        let lines: Vec<String> = [&events[0], &events[1], &bad]
            .iter()
            .map(|e| serde_json::to_string(e).unwrap())
            .collect();
        let file = std::env::temp_dir().join(format!(
            "strata-import-{}.jsonl",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(&file, lines.join("\n") + "\n").unwrap();
        let (r, _) = run(&ctx, AdminCommand::Import { file: file.clone() }).await;
        let _ = std::fs::remove_file(&file);
        match r {
            Err(AdminError::BadImport { line, reason }) => {
                assert_eq!(line, 3);
                assert!(reason.contains("counter-2"), "{reason}");
            }
            other => panic!("expected BadImport for version {bad_version}, got {other:?}"),
        }
    }
    let imported = PgEventStore::new(target.pool.clone());
    assert_eq!(imported.head().await.unwrap(), Position::START);
}
