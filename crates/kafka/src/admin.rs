//! Creating topics that do not exist yet, for the sink's output topics, the repartitioner's
//! internal topic and the benchmark. An existing topic is left as it is.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use std::time::Duration;

/// Creates each `(name, partitions, replication factor)` that is missing.
pub fn create_topics(
    client: &ClientConfig,
    topics: &[(&str, i32, i32)],
    timeout: Duration,
) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> =
        client.create().map_err(|e| format!("admin client: {e}"))?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(n, p, r)| NewTopic::new(n, *p, TopicReplication::Fixed(*r)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(timeout));
    // the admin API is async; librdkafka drives it, a small runtime only waits
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let results = rt
        .block_on(admin.create_topics(&new, &opts))
        .map_err(|e| format!("create topics: {e}"))?;
    for r in results {
        match r {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => return Err(format!("cannot create topic `{t}`: {code}")),
        }
    }
    Ok(())
}
