//! Requests that expect answers (`GK`, `GA`, `GW`, `CMD`): the origin remembers who asked, and
//! every `RES` that comes back along the reversed path is handed to them until the timeout.
//! Requests and answers are not stored: a lost answer is not sent again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use slipstream_protocol::{Body, Message, Response};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::delivery::Outbound;

/// Where the answers to a request go.
#[derive(Clone, Debug)]
pub enum ReplySink {
    /// A local app's connection: each `RES` is sent to it as a frame.
    Frames(mpsc::Sender<Outbound>),
    /// An HTTP request gathering the answers.
    Collect(mpsc::Sender<Response>),
}

pub struct Requests {
    timeout: Duration,
    pending: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    waiting: HashMap<String, (ReplySink, Instant)>,
    /// When expired entries were last swept: sweeping on every insert would cost a pass over
    /// the whole map per request.
    swept: Option<Instant>,
}

impl Requests {
    pub fn new(timeout: Duration) -> Self {
        Requests {
            timeout,
            pending: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answers to `message_id` go to `sink` until the timeout.
    pub fn expect(&self, message_id: String, sink: ReplySink) {
        let now = Instant::now();
        let mut pending = self.lock();
        if pending.swept.is_none_or(|at| now >= at + self.timeout) {
            pending.waiting.retain(|_, (_, until)| *until > now);
            pending.swept = Some(now);
        }
        pending
            .waiting
            .insert(message_id, (sink, now + self.timeout));
    }

    /// Requests still waiting for answers (expired ones may linger until the next sweep).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().waiting.len()
    }

    /// Hands an answer to whoever asked; false when nobody waits for it (any more).
    pub fn deliver(&self, res: &Message) -> bool {
        let Body::Res(r) = &res.body else {
            return false;
        };
        let sink = match self.lock().waiting.get(&r.in_reply_to) {
            Some((sink, until)) if *until > Instant::now() => sink.clone(),
            _ => return false,
        };
        // Best effort: an app that does not read its answers loses them, nobody else waits.
        match sink {
            ReplySink::Frames(tx) => tx.try_send(Outbound::Frame(res.encode())).is_ok(),
            ReplySink::Collect(tx) => tx.try_send(r.clone()).is_ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use slipstream_protocol::Envelope;

    use super::*;

    fn res(to: &str) -> Message {
        Message {
            env: Envelope::default(),
            body: Body::Res(Response {
                in_reply_to: to.into(),
                found: true,
                ..Response::default()
            }),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn answers_reach_the_asker_until_the_timeout() {
        let requests = Requests::new(Duration::from_secs(5));
        let (tx, mut rx) = mpsc::channel(4);
        requests.expect("r1".into(), ReplySink::Collect(tx));
        assert!(requests.deliver(&res("r1")));
        assert!(!requests.deliver(&res("other")), "nobody asked");
        assert_eq!(rx.recv().await.unwrap().in_reply_to, "r1");
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(!requests.deliver(&res("r1")), "too late");
    }

    #[tokio::test(start_paused = true)]
    async fn expired_requests_are_swept_once_per_timeout() {
        let requests = Requests::new(Duration::from_secs(5));
        let (tx, _rx) = mpsc::channel(4);
        for i in 0..100 {
            requests.expect(format!("r{i}"), ReplySink::Collect(tx.clone()));
        }
        assert_eq!(requests.len(), 100, "no sweep within the timeout");
        tokio::time::advance(Duration::from_secs(6)).await;
        requests.expect("late".into(), ReplySink::Collect(tx));
        assert_eq!(requests.len(), 1, "the expired ones went in one sweep");
    }
}
