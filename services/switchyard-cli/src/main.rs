//! The `switchyard` binary: parses arguments and hands them to the library.

use clap::Parser;

// Every job allocates many small, short-lived buffers (JSON values, prompts, request bodies)
// across threads; mimalloc serves them with less CPU than glibc's malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = switchyard_cli::cli::Cli::parse();
    let outcome = switchyard_cli::cli::main(cli).await;
    // Flush what OTLP export holds (off the runtime's workers: the export runs on them).
    let _ = tokio::task::spawn_blocking(switchyard::telemetry::otlp::shutdown).await;
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
