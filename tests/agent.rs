//! The agent check (`[service.agent]`) against small agents in the test, one per backend host
//! (127.0.0.31 and 127.0.0.32, same agent port), speaking HAProxy's agent-check protocol: each
//! word changes the backend's state as documented, garbage, an over-long line and silence
//! change nothing and are counted, and the operator's state wins over the agent's.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use common::admin::{Metrics, post};
use common::health::{Switchable, events, greeting};
use common::patroni::free_port_on;
use common::{Ringlb, runtime, wait_for};

/// What an agent answers.
#[derive(Clone)]
enum Says {
    /// These bytes, then it closes.
    Bytes(Vec<u8>),
    /// Nothing: it holds the connection until the client gives up.
    Silence,
}

/// An agent on `addr` that answers every connection with what `says` holds at that moment.
async fn agent(addr: SocketAddr, says: Arc<Mutex<Says>>) {
    let listener = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let now = says.lock().unwrap().clone();
            tokio::spawn(async move {
                match now {
                    Says::Bytes(b) => {
                        let _ = s.write_all(&b).await;
                    }
                    Says::Silence => {
                        let mut buf = [0u8; 16];
                        let _ =
                            tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
                    }
                }
            });
        }
    });
}

struct Setup {
    lb: Ringlb,
    rt: tokio::runtime::Runtime,
    a: Switchable,
    b: Switchable,
    says: Arc<Mutex<Says>>,
}

impl Setup {
    fn start() -> Setup {
        let rt = runtime();
        let ips: [IpAddr; 2] = ["127.0.0.31".parse().unwrap(), "127.0.0.32".parse().unwrap()];
        let port = free_port_on(&ips);
        let says = Arc::new(Mutex::new(Says::Bytes(b"up ready 100%\n".to_vec())));
        let (a, b) = rt.block_on(async {
            agent(SocketAddr::new(ips[0], port), says.clone()).await;
            let b_says = Arc::new(Mutex::new(Says::Bytes(b"ready\n".to_vec())));
            agent(SocketAddr::new(ips[1], port), b_says).await;
            (
                Switchable::start("a", ips[0]).await,
                Switchable::start("b", ips[1]).await,
            )
        });
        let config = format!(
            "[runtime]\nworkers = 2\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [[service]]\nname = \"svc\"\nlisten = \"127.0.0.1:0\"\nalgorithm = \"round_robin\"\n\
             \n[service.agent]\nport = {port}\ninterval = \"100ms\"\ntimeout = \"100ms\"\n\
             \n[[service.backend]]\naddress = \"{}\"\n\n[[service.backend]]\naddress = \"{}\"\n",
            a.addr, b.addr
        );
        let lb = Ringlb::start(&config);
        Setup { lb, rt, a, b, says }
    }

    fn say(&self, line: &str) {
        *self.says.lock().unwrap() = Says::Bytes(format!("{line}\n").into_bytes());
    }

    /// Says `line` and waits until ringlb logs A's agent state as `state`.
    fn say_and_wait(&self, line: &str, state: &str) {
        let before = self.changes_to(state);
        self.say(line);
        let ok = wait_for(Duration::from_secs(3), || self.changes_to(state) > before);
        assert!(
            ok,
            "{line:?} did not make A's agent state {state}; log:\n{}",
            self.lb.log_text()
        );
    }

    fn changes_to(&self, state: &str) -> usize {
        events(&self.lb, "backend agent state changed", Some(self.a.addr))
            .iter()
            .filter(|e| e.field("to=").as_deref() == Some(state))
            .count()
    }

    /// How many of `n` new connections reached A (the others reached B).
    fn to_a(&self, n: usize) -> usize {
        let addr = self.lb.addr("svc");
        let names: Vec<String> = self.rt.block_on(async {
            let mut v = Vec::new();
            for _ in 0..n {
                v.push(greeting(addr, None).await.unwrap());
            }
            v
        });
        assert!(names.iter().all(|n| n == "a" || n == "b"), "{names:?}");
        names.iter().filter(|n| *n == "a").count()
    }

    fn agent_errors(&self) -> f64 {
        Metrics::scrape(self.lb.admin.unwrap()).sum(
            "ringlb_backend_agent_errors_total",
            &[("service", "svc"), ("backend", &self.a.addr.to_string())],
        )
    }

    /// A live session to A: its reader, after the greeting.
    fn session_to_a(&self) -> BufReader<TcpStream> {
        let addr = self.lb.addr("svc");
        self.rt.block_on(async {
            for _ in 0..10 {
                let mut r = BufReader::new(TcpStream::connect(addr).await.unwrap());
                let mut line = String::new();
                r.read_line(&mut line).await.unwrap();
                if line == "a\n" {
                    return r;
                }
            }
            panic!("no session reached A");
        })
    }

