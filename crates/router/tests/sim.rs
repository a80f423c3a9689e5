//! A deterministic multi-node simulation of the router: no sockets, no database. Each node's
//! "commit" is instant, its store is a map with the last-writer-wins rule, and the network is a
//! queue of (from, to, message) whose delivery order a seeded generator shuffles.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use slipstream_protocol::{Body, Envelope, Hlc, Message, Value, Version};
use slipstream_router::{Decision, DropReason, KnownPeer, Router, RouterConfig, Sender};

struct SimNode {
    router: Router,
    store: BTreeMap<String, (Version, Value)>,
    /// Times each message id was applied here.
    applied: HashMap<String, usize>,
    /// Times each message id arrived here.
    received: HashMap<String, usize>,
    dropped: HashMap<DropReason, usize>,
}

struct Net {
    nodes: BTreeMap<String, SimNode>,
    queue: VecDeque<(String, String, Message)>,
    frames: usize,
    rng: u64,
    now: u64,
}

impl Net {
    /// `links` are undirected; `tags` gives each node's own tags (peers learn them as by HELLO).
    fn new(
        links: &[(&str, &str)],
        tags: &[(&str, &[&str])],
        group: &[(&str, &str)],
        seed: u64,
    ) -> Net {
        let tags_of = |n: &str| -> Vec<String> {
            tags.iter()
                .find(|(id, _)| *id == n)
                .map(|(_, t)| t.iter().map(|s| s.to_string()).collect())
                .unwrap_or_default()
        };
        let names: BTreeSet<&str> = links.iter().flat_map(|(a, b)| [*a, *b]).collect();
        let mut nodes = BTreeMap::new();
        for n in names {
            let mut cfg = RouterConfig::new(n);
            cfg.tags = tags_of(n);
            if let Some((_, g)) = group.iter().find(|(id, _)| *id == n) {
                cfg.cluster_group_id = g.to_string();
            }
            let mut router = Router::new(cfg);
            for (a, b) in links {
                let other = if *a == n {
                    b
                } else if *b == n {
                    a
                } else {
                    continue;
                };
                router.upsert_peer(
                    *other,
                    KnownPeer {
                        tags: tags_of(other),
                    },
                );
            }
            nodes.insert(
                n.to_string(),
                SimNode {
                    router,
                    store: BTreeMap::new(),
                    applied: HashMap::new(),
                    received: HashMap::new(),
                    dropped: HashMap::new(),
                },
            );
        }
        Net {
            nodes,
            queue: VecDeque::new(),
            frames: 0,
            rng: seed.max(1),
            now: 1_000_000,
        }
    }

    fn next_rand(&mut self) -> u64 {
        // xorshift64: deterministic for a seed.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn write(&mut self, at: &str, id: Option<&str>, key: &str, value: &str, targeted: &[&str]) {
        let msg = Message {
            env: Envelope {
                message_id: id.map(str::to_owned),
                targeted_tags: targeted.iter().map(|s| s.to_string()).collect(),
                ..Envelope::default()
            },
            body: Body::Set {
                key: key.into(),
                value: Value::String(value.into()),
            },
        };
        self.handle(at, Sender::Client, msg);
    }

    fn handle(&mut self, at: &str, from: Sender, msg: Message) {
        self.now += 1;
        let now = self.now;
        let node = self.nodes.get_mut(at).unwrap();
        if let Some(id) = &msg.env.message_id {
            *node.received.entry(id.clone()).or_default() += 1;
        }
        match node.router.route(&from, msg, now) {
            Decision::Accept(a) => {
                node.router.mark_seen(a.message_id(), a.group(), now);
                if a.apply {
                    *node.applied.entry(a.message_id().to_owned()).or_default() += 1;
                    if let Body::Set { key, value } = &a.message.body {
                        let version = Version {
                            hlc: a.hlc,
                            origin: a.message.env.origin_instance_id.clone().unwrap(),
                        };
                        if version.supersedes(node.store.get(key).map(|(v, _)| v)) {
                            node.store.insert(key.clone(), (version, value.clone()));
                        }
                    }
                }
                for r in a.recipients {
                    self.queue.push_back((at.to_string(), r, a.message.clone()));
                }
            }
            Decision::Drop { reason, .. } => *node.dropped.entry(reason).or_default() += 1,
            Decision::Reject(i) => panic!("{at} rejected a relayed message: {i}"),
        }
    }

    /// Delivers queued messages in a seeded random order until the network is quiet.
    fn run(&mut self) {
        let mut steps = 0;
        while !self.queue.is_empty() {
            steps += 1;
            assert!(
                steps < 100_000,
                "the network never went quiet: a routing loop"
            );
            let i = (self.next_rand() % self.queue.len() as u64) as usize;
            let (from, to, msg) = self.queue.remove(i).unwrap();
            self.frames += 1;
            self.handle(&to, Sender::Peer(from), msg);
        }
    }

    fn node(&self, id: &str) -> &SimNode {
        &self.nodes[id]
    }

    fn value(&self, at: &str, key: &str) -> Option<&Value> {
        self.node(at).store.get(key).map(|(_, v)| v)
    }
}

fn s(v: &str) -> Value {
    Value::String(v.into())
}

