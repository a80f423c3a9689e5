//! Frame decoding and encoding (SPEC §3).
//!
//! A frame is one JSON message object or a JSON array of them. Well-formed frames of writes,
//! gets and ACKs take a typed fast path (`fast.rs`); everything else, and every error, is
//! decoded field by field from a parsed JSON tree rather than with a derived deserializer, so
//! that every rejection names the offending field: the NACK reason is what an application
//! developer reads when an integration goes wrong.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value as Json};

use crate::hlc::Hlc;
use crate::message::{
    Body, Envelope, Hello, Invalid, Message, MessageType, Response, Role, Value, ValueKind,
};

/// Size and shape limits applied while decoding. Each is configurable on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted frame, in bytes.
    pub max_frame_bytes: usize,
    /// Most messages in one array frame.
    pub max_batch: usize,
    /// Longest `messagePath`.
    pub max_path: usize,
    /// Longest key, in bytes.
    pub max_key_bytes: usize,
    /// Largest value, in bytes (the string, or the sum of members for SA and SW).
    pub max_value_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 1024 * 1024,
            max_batch: 1000,
            max_path: 64,
            max_key_bytes: 1024,
            max_value_bytes: 512 * 1024,
        }
    }
}

/// A frame that could not be split into messages at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("frame is not valid JSON: {0}")]
    Json(String),
    #[error("frame must be a JSON object or an array of objects, got {0}")]
    NotAMessage(&'static str),
    #[error("batch of {size} messages exceeds the limit of {limit}")]
    BatchTooLarge { size: usize, limit: usize },
    #[error("frame is an empty array")]
    EmptyBatch,
    #[error("binary frames are not accepted; send JSON text frames")]
    Binary,
}

/// Decodes one frame. The outer error means nothing in the frame could be used; otherwise
/// each element is validated on its own, so one bad message in a batch does not sink the rest.
pub fn decode_frame(
    text: &str,
    limits: &Limits,
) -> Result<Vec<Result<Message, Invalid>>, FrameError> {
    if text.len() > limits.max_frame_bytes {
        return Err(FrameError::TooLarge {
            size: text.len(),
            limit: limits.max_frame_bytes,
        });
    }
    if let Some(messages) = crate::fast::decode_frame(text, limits) {
        return Ok(messages.into_iter().map(Ok).collect());
    }
    decode_frame_general(text, limits)
}

/// The general path: every frame the fast path leaves, and every error.
pub fn decode_frame_general(
    text: &str,
    limits: &Limits,
) -> Result<Vec<Result<Message, Invalid>>, FrameError> {
    let json: Json = serde_json::from_str(text).map_err(|e| FrameError::Json(e.to_string()))?;
    match json {
        Json::Object(map) => Ok(vec![decode_message(map, limits)]),
        Json::Array(items) => {
            if items.is_empty() {
                return Err(FrameError::EmptyBatch);
            }
            if items.len() > limits.max_batch {
                return Err(FrameError::BatchTooLarge {
                    size: items.len(),
                    limit: limits.max_batch,
                });
            }
            Ok(items
                .into_iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Json::Object(map) => decode_message(map, limits),
                    other => Err(Invalid {
                        message_id: None,
                        reason: format!(
                            "batch element {i} must be a message object, got {}",
                            json_kind(&other)
                        ),
                    }),
                })
                .collect())
        }
        other => Err(FrameError::NotAMessage(json_kind(&other))),
    }
}

/// Decodes one message object.
pub fn decode_message(map: Map<String, Json>, limits: &Limits) -> Result<Message, Invalid> {
    let f = Fields::new(&map);
    let message_id = f.opt_str("messageId").ok().flatten().map(str::to_owned);
    f.decode(limits)
        .map_err(|reason| Invalid { message_id, reason })
}

/// Longest id (`messageId`, instance ids, `clusterGroupId`), in characters.
pub(crate) const MAX_ID_CHARS: usize = 256;
/// Most `targetedTags` of a message, and `tags` of a `HELLO`.
pub(crate) const MAX_TAGS: usize = 256;
/// Most `args` of a `CMD`.
pub(crate) const MAX_ARGS: usize = 1024;

pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.chars().count() <= MAX_ID_CHARS
}

pub(crate) fn valid_key(key: &str, limits: &Limits) -> bool {
    !key.is_empty() && key.len() <= limits.max_key_bytes
}

