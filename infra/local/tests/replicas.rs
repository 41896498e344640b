//! The multi-replica WebSocket edge, with real processes: three `local-stack gateway` replicas
//! (the Kubernetes edge binary) behind a TCP load balancer (what a Kubernetes Service does), on
//! one Redis, calling the functions of an in-process stack over HTTP; the functions' management
//! calls reach the stack's own gateway, which forwards them to the replica holding the socket.
//!
//! - traffic across replicas (1:1 and a group, senders and recipients on different replicas) is
//!   delivered exactly once, in order;
//! - a rolling restart of every replica, one after another (SIGTERM: drain, migrate, exit;
//!   then started again on the same ports), while two users exchange 1,000 messages: none
//!   lost, repeated or reordered, no error and no `Disconnected` surfaced to the application,
//!   and every replica reports zero connections cut at its deadline;
//! - `kill -9` of one replica: its clients reconnect through the balancer to the others and
//!   sync, nothing is lost, and its connection ids answer 410 within seconds;
//! - a 20-second connection lifetime in the emulator: the lifetime sweep tells every client to
//!   migrate before the cut, and no client sees a drop.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use local_stack::stack::{RunningStack, StackConfig};
use messaging::client::{Client, ClientConfig, ClientEvent};
use messaging::e2ee::Envelope;
use messaging::model::{Conversation, ConversationKind, User};
use messaging::protocol::PresenceStatus;
use mongodb::bson::DateTime;

const WAIT: Duration = Duration::from_secs(30);
const SECRET: &str = "replicas-secret-replicas-secret-replicas";

// ---------------------------------------------------------------------------------------------
// The edge: stack, replicas, balancer
// ---------------------------------------------------------------------------------------------

/// One `local-stack gateway` process.
struct Replica {
    child: Option<Child>,
    ws_port: u16,
    management_port: u16,
    /// Its place in the balancer's backends (updated when it moves to fresh ports).
    slot: usize,
    backends: Backends,
    env: Vec<(String, String)>,
    /// Its stderr lines (the drain report).
    lines: Arc<Mutex<Vec<String>>>,
}

impl Replica {
    /// Starts the process on its ports. A port another process took meanwhile (the ports are
    /// picked free, then released until the replica binds them) moves the replica to fresh ports,
    /// which the balancer then uses for its slot.
    fn start(&mut self) {
        for _attempt in 0..5 {
            match self.try_start() {
                Ok(()) => return,
                Err(lines) if lines.iter().any(|l| l.contains("in use")) => {
                    self.ws_port = testkit::free_port();
                    self.management_port = testkit::free_port();
                    self.backends.lock().unwrap()[self.slot] =
                        SocketAddr::from(([127, 0, 0, 1], self.ws_port));
                }
                Err(lines) => panic!("replica did not come up: {lines:?}"),
            }
        }
        panic!("replica found no free ports in five attempts");
    }

    /// One start on the current ports; the process's lines when it did not come up.
    fn try_start(&mut self) -> Result<(), Vec<String>> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_local-stack"));
        cmd.arg("gateway")
            .env("GATEWAY_HOST", "127.0.0.1")
            .env("GATEWAY_WS_PORT", self.ws_port.to_string())
            .env("GATEWAY_MANAGEMENT_PORT", self.management_port.to_string())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("gateway replica starts");
        let stderr = child.stderr.take().expect("stderr");
        let lines = self.lines.clone();
        let (up_tx, up_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("gateway: WebSocket on") {
                    let _ = up_tx.send(true);
                }
                lines.lock().unwrap().push(line);
            }
            // Its stderr closed: the process ended.
            let _ = up_tx.send(false);
        });
        match up_rx.recv_timeout(WAIT) {
            Ok(true) => {
                self.child = Some(child);
                Ok(())
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                Err(std::mem::take(&mut *self.lines.lock().unwrap()))
            }
        }
    }

    /// SIGTERM, then waits for the process to end; returns its drain report line.
    fn stop(&mut self) -> String {
        let mut child = self.child.take().expect("running");
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + WAIT;
        loop {
            if child.try_wait().expect("wait").is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "replica did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The reader thread may still be on the last lines.
        std::thread::sleep(Duration::from_millis(100));
        self.lines
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|l| l.contains("gateway: drained"))
            .cloned()
            .unwrap_or_else(|| panic!("no drain report: {:?}", self.lines.lock().unwrap()))
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Open connections it holds, from its `/metrics`.
    async fn connections(&self) -> u64 {
        let url = format!("http://127.0.0.1:{}/metrics", self.management_port);
        let text = reqwest::get(url).await.unwrap().text().await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("gateway_connections "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no gateway_connections in {text}"))
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The replicas' WebSocket addresses, one slot per replica, as the balancer sees them now.
type Backends = Arc<Mutex<Vec<SocketAddr>>>;

/// A TCP load balancer: each connection goes to the next backend that accepts it.
async fn balancer(backends: Backends) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut next = 0usize;
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let start = next;
            next += 1;
            let backends = backends.lock().unwrap().clone();
            tokio::spawn(async move {
                for i in 0..backends.len() {
                    let backend = backends[(start + i) % backends.len()];
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        return;
                    }
                }
            });
        }
    });
    url
}

