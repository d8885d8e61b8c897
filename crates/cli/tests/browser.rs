//! The built-in dashboard in a real browser: headless Chromium, driven over the Chrome
//! DevTools Protocol, loads `/` from a running `cartpulse demo`, and the page must go live
//! (server-sent events), plot every chart, list abandoned-cart alerts and throw no
//! JavaScript error. The screenshot it takes goes to `target/tmp/dashboard.png`, or to the
//! README's `docs/dashboard.png` with `CARTPULSE_UPDATE_SCREENSHOT=1`.

mod live;

use base64::Engine as _;
use live::{repo_root, wait_for, Demo, Proc};
use serde_json::{json, Value};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tungstenite::{Message, WebSocket};

const WIDTH: u32 = 1400;
const HEIGHT: u32 = 1100;

struct Chromium {
    proc: Proc,
    dir: tempfile::TempDir,
}

impl Chromium {
    fn start() -> Chromium {
        let dir = tempfile::tempdir().expect("temp dir");
        let profile = dir.path().join("profile");
        let mut cmd = Command::new("chromium");
        // its scratch files (shared memory with --disable-dev-shm-usage) go with the test
        cmd.env("TMPDIR", dir.path());
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            &format!("--window-size={WIDTH},{HEIGHT}"),
            &format!("--user-data-dir={}", profile.display()),
            "--remote-debugging-port=0",
            "about:blank",
        ]);
        let proc = Proc::spawn("chromium", cmd, &dir.path().join("chromium.log"));
        Chromium { proc, dir }
    }

    /// The browser's DevTools websocket, from `<user-data-dir>/DevToolsActivePort`
    /// (first line the port, second the path).
    fn devtools(&mut self) -> (u16, String) {
        let file = self.dir.path().join("profile/DevToolsActivePort");
        let proc = &mut self.proc;
        wait_for(
            "chromium to write DevToolsActivePort",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                if let Some(st) = proc.exited() {
                    panic!("chromium exited with {st}\n{}", proc.log_tail(30));
                }
                let text = std::fs::read_to_string(&file).map_err(|e| e.to_string())?;
                let mut lines = text.lines();
                match (
                    lines.next().and_then(|p| p.trim().parse::<u16>().ok()),
                    lines.next(),
                ) {
                    (Some(port), Some(path)) if path.starts_with('/') => {
                        Ok((port, path.trim().to_string()))
                    }
                    _ => Err(format!("incomplete: {text:?}")),
                }
            },
        )
    }
}

/// A DevTools Protocol connection, attached to one page (flat session mode).
struct Cdp {
    ws: WebSocket<TcpStream>,
    next_id: u64,
    session: Option<String>,
    /// `Runtime.exceptionThrown` and console errors seen so far.
    errors: Vec<String>,
}

impl Cdp {
    fn connect(port: u16, path: &str) -> Cdp {
        let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect to DevTools");
        tcp.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        let url = format!("ws://127.0.0.1:{port}{path}");
        let (ws, _) = tungstenite::client(url.as_str(), tcp)
            .unwrap_or_else(|e| panic!("websocket handshake with {url}: {e}"));
        Cdp {
            ws,
            next_id: 0,
            session: None,
            errors: Vec::new(),
        }
    }

    /// Sends a command and returns its result, collecting events that arrive meanwhile.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .unwrap_or_else(|e| panic!("send {method}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "no answer to {method} in 30 s");
            let m = self
                .ws
                .read()
                .unwrap_or_else(|e| panic!("waiting for {method}: {e}"));
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(t.as_str()).expect("DevTools sends JSON");
            if v["id"] == id {
                if let Some(err) = v.get("error") {
                    panic!("{method} failed: {err}");
                }
                return v["result"].clone();
            }
            self.event(&v);
        }
    }

    fn event(&mut self, v: &Value) {
        match v["method"].as_str() {
            Some("Runtime.exceptionThrown") => {
                let d = &v["params"]["exceptionDetails"];
                self.errors.push(format!(
                    "exception: {} {}",
                    d["text"], d["exception"]["description"]
                ));
            }
            Some("Runtime.consoleAPICalled") if v["params"]["type"] == "error" => {
                self.errors
                    .push(format!("console.error: {}", v["params"]["args"]));
            }
            _ => {}
        }
    }

    /// Evaluates a JavaScript expression in the page and returns its value.
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("evaluating {expr}: {e}");
        }
        r["result"]["value"].clone()
    }

    fn navigate(&mut self, url: &str) {
        let r = self.call("Page.navigate", json!({ "url": url }));
        assert!(r.get("errorText").is_none(), "navigate to {url}: {r}");
        wait_for(
            &format!("{url} to load"),
            Duration::from_secs(30),
            Duration::from_millis(100),
            || match self.eval("document.readyState").as_str() {
                Some("complete") => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
    }
}

/// What the test needs to know about the dashboard, read in the page.
const PAGE_STATE: &str = r#"(() => {
  const rows = [...document.querySelectorAll('#t-alerts tbody tr')];
  return {
    conn: document.getElementById('conn').textContent,
    connLog: window.__connLog || [],
    totals: document.getElementById('totals').textContent,
    canvases: [...document.querySelectorAll('canvas')].map((c) => ({
      id: c.id, points: Number(c.dataset.points || 0), width: c.width, height: c.height })),
    alerts: rows.filter((r) => r.cells.length > 1 && r.cells[0].textContent === 'abandoned_cart').length,
    alertText: rows.length ? rows[0].textContent : '',
  };
})()"#;

