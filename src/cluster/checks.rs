//! What an ack is worth: Redis' persistence settings, read at startup on every master.
//!
//! - `appendonly yes` and `appendfsync always`: Redis fsyncs its AOF before it answers,
//!   so an ack means "on disk". Anything less is logged as a loud warning saying what an
//!   ack is worth then (`everysec`: up to a second of acked writes lost on power loss).
//! - A `maxmemory-policy` that evicts keys without a TTL (`allkeys-*`) could drop a room's
//!   log, snapshot or counter: refused, the node does not start. (`volatile-*` policies
//!   never touch collabd's keys, which have no TTL; `noeviction` refuses writes when full,
//!   which collabd answers with 503.)
//! - A Redis that forbids `CONFIG GET` (some managed services): a warning that the
//!   settings could not be checked.

use super::conn::Conn;
use log::{info, warn};

/// Checks every master's persistence settings; `Err` for settings that can lose data.
pub async fn persistence(conn: &Conn) -> Result<(), String> {
    for addr in conn.master_addrs().await? {
        let client = redis::Client::open(format!("redis://{addr}"))
            .map_err(|e| format!("Redis master {addr}: {e}"))?;
        let mut c = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| format!("cannot reach Redis master {addr}: {e}"))?;
        let get = |name: &'static str| {
            let mut c = c.clone();
            async move {
                let answer: Result<Vec<String>, _> = redis::cmd("CONFIG")
                    .arg("GET")
                    .arg(name)
                    .query_async(&mut c)
                    .await;
                answer.ok().and_then(|kv| kv.get(1).cloned())
            }
        };
        let (aof, fsync, policy) = (
            get("appendonly").await,
            get("appendfsync").await,
            get("maxmemory-policy").await,
        );
        let _ = &mut c;
        verdict(&addr, aof.as_deref(), fsync.as_deref(), policy.as_deref())?;
    }
    Ok(())
}

/// The verdict on one master's settings (`None`: not readable).
pub fn verdict(
    addr: &str,
    aof: Option<&str>,
    fsync: Option<&str>,
    policy: Option<&str>,
) -> Result<(), String> {
    if let Some(policy) = policy
        && policy.starts_with("allkeys-")
    {
        return Err(format!(
            "Redis at {addr} has maxmemory-policy {policy}, which may evict a room's log, \
             snapshot or counter: set it to noeviction (or a volatile-* policy)"
        ));
    }
    match (aof, fsync) {
        (Some("yes"), Some("always")) => {
            info!("Redis at {addr}: appendonly yes, appendfsync always: an ack means on disk");
        }
        (Some("yes"), Some(fsync)) => warn!(
            "DURABILITY: Redis at {addr} has appendfsync {fsync}: an ack means the write \
             reached Redis' memory and its AOF within about a second, not that it is on \
             disk; a power loss can lose acknowledged writes. Set appendfsync always."
        ),
        (Some(_), _) => warn!(
            "DURABILITY: Redis at {addr} has appendonly no: an ack means the write is in \
             Redis' memory only; a Redis restart loses acknowledged writes. Set appendonly \
             yes and appendfsync always."
        ),
        (None, _) => warn!(
            "DURABILITY: could not read Redis' persistence settings at {addr} (CONFIG GET \
             refused): what an ack is worth depends on them; appendonly yes and appendfsync \
             always make it mean on disk."
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::verdict;

    #[test]
    fn evicting_policies_are_refused() {
        assert!(verdict("r", Some("yes"), Some("always"), Some("allkeys-lru")).is_err());
        assert!(verdict("r", Some("yes"), Some("always"), Some("noeviction")).is_ok());
        assert!(verdict("r", Some("no"), None, Some("volatile-lru")).is_ok());
        assert!(verdict("r", None, None, None).is_ok());
    }
}
