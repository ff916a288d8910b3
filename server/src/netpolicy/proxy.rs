//! The allow-list proxy: a small HTTP forwarding proxy (`CONNECT host:port` tunnels for TLS, absolute-form
//! `GET http://host/…` forwarding for plain HTTP) that admits only the hosts a session's policy lists, plus the
//! in-sandbox bridge that carries a sandbox's loopback proxy port to the proxy's Unix socket.
//!
//! This is the sandbox-runtime design: the sandbox has a network namespace of its own with only `lo`, its clients
//! find the proxy through `HTTP_PROXY`-style variables, and the proxy on the host resolves names itself (the system
//! resolver) and connects for them. A refused host gets `403` at once, with a body and a `Proxy-Status` header that
//! name the policy, so a run fails fast with a sentence instead of a timeout. Every connection is bounded: a cap on
//! concurrent connections, a deadline for the request head, a connect timeout and an idle timeout, so a hostile
//! sandbox cannot tie up the server.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener as StdTcpListener, TcpStream as StdTcpStream};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{admits, describe_hosts, AllowedHost};
use crate::error::{Error, Result};

/// The largest request head (request line and headers) the proxy reads; real clients send well under 8 KiB.
const MAX_HEAD_BYTES: usize = 32 * 1024;
/// Concurrent connections the in-sandbox bridge carries; more wait in the listen backlog's place (are closed).
const BRIDGE_MAX_CONNECTIONS: usize = 512;

/// How much a proxy lets one sandbox use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; the next one is answered `503` and closed.
    pub max_connections: usize,
    /// How long a client may take to send its request head.
    pub head_timeout: Duration,
    /// How long resolving and connecting to an allowed host may take.
    pub connect_timeout: Duration,
    /// A tunnel or forwarded request with no bytes in either direction for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 256,
            head_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// A running allow-list proxy. It serves until dropped; dropping it closes its listeners and every connection.
pub struct Proxy {
    tcp_address: SocketAddr,
    unix_socket: Option<PathBuf>,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

/// What every connection of one proxy reads.
struct Shared {
    rules: Vec<AllowedHost>,
    limits: Limits,
    slots: Arc<Semaphore>,
    /// Connections served so far, admitted or not (for tests and diagnostics).
    served: AtomicUsize,
}

impl Proxy {
    /// Starts a proxy admitting only `rules`, on a fresh loopback port (`127.0.0.1:0`) and, when given, on a Unix
    /// socket at `unix_socket` (a stale file there is replaced). Must be called within a tokio runtime.
    pub async fn start(rules: Vec<AllowedHost>, unix_socket: Option<&Path>) -> Result<Proxy> {
        Proxy::start_with(rules, unix_socket, Limits::default()).await
    }

