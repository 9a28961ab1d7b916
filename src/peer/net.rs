//! Socket reads and name lookups bounded by one overall deadline (rule 10):
//! a per-read timeout alone lets a peer that trickles one byte at a time
//! hold the reader for as long as it likes, and `getaddrinfo` has no
//! timeout at all.

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Name lookups running at once; a resolver that hangs holds one slot
/// until the system gives up on it, and no more than this many pile up.
const MAX_LOOKUPS: usize = 16;
static LOOKUPS: AtomicUsize = AtomicUsize::new(0);

/// Why no line arrived.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadFail {
    /// The deadline passed before a whole line arrived.
    Slow { got: usize },
    /// The other side closed (or we shut the socket down) before a line.
    Closed { got: usize },
    /// More than the limit without a line end, or not UTF-8.
    Bad(String),
    /// The socket failed.
    Io(String),
}

impl std::fmt::Display for ReadFail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadFail::Slow { got } => write!(f, "no complete line by the deadline ({got} bytes)"),
            ReadFail::Closed { got } => write!(f, "closed before a complete line ({got} bytes)"),
            ReadFail::Bad(why) => write!(f, "{why}"),
            ReadFail::Io(e) => write!(f, "i/o: {e}"),
        }
    }
}

/// Reads one `\n`-terminated line of at most `max` bytes (line end
/// included) by `deadline`: the read timeout is set to the time left before
/// every read, so the whole line, however it trickles in, ends by then.
/// Bytes after the line end are ignored (the protocol sends one line).
pub(crate) fn read_line_by(
    stream: &TcpStream,
    deadline: Instant,
    max: usize,
) -> Result<String, ReadFail> {
    let mut line = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadFail::Slow { got: line.len() });
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| ReadFail::Io(e.to_string()))?;
        match (&*stream).read(&mut chunk) {
            Ok(0) => return Err(ReadFail::Closed { got: line.len() }),
            Ok(n) => {
                let start = line.len();
                line.extend_from_slice(&chunk[..n]);
                if let Some(pos) = line[start..].iter().position(|b| *b == b'\n') {
                    line.truncate(start + pos + 1);
                    if line.len() > max {
                        break;
                    }
                    return String::from_utf8(line)
                        .map_err(|_| ReadFail::Bad("line is not UTF-8".into()));
                }
                if line.len() > max {
                    break;
                }
            }
            // Timed out: the loop head decides whether time is left.
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(ReadFail::Io(e.to_string())),
        }
    }
    Err(ReadFail::Bad(format!("no line end within {max} bytes")))
}

/// A literal `ip:port` (v6 in brackets), parsed without any lookup.
pub(crate) fn literal(addr: &str) -> Option<SocketAddr> {
    addr.parse().ok()
}

/// Starts a lookup of `host:port` on a thread of its own and hands the
/// first address (or why there is none) to `deliver` when it ends.
/// Refused while [`MAX_LOOKUPS`] lookups are still running.
pub(crate) fn spawn_lookup(
    addr: String,
    deliver: impl FnOnce(Result<SocketAddr, String>) + Send + 'static,
) -> Result<(), String> {
    if LOOKUPS.fetch_add(1, Ordering::SeqCst) >= MAX_LOOKUPS {
        LOOKUPS.fetch_sub(1, Ordering::SeqCst);
        return Err(format!("{MAX_LOOKUPS} name lookups still running"));
    }
    let spawned = std::thread::Builder::new()
        .name("redswarm-peer-dns".into())
        .spawn(move || {
            let result = match addr.to_socket_addrs() {
                Ok(mut addrs) => addrs
                    .next()
                    .ok_or_else(|| format!("{addr:?} has no address")),
                Err(e) => Err(format!("cannot resolve {addr:?}: {e}")),
            };
            LOOKUPS.fetch_sub(1, Ordering::SeqCst);
            deliver(result);
        });
    spawned.map(|_| ()).map_err(|e| {
        LOOKUPS.fetch_sub(1, Ordering::SeqCst);
        format!("cannot spawn a lookup thread: {e}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;
    use std::time::Duration;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        (client, server)
    }

    #[test]
    fn a_line_that_trickles_in_is_cut_off_at_the_deadline() {
        let (mut client, server) = pair();
        let writer = std::thread::spawn(move || {
            for _ in 0..20 {
                if client.write_all(b"x").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let started = Instant::now();
        let r = read_line_by(&server, started + Duration::from_millis(500), 1536);
        assert!(matches!(r, Err(ReadFail::Slow { got }) if got > 0), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(server);
        let _ = writer.join();
    }

    #[test]
    fn reads_a_whole_line_and_refuses_oversized_ones() {
        let (mut client, server) = pair();
        client.write_all(b"hello\nrest").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        assert_eq!(read_line_by(&server, deadline, 100), Ok("hello\n".into()));
        let (mut client, server) = pair();
        client.write_all(&[b'a'; 300]).unwrap();
        assert!(matches!(
            read_line_by(&server, deadline, 100),
            Err(ReadFail::Bad(_))
        ));
        let (client, server) = pair();
        drop(client);
        assert_eq!(
            read_line_by(&server, deadline, 100),
            Err(ReadFail::Closed { got: 0 })
        );
    }

    #[test]
    fn literal_addresses_need_no_lookup() {
        assert_eq!(
            literal("10.1.2.3:7400"),
            Some("10.1.2.3:7400".parse().unwrap())
        );
        assert!(literal("[::1]:7400").is_some());
        assert!(literal("no-such-host.invalid:7400").is_none());
    }
}
