//! The admin CLI, run as the real binary: status, events, export → import
//! into an empty database → verify, rebuilt views equal the originals.
//! Output is pinned by insta snapshots.

use std::time::Duration;

use example_ecommerce::app::LineRequest;
use serde_json::Value;
use strata::testing::{test_database, unique_stream, wait_until};
use strata::{
    AnyChangeFeed, CommandContext, Documents, EventStore, InProcessBus, PgEventStore, PgViewStore,
    Relay, Versions, ViewId,
};
use uuid::Uuid;

#[path = "../example-ecommerce/tests/support/mod.rs"]
mod support;

use example_ecommerce::runtime::VIEWS;
use support::InProcessShop;

fn admin(db_url: &str, stream: &strata::nats::StreamConfig, args: &[&str]) -> (i32, String) {
    let out = support::admin(db_url, stream, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        eprintln!(
            "admin {args:?} stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (out.status.code().unwrap_or(-1), stdout)
}

async fn all_docs(views: &PgViewStore) -> Vec<(String, Vec<(String, Value)>)> {
    let mut out = Vec::new();
    for name in VIEWS {
        let v = views.active_version(name, 1).await.unwrap();
        let docs = views
            .list(&ViewId::new(name, v).unwrap(), None, 100_000)
            .await
            .unwrap();
        out.push((
            name.to_owned(),
            docs.into_iter().map(|d| (d.key, d.doc)).collect(),
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_cli_export_import_verify_rebuild() {
    // A shop with a little history, views and a relay, on real servers.
    let db = test_database().await;
    let cfg = unique_stream();
    let store = PgEventStore::new(db.pool.clone());
    let views = PgViewStore::new(db.pool.clone());
    let bus = InProcessBus::new(store.clone());
    let InProcessShop {
        shop,
        statuses,
        shutdown,
        mut tasks,
    } = InProcessShop::start(&store, &bus, &views, &AnyChangeFeed::in_process(), &[]);
    let client = strata::testing::nats_client().await;
    tasks.push(tokio::spawn(
        Relay::new(store.clone(), views.clone(), client.clone(), cfg.clone()).run(shutdown.clone()),
    ));
    for (sku, stock) in [("MUG-01", 10), ("CAP-01", 2)] {
        shop.register_product(sku, sku, 1_000, CommandContext::system("test"))
            .await
            .unwrap();
        shop.restock(sku, stock, CommandContext::system("test"))
            .await
            .unwrap();
    }
    for (i, (sku, qty)) in [("MUG-01", 2), ("CAP-01", 3), ("MUG-01", 1), ("CAP-01", 1)]
        .iter()
        .enumerate()
    {
        let id = Uuid::from_u128(i as u128 + 1);
        shop.place_order(
            id,
            &format!("c{i}"),
            &[LineRequest {
                sku: (*sku).to_owned(),
                quantity: *qty,
            }],
            CommandContext::system("test"),
        )
        .await
        .unwrap();
    }
    // Settled: when every subscriber (the process manager too) has reached
    // the head, no reaction is pending.
    wait_until(Duration::from_secs(60), "the shop to settle", || {
        let (store, statuses) = (store.clone(), statuses.clone());
        async move {
            let head = store.head().await.unwrap();
            let subs = statuses.subscribers();
            subs.len() == 7 && subs.iter().all(|s| s.position >= head)
        }
    })
    .await;
    let head = store.head().await.unwrap();
    wait_until(Duration::from_secs(30), "the relay to catch up", || {
        let js = async_nats::jetstream::new(client.clone());
        let stream = cfg.stream.clone();
        async move {
            match js.get_stream(&stream).await {
                Ok(mut s) => s.info().await.map(|i| i.state.last_sequence).unwrap_or(0) >= head.0,
                Err(_) => false,
            }
        }
    })
    .await;
    shutdown.cancel();
    for t in tasks {
        let _ = t.await;
    }

    // Status and checks, as an operator sees them.
    let (code, status) = admin(&db.url, &cfg, &["projections", "status"]);
    assert_eq!(code, 0);
    insta::assert_snapshot!("projections_status", status);
    let (code, verify) = admin(&db.url, &cfg, &["verify", "--jetstream"]);
    assert_eq!(code, 0, "{verify}");
    insta::assert_snapshot!("verify", verify);
    let (code, shown) = admin(
        &db.url,
        &cfg,
        &[
            "--json",
            "events",
            "show",
            &format!("order-{}", Uuid::from_u128(2)),
        ],
    );
    assert_eq!(code, 0);
    let shown: Vec<Value> = shown
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    insta::assert_json_snapshot!("events_show_rejected_order", shown, {
        "[].event_id" => "[uuid]", "[].recorded_at" => "[time]", "[].metadata" => "[metadata]", "[].position" => "[position]"
    });
    let (code, letters) = admin(&db.url, &cfg, &["dead-letters", "list"]);
    assert_eq!(code, 0);
    insta::assert_snapshot!("dead_letters_empty", letters);
    let (code, _) = admin(&db.url, &cfg, &["events", "show", "order-nope"]);
    assert_eq!(code, 1, "an unknown stream is exit code 1");

    // Export, import into an empty database, verify, rebuild: same views.
    let file =
        std::env::temp_dir().join(format!("strata-export-{}.jsonl", Uuid::new_v4().simple()));
    let (code, out) = admin(&db.url, &cfg, &["export", file.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), format!("exported {} events", head.0));
    let target = test_database().await;
    let (code, out) = admin(&target.url, &cfg, &["import", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.trim(),
        format!("imported {} events (0 were already present)", head.0)
    );
    let (code, out) = admin(&target.url, &cfg, &["import", file.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        format!("imported 0 events ({} were already present)", head.0),
        "re-running is idempotent"
    );
    let (code, out) = admin(&target.url, &cfg, &["verify", "--no-projections"]);
    assert_eq!(code, 0, "{out}");
    let imported = PgEventStore::new(target.pool.clone());
    let (a, b) = (
        store
            .read_all(strata::Position::START, 10_000, &strata::EventFilter::all())
            .await
            .unwrap(),
        imported
            .read_all(strata::Position::START, 10_000, &strata::EventFilter::all())
            .await
            .unwrap(),
    );
    assert_eq!(
        a, b,
        "the same events at the same positions, times and metadata"
    );
    for name in VIEWS {
        let (code, out) = admin(&target.url, &cfg, &["projections", "rebuild", name]);
        assert_eq!(code, 0, "{out}");
    }
    let target_views = PgViewStore::new(target.pool.clone());
    assert_eq!(
        all_docs(&target_views).await,
        all_docs(&views).await,
        "rebuilt views equal the originals"
    );
    let (code, out) = admin(&target.url, &cfg, &["verify", "--no-projections"]);
    assert_eq!(code, 0, "{out}");
    let _ = std::fs::remove_file(&file);
    let _ = async_nats::jetstream::new(client)
        .delete_stream(&cfg.stream)
        .await;
}
