//! The Redis store: applies writes to the application's keys in Redis, one atomic Lua step
//! per write that compares versions (SPEC §6).
//!
//! Layout: the application's key holds its value as the application expects it (`SK` a
//! string, `SA` a list, `SW` a sorted set). Slipstream's version of each key is a hash at
//! `<prefix>v:<key>` with fields `hlc`, `origin`, `kind` (`string`, `array`, `weighted`, or
//! `deleted` for a tombstone), `msg` (message id) and `at` (apply time, Unix ms). A write
//! replaces the value only if its (hlc, origin) is greater than the stored version's.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, RedisResult, Script};
use slipstream_protocol::{Hlc, Value};
use slipstream_storage::{now_ms, Apply, StoredValue};

/// KEYS: app key, version key. ARGV: hlc, origin, kind, message id, now (ms), payload...
/// String: ARGV[6] is the value. Array: ARGV[6..] the items. Weighted: score, member pairs.
const APPLY: &str = r#"
local cur = redis.call('HMGET', KEYS[2], 'hlc', 'origin')
if cur[1] then
  if ARGV[1] < cur[1] or (ARGV[1] == cur[1] and ARGV[2] <= cur[2]) then return 0 end
end
local kind = ARGV[3]
redis.call('DEL', KEYS[1])
if kind == 'string' then
  redis.call('SET', KEYS[1], ARGV[6])
elseif kind == 'array' then
  for i = 6, #ARGV, 1000 do redis.call('RPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV))) end
elseif kind == 'weighted' then
  for i = 6, #ARGV, 1000 do redis.call('ZADD', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV))) end
end
redis.call('HSET', KEYS[2], 'hlc', ARGV[1], 'origin', ARGV[2], 'kind', kind, 'msg', ARGV[4], 'at', ARGV[5])
return 1
"#;

/// KEYS: version key. ARGV: cutoff (ms). Deletes a tombstone applied before the cutoff.
const PRUNE: &str = r#"
local v = redis.call('HMGET', KEYS[1], 'kind', 'at')
if v[1] == 'deleted' and tonumber(v[2]) < tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"#;

pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    apply: Script,
    prune: Script,
}

impl RedisStore {
    /// Prepares the connection manager without connecting: the node starts, records and
    /// forwards while Redis is unreachable, and the manager reconnects with backoff.
    pub fn new(url: &str, prefix: &str, retry_base: Duration) -> RedisResult<RedisStore> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_min_delay(retry_base.min(Duration::from_secs(1)))
            .set_max_delay(Duration::from_secs(5))
            .set_number_of_retries(2)
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)));
        Ok(RedisStore {
            conn: ConnectionManager::new_lazy_with_config(client, config)?,
            prefix: prefix.to_owned(),
            apply: Script::new(APPLY),
            prune: Script::new(PRUNE),
        })
    }

    fn version_key(&self, key: &str) -> String {
        format!("{}v:{key}", self.prefix)
    }

    pub async fn ping(&self) -> RedisResult<()> {
        let mut c = self.conn.clone();
        redis::cmd("PING").query_async::<()>(&mut c).await
    }

    /// Applies one write; returns whether the store changed. `version` is (hlc, origin).
    pub async fn apply(
        &self,
        apply: &Apply,
        hlc: Hlc,
        origin: &str,
        message_id: &str,
    ) -> RedisResult<bool> {
        let mut c = self.conn.clone();
        let (key, kind) = match apply {
            Apply::Expire { key, seconds } => {
                let set: bool = c.expire(key, *seconds as i64).await?;
                return Ok(set);
            }
            Apply::Set { key, value } => (key, value.kind().as_str()),
            Apply::Delete { key } => (key, "deleted"),
        };
        let mut inv = self.apply.key(key);
        inv.key(self.version_key(key))
            .arg(hlc.to_string())
            .arg(origin)
            .arg(kind)
            .arg(message_id)
            .arg(now_ms());
        match apply {
            Apply::Set {
                value: Value::String(s),
                ..
            } => {
                inv.arg(s);
            }
            Apply::Set {
                value: Value::Array(items),
                ..
            } => {
                for i in items {
                    inv.arg(i);
                }
            }
            Apply::Set {
                value: Value::Weighted(w),
                ..
            } => {
                for (member, score) in w {
                    inv.arg(score.to_string()).arg(member);
                }
            }
            _ => {}
        }
        let changed: i64 = inv.invoke_async(&mut c).await?;
        Ok(changed == 1)
    }

    fn seen_key(&self, group: &str, message_id: &str) -> String {
        format!("{}seen:{group}:{message_id}", self.prefix)
    }

    /// Whether another node sharing this Redis recorded the message (shared dedup).
    pub async fn seen(&self, group: &str, message_id: &str) -> RedisResult<bool> {
        let mut c = self.conn.clone();
        c.exists(self.seen_key(group, message_id)).await
    }

    /// Marks a recorded message seen for the nodes sharing this Redis, for `ttl`.
    pub async fn mark_seen(&self, group: &str, message_id: &str, ttl: Duration) -> RedisResult<()> {
        let mut c = self.conn.clone();
        redis::cmd("SET")
            .arg(self.seen_key(group, message_id))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async::<()>(&mut c)
            .await
    }

    /// A key's value and version, `None` when absent or deleted.
    pub async fn get(&self, key: &str) -> RedisResult<Option<StoredValue>> {
        let mut c = self.conn.clone();
        let (kind, hlc, origin, msg): (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        ) = redis::cmd("HMGET")
            .arg(self.version_key(key))
            .arg("kind")
            .arg("hlc")
            .arg("origin")
            .arg("msg")
            .query_async(&mut c)
            .await?;
        let (Some(kind), Some(hlc), Some(origin)) = (kind, hlc, origin) else {
            return Ok(None);
        };
        let Ok(hlc) = hlc.parse::<Hlc>() else {
            return Ok(None);
        };
        let exists: bool = c.exists(key).await?;
        let value = match kind.as_str() {
            "string" if exists => Value::String(c.get(key).await?),
            "array" => Value::Array(c.lrange(key, 0, -1).await?),
            "weighted" => {
                let pairs: Vec<(String, f64)> = c.zrange_withscores(key, 0, -1).await?;
                Value::Weighted(pairs.into_iter().collect::<BTreeMap<_, _>>())
            }
            // Deleted, or expired by EXPIRE.
            _ => return Ok(None),
        };
        if !exists
            && !matches!(&value, Value::Array(a) if a.is_empty())
            && !matches!(&value, Value::Weighted(w) if w.is_empty())
        {
            return Ok(None);
        }
        Ok(Some(StoredValue {
            key: key.to_owned(),
            value,
            hlc,
            origin,
            message_id: msg.unwrap_or_default(),
        }))
    }

    /// Deletes tombstones applied before `before_ms`; returns how many.
    pub async fn prune_tombstones(&self, before_ms: u64) -> RedisResult<u64> {
        let mut c = self.conn.clone();
        let pattern = format!("{}v:*", self.prefix);
        let mut keys: Vec<String> = Vec::new();
        {
            let mut iter: redis::AsyncIter<String> = c.scan_match(&pattern).await?;
            while let Some(k) = iter.next_item().await {
                keys.push(k?);
            }
        }
        let mut pruned = 0;
        for k in keys {
            let n: i64 = self
                .prune
                .key(k)
                .arg(before_ms)
                .invoke_async(&mut c)
                .await?;
            pruned += n as u64;
        }
        Ok(pruned)
    }
}
