//! The local store: the embedded one (SQLite, in the same database and transaction as the
//! journal) or Redis (`SLIPSTREAM_REDIS_URL`, applied by the [`applier`] from a durable queue).

pub mod applier;
pub mod redis;

use slipstream_protocol::{Body, Message, Value};
use slipstream_storage::Apply;

/// Commands Slipstream knows how to run.
pub const KNOWN_COMMANDS: [&str; 3] = ["DEL", "EXPIRE", "PING"];

/// What a write does to the store: `None` for a `PING` (or a message that changes nothing),
/// an error naming what is wrong with a command's arguments.
pub fn apply_of(msg: &Message) -> Result<Option<Apply>, String> {
    match &msg.body {
        Body::Set { key, value } => Ok(Some(Apply::Set {
            key: key.clone(),
            value: value.clone(),
        })),
        Body::Command { command, args } => match command.to_ascii_uppercase().as_str() {
            "DEL" => match args.as_slice() {
                [key] => Ok(Some(Apply::Delete { key: key.clone() })),
                _ => Err("DEL takes exactly one key in `args`".to_owned()),
            },
            "EXPIRE" => match args.as_slice() {
                [key, secs] => secs
                    .parse::<u64>()
                    .map(|seconds| {
                        Some(Apply::Expire {
                            key: key.clone(),
                            seconds,
                        })
                    })
                    .map_err(|_| format!("EXPIRE seconds must be a whole number, got {secs:?}")),
                _ => Err("EXPIRE takes `args` [key, seconds]".to_owned()),
            },
            "PING" if args.is_empty() => Ok(None),
            "PING" => Err("PING takes no `args`".to_owned()),
            other => Err(format!(
                "unknown command {other:?}; Slipstream runs DEL, EXPIRE and PING"
            )),
        },
        _ => Ok(None),
    }
}

/// The store's write of a `SK`, `SA` or `SW`, moved out of the message rather than copied:
/// once the message is encoded for the journal, nothing reads its key or value again, and a
/// value may be large. `None` for any other message.
pub fn take_set(msg: &mut Message) -> Option<Apply> {
    match &mut msg.body {
        Body::Set { key, value } => Some(Apply::Set {
            key: std::mem::take(key),
            value: std::mem::replace(value, Value::String(String::new())),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use slipstream_protocol::Envelope;

    use super::*;

    fn cmd(c: &str, args: &[&str]) -> Message {
        Message {
            env: Envelope::default(),
            body: Body::Command {
                command: c.into(),
                args: args.iter().map(|s| s.to_string()).collect(),
            },
        }
    }

    #[test]
    fn commands_map_to_applies() {
        assert_eq!(
            apply_of(&cmd("del", &["k"])).unwrap(),
            Some(Apply::Delete { key: "k".into() })
        );
        assert_eq!(
            apply_of(&cmd("EXPIRE", &["k", "30"])).unwrap(),
            Some(Apply::Expire {
                key: "k".into(),
                seconds: 30
            })
        );
        assert_eq!(apply_of(&cmd("PING", &[])).unwrap(), None);
        assert!(apply_of(&cmd("DEL", &["a", "b"]))
            .unwrap_err()
            .contains("exactly one key"));
        assert!(apply_of(&cmd("EXPIRE", &["k", "soon"]))
            .unwrap_err()
            .contains("whole number"));
        assert!(apply_of(&cmd("FLUSHALL", &[]))
            .unwrap_err()
            .contains("unknown command"));
        let set = Message {
            env: Envelope::default(),
            body: Body::Set {
                key: "k".into(),
                value: Value::String("v".into()),
            },
        };
        assert_eq!(
            apply_of(&set).unwrap(),
            Some(Apply::Set {
                key: "k".into(),
                value: Value::String("v".into())
            })
        );
        let mut taken = set.clone();
        assert_eq!(take_set(&mut taken), apply_of(&set).unwrap());
        assert_eq!(take_set(&mut cmd("DEL", &["k"])), None);
    }
}
