//! Helpers for the workspace's own tests: a real `redis-server` on a free loopback port, and
//! the `sse_demo` example as a child process. Both are killed when dropped.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Serves `app` on a fresh port of 127.0.0.1 (with the peer's address as connect info) until
/// the returned task is aborted.
pub async fn serve(app: axum::Router) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let addr = listener.local_addr().expect("its address");
    let task = tokio::spawn(async move {
        tidings_server::Server::new(app).serve(listener, std::future::pending()).await.expect("the server runs");
    });
    (addr, task)
}

/// A free TCP port on 127.0.0.1 (bound, read back, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// A `redis-server` of our own, without persistence, on 127.0.0.1.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    /// Its port.
    pub port: u16,
    dir: PathBuf,
    keep_dir: bool,
}

impl RedisServer {
    /// Starts one on a free port.
    ///
    /// # Panics
    ///
    /// Panics, with what to do, if `redis-server` is not installed: Redis tests never skip.
    pub fn start() -> RedisServer {
        RedisServer::launch(free_port(), false)
    }

    /// Starts one on `port` that keeps its data in an append-only file (fsync on every write)
    /// in a directory of its own: killed and started again on the same port, it still has it.
    pub fn start_persistent_on(port: u16) -> RedisServer {
        RedisServer::launch(port, true)
    }

    fn launch(port: u16, persistent: bool) -> RedisServer {
        let dir = std::env::temp_dir().join(format!("tidings-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let aof: &[&str] = if persistent {
            &["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            &["--appendonly", "no"]
        };
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(aof)
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}): install it (Debian: apt-get install redis-server) or run ./scripts/test, which does")
            });
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen on port {port} within 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        RedisServer { child, port, dir, keep_dir: false }
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Runs `redis-cli` against this server and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Kills the server at once (SIGKILL) and waits for it; its data directory stays, so a
    /// persistent server can be started again on the same port.
    pub fn kill(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.keep_dir = true;
        self.port
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The `sse_demo` example as a child process.
#[derive(Debug)]
pub struct Demo {
    child: Child,
    /// Its port.
    pub port: u16,
    /// The first line it printed.
    pub banner: String,
}

/// Where cargo put the example binary, next to the running test's directory.
pub fn demo_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>");
    let binary = profile_dir.join("examples").join("sse_demo");
    assert!(
        binary.exists(),
        "{} is missing: build it with `cargo build --example sse_demo` (./scripts/test does)",
        binary.display()
    );
    binary
}

impl Demo {
    /// Starts the demo with `args` on `port` (0: any free port) and waits until it listens.
    pub fn start(port: u16, args: &[&str]) -> Demo {
        Demo::start_with_env(port, args, &[])
    }

    /// [`Demo::start`] with extra environment variables.
    pub fn start_with_env(port: u16, args: &[&str], env: &[(&str, &str)]) -> Demo {
        let mut child = Command::new(demo_binary())
            .args(args)
            .envs(env.iter().copied())
            .env("PORT", port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the demo starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let banner = lines.next().and_then(Result::ok).unwrap_or_default();
        let port = banner
            .split("http://localhost:")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the demo did not say where it listens: {banner:?}"));
        // Keep draining its console so that it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Demo { child, port, banner }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its resident memory now and at its peak (`VmRSS`, `VmHWM`), in KiB; zeros where
    /// `/proc` cannot tell (not Linux).
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Sends SIGTERM (as a service manager stopping it would) and waits at most `within` for the
    /// demo to exit: its exit status, or `None` if it was still running (it is then killed).
    pub fn terminate(mut self, within: std::time::Duration) -> Option<std::process::ExitStatus> {
        // The shell's own `kill`: a fresh machine need not have procps' /usr/bin/kill.
        let sent = Command::new("sh").args(["-c", "kill -TERM \"$0\"", &self.child.id().to_string()]).status();
        assert!(sent.as_ref().is_ok_and(|s| s.success()), "kill -TERM failed: {sent:?}");
        let deadline = std::time::Instant::now() + within;
        // Polls the child's status: std has no wait with a timeout.
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        None
    }

    /// Kills the demo with SIGKILL, as a crash would, and waits for it.
    pub fn kill(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub use stores::{RedisStores, SqliteStores};

mod stores {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use async_trait::async_trait;
    use tidings_conformance::StoreFactory;
    use tidings_core::{Retention, Store};
    use tidings_redis::{RedisOptions, RedisStore};
    use tidings_sqlite::SqliteStore;

    use super::RedisServer;

    static NEXT: AtomicU64 = AtomicU64::new(0);

    /// Fresh SQLite logs, each a real file in a new directory under the system's temporary
    /// directory (removed when the factory is dropped).
    #[derive(Debug)]
    pub struct SqliteStores {
        dir: std::path::PathBuf,
    }

    impl Default for SqliteStores {
        fn default() -> Self {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("tidings-sqlite-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            SqliteStores { dir }
        }
    }

    impl Drop for SqliteStores {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[async_trait]
    impl StoreFactory for SqliteStores {
        fn name(&self) -> &'static str {
            "sqlite"
        }

        async fn open(&self, retention: Retention) -> Arc<dyn Store> {
            let file = self.dir.join(format!("log-{}.db", NEXT.fetch_add(1, Ordering::Relaxed)));
            Arc::new(SqliteStore::open(file, retention).await.expect("sqlite opens"))
        }
    }

    /// Fresh Redis logs (distinct key prefixes, hence distinct epochs) in a redis-server of the
    /// factory's own, stopped when the factory is dropped.
    #[derive(Debug)]
    pub struct RedisStores {
        server: RedisServer,
    }

    impl Default for RedisStores {
        fn default() -> Self {
            RedisStores { server: RedisServer::start() }
        }
    }

    #[async_trait]
    impl StoreFactory for RedisStores {
        fn name(&self) -> &'static str {
            "redis"
        }

        async fn open(&self, retention: Retention) -> Arc<dyn Store> {
            let prefix = format!("t{}", NEXT.fetch_add(1, Ordering::Relaxed));
            let options = RedisOptions::default().prefix(prefix).retention(retention);
            Arc::new(RedisStore::connect(&self.server.url(), options).await.expect("redis connects"))
        }
    }
}
