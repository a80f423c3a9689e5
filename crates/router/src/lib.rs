//! The router (SPEC §4), sans-IO.
//!
//! It decides what happens to a write: initialise it when a local app sent it, drop it when it
//! looped or was seen before, choose the peers it goes to, whether it applies here, and the
//! form it is forwarded in. It holds no sockets, no clock of its own and no database: the node
//! passes the wall-clock time in and carries out the decision (record in SQLite, ACK, apply,
//! deliver). That keeps the rules testable in a deterministic simulation (`tests/sim.rs`).
//!
//! The in-memory seen-set is a cache in front of the durable dedup record in SQLite: the node
//! marks a message seen only after its transaction commits, so a message whose commit failed
//! is not dropped when the sender republishes it.

mod seen;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use slipstream_protocol::{Hlc, HlcClock, Invalid, Message, DEFAULT_CLUSTER_GROUP};

pub use seen::SeenCache;

/// How a configured peer whose instance id is not yet known is keyed: by its URL.
pub const URL_KEY_PREFIX: &str = "url:";

/// Who handed the router a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sender {
    /// A local application: this node becomes the origin.
    Client,
    /// A peer node, by instance id.
    Peer(String),
}

/// Why a message was dropped after being acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Its `messagePath` already holds this node.
    Loop,
    /// Its (`messageId`, `clusterGroupId`) was seen within the dedup TTL.
    Duplicate,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Loop => "loop",
            DropReason::Duplicate => "duplicate",
        }
    }
}

/// What to do with a write.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Record it durably, then ACK it, apply it when `apply`, and deliver it to `recipients`.
    Accept(Box<Accepted>),
    /// Acknowledge it (so the sender stops) and do nothing else.
    Drop {
        reason: DropReason,
        message_id: String,
    },
    /// Answer with a NACK.
    Reject(Invalid),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    /// The message in the form it is stored and forwarded in: this node appended to
    /// `messagePath`, `sourceInstanceId` set to this node, `messageId`, `hlc` and origin filled.
    pub message: Message,
    pub hlc: Hlc,
    /// Whether the write is for this node (no `targetedTags`, or one of them is ours).
    pub apply: bool,
    /// Peer keys (instance ids, or `url:…` for configured peers not met yet) to deliver to.
    pub recipients: Vec<String>,
    /// The recipients the sender asked this node to relay to (`relayTo`): if the write is
    /// already recorded here, deliveries to them are added to it.
    pub relay_to: Vec<String>,
}

impl Accepted {
    /// The write's id (the router fills it in when an app leaves it out). Read from the
    /// message rather than copied: the journal moves it out once the message is encoded.
    pub fn message_id(&self) -> &str {
        self.message.env.message_id.as_deref().unwrap_or_default()
    }

    /// The write's cluster group.
    pub fn group(&self) -> &str {
        self.message.env.group()
    }
}

/// A peer the router may forward to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KnownPeer {
    pub tags: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct RouterConfig {
    pub instance_id: String,
    pub tags: Vec<String>,
    /// Stamped on messages that originate here without a `clusterGroupId`.
    pub cluster_group_id: String,
    /// Longest `messagePath` a forwarded message may carry.
    pub max_path: usize,
    /// How long a (`messageId`, `clusterGroupId`) counts as seen, in milliseconds.
    pub dedup_ttl_ms: u64,
    /// Most entries in the in-memory seen cache.
    pub seen_capacity: usize,
}

impl RouterConfig {
    pub fn new(instance_id: impl Into<String>) -> Self {
        RouterConfig {
            instance_id: instance_id.into(),
            tags: Vec::new(),
            cluster_group_id: DEFAULT_CLUSTER_GROUP.to_owned(),
            max_path: 64,
            dedup_ttl_ms: 24 * 3600 * 1000,
            // A few MiB at most, so memory stays flat however many writes go by. Copies of
            // one write arrive within moments of each other; a duplicate older than this is
            // still caught by the journal's unique index.
            seen_capacity: 16_384,
        }
    }
}