/// A value's size as counted against `max_value_bytes`: its strings, and a member's name plus
/// eight bytes per weight.
pub(crate) fn value_bytes(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        Value::Array(a) => a.iter().map(String::len).sum(),
        Value::Weighted(w) => w.keys().map(|m| m.len() + 8).sum(),
    }
}

/// The ids an ACK settles: `messageId`, then every entry of `messageIds`, each once, in
/// order. (A set, not a scan of the list for each id: an ACK may name a thousand ids.)
pub(crate) fn ack_ids(first: Option<String>, rest: Vec<String>) -> Vec<String> {
    let keep: Vec<bool> = {
        // Sized once: grown from empty, the set rehashed about as many ids again as it held.
        let mut seen =
            foldhash::HashSet::with_capacity_and_hasher(rest.len() + 1, Default::default());
        seen.extend(first.as_deref());
        rest.iter().map(|id| seen.insert(id.as_str())).collect()
    };
    let mut ids: Vec<String> = Vec::with_capacity(rest.len() + 1);
    ids.extend(first);
    ids.extend(
        rest.into_iter()
            .zip(keep)
            .filter_map(|(id, new)| new.then_some(id)),
    );
    ids
}

fn json_kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// Field accessors whose errors name the field.
struct Fields<'a>(&'a Map<String, Json>);

impl<'a> Fields<'a> {
    fn new(map: &'a Map<String, Json>) -> Self {
        Fields(map)
    }

    /// Absent and `null` both mean "not given".
    fn get(&self, name: &str) -> Option<&'a Json> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    fn opt_str(&self, name: &str) -> Result<Option<&'a str>, String> {
        match self.get(name) {
            None => Ok(None),
            Some(Json::String(s)) => Ok(Some(s)),
            Some(other) => Err(format!(
                "field `{name}` must be a string, got {}",
                json_kind(other)
            )),
        }
    }

