//! The message model (SPEC §3): a typed view of every wire message.
//!
//! Decoding is context-free (see [`crate::codec`]); what a message must carry also depends on
//! who sent it (a local app or a peer), which [`Message::check_from_peer`] adds.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::codec::{push_json_str, push_json_strs, value_bytes};
use crate::hlc::Hlc;

/// The `clusterGroupId` a message without one belongs to.
pub const DEFAULT_CLUSTER_GROUP: &str = "singleton";
/// The protocol version this implementation speaks in `HELLO`.
pub const PROTOCOL_VERSION: u64 = 1;

/// The `type` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    Sk,
    Sa,
    Sw,
    Cmd,
    Gk,
    Ga,
    Gw,
    Ack,
    Nack,
    Res,
    Hello,
}

impl MessageType {
    pub const ALL: [MessageType; 11] = [
        MessageType::Sk,
        MessageType::Sa,
        MessageType::Sw,
        MessageType::Cmd,
        MessageType::Gk,
        MessageType::Ga,
        MessageType::Gw,
        MessageType::Ack,
        MessageType::Nack,
        MessageType::Res,
        MessageType::Hello,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Sk => "SK",
            MessageType::Sa => "SA",
            MessageType::Sw => "SW",
            MessageType::Cmd => "CMD",
            MessageType::Gk => "GK",
            MessageType::Ga => "GA",
            MessageType::Gw => "GW",
            MessageType::Ack => "ACK",
            MessageType::Nack => "NACK",
            MessageType::Res => "RES",
            MessageType::Hello => "HELLO",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "SK" => MessageType::Sk,
            "SA" => MessageType::Sa,
            "SW" => MessageType::Sw,
            "CMD" => MessageType::Cmd,
            "GK" => MessageType::Gk,
            "GA" => MessageType::Ga,
            "GW" => MessageType::Gw,
            "ACK" => MessageType::Ack,
            "NACK" => MessageType::Nack,
            "RES" => MessageType::Res,
            "HELLO" => MessageType::Hello,
            _ => return None,
        })
    }

    /// Writes are recorded durably, applied and forwarded with store-and-forward delivery.
    pub fn is_write(self) -> bool {
        matches!(
            self,
            MessageType::Sk | MessageType::Sa | MessageType::Sw | MessageType::Cmd
        )
    }
}

/// What kind of value a key holds in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueKind {
    String,
    Array,
    Weighted,
}

impl ValueKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ValueKind::String => "string",
            ValueKind::Array => "array",
            ValueKind::Weighted => "weighted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "string" => Some(ValueKind::String),
            "array" => Some(ValueKind::Array),
            "weighted" => Some(ValueKind::Weighted),
            _ => None,
        }
    }
}

/// A value as stored: a string (`SK`), a list (`SA`) or a weighted set (`SW`).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    String(String),
    Array(Vec<String>),
    Weighted(BTreeMap<String, f64>),
}

impl Value {
    pub fn kind(&self) -> ValueKind {
        match self {
            Value::String(_) => ValueKind::String,
            Value::Array(_) => ValueKind::Array,
            Value::Weighted(_) => ValueKind::Weighted,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::String(s) => serde_json::Value::String(s.clone()),
            Value::Array(a) => serde_json::json!(a),
            Value::Weighted(w) => serde_json::json!(w),
        }
    }

    /// The value as JSON text, as [`Value::to_json`] would print it, without building the
    /// JSON tree first (the store writes this for every write).
    pub fn to_json_text(&self) -> String {
        // Quotes, and commas between items; escapes grow it.
        let items = match self {
            Value::Array(a) => a.len(),
            _ => 1,
        };
        let mut out = String::with_capacity(value_bytes(self) + 3 * items + 2);
        match self {
            Value::String(s) => push_json_str(&mut out, s),
            Value::Array(a) => push_json_strs(&mut out, a),
            Value::Weighted(w) => return serde_json::to_string(w).expect("values serialize"),
        }
        out
    }

    /// Reads a value of a known kind back from JSON (as stored by [`Value::to_json`]).
    pub fn from_json(kind: ValueKind, v: serde_json::Value) -> Option<Value> {
        match kind {
            ValueKind::String => v.as_str().map(|s| Value::String(s.to_owned())),
            ValueKind::Array => serde_json::from_value(v).ok().map(Value::Array),
            ValueKind::Weighted => serde_json::from_value(v).ok().map(Value::Weighted),
        }
    }
}

/// The `role` a connection announces in `HELLO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Peer,
    Client,
}

/// Fields shared by every message.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Envelope {
    pub message_id: Option<String>,
    pub origin_instance_id: Option<String>,
    pub source_instance_id: Option<String>,
    pub message_path: Vec<String>,
    pub targeted_tags: Vec<String>,
    pub cluster_group_id: Option<String>,
    pub hlc: Option<Hlc>,
    /// `relayTo`: peers the receiving node is asked to deliver this message to even though its
    /// origin announced it delivers to them itself (the origin's own link to them is down).
    /// Meaningful only between peers; a relay does not pass it on.
    pub relay_to: Vec<String>,
}