#[test]
fn full_mesh_of_three_applies_everywhere_once() {
    let mut net = Net::new(&[("a", "b"), ("b", "c"), ("a", "c")], &[], &[], 7);
    for i in 0..50 {
        net.write(
            "a",
            Some(&format!("m{i}")),
            &format!("k{i}"),
            &format!("v{i}"),
            &[],
        );
    }
    net.run();
    for n in ["a", "b", "c"] {
        for i in 0..50 {
            assert_eq!(
                net.value(n, &format!("k{i}")),
                Some(&s(&format!("v{i}"))),
                "node {n} key k{i}"
            );
            assert_eq!(
                net.node(n).applied[&format!("m{i}")],
                1,
                "node {n} applied m{i} once"
            );
        }
    }
    // Flooding: a→b and a→c, then each of b and c relays its first copy to the other unless
    // that copy came from the other already. Every frame beyond the first copy is a duplicate.
    assert!(
        net.frames > 50 * 2 && net.frames <= 50 * 4,
        "frames: {}",
        net.frames
    );
    let dups = |n: &str| {
        net.node(n)
            .dropped
            .get(&DropReason::Duplicate)
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(dups("b") + dups("c"), net.frames - 100);
}

#[test]
fn line_forwards_over_multiple_hops() {
    let mut net = Net::new(&[("a", "b"), ("b", "c")], &[], &[], 1);
    net.write("a", Some("m1"), "k", "v", &[]);
    net.run();
    assert_eq!(net.value("c", "k"), Some(&s("v")));
    assert_eq!(net.frames, 2, "a→b, b→c and nothing back");
}

#[test]
fn ring_terminates_by_path_and_applies_once() {
    let mut net = Net::new(
        &[("a", "b"), ("b", "c"), ("c", "d"), ("d", "a")],
        &[],
        &[],
        3,
    );
    net.write("a", Some("m1"), "k", "v", &[]);
    net.run();
    for n in ["a", "b", "c", "d"] {
        assert_eq!(net.value(n, "k"), Some(&s("v")));
        assert_eq!(net.node(n).applied["m1"], 1);
    }
}

#[test]
fn tag_targeting_reaches_only_matching_peers() {
    let tags: &[(&str, &[&str])] = &[("aws", &["aws"]), ("gcp", &["gcp"])];
    let mut net = Net::new(&[("a", "aws"), ("a", "gcp"), ("a", "plain")], tags, &[], 5);
    net.write("a", Some("m1"), "k", "v", &["aws"]);
    net.write("a", Some("m2"), "k2", "v", &["azure"]);
    net.run();
    assert_eq!(net.value("aws", "k"), Some(&s("v")));
    assert_eq!(net.value("gcp", "k"), None, "tags do not match");
    assert_eq!(
        net.value("plain", "k"),
        None,
        "an untagged peer is excluded"
    );
    assert_eq!(
        net.value("a", "k"),
        None,
        "the origin is not tagged aws either"
    );
    assert_eq!(net.frames, 1, "m1 went to aws only; m2 matched nobody");
}

#[test]
fn the_same_message_by_two_routes_is_applied_once() {
    // Diamond: a→b→d and a→c→d.
    let mut net = Net::new(
        &[("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")],
        &[],
        &[],
        11,
    );
    net.write("a", Some("m1"), "k", "v", &[]);
    net.run();
    assert_eq!(net.node("d").received["m1"], 2, "it did arrive twice");
    assert_eq!(net.node("d").applied["m1"], 1);
    assert_eq!(net.node("d").dropped[&DropReason::Duplicate], 1);
}

#[test]
fn dedup_is_by_message_id_and_cluster_group() {
    let mut net = Net::new(&[("a", "b")], &[], &[], 2);
    net.write("a", Some("same"), "k1", "v1", &[]);
    net.write("a", Some("same"), "k2", "v2", &[]); // singleton group again: a duplicate
    net.run();
    assert_eq!(net.value("b", "k1"), Some(&s("v1")));
    assert_eq!(net.value("b", "k2"), None);
    // The same id in another group is another message.
    let mut msg = Message {
        env: Envelope {
            message_id: Some("same".into()),
            cluster_group_id: Some("g2".into()),
            ..Envelope::default()
        },
        body: Body::Set {
            key: "k3".into(),
            value: s("v3"),
        },
    };
    msg.env.hlc = Some(Hlc::new(2_000_000, 0));
    net.handle("a", Sender::Client, msg);
    net.run();
    assert_eq!(net.value("b", "k3"), Some(&s("v3")));
}

#[test]
fn two_nodes_of_one_cluster_group_forward_the_same_message_once_in_effect() {
    // n1 and n2 serve one cluster group; the app sends the same payment to both. c joins them
    // to d. Every node applies it once, and d receives it exactly once.
    let groups = [("n1", "cluster-1"), ("n2", "cluster-1")];
    let mut net = Net::new(&[("n1", "c"), ("n2", "c"), ("c", "d")], &[], &groups, 13);
    net.write("n1", Some("pay-1"), "order:1", "paid", &[]);
    net.write("n2", Some("pay-1"), "order:1", "paid", &[]);
    net.run();
    for n in ["n1", "n2", "c", "d"] {
        assert_eq!(net.value(n, "order:1"), Some(&s("paid")));
        assert_eq!(net.node(n).applied["pay-1"], 1, "{n} applied once");
    }
    assert_eq!(net.node("d").received["pay-1"], 1, "forwarded to d once");
}

#[test]
fn concurrent_writes_converge_in_any_delivery_order() {
    for seed in 1..=50 {
        let mut net = Net::new(&[("a", "b"), ("b", "c"), ("a", "c")], &[], &[], seed);
        net.write("a", None, "k", "from-a", &[]);
        net.write("b", None, "k", "from-b", &[]);
        net.write("c", None, "k", "from-c", &[]);
        net.run();
        let a = net.value("a", "k").cloned();
        assert!(a.is_some());
        assert_eq!(net.value("b", "k").cloned(), a, "seed {seed}");
        assert_eq!(net.value("c", "k").cloned(), a, "seed {seed}");
    }
}
