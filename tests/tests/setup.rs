//! The README's test command sets up what the suite needs: with everything installed (as it
//! is while this suite runs), a second run finds nothing missing and installs nothing; and CI
//! runs exactly that command.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use switchyard_testkit::fixtures::repo_root;

#[test]
fn the_test_script_finds_nothing_missing_once_set_up() {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/test.sh"))
        .arg("--missing")
        .output()
        .unwrap();
    assert!(out.status.success());
    let missing = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        missing, "",
        "scripts/test.sh would install {missing}: the suite runs without it, so its set-up list is wrong"
    );
}

#[test]
fn ci_and_the_readme_run_the_same_test_command() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let ci = std::fs::read_to_string(repo_root().join(".ci/run")).unwrap();
    let command = "bash scripts/test.sh";
    assert!(
        readme.contains(&format!("```sh\n{command}\n```")),
        "README's test command block"
    );
    let last = ci
        .lines()
        .rfind(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .unwrap();
    assert_eq!(
        last.trim(),
        command,
        ".ci/run ends by running the README's command"
    );
}
