//! The `tollgate` binary: parses the command line and hands over to `cli`.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = tollgate::config::Cli::parse();
    tollgate::cli::run(cli).await
}
