//! Idle keep-alive connections to one endpoint, for the in-task HTTP/1.1 path: taken
//! newest first, checked for an upstream close without a system call, closed once idle
//! past the limit (by a task that runs only while the pool holds any).

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpStream;

use super::Conn;

/// Idle connections kept per endpoint; more are closed when they come back.
const MAX_IDLE: usize = 1024;

/// Idle keep-alive connections to one endpoint: the most recently used at the back
/// (taken first, its buffers and the upstream's are warm), the oldest at the front
/// (closed once idle longer than the pool's limit).
#[derive(Debug)]
pub struct Pool {
    idle: Mutex<VecDeque<(Conn, Instant)>>,
    max_idle: Duration,
    /// Counts connections opened.
    pub(super) opened: Counter,
    /// A task closes expired idle connections while any are held (see `reap`).
    pub(super) reaping: AtomicBool,
}

impl Pool {
    /// A pool that closes connections idle for longer than `max_idle` and counts the
    /// connections it opens in `opened`.
    pub fn new(max_idle: Duration, opened: Counter) -> Arc<Pool> {
        Arc::new(Pool {
            idle: Mutex::new(VecDeque::new()),
            max_idle,
            opened,
            reaping: AtomicBool::new(false),
        })
    }

    /// Idle connections held now.
    pub fn idle(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(Conn, Instant)>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn checkout(&self) -> Option<Conn> {
        loop {
            let (conn, since) = self.lock().pop_back()?;
            if since.elapsed() < self.max_idle && still_open(&conn.stream) {
                return Some(conn);
            }
        }
    }

    pub(super) fn checkin(self: &Arc<Self>, conn: Conn) {
        let now = Instant::now();
        {
            let mut idle = self.lock();
            self.expire(&mut idle, now);
            if idle.len() < MAX_IDLE {
                idle.push_back((conn, now));
            }
        }
        // Read first: the common case (a reaper runs) writes nothing to the shared flag.
        if !self.reaping.load(Ordering::Acquire) && !self.reaping.swap(true, Ordering::AcqRel) {
            tokio::spawn(reap(Arc::downgrade(self)));
        }
    }

    /// Closes the connections idle for longer than the limit (the oldest are in front).
    fn expire(&self, idle: &mut VecDeque<(Conn, Instant)>, now: Instant) {
        while idle
            .front()
            .is_some_and(|(_, since)| now.duration_since(*since) >= self.max_idle)
        {
            idle.pop_front();
        }
    }
}

/// Closes a pool's expired idle connections while it holds any, so that a burst's
/// connections do not stay open (half-closed by the upstream) once traffic stops. Ends
/// when the pool is empty (the next check-in starts it again) or dropped.
async fn reap(pool: std::sync::Weak<Pool>) {
    loop {
        let every = match pool.upgrade() {
            Some(p) => (p.max_idle / 2).max(Duration::from_millis(10)),
            None => return,
        };
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else { return };
        let mut idle = pool.lock();
        pool.expire(&mut idle, Instant::now());
        if idle.is_empty() {
            // Under the lock: a check-in after this sees `false` and starts a new task.
            pool.reaping.store(false, Ordering::Release);
            return;
        }
    }
}

/// False when an idle connection has been closed by the upstream (or sent something
/// unasked). Costs a system call only when the socket has become readable.
fn still_open(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            matches!(stream.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        }
    }
}
