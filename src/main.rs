//! The `igaflow` binary: parse, run, map the outcome to the documented exit code.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(igaflow::cli::main())
}
