//! A real browser: headless Chromium opens a page on `localhost` that embeds the pixel from the edge
//! on `127.0.0.1` (another origin, as on a real site). The visit must land with the browser's own
//! User-Agent and the Referer its default referrer policy sends for a cross-origin image.

use std::process::Command;
use std::time::Duration;

use testkit::visits_log::parse;
use testkit::{spawn_edge, spawn_sink, wait_for_lines, Broker};
use tokio::net::TcpListener;
use warp::Filter;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_headless_chromium_visit_lands_with_its_user_agent_and_referrer() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let mut sink = spawn_sink(&broker, dir.path()).await;
    let edge = spawn_edge(&broker, "edge-a").await;

    let page = format!(
        r#"<!doctype html><html><body><h1>A site</h1><img src="{}?cb=1" alt="" width="1" height="1"></body></html>"#,
        edge.track_url()
    );
    let site = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let site_port = site.local_addr().unwrap().port();
    let routes =
        warp::path!("articles" / "hello.html").map(move || warp::reply::html(page.clone()));
    tokio::spawn(warp::serve(routes).incoming(site).run());
    let page_url = format!("http://localhost:{site_port}/articles/hello.html?utm=x");

    let profile = tempfile::tempdir().unwrap();
    let browser = tokio::task::spawn_blocking(move || {
        Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
            ])
            .args([
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(["--virtual-time-budget=5000", "--dump-dom", &page_url])
            .output()
            .expect("chromium must be installed: run scripts/test, which installs it")
    })
    .await
    .unwrap();
    let dom = String::from_utf8_lossy(&browser.stdout);
    assert!(
        dom.contains("A site"),
        "the page did not load: {}",
        String::from_utf8_lossy(&browser.stderr)
    );

    let lines = wait_for_lines(&sink.path, 1, Duration::from_secs(30)).await;
    edge.stop().await;
    sink.stop().await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = parse(&lines[0]);
    let user_agent = String::from_utf8(line.user_agent.unwrap()).unwrap();
    let referrer = String::from_utf8(line.referrer.unwrap()).unwrap();
    println!("chromium visit: user-agent {user_agent:?}, referrer {referrer:?}");
    assert!(
        user_agent.starts_with("Mozilla/5.0") && user_agent.contains("Chrome/"),
        "{user_agent}"
    );
    // strict-origin-when-cross-origin: another origin gets the page's origin only, no path or query.
    assert_eq!(referrer, format!("http://localhost:{site_port}/"));
    assert_eq!(line.ip, "127.0.0.1");
}
