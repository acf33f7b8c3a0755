//! The chaos drill in short form: separate processes killed and restarted at random.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use switchyard_cli::tools::chaos::{ChaosOptions, run_chaos};
use switchyard_testkit::fixtures::{switchyard_bin, triage_dir};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_drill_loses_nothing() {
    let bin_dir = switchyard_bin().parent().unwrap().to_path_buf();
    let report = run_chaos(ChaosOptions {
        jobs: 400,
        seed: 7,
        bin_dir,
        pipeline: triage_dir(),
        faults: 4,
    })
    .await
    .unwrap();
    eprintln!("{}", serde_json::to_string(&report).unwrap());
    assert_eq!(report.restarts, 4);
    assert_eq!(report.lost, 0, "{report:?}");
    assert_eq!(report.results + report.dead_lettered, 400);
    assert_eq!(
        report.malformed_dead_lettered, report.malformed,
        "every malformed message is dead-lettered"
    );
    // Real tickets take the LLM stages too, and the simulator's counts are read across its
    // restarts: calls redone after kills are counted, never more than were made.
    assert!(report.llm_calls > 0, "{report:?}");
    assert!(report.llm_calls_redone <= report.llm_calls, "{report:?}");
}