    /// `start` with explicit limits.
    pub async fn start_with(rules: Vec<AllowedHost>, unix_socket: Option<&Path>, limits: Limits) -> Result<Proxy> {
        let listener = TcpListener::bind((IpAddr::from([127, 0, 0, 1]), 0))
            .await
            .map_err(|error| Error::io("Could not open a loopback port for the network policy's proxy", error))?;
        let tcp_address = listener
            .local_addr()
            .map_err(|error| Error::io("Could not read the network policy proxy's port", error))?;
        let unix_listener = match unix_socket {
            Some(path) => {
                // Only a socket left by an earlier proxy is replaced; anything else at the path is an error below.
                if std::fs::symlink_metadata(path).is_ok_and(|meta| {
                    use std::os::unix::fs::FileTypeExt;
                    meta.file_type().is_socket()
                }) {
                    let _ = std::fs::remove_file(path);
                }
                Some(UnixListener::bind(path).map_err(|error| {
                    Error::io(format!("Could not open the network policy proxy's socket {}", path.display()), error)
                })?)
            }
            None => None,
        };
        let shared = Arc::new(Shared {
            rules,
            limits,
            slots: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            served: AtomicUsize::new(0),
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept_tcp(listener, shared.clone(), stop.clone()));
        if let Some(unix_listener) = unix_listener {
            tokio::spawn(accept_unix(unix_listener, shared.clone(), stop.clone()));
        }
        tracing::debug!(%tcp_address, rules = %describe_hosts(&shared.rules), "network policy proxy started");
        Ok(Proxy { tcp_address, unix_socket: unix_socket.map(Path::to_path_buf), shared, stop })
    }

    /// The loopback address the proxy listens on.
    pub fn tcp_address(&self) -> SocketAddr {
        self.tcp_address
    }

    /// The Unix socket the proxy listens on, when it was given one.
    pub fn unix_socket(&self) -> Option<&Path> {
        self.unix_socket.as_deref()
    }

    /// Serves the proxy on one more loopback listener the caller opened: the docker driver's, made inside a
    /// container's network namespace so that the container reaches the proxy and nothing else. Connections share
    /// the proxy's rules and limits. The listener and every connection it accepted close when the returned handle
    /// (or the proxy) is dropped. Must be called within a tokio runtime.
    pub fn serve_listener(&self, listener: StdTcpListener) -> Result<ServedListener> {
        let listener = listener
            .set_nonblocking(true)
            .and_then(|()| TcpListener::from_std(listener))
            .map_err(|error| Error::io("Could not serve the network policy proxy on its sandbox port", error))?;
        let stop = self.stop.child_token();
        tokio::spawn(accept_tcp(listener, self.shared.clone(), stop.clone()));
        Ok(ServedListener { stop })
    }

    /// Connections open right now.
    pub fn open_connections(&self) -> usize {
        self.shared.limits.max_connections.max(1) - self.shared.slots.available_permits()
    }

    /// Connections accepted since the proxy started, admitted or refused.
    pub fn connections_served(&self) -> usize {
        self.shared.served.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(path) = &self.unix_socket {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A further listener a proxy serves (`Proxy::serve_listener`); dropping it closes the listener and its connections.
pub struct ServedListener {
    stop: CancellationToken,
}

impl Drop for ServedListener {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The environment a run needs to use a proxy at `address`: the upper- and lower-case `*_PROXY` variables every
/// common client reads. `NO_PROXY` names only the sandbox's own loopback, which never leaves the sandbox, so
/// servers a run starts for itself stay reachable while an inherited corporate `NO_PROXY` cannot send anything
/// around the proxy.
pub fn proxy_environment(address: SocketAddr) -> Vec<(String, String)> {
    let url = format!("http://{address}");
    let no_proxy = "localhost,127.0.0.1,::1".to_string();
    vec![
        ("HTTP_PROXY".into(), url.clone()),
        ("HTTPS_PROXY".into(), url.clone()),
        ("ALL_PROXY".into(), url.clone()),
        ("http_proxy".into(), url.clone()),
        ("https_proxy".into(), url.clone()),
        ("all_proxy".into(), url),
        ("NO_PROXY".into(), no_proxy.clone()),
        ("no_proxy".into(), no_proxy),
    ]
}

async fn accept_tcp(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                spawn_connection(stream, &shared, &stop);
            }
            Err(error) => accept_failed(error).await,
        }
    }
}

async fn accept_unix(listener: UnixListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => spawn_connection(stream, &shared, &stop),
            Err(error) => accept_failed(error).await,
        }
    }
}

/// Out of file descriptors (or a similar passing failure): wait a moment instead of spinning on accept.
async fn accept_failed(error: io::Error) {
    tracing::debug!(%error, "the network policy proxy could not accept a connection");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

fn spawn_connection<S>(stream: S, shared: &Arc<Shared>, stop: &CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    shared.served.fetch_add(1, Ordering::Relaxed);
    let shared = shared.clone();
    let stop = stop.clone();
    let permit = shared.slots.clone().try_acquire_owned();
    tokio::spawn(async move {
        let mut stream = stream;
        let Ok(_permit) = permit else {
            let message = format!(
                "sandlink's network proxy has {} connections open for this session already; close some and retry.",
                shared.limits.max_connections
            );
            let _ = tokio::time::timeout(Duration::from_secs(1), respond(&mut stream, 503, "Service Unavailable", &message)).await;
            return;
        };
        tokio::select! {
            _ = stop.cancelled() => {}
            outcome = serve(stream, &shared) => {
                if let Err(error) = outcome {
                    tracing::debug!(%error, "a network policy proxy connection ended with an error");
                }
            }
        }
    });
}

/// A parsed request head.
struct Head {
    method: String,
    target: String,
    version: String,
    /// Header lines as sent, without their line ends.
    headers: Vec<String>,
}

/// Serves one client connection: reads its head, checks the policy, then tunnels or forwards.
async fn serve<S>(mut client: S, shared: &Shared) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limits = shared.limits;
    let (head_bytes, rest) = match tokio::time::timeout(limits.head_timeout, read_head(&mut client)).await {
        Err(_) => return respond(&mut client, 408, "Request Timeout", "The request head did not arrive in time.").await,
        Ok(Err(error)) if error.kind() == io::ErrorKind::InvalidData => {
            return respond(&mut client, 431, "Request Header Fields Too Large", "The request head is too large.").await
        }
        Ok(Err(error)) => return Err(error),
        Ok(Ok(None)) => return Ok(()),
        Ok(Ok(Some(parts))) => parts,
    };
    let Some(head) = parse_head(&head_bytes) else {
        return respond(&mut client, 400, "Bad Request", "sandlink's network proxy could not read this request.").await;
    };
    let tunnel = head.method.eq_ignore_ascii_case("CONNECT");
    let parsed = if tunnel { parse_authority(&head.target, None).map(|(host, port)| (host, port, None)) } else { parse_http_url(&head.target) };
    let Some((host, port, path)) = parsed else {
        let message = if tunnel {
            "CONNECT needs a host and a port, like CONNECT pypi.org:443.".to_string()
        } else {
            "sandlink's network proxy forwards plain HTTP requests in absolute form (GET http://host/path) and \
             HTTPS through CONNECT; this request is neither."
                .to_string()
        };
        return respond(&mut client, 400, "Bad Request", &message).await;
    };
    if !admits(&shared.rules, &host, port) {
        tracing::info!(host = %host, port, "the network policy refused a connection");
        let message = format!(
            "sandlink refused a connection to {}: sandlink's network policy for this session allows only {}; add \
             the host to `network` in your profile.",
            display_host_port(&host, port),
            describe_hosts(&shared.rules)
        );
        return respond(&mut client, 403, "Forbidden", &message).await;
    }
    let upstream = match tokio::time::timeout(limits.connect_timeout, connect(&host, port)).await {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(error)) => {
            let message = format!("sandlink's network proxy could not reach {}: {error}.", display_host_port(&host, port));
            return respond(&mut client, 502, "Bad Gateway", &message).await;
        }
        Err(_) => {
            let message = format!(
                "sandlink's network proxy could not reach {} within {} s.",
                display_host_port(&host, port),
                limits.connect_timeout.as_secs()
            );
            return respond(&mut client, 504, "Gateway Timeout", &message).await;
        }
    };
    let mut upstream = upstream;
    if tunnel {
        client.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n").await?;
        if !rest.is_empty() {
            upstream.write_all(&rest).await?;
        }
        relay(client, upstream, limits.idle_timeout, false).await
    } else {
        let path = path.unwrap_or_else(|| "/".into());
        let mut forwarded = format!("{} {} {}\r\n", head.method, path, head.version);
        let mut has_host = false;
        for line in &head.headers {
            let name = line.split(':').next().unwrap_or_default().trim().to_ascii_lowercase();
            match name.as_str() {
                // Hop-by-hop headers for the proxy itself; the proxy decides the upstream connection's fate.
                "proxy-connection" | "proxy-authorization" | "connection" | "keep-alive" => continue,
                "host" => has_host = true,
                _ => {}
            }
            forwarded.push_str(line);
            forwarded.push_str("\r\n");
        }
        if !has_host {
            forwarded.push_str(&format!("Host: {}\r\n", display_host_port(&host, port)));
        }
        // One request per upstream connection: what follows on the client connection goes to this same
        // (admitted) host, so a second request can never reach a host the policy did not check.
        forwarded.push_str("Connection: close\r\n\r\n");
        upstream.write_all(forwarded.as_bytes()).await?;
        if !rest.is_empty() {
            upstream.write_all(&rest).await?;
        }
        relay(client, upstream, limits.idle_timeout, true).await
    }
}

