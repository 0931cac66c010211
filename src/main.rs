//! The `igaflow` binary: parse, run, map the outcome to the documented exit code.

fn main() -> std::process::ExitCode {
    igaflow::engine::limit_allocator_arenas();
    std::process::ExitCode::from(igaflow::cli::main())
}