pub struct Router {
    cfg: RouterConfig,
    clock: HlcClock,
    peers: BTreeMap<String, KnownPeer>,
    seen: SeenCache,
    /// Per origin: the peers it announced (HELLO `deliversTo`) it delivers its writes to itself.
    covered: HashMap<String, BTreeSet<String>>,
}

impl Router {
    pub fn new(cfg: RouterConfig) -> Self {
        let seen = SeenCache::new(cfg.seen_capacity, cfg.dedup_ttl_ms);
        Router {
            cfg,
            clock: HlcClock::new(),
            peers: BTreeMap::new(),
            seen,
            covered: HashMap::new(),
        }
    }

    /// What a peer announced in its HELLO `deliversTo`: the peers it delivers the writes that
    /// enter the mesh through it to directly. `None` (an older node, or one that floods)
    /// forgets the announcement, so its writes are forwarded by every receiver again.
    pub fn set_coverage(&mut self, origin: &str, delivers_to: Option<Vec<String>>) {
        match delivers_to {
            Some(ids) => {
                self.covered
                    .insert(origin.to_owned(), ids.into_iter().collect());
            }
            None => {
                self.covered.remove(origin);
            }
        }
    }

    /// What `peer` announced it delivers its own writes to, if anything.
    pub fn coverage(&self, peer: &str) -> Option<Vec<String>> {
        self.covered.get(peer).map(|c| c.iter().cloned().collect())
    }

    /// Whether `peer` announced it delivers its own writes to `to` directly.
    pub fn covers(&self, peer: &str, to: &str) -> bool {
        self.covered.get(peer).is_some_and(|c| c.contains(to))
    }

    pub fn instance_id(&self) -> &str {
        &self.cfg.instance_id
    }

    /// Adds or updates a peer the router forwards to, keyed by instance id (or `url:…`).
    pub fn upsert_peer(&mut self, key: impl Into<String>, peer: KnownPeer) {
        self.peers.insert(key.into(), peer);
    }

    /// A configured peer's instance id became known: its URL key gives way to the id.
    pub fn rename_peer(&mut self, old_key: &str, instance_id: &str) {
        if let Some(p) = self.peers.remove(old_key) {
            let entry = self.peers.entry(instance_id.to_owned()).or_default();
            if entry.tags.is_empty() {
                entry.tags = p.tags;
            }
        }
    }

    pub fn peers(&self) -> impl Iterator<Item = (&String, &KnownPeer)> {
        self.peers.iter()
    }

    /// Moves the clock past a stamp (the greatest one recorded before a restart).
    pub fn observe(&mut self, hlc: Hlc) {
        self.clock.observe(hlc);
    }

    /// The last stamp issued or observed (the clock's state).
    pub fn last_stamp(&self) -> Hlc {
        self.clock.last()
    }

    /// How many (`messageId`, `clusterGroupId`) pairs the seen cache holds.
    pub fn seen_len(&self) -> usize {
        self.seen.len()
    }

    /// A fresh HLC stamp (for local reads and diagnostics).
    pub fn stamp(&mut self, now_ms: u64) -> Hlc {
        self.clock.tick(now_ms)
    }

    /// Records that a message's transaction committed, so later copies are duplicates.
    pub fn mark_seen(&mut self, message_id: &str, group: &str, now_ms: u64) {
        self.seen.insert(message_id, group, now_ms);
    }