    fn req_str(&self, name: &str) -> Result<&'a str, String> {
        self.opt_str(name)?
            .ok_or_else(|| format!("field `{name}` is required"))
    }

    fn opt_id(&self, name: &str) -> Result<Option<String>, String> {
        match self.opt_str(name)? {
            None => Ok(None),
            Some(s) if !valid_id(s) => Err(format!(
                "field `{name}` must be 1 to {MAX_ID_CHARS} characters"
            )),
            Some(s) => Ok(Some(s.to_owned())),
        }
    }

    fn str_array(&self, name: &str, max: usize) -> Result<Vec<String>, String> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(Json::Array(items)) => {
                if items.len() > max {
                    return Err(format!(
                        "field `{name}` has {} entries, more than the limit of {max}",
                        items.len()
                    ));
                }
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| match v {
                        Json::String(s) => Ok(s.clone()),
                        other => Err(format!(
                            "field `{name}[{i}]` must be a string, got {}",
                            json_kind(other)
                        )),
                    })
                    .collect()
            }
            Some(other) => Err(format!(
                "field `{name}` must be an array of strings, got {}",
                json_kind(other)
            )),
        }
    }

    fn key(&self, limits: &Limits) -> Result<String, String> {
        let key = self.req_str("key")?;
        if key.is_empty() {
            return Err("field `key` must not be empty".to_owned());
        }
        if key.len() > limits.max_key_bytes {
            return Err(format!(
                "field `key` is {} bytes, more than the limit of {}",
                key.len(),
                limits.max_key_bytes
            ));
        }
        Ok(key.to_owned())
    }

    fn value(&self, kind: ValueKind, limits: &Limits) -> Result<Value, String> {
        let raw = self.get("value").ok_or("field `value` is required")?;
        let value = match (kind, raw) {
            (ValueKind::String, Json::String(s)) => Value::String(s.clone()),
            (ValueKind::String, other) => {
                return Err(format!(
                    "field `value` must be a string for SK, got {}",
                    json_kind(other)
                ))
            }
            (ValueKind::Array, Json::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, v) in items.iter().enumerate() {
                    match v {
                        Json::String(s) => out.push(s.clone()),
                        other => {
                            return Err(format!(
                                "field `value[{i}]` must be a string for SA, got {}",
                                json_kind(other)
                            ))
                        }
                    }
                }
                Value::Array(out)
            }
            (ValueKind::Array, other) => {
                return Err(format!(
                    "field `value` must be an array of strings for SA, got {}",
                    json_kind(other)
                ))
            }
            (ValueKind::Weighted, Json::Object(members)) => {
                let mut out = BTreeMap::new();
                for (member, w) in members {
                    let weight = w.as_f64().filter(|f| f.is_finite()).ok_or_else(|| {
                        format!("field `value.{member}` must be a finite number (the weight) for SW, got {}", json_kind(w))
                    })?;
                    out.insert(member.clone(), weight);
                }
                Value::Weighted(out)
            }
            (ValueKind::Weighted, other) => {
                return Err(format!(
                    "field `value` must be an object of member to weight for SW, got {}",
                    json_kind(other)
                ))
            }
        };
        let size = value_bytes(&value);
        if size > limits.max_value_bytes {
            return Err(format!(
                "field `value` is {size} bytes, more than the limit of {}",
                limits.max_value_bytes
            ));
        }
        Ok(value)
    }

    fn decode(&self, limits: &Limits) -> Result<Message, String> {
        let ty = self.req_str("type")?;
        let ty = MessageType::parse(ty).ok_or_else(|| {
            format!("field `type` has unknown value {ty:?}; expected one of SK, SA, SW, CMD, GK, GA, GW, ACK, NACK, RES, HELLO")
        })?;
        let hlc = match self.opt_str("hlc")? {
            None => None,
            Some(s) => Some(s.parse::<Hlc>().map_err(|e| format!("field `hlc` {e}"))?),
        };
        let mut env = Envelope {
            message_id: self.opt_id("messageId")?,
            origin_instance_id: self.opt_id("originInstanceId")?,
            source_instance_id: self.opt_id("sourceInstanceId")?,
            message_path: self.str_array("messagePath", limits.max_path)?,
            targeted_tags: self.str_array("targetedTags", MAX_TAGS)?,
            cluster_group_id: self.opt_id("clusterGroupId")?,
            hlc,
            relay_to: self.str_array("relayTo", limits.max_path)?,
        };
        let body = match ty {
            MessageType::Sk => Body::Set {
                key: self.key(limits)?,
                value: self.value(ValueKind::String, limits)?,
            },
            MessageType::Sa => Body::Set {
                key: self.key(limits)?,
                value: self.value(ValueKind::Array, limits)?,
            },
            MessageType::Sw => Body::Set {
                key: self.key(limits)?,
                value: self.value(ValueKind::Weighted, limits)?,
            },
            MessageType::Gk => Body::Get {
                kind: ValueKind::String,
                key: self.key(limits)?,
            },
            MessageType::Ga => Body::Get {
                kind: ValueKind::Array,
                key: self.key(limits)?,
            },
            MessageType::Gw => Body::Get {
                kind: ValueKind::Weighted,
                key: self.key(limits)?,
            },
            MessageType::Cmd => {
                let command = self.req_str("command")?;
                if command.is_empty() {
                    return Err("field `command` must not be empty".to_owned());
                }
                Body::Command {
                    command: command.to_owned(),
                    args: self.str_array("args", MAX_ARGS)?,
                }
            }
            MessageType::Ack => {
                let listed = self.str_array("messageIds", limits.max_batch)?;
                if !listed.iter().all(|id| valid_id(id)) {
                    return Err(format!(
                        "field `messageIds` must hold ids of 1 to {MAX_ID_CHARS} characters"
                    ));
                }
                let ids = ack_ids(env.message_id.clone(), listed);
                if ids.is_empty() {
                    return Err("ACK needs field `messageId` or `messageIds`".to_owned());
                }
                // An ACK's `messageId` is its first id (as it is encoded), also when only
                // `messageIds` came: decoding what was encoded gives the same message.
                env.message_id = ids.first().cloned();
                Body::Ack { message_ids: ids }
            }
            MessageType::Nack => Body::Nack {
                error: self.opt_str("error")?.unwrap_or("").to_owned(),
            },
            MessageType::Res => Body::Res(Response {
                in_reply_to: self.req_str("inReplyTo")?.to_owned(),
                instance_id: self.opt_id("instanceId")?,
                found: match self.get("found") {
                    None => false,
                    Some(Json::Bool(b)) => *b,
                    Some(other) => {
                        return Err(format!(
                            "field `found` must be a boolean, got {}",
                            json_kind(other)
                        ))
                    }
                },
                value: self.get("value").cloned(),
                hlc: match self.get("hlc") {
                    None => None,
                    Some(_) => hlc,
                },
                error: self.opt_str("error")?.map(str::to_owned),
            }),
            MessageType::Hello => Body::Hello(Hello {
                instance_id: self
                    .opt_id("instanceId")?
                    .ok_or("field `instanceId` is required")?,
                tags: self.str_array("tags", MAX_TAGS)?,
                cluster_group_id: env.cluster_group_id.clone(),
                role: match self.opt_str("role")? {
                    None | Some("peer") => Role::Peer,
                    Some("client") => Role::Client,
                    Some(other) => {
                        return Err(format!(
                            "field `role` must be \"peer\" or \"client\", got {other:?}"
                        ))
                    }
                },
                protocol_version: match self.get("protocolVersion") {
                    None => 1,
                    Some(v) => v.as_u64().ok_or_else(|| {
                        format!(
                            "field `protocolVersion` must be a positive integer, got {}",
                            json_kind(v)
                        )
                    })?,
                },
                delivers_to: match self.get("deliversTo") {
                    None => None,
                    Some(_) => Some(self.str_array("deliversTo", 4096)?),
                },
                linked_to: match self.get("linkedTo") {
                    None => None,
                    Some(_) => Some(self.str_array("linkedTo", 4096)?),
                },
            }),
        };
        Ok(Message { env, body })
    }
}