/// Reads until the blank line ending the head; answers the head and any bytes read past it. `None` when the
/// client closed before sending anything; `InvalidData` when the head exceeds `MAX_HEAD_BYTES`.
async fn read_head<S: AsyncRead + Unpin>(client: &mut S) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let count = client.read(&mut chunk).await?;
        if count == 0 {
            return if buffer.is_empty() {
                Ok(None)
            } else {
                Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the client closed mid-request"))
            };
        }
        let searched_from = buffer.len().saturating_sub(3);
        buffer.extend_from_slice(&chunk[..count]);
        if let Some(position) = buffer[searched_from..].windows(4).position(|window| window == b"\r\n\r\n") {
            let end = searched_from + position + 4;
            let rest = buffer.split_off(end);
            return Ok(Some((buffer, rest)));
        }
        if buffer.len() > MAX_HEAD_BYTES {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "request head too large"));
        }
    }
}

fn parse_head(bytes: &[u8]) -> Option<Head> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_string();
    let target = request_line.next()?.to_string();
    let version = request_line.next()?.to_string();
    if request_line.next().is_some() || method.is_empty() || !version.starts_with("HTTP/1.") {
        return None;
    }
    if !method.bytes().all(|byte| byte.is_ascii_alphabetic()) {
        return None;
    }
    let headers = lines.filter(|line| !line.is_empty()).map(str::to_string).collect::<Vec<_>>();
    if headers.iter().any(|line| !line.contains(':') || line.starts_with([' ', '\t'])) {
        return None;
    }
    Some(Head { method, target, version, headers })
}

