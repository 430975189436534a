//! `campo`: the command-line entry point.

mod alloc;
mod api_cmd;
mod backtest_cmd;
mod cli;
mod demo;
mod forget_cmd;
mod lake_cmd;
mod load_config;
mod run_cmd;
mod simulate_cmd;
mod sql_cmd;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

/// Exit codes (documented in `campo --help` and the README).
pub mod exit {
    /// Success, including a clean stop on Ctrl-C / SIGTERM with everything committed.
    pub const OK: u8 = 0;
    /// A runtime failure (lake, Kafka, I/O) after start-up.
    pub const FAILURE: u8 = 1;
    /// Bad usage or an invalid configuration.
    pub const USAGE: u8 = 2;
}

fn main() -> ExitCode {
    alloc::limit_arenas();
    let cli = Cli::parse();
    cli::init_tracing(&cli.global);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run_cmd::run(args).await,
            Command::Simulate(args) => simulate_cmd::run(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Backtest(args) => backtest_cmd::run(args).await,
            Command::Serve(args) => api_cmd::serve(args).await,
            Command::Token(args) => api_cmd::token(args).await,
            Command::Sql(args) => sql_cmd::run(args).await,
            Command::Lake(args) => lake_cmd::run(args).await,
            Command::Forget(args) => forget_cmd::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => {
            let code = if e.downcast_ref::<load_config::ConfigProblem>().is_some() { exit::USAGE } else { exit::FAILURE };
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    }
}
