use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    casegate::cli::run(casegate::cli::Cli::parse()).await
}
