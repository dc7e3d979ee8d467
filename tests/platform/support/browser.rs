//! A real browser for the web pages' tests: headless Chromium through a ChromeDriver of our own.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

/// A ChromeDriver of our own on a free port, stopped (with its browser) when dropped.
pub struct Browser {
    driver: tokio::process::Child,
    pub client: Client,
}

impl Browser {
    /// A phone's screen.
    pub const PHONE: &str = "412,915";
    /// A control room's big screen.
    pub const BIG_SCREEN: &str = "1920,1080";

    /// A browser with a `window` (`width,height`) of a screen; `None` (the test skipped) without
    /// `PARKFLOW_TEST_CHROMEDRIVER`, except in CI.
    pub async fn start(window: &str) -> Option<Self> {
        let Ok(chromedriver) = std::env::var("PARKFLOW_TEST_CHROMEDRIVER") else {
            assert!(
                std::env::var("CI").is_err(),
                "CI must set PARKFLOW_TEST_CHROMEDRIVER"
            );
            eprintln!("skipped: set PARKFLOW_TEST_CHROMEDRIVER to run the browser tests");
            return None;
        };
        let port = super::free_addr().port();
        let driver = tokio::process::Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let mut capabilities = serde_json::Map::new();
        let chromium =
            std::env::var("PARKFLOW_TEST_CHROMIUM").unwrap_or("/usr/bin/chromium".into());
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         format!("--window-size={window}"), "--disable-dev-shm-usage"],
            }),
        );
        // ChromeDriver is spoken to over plain HTTP; the client still wants a TLS provider named.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let url = format!("http://127.0.0.1:{port}");
        let client = super::eventually(Duration::from_secs(20), "chromedriver answering", || {
            let (url, capabilities) = (url.clone(), capabilities.clone());
            async move {
                ClientBuilder::rustls()
                    .ok()?
                    .capabilities(capabilities)
                    .connect(&url)
                    .await
                    .ok()
            }
        })
        .await;
        Some(Self { driver, client })
    }

    /// Saves what the browser shows as `target/ui-screenshots/{name}.png`.
    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("a screenshot");
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    /// The text of the first element `css` selects, waiting for a page being loaded to show it.
    pub async fn text(&self, css: &str) -> String {
        self.client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css} on the page: {e}"))
            .text()
            .await
            .unwrap()
    }

    /// Opens `url` and waits for its page.
    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
    }

    /// The element `css` selects (panics when there is none).
    async fn element(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
    }

    /// Types `text` into the field `css` selects.
    pub async fn fill(&self, css: &str, text: &str) {
        self.element(css).await.send_keys(text).await.unwrap();
    }

    /// Chooses the option of value `value` in the list `css` selects.
    pub async fn choose(&self, css: &str, value: &str) {
        self.element(css)
            .await
            .select_by_value(value)
            .await
            .unwrap();
    }

    pub async fn click(&self, css: &str) {
        self.element(css).await.click().await.unwrap();
    }

    /// Clicks the button `css` selects and waits until the page it sends the form to has
    /// replaced this one (a click alone does not wait for the next page).
    pub async fn submit(&self, css: &str) {
        let page = self.element("html").await;
        self.click(css).await;
        super::eventually(Duration::from_secs(10), "the next page", || async {
            // The old page's root is gone once the next page is there.
            page.tag_name().await.is_err().then_some(())
        })
        .await;
        self.client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css("body"))
            .await
            .unwrap();
    }

    /// How many elements `css` selects.
    pub async fn count(&self, css: &str) -> usize {
        self.client.find_all(Locator::Css(css)).await.unwrap().len()
    }

    /// The number in attribute `name` of the element `css` selects.
    pub async fn number(&self, css: &str, name: &str) -> u64 {
        self.element(css)
            .await
            .attr(name)
            .await
            .unwrap()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{css} has no number in {name}"))
    }

    pub async fn stop(mut self) {
        let _ = self.client.close().await;
        let _ = self.driver.kill().await;
    }
}
