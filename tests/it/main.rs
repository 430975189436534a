//! campo's integration tests: one binary for the whole crate (link time on 2 cores).

mod api;
mod cli;
mod crash;
mod e2e;
mod erasure;
mod harness;
mod interop;
mod lifecycle;
mod mock;
mod notebooks;
mod protect;
mod slt;
mod sql;
mod windows;
