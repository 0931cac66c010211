//! igaflow: identity governance batch jobs as set-based queries on DataFusion, with every
//! dataset a Delta Lake table. `main.rs` only calls [`cli::main`]; everything else is here so
//! tests and benchmarks use the same code as the binary.

pub mod cli;
pub mod config;
pub mod engine;
pub mod error;
pub mod generate;
pub mod input;
pub mod jobs;
pub mod notify;
pub mod store;
pub mod tasks;
