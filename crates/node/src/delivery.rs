//! Store-and-forward delivery to one peer (SPEC §5).
//!
//! One task per known peer owns its outbox cursor: it reads open delivery rows from SQLite in
//! send order, sends them in batch frames over whichever connection to that peer is active
//! (one logical peer per instance id, however many connections), and tracks what is in flight.
//!
//! - A send not acknowledged within `SLIPSTREAM_RETRY_IN_N_SECONDS` counts one attempt and is
//!   sent again, the wait doubling each time (capped at 60 s). Only the rows whose wait ran
//!   out are sent again, ahead of new rows, so every send of a row is counted. A send still
//!   queued in the connection (not yet written to its socket) is not counted: its wait starts
//!   over (see [`Wire`]).
//! - Attempts count only while a connection is up: when the connection drops, rows in flight
//!   go back to waiting, with no attempt counted, and are sent again in order on reconnect.
//! - After `MAX_MESSAGE_REPUBLISH_ATTEMPTS` unanswered sends, the row is dead-lettered.

mod inflight;

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use slipstream_storage::{now_ms, Outgoing};

use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use crate::config::Forwarding;
use crate::net::backoff::doubled;
use crate::node::Node;
use crate::telemetry;

use inflight::{InFlight, InFlightRows};

/// Most rows in one frame.
const MAX_FRAME_ROWS: usize = 256;
/// Committed rows a task holds in memory before it falls back to reading them from the
/// outbox. Under full load the window is often full while the writer commits more; reading
/// those rows back cost the origin about a tenth of its CPU, and holding 4,096 costs about
/// 2 MiB per peer at 100-byte values.
const LIVE_ROWS: usize = 4096;
/// Most bytes of row bodies a task queues in memory, live or read ahead (for large values).
const QUEUED_BYTES: usize = 4 << 20;
/// Rows one outbox read takes ahead of sending them. Every read first has the writer write
/// the peer's held rows, a round trip through its queue that lasts a commit: reading one
/// frame at a time, a peer that fell behind under full load got about 256 rows per commit,
/// fewer than the origin committed, and never caught up until the writes stopped.
const READ_AHEAD: usize = LIVE_ROWS;
/// Most bytes of delivery frames a connection holds not yet written to its socket before the
/// task hands it more. A peer that reads slower than this node writes leaves the rest of its
/// rows in the outbox, not in memory: the window bounds rows (4,096), but at up to 512 KiB a
/// value that alone would let a stalled peer's frames take gigabytes here. A healthy link
/// writes frames as they come; with 100-byte values a full window is about 1.3 MiB.
const UNWRITTEN_BYTES: usize = 4 << 20;

/// The connection a delivery task writes to.
#[derive(Clone, Debug)]
pub struct ConnHandle {
    pub id: u64,
    pub tx: mpsc::Sender<Outbound>,
    /// The connection's delivery frames, queued and written (see [`Wire`]).
    pub wire: Arc<Wire>,
}

/// A frame handed to a connection to write.
#[derive(Debug)]
pub enum Outbound {
    /// Delivery rows: counted in the connection's [`Wire`] once written.
    Delivery(String),
    /// Anything else (a HELLO, a reply, a read sent on).
    Frame(String),
}

/// Delivery frames queued on a connection and written by it, numbered in queue order. A row's
/// wait for its ACK counts as an attempt only once its frame is written: a peer that reads
/// slower than this node writes (a slow link, a stalled process) leaves frames queued here,
/// and counting those would send each row again behind its first copy, doubling what waits
/// in memory, and dead-letter rows that never left this node. Their bytes bound what the
/// task hands the connection ([`UNWRITTEN_BYTES`]).
#[derive(Debug, Default)]
pub struct Wire {
    /// Delivery frames queued, the last one's number.
    pub queued: AtomicU64,
    /// Delivery frames written to the socket (every frame up to this number).
    pub written: AtomicU64,
    /// Bytes of the delivery frames queued and not written yet.
    pub unwritten_bytes: AtomicUsize,
    /// Signalled when delivery frames were written.
    pub drained: Notify,
}

pub enum DeliveryCmd {
    Attach(ConnHandle),
    Detach(u64),
    Acked(Vec<String>),
    /// Rows came back or moved here (dead-letter replay, `url:` rows renamed): read the outbox
    /// again from the start.
    Rewind,
    /// Rows just committed, in seq order: sent from memory when the task has no backlog.
    Live(Vec<Outgoing>),
}

