use ringlb::config::*;
use ringlb::control::*;
use ringlb::dataplane::DataPlane;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn smoke() {
    let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ea = echo.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in echo.incoming() {
            let mut s = s.unwrap();
            std::thread::spawn(move || {
                let mut b = [0u8; 65536];
                loop {
                    let n = s.read(&mut b).unwrap();
                    if n == 0 {
                        break;
                    }
                    s.write_all(&b[..n]).unwrap();
                }
            });
        }
    });
    let cfg = Config {
        source: "x".into(),
        runtime: Runtime {
            workers: 2,
            pin_workers: false,
            drain_timeout: Duration::from_secs(2),
        },
        services: vec![Service {
            name: "s".into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            protocol: Protocol::Tcp,
            algorithm: ringlb::balancer::Algorithm::RoundRobin,
            hash_table_size: 65537,
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
            max_connections: 100,
            retries: 1,
            buffer_size: 16384,
            backlog: 128,
            access_log: true,
            backends: vec![Backend {
                address: ea,
                spec: ea.to_string(),
                weight: 1,
                max_connections: None,
            }],
        }],
    };
    let sd = Arc::new(Shutdown::new());
    let dp = DataPlane::start(&cfg, Snapshot::from_config(&cfg).into_shared(), sd).unwrap();
    let a = dp.listening()[0].address;
    let t = Instant::now();
    for _ in 0..50 {
        let mut c = std::net::TcpStream::connect(a).unwrap();
        let data = vec![7u8; 1 << 20];
        let mut c2 = c.try_clone().unwrap();
        let w = std::thread::spawn(move || {
            c2.write_all(&data).unwrap();
            c2.shutdown(std::net::Shutdown::Write).unwrap();
        });
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        w.join().unwrap();
        assert_eq!(got.len(), 1 << 20);
    }
    eprintln!("50 x 1MiB in {:?}", t.elapsed());
    dp.drain_until(Instant::now() + Duration::from_secs(1));
}
