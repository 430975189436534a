//! campo's streaming pipelines: the Kafka source, event contracts, dedup, dead letters, the
//! bronze ingest run loop, and the traffic simulator.

pub mod config;
pub mod contract;
pub mod dedup;
pub mod ingest;
pub mod maintenance;
pub mod protect;
pub mod replay;
pub mod rows;
pub mod simulate;
pub mod windows;

pub use config::Config;
