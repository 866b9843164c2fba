//! The whole flow in a real browser: tests/browser/ holds a page
//! (TypeScript generated from proto/, @connectrpc/connect-web's gRPC-web
//! transport) that signs up, logs in with cookies, opens a session, adds
//! tacos with options and a drink, places an order and watches it reach
//! CONFIRMED through the gateway, and shows a cookie call without the CSRF
//! header refused. Playwright drives Debian's Chromium; the final page is
//! saved as a screenshot. Needs `npm ci` in tests/browser and
//! /usr/bin/chromium (`.ci/run` installs both and sets
//! TRELLIS_REQUIRE_BROWSER=1); skipped loudly otherwise.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use trellis_cli::ServiceName;

#[tokio::test]
async fn a_browser_orders_tacos_through_the_gateway() {
    let project = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let missing = [
        (
            project.join("node_modules/.bin/esbuild"),
            "cd tests/browser && npm ci",
        ),
        ("/usr/bin/chromium".into(), "apt-get install chromium"),
    ]
    .into_iter()
    .find(|(path, _)| !path.exists());
    if let Some((path, fix)) = missing {
        assert!(
            std::env::var_os("TRELLIS_REQUIRE_BROWSER").is_none(),
            "the browser test is required but {} is missing ({fix})",
            path.display()
        );
        return loud(&format!(
            "SKIPPED: browser test ({} is missing: {fix})",
            path.display()
        ));
    }

    // The page's own origin, another port than the gateway's: CORS with
    // credentials is what lets it call.
    let page_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let origin = format!("http://127.0.0.1:{page_port}");
    let data_dir = temp_dir("browser");
    let args = trellis_cli::for_up(&up_args(
        &data_dir,
        &[&format!("--gateway-allowed-origins={origin}")],
    ));
    let running = trellis_cli::start(&ServiceName::ALL, &args).await.unwrap();
    let gateway = format!("http://{}", running.address(ServiceName::Gateway).unwrap());
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-order-confirmed.png");
    let output = tokio::task::spawn_blocking({
        let (project, screenshot) = (project.clone(), screenshot.clone());
        move || {
            Command::new("node")
                .arg(project.join("run.mjs"))
                .arg(&gateway)
                .arg(page_port.to_string())
                .arg(&screenshot)
                .output()
        }
    })
    .await
    .unwrap()
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}\nscreenshot: {}", screenshot.display());
    assert!(
        output.status.success(),
        "browser run failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("order: CONFIRMED"), "{stdout}");
    assert!(stdout.contains("csrf: PERMISSION_DENIED"), "{stdout}");
    assert!(screenshot.exists());

    running.shutdown().await.unwrap();
    std::fs::remove_dir_all(data_dir).unwrap();
}
