//! STUB (replaced by the config layer)
use crate::balancer::Algorithm;
use std::net::SocketAddr;
use std::time::Duration;
#[derive(Debug, Clone)]
pub struct Config {
    pub source: String,
    pub runtime: Runtime,
    pub services: Vec<Service>,
}
#[derive(Debug, Clone)]
pub struct Runtime {
    pub workers: usize,
    pub pin_workers: bool,
    pub drain_timeout: Duration,
}
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}
#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub listen: SocketAddr,
    pub protocol: Protocol,
    pub algorithm: Algorithm,
    pub hash_table_size: usize,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: u32,
    pub retries: u32,
    pub buffer_size: usize,
    pub backlog: u32,
    pub access_log: bool,
    pub backends: Vec<Backend>,
}
#[derive(Debug, Clone)]
pub struct Backend {
    pub address: SocketAddr,
    pub spec: String,
    pub weight: u32,
    pub max_connections: Option<u32>,
}
#[derive(Debug, thiserror::Error)]
#[error("bad config")]
pub struct ConfigError;
impl Config {
    pub fn load(_p: &std::path::Path) -> Result<Config, ConfigError> {
        Err(ConfigError)
    }
    pub fn parse(_t: &str, _s: &str) -> Result<Config, ConfigError> {
        Err(ConfigError)
    }
    pub fn summary(&self) -> String {
        String::new()
    }
}
