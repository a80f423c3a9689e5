//! The task that owns one WebSocket connection, inbound or outbound, peer or local app.
//!
//! It is generic over any `Sink + Stream` of WebSocket messages, so the same code serves both
//! directions. Others reach the socket only through its `mpsc` of frames (the delivery task of
//! the peer it belongs to). The `select!` below only turns inputs into [`Event`]s; the methods
//! of [`Conn`] do the work.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use slipstream_protocol::{decode_frame, encode_acks, Body, Hello, Message, Role};
use slipstream_router::Sender;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

use crate::delivery::{ConnHandle, Outbound, Wire};
use crate::node::{Committed, Node, Outcome};
use crate::peers::{ConnInfo, Direction};
use crate::requests::ReplySink;
use crate::telemetry;

/// Most writes from one connection waiting for their commit; past it, reading pauses.
pub(crate) const MAX_PENDING_COMMITS: usize = 8192;
/// Most bytes of frames whose writes wait for their commit; past it, reading pauses too. The
/// count above bounds writes, this their size: with an app keeping 2,000 writes of 48 KiB in
/// flight, a node peaked at about 300 MiB without it. Small writes never reach it.
pub(crate) const MAX_PENDING_BYTES: usize = 8 << 20;
/// Frames queued for the writer task of one connection, on top of what the socket buffers.
const OUT_QUEUE: usize = 256;
/// Frames waiting here for room in that queue past which this connection stops taking pushes
/// and outgoing deliveries: those wait in their own queues (a push queue that overflows closes
/// an app as too slow; a delivery task waits), while reading and answering go on.
const UNSENT_PAUSE: usize = 16;
/// Bytes of answers (ACKs, NACKs, replies) not yet written to the socket, waiting here or in
/// the writer task's queue, past which reading pauses too: how far a remote that writes a lot
/// before it reads can get ahead. Past it the connection waits for the remote to read, and the
/// writer's stuck timer closes it if it never does. Answers in the writer's queue count too:
/// 256 frames of replies of up to a megabyte each could wait there. Pushes and deliveries do
/// not count: they are held back by `UNSENT_PAUSE` instead, and a few pushed frames of a
/// megabyte each would otherwise stop the reading that an app writing everything before it
/// reads needs.
const MAX_UNSENT_BYTES: usize = 4 << 20;
/// Bytes of push frames made for one app and not yet written to its socket (waiting here or in
/// the writer task's queue) past which the connection takes no more pushes for it. The writes
/// not taken yet stay in the node's push backlog, one copy shared by every app, instead of a
/// frame of copies for each app: eight apps writing 48 KiB values, each subscribed to the
/// pushes, took a node to 680–900 MiB when every connection copied its pushes into frames as
/// they came.
const MAX_UNWRITTEN_PUSH_BYTES: u64 = 1 << 20;
/// How often an app's push backlog is checked when nothing else wakes its connection.
const PUSH_CHECK: Duration = Duration::from_millis(100);
/// Most pushed writes sent to a local app in one frame.
const MAX_PUSH_BATCH: usize = 256;
/// How long an outbound connection waits for the peer's HELLO before treating it as an older
/// implementation that sends none.
const HELLO_WAIT: Duration = Duration::from_secs(5);
/// How long shutdown waits for this connection's in-flight commits before closing.
const DRAIN_WAIT: Duration = Duration::from_secs(10);

/// Where a connection came from.
#[derive(Debug, Clone)]
pub struct ConnCtx {
    pub direction: Direction,
    pub remote: String,
    /// The configured peer URL of an outbound connection.
    pub url: Option<String>,
    /// Whether the other side proved who it is (token, client certificate, or loopback when
    /// neither is configured; always for connections this node dialled). Only authenticated
    /// connections may send commands.
    pub authenticated: bool,
}

enum Who {
    /// No HELLO yet and nothing that tells.
    Unknown,
    Client,
    Peer(String),
}