struct Edge {
    stack: RunningStack,
    replicas: Vec<Replica>,
    url: String,
}

impl Edge {
    async fn start(lifetime: Option<Duration>) -> Self {
        let servers = testkit::servers();
        let data = std::env::temp_dir().join(testkit::unique_name("replicas"));
        let mut config = StackConfig::new(
            servers.redis_url.clone(),
            servers.mongodb_uri.clone(),
            data,
            SECRET.into(),
        );
        config.ws_port = 0;
        config.broker_port = 0;
        config.s3_port = 0;
        config.agent_port = 0;
        config.api_port = 0;
        config.demo_agent = false;
        config.database = testkit::unique_name("replicas");
        config.redis_prefix = format!("{}:", testkit::unique_name("replicas"));
        config.sweep_interval = Duration::from_millis(200);
        config.retry_delay = Duration::from_millis(20);
        config.store.operation_timeout = Duration::from_secs(10);
        config.redis_timeout = Duration::from_secs(5);
        config.settings.send_limit.max = 100_000;
        config.settings.frame_limit.max = 100_000;
        if let Some(lifetime) = lifetime {
            config.api.max_lifetime = lifetime;
        }
        let prefix = config.redis_prefix.clone();
        let stack = local_stack::stack::start(config)
            .await
            .expect("stack starts");
        // The stack's functions over HTTP, for the replicas.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let functions = format!("http://{}/integrations", listener.local_addr().unwrap());
        let router = stack.api.clone().integrations_router();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });

        let ws_ports: Vec<u16> = (0..3).map(|_| testkit::free_port()).collect();
        let backends: Backends = Arc::new(Mutex::new(
            ws_ports
                .iter()
                .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
                .collect(),
        ));
        let url = balancer(backends.clone()).await;
        let mut env = vec![
            ("REDIS_URL", servers.redis_url.clone()),
            ("REDIS_KEY_PREFIX", prefix),
            ("GATEWAY_PUBLIC_URL", url.clone()),
            ("GATEWAY_DRAIN_SECS", "10".into()),
            ("GATEWAY_STAGE", "local".into()),
            ("CONNECT_FUNCTION_URL", format!("{functions}/$connect")),
            ("MESSAGE_FUNCTION_URL", format!("{functions}/$default")),
            (
                "DISCONNECT_FUNCTION_URL",
                format!("{functions}/$disconnect"),
            ),
            ("RUST_LOG", "warn".into()),
        ];
        if let Some(lifetime) = lifetime {
            env.push(("GATEWAY_MAX_LIFETIME_SECS", lifetime.as_secs().to_string()));
        }
        let env: Vec<(String, String)> = env.into_iter().map(|(k, v)| (k.into(), v)).collect();
        let mut replicas: Vec<Replica> = ws_ports
            .iter()
            .enumerate()
            .map(|(slot, ws_port)| Replica {
                child: None,
                ws_port: *ws_port,
                management_port: testkit::free_port(),
                slot,
                backends: backends.clone(),
                env: env.clone(),
                lines: Arc::new(Mutex::new(Vec::new())),
            })
            .collect();
        for replica in &mut replicas {
            replica.start();
        }
        Self {
            stack,
            replicas,
            url,
        }
    }

    async fn user(&self, name: &str) -> String {
        let user_id = format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        self.stack
            .ctx
            .store
            .insert_user(&User {
                user_id: user_id.clone(),
                phone: None,
                email: None,
                name: name.into(),
                avatar_url: None,
                created_at: DateTime::now(),
                last_seen: None,
                status: PresenceStatus::Offline,
            })
            .await
            .expect("user stored");
        user_id
    }

    async fn conversation(&self, kind: ConversationKind, people: &[&str]) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        self.stack
            .ctx
            .store
            .insert_conversation(&Conversation {
                admins: vec![people[0].to_string()],
                ..Conversation::new(
                    id.clone(),
                    kind,
                    people.iter().map(|p| p.to_string()).collect(),
                )
            })
            .await
            .expect("conversation stored");
        id
    }

    async fn client(&self, user: &str, device: &str) -> Client {
        let token = self
            .stack
            .issuer
            .issue(user, Duration::from_secs(3600))
            .unwrap();
        let mut config = ClientConfig::new(&self.url, token);
        config.device_id = Some(device.into());
        config.min_backoff = Duration::from_millis(50);
        config.max_backoff = Duration::from_millis(500);
        config.ack_timeout = WAIT;
        let mut client = Client::connect(config).await.expect("client connects");
        client
            .wait_for(WAIT, |e| {
                matches!(e, ClientEvent::Ready { .. }).then_some(())
            })
            .await
            .expect("ready");
        client
    }

    /// Open connections per replica, from each one's `/metrics`.
    async fn held(&self) -> Vec<u64> {
        let mut held = Vec::new();
        for replica in &self.replicas {
            held.push(replica.connections().await);
        }
        held
    }
}

