//! Store-and-forward delivery to one peer (SPEC §5).
//!
//! One task per known peer owns its outbox cursor: it reads open delivery rows from SQLite in
//! send order, sends them in batch frames over whichever connection to that peer is active
//! (one logical peer per instance id, however many connections), and tracks what is in flight.
//!
//! - An unanswered send is sent again after `SLIPSTREAM_RETRY_IN_N_SECONDS`, the wait doubling
//!   each time (capped at 60 s). A resend goes back to the oldest unanswered row and sends on
//!   from there in order (go-back-N): simple, ordered, and the receiver's dedup absorbs copies.
//! - Attempts count only while a connection is up: when the connection drops, rows in flight
//!   go back to waiting, with no attempt counted, and are sent again in order on reconnect.
//! - After `MAX_MESSAGE_REPUBLISH_ATTEMPTS` unanswered sends, the row is dead-lettered.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use crate::net::backoff::doubled;
use crate::node::Node;
use crate::telemetry;

/// Most rows in one frame.
const MAX_FRAME_ROWS: usize = 256;

/// The connection a delivery task writes to.
#[derive(Clone, Debug)]
pub struct ConnHandle {
    pub id: u64,
    pub tx: mpsc::Sender<String>,
}

pub enum DeliveryCmd {
    Attach(ConnHandle),
    Detach(u64),
    Acked(Vec<String>),
    /// Rows came back (dead-letter replay): read again from the start.
    Rewind,
}

struct InFlight {
    message_id: String,
    /// Unanswered sends already counted in the database.
    attempts: u32,
    deadline: Instant,
}

pub struct DeliveryTask {
    node: Arc<Node>,
    peer: String,
    rx: mpsc::Receiver<DeliveryCmd>,
    new_rows: Arc<Notify>,
    active: Option<ConnHandle>,
    standby: Vec<ConnHandle>,
    /// Highest seq read from the outbox in this attachment.
    cursor: i64,
    inflight: BTreeMap<i64, InFlight>,
    by_id: HashMap<String, VecDeque<i64>>,
    /// Whether the outbox may hold rows past the cursor.
    more: bool,
    /// No later than the earliest in-flight deadline (it may be earlier, after ACKs removed
    /// rows; the timeout then finds nothing expired and recomputes it).
    next_deadline: Option<Instant>,
}

enum Event {
    Cmd(Option<DeliveryCmd>),
    CanSend(Option<mpsc::OwnedPermit<String>>),
    NewRows,
    Timeout,
    Shutdown,
}

impl DeliveryTask {
    pub fn new(
        node: Arc<Node>,
        peer: String,
        rx: mpsc::Receiver<DeliveryCmd>,
        new_rows: Arc<Notify>,
    ) -> Self {
        DeliveryTask {
            node,
            peer,
            rx,
            new_rows,
            active: None,
            standby: Vec::new(),
            cursor: 0,
            inflight: BTreeMap::new(),
            by_id: HashMap::new(),
            more: true,
            next_deadline: None,
        }
    }

    pub async fn run(mut self) {
        loop {
            let can_send = self.active.is_some()
                && self.more
                && self.inflight.len() < self.node.cfg.delivery_window;
            let deadline = self.next_deadline;
            let conn_tx = self.active.as_ref().map(|c| c.tx.clone());
            let event = tokio::select! {
                _ = self.node.shutdown.cancelled() => Event::Shutdown,
                cmd = self.rx.recv() => Event::Cmd(cmd),
                permit = async { conn_tx.expect("guarded by can_send").reserve_owned().await.ok() }, if can_send => Event::CanSend(permit),
                _ = self.new_rows.notified() => Event::NewRows,
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() && self.active.is_some() => Event::Timeout,
            };
            match event {
                Event::Shutdown | Event::Cmd(None) => break,
                Event::Cmd(Some(cmd)) => self.on_cmd(cmd).await,
                Event::CanSend(Some(permit)) => self.send_batch(permit).await,
                Event::CanSend(None) => {
                    // The connection's queue closed: it is going away and will detach.
                    let id = self.active.as_ref().map(|c| c.id);
                    if let Some(id) = id {
                        self.detach(id);
                    }
                }
                Event::NewRows => self.more = true,
                Event::Timeout => self.on_timeout().await,
            }
        }
    }

    async fn on_cmd(&mut self, cmd: DeliveryCmd) {
        match cmd {
            DeliveryCmd::Attach(conn) => {
                if self.active.is_none() {
                    self.active = Some(conn);
                    self.restart_from_outbox();
                } else {
                    self.standby.push(conn);
                }
            }
            DeliveryCmd::Detach(id) => self.detach(id),
            DeliveryCmd::Acked(ids) => self.on_acked(ids).await,
            DeliveryCmd::Rewind => self.restart_from_outbox(),
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
            // Unanswered sends on the lost connection count for nothing; they go again in order.
            self.restart_from_outbox();
        }
    }

    fn restart_from_outbox(&mut self) {
        self.cursor = 0;
        self.inflight.clear();
        self.by_id.clear();
        self.more = true;
        self.next_deadline = None;
    }