/// Splits `host:port` (IPv6 in brackets); without a port, `default_port` is used when given. The host comes back
/// in lower case without brackets, checked to be a name or an address.
fn parse_authority(authority: &str, default_port: Option<u16>) -> Option<(String, u16)> {
    if authority.is_empty() || authority.contains(['@', '/', ' ', '\\']) {
        return None;
    }
    let (host, port_text) = if let Some(rest) = authority.strip_prefix('[') {
        let (inner, after) = rest.split_once(']')?;
        inner.parse::<std::net::Ipv6Addr>().ok()?;
        match after {
            "" => (inner, None),
            _ => (inner, Some(after.strip_prefix(':')?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port_text {
        Some(text) if !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()) => text.parse::<u16>().ok()?,
        Some(_) => return None,
        None => default_port?,
    };
    if port == 0 {
        return None;
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.parse::<IpAddr>().is_err() && super::check_name(&host).is_err() {
        return None;
    }
    Some((host, port))
}

/// Splits an absolute-form `http://host[:port]/path?query` target into host, port and origin-form path.
fn parse_http_url(target: &str) -> Option<(String, u16, Option<String>)> {
    let scheme_end = target.find("://")?;
    if !target[..scheme_end].eq_ignore_ascii_case("http") {
        return None;
    }
    let after_scheme = &target[scheme_end + 3..];
    let authority_end = after_scheme.find(['/', '?', '#']).unwrap_or(after_scheme.len());
    let (host, port) = parse_authority(&after_scheme[..authority_end], Some(80))?;
    let path = &after_scheme[authority_end..];
    let path = path.split('#').next().unwrap_or_default();
    let path = match path.chars().next() {
        None => "/".to_string(),
        Some('?') => format!("/{path}"),
        Some(_) => path.to_string(),
    };
    Some((host, port, Some(path)))
}

fn display_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Resolves with the system resolver (so `/etc/hosts` counts) and connects to the first address that answers.
async fn connect(host: &str, port: u16) -> io::Result<TcpStream> {
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    let mut last_error = io::Error::new(io::ErrorKind::NotFound, "the name has no addresses");
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(error) => last_error = error,
        }
    }
    Err(last_error)
}

/// Writes a short plain-text answer and ends the connection. The sentence also goes in `Proxy-Status` (RFC 9209),
/// which tools show for a refused `CONNECT` whose body they never print.
async fn respond<S: AsyncWrite + Unpin>(client: &mut S, status: u16, reason: &str, message: &str) -> io::Result<()> {
    let body = format!("{message}\n");
    let details = message.replace(['"', '\\'], "'");
    let error = match status {
        403 => "destination_ip_prohibited",
        502 => "destination_unavailable",
        504 => "connection_timeout",
        503 => "proxy_internal_error",
        _ => "http_protocol_error",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Proxy-Status: sandlink; error={error}; details=\"{details}\"\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    client.write_all(response.as_bytes()).await?;
    client.flush().await?;
    let _ = client.shutdown().await;
    Ok(())
}

/// When something last moved, in milliseconds since `start`.
struct Activity {
    start: Instant,
    last: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        self.start.elapsed().saturating_sub(Duration::from_millis(self.last.load(Ordering::Relaxed)))
    }
}

/// Copies both ways until both directions end, or (`end_with_response`) the upstream side ends, or nothing moved
/// for `idle_timeout`.
async fn relay<C, U>(client: C, upstream: U, idle_timeout: Duration, end_with_response: bool) -> io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity { start: Instant::now(), last: AtomicU64::new(0) };
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut upstream_read, mut upstream_write) = tokio::io::split(upstream);
    let outbound = copy_half(&mut client_read, &mut upstream_write, &activity);
    let inbound = copy_half(&mut upstream_read, &mut client_write, &activity);
    let watchdog = async {
        loop {
            let idle = activity.idle_for();
            if idle >= idle_timeout {
                return;
            }
            tokio::time::sleep(idle_timeout - idle).await;
        }
    };
    tokio::pin!(outbound, inbound, watchdog);
    let (mut outbound_done, mut inbound_done) = (false, false);
    while !(outbound_done && inbound_done) {
        tokio::select! {
            outcome = &mut outbound, if !outbound_done => {
                outbound_done = true;
                outcome?;
            }
            outcome = &mut inbound, if !inbound_done => {
                inbound_done = true;
                outcome?;
                if end_with_response {
                    break;
                }
            }
            _ = &mut watchdog => {
                tracing::debug!("closing an idle network policy proxy connection");
                break;
            }
        }
    }
    Ok(())
}

