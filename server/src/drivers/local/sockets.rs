//! A local sandbox's listening TCP sockets, seen from this machine: the kernel's sock_diag for the listeners, `/proc`
//! for which of them the sandbox's processes hold.

use std::collections::BTreeSet;
use std::path::Path;

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

use super::processes;
use crate::drivers::SocketsSeen;

/// The sockets a sandbox's processes hold and the TCP listeners of its network namespace (the engine's port watch,
/// without a command beside the runs). `root` is the agent, or under bubblewrap bubblewrap's process outside the
/// sandbox, whose one child is the agent. The agent's own sockets (its listener, the network bridge) serve sandlink,
/// not a preview, and are left out. `None` when the sandbox has a network of its own (then only a look from inside
/// sees its listeners), or the kernel would not answer. Only bubblewrap makes namespaces: under Landlock (or none)
/// the agent is in this process's network by construction, and is not asked (an unprivileged server may not open
/// the non-dumpable agent's `/proc/PID/ns/net` there, where no user namespace of the sandbox's gives it the right).
pub fn seen(root: libc::pid_t, root_is_bubblewrap: bool) -> Option<SocketsSeen> {
    let below = processes::descendants_of(root);
    let agent = match root_is_bubblewrap {
        true => below.iter().copied().find(|pid| processes::parent_of(*pid) == Some(root))?,
        false => root,
    };
    if root_is_bubblewrap && !shares_this_network(agent)? {
        return None;
    }
    let listening = listening_tcp().ok()?;
    let mut socket_inodes = BTreeSet::new();
    for pid in below.into_iter().filter(|pid| *pid != agent) {
        socket_inodes.extend(socket_inodes_of(pid));
    }
    Some(SocketsSeen { socket_inodes, listening })
}

/// Whether process `pid` is in this process's network namespace; `None` when that cannot be read.
fn shares_this_network(pid: libc::pid_t) -> Option<bool> {
    use std::os::unix::fs::MetadataExt;
    let own = std::fs::metadata("/proc/self/ns/net").ok()?;
    let theirs = std::fs::metadata(Path::new("/proc").join(pid.to_string()).join("ns/net")).ok()?;
    Some(own.ino() == theirs.ino() && own.dev() == theirs.dev())
}

/// The inodes of the sockets process `pid` holds, from its descriptors' `socket:[INODE]` links.
fn socket_inodes_of(pid: libc::pid_t) -> Vec<u64> {
    let Ok(descriptors) = std::fs::read_dir(Path::new("/proc").join(pid.to_string()).join("fd")) else { return Vec::new() };
    descriptors
        .flatten()
        .filter_map(|descriptor| std::fs::read_link(descriptor.path()).ok())
        .filter_map(|target| {
            let link = target.to_str()?;
            link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// Every TCP socket listening in this thread's network namespace, IPv4 and IPv6: its port and its inode. The kernel
/// walks only its table of listeners, where `/proc/net/tcp` walks every bucket of the connections' table too.
pub fn listening_tcp() -> std::io::Result<Vec<(u16, u64)>> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    // The kernel always ends a dump; should it not, the port watch gives up this look rather than hang.
    let limit = libc::timeval { tv_sec: 2, tv_usec: 0 };
    // SAFETY: setsockopt on a socket we own, with a valid timeval of the size given.
    let set = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&limit as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if set != 0 {
        return Err(std::io::Error::last_os_error());
    }
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut listening = Vec::new();
    for (family, any) in [(AF_INET, SocketId::new_v4()), (AF_INET6, SocketId::new_v6())] {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let request = SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::LISTEN,
            socket_id: any,
        });
        let mut message = NetlinkMessage::new(header, request.into());
        message.finalize();
        let mut bytes = vec![0; message.buffer_len()];
        message.serialize(&mut bytes);
        socket.send(&bytes, 0)?;
        receive_listeners(&socket, &mut listening)?;
    }
    Ok(listening)
}

/// Reads one dump's answers until its end, adding each listener's port and inode.
fn receive_listeners(socket: &Socket, listening: &mut Vec<(u16, u64)>) -> std::io::Result<()> {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let size = socket.recv(&mut &mut buffer[..], 0)?;
        if size == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "sock_diag closed its answer"));
        }
        let mut offset = 0;
        while offset < size {
            let message = NetlinkMessage::<SockDiagMessage>::deserialize(&buffer[offset..size])
                .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidData, error.to_string()))?;
            match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                    listening.push((response.header.socket_id.source_port, u64::from(response.header.inode)));
                }
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(error) => return Err(error.to_io()),
                _ => {}
            }
            let length = message.header.length as usize;
            if length == 0 {
                break;
            }
            // Messages are aligned to 4 bytes within one datagram.
            offset += (length + 3) & !3;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shell plays the agent with a listening server below it, then bubblewrap's process with the server as its
    /// agent: the server's socket is the sandbox's in the first case, left out in the second.
    #[test]
    fn seen_should_list_what_the_sandbox_holds_and_leave_the_agent_out() {
        let server = "import socket, time; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); \
                      print(s.getsockname()[1], flush=True); time.sleep(30)";
        let mut shell = std::process::Command::new("/bin/sh")
            .args(["-c", &format!("python3 -c \"{server}\" & wait")])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("sh");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(shell.stdout.take().expect("stdout")), &mut line)
            .expect("the server's port");
        let port: u16 = line.trim().parse().expect("a port");
        let root = shell.id() as libc::pid_t;
        let as_sandbox = seen(root, false).expect("seen");
        let (_, inode) = *as_sandbox.listening.iter().find(|(listening, _)| *listening == port).expect("the port listens");
        assert!(as_sandbox.socket_inodes.contains(&inode), "the server's socket is the sandbox's: {as_sandbox:?}");
        let as_agent = seen(root, true).expect("seen");
        assert!(!as_agent.socket_inodes.contains(&inode), "the agent's own sockets are left out: {as_agent:?}");
        assert!(as_agent.listening.iter().any(|(listening, _)| *listening == port), "yet it listens: {as_agent:?}");
        processes::kill_descendants(root);
        let _ = shell.kill();
        let _ = shell.wait();
    }

    #[test]
    fn listening_tcp_should_find_an_ipv6_listener_and_not_a_connected_socket() {
        let listener = std::net::TcpListener::bind("[::1]:0").expect("an IPv6 listener");
        let port = listener.local_addr().expect("address").port();
        let client = std::net::TcpStream::connect(("::1", port)).expect("connect");
        let client_port = client.local_addr().expect("address").port();
        let listening = listening_tcp().expect("sock_diag answers");
        assert!(listening.iter().any(|(listening, _)| *listening == port), "{listening:?}");
        assert!(!listening.iter().any(|(listening, _)| *listening == client_port), "a connection is no listener");
    }
}