enum Event<'a> {
    Shutdown,
    /// The writer task gave up: the remote stopped reading.
    WriteStuck,
    /// The writer task's queue has room for the oldest frame waiting here.
    Room(mpsc::Permit<'a, Queued>),
    /// The writer task wrote answers or pushes, or other connections' writes were committed:
    /// reading, or taking pushes, may go on.
    Written,
    Frame(Option<Result<WsMessage, WsError>>),
    Out(Outbound),
    Committed(Committed),
    Push(Result<Arc<str>, broadcast::error::RecvError>),
    Tick,
    /// Time to look at how far behind an app is on its pushes.
    PushCheck,
    HelloTimeout,
}

/// What a frame waiting to be written is, for what is counted of it until written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An answer to what the remote sent (an ACK, a NACK, a reply): its bytes count against
    /// `MAX_UNSENT_BYTES`.
    Answer,
    /// Delivery rows: counted in the connection's [`Wire`] once written.
    Delivery,
    /// Writes pushed to a local app: counted in `InWriter::pushed` once written.
    Push,
    /// A HELLO, a ping, answers left over at the end.
    Other,
}

/// A frame in the writer task's queue, with what it is; what is counted of it until written
/// is released once it is.
type Queued = (WsMessage, Kind);

/// Bytes of answers handed to the writer task and not written yet (see `MAX_UNSENT_BYTES`),
/// and the wake-up of a connection that paused reading on them or taking pushes; bytes of
/// pushes written.
#[derive(Default)]
struct InWriter {
    bytes: std::sync::atomic::AtomicUsize,
    written: tokio::sync::Notify,
    pushed: std::sync::atomic::AtomicU64,
}

/// Why the loop ends.
enum End {
    Closed,
    Close(CloseCode, String),
}

struct Conn {
    node: Arc<Node>,
    ctx: ConnCtx,
    id: u64,
    who: Who,
    /// `who` as the router names a sender, kept with it rather than made (and the peer's id
    /// copied) for every message.
    sender: Sender,
    tx: mpsc::Sender<Outbound>,
    /// Delivery frames queued and written (see [`Wire`]).
    wire: Arc<Wire>,
    last_rx: Instant,
    commits: FuturesOrdered<std::pin::Pin<Box<dyn std::future::Future<Output = Committed> + Send>>>,
    /// The bytes of the frames whose writes are in `commits`, shared out over their writes:
    /// (writes still waiting, bytes each), one entry per frame, oldest first.
    pending_sizes: VecDeque<(usize, usize)>,
    /// Their sum (see `MAX_PENDING_BYTES`).
    pending_bytes: usize,
    pushes: Option<broadcast::Receiver<Arc<str>>>,
    /// `Node::pushed_bytes` when this connection subscribed to pushes: with the pushes written
    /// since (`InWriter::pushed`), how far behind the app is in bytes.
    push_base: u64,
    /// Bytes of the push frames made for this app so far: less `InWriter::pushed`, those not
    /// written yet (see `MAX_UNWRITTEN_PUSH_BYTES`).
    push_framed: u64,
    /// Frames to write, oldest first, handed to the writer task as its queue has room.
    out: VecDeque<(WsMessage, Kind)>,
    /// Bytes of the answers in `out` (see `MAX_UNSENT_BYTES`).
    answer_bytes: usize,
    /// Bytes of the answers in the writer task's queue.
    in_writer: Arc<InWriter>,
    acks: Vec<String>,
    /// Invalid messages since `invalid_since` (a one-second window).
    invalid_count: u32,
    invalid_since: Instant,
    /// The HELLO this connection sent last: sent again once the peer is registered if what
    /// this node announces changed meanwhile (a broadcast may have missed this connection).
    hello_sent: String,
}