/// Copies one direction; at its end, passes the end on (half-close) so the other side sees it.
async fn copy_half<R, W>(reader: &mut R, writer: &mut W, activity: &Activity) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let count = reader.read(&mut buffer).await?;
        if count == 0 {
            let _ = writer.shutdown().await;
            return Ok(());
        }
        activity.touch();
        writer.write_all(&buffer[..count]).await?;
        activity.touch();
    }
}

/// Listens on `listen` (inside a sandbox: its private loopback) and carries every connection to the proxy's Unix
/// socket. Blocking: one thread per connection, forever; returns only when the port cannot be opened.
pub fn bridge_loopback_to_unix(listen: SocketAddr, unix_socket: PathBuf) -> io::Result<()> {
    let listener = StdTcpListener::bind(listen)?;
    serve_loopback_bridge(listener, unix_socket)
}

/// `bridge_loopback_to_unix` on a listener the caller bound already (so it knows the port is open before it
/// starts anything that uses it).
pub fn serve_loopback_bridge(listener: StdTcpListener, unix_socket: PathBuf) -> io::Result<()> {
    let unix_socket = Arc::new(unix_socket);
    let active = Arc::new(AtomicUsize::new(0));
    for client in listener.incoming() {
        let client = match client {
            Ok(client) => client,
            Err(error) if error.raw_os_error() == Some(libc::EMFILE) || error.raw_os_error() == Some(libc::ENFILE) => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            Err(_) => continue,
        };
        if active.load(Ordering::Relaxed) >= BRIDGE_MAX_CONNECTIONS {
            continue;
        }
        active.fetch_add(1, Ordering::Relaxed);
        let guard = CountGuard(active.clone());
        let unix_socket = unix_socket.clone();
        let spawned = std::thread::Builder::new()
            .name("sandlink-net-bridge".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                let _guard = guard;
                let _ = bridge_connection(client, &unix_socket);
            });
        if spawned.is_err() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// Lowers the bridge's connection count when a connection's thread ends, however it ends.
struct CountGuard(Arc<AtomicUsize>);

impl Drop for CountGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn bridge_connection(mut client: StdTcpStream, unix_socket: &Path) -> io::Result<()> {
    let _ = client.set_nodelay(true);
    let mut upstream = match StdUnixStream::connect(unix_socket) {
        Ok(upstream) => upstream,
        Err(error) => {
            let body = format!("sandlink's network proxy is not reachable from this sandbox ({error}).\n");
            let _ = write!(
                client,
                "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
            return Err(error);
        }
    };
    let mut client_reader = client.try_clone()?;
    let mut upstream_writer = upstream.try_clone()?;
    let outbound = std::thread::Builder::new().name("sandlink-net-bridge-out".into()).stack_size(128 * 1024).spawn(
        move || {
            let _ = copy_blocking(&mut client_reader, &mut upstream_writer);
            let _ = upstream_writer.shutdown(std::net::Shutdown::Write);
        },
    )?;
    let _ = copy_blocking(&mut upstream, &mut client);
    // The proxy ended the connection (answer complete, refused, idle): end the client's side too, which also
    // wakes the outbound thread from a read that would otherwise wait for a client that never speaks again.
    let _ = client.shutdown(std::net::Shutdown::Both);
    let _ = upstream.shutdown(std::net::Shutdown::Both);
    let _ = outbound.join();
    Ok(())
}

fn copy_blocking(reader: &mut impl Read, writer: &mut impl Write) -> io::Result<()> {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let count = match reader.read(&mut buffer) {
            Ok(0) => return Ok(()),
            Ok(count) => count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        writer.write_all(&buffer[..count])?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_should_parse_names_addresses_and_ports() {
        assert_eq!(parse_authority("PyPI.org:443", None), Some(("pypi.org".into(), 443)));
        assert_eq!(parse_authority("[::1]:8080", None), Some(("::1".into(), 8080)));
        assert_eq!(parse_authority("127.0.0.2", Some(80)), Some(("127.0.0.2".into(), 80)));
        assert_eq!(parse_authority("pypi.org", None), None, "CONNECT needs a port");
        assert_eq!(parse_authority("user@pypi.org:443", None), None);
        assert_eq!(parse_authority("pypi.org:0", None), None);
        assert_eq!(parse_authority("py pi.org:1", None), None);
    }

    #[test]
    fn absolute_urls_should_become_origin_form() {
        assert_eq!(
            parse_http_url("http://Allowed.sandlink.test:8080/a/b?c=d#frag"),
            Some(("allowed.sandlink.test".into(), 8080, Some("/a/b?c=d".into())))
        );
        assert_eq!(parse_http_url("http://example.com"), Some(("example.com".into(), 80, Some("/".into()))));
        assert_eq!(parse_http_url("http://example.com?x"), Some(("example.com".into(), 80, Some("/?x".into()))));
        assert_eq!(parse_http_url("https://example.com/"), None, "HTTPS goes through CONNECT");
        assert_eq!(parse_http_url("/just/a/path"), None);
    }

    #[test]
    fn heads_should_parse_and_refuse_garbage() {
        let head = parse_head(b"GET http://a.example/ HTTP/1.1\r\nHost: a.example\r\nAccept: */*\r\n\r\n").unwrap();
        assert_eq!((head.method.as_str(), head.target.as_str()), ("GET", "http://a.example/"));
        assert_eq!(head.headers, vec!["Host: a.example".to_string(), "Accept: */*".to_string()]);
        assert!(parse_head(b"GET http://a.example/\r\n\r\n").is_none());
        assert!(parse_head(b"GET / SPDY/3\r\n\r\n").is_none());
        assert!(parse_head(b"GET / HTTP/1.1\r\nno colon\r\n\r\n").is_none());
    }
}
