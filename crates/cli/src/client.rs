//! `slipstream publish` and `slipstream get`: talk to a node over WebSocket as a local
//! application does (HELLO with role client, then writes or reads).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use slipstream_protocol::{
    decode_frame, Body, Envelope, Hello, Limits, Message, Role, Value, ValueKind, PROTOCOL_VERSION,
};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[derive(Clone, Copy, ValueEnum)]
pub enum Kind {
    /// A string (SK / GK).
    String,
    /// A list of strings (SA / GA); the value is a JSON array.
    Array,
    /// A weighted set (SW / GW); the value is a JSON object of member to weight.
    Weighted,
}

#[derive(Args)]
pub struct Conn {
    /// The node's WebSocket address.
    #[arg(long, env = "SLIPSTREAM_URL", default_value = "ws://127.0.0.1:7600")]
    url: String,
    /// Bearer token, when the node requires one.
    #[arg(long, env = "SLIPSTREAM_AUTH_TOKEN")]
    auth_token: Option<String>,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
}

#[derive(Args)]
pub struct PublishArgs {
    #[command(flatten)]
    conn: Conn,
    key: String,
    /// The value: text for a string, a JSON array for an array, a JSON object for weighted.
    value: String,
    #[arg(long, value_enum, default_value_t = Kind::String)]
    kind: Kind,
    /// Only nodes with one of these tags apply the write (comma separated).
    #[arg(long)]
    tags: Option<String>,
    /// The message id (default: generated); publishing the same id again is a no-op.
    #[arg(long)]
    message_id: Option<String>,
}

#[derive(Args)]
pub struct GetArgs {
    #[command(flatten)]
    conn: Conn,
    key: String,
    #[arg(long, value_enum, default_value_t = Kind::String)]
    kind: Kind,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(conn: &Conn) -> anyhow::Result<Ws> {
    let mut request = conn
        .url
        .as_str()
        .into_client_request()
        .context("bad --url")?;
    if let Some(t) = &conn.auth_token {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {t}").parse()?);
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .with_context(|| format!("cannot connect to {}", conn.url))?;
    let hello = Message::hello(Hello {
        instance_id: format!("cli-{}", std::process::id()),
        tags: Vec::new(),
        cluster_group_id: None,
        role: Role::Client,
        protocol_version: PROTOCOL_VERSION,
        delivers_to: None,
        linked_to: None,
    });
    ws.send(WsMessage::Text(hello.encode().into())).await?;
    Ok(ws)
}

/// Sends `msg` and returns the first message `pick` accepts.
async fn exchange(
    conn: &Conn,
    msg: Message,
    pick: impl Fn(&Message) -> bool,
) -> anyhow::Result<Message> {
    let mut ws = connect(conn).await?;
    ws.send(WsMessage::Text(msg.encode().into())).await?;
    let wait = async {
        while let Some(frame) = ws.next().await {
            let WsMessage::Text(text) = frame? else {
                continue;
            };
            for item in decode_frame(text.as_str(), &Limits::default())
                .map_err(|e| anyhow!("node sent a bad frame: {e}"))?
            {
                let Ok(m) = item else { continue };
                if pick(&m) {
                    return Ok(m);
                }
            }
        }
        bail!("the node closed the connection before answering")
    };
    let answer = tokio::time::timeout(Duration::from_secs(conn.timeout), wait)
        .await
        .map_err(|_| anyhow!("no answer within {} s", conn.timeout))??;
    let _ = ws.close(None).await;
    Ok(answer)
}

fn parse_value(kind: Kind, text: &str) -> anyhow::Result<Value> {
    Ok(match kind {
        Kind::String => Value::String(text.to_owned()),
        Kind::Array => Value::Array(
            serde_json::from_str(text).context("an array value must be a JSON array of strings")?,
        ),
        Kind::Weighted => Value::Weighted(
            serde_json::from_str(text)
                .context("a weighted value must be a JSON object of member to number")?,
        ),
    })
}

fn value_kind(kind: Kind) -> ValueKind {
    match kind {
        Kind::String => ValueKind::String,
        Kind::Array => ValueKind::Array,
        Kind::Weighted => ValueKind::Weighted,
    }
}

fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("slipstream: {e:#}");
    ExitCode::FAILURE
}

pub async fn publish(args: PublishArgs) -> ExitCode {
    let value = match parse_value(args.kind, &args.value) {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    let id = args.message_id.unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!("cli-{}-{nanos}", std::process::id())
    });
    let targeted = args
        .tags
        .map(|t| {
            t.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let msg = Message {
        env: Envelope {
            message_id: Some(id.clone()),
            targeted_tags: targeted,
            ..Envelope::default()
        },
        body: Body::Set {
            key: args.key,
            value,
        },
    };
    let wanted = id.clone();
    let answer = exchange(&args.conn, msg, |m| match &m.body {
        Body::Ack { message_ids } => message_ids.contains(&wanted),
        Body::Nack { .. } => {
            m.env.message_id.as_deref() == Some(&wanted) || m.env.message_id.is_none()
        }
        _ => false,
    })
    .await;
    match answer {
        Ok(Message {
            body: Body::Ack { .. },
            ..
        }) => {
            println!(
                "{}",
                serde_json::json!({"messageId": id, "status": "recorded"})
            );
            ExitCode::SUCCESS
        }
        Ok(Message {
            body: Body::Nack { error },
            ..
        }) => fail(anyhow!("rejected: {error}")),
        Ok(_) => unreachable!("only ACK and NACK are picked"),
        Err(e) => fail(e),
    }
}

pub async fn get(args: GetArgs) -> ExitCode {
    let id = format!("cli-get-{}", std::process::id());
    let msg = Message {
        env: Envelope {
            message_id: Some(id.clone()),
            ..Envelope::default()
        },
        body: Body::Get {
            kind: value_kind(args.kind),
            key: args.key.clone(),
        },
    };
    let answer = exchange(&args.conn, msg, |m| match &m.body {
        Body::Res(r) => r.in_reply_to == id,
        Body::Nack { .. } => true,
        _ => false,
    })
    .await;
    match answer {
        Ok(Message {
            body: Body::Res(r), ..
        }) => {
            if let Some(e) = r.error {
                return fail(anyhow!("{e}"));
            }
            println!(
                "{}",
                serde_json::json!({
                    "key": args.key, "found": r.found, "value": r.value,
                    "hlc": r.hlc.map(|h| h.to_string()), "instanceId": r.instance_id,
                })
            );
            if r.found {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Ok(Message {
            body: Body::Nack { error },
            ..
        }) => fail(anyhow!("rejected: {error}")),
        Ok(_) => unreachable!("only RES and NACK are picked"),
        Err(e) => fail(e),
    }
}
