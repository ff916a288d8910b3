//! sandlink: run a project in an isolated sandbox from any editor. The crate holds the protocol, the engine,
//! the drivers, sync, and the two front doors: the LSP server (`lsp`) and the command line (`cli`).

pub mod agent_tasks;
pub mod cli;
pub mod clock;
pub mod credentials;
pub mod drivers;
pub mod engine;
pub mod error;
pub mod ids;
pub mod locks;
pub mod logging;
pub mod lsp;
pub mod netpolicy;
pub mod paths;
pub mod profiles;
pub mod progress;
pub mod protocol;
pub mod statefile;
pub mod streams;
pub mod sync;
pub mod tasks;
pub mod policy;
pub mod cost;
