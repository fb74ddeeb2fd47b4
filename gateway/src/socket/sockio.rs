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
//!
//! Writes go through the connection's [`Outbox`](crate::socket::outbox::Outbox), which
//! orders them with the frames the send-back API queues: a plain socket lives in the
//! outbox (producers may write it too, and reads go through it); a TLS stream lives here
//! and is lent to the outbox for each write.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::socket::outbox::Tls;
use crate::socket::registry::Connection;
use crate::tls::stream::{MaybeTls, ServerStream};

/// The most bytes read from the socket per syscall.
pub const READ_CHUNK: usize = 16 * 1024;

/// A client's socket after the 101: on-demand read-ahead; writes through its outbox.
#[derive(Debug)]
pub struct SocketIo {
    stream: Stream,
    /// The connection whose outbox orders the writes.
    conn: Arc<Connection>,
    /// Bytes read from the socket that the reader has not taken yet.
    ahead: Option<Box<[u8]>>,
    /// How much of `ahead` was taken.
    taken: usize,
}

/// What this holds of the socket.
#[derive(Debug)]
enum Stream {
    /// In the outbox.
    Plain,
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl SocketIo {
    /// Wraps `stream`, with `first` (bytes already read from it) to be read before it.
    /// A plain socket's write half goes to `conn`'s outbox; with `direct`, the send-back
    /// API writes to it itself.
    pub fn new(stream: ServerStream, first: Vec<u8>, conn: Arc<Connection>, direct: bool) -> Self {
        let stream = match stream {
            MaybeTls::Plain(tcp) => {
                conn.outbox.attach(tcp, direct);
                Stream::Plain
            }
            MaybeTls::Tls(tls) => Stream::Tls(tls),
        };
        SocketIo {
            stream,
            conn,
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

impl Drop for SocketIo {
    fn drop(&mut self) {
        // The socket closes with the task, as if it were its own.
        self.conn.outbox.detach();
    }
}

impl Stream {
    /// The TLS stream to lend the outbox, if this is TLS.
    fn tls(&mut self) -> Tls<'_> {
        match self {
            Stream::Plain => None,
            Stream::Tls(tls) => Some(tls.as_mut()),
        }
    }

    fn poll_read(
        &mut self,
        conn: &Connection,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self {
            Stream::Plain => conn.outbox.poll_read(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncRead for SocketIo {
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
            return this.stream.poll_read(&this.conn, cx, buf);
        }
        // Uninitialised: the socket task polls its read side on every wake-up (an outbound
        // message, a timer), and zeroing 16 KiB each time would cost more than the read.
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut chunk_buf = ReadBuf::uninit(&mut chunk);
        match this.stream.poll_read(&this.conn, cx, &mut chunk_buf) {
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

impl AsyncWrite for SocketIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.conn.outbox.poll_write_own(cx, buf, this.stream.tls())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.conn.outbox.poll_flush_own(cx, this.stream.tls())
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.conn.outbox.poll_shutdown_own(cx, this.stream.tls())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A socket as the socket task gets it (with `first` read ahead), and its peer.
    async fn socket(first: &[u8]) -> (SocketIo, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (peer, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let conn = Arc::new(Connection::new(
            uuid::Uuid::new_v4(),
            0,
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            None,
            None,
            serde_json::Value::Null,
        ));
        let io = SocketIo::new(
            MaybeTls::Plain(accepted.unwrap().0),
            first.to_vec(),
            conn,
            true,
        );
        (io, peer.unwrap())
    }

    #[tokio::test]
    async fn small_reads_of_a_large_write_hold_only_the_rest_then_nothing() {
        let (mut io, mut peer) = socket(b"").await;
        let sent: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        peer.write_all(&sent).await.unwrap();
        let mut got = Vec::new();
        let mut small = [0u8; 100];
        // Loopback may hand the 10,000 bytes over in more than one piece: read until one
        // syscall left some behind.
        while io.held() == 0 {
            let n = io.read(&mut small).await.unwrap();
            got.extend_from_slice(&small[..n]);
        }
        while got.len() < sent.len() {
            let n = io.read(&mut small).await.unwrap();
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got, sent);
        assert_eq!(io.held(), 0, "an idle socket holds no read-ahead");
    }

    #[tokio::test]
    async fn large_reads_go_straight_to_the_caller_and_writes_go_through_the_outbox() {
        let (mut io, mut peer) = socket(b"").await;
        peer.write_all(b"hello").await.unwrap();
        let mut big = vec![0u8; READ_CHUNK];
        let n = io.read(&mut big).await.unwrap();
        assert_eq!(&big[..n], b"hello");
        assert_eq!(io.held(), 0);
        io.write_all(b"back").await.unwrap();
        io.flush().await.unwrap();
        let mut four = [0u8; 4];
        peer.read_exact(&mut four).await.unwrap();
        assert_eq!(&four, b"back");
        io.shutdown().await.unwrap();
        assert_eq!(peer.read(&mut four).await.unwrap(), 0, "FIN after shutdown");
        drop(peer);
        assert_eq!(io.read(&mut big).await.unwrap(), 0, "end of stream");
    }

    #[tokio::test]
    async fn a_prefix_is_read_before_the_socket() {
        let (mut io, mut peer) = socket(b"early").await;
        peer.write_all(b" late").await.unwrap();
        drop(peer);
        let mut got = Vec::new();
        io.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"early late");
        assert_eq!(io.held(), 0);
    }

    #[tokio::test]
    async fn dropping_it_closes_the_socket_and_lets_go_of_the_write_half() {
        let (io, mut peer) = socket(b"").await;
        let conn = Arc::clone(&io.conn);
        drop(io);
        assert!(conn.outbox.is_empty());
        let mut buf = [0u8; 1];
        assert_eq!(peer.read(&mut buf).await.unwrap(), 0);
    }
}
