//! Write coalescing for downstream HTTP/2 connections: the frames of every response
//! a connection's task produces in one poll leave in one write.
//!
//! h2's encoder holds at most one DATA frame of 256 bytes or more (sent without a
//! copy, beside the frame head) and flushes it before it accepts the next frame, so
//! each response with a body of that size cost a `writev` of its own and a TCP
//! segment the client had to receive: with 10 streams per connection, 1.0 `writev`
//! per request against HAProxy's 0.14 writes (`bench/RESULTS.md`; hyperium/h2#902
//! describes the same, a pull request to queue several DATA frames is open). Here the
//! frames are copied into a buffer as h2 writes them, and a flush within the poll
//! that wrote them only marks the buffer and wakes the task: its next poll, which
//! runs after the tasks already woken (the streams whose responses are still coming),
//! writes everything at once, before it reads. A flush with nothing written since the
//! last one writes, and so does shutdown, so no byte waits for a read that may never
//! come.
//!
//! A connection is coalesced only once its first bytes are HTTP/2's preface: an
//! HTTP/1.1 connection writes one response at a time and flushes it before it reads
//! the next request, so it has nothing to gather (and would pay a wake-up per
//! response). Layered above TLS, where the preface is plain text; coalesced writes
//! there also make fewer, fuller TLS records.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What an HTTP/2 client sends first (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Bytes held before a write goes out whatever the poll: h2's own write buffer size
/// times four. A write at least this large with nothing held goes out uncopied.
const CAP: usize = 64 * 1024;

/// The buffer's first allocation, h2's write buffer size: room for a batch of small
/// responses without growing. Kept between batches up to this size (freed after each
/// batch, one round of `bench/proxy` measured 10% more CPU per h2c request, presumably
/// pages the allocator handed back and faulted in again); a buffer a burst grew larger
/// is freed once written out.
const FIRST: usize = 16 * 1024;

/// A downstream connection that coalesces writes once it has seen HTTP/2's preface.
pub struct Coalesce<T> {
    inner: T,
    /// Bytes written by h2 and not yet by the socket, from `sent` on.
    held: Vec<u8>,
    sent: usize,
    /// Bytes were written since the last flush (which then only woke the task).
    fresh: bool,
    /// How much of the preface the first bytes matched; `PREFACE.len()` once they all
    /// did (coalescing), `usize::MAX` once one did not (passing through).
    matched: usize,
}

impl<T> Coalesce<T> {
    pub fn new(inner: T) -> Self {
        Coalesce {
            inner,
            held: Vec::new(),
            sent: 0,
            fresh: false,
            matched: 0,
        }
    }

    fn coalescing(&self) -> bool {
        self.matched == PREFACE.len()
    }

    /// Advances the preface match over bytes just read.
    fn sniff(&mut self, read: &[u8]) {
        if self.matched >= PREFACE.len() {
            return;
        }
        let want = &PREFACE[self.matched..];
        let n = want.len().min(read.len());
        self.matched = if read[..n] == want[..n] {
            self.matched + n
        } else {
            usize::MAX
        };
    }
}

