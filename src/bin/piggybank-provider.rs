//! `piggybank-provider`: what a wasmCloud host executes. Reads HostData from stdin, then runs
//! [`piggybank::provider::run`]. Any failure to start is one line on stderr and exit code 1.

use std::process::ExitCode;

use piggybank::config::provider::NAME;

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("{NAME}: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(start());
    // Whatever still runs once the provider has drained is not waited for.
    runtime.shutdown_timeout(piggybank::server::RUNTIME_SHUTDOWN);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{NAME}: {}", format!("{err:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

async fn start() -> anyhow::Result<()> {
    piggybank::provider::load_host_data(std::io::stdin().lock())?;
    // Logging as the host asks (structured or not, level), plus OpenTelemetry if configured.
    wasmcloud_provider_sdk::initialize_observability!(NAME, None::<std::path::PathBuf>);
    piggybank::provider::run(piggybank::server::shutdown_signal()).await?;
    Ok(())
}
