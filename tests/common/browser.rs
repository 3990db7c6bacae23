//! Headless Chromium driven over the DevTools protocol, for tests that need a
//! real browser: its cookie jar, its `fetch()`, its navigations.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub struct Browser {
    child: Child,
    dir: PathBuf,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    session: String,
}

impl Browser {
    /// Starts Chromium with a fresh profile and opens one page.
    pub async fn launch() -> Browser {
        let dir = super::gateway::temp_path("chromium");
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", dir.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium is installed (tests/run.sh installs it)");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.split("DevTools listening on ").nth(1) {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("chromium printed its DevTools address");
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let mut b = Browser {
            child,
            dir,
            ws,
            next_id: 0,
            session: String::new(),
        };
        let target = b
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let attached = b
            .call(
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        b.session = attached["sessionId"].as_str().unwrap().to_owned();
        b.page("Page.enable", json!({})).await;
        b.page("Network.enable", json!({})).await;
        b
    }

    async fn send(&mut self, method: &str, params: Value, session: bool) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if session {
            msg["sessionId"] = Value::String(self.session.clone());
        }
        self.ws.send(Message::text(msg.to_string())).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{method}: no answer from chromium"))
                .expect("chromium connection open")
                .unwrap();
            let Message::Text(text) = frame else { continue };
            let v: Value = serde_json::from_str(text.as_str()).unwrap();
            if v["id"].as_u64() == Some(id) {
                if let Some(err) = v.get("error") {
                    panic!("{method} failed: {err}");
                }
                return v["result"].clone();
            }
        }
    }

    /// A browser-level command.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.send(method, params, false).await
    }

    /// A command to the page.
    pub async fn page(&mut self, method: &str, params: Value) -> Value {
        self.send(method, params, true).await
    }

    /// Navigates and waits for the document's readiness.
    pub async fn navigate(&mut self, url: &str) {
        self.page("Page.navigate", json!({"url": url})).await;
        for _ in 0..300 {
            let state = self.eval("document.readyState").await;
            let href = self.eval("location.href").await;
            if state == "complete" && href.as_str() == Some(url) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{url} did not load");
    }

    /// Evaluates JavaScript in the page, awaiting a promise result.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .page(
                "Runtime.evaluate",
                json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
            )
            .await;
        if let Some(ex) = r.get("exceptionDetails") {
            panic!("script failed: {ex}");
        }
        r["result"]["value"].clone()
    }

    /// Every cookie in the jar, as DevTools describes them.
    pub async fn cookies(&mut self) -> Vec<Value> {
        let r = self.call("Storage.getCookies", json!({})).await;
        r["cookies"].as_array().cloned().unwrap_or_default()
    }

    pub async fn cookie(&mut self, name: &str) -> Option<String> {
        self.cookies()
            .await
            .into_iter()
            .find(|c| c["name"] == name)
            .and_then(|c| c["value"].as_str().map(str::to_owned))
    }

    /// Puts a cookie in the jar as if a response had set it.
    pub async fn set_cookie(&mut self, url: &str, set_cookie: &str) {
        let c = cookie::Cookie::parse(set_cookie.to_owned()).unwrap();
        let mut p = json!({
            "name": c.name(),
            "value": c.value(),
            "url": url,
            "path": c.path().unwrap_or("/"),
            "httpOnly": c.http_only().unwrap_or(false),
            "secure": c.secure().unwrap_or(false),
        });
        if let Some(exp) = c.expires_datetime() {
            p["expires"] = json!(exp.unix_timestamp());
        }
        let r = self.page("Network.setCookie", p).await;
        assert_eq!(r["success"], true, "cookie accepted: {set_cookie}");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