/// Serves one connection until it closes or the node shuts down. `connected_at` is the TCP
/// connect: the dead-connection timer runs from there, not from the HELLO.
pub async fn serve<W>(node: Arc<Node>, ws: W, ctx: ConnCtx, connected_at: Instant)
where
    W: Stream<Item = Result<WsMessage, WsError>>
        + Sink<WsMessage, Error = WsError>
        + Send
        + Unpin
        + 'static,
{
    let (sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Outbound>(64);
    // Writing happens in a task of its own, so this one keeps reading while a write waits
    // for the remote to read: two ends that both write a lot and read only between writes
    // would otherwise wait on each other until the heartbeat timeout ends the connection.
    let heartbeat = node.cfg.heartbeat;
    let (out_tx, out_rx) = mpsc::channel::<Queued>(OUT_QUEUE);
    let write_stuck = tokio_util::sync::CancellationToken::new();
    let in_writer = Arc::new(InWriter::default());
    let wire = Arc::new(Wire::default());
    let writer = tokio::spawn(write_frames(
        sink,
        out_rx,
        heartbeat * 3,
        write_stuck.clone(),
        in_writer.clone(),
        wire.clone(),
    ));
    let mut conn = Conn {
        id: node.next_conn_id(),
        node: node.clone(),
        ctx,
        who: Who::Unknown,
        sender: Sender::Client,
        tx,
        wire,
        last_rx: connected_at,
        commits: FuturesOrdered::new(),
        pending_sizes: VecDeque::new(),
        pending_bytes: 0,
        pushes: None,
        push_base: 0,
        push_framed: 0,
        out: VecDeque::new(),
        answer_bytes: 0,
        in_writer: in_writer.clone(),
        acks: Vec::new(),
        invalid_count: 0,
        invalid_since: connected_at,
        hello_sent: String::new(),
    };
    node.metrics.active_connections.inc();
    tracing::debug!(instance_id = %node.id, conn = conn.id, remote = %conn.ctx.remote, direction = ?conn.ctx.direction, "connection open");
    conn.hello_sent = node.hello().encode();
    let mut ticker = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // An app's push backlog is checked on every turn, and at least this often.
    let mut push_check = tokio::time::interval(PUSH_CHECK);
    push_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let hello_deadline = connected_at + HELLO_WAIT;
    // Whether reading paused on unwritten answers at the last turn (counted once per pause).
    let mut paused = false;
    // Whether reading paused on the node's bound on writes waiting for their commit.
    let mut node_paused = false;
    let end = if out_tx
        .send((WsMessage::Text(conn.hello_sent.clone().into()), Kind::Other))
        .await
        .is_err()
    {
        End::Closed
    } else {
        loop {
            let waiting_hello =
                matches!(conn.who, Who::Unknown) && conn.ctx.direction == Direction::Outbound;
            // The writer's queue may be full (the remote is not reading): frames wait in
            // `out`, and while many do, pushes and deliveries wait where they are. Reading
            // goes on, so a remote that writes everything before it reads is still served.
            let backed_up = conn.out.len() >= UNSENT_PAUSE;
            let push_room = conn.push_framed - in_writer.pushed.load(Ordering::Relaxed)
                < MAX_UNWRITTEN_PUSH_BYTES;
            // The node's bound on writes waiting for their commit, over all connections, holds
            // apps only. Peers' writes count toward it, but peers go on: they are few, each
            // bounded on its own, and a peer's connection carries the ACKs that settle this
            // node's deliveries, which apps writing faster than the disk commits must not hold
            // up. A connection is read until its first frame says which it is (its HELLO, or
            // an app's first write). The wait for room is registered before the check, so a
            // release in between wakes it.
            let freed = node.pending.freed();
            tokio::pin!(freed);
            let node_room = !matches!(conn.who, Who::Client) || !node.pending.full() || {
                freed.as_mut().enable();
                !node.pending.full()
            };
            if !node_room && !node_paused {
                node.metrics.ingest_pauses.inc();
            }
            node_paused = !node_room;
            let reading =
                conn.answer_bytes + in_writer.bytes.load(Ordering::Relaxed) < MAX_UNSENT_BYTES;
            if !reading && !paused {
                node.metrics.read_pauses.inc();
            }
            paused = !reading;
            let event = tokio::select! {
                biased;
                _ = node.shutdown.cancelled() => Event::Shutdown,
                _ = write_stuck.cancelled() => Event::WriteStuck,
                room = out_tx.reserve(), if !conn.out.is_empty() => match room {
                    Ok(permit) => Event::Room(permit),
                    Err(_) => Event::WriteStuck,
                },
                Some(done) = conn.commits.next(), if !conn.commits.is_empty() => Event::Committed(done),
                Some(frame) = rx.recv(), if !backed_up => Event::Out(frame),
                // Pushes before new input: an app that writes fast must not fall behind on
                // the writes it is pushed.
                push = next_push(&mut conn.pushes), if !backed_up && push_room => Event::Push(push),
                frame = stream.next(), if conn.commits.len() < MAX_PENDING_COMMITS && conn.pending_bytes < MAX_PENDING_BYTES && node_room && reading => Event::Frame(frame),
                // Woken to check the bounds above again.
                _ = &mut freed, if !node_room => Event::Written,
                _ = in_writer.written.notified(), if !reading || !push_room => Event::Written,
                _ = ticker.tick() => Event::Tick,
                _ = push_check.tick(), if conn.pushes.is_some() => Event::PushCheck,
                _ = tokio::time::sleep_until(hello_deadline), if waiting_hello => Event::HelloTimeout,
            };
            let step = match event {
                Event::WriteStuck => break End::Closed,
                Event::Shutdown => {
                    conn.drain_commits().await;
                    Err(End::Close(CloseCode::Away, "node shutting down".into()))
                }
                Event::Frame(None) | Event::Frame(Some(Err(_))) => Err(End::Closed),
                Event::Frame(Some(Ok(frame))) => {
                    let (bytes, before) = (frame.len(), conn.commits.len());
                    let step = conn.on_frame(frame).await;
                    conn.count_pending(conn.commits.len() - before, bytes);
                    step
                }
                Event::Out(Outbound::Delivery(frame)) => {
                    conn.push_out(WsMessage::Text(frame.into()), Kind::Delivery);
                    Ok(())
                }
                Event::Out(Outbound::Frame(frame)) => {
                    conn.text(frame);
                    Ok(())
                }
                Event::Room(permit) => {
                    conn.send_oldest(permit);
                    Ok(())
                }
                Event::Written => Ok(()),
                Event::Committed(done) => {
                    conn.on_committed(done);
                    Ok(())
                }
                Event::Push(push) => conn.on_push(push),
                Event::Tick => conn.on_tick(),
                Event::PushCheck => Ok(()),
                Event::HelloTimeout => {
                    // An older peer that sends no HELLO: deliver to it under its configured URL.
                    if let Some(url) = conn.ctx.url.clone() {
                        let key = node.key_for_url(&url);
                        conn.attach(key).await;
                    }
                    Ok(())
                }
            };
            let step = step.and_then(|()| conn.check_push_lag());
            conn.flush_acks();
            // Frames go to the writer task as far as its queue has room; the rest wait in
            // `out` for the `Room` event. The writer gives up after three heartbeats without
            // progress, which ends the connection (its rows go again on the next one).
            while !conn.out.is_empty() {
                match out_tx.try_reserve() {
                    Ok(permit) => conn.send_oldest(permit),
                    // The writer ended; `write_stuck` or the next read ends this loop.
                    Err(_) => break,
                }
            }
            if let Err(end) = step {
                break end;
            }
        }
    };
    // This connection's writes still waiting for their commit no longer count against the
    // node's bound: the connection reads no more.
    node.pending
        .release(conn.commits.len(), std::mem::take(&mut conn.pending_bytes));
    conn.pending_sizes.clear();
    // Commits still running carry their effects (seen marks, pushes to apps): a task drives
    // them to the end although their ACKs can no longer go out.
    if !conn.commits.is_empty() {
        let unfinished = std::mem::take(&mut conn.commits);
        node.tracker
            .spawn(async move { unfinished.collect::<Vec<_>>().await });
    }
    // Detach first, so the delivery task stops counting attempts on this connection at once.
    if let Who::Peer(key) = &conn.who {
        node.peers.detach(key, conn.id).await;
        // Peers that would hand this one's writes to us must know the link is gone.
        node.announce();
    }
    // Answers still waiting here (the last ACKs on shutdown) get as long as the close frame.
    let unsent = std::mem::take(&mut conn.out);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        for (frame, kind) in unsent {
            // Answers here were never counted in the writer's queue.
            let kind = if kind == Kind::Answer {
                Kind::Other
            } else {
                kind
            };
            if out_tx.send((frame, kind)).await.is_err() {
                break;
            }
        }
    })
    .await;
    if let End::Close(code, reason) = end {
        tracing::debug!(instance_id = %node.id, conn = conn.id, reason = %reason, "closing connection");
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            out_tx.send((WsMessage::Close(Some(frame)), Kind::Other)),
        )
        .await;
    }
    // The writer sends what is queued, then closes the socket; it is not waited for long.
    drop(out_tx);
    let abort = writer.abort_handle();
    if tokio::time::timeout(Duration::from_secs(2), writer)
        .await
        .is_err()
    {
        abort.abort();
    }
    node.metrics.active_connections.dec();
    tracing::debug!(instance_id = %node.id, conn = conn.id, "connection closed");
}

