//! JSON logs through a real ringlb process: with `log_format = "json"` every stderr line is one
//! JSON object, and each connection's access-log object has its service, client, backend, bytes
//! each way, duration and end (a connection that found no backend too); `--log-format` wins
//! over the config's choice.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use common::{Backend, Ringlb, config, refused_addr, runtime, service_config};

/// Every line of `log` parsed as JSON; panics (naming the line) when one is not.
fn objects(log: &[String]) -> Vec<Value> {
    log.iter()
        .map(|line| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            assert!(value.is_object(), "not an object: {line}");
            value
        })
        .collect()
}

/// The access-log objects in `log`.
fn access(log: &[String]) -> Vec<Value> {
    objects(log)
        .into_iter()
        .filter(|v| v["target"] == "ringlb::access")
        .collect()
}

#[test]
fn every_line_is_json_and_the_access_log_object_has_every_field() {
    let rt = runtime();
    let backend = rt.block_on(Backend::echo(None));
    let lb = Ringlb::start(&config(
        "log_format = \"json\"",
        &[
            service_config("web", "round_robin", &[backend.addr], "access_log = true"),
            service_config(
                "nowhere",
                "round_robin",
                &[refused_addr()],
                "access_log = true\nretries = 0",
            ),
        ],
    ));

    // One connection through: 5 bytes up, 5 echoed down, then closed by the client.
    let mut client = std::net::TcpStream::connect(lb.addr("web")).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let local: SocketAddr = client.local_addr().unwrap();
    client.write_all(b"hello").unwrap();
    let mut echoed = [0; 5];
    client.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"hello");
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    drop(client);

    // One connection that no backend takes.
    let mut refused = std::net::TcpStream::connect(lb.addr("nowhere")).unwrap();
    refused
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let refused_local = refused.local_addr().unwrap();
    let _ = refused.read_to_end(&mut Vec::new());

    for end in ["\"end\":\"closed\"", "\"end\":\"no_backend_reached\""] {
        assert!(
            lb.wait_log(end, Duration::from_secs(10)).is_some(),
            "no access log with {end}:\n{}",
            lb.log_text()
        );
    }
    let log = lb.log.lock().unwrap().clone();
    let all = objects(&log);
    let running = all
        .iter()
        .find(|v| v["message"] == "ringlb running")
        .unwrap_or_else(|| panic!("no start-up object in\n{}", log.join("\n")));
    assert_eq!(running["level"], "INFO");
    assert_eq!(running["workers"], 2);
    assert!(
        humantime::parse_rfc3339(running["timestamp"].as_str().unwrap()).is_ok(),
        "{running}"
    );

    let lines = access(&log);
    let web = lines
        .iter()
        .find(|v| v["service"] == "web")
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(web["level"], "INFO");
    assert_eq!(web["client"], local.to_string());
    assert_eq!(web["backend"], backend.addr.to_string());
    assert_eq!(web["bytes_up"], 5);
    assert_eq!(web["bytes_down"], 5);
    assert!(web["duration_ms"].as_u64().is_some(), "{web}");
    assert_eq!(web["end"], "closed");
    assert!(web["timestamp"].is_string(), "{web}");

    let nowhere = lines
        .iter()
        .find(|v| v["service"] == "nowhere")
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(nowhere["client"], refused_local.to_string());
    assert_eq!(nowhere["backend"], "-");
    assert_eq!(
        (&nowhere["bytes_up"], &nowhere["bytes_down"]),
        (&0.into(), &0.into())
    );
    assert_eq!(nowhere["end"], "no_backend_reached");
}

/// Runs `ringlb run` on `config` with `args`; returns its stderr lines up to and including the
/// one with "ringlb running" (then stops it).
fn first_lines(config: &str, args: &[&str]) -> Vec<String> {
    let dir = common::temp_dir();
    let path = dir.path().join("ringlb.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .args(["run", "--config"])
        .arg(&path)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let done = line.contains("ringlb running");
            if tx.send(line).is_err() || done {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) {
        let done = line.contains("ringlb running");
        lines.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        lines.last().is_some_and(|l| l.contains("ringlb running")),
        "ringlb did not start: {lines:?}"
    );
    lines
}

#[test]
fn the_command_line_format_wins_over_the_config() {
    let rt = runtime();
    let backend = rt.block_on(Backend::echo(None));
    let service = service_config("web", "round_robin", &[backend.addr], "");

    let json = first_lines(
        &config("log_format = \"text\"", std::slice::from_ref(&service)),
        &["--log-format", "json"],
    );
    assert!(!objects(&json).is_empty());

    let text = first_lines(
        &config("log_format = \"json\"", std::slice::from_ref(&service)),
        &["--log-format", "text"],
    );
    for line in &text {
        assert!(
            serde_json::from_str::<Value>(line).is_err(),
            "a JSON line with --log-format text: {line}"
        );
    }
    assert!(text.last().unwrap().contains("INFO"), "{text:?}");
}
