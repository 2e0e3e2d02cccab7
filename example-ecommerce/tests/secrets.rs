//! Secrets and transport, as a user meets them: the real `ecommerce`
//! binary never prints a password (in `--help`, in a failed connection's
//! error, in the demo's banner), PostgreSQL connections can require TLS,
//! and NATS takes a user and password, a token, an nkey or TLS, against a
//! private `nats-server` started for each test.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use example_ecommerce::config::{self, NatsArgs, ServerArgs};
use strata::testing::{nats_url, test_database, unique_stream, wait_until};

mod support;

use support::{free_port, BIN};

/// Every secret in these tests contains this; no output may.
const SECRET: &str = "sup3rs3cret";
const NATS_SERVER: &str = "/usr/sbin/nats-server";

/// Environment variables a test sets itself (CI exports some of them).
const SETTINGS: [&str; 12] = [
    "DATABASE_URL",
    "NATS_URL",
    "NATS_USER",
    "NATS_PASSWORD",
    "NATS_TOKEN",
    "NATS_NKEY",
    "NATS_CREDS",
    "NATS_TLS_CA",
    "NATS_TLS_CERT",
    "NATS_TLS_KEY",
    "NATS_REQUIRE_TLS",
    "STRATA_NO_MIGRATE",
];

/// Runs the binary with `env` (and debug logging, so that anything a
/// library logs is seen too); returns whether it succeeded and everything
/// it printed. Killed if it runs for more than a minute.
async fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for var in SETTINGS {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("ecommerce {args:?} ran for more than a minute"))
        .unwrap_or_else(|e| panic!("starting ecommerce {args:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn assert_no_secret(what: &str, output: &str) {
    assert!(
        !output.contains(SECRET),
        "{what} printed a secret:\n{output}"
    );
}

fn server_args(database_url: &str, nats_url: &str, nats: NatsArgs) -> ServerArgs {
    ServerArgs {
        database_url: database_url.to_owned(),
        nats_url: nats_url.to_owned(),
        stream: "STRATA".into(),
        subject_prefix: "strata".into(),
        no_migrate: false,
        nats,
    }
}

#[tokio::test]
async fn help_never_shows_a_secret_from_the_environment() {
    let db = format!("postgres://postgres:{SECRET}@127.0.0.1:5432/shop");
    let nats = format!("nats://app:{SECRET}@127.0.0.1:4222");
    let nkey = format!("SU{SECRET}");
    let env = [
        ("DATABASE_URL", db.as_str()),
        ("NATS_URL", nats.as_str()),
        ("NATS_USER", "app"),
        ("NATS_PASSWORD", SECRET),
        ("NATS_TOKEN", SECRET),
        ("NATS_NKEY", nkey.as_str()),
    ];
    let (ok, out) = run(&["--help"], &env).await;
    assert!(ok, "{out}");
    assert_no_secret("ecommerce --help", &out);
    for sub in [
        "demo",
        "migrate",
        "command-api",
        "query-api",
        "relay",
        "projector",
        "process-manager",
        "admin",
    ] {
        let (ok, out) = run(&[sub, "--help"], &env).await;
        assert!(ok, "ecommerce {sub} --help failed:\n{out}");
        // The settings are listed, with their variables but not the values.
        for listed in ["DATABASE_URL", "NATS_URL", "NATS_PASSWORD", "NATS_TOKEN"] {
            assert!(out.contains(listed), "{sub} --help lacks {listed}:\n{out}");
        }
        assert_no_secret(&format!("ecommerce {sub} --help"), &out);
    }
}

#[tokio::test]
async fn a_failed_connection_names_the_url_without_its_password() {
    // A server that answers, with a database that does not exist.
    let missing_db = format!(
        "postgres://postgres:{SECRET}@127.0.0.1:5432/strata_missing_{}",
        uuid::Uuid::new_v4().simple()
    );
    let (ok, out) = run(&["migrate"], &[("DATABASE_URL", &missing_db)]).await;
    assert!(!ok, "migrate into a missing database succeeded:\n{out}");
    assert!(
        out.contains(
            "connecting to PostgreSQL at postgres://postgres:***@127.0.0.1:5432/strata_missing_"
        ),
        "{out}"
    );
    assert!(out.contains("does not exist"), "{out}");
    assert_no_secret("migrate (missing database)", &out);

    // Nothing listening at all (the pool retries for its 10 s timeout).
    let closed = format!(
        "postgres://postgres:{SECRET}@127.0.0.1:{}/shop",
        free_port()
    );
    let (ok, out) = run(&["migrate"], &[("DATABASE_URL", &closed)]).await;
    assert!(!ok, "migrate to a closed port succeeded:\n{out}");
    assert!(
        out.contains("connecting to PostgreSQL at postgres://postgres:***@127.0.0.1:"),
        "{out}"
    );
    assert_no_secret("migrate (closed port)", &out);

    // A misspelt parameter would be logged by the driver with its value:
    // it is refused by name.
    let misspelt = format!("postgres://postgres@127.0.0.1:5432/shop?pasword={SECRET}");
    let (ok, out) = run(&["migrate"], &[("DATABASE_URL", &misspelt)]).await;
    assert!(!ok, "{out}");
    assert!(out.contains("\"pasword\""), "{out}");
    assert_no_secret("migrate (misspelt parameter)", &out);

    // The demo's banner names both servers.
    let nats = format!("nats://app:{SECRET}@127.0.0.1:4222");
    let (ok, out) = run(
        &["demo", "--servers", "--exit"],
        &[("DATABASE_URL", &missing_db), ("NATS_URL", &nats)],
    )
    .await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("Strata demo on PostgreSQL (postgres://postgres:***@127.0.0.1:5432/")
            && out.contains("NATS JetStream (nats://app:***@127.0.0.1:4222)"),
        "{out}"
    );
    assert_no_secret("demo --servers", &out);
}

