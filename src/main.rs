//! `piggybank`: parse flags, set up logging, call the library.

use piggybank::cli::{self, Command, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(start());
    // The last metrics, if exported: given at most the runtime's own grace period.
    let (done, exported) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        piggybank::metrics::shutdown();
        let _ = done.send(());
    });
    let _ = exported.recv_timeout(piggybank::server::RUNTIME_SHUTDOWN);
    // Work still running when a command is done (a client reconnecting to a NATS server
    // that is gone, a blocking lookup) is not waited for: stopping stays bounded.
    runtime.shutdown_timeout(piggybank::server::RUNTIME_SHUTDOWN);
    code
}

async fn start() -> std::process::ExitCode {
    let cli = cli::parse();
    // Servers log at info; client commands print their result and log only problems.
    // async-nats logs each connection event at info (a slow-consumer storm would be a storm of
    // lines): the server logs them itself, once per connection role and rate-limited.
    let default_level = match cli.command {
        Command::Run(_) | Command::Dev(_) => "info,async_nats=warn",
        _ => "warn",
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // Colour only on a terminal: a log written to a file or a pipe carries no escape codes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    match cli::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            // An error may quote an answer from the bus: its control characters are shown
            // escaped, so it cannot rewrite the terminal.
            eprintln!("error: {}", cli::printable(&format!("{e:#}")));
            std::process::ExitCode::FAILURE
        }
    }
}
