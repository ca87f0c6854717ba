//! canarygate: a self-hosted canary-release gateway. The binary is thin: it parses commands, loads the
//! config file and wires the library crates together (`serve`), or talks to a running server's admin
//! API (every other command).
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

mod backend;
mod check;
mod client;
mod config;
mod demo;
#[cfg(test)]
mod docs_tests;
#[cfg(test)]
mod module_tests;
mod rollout_cli;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use client::{Client, Output};
use reqwest::Method;

#[derive(Parser)]
#[command(
    name = "canarygate",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("CANARYGATE_COMMIT"), ")"),
    about = "Canary releases for any HTTP service: gateway, rollouts, admin API."
)]
struct Cli {
    /// Admin API of the server to talk to.
    #[arg(long, global = true, env = "CANARYGATE_SERVER", default_value = "http://127.0.0.1:9090")]
    server: String,
    /// Bearer token for the admin API.
    #[arg(long, global = true, env = "CANARYGATE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value = "text")]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole story in one process: three backend versions, load, a rollback and a promotion.
    Demo(demo::DemoArgs),
    /// Run the gateway, controller and admin API.
    Serve(serve::ServeArgs),
    /// Check a config file as `serve` and `apply` would, without starting anything or touching a
    /// store: exit 0, or 1 naming each problem (file, field, and line where the parser knows it).
    Check {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Make the server's APIs, stages and domains match a file.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Print what would change without changing anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// List or read APIs.
    Apis {
        #[command(subcommand)]
        cmd: ApisCmd,
    },
    /// Create or list deployments of an API.
    Deployments {
        #[command(subcommand)]
        cmd: DeploymentsCmd,
    },
    /// Read and change stages and their canaries.
    Stages {
        #[command(subcommand)]
        cmd: StagesCmd,
    },
    /// Start, follow, stop or promote rollouts.
    Rollout {
        #[command(subcommand)]
        cmd: RolloutCmd,
    },
    /// List or read alarms.
    Alarms {
        #[command(subcommand)]
        cmd: AlarmsCmd,
    },
    /// Run a small demo HTTP backend (for the quickstart).
    DemoBackend(backend::BackendArgs),
    /// The replicas sharing the store, the state version each serves, and which runs the controller.
    Cluster,
    /// Copy the SQLite state database (`<dataDir>/state.db`) to a new file while the server runs, with
    /// SQLite's online backup: a consistent copy as of one moment. Restore: stop the server, put the
    /// copy at `<dataDir>/state.db`, start it.
    Backup {
        /// The running server's data directory.
        #[arg(long, default_value = "./canarygate-data")]
        data_dir: PathBuf,
        /// The new file to write.
        #[arg(long)]
        to: PathBuf,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to standard output.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff) to standard output.
    #[command(hide = true)]
    Man,
}

#[derive(Subcommand)]
enum RolloutCmd {
    /// Start a rollout of a stage to a new deployment and/or variables.
    Start(Box<rollout_cli::StartArgs>),
    /// A rollout's state and events.
    Status { id: String },
    /// Rollouts, newest first.
    List {
        #[arg(long)]
        api: Option<String>,
        #[arg(long)]
        stage: Option<String>,
        #[arg(long)]
        status: Option<String>,
    },
    /// Stop a rollout; it rolls back unless --no-rollback.
    Stop {
        id: String,
        #[arg(long)]
        no_rollback: bool,
    },
    /// Skip to 100% now.
    Promote { id: String },
    /// Approve the approval step a rollout waits at (a Steps plan's `approval: true`).
    Approve { id: String },
    /// Hold a rollout at its step: the weight stays, the wait stops; alarms and analysis still act.
    Pause { id: String },
    /// Resume a paused rollout: its step's wait goes on with what was left.
    Resume { id: String },
    /// End the current step's wait now and go to the next step.
    Continue { id: String },
}

#[derive(Subcommand)]
enum AlarmsCmd {
    List,
    Get { name: String },
}

#[derive(Subcommand)]
enum ApisCmd {
    List,
    Get { api: String },
}

#[derive(Subcommand)]
enum DeploymentsCmd {
    /// Snapshot the API's current routes.
    Create {
        api: String,
        #[arg(long, short = 'd', default_value = "")]
        description: String,
    },
    List {
        api: String,
    },
}

#[derive(Subcommand)]
enum StagesCmd {
    Get {
        api: String,
        stage: String,
    },
    /// Patch a stage: `--percent 10`, `--set /variables/backend=10.0.0.7:8080`, `--remove PATH`.
    Update {
        api: String,
        stage: String,
        /// Canary share of requests, 0 to 100 (creates a canary on the stage's deployment if none).
        #[arg(long)]
        percent: Option<String>,
        /// PATH=VALUE, a replace operation (repeatable).
        #[arg(long)]
        set: Vec<String>,
        /// PATH, a remove operation (repeatable).
        #[arg(long)]
        remove: Vec<String>,
    },
    /// Promote the canary: its deployment and overrides become the stage's.
    Promote {
        api: String,
        stage: String,
    },
    /// Remove the canary: all traffic back to production.
    RemoveCanary {
        api: String,
        stage: String,
    },
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let c = Client::new(&cli.server, cli.token.clone(), cli.output);
    match cli.command {
        Command::Serve(args) if args.check => match &args.config {
            Some(path) => check::run(path, &args),
            None => anyhow::bail!("serve --check needs --config FILE"),
        },
        Command::Serve(args) => serve::run(args).await,
        Command::Check { file } => check::run(&file, &serve::ServeArgs::default()),
        Command::Backup { data_dir, to } => {
            let version = canarygate_store::backup_sqlite(&data_dir.join("state.db"), &to)?;
            println!(
                "backed up {} to {} (schema version {version})",
                data_dir.join("state.db").display(),
                to.display()
            );
            Ok(())
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "canarygate", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => {
            use clap::CommandFactory;
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(())
        }
        Command::Demo(args) => demo::run(args).await,
        Command::DemoBackend(args) => backend::run(args).await,
        Command::Apply { file, dry_run } => client::apply(&c, &file, dry_run).await,
        Command::Rollout { cmd } => match cmd {
            RolloutCmd::Start(args) => rollout_cli::start(&c, *args).await,
            RolloutCmd::Status { id } => rollout_cli::status(&c, &id).await,
            RolloutCmd::List { api, stage, status } => rollout_cli::list(&c, api, stage, status).await,
            RolloutCmd::Stop { id, no_rollback } => rollout_cli::stop(&c, &id, no_rollback).await,
            RolloutCmd::Promote { id } => rollout_cli::promote(&c, &id).await,
            RolloutCmd::Approve { id } => rollout_cli::approve(&c, &id).await,
            RolloutCmd::Pause { id } => rollout_cli::control(&c, &id, "pause", "paused").await,
            RolloutCmd::Resume { id } => rollout_cli::control(&c, &id, "resume", "resumed").await,
            RolloutCmd::Continue { id } => rollout_cli::control(&c, &id, "continue", "asked to end the step's wait of").await,
        },
        Command::Alarms { cmd: AlarmsCmd::List } => rollout_cli::alarms_list(&c).await,
        Command::Alarms {
            cmd: AlarmsCmd::Get { name },
        } => rollout_cli::alarms_get(&c, &name).await,
        Command::Cluster => client::cluster(&c).await,
        Command::Apis { cmd: ApisCmd::List } => client::apis_list(&c).await,
        Command::Apis { cmd: ApisCmd::Get { api } } => client::apis_get(&c, &api).await,
        Command::Deployments {
            cmd: DeploymentsCmd::Create { api, description },
        } => client::deployments_create(&c, &api, &description).await,
        Command::Deployments {
            cmd: DeploymentsCmd::List { api },
        } => client::deployments_list(&c, &api).await,
        Command::Stages { cmd } => match cmd {
            StagesCmd::Get { api, stage } => client::stage_call(&c, Method::GET, format!("/v1/apis/{api}/stages/{stage}"), None).await,
            StagesCmd::Update {
                api,
                stage,
                percent,
                set,
                remove,
            } => {
                let ops = client::update_ops(&set, &remove, percent)?;
                let body = serde_json::json!({ "patchOperations": ops });
                client::stage_call(&c, Method::PATCH, format!("/v1/apis/{api}/stages/{stage}"), Some(body)).await
            }
            StagesCmd::Promote { api, stage } => {
                client::stage_call(&c, Method::POST, format!("/v1/apis/{api}/stages/{stage}/canary/promote"), None).await
            }
            StagesCmd::RemoveCanary { api, stage } => {
                client::stage_call(&c, Method::DELETE, format!("/v1/apis/{api}/stages/{stage}/canary"), None).await
            }
        },
    }
}

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // jemalloc's background thread returns freed memory to the system about 10 s after a burst,
    // instead of at the next allocation after it.
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        eprintln!("warning: cannot start jemalloc's background thread: {e}");
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("CANARYGATE_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        // Colour only on a terminal: a log written to a file or a pipe has no escape codes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // CANARYGATE_WORKER_THREADS sets the control-plane runtime's threads (default: one per core); the
    // data plane has its own single-threaded workers (server.workers).
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = std::env::var("CANARYGATE_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        builder.worker_threads(n);
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