#[tokio::test]
async fn postgres_connections_can_require_tls_and_skip_it_on_loopback() {
    let db = test_database().await;
    let ssl: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let with = |mode: &str| {
        let sep = if db.url.contains('?') { '&' } else { '?' };
        format!("{}{sep}sslmode={mode}", db.url)
    };
    let encrypted = |store: strata::PgEventStore| async move {
        sqlx::query_scalar::<_, bool>("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(store.pool())
            .await
            .unwrap()
    };
    let nats = nats_url();
    if ssl == "on" {
        let store = config::pg(&server_args(&with("require"), &nats, NatsArgs::default()))
            .await
            .expect("sslmode=require connects to a server with TLS");
        assert!(encrypted(store).await, "sslmode=require, yet not encrypted");
        let plain = config::pg(&server_args(&with("disable"), &nats, NatsArgs::default()))
            .await
            .unwrap();
        assert!(!encrypted(plain).await, "sslmode=disable, yet encrypted");
        // A server on this machine, no sslmode named: no TLS (it protects
        // nothing on loopback and costs every statement).
        if std::env::var_os("PGSSLMODE").is_none() && !db.url.contains("sslmode") {
            let default = config::pg(&server_args(&db.url, &nats, NatsArgs::default()))
                .await
                .unwrap();
            assert!(
                !encrypted(default).await,
                "a loopback URL without sslmode, yet encrypted"
            );
        }
    } else {
        // This server has no TLS: requiring it must fail, and say why.
        let result = config::pg(&server_args(&with("require"), &nats, NatsArgs::default()))
            .await
            .map_err(|e| format!("{e:#}"));
        let msg = must_fail(
            result,
            "sslmode=require against a server without TLS connected",
        );
        assert!(msg.contains("TLS"), "{msg}");
    }
}

/// A `nats-server` of the test's own, with JetStream in a directory of its
/// own, killed (and the directory removed) when dropped.
struct PrivateNats {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl PrivateNats {
    async fn start(extra: &[&str]) -> Self {
        let dir = scratch_dir("nats");
        let port = free_port();
        let child = std::process::Command::new(NATS_SERVER)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.join("js"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {NATS_SERVER}: {e}"));
        let nats = PrivateNats { child, dir, port };
        wait_until(
            Duration::from_secs(15),
            "the private nats-server",
            || async {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            },
        )
        .await;
        nats
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn scratch_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("strata-{what}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Connects as the shop would, bounded; the error's full text on failure.
async fn connect(url: &str, auth: &NatsArgs) -> Result<async_nats::Client, String> {
    tokio::time::timeout(Duration::from_secs(20), config::connect_nats(url, auth))
        .await
        .expect("connecting (or failing) took more than 20 s")
        .map_err(|e| format!("{e:#}"))
}

/// The client can use JetStream: the relay's stream can be made.
async fn can_use_jetstream(client: async_nats::Client) {
    let js = async_nats::jetstream::new(client);
    unique_stream()
        .ensure(&js)
        .await
        .expect("JetStream answers an authenticated client");
}

/// The error of what must fail, or a panic saying `what` did not.
fn must_fail<T>(result: Result<T, String>, what: &str) -> String {
    match result {
        Ok(_) => panic!("{what}"),
        Err(e) => e,
    }
}

fn user(user: &str, password: &str) -> NatsArgs {
    NatsArgs {
        nats_user: Some(user.into()),
        nats_password: Some(password.into()),
        ..NatsArgs::default()
    }
}

#[tokio::test]
async fn nats_with_a_user_and_password() {
    let server = PrivateNats::start(&["--user", "app", "--pass", SECRET]).await;
    let url = server.url();

    let client = connect(&url, &user("app", SECRET))
        .await
        .expect("the right user and password connect");
    can_use_jetstream(client).await;

    // Without credentials, or with the wrong password: a clear error, at
    // once (not a background retry), that shows no password.
    let e = must_fail(
        connect(&url, &NatsArgs::default()).await,
        "no credentials connected",
    );
    assert!(e.contains("authorization violation"), "{e}");
    assert!(e.contains(&format!("connecting to NATS at {url}")), "{e}");
    let e = must_fail(
        connect(&url, &user("app", &format!("wrong-{SECRET}"))).await,
        "a wrong password connected",
    );
    assert!(e.contains("authorization violation"), "{e}");
    assert_no_secret("a refused NATS login", &e);
    // Credentials in the URL are redacted too.
    let in_url = format!("nats://app:wrong-{SECRET}@127.0.0.1:{}", server.port);
    let e = must_fail(
        connect(&in_url, &NatsArgs::default()).await,
        "a wrong password connected",
    );
    assert!(e.contains("authorization violation"), "{e}");
    assert!(e.contains("nats://app:***@127.0.0.1"), "{e}");
    assert_no_secret("a refused NATS login", &e);

    // A service with the wrong password exits with that error.
    let db = test_database().await;
    let wrong = format!("wrong-{SECRET}");
    let (ok, out) = run(
        &["process-manager"],
        &[
            ("DATABASE_URL", &db.url),
            ("NATS_URL", &url),
            ("NATS_USER", "app"),
            ("NATS_PASSWORD", &wrong),
        ],
    )
    .await;
    assert!(!ok, "{out}");
    assert!(out.contains("authorization violation"), "{out}");
    assert_no_secret("process-manager with a wrong NATS password", &out);
}

#[tokio::test]
async fn nats_with_a_token() {
    let token = format!("t0ken-{SECRET}");
    let server = PrivateNats::start(&["--auth", &token]).await;
    let with_token = NatsArgs {
        nats_token: Some(token.clone()),
        ..NatsArgs::default()
    };
    let client = connect(&server.url(), &with_token)
        .await
        .expect("the token connects");
    can_use_jetstream(client).await;
    let e = must_fail(
        connect(&server.url(), &NatsArgs::default()).await,
        "no token connected",
    );
    assert!(e.contains("authorization violation"), "{e}");
    assert_no_secret("a refused NATS token", &e);
}

#[tokio::test]
async fn nats_with_an_nkey() {
    let key = nkeys::KeyPair::new_user();
    let dir = scratch_dir("nkey");
    let conf = dir.join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "authorization {{ users = [ {{ nkey: \"{}\" }} ] }}\n",
            key.public_key()
        ),
    )
    .unwrap();
    let server = PrivateNats::start(&["-c", conf.to_str().unwrap()]).await;
    let with_seed = NatsArgs {
        nats_nkey: Some(key.seed().unwrap()),
        ..NatsArgs::default()
    };
    let client = connect(&server.url(), &with_seed)
        .await
        .expect("the nkey connects");
    can_use_jetstream(client).await;
    let other = NatsArgs {
        nats_nkey: Some(nkeys::KeyPair::new_user().seed().unwrap()),
        ..NatsArgs::default()
    };
    let e = must_fail(
        connect(&server.url(), &other).await,
        "an unknown nkey connected",
    );
    assert!(e.contains("authorization violation"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Makes a CA and a certificate for 127.0.0.1 signed by it with `openssl`;
/// returns (ca.pem, server.pem, server.key).
fn make_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509", "-days", "2", "-subj", "/CN=strata test CA"][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.pem"],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req", "-subj", "/CN=127.0.0.1"][..],
            &ec,
            &["-keyout", "server.key", "-out", "server.csr"],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-days",
        "2",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

#[tokio::test]
async fn nats_over_tls() {
    let dir = scratch_dir("tls");
    let (ca, cert, key) = make_certificates(&dir);
    let server = PrivateNats::start(&[
        "--tlscert",
        cert.to_str().unwrap(),
        "--tlskey",
        key.to_str().unwrap(),
    ])
    .await;
    let trusting = NatsArgs {
        nats_tls_ca: Some(ca),
        nats_require_tls: true,
        ..NatsArgs::default()
    };
    let client = connect(&server.url(), &trusting)
        .await
        .expect("TLS with the test CA connects");
    assert!(
        client.server_info().tls_required,
        "the server did not ask for TLS"
    );
    can_use_jetstream(client).await;

    // Without the CA the certificate is not trusted: a clear error, at once.
    let e = must_fail(
        connect(&server.url(), &NatsArgs::default()).await,
        "an untrusted certificate connected",
    );
    assert!(e.to_lowercase().contains("certificate"), "{e}");

    // --nats-require-tls refuses a server without TLS.
    let plain = PrivateNats::start(&[]).await;
    let e = must_fail(
        connect(
            &plain.url(),
            &NatsArgs {
                nats_require_tls: true,
                ..NatsArgs::default()
            },
        )
        .await,
        "--nats-require-tls connected to a server without TLS",
    );
    assert!(e.contains("connecting to NATS"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}