/// The wire form, borrowed from a [`Message`], as serde writes it: the reference the
/// hand-written encoder ([`Message::encode`]) is checked against, field by field and byte by
/// byte.
#[cfg(test)]
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Wire<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<WireValue<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    args: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_ids: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    origin_instance_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_instance_id: Option<&'a str>,
    message_path: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    targeted_tags: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster_group_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hlc: Option<String>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    relay_to: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    in_reply_to: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    instance_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    found: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tags: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<Role>,
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol_version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delivers_to: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    linked_to: Option<&'a [String]>,
}

#[cfg(test)]
#[derive(Serialize)]
#[serde(untagged)]
enum WireValue<'a> {
    String(&'a str),
    Array(&'a [String]),
    Weighted(&'a BTreeMap<String, f64>),
    Json(&'a Json),
}

#[cfg(test)]
impl<'a> From<&'a Message> for Wire<'a> {
    fn from(m: &'a Message) -> Self {
        let env = &m.env;
        let mut w = Wire {
            ty: m.message_type().as_str(),
            key: m.key(),
            value: None,
            command: None,
            args: None,
            message_id: env.message_id.as_deref(),
            message_ids: None,
            origin_instance_id: env.origin_instance_id.as_deref(),
            source_instance_id: env.source_instance_id.as_deref(),
            message_path: &env.message_path,
            targeted_tags: &env.targeted_tags,
            cluster_group_id: env.cluster_group_id.as_deref(),
            hlc: env.hlc.map(|h| h.to_string()),
            relay_to: &env.relay_to,
            error: None,
            in_reply_to: None,
            instance_id: None,
            found: None,
            tags: None,
            role: None,
            protocol_version: None,
            delivers_to: None,
            linked_to: None,
        };
        match &m.body {
            Body::Set { value, .. } => {
                w.value = Some(match value {
                    Value::String(s) => WireValue::String(s),
                    Value::Array(a) => WireValue::Array(a),
                    Value::Weighted(ws) => WireValue::Weighted(ws),
                })
            }
            Body::Command { command, args } => {
                w.command = Some(command);
                w.args = Some(args);
            }
            Body::Get { .. } => {}
            Body::Ack { message_ids } => {
                // `messageId` carries the first id for receivers that read only that field.
                w.message_id = message_ids.first().map(String::as_str);
                if message_ids.len() > 1 {
                    w.message_ids = Some(message_ids);
                }
            }
            Body::Nack { error } => w.error = Some(error),
            Body::Res(r) => {
                w.in_reply_to = Some(&r.in_reply_to);
                w.instance_id = r.instance_id.as_deref();
                w.found = Some(r.found);
                w.value = r.value.as_ref().map(WireValue::Json);
                w.hlc = r.hlc.map(|h| h.to_string());
                w.error = r.error.as_deref();
            }
            Body::Hello(h) => {
                w.instance_id = Some(&h.instance_id);
                w.tags = Some(&h.tags);
                w.cluster_group_id = h.cluster_group_id.as_deref();
                w.role = Some(h.role);
                w.protocol_version = Some(h.protocol_version);
                w.delivers_to = h.delivers_to.as_deref();
                w.linked_to = h.linked_to.as_deref();
            }
        }
        w
    }
}

impl Message {
    /// The message as one JSON text (a single-message frame).
    ///
    /// Written by hand, in the field order and with the bytes serde would write (a test holds
    /// it to a derived serializer, `Wire`): every write is encoded where it enters the mesh and
    /// again at each node that records it, and through serde that was about a tenth of a
    /// replica's instructions per write, mostly escaping field names and growing the output
    /// (BENCHMARKS.md). Rare fields and values (weighted sets, replies' JSON values) still go
    /// through serde.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(self.encoded_len_hint());
        self.encode_into(&mut out);
        out
    }

    /// About the encoded length, so that the output is allocated once.
    fn encoded_len_hint(&self) -> usize {
        let env = &self.env;
        let opt = |s: &Option<String>| s.as_ref().map_or(0, |s| s.len() + 24);
        let list = |l: &[String]| l.iter().map(|s| s.len() + 3).sum::<usize>() + 16;
        let body = match &self.body {
            Body::Set { key, value } => {
                key.len()
                    + 16
                    + match value {
                        Value::String(s) => s.len() + 12,
                        Value::Array(a) => list(a),
                        Value::Weighted(w) => w.keys().map(|k| k.len() + 24).sum::<usize>() + 12,
                    }
            }
            Body::Ack { message_ids } => list(message_ids) + 16,
            _ => 64,
        };
        48 + body
            + opt(&env.message_id)
            + opt(&env.origin_instance_id)
            + opt(&env.source_instance_id)
            + opt(&env.cluster_group_id)
            + list(&env.message_path)
            + list(&env.targeted_tags)
            + list(&env.relay_to)
            + 26
    }

    fn encode_into(&self, out: &mut String) {
        let env = &self.env;
        let mut o = Object::open(out);
        o.str("type", self.message_type().as_str());
        o.opt_str("key", self.key());
        match &self.body {
            Body::Set { value, .. } => match value {
                Value::String(s) => o.str("value", s),
                Value::Array(a) => o.strs("value", a),
                Value::Weighted(w) => o.serde("value", w),
            },
            Body::Res(r) => {
                if let Some(v) = &r.value {
                    o.serde("value", v);
                }
            }
            _ => {}
        }
        if let Body::Command { command, args } = &self.body {
            o.str("command", command);
            o.strs("args", args);
        }
        match &self.body {
            // `messageId` carries the first id for receivers that read only that field.
            Body::Ack { message_ids } => {
                o.opt_str("messageId", message_ids.first().map(String::as_str));
                if message_ids.len() > 1 {
                    o.strs("messageIds", message_ids);
                }
            }
            _ => o.opt_str("messageId", env.message_id.as_deref()),
        }
        o.opt_str("originInstanceId", env.origin_instance_id.as_deref());
        o.opt_str("sourceInstanceId", env.source_instance_id.as_deref());
        o.strs("messagePath", &env.message_path);
        if !env.targeted_tags.is_empty() {
            o.strs("targetedTags", &env.targeted_tags);
        }
        match &self.body {
            Body::Hello(h) => o.opt_str("clusterGroupId", h.cluster_group_id.as_deref()),
            _ => o.opt_str("clusterGroupId", env.cluster_group_id.as_deref()),
        }
        let hlc = match &self.body {
            Body::Res(r) => r.hlc,
            _ => env.hlc,
        };
        if let Some(h) = hlc {
            o.key("hlc");
            o.out.push('"');
            o.out.push_str(h.to_text().as_str());
            o.out.push('"');
        }
        if !env.relay_to.is_empty() {
            o.strs("relayTo", &env.relay_to);
        }
        match &self.body {
            Body::Nack { error } => o.str("error", error),
            Body::Res(r) => o.opt_str("error", r.error.as_deref()),
            _ => {}
        }
        match &self.body {
            Body::Res(r) => {
                o.str("inReplyTo", &r.in_reply_to);
                o.opt_str("instanceId", r.instance_id.as_deref());
                o.key("found");
                o.out.push_str(if r.found { "true" } else { "false" });
            }
            Body::Hello(h) => {
                o.str("instanceId", &h.instance_id);
                o.strs("tags", &h.tags);
                o.serde("role", &h.role);
                o.serde("protocolVersion", &h.protocol_version);
                if let Some(d) = &h.delivers_to {
                    o.strs("deliversTo", d);
                }
                if let Some(l) = &h.linked_to {
                    o.strs("linkedTo", l);
                }
            }
            _ => {}
        }
        o.close();
    }
}

/// A JSON object being written field by field.
struct Object<'o> {
    out: &'o mut String,
    first: bool,
}

