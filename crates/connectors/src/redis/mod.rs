//! Redis, two ways: a stream read through a consumer group (`redis_stream`), and carts kept
//! as hashes followed through keyspace notifications (`redis_carts`).
//!
//! Both use the synchronous client: the pipeline's reader is a plain thread, and every call
//! is bounded by a socket timeout. The carts source listens for notifications on a thread of
//! its own, since a subscribed connection must keep reading (Redis drops subscribers whose
//! output buffer grows) even while the reader is stalled by backpressure.

mod carts;
mod stream;
#[doc(hidden)]
pub mod testkit;
#[cfg(test)]
mod tests;

pub use carts::{RedisCartsConfig, RedisCartsSource};
pub use redis;
pub use stream::{RedisStreamConfig, RedisStreamSource, StreamFormat};

use redis::{Client, Connection, RedisError};
use std::time::Duration;

/// Whether an error is the connection's (try again later) rather than the request's.
pub(crate) fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_connection_refusal()
}

/// The URL without its password, for messages.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
            None => format!("{}***{}", &url[..s + 3], &url[at..]),
        },
        _ => url.to_string(),
    }
}

pub(crate) fn client(url: &str) -> Result<Client, String> {
    Client::open(url).map_err(|e| format!("source.url: not a Redis URL ({}): {e}", redact(url)))
}

pub(crate) fn connect(
    client: &Client,
    timeout: Duration,
    read_timeout: Duration,
) -> Result<Connection, RedisError> {
    let c = client.get_connection_with_timeout(timeout)?;
    c.set_read_timeout(Some(read_timeout))?;
    c.set_write_timeout(Some(timeout))?;
    Ok(c)
}