impl<T: AsyncWrite + Unpin> Coalesce<T> {
    /// Writes out what is held.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.held.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        if self.held.capacity() > FIRST {
            self.held = Vec::new();
        } else {
            self.held.clear();
        }
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Copies `data` into the buffer.
    fn hold(&mut self, data: &[u8]) {
        if self.held.capacity() == 0 {
            self.held.reserve(FIRST);
        }
        self.held.extend_from_slice(data);
        self.fresh = true;
    }

    /// A coalescing connection's write: `bufs` held, after what is held is written out
    /// when they would not fit beside it; written at once, uncopied, when they alone
    /// fill the buffer.
    fn gather(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if self.held.len() - self.sent + len > CAP {
            ready!(self.drain(cx))?;
        }
        if self.held.is_empty() && len >= CAP {
            return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        }
        for b in bufs {
            self.hold(b);
        }
        Poll::Ready(Ok(len))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.sent < this.held.len() {
            // A full socket leaves the rest held: its writability wakes the task,
            // whose next poll reads (and so writes) again.
            if let Poll::Ready(Err(e)) = this.drain(cx) {
                return Poll::Ready(Err(e));
            }
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.sniff(&buf.filled()[before..]);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.coalescing() {
            return Pin::new(&mut this.inner).poll_write(cx, data);
        }
        this.gather(cx, &[io::IoSlice::new(data)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.coalescing() {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        this.gather(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.fresh {
            // Later in this poll h2 may write more (the next response's frames); the
            // task's next poll writes it all.
            this.fresh = false;
            cx.waker().wake_by_ref();
            return Poll::Ready(Ok(()));
        }
        ready!(this.drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// A connected pair over loopback: (the client's end, the proxy's end coalescing).
    async fn pair() -> (TcpStream, Coalesce<TcpStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, Coalesce::new(server))
    }

    /// The proxy's end reads what the client sent first.
    async fn first_bytes(client: &mut TcpStream, server: &mut Coalesce<TcpStream>, bytes: &[u8]) {
        client.write_all(bytes).await.unwrap();
        let mut got = vec![0; bytes.len()];
        server.read_exact(&mut got).await.unwrap();
    }

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Nothing has reached the client's socket.
    fn nothing_arrived(client: &TcpStream) {
        let mut b = [0u8; 64];
        let r = client.try_read(&mut b);
        assert!(
            matches!(&r, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn http2_frames_written_in_one_poll_leave_together() {
        let (mut client, mut server) = pair().await;
        first_bytes(&mut client, &mut server, PREFACE).await;
        assert!(server.coalescing());
        // One poll of the connection's task: two responses, each flushed (as h2 flushes
        // a chained DATA frame before it takes the next frame).
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut s = Pin::new(&mut server);
        for frame in [&b"first response"[..], b"second response"] {
            assert!(
                matches!(s.as_mut().poll_write(&mut cx, frame), Poll::Ready(Ok(n)) if n == frame.len())
            );
            assert!(matches!(
                s.as_mut().poll_flush(&mut cx),
                Poll::Ready(Ok(()))
            ));
        }
        // Held, and the task woken to write it.
        nothing_arrived(&client);
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        // The next poll's flush, with nothing new written, sends both in one write.
        poll_fn(|cx| Pin::new(&mut server).poll_flush(cx))
            .await
            .unwrap();
        let mut got = vec![0; 29];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"first responsesecond response");
        // Written out, the buffer is kept for the next batch, at its first size.
        assert!(server.held.is_empty() && server.held.capacity() == FIRST);
    }

    /// An HTTP/2 pair whose proxy end wrote and flushed `bytes`, held.
    async fn holding(bytes: &[u8]) -> (TcpStream, Coalesce<TcpStream>) {
        let (mut client, mut server) = pair().await;
        first_bytes(&mut client, &mut server, PREFACE).await;
        server.write_all(bytes).await.unwrap();
        server.flush().await.unwrap();
        nothing_arrived(&client);
        (client, server)
    }

    #[tokio::test]
    async fn a_buffer_a_burst_grew_is_freed_once_written() {
        let burst = vec![1u8; FIRST + 1];
        let (mut client, mut server) = holding(&burst).await;
        poll_fn(|cx| Pin::new(&mut server).poll_flush(cx))
            .await
            .unwrap();
        let mut got = vec![0u8; burst.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, burst);
        assert_eq!(server.held.capacity(), 0);
    }

    #[tokio::test]
    async fn a_read_writes_what_is_held_first() {
        let (mut client, mut server) = holding(b"settings").await;
        // The client answers only what it received: the proxy's read must send first.
        let echo = tokio::spawn(async move {
            let mut got = [0u8; 8];
            client.read_exact(&mut got).await.unwrap();
            client.write_all(b"ack").await.unwrap();
            got
        });
        // Bounded: a read that did not write first would wait for the ack forever.
        let mut ack = [0u8; 3];
        tokio::time::timeout(Duration::from_secs(10), server.read_exact(&mut ack))
            .await
            .expect("the held bytes were not written before the read")
            .unwrap();
        assert_eq!(&ack, b"ack");
        assert_eq!(&echo.await.unwrap(), b"settings");
    }

    #[tokio::test]
    async fn shutdown_writes_what_is_held() {
        let (mut client, mut server) = holding(b"goaway").await;
        server.shutdown().await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut got))
            .await
            .expect("the held bytes were not written at shutdown")
            .unwrap();
        assert_eq!(got, b"goaway");
    }

    #[tokio::test]
    async fn http1_is_written_as_it_is_flushed() {
        let (mut client, mut server) = pair().await;
        // The preface's first bytes are not enough: one byte that differs and the
        // connection passes through.
        first_bytes(&mut client, &mut server, b"PRI * HTTP/1.1\r\n").await;
        assert!(!server.coalescing());
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        server.flush().await.unwrap();
        let mut got = [0u8; 19];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"HTTP/1.1 200 OK\r\n\r\n");
    }

    #[tokio::test]
    async fn the_preface_may_arrive_in_pieces() {
        let (mut client, mut server) = pair().await;
        first_bytes(&mut client, &mut server, &PREFACE[..5]).await;
        assert!(!server.coalescing());
        first_bytes(&mut client, &mut server, &PREFACE[5..]).await;
        assert!(server.coalescing());
    }

    #[tokio::test]
    async fn a_write_too_large_to_hold_goes_out_at_once() {
        let (mut client, mut server) = pair().await;
        first_bytes(&mut client, &mut server, PREFACE).await;
        let big = vec![7u8; CAP];
        // No flush: what the socket took of a write this large was not held.
        let n = poll_fn(|cx| Pin::new(&mut server).poll_write(cx, &big))
            .await
            .unwrap();
        assert!(n > 0 && server.held.is_empty());
        let mut got = vec![0u8; n];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, big[..n]);
    }
}
