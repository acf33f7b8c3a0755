//! Operations end to end: a `switchyard run` process with `--metrics-addr` and `--admin-addr`
//! against the embedded broker and llm-sim. `/metrics` is scraped while jobs flow and its
//! counters must move; the admin page is loaded in headless Chromium (Debian's chromium and
//! chromedriver, driven over WebDriver), shows live numbers, and replays a dead letter.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchyard_testkit::Harness;
use switchyard_testkit::fixtures::{copy_llm_pipelines, ids, job, quiet_profile, run_command};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The sum of a metric's samples whose label set contains every `key="value"` in `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|kv| l.contains(kv)))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

async fn get(url: &str) -> (u16, String) {
    match reqwest::get(url).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

/// A tiny WebDriver client: enough to open a page, read text and click.
struct Browser {
    base: String,
    http: reqwest::Client,
    profile: std::path::PathBuf,
    _driver: Kill,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Killing chromedriver leaves its browser running: end it by its profile folder.
        let _ = Command::new("pkill")
            .arg("-f")
            .arg(self.profile.display().to_string())
            .status();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Browser {
    async fn start() -> Browser {
        assert!(
            std::path::Path::new("/usr/bin/chromedriver").exists()
                && std::path::Path::new("/usr/bin/chromium").exists(),
            "this test drives Debian's headless Chromium and ChromeDriver, which are missing: run `bash scripts/test.sh` (it installs them)"
        );
        let port = free_port();
        let driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let profile = tempfile::tempdir().unwrap().keep();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                         "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync",
                         format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let deadline = Instant::now() + Duration::from_secs(20);
        let session = loop {
            if let Ok(r) = http
                .post(format!("{base}/session"))
                .json(&caps)
                .send()
                .await
            {
                let v: Value = r.json().await.unwrap();
                if let Some(id) = v["value"]["sessionId"].as_str() {
                    break id.to_string();
                }
                panic!("chromedriver refused the session: {v}");
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        Browser {
            base: format!("{base}/session/{session}"),
            http,
            profile,
            _driver: Kill(driver),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        r.json::<Value>().await.unwrap()["value"].clone()
    }

    async fn open(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", json!({"url": url}))
            .await;
    }

    /// The WebDriver id of the first element matching `css`, if any.
    async fn element(&self, css: &str) -> Option<String> {
        let el = self
            .call(
                reqwest::Method::POST,
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        Some(el.as_object()?.values().next()?.as_str()?.to_string())
    }

    /// Text of the first element matching `css`, if any.
    async fn text(&self, css: &str) -> Option<String> {
        let id = self.element(css).await?;
        self.call(
            reqwest::Method::GET,
            &format!("/element/{id}/text"),
            json!({}),
        )
        .await
        .as_str()
        .map(str::to_string)
    }

    async fn attribute(&self, css: &str, name: &str) -> Option<String> {
        let id = self.element(css).await?;
        self.call(
            reqwest::Method::GET,
            &format!("/element/{id}/attribute/{name}"),
            json!({}),
        )
        .await
        .as_str()
        .map(str::to_string)
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self
            .element(css)
            .await
            .unwrap_or_else(|| panic!("no element {css}"));
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            json!({"text": text}),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let id = self
            .element(css)
            .await
            .unwrap_or_else(|| panic!("no element {css}"));
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            json!({}),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_and_the_admin_page_replays_a_dead_letter() {
    let h = Harness::start(quiet_profile(), 4).await;
    let tmp = tempfile::tempdir().unwrap();
    let pipelines = copy_llm_pipelines(tmp.path());
    let (metrics_port, admin_port) = (free_port(), free_port());
    let token = "test-admin-token-0123456789";
    let child = run_command(&pipelines, h.broker.bootstrap(), &h.sim().base_url())
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .args(["--admin-addr", &format!("127.0.0.1:{admin_port}")])
        .env("SWITCHYARD_ADMIN_TOKEN", token)
        .spawn()
        .unwrap();
    let _run = Kill(child);
    let metrics_url = format!("http://127.0.0.1:{metrics_port}");
    let admin_url = format!("http://127.0.0.1:{admin_port}/");

    // Alive at once; ready once the stages own partitions.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let (status, body) = get(&format!("{metrics_url}/readyz")).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {status} {body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(get(&format!("{metrics_url}/healthz")).await.0, 200);
    let (_, before) = get(&format!("{metrics_url}/metrics")).await;
    assert_eq!(metric(&before, "switchyard_jobs_total", &[]), 0.0);
    // Every metric says what it is; the limiter wait is a zero before any wait, not absent.
    assert!(
        before.contains("# HELP switchyard_limiter_wait_milliseconds_total "),
        "{before}"
    );
    assert!(
        before.contains("switchyard_limiter_wait_milliseconds_total{provider=\"simcloud\"} 0"),
        "{before}"
    );

    // 30 jobs, two of which every provider refuses (dead letters that may be replayed).
    let mut jobs: Vec<_> = (0..28)
        .map(|i| {
            job(
                &format!("ops-{i}"),
                "My card payment was declined twice today",
            )
        })
        .collect();
    for i in 0..2 {
        jobs.push(job(
            &format!("ops-dead-{i}"),
            "[sim:server_error:always] Where is my refund?",
        ));
    }
    h.produce(&jobs).await;
    let tally = h.collect(&ids(&jobs), 0, Duration::from_secs(60)).await;
    assert_eq!(tally.finished_count(&ids(&jobs)), 30);

    // Counters moved as the jobs flowed.
    let deadline = Instant::now() + Duration::from_secs(15);
    let after = loop {
        let (_, text) = get(&format!("{metrics_url}/metrics")).await;
        if metric(&text, "switchyard_consumer_lag", &[]) >= 0.0
            && text.contains("switchyard_consumer_lag{")
            && metric(&text, "switchyard_jobs_total", &["stage=\"triage\""]) >= 30.0
        {
            break text;
        }
        assert!(Instant::now() < deadline, "metrics did not move:\n{text}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let triage = |outcome: &str| {
        metric(
            &after,
            "switchyard_jobs_total",
            &["stage=\"triage\"", &format!("outcome=\"{outcome}\"")],
        )
    };
    assert_eq!(
        triage("result") + triage("escalated") + triage("dead_letter"),
        30.0,
        "{after}"
    );
    assert!(triage("dead_letter") >= 2.0, "{after}");
    assert!(
        metric(&after, "switchyard_attempts_total", &["class=\"ok\""]) >= 28.0,
        "{after}"
    );
    assert!(
        metric(
            &after,
            "switchyard_attempts_total",
            &["class=\"transient\""]
        ) >= 2.0,
        "{after}"
    );
    assert!(metric(&after, "switchyard_tokens_total", &["kind=\"prompt\""]) > 0.0);
    assert!(metric(&after, "switchyard_cost_micro_usd_total", &[]) > 0.0);
    assert!(after.contains("# HELP switchyard_jobs_total "), "{after}");
    assert!(
        after
            .lines()
            .any(|l| l.starts_with("switchyard_cost_micro_usd_total{") && l.contains("tenant=")),
        "{after}"
    );
    assert!(metric(&after, "switchyard_stage_duration_seconds_count", &[]) >= 30.0);
    assert!(after.contains("switchyard_in_flight_jobs{"), "{after}");
    assert!(after.contains("switchyard_breaker_state{"), "{after}");

    // The admin page spends money (replays): nobody without the token, no foreign Host, no
    // cross-site POST.
    let http = reqwest::Client::new();
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(status(http.get(&admin_url).send().await.unwrap()), 401);
    assert_eq!(
        status(
            http.get(&admin_url)
                .bearer_auth("wrong-token-0123456789")
                .send()
                .await
                .unwrap()
        ),
        401
    );
    assert_eq!(
        status(
            http.get(&admin_url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
        ),
        200
    );
    // Auto-refresh on request; the dead letters filtered by job and tenant.
    let page = |query: &'static str| {
        let http = http.clone();
        let url = format!("{admin_url}{query}");
        async move {
            http.get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let refreshing = page("?refresh=10").await;
    assert!(
        refreshing.contains("<meta http-equiv=\"refresh\" content=\"10\">"),
        "{refreshing}"
    );
    let one = page("?job_id=ops-dead-1&tenant=acme").await;
    assert!(one.contains("data-job=\"ops-dead-1\""), "{one}");
    assert!(!one.contains("data-job=\"ops-dead-0\""), "{one}");
    let other_tenant = page("?job_id=ops-dead-1&tenant=globex").await;
    assert!(!other_tenant.contains("data-job=\"ops-dead-1\""));
    assert_eq!(
        status(
            http.get(&admin_url)
                .bearer_auth(token)
                .header("host", "rebound.example:80")
                .send()
                .await
                .unwrap()
        ),
        403,
        "a foreign Host header (DNS rebinding)"
    );
    // A session, as the login form makes one (the cookie is a session id, not the token).
    let login = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{admin_url}login"))
        .header("origin", format!("http://127.0.0.1:{admin_port}"))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    let session = login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|c| c.split(';').next())
        .expect("the login sets a session cookie")
        .to_string();
    assert!(!session.contains(token), "the cookie is not the token");
    assert_eq!(
        status(
            http.get(&admin_url)
                .header("cookie", &session)
                .send()
                .await
                .unwrap()
        ),
        200
    );
    assert_eq!(
        status(
            http.post(format!("{admin_url}dlq/replay"))
                .header("cookie", &session)
                .header("origin", "http://evil.example")
                .form(&[("job_id", "ops-dead-0")])
                .send()
                .await
                .unwrap()
        ),
        403,
        "a cross-site POST carried by the session cookie"
    );

    // The admin page in a real browser: sign in, live numbers, then a replay.
    let b = Browser::start().await;
    b.open(&admin_url).await;
    b.type_into("#token", token).await;
    b.click("#sign-in").await;
    let results: u64 = b
        .text("#stages tr[data-stage=\"triage\"] .jobs-result")
        .await
        .unwrap()
        .parse()
        .unwrap();
    assert!(results > 0, "no live numbers on the admin page");
    assert!(
        b.text("#escalation-rate").await.unwrap().ends_with('%'),
        "escalation rate missing"
    );
    assert!(b.text("#providers").await.unwrap().contains("simcloud"));
    assert!(b.text("#cost").await.unwrap().contains("acme"));
    let replayed = b
        .attribute("button.replay", "data-job")
        .await
        .expect("a replay button for a dead letter");
    assert!(replayed.starts_with("ops-dead-"), "{replayed}");
    b.click("button.replay").await;
    // The form posts and the browser loads the confirmation page.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let confirmation = b.text("#replayed").await.unwrap_or_default();
        if confirmation.contains(&replayed) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no replay confirmation: `{confirmation}`"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The job ran again (it fails again, by its directive): a second dead letter, redriven once.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        b.open(&format!("{admin_url}?reason=provider_exhausted"))
            .await;
        let rows = b.text("#dlq").await.unwrap_or_default();
        let redriven = b
            .text(&format!("#dlq tr[data-job=\"{replayed}\"] .redrives"))
            .await;
        if rows
            .lines()
            .any(|l| l.contains(&replayed) && l.contains(" 1 "))
            || redriven.as_deref() == Some("1")
        {
            break;
        }
        assert!(Instant::now() < deadline, "the replay never ran:\n{rows}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// OTLP: with the standard `OTEL_EXPORTER_OTLP_ENDPOINT`, a `switchyard run` exports the
/// GenAI spans of its provider calls and its metrics to a collector (a local stand-in that
/// keeps what it receives, OTLP/HTTP protobuf).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spans_and_metrics_reach_an_otlp_collector() {
    type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;
    async fn keep(
        axum::extract::State(got): axum::extract::State<Received>,
        uri: axum::http::Uri,
        body: axum::body::Bytes,
    ) -> &'static str {
        got.lock()
            .unwrap()
            .push((uri.path().to_string(), body.to_vec()));
        ""
    }
    let got: Received = Default::default();
    let app = axum::Router::new()
        .fallback(axum::routing::post(keep))
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let h = Harness::start(quiet_profile(), 1).await;
    let tmp = tempfile::tempdir().unwrap();
    let pipelines = copy_llm_pipelines(tmp.path());
    let child = run_command(&pipelines, h.broker.bootstrap(), &h.sim().base_url())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}"))
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "500")
        .spawn()
        .unwrap();
    let _run = Kill(child);
    let jobs = vec![job("otlp-1", "My card payment was declined twice today")];
    h.produce(&jobs).await;
    let tally = h.collect(&ids(&jobs), 0, Duration::from_secs(60)).await;
    assert_eq!(tally.finished_count(&ids(&jobs)), 1);
    let contains =
        |hay: &[u8], needle: &str| hay.windows(needle.len()).any(|w| w == needle.as_bytes());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = got.lock().unwrap().clone();
        let traces = seen.iter().any(|(path, body)| {
            path == "/v1/traces"
                && contains(body, "gen_ai.request.model")
                && contains(body, "switchyard")
        });
        let metrics = seen
            .iter()
            .any(|(path, body)| path == "/v1/metrics" && contains(body, "switchyard_jobs_total"));
        if traces && metrics {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the collector got {:?} (traces {traces}, metrics {metrics})",
            seen.iter()
                .map(|(p, b)| (p.clone(), b.len()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
