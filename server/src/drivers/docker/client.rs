//! The Docker Engine API client: a newtype around bollard so that no bollard type leaves this module.
//!
//! Every call maps bollard's errors to `crate::error::Error` here: a daemon that cannot be reached is
//! `driverUnavailable` with a sentence on how to start Docker; an answer with an error status is `remoteError`.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptions, DownloadFromContainerOptions, EventsOptions, InspectContainerOptions,
    ListContainersOptions, ListImagesOptions, RemoveContainerOptions, StatsOptions, UploadToContainerOptions,
};
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};

use crate::drivers::shell::{Chunk, OutputStream};
use crate::streams::{BoxedReader, BoxedWriter};
use crate::error::{Error, Result};
use crate::protocol::PtySize;

/// The oldest API version sandlink speaks; Debian's engine 20.10 speaks 1.41 and newer engines accept it.
const MINIMUM_API: &str = "1.41";

/// How to get a daemon running, appended to every "cannot reach Docker" error.
const HOW_TO_START: &str = "Start Docker (for example `sudo systemctl start docker`, or `dockerd &` as root), \
or point DOCKER_HOST at a running daemon or podman's socket (`podman system service --time=0 unix:///run/podman.sock`).";

/// A connection to one Docker (or podman) daemon.
#[derive(Clone)]
pub struct Client {
    docker: bollard::Docker,
    /// Where the daemon was looked for, for error messages.
    host: String,
    /// The daemon's description from the answer `connect` already had, for the first `describe_daemon`, so a
    /// driver probe that has just connected does not ask the (slow to answer) `/version` a third time.
    /// Only a fresh answer stands in for asking again (`FRESH_DESCRIPTION`).
    described_at_connect: std::sync::Arc<std::sync::Mutex<Option<(std::time::Instant, String)>>>,
}

/// A started exec: its id, its demultiplexed output and its stdin.
pub struct AttachedExec {
    pub id: String,
    pub output: OutputStream,
    pub input: BoxedWriter,
}

/// What sandlink needs to create a container.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub entrypoint: Vec<String>,
    pub env: Vec<String>,
    pub user: Option<String>,
    pub labels: HashMap<String, String>,
    pub nano_cpus: Option<i64>,
    pub memory_bytes: Option<i64>,
    pub pids_limit: i64,
    /// `bridge` (the default) or `none`.
    pub network_mode: String,
    /// Container ports to publish on 127.0.0.1 with ephemeral host ports.
    pub ports: Vec<u16>,
}

/// What sandlink reads back about a container.
#[derive(Debug, Clone)]
pub struct ContainerFacts {
    pub id: String,
    pub name: String,
    pub running: bool,
    /// `running`, `exited`, `dead`, ….
    pub status: String,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    /// Container port (tcp) to the host port it is published on.
    pub published: HashMap<u16, u16>,
    /// The container's address on its first network, when it has one.
    pub address: Option<String>,
    /// `HostConfig.NetworkMode` as created: `bridge` (or `default`), `none`, `host`, a network's name.
    pub network_mode: String,
    /// The pid of the container's first process as the daemon's machine numbers it; `None` when it is not running.
    pub pid: Option<u32>,
    /// `Config.Hostname`, which Docker also writes to the container's `/etc/hostname`.
    pub hostname: String,
}

/// A container that sandlink created, as a listing reports it.
#[derive(Debug, Clone)]
pub struct LabelledContainer {
    pub id: String,
    pub labels: HashMap<String, String>,
}

/// One CPU and memory sample.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatsSample {
    pub container_cpu_ns: u64,
    pub system_cpu_ns: u64,
    pub online_cpus: u32,
    pub memory_bytes: Option<u64>,
}

/// A container event that ends it for sandlink's purposes.
#[derive(Debug, Clone)]
pub struct ContainerEvent {
    pub action: String,
    pub exit_code: Option<String>,
}

/// How old the answer `connect` had may be and still describe the daemon: a probe right after connecting reuses
/// it; a later one (the client was made by the clean-up at start, say) asks the daemon again.
const FRESH_DESCRIPTION: Duration = Duration::from_secs(1);