impl<'o> Object<'o> {
    fn open(out: &'o mut String) -> Self {
        out.push('{');
        Object { out, first: true }
    }

    /// A field's name (none of them needs escaping) and its colon.
    fn key(&mut self, name: &str) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        self.out.push('"');
        self.out.push_str(name);
        self.out.push_str("\":");
    }

    fn str(&mut self, name: &str, value: &str) {
        self.key(name);
        push_json_str(self.out, value);
    }

    fn opt_str(&mut self, name: &str, value: Option<&str>) {
        if let Some(v) = value {
            self.str(name, v);
        }
    }

    fn strs(&mut self, name: &str, values: &[String]) {
        self.key(name);
        push_json_strs(self.out, values);
    }

    fn serde<T: Serialize + ?Sized>(&mut self, name: &str, value: &T) {
        self.key(name);
        self.out
            .push_str(&serde_json::to_string(value).expect("a message always serializes"));
    }

    fn close(self) {
        self.out.push('}');
    }
}

/// A JSON string, as serde_json writes it. Most strings need no escaping (ids, keys, values
/// of plain text); they are checked without a branch per byte, so the check vectorizes, and
/// copied whole. The rest go through serde_json.
pub(crate) fn push_json_str(out: &mut String, s: &str) {
    let plain = s.bytes().fold(true, |plain, b| {
        plain & (b >= 0x20 && b != b'"' && b != b'\\')
    });
    if plain {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(s).expect("strings serialize"));
    }
}

