//! `slipstream status` and `slipstream dlq`: operate a running node through its HTTP API.

use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use slipstream_node::http::client;

#[derive(Args)]
pub struct Http {
    /// The node's HTTP address (METRICS_PORT).
    #[arg(
        long,
        global = true,
        env = "SLIPSTREAM_HTTP",
        default_value = "http://127.0.0.1:8080"
    )]
    http: String,
    /// Admin bearer token, for nodes that set SLIPSTREAM_ADMIN_TOKEN.
    #[arg(long, global = true, env = "SLIPSTREAM_ADMIN_TOKEN")]
    admin_token: Option<String>,
}

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    http: Http,
    /// Print the raw JSON of GET /status.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct DlqArgs {
    #[command(flatten)]
    http: Http,
    #[command(subcommand)]
    action: DlqAction,
}

#[derive(Subcommand)]
pub enum DlqAction {
    /// List dead letters, oldest first.
    List {
        #[arg(long, default_value_t = 0)]
        offset: u64,
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
    /// Send dead letters again: all of them, or those named by --seq or --message-id.
    Replay {
        #[arg(long)]
        seq: Vec<i64>,
        #[arg(long)]
        message_id: Vec<String>,
    },
    /// Delete every dead letter.
    Purge,
}

async fn call(h: &Http, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
    let body = body.map(|b| b.to_string());
    let (status, text) = client::request(
        &h.http,
        method,
        path,
        body.as_deref(),
        h.admin_token.as_deref(),
    )
    .await
    .with_context(|| format!("cannot reach {}", h.http))?;
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("{method} {path}: not JSON: {text:.200}"))?;
    if status != 200 {
        bail!(
            "{method} {path}: {status}: {}",
            v["error"].as_str().unwrap_or(&text)
        );
    }
    Ok(v)
}

fn done(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("slipstream: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub async fn status(args: StatusArgs) -> ExitCode {
    done(
        async {
            let s = call(&args.http, "GET", "/status", None).await?;
            if args.json {
                println!("{s:#}");
            } else {
                print!("{}", render_status(&s));
            }
            Ok(())
        }
        .await,
    )
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// A readable table of `GET /status`.
pub fn render_status(s: &Value) -> String {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let tags = s["tags"]
        .as_array()
        .map(|t| t.iter().map(text).collect::<Vec<_>>().join(","))
        .filter(|t| !t.is_empty());
    let mut out = format!(
        "instance {}  version {}  uptime {}s  tags {}\noutbox {}  dead letters {}  journal {}\n\n",
        text(&s["instanceId"]),
        text(&s["version"]),
        text(&s["uptimeSeconds"]),
        tags.unwrap_or_else(|| "-".into()),
        text(&s["outboxDepth"]),
        text(&s["deadLetters"]),
        text(&s["journalMessages"]),
    );
    let mut rows = vec![[
        "PEER",
        "STATE",
        "DIRECTION",
        "LAST SEEN",
        "RTT",
        "PENDING",
        "ACKED",
        "DEAD",
        "CIRCUIT",
    ]
    .map(String::from)];
    for p in s["peers"].as_array().into_iter().flatten() {
        let directions: Vec<String> = p["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| text(&c["direction"]))
            .collect();
        let last_seen = p["lastSeenUnixMs"]
            .as_u64()
            .map(|t| format!("{}s ago", now_ms.saturating_sub(t) / 1000))
            .unwrap_or_else(|| "-".into());
        let rtt = p["rttMs"]
            .as_f64()
            .map(|r| format!("{r:.1}ms"))
            .unwrap_or_else(|| "-".into());
        let circuit = p["dialer"]["circuit"].as_str().unwrap_or("-").to_owned();
        rows.push([
            text(&p["id"]),
            if p["connected"] == true {
                "connected".into()
            } else {
                "disconnected".into()
            },
            if directions.is_empty() {
                "-".into()
            } else {
                directions.join("+")
            },
            last_seen,
            rtt,
            (p["pending"].as_u64().unwrap_or(0) + p["sent"].as_u64().unwrap_or(0)).to_string(),
            text(&p["acked"]),
            text(&p["dead"]),
            circuit,
        ]);
    }
    let widths: Vec<usize> = (0..9)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

pub async fn dlq(args: DlqArgs) -> ExitCode {
    done(
        async {
            match args.action {
                DlqAction::List { offset, limit } => {
                    let v = call(
                        &args.http,
                        "GET",
                        &format!("/dlq?offset={offset}&limit={limit}"),
                        None,
                    )
                    .await?;
                    let rows = v["deadLetters"]
                        .as_array()
                        .ok_or_else(|| anyhow!("unexpected answer: {v}"))?;
                    if rows.is_empty() {
                        println!("no dead letters");
                    }
                    for d in rows {
                        println!(
                            "seq {}  peer {}  {} {}  attempts {}  {}",
                            text(&d["seq"]),
                            text(&d["peer"]),
                            text(&d["msgType"]),
                            text(&d["messageId"]),
                            text(&d["attempts"]),
                            text(&d["note"]),
                        );
                    }
                }
                DlqAction::Replay { seq, message_id } => {
                    let body = match (seq.is_empty(), message_id.is_empty()) {
                        (true, true) => json!({}),
                        (false, true) => json!({ "seqs": seq }),
                        (true, false) => json!({ "messageIds": message_id }),
                        (false, false) => bail!("give --seq or --message-id, not both"),
                    };
                    let v = call(&args.http, "POST", "/dlq/replay", Some(body)).await?;
                    println!("replayed {}", text(&v["replayed"]));
                }
                DlqAction::Purge => {
                    let v = call(&args.http, "DELETE", "/dlq", None).await?;
                    println!("purged {}", text(&v["purged"]));
                }
            }
            Ok(())
        }
        .await,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table_shows_each_peer() {
        let s = json!({
            "instanceId": "aws-1", "version": "0.1.0", "uptimeSeconds": 5, "tags": ["aws"],
            "outboxDepth": 3, "deadLetters": 1, "journalMessages": 10,
            "peers": [
                {"id": "gcp-1", "connected": true, "connections": [{"direction": "outbound"}],
                 "lastSeenUnixMs": null, "rttMs": 0.42, "pending": 2, "sent": 1, "acked": 7, "dead": 1,
                 "dialer": {"circuit": "closed"}},
                {"id": "url:ws://azure:7600", "connected": false, "connections": [], "pending": 0,
                 "sent": 0, "acked": 0, "dead": 0, "dialer": {"circuit": "open"}}
            ]
        });
        let t = render_status(&s);
        assert!(t.starts_with("instance aws-1  version 0.1.0  uptime 5s  tags aws\noutbox 3  dead letters 1  journal 10\n"), "{t}");
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[3].starts_with("PEER"));
        assert!(
            lines[4].starts_with("gcp-1")
                && lines[4].contains("connected")
                && lines[4].contains("outbound")
                && lines[4].contains("0.4ms"),
            "{}",
            lines[4]
        );
        assert!(
            lines[4]
                .split_whitespace()
                .collect::<Vec<_>>()
                .ends_with(&["3", "7", "1", "closed"]),
            "{}",
            lines[4]
        );
        assert!(
            lines[5].contains("disconnected") && lines[5].ends_with("open"),
            "{}",
            lines[5]
        );
    }
}
