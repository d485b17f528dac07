//! An alert webhook receiver on loopback for the tests: it records the `event` of every alert
//! ringlb POSTs, in order.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// A webhook on `addr` (port 0: any) that answers 200 to every POST and keeps each alert's
/// `event`, in order. Returns its address and the events.
pub async fn webhook(addr: &str) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind(addr).await.unwrap();
    let bound = listener.local_addr().unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let events2 = events.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let events = events2.clone();
            tokio::spawn(async move {
                let mut s = BufReader::new(s);
                loop {
                    let mut length = 0;
                    loop {
                        let mut line = String::new();
                        if s.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let lower = line.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap();
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0; length];
                    s.read_exact(&mut body).await.unwrap();
                    let alert: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    events
                        .lock()
                        .unwrap()
                        .push(alert["event"].as_str().unwrap().to_owned());
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                    if s.get_mut().write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (bound, events)
}
