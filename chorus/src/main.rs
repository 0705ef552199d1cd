//! The `chorus` binary: parses flags, loads the config ([`load_config`], with the dev-mode
//! secrets of [`prepare_secrets`]) and runs a role. See `lib.rs` for how roles are composed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use chorus::admin::ask_running_node_to_replay;
use chorus::roles::{self, Role};
use chorus::serve;
use chorus_core::auth::TokenAuthority;
use chorus_core::config::ChorusConfig;
use chorus_core::data_layout::DataLayout;
use chorus_projector::ProjectorSettings;
use chorus_projector::replay::{Projection, replay};
use clap::{Parser, Subcommand, ValueEnum};

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
    /// Runs the push role: delivers `notifications` to the webhook of `[push]` on Kafka.
    Push {
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
    /// the node running on the data directory). With `[clickhouse] url`, rebuilds the shared
    /// history from Kafka into a fresh database and switches every node over while they serve.
    Replay {
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "all")]
        projection: ProjectionArgument,
    },
}

/// Which projections `chorus replay` rebuilds.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum ProjectionArgument {
    History,
    Search,
    All,
}

impl From<ProjectionArgument> for Projection {
    fn from(argument: ProjectionArgument) -> Self {
        match argument {
            ProjectionArgument::History => Projection::History,
            ProjectionArgument::Search => Projection::Search,
            ProjectionArgument::All => Projection::All,
        }
    }
}

fn random_hex() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Writes a file only its owner may read.
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    options.open(path)?.write_all(contents.as_bytes())
}

/// Fills in dev-mode secrets: the JWT secret and the API key, when not configured, are generated
/// once and kept in the data directory (owner-only), so `chorus token`, `chorus replay` and the
/// server agree across restarts. Returns whether the API key is a generated one (to print it).
fn prepare_secrets(config: &mut ChorusConfig) -> anyhow::Result<bool> {
    let layout = DataLayout::new(&config.data_dir);
    if config.auth.jwt_secret.is_empty() && config.dev_mode {
        std::fs::create_dir_all(&layout.root)?;
        let path = layout.dev_secret();
        config.auth.jwt_secret = match std::fs::read_to_string(&path) {
            Ok(secret) if !secret.trim().is_empty() => secret.trim().to_owned(),
            _ => {
                let secret = random_hex();
                write_private(&path, &secret)
                    .with_context(|| format!("writing {}", path.display()))?;
                secret
            }
        };
    }
    let generated = config.auth.api_key.is_empty() && config.dev_mode;
    if generated {
        let path = layout.dev_api_key();
        config.auth.api_key = match std::fs::read_to_string(&path) {
            Ok(key) if !key.trim().is_empty() => key.trim().to_owned(),
            _ => {
                let key = random_hex();
                write_private(&path, &key)
                    .with_context(|| format!("writing {}", path.display()))?;
                key
            }
        };
    }
    Ok(generated)
}

/// Loads the config: file (optional), then the role's dev-mode default (applied only when the file
/// does not set `dev_mode`), then `adjust` (command-line flags), then environment overrides
/// (`CHORUS_DEV_MODE` among them).
///
/// Dev mode hands tokens to anyone who asks (`POST /v1/dev/token`), so a role's dev-mode default
/// holds only on a loopback address: when neither the file nor `CHORUS_DEV_MODE` sets `dev_mode`
/// and the node listens on another address (`chorus serve --listen 0.0.0.0:8080`), dev mode is
/// off, and a warning says so and how to turn it on there. Set explicitly, it is obeyed.
fn load_config(
    path: Option<&Path>,
    environment: &HashMap<String, String>,
    role_dev_mode: bool,
    adjust: impl FnOnce(&mut ChorusConfig),
) -> anyhow::Result<ChorusConfig> {
    let mut explicit_dev_mode = environment.contains_key("CHORUS_DEV_MODE");
    let mut config = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config {}", path.display()))?;
            let mut config = ChorusConfig::from_toml(&text, &path.display().to_string())?;
            let sets_dev_mode = text
                .parse::<toml::Table>()
                .map(|table| table.contains_key("dev_mode"))
                .unwrap_or(false);
            explicit_dev_mode |= sets_dev_mode;
            if !sets_dev_mode {
                config.dev_mode = role_dev_mode;
            }
            config
        }
        None => ChorusConfig {
            dev_mode: role_dev_mode,
            ..ChorusConfig::default()
        },
    };
    adjust(&mut config);
    config.apply_env(environment)?;
    if config.dev_mode && !explicit_dev_mode && !config.listen.ip().is_loopback() {
        config.dev_mode = false;
        tracing::warn!(
            listen = %config.listen,
            "dev mode is off: {} is not a loopback address (set dev_mode = true or CHORUS_DEV_MODE=true to serve dev tokens on it)",
            config.listen
        );
    }
    Ok(config)
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
        Command::Push { listen } => {
            run_role(
                Role::Push,
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
            let projection = Projection::from(projection);
            let layout = DataLayout::new(&config.data_dir);
            let reports = if layout.in_use() {
                println!("the data directory is in use: asking the running node to rebuild");
                ask_running_node_to_replay(&layout, &config.auth.api_key, projection).await?
            } else if !config.clickhouse.url.is_empty() {
                // the history is shared in ClickHouse; each search node keeps its own index
                anyhow::ensure!(
                    projection != Projection::Search,
                    "with [clickhouse] url, each search node keeps its own index: rebuild it with \
                     POST /v1/admin/replay on that node"
                );
                if projection == Projection::All {
                    println!(
                        "rebuilding the shared history; each search node rebuilds its own index \
                         (POST /v1/admin/replay on it)"
                    );
                }
                vec![roles::replay_shared_history(&config).await?]
            } else {
                replay(&ProjectorSettings::from_config(&config), projection, true).await?
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
    let scheme = config.http.scheme();
    let starting = roles::bind(role, config).await?;
    // `/health` answers 503 `starting` until Kafka answers and the role's own routes serve;
    // "is listening on" keeps meaning ready
    println!(
        "Chorus {role:?} is starting on {scheme}://{} (waiting for kafka; /health and /metrics answer meanwhile)",
        starting.addr
    );
    let mut running = tokio::select! {
        _ = shutdown_signal() => return Ok(()),
        running = starting.start() => running?,
    };
    println!(
        "Chorus {role:?} is listening on {scheme}://{}",
        running.addr
    );
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
