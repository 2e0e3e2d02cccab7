//! The shop measured from outside, as a client sees it.
//!
//! The release build of the shop runs as separate processes (`relay`,
//! `projector`, `process-manager`, `command-api`, `query-api`), as `just
//! up` starts them, on a fresh database and a unique JetStream stream,
//! trusting a development token issuer made in a temporary folder. After
//! 200 skus are registered and stocked, a load generator in this process
//! (tokio and reqwest, keep-alive connections) sends commands **open
//! loop**: each command has a scheduled send time at a steady rate, and its
//! latency is measured from that time, so a slow answer does not lower the
//! offered load or hide the wait it causes (coordinated omission).
//!
//! The mix: 70% `POST /inventory/{sku}/restock` over the 200 skus (as
//! staff), 20% `POST /orders` (1 or 2 lines, as one of 50 customers;
//! confirmed by the process manager), 10% `POST /orders/{id}/pay` of a
//! confirmed order (as its customer; a slot that finds no order known to be
//! confirmed restocks instead, and is counted). After
//! every successful write, a read-your-writes read (`GET /products/{sku}` or
//! `GET /orders/{id}`, `?min_position=` the command's `Strata-Position`):
//! "command → visible" is from the scheduled send to that read's answer.
//!
//! Per rate (500, 1,000 and 2,000 commands/s by default), after a warm-up
//! at the rate: the achieved rate and the errors; command and command →
//! visible latency (p50, p99, max); CPU seconds per 1,000 commands of each
//! process (`/proc/<pid>/stat`, utime + stime over the window; Postgres is
//! every process named `postgres*`, split by the process at the other end
//! of each backend's connection; NATS is `nats-server`); the process
//! manager's lag (placed → confirmed as the query API shows it, sampled
//! during the window, and how long after the window every order placed in
//! it is confirmed or rejected, with the CPU spent until then); and what
//! the services count meanwhile (time in the command handler, appends per
//! group commit, Postgres transactions, cache hits).
//!
//! `STRATA_BENCH_SECS` (default 20) measured per rate,
//! `STRATA_BENCH_WARMUP_SECS` (default 3), `STRATA_BENCH_RATES` (default
//! `500,1000,2000`), `STRATA_BENCH_RUST_LOG` (the processes' `RUST_LOG`,
//! default `warn`; their logs go to files in a temporary folder, kept with
//! `STRATA_BENCH_KEEP=1`); `STRATA_BENCH_MIX=restock` sends only restocks
//! (the scenario of the issue that asked for this bench) instead of the
//! mix; `STRATA_BENCH_WRITE=1` writes the tables into docs/benchmarks.md
//! (the mix and the restock-only run each into their own section).
//!
//! Run: `cargo build --release -p example-ecommerce` then `cargo bench -p
//! example-ecommerce --bench shop` (`just bench-shop` does both).

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use example_ecommerce::http::POSITION_HEADER;
use example_ecommerce::identity::DemoIdentity;
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::header::AUTHORIZATION;
use serde_json::{json, Value};
use strata::testing::{nats_url, test_database, unique_stream, TestDatabase};
use tokio::time::{sleep, sleep_until, Instant};
use uuid::Uuid;

include!("../../framework/benches/support/report.rs");

/// Skus in the catalog.
const SKUS: usize = 200;
/// Customers placing and paying orders.
const CUSTOMERS: usize = 50;
/// Requests in flight beyond which the generator sends nothing more and
/// counts the command as an error ("client limit"): a bound on sockets
/// and memory if the shop stops answering.
const MAX_IN_FLIGHT: usize = 4_096;
/// Longest wait for one answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the orders of a window to be confirmed.
const DRAIN_BOUND: Duration = Duration::from_secs(600);
/// The idle measurement's length.
const IDLE: Duration = Duration::from_secs(5);

/// The processes of the shop, in the order of the tables.
const PROCESSES: [&str; 5] = [
    "command-api",
    "query-api",
    "relay",
    "projector",
    "process-manager",
];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The release build of the shop's binary.
fn release_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("release").join("ecommerce");
    assert!(
        bin.is_file(),
        "no release build of the shop at {}: run `cargo build --release -p example-ecommerce` \
         first (`just bench-shop` builds it and runs this bench)",
        bin.display()
    );
    bin
}

// ---- processes --------------------------------------------------------------

/// A child process, killed when dropped.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every process this bench started; all are killed when the last handle
/// is dropped (also when the bench panics), or by [`Children::stop_all`]
/// (on Ctrl-C).
#[derive(Clone, Default)]
struct Children(Arc<Mutex<Vec<Proc>>>);

impl Children {
    fn push(&self, p: Proc) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(p);
    }

    fn stop_all(&self) {
        let procs: Vec<Proc> = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        drop(procs);
    }

    fn pids(&self) -> Vec<(&'static str, u32)> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|p| (p.name, p.child.id()))
            .collect()
    }

    /// Panics, with the end of its log, if a process has exited.
    fn check_alive(&self) {
        let mut procs = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for p in procs.iter_mut() {
            if let Ok(Some(status)) = p.child.try_wait() {
                let log = std::fs::read_to_string(&p.log).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(20)..];
                panic!(
                    "{} exited ({status}); the end of its log ({}):\n{}",
                    p.name,
                    p.log.display(),
                    tail.join("\n")
                );
            }
        }
    }

    /// Lines at WARN or ERROR in each process's log.
    fn warnings(&self) -> Vec<(&'static str, usize)> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|p| {
                let log = std::fs::read_to_string(&p.log).unwrap_or_default();
                let n = log
                    .lines()
                    .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                    .count();
                (p.name, n)
            })
            .collect()
    }
}

/// The shop's processes on one database and stream.
struct Launcher {
    bin: PathBuf,
    db_url: String,
    stream: String,
    prefix: String,
    issuer_dir: PathBuf,
    logs: PathBuf,
    rust_log: String,
}

