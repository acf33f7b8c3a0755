//! The `switchyard` binary's own checks, run as a user would run them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use switchyard_testkit::fixtures::copy_pipelines;

fn validate(dir: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("validate")
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn shipped_pipeline_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines/support-triage");
    let (ok, stdout, stderr) = validate(&dir);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("stage triage"), "{stdout}");
    assert!(stdout.contains("stage resolve"), "{stdout}");
}

#[test]
fn misspelled_key_is_reported_with_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    copy_pipelines(tmp.path());
    let yaml = tmp.path().join("pipelines/support-triage/pipeline.yaml");
    let text = std::fs::read_to_string(&yaml).unwrap();
    let line = text
        .lines()
        .position(|l| l.trim_start().starts_with("min_confidence: 0.68"))
        .unwrap()
        + 1;
    std::fs::write(
        &yaml,
        text.replacen("min_confidence: 0.68", "min_confidense: 0.62", 1),
    )
    .unwrap();

    let (ok, _, stderr) = validate(yaml.parent().unwrap());
    assert!(!ok, "a misspelled key must fail validation");
    let expected = format!("{}:{line}:", yaml.display());
    assert!(
        stderr.contains(&expected),
        "wanted `{expected}` in:\n{stderr}"
    );
    assert!(
        stderr.contains("unknown field `min_confidense`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("min_confidence"),
        "the message lists the valid keys: {stderr}"
    );
}

#[test]
fn route_to_an_unknown_model_names_the_line_and_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    copy_pipelines(tmp.path());
    let yaml = tmp.path().join("pipelines/support-triage/pipeline.yaml");
    let text = std::fs::read_to_string(&yaml).unwrap();
    let line = text
        .lines()
        .position(|l| l.contains("simlab/sage-max"))
        .unwrap()
        + 1;
    std::fs::write(&yaml, text.replace("simlab/sage-max", "simlab/sage-maxx")).unwrap();

    let (ok, _, stderr) = validate(yaml.parent().unwrap());
    assert!(!ok);
    assert!(
        stderr.contains(&format!("pipeline.yaml:{line}:")),
        "{stderr}"
    );
    assert!(stderr.contains("simlab/sage-maxx"), "{stderr}");
    assert!(stderr.contains("add it to the catalog"), "{stderr}");
}

#[test]
fn prompt_using_a_field_the_jobs_lack_fails_validation() {
    let tmp = tempfile::tempdir().unwrap();
    copy_pipelines(tmp.path());
    let prompt = tmp
        .path()
        .join("pipelines/support-triage/prompts/triage.md");
    let text = std::fs::read_to_string(&prompt).unwrap();
    std::fs::write(
        &prompt,
        format!("{text}\nAccount: {{{{ job.payload.account_number }}}}\n"),
    )
    .unwrap();

    let (ok, _, stderr) = validate(&tmp.path().join("pipelines/support-triage"));
    assert!(!ok);
    assert!(stderr.contains("prompts/triage.md"), "{stderr}");
    assert!(stderr.contains("does not render"), "{stderr}");
}

#[test]
fn relative_paths_are_from_the_working_directory_never_the_build_tree() {
    let cwd = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(args)
            .current_dir(cwd.path())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Nothing here: the build tree's catalog and pipeline are not used instead.
    let (ok, stdout, stderr) = run(&["models"]);
    assert!(!ok, "{stdout}");
    assert!(!stdout.contains("simlab/"), "{stdout}");
    assert!(stderr.contains("pipelines/catalog.yaml"), "{stderr}");
    let (ok, _, stderr) = run(&["validate", "pipelines/support-triage"]);
    assert!(!ok);
    assert!(stderr.contains("working directory"), "{stderr}");
    // With a copy here, the same relative paths work.
    copy_pipelines(cwd.path());
    let (ok, stdout, stderr) = run(&["validate", "pipelines/support-triage"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("stage triage"), "{stdout}");
    let (ok, stdout, stderr) = run(&["models"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("simlab/"), "{stdout}");
}
