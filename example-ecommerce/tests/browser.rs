//! The web page in a real browser: headless Chromium, driven through
//! chromedriver's W3C WebDriver HTTP API, against the demo binary. The page
//! places an order through its form and shows the order's status, the
//! stock and the dashboard change live, without a reload; a screenshot is
//! saved to `target/browser-test.png`.
//!
//! Needs Debian's `chromium` and `chromium-driver`; the test installs them
//! with apt-get when they are missing, and fails if it cannot.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The W3C name of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Kills a child process when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ensure_chromium() {
    let present = || Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists();
    if present() {
        return;
    }
    eprintln!("installing chromium and chromium-driver with apt-get (once)...");
    let run = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    let ok = run(&["update"]) && run(&["install", "-y", "chromium", "chromium-driver"]);
    assert!(
        ok && present(),
        "the browser test needs Chromium and chromedriver at {CHROMIUM} and {CHROMEDRIVER}, \
         and installing them failed; install them with \
         `apt-get update && apt-get install -y chromium chromium-driver` (as root)"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn workspace_target() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target")
}

/// A WebDriver session.
struct Browser {
    http: reqwest::Client,
    session: String,
}

impl Browser {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/{path}", self.session);
        let mut req = self.http.request(method, &url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
        let status = resp.status();
        let v: Value = resp.json().await.unwrap();
        assert!(status.is_success(), "{url}: {status} {v}");
        v["value"].clone()
    }

    async fn script(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    async fn click(&self, css: &str) {
        let el = self
            .call(
                reqwest::Method::POST,
                "element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
        let id = el[ELEMENT].as_str().unwrap().to_owned();
        self.call(
            reqwest::Method::POST,
            &format!("element/{id}/click"),
            Some(json!({})),
        )
        .await;
    }

    /// Polls `script` until `done` accepts its value (bounded).
    async fn wait_for(&self, what: &str, script: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.script(script).await;
            if done(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last: {v}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

const MUG_AVAILABLE: &str = "const r = document.getElementById('catalog-MUG-01'); \
     return r ? Number(r.querySelector('.available').textContent) : null;";
const MUG_UNITS_SOLD: &str = "const r = [...document.querySelectorAll('#dashboard tr')] \
     .find((r) => (r.dataset.key || '').endsWith(':MUG-01')); \
     return r ? Number(r.children[2].textContent) : 0;";
const ORDER_STATUS: &str = "return document.querySelector('#order-status').textContent;";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_places_an_order_and_follows_it_live() {
    ensure_chromium();
    let started = Instant::now();

    // The demo, on free ports; the page's proxy forwards to its command API.
    let (command_port, query_port) = (free_port(), free_port());
    let command_url = format!("http://127.0.0.1:{command_port}");
    let query_url = format!("http://127.0.0.1:{query_port}");
    let mut demo = Killed(
        Command::new(env!("CARGO_BIN_EXE_ecommerce"))
            .args(["demo", "--command-listen"])
            .arg(format!("127.0.0.1:{command_port}"))
            .arg("--query-listen")
            .arg(format!("127.0.0.1:{query_port}"))
            .env("ECOMMERCE_COMMAND_URL", &command_url)
            .env_remove("DATABASE_URL")
            .env_remove("NATS_URL")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the demo"),
    );
    // Wait until the scripted scenario is over and the demo serves.
    let stdout = demo.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("Serving.") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the demo did not start serving within 60 s");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let page = http.get(&query_url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("id=\"order-form\""));

    // chromedriver and a headless Chromium session.
    let driver_port = free_port();
    let _driver = Killed(
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={driver_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver"),
    );
    let driver = format!("http://127.0.0.1:{driver_port}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ready = match http.get(format!("{driver}/status")).send().await {
            Ok(r) => r
                .json::<Value>()
                .await
                .ok()
                .map(|v| v["value"]["ready"] == true),
            Err(_) => None,
        };
        if ready == Some(true) {
            break;
        }
        assert!(Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let profile = std::env::temp_dir().join(format!("strata-browser-{}", std::process::id()));
    let caps = json!({ "capabilities": { "alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--window-size=1280,900",
                format!("--user-data-dir={}", profile.display()),
            ],
        },
    }}});
    let resp: Value = http
        .post(format!("{driver}/session"))
        .json(&caps)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let session = resp["value"]["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("no WebDriver session: {resp}"))
        .to_owned();
    let browser = Browser {
        http: http.clone(),
        session: format!("{driver}/session/{session}"),
    };

    let outcome = async {
        browser
            .call(
                reqwest::Method::POST,
                "url",
                Some(json!({ "url": format!("{query_url}/") })),
            )
            .await;
        // The catalog arrives over /live/catalog.
        let before = browser
            .wait_for("the catalog", MUG_AVAILABLE, |v| v.is_u64())
            .await
            .as_u64()
            .unwrap();
        let sold_before = browser.script(MUG_UNITS_SOLD).await.as_u64().unwrap_or(0);

        // Place an order for one mug through the form.
        browser
            .script(
                "document.getElementById('order-sku').value = 'MUG-01'; \
                 document.getElementById('order-quantity').value = '1';",
            )
            .await;
        browser.click("#order-submit").await;
        browser
            .wait_for("the order to be confirmed", ORDER_STATUS, |v| {
                v == "confirmed"
            })
            .await;
        // The reservation shows in the catalog, live.
        browser
            .wait_for("the stock to go down", MUG_AVAILABLE, |v| {
                v.as_u64() == Some(before - 1)
            })
            .await;

        // Pay: shipped, and the dashboard counts the mug.
        browser.click("#order-pay").await;
        browser
            .wait_for("the order to ship", ORDER_STATUS, |v| v == "shipped")
            .await;
        browser
            .wait_for("the dashboard to count it", MUG_UNITS_SOLD, |v| {
                v.as_u64() == Some(sold_before + 1)
            })
            .await;

        let png = browser.call(reqwest::Method::GET, "screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        let path = workspace_target().join("browser-test.png");
        std::fs::create_dir_all(workspace_target()).unwrap();
        std::fs::write(&path, png).unwrap();
        println!("screenshot: {}", path.display());
    };
    // Run it, end the session either way, then report.
    let result = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(outcome)).await;
    let _ = http.delete(&browser.session).send().await;
    let _ = std::fs::remove_dir_all(&profile);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    println!("browser test took {:?}", started.elapsed());
}