pub struct DeliveryTask {
    node: Arc<Node>,
    peer: String,
    rx: mpsc::Receiver<DeliveryCmd>,
    new_rows: Arc<Notify>,
    /// Live rows were dropped on their way here (see `on_live`).
    missed: Arc<AtomicBool>,
    active: Option<ConnHandle>,
    standby: Vec<ConnHandle>,
    /// Highest seq read from the outbox in this attachment.
    cursor: i64,
    inflight: InFlightRows,
    /// In-flight rows whose wait ran out, to be sent again (before new rows).
    resend: BTreeSet<i64>,
    /// Whether the outbox may hold rows past the cursor and `queued`.
    more: bool,
    /// The rows right after the cursor, in seq order, to send next: read ahead from the
    /// outbox, or handed over by the writer as they commit while the task has no backlog
    /// (`more` is false), so they need not be read back.
    queued: VecDeque<Outgoing>,
    /// Bytes of the bodies in `queued`.
    queued_bytes: usize,
    /// No later than the earliest in-flight deadline (it may be earlier, after ACKs removed
    /// rows; the timeout then finds nothing expired and recomputes it).
    next_deadline: Option<Instant>,
    /// While no connection to the peer is up: when to hand its waiting rows to a relay next,
    /// and after which seq the next round reads.
    next_handoff: Option<Instant>,
    handoff_cursor: i64,
    /// After the connection to the peer dropped: when to deliver its recent writes to the
    /// peers it announced it delivers to, in its place, and from when (Unix ms).
    take_over: Option<(Instant, u64)>,
}

enum Event {
    Cmd(Option<DeliveryCmd>),
    CanSend(Option<mpsc::OwnedPermit<Outbound>>),
    /// The connection wrote delivery frames: there may be room for more.
    Drained,
    NewRows,
    Timeout,
    Handoff,
    TakeOver,
    Shutdown,
}

impl DeliveryTask {
    pub fn new(
        node: Arc<Node>,
        peer: String,
        rx: mpsc::Receiver<DeliveryCmd>,
        new_rows: Arc<Notify>,
        missed: Arc<AtomicBool>,
    ) -> Self {
        DeliveryTask {
            node,
            peer,
            rx,
            new_rows,
            missed,
            active: None,
            standby: Vec::new(),
            cursor: 0,
            inflight: InFlightRows::default(),
            resend: BTreeSet::new(),
            more: true,
            queued: VecDeque::new(),
            queued_bytes: 0,
            next_deadline: None,
            next_handoff: None,
            handoff_cursor: 0,
            take_over: None,
        }
        .down_now()
    }

    /// How long a peer must be unreachable before its rows go to a relay, and how often that
    /// is tried again while it stays so.
    fn handoff_grace(&self) -> std::time::Duration {
        self.node.cfg.retry_base * 2
    }

    /// The peer has no connection from now: under `direct` forwarding, its rows go to a relay
    /// if it stays so for the grace period.
    fn down_now(mut self) -> Self {
        self.schedule_handoff();
        self
    }

    fn schedule_handoff(&mut self) {
        self.next_handoff = (self.node.cfg.forwarding == Forwarding::Direct)
            .then(|| Instant::now() + self.handoff_grace());
    }

    /// Whether new rows may go now. With rows waiting and the window nearly full, the task
    /// waits until a full frame's worth of the window is free instead of sending a few rows
    /// per acknowledgement ("silly window" avoidance, as in TCP). Otherwise a busy peer that
    /// acknowledges a few rows at a time gets a few rows at a time, commits each handful on
    /// its own and acknowledges it alone: measured, that locked a 3-node mesh into frames of
    /// three or four writes and cut its throughput by three quarters. With few rows waiting
    /// (a light load) they go as soon as there is room for them all.
    fn window_open(&self) -> bool {
        let window = self.node.cfg.delivery_window;
        let waiting = if self.more {
            usize::MAX
        } else {
            self.queued.len()
        };
        let room = window.saturating_sub(self.inflight.len());
        waiting > 0 && room > 0 && room >= waiting.min(MAX_FRAME_ROWS).min(window / 4)
    }

