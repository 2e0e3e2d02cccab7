//! The web page in a real browser: headless Chromium, driven through
//! chromedriver's W3C WebDriver HTTP API, against the demo binary. The page
//! runs under the query API's content security policy (its script and
//! styles are files of their own). A demo customer signs in through the
//! page, places an order through its form and follows it in "My orders"
//! (confirmed, paid, shipped) while the stock changes live, without a
//! reload; the page shows no other customer's order. A demo staff member
//! then sees the sale on the dashboard. A screenshot is saved to
//! `target/browser-test.png`.
//!
//! Needs Debian's `chromium` and `chromium-driver`; the test installs them
//! with apt-get when they are missing, and fails if it cannot.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

mod support;

use support::{free_port, Proc, BIN};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The W3C name of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

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

    /// The browser's console log since the last call, if chromedriver
    /// serves it (a legacy endpoint, outside the W3C protocol).
    async fn log(&self) -> Option<Vec<Value>> {
        let resp = self
            .http
            .post(format!("{}/se/log", self.session))
            .json(&json!({ "type": "browser" }))
            .send()
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let v: Value = resp.json().await.ok()?;
        v["value"].as_array().cloned()
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
/// Mugs shipped, over every day of the dashboard as the page shows it.
const MUG_UNITS_SOLD: &str = "return [...document.querySelectorAll('#dashboard tr')] \
     .filter((r) => (r.dataset.key || '').endsWith(':MUG-01')) \
     .reduce((n, r) => n + Number(r.children[2].textContent), 0);";
const ORDER_ID: &str = "return document.querySelector('#order-id').textContent;";
const ORDER_STATUS: &str = "return document.querySelector('#order-status').textContent;";
const SIGNED_IN_AS: &str = "const el = document.querySelector('#auth-signed-in'); \
     return el.hidden ? null : document.querySelector('#auth-subject').textContent;";
/// The order ids of the rows of "My orders".
const MY_ORDER_IDS: &str = "return [...document.querySelectorAll('#my-orders tr')] \
     .map((r) => r.dataset.orderId);";
const PAGE_HTML: &str = "return document.documentElement.outerHTML;";

/// The status an order's row in "My orders" shows (`null`: no row).
fn my_order_status(order_id: &str) -> String {
    format!(
        "const r = document.getElementById('my-orders-{order_id}'); \
         return r ? r.querySelector('.status').textContent : null;"
    )
}

/// Whether the element `css` is shown (exists and is not hidden by an
/// ancestor's `hidden`).
fn shown(css: &str) -> String {
    format!(
        "const el = document.querySelector({css:?}); \
         return !!el && el.getClientRects().length > 0;"
    )
}

/// Signs a demo user in through the query API's demo sign-in; returns the
/// bearer token.
async fn demo_token(http: &reqwest::Client, query_url: &str, user: &str) -> String {
    let resp = http
        .post(format!("{query_url}/auth/demo-sign-in"))
        .json(&json!({ "user": user }))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 200, "demo sign-in as {user}: {v}");
    assert_eq!(v["token_type"], "Bearer", "{v}");
    assert_eq!(v["subject"], user, "{v}");
    v["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {v}"))
        .to_owned()
}

