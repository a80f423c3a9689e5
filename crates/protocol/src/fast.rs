//! The fast decoding path: a typed, borrowing deserializer for well-formed frames of the
//! messages that carry the traffic (writes, gets and ACKs).
//!
//! The general path in [`crate::codec`] parses a whole JSON tree first so that every rejection
//! can name its field; that tree costs several allocations per field, and on a busy mesh it
//! was the largest single cost of receiving a write. This path reads the same frame straight
//! into [`Message`]s. It never rejects anything itself: whenever a frame is not plainly valid
//! (a type mismatch, a limit crossed, a duplicate field, a `HELLO`, ...) it gives up and the
//! general path decodes the frame and produces its errors. So it only has to accept exactly
//! what the general path accepts, with the same result, which a test checks on every example.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::codec::{ack_ids, valid_id, valid_key, value_bytes, Limits, MAX_ARGS, MAX_TAGS};
use crate::hlc::Hlc;
use crate::message::{Body, Envelope, Message, MessageType, Value, ValueKind};

mod scan;

/// Decodes a frame whose every message is a plainly valid write, get or ACK; `None` leaves
/// the frame to the general path (which also handles everything else).
pub fn decode_frame(text: &str, limits: &Limits) -> Option<Vec<Message>> {
    let raws = match scan::frame(text, limits.max_batch) {
        Some(raws) => raws,
        None => read_with_serde(text, limits)?,
    };
    raws.into_iter().map(|r| r.into_message(limits)).collect()
}

/// The frame's messages read by serde: what the hand-written reader leaves (weighted values,
/// unusual but valid JSON) still avoids the general path's JSON tree.
fn read_with_serde<'a>(text: &'a str, limits: &Limits) -> Option<Vec<Raw<'a>>> {
    match text.trim_start().as_bytes().first()? {
        b'{' => Some(vec![serde_json::from_str(text).ok()?]),
        b'[' => {
            let raws: Vec<Raw> = serde_json::from_str(text).ok()?;
            (!raws.is_empty() && raws.len() <= limits.max_batch).then_some(raws)
        }
        _ => None,
    }
}

/// A string borrowed from the frame where it has no escapes, owned otherwise. (serde borrows
/// a `Cow` only as a direct field, not inside an `Option` or a `Vec`.)
struct Str<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

impl std::ops::Deref for Str<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Str<'_> {
    fn into_owned(self) -> String {
        self.0.into_owned()
    }
}

/// The fields of the messages this path takes. A field given twice fails the parse, and so
/// does a field it does not know: the general path ignores such fields but first parses them,
/// while skipping one here would not check that it is valid JSON (serde_json skips a string
/// without checking its escapes, so a frame with a broken `\u` escape in an unknown field was
/// accepted here and rejected there; the differential fuzz target found it). Frames from
/// Slipstream nodes carry only these fields.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Raw<'a> {
    #[serde(rename = "type", borrow)]
    ty: Str<'a>,
    #[serde(default, borrow)]
    key: Option<Str<'a>>,
    #[serde(default)]
    value: Option<RawValue>,
    #[serde(default, borrow)]
    command: Option<Str<'a>>,
    #[serde(default, borrow)]
    args: Option<Vec<Str<'a>>>,
    #[serde(default, borrow)]
    message_id: Option<Str<'a>>,
    #[serde(default, borrow)]
    message_ids: Option<Vec<Str<'a>>>,
    #[serde(default, borrow)]
    origin_instance_id: Option<Str<'a>>,
    #[serde(default, borrow)]
    source_instance_id: Option<Str<'a>>,
    #[serde(default, borrow)]
    message_path: Option<Vec<Str<'a>>>,
    #[serde(default, borrow)]
    targeted_tags: Option<Vec<Str<'a>>>,
    #[serde(default, borrow)]
    cluster_group_id: Option<Str<'a>>,
    #[serde(default, borrow)]
    hlc: Option<Str<'a>>,
    #[serde(default, borrow)]
    relay_to: Option<Vec<Str<'a>>>,
}

/// A `value` in any of its three shapes, read without a JSON tree.
enum RawValue {
    String(String),
    Array(Vec<String>),
    Weighted(BTreeMap<String, f64>),
}

