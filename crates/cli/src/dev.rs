//! `slipstream dev`: a local full mesh on embedded defaults, for trying Slipstream out.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use slipstream_node::{telemetry, Config, PeerConfig, RunningNode};

#[derive(Args)]
pub struct DevArgs {
    /// How many nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// First WebSocket port (node i listens on base+i, its HTTP on base+100+i). Default: free ports.
    #[arg(long)]
    base_port: Option<u16>,
    /// Print a log line for every message.
    #[arg(long)]
    message_logs: bool,
}

pub async fn run(args: DevArgs) -> ExitCode {
    if args.nodes == 0 || args.nodes > 32 {
        eprintln!("slipstream dev: --nodes must be between 1 and 32");
        return ExitCode::from(2);
    }
    telemetry::logging::init(telemetry::logging::LogSettings::new(
        args.message_logs,
        false,
    ));
    let dir = match tempfile::Builder::new().prefix("slipstream-dev-").tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("slipstream dev: cannot create a temporary folder: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut running: Vec<RunningNode> = Vec::new();
    for i in 0..args.nodes {
        let mut cfg = Config::for_local(dir.path().join(format!("node-{}", i + 1)));
        cfg.instance_id = Some(format!("dev-{}", i + 1));
        cfg.message_logs = args.message_logs;
        if let Some(base) = args.base_port {
            cfg.listen.set_port(base + i as u16);
            cfg.http_addr.set_port(base + 100 + i as u16);
        }
        // Each node dials the ones started before it: every pair is linked once.
        cfg.peers = running
            .iter()
            .map(|n| PeerConfig {
                url: format!("ws://{}", n.ws_addr),
                tags: Vec::new(),
                cluster_group_id: None,
                auth_token: None,
                ca: None,
                cert: None,
                key: None,
                reject_unauthorized: true,
            })
            .collect();
        match slipstream_node::start(cfg).await {
            Ok(n) => running.push(n),
            Err(e) => {
                eprintln!("slipstream dev: node {} failed to start: {e}", i + 1);
                return ExitCode::FAILURE;
            }
        }
    }
    println!(
        "slipstream dev: {} nodes, data in {} (removed on exit)",
        running.len(),
        dir.path().display()
    );
    for n in &running {
        println!(
            "  {:<8} ws://{:<21} http://{}",
            n.node.id, n.ws_addr, n.http_addr
        );
    }
    let first = &running[0];
    let last = &running[running.len() - 1];
    println!("Try:");
    println!(
        "  slipstream publish --url ws://{} order:1 paid",
        first.ws_addr
    );
    println!("  slipstream get --url ws://{} order:1", last.ws_addr);
    println!("  curl http://{}/v1/keys/order:1", last.http_addr);
    println!("  curl http://{}/status", first.http_addr);
    println!("Ctrl-C stops the mesh.");
    let want = running.len() - 1;
    let connected = async {
        loop {
            if running
                .iter()
                .all(|n| n.node.peers.views().iter().filter(|v| v.connected).count() >= want)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), connected)
        .await
        .is_ok()
    {
        println!("mesh connected: every node has {want} peers");
    } else {
        println!("warning: the mesh is not fully connected yet; see GET /status");
    }
    crate::shutdown_signal().await;
    println!("stopping");
    for n in running {
        n.shutdown().await;
    }
    drop(dir);
    ExitCode::SUCCESS
}