/// A JSON array of strings, as serde_json writes it.
pub(crate) fn push_json_strs(out: &mut String, values: &[String]) {
    out.push('[');
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(out, v);
    }
    out.push(']');
}

/// A list of strings as JSON text, as serde_json writes it, without its per-call setup (the
/// store keeps every write's path this way).
pub fn json_strings(values: &[String]) -> String {
    let mut out = String::with_capacity(values.iter().map(|v| v.len() + 3).sum::<usize>() + 2);
    push_json_strs(&mut out, values);
    out
}

/// Several messages as one array frame.
pub fn encode_batch<'a>(messages: impl IntoIterator<Item = &'a Message>) -> String {
    let mut out = String::from("[");
    for (i, m) in messages.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.reserve(m.encoded_len_hint());
        m.encode_into(&mut out);
    }
    out.push(']');
    out
}

/// Frames acknowledging `ids`: one `ACK` per frame, each naming as many ids as the
/// receiver's limits allow (at most `max_batch` ids, and within `max_frame_bytes`). Usually
/// that is a single frame. A receiver rejects an `ACK` beyond its limits, and a rejected `ACK`
/// leaves every write in it unacknowledged, to be sent again.
pub fn encode_acks(self_id: &str, ids: Vec<String>, limits: &Limits) -> Vec<String> {
    // The envelope around the ids: type, sender fields and path, generously counted.
    let overhead = 200 + 3 * self_id.len();
    let mut frames = Vec::new();
    let mut chunk: Vec<String> = Vec::new();
    let mut bytes = overhead;
    for id in ids {
        // An id costs its escaped length (at most six bytes per byte), quotes and a comma.
        let cost = 6 * id.len() + 3;
        if !chunk.is_empty()
            && (chunk.len() >= limits.max_batch || bytes + cost > limits.max_frame_bytes)
        {
            frames.push(Message::ack(self_id, std::mem::take(&mut chunk)).encode());
            bytes = overhead;
        }
        bytes += cost;
        chunk.push(id);
    }
    if !chunk.is_empty() {
        frames.push(Message::ack(self_id, chunk).encode());
    }
    frames
}

/// Joins already-encoded messages into one frame: a single one stays an object, several
/// become an array. Used where messages are stored encoded and sent without re-encoding.
pub fn join_encoded<S: AsRef<str>>(encoded: &[S]) -> String {
    if encoded.len() == 1 {
        return encoded[0].as_ref().to_owned();
    }
    let len = encoded.iter().map(|e| e.as_ref().len() + 1).sum::<usize>() + 2;
    let mut out = String::with_capacity(len);
    out.push('[');
    for (i, e) in encoded.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(e.as_ref());
    }
    out.push(']');
    out
}

