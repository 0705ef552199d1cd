//! The `chorus` binary: parses flags and runs a role. See `lib.rs` for how roles are composed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use chorus::DataLayout;
use chorus::replay::{Projection, replay, replay_live};
use chorus::roles::{self, Role};
use chorus::{load_config, prepare_secrets, serve};
use chorus_core::auth::TokenAuthority;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "chorus",
    version,
    about = "Chorus: a Kafka-centric, event-sourced instant-messaging engine"
)]
struct Cli {
    /// TOML config file (see deploy/chorus.example.toml); CHORUS_… variables override it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs every role in one process on the embedded defaults (nothing to install).
    Serve {
        /// Address to listen on [default: 127.0.0.1:8080].
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Data directory [default: ./data].
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Runs an ingest node (WebSocket and business HTTP) on Kafka and Redis.
    Ingest {
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Runs a router (sequencer and delivery) on Kafka and Redis.
    Router {
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Runs a search node (history/search API over its own projections) on Kafka.
    Search {
        #[arg(long)]
        listen: Option<SocketAddr>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Runs a projector (history and search projections, `/v1/admin/replay`) on Kafka.
    Projector {
        #[arg(long)]
        listen: Option<SocketAddr>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Prints a user token signed with the configured (or data directory's dev) secret.
    Token {
        #[arg(long)]
        user: String,
        #[arg(long)]
        device: Option<String>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Rebuilds projections from the log (by itself when the server is stopped, or by asking
    /// the node running on the data directory).
    Replay {
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "all")]
        projection: Projection,
    },
}

fn environment() -> HashMap<String, String> {
    std::env::vars()
        .filter(|(name, _)| name.starts_with("CHORUS_"))
        .collect()
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CHORUS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing();
    let environment = environment();
    match cli.command {
        Command::Serve { listen, data_dir } => {
            let mut config = load_config(cli.config.as_deref(), &environment, true, |config| {
                if let Some(listen) = listen {
                    config.listen = listen;
                }
                if let Some(data_dir) = data_dir {
                    config.data_dir = data_dir;
                }
            })?;
            if !config.dev_mode && config.auth.jwt_secret.is_empty() {
                anyhow::bail!(
                    "dev mode is off (on by default only on a loopback address; {} is not one, set dev_mode = true or CHORUS_DEV_MODE=true to serve dev tokens on it), so auth.jwt_secret (CHORUS_JWT_SECRET) must be set",
                    config.listen
                );
            }
            let generated_key = prepare_secrets(&mut config)?;
            let dev_mode = config.dev_mode;
            let data_dir = config.data_dir.clone();
            let mut served = serve(config).await?;
            let url = served.url();
            println!("Chorus is listening on {url}");
            println!("  Chat in a browser: open {url}/ and pick a name");
            println!(
                "  WebSocket: {}/v1/ws?token=<jwt>",
                url.replacen("http", "ws", 1)
            );
            if dev_mode {
                println!("  Dev mode: on (anyone who reaches this address can get a token)");
                println!(
                    "  Get a token: curl -s -X POST {url}/v1/dev/token -d '{{\"user\":\"alice\"}}'   (or: chorus token --user alice --data-dir {})",
                    data_dir.display()
                );
            } else {
                println!(
                    "  Dev mode: off (no dev tokens; sign tokens with auth.jwt_secret, e.g. chorus token --user alice)"
                );
            }
            if generated_key {
                println!(
                    "  Business API key (generated; set CHORUS_API_KEY to choose one): {}",
                    served.api_key
                );
            }
            println!("  Data directory: {}", data_dir.display());
            let outcome = tokio::select! {
                _ = shutdown_signal() => Ok(()),
                (role, error) = served.failed() => Err(anyhow::anyhow!("{role} stopped: {error:#}")),
            };
            tracing::info!("shutting down (a second ctrl-c forces exit)");
            tokio::spawn(async {
                shutdown_signal().await;
                std::process::exit(130);
            });
            served.shutdown().await?;
            outcome
        }
        Command::Ingest { listen } => {
            run_role(
                Role::Ingest,
                cli.config.as_deref(),
                &environment,
                listen,
                None,
            )
            .await
        }
        Command::Router { listen } => {
            run_role(
                Role::Router,
                cli.config.as_deref(),
                &environment,
                listen,
                None,
            )
            .await
        }
        Command::Projector { listen, data_dir } => {
            run_role(
                Role::Projector,
                cli.config.as_deref(),
                &environment,
                listen,
                data_dir,
            )
            .await
        }
        Command::Search { listen, data_dir } => {
            run_role(
                Role::Search,
                cli.config.as_deref(),
                &environment,
                listen,
                data_dir,
            )
            .await
        }
        Command::Token {
            user,
            device,
            data_dir,
        } => {
            let mut config = load_config(cli.config.as_deref(), &environment, true, |config| {
                if let Some(data_dir) = data_dir {
                    config.data_dir = data_dir;
                }
            })?;
            prepare_secrets(&mut config)?;
            let token = TokenAuthority::from_config(&config.auth)
                .issue(&user, device.as_deref(), config.auth.token_ttl_secs)
                .context("issuing token")?;
            println!("{token}");
            Ok(())
        }
        Command::Replay {
            data_dir,
            projection,
        } => {
            let config = load_config(cli.config.as_deref(), &environment, true, |config| {
                if let Some(data_dir) = data_dir {
                    config.data_dir = data_dir;
                }
            })?;
            let mut config = config;
            prepare_secrets(&mut config)?;
            let reports = if DataLayout::new(&config.data_dir).in_use() {
                println!("the data directory is in use: asking the running node to rebuild");
                replay_live(&config, projection).await?
            } else {
                replay(&config, projection, true).await?
            };
            for report in reports {
                println!(
                    "{}: rebuilt from {} timeline records in {:.2}s",
                    report.projection, report.records, report.seconds
                );
            }
            Ok(())
        }
    }
}

async fn run_role(
    role: Role,
    config_path: Option<&std::path::Path>,
    environment: &HashMap<String, String>,
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let mut config = load_config(config_path, environment, false, |config| {
        if let Some(listen) = listen {
            config.listen = listen;
        }
        if let Some(data_dir) = data_dir {
            config.data_dir = data_dir;
        }
    })?;
    prepare_secrets(&mut config)?;
    let starting = roles::bind(role, config).await?;
    // `/health` answers 503 `starting` until Kafka answers and the role's own routes serve;
    // "is listening on" keeps meaning ready
    println!(
        "Chorus {role:?} is starting on http://{} (waiting for kafka; /health and /metrics answer meanwhile)",
        starting.addr
    );
    let mut running = tokio::select! {
        _ = shutdown_signal() => return Ok(()),
        running = starting.start() => running?,
    };
    println!("Chorus {role:?} is listening on http://{}", running.addr);
    let outcome = tokio::select! {
        _ = shutdown_signal() => Ok(()),
        (task, error) = running.failed() => Err(anyhow::anyhow!("{task} stopped: {error:#}")),
    };
    running.shutdown().await?;
    outcome
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
