//! A tiny TCP fault proxy: forward, delay, blackhole or cut connections to
//! an upstream (Redis) for partition tests.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Pass,
    Blackhole,
    Cut,
}

struct State {
    mode: Mutex<Mode>,
    latency: Mutex<Duration>,
    conns: Mutex<Vec<TcpStream>>,
    stop: AtomicBool,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// A proxy on 127.0.0.1:<random> in front of `upstream`.
///
/// Modes: `pass()` forwards; `set_latency(d)` delays every chunk;
/// `blackhole()` swallows bytes both ways on new and existing connections
/// (they stay open, nothing arrives); `cut()` closes every connection and
/// closes new ones at once. `pass()` again serves new connections normally
/// (a connection that was blackholed resumes forwarding too, minus what was
/// swallowed, so clients should treat it as broken).
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts forwarding to `upstream`.
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("proxy addr");
        let state = Arc::new(State {
            mode: Mutex::new(Mode::Pass),
            latency: Mutex::new(Duration::ZERO),
            conns: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            threads: Mutex::new(Vec::new()),
        });
        let st = state.clone();
        let accept = std::thread::spawn(move || {
            while !st.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        if *st.mode.lock() == Mode::Cut {
                            let _ = client.shutdown(Shutdown::Both);
                            continue;
                        }
                        let Ok(server) = TcpStream::connect(upstream) else {
                            let _ = client.shutdown(Shutdown::Both);
                            continue;
                        };
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        for s in [&client, &server] {
                            if let Ok(c) = s.try_clone() {
                                st.conns.lock().push(c);
                            }
                        }
                        let pairs = [
                            (client.try_clone(), server.try_clone()),
                            (server.try_clone(), client.try_clone()),
                        ];
                        for (from, to) in pairs {
                            if let (Ok(from), Ok(to)) = (from, to) {
                                let st2 = st.clone();
                                let h = std::thread::spawn(move || pump(from, to, st2));
                                st.threads.lock().push(h);
                            }
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FaultProxy {
            addr,
            state,
            accept: Some(accept),
        }
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `redis://<proxy addr>/`.
    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// Forward normally.
    pub fn pass(&self) {
        *self.state.mode.lock() = Mode::Pass;
    }

    /// Delay every forwarded chunk by `d`.
    pub fn set_latency(&self, d: Duration) {
        *self.state.latency.lock() = d;
    }

    /// Swallow everything, keep connections open.
    pub fn blackhole(&self) {
        *self.state.mode.lock() = Mode::Blackhole;
    }

    /// Close all connections now and refuse new ones until `pass()`.
    pub fn cut(&self) {
        *self.state.mode.lock() = Mode::Cut;
        for c in self.state.conns.lock().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, st: Arc<State>) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = [0u8; 16 * 1024];
    while !st.stop.load(Ordering::SeqCst) {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                match *st.mode.lock() {
                    Mode::Blackhole => continue,
                    Mode::Cut => break,
                    Mode::Pass => {}
                }
                let delay = *st.latency.lock();
                if !delay.is_zero() {
                    std::thread::sleep(delay);
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                if *st.mode.lock() == Mode::Cut {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        for c in self.state.conns.lock().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        for h in self.state.threads.lock().drain(..) {
            let _ = h.join();
        }
    }
}
