//! The network policy's allow-list proxy and in-sandbox bridge against real local servers over real TCP.
//!
//! Two HTTP servers listen on 127.0.0.2 and 127.0.0.3, named `allowed.sandlink.test` and `denied.sandlink.test`
//! by `/etc/hosts` (added by `tests/setup/base.sh`). Only loopback addresses are ever used. The last test runs the
//! bridge and `curl` inside bubblewrap with an empty network namespace, as the local driver will.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sandlink::netpolicy::{proxy_environment, serve_loopback_bridge, AllowedHost, Limits, NetworkPolicy, Proxy};

const ALLOWED_NAME: &str = "allowed.sandlink.test";
const DENIED_NAME: &str = "denied.sandlink.test";
/// Set in the environment of the test binary when it is re-run inside bubblewrap as the in-sandbox helper.
const HELPER_VARIABLE: &str = "SANDLINK_NETPOLICY_BRIDGE_HELPER";

/// A tiny HTTP server on one loopback address that answers every request with its own name.
struct NamedServer {
    address: SocketAddr,
    /// Request lines and Host headers it received, in order.
    requests: Arc<Mutex<Vec<String>>>,
    connections: Arc<AtomicUsize>,
}

impl NamedServer {
    fn start(ip: &str, name: &str) -> NamedServer {
        let listener = TcpListener::bind((ip, 0)).expect("a loopback address binds (Linux routes all of 127/8 to lo)");
        let address = listener.local_addr().expect("a local address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (recorded, counted, name) = (requests.clone(), connections.clone(), name.to_string());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                counted.fetch_add(1, Ordering::SeqCst);
                let (recorded, name) = (recorded.clone(), name.clone());
                std::thread::spawn(move || answer(stream, &name, &recorded));
            }
        });
        NamedServer { address, requests, connections }
    }

    fn port(&self) -> u16 {
        self.address.port()
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("not poisoned").clone()
    }
}

fn answer(stream: TcpStream, name: &str, recorded: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let mut host = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if line.to_ascii_lowercase().starts_with("host:") {
            host = line.trim_end().to_string();
        }
    }
    recorded.lock().expect("not poisoned").push(format!("{} | {host}", request_line.trim_end()));
    let body = format!("hello from {name}");
    let mut stream = stream;
    let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
}

/// Checks that `/etc/hosts` maps the test names; without them the tests cannot run (fails under CI).
fn names_resolve() -> bool {
    let resolves = |name: &str, expected: &str| {
        (name, 80).to_socket_addrs().is_ok_and(|mut addresses| addresses.any(|address| address.ip().to_string() == expected))
    };
    let ready = resolves(ALLOWED_NAME, "127.0.0.2") && resolves(DENIED_NAME, "127.0.0.3");
    if !ready {
        assert!(!under_ci(), "{ALLOWED_NAME} and {DENIED_NAME} must resolve under CI; run tests/setup/base.sh");
        eprintln!("skipping: {ALLOWED_NAME}/{DENIED_NAME} are not in /etc/hosts; run tests/setup/base.sh");
    }
    ready
}

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| !value.is_empty() && value != "false" && value != "0")
}

fn rules(entries: &[&str]) -> Vec<AllowedHost> {
    entries.iter().map(|entry| AllowedHost::parse(entry).expect("a valid entry")).collect()
}

/// A response read to its end: status code, headers (lower-cased names) and body.
#[derive(Debug)]
struct Response {
    status: u16,
    head: String,
    body: String,
}

fn read_response(stream: &mut impl Read) -> Response {
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).expect("the proxy answers and closes");
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    Response { status, head: head.to_string(), body: body.to_string() }
}

/// Sends a plain-HTTP proxy request (absolute form) through `stream`.
fn proxied_get(mut stream: impl Read + Write, url: &str) -> Response {
    let host = url.trim_start_matches("http://").split('/').next().unwrap_or_default().to_string();
    write!(stream, "GET {url} HTTP/1.1\r\nHost: {host}\r\nProxy-Connection: keep-alive\r\n\r\n").expect("send");
    read_response(&mut stream)
}

