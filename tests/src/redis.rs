//! A real, private `redis-server` per test: free port on 127.0.0.1, fresh temp dir,
//! no persistence, killed and cleaned up on drop.
//!
//! Never a fixed port and never the machine's shared redis. Synchronous on purpose
//! (std::process + std::net) so both plain and `#[tokio::test]` tests can use it;
//! starting takes a few tens of milliseconds.
//!
//! ```no_run
//! let Some(redis) = tests::redis::require_redis() else { return };
//! let url = redis.url(); // redis://127.0.0.1:PORT
//! ```

use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// How long `start`/`restart` wait for the server to answer `PING`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many free ports `start` tries before giving up (another process may grab
/// the port between our probe and redis binding it).
const PORT_ATTEMPTS: usize = 5;
const POLL: Duration = Duration::from_millis(10);
const IO_TIMEOUT: Duration = Duration::from_millis(500);
const LOG_FILE: &str = "redis.log";

/// Path of the `redis-server` binary: `$REDIS_SERVER`, then `PATH`, then
/// `/usr/bin/redis-server`.
pub fn redis_server_binary() -> Option<PathBuf> {
    crate::find_program("REDIS_SERVER", "redis-server", &["/usr/bin/redis-server"])
}

/// True when a `redis-server` binary can be found.
pub fn redis_available() -> bool {
    redis_server_binary().is_some()
}

/// Starts a private redis for a test, or reports it missing: with
/// `SWITCHBOARD_REQUIRE_ALL` set this panics, otherwise it prints
/// `SKIP: redis-server not installed (run tests/run.sh)` and returns `None`.
///
/// Panics if redis-server is installed but fails to start.
#[track_caller]
pub fn require_redis() -> Option<RedisServer> {
    if !redis_available() {
        crate::skip_or_fail("redis-server not installed");
        return None;
    }
    match RedisServer::start() {
        Ok(server) => Some(server),
        Err(e) => panic!("starting redis-server: {e:#}"),
    }
}

/// A `redis-server` child process owned by one test.
#[derive(Debug)]
pub struct RedisServer {
    binary: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts redis-server on a free 127.0.0.1 port in a fresh temp dir and waits
    /// (bounded by [`READY_TIMEOUT`]) until it answers `PING` with `+PONG`.
    pub fn start() -> anyhow::Result<Self> {
        let binary = redis_server_binary()
            .context("redis-server not found ($REDIS_SERVER, PATH, /usr/bin/redis-server)")?;
        let dir = std::env::temp_dir().join(format!(
            "switchboard-redis-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut server = RedisServer {
            binary,
            dir,
            port: 0,
            child: None,
        };
        let mut last_err = None;
        for _ in 0..PORT_ATTEMPTS {
            server.port = free_port()?;
            match server.launch() {
                Ok(()) => return Ok(server),
                // Only a server that exited (e.g. port taken) is worth another port;
                // one that runs but never answers is a real problem.
                Err(Launch::Exited(e)) => last_err = Some(e),
                Err(Launch::Fatal(e)) => return Err(e),
            }
        }
        Err(last_err
            .unwrap_or_else(|| anyhow::anyhow!("no attempt made"))
            .context(format!(
                "redis-server failed to start after {PORT_ATTEMPTS} ports"
            )))
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The TCP port the server listens on (stays the same across [`restart`](Self::restart)).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The server's private working directory (holds `redis.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Everything the server has logged so far (across restarts), for diagnostics.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join(LOG_FILE)).unwrap_or_default()
    }

    /// Whether the process is (still) running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills the server (SIGKILL) and waits for it to exit: connections drop and
    /// the port refuses connections as soon as this returns. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the server: `STOP` freezes it with its
    /// connections open (requests hang, nothing is refused), `CONT` resumes it. A stopped
    /// server is still killed on drop.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().map(Child::id).expect("the server runs");
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {pid}: {status}");
    }

