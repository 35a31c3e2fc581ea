//! Splicing two byte streams (the two sides of an upgraded HTTP connection) until either
//! closes, or until neither has sent a byte for an idle limit.
//!
//! TCP keep-alive finds a peer that vanished; the idle limit ends a tunnel whose peers
//! are both alive but silent, as nginx's `proxy_read_timeout` and Envoy's stream idle
//! timeout end WebSockets, so forgotten tunnels do not hold connections for ever.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// How a splice ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// One side closed (bytes copied a to b, b to a).
    Closed(u64, u64),
    /// Neither side sent anything for the idle limit; both are dropped.
    Idle,
}

/// Copies both ways between `a` and `b`; `idle` zero means no limit.
pub async fn splice<A, B>(a: &mut A, b: &mut B, idle: Duration) -> io::Result<Ended>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    if idle.is_zero() {
        let (ab, ba) = tokio::io::copy_bidirectional(a, b).await?;
        return Ok(Ended::Closed(ab, ba));
    }
    let start = Instant::now();
    // Milliseconds since `start` of the last byte read from either side.
    let last = AtomicU64::new(0);
    let (mut a, mut b) = (
        Active {
            inner: a,
            start,
            last: &last,
        },
        Active {
            inner: b,
            start,
            last: &last,
        },
    );
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    loop {
        let due = start + Duration::from_millis(last.load(Relaxed)) + idle;
        tokio::select! {
            r = &mut copy => return r.map(|(ab, ba)| Ended::Closed(ab, ba)),
            _ = tokio::time::sleep_until(due) => {
                // Bytes that arrived while asleep moved the deadline: wait again.
                if start + Duration::from_millis(last.load(Relaxed)) + idle <= Instant::now() {
                    return Ok(Ended::Idle);
                }
            }
        }
    }
}

/// A stream that notes when it last read a byte.
struct Active<'a, T> {
    inner: &'a mut T,
    start: Instant,
    last: &'a AtomicU64,
}

impl<T: AsyncRead + Unpin> AsyncRead for Active<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut *self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let ms = self.start.elapsed().as_millis() as u64;
            self.last.store(ms, Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Active<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Traffic either way keeps a tunnel open past the limit; silence ends it.
    #[tokio::test]
    async fn silence_ends_a_splice_and_traffic_keeps_it() {
        let (mut a, mut a_peer) = tokio::io::duplex(64);
        let (mut b, mut b_peer) = tokio::io::duplex(64);
        let limit = Duration::from_secs(1);
        let task = tokio::spawn(async move { splice(&mut a, &mut b, limit).await });
        let opened = Instant::now();
        let mut buf = [0u8; 4];
        for i in 0..5 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            // Alternate directions: each resets the clock.
            let (from, to) = if i % 2 == 0 {
                (&mut a_peer, &mut b_peer)
            } else {
                (&mut b_peer, &mut a_peer)
            };
            from.write_all(b"ping").await.unwrap();
            to.read_exact(&mut buf).await.unwrap();
        }
        assert!(opened.elapsed() > limit);
        assert!(!task.is_finished(), "open while there is traffic");
        assert_eq!(task.await.unwrap().unwrap(), Ended::Idle);
        // Both sides were dropped: the peers see the end.
        assert_eq!(a_peer.read(&mut buf).await.unwrap(), 0);
        assert_eq!(b_peer.read(&mut buf).await.unwrap(), 0);
    }

    /// Bytes one way only (a server pushing to a silent client, then the other way
    /// round) keep it open too: each direction counts on its own.
    #[tokio::test]
    async fn one_way_traffic_keeps_it_open() {
        let (mut a, mut a_peer) = tokio::io::duplex(64);
        let (mut b, mut b_peer) = tokio::io::duplex(64);
        let limit = Duration::from_millis(600);
        let task = tokio::spawn(async move { splice(&mut a, &mut b, limit).await });
        let mut buf = [0u8; 4];
        for b_sends in [true, false] {
            let (from, to) = if b_sends {
                (&mut b_peer, &mut a_peer)
            } else {
                (&mut a_peer, &mut b_peer)
            };
            let since = Instant::now();
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(250)).await;
                from.write_all(b"push").await.unwrap();
                to.read_exact(&mut buf).await.unwrap();
            }
            assert!(since.elapsed() > limit * 2);
            assert!(!task.is_finished(), "open while one side sends");
        }
        assert_eq!(task.await.unwrap().unwrap(), Ended::Idle);
    }

    #[tokio::test]
    async fn a_closed_side_ends_it_with_the_counts() {
        let (mut a, mut a_peer) = tokio::io::duplex(64);
        let (mut b, mut b_peer) = tokio::io::duplex(64);
        let task =
            tokio::spawn(async move { splice(&mut a, &mut b, Duration::from_secs(10)).await });
        a_peer.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        b_peer.read_exact(&mut buf).await.unwrap();
        drop(a_peer);
        b_peer.shutdown().await.unwrap();
        assert_eq!(task.await.unwrap().unwrap(), Ended::Closed(5, 0));
    }
}