/// "Docker 27.1.0 (API 1.46) at unix:///var/run/docker.sock", from a `/version` answer.
fn describe_version(version: &bollard::models::SystemVersion, host: &str) -> String {
    let podman = version
        .components
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|component| component.name.to_ascii_lowercase().contains("podman"));
    format!(
        "{} {} (API {}) at {host}",
        if podman { "Podman" } else { "Docker" },
        version.version.as_deref().unwrap_or_default(),
        version.api_version.as_deref().unwrap_or_default(),
    )
}

/// Where the daemon is: `DOCKER_HOST` as Docker's own client reads it, else the default socket.
fn daemon_host() -> String {
    std::env::var("DOCKER_HOST").ok().filter(|value| !value.is_empty()).unwrap_or_else(|| "unix:///var/run/docker.sock".to_string())
}

impl Client {
    /// Connects to `DOCKER_HOST` or the default socket and negotiates the API version.
    pub async fn connect() -> Result<Self> {
        let host = daemon_host();
        let unreachable = |detail: String| Error::DriverUnavailable {
            driver: "docker".into(),
            message: format!("Docker is not reachable at {host} ({detail}). {HOW_TO_START}"),
        };
        let docker = bollard::Docker::connect_with_defaults().map_err(|error| unreachable(error.to_string()))?;
        // Long-running calls (downloads, attached execs) are streams; this bounds only single request/answer calls.
        let docker = docker.with_timeout(Duration::from_secs(120));
        // The version check and the negotiation both ask `/version`; asked together they cost one round trip
        // (the daemon takes milliseconds to answer it, which a driver probe at start-up waits for).
        let negotiation = docker.clone().negotiate_version();
        let probe = tokio::time::timeout(Duration::from_secs(5), futures::future::join(docker.version(), negotiation)).await;
        let (version, negotiated) = match probe {
            Ok((Ok(version), negotiated)) => (version, negotiated),
            Ok((Err(error), _)) => return Err(unreachable(describe(&error))),
            Err(_) => return Err(unreachable("no answer within 5 s".into())),
        };
        let description = describe_version(&version, &host);
        let server_api = version.api_version.unwrap_or_default();
        if !api_at_least(&server_api, MINIMUM_API) {
            return Err(Error::DriverUnavailable {
                driver: "docker".into(),
                message: format!(
                    "The Docker daemon at {host} speaks API {server_api}; sandlink needs {MINIMUM_API} or newer \
                     (Docker 20.10+). Upgrade Docker."
                ),
            });
        }
        let docker = negotiated.map_err(|error| unreachable(describe(&error)))?;
        Ok(Client { docker, host, described_at_connect: std::sync::Arc::new(std::sync::Mutex::new(Some((std::time::Instant::now(), description)))) })
    }

