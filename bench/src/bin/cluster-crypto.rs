//! What the cluster channel's encryption costs per message, on this machine, against copying
//! the same bytes in clear in the same run: a 4,700-byte message crosses one encrypted
//! connection as a replication push (the frame sealed on one side, opened on the other), and
//! a connection's handshake is timed too.
//!
//! `cargo run --release -p porcupine-bench --bin cluster-crypto -- [--messages 200000] [--json]`

use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use porcupine_cluster::secure::{self, ClusterKey};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
struct Args {
    /// Messages sealed and opened.
    #[arg(long, default_value_t = 200_000)]
    messages: usize,
    /// Bytes per message (the paper's mean is 4,700).
    #[arg(long, default_value_t = 4700)]
    size: usize,
    /// Handshakes timed.
    #[arg(long, default_value_t = 200)]
    handshakes: usize,
    #[arg(long)]
    json: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let report = porcupine_runtime::run_local(move || async move { measure(&args).await })??;
    println!("{report}");
    Ok(())
}

async fn measure(args: &Args) -> Result<String> {
    let key = ClusterKey::generate();
    let io = |e: glommio::GlommioError<()>| anyhow::anyhow!("{e}");
    let listener = glommio::net::TcpListener::bind("127.0.0.1:0").map_err(io)?;
    let addr = listener.local_addr().map_err(io)?;
    let handshake_started = Instant::now();
    let mut last = None;
    for _ in 0..args.handshakes.max(1) {
        let (dialled, accepted) =
            futures_lite::future::zip(glommio::net::TcpStream::connect(addr), listener.accept())
                .await;
        let (mut dialled, mut accepted) = (dialled.map_err(io)?, accepted.map_err(io)?);
        let (a, b) = futures_lite::future::zip(
            secure::connect(&mut dialled, &key),
            secure::accept(&mut accepted, &key),
        )
        .await;
        last = Some((a?, b?));
    }
    let handshake_us =
        handshake_started.elapsed().as_secs_f64() * 1e6 / args.handshakes.max(1) as f64;
    let Some(((_, mut sealer), (mut opener, _))) = last else {
        anyhow::bail!("no handshake");
    };
    let message: Vec<u8> = (0..args.size).map(|i| (i % 251) as u8).collect();
    // Baseline: the same bytes copied in clear through a buffer, as the plaintext path does.
    let started = Instant::now();
    let mut sink = Vec::with_capacity(args.size);
    let mut check = 0u64;
    for _ in 0..args.messages {
        sink.clear();
        sink.extend_from_slice(&message);
        check = check.wrapping_add(u64::from(sink[args.size / 2]));
    }
    let plain_us = started.elapsed().as_secs_f64() * 1e6 / args.messages as f64;
    // Sealed on one side, opened on the other, through an in-memory stream.
    let started = Instant::now();
    let mut opened = vec![0u8; args.size];
    for _ in 0..args.messages {
        let sealed = sealer.seal(&message)?;
        let mut reader = futures_lite::io::Cursor::new(sealed);
        opener.read_exact(&mut reader, &mut opened).await?;
        check = check.wrapping_add(u64::from(opened[args.size / 2]));
    }
    let sealed_us = started.elapsed().as_secs_f64() * 1e6 / args.messages as f64;
    let extra_us = sealed_us - plain_us;
    // At 10,000 replicated messages a second (a push and its ack per message), the share of
    // one core the encryption takes.
    let core_share = extra_us * 10_000.0 / 1e6;
    let mut out = format!(
        "cluster channel, {} B messages, {} of them: sealed + opened {sealed_us:.2} µs each, \
         copied in clear {plain_us:.2} µs; encryption adds {extra_us:.2} µs per message, \
         {:.0} MB/s; at 10,000 replicated messages/s that is {:.1} % of one core. \
         Handshake: {handshake_us:.0} µs per connection ({} timed). (check {})",
        args.size,
        args.messages,
        args.size as f64 / sealed_us,
        core_share * 100.0,
        args.handshakes,
        check % 10
    );
    if args.json {
        out = format!(
            "{out}\n{}",
            serde_json::json!({
                "sealed_us": sealed_us,
                "plain_us": plain_us,
                "extra_us_per_message": extra_us,
                "core_share_at_10k": core_share,
                "handshake_us": handshake_us,
            })
        );
    }
    Ok(out)
}