    /// Stops the server and starts a new one on the same port (and dir), waiting
    /// for `+PONG` again. Data does not survive (no persistence is configured).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.launch()
            .map_err(Launch::into_inner)
            .with_context(|| format!("restarting redis-server on port {}", self.port))
    }

    /// Sends one command (as a RESP array, so arguments may contain spaces) on a
    /// fresh connection and returns the reply. A redis error reply is `Ok(Resp::Error)`.
    pub fn command(&self, args: &[&str]) -> io::Result<Resp> {
        let mut conn = connect(self.port)?;
        let mut req = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            req.extend_from_slice(a.as_bytes());
            req.extend_from_slice(b"\r\n");
        }
        conn.write_all(&req)?;
        read_resp(&mut BufReader::new(conn))
    }

    /// Spawns the process on `self.port` and waits until it is ready.
    fn launch(&mut self) -> Result<(), Launch> {
        debug_assert!(self.child.is_none());
        let log_path = self.dir.join(LOG_FILE);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))
            .map_err(Launch::Fatal)?;
        let log_err = log.try_clone().map_err(|e| Launch::Fatal(e.into()))?;
        let child = Command::new(&self.binary)
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .with_context(|| format!("spawning {}", self.binary.display()))
            .map_err(Launch::Fatal)?;
        let pid = child.id();
        self.child = Some(child);
        match self.wait_ready(pid) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.stop();
                Err(e)
            }
        }
    }

    /// Polls until *our* process answers PING with +PONG (checked via INFO's
    /// process_id, so a foreign server that grabbed the port is not mistaken for it).
    fn wait_ready(&mut self, pid: u32) -> Result<(), Launch> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                return Err(Launch::Exited(anyhow::anyhow!(
                    "redis-server on port {} exited with {status}; log:\n{}",
                    self.port,
                    self.log()
                )));
            }
            // Answers PING, and INFO says it is our process (not a foreign server
            // that grabbed the port; ours would then fail to bind and exit). A
            // server still loading answers -LOADING: poll again.
            let info = match ping(self.port) {
                Ok(true) => self.command(&["INFO", "server"]).ok(),
                _ => None,
            };
            if let Some(Resp::Bulk(Some(info))) = info {
                let pid_line = format!("process_id:{pid}");
                if String::from_utf8_lossy(&info)
                    .lines()
                    .any(|l| l.trim() == pid_line)
                {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(Launch::Fatal(anyhow::anyhow!(
                    "redis-server on port {} did not answer PING within {READY_TIMEOUT:?}; log:\n{}",
                    self.port,
                    self.log()
                )));
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

enum Launch {
    /// The process exited during startup (typically: port already taken).
    Exited(anyhow::Error),
    /// Anything else: not worth retrying on another port.
    Fatal(anyhow::Error),
}

impl Launch {
    fn into_inner(self) -> anyhow::Error {
        match self {
            Launch::Exited(e) | Launch::Fatal(e) => e,
        }
    }
}

/// A RESP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

/// A free TCP port on 127.0.0.1 (bound to port 0, then released).
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

fn connect(port: u16) -> io::Result<TcpStream> {
    let conn =
        TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), IO_TIMEOUT)?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(conn)
}

/// Raw `PING\r\n` (inline command); true when the reply is `+PONG`.
pub fn ping(port: u16) -> io::Result<bool> {
    let mut conn = connect(port)?;
    conn.write_all(b"PING\r\n")?;
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line)?;
    Ok(line == "+PONG\r\n")
}

