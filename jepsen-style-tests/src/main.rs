//! berth-jepsen: the chaos suite (issue 5). Not built yet; see `berth-bench` for the
//! benchmarks that share its cluster launcher.

fn main() {
    eprintln!("berth-jepsen: the chaos suite is not implemented yet (see docs/architecture.md)");
    std::process::exit(2);
}
