//! berth-jepsen: the chaos suite (issue 5) and the benchmark harness `berth-bench`
//! (issue 6) will live here. Nothing is implemented yet.

fn main() {
    eprintln!("berth-jepsen: the chaos suite is not implemented yet (see docs/architecture.md)");
    std::process::exit(2);
}