    fn wait_after(&self, attempts: u32) -> Duration {
        doubled(self.node.cfg.retry_base, attempts)
    }

    async fn send_batch(&mut self, permit: mpsc::OwnedPermit<String>) {
        let room = self
            .node
            .cfg
            .delivery_window
            .saturating_sub(self.inflight.len())
            .min(MAX_FRAME_ROWS);
        let rows = match self
            .node
            .storage
            .open_deliveries(&self.peer, self.cursor, room)
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                telemetry::storage_failed(&self.node, "read outbox", &e);
                tokio::time::sleep(self.node.cfg.retry_base).await;
                return;
            }
        };
        if rows.len() < room {
            self.more = false;
        }
        let now = Instant::now();
        let mut bodies = Vec::with_capacity(rows.len());
        let mut types: Vec<(String, u64)> = Vec::new();
        let mut sent = Vec::with_capacity(rows.len());
        let mut skipped = Vec::new();
        // A frame stays under the receiver's frame limit: rows past it wait for the next frame.
        let budget = self.node.cfg.limits.max_frame_bytes;
        let mut bytes = 2;
        for row in rows {
            if !bodies.is_empty() && bytes + row.body.len() + 1 > budget {
                self.more = true;
                break;
            }
            bytes += row.body.len() + 1;
            self.cursor = self.cursor.max(row.seq);
            if row.path.contains(&self.peer) {
                // A configured peer whose id turned out to be on the path already has it.
                skipped.push(row.seq);
                continue;
            }
            self.by_id
                .entry(row.message_id.clone())
                .or_default()
                .push_back(row.seq);
            let deadline = now + self.wait_after(row.attempts);
            self.next_deadline = Some(self.next_deadline.map_or(deadline, |d| d.min(deadline)));
            self.inflight.insert(
                row.seq,
                InFlight {
                    message_id: row.message_id,
                    attempts: row.attempts,
                    deadline,
                },
            );
            if row.attempts > 0 {
                self.node.metrics.republished.inc();
            }
            sent.push(row.seq);
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
        telemetry::frame_sent(&self.node, &self.peer, &types);
        permit.send(slipstream_protocol::join_encoded(&bodies));
        if let Err(e) = self.node.storage.mark_sent(sent).await {
            telemetry::storage_failed(&self.node, "mark sent", &e);
        }
    }

    async fn on_acked(&mut self, ids: Vec<String>) {
        self.node.metrics.acks_received.inc_by(ids.len() as u64);
        let mut seqs = Vec::with_capacity(ids.len());
        for id in ids {
            // One ACK settles one send: two messages may share an id across cluster groups.
            if let Some(queue) = self.by_id.get_mut(&id) {
                if let Some(seq) = queue.pop_front() {
                    self.inflight.remove(&seq);
                    seqs.push(seq);
                }
                if queue.is_empty() {
                    self.by_id.remove(&id);
                }
            }
        }
        if seqs.is_empty() {
            return;
        }
        self.more = true;
        if let Err(e) = self.node.storage.mark_acked(seqs, None).await {
            telemetry::storage_failed(&self.node, "mark acked", &e);
        }
    }

    async fn on_timeout(&mut self) {
        self.expire().await;
        self.next_deadline = self.inflight.values().map(|f| f.deadline).min();
    }

    /// Counts an attempt against every in-flight row whose wait ran out, dead-letters those
    /// out of attempts, and goes back to resend the rest.
    async fn expire(&mut self) {
        let now = Instant::now();
        let expired: Vec<i64> = self
            .inflight
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(s, _)| *s)
            .collect();
        if expired.is_empty() {
            return;
        }
        let max = self.node.cfg.max_republish_attempts;
        let mut dead = Vec::new();
        let mut retry = Vec::new();
        for seq in &expired {
            let f = &self.inflight[seq];
            if f.attempts + 1 >= max {
                dead.push((*seq, f.message_id.clone()));
            } else {
                retry.push(*seq);
            }
        }
        let storage = &self.node.storage;
        if let Err(e) = storage.count_attempt(retry.clone()).await {
            telemetry::storage_failed(&self.node, "count attempt", &e);
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
            for (seq, id) in &dead {
                self.inflight.remove(seq);
                if let Some(q) = self.by_id.get_mut(id) {
                    q.retain(|s| s != seq);
                }
            }
        }
        if let Some(&first) = retry.iter().min() {
            // Go back to the oldest unanswered row and send on from there, in order.
            let later: Vec<i64> = self.inflight.range(first..).map(|(s, _)| *s).collect();
            for seq in later {
                if let Some(f) = self.inflight.remove(&seq) {
                    if let Some(q) = self.by_id.get_mut(&f.message_id) {
                        q.retain(|s| *s != seq);
                    }
                }
            }
            self.by_id.retain(|_, q| !q.is_empty());
            self.cursor = first - 1;
            self.more = true;
        }
    }
}

/// The registry's view of one peer's delivery task.
pub struct DeliveryHandle {
    pub tx: mpsc::Sender<DeliveryCmd>,
    pub new_rows: Arc<Notify>,
}