impl Launcher {
    fn start(&self, name: &'static str, args: &[&str]) -> Proc {
        let log = self.logs.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("a log file");
        // Its Postgres connections carry its name (`pg_stat_activity`),
        // except those that name themselves (the store's writers, leases).
        let sep = if self.db_url.contains('?') { '&' } else { '?' };
        let db_url = format!("{}{sep}application_name={name}", self.db_url);
        let child = Command::new(&self.bin)
            .args(args)
            .args(["--stream", &self.stream, "--subject-prefix", &self.prefix])
            .env("DATABASE_URL", db_url)
            .env("NATS_URL", nats_url())
            .env("STRATA_DEV_ISSUER", &self.issuer_dir)
            .env("RUST_LOG", &self.rust_log)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc { name, child, log }
    }
}

// ---- the client -------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    Restock,
    Order,
    Pay,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Restock, Kind::Order, Kind::Pay];

    fn name(self) -> &'static str {
        match self {
            Kind::Restock => "restock",
            Kind::Order => "order",
            Kind::Pay => "pay",
        }
    }

    /// The command API's name for it (`strata_command_duration_seconds`).
    fn metric(self) -> &'static str {
        match self {
            Kind::Restock => "restock",
            Kind::Order => "place_order",
            Kind::Pay => "pay",
        }
    }
}

/// One command to send.
enum Op {
    Restock {
        sku: usize,
        quantity: u32,
    },
    Order {
        id: Uuid,
        customer: usize,
        lines: Vec<(usize, u32)>,
    },
    Pay {
        id: Uuid,
        customer: usize,
    },
}

impl Op {
    fn kind(&self) -> Kind {
        match self {
            Op::Restock { .. } => Kind::Restock,
            Op::Order { .. } => Kind::Order,
            Op::Pay { .. } => Kind::Pay,
        }
    }
}

/// A placed order: its position, and when its placement was answered.
#[derive(Clone)]
struct Placed {
    id: Uuid,
    customer: usize,
    position: u64,
    at: Instant,
}

/// What happened to one command of a measured window.
struct Record {
    kind: Kind,
    /// Scheduled send → answered, or why it failed.
    command: Result<Duration, String>,
    /// Scheduled send → the read-your-writes read answered, after a
    /// successful command.
    visible: Option<Result<Duration, String>>,
    /// When the last answer (command or read) came.
    done: Instant,
    placed: Option<Placed>,
}

struct Client {
    http: reqwest::Client,
    cmd: String,
    query: String,
    staff: String,
    operator: String,
    customers: Vec<String>,
    skus: Vec<String>,
    /// Placed orders not paid yet, oldest first.
    unpaid: Mutex<VecDeque<Placed>>,
    /// The latest placed order.
    latest: Mutex<Option<Placed>>,
    /// Orders placed at or before this position are settled: one placed
    /// there was seen confirmed, and the process manager works in the
    /// store's order (one at a time, one command after the other).
    settled_upto: AtomicU64,
    /// Commands sent and not finished (with their read).
    in_flight: AtomicUsize,
    /// Only restocks (`STRATA_BENCH_MIX=restock`), not the mix.
    restock_only: bool,
}

fn transport(e: reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".to_owned()
    } else if e.is_connect() {
        "connect".to_owned()
    } else {
        "transport".to_owned()
    }
}

impl Client {
    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends a command; its position, or why it failed.
    async fn write(&self, op: &Op) -> Result<u64, String> {
        let (url, bearer, body) = match op {
            Op::Restock { sku, quantity } => (
                format!("{}/inventory/{}/restock", self.cmd, self.skus[*sku]),
                &self.staff,
                json!({ "quantity": quantity }),
            ),
            Op::Order {
                id,
                customer,
                lines,
            } => (
                format!("{}/orders", self.cmd),
                &self.customers[*customer],
                json!({
                    "order_id": id,
                    "lines": lines
                        .iter()
                        .map(|(s, q)| json!({ "sku": self.skus[*s], "quantity": q }))
                        .collect::<Vec<_>>(),
                }),
            ),
            Op::Pay { id, customer } => (
                format!("{}/orders/{id}/pay", self.cmd),
                &self.customers[*customer],
                json!({}),
            ),
        };
        self.post(url, bearer, &body).await
    }

