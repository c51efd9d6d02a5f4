//! `piggybank-bench`: parse flags, set up logging, run the benchmark (docs/performance.md).

use clap::Parser;
use piggybank_bench::BenchArgs;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = BenchArgs::parse();
    // The figures go to stdout; logs (problems only, unless RUST_LOG says otherwise) to stderr.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match piggybank_bench::run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
