//! A headless Chromium driven over W3C WebDriver (Debian's `chromium` and
//! `chromium-driver`), for the console's tests: they load the page the
//! gateway serves and assert on its DOM, as a person would read it.
//!
//! A thin client over the test suite's HTTP client rather than a WebDriver
//! crate: the protocol is a handful of JSON calls, and the one the console
//! tests need most, the browser's console log (`/se/log`, a ChromeDriver
//! extension), is in none of the crates' typed APIs.
//!
//! Each test starts its own chromedriver on a free port, in a process
//! group of its own; dropping the [`Browser`] kills the group, the browser
//! with it (killing chromedriver alone would orphan Chromium). Screenshots go to
//! `target/console-screenshots/<test>/`, or to `$FAULTLINE_SCREENSHOTS`
//! (how the README's set is made).

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use faultline_cluster::{free_port, workspace_root};
use serde_json::{Value, json};

/// The key W3C WebDriver names an element reference by.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Chromedriver and everything it started, killed together on drop,
/// however the test ends.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        // The group's id is chromedriver's pid (`process_group(0)`).
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

/// One browser session.
pub struct Browser {
    _driver: Driver,
    session: String,
    http: reqwest::Client,
    screenshots: PathBuf,
    shots_taken: usize,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a window of
    /// `width`×`height`, saving screenshots under `test`'s name.
    pub async fn start(test: &str, width: u32, height: u32) -> anyhow::Result<Browser> {
        let port = free_port();
        let driver = Driver(
            Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .context("starting chromedriver (Debian package chromium-driver)")?,
        );
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        faultline_cluster::eventually("chromedriver to answer", Duration::from_secs(20), || {
            let (http, url) = (http.clone(), format!("{base}/status"));
            async move {
                let status: Value = http.get(url).send().await.ok()?.json().await.ok()?;
                status["value"]["ready"].as_bool().filter(|ready| *ready)
            }
        })
        .await?;
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new",
                    // Root in a container has no user namespace to sandbox in.
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--disable-gpu",
                    format!("--window-size={width},{height}"),
                ],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await?
            .json()
            .await?;
        let session = created["value"]["sessionId"]
            .as_str()
            .with_context(|| format!("no WebDriver session: {created}"))?
            .to_owned();
        let screenshots = std::env::var_os("FAULTLINE_SCREENSHOTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                workspace_root()
                    .join("target/console-screenshots")
                    .join(test)
            });
        std::fs::create_dir_all(&screenshots)?;
        Ok(Browser {
            _driver: driver,
            session: format!("{base}/session/{session}"),
            http,
            screenshots,
            shots_taken: 0,
        })
    }

    async fn command(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> anyhow::Result<Value> {
        let request = self.http.request(method, format!("{}{path}", self.session));
        let request = if body.is_null() {
            request
        } else {
            request.json(&body)
        };
        let answer: Value = request.send().await?.json().await?;
        if let Some(error) = answer["value"]["error"].as_str() {
            anyhow::bail!("WebDriver {path}: {error}: {}", answer["value"]["message"]);
        }
        Ok(answer["value"].clone())
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.command(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await
            .map(drop)
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the
    /// page and returns what it returns.
    pub async fn run(&self, script: &str, args: Vec<Value>) -> anyhow::Result<Value> {
        self.command(
            reqwest::Method::POST,
            "/execute/sync",
            json!({ "script": script, "args": args }),
        )
        .await
    }

    /// Polls `script` until it returns something other than `null`,
    /// `false` or `""`, for up to `timeout`; returns that and when it
    /// came. Polling a page every 50 ms is how a reader would watch it.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        script: &str,
    ) -> anyhow::Result<(Value, Instant)> {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.run(script, vec![]).await?;
            let seen = Instant::now();
            if !(value.is_null() || value == json!(false) || value == json!("")) {
                return Ok((value, seen));
            }
            anyhow::ensure!(
                seen < deadline,
                "the page did not show {what} within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn element(&self, css: &str) -> anyhow::Result<String> {
        let found = self
            .command(
                reqwest::Method::POST,
                "/element",
                json!({ "using": "css selector", "value": css }),
            )
            .await?;
        found[ELEMENT_KEY]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no element {css}"))
    }

    /// Clicks the element `css` finds, as a user would (WebDriver moves
    /// the pointer and clicks; a hidden or covered element is an error).
    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        let id = self.element(css).await?;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            json!({}),
        )
        .await
        .map(drop)
    }

    /// Replaces the text of the input `css` finds with `text`, typed.
    pub async fn type_into(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let id = self.element(css).await?;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{id}/clear"),
            json!({}),
        )
        .await?;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            json!({ "text": text }),
        )
        .await
        .map(drop)
    }

    /// Saves a screenshot of the page as `NN-<step>.png`.
    pub async fn screenshot(&mut self, step: &str) -> anyhow::Result<PathBuf> {
        // From the top, whatever the last click scrolled to.
        self.run("window.scrollTo(0, 0);", vec![]).await?;
        let png = self
            .command(reqwest::Method::GET, "/screenshot", Value::Null)
            .await?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().context("a screenshot is base64")?)?;
        self.shots_taken += 1;
        let path = self
            .screenshots
            .join(format!("{:02}-{step}.png", self.shots_taken));
        std::fs::write(&path, bytes)?;
        Ok(path)
    }

    /// The browser's console messages since the last call, each
    /// `{level, source, message}`.
    pub async fn console_log(&self) -> anyhow::Result<Vec<Value>> {
        let entries = self
            .command(
                reqwest::Method::POST,
                "/se/log",
                json!({ "type": "browser" }),
            )
            .await?;
        Ok(entries.as_array().cloned().unwrap_or_default())
    }
}
