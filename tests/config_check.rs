//! `ringlb check --config FILE` end to end: every example under `config/` passes and its summary
//! names each service; every file under `tests/fixtures/broken/` fails, and the error on stderr
//! names the file, the line (and column) and says what is wrong; so does a file that is not
//! UTF-8, at its first invalid byte.
//!
//! A broken fixture starts with comment lines `# expect: <part of the message>`, `# line: <N>`
//! and, optionally, `# column: <N>`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn toml_files(rel: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

fn check(config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .arg("check")
        .arg("--config")
        .arg(config)
        .output()
        .expect("running ringlb check")
}

/// The value of the `# key: value` comment among the first lines of `text`.
fn header<'t>(text: &'t str, key: &str) -> Option<&'t str> {
    let prefix = format!("# {key}: ");
    text.lines()
        .take_while(|l| l.starts_with('#'))
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map(str::trim_end)
}

#[test]
fn check_accepts_every_example_config_and_names_its_services() {
    let files = toml_files("config");
    assert!(!files.is_empty(), "no example configs");
    for path in files {
        let out = check(&path);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{}: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            path.display(),
            out.status
        );
        let text = std::fs::read_to_string(&path).expect("reading the example");
        let raw: toml::Table = toml::from_str(&text).expect("examples are valid TOML");
        let services = raw["service"].as_array().expect("[[service]] tables");
        assert!(!services.is_empty());
        for service in services {
            let name = service["name"].as_str().expect("service name");
            assert!(
                stdout.contains(name),
                "{}: the summary does not name service {name:?}:\n{stdout}",
                path.display()
            );
        }
    }
}

#[test]
fn check_rejects_every_broken_fixture_naming_file_line_and_problem() {
    let files = toml_files("tests/fixtures/broken");
    assert!(files.len() >= 15, "only {} broken fixtures", files.len());
    for path in files {
        let text = std::fs::read_to_string(&path).expect("reading the fixture");
        let name = path.display();
        let expect = header(&text, "expect").unwrap_or_else(|| panic!("{name}: no `# expect:`"));
        let line = header(&text, "line").unwrap_or_else(|| panic!("{name}: no `# line:`"));
        let position = match header(&text, "column") {
            Some(column) => format!(":{line}:{column}:"),
            None => format!(":{line}:"),
        };
        let out = check(&path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{name}: `check` succeeded:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let file_name = path.file_name().expect("a file name").to_string_lossy();
        assert!(
            stderr.contains(file_name.as_ref()),
            "{name}: stderr does not name the file:\n{stderr}"
        );
        assert!(
            stderr.contains(&format!("{file_name}{position}")),
            "{name}: stderr lacks `{file_name}{position}`:\n{stderr}"
        );
        assert!(
            stderr.contains(expect),
            "{name}: stderr lacks {expect:?}:\n{stderr}"
        );
    }
}

/// A file removed on drop.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn check_locates_the_first_byte_of_a_file_that_is_not_utf8() {
    let file = TempFile(std::env::temp_dir().join(format!(
        "ringlb-config-check-{}-latin1.toml",
        std::process::id()
    )));
    // A valid config but for one Latin-1 "é" (0xE9) in a comment on line 3, after "# caf".
    let mut bytes = b"[[service]]\nname = \"redis\"\n# caf".to_vec();
    bytes.push(0xE9);
    bytes.extend_from_slice(
        b"\nlisten = \"127.0.0.1:0\"\nbackend = [{ address = \"127.0.0.1:6379\" }]\n",
    );
    std::fs::write(&file.0, &bytes).expect("writing the file");
    let out = check(&file.0);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "`check` succeeded");
    let expected = format!(
        "{}:3:6: the file is not UTF-8: invalid byte 0xE9 at byte offset 32; save it as UTF-8",
        file.0.display()
    );
    assert!(
        stderr.contains(&expected),
        "stderr lacks {expected:?}:\n{stderr}"
    );
}
