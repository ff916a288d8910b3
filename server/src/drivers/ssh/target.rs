//! Which host a session reaches and how to point the system `ssh` at it: the `host` setting (an alias or
//! `user@host:port`), the user's ssh config file, and the keepalive interval.

use std::path::PathBuf;

/// What `ssh` needs to reach the host, as the settings give it.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub config_file: Option<PathBuf>,
    pub keep_alive_seconds: u64,
}

impl Target {
    /// `host`, or `user@host:port` turned into the `ssh://` form ssh understands with a port.
    pub(super) fn destination(&self) -> String {
        match self.host.rsplit_once(':') {
            Some((head, port)) if !head.contains(':') && port.parse::<u16>().is_ok() => format!("ssh://{}", self.host),
            _ => self.host.clone(),
        }
    }

    /// The arguments that point a plain `ssh` (or `ssh -G`) at the same configuration and host.
    pub fn ssh_arguments(&self) -> Vec<String> {
        let mut arguments = Vec::new();
        if let Some(config) = &self.config_file {
            arguments.push("-F".to_string());
            arguments.push(config.to_string_lossy().into_owned());
        }
        match self.host.rsplit_once(':') {
            Some((head, port)) if !head.contains(':') && port.parse::<u16>().is_ok() => {
                arguments.extend(["-p".to_string(), port.to_string(), head.to_string()]);
            }
            _ => arguments.push(self.host.clone()),
        }
        arguments
    }
}
