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
