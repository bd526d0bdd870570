use std::process::ExitCode;

use clap::Parser;

use casegate::cli::{self, Cli, Command};
use casegate::config::Overrides;
use casegate::env::Env;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            listen,
            mappings,
        } => {
            let config = match cli::load_config(config.as_deref(), &Overrides { listen, mappings })
            {
                Ok(config) => config,
                Err(error) => return fail(error),
            };
            casegate::telemetry::init(&config.log);
            let listener = match std::net::TcpListener::bind(config.listen) {
                Ok(listener) => listener,
                Err(error) => return fail(format!("cannot listen on {}: {error}", config.listen)),
            };
            match casegate::run(config, listener, casegate::shutdown_signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => fail(error),
            }
        }
        Command::Check { dir, config } => {
            let config = match cli::load_config(config.as_deref(), &Overrides::default()) {
                Ok(config) => config,
                Err(error) => return fail(error),
            };
            cli::check(dir.as_deref().unwrap_or(&config.mappings), &config.env)
        }
        Command::Try {
            mapping,
            payload,
            headers,
        } => match cli::try_mapping(&mapping, &payload, &headers, &Env::from_process()) {
            Ok(output) => {
                println!("{output}");
                ExitCode::SUCCESS
            }
            Err(error) => fail(error),
        },
    }
}

fn fail(error: impl std::fmt::Display) -> ExitCode {
    eprintln!("casegate: {error}");
    ExitCode::FAILURE
}