fn read_resp(r: &mut impl BufRead) -> io::Result<Resp> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let line = line
        .strip_suffix("\r\n")
        .ok_or_else(|| bad("reply line without CRLF"))?;
    let (kind, rest) = line
        .split_at_checked(1)
        .ok_or_else(|| bad("empty reply line"))?;
    let int = |s: &str| s.parse::<i64>().map_err(|_| bad("bad integer in reply"));
    Ok(match kind {
        "+" => Resp::Simple(rest.to_owned()),
        "-" => Resp::Error(rest.to_owned()),
        ":" => Resp::Integer(int(rest)?),
        "$" => match usize::try_from(int(rest)?) {
            Err(_) => Resp::Bulk(None),
            Ok(n) => {
                let mut buf = vec![0; n + 2];
                r.read_exact(&mut buf)?;
                if !buf.ends_with(b"\r\n") {
                    return Err(bad("bulk string without CRLF"));
                }
                buf.truncate(n);
                Resp::Bulk(Some(buf))
            }
        },
        "*" => match usize::try_from(int(rest)?) {
            Err(_) => Resp::Array(None),
            Ok(n) => Resp::Array(Some(
                (0..n).map(|_| read_resp(r)).collect::<io::Result<_>>()?,
            )),
        },
        _ => return Err(bad("unknown reply type")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn bulk(s: &str) -> Resp {
        Resp::Bulk(Some(s.as_bytes().to_vec()))
    }

    #[test]
    fn start_ping_restart_stop() {
        let Some(mut redis) = require_redis() else {
            return;
        };
        let port = redis.port();
        assert_ne!(port, 0);
        assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}"));
        assert!(redis.dir().is_dir());
        assert!(redis.is_running());

        // Raw TCP PING.
        let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
        conn.write_all(b"PING\r\n").unwrap();
        let mut reply = [0u8; 7];
        conn.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"+PONG\r\n");

        assert_eq!(
            redis.command(&["SET", "k", "a value"]).unwrap(),
            Resp::Simple("OK".into())
        );
        assert_eq!(redis.command(&["GET", "k"]).unwrap(), bulk("a value"));
        assert_eq!(
            redis.command(&["CONFIG", "GET", "save"]).unwrap(),
            Resp::Array(Some(vec![bulk("save"), bulk("")]))
        );
        assert_eq!(
            redis.command(&["CONFIG", "GET", "appendonly"]).unwrap(),
            Resp::Array(Some(vec![bulk("appendonly"), bulk("no")]))
        );
        assert!(matches!(
            redis.command(&["NOSUCHCOMMAND"]).unwrap(),
            Resp::Error(_)
        ));

        // Restart: same port, answers again, data gone (no persistence), old connection dropped.
        redis.restart().unwrap();
        assert_eq!(redis.port(), port);
        assert!(ping(port).unwrap());
        assert_eq!(redis.command(&["GET", "k"]).unwrap(), Resp::Bulk(None));
        let mut buf = [0u8; 1];
        conn.write_all(b"PING\r\n").ok();
        assert!(
            matches!(conn.read(&mut buf), Ok(0) | Err(_)),
            "old connection must be closed"
        );

        // Stop: the port refuses connections.
        redis.stop();
        assert!(!redis.is_running());
        let err = TcpStream::connect(("127.0.0.1", port)).expect_err("port must refuse after stop");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        redis.stop(); // idempotent

        // And it can come back after a stop.
        redis.restart().unwrap();
        assert!(ping(port).unwrap());
        assert!(
            redis.log().contains("Ready to accept connections"),
            "log:\n{}",
            redis.log()
        );
    }

    #[test]
    fn servers_are_independent_and_cleaned_up() {
        let Some(a) = require_redis() else { return };
        let Some(b) = require_redis() else { return };
        assert_ne!(a.port(), b.port());
        assert_ne!(a.dir(), b.dir());
        a.command(&["SET", "only-in", "a"]).unwrap();
        assert_eq!(b.command(&["GET", "only-in"]).unwrap(), Resp::Bulk(None));

        let (port, dir) = (a.port(), a.dir().to_path_buf());
        drop(a);
        assert!(!dir.exists(), "temp dir {dir:?} must be removed on drop");
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port must refuse after drop"
        );
        assert!(ping(b.port()).unwrap());
    }

    #[test]
    fn restart_fails_cleanly_when_port_is_taken() {
        let Some(mut redis) = require_redis() else {
            return;
        };
        redis.stop();
        // Hold the port ourselves: the new redis cannot bind and must report it.
        let _holder = TcpListener::bind(("127.0.0.1", redis.port())).unwrap();
        let err = redis
            .restart()
            .expect_err("restart on a taken port must fail");
        assert!(format!("{err:#}").contains("exited"), "{err:#}");
        assert!(!redis.is_running());
    }

    #[test]
    fn resp_parser() {
        let mut r = io::Cursor::new(b"*3\r\n:42\r\n$-1\r\n-ERR x\r\n".to_vec());
        assert_eq!(
            read_resp(&mut r).unwrap(),
            Resp::Array(Some(vec![
                Resp::Integer(42),
                Resp::Bulk(None),
                Resp::Error("ERR x".into())
            ]))
        );
        assert!(read_resp(&mut io::Cursor::new(b"?x\r\n".to_vec())).is_err());
        assert!(read_resp(&mut io::Cursor::new(b"$5\r\nab".to_vec())).is_err());
    }
}
