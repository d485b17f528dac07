//! Who may read the admin API, against the real process: with a token, `GET /connections`
//! (client addresses) needs it and `/metrics`, `/status` and `/health` stay open; with
//! `protect_reads = true`, `/metrics` and `/status` need it too; wrong and missing tokens are
//! answered 401; `ringlb connections` sends the token from `RINGLB_ADMIN_TOKEN` or the config;
//! an admin address other hosts can reach without a token is refused at load.

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::admin::{get, http};
use common::{Backend, Ringlb, config, runtime, service_config, temp_dir};

const TOKEN: &str = "s3cret-token";

fn start(admin_extra: &str) -> (Ringlb, SocketAddr) {
    let rt = runtime();
    let echo = rt.block_on(Backend::echo(None));
    let text = format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n{admin_extra}\n",
        config(
            "",
            &[service_config("echo", "round_robin", &[echo.addr], "")]
        )
    );
    let lb = Ringlb::start(&text);
    let admin = lb.admin.unwrap();
    // The runtime (and the backend) are not needed: the API is what is asked.
    drop(rt);
    (lb, admin)
}

/// The status of `GET path` with `token`.
fn code(admin: SocketAddr, path: &str, token: Option<&str>) -> u16 {
    http(admin, "GET", path, None, token).code
}

#[test]
fn connections_need_the_token_and_reads_stay_open() {
    let (lb, admin) = start("");
    for wrong in [
        None,
        Some("guess"),
        Some("s3cret-tokex"),
        Some("s3cret"),
        Some("s3cret-token-and-more"),
    ] {
        let answer = http(admin, "GET", "/connections", None, wrong);
        assert_eq!(answer.code, 401, "{wrong:?}: {}", answer.body);
        assert!(answer.body.contains("Bearer"), "{}", answer.body);
    }
    assert_eq!(code(admin, "/connections", Some(TOKEN)), 200);
    for open in ["/metrics", "/status", "/health"] {
        assert_eq!(code(admin, open, None), 200, "{open} is open");
    }

    // `ringlb connections`: the token from the environment, else from the config.
    let run = |env: Option<&str>, args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ringlb"));
        c.arg("connections")
            .args(args)
            .env_remove("RINGLB_ADMIN_TOKEN");
        if let Some(t) = env {
            c.env("RINGLB_ADMIN_TOKEN", t);
        }
        c.output().unwrap()
    };
    let address = admin.to_string();
    let without = run(None, &["--admin", &address]);
    assert!(!without.status.success());
    let stderr = String::from_utf8_lossy(&without.stderr);
    assert!(stderr.contains("401"), "{stderr}");
    let with_env = run(Some(TOKEN), &["--admin", &address]);
    assert!(
        with_env.status.success(),
        "{}",
        String::from_utf8_lossy(&with_env.stderr)
    );
    // A config naming the running API (the one it runs on says port 0) and the token.
    let dir = temp_dir();
    let path = dir.path().join("client.toml");
    let text = std::fs::read_to_string(&lb.config_path).unwrap().replace(
        "listen = \"127.0.0.1:0\"\ntoken",
        &format!("listen = \"{admin}\"\ntoken"),
    );
    std::fs::write(&path, text).unwrap();
    let with_config = run(None, &["--config", path.to_str().unwrap()]);
    assert!(
        with_config.status.success(),
        "{}",
        String::from_utf8_lossy(&with_config.stderr)
    );
}

#[test]
fn protect_reads_puts_metrics_and_status_behind_the_token() {
    let (_lb, admin) = start("protect_reads = true");
    for path in ["/metrics", "/status", "/connections"] {
        assert_eq!(code(admin, path, None), 401, "{path} without a token");
        assert_eq!(
            code(admin, path, Some("nope")),
            401,
            "{path} with a wrong one"
        );
        assert_eq!(code(admin, path, Some(TOKEN)), 200, "{path} with the token");
    }
    assert_eq!(
        get(admin, "/health").code,
        200,
        "health checkers need no token"
    );
}

#[test]
fn an_admin_api_open_to_other_hosts_needs_a_token_or_allow_open() {
    let dir = temp_dir();
    let check = |admin: &str| {
        let path = dir.path().join("admin.toml");
        let text = format!(
            "{}\n[admin]\n{admin}\n",
            config(
                "",
                &[service_config(
                    "echo",
                    "round_robin",
                    &["127.0.0.1:6379".parse().unwrap()],
                    ""
                )]
            )
        );
        std::fs::write(&path, text).unwrap();
        Command::new(env!("CARGO_BIN_EXE_ringlb"))
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap()
    };
    for open in [
        "listen = \"0.0.0.0:9090\"",
        "listen = \"[::]:9090\"",
        "listen = \"192.0.2.1:9090\"",
    ] {
        let out = check(open);
        assert!(!out.status.success(), "{open} without a token is refused");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("is reachable from other hosts and the admin API has no token")
                && stderr.contains("allow_open = true"),
            "{stderr}"
        );
    }
    for fine in [
        "listen = \"0.0.0.0:9090\"\ntoken = \"t\"",
        "listen = \"0.0.0.0:9090\"\nallow_open = true",
        "listen = \"127.0.0.1:9090\"",
        "listen = \"[::1]:9090\"",
    ] {
        let out = check(fine);
        assert!(
            out.status.success(),
            "{fine}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