/// The writing half of a connection: sends queued frames, several per flush, until the
/// queue closes, then closes the socket. A write that makes no progress for `stuck_after`
/// (the remote stopped reading) cancels `stuck`, which ends the connection.
async fn write_frames<S>(
    mut sink: S,
    mut out: mpsc::Receiver<Queued>,
    stuck_after: Duration,
    stuck: tokio_util::sync::CancellationToken,
    in_writer: Arc<InWriter>,
    wire: Arc<Wire>,
) where
    S: Sink<WsMessage, Error = WsError> + Unpin,
{
    let mut batch = Vec::new();
    while let Some(first) = out.recv().await {
        batch.push(first);
        while batch.len() < 64 {
            match out.try_recv() {
                Ok(frame) => batch.push(frame),
                Err(_) => break,
            }
        }
        let (mut answers, mut deliveries, mut delivery_bytes, mut pushed) = (0, 0u64, 0, 0);
        for (frame, kind) in &batch {
            match kind {
                Kind::Answer => answers += frame.len(),
                Kind::Delivery => {
                    deliveries += 1;
                    delivery_bytes += frame.len();
                }
                Kind::Push => pushed += frame.len() as u64,
                Kind::Other => {}
            }
        }
        let write = async {
            for (frame, _) in batch.drain(..) {
                sink.feed(frame).await?;
            }
            sink.flush().await
        };
        if !matches!(tokio::time::timeout(stuck_after, write).await, Ok(Ok(()))) {
            stuck.cancel();
            return;
        }
        if answers > 0 {
            in_writer.bytes.fetch_sub(answers, Ordering::Relaxed);
        }
        if pushed > 0 {
            in_writer.pushed.fetch_add(pushed, Ordering::Relaxed);
        }
        if answers > 0 || pushed > 0 {
            in_writer.written.notify_one();
        }
        if deliveries > 0 {
            wire.written.fetch_add(deliveries, Ordering::Release);
            wire.unwritten_bytes
                .fetch_sub(delivery_bytes, Ordering::Relaxed);
            wire.drained.notify_one();
        }
    }
    let _ = sink.close().await;
}

