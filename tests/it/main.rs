//! Integration tests: the igaflow binary against real stores in temporary folders.

mod common;

mod anonymize;
mod bad_input;
mod cases;
mod concurrent;
mod crash;
mod dirty;
mod generate;
mod identities;
mod jobs;
mod notify;
mod orders;
mod roundtrip;
mod sql_cli;
mod sync_contoso;
mod sync_modes;
mod thresholds;
mod validate;