#[cfg(test)]
mod encode_tests {
    use super::*;

    /// Messages of every type, with every optional field present and absent, strings that
    /// need escaping and strings that do not.
    fn corpus() -> Vec<Message> {
        let texts = [
            r#"{"type":"SK","key":"order:123","value":"{...order data...}","messageId":"msg-abc123","originInstanceId":"con-12345","sourceInstanceId":"con-12345","messagePath":["con-12345"],"targetedTags":["aws"],"clusterGroupId":"g","hlc":"0192f3a4b5c60001"}"#,
            r#"{"type":"SK","key":"k","value":"v"}"#,
            r#"{"type":"SK","key":"quote\" back\\ tab\t nl\n ctl\u0001 del\u007f é ✓","value":"\"\\\/\b\f\n\r\t\u0000\u001f","messageId":"a\"b"}"#,
            r#"{"type":"SK","key":"e","value":""}"#,
            r#"{"type":"SA","key":"k","value":["a","b\"c",""],"messagePath":["a","b"],"relayTo":["c","d"]}"#,
            r#"{"type":"SA","key":"k","value":[]}"#,
            r#"{"type":"SW","key":"k","value":{"x":1.5,"y":-2,"z\"":0.1}}"#,
            r#"{"type":"GK","key":"k","messageId":"d1","hlc":"ffffffffffffffff"}"#,
            r#"{"type":"CMD","command":"EXPIRE","args":["k","10"],"messageId":"e1"}"#,
            r#"{"type":"GK","key":"k","messageId":"g1"}"#,
            r#"{"type":"GA","key":"k"}"#,
            r#"{"type":"GW","key":"k"}"#,
            r#"{"type":"CMD","command":"DEL","args":["k","x\"y"],"messageId":"c1"}"#,
            r#"{"type":"CMD","command":"PING","args":[]}"#,
            r#"{"type":"ACK","messageId":"only"}"#,
            r#"{"type":"ACK","messageId":"b","messageIds":["a","b","c"],"originInstanceId":"n","messagePath":["n"]}"#,
            r#"{"type":"NACK","messageId":"m","error":"`key` is \"required\""}"#,
            r#"{"type":"RES","inReplyTo":"g1","instanceId":"n2","found":true,"value":"v","hlc":"0192f3a4b5c60001"}"#,
            r#"{"type":"RES","inReplyTo":"g1","found":false,"error":"no such key"}"#,
            r#"{"type":"RES","inReplyTo":"g1","found":true,"value":{"a":[1,2.5,"x"],"b":null}}"#,
            r#"{"type":"HELLO","instanceId":"n1","tags":["aws"],"clusterGroupId":"g","role":"client","protocolVersion":1}"#,
            r#"{"type":"HELLO","instanceId":"a","deliversTo":["b","c"],"linkedTo":["b"]}"#,
            r#"{"type":"HELLO","instanceId":"a","deliversTo":[],"linkedTo":[]}"#,
        ];
        let mut all = Vec::new();
        for text in texts {
            match decode_frame(text, &Limits::default())
                .expect("frame decodes")
                .remove(0)
            {
                Ok(m) => all.push(m),
                Err(e) => panic!("{text}: {}", e.reason),
            }
        }
        // Fields a node sets, and a RES whose reply carries no hlc of its own.
        let mut m = all[1].clone();
        m.env.source_instance_id = Some("s\"rc".into());
        m.env.relay_to = vec!["r".into()];
        m.env.hlc = Some(Hlc::new(1, 2));
        all.push(m);
        let mut res = all[18].clone();
        res.env.hlc = Some(Hlc::new(3, 4));
        all.push(res);
        all.push(Message::ack("n", vec!["x".into(), "y".into()]));
        all
    }

    #[test]
    fn the_hand_written_encoder_writes_what_serde_writes() {
        for m in corpus() {
            let serde = serde_json::to_string(&Wire::from(&m)).unwrap();
            assert_eq!(m.encode(), serde, "{m:?}");
            // What it writes decodes to a message that encodes to the same text.
            let again = decode_frame(&serde, &Limits::default()).unwrap().remove(0);
            assert_eq!(again.unwrap().encode(), serde);
        }
        let all = corpus();
        let serde = serde_json::to_string(&all.iter().map(Wire::from).collect::<Vec<_>>()).unwrap();
        assert_eq!(encode_batch(&all), serde);
        assert_eq!(encode_batch(&all[..0]), "[]");
    }
}
