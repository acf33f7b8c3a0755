//! `switchyard report` end to end: the support-triage pipeline runs a few dozen tickets on an
//! embedded broker against llm-sim, the report reads the topics back and has a simulated model
//! write the narrative, and headless Chromium renders the page.
//!
//! Needs Debian's `chromium` at /usr/bin/chromium (`bash scripts/test.sh` installs it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use switchyard::config::Pipeline;
use switchyard::envelope::{Intake, now};
use switchyard::kafka::client::send_all;
use switchyard_cli::tools::demo::sample_payloads;
use switchyard_cli::tools::report::{Author, Report, ReportOptions, run_report};
use switchyard_testkit::Harness;

const CHROMIUM: &str = "/usr/bin/chromium";

fn chromium() -> PathBuf {
    let path = Path::new(CHROMIUM);
    assert!(
        path.is_file(),
        "{CHROMIUM} is missing: this test renders the report in headless Chromium; run \
         `bash scripts/test.sh` (it installs Debian's `chromium`)"
    );
    path.to_path_buf()
}

/// Runs headless Chromium on `page` with `extra` arguments; returns stdout.
async fn headless(chromium: &Path, profile: &Path, extra: &[String], page: &Path) -> String {
    let mut cmd = tokio::process::Command::new(chromium);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(extra)
    .arg(format!("file://{}", page.display()))
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("chromium did not finish within 90 s")
        .expect("cannot run chromium");
    assert!(
        out.status.success(),
        "chromium failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A result as the pipeline would publish it, with text a browser must not take as markup.
fn crafted_result(pipeline: &str, id: &str, summary: &str, age: time::Duration) -> Vec<u8> {
    let done = now() - age;
    let r = json!({
        "job_id": id, "tenant": "acme", "pipeline": pipeline, "stage": "triage",
        "output": {"category": "<script>alert('category')</script>", "urgency": "high",
                   "sentiment": "negative", "summary": summary, "draft_reply": "x",
                   "confidence": 0.9},
        "confidence": 0.9, "needs_review": false, "review_reason": null,
        "escalations": [], "attempts": [], "cost_micro_usd": 0,
        "created_at": (done - time::Duration::seconds(1))
            .format(&time::format_description::well_known::Rfc3339).unwrap(),
        "completed_at": done.format(&time::format_description::well_known::Rfc3339).unwrap(),
        "latency_ms": 1000
    });
    let _: switchyard::envelope::JobResult = serde_json::from_value(r.clone()).unwrap();
    serde_json::to_vec(&r).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn report_of_a_real_run_renders_in_headless_chromium() {
    let chromium = chromium();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines/support-triage");
    // The LLM stages: the jobs below steer the simulated models with directives.
    let pipeline = Pipeline::load(&dir).unwrap().llm_stages_only();
    let payloads = sample_payloads(&pipeline).unwrap();

    let mut profile = llm_sim::Profile::default_profile().unwrap();
    profile.latency_scale = 0.02;
    let sim = llm_sim::spawn(profile, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    // The pipeline, as `switchyard run` runs it, on the test kit's harness.
    let mut h = Harness::new(pipeline, 4, &[]).unwrap().with_sim(sim);
    assert!(h.start_stages("report-test", Duration::from_secs(30)).await);
    let pipeline = h.pipeline.clone();
    let kafka = h.kafka.clone();

    // 36 ordinary tickets, 3 that every provider fails (dead letters), 2 the cheap model is
    // unsure of (escalations).
    let text = |i: usize| {
        payloads[i % payloads.len()]["text"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let mut jobs: Vec<Intake> = Vec::new();
    for i in 0..41 {
        let prefix = match i {
            36..=38 => "[sim:server_error:always] ",
            39..=40 => "[sim:low_confidence@cheap] ",
            _ => "",
        };
        jobs.push(Intake {
            job_id: format!("report-{i:03}").into(),
            tenant: "acme".into(),
            pipeline: pipeline.name.clone(),
            payload: json!({"text": format!("{prefix}{}", text(i))}),
            created_at: now(),
            metadata: Default::default(),
            redrive_count: 0,
        });
    }
    h.send_jobs(&jobs).await.unwrap();
    let expected: HashSet<String> = jobs.iter().map(|j| j.job_id.to_string()).collect();
    let tally = h
        .read_back(&expected, 0, Duration::from_secs(60), |_, _| {})
        .await
        .unwrap();
    assert_eq!(tally.finished_count(&expected), expected.len());
    h.stop_stages().await.unwrap();
    h.sim.take().unwrap().stop().await;

    // Six results whose text is markup, one from before the window, one message that is no
    // envelope at all.
    let mut extra: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| {
            let summary = if i == 0 {
                "<img src=x onerror=alert(1)> & \"quoted\"".to_string()
            } else {
                format!("</blockquote><b>bold {i}</b>")
            };
            let id = format!("crafted-{i}");
            let body = crafted_result(&pipeline.name, &id, &summary, time::Duration::minutes(5));
            (id, body)
        })
        .collect();
    extra.push((
        "old".into(),
        crafted_result(&pipeline.name, "old", "old", time::Duration::days(3)),
    ));
    extra.push((
        "previous".into(),
        crafted_result(
            &pipeline.name,
            "previous",
            "earlier",
            time::Duration::hours(30),
        ),
    ));
    extra.push(("garbage".into(), b"not an envelope".to_vec()));
    send_all(&kafka, &pipeline.topics.results, &extra)
        .await
        .unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out").join("report.html");
    let (report, files) = run_report(ReportOptions {
        pipeline: pipeline.clone(),
        kafka: kafka.clone(),
        since: Duration::from_secs(24 * 3600),
        out: out.clone(),
        sim: true,
        idle: Duration::from_secs(2),
    })
    .await
    .unwrap();
    drop(h);

    // The figures.
    let a = &report.aggregates;
    assert_eq!(a.jobs, 41 + 6, "the old result is outside the window");
    // The previous 24 hours hold one result: the comparison is against it.
    let c = report.comparison.as_ref().expect("a comparison");
    assert_eq!(c.previous_jobs, 1, "{c:?}");
    assert!(c.escalation_rate.now > 0.0 && c.escalation_rate.before == 0.0);
    assert!(
        report.narrative.simulated,
        "--sim writes a simulated narrative"
    );
    assert_eq!(a.noun, "ticket");
    assert_eq!(a.results + a.dead_letters.unresolved, a.jobs);
    assert_eq!(a.unreadable, 1);
    let exhausted = a
        .dead_letters
        .by_reason
        .iter()
        .find(|c| c.name == "provider_exhausted")
        .map_or(0, |c| c.count);
    assert!(exhausted >= 3, "{:?}", a.dead_letters);
    assert!(a.escalation.escalated >= 2, "{:?}", a.escalation);
    assert_eq!(a.attempts_source, "ledger");
    assert!(a.cost.total_micro_usd > 0);
    assert!(a.cost.per_ticket_micro_usd > 0);
    assert!(a.stages.iter().any(|s| s.name == "triage"));
    assert!(a.stages.iter().any(|s| s.name == "resolve"));
    assert!(!a.providers.is_empty());
    assert!(a.providers.iter().all(|p| p.p95_ms >= p.p50_ms));
    assert!(!a.by_urgency.is_empty());
    let crafted = "<script>alert('category')</script>";
    let count = a.by_category.iter().find(|c| c.name == crafted).unwrap();
    assert_eq!(count.count, 6);
    assert!(
        a.recurring.iter().any(|r| r.category == crafted),
        "six tickets make it a recurring issue: {:?}",
        a.recurring
    );
    assert!(a.recurring.iter().all(|r| !r.examples.is_empty()));
    assert_eq!(
        report.narrative.author,
        Author::Model,
        "{:?}",
        report.narrative.note
    );
    assert_eq!(report.narrative.model.as_deref(), Some("simlab/sage-pro"));
    assert!(report.narrative.calls >= 1);

    // The files.
    assert_eq!(files.html, out);
    let json: Report =
        serde_json::from_str(&std::fs::read_to_string(&files.json).unwrap()).unwrap();
    assert_eq!(json.aggregates.jobs, a.jobs);
    assert_eq!(json.aggregates.by_category, a.by_category);
    assert_eq!(json.narrative.text.headline, report.narrative.text.headline);
    let md = std::fs::read_to_string(&files.markdown).unwrap();
    assert!(md.starts_with("# "), "{md}");
    assert!(md.contains("## Volume by category"), "{md}");
    assert!(md.contains("## Recurring issues"), "{md}");
    assert!(!md.contains("<script"), "{md}");

    // The page, as a browser builds it.
    let dom = headless(
        &chromium,
        &tmp.path().join("chromium-dom"),
        &["--dump-dom".to_string()],
        &out,
    )
    .await;
    for id in [
        "chart-category",
        "chart-urgency",
        "chart-providers",
        "chart-provider-cost",
        "chart-trend-rates",
        "comparison",
        "simulated-banner",
    ] {
        assert!(dom.contains(&format!("id=\"{id}\"")), "{id} missing");
    }
    assert!(dom.matches("<svg").count() >= 4, "four charts");
    assert!(dom.matches("<rect").count() >= 8, "bars");
    assert!(
        !dom.contains("<script"),
        "user text became a script element"
    );
    assert!(!dom.contains("<img"), "user text became an img element");
    assert!(!dom.contains("<b>bold"), "user text became markup");
    assert!(dom.contains("&lt;img src=x onerror=alert(1)&gt;"));
    assert!(dom.contains(&report.narrative.text.headline.replace('&', "&amp;")));

    let png = tmp.path().join("report.png");
    headless(
        &chromium,
        &tmp.path().join("chromium-shot"),
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1000,2400".to_string(),
            "--hide-scrollbars".to_string(),
        ],
        &out,
    )
    .await;
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(
        bytes.len() > 20_000,
        "{} bytes: an empty page?",
        bytes.len()
    );
    if let Ok(keep) = std::env::var("SWITCHYARD_REPORT_TEST_KEEP") {
        let keep = Path::new(&keep);
        std::fs::create_dir_all(keep).unwrap();
        for f in [&files.html, &files.json, &files.markdown, &png] {
            std::fs::copy(f, keep.join(f.file_name().unwrap())).unwrap();
        }
    }
}