    async fn post(&self, url: String, bearer: &str, body: &Value) -> Result<u64, String> {
        let resp = self
            .http
            .post(url)
            .header(AUTHORIZATION, bearer)
            .json(body)
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status().as_u16();
        let position = resp
            .headers()
            .get(POSITION_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        // Read the body so that the connection is reused.
        let _ = resp.bytes().await;
        match (status, position) {
            (200 | 201, Some(p)) => Ok(p),
            (200 | 201, None) => Err("no Strata-Position".to_owned()),
            (s, _) => Err(s.to_string()),
        }
    }

    /// The read-your-writes read after `op` answered at `position`.
    async fn read_back(&self, op: &Op, position: u64) -> Result<(), String> {
        let (url, bearer) = match op {
            Op::Restock { sku, .. } => (
                format!(
                    "{}/products/{}?min_position={position}",
                    self.query, self.skus[*sku]
                ),
                &self.staff,
            ),
            Op::Order { id, customer, .. } | Op::Pay { id, customer } => (
                format!("{}/orders/{id}?min_position={position}", self.query),
                &self.customers[*customer],
            ),
        };
        let resp = self
            .http
            .get(url)
            .header(AUTHORIZATION, bearer)
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status().as_u16();
        let _ = resp.bytes().await;
        if status == 200 {
            Ok(())
        } else {
            Err(status.to_string())
        }
    }

    /// An order's status as the query API shows it now (`None`: not there yet).
    async fn order_status(&self, p: &Placed) -> Option<String> {
        let resp = self
            .http
            .get(format!("{}/orders/{}", self.query, p.id))
            .header(AUTHORIZATION, &self.customers[p.customer])
            .send()
            .await
            .ok()?;
        if resp.status().as_u16() != 200 {
            let _ = resp.bytes().await;
            return None;
        }
        let body: Value = resp.json().await.ok()?;
        body["data"]["status"].as_str().map(str::to_owned)
    }

    /// Whether the process manager has decided the order (confirmed or
    /// rejected; paid and shipped come after confirmation).
    async fn settled(&self, p: &Placed) -> bool {
        let settled = self.order_status(p).await.is_some_and(|s| s != "placed");
        if settled {
            self.settled_upto.fetch_max(p.position, Ordering::Relaxed);
        }
        settled
    }

    /// Sends `op` (scheduled at `at`) and its read; what happened.
    async fn run(&self, op: Op, at: Instant) -> Record {
        let kind = op.kind();
        let written = self.write(&op).await;
        let answered = Instant::now();
        let position = match written {
            Ok(p) => p,
            Err(e) => {
                return Record {
                    kind,
                    command: Err(format!("{} {e}", kind.name())),
                    visible: None,
                    done: answered,
                    placed: None,
                }
            }
        };
        let placed = match &op {
            Op::Order { id, customer, .. } => {
                let p = Placed {
                    id: *id,
                    customer: *customer,
                    position,
                    at: answered,
                };
                Self::lock(&self.unpaid).push_back(p.clone());
                *Self::lock(&self.latest) = Some(p.clone());
                Some(p)
            }
            _ => None,
        };
        let read = self.read_back(&op, position).await;
        let done = Instant::now();
        Record {
            kind,
            command: Ok(answered - at),
            visible: Some(
                read.map(|()| done - at)
                    .map_err(|e| format!("read after {}: {e}", kind.name())),
            ),
            done,
            placed,
        }
    }

    /// The next command of the mix. A payment goes to the oldest unpaid
    /// order known to be confirmed; with none, the slot restocks instead
    /// (counted in `fallbacks`).
    fn next_op(&self, rng: &mut StdRng, fallbacks: &mut usize) -> Op {
        let roll = if self.restock_only {
            0
        } else {
            rng.gen_range(0..100)
        };
        if roll >= 90 {
            let upto = self.settled_upto.load(Ordering::Relaxed);
            let mut unpaid = Self::lock(&self.unpaid);
            if unpaid.front().is_some_and(|p| p.position <= upto) {
                if let Some(p) = unpaid.pop_front() {
                    return Op::Pay {
                        id: p.id,
                        customer: p.customer,
                    };
                }
            }
            *fallbacks += 1;
        } else if roll >= 70 {
            let first = rng.gen_range(0..SKUS);
            let mut lines = vec![(first, rng.gen_range(1..=2))];
            if rng.gen_bool(0.5) {
                let second = (first + 1 + rng.gen_range(0..SKUS - 1)) % SKUS;
                lines.push((second, rng.gen_range(1..=2)));
            }
            return Op::Order {
                id: Uuid::new_v4(),
                customer: rng.gen_range(0..CUSTOMERS),
                lines,
            };
        }
        Op::Restock {
            sku: rng.gen_range(0..SKUS),
            quantity: rng.gen_range(1..=10),
        }
    }
}

/// Decrements the in-flight count when a command's task ends.
struct InFlight(Arc<Client>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

// ---- CPU and counters -------------------------------------------------------

/// CPU ticks (utime + stime) of a process, with its name.
fn proc_stat(pid: &str) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_owned();
    // After the name: state is field 3, utime 14, stime 15.
    let rest: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// The machine's busy, stolen and total ticks, all CPUs (`/proc/stat`).
/// Stolen: time the hypervisor gave the machine's CPUs to other guests
/// while they had work; it slows everything here without showing as busy.
fn machine_ticks() -> (u64, u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    let busy = get(0) + get(1) + get(2) + get(5) + get(6);
    let steal = get(7);
    (busy, steal, busy + steal + get(3) + get(4))
}

/// CPUs the machine has (the `cpuN` lines of `/proc/stat`).
fn machine_cpus() -> usize {
    std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count()
        .max(1)
}

/// CPU ticks per process group at one moment.
#[derive(Clone, Default)]
struct Cpu {
    ticks: BTreeMap<String, u64>,
    machine_busy: u64,
    machine_steal: u64,
    machine_all: u64,
}

/// The key of the Postgres backends serving `process`.
fn backends_of(process: &str) -> String {
    format!("Postgres for {process}")
}

/// The inodes of the sockets each process holds open.
fn socket_owners(pids: &[(&'static str, u32)]) -> BTreeMap<u64, &'static str> {
    let mut out = BTreeMap::new();
    for (name, pid) in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(link) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let inode = link
                .to_str()
                .and_then(|l| l.strip_prefix("socket:["))
                .and_then(|l| l.strip_suffix(']'))
                .and_then(|l| l.parse().ok());
            if let Some(inode) = inode {
                out.insert(inode, *name);
            }
        }
    }
    out
}

/// Local port → socket inode of the machine's TCP connections to port 5432.
fn postgres_client_sockets() -> BTreeMap<u16, u64> {
    let mut out = BTreeMap::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port = |addr: &str| {
                addr.rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            };
            let (Some(local), Some(remote), Some(inode)) = (
                f.get(1).and_then(|a| port(a)),
                f.get(2).and_then(|a| port(a)),
                f.get(9).and_then(|i| i.parse().ok()),
            ) else {
                continue;
            };
            if remote == 5432 {
                out.insert(local, inode);
            }
        }
    }
    out
}

/// `pids`: the shop's processes; `backends`: the Postgres backends of the
/// bench's database with their client's port. A backend's CPU counts for
/// the process that holds the other end of its connection.
fn cpu_snapshot(pids: &[(&'static str, u32)], backends: &[(i32, Option<i32>)]) -> Cpu {
    let mut ticks: BTreeMap<String, u64> = BTreeMap::new();
    for (name, pid) in pids {
        if let Some((_, t)) = proc_stat(&pid.to_string()) {
            *ticks.entry((*name).to_owned()).or_default() += t;
        }
    }
    let owners = socket_owners(pids);
    let sockets = postgres_client_sockets();
    for (pid, port) in backends {
        let owner = port
            .and_then(|p| u16::try_from(p).ok())
            .and_then(|p| sockets.get(&p))
            .and_then(|inode| owners.get(inode));
        if let (Some(name), Some((_, t))) = (owner, proc_stat(&pid.to_string())) {
            *ticks.entry(backends_of(name)).or_default() += t;
        }
    }
    if let Some((_, t)) = proc_stat("self") {
        ticks.insert("load generator".to_owned(), t);
    }
    let (mut postgres, mut nats) = (0, 0);
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            if let Some((comm, t)) = proc_stat(pid) {
                if comm.starts_with("postgres") {
                    postgres += t;
                } else if comm == "nats-server" {
                    nats += t;
                }
            }
        }
    }
    ticks.insert("Postgres".to_owned(), postgres);
    ticks.insert("nats-server".to_owned(), nats);
    let (machine_busy, machine_steal, machine_all) = machine_ticks();
    Cpu {
        ticks,
        machine_busy,
        machine_steal,
        machine_all,
    }
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 if that fails).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A Prometheus text page as `name{labels}` → value.
async fn scrape(client: &Client, url: String) -> BTreeMap<String, f64> {
    let Ok(resp) = client
        .http
        .get(url)
        .header(AUTHORIZATION, &client.operator)
        .send()
        .await
    else {
        return BTreeMap::new();
    };
    let text = resp.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// Everything read at a window's start and end.
#[derive(Clone, Default)]
struct Snapshot {
    cpu: Cpu,
    commands: BTreeMap<String, f64>,
    queries: BTreeMap<String, f64>,
    head: i64,
    /// Transactions committed or rolled back in the bench's database.
    transactions: i64,
}

async fn snapshot(client: &Client, pids: &[(&'static str, u32)], db: &TestDatabase) -> Snapshot {
    let pids = pids.to_vec();
    let backends: Vec<(i32, Option<i32>)> = sqlx::query_as(
        "SELECT pid, client_port FROM pg_stat_activity WHERE datname = current_database()",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap_or_default();
    let cpu = tokio::task::spawn_blocking(move || cpu_snapshot(&pids, &backends))
        .await
        .unwrap_or_default();
    let commands = scrape(client, format!("{}/metrics", client.cmd)).await;
    let queries = scrape(client, format!("{}/metrics", client.query)).await;
    let head = sqlx::query_scalar::<_, i64>("SELECT position FROM strata_head WHERE id = 1")
        .fetch_one(&db.pool)
        .await
        .unwrap_or(0);
    let transactions = sqlx::query_scalar::<_, i64>(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap_or(0);
    Snapshot {
        cpu,
        commands,
        queries,
        head,
        transactions,
    }
}

/// CPU seconds `name` spent between two snapshots.
fn cpu_seconds(a: &Snapshot, b: &Snapshot, name: &str, ticks_per_sec: f64) -> f64 {
    // Saturating: a Postgres process that exits takes its ticks along.
    let t = b
        .cpu
        .ticks
        .get(name)
        .copied()
        .unwrap_or(0)
        .saturating_sub(a.cpu.ticks.get(name).copied().unwrap_or(0));
    t as f64 / ticks_per_sec
}

fn delta(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>, key: &str) -> f64 {
    b.get(key).copied().unwrap_or(0.0) - a.get(key).copied().unwrap_or(0.0)
}

// ---- one rate ---------------------------------------------------------------

/// What one rate's window measured.
struct RateRun {
    rate: u64,
    secs: f64,
    records: Vec<Record>,
    window_start: Instant,
    before: Snapshot,
    after: Snapshot,
    /// When every command of the window had its answer and its latest
    /// order was settled.
    drained: Snapshot,
    /// Placed → confirmed, sampled (see [`sample_confirmations`]).
    confirm_samples: Vec<Duration>,
    /// From the window's end until every order placed in it was settled.
    drain: Result<Duration, String>,
    /// Orders of the window the sweep after the drain found not settled.
    stragglers: usize,
    /// Payment slots with no order known to be confirmed (restocked instead).
    pay_fallbacks: usize,
}

/// How often the sampler takes the latest order as a sample.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// How often it asks about the oldest sample not yet confirmed.
const SAMPLE_POLL: Duration = Duration::from_millis(20);

/// Placed → confirmed as the query API shows it: during the window, every
/// [`SAMPLE_EVERY`] the latest placed order becomes a sample; the oldest
/// sample not yet settled is asked about every [`SAMPLE_POLL`] (the
/// process manager works in order, so the oldest settles first). After
/// the window, the pending samples are followed until they settle.
async fn sample_confirmations(
    client: Arc<Client>,
    window_start: Instant,
    window_end: Instant,
) -> Vec<Duration> {
    let mut out = Vec::new();
    let mut pending: VecDeque<Placed> = VecDeque::new();
    let mut next_sample = window_start;
    loop {
        let now = Instant::now();
        if now >= window_end + DRAIN_BOUND || (now >= window_end && pending.is_empty()) {
            return out;
        }
        if now < window_end && now >= next_sample {
            next_sample += SAMPLE_EVERY;
            let latest = Client::lock(&client.latest).clone();
            if let Some(p) = latest.filter(|p| p.at >= window_start) {
                if pending.back().is_none_or(|b| b.id != p.id) {
                    pending.push_back(p);
                }
            }
        }
        if let Some(oldest) = pending.front() {
            if client.settled(oldest).await {
                out.push(oldest.at.elapsed());
                pending.pop_front();
                continue;
            }
        }
        sleep(SAMPLE_POLL).await;
    }
}

/// From the window's end: waits until every command has its answer and
/// the latest placed order is settled; the moment it saw that.
async fn wait_drained(client: &Client, window_end: Instant) -> Result<Instant, String> {
    loop {
        let latest = Client::lock(&client.latest).clone();
        if latest.is_none() && client.in_flight.load(Ordering::Relaxed) == 0 {
            // No order placed (only restocks): drained once all answered.
            return Ok(Instant::now());
        }
        if let Some(p) = latest {
            if client.settled(&p).await
                && client.in_flight.load(Ordering::Relaxed) == 0
                && Client::lock(&client.latest).as_ref().map(|l| l.id) == Some(p.id)
            {
                return Ok(Instant::now());
            }
        }
        if Instant::now() > window_end + DRAIN_BOUND {
            return Err(format!(
                "not drained {} s after the window ({} commands in flight)",
                DRAIN_BOUND.as_secs(),
                client.in_flight.load(Ordering::Relaxed)
            ));
        }
        sleep(Duration::from_millis(10)).await;
    }
}

async fn run_rate(
    client: &Arc<Client>,
    pids: &[(&'static str, u32)],
    db: &TestDatabase,
    rate: u64,
    warmup: Duration,
    secs: u64,
) -> RateRun {
    let n_warm = rate * warmup.as_secs();
    let n_meas = rate * secs;
    let start = Instant::now() + Duration::from_millis(20);
    let window_start = start + warmup;
    let window_end = window_start + Duration::from_secs(secs);
    let records = Arc::new(Mutex::new(Vec::with_capacity(n_meas as usize)));
    let sampler = tokio::spawn(sample_confirmations(
        Arc::clone(client),
        window_start,
        window_end,
    ));
    let snaps = {
        let (client, pids, db) = (Arc::clone(client), pids.to_vec(), db.clone());
        tokio::spawn(async move {
            sleep_until(window_start).await;
            let before = snapshot(&client, &pids, &db).await;
            sleep_until(window_end).await;
            let after = snapshot(&client, &pids, &db).await;
            (before, after)
        })
    };
    let mut rng = StdRng::seed_from_u64(rate);
    let mut pay_fallbacks = 0;
    let period = 1.0 / rate as f64;
    for i in 0..n_warm + n_meas {
        let at = start + Duration::from_secs_f64(i as f64 * period);
        sleep_until(at).await;
        let measured = i >= n_warm;
        let mut fallbacks = 0;
        let op = client.next_op(&mut rng, &mut fallbacks);
        if measured {
            pay_fallbacks += fallbacks;
        }
        if client.in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
            if measured {
                Client::lock(&records).push(Record {
                    kind: op.kind(),
                    command: Err(format!("{} not sent: client limit", op.kind().name())),
                    visible: None,
                    done: Instant::now(),
                    placed: None,
                });
            }
            continue;
        }
        client.in_flight.fetch_add(1, Ordering::Relaxed);
        let guard = InFlight(Arc::clone(client));
        let records = Arc::clone(&records);
        tokio::spawn(async move {
            let record = guard.0.run(op, at).await;
            if measured {
                Client::lock(&records).push(record);
            }
            drop(guard);
        });
    }
    let drained = wait_drained(client, window_end).await;
    let drained_snapshot = snapshot(client, pids, db).await;
    let (before, after) = snaps.await.expect("snapshots");
    let confirm_samples = sampler.await.expect("sampler");
    let records: Vec<Record> = std::mem::take(&mut *Client::lock(&records));

    // Every order of the window: settled? (The process manager works in
    // order, so the latest one settling means the rest has; this checks.)
    let orders: Vec<Placed> = records.iter().filter_map(|r| r.placed.clone()).collect();
    let mut pending: Vec<Placed> = futures::stream::iter(orders)
        .map(|p| async move { (client.settled(&p).await, p) })
        .buffer_unordered(16)
        .filter_map(|(settled, p)| async move { (!settled).then_some(p) })
        .collect()
        .await;
    let stragglers = pending.len();
    let mut drain = drained.map(|at| at.saturating_duration_since(window_end));
    if stragglers > 0 {
        while !pending.is_empty() && Instant::now() < window_end + DRAIN_BOUND {
            let mut still = Vec::new();
            for p in pending {
                if !client.settled(&p).await {
                    still.push(p);
                }
            }
            pending = still;
            sleep(Duration::from_millis(50)).await;
        }
        drain = if pending.is_empty() {
            Ok(window_end.elapsed())
        } else {
            Err(format!(
                "{} orders of the window not settled {} s after it",
                pending.len(),
                DRAIN_BOUND.as_secs()
            ))
        };
    }
    RateRun {
        rate,
        secs: secs as f64,
        records,
        window_start,
        before,
        after,
        drained: drained_snapshot,
        confirm_samples,
        drain,
        stragglers,
        pay_fallbacks,
    }
}

// ---- reporting --------------------------------------------------------------

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms >= 1_000.0 {
        format!("{:.2} s", ms / 1e3)
    } else if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

/// p50 / p99 / max of `v` (sorted here).
fn spread(mut v: Vec<Duration>) -> [String; 3] {
    if v.is_empty() {
        // Nothing of the kind was sent (e.g. no orders in a restock-only run).
        return ["–".to_owned(), "–".to_owned(), "–".to_owned()];
    }
    v.sort_unstable();
    [
        ms(quantile(&v, 0.5)),
        ms(quantile(&v, 0.99)),
        ms(v.last().copied().unwrap_or_default()),
    ]
}

impl RateRun {
    fn ok(&self) -> usize {
        self.records.iter().filter(|r| r.command.is_ok()).count()
    }

    fn visible(&self) -> Vec<Duration> {
        self.visible_of(&Kind::ALL)
    }

    /// Command → visible of the commands of `kinds`.
    fn visible_of(&self, kinds: &[Kind]) -> Vec<Duration> {
        self.records
            .iter()
            .filter(|r| kinds.contains(&r.kind))
            .filter_map(|r| r.visible.as_ref()?.as_ref().ok().copied())
            .collect()
    }

    /// Command latencies of the commands of `kinds`.
    fn latencies_of(&self, kinds: &[Kind]) -> Vec<Duration> {
        self.records
            .iter()
            .filter(|r| kinds.contains(&r.kind))
            .filter_map(|r| r.command.as_ref().ok().copied())
            .collect()
    }

    /// Errors by kind, commands and reads.
    fn errors(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for r in &self.records {
            if let Err(e) = &r.command {
                *out.entry(e.clone()).or_default() += 1;
            }
            if let Some(Err(e)) = &r.visible {
                *out.entry(e.clone()).or_default() += 1;
            }
        }
        out
    }

    /// Successful commands per second, from the window's start to the
    /// last answer of its commands.
    fn achieved(&self) -> f64 {
        let last = self
            .records
            .iter()
            .filter(|r| r.command.is_ok())
            .map(|r| r.done)
            .max()
            .unwrap_or(self.window_start);
        let span = (last - self.window_start).as_secs_f64().max(self.secs);
        self.ok() as f64 / span
    }

    /// CPU seconds of `name` over the window per 1,000 successful commands.
    fn cpu_per_1000(&self, name: &str, ticks_per_sec: f64) -> f64 {
        cpu_seconds(&self.before, &self.after, name, ticks_per_sec)
            / (self.ok().max(1) as f64 / 1_000.0)
    }

    /// The same from the window's end until it was drained.
    fn drain_cpu_per_1000(&self, name: &str, ticks_per_sec: f64) -> f64 {
        cpu_seconds(&self.after, &self.drained, name, ticks_per_sec)
            / (self.ok().max(1) as f64 / 1_000.0)
    }

    /// The machine's busy CPUs over the window, the CPUs the host took
    /// (steal), and how many CPUs in all.
    fn machine_busy(&self) -> (f64, f64, f64) {
        let (a, b) = (&self.before.cpu, &self.after.cpu);
        let all = (b.machine_all - a.machine_all).max(1) as f64;
        let cpus = machine_cpus() as f64;
        (
            (b.machine_busy - a.machine_busy) as f64 / all * cpus,
            (b.machine_steal - a.machine_steal) as f64 / all * cpus,
            cpus,
        )
    }

    fn handler_mean(&self, kind: Kind) -> String {
        let (a, b) = (&self.before.commands, &self.after.commands);
        let sum = delta(
            a,
            b,
            &format!(
                "strata_command_duration_seconds_sum{{kind=\"{}\"}}",
                kind.metric()
            ),
        );
        let n = delta(
            a,
            b,
            &format!(
                "strata_command_duration_seconds_count{{kind=\"{}\"}}",
                kind.metric()
            ),
        );
        if n > 0.0 {
            ms(Duration::from_secs_f64(sum / n))
        } else {
            "–".to_owned()
        }
    }
}

/// Cores each process kept busy between two snapshots `secs` apart.
fn idle_line(before: &Snapshot, after: &Snapshot, secs: f64, ticks_per_sec: f64) -> String {
    let cores = |name: &str| {
        let t = after
            .cpu
            .ticks
            .get(name)
            .copied()
            .unwrap_or(0)
            .saturating_sub(before.cpu.ticks.get(name).copied().unwrap_or(0));
        t as f64 / ticks_per_sec / secs
    };
    let parts: Vec<String> = PROCESSES
        .iter()
        .copied()
        .chain(["Postgres", "nats-server", "load generator"])
        .map(|name| format!("{name} {:.3}", cores(name)))
        .collect();
    let machine = (after.cpu.machine_busy - before.cpu.machine_busy) as f64
        / (after.cpu.machine_all - before.cpu.machine_all).max(1) as f64
        * machine_cpus() as f64;
    format!(
        "Idle (the shop running, no requests, {secs:.0} s), cores busy: {}; the whole machine {machine:.3}.",
        parts.join(", ")
    )
}

fn report(
    runs: &[RateRun],
    ticks_per_sec: f64,
    warmup: u64,
    restock_only: bool,
    idle: &str,
    warnings: &str,
) -> String {
    let mut t = String::new();
    let secs = runs.first().map_or(0.0, |r| r.secs);
    let mix = if restock_only {
        "only restocks (200 skus, staff)"
    } else {
        "70% restock (200 skus, staff), 20% orders (1–2 lines, 50 customers), 10% payments \
         of confirmed orders"
    };
    let _ = writeln!(
        t,
        "Open loop: {warmup} s warm-up at each rate, then {secs:.0} s measured. Mix: {mix}; \
         each write followed by its read-your-writes read. Latencies from the scheduled send \
         time.\n"
    );
    t.push_str(
        "| offered | achieved | errors | command p50 | p99 | max | command → visible p50 | p99 \
         | max | placed → confirmed (sampled): p50 / p99 / max (n) | all orders of the window \
         confirmed |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in runs {
        let errors: usize = r.errors().values().sum();
        let [c50, c99, cmax] = spread(r.latencies_of(&Kind::ALL));
        let [v50, v99, vmax] = spread(r.visible());
        let [s50, s99, smax] = spread(r.confirm_samples.clone());
        let drain = match &r.drain {
            Ok(d) => format!("{} after the window", ms(*d)),
            Err(e) => e.clone(),
        };
        let _ = writeln!(
            t,
            "| {}/s | {:.0}/s | {errors} | {c50} | {c99} | {cmax} | {v50} | {v99} | {vmax} | {s50} / {s99} / {smax} ({}) | {drain} |",
            r.rate,
            r.achieved(),
            r.confirm_samples.len(),
        );
    }

    t.push_str(
        "\nCPU seconds per 1,000 successful commands (each with its read), over the \
         measured window:\n\n| offered |",
    );
    let columns: Vec<&str> = PROCESSES
        .iter()
        .copied()
        .chain(["Postgres", "nats-server"])
        .collect();
    for c in &columns {
        let _ = write!(t, " {c} |");
    }
    t.push_str(" shop total | load generator | machine busy | taken by the host (steal) |\n|---:|");
    for _ in 0..columns.len() + 4 {
        t.push_str("---:|");
    }
    t.push('\n');
    for r in runs {
        let _ = write!(t, "| {}/s |", r.rate);
        let mut total = 0.0;
        for c in &columns {
            let v = r.cpu_per_1000(c, ticks_per_sec);
            total += v;
            let _ = write!(t, " {v:.3} |");
        }
        let (busy, steal, cpus) = r.machine_busy();
        let _ = writeln!(
            t,
            " **{total:.3}** | {:.3} | {busy:.2} of {cpus:.0} cores | {steal:.2} cores |",
            r.cpu_per_1000("load generator", ticks_per_sec),
        );
    }

    t.push_str(
        "\nThe Postgres column split by the process each backend served (the one \
         holding the other end of its connection); \"other\" is Postgres's background processes (WAL \
         writer, checkpointer, autovacuum), the bench's own connection and anything \
         else on the server:\n\n| offered |",
    );
    for c in PROCESSES {
        let _ = write!(t, " for {c} |");
    }
    t.push_str(" other |\n|---:|");
    for _ in 0..=PROCESSES.len() {
        t.push_str("---:|");
    }
    t.push('\n');
    for r in runs {
        let _ = write!(t, "| {}/s |", r.rate);
        let mut attributed = 0.0;
        for c in PROCESSES {
            let v = r.cpu_per_1000(&backends_of(c), ticks_per_sec);
            attributed += v;
            let _ = write!(t, " {v:.3} |");
        }
        let other = r.cpu_per_1000("Postgres", ticks_per_sec) - attributed;
        let _ = writeln!(t, " {:.3} |", other.max(0.0));
    }

    t.push_str(
        "\n| offered | restock p50 / p99 | order p50 / p99 | pay p50 / p99 | in the command \
         handler (mean): restock / order / pay | events per command | Postgres transactions \
         per command | appends per group commit | query cache hits / misses |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in runs {
        let kinds: Vec<String> = Kind::ALL
            .iter()
            .map(|k| {
                let [p50, p99, _] = spread(r.latencies_of(&[*k]));
                format!("{p50} / {p99}")
            })
            .collect();
        let handler: Vec<String> = Kind::ALL.iter().map(|k| r.handler_mean(*k)).collect();
        let (a, b) = (&r.before, &r.after);
        let appends = delta(&a.commands, &b.commands, "strata_store_appends_total");
        let groups = delta(&a.commands, &b.commands, "strata_store_group_commits_total");
        let hits = delta(&a.queries, &b.queries, "strata_cache_hits_total");
        let misses = delta(&a.queries, &b.queries, "strata_cache_misses_total");
        // A scrape that failed reads as zero: no figure rather than a
        // negative one.
        let cache = if hits < 0.0 || misses < 0.0 {
            "–".to_owned()
        } else {
            format!("{hits:.0} / {misses:.0}")
        };
        let _ = writeln!(
            t,
            "| {}/s | {} | {} | {} | {} | {:.2} | {:.1} | {:.2} | {cache} |",
            r.rate,
            kinds[0],
            kinds[1],
            kinds[2],
            handler.join(" / "),
            (b.head - a.head) as f64 / r.ok().max(1) as f64,
            (b.transactions - a.transactions) as f64 / r.ok().max(1) as f64,
            appends / groups.max(1.0),
        );
    }

    if !restock_only {
        t.push_str(
            "\nBy kind, command → visible; and the restocks and orders alone (every command \
             but the payments, which wait 20 ms for the example's gateway):\n\n\
             | offered | restock visible p50 / p99 | order visible p50 / p99 | pay visible p50 / p99 \
             | restocks and orders: command p50 / p99 | restocks and orders: visible p50 / p99 |\n\
             |---:|---:|---:|---:|---:|---:|\n",
        );
        for r in runs {
            let kinds: Vec<String> = Kind::ALL
                .iter()
                .map(|k| {
                    let [p50, p99, _] = spread(r.visible_of(&[*k]));
                    format!("{p50} / {p99}")
                })
                .collect();
            let no_pay = [Kind::Restock, Kind::Order];
            let [c50, c99, _] = spread(r.latencies_of(&no_pay));
            let [v50, v99, _] = spread(r.visible_of(&no_pay));
            let _ = writeln!(
                t,
                "| {}/s | {} | {} | {} | {c50} / {c99} | {v50} / {v99} |",
                r.rate, kinds[0], kinds[1], kinds[2],
            );
        }
    }

    t.push('\n');
    for r in runs {
        let errors = r.errors();
        let counts: Vec<String> = Kind::ALL
            .iter()
            .map(|k| {
                let n = r.records.iter().filter(|x| x.kind == *k).count();
                format!("{n} {}", k.name())
            })
            .collect();
        let _ = write!(
            t,
            "{}/s: {} commands ({}); ",
            r.rate,
            r.records.len(),
            counts.join(", ")
        );
        if errors.is_empty() {
            t.push_str("no errors");
        } else {
            let e: Vec<String> = errors.iter().map(|(k, n)| format!("{n} × {k}")).collect();
            let _ = write!(t, "errors: {}", e.join(", "));
        }
        if r.pay_fallbacks > 0 {
            let _ = write!(
                t,
                "; {} payment slots found no order known to be confirmed and restocked",
                r.pay_fallbacks
            );
        }
        let drain: Vec<(&str, f64)> = PROCESSES
            .iter()
            .copied()
            .chain(["Postgres", "nats-server"])
            .map(|c| (c, r.drain_cpu_per_1000(c, ticks_per_sec)))
            .collect();
        let total: f64 = drain.iter().map(|(_, v)| v).sum();
        let parts: Vec<String> = drain
            .iter()
            .filter(|(_, v)| *v >= 0.0005)
            .map(|(c, v)| format!("{c} {v:.3}"))
            .collect();
        let _ = write!(
            t,
            "; after the window, until drained, {total:.3} CPU s more per 1,000 ({})",
            parts.join(", ")
        );
        if r.stragglers > 0 {
            let _ = write!(
                t,
                "; {} orders not yet confirmed when the latest was",
                r.stragglers
            );
        }
        t.push_str(".\n");
    }
    let _ = writeln!(t, "\n{idle}");
    let _ = writeln!(t, "\nLog lines at WARN or ERROR: {warnings}.");
    t
}

// ---- setup ------------------------------------------------------------------

async fn wait_healthy(client: &Client, url: &str, children: &Children) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = client
            .http
            .get(format!("{url}/health"))
            .header(AUTHORIZATION, &client.operator)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            return;
        }
        children.check_alive();
        assert!(
            Instant::now() < deadline,
            "{url}/health not ready within 60 s"
        );
        sleep(Duration::from_millis(50)).await;
    }
}

/// Registers the skus and stocks each with 1,000,000 units; waits until the
/// catalog shows them.
async fn seed(client: &Client) {
    let positions: Vec<u64> = futures::stream::iter(0..SKUS)
        .map(|i| async move {
            let sku = &client.skus[i];
            let registered = client
                .post(
                    format!("{}/products", client.cmd),
                    &client.staff,
                    &json!({ "sku": sku, "name": format!("Bench {i}"), "price_cents": 500 + (i * 37) % 1500 }),
                )
                .await
                .unwrap_or_else(|e| panic!("registering {sku}: {e}"));
            let stocked = client
                .post(
                    format!("{}/inventory/{sku}/restock", client.cmd),
                    &client.staff,
                    &json!({ "quantity": 1_000_000 }),
                )
                .await
                .unwrap_or_else(|e| panic!("stocking {sku}: {e}"));
            registered.max(stocked)
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let last = positions.into_iter().max().unwrap_or(0);
    let resp = client
        .http
        .get(format!(
            "{}/products/{}?min_position={last}",
            client.query,
            client.skus[SKUS - 1]
        ))
        .send()
        .await
        .expect("the catalog");
    assert_eq!(resp.status().as_u16(), 200, "the catalog after seeding");
}

/// Drops the bench's database and stream.
async fn clean_up(db: TestDatabase, stream: &str) {
    let name = db.name.clone();
    db.pool.close().await;
    if let Ok(mut admin) =
        <sqlx::PgConnection as sqlx::Connection>::connect(&strata::testing::database_url()).await
    {
        let _ = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut admin)
            .await;
    }
    if let Ok(nats) = async_nats::connect(nats_url()).await {
        let _ = async_nats::jetstream::new(nats).delete_stream(stream).await;
    }
}

#[tokio::main]
async fn main() {
    let secs = env_u64("STRATA_BENCH_SECS", 20);
    let warmup = env_u64("STRATA_BENCH_WARMUP_SECS", 3);
    let rates: Vec<u64> = std::env::var("STRATA_BENCH_RATES")
        .unwrap_or_else(|_| "500,1000,2000".to_owned())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .filter(|r| *r > 0)
        .collect();
    assert!(!rates.is_empty(), "STRATA_BENCH_RATES names no rate");
    let restock_only = match std::env::var("STRATA_BENCH_MIX").as_deref() {
        Err(_) | Ok("mix") => false,
        Ok("restock") => true,
        Ok(other) => panic!("STRATA_BENCH_MIX is `mix` (the default) or `restock`, not `{other}`"),
    };
    let bin = release_binary();
    let ticks_per_sec = clock_ticks();

    let tmp = std::env::temp_dir().join(format!("strata-shop-bench-{}", Uuid::new_v4().simple()));
    let logs = tmp.join("logs");
    std::fs::create_dir_all(&logs).expect("a temporary folder");
    let identity = DemoIdentity::load_or_generate(&tmp.join("issuer")).expect("an issuer");

    let db = test_database().await;
    let cfg = unique_stream();
    let launcher = Launcher {
        bin,
        db_url: db.url.clone(),
        stream: cfg.stream.clone(),
        prefix: cfg.prefix.clone(),
        issuer_dir: tmp.join("issuer"),
        logs,
        rust_log: std::env::var("STRATA_BENCH_RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
    };
    let children = Children::default();
    {
        let children = children.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                children.stop_all();
                eprintln!("interrupted: stopped the shop's processes");
                std::process::exit(130);
            }
        });
    }
    // Kills them all when main ends, also by a panic.
    struct StopOnDrop(Children);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.stop_all();
        }
    }
    let _stop = StopOnDrop(children.clone());

    let (cmd_port, query_port) = (free_port(), free_port());
    let cmd_listen = format!("127.0.0.1:{cmd_port}");
    let query_listen = format!("127.0.0.1:{query_port}");
    // The store first: the others wait for the schema (migrated already).
    children.push(launcher.start("relay", &["relay"]));
    children.push(launcher.start("projector", &["projector"]));
    children.push(launcher.start("process-manager", &["process-manager"]));
    children.push(launcher.start("command-api", &["command-api", "--listen", &cmd_listen]));
    children.push(launcher.start("query-api", &["query-api", "--listen", &query_listen]));

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(MAX_IN_FLIGHT)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("an HTTP client");
    let bearer = |sub: &str, role: &str| format!("Bearer {}", identity.token(sub, &[role]));
    let client = Arc::new(Client {
        http,
        cmd: format!("http://{cmd_listen}"),
        query: format!("http://{query_listen}"),
        staff: bearer("bench-staff", "staff"),
        operator: bearer("bench-operator", "operator"),
        customers: (0..CUSTOMERS)
            .map(|c| bearer(&format!("customer-{c:02}"), "customer"))
            .collect(),
        skus: (0..SKUS).map(|i| format!("BENCH-{i:03}")).collect(),
        unpaid: Mutex::new(VecDeque::new()),
        latest: Mutex::new(None),
        settled_upto: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
        restock_only,
    });
    let started = Instant::now();
    wait_healthy(&client, &client.cmd, &children).await;
    wait_healthy(&client, &client.query, &children).await;
    eprintln!("shop healthy after {}", ms(started.elapsed()));
    seed(&client).await;
    eprintln!("seeded {SKUS} skus after {}", ms(started.elapsed()));

    let pids = children.pids();
    sleep(Duration::from_secs(1)).await;
    let before = snapshot(&client, &pids, &db).await;
    sleep(IDLE).await;
    let after = snapshot(&client, &pids, &db).await;
    let idle = idle_line(&before, &after, IDLE.as_secs_f64(), ticks_per_sec);
    eprintln!("{idle}");
    let mut runs = Vec::new();
    for rate in rates {
        let run = run_rate(&client, &pids, &db, rate, Duration::from_secs(warmup), secs).await;
        children.check_alive();
        let [c50, c99, _] = spread(run.latencies_of(&Kind::ALL));
        let [v50, v99, _] = spread(run.visible());
        let (busy, steal, _) = run.machine_busy();
        let no_pay = [Kind::Restock, Kind::Order];
        let [_, n99, _] = spread(run.latencies_of(&no_pay));
        let [_, m99, _] = spread(run.visible_of(&no_pay));
        eprintln!(
            "{rate}/s: achieved {:.0}/s, {} errors, command p50 {c50} p99 {c99}, visible p50 {v50} p99 {v99} \
             (without payments: command p99 {n99}, visible p99 {m99}); \
             {busy:.2} cores busy, {steal:.2} taken by the host",
            run.achieved(),
            run.errors().values().sum::<usize>(),
        );
        runs.push(run);
    }
    let warnings: Vec<String> = children
        .warnings()
        .into_iter()
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    children.stop_all();
    eprintln!("done after {}", ms(started.elapsed()));

    let table = report(
        &runs,
        ticks_per_sec,
        warmup,
        restock_only,
        &idle,
        &warnings.join(", "),
    );
    println!("{table}");
    write_section(
        if restock_only { "shop-restock" } else { "shop" },
        &table,
        secs,
    );

    clean_up(db, &cfg.stream).await;
    if std::env::var("STRATA_BENCH_KEEP").as_deref() == Ok("1") {
        eprintln!("logs kept in {}", tmp.display());
    } else {
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
