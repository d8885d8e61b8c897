//! A private MariaDB server with the binary log on, for this crate's tests and the CLI's
//! end-to-end tests. The shared server on :3306 runs without a binlog; each test starts its
//! own on a free port in a temporary data directory and stops it when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct MariaDb {
    pub port: u16,
    pub dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

fn user() -> String {
    let o = Command::new("id").arg("-un").output().expect("run id -un");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// An initialised data directory, made once per machine (mariadb-install-db takes
/// seconds) and copied for every server.
fn template() -> PathBuf {
    let t = std::env::temp_dir().join("cartpulse-mariadb-template");
    if t.join("mysql").exists() {
        return t;
    }
    let tmp = std::env::temp_dir().join(format!(
        "cartpulse-mariadb-template-{}-{}",
        std::process::id(),
        free_port()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    let o = Command::new("mariadb-install-db")
        .arg("--no-defaults")
        .arg(format!("--datadir={}", tmp.display()))
        .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
        .arg(format!("--user={}", user()))
        .output()
        .expect("run mariadb-install-db (package mariadb-server; see scripts/services.d/cdc.sh)");
    assert!(
        o.status.success(),
        "mariadb-install-db failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // another test may have won the race: then its template is used and ours discarded
    if std::fs::rename(&tmp, &t).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    t
}

impl MariaDb {
    /// Starts a server with `--log-bin --binlog-format=ROW --server-id=1` and `extra` args.
    pub fn start(extra: &[&str]) -> MariaDb {
        let dir = std::env::temp_dir().join(format!(
            "cartpulse-mariadb-{}-{}",
            std::process::id(),
            free_port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create server dir");
        let st = Command::new("cp")
            .arg("-a")
            .arg(template())
            .arg(dir.join("data"))
            .status()
            .expect("copy the template data directory");
        assert!(st.success(), "cp -a of the template failed");
        let mut m = MariaDb {
            port: 0,
            dir,
            args: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        m.launch();
        m
    }

    fn launch(&mut self) {
        // a port taken between our probe and the server's bind makes it exit: try again
        for _ in 0..5 {
            let port = if self.port == 0 {
                free_port()
            } else {
                self.port
            };
            let d = &self.dir;
            let log = std::fs::File::create(d.join("server.log")).expect("server log");
            let child = Command::new("mariadbd")
                .arg("--no-defaults")
                .arg(format!("--user={}", user()))
                .arg(format!("--datadir={}", d.join("data").display()))
                .arg(format!("--socket={}", d.join("sock").display()))
                .arg(format!("--pid-file={}", d.join("pid").display()))
                // its own temporary files: servers of parallel tests must not share /tmp
                .arg(format!("--tmpdir={}", d.display()))
                .arg(format!("--port={port}"))
                .arg(format!("--log-bin={}", d.join("data/mysql-bin").display()))
                .args([
                    "--bind-address=127.0.0.1",
                    "--binlog-format=ROW",
                    "--server-id=1",
                    "--skip-name-resolve",
                    "--innodb-buffer-pool-size=32M",
                    "--max-connections=50",
                ])
                .args(&self.args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn()
                .expect("start mariadbd (package mariadb-server)");
            self.child = Some(child);
            self.port = port;
            let start = Instant::now();
            let ours = d.join("data");
            while start.elapsed() < Duration::from_secs(30) {
                // the answer must come from our server: when another test's server took the
                // port first, ours exits and that one would answer instead
                if let Ok(dir) = self.try_sql("SELECT @@datadir") {
                    if Path::new(dir.trim()) == ours {
                        return;
                    }
                    break;
                }
                if let Some(c) = self.child.as_mut() {
                    if c.try_wait().ok().flatten().is_some() {
                        break;
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            self.stop_now();
            self.port = 0;
        }
        panic!(
            "mariadbd did not start; log:\n{}",
            std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
        );
    }

    pub fn url(&self, db: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{db}", self.port)
    }

    pub fn try_sql(&self, sql: &str) -> Result<String, String> {
        let o = Command::new("mariadb")
            .args(["--no-defaults", "-h127.0.0.1", "-uroot", "-N", "-B"])
            .arg(format!("-P{}", self.port))
            .arg("-e")
            .arg(sql)
            .output()
            .map_err(|e| format!("run mariadb: {e}"))?;
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).into_owned())
        }
    }

    /// Runs statements (one client session); panics with the server's message on failure.
    pub fn sql(&self, sql: &str) -> String {
        self.try_sql(sql)
            .unwrap_or_else(|e| panic!("SQL failed: {e}\n{sql}"))
    }

    fn stop_now(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the server (as a crash would) and starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.stop_now();
        self.launch();
    }

    pub fn data_dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.stop_now();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
