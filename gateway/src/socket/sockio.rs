//! The socket under tungstenite: large reads, but no read buffer held while idle.
//!
//! tungstenite keeps one read buffer per connection for the connection's whole life, and
//! reads at most that buffer's size per call. A large buffer costs every idle connection
//! its size; a small one costs a syscall per few hundred bytes of a large message.
//! [`SocketIo`] splits the two: tungstenite gets a small buffer
//! (`limits.read_buffer_bytes`), and each read from the socket goes into a
//! [`READ_CHUNK`]-byte buffer on the stack. What tungstenite did not take yet is kept on the
//! heap, exactly sized, only until tungstenite takes it (normally within the same poll).
//! An idle connection therefore holds no read-ahead at all.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most bytes read from the socket per syscall.
pub const READ_CHUNK: usize = 16 * 1024;

/// A socket with on-demand read-ahead; writes pass straight through.
#[derive(Debug)]
pub struct SocketIo<S> {
    inner: S,
    /// Bytes read from the socket that the reader has not taken yet.
    ahead: Option<Box<[u8]>>,
    /// How much of `ahead` was taken.
    taken: usize,
}

impl<S> SocketIo<S> {
    /// Wraps `inner`, with `first` (bytes already read from it) to be read before it.
    pub fn with_prefix(inner: S, first: Vec<u8>) -> Self {
        SocketIo {
            inner,
            ahead: (!first.is_empty()).then(|| first.into_boxed_slice()),
            taken: 0,
        }
    }

    /// Bytes held for the reader (0 when idle).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.ahead.as_ref().map_or(0, |a| a.len() - self.taken)
    }

    /// Moves held bytes into `buf`; frees the holding buffer once it is empty.
    fn give(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let Some(ahead) = &self.ahead else {
            return false;
        };
        let n = (ahead.len() - self.taken).min(buf.remaining());
        buf.put_slice(&ahead[self.taken..self.taken + n]);
        self.taken += n;
        if self.taken == ahead.len() {
            self.ahead = None;
            self.taken = 0;
        }
        true
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SocketIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.give(buf) {
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= READ_CHUNK {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        // Uninitialised: the socket task polls its read side on every wake-up (an outbound
        // message, a timer), and zeroing 16 KiB each time would cost more than the read.
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut chunk_buf = ReadBuf::uninit(&mut chunk);
        match Pin::new(&mut this.inner).poll_read(cx, &mut chunk_buf) {
            Poll::Ready(Ok(())) => {
                let read = chunk_buf.filled();
                let n = read.len().min(buf.remaining());
                buf.put_slice(&read[..n]);
                if n < read.len() {
                    this.ahead = Some(read[n..].into());
                    this.taken = 0;
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SocketIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_reads_of_a_large_write_hold_only_the_rest_then_nothing() {
        let (mut peer, socket) = tokio::io::duplex(64 * 1024);
        let mut io = SocketIo::with_prefix(socket, Vec::new());
        let sent: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        peer.write_all(&sent).await.unwrap();
        let mut got = Vec::new();
        let mut small = [0u8; 100];
        let n = io.read(&mut small).await.unwrap();
        got.extend_from_slice(&small[..n]);
        assert_eq!(n, 100);
        // One syscall read all of it; the rest waits on the heap.
        assert_eq!(io.held(), sent.len() - 100);
        while got.len() < sent.len() {
            let n = io.read(&mut small).await.unwrap();
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got, sent);
        assert_eq!(io.held(), 0, "an idle socket holds no read-ahead");
    }

    #[tokio::test]
    async fn large_reads_go_straight_to_the_caller_and_writes_pass_through() {
        let (mut peer, socket) = tokio::io::duplex(64 * 1024);
        let mut io = SocketIo::with_prefix(socket, Vec::new());
        peer.write_all(b"hello").await.unwrap();
        let mut big = vec![0u8; READ_CHUNK];
        let n = io.read(&mut big).await.unwrap();
        assert_eq!(&big[..n], b"hello");
        assert_eq!(io.held(), 0);
        io.write_all(b"back").await.unwrap();
        let mut four = [0u8; 4];
        peer.read_exact(&mut four).await.unwrap();
        assert_eq!(&four, b"back");
        drop(peer);
        assert_eq!(io.read(&mut big).await.unwrap(), 0, "end of stream");
    }

    #[tokio::test]
    async fn a_prefix_is_read_before_the_socket() {
        let (mut peer, socket) = tokio::io::duplex(1024);
        let mut io = SocketIo::with_prefix(socket, b"early".to_vec());
        peer.write_all(b" late").await.unwrap();
        drop(peer);
        let mut got = Vec::new();
        io.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"early late");
        assert_eq!(io.held(), 0);
    }
}
