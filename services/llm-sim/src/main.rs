//! `llm-sim --port P --profile FILE`: serve the simulator until Ctrl-C.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// A simulator of LLM providers (OpenAI chat completions and Anthropic Messages) for tests, demos and benchmarks.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8089)]
    port: u16,
    /// Address to bind.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    bind: IpAddr,
    /// Profile YAML; the shipped default when absent.
    #[arg(long)]
    profile: Option<PathBuf>,
    /// Override the profile's seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Override the profile's latency scale (0 answers at once).
    #[arg(long)]
    latency_scale: Option<f64>,
    /// Ignore `[sim:…]` directives in prompts, so what a ticket says cannot steer the
    /// simulator (for a simulator that others' text reaches: a shared demo, a trial deploy).
    #[arg(long)]
    no_directives: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let mut profile = match &args.profile {
        Some(p) => llm_sim::Profile::load(p)?,
        None => llm_sim::Profile::default_profile()?,
    };
    if let Some(s) = args.seed {
        profile.seed = s;
    }
    if let Some(s) = args.latency_scale {
        profile.latency_scale = s;
    }
    if args.no_directives {
        profile.directives = false;
    }
    let server = llm_sim::spawn(profile, SocketAddr::new(args.bind, args.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", args.bind, args.port))?;
    println!("listening=http://{}", server.addr);
    tokio::signal::ctrl_c().await?;
    server.stop().await;
    Ok(())
}