    pub async fn run(mut self) {
        loop {
            let window_open = self.window_open();
            let wants_to_send = self.active.is_some() && (window_open || !self.resend.is_empty());
            // Past `UNWRITTEN_BYTES`, the task waits for the connection to write.
            let on_wire = self
                .active
                .as_ref()
                .map_or(0, |c| c.wire.unwritten_bytes.load(Ordering::Relaxed));
            let can_send = wants_to_send && on_wire < UNWRITTEN_BYTES;
            let wire = (wants_to_send && !can_send)
                .then(|| self.active.as_ref().map(|c| c.wire.clone()))
                .flatten();
            let deadline = self.next_deadline;
            let conn_tx = self.active.as_ref().map(|c| c.tx.clone());
            let event = tokio::select! {
                _ = self.node.shutdown.cancelled() => Event::Shutdown,
                cmd = self.rx.recv() => Event::Cmd(cmd),
                permit = async { conn_tx.expect("guarded by can_send").reserve_owned().await.ok() }, if can_send => Event::CanSend(permit),
                _ = async { wire.expect("guarded").drained.notified().await }, if wire.is_some() => Event::Drained,
                _ = self.new_rows.notified() => Event::NewRows,
                // A safety net: look at the outbox now and then even without a wake-up.
                _ = tokio::time::sleep(self.node.cfg.retry_base), if !self.more && self.active.is_some() => Event::NewRows,
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() && self.active.is_some() => Event::Timeout,
                _ = tokio::time::sleep_until(self.next_handoff.unwrap_or_else(Instant::now)), if self.next_handoff.is_some() && self.active.is_none() => Event::Handoff,
                _ = tokio::time::sleep_until(self.take_over.map_or_else(Instant::now, |(at, _)| at)), if self.take_over.is_some() && self.active.is_none() => Event::TakeOver,
            };
            match event {
                Event::Shutdown | Event::Cmd(None) => break,
                Event::Cmd(Some(cmd)) => self.on_cmd(cmd).await,
                Event::CanSend(Some(permit)) => self.send_batch(permit).await,
                Event::Drained => {}
                Event::CanSend(None) => {
                    // The connection's queue closed: it is going away and will detach.
                    let id = self.active.as_ref().map(|c| c.id);
                    if let Some(id) = id {
                        self.detach(id);
                    }
                }
                Event::NewRows => self.read_outbox(),
                Event::Timeout => self.on_timeout().await,
                Event::Handoff => self.hand_off().await,
                Event::TakeOver => {
                    if let Some((_, gone_at)) = self.take_over.take() {
                        self.node.take_over(&self.peer, gone_at).await;
                    }
                }
            }
        }
    }

    async fn on_cmd(&mut self, cmd: DeliveryCmd) {
        match cmd {
            DeliveryCmd::Attach(conn) => {
                if self.active.is_none() {
                    self.active = Some(conn);
                    // Back within the grace period: it delivers its writes itself.
                    self.take_over = None;
                    self.restart_from_outbox();
                } else {
                    self.standby.push(conn);
                }
            }
            DeliveryCmd::Detach(id) => self.detach(id),
            DeliveryCmd::Acked(ids) => self.on_acked(ids).await,
            DeliveryCmd::Rewind => self.restart_from_outbox(),
            DeliveryCmd::Live(rows) => self.on_live(rows),
        }
    }

    fn detach(&mut self, id: u64) {
        self.standby.retain(|c| c.id != id);
        if self.active.as_ref().is_some_and(|c| c.id == id) {
            self.active = if self.standby.is_empty() {
                None
            } else {
                Some(self.standby.remove(0))
            };
            if self.active.is_none() {
                self.schedule_handoff();
                // Writes it sent shortly before going away may not have reached the peers it
                // delivers to itself: if it stays away for the grace period, this node sends
                // them too (see `Node::take_over` for which).
                self.take_over = Some((Instant::now() + self.handoff_grace(), now_ms()));
            }
            // Unanswered sends on the lost connection count for nothing; they go again in order.
            self.restart_from_outbox();
        }
    }

    /// The outbox may hold rows past the cursor: read them from there, in order. Rows queued
    /// would come again from that read, so they are dropped.
    fn read_outbox(&mut self) {
        self.missed.store(false, Ordering::Release);
        self.more = true;
        self.clear_queued();
    }

    fn clear_queued(&mut self) {
        self.queued.clear();
        self.queued_bytes = 0;
    }

