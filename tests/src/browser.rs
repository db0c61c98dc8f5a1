//! A real headless Chromium driven through WebDriver: starts `chromedriver` on a free port
//! and opens a session with Debian's `/usr/bin/chromium`. Screenshots go to
//! `target/screenshots/`.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::{Process, free_port};

/// Where Chromium and its driver are (Debian's `chromium` and `chromium-driver`);
/// `CHROMIUM` and `CHROMEDRIVER` override them.
pub fn chromium_binary() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned())
}

pub fn chromedriver_binary() -> String {
    std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".to_owned())
}

/// `target/screenshots`, created.
pub fn screenshot_dir() -> PathBuf {
    let dir = crate::bin_dir()
        .parent()
        .map(|p| p.join("screenshots"))
        .unwrap_or_else(|| PathBuf::from("target/screenshots"));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

pub const DESKTOP: (u32, u32) = (1280, 900);
pub const PHONE: (u32, u32) = (375, 740);

/// A browser session; the driver process is killed when dropped.
pub struct Browser {
    pub client: Client,
    _driver: Process,
    _profile: tempfile::TempDir,
    size: std::cell::Cell<(u32, u32)>,
}

impl Browser {
    pub async fn start() -> Result<Browser> {
        let profile = tempfile::tempdir()?;
        let port = free_port();
        let mut cmd = Command::new(chromedriver_binary());
        cmd.arg(format!("--port={port}"));
        let driver = Process::spawn("chromedriver", cmd, profile.path().join("chromedriver.log"))
            .context("start chromedriver (apt-get install chromium chromium-driver)")?;
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http.get(format!("{url}/status")).send().await
                && r.status().is_success()
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("chromedriver not ready in 20 s:\n{}", driver.log_text());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let user_data = profile.path().join("profile");
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--hide-scrollbars".to_owned(),
            format!("--user-data-dir={}", user_data.display()),
            format!("--window-size={},{}", DESKTOP.0, DESKTOP.1),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".to_owned(),
            json!({ "binary": chromium_binary(), "args": args }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&url)
            .await
            .with_context(|| format!("open a Chromium session:\n{}", driver.log_text()))?;
        let b = Browser {
            client,
            _driver: driver,
            _profile: profile,
            size: std::cell::Cell::new(DESKTOP),
        };
        b.resize(DESKTOP).await?;
        Ok(b)
    }

    pub async fn resize(&self, (w, h): (u32, u32)) -> Result<()> {
        self.client.set_window_size(w, h).await?;
        self.size.set((w, h));
        Ok(())
    }

    pub async fn goto(&self, url: &str) -> Result<()> {
        self.client
            .goto(url)
            .await
            .with_context(|| format!("goto {url}"))
    }

    pub async fn path(&self) -> Result<String> {
        Ok(self.client.current_url().await?.path().to_owned())
    }

    /// Waits (up to 10 s) for an element.
    pub async fn wait(&self, css: &str) -> Result<fantoccini::elements::Element> {
        match self
            .client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await
        {
            Ok(e) => Ok(e),
            Err(e) => {
                let url = self
                    .client
                    .current_url()
                    .await
                    .map(|u| u.to_string())
                    .unwrap_or_default();
                let h1 = match self.client.find(Locator::Css("h1")).await {
                    Ok(h) => h.text().await.unwrap_or_default(),
                    Err(_) => String::new(),
                };
                Err(anyhow::Error::new(e)
                    .context(format!("waiting for `{css}` on {url} (h1: {h1:?})")))
            }
        }
    }

    pub async fn exists(&self, css: &str) -> Result<bool> {
        Ok(!self.client.find_all(Locator::Css(css)).await?.is_empty())
    }

    pub async fn text(&self, css: &str) -> Result<String> {
        Ok(self.wait(css).await?.text().await?)
    }

    pub async fn attr(&self, css: &str, name: &str) -> Result<Option<String>> {
        Ok(self.wait(css).await?.attr(name).await?)
    }

    pub async fn value(&self, css: &str) -> Result<String> {
        Ok(self
            .wait(css)
            .await?
            .prop("value")
            .await?
            .unwrap_or_default())
    }

    /// Replaces an input's text.
    pub async fn fill(&self, css: &str, text: &str) -> Result<()> {
        let e = self.wait(css).await?;
        e.clear().await?;
        e.send_keys(text).await?;
        Ok(())
    }

    /// Marks the current document, so that [`Browser::wait_new_page`] can tell when the
    /// next one has replaced it.
    pub async fn mark_page(&self) -> Result<()> {
        self.execute("window.__oldPage = true;", vec![]).await?;
        Ok(())
    }

    /// Waits (up to 10 s) until the marked document is gone and the new one has loaded.
    pub async fn wait_new_page(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // A navigation in progress makes scripts fail; that is "not yet".
            if let Ok(v) = self
                .execute(
                    "return window.__oldPage !== true && document.readyState === 'complete';",
                    vec![],
                )
                .await
                && v == Value::Bool(true)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "no new page after 10 s (still {:?})",
                    self.client.current_url().await.ok()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Clicks, waits for the next page, and for it to have `then` (a CSS selector).
    pub async fn click(&self, css: &str, then: &str) -> Result<()> {
        let e = self.wait(css).await?;
        self.mark_page().await?;
        e.click().await?;
        self.wait_new_page().await?;
        self.wait(then).await?;
        Ok(())
    }

    pub async fn h1(&self) -> Result<String> {
        self.text("h1").await
    }

    pub async fn source(&self) -> Result<String> {
        Ok(self.client.source().await?)
    }

    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Result<Value> {
        Ok(self.client.execute(script, args).await?)
    }

    /// Saves a PNG of the whole page as `target/screenshots/NAME.png` (the window grows to
    /// the page's height for the shot, then returns to its size).
    pub async fn screenshot(&self, name: &str) -> Result<PathBuf> {
        let (w, h) = self.size.get();
        let full = self
            .execute("return document.documentElement.scrollHeight;", vec![])
            .await?
            .as_u64()
            .unwrap_or(u64::from(h));
        let tall = u32::try_from(full).unwrap_or(h).clamp(h, 6000);
        if tall > h {
            self.client.set_window_size(w, tall).await?;
        }
        let png = self.client.screenshot().await?;
        if tall > h {
            self.client.set_window_size(w, h).await?;
        }
        let path = screenshot_dir().join(format!("{name}.png"));
        std::fs::write(&path, png)?;
        Ok(path)
    }

    pub async fn close(self) -> Result<()> {
        self.client.close().await?;
        Ok(())
    }
}
