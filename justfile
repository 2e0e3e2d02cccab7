# Everyday tasks. `just --list` shows them. CI runs `.ci/run`, which runs
# the same checks as `just ci`.

set dotenv-load := false

# Run the demo (in memory; set DATABASE_URL / NATS_URL to use the servers).
demo *ARGS:
    cargo run -p example-ecommerce -- demo {{ARGS}}

# All tests, against the local Postgres and NATS.
test:
    cargo test --workspace

# Formatting, lints and tests, as CI runs them.
ci:
    bash .ci/run

# The core without `postgres`, `nats` and `admin`, and each feature alone,
# built without warnings (`cargo check`), as CI checks them.
check-features:
    bash .ci/check-features

# Format the code.
fmt:
    cargo fmt --all

# Clippy with warnings as errors.
lint:
    cargo clippy --workspace --all-targets -- -D warnings

# API docs.
doc:
    cargo doc --workspace --no-deps

# Benchmarks against the real servers; results go into docs/benchmarks.md.
bench:
    STRATA_BENCH_WRITE=1 cargo bench -p strata --bench store
    STRATA_BENCH_WRITE=1 cargo bench -p strata --bench propagation
    STRATA_BENCH_WRITE=1 cargo bench -p strata --bench rebuild
    STRATA_BENCH_WRITE=1 cargo bench -p example-ecommerce --bench auth

# The shop's release build as separate processes under open-loop load
# (500, 1,000 and 2,000 commands/s), measured from outside: latency, command
# to visible, CPU per process; the mix, then only restocks. Results go into
# docs/benchmarks.md.
bench-shop:
    cargo build --release -p example-ecommerce
    STRATA_BENCH_WRITE=1 cargo bench -p example-ecommerce --bench shop
    STRATA_BENCH_WRITE=1 STRATA_BENCH_MIX=restock cargo bench -p example-ecommerce --bench shop

# The shop as separate processes against the local Postgres and NATS
# (Ctrl-C stops them all). Command API :8080, query API :8081. The APIs
# trust the development issuer in .strata-dev (made on first use); get a
# token with `just token ada customer`.
up:
    cargo build -p example-ecommerce
    ./target/debug/ecommerce migrate
    ./target/debug/ecommerce auth init --dir .strata-dev
    trap 'kill 0' INT TERM; \
    ./target/debug/ecommerce relay & \
    ./target/debug/ecommerce projector & \
    ./target/debug/ecommerce process-manager & \
    ./target/debug/ecommerce command-api --listen 127.0.0.1:8080 --dev-issuer .strata-dev & \
    ./target/debug/ecommerce query-api --listen 127.0.0.1:8081 --dev-issuer .strata-dev & \
    wait

# A bearer token from the development issuer, e.g. `just token ada customer`.
token SUB +ROLES:
    cargo run -q -p example-ecommerce -- auth token --dir .strata-dev --sub {{SUB}} $(for r in {{ROLES}}; do printf -- '--role %s ' "$r"; done)

# The admin command line, e.g. `just admin projections status`.
admin *ARGS:
    cargo run -q -p example-ecommerce -- admin {{ARGS}}