    /// Decides what happens to a write (`SK`, `SA`, `SW`, `CMD`). The caller has decoded it.
    pub fn route(&mut self, from: &Sender, mut msg: Message, now_ms: u64) -> Decision {
        let me = self.cfg.instance_id.clone();
        match from {
            Sender::Client => {
                // The node becomes the origin, whatever the app claimed.
                let hlc = match msg.env.hlc {
                    Some(h) => {
                        self.clock.observe(h);
                        h
                    }
                    None => self.clock.tick(now_ms),
                };
                msg.env.hlc = Some(hlc);
                if msg.env.message_id.is_none() {
                    msg.env.message_id = Some(format!("{me}-{hlc}"));
                }
                if msg.env.cluster_group_id.is_none() {
                    msg.env.cluster_group_id = Some(self.cfg.cluster_group_id.clone());
                }
                msg.env.origin_instance_id = Some(me.clone());
                msg.env.message_path = vec![me.clone()];
                // Only a peer may ask this node to relay.
                msg.env.relay_to.clear();
            }
            Sender::Peer(_) => {
                if let Err(invalid) = msg.check_from_peer() {
                    return Decision::Reject(invalid);
                }
                let message_id = msg.env.message_id.as_deref().unwrap_or_default();
                if msg.env.message_path.contains(&me)
                    || msg.env.origin_instance_id.as_deref() == Some(&me)
                {
                    return Decision::Drop {
                        reason: DropReason::Loop,
                        message_id: message_id.to_owned(),
                    };
                }
                // A relay request for a write this node already holds still goes on to the
                // journal, which adds the requested deliveries to the stored write.
                if msg.env.relay_to.is_empty()
                    && self.seen.contains(message_id, msg.env.group(), now_ms)
                {
                    return Decision::Drop {
                        reason: DropReason::Duplicate,
                        message_id: message_id.to_owned(),
                    };
                }
                match msg.env.hlc {
                    Some(h) => self.clock.observe(h),
                    None => msg.env.hlc = Some(self.clock.tick(now_ms)),
                }
                msg.env.message_path.push(me.clone());
            }
        }
        if let Sender::Client = from {
            let id = msg.env.message_id.as_deref().unwrap_or_default();
            if self.seen.contains(id, msg.env.group(), now_ms) {
                return Decision::Drop {
                    reason: DropReason::Duplicate,
                    message_id: id.to_owned(),
                };
            }
        }
        msg.env.source_instance_id = Some(me);
        let recipients = self.recipients(from, &msg);
        // The relay request was for this hop only: the forwarded form does not carry it.
        let relay_to: Vec<String> = std::mem::take(&mut msg.env.relay_to)
            .into_iter()
            .filter(|p| recipients.contains(p))
            .collect();
        Decision::Accept(Box::new(Accepted {
            hlc: msg.env.hlc.unwrap_or_default(),
            apply: self.applies_here(&msg.env.targeted_tags),
            recipients,
            relay_to,
            message: msg,
        }))
    }

    /// Whether a message with these `targetedTags` is for this node.
    pub fn applies_here(&self, targeted: &[String]) -> bool {
        targeted.is_empty() || targeted.iter().any(|t| self.cfg.tags.contains(t))
    }

    fn recipients(&self, from: &Sender, msg: &Message) -> Vec<String> {
        if msg.env.message_path.len() >= self.cfg.max_path {
            return Vec::new();
        }
        let targeted = &msg.env.targeted_tags;
        // Peers the origin delivers this write to itself are left to it: that is what brings a
        // healthy full mesh to N−1 sends per write. Only for untargeted writes, where the
        // origin's choice of recipients cannot depend on tags it may know differently; and
        // never for peers the sender explicitly asked this node to relay to (its own link to
        // them is down).
        let covered = match (&msg.env.origin_instance_id, targeted.is_empty()) {
            (Some(origin), true) => self.covered.get(origin),
            _ => None,
        };
        self.peers
            .iter()
            .filter(|(key, _)| !matches!(from, Sender::Peer(id) if id == *key))
            .filter(|(key, _)| !msg.env.message_path.contains(key))
            .filter(|(_, p)| targeted.is_empty() || p.tags.iter().any(|t| targeted.contains(t)))
            .filter(|(key, _)| {
                msg.env.relay_to.contains(key) || !covered.is_some_and(|c| c.contains(*key))
            })
            .map(|(key, _)| key.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests;
