//! `berth`: see `berth --help`, the README and `docs/`.

/// mimalloc instead of glibc's malloc: per-thread free lists without arena locks, and
/// no `mprotect`/`madvise` churn as glibc's thread arenas grow and shrink (measured in
/// docs/benchmarks.md, "Goal 1 — session 15").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    berth_node::cli::main()
}