impl Envelope {
    /// The dedup group, with the `singleton` default applied.
    pub fn group(&self) -> &str {
        self.cluster_group_id
            .as_deref()
            .unwrap_or(DEFAULT_CLUSTER_GROUP)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Hello {
    pub instance_id: String,
    pub tags: Vec<String>,
    pub cluster_group_id: Option<String>,
    pub role: Role,
    pub protocol_version: u64,
    /// `deliversTo`: the peers (instance ids) this node delivers the writes that enter the mesh
    /// through it to directly. A receiver does not forward such writes to them again, which
    /// brings a healthy full mesh from O(N²) to N−1 sends per write. Absent (an older node, or
    /// forwarding set to `flood`): every receiver forwards as usual.
    pub delivers_to: Option<Vec<String>>,
    /// `linkedTo`: the peers this node has a live connection to right now. A node whose own
    /// link to a peer is down hands that peer's writes only to a relay linked to it.
    pub linked_to: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Response {
    pub in_reply_to: String,
    pub instance_id: Option<String>,
    pub found: bool,
    pub value: Option<serde_json::Value>,
    pub hlc: Option<Hlc>,
    pub error: Option<String>,
}

/// Type-specific content of a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// `SK`, `SA`, `SW`.
    Set {
        key: String,
        value: Value,
    },
    Command {
        command: String,
        args: Vec<String>,
    },
    /// `GK`, `GA`, `GW`.
    Get {
        kind: ValueKind,
        key: String,
    },
    /// The acknowledged ids: `messageId` and every entry of `messageIds`.
    Ack {
        message_ids: Vec<String>,
    },
    Nack {
        error: String,
    },
    Res(Response),
    Hello(Hello),
}

/// One decoded and validated message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub env: Envelope,
    pub body: Body,
}

/// A message that failed validation: the reason names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Invalid {
    /// The message's `messageId`, when it could be read, so the NACK can name it.
    pub message_id: Option<String>,
    pub reason: String,
}

impl Message {
    pub fn message_type(&self) -> MessageType {
        match &self.body {
            Body::Set { value, .. } => match value {
                Value::String(_) => MessageType::Sk,
                Value::Array(_) => MessageType::Sa,
                Value::Weighted(_) => MessageType::Sw,
            },
            Body::Command { .. } => MessageType::Cmd,
            Body::Get { kind, .. } => match kind {
                ValueKind::String => MessageType::Gk,
                ValueKind::Array => MessageType::Ga,
                ValueKind::Weighted => MessageType::Gw,
            },
            Body::Ack { .. } => MessageType::Ack,
            Body::Nack { .. } => MessageType::Nack,
            Body::Res(_) => MessageType::Res,
            Body::Hello(_) => MessageType::Hello,
        }
    }

    /// A message relayed by a peer must say where it came from; a local app's need not
    /// (the node becomes its origin).
    pub fn check_from_peer(&self) -> Result<(), Invalid> {
        let invalid = |reason: &str| Invalid {
            message_id: self.env.message_id.clone(),
            reason: reason.to_owned(),
        };
        if !self.message_type().is_write() && !matches!(self.body, Body::Get { .. }) {
            return Ok(());
        }
        if self.env.message_id.is_none() {
            return Err(invalid(
                "field `messageId` is required on a message relayed by a peer",
            ));
        }
        if self.env.origin_instance_id.is_none() {
            return Err(invalid(
                "field `originInstanceId` is required on a message relayed by a peer",
            ));
        }
        if self.env.message_path.is_empty() {
            return Err(invalid(
                "field `messagePath` must hold at least the origin on a message relayed by a peer",
            ));
        }
        Ok(())
    }

    pub fn ack(self_id: &str, message_ids: Vec<String>) -> Message {
        Message {
            env: Envelope::from_self(self_id),
            body: Body::Ack { message_ids },
        }
    }

    pub fn nack(self_id: &str, message_id: Option<String>, error: String) -> Message {
        let mut env = Envelope::from_self(self_id);
        env.message_id = message_id;
        Message {
            env,
            body: Body::Nack { error },
        }
    }

    pub fn hello(hello: Hello) -> Message {
        let env = Envelope::from_self(&hello.instance_id);
        Message {
            env,
            body: Body::Hello(hello),
        }
    }

    pub fn key(&self) -> Option<&str> {
        match &self.body {
            Body::Set { key, .. } | Body::Get { key, .. } => Some(key),
            _ => None,
        }
    }
}

impl Envelope {
    /// The envelope of a control message (ACK, NACK, HELLO) this node sends itself.
    pub fn from_self(self_id: &str) -> Envelope {
        Envelope {
            origin_instance_id: Some(self_id.to_owned()),
            source_instance_id: Some(self_id.to_owned()),
            message_path: vec![self_id.to_owned()],
            ..Envelope::default()
        }
    }
}

/// The version a stored value carries: the last writer wins by `hlc`, ties broken by origin
/// instance id (SPEC §6). Every node compares versions the same way, so every node that sees
/// the same writes ends with the same value, whatever order they arrive in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub hlc: Hlc,
    pub origin: String,
}

impl Version {
    /// Whether a write with this version replaces a value stored with `stored`. An equal
    /// version is the same write arriving again, so it changes nothing.
    pub fn supersedes(&self, stored: Option<&Version>) -> bool {
        stored.is_none_or(|s| self > s)
    }
}
