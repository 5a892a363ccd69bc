//! `porcupine`: the mail node. Today `serve` runs the storage engine on every core (recovering
//! each shard, then holding it open) until SIGTERM or SIGINT; SMTP and POP3 arrive with issue 3.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use porcupine_engine::{runtime, DmaStorage, EngineConfig, Placement, Shard};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "porcupine",
    version,
    about = "A clustered mail service after Porcupine (SOSP '99)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node: open (and recover) every shard, serve until SIGTERM/SIGINT, then close cleanly.
    Serve(ServeArgs),
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Data directory; repeat for one per disk (each gets a shard per core).
    #[arg(long = "data", default_value = "./porcupine-data")]
    data: Vec<PathBuf>,
    /// Executors (one per core); default: every core.
    #[arg(long)]
    cores: Option<usize>,
    /// Segment file size in MiB.
    #[arg(long, default_value_t = 128)]
    segment_mib: u64,
    /// Do not pin executors to cores (for shared or small machines).
    #[arg(long)]
    no_pin: bool,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
    };
    if let Err(error) = result {
        eprintln!("porcupine: {error:#}");
        std::process::exit(1);
    }
}

fn serve(args: ServeArgs) -> Result<()> {
    let available = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let cores = args.cores.unwrap_or(available);
    if cores == 0 || cores > available {
        bail!("--cores must be between 1 and {available} on this machine (got {cores})");
    }
    let config = EngineConfig {
        segment_bytes: args.segment_mib << 20,
        ..EngineConfig::default()
    };
    config
        .validate()
        .map_err(anyhow::Error::msg)
        .context("invalid settings")?;
    for dir in &args.data {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    }
    let fds = runtime::raise_fd_limit();
    let placement = Placement::new(cores, args.data.clone());
    let (stop_tx, stop_rx) = flume::unbounded::<()>();
    let (ready_tx, ready_rx) = flume::unbounded::<Result<String, String>>();
    let mut executors = Vec::new();
    for core in 0..cores {
        let builder =
            runtime::executor_builder(&format!("porcupine-{core}"), core, cores, !args.no_pin)?;
        let shards = placement.shards_of_core(core);
        let config = config.clone();
        let stop_rx = stop_rx.clone();
        let ready_tx = ready_tx.clone();
        let handle = builder
            .spawn(move || async move { run_core(core, shards, config, stop_rx, ready_tx).await })
            .map_err(runtime::explain_start_failure)?;
        executors.push(handle);
    }
    drop(ready_tx);
    for _ in 0..cores {
        match ready_rx.recv() {
            Ok(Ok(summary)) => tracing::info!("{summary}"),
            Ok(Err(error)) => {
                drop(stop_tx);
                bail!("{error}");
            }
            Err(_) => bail!("an executor stopped during start-up"),
        }
    }
    tracing::info!(
        cores,
        shards = placement.shard_count(),
        open_files_limit = fds,
        "porcupine storage node is up; SMTP and POP3 arrive with the protocol layer (issue 3). Stop with SIGTERM or Ctrl-C."
    );
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .context("cannot install signal handlers")?;
    if let Some(signal) = signals.forever().next() {
        tracing::info!(
            signal,
            "stopping: finishing queued writes and writing checkpoints"
        );
    }
    drop(stop_tx);
    for handle in executors {
        handle
            .join()
            .map_err(|e| anyhow::anyhow!("executor failed: {e}"))?
            .map_err(anyhow::Error::msg)?;
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn run_core(
    core: usize,
    addresses: Vec<porcupine_engine::placement::ShardAddress>,
    config: EngineConfig,
    stop: flume::Receiver<()>,
    ready: flume::Sender<Result<String, String>>,
) -> Result<(), String> {
    let mut shards = Vec::new();
    let mut summary = Vec::new();
    for address in addresses {
        let name = format!("shard-{}", address.shard);
        match Shard::open(DmaStorage, &address.dir, config.clone(), &name).await {
            Ok((shard, report)) => {
                summary.push(format!(
                    "{name} at {}: {} messages in {} segments, recovered in {:?}{}",
                    address.dir.display(),
                    report.messages,
                    report.segments,
                    report.elapsed,
                    if report.from_checkpoint {
                        " from checkpoint"
                    } else {
                        ""
                    }
                ));
                shards.push(shard);
            }
            Err(error) => {
                let message = format!(
                    "core {core}: cannot open {}: {error}",
                    address.dir.display()
                );
                let _ = ready.send(Err(message.clone()));
                return Err(message);
            }
        }
    }
    let _ = ready.send(Ok(format!("core {core}: {}", summary.join("; "))));
    // Every sender dropped means: stop.
    let _ = stop.recv_async().await;
    let mut failure = None;
    for shard in shards {
        if let Err(error) = shard.close().await {
            failure = Some(format!("closing {}: {error}", shard.name()));
        }
    }
    glommio::timer::sleep(Duration::from_millis(1)).await;
    failure.map_or(Ok(()), Err)
}