    /// A client for a daemon on a Unix socket that speaks the oldest API sandlink supports, made without asking the
    /// daemon anything: for a look at sandlink's containers at every start, where `connect`'s `/version` has the
    /// daemon start `runc` and `docker-init` on the cores the start needs. `None` for another kind of host, or where
    /// the socket is not there; `connect` then decides.
    pub fn for_listing() -> Option<Self> {
        let host = daemon_host();
        let socket = host.strip_prefix("unix://")?;
        if !std::path::Path::new(socket).exists() {
            return None;
        }
        let (major, minor) = MINIMUM_API.split_once('.')?;
        let version = bollard::ClientVersion { major_version: major.parse().ok()?, minor_version: minor.parse().ok()? };
        let docker = bollard::Docker::connect_with_unix(&host, 10, &version).ok()?;
        Some(Client { docker, host, described_at_connect: std::sync::Arc::new(std::sync::Mutex::new(None)) })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// The daemon's product and version, for `DriverInfo.detail`.
    pub async fn describe_daemon(&self) -> Result<String> {
        if let Some((asked, description)) = crate::locks::lock(&self.described_at_connect).take() {
            if asked.elapsed() < FRESH_DESCRIPTION {
                return Ok(description);
            }
        }
        let version = self.docker.version().await.map_err(|error| self.map(error))?;
        Ok(describe_version(&version, &self.host))
    }

    /// Whether the image exists locally.
    pub async fn image_exists(&self, image: &str) -> Result<bool> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(false),
            Err(error) => Err(self.map(error)),
        }
    }

    /// Creates and starts a container; answers its id.
    pub async fn create_and_start(&self, spec: ContainerSpec) -> Result<String> {
        let mut port_bindings = HashMap::new();
        let mut exposed_ports = Vec::new();
        for port in &spec.ports {
            let key = format!("{port}/tcp");
            exposed_ports.push(key.clone());
            port_bindings.insert(
                key,
                Some(vec![PortBinding { host_ip: Some("127.0.0.1".into()), host_port: Some(String::new()) }]),
            );
        }
        let host_config = HostConfig {
            init: Some(true),
            security_opt: Some(vec!["no-new-privileges".into()]),
            cap_drop: Some(vec!["ALL".into()]),
            // Enough for a dev shell as root: own files, change owners, bind low ports, switch users. No
            // NET_RAW, SYS_ADMIN, SYS_PTRACE or MKNOD.
            cap_add: Some(
                ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "NET_BIND_SERVICE"]
                    .iter()
                    .map(|capability| capability.to_string())
                    .collect(),
            ),
            pids_limit: Some(spec.pids_limit),
            nano_cpus: spec.nano_cpus,
            memory: spec.memory_bytes,
            network_mode: Some(spec.network_mode.clone()),
            port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
            ..HostConfig::default()
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint: Some(spec.entrypoint.clone()),
            cmd: Some(Vec::new()),
            env: Some(spec.env.clone()),
            user: spec.user.clone(),
            labels: Some(spec.labels.clone()),
            exposed_ports: (!exposed_ports.is_empty()).then_some(exposed_ports),
            host_config: Some(host_config),
            ..ContainerCreateBody::default()
        };
        let options = CreateContainerOptions { name: Some(spec.name.clone()), ..CreateContainerOptions::default() };
        let created = self.docker.create_container(Some(options), body).await.map_err(|error| self.map(error))?;
        if let Err(error) = self.docker.start_container(&created.id, None).await {
            let _ = self.remove(&created.id).await;
            return Err(self.map(error));
        }
        Ok(created.id)
    }

    /// Facts about a container; `Ok(None)` when it does not exist.
    pub async fn inspect(&self, container: &str) -> Result<Option<ContainerFacts>> {
        let response = match self.docker.inspect_container(container, None::<InspectContainerOptions>).await {
            Ok(response) => response,
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => return Ok(None),
            Err(error) => return Err(self.map(error)),
        };
        let state = response.state.unwrap_or_default();
        let network_mode = response.host_config.as_ref().and_then(|host| host.network_mode.clone()).unwrap_or_default();
        let mut published = HashMap::new();
        let mut address = None;
        if let Some(settings) = response.network_settings {
            for (key, bindings) in settings.ports.unwrap_or_default() {
                let Some(port) = key.strip_suffix("/tcp").and_then(|port| port.parse::<u16>().ok()) else {
                    continue;
                };
                let host_port = bindings
                    .unwrap_or_default()
                    .iter()
                    .find_map(|binding| binding.host_port.as_deref().and_then(|port| port.parse::<u16>().ok()));
                if let Some(host_port) = host_port {
                    published.insert(port, host_port);
                }
            }
            address = settings
                .networks
                .unwrap_or_default()
                .values()
                .find_map(|endpoint| endpoint.ip_address.clone().filter(|ip| !ip.is_empty()));
        }
        Ok(Some(ContainerFacts {
            id: response.id.unwrap_or_default(),
            name: response.name.unwrap_or_default().trim_start_matches('/').to_string(),
            running: state.running.unwrap_or(false),
            status: state.status.map(|status| status.to_string()).unwrap_or_default(),
            exit_code: state.exit_code,
            oom_killed: state.oom_killed.unwrap_or(false),
            published,
            address,
            network_mode,
            pid: state.pid.and_then(|pid| u32::try_from(pid).ok()).filter(|pid| *pid > 0),
            hostname: response.config.and_then(|config| config.hostname).unwrap_or_default(),
        }))
    }

    /// Removes a container and its anonymous volumes, killing it if it runs; a missing container is fine.
    pub async fn remove(&self, container: &str) -> Result<()> {
        let options = RemoveContainerOptions { force: true, v: true, ..RemoveContainerOptions::default() };
        match self.docker.remove_container(container, Some(options)).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
            // 409: removal already in progress, which ends the same way.
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 409, .. }) => Ok(()),
            Err(error) => Err(self.map(error)),
        }
    }

    /// The daemon's tagged images, newest first: `(repository:tag, size in bytes)`.
    pub async fn list_tagged_images(&self) -> Result<Vec<(String, i64)>> {
        let mut images = self.docker.list_images(Some(ListImagesOptions::default())).await.map_err(|error| self.map(error))?;
        images.sort_by_key(|image| std::cmp::Reverse(image.created));
        Ok(images
            .into_iter()
            .flat_map(|image| {
                let size = image.size;
                image.repo_tags.into_iter().filter(|tag| !tag.starts_with("<none>")).map(move |tag| (tag, size))
            })
            .collect())
    }

    /// The running containers: `(name, image, status)`.
    pub async fn list_running(&self) -> Result<Vec<(String, String, String)>> {
        let containers = self.docker.list_containers(Some(ListContainersOptions::default())).await.map_err(|error| self.map(error))?;
        Ok(containers
            .into_iter()
            .filter_map(|summary| {
                let name = summary.names?.into_iter().next()?.trim_start_matches('/').to_string();
                Some((name, summary.image.unwrap_or_default(), summary.status.unwrap_or_default()))
            })
            .collect())
    }

    /// Every container (running or not) that carries `label`.
    pub async fn list_labelled(&self, label: &str) -> Result<Vec<LabelledContainer>> {
        let filters = HashMap::from([("label".to_string(), vec![label.to_string()])]);
        let options = ListContainersOptions { all: true, filters: Some(filters), ..ListContainersOptions::default() };
        let containers = self.docker.list_containers(Some(options)).await.map_err(|error| self.map(error))?;
        Ok(containers
            .into_iter()
            .map(|summary| LabelledContainer {
                id: summary.id.unwrap_or_default(),
                labels: summary.labels.unwrap_or_default(),
            })
            .collect())
    }

    /// Starts a command in a running container with stdout and stderr attached (and stdin when asked).
    pub async fn exec(
        &self,
        container: &str,
        command: Vec<String>,
        env: Vec<String>,
        working_dir: Option<String>,
        user: Option<String>,
        stdin: bool,
    ) -> Result<AttachedExec> {
        self.exec_attached(container, command, env, working_dir, user, stdin, None).await
    }

    /// `exec` attached to a new terminal of `size` (Docker's `Tty`): one raw output stream, stdin always open.
    pub async fn exec_in_terminal(
        &self,
        container: &str,
        command: Vec<String>,
        env: Vec<String>,
        working_dir: Option<String>,
        user: Option<String>,
        size: PtySize,
    ) -> Result<AttachedExec> {
        let attached = self.exec_attached(container, command, env, working_dir, user, true, Some(size)).await?;
        // The exec API takes no size at creation; the first resize follows the start at once. The exec may not be
        // running yet for a moment, so a refusal is tried again briefly.
        for attempt in 0..20 {
            match self.resize_exec(&attached.id, size).await {
                Ok(()) => break,
                Err(error) if attempt == 19 => tracing::debug!(%error, "could not size a new terminal"),
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        }
        Ok(attached)
    }

    /// Changes the window size of an exec's terminal.
    pub async fn resize_exec(&self, exec_id: &str, size: PtySize) -> Result<()> {
        let options = bollard::exec::ResizeExecOptions { height: size.rows, width: size.cols };
        self.docker.resize_exec(exec_id, options).await.map_err(|error| self.map(error))
    }

    #[allow(clippy::too_many_arguments)]
    async fn exec_attached(
        &self,
        container: &str,
        command: Vec<String>,
        env: Vec<String>,
        working_dir: Option<String>,
        user: Option<String>,
        stdin: bool,
        terminal: Option<PtySize>,
    ) -> Result<AttachedExec> {
        let tty = terminal.is_some();
        let options = bollard::exec::CreateExecOptions {
            attach_stdin: Some(stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(tty),
            env: Some(env),
            cmd: Some(command),
            user,
            working_dir,
            ..Default::default()
        };
        let created = self.docker.create_exec(container, options).await.map_err(|error| self.map(error))?;
        let start = bollard::exec::StartExecOptions { detach: false, tty, output_capacity: Some(1 << 16) };
        let started = self.docker.start_exec(&created.id, Some(start)).await.map_err(|error| self.map(error))?;
        let bollard::exec::StartExecResults::Attached { output, input } = started else {
            return Err(Error::Internal("Docker started the exec detached although sandlink asked to attach.".into()));
        };
        let client = self.clone();
        let output = output.filter_map(move |item| {
            let mapped = match item {
                Ok(bollard::container::LogOutput::StdOut { message })
                | Ok(bollard::container::LogOutput::Console { message }) => Some(Ok(Chunk::Stdout(message))),
                Ok(bollard::container::LogOutput::StdErr { message }) => Some(Ok(Chunk::Stderr(message))),
                Ok(bollard::container::LogOutput::StdIn { .. }) => None,
                Err(error) => Some(Err(client.map(error))),
            };
            futures::future::ready(mapped)
        });
        Ok(AttachedExec { id: created.id, output: Box::pin(output), input })
    }

    /// Whether `path` is a directory inside the container (a HEAD on the archive API; no process is started).
    pub async fn is_directory(&self, container: &str, path: &str) -> Result<bool> {
        let options = bollard::query_parameters::ContainerArchiveInfoOptions { path: path.to_string() };
        match self.docker.get_container_archive_info(container, Some(options)).await {
            // Go's os.ModeDir is the top bit of the file mode Docker reports.
            Ok(stat) => Ok(stat.file_mode & (1 << 31) != 0),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(false),
            Err(error) => Err(self.map(error)),
        }
    }

    /// Whether an exec still runs, and its exit code once it has ended.
    pub async fn exec_state(&self, exec_id: &str) -> Result<(bool, Option<i64>)> {
        let inspected = self.docker.inspect_exec(exec_id).await.map_err(|error| self.map(error))?;
        Ok((inspected.running.unwrap_or(false), inspected.exit_code))
    }

    /// Unpacks a tar stream into `path` inside the container (the archive API; one request).
    pub async fn upload_tar(&self, container: &str, path: &str, archive: BoxedReader, copy_owner: bool) -> Result<()> {
        let options = UploadToContainerOptions {
            path: path.to_string(),
            copy_uidgid: copy_owner.then(|| "1".to_string()),
            ..UploadToContainerOptions::default()
        };
        let body = bollard::body_try_stream(tokio_util::io::ReaderStream::with_capacity(archive, 1 << 18));
        self.docker.upload_to_container(container, Some(options), body).await.map_err(|error| self.map(error))
    }

    /// Unpacks an in-memory tar into `path` inside the container.
    pub async fn upload_tar_bytes(&self, container: &str, path: &str, archive: Vec<u8>) -> Result<()> {
        let options = UploadToContainerOptions { path: path.to_string(), ..UploadToContainerOptions::default() };
        let body = bollard::body_full(Bytes::from(archive));
        self.docker.upload_to_container(container, Some(options), body).await.map_err(|error| self.map(error))
    }

    /// A tar stream of `path` inside the container (the archive API); its entries are named from the path's base name.
    pub fn download_tar(&self, container: &str, path: &str) -> BoxedReader {
        let options = DownloadFromContainerOptions { path: path.to_string() };
        let client = self.clone();
        let stream = self
            .docker
            .download_from_container(container, Some(options))
            .map_err(move |error| std::io::Error::other(client.map(error)));
        Box::pin(tokio_util::io::StreamReader::new(stream))
    }

    /// One CPU and memory sample without waiting for a second one.
    pub async fn stats(&self, container: &str) -> Result<StatsSample> {
        let options = StatsOptions { stream: false, one_shot: true };
        let mut stream = self.docker.stats(container, Some(options));
        let response = stream
            .next()
            .await
            .ok_or_else(|| Error::Remote { status: None, message: "Docker returned no statistics.".into() })?
            .map_err(|error| self.map(error))?;
        let cpu = response.cpu_stats.unwrap_or_default();
        let memory = response.memory_stats.unwrap_or_default();
        // Like `docker stats`, page cache that the kernel can drop does not count as used memory.
        let cache = memory
            .stats
            .as_ref()
            .and_then(|stats| stats.get("inactive_file").or_else(|| stats.get("total_inactive_file")).copied())
            .unwrap_or(0);
        Ok(StatsSample {
            container_cpu_ns: cpu.cpu_usage.and_then(|usage| usage.total_usage).unwrap_or(0),
            system_cpu_ns: cpu.system_cpu_usage.unwrap_or(0),
            online_cpus: cpu.online_cpus.unwrap_or(1).max(1),
            memory_bytes: memory.usage.map(|usage| usage.saturating_sub(cache)),
        })
    }

    /// Events that end the container (`die`, `destroy`, `oom`); the stream errors when the daemon goes away.
    pub fn container_events(&self, container: &str) -> Pin<Box<dyn Stream<Item = Result<ContainerEvent>> + Send>> {
        let filters = HashMap::from([
            ("container".to_string(), vec![container.to_string()]),
            ("type".to_string(), vec!["container".to_string()]),
            ("event".to_string(), vec!["die".to_string(), "destroy".to_string(), "oom".to_string()]),
        ]);
        let options = EventsOptions { filters: Some(filters), ..EventsOptions::default() };
        let client = self.clone();
        Box::pin(self.docker.events(Some(options)).map(move |item| match item {
            Ok(message) => Ok(ContainerEvent {
                action: message.action.unwrap_or_default(),
                exit_code: message
                    .actor
                    .and_then(|actor| actor.attributes)
                    .and_then(|attributes| attributes.get("exitCode").cloned()),
            }),
            Err(error) => Err(client.map(error)),
        }))
    }

    /// Maps a bollard error to sandlink's, naming the daemon when it cannot be reached.
    fn map(&self, error: bollard::errors::Error) -> Error {
        match error {
            bollard::errors::Error::DockerResponseServerError { status_code, message } => Error::Remote {
                status: Some(status_code),
                message: format!("Docker answered {status_code}: {message}"),
            },
            bollard::errors::Error::RequestTimeoutError => {
                Error::Timeout(format!("Docker at {} did not answer in time.", self.host))
            }
            other => Error::DriverUnavailable {
                driver: "docker".into(),
                message: format!("Lost the connection to Docker at {} ({}). {HOW_TO_START}", self.host, describe(&other)),
            },
        }
    }
}

/// A bollard error as a short phrase, with its cause (the useful part of hyper's errors is in `source`).
fn describe(error: &bollard::errors::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Compares dotted API versions numerically (`1.41` < `1.43`).
fn api_at_least(version: &str, minimum: &str) -> bool {
    let parse = |text: &str| -> (u32, u32) {
        let mut parts = text.split('.').map(|part| part.parse::<u32>().unwrap_or(0));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
    };
    parse(version) >= parse(minimum)
}

#[cfg(test)]
mod tests {
    use super::api_at_least;

    #[test]
    fn api_versions_should_compare_numerically() {
        assert!(api_at_least("1.41", "1.41"));
        assert!(api_at_least("1.100", "1.41"));
        assert!(!api_at_least("1.9", "1.41"));
        assert!(!api_at_least("", "1.41"));
    }
}