    /// Whether the session is still open (it echoes).
    fn open(&self, s: &mut BufReader<TcpStream>) -> bool {
        self.rt.block_on(async {
            if s.get_mut().write_all(b"ping\n").await.is_err() {
                return false;
            }
            let mut line = String::new();
            matches!(
                tokio::time::timeout(Duration::from_secs(2), s.read_line(&mut line)).await,
                Ok(Ok(n)) if n > 0
            )
        })
    }
}

#[test]
fn each_agent_word_changes_the_backends_state_as_documented() {
    let s = Setup::start();
    assert!(
        s.to_a(10) > 0,
        "A takes connections while its agent says up"
    );
    let mut live = s.session_to_a();

    s.say_and_wait("drain", "drain,up,100%");
    assert_eq!(s.to_a(10), 0, "drain: no new connection");
    assert!(s.open(&mut live), "drain: live sessions run on");

    s.say_and_wait("ready", "ready,up,100%");
    assert!(s.to_a(10) > 0, "ready: new connections again");

    s.say_and_wait("maint", "maint,up,100%");
    assert_eq!(s.to_a(10), 0, "maint: no new connection");
    assert!(!s.open(&mut live), "maint: live sessions are closed");

    s.say_and_wait("ready", "ready,up,100%");
    s.say_and_wait("down#lag too high", "ready,down,100%");
    assert_eq!(s.to_a(10), 0, "down: no new connection");
    s.say_and_wait("up", "ready,up,100%");
    assert!(s.to_a(10) > 0, "up: new connections again");

    // Several words at once, separated by commas or spaces.
    s.say_and_wait("drain, down 40%", "drain,down,40%");
    assert_eq!(s.to_a(10), 0);
    s.say_and_wait("up,ready\t100%", "ready,up,100%");

    // A weight below 100% lowers A's share of new connections.
    s.say_and_wait("25%", "ready,up,25%");
    let n = 200;
    let a = s.to_a(n);
    assert!(a > 0 && a < n * 3 / 10, "25%: A took {a} of {n}");
    s.say_and_wait("0%", "ready,up,0%");
    assert_eq!(s.to_a(10), 0, "0%: no new connection");
    s.say_and_wait("100%", "ready,up,100%");
    let a = s.to_a(n);
    assert!(a >= n * 4 / 10, "100%: A took {a} of {n}");
    // The backends' own servers saw those connections.
    assert!(s.a.accepted() > 0 && s.b.accepted() > 0);
}

#[test]
fn garbage_a_long_line_and_silence_change_nothing_and_are_counted() {
    let s = Setup::start();
    s.say_and_wait("drain", "drain,up,100%");
    let changes = events(&s.lb, "backend agent state changed", Some(s.a.addr)).len();
    let answers: [Says; 4] = [
        Says::Bytes(b"hello world\n".to_vec()),
        Says::Bytes(b"ready sideways\n".to_vec()),
        Says::Bytes(vec![b'u'; 2000]),
        Says::Silence,
    ];
    for answer in answers {
        let before = s.agent_errors();
        *s.says.lock().unwrap() = answer;
        let counted = wait_for(Duration::from_secs(3), || s.agent_errors() >= before + 2.0);
        assert!(counted, "errors not counted; log:\n{}", s.lb.log_text());
        assert_eq!(s.to_a(10), 0, "still drained");
    }
    assert_eq!(
        events(&s.lb, "backend agent state changed", Some(s.a.addr)).len(),
        changes,
        "no state change"
    );
    s.say_and_wait("ready", "ready,up,100%");
    assert!(s.to_a(10) > 0);
}

#[test]
fn the_operators_state_wins_over_the_agents() {
    let s = Setup::start();
    let admin = s.lb.admin.unwrap();
    let path = |action: &str| format!("/services/svc/backends/{}/{action}", s.a.addr);
    assert_eq!(post(admin, &path("drain")).code, 200);
    // The agent says ready (and a new weight, so its line is seen to be applied): the
    // operator's drain holds.
    s.say_and_wait("ready up 90%", "ready,up,90%");
    assert_eq!(s.to_a(10), 0, "the operator drained A");
    assert_eq!(post(admin, &path("enable")).code, 200);
    assert!(
        s.to_a(10) > 0,
        "enabled by the operator, ready by the agent"
    );
    // With the operator's state enabled, the agent's maintenance holds.
    s.say_and_wait("maint", "maint,up,90%");
    assert_eq!(post(admin, &path("enable")).code, 200);
    assert_eq!(
        s.to_a(10),
        0,
        "the agent's maint, under the operator's enable"
    );
}