/// What a client saw: messages per conversation in order, and anything that is not a message.
#[derive(Default)]
struct Seen {
    messages: BTreeMap<String, Vec<(u64, String)>>,
    disconnects: usize,
    errors: Vec<String>,
}

/// Collects a client's events in the background.
fn watch(mut client: Client) -> (messaging::client::ClientHandle, Arc<Mutex<Seen>>) {
    let handle = client.handle();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    tokio::spawn(async move {
        while let Some(event) = client.next_event().await {
            let mut s = s.lock().unwrap();
            match event {
                ClientEvent::Message(m) => s
                    .messages
                    .entry(m.conversation_id.clone().unwrap_or_default())
                    .or_default()
                    .push((
                        m.sequence_number,
                        Envelope::opaque_marker(&m.body.content).unwrap_or_default(),
                    )),
                ClientEvent::Disconnected => s.disconnects += 1,
                ClientEvent::Error { code, message } => {
                    s.errors.push(format!("{code:?}: {message}"))
                }
                _ => {}
            }
        }
    });
    (handle, seen)
}

/// Waits until `seen` holds `n` messages in `conversation`.
async fn wait_for_messages(seen: &Arc<Mutex<Seen>>, conversation: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let have = seen
            .lock()
            .unwrap()
            .messages
            .get(conversation)
            .map_or(0, Vec::len);
        if have >= n {
            return;
        }
        if Instant::now() >= deadline {
            let seen = seen.lock().unwrap();
            let got: Vec<u64> = seen
                .messages
                .get(conversation)
                .map(|m| m.iter().map(|(n, _)| *n).collect())
                .unwrap_or_default();
            let missing: Vec<u64> = (1..=n as u64).filter(|s| !got.contains(s)).collect();
            panic!(
                "only {have} of {n} messages arrived in {conversation}: missing {missing:?}, \
                 {} disconnects, errors {:?}",
                seen.disconnects, seen.errors
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every message exactly once, numbered densely from 1, with the expected contents.
fn assert_exactly_once_in_order(seen: &Arc<Mutex<Seen>>, conversation: &str, expected: &[String]) {
    let seen = seen.lock().unwrap();
    let got = seen.messages.get(conversation).cloned().unwrap_or_default();
    let numbers: Vec<u64> = got.iter().map(|(n, _)| *n).collect();
    let dense: Vec<u64> = (1..=expected.len() as u64).collect();
    assert_eq!(numbers, dense, "dense, in order, once");
    let mut contents: Vec<String> = got.into_iter().map(|(_, c)| c).collect();
    contents.sort();
    let mut expected = expected.to_vec();
    expected.sort();
    assert_eq!(contents, expected, "every message, once");
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn traffic_across_replicas_arrives_exactly_once_in_order() {
    let edge = Edge::start(None).await;
    let alice = edge.user("alice").await;
    let bob = edge.user("bob").await;
    let carol = edge.user("carol").await;
    let direct = edge
        .conversation(ConversationKind::Direct, &[&alice, &bob])
        .await;
    let group = edge
        .conversation(ConversationKind::Group, &[&alice, &bob, &carol])
        .await;
    // The balancer puts consecutive connections on consecutive replicas.
    let (a, a_seen) = watch(edge.client(&alice, "a1").await);
    let (b, b_seen) = watch(edge.client(&bob, "b1").await);
    let (_c, c_seen) = watch(edge.client(&carol, "c1").await);
    assert_eq!(edge.held().await, vec![1, 1, 1], "one client per replica");

    let mut sends = Vec::new();
    let mut expected_direct = Vec::new();
    let mut expected_group = Vec::new();
    for i in 0..40 {
        for (sender, who) in [(&a, "a"), (&b, "b")] {
            let text = format!("direct {who} {i}");
            sends.push(sender.send_text(&direct, &Envelope::opaque(&text)));
            expected_direct.push(text);
            let text = format!("group {who} {i}");
            sends.push(sender.send_text(&group, &Envelope::opaque(&text)));
            expected_group.push(text);
        }
    }
    for send in futures::future::join_all(sends).await {
        send.expect("acknowledged");
    }
    for (seen, conversation, expected) in [
        (&a_seen, &direct, &expected_direct),
        (&b_seen, &direct, &expected_direct),
        (&a_seen, &group, &expected_group),
        (&b_seen, &group, &expected_group),
        (&c_seen, &group, &expected_group),
    ] {
        wait_for_messages(seen, conversation, expected.len()).await;
        // Anything more would be a repeat: give it a moment to show.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_exactly_once_in_order(seen, conversation, expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_of_every_replica_loses_nothing_and_drops_no_one() {
    const EACH: usize = 500;
    let mut edge = Edge::start(None).await;
    let alice = edge.user("alice").await;
    let bob = edge.user("bob").await;
    let direct = edge
        .conversation(ConversationKind::Direct, &[&alice, &bob])
        .await;
    // Two devices each, spread over the replicas.
    let mut devices = Vec::new();
    for (user, device) in [(&alice, "a1"), (&bob, "b1"), (&alice, "a2"), (&bob, "b2")] {
        devices.push(watch(edge.client(user, device).await));
    }
    let held = edge.held().await;
    assert_eq!(held.iter().sum::<u64>(), 4);

    // Both users send their share, paced so the run spans the whole rolling restart.
    let started = Instant::now();
    let progress = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let senders: Vec<_> = [
        (devices[0].0.clone(), "alice"),
        (devices[1].0.clone(), "bob"),
    ]
    .into_iter()
    .map(|(handle, who)| {
        let direct = direct.clone();
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut sent = Vec::new();
            for i in 0..EACH {
                let text = format!("{who} {i}");
                handle
                    .send_text(&direct, &Envelope::opaque(&text))
                    .await
                    .unwrap_or_else(|e| panic!("{who}'s send {i} surfaced {e}"));
                sent.push(text);
                progress.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(8)).await;
            }
            sent
        })
    })
    .collect();

    let mut told = 0;
    for (k, replica) in edge.replicas.iter_mut().enumerate() {
        // Replica k restarts once (k + 1) quarters of the messages are out: mid-stream.
        while progress.load(std::sync::atomic::Ordering::SeqCst) < (k + 1) * EACH / 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let report = tokio::task::block_in_place(|| replica.stop());
        assert!(
            report.ends_with("0 cut at the deadline"),
            "a client was cut instead of migrated: {report}"
        );
        told += report
            .split_whitespace()
            .nth(2)
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0);
        tokio::task::block_in_place(|| replica.start());
        println!("replica restarted at {:?}: {report}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let mut expected = Vec::new();
    for sender in senders {
        expected.extend(sender.await.expect("sender finished"));
    }
    assert_eq!(expected.len(), 2 * EACH);
    assert!(
        told >= 4,
        "every device was migrated at least once ({told})"
    );
    for (handle, seen) in &devices {
        wait_for_messages(seen, &direct, expected.len()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_exactly_once_in_order(seen, &direct, &expected);
        let s = seen.lock().unwrap();
        assert_eq!(s.disconnects, 0, "no drop surfaced to the application");
        assert!(s.errors.is_empty(), "no error surfaced: {:?}", s.errors);
        assert!(handle.migrations() >= 1, "each device moved");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_replica_loses_nothing_and_its_connections_answer_410() {
    let mut edge = Edge::start(None).await;
    let alice = edge.user("alice").await;
    let bob = edge.user("bob").await;
    let direct = edge
        .conversation(ConversationKind::Direct, &[&alice, &bob])
        .await;
    let (a, a_seen) = watch(edge.client(&alice, "a1").await);
    let (b, b_seen) = watch(edge.client(&bob, "b1").await);
    let (_c, c_seen) = watch(edge.client(&bob, "b2").await);
    assert_eq!(edge.held().await, vec![1, 1, 1]);

    // The replica holding bob's first device, found through the registry.
    let owners: HashMap<String, String> = {
        let client = redis::Client::open(testkit::servers().redis_url.as_str()).unwrap();
        let mut redis = client.get_multiplexed_async_connection().await.unwrap();
        let key =
            messaging::keys::Keys::new(edge.stack.config.redis_prefix.clone()).gateway_replicas();
        let all: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(key)
            .query_async(&mut redis)
            .await
            .unwrap();
        all.into_iter()
            .map(|(tag, value)| {
                let v: serde_json::Value = serde_json::from_str(&value).unwrap();
                (tag, v["management_url"].as_str().unwrap().to_string())
            })
            .collect()
    };
    let bobs = edge
        .stack
        .ctx
        .realtime
        .user_connections(&bob)
        .await
        .unwrap();
    let victim_id = bobs[0].clone();
    let tag = local_stack::replicas::owner_of(&victim_id).unwrap();
    let tag: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    let victim_url = owners[&tag].clone();
    let victim = edge
        .replicas
        .iter()
        .position(|r| victim_url.ends_with(&format!(":{}", r.management_port)))
        .expect("the owner is one of the replicas");

    let mut expected = Vec::new();
    for i in 0..20 {
        let text = format!("before {i}");
        a.send_text(&direct, &Envelope::opaque(&text))
            .await
            .unwrap();
        expected.push(text);
    }
    edge.replicas[victim].kill();
    let killed = Instant::now();
    // Its connections answer 410 through any replica, within seconds.
    let post = format!(
        "{}/@connections/{}",
        edge.stack.management_url,
        url::form_urlencoded::byte_serialize(victim_id.as_bytes()).collect::<String>()
    );
    let http = reqwest::Client::new();
    loop {
        let status = http.post(&post).body("{}").send().await.unwrap().status();
        if status == 410 {
            break;
        }
        assert!(killed.elapsed() < Duration::from_secs(8), "still {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "410 for a killed replica's connection after {:?}",
        killed.elapsed()
    );
    for i in 0..20 {
        let text = format!("after {i}");
        // Whoever was on the killed replica reconnects; the send waits for that if needed.
        let sender = if i % 2 == 0 { &a } else { &b };
        sender
            .send_text(&direct, &Envelope::opaque(&text))
            .await
            .unwrap();
        expected.push(text);
    }
    for seen in [&a_seen, &b_seen, &c_seen] {
        wait_for_messages(seen, &direct, expected.len()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_exactly_once_in_order(seen, &direct, &expected);
    }
    let held = edge.held_alive(victim).await;
    assert_eq!(held, 3, "every client is back, on the other replicas");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_are_migrated_before_the_lifetime_cut() {
    let edge = Edge::start(Some(Duration::from_secs(20))).await;
    let alice = edge.user("alice").await;
    let bob = edge.user("bob").await;
    let direct = edge
        .conversation(ConversationKind::Direct, &[&alice, &bob])
        .await;
    let (a, a_seen) = watch(edge.client(&alice, "a1").await);
    let (b, b_seen) = watch(edge.client(&bob, "b1").await);
    let mut expected = Vec::new();
    // 30 s: past the first cut of both connections.
    for i in 0..60 {
        let text = format!("m{i}");
        let sender = if i % 2 == 0 { &a } else { &b };
        sender
            .send_text(&direct, &Envelope::opaque(&text))
            .await
            .unwrap();
        expected.push(text);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for (handle, seen) in [(&a, &a_seen), (&b, &b_seen)] {
        wait_for_messages(seen, &direct, expected.len()).await;
        assert_exactly_once_in_order(seen, &direct, &expected);
        let s = seen.lock().unwrap();
        assert_eq!(
            s.disconnects, 0,
            "the lifetime cut never reached the client"
        );
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        assert!(handle.migrations() >= 1, "moved before the cut");
    }
}

impl Edge {
    /// Connections held by the replicas other than `dead`.
    async fn held_alive(&self, dead: usize) -> u64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut total = 0;
            for (i, replica) in self.replicas.iter().enumerate() {
                if i != dead {
                    total += replica.connections().await;
                }
            }
            if total >= 3 || Instant::now() > deadline {
                return total;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