    /// Rows just committed. Taken only when the task is caught up with its outbox (every
    /// committed row up to the last one queued was read) and a connection is up; then the
    /// rows after those are exactly these, in order. Otherwise the outbox read will find them.
    fn on_live(&mut self, rows: Vec<Outgoing>) {
        // Rows dropped on the way (a full queue) come before these: taking these would move
        // the cursor past them, so the outbox is read instead, from the cursor on.
        if self.missed.swap(false, Ordering::AcqRel) {
            self.read_outbox();
        }
        if self.more || self.active.is_none() {
            return;
        }
        let last = self.queued.back().map_or(self.cursor, |r| r.seq);
        for row in rows.into_iter().filter(|r| r.seq > last) {
            self.queued_bytes += row.body.len();
            self.queued.push_back(row);
        }
        if self.queued.len() > LIVE_ROWS || self.queued_bytes > QUEUED_BYTES {
            // Falling behind: what commits next is read from the database once the queued
            // rows are sent, instead of held in memory.
            self.more = true;
        }
    }

    fn restart_from_outbox(&mut self) {
        self.clear_queued();
        self.cursor = 0;
        self.inflight.clear();
        self.resend.clear();
        self.more = true;
        self.next_deadline = None;
    }

    /// Forgets an in-flight row (dead, or no longer open).
    fn settle(&mut self, seq: i64) {
        self.resend.remove(&seq);
        self.inflight.settle(seq);
    }

    /// Rows for the next frame: those due again first, else new rows after the cursor.
    /// `None` when the outbox could not be read.
    async fn next_rows(&mut self) -> Option<(Vec<Outgoing>, bool)> {
        let storage = &self.node.storage;
        if !self.resend.is_empty() {
            let seqs: Vec<i64> = self.resend.iter().take(MAX_FRAME_ROWS).copied().collect();
            let rows = match storage.open_deliveries_by_seq(seqs.clone()).await {
                Ok(rows) => rows,
                Err(e) => {
                    telemetry::storage_failed(&self.node, "read outbox", &e);
                    return None;
                }
            };
            // Rows no longer open (acknowledged or dead-lettered meanwhile) are settled.
            for seq in seqs {
                if !rows.iter().any(|r| r.seq == seq) {
                    self.settle(seq);
                }
            }
            return Some((rows, true));
        }
        let room = self
            .node
            .cfg
            .delivery_window
            .saturating_sub(self.inflight.len())
            .min(MAX_FRAME_ROWS);
        if self.queued.is_empty() && self.more {
            match storage
                .open_deliveries_within(&self.peer, self.cursor, READ_AHEAD, QUEUED_BYTES)
                .await
            {
                Ok(rows) => {
                    let bytes = rows.iter().map(|r| r.body.len()).sum();
                    if rows.len() < READ_AHEAD && bytes < QUEUED_BYTES {
                        self.more = false;
                    }
                    self.queued = rows.into();
                    self.queued_bytes = bytes;
                }
                Err(e) => {
                    telemetry::storage_failed(&self.node, "read outbox", &e);
                    return None;
                }
            }
        }
        let n = room.min(self.queued.len());
        let rows: Vec<Outgoing> = self.queued.drain(..n).collect();
        self.queued_bytes -= rows.iter().map(|r| r.body.len()).sum::<usize>();
        Some((rows, false))
    }

