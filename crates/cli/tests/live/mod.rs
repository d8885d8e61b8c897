//! Helpers for the tests that drive live processes over HTTP: `cartpulse demo`, Prometheus
//! and Chromium, each started on a free loopback port and stopped (with its whole process
//! group) when its guard drops, also when a test panics.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A port nobody listens on right now (the kernel's choice for 127.0.0.1:0). Another
/// process may take it before ours binds it; `Demo::start` retries when that happens.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Polls `f` every `every` until it returns `Some`, or panics after `limit` with `what`
/// and the last state `f` reported.
pub fn wait_for<T>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) if start.elapsed() >= limit => {
                panic!("timed out after {limit:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => std::thread::sleep(every),
        }
    }
}

/// Waits until `/readyz` on `addr` answers 200 (sources connected, state restored).
pub fn wait_ready(addr: SocketAddr) {
    wait_for(
        "cartpulse to be ready",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || match request(addr, "GET", "/readyz", &[], b"") {
            Ok(r) if r.status == 200 => Ok(()),
            Ok(r) => Err(r.text()),
            Err(e) => Err(e.to_string()),
        },
    )
}

/// Stops every process gracefully and asserts each exited successfully.
pub fn stop_all(procs: &mut [Proc], grace: Duration) {
    for p in procs.iter_mut() {
        let st = p.stop(grace);
        assert!(
            st.is_some_and(|s| s.success()),
            "{} exit {st:?}\n{}",
            p.name,
            p.log_tail(30)
        );
    }
}

/// A child process in its own process group, with stdout and stderr in a log file.
/// Dropping it sends SIGTERM to the process, waits up to 5 s for it to exit (a browser
/// takes its helper processes down with it), then SIGKILLs whatever is left of the group
/// and reaps it: this test process is made a child subreaper, so helpers orphaned by the
/// leader are its children, not zombies of init.
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
    reaped: bool,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Proc {
        let out = File::create(log).expect("create log file");
        let err = out.try_clone().expect("clone log file");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0);
        // SAFETY: prctl(2) with integer arguments only; affects this process alone.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} ({cmd:?}): {e}"));
        Proc {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
            reaped: false,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has already ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("wait for child")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of the log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(n)..].join("\n");
        format!(
            "--- last lines of {} log ({})\n{tail}",
            self.name,
            self.log.display()
        )
    }

    /// Stops the process and its group: SIGTERM to the leader, up to `grace` to exit, then
    /// SIGKILL to the group and every member reaped. Returns the status of the leader.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if self.reaped {
            return None;
        }
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: plain kill(2) on the process this guard started.
        unsafe { libc::kill(pgid, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        let mut status = None;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                status = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // whatever is left of the group (the leader, or children it left behind)
        // SAFETY: as above.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        if status.is_none() {
            status = self.child.wait().ok();
        }
        // reap the rest of the group (orphans reparented to us as the subreaper)
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut st = 0;
            // SAFETY: waitpid(2) on members of the group this guard created.
            let r = unsafe { libc::waitpid(-pgid, &mut st, libc::WNOHANG) };
            if r < 0 || Instant::now() > deadline {
                break; // ECHILD: none left
            }
            if r == 0 {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.reaped = true;
        status
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// An HTTP/1.1 response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 client over `std::net` (one request per connection). A body the
/// server refuses to read is tolerated: the response is read even when the upload fails
/// because the server has already answered and closed.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    s.set_write_timeout(Some(Duration::from_secs(15)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    let upload = s.write_all(body);
    let mut raw = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            // a reset after the full answer (the server closed with our upload unread)
            Err(e) if !raw.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(e),
        }
    }
    if raw.is_empty() {
        upload?;
    }
    parse_response(&raw)
}

pub fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Resp> {
    request(addr, "GET", path, headers, &[])
}