/// `GET {query_url}{path}` with a bearer token; the JSON answer.
async fn query(http: &reqwest::Client, query_url: &str, path: &str, token: &str) -> Value {
    let resp = http
        .get(format!("{query_url}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "GET {path}: {status} {v}");
    v
}

/// Waits (bounded) until the order reaches `status`, read as `token`.
async fn await_status(
    http: &reqwest::Client,
    query_url: &str,
    order_id: &str,
    token: &str,
    status: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let resp = http
            .get(format!("{query_url}/orders/{order_id}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let code = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if code.is_success() && v["data"]["status"] == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "order {order_id} did not become {status}; last: {code} {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Mugs shipped, over every day of the dashboard, read as staff.
async fn mugs_sold(http: &reqwest::Client, query_url: &str, staff_token: &str) -> u64 {
    let v = query(http, query_url, "/dashboard?limit=1000", staff_token).await;
    v["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no dashboard in {v}"))
        .iter()
        .filter(|d| d["sku"] == "MUG-01")
        .map(|d| d["units"].as_u64().unwrap_or(0))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_signs_in_orders_and_follows_only_their_orders_live() {
    ensure_chromium();
    let started = Instant::now();

    // The demo, on free ports; the page's proxy forwards to its command API.
    let (command_port, query_port) = (free_port(), free_port());
    let command_url = format!("http://127.0.0.1:{command_port}");
    let query_url = format!("http://127.0.0.1:{query_port}");
    let mut demo = Proc::spawn(
        "the demo",
        Command::new(BIN)
            .args(["demo", "--command-listen"])
            .arg(format!("127.0.0.1:{command_port}"))
            .arg("--query-listen")
            .arg(format!("127.0.0.1:{query_port}"))
            .env("ECOMMERCE_COMMAND_URL", &command_url)
            .env_remove("DATABASE_URL")
            .env_remove("NATS_URL")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped()),
    );
    // Wait until the scripted scenario is over and the demo serves.
    let stdout = demo.child.stdout.take().unwrap();
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
        .expect("the demo did not start serving within 60 s (its output above says why)");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();

    // The page comes with its content security policy, and has no inline
    // script or style for it to block.
    let page = http.get(&query_url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page
        .headers()
        .get("content-security-policy")
        .expect("the page has a content-security-policy header")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(html.contains("id=\"order-form\""));
    assert!(html.contains("<script src=\"/app.js\" defer></script>"));
    assert!(html.contains("<link rel=\"stylesheet\" href=\"/app.css\">"));
    assert!(
        !html.contains("<script>") && !html.contains("<style") && !html.contains("style="),
        "inline script or style in the page"
    );
    for (asset, kind) in [("/app.js", "text/javascript"), ("/app.css", "text/css")] {
        let resp = http
            .get(format!("{query_url}{asset}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{asset}");
        let ct = resp.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(ct.starts_with(kind), "{asset}: {ct}");
    }

    // Another customer's order, placed through the HTTP API: the page must
    // never show it. A tee, so the mugs' stock is the page's alone.
    let bob = demo_token(&http, &query_url, "bob").await;
    let resp = http
        .post(format!("{command_url}/orders"))
        .bearer_auth(&bob)
        .header("idempotency-key", uuid::Uuid::new_v4().to_string())
        .json(&json!({ "lines": [{ "sku": "TEE-01", "quantity": 1 }] }))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let placed: Value = resp.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "bob's order: {status} {placed}");
    let bobs_order = placed["order_id"].as_str().unwrap().to_owned();
    await_status(&http, &query_url, &bobs_order, &bob, "confirmed").await;
    // What staff saw on the dashboard before the page's order.
    let sam = demo_token(&http, &query_url, "sam").await;
    let sold_before = mugs_sold(&http, &query_url, &sam).await;

    // chromedriver and a headless Chromium session.
    let driver_port = free_port();
    let _driver = Proc::spawn(
        "chromedriver",
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={driver_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
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
        "goog:loggingPrefs": { "browser": "ALL" },
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--window-size=1280,1000",
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
        // Never bob's order, whatever the page shows.
        let no_foreign_order = |html: &Value, when: &str| {
            assert!(
                !html.as_str().unwrap().contains(&bobs_order),
                "{when}: the page shows another customer's order {bobs_order}"
            );
        };
        browser
            .call(
                reqwest::Method::POST,
                "url",
                Some(json!({ "url": format!("{query_url}/") })),
            )
            .await;
        // The catalog arrives over /live/catalog: the page's script runs
        // under the content security policy.
        let before = browser
            .wait_for("the catalog", MUG_AVAILABLE, |v| v.is_u64())
            .await
            .as_u64()
            .unwrap();
        // Anonymous: no orders, no dashboard, no ordering.
        assert_eq!(browser.script(&shown("#my-orders-section")).await, false);
        assert_eq!(browser.script(&shown("#dashboard-section")).await, false);
        assert_eq!(
            browser
                .script("return document.querySelector('#order-submit').disabled;")
                .await,
            true
        );

        // Sign in as ada with the demo's sign-in bar.
        browser
            .wait_for(
                "the demo users",
                &shown("#demo-users button[data-user=\"ada\"]"),
                |v| v == true,
            )
            .await;
        browser.click("#demo-users button[data-user=\"ada\"]").await;
        browser
            .wait_for("ada to be signed in", SIGNED_IN_AS, |v| v == "ada")
            .await;
        browser
            .wait_for("My orders", &shown("#my-orders-section"), |v| v == true)
            .await;
        assert_eq!(browser.script(&shown("#dashboard-section")).await, false);

        // Place an order for one mug through the form.
        browser
            .wait_for(
                "the form to be enabled",
                "return document.querySelector('#order-submit').disabled;",
                |v| v == false,
            )
            .await;
        browser
            .script(
                "document.getElementById('order-sku').value = 'MUG-01'; \
                 document.getElementById('order-quantity').value = '1';",
            )
            .await;
        browser.click("#order-submit").await;
        let order_id = browser
            .wait_for("the order's id", ORDER_ID, |v| {
                v.as_str().is_some_and(|s| s.len() == 36)
            })
            .await
            .as_str()
            .unwrap()
            .to_owned();
        browser
            .wait_for("the order to be confirmed", ORDER_STATUS, |v| {
                v == "confirmed"
            })
            .await;
        browser
            .wait_for(
                "the order to be confirmed in My orders",
                &my_order_status(&order_id),
                |v| v == "confirmed",
            )
            .await;
        // The reservation shows in the catalog, live.
        browser
            .wait_for("the stock to go down", MUG_AVAILABLE, |v| {
                v.as_u64() == Some(before - 1)
            })
            .await;
        no_foreign_order(&browser.script(PAGE_HTML).await, "confirmed");

        // Pay: shipped, in the panel and in My orders.
        browser.click("#order-pay").await;
        browser
            .wait_for("the order to ship", ORDER_STATUS, |v| v == "shipped")
            .await;
        browser
            .wait_for(
                "the order to ship in My orders",
                &my_order_status(&order_id),
                |v| v == "shipped",
            )
            .await;

        // My orders lists ada's orders and nobody else's.
        let ada = demo_token(&http, &query_url, "ada").await;
        let hers = query(&http, &query_url, "/customers/ada/orders", &ada).await;
        let hers: Vec<String> = hers["data"]["orders"]
            .as_array()
            .unwrap_or_else(|| panic!("no orders in {hers}"))
            .iter()
            .map(|o| o["order_id"].as_str().unwrap().to_owned())
            .collect();
        assert!(
            hers.contains(&order_id),
            "{order_id} is not ada's: {hers:?}"
        );
        let shown_ids = browser
            .wait_for("every order of ada in My orders", MY_ORDER_IDS, |v| {
                v.as_array().is_some_and(|a| a.len() >= hers.len())
            })
            .await;
        let shown_ids: Vec<String> = serde_json::from_value(shown_ids).unwrap();
        let mut sorted = shown_ids.clone();
        sorted.sort();
        let mut expected = hers.clone();
        expected.sort();
        assert_eq!(sorted, expected, "My orders shows exactly ada's orders");
        no_foreign_order(&browser.script(PAGE_HTML).await, "shipped");

        let png = browser.call(reqwest::Method::GET, "screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        let path = workspace_target().join("browser-test.png");
        std::fs::create_dir_all(workspace_target()).unwrap();
        std::fs::write(&path, png).unwrap();
        println!("screenshot: {}", path.display());

        // Sign out: ada's orders leave the page.
        browser.click("#sign-out").await;
        browser
            .wait_for("the sign-out", SIGNED_IN_AS, |v| v.is_null())
            .await;
        assert_eq!(browser.script(&shown("#my-orders-section")).await, false);
        let html = browser.script(PAGE_HTML).await;
        assert!(
            !html.as_str().unwrap().contains(&order_id),
            "ada's order is still on the page after signing out"
        );

        // Staff: the dashboard counts the mug, live; no order form.
        browser.click("#demo-users button[data-user=\"sam\"]").await;
        browser
            .wait_for("sam to be signed in", SIGNED_IN_AS, |v| v == "sam")
            .await;
        browser
            .wait_for("the dashboard", &shown("#dashboard-section"), |v| v == true)
            .await;
        browser
            .wait_for("the dashboard to count the mug", MUG_UNITS_SOLD, |v| {
                v.as_u64() == Some(sold_before + 1)
            })
            .await;
        assert_eq!(browser.script(&shown("#my-orders-section")).await, false);
        assert_eq!(
            browser
                .script("return document.querySelector('#order-submit').disabled;")
                .await,
            true
        );
        no_foreign_order(&browser.script(PAGE_HTML).await, "staff");

        // Nothing was refused by the content security policy.
        if let Some(log) = browser.log().await {
            let refused: Vec<&Value> = log
                .iter()
                .filter(|e| {
                    e["source"] == "security"
                        || e["message"]
                            .as_str()
                            .unwrap_or_default()
                            .contains("Content Security Policy")
                })
                .collect();
            assert!(refused.is_empty(), "the policy refused: {refused:?}");
        }
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