    async fn send_batch(&mut self, permit: mpsc::OwnedPermit<Outbound>) {
        let Some((rows, resending)) = self.next_rows().await else {
            tokio::time::sleep(self.node.cfg.retry_base).await;
            return;
        };
        let now = Instant::now();
        // The number this frame gets among the connection's delivery frames.
        let wire = self.active.as_ref().map(|c| c.wire.clone());
        let frame_no = wire
            .as_ref()
            .map_or(0, |w| w.queued.load(Ordering::Relaxed) + 1);
        let mut bodies = Vec::with_capacity(rows.len());
        let mut types: Vec<(&str, u64)> = Vec::new();
        let mut skipped = Vec::new();
        // A frame stays under the receiver's frame limit: rows past it wait for the next frame.
        let budget = self.node.cfg.limits.max_frame_bytes;
        let mut bytes = 2;
        let mut rows = rows.into_iter();
        while let Some(row) = rows.next() {
            if !bodies.is_empty() && bytes + row.body.len() + 1 > budget {
                if !resending {
                    // The rest goes first in the next frame (rows to resend stay listed).
                    for row in std::iter::once(row).chain(rows).rev() {
                        self.queued_bytes += row.body.len();
                        self.queued.push_front(row);
                    }
                }
                break;
            }
            bytes += row.body.len() + 1;
            if !resending {
                self.cursor = self.cursor.max(row.seq);
                if row.path.contains(&self.peer) {
                    // A configured peer whose id turned out to be on the path already has it.
                    skipped.push(row.seq);
                    continue;
                }
            }
            let deadline = now + doubled(self.node.cfg.retry_base, row.attempts);
            self.next_deadline = Some(self.next_deadline.map_or(deadline, |d| d.min(deadline)));
            if resending {
                self.resend.remove(&row.seq);
                self.node.metrics.republished.inc();
                self.inflight
                    .resent(row.seq, row.attempts, deadline, frame_no);
            } else {
                let sent = InFlight {
                    message_id: row.message_id,
                    attempts: row.attempts,
                    deadline: Some(deadline),
                    frame: frame_no,
                };
                self.inflight.sent(row.seq, sent);
            }
            bodies.push(row.body);
            match types.iter_mut().find(|(t, _)| *t == row.msg_type) {
                Some((_, n)) => *n += 1,
                None => types.push((row.msg_type, 1)),
            }
        }
        if !skipped.is_empty() {
            let _ = self
                .node
                .storage
                .mark_acked(skipped, Some("skipped: peer already on the message path"))
                .await;
        }
        if bodies.is_empty() {
            return;
        }
        let jitter = self.node.cfg.delivery_jitter;
        if !jitter.is_zero() {
            // Testing aid (SLIPSTREAM_DELIVERY_JITTER_MS): reorder deliveries across peers.
            tokio::time::sleep(jitter.mul_f64(rand::random::<f64>())).await;
        }
        let frame = slipstream_protocol::join_encoded(&bodies);
        telemetry::frame_sent(&self.node, &self.peer, &types, frame.len());
        if let Some(w) = wire {
            w.queued.store(frame_no, Ordering::Relaxed);
            w.unwritten_bytes.fetch_add(frame.len(), Ordering::Relaxed);
        }
        permit.send(Outbound::Delivery(frame));
        // Rows are not marked `sent` here: the first unanswered retry period marks them (see
        // `count_attempt`), so a delivery acknowledged in time costs no extra row update.
    }

    async fn on_acked(&mut self, ids: Vec<String>) {
        self.node.metrics.acks_received.inc_by(ids.len() as u64);
        let mut seqs = Vec::with_capacity(ids.len());
        let mut others = Vec::new();
        for id in ids {
            // One ACK settles one row: two messages may share an id across cluster groups.
            if let Some(seq) = self.inflight.settle_id(&id) {
                self.resend.remove(&seq);
                seqs.push(seq);
            } else {
                others.push(id);
            }
        }
        if !others.is_empty() {
            // Not sent by this task: writes handed to this peer to relay for another.
            self.node.handoffs_acked(&self.peer, others).await;
        }
        if seqs.is_empty() {
            return;
        }
        if let Err(e) = self.node.storage.mark_acked(seqs, None).await {
            telemetry::storage_failed(&self.node, "mark acked", &e);
        }
    }

    async fn on_timeout(&mut self) {
        self.expire().await;
        self.next_deadline = self.inflight.iter().filter_map(|(_, f)| f.deadline).min();
    }

    /// Counts an attempt against every row whose wait ran out: those out of attempts are
    /// dead-lettered, the rest queued to be sent again. A row whose frame the connection has
    /// not written yet is not counted: its wait starts over (see [`Wire`]).
    async fn expire(&mut self) {
        let now = Instant::now();
        let max = self.node.cfg.max_republish_attempts;
        let written = self
            .active
            .as_ref()
            .map_or(u64::MAX, |c| c.wire.written.load(Ordering::Acquire));
        let mut dead = Vec::new();
        let mut retry = Vec::new();
        let mut unwritten = Vec::new();
        for (seq, f) in self.inflight.iter() {
            if f.deadline.is_some_and(|d| d <= now) {
                if f.frame > written {
                    unwritten.push(seq);
                } else if f.attempts + 1 >= max {
                    dead.push((seq, f.message_id.clone()));
                } else {
                    retry.push(seq);
                }
            }
        }
        for seq in unwritten {
            if let Some(f) = self.inflight.get_mut(seq) {
                f.deadline = Some(now + doubled(self.node.cfg.retry_base, f.attempts));
            }
        }
        let storage = &self.node.storage;
        if !retry.is_empty() {
            if let Err(e) = storage.count_attempt(retry.clone()).await {
                telemetry::storage_failed(&self.node, "count attempt", &e);
            }
            for seq in &retry {
                if let Some(f) = self.inflight.get_mut(*seq) {
                    f.attempts += 1;
                    f.deadline = None;
                }
                self.resend.insert(*seq);
            }
        }
        if !dead.is_empty() {
            let note = format!("no ACK after {max} sends");
            let seqs = dead.iter().map(|(s, _)| *s).collect();
            match storage.mark_dead(seqs, note).await {
                Ok(()) => {
                    for (seq, id) in &dead {
                        telemetry::dead_lettered(&self.node, &self.peer, id, *seq, max);
                    }
                }
                Err(e) => telemetry::storage_failed(&self.node, "mark dead", &e),
            }
            for (seq, _) in dead {
                self.settle(seq);
            }
        }
    }
}