async fn next_push(
    rx: &mut Option<broadcast::Receiver<Arc<str>>>,
) -> Result<Arc<str>, broadcast::error::RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl Conn {
    /// A frame that answers what the remote sent (an ACK, a NACK, a reply).
    fn answer(&mut self, frame: String) {
        self.push_out(WsMessage::Text(frame.into()), Kind::Answer);
    }

    /// A frame this node sends of its own accord (a HELLO, a read sent on): not delivery rows,
    /// not a push.
    fn text(&mut self, frame: String) {
        self.push_out(WsMessage::Text(frame.into()), Kind::Other);
    }

    fn push_out(&mut self, frame: WsMessage, kind: Kind) {
        match kind {
            Kind::Answer => self.answer_bytes += frame.len(),
            Kind::Push => self.push_framed += frame.len() as u64,
            Kind::Delivery | Kind::Other => {}
        }
        self.out.push_back((frame, kind));
    }

    /// Hands the oldest waiting frame to the writer task, in the room reserved for it.
    fn send_oldest(&mut self, permit: mpsc::Permit<'_, Queued>) {
        if let Some((frame, kind)) = self.out.pop_front() {
            let bytes = if kind == Kind::Answer { frame.len() } else { 0 };
            // Counted in the writer's queue until written (see `MAX_UNSENT_BYTES`).
            self.answer_bytes -= bytes;
            self.in_writer.bytes.fetch_add(bytes, Ordering::Relaxed);
            permit.send((frame, kind));
        }
    }

    fn nack(&mut self, message_id: Option<String>, error: String) {
        self.answer(Message::nack(&self.node.id, message_id, error).encode());
    }

    /// An invalid frame or message: logged, counted, answered with a NACK naming the problem.
    fn invalid(&mut self, message_id: Option<String>, reason: String) -> Result<(), End> {
        telemetry::invalid(&self.node, &self.sender, &reason);
        self.nack(message_id, reason);
        self.count_invalid()
    }

    /// Closes the connection (1008) once it sends more invalid messages per second than
    /// `SLIPSTREAM_MAX_INVALID_PER_SECOND`.
    fn count_invalid(&mut self) -> Result<(), End> {
        let now = Instant::now();
        if now.duration_since(self.invalid_since) >= Duration::from_secs(1) {
            self.invalid_since = now;
            self.invalid_count = 0;
        }
        self.invalid_count += 1;
        let limit = self.node.cfg.max_invalid_per_second;
        if self.invalid_count > limit {
            telemetry::too_many_invalid(&self.node, &self.ctx.remote, limit);
            return Err(End::Close(
                CloseCode::Policy,
                format!("more than {limit} invalid messages per second"),
            ));
        }
        Ok(())
    }

    async fn on_frame(&mut self, frame: WsMessage) -> Result<(), End> {
        self.last_rx = Instant::now();
        let text = match frame {
            WsMessage::Text(t) => t,
            WsMessage::Binary(_) => {
                return self.invalid(None, slipstream_protocol::FrameError::Binary.to_string());
            }
            WsMessage::Close(_) => return Err(End::Closed),
            WsMessage::Pong(payload) => {
                // Our pings carry the send time (microseconds since the node started).
                if let (Ok(bytes), Who::Peer(key)) = (<[u8; 8]>::try_from(&payload[..]), &self.who)
                {
                    let sent = u64::from_be_bytes(bytes);
                    let now = self.node.started.elapsed().as_micros() as u64;
                    self.node
                        .peers
                        .set_rtt(key, self.id, now.saturating_sub(sent) as f64 / 1000.0);
                }
                return Ok(());
            }
            // Pings are answered by the WebSocket layer.
            _ => return Ok(()),
        };
        let items = match decode_frame(text.as_str(), &self.node.cfg.limits) {
            Ok(items) => items,
            Err(e) => return self.invalid(None, e.to_string()),
        };
        for item in items {
            match item {
                Ok(msg) => self.on_message(msg).await?,
                Err(invalid) => self.invalid(invalid.message_id, invalid.reason)?,
            }
        }
        Ok(())
    }

    async fn on_message(&mut self, msg: Message) -> Result<(), End> {
        if let Body::Hello(hello) = &msg.body {
            return self.on_hello(hello.clone()).await;
        }
        if let Who::Unknown = self.who {
            // No HELLO: a message naming its sender comes from an older peer; anything else
            // from a local app.
            match msg.env.source_instance_id.clone() {
                Some(src) if src != self.node.id => self.become_peer(&src, Vec::new()).await?,
                _ => self.become_client(),
            }
        }
        match msg.body {
            Body::Ack { message_ids } => {
                if let Who::Peer(key) = &self.who {
                    self.node.peers.acked(key, message_ids).await;
                }
            }
            Body::Nack { error } => {
                tracing::error!(instance_id = %self.node.id, conn = self.id, message_id = ?msg.env.message_id, error = %error, "peer rejected a message");
            }
            Body::Res(_) => self.node.route_res(msg),
            Body::Hello(_) => unreachable!("handled above"),
            Body::Command { ref command, .. } if !self.ctx.authenticated => {
                tracing::error!(instance_id = %self.node.id, remote = %self.ctx.remote, command = %command, "command refused: the connection is not authenticated");
                self.answer(
                    self.node
                        .refusal(&msg, "commands need an authenticated connection (bearer token, client certificate, or loopback)")
                        .encode(),
                );
            }
            Body::Set { .. } | Body::Get { .. } | Body::Command { .. } => {
                let reply =
                    matches!(self.who, Who::Client).then(|| ReplySink::Frames(self.tx.clone()));
                match self.node.ingest(&self.sender, msg, reply).await {
                    Outcome::Ack(id) => self.acks.push(id),
                    // The node already counted and logged it; only the rate is checked here.
                    Outcome::Nack { message_id, error } => {
                        self.nack(message_id, error);
                        self.count_invalid()?;
                    }
                    Outcome::Reply(m) => self.answer(m.encode()),
                    Outcome::Commit(fut) => self.commits.push_back(fut),
                    Outcome::Done => {}
                }
            }
        }
        Ok(())
    }

    async fn on_hello(&mut self, hello: Hello) -> Result<(), End> {
        match (&self.who, hello.role) {
            (Who::Unknown, Role::Client) => {
                self.become_client();
                Ok(())
            }
            (Who::Unknown, Role::Peer) => {
                self.node.set_coverage(&hello);
                self.become_peer(&hello.instance_id, hello.tags).await?;
                Ok(())
            }
            // A later HELLO from the same peer updates what it announced (it met more peers).
            (Who::Peer(key), Role::Peer) if *key == hello.instance_id => {
                self.node.set_coverage(&hello);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    async fn become_peer(&mut self, id: &str, tags: Vec<String>) -> Result<(), End> {
        if id == self.node.id {
            tracing::error!(instance_id = %self.node.id, remote = %self.ctx.remote, "connected to itself; closing (check URL_CONFIG)");
            return Err(End::Close(CloseCode::Policy, "connected to itself".into()));
        }
        let key = self.node.peer_met(id, tags, self.ctx.url.as_deref()).await;
        self.attach(key).await;
        // Every other peer learns of the new link; this one gets the current announcement if
        // it changed since the HELLO this connection opened with.
        let hello = self.node.hello().encode();
        if hello != self.hello_sent {
            self.node.announce();
            self.hello_sent = hello;
        }
        Ok(())
    }

    async fn attach(&mut self, key: String) {
        let handle = ConnHandle {
            id: self.id,
            tx: self.tx.clone(),
            wire: self.wire.clone(),
        };
        let info = ConnInfo {
            id: self.id,
            direction: self.ctx.direction,
            remote: self.ctx.remote.clone(),
            rtt_ms: None,
        };
        self.node.peers.attach(&self.node, &key, handle, info).await;
        tracing::info!(instance_id = %self.node.id, peer = %key, remote = %self.ctx.remote, direction = ?self.ctx.direction, "peer connected");
        self.sender = Sender::Peer(key.clone());
        self.who = Who::Peer(key);
    }

    fn become_client(&mut self) {
        self.who = Who::Client;
        self.sender = Sender::Client;
        self.pushes = Some(self.node.clients.subscribe());
        // After subscribing: a push counted before it is then not waited for in vain.
        self.push_base = self.node.pushed_bytes.load(Ordering::Relaxed);
    }

    /// Closes the connection (1013) once the writes pushed to this app and not yet written
    /// to its socket take more than `SLIPSTREAM_MAX_PUSH_BACKLOG_BYTES`, waiting for it here
    /// or in the push backlog: an app that reads slowly does not keep large values in the node.
    fn check_push_lag(&self) -> Result<(), End> {
        if self.pushes.is_none() {
            return Ok(());
        }
        let behind = self
            .node
            .pushed_bytes
            .load(Ordering::Relaxed)
            .saturating_sub(self.push_base + self.in_writer.pushed.load(Ordering::Relaxed));
        if behind <= self.node.cfg.max_push_backlog_bytes {
            return Ok(());
        }
        tracing::error!(instance_id = %self.node.id, conn = self.id, behind_bytes = behind, "local app too slow for pushed writes; closing so it reconnects and re-reads");
        Err(End::Close(
            CloseCode::Again,
            format!("too slow: {behind} bytes of pushed writes not read; reconnect and re-read"),
        ))
    }

    /// A frame of `bytes` added `writes` commits to wait for.
    fn count_pending(&mut self, writes: usize, bytes: usize) {
        if writes > 0 {
            let each = bytes.div_ceil(writes);
            self.pending_sizes.push_back((writes, each));
            self.pending_bytes += writes * each;
            self.node.pending.add(writes, writes * each);
        }
    }

    fn on_committed(&mut self, done: Committed) {
        let mut next = Some(done);
        let (mut done_writes, mut done_bytes) = (0, 0);
        // Take every commit that is already done, to answer them in one ACK frame.
        while let Some(done) = next.take() {
            if let Some((writes, each)) = self.pending_sizes.front_mut() {
                self.pending_bytes -= *each;
                done_writes += 1;
                done_bytes += *each;
                *writes -= 1;
                if *writes == 0 {
                    self.pending_sizes.pop_front();
                }
            }
            match done {
                Committed::Ack { message_id, .. } => self.acks.push(message_id),
                Committed::Failed { message_id, error } => self.nack(Some(message_id), error),
            }
            next = self.commits.next().now_or_never().flatten();
        }
        self.node.pending.release(done_writes, done_bytes);
    }

    fn flush_acks(&mut self) {
        if !self.acks.is_empty() {
            let ids = std::mem::take(&mut self.acks);
            for frame in encode_acks(&self.node.id, ids, &self.node.cfg.limits) {
                self.answer(frame);
            }
        }
    }

    fn on_push(&mut self, push: Result<Arc<str>, broadcast::error::RecvError>) -> Result<(), End> {
        match push {
            Ok(body) => {
                // Everything already queued goes in the same frame (the array form), up to the
                // frame limit: one frame per write would cost a syscall and a WebSocket frame
                // per write and per app.
                let budget = self.node.cfg.limits.max_frame_bytes;
                let mut bytes = body.len() + 2;
                let mut bodies = vec![body];
                let mut lagged = None;
                if let Some(rx) = self.pushes.as_mut() {
                    while bodies.len() < MAX_PUSH_BATCH {
                        match rx.try_recv() {
                            Ok(next) => {
                                bytes += next.len() + 1;
                                bodies.push(next);
                                if bytes >= budget {
                                    break;
                                }
                            }
                            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                                lagged = Some(n);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                }
                // A push that would take the frame over the limit goes alone in the next one.
                let mut carry = None;
                if bytes > budget && bodies.len() > 1 {
                    carry = bodies.pop();
                }
                self.push_out(
                    WsMessage::Text(slipstream_protocol::join_encoded(&bodies).into()),
                    Kind::Push,
                );
                if let Some(last) = carry {
                    self.push_out(WsMessage::Text(last.to_string().into()), Kind::Push);
                }
                match lagged {
                    Some(n) => self.on_push(Err(broadcast::error::RecvError::Lagged(n))),
                    None => Ok(()),
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::error!(instance_id = %self.node.id, conn = self.id, skipped = n, "local app too slow for pushed writes; closing so it reconnects and re-reads");
                Err(End::Close(
                    CloseCode::Again,
                    format!("too slow: {n} pushed writes skipped; reconnect and re-read"),
                ))
            }
            Err(broadcast::error::RecvError::Closed) => {
                self.pushes = None;
                Ok(())
            }
        }
    }

    fn on_tick(&mut self) -> Result<(), End> {
        let limit = self.node.cfg.heartbeat * 3;
        if self.last_rx.elapsed() > limit {
            tracing::info!(instance_id = %self.node.id, conn = self.id, remote = %self.ctx.remote, "no frame for three heartbeats; closing");
            return Err(End::Close(CloseCode::Away, "heartbeat timeout".into()));
        }
        let now = self.node.started.elapsed().as_micros() as u64;
        self.push_out(
            WsMessage::Ping(now.to_be_bytes().to_vec().into()),
            Kind::Other,
        );
        Ok(())
    }

    /// On shutdown: let in-flight commits finish so their ACKs go out.
    async fn drain_commits(&mut self) {
        let deadline = Instant::now() + DRAIN_WAIT;
        while !self.commits.is_empty() {
            match tokio::time::timeout_at(deadline, self.commits.next()).await {
                Ok(Some(done)) => self.on_committed(done),
                _ => break,
            }
        }
    }
}