fn connect_to(proxy: &Proxy) -> TcpStream {
    let stream = TcpStream::connect(proxy.tcp_address()).expect("the proxy listens");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    stream
}

/// Opens a CONNECT tunnel; answers the proxy's response head and the stream (for the tunnel when admitted).
fn connect_tunnel(proxy: &Proxy, authority: &str) -> (String, TcpStream) {
    let mut stream = connect_to(proxy);
    write!(stream, "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").expect("send");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    (String::from_utf8_lossy(&head).into_owned(), stream)
}

fn assert_refused_by_policy(response: &Response, refused: &str) {
    assert_eq!(response.status, 403, "{response:?}");
    assert!(
        response.body.contains(&format!("sandlink refused a connection to {refused}")),
        "the body names the refused host: {response:?}"
    );
    assert!(
        response.body.contains("sandlink's network policy for this session allows only allowed.sandlink.test")
            && response.body.contains("add the host to `network` in your profile"),
        "the body names the policy and the fix: {response:?}"
    );
    assert!(response.head.contains("Proxy-Status: sandlink; error=destination_ip_prohibited"), "{response:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_list_should_forward_plain_http_to_the_listed_name_only() {
    if !names_resolve() {
        return;
    }
    let allowed = NamedServer::start("127.0.0.2", ALLOWED_NAME);
    let denied = NamedServer::start("127.0.0.3", DENIED_NAME);
    let proxy = Proxy::start(rules(&[ALLOWED_NAME]), None).await.expect("the proxy starts");
    let (proxy_stream, denied_stream) = (connect_to(&proxy), connect_to(&proxy));
    let (allowed_port, denied_port) = (allowed.port(), denied.port());
    let (admitted, refused) = tokio::task::spawn_blocking(move || {
        (
            proxied_get(proxy_stream, &format!("http://{ALLOWED_NAME}:{allowed_port}/hello?x=1#fragment")),
            proxied_get(denied_stream, &format!("http://{DENIED_NAME}:{denied_port}/")),
        )
    })
    .await
    .expect("the client thread");
    assert_eq!(admitted.status, 200, "{admitted:?}");
    assert_eq!(admitted.body, "hello from allowed.sandlink.test");
    assert_eq!(
        allowed.requests(),
        vec![format!("GET /hello?x=1 HTTP/1.1 | Host: {ALLOWED_NAME}:{allowed_port}")],
        "the upstream gets the origin form and the client's Host"
    );
    assert_refused_by_policy(&refused, &format!("{DENIED_NAME}:{denied_port}"));
    assert_eq!(denied.connections.load(Ordering::SeqCst), 0, "a refused host is never contacted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_further_listener_should_enforce_the_same_list_and_close_when_its_handle_drops() {
    if !names_resolve() {
        return;
    }
    let allowed = NamedServer::start("127.0.0.2", ALLOWED_NAME);
    let denied = NamedServer::start("127.0.0.3", DENIED_NAME);
    let proxy = Proxy::start(rules(&[ALLOWED_NAME]), None).await.expect("the proxy starts");
    // The docker driver binds this listener inside a container's network namespace; any loopback port will do here.
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let address = listener.local_addr().expect("an address");
    let served = proxy.serve_listener(listener).expect("the proxy serves the listener");
    let (allowed_port, denied_port) = (allowed.port(), denied.port());
    let (admitted, refused) = tokio::task::spawn_blocking(move || {
        let open = || {
            let stream = TcpStream::connect(address).expect("the further listener accepts");
            stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
            stream
        };
        (
            proxied_get(open(), &format!("http://{ALLOWED_NAME}:{allowed_port}/")),
            proxied_get(open(), &format!("http://{DENIED_NAME}:{denied_port}/")),
        )
    })
    .await
    .expect("the client thread");
    assert_eq!((admitted.status, admitted.body.as_str()), (200, "hello from allowed.sandlink.test"), "{admitted:?}");
    assert_refused_by_policy(&refused, &format!("{DENIED_NAME}:{denied_port}"));
    assert_eq!(denied.connections.load(Ordering::SeqCst), 0);
    assert_eq!(proxy.connections_served(), 2, "both went through the one proxy");
    drop(served);
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(address).is_ok() {
        assert!(Instant::now() < deadline, "the further listener closes once its handle is dropped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(TcpStream::connect(proxy.tcp_address()).is_ok(), "the proxy's own port still serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_list_should_tunnel_connect_to_the_listed_name_only() {
    if !names_resolve() {
        return;
    }
    let allowed = NamedServer::start("127.0.0.2", ALLOWED_NAME);
    let denied = NamedServer::start("127.0.0.3", DENIED_NAME);
    let proxy = Proxy::start(rules(&[ALLOWED_NAME]), None).await.expect("the proxy starts");
    let (allowed_port, denied_port) = (allowed.port(), denied.port());
    let (tunnel_head, tunnelled, refused) = tokio::task::spawn_blocking(move || {
        let (head, mut tunnel) = connect_tunnel(&proxy, &format!("{ALLOWED_NAME}:{allowed_port}"));
        write!(tunnel, "GET /through HTTP/1.1\r\nHost: {ALLOWED_NAME}\r\n\r\n").expect("send through the tunnel");
        let tunnelled = read_response(&mut tunnel);
        let mut refused_stream = connect_to(&proxy);
        write!(refused_stream, "CONNECT {DENIED_NAME}:{denied_port} HTTP/1.1\r\n\r\n").expect("send");
        (head, tunnelled, read_response(&mut refused_stream))
    })
    .await
    .expect("the client thread");
    assert!(tunnel_head.starts_with("HTTP/1.1 200"), "{tunnel_head}");
    assert_eq!(tunnelled.body, "hello from allowed.sandlink.test", "{tunnelled:?}");
    assert_eq!(allowed.requests().len(), 1);
    assert_refused_by_policy(&refused, &format!("{DENIED_NAME}:{denied_port}"));
    assert_eq!(denied.connections.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_literal_should_be_refused_unless_the_list_names_the_address() {
    if !names_resolve() {
        return;
    }
    let allowed = NamedServer::start("127.0.0.2", ALLOWED_NAME);
    let port = allowed.port();
    let by_name = Proxy::start(rules(&[ALLOWED_NAME]), None).await.expect("the proxy starts");
    let by_address = Proxy::start(rules(&["127.0.0.2"]), None).await.expect("the proxy starts");
    let (stream_a, stream_b) = (connect_to(&by_name), connect_to(&by_name));
    let stream_c = connect_to(&by_address);
    let (literal, tunnel, listed) = tokio::task::spawn_blocking(move || {
        let literal = proxied_get(stream_a, &format!("http://127.0.0.2:{port}/"));
        let mut tunnel_stream = stream_b;
        write!(tunnel_stream, "CONNECT 127.0.0.2:{port} HTTP/1.1\r\n\r\n").expect("send");
        let tunnel = read_response(&mut tunnel_stream);
        (literal, tunnel, proxied_get(stream_c, &format!("http://127.0.0.2:{port}/")))
    })
    .await
    .expect("the client thread");
    assert_refused_by_policy(&literal, &format!("127.0.0.2:{port}"));
    assert_refused_by_policy(&tunnel, &format!("127.0.0.2:{port}"));
    assert_eq!(listed.status, 200, "an address the list names is admitted: {listed:?}");
    assert_eq!(allowed.requests().len(), 1, "only the listed address reached the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_in_the_list_should_admit_only_that_port() {
    if !names_resolve() {
        return;
    }
    let listed = NamedServer::start("127.0.0.2", ALLOWED_NAME);
    let other = NamedServer::start("127.0.0.2", ALLOWED_NAME);
    let entry = format!("{ALLOWED_NAME}:{}", listed.port());
    let proxy = Proxy::start(rules(&[&entry]), None).await.expect("the proxy starts");
    let (stream_a, stream_b) = (connect_to(&proxy), connect_to(&proxy));
    let (listed_port, other_port) = (listed.port(), other.port());
    let (admitted, refused) = tokio::task::spawn_blocking(move || {
        (
            proxied_get(stream_a, &format!("http://{ALLOWED_NAME}:{listed_port}/")),
            proxied_get(stream_b, &format!("http://{ALLOWED_NAME}:{other_port}/")),
        )
    })
    .await
    .expect("the client thread");
    assert_eq!(admitted.status, 200, "{admitted:?}");
    assert_eq!(refused.status, 403, "{refused:?}");
    assert!(refused.body.contains(&format!("allows only {entry}")), "{refused:?}");
    assert_eq!(other.connections.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_should_cap_connections_and_close_slow_and_idle_ones() {
    if !names_resolve() {
        return;
    }
    let allowed = NamedServer::start("127.0.0.2", ALLOWED_NAME);
    let limits = Limits {
        max_connections: 2,
        head_timeout: Duration::from_millis(400),
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_millis(400),
    };
    let proxy = Proxy::start_with(rules(&[ALLOWED_NAME]), None, limits).await.expect("the proxy starts");
    let port = allowed.port();
    let proxy = Arc::new(proxy);
    let checked = proxy.clone();
    tokio::task::spawn_blocking(move || {
        let proxy = checked;
        // Two silent clients take both slots; the third is turned away at once.
        let mut silent = [connect_to(&proxy), connect_to(&proxy)];
        let deadline = Instant::now() + Duration::from_secs(5);
        while proxy.open_connections() < 2 {
            assert!(Instant::now() < deadline, "the proxy never counted the two connections");
            std::thread::sleep(Duration::from_millis(10));
        }
        let started = Instant::now();
        let turned_away = read_response(&mut connect_to(&proxy));
        assert_eq!(turned_away.status, 503, "{turned_away:?}");
        assert!(turned_away.body.contains("2 connections open"), "{turned_away:?}");
        assert!(started.elapsed() < Duration::from_millis(300), "refused fast, not after the head timeout");
        // A client that never finishes its head is answered 408 and closed after the head timeout.
        for stream in &mut silent {
            let answer = read_response(stream);
            assert_eq!(answer.status, 408, "{answer:?}");
        }
        // A tunnel with no traffic either way is closed after the idle timeout.
        let (head, mut tunnel) = connect_tunnel(&proxy, &format!("{ALLOWED_NAME}:{port}"));
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let idle_started = Instant::now();
        let mut rest = Vec::new();
        tunnel.read_to_end(&mut rest).expect("the proxy closes the idle tunnel");
        let waited = idle_started.elapsed();
        assert!(waited >= Duration::from_millis(350) && waited < Duration::from_secs(5), "closed after {waited:?}");
        let deadline = Instant::now() + Duration::from_secs(5);
        while proxy.open_connections() > 0 {
            assert!(Instant::now() < deadline, "slots are given back when connections end");
            std::thread::sleep(Duration::from_millis(10));
        }
    })
    .await
    .expect("the client thread");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unix_socket_should_apply_the_same_policy_and_vanish_with_the_proxy() {
    if !names_resolve() {
        return;
    }
    let allowed = NamedServer::start("127.0.0.2", ALLOWED_NAME);
    let directory = tempfile::tempdir().expect("a temp dir");
    let socket = directory.path().join("proxy.sock");
    std::fs::write(&socket, b"").expect("a stale file");
    std::fs::remove_file(&socket).expect("removed");
    let proxy = Proxy::start(rules(&[ALLOWED_NAME]), Some(&socket)).await.expect("the proxy starts");
    assert_eq!(proxy.unix_socket(), Some(socket.as_path()));
    let port = allowed.port();
    let path = socket.clone();
    let (admitted, refused) = tokio::task::spawn_blocking(move || {
        let open = || std::os::unix::net::UnixStream::connect(&path).expect("the socket accepts");
        (
            proxied_get(open(), &format!("http://{ALLOWED_NAME}:{port}/")),
            proxied_get(open(), &format!("http://{DENIED_NAME}:{port}/")),
        )
    })
    .await
    .expect("the client thread");
    assert_eq!(admitted.body, "hello from allowed.sandlink.test", "{admitted:?}");
    assert_refused_by_policy(&refused, &format!("{DENIED_NAME}:{port}"));
    let address = proxy.tcp_address();
    drop(proxy);
    assert!(!socket.exists(), "the socket file goes with the proxy");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(TcpStream::connect(address).is_err(), "the port closes with the proxy");
}

#[test]
fn proxy_environment_should_point_every_client_at_the_proxy() {
    let address: SocketAddr = "127.0.0.1:4321".parse().expect("an address");
    let environment = proxy_environment(address);
    for name in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"] {
        let value = environment.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str());
        assert_eq!(value, Some("http://127.0.0.1:4321"), "{name}");
    }
    let no_proxy = environment.iter().find(|(key, _)| key == "NO_PROXY").map(|(_, value)| value.clone());
    assert_eq!(no_proxy.as_deref(), Some("localhost,127.0.0.1,::1"), "only the sandbox's own loopback bypasses");
}

#[test]
fn policy_words_should_describe_the_allow_list() {
    let settings = serde_json::json!({ "network": ["pypi.org", "files.pythonhosted.org:443", "*.npmjs.org"] });
    let policy = NetworkPolicy::from_settings(settings.as_object().expect("an object")).expect("valid");
    assert_eq!(policy.describe(), "network: only pypi.org, files.pythonhosted.org:443, *.npmjs.org");
}

fn curl_works() -> bool {
    Command::new("curl").arg("--version").output().is_ok_and(|output| output.status.success())
}

fn bubblewrap_isolates_the_network() -> bool {
    Command::new("bwrap")
        .args(["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-net", "--", "true"])
        .status()
        .is_ok_and(|status| status.success())
}

/// Runs `curl` with `environment`; answers the body on one line, a space and the status (000: no connection).
fn curl_through(environment: &[(String, String)], url: &str) -> String {
    curl(Command::new("curl").args(["-sS", "--max-time", "10", "-w", "\n%{http_code}", url])
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .envs(environment.iter().map(|(key, value)| (key.as_str(), value.as_str()))))
}

fn curl(command: &mut Command) -> String {
    let output = command.output().expect("curl runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    format!("{} {code}", body.trim_end().replace('\n', " "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_should_carry_a_loopback_port_to_the_proxy_socket() {
    if !names_resolve() || !curl_works() {
        assert!(!under_ci(), "curl is required under CI");
        return;
    }
    let allowed = NamedServer::start("127.0.0.2", ALLOWED_NAME);
    let denied = NamedServer::start("127.0.0.3", DENIED_NAME);
    let directory = tempfile::tempdir().expect("a temp dir");
    let socket = directory.path().join("proxy.sock");
    let _proxy = Proxy::start(rules(&[ALLOWED_NAME]), Some(&socket)).await.expect("the proxy starts");
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port for the bridge");
    let bridge_address = listener.local_addr().expect("its address");
    let bridge_socket = socket.clone();
    std::thread::spawn(move || serve_loopback_bridge(listener, bridge_socket));
    let environment = proxy_environment(bridge_address);
    let (allowed_port, denied_port) = (allowed.port(), denied.port());
    let (admitted, refused) = tokio::task::spawn_blocking(move || {
        (
            curl_through(&environment, &format!("http://{ALLOWED_NAME}:{allowed_port}/")),
            curl_through(&environment, &format!("http://{DENIED_NAME}:{denied_port}/")),
        )
    })
    .await
    .expect("curl");
    assert_eq!(admitted, "hello from allowed.sandlink.test 200");
    assert!(refused.ends_with(" 403") && refused.contains("network policy"), "{refused}");
    assert_eq!(denied.connections.load(Ordering::SeqCst), 0);
}

/// Inside bubblewrap's empty network namespace the bridge is the only way out, and it admits only the listed name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inside_an_empty_network_namespace_only_the_listed_name_should_be_reachable() {
    if !names_resolve() {
        return;
    }
    if !curl_works() || !bubblewrap_isolates_the_network() {
        assert!(!under_ci(), "curl and bubblewrap with --unshare-net are required under CI");
        eprintln!("skipping: curl or bubblewrap with --unshare-net is not available");
        return;
    }
    let allowed = NamedServer::start("127.0.0.2", ALLOWED_NAME);
    let denied = NamedServer::start("127.0.0.3", DENIED_NAME);
    let directory = tempfile::tempdir().expect("a temp dir");
    let socket = directory.path().join("proxy.sock");
    let _proxy = Proxy::start(rules(&[ALLOWED_NAME]), Some(&socket)).await.expect("the proxy starts");
    let test_binary = std::env::current_exe().expect("the test binary");
    let directory_text = directory.path().to_string_lossy().into_owned();
    // The private /tmp would hide a test binary built under /tmp (a checkout there), so it is bound back in.
    let binary_text = test_binary.to_string_lossy().into_owned();
    let (allowed_port, denied_port) = (allowed.port(), denied.port());
    let output = tokio::task::spawn_blocking(move || {
        Command::new("bwrap")
            .args(["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"])
            .args(["--bind", &directory_text, &directory_text, "--ro-bind", &binary_text, &binary_text])
            .args(["--unshare-net", "--die-with-parent", "--"])
            .arg(test_binary)
            .args(["--exact", "in_sandbox_bridge_helper", "--ignored", "--nocapture", "--test-threads", "1"])
            .env(HELPER_VARIABLE, format!("{}|{allowed_port}|{denied_port}", socket.display()))
            .output()
            .expect("bubblewrap runs")
    })
    .await
    .expect("the sandbox");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let result = |key: &str| {
        stdout
            .lines()
            .find_map(|line| line.strip_prefix(&format!("RESULT {key}=")))
            .unwrap_or_else(|| panic!("the helper reported {key}: {stdout}\n{}", String::from_utf8_lossy(&output.stderr)))
            .to_string()
    };
    assert_eq!(result("interfaces"), "lo", "the sandbox has only loopback");
    assert_eq!(result("allowed"), "hello from allowed.sandlink.test 200");
    let refused = result("denied");
    assert!(refused.ends_with(" 403") && refused.contains("network policy"), "{refused}");
    assert!(result("address").ends_with(" 403"), "the allowed host's address is refused: {}", result("address"));
    assert!(result("direct").ends_with(" 000"), "without the proxy nothing connects: {}", result("direct"));
    assert_eq!(allowed.requests().len(), 1, "{:?}", allowed.requests());
    assert_eq!(denied.connections.load(Ordering::SeqCst), 0, "the denied host is never reached");
}

/// The in-sandbox half of the test above: runs the bridge on the sandbox's loopback and reports what curl sees.
#[test]
#[ignore = "runs only inside bubblewrap, started by inside_an_empty_network_namespace_only_the_listed_name_should_be_reachable"]
fn in_sandbox_bridge_helper() {
    let setting = std::env::var(HELPER_VARIABLE).expect("started by the sandbox test with its settings");
    let mut parts = setting.split('|');
    let (socket, allowed_port, denied_port) = (
        parts.next().expect("socket").to_string(),
        parts.next().expect("allowed port").to_string(),
        parts.next().expect("denied port").to_string(),
    );
    // /proc/net follows the reader's network namespace (a bound /sys would show the host's).
    let mut interfaces: Vec<String> = std::fs::read_to_string("/proc/net/dev")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_once(':').map(|(name, _)| name.trim().to_string()))
        .collect();
    interfaces.sort();
    // A line of its own: the test harness has printed the test's name without a line end.
    println!("\nRESULT interfaces={}", interfaces.join(","));
    let listener = TcpListener::bind("127.0.0.1:0").expect("the sandbox's loopback is up");
    let address = listener.local_addr().expect("its address");
    std::thread::spawn(move || serve_loopback_bridge(listener, Path::new(&socket).to_path_buf()));
    let environment = proxy_environment(address);
    println!("RESULT allowed={}", curl_through(&environment, &format!("http://{ALLOWED_NAME}:{allowed_port}/")));
    println!("RESULT denied={}", curl_through(&environment, &format!("http://{DENIED_NAME}:{denied_port}/")));
    println!("RESULT address={}", curl_through(&environment, &format!("http://127.0.0.2:{allowed_port}/")));
    let direct = curl(
        Command::new("curl")
            .args(["-sS", "--max-time", "5", "--noproxy", "*", "-w", "\n%{http_code}"])
            .arg(format!("http://{ALLOWED_NAME}:{allowed_port}/")),
    );
    println!("RESULT direct={direct}");
}