impl DeliveryTask {
    /// The peer has been unreachable for the grace period: its waiting rows of writes that
    /// entered the mesh here go to a connected peer that announced it delivers to this one (so
    /// it knows it and will store and forward), each marked `relayTo`. Once the relay acknowledges a write, it holds it durably and the
    /// row here is settled. Rows not acknowledged go again on the next round; the relay
    /// adds at most one open delivery per write and peer, so a repeat costs nothing.
    async fn hand_off(&mut self) {
        self.schedule_handoff();
        let relay = self
            .node
            .peers
            .views()
            .into_iter()
            .filter(|v| v.connected && v.key != self.peer)
            .map(|v| v.key)
            .find(|k| self.node.can_relay(k, &self.peer));
        let Some(relay) = relay else {
            tracing::debug!(instance_id = %self.node.id, peer = %self.peer, "peer unreachable and no peer is linked to it: its writes wait here");
            return;
        };
        let rows = match self
            .node
            .storage
            .open_deliveries(&self.peer, self.handoff_cursor, MAX_FRAME_ROWS)
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                telemetry::storage_failed(&self.node, "read outbox", &e);
                return;
            }
        };
        let full = rows.len() == MAX_FRAME_ROWS;
        // Rounds walk the outbox (rows not handed on, such as relayed ones, are passed over);
        // after the last rows, the next round starts again from the first still open.
        self.handoff_cursor = if full {
            rows.last().map_or(0, |r| r.seq)
        } else {
            0
        };
        let mark = format!(
            "{{\"relayTo\":{},",
            serde_json::to_string(&[&self.peer]).expect("strings serialize")
        );
        let budget = self.node.cfg.limits.max_frame_bytes;
        let mut bytes = 2;
        let mut bodies = Vec::with_capacity(rows.len());
        let mut handed = Vec::with_capacity(rows.len());
        for row in rows {
            // Only writes that entered the mesh here: a relay keeps what it was handed until
            // it reaches the peer itself, so a write is handed on at most once.
            if row.path.len() != 1 {
                continue;
            }
            let Some(rest) = row.body.strip_prefix('{') else {
                continue;
            };
            let body = format!("{mark}{rest}");
            if !bodies.is_empty() && bytes + body.len() + 1 > budget {
                break;
            }
            bytes += body.len() + 1;
            bodies.push(body);
            handed.push((row.message_id, row.seq));
        }
        if bodies.is_empty() {
            if full {
                self.next_handoff = Some(Instant::now() + self.node.cfg.retry_base / 4);
            }
            return;
        }
        for (id, seq) in &handed {
            self.node.handed_off(id, &self.peer, *seq);
        }
        let frame = slipstream_protocol::join_encoded(&bodies);
        if self.node.peers.send_now(&relay, &frame) {
            tracing::info!(instance_id = %self.node.id, peer = %self.peer, relay = %relay, writes = handed.len(), "peer unreachable: handing its waiting writes to a relay");
            if full {
                // More are waiting: the next round soon, not after a whole grace period.
                self.next_handoff = Some(Instant::now() + self.node.cfg.retry_base / 4);
            }
        }
    }
}

/// The registry's view of one peer's delivery task.
pub struct DeliveryHandle {
    pub tx: mpsc::Sender<DeliveryCmd>,
    pub new_rows: Arc<Notify>,
    /// Set when live rows could not be handed over (the queue was full).
    pub missed: Arc<AtomicBool>,
}