/// Records every text the connection pill shows, so a passing "disconnected" is seen.
const WATCH_CONN: &str = r#"(() => {
  window.__connLog = [document.getElementById('conn').textContent];
  new MutationObserver(() => window.__connLog.push(document.getElementById('conn').textContent))
    .observe(document.getElementById('conn'), { childList: true, characterData: true, subtree: true });
  return true;
})()"#;

fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(
        png.len() > 24 && png.starts_with(b"\x89PNG\r\n\x1a\n") && &png[12..16] == b"IHDR",
        "not a PNG"
    );
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&png[16..20]), be(&png[20..24]))
}

#[test]
fn dashboard_goes_live_in_headless_chromium() {
    // with a token, so the page must load without one and its API calls must carry it
    let demo = Demo::start(&[
        "--rate",
        "3000",
        "--abandon-after",
        "5s",
        "--token",
        "secret",
    ]);
    let mut browser = Chromium::start();
    let (port, path) = browser.devtools();
    let mut cdp = Cdp::connect(port, &path);

    let targets = cdp.call("Target.getTargets", json!({}));
    let page = targets["targetInfos"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["type"] == "page"))
        .unwrap_or_else(|| panic!("no page target: {targets}"))["targetId"]
        .clone();
    let attached = cdp.call(
        "Target.attachToTarget",
        json!({ "targetId": page, "flatten": true }),
    );
    cdp.session = Some(
        attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_string(),
    );
    cdp.call("Page.enable", json!({}));
    cdp.call("Runtime.enable", json!({}));
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": false }),
    );

    // Without the token the page loads, but the stream is refused and the page says why.
    cdp.navigate(&demo.url("/"));
    let refused = wait_for(
        "the dashboard to report the missing token",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let s = cdp.eval(PAGE_STATE);
            let conn = s["conn"].as_str().unwrap_or_default().to_string();
            if conn.contains("token required") {
                Ok(conn)
            } else {
                Err(conn)
            }
        },
    );
    assert!(refused.starts_with("disconnected"), "{refused}");

    // With the token in the URL fragment it goes live.
    cdp.navigate("about:blank");
    cdp.errors.clear();
    cdp.navigate(&demo.url("/#token=secret"));
    assert_eq!(cdp.eval(WATCH_CONN), json!(true));
    let state = wait_for(
        "the dashboard to be live, with every chart plotted and an abandoned-cart alert",
        Duration::from_secs(90),
        Duration::from_millis(500),
        || {
            let s = cdp.eval(PAGE_STATE);
            let canvases = s["canvases"].as_array().cloned().unwrap_or_default();
            let plotted = canvases.len() >= 4
                && canvases
                    .iter()
                    .all(|c| c["points"].as_u64().unwrap_or(0) > 0);
            // two closed windows at least (4 series × 2 points), so the screenshot shows
            // lines rather than lone points
            let lines = canvases
                .iter()
                .any(|c| c["id"] == "c-actions" && c["points"].as_u64().unwrap_or(0) >= 8);
            let ok = s["conn"] == "live"
                && plotted
                && lines
                && s["alerts"].as_u64().unwrap_or(0) >= 1
                // a measured rate, i.e. at least two snapshots arrived
                && !s["totals"].as_str().unwrap_or("–").contains("–");
            if ok {
                Ok(s)
            } else {
                Err(format!("{s}\n{}", demo.proc.log_tail(5)))
            }
        },
    );
    let log: Vec<&str> = state["connLog"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        log.iter().all(|c| !c.starts_with("disconnected")),
        "the event stream broke off: {log:?}"
    );
    assert!(
        state["alertText"]
            .as_str()
            .unwrap()
            .starts_with("abandoned_cart"),
        "{state}"
    );
    assert!(
        cdp.errors.is_empty(),
        "JavaScript errors on the dashboard: {:?}",
        cdp.errors
    );

    let shot = cdp.call(
        "Page.captureScreenshot",
        json!({ "format": "png", "fromSurface": true }),
    );
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().expect("screenshot data"))
        .expect("base64 screenshot");
    assert_eq!(png_size(&png), (WIDTH, HEIGHT));
    // a blank or error page compresses to a few kilobytes; four charts, tables and text
    // do not
    assert!(
        png.len() > 60_000,
        "screenshot suspiciously small ({} bytes)",
        png.len()
    );
    // the README's picture is refreshed on request only, so a test run leaves the work tree
    // clean: `CARTPULSE_UPDATE_SCREENSHOT=1 scripts/test.sh -E 'test(dashboard)'`
    let to = if std::env::var_os("CARTPULSE_UPDATE_SCREENSHOT").is_some() {
        repo_root().join("docs/dashboard.png")
    } else {
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png")
    };
    save(&png, &to);
    drop(cdp);
    drop(browser);
}

/// Writes next to the target and renames, so a reader never sees half a PNG.
fn save(bytes: &[u8], to: &Path) {
    let tmp = to.with_extension("png.tmp");
    std::fs::write(&tmp, bytes).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, to).unwrap_or_else(|e| panic!("rename to {}: {e}", to.display()));
}
