// Shared by the benchmarks: writes a result table into docs/benchmarks.md
// between `<!-- bench:NAME:start -->` and `<!-- bench:NAME:end -->`, when
// STRATA_BENCH_WRITE=1.

/// Replaces the named section of docs/benchmarks.md with `table`.
pub fn write_section(name: &str, table: &str, secs: u64) {
    if std::env::var("STRATA_BENCH_WRITE").as_deref() != Ok("1") {
        return;
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/benchmarks.md");
    let Ok(doc) = std::fs::read_to_string(path) else {
        eprintln!("no {path}; not writing results");
        return;
    };
    let start = format!("<!-- bench:{name}:start -->");
    let end = format!("<!-- bench:{name}:end -->");
    let (Some(a), Some(b)) = (doc.find(&start), doc.find(&end)) else {
        eprintln!("docs/benchmarks.md has no {start} … {end} section");
        return;
    };
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let stamp = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC");
    let body = format!(
        "{start}\nMeasured {stamp}, {cpus} cores, {secs} s per measurement.\n\n{table}{end}"
    );
    let updated = format!("{}{}{}", &doc[..a], body, &doc[b + end.len()..]);
    if let Err(e) = std::fs::write(path, updated) {
        eprintln!("could not write {path}: {e}");
    }
}
