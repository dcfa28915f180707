//! A clean goodbye: what the client queued, then a DISCONNECT, actually written.

use std::time::Duration;

use rumqttc::v5::{AsyncClient, Event, EventLoop};

/// Queues a DISCONNECT behind whatever the client has already queued (acknowledgements, a
/// last status) and polls the event loop until the DISCONNECT is written, for at most
/// `limit`. A clean DISCONNECT keeps a persistent session and suppresses the last will.
/// Returns whether it was written (`false`: the broker was away or too slow).
pub async fn disconnect_flushed(
    client: &AsyncClient,
    events: &mut EventLoop,
    limit: Duration,
) -> bool {
    if client.try_disconnect().is_err() {
        return false;
    }
    let written = tokio::time::timeout(limit, async {
        while let Ok(event) = events.poll().await {
            if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                return true;
            }
        }
        false
    })
    .await;
    matches!(written, Ok(true))
}
