//! `berth`: see `berth --help`, the README and `docs/`.

fn main() -> std::process::ExitCode {
    berth_node::cli::main()
}
