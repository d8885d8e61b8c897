//! A private `redis-server` on a free port for tests (this crate's and the CLI's), so they
//! may change its configuration, fill it and kill it without touching the shared server.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

impl RedisServer {
    /// Starts a server with persistence off and keyspace notifications for hashes on.
    pub fn start() -> RedisServer {
        let dir = std::env::temp_dir().join(format!(
            "cartpulse-redis-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("create server dir");
        let mut s = RedisServer {
            port: 0,
            dir,
            child: None,
        };
        s.launch();
        s
    }

    fn launch(&mut self) {
        for _ in 0..5 {
            let port = if self.port == 0 {
                free_port()
            } else {
                self.port
            };
            let child = Command::new("redis-server")
                .arg("--port")
                .arg(port.to_string())
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--notify-keyspace-events", "Khgx"])
                .arg("--dir")
                .arg(&self.dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server (package redis-server)");
            self.child = Some(child);
            self.port = port;
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(mut c) = self.client().get_connection() {
                    // the answer must come from our server: when another test's server took
                    // the port first, ours exits and that one would answer instead
                    if let Ok(dir) = redis::cmd("CONFIG")
                        .arg("GET")
                        .arg("dir")
                        .query::<Vec<String>>(&mut c)
                    {
                        let ours = self.dir.canonicalize().unwrap_or_else(|_| self.dir.clone());
                        if dir.get(1).map(std::path::Path::new) == Some(ours.as_path()) {
                            return;
                        }
                        break;
                    }
                }
                if let Some(c) = self.child.as_mut() {
                    if c.try_wait().ok().flatten().is_some() {
                        break;
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            self.kill();
            self.port = 0;
        }
        panic!("redis-server did not start");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("valid url")
    }

    pub fn conn(&self) -> redis::Connection {
        self.client()
            .get_connection()
            .expect("connect to the test redis")
    }

    /// Kills the server (its data is gone: persistence is off).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty).
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
