//! The connections this gateway node holds right now, by id: what the send-back API needs
//! to reach a socket.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use uuid::Uuid;

use crate::clock;
use crate::outbox::Outbox;

/// One live connection, shared by its socket task and the send-back API.
#[derive(Debug)]
pub struct Connection {
    /// Its id.
    pub id: Uuid,
    /// Messages waiting for its socket.
    pub outbox: Outbox,
    /// When the handshake arrived (ms since the Unix epoch).
    pub connected_at_ms: u64,
    /// When the client last sent a message (ms since the Unix epoch).
    last_active_ms: AtomicU64,
    /// The client's address.
    pub source_ip: IpAddr,
    /// The client's `User-Agent`.
    pub user_agent: Option<Box<str>>,
    /// The `Host` the client asked for (AWS events name it as `domainName`).
    pub host: Option<Box<str>>,
    /// The context register returned.
    pub context: serde_json::Value,
}

impl Connection {
    /// A new connection record, active now.
    pub fn new(
        id: Uuid,
        connected_at_ms: u64,
        source_ip: IpAddr,
        user_agent: Option<Box<str>>,
        host: Option<Box<str>>,
        context: serde_json::Value,
    ) -> Self {
        Connection {
            id,
            outbox: Outbox::default(),
            connected_at_ms,
            last_active_ms: AtomicU64::new(connected_at_ms),
            source_ip,
            user_agent,
            host,
            context,
        }
    }

    /// Records client activity now.
    pub fn touch(&self) {
        self.last_active_ms
            .store(clock::now_ms(), Ordering::Relaxed);
    }

    /// When the client last sent a message (ms since the Unix epoch).
    pub fn last_active_ms(&self) -> u64 {
        self.last_active_ms.load(Ordering::Relaxed)
    }
}

/// The map of live connections.
#[derive(Debug, Default)]
pub struct Registry {
    map: Mutex<HashMap<Uuid, std::sync::Arc<Connection>>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, std::sync::Arc<Connection>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a connection.
    pub fn insert(&self, conn: std::sync::Arc<Connection>) {
        self.lock().insert(conn.id, conn);
    }

    /// Removes a connection; returns whether it was there.
    pub fn remove(&self, id: &Uuid) -> bool {
        self.lock().remove(id).is_some()
    }

    /// Looks a connection up.
    pub fn get(&self, id: &Uuid) -> Option<std::sync::Arc<Connection>> {
        self.lock().get(id).cloned()
    }

    /// How many connections are registered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }
}
