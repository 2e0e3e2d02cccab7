//! The relay and projector survive a NATS restart and dropped Postgres
//! connections. The NATS server here is our own, on its own port, so
//! restarting it does not disturb tests running in parallel.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::jetstream;
use serde_json::json;
use strata::testing::{test_database, unique_stream, wait_until};
use strata::{
    AppendRequest, CancellationToken, EventFilter, EventStore, ExpectedVersion, NewEvent,
    PgEventStore, PgViewStore, Position, Relay, StreamId,
};

const NATS_SERVER: &str = "/usr/sbin/nats-server";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_nats(port: u16, dir: &Path) -> Child {
    assert!(
        Path::new(NATS_SERVER).exists(),
        "{NATS_SERVER} is missing: install Debian's nats-server package (apt-get install nats-server)"
    );
    Command::new(NATS_SERVER)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nats-server")
}

async fn wait_port(port: u16) {
    wait_until(
        Duration::from_secs(20),
        "nats-server to listen",
        || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        },
    )
    .await;
}

fn append(i: u64) -> AppendRequest {
    AppendRequest::new(
        StreamId::new(format!("thing-{}", i % 5)).unwrap(),
        "thing",
        ExpectedVersion::Any,
        vec![NewEvent::new("Happened", json!({ "i": i }))],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_survives_a_nats_restart_and_lost_db_connections() {
    let db = test_database().await;
    let store = PgEventStore::new(db.pool.clone());
    let views = PgViewStore::new(db.pool.clone());
    let dir = std::env::temp_dir().join(format!("strata-nats-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let mut server = start_nats(port, &dir);
    wait_port(port).await;
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(format!("nats://127.0.0.1:{port}"))
        .await
        .unwrap();
    let cfg = unique_stream();
    let relay = Relay::new(store.clone(), views.clone(), client.clone(), cfg.clone());
    let mut status = relay.status();
    let stop = CancellationToken::new();
    let task = tokio::spawn(relay.run(stop.clone()));

    let mut i = 0;
    for _ in 0..200 {
        store.append(append(i)).await.unwrap();
        i += 1;
    }
    let head = store.head().await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(20),
        status.wait_for(|s| s.published >= head),
    )
    .await
    .unwrap()
    .unwrap();

    // NATS goes down while events keep coming, then comes back.
    server.kill().unwrap();
    server.wait().unwrap();
    for _ in 0..200 {
        store.append(append(i)).await.unwrap();
        i += 1;
    }
    tokio::time::timeout(Duration::from_secs(20), status.wait_for(|s| !s.active))
        .await
        .expect("relay noticed the outage")
        .unwrap();
    let mut server = start_nats(port, &dir);
    wait_port(port).await;
    for _ in 0..200 {
        store.append(append(i)).await.unwrap();
        i += 1;
    }
    let head = store.head().await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(60),
        status.wait_for(|s| s.published >= head),
    )
    .await
    .expect("relay resumed after NATS came back")
    .unwrap();

    // Every Postgres connection of the test database is cut (as in a
    // database restart): the relay loses its lease, reconnects, resumes.
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
        .execute(&db.pool)
        .await
        .unwrap();
    for _ in 0..100 {
        // The store's own writer connection was cut too: retry like a client would.
        let req = append(i);
        let mut tries = 0;
        while let Err(e) = store.append(req.clone()).await {
            tries += 1;
            assert!(tries < 50, "append keeps failing: {e}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        i += 1;
    }
    let head = store.head().await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(60),
        status.wait_for(|s| s.published >= head),
    )
    .await
    .expect("relay resumed after the connections dropped")
    .unwrap();
    stop.cancel();
    task.await.unwrap();

    // Every event once, in store order.
    let js = jetstream::new(client);
    let mut stream = js.get_stream(&cfg.stream).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let events = store
        .read_all(Position::START, 10_000, &EventFilter::all())
        .await
        .unwrap();
    assert_eq!(last, events.len() as u64);
    for e in events.iter().step_by(37).chain(events.last()) {
        let m = stream.get_raw_message(e.position.0).await.unwrap();
        assert_eq!(
            m.headers
                .get(strata::nats::headers::EVENT_ID)
                .unwrap()
                .as_str(),
            e.event_id.to_string()
        );
    }
    server.kill().unwrap();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