fn parse_response(raw: &[u8]) -> std::io::Result<Resp> {
    let bad = |why: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{why}: {:?}",
                String::from_utf8_lossy(&raw[..raw.len().min(200)])
            ),
        )
    };
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("headers not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    } else if let Some(n) = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        if body.len() < n {
            return Err(bad("body shorter than Content-Length"));
        }
        body.truncate(n);
    }
    Ok(Resp {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size_str = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// A running `cartpulse demo` on a free loopback port, with its results, checkpoints and
/// log in a temporary directory that goes away with it.
pub struct Demo {
    pub addr: SocketAddr,
    pub token: Option<String>,
    pub proc: Proc,
    dir: tempfile::TempDir,
}

impl Demo {
    /// Starts `cartpulse demo --addr 127.0.0.1:<free> <extra...>` and waits until
    /// `/healthz` answers. Retries on another port if the chosen one was taken meanwhile.
    pub fn start(extra: &[&str]) -> Demo {
        for attempt in 1..=3 {
            let dir = tempfile::tempdir().expect("temp dir");
            let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_cartpulse"));
            cmd.env("RUST_LOG", "warn")
                .env_remove("CARTPULSE_API_TOKEN")
                // the demo keeps its checkpoints under the temp dir: keep them in ours
                .env("TMPDIR", dir.path())
                .arg("demo")
                .arg("--addr")
                .arg(addr.to_string())
                .arg("--out")
                .arg(dir.path().join("out"))
                .args(extra);
            let token = extra
                .iter()
                .position(|a| *a == "--token")
                .and_then(|i| extra.get(i + 1))
                .map(|t| t.to_string());
            let proc = Proc::spawn("cartpulse demo", cmd, &dir.path().join("demo.log"));
            let mut demo = Demo {
                addr,
                token,
                proc,
                dir,
            };
            match demo.wait_healthy(Duration::from_secs(30)) {
                Ok(()) => return demo,
                Err(e) if e.contains("http server failed") && attempt < 3 => continue,
                Err(e) => panic!("cartpulse demo did not come up on {addr}: {e}"),
            }
        }
        unreachable!()
    }

    fn wait_healthy(&mut self, limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        loop {
            let log = self.proc.log();
            if log.contains("http server failed") {
                return Err(format!("http server failed\n{}", self.proc.log_tail(20)));
            }
            if let Some(st) = self.proc.exited() {
                return Err(format!("exited with {st}\n{}", self.proc.log_tail(20)));
            }
            match get(self.addr, "/healthz", &[]) {
                Ok(r) if r.status == 200 => return Ok(()),
                Ok(r) if start.elapsed() > limit => {
                    return Err(format!("/healthz answers {}", r.status))
                }
                Err(e) if start.elapsed() > limit => return Err(format!("/healthz: {e}")),
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// GET with the demo's own token, if it has one.
    pub fn get(&self, path: &str) -> Resp {
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        get(self.addr, path, &headers)
            .unwrap_or_else(|e| panic!("GET {path} from the demo: {e}\n{}", self.proc.log_tail(20)))
    }

    /// Events decoded so far, from `/api/metrics`.
    pub fn events(&self) -> u64 {
        let r = self.get("/api/metrics");
        assert_eq!(r.status, 200, "/api/metrics: {}", r.text());
        r.json()["totals"]["events"]
            .as_u64()
            .unwrap_or_else(|| panic!("no totals.events in {}", r.text()))
    }

    /// The Prometheus text from `/metrics`.
    pub fn scrape(&self) -> String {
        let r = self.get("/metrics");
        assert_eq!(r.status, 200, "/metrics: {}", r.text());
        r.text()
    }
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Parses the text exposition format into (`# TYPE` name → type, samples).
pub fn parse_exposition(text: &str) -> (Vec<(String, String)>, Vec<Sample>) {
    let mut types = Vec::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            if let (Some(n), Some(t)) = (it.next(), it.next()) {
                types.push((n.to_string(), t.to_string()));
            }
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .unwrap_or(line.len());
        let name = line[..name_end].to_string();
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(r) = rest.strip_prefix('{') {
            let (ls, after) = parse_labels(r);
            labels = ls;
            rest = after;
        }
        let value = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("bad sample line: {line}"));
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    (types, samples)
}

/// Parses `a="x",b="y"}` (after the opening brace) into pairs and what follows the brace.
fn parse_labels(s: &str) -> (Vec<(String, String)>, &str) {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    loop {
        while i < b.len() && (b[i] == b',' || b[i] == b' ') {
            i += 1;
        }
        if i >= b.len() || b[i] == b'}' {
            return (out, &s[(i + 1).min(s.len())..]);
        }
        let k0 = i;
        while i < b.len() && b[i] != b'=' {
            i += 1;
        }
        let key = s[k0..i].trim().to_string();
        i += 1; // '='
        assert!(
            i < b.len() && b[i] == b'"',
            "label value must be quoted in {s}"
        );
        i += 1;
        let mut val = Vec::new();
        while i < b.len() && b[i] != b'"' {
            if b[i] == b'\\' && i + 1 < b.len() {
                i += 1;
                val.push(if b[i] == b'n' { b'\n' } else { b[i] });
            } else {
                val.push(b[i]);
            }
            i += 1;
        }
        i += 1; // closing quote
        out.push((key, String::from_utf8_lossy(&val).into_owned()));
    }
}