impl<'de> Deserialize<'de> for RawValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, an array of strings or an object of weights")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawValue, E> {
                Ok(RawValue::String(s.to_owned()))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<RawValue, E> {
                Ok(RawValue::String(s))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawValue, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(RawValue::Array(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawValue, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((member, weight)) = map.next_entry::<String, f64>()? {
                    // A member given twice: leave the frame to the general path.
                    if out.insert(member, weight).is_some() {
                        return Err(de::Error::custom("duplicate member"));
                    }
                }
                Ok(RawValue::Weighted(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// The general path's rule for ids: 1 to 256 characters.
fn id(s: Option<Str>) -> Option<Option<String>> {
    match s {
        None => Some(None),
        Some(s) if !valid_id(&s) => None,
        Some(s) => Some(Some(s.into_owned())),
    }
}

fn list(items: Option<Vec<Str>>, max: usize) -> Option<Vec<String>> {
    let items = items.unwrap_or_default();
    if items.len() > max {
        return None;
    }
    Some(items.into_iter().map(Str::into_owned).collect())
}

impl Raw<'_> {
    /// The message, when the general path would accept it as is.
    fn into_message(self, limits: &Limits) -> Option<Message> {
        let ty = MessageType::parse(&self.ty)?;
        let hlc = match self.hlc {
            None => None,
            Some(s) => Some(s.parse::<Hlc>().ok()?),
        };
        let mut env = Envelope {
            message_id: id(self.message_id)?,
            origin_instance_id: id(self.origin_instance_id)?,
            source_instance_id: id(self.source_instance_id)?,
            message_path: list(self.message_path, limits.max_path)?,
            targeted_tags: list(self.targeted_tags, MAX_TAGS)?,
            cluster_group_id: id(self.cluster_group_id)?,
            hlc,
            relay_to: list(self.relay_to, limits.max_path)?,
        };
        let key = |key: Option<Str>| -> Option<String> {
            let key = key?;
            valid_key(&key, limits).then(|| key.into_owned())
        };
        let body = match ty {
            MessageType::Sk | MessageType::Sa | MessageType::Sw => {
                let value = match (ty, self.value?) {
                    (MessageType::Sk, RawValue::String(s)) => Value::String(s),
                    (MessageType::Sa, RawValue::Array(a)) => Value::Array(a),
                    (MessageType::Sw, RawValue::Weighted(w)) => Value::Weighted(w),
                    _ => return None,
                };
                if value_bytes(&value) > limits.max_value_bytes {
                    return None;
                }
                Body::Set {
                    key: key(self.key)?,
                    value,
                }
            }
            MessageType::Gk | MessageType::Ga | MessageType::Gw => Body::Get {
                kind: match ty {
                    MessageType::Gk => ValueKind::String,
                    MessageType::Ga => ValueKind::Array,
                    _ => ValueKind::Weighted,
                },
                key: key(self.key)?,
            },
            MessageType::Cmd => {
                let command = self.command.filter(|c| !c.is_empty())?;
                Body::Command {
                    command: command.into_owned(),
                    args: list(self.args, MAX_ARGS)?,
                }
            }
            MessageType::Ack => {
                let listed = list(self.message_ids, limits.max_batch)?;
                if !listed.iter().all(|id| valid_id(id)) {
                    return None;
                }
                let ids = ack_ids(env.message_id.clone(), listed);
                if ids.is_empty() {
                    return None;
                }
                // An ACK's `messageId` is its first id (as it is encoded), also when only
                // `messageIds` came: decoding what was encoded gives the same message.
                env.message_id = ids.first().cloned();
                Body::Ack { message_ids: ids }
            }
            MessageType::Nack | MessageType::Res | MessageType::Hello => return None,
        };
        Some(Message { env, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::decode_frame_general;

    const SK: &str = r#"{"type":"SK","key":"order:123","value":"{...order data...}","messageId":"msg-abc123","originInstanceId":"con-12345","sourceInstanceId":"con-12345","messagePath":["con-12345"],"targetedTags":["aws","production"],"clusterGroupId":"cluster-1","hlc":"0192f3a4b5c60001"}"#;

    /// What the general path makes of a frame whose messages are all valid.
    fn general(text: &str, limits: &Limits) -> Option<Vec<Message>> {
        decode_frame_general(text, limits)
            .ok()?
            .into_iter()
            .collect::<Result<_, _>>()
            .ok()
    }

    /// Whether the hand-written reader takes the frame; when it does, serde must read it too,
    /// into the same messages (or the same refusal of one).
    fn scanned(text: &str, limits: &Limits) -> bool {
        let Some(raws) = scan::frame(text, limits.max_batch) else {
            return false;
        };
        let ours: Vec<_> = raws.into_iter().map(|r| r.into_message(limits)).collect();
        let serde = read_with_serde(text, limits)
            .unwrap_or_else(|| panic!("the reader took what serde refuses: {text}"));
        let theirs: Vec<_> = serde.into_iter().map(|r| r.into_message(limits)).collect();
        assert_eq!(ours, theirs, "the reader differs from serde on {text}");
        true
    }

    /// The contract: the fast path gives up, or gives exactly what the general path gives.
    fn same(text: &str, limits: &Limits) -> Option<Vec<Message>> {
        scanned(text, limits);
        let fast = decode_frame(text, limits);
        if let Some(messages) = &fast {
            assert_eq!(
                Some(messages),
                general(text, limits).as_ref(),
                "fast path differs on {text}"
            );
        }
        fast
    }

    #[test]
    fn takes_the_common_messages_and_matches_the_general_path() {
        let limits = Limits::default();
        let taken = [
            SK,
            r#"{"type":"SA","key":"k","value":["a","b"],"messageId":"m1"}"#,
            r#"{"type":"SW","key":"k","value":{"a":1,"b":2.5,"c":-0.25},"messageId":"m1"}"#,
            r#"{"type":"CMD","command":"DEL","args":["k"],"messageId":"m1"}"#,
            r#"{"type":"CMD","command":"DEL","messageId":"m1"}"#,
            r#"{"type":"GK","key":"k","messageId":"m1"}"#,
            r#"{"type":"GA","key":"k"}"#,
            r#"{"type":"GW","key":"k"}"#,
            r#"{"type":"ACK","messageId":"msg-abc123","originInstanceId":"con-67890","sourceInstanceId":"con-67890","messagePath":["con-67890"]}"#,
            r#"{"type":"ACK","messageId":"a","messageIds":["a","b","c","b"]}"#,
            r#"{"type":"ACK","messageIds":["a"]}"#,
            // Escapes, nulls for absent fields, whitespace.
            r#" {"type":"SK","key":"k\"q\u00e9","value":"{\"amount\":12.5,\"note\":\"a\\nb\"}","hlc":null,"messagePath":null} "#,
            r#"{"type":"SK","key":"k","value":"","relayTo":["n3"],"targetedTags":[]}"#,
        ];
        for text in taken {
            assert!(same(text, &limits).is_some(), "fast path left {text}");
            // All but the weighted value are the hand-written reader's.
            assert_eq!(scanned(text, &limits), !text.contains("\"SW\""), "{text}");
        }
        let batch = format!("[{SK},{}]", taken[1]);
        assert_eq!(same(&batch, &limits).map(|m| m.len()), Some(2));
    }

    #[test]
    fn leaves_everything_else_to_the_general_path() {
        let limits = Limits {
            max_batch: 2,
            ..Limits::default()
        };
        let long_id = "x".repeat(257);
        let left = [
            r#"{"type":"HELLO","instanceId":"n1"}"#.to_owned(),
            r#"{"type":"NACK","error":"no"}"#.to_owned(),
            r#"{"type":"RES","inReplyTo":"m","found":false}"#.to_owned(),
            r#"{"type":"SK","type":"SA","key":"k","value":"v"}"#.to_owned(),
            r#"{"type":"SK","key":"k","value":["v"]}"#.to_owned(),
            r#"{"type":"SK","key":"","value":"v"}"#.to_owned(),
            r#"{"type":"SK","value":"v"}"#.to_owned(),
            r#"{"type":"SK","key":"k"}"#.to_owned(),
            r#"{"type":"SK","key":"k","value":"v","hlc":"nope"}"#.to_owned(),
            r#"{"type":"SK","key":"k","value":"v","messagePath":["a",1]}"#.to_owned(),
            format!(r#"{{"type":"SK","key":"k","value":"v","messageId":"{long_id}"}}"#),
            r#"{"type":"SW","key":"k","value":{"a":1,"a":2}}"#.to_owned(),
            r#"{"type":"SW","key":"k","value":{"a":"1"}}"#.to_owned(),
            r#"{"type":"CMD","command":""}"#.to_owned(),
            r#"{"type":"ACK"}"#.to_owned(),
            r#"{"type":"XX"}"#.to_owned(),
            // A field this path does not know, valid or not (found by the fuzz target: the
            // broken escape made the general path reject a frame this path took).
            r#"{"type":"SK","key":"k","value":"v","extra":{"x":[1,2]}}"#.to_owned(),
            r#"{"type":"ACK","messageIds":["a"],"mes":["\udBAA"],"messageId":"z"}"#.to_owned(),
            "[]".to_owned(),
            format!("[{SK},{SK},{SK}]"),
            format!("[{SK},5]"),
            "\"SK\"".to_owned(),
            "{".to_owned(),
        ];
        for text in &left {
            assert!(same(text, &limits).is_none(), "fast path took {text}");
        }
    }

    #[test]
    fn the_reader_unescapes_as_serde_does_and_leaves_what_serde_refuses() {
        let limits = Limits::default();
        let frame = |s: &str| format!(r#"{{"type":"SK","key":"k","value":"{s}","messageId":"m"}}"#);
        for s in [
            r#"plain"#,
            r#"\"q\\ \/ \b\f\n\r\t"#,
            r#"\u00e9 \u00E9 \u0000 \u20ac"#,
            r#"a pair: \ud83d\ude00, and after it é"#,
            r#"é\n€"#,
            r#"\u002F"#,
        ] {
            assert!(scanned(&frame(s), &limits), "the reader left {s}");
            assert!(same(&frame(s), &limits).is_some());
        }
        for s in [
            r#"\x"#,
            r#"\u12"#,
            r#"\u12g4"#,
            r#"\ud800"#,
            r#"\ud800 and more"#,
            r#"\ud800\u0041"#,
            r#"\udc00"#,
            "a raw\ttab",
            "a raw\nnewline",
            r#"ends in a backslash\"#,
        ] {
            assert!(!scanned(&frame(s), &limits), "the reader took {s}");
        }
        // A field name may be escaped too; serde matches it after unescaping.
        let text = r#"{"typ\u0065":"SK","key":"k","value":"v"}"#;
        assert!(scanned(text, &limits));
        // Shapes it leaves to serde or to the general path.
        for text in [
            r#"{"type":"SK","key":"k","value":"v"} x"#,
            r#"{"type":"SK","key":"k","value":"v",}"#,
            r#"[{"type":"SK","key":"k","value":"v"},]"#,
            r#"{"type":"SK","key":"k","value":"v","hlc":nul}"#,
            r#"{"type":"SK","key":"k","value":"v","hlc":nullx}"#,
            r#"{"type":"SK","key":"k","value":["a",]}"#,
            r#"{"type":"SK","key":"k","value":"v""#,
            r#"{"type":"SK" "key":"k"}"#,
            r#"{}"#,
            "",
        ] {
            assert!(!scanned(text, &limits), "the reader took {text}");
            same(text, &limits);
        }
    }

    #[test]
    fn limits_are_the_general_paths() {
        let limits = Limits {
            max_key_bytes: 3,
            max_value_bytes: 4,
            max_path: 1,
            ..Limits::default()
        };
        for (text, taken) in [
            (r#"{"type":"SK","key":"abc","value":"abcd"}"#, true),
            (r#"{"type":"SK","key":"abcd","value":"a"}"#, false),
            (r#"{"type":"SK","key":"a","value":"abcde"}"#, false),
            (r#"{"type":"SA","key":"a","value":["ab","cd"]}"#, true),
            (r#"{"type":"SA","key":"a","value":["ab","cde"]}"#, false),
            (r#"{"type":"SW","key":"a","value":{"a":1}}"#, false),
            (
                r#"{"type":"SK","key":"a","value":"a","messagePath":["x"]}"#,
                true,
            ),
            (
                r#"{"type":"SK","key":"a","value":"a","messagePath":["x","y"]}"#,
                false,
            ),
            (
                r#"{"type":"SK","key":"a","value":"a","relayTo":["x","y"]}"#,
                false,
            ),
        ] {
            assert_eq!(same(text, &limits).is_some(), taken, "{text}");
        }
    }

    /// Every field of a valid write replaced by values of every JSON kind: whatever the fast
    /// path takes, it decodes as the general path does.
    #[test]
    fn field_by_field_mutations_never_differ() {
        let limits = Limits::default();
        let base: serde_json::Map<String, serde_json::Value> = serde_json::from_str(SK).unwrap();
        let fields = [
            "type",
            "key",
            "value",
            "command",
            "args",
            "messageId",
            "messageIds",
            "originInstanceId",
            "sourceInstanceId",
            "messagePath",
            "targetedTags",
            "clusterGroupId",
            "hlc",
            "relayTo",
        ];
        let replacements = [
            "null",
            "true",
            "7",
            "-1.5",
            r#""""#,
            r#""SK""#,
            r#""SA""#,
            r#""CMD""#,
            r#""ACK""#,
            r#""0192f3a4b5c60002""#,
            r#""é""#,
            "[]",
            r#"["a"]"#,
            r#"["a",2]"#,
            "{}",
            r#"{"m":1}"#,
        ];
        let mut taken = 0;
        for field in fields {
            for r in replacements {
                let mut m = base.clone();
                m.insert(field.to_owned(), serde_json::from_str(r).unwrap());
                let text = serde_json::to_string(&m).unwrap();
                taken += usize::from(same(&text, &limits).is_some());
                m.remove(field);
                same(&serde_json::to_string(&m).unwrap(), &limits);
            }
        }
        assert!(taken > 20, "the fast path took only {taken} mutations");
    }
}
