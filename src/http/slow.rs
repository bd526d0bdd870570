//! Slow senders: the header timeout, answered with casegate's JSON error shape.
//!
//! actix answers a client too slow with its headers itself, with a bare `408` and an empty
//! body, and offers no hook to change it. So the gateway turns actix's header timer off and
//! wraps each connection instead: until the first request's head (`\r\n\r\n`) has arrived
//! within `ingress.client_timeout_secs`, the wrapper watches the clock; when it runs out, it
//! writes the JSON `408` straight to the socket and ends the stream, after which actix has
//! nothing left to answer. Later requests on a kept-alive connection are not covered (as with
//! actix's own timer): see `ingress.keep_alive_secs`.
//!
//! The wrapper also ends a connection that has not sent a byte yet when the gateway begins to
//! shut down: it has nothing in flight to finish, and left open it would hold a graceful stop
//! for the whole header timeout (HTTP clients open spare connections they may never use).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::Sleep;

/// The answer a sender too slow with its headers gets.
pub fn timeout_response(timeout: Duration) -> Vec<u8> {
    let body = serde_json::json!({
        "error": "request_timeout",
        "message": format!("the request headers were not received within {timeout:?}"),
    })
    .to_string();
    format!(
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A connection whose first request head must arrive before a deadline.
pub struct HeadDeadline<T> {
    io: T,
    /// `None` once the head is complete: from then on the wrapper only passes bytes through.
    deadline: Option<Pin<Box<Sleep>>>,
    /// How many bytes of `\r\n\r\n` the bytes so far end with.
    matched: usize,
    /// The 408 still to write, once the deadline passed.
    answer: Option<(Vec<u8>, usize)>,
    timeout: Duration,
    /// Set after the 408: reads end, writes are swallowed, so nothing follows it.
    done: bool,
    /// Resolves when the gateway begins to stop; `None` once a byte has arrived.
    stopping: Option<BoxFuture<'static, ()>>,
}

impl<T> HeadDeadline<T> {
    /// Wraps `io`; `stop` turns true when the gateway begins a graceful shutdown.
    pub fn new(io: T, timeout: Duration, mut stop: watch::Receiver<bool>) -> Self {
        HeadDeadline {
            io,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            matched: 0,
            answer: None,
            timeout,
            done: false,
            stopping: Some(Box::pin(async move {
                // A dropped sender without a stop is not a stop: keep serving.
                if stop.wait_for(|stop| *stop).await.is_err() {
                    std::future::pending::<()>().await;
                }
            })),
        }
    }

    /// Advances the `\r\n\r\n` search over newly read bytes.
    fn scan(&mut self, bytes: &[u8]) {
        const END: &[u8] = b"\r\n\r\n";
        for &b in bytes {
            self.matched = if b == END[self.matched] {
                self.matched + 1
            } else if b == b'\r' {
                1
            } else {
                0
            };
            if self.matched == END.len() {
                self.deadline = None;
                return;
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> HeadDeadline<T> {
    /// Writes what is left of the 408; `Ready` when all of it is written (or the peer is gone).
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while let Some((bytes, written)) = self.answer.as_mut() {
            if *written == bytes.len() {
                self.answer = None;
                let _ = Pin::new(&mut self.io).poll_flush(cx);
                break;
            }
            match Pin::new(&mut self.io).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(n)) if n > 0 => *written += n,
                Poll::Ready(_) => self.answer = None,
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(())
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for HeadDeadline<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.done {
            // The 408 is (being) written: the connection ends here.
            return match this.poll_answer(cx) {
                Poll::Ready(()) => Poll::Ready(Ok(())),
                Poll::Pending => Poll::Pending,
            };
        }
        if let Some(deadline) = this.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            this.deadline = None;
            this.done = true;
            this.answer = Some((timeout_response(this.timeout), 0));
            return match this.poll_answer(cx) {
                Poll::Ready(()) => Poll::Ready(Ok(())),
                Poll::Pending => Poll::Pending,
            };
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        match read {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                this.stopping = None;
                if this.deadline.is_some() {
                    let fresh = buf.filled()[before..].to_vec();
                    this.scan(&fresh);
                }
            }
            // Read first, so bytes already waiting are always served; only a connection with
            // nothing sent ends when shutdown begins.
            Poll::Pending => {
                if let Some(stopping) = this.stopping.as_mut()
                    && stopping.as_mut().poll(cx).is_ready()
                {
                    this.stopping = None;
                    this.deadline = None;
                    this.done = true;
                    return Poll::Ready(Ok(()));
                }
            }
            _ => {}
        }
        read
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HeadDeadline<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.done {
            return match this.poll_answer(cx) {
                Poll::Ready(()) => Poll::Ready(Ok(())),
                Poll::Pending => Poll::Pending,
            };
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.done && this.poll_answer(cx).is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_head_end_is_found_across_reads() {
        let (_stop, stopping) = watch::channel(false);
        let mut conn = HeadDeadline::new((), Duration::from_secs(1), stopping);
        conn.scan(b"POST / HTTP/1.1\r\nHost: x\r");
        assert!(conn.deadline.is_some());
        conn.scan(b"\n\r");
        assert!(conn.deadline.is_some());
        conn.scan(b"\n{}");
        assert!(conn.deadline.is_none());
    }

    #[tokio::test]
    async fn a_silent_connection_ends_when_shutdown_begins_and_a_started_one_does_not() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (stop, stopping) = watch::channel(false);
        let (silent_client, silent_server) = tokio::io::duplex(64);
        let (mut busy_client, busy_server) = tokio::io::duplex(64);
        let mut silent =
            HeadDeadline::new(silent_server, Duration::from_secs(3600), stopping.clone());
        let mut busy = HeadDeadline::new(busy_server, Duration::from_secs(3600), stopping);
        busy_client.write_all(b"POST / HTTP/1.1\r\n").await.unwrap();
        let mut chunk = [0u8; 64];
        let n = busy.read(&mut chunk).await.unwrap();
        assert_eq!(&chunk[..n], b"POST / HTTP/1.1\r\n");

        stop.send(true).unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut chunk)).await;
        assert_eq!(ended.expect("the silent connection ends").unwrap(), 0);
        // The started request keeps its connection: the rest of its head still arrives.
        busy_client.write_all(b"Host: x\r\n\r\n").await.unwrap();
        let n = busy.read(&mut chunk).await.unwrap();
        assert_eq!(&chunk[..n], b"Host: x\r\n\r\n");
        drop(silent_client);
    }

    #[tokio::test]
    async fn a_request_already_waiting_when_shutdown_begins_is_read() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (stop, stopping) = watch::channel(false);
        let (mut client, server) = tokio::io::duplex(64);
        let mut conn = HeadDeadline::new(server, Duration::from_secs(3600), stopping);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        stop.send(true).unwrap();
        let mut chunk = [0u8; 64];
        let n = conn.read(&mut chunk).await.unwrap();
        assert_eq!(&chunk[..n], b"GET / HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn a_dropped_stop_sender_is_not_a_shutdown() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (stop, stopping) = watch::channel(false);
        let (mut client, server) = tokio::io::duplex(64);
        let mut conn = HeadDeadline::new(server, Duration::from_secs(3600), stopping);
        drop(stop);
        let mut chunk = [0u8; 64];
        let waiting = tokio::time::timeout(Duration::from_millis(50), conn.read(&mut chunk)).await;
        assert!(waiting.is_err(), "still open, waiting for the request");
        client.write_all(b"GET /").await.unwrap();
        let n = conn.read(&mut chunk).await.unwrap();
        assert_eq!(&chunk[..n], b"GET /");
    }

    #[test]
    fn the_answer_is_json_with_a_correct_length() {
        let answer = String::from_utf8(timeout_response(Duration::from_secs(30))).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 408 "));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"], "request_timeout");
    }
}
